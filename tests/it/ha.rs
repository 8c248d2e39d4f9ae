//! High availability (SPEC §9): two instances on a Sentinel group or a Redis
//! Cluster, 5 SSE clients that reconnect like EventSource, ~50 events/s
//! posted while the primary is killed or failed over. Every client must get
//! every event the surviving history holds exactly once and in order, and
//! anything it got that the new primary lost must be followed by `reset`
//! (never a silent gap). The measured failover times are printed
//! (`--nocapture`) and recorded in the README, "High availability".

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::{
    delivery::metric,
    eventually, get_json,
    ha::{query, TestCluster, TestSentinel, TestSentinelGroup, MASTER},
    redis::TestRedis,
    SseClient, TestApp,
};

/// Deadline for anything that should happen (generous: loaded 2-core machine).
const T: Duration = Duration::from_secs(30);
/// Clients per test.
const CLIENTS: usize = 5;

/// What a client received, with the time it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// An event: the account id in its data.
    Event(String),
    /// `event: reset`.
    Reset,
}

/// An SSE client that reconnects like EventSource (with its last event id,
/// to the same instance) until dropped; records every item with its time.
struct Watcher {
    items: Arc<Mutex<Vec<(Item, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    async fn start(url: String) -> Self {
        let items = Arc::new(Mutex::new(Vec::new()));
        let (mut client, _) = SseClient::open(&url, None).await;
        let record = items.clone();
        let task = tokio::spawn(async move {
            let mut last_id: Option<String> = None;
            loop {
                match client.next_frame(Duration::from_secs(1)).await {
                    Some(frame) if frame.is_message() => {
                        let account = frame.json()["data"]["id"].as_str().unwrap().to_owned();
                        last_id.clone_from(&frame.id);
                        record
                            .lock()
                            .unwrap()
                            .push((Item::Event(account), Instant::now()));
                    }
                    Some(frame) if frame.event.as_deref() == Some("reset") => {
                        record.lock().unwrap().push((Item::Reset, Instant::now()));
                    }
                    Some(_) => {}
                    None if client.ended() => {
                        // EventSource: reconnect with Last-Event-ID.
                        client = eventually(T, "the SSE stream to reopen", || {
                            let (url, last) = (url.clone(), last_id.clone());
                            async move {
                                let c = SseClient::connect_with(&url, last.as_deref()).await;
                                (c.status == 200).then_some(c)
                            }
                        })
                        .await;
                    }
                    None => {}
                }
            }
        });
        Self { items, task }
    }

    fn items(&self) -> Vec<Item> {
        self.items
            .lock()
            .unwrap()
            .iter()
            .map(|(i, _)| i.clone())
            .collect()
    }

    /// When `account` arrived, if it did.
    fn received_at(&self, account: &str) -> Option<Instant> {
        self.items
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| *i == Item::Event(account.to_owned()))
            .map(|(_, at)| *at)
    }
}

/// One POST's outcome.
#[derive(Debug, Clone)]
struct Posted {
    account: Option<String>,
    status: u16,
    at: Instant,
}

/// Posts one account every 20 ms (~50/s), alternating instances, until
/// `stop`. Returns the log and the task: await it after `stop` so that a POST
/// in flight lands before anything posted next.
fn start_publisher(
    bases: Vec<String>,
    stop: CancellationToken,
) -> (Arc<Mutex<Vec<Posted>>>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let record = log.clone();
    let task = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for i in 0.. {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = pace.tick() => {}
            }
            let posted = post(&http, &bases[i % bases.len()], &format!("ha{i}")).await;
            record.lock().unwrap().push(posted);
        }
    });
    (log, task)
}

async fn post(http: &reqwest::Client, base: &str, name: &str) -> Posted {
    let response = http
        .post(format!("{base}/accounts"))
        .json(&serde_json::json!({ "name": name, "balance": 1 }))
        .send()
        .await;
    let at = Instant::now();
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            Posted {
                account: body["id"].as_str().map(str::to_owned),
                status,
                at,
            }
        }
        Err(_) => Posted {
            account: None,
            status: 0,
            at,
        },
    }
}

