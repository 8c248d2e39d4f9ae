//! Delivery across failures (SPEC §5): Redis killed and restarted empty,
//! `FLUSHALL`, the subscriber's pub/sub connection killed (gap fill from
//! history), and an instance SIGKILLed with clients resuming on the survivor.
//! Lost history is always announced with `event: reset`, never silent.

use std::time::Duration;

use crate::support::{
    app::wait_healthy,
    delivery::{
        assert_quiet, event_ids, history_ids, metric, next_got, post_many, read_events, BusKind,
        Cluster, Got,
    },
    eventually, post_account, ServerProcess, SseClient, TestRedis,
};

/// Deadline for anything that should arrive (generous: loaded 2-core machine).
const T: Duration = Duration::from_secs(20);
/// "Nothing more arrives" window.
const QUIET: Duration = Duration::from_millis(300);

/// Redis SIGKILLed and restarted empty while events are posted as soon as it
/// is back: clients that stay connected get `reset` (`history_lost`) and then
/// every event accepted after recovery, in history order; a client resuming
/// with a pre-restart id gets `reset` (`unknown_event_id`) and continues live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_announces_reset_then_delivers_everything_after() {
    let mut cluster = Cluster::start(BusKind::Redis, 2, &[]).await;
    let bases = cluster.bases();
    let (mut on_a, _) = SseClient::open(&cluster.sse(0), None).await;
    let (mut on_b, _) = SseClient::open(&cluster.sse(1), None).await;
    post_many(&bases, "before", 5, 1).await;
    let before = event_ids(&read_events(&mut on_a, 5, T).await);
    assert_eq!(event_ids(&read_events(&mut on_b, 5, T).await), before);

    cluster.redis.as_mut().unwrap().kill();
    let http = reqwest::Client::new();
    eventually(T, "POST to fail with 503 while Redis is down", || {
        let (http, base) = (http.clone(), bases[0].clone());
        async move { (post_account(&http, &base, "down", 1).await.0 == 503).then_some(()) }
    })
    .await;
    cluster.redis.as_mut().unwrap().start_again();

    // Post at once, retrying each event until accepted: some land before an
    // instance's subscriber is back, which its gap fill must then forward.
    const AFTER: usize = 30;
    for i in 0..AFTER {
        let (http, base) = (http.clone(), bases[i % 2].clone());
        eventually(T, "POST to succeed after Redis restarted", || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                (post_account(&http, &base, &format!("after{i}"), 1).await.0 == 201).then_some(())
            }
        })
        .await;
    }
    let history = history_ids(cluster.redis.as_ref().unwrap());
    assert_eq!(
        history.len(),
        AFTER,
        "history holds only post-restart events"
    );
    for (name, client) in [("on_a", &mut on_a), ("on_b", &mut on_b)] {
        let got = read_events(client, AFTER, T).await;
        assert_eq!(got[0], Got::Reset("history_lost".to_owned()), "{name}");
        assert_eq!(event_ids(&got[1..]), history, "{name}");
        assert_quiet(client, QUIET).await;
    }

    // Resuming across the restart: the old id is gone from history.
    let (mut resumed, _) = SseClient::open(&cluster.sse(1), Some(&before[4])).await;
    assert_eq!(
        next_got(&mut resumed, T).await,
        Some(Got::Reset("unknown_event_id".to_owned()))
    );
    // A post-restart id resumes normally, on either instance.
    let (mut fresh, _) = SseClient::open(&cluster.sse(0), Some(&history[AFTER - 3])).await;
    assert_eq!(
        event_ids(&read_events(&mut fresh, 2, T).await),
        history[AFTER - 2..]
    );
    post_many(&bases, "live", 1, 1).await;
    let live = history_ids(cluster.redis.as_ref().unwrap())[AFTER].clone();
    for client in [&mut resumed, &mut fresh, &mut on_a, &mut on_b] {
        assert_eq!(
            read_events(client, 1, T).await,
            vec![Got::Event(live.clone())]
        );
    }
    cluster.shutdown().await;
}