/// Waits until `n` POSTs made after `since` succeeded; returns the first's time.
async fn acked_after(log: &Arc<Mutex<Vec<Posted>>>, since: Instant, n: usize) -> Instant {
    eventually(T, &format!("{n} POSTs to succeed"), || {
        let log = log.clone();
        async move {
            let log = log.lock().unwrap();
            let ok: Vec<_> = log
                .iter()
                .filter(|p| p.at > since && p.status == 201)
                .collect();
            (ok.len() >= n).then(|| ok[0].at)
        }
    })
    .await
}

/// Account ids in `history_key` on `addr`, oldest first (`XRANGE - +`).
fn history_accounts(addr: &str, history_key: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> = query(
        addr,
        ::redis::cmd("XRANGE").arg(history_key).arg("-").arg("+"),
    )
    .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            let event: Value =
                serde_json::from_str(&format!("{{\"id\":\"0-0\",{}", fields[1])).unwrap();
            event["data"]["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The delivery check of SPEC §5/§9 for one client, against `truth` (the
/// surviving history, in order):
/// - no event twice;
/// - every `truth` event arrives;
/// - between resets, the `truth` events arrive in `truth` order with none
///   skipped (a gap is allowed only where a reset says so);
/// - an event the new primary does not hold (lost with the old one) is
///   followed by a reset.
fn assert_delivery(name: &str, items: &[Item], truth: &[String]) {
    let position: HashMap<&str, usize> = truth
        .iter()
        .enumerate()
        .map(|(i, a)| (a.as_str(), i))
        .collect();
    let mut seen = HashSet::new();
    let mut previous: Option<usize> = None;
    let mut lost_unannounced: Option<&str> = None;
    for item in items {
        match item {
            Item::Reset => {
                previous = None;
                lost_unannounced = None;
            }
            Item::Event(account) => {
                assert!(
                    seen.insert(account.as_str()),
                    "{name}: {account} twice in {items:?}"
                );
                match position.get(account.as_str()) {
                    Some(&at) => {
                        if let Some(before) = previous {
                            assert_eq!(
                                at,
                                before + 1,
                                "{name}: silent gap or reorder before {account} (truth position {at} after {before})"
                            );
                        }
                        previous = Some(at);
                    }
                    None => lost_unannounced = Some(account),
                }
            }
        }
    }
    if let Some(lost) = lost_unannounced {
        panic!("{name}: got {lost}, which the new primary lost, and no reset after it");
    }
    let missing: Vec<_> = truth
        .iter()
        .filter(|a| !seen.contains(a.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{name}: never got {} of {}: {missing:?}",
        missing.len(),
        truth.len()
    );
}

/// Two instances with `args`, 5 watchers (3 on the first, 2 on the second).
async fn start_instances(args: &[&str]) -> (Vec<TestApp>, Vec<Watcher>) {
    let mut apps = Vec::new();
    for id in ["backend-1", "backend-2"] {
        let mut all = vec!["--server-id", id];
        all.extend_from_slice(args);
        apps.push(TestApp::spawn(&all).await);
    }
    let mut watchers = Vec::new();
    for c in 0..CLIENTS {
        let url = format!("{}/events/sse", apps[c % 2].base());
        watchers.push(Watcher::start(url).await);
    }
    (apps, watchers)
}

/// Posts a marker through each instance (retrying until accepted) and waits
/// until every watcher has it, so everything before it has arrived.
async fn finish(apps: &[TestApp], watchers: &[Watcher]) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut markers = Vec::new();
    for app in apps {
        let account = eventually(T, "a marker POST to succeed", || {
            let (http, base) = (http.clone(), app.base());
            async move { post(&http, &base, "marker").await.account }
        })
        .await;
        markers.push(account);
    }
    for (c, watcher) in watchers.iter().enumerate() {
        eventually(T, &format!("client {c} to get the markers"), || {
            let done = markers.iter().all(|m| watcher.received_at(m).is_some());
            async move { done.then_some(()) }
        })
        .await;
    }
    markers
}

/// `/health` of `base`.
async fn health(base: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}/health")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Kills (`kill -9`) the Sentinel primary during steady publishing. POSTs
/// succeed again once the sentinels promote the replica and the instances
/// follow; every client gets every event the new primary holds exactly once,
/// in order, and a reset after anything it got that was lost. With
/// `REDIS_MIN_REPLICAS_ACK=1` no acknowledged event is missing from the new
/// primary (the killed server is restarted so that WAIT can succeed again).
async fn sentinel_primary_killed(min_replicas_ack: &str) {
    let mut group = tokio::task::block_in_place(TestSentinelGroup::start);
    let sentinels = group.sentinels_setting();
    let stop = CancellationToken::new();
    let (apps, watchers) = start_instances(&[
        "--redis-sentinels",
        &sentinels,
        "--redis-sentinel-master",
        MASTER,
        "--redis-min-replicas-ack",
        min_replicas_ack,
    ])
    .await;
    let old = tokio::task::block_in_place(|| group.primary());
    let (_, body) = health(&apps[0].base()).await;
    assert_eq!(body["redisMode"], "sentinel", "{body}");
    assert_eq!(body["redisPrimary"], old.as_str(), "{body}");
    let failovers = metric(&apps[0].base(), "redis_failovers_total").await;

    let (log, publisher) =
        start_publisher(apps.iter().map(TestApp::base).collect(), stop.child_token());
    acked_after(&log, Instant::now() - T, 50).await;
    let killed_at = Instant::now();
    let index = group.index_of(&old);
    group.servers[index].kill();
    let new = tokio::task::block_in_place(|| group.wait_new_primary(&old, Duration::from_secs(90)));
    if min_replicas_ack != "0" {
        // The new primary needs a replica for WAIT: the old server comes
        // back empty and the sentinels make it one.
        group.servers[index].start_again();
    }
    let recovered_at = acked_after(&log, killed_at, 50).await;
    stop.cancel();
    // A POST in flight at the cancel must land before the markers do.
    publisher.await.unwrap();
    let markers = finish(&apps, &watchers).await;
    let first_after = log
        .lock()
        .unwrap()
        .iter()
        .find(|p| p.at > killed_at && p.status == 201)
        .and_then(|p| p.account.clone())
        .unwrap();
    let caught_up = watchers
        .iter()
        .map(|w| w.received_at(&first_after).unwrap())
        .max()
        .unwrap();
    eprintln!(
        "sentinel kill -9 (REDIS_MIN_REPLICAS_ACK={min_replicas_ack}): POSTs succeed again after {:?}, every client caught up after {:?}",
        recovered_at - killed_at,
        caught_up - killed_at
    );

    let truth = history_accounts(&new, "user-events:history");
    assert!(
        truth.ends_with(&markers[markers.len() - 1..]),
        "the last marker {:?} is not the newest event in history (tail {:?})",
        markers.last(),
        &truth[truth.len().saturating_sub(3)..]
    );
    for (c, watcher) in watchers.iter().enumerate() {
        assert_delivery(&format!("client {c}"), &watcher.items(), &truth);
    }
    if min_replicas_ack != "0" {
        let truth: HashSet<_> = truth.iter().collect();
        let lost: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.status == 201)
            .filter_map(|p| p.account.clone())
            .filter(|a| !truth.contains(a))
            .collect();
        assert!(
            lost.is_empty(),
            "acknowledged with a replica, yet lost from {new}: {lost:?}\n{}",
            group.sentinel_logs()
        );
    }
    for app in &apps {
        let (status, body) = health(&app.base()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["redisPrimary"], new.as_str(), "{body}");
    }
    assert!(metric(&apps[0].base(), "redis_failovers_total").await > failovers);
    drop(watchers);
    for app in apps {
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_primary_killed_clients_get_everything_or_reset() {
    sentinel_primary_killed("0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_primary_killed_with_a_replica_ack_loses_nothing_acknowledged() {
    sentinel_primary_killed("1").await;
}

/// Sentinels that disagree, as right after a failover that one of them has
/// not heard of yet: the instances use the primary named with the highest
/// config epoch, though the stale sentinel is listed first and its primary
/// (an empty server back after a crash, say) answers `ROLE` as a master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinel_with_the_newest_config_epoch_names_the_primary() {
    let (old, new) = (TestRedis::start(), TestRedis::start());
    let (stale, informed) = tokio::task::block_in_place(|| {
        (
            TestSentinel::start_with(old.port(), ""),
            TestSentinel::start_with(new.port(), &format!("sentinel config-epoch {MASTER} 7\n")),
        )
    });
    let sentinels = format!("{},{}", stale.addr(), informed.addr());
    let (apps, watchers) = start_instances(&[
        "--redis-sentinels",
        &sentinels,
        "--redis-sentinel-master",
        MASTER,
    ])
    .await;
    for app in &apps {
        let (status, body) = health(&app.base()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["redisPrimary"], new.addr().as_str(), "{body}");
    }
    let http = reqwest::Client::new();
    let posted = post(&http, &apps[0].base(), "epoch").await;
    assert_eq!(posted.status, 201);
    let account = posted.account.unwrap();
    assert_eq!(
        history_accounts(&new.addr(), "user-events:history"),
        std::slice::from_ref(&account)
    );
    assert!(history_accounts(&old.addr(), "user-events:history").is_empty());
    for (c, watcher) in watchers.iter().enumerate() {
        eventually(T, &format!("client {c} to get the event"), || {
            let got = watcher.received_at(&account).is_some();
            async move { got.then_some(()) }
        })
        .await;
    }
    drop(watchers);
    for app in apps {
        app.shutdown().await;
    }
}

/// `SENTINEL FAILOVER` (graceful) while publishing: the instances follow
/// `+switch-master` (their `/health` names the new primary shortly after the
/// sentinels do); every event the new primary holds reaches every client
/// exactly once in order, and what went to the old primary in the switch
/// window is followed by a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_at_once() {
    let group = tokio::task::block_in_place(TestSentinelGroup::start);
    let sentinels = group.sentinels_setting();
    let stop = CancellationToken::new();
    let (apps, watchers) = start_instances(&[
        "--redis-sentinels",
        &sentinels,
        "--redis-sentinel-master",
        MASTER,
    ])
    .await;
    let old = tokio::task::block_in_place(|| group.primary());
    let (log, publisher) =
        start_publisher(apps.iter().map(TestApp::base).collect(), stop.child_token());
    acked_after(&log, Instant::now() - T, 50).await;

    let (new, sent) = tokio::task::block_in_place(|| group.failover(&old, Duration::from_secs(90)));
    let started = Instant::from_std(sent);
    let announced = Instant::now();
    for app in &apps {
        eventually(
            Duration::from_secs(5),
            "the instance to follow +switch-master",
            || {
                let (base, new) = (app.base(), new.clone());
                async move {
                    let (status, body) = health(&base).await;
                    (status == 200 && body["redisPrimary"] == new.as_str()).then_some(())
                }
            },
        )
        .await;
    }
    let followed = Instant::now();
    let recovered_at = acked_after(&log, followed, 50).await;
    stop.cancel();
    // A POST in flight at the cancel must land before the markers do.
    publisher.await.unwrap();
    let markers = finish(&apps, &watchers).await;
    eprintln!(
        "SENTINEL FAILOVER: sentinels name the new primary after {:?}, both instances follow {:?} later; POSTs succeeding again {:?} after the command",
        announced - started,
        followed - announced,
        recovered_at.max(started) - started,
    );
    let truth = history_accounts(&new, "user-events:history");
    assert!(
        truth.ends_with(&markers[markers.len() - 1..]),
        "the last marker {:?} is not the newest event in history (tail {:?})",
        markers.last(),
        &truth[truth.len().saturating_sub(3)..]
    );
    for (c, watcher) in watchers.iter().enumerate() {
        assert_delivery(&format!("client {c}"), &watcher.items(), &truth);
    }
    drop(watchers);
    for app in apps {
        app.shutdown().await;
    }
}

/// With every Redis server of `app` killed: `POST` and `GET /accounts/{id}`
/// answer `503 bus_unavailable`, `/health` 503 naming `mode`, and `client`
/// keeps getting keep-alives (`--sse-keepalive-secs 1`), as for a standalone
/// Redis (SPEC §5).
async fn assert_down_with_streams_alive(app: &TestApp, client: &mut SseClient, mode: &str) {
    let http = reqwest::Client::new();
    let base = app.base();
    eventually(T, "POST to answer 503 bus_unavailable", || {
        let (http, base) = (http.clone(), base.clone());
        async move { (post(&http, &base, "down").await.status == 503).then_some(()) }
    })
    .await;
    let (status, body) = health(&base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["redis"], "down", "{body}");
    assert_eq!(body["redisMode"], mode, "{body}");
    let url = format!("{base}/accounts/00000000-0000-7000-8000-000000000000");
    let body = get_json(&http, &url).await;
    assert_eq!(body["error"]["code"], "bus_unavailable", "{body}");
    for _ in 0..2 {
        let frame = client
            .next_frame(Duration::from_secs(5))
            .await
            .expect("keep-alive");
        assert_eq!(frame.comment.as_deref(), Some("keep-alive"), "{frame:?}");
    }
}

/// Both Redis servers of the Sentinel group down (sentinels up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_group_down_answers_503_and_keeps_streams_alive() {
    let mut group = tokio::task::block_in_place(TestSentinelGroup::start);
    let sentinels = group.sentinels_setting();
    let app = TestApp::spawn(&[
        "--redis-sentinels",
        &sentinels,
        "--redis-sentinel-master",
        MASTER,
        "--sse-keepalive-secs",
        "1",
    ])
    .await;
    let (mut client, _) = SseClient::open(&format!("{}/events/sse", app.base()), None).await;
    for server in &mut group.servers {
        server.kill();
    }
    assert_down_with_streams_alive(&app, &mut client, "sentinel").await;
    app.shutdown().await;
}

/// Every node of the cluster down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_down_answers_503_and_keeps_streams_alive() {
    let mut cluster = tokio::task::block_in_place(TestCluster::start);
    let nodes = cluster.nodes_setting();
    let app = TestApp::spawn(&["--redis-cluster-nodes", &nodes, "--sse-keepalive-secs", "1"]).await;
    let (mut client, _) = SseClient::open(&format!("{}/events/sse", app.base()), None).await;
    for node in &mut cluster.nodes {
        node.kill();
    }
    assert_down_with_streams_alive(&app, &mut client, "cluster").await;
    app.shutdown().await;
}

/// Cluster layout and delivery: every key under `{user-events}` (one slot),
/// nothing under the standalone names; events cross instances; `GET
/// /accounts/{id}` works on both; `/health` names the mode and the slot's primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keeps_the_channel_in_one_slot_and_delivers_across_instances() {
    let cluster = tokio::task::block_in_place(TestCluster::start);
    let nodes = cluster.nodes_setting();
    let (apps, watchers) = start_instances(&["--redis-cluster-nodes", &nodes]).await;
    let http = reqwest::Client::new();
    let mut accounts = Vec::new();
    for i in 0..10 {
        let p = post(&http, &apps[i % 2].base(), &format!("c{i}")).await;
        assert_eq!(p.status, 201);
        accounts.push(p.account.unwrap());
    }
    let markers = finish(&apps, &watchers).await;
    accounts.extend(markers);

    let slot = cluster.keyslot("{user-events}");
    let account_key = format!("{{user-events}}:account:{}", accounts[0]);
    assert_eq!(cluster.keyslot("{user-events}:history"), slot);
    assert_eq!(cluster.keyslot(&account_key), slot);
    let (primary, replicas) = cluster.slot_owner(slot);
    assert_eq!(replicas.len(), 1);
    let kind: String = query(&primary, ::redis::cmd("TYPE").arg("{user-events}:history")).unwrap();
    assert_eq!(kind, "stream");
    let stored: String = query(&primary, ::redis::cmd("GET").arg(&account_key)).unwrap();
    assert!(stored.contains(&accounts[0]), "{stored}");
    for key in [
        "user-events:history".to_owned(),
        format!("account:{}", accounts[0]),
    ] {
        let (owner, _) = cluster.slot_owner(cluster.keyslot(&key));
        let exists: i64 = query(&owner, ::redis::cmd("EXISTS").arg(&key)).unwrap();
        assert_eq!(exists, 0, "standalone key name {key} used on a cluster");
    }
    let truth = history_accounts(&primary, "{user-events}:history");
    assert_eq!(truth, accounts);
    for (c, watcher) in watchers.iter().enumerate() {
        assert_delivery(&format!("client {c}"), &watcher.items(), &truth);
        assert!(!watcher.items().contains(&Item::Reset));
    }
    for app in &apps {
        let body = get_json(&http, &format!("{}/accounts/{}", app.base(), accounts[1])).await;
        assert_eq!(body["id"], accounts[1].as_str(), "{body}");
        let (status, body) = health(&app.base()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["redisMode"], "cluster", "{body}");
        assert_eq!(body["redisPrimary"], primary.as_str(), "{body}");
    }
    drop(watchers);
    for app in apps {
        app.shutdown().await;
    }
}