/// `FLUSHALL` empties history without dropping connections: a resume with an
/// old id gets `reset`; connected clients keep receiving new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_makes_old_ids_reset() {
    let cluster = Cluster::start(BusKind::Redis, 2, &[]).await;
    let bases = cluster.bases();
    let redis = cluster.redis.as_ref().unwrap();
    let (mut watcher, _) = SseClient::open(&cluster.sse(0), None).await;
    post_many(&bases, "f", 3, 1).await;
    let ids = event_ids(&read_events(&mut watcher, 3, T).await);
    let _: () = ::redis::cmd("FLUSHALL").query(&mut redis.conn()).unwrap();

    for i in 0..2 {
        let (mut resumed, _) = SseClient::open(&cluster.sse(i), Some(&ids[1])).await;
        assert_eq!(
            next_got(&mut resumed, T).await,
            Some(Got::Reset("unknown_event_id".to_owned()))
        );
        post_many(&bases, &format!("g{i}-"), 1, 1).await;
        let new = history_ids(redis);
        let newest = new.last().unwrap().clone();
        assert_eq!(
            read_events(&mut resumed, 1, T).await,
            vec![Got::Event(newest.clone())]
        );
        assert_eq!(
            read_events(&mut watcher, 1, T).await,
            vec![Got::Event(newest)]
        );
    }
    cluster.shutdown().await;
}

/// `CLIENT KILL TYPE pubsub`, then at once 50 events posted on the other
/// instance: clients of both instances get all 50, in order, no reset; the
/// reconnect is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connection_is_gap_filled_from_history() {
    let cluster = Cluster::start(BusKind::Redis, 2, &[]).await;
    let redis = cluster.redis.as_ref().unwrap();
    let (mut on_a, _) = SseClient::open(&cluster.sse(0), None).await;
    let (mut on_b, _) = SseClient::open(&cluster.sse(1), None).await;
    let reconnects = metric(&cluster.base(0), "redis_reconnects_total").await;

    let killed: u64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(killed, 2, "one subscriber connection per instance");
    post_many(&[cluster.base(1)], "k", 50, 1).await;

    let history = history_ids(redis);
    assert_eq!(history.len(), 50);
    for (name, client) in [("on_a", &mut on_a), ("on_b", &mut on_b)] {
        assert_eq!(
            event_ids(&read_events(client, 50, T).await),
            history,
            "{name}"
        );
        assert_quiet(client, QUIET).await;
    }
    let base = cluster.base(0);
    eventually(T, "redis_reconnects_total to increase", || {
        let base = base.clone();
        async move { (metric(&base, "redis_reconnects_total").await > reconnects).then_some(()) }
    })
    .await;
    cluster.shutdown().await;
}

/// SIGKILL one real instance while 5 clients are on it and 500 events are
/// posted to the other: each client sees EOF, reconnects with its
/// `Last-Event-ID` to the survivor (as EventSource does) and ends with all
/// 500 exactly once, in history order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_instance_resume_on_the_survivor() {
    const EVENTS: usize = 500;
    const CLIENTS: usize = 5;
    let redis = TestRedis::start();
    let url = redis.url();
    let mut a = ServerProcess::spawn(&[("REDIS_URL", &url), ("SERVER_ID", "backend-1")]).await;
    let b = ServerProcess::spawn(&[("REDIS_URL", &url), ("SERVER_ID", "backend-2")]).await;
    wait_healthy(&a.base()).await;
    wait_healthy(&b.base()).await;
    let (a_sse, b_sse) = (
        format!("{}/events/sse", a.base()),
        format!("{}/events/sse", b.base()),
    );

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (mut client, server) = SseClient::open(&a_sse, None).await;
        assert_eq!(server, "backend-1");
        let b_sse = b_sse.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut servers = vec![server];
            while seen.len() < EVENTS {
                let started = tokio::time::Instant::now();
                match next_got(&mut client, T).await {
                    Some(Got::Event(id)) => seen.push(id),
                    Some(Got::Reset(reason)) => panic!("client {c}: reset {reason}"),
                    None => {
                        assert!(
                            started.elapsed() < T,
                            "client {c}: stalled after {} events",
                            seen.len()
                        );
                        // EOF: reconnect like EventSource, with the last id.
                        let (next, server) =
                            SseClient::open(&b_sse, seen.last().map(String::as_str)).await;
                        client = next;
                        servers.push(server);
                    }
                }
            }
            (seen, servers)
        }));
    }

    // 100 events before the kill, the rest after it: clients must resume
    // mid-stream on the survivor whatever the machine's speed.
    let b_base = b.base();
    post_many(std::slice::from_ref(&b_base), "p", 100, 2).await;
    a.signal("KILL");
    let status = a.wait_exit(Duration::from_secs(10)).await;
    assert!(
        !status.success(),
        "SIGKILL must end it abnormally: {status:?}"
    );
    let publisher = tokio::spawn(async move {
        post_many(&[b_base], "q", EVENTS - 100, 2).await;
    });
    publisher.await.unwrap();

    let history = history_ids(&redis);
    assert_eq!(history.len(), EVENTS);
    for (c, client) in clients.into_iter().enumerate() {
        let (seen, servers) = client.await.unwrap();
        assert_eq!(seen, history, "client {c}");
        assert_eq!(servers, ["backend-1", "backend-2"], "client {c}");
    }
}