/// `CLUSTER FAILOVER` on the slot's replica while publishing: Redis pauses
/// writers during the hand-off, so nothing is lost and no client gets a
/// reset; the instances resubscribe (Redis sends `sunsubscribe`) and follow.
/// Then `kill -9` of the new owner: POSTs and `/health` recover once its
/// replica takes over; every client gets the surviving history exactly once
/// in order, with a reset after anything lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_loses_nothing_and_a_killed_primary_recovers() {
    let mut cluster = tokio::task::block_in_place(TestCluster::start);
    let nodes = cluster.nodes_setting();
    let stop = CancellationToken::new();
    let (apps, watchers) = start_instances(&["--redis-cluster-nodes", &nodes]).await;
    let slot = cluster.keyslot("{user-events}");
    let (old, replicas) = cluster.slot_owner(slot);
    let (log, publisher) =
        start_publisher(apps.iter().map(TestApp::base).collect(), stop.child_token());
    acked_after(&log, Instant::now() - T, 50).await;

    // Graceful: nothing lost.
    let started = Instant::now();
    let _: String = query(&replicas[0], ::redis::cmd("CLUSTER").arg("FAILOVER")).unwrap();
    let promoted = tokio::task::block_in_place(|| cluster.wait_new_owner(slot, &old, T));
    assert_eq!(promoted, replicas[0]);
    for app in &apps {
        eventually(T, "the instance to follow the cluster failover", || {
            let (base, promoted) = (app.base(), promoted.clone());
            async move {
                let (status, body) = health(&base).await;
                (status == 200 && body["redisPrimary"] == promoted.as_str()).then_some(())
            }
        })
        .await;
    }
    let followed = Instant::now();
    acked_after(&log, followed, 25).await;
    eprintln!(
        "CLUSTER FAILOVER: both instances follow after {:?}",
        followed - started
    );
    // Acknowledged so far (read before history: publishing goes on).
    let acked: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.status == 201)
        .filter_map(|p| p.account.clone())
        .collect();
    let truth = history_accounts(&promoted, "{user-events}:history");
    let held: HashSet<_> = truth.iter().collect();
    let lost: Vec<_> = acked.iter().filter(|a| !held.contains(a)).collect();
    assert!(
        lost.is_empty(),
        "CLUSTER FAILOVER lost acknowledged events: {lost:?}"
    );

    // Crash: the promoted node dies; its replica (the old primary) takes over.
    let (_, replicas) = tokio::task::block_in_place(|| {
        crate::support::ha::wait_for(T, "the old primary to replicate the new one", || {
            let owner = cluster.try_slot_owner(slot)?;
            (owner.1.len() == 1).then_some(owner)
        })
    });
    let killed_at = Instant::now();
    cluster.node_mut(&promoted).kill();
    let survivor = tokio::task::block_in_place(|| cluster.wait_new_owner(slot, &promoted, T));
    assert_eq!(survivor, replicas[0]);
    let recovered_at = acked_after(&log, killed_at, 50).await;
    stop.cancel();
    // A POST in flight at the cancel must land before the markers do.
    publisher.await.unwrap();
    let markers = finish(&apps, &watchers).await;
    for app in &apps {
        eventually(T, "/health to recover", || {
            let base = app.base();
            async move { (health(&base).await.0 == 200).then_some(()) }
        })
        .await;
    }
    let caught_up_all = Instant::now();
    eprintln!(
        "cluster kill -9 of the slot's primary: POSTs succeed again after {:?}, every client has the markers {:?} after the kill",
        recovered_at - killed_at,
        caught_up_all - killed_at
    );
    let truth = history_accounts(&survivor, "{user-events}:history");
    assert!(
        truth.ends_with(&markers[markers.len() - 1..]),
        "the last marker {:?} is not the newest event in history (tail {:?})",
        markers.last(),
        &truth[truth.len().saturating_sub(3)..]
    );
    for (c, watcher) in watchers.iter().enumerate() {
        assert_delivery(&format!("client {c}"), &watcher.items(), &truth);
    }
    drop(watchers);
    for app in apps {
        app.shutdown().await;
    }
}
