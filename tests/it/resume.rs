//! Resume conformance (SPEC §3.4 "Resume", §5), one body per rule run
//! against both buses: replay after `Last-Event-ID` (header or query, the
//! header wins) in order then live with no gap or duplicate at the seam;
//! `event: reset` for malformed, unknown and no-longer-retained ids, then
//! live; the seam under continuous publishing with clients hopping between
//! instances; and (Redis) resuming on another instance.

use std::time::Duration;

use crate::support::{
    delivery::{
        assert_quiet, event_ids, history_ids, next_got, read_events, BusKind, Cluster, Got,
        HISTORY_KEY,
    },
    post_account, SseClient,
};

/// Deadline for anything that should arrive (generous: loaded 2-core machine).
const T: Duration = Duration::from_secs(10);
/// "Nothing more arrives" window.
const QUIET: Duration = Duration::from_millis(300);

/// Generates `memory::<name>` and `redis::<name>` tests calling `<name>(kind)`.
macro_rules! on_both_buses {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::BusKind::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::BusKind::Redis).await;
                }
            )*
        }
    };
}

on_both_buses!(
    resume_replays_after_the_id_then_continues_live,
    resume_by_query_and_the_header_wins,
    malformed_id_gets_reset_then_live,
    unknown_id_gets_reset_then_live,
    id_older_than_history_gets_reset_then_live,
    seam_has_no_gap_or_duplicate_under_load,
);

/// Posts `n` events on instance 0 and returns their ids as `watcher` (a
/// client connected throughout) received them.
async fn post_n(cluster: &Cluster, watcher: &mut SseClient, prefix: &str, n: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    for i in 0..n {
        let (status, body) =
            post_account(&http, &cluster.base(0), &format!("{prefix}{i}"), i as u64).await;
        assert_eq!(status, 201, "{body}");
    }
    event_ids(&read_events(watcher, n, T).await)
}

/// Opens a stream on instance 0 with `header` as `Last-Event-ID` and `query`
/// as `?lastEventId=`.
async fn open(cluster: &Cluster, header: Option<&str>, query: Option<&str>) -> SseClient {
    let mut url = cluster.sse(0);
    if let Some(q) = query {
        url.push_str(&format!("?lastEventId={q}"));
    }
    let (client, _) = SseClient::open(&url, header).await;
    client
}

/// Replay is exactly the events after the id, in order, then live events follow.
async fn resume_replays_after_the_id_then_continues_live(kind: BusKind) {
    let cluster = Cluster::start(kind, 1, &[]).await;
    let mut watcher = open(&cluster, None, None).await;
    let ids = post_n(&cluster, &mut watcher, "a", 5).await;

    let mut resumed = open(&cluster, Some(&ids[1]), None).await;
    assert_eq!(event_ids(&read_events(&mut resumed, 3, T).await), ids[2..]);
    // Resuming from the newest id replays nothing.
    let mut at_head = open(&cluster, Some(&ids[4]), None).await;
    assert_quiet(&mut at_head, QUIET).await;

    let more = post_n(&cluster, &mut watcher, "b", 2).await;
    assert_eq!(event_ids(&read_events(&mut resumed, 2, T).await), more);
    assert_eq!(event_ids(&read_events(&mut at_head, 2, T).await), more);
    assert_quiet(&mut resumed, QUIET).await;
    cluster.shutdown().await;
}

/// `?lastEventId=` resumes like the header; with both, the header decides.
async fn resume_by_query_and_the_header_wins(kind: BusKind) {
    let cluster = Cluster::start(kind, 1, &[]).await;
    let mut watcher = open(&cluster, None, None).await;
    let ids = post_n(&cluster, &mut watcher, "q", 6).await;

    let mut by_query = open(&cluster, None, Some(&ids[2])).await;
    assert_eq!(event_ids(&read_events(&mut by_query, 3, T).await), ids[3..]);
    assert_quiet(&mut by_query, QUIET).await;

    let mut both = open(&cluster, Some(&ids[4]), Some(&ids[0])).await;
    assert_eq!(event_ids(&read_events(&mut both, 1, T).await), ids[5..]);
    assert_quiet(&mut both, QUIET).await;

    // A malformed query id with a good header: the header still wins.
    let mut good_header = open(&cluster, Some(&ids[4]), Some("nonsense")).await;
    assert_eq!(
        event_ids(&read_events(&mut good_header, 1, T).await),
        ids[5..]
    );
    cluster.shutdown().await;
}

/// After connecting with `header`/`query`: first a reset with `reason`, no
/// replay, then the next posted event live; returns that event's id.
async fn assert_reset_then_live(
    cluster: &Cluster,
    watcher: &mut SseClient,
    header: Option<&str>,
    query: Option<&str>,
    reason: &str,
) -> String {
    let mut client = open(cluster, header, query).await;
    assert_eq!(
        next_got(&mut client, T).await,
        Some(Got::Reset(reason.to_owned())),
        "Last-Event-ID {header:?}, ?lastEventId={query:?}"
    );
    let live = post_n(cluster, watcher, "live", 1).await;
    assert_eq!(
        read_events(&mut client, 1, T).await,
        vec![Got::Event(live[0].clone())],
        "Last-Event-ID {header:?}, ?lastEventId={query:?}"
    );
    assert_quiet(&mut client, QUIET).await;
    live[0].clone()
}

/// Ids that are not `<ms>-<seq>` get `reset` `malformed_event_id`, never an HTTP error.
async fn malformed_id_gets_reset_then_live(kind: BusKind) {
    let cluster = Cluster::start(kind, 1, &[]).await;
    let mut watcher = open(&cluster, None, None).await;
    post_n(&cluster, &mut watcher, "m", 3).await;
    for bad in ["garbage", "12-", "-3", "1-2-3", "99999999999999999999999-0"] {
        assert_reset_then_live(
            &cluster,
            &mut watcher,
            Some(bad),
            None,
            "malformed_event_id",
        )
        .await;
    }
    assert_reset_then_live(
        &cluster,
        &mut watcher,
        None,
        Some("x"),
        "malformed_event_id",
    )
    .await;
    cluster.shutdown().await;
}

/// Well-formed ids that were never issued (in the future, between two
/// retained ids, the largest possible) get `reset` `unknown_event_id`.
async fn unknown_id_gets_reset_then_live(kind: BusKind) {
    let cluster = Cluster::start(kind, 1, &[]).await;
    let mut watcher = open(&cluster, None, None).await;
    let ids = post_n(&cluster, &mut watcher, "u", 3).await;
    let (ms, seq) = ids[1].split_once('-').unwrap();
    let never_issued = format!("{ms}-{}", seq.parse::<u64>().unwrap() + 1000);
    for unknown in [
        "99999999999999-0",
        never_issued.as_str(),
        "18446744073709551615-18446744073709551615",
    ] {
        assert_reset_then_live(
            &cluster,
            &mut watcher,
            Some(unknown),
            None,
            "unknown_event_id",
        )
        .await;
    }
    assert_reset_then_live(
        &cluster,
        &mut watcher,
        None,
        Some("1-0"),
        "unknown_event_id",
    )
    .await;
    cluster.shutdown().await;
}

/// An id trimmed out of history gets `reset`; the oldest retained id still resumes.
async fn id_older_than_history_gets_reset_then_live(kind: BusKind) {
    // Memory keeps exactly 5. Redis trims with `MAXLEN ~` (whole nodes of
    // ~100 entries), so there the test trims exactly with `XTRIM MINID`.
    let cluster = Cluster::start(kind, 1, &["--event-history-len", "5"]).await;
    let mut watcher = open(&cluster, None, None).await;
    let ids = post_n(&cluster, &mut watcher, "o", 10).await;
    if let Some(redis) = &cluster.redis {
        let _: u64 = ::redis::cmd("XTRIM")
            .arg(HISTORY_KEY)
            .arg("MINID")
            .arg(&ids[5])
            .query(&mut redis.conn())
            .unwrap();
        assert_eq!(history_ids(redis), ids[5..]);
    }
    // The oldest retained id replays exactly the 4 retained after it.
    let mut oldest = open(&cluster, Some(&ids[5]), None).await;
    assert_eq!(event_ids(&read_events(&mut oldest, 4, T).await), ids[6..]);
    assert_quiet(&mut oldest, QUIET).await;
    let mut live = Vec::new();
    for old in [&ids[0], &ids[4]] {
        live.push(
            assert_reset_then_live(&cluster, &mut watcher, Some(old), None, "unknown_event_id")
                .await,
        );
    }
    assert_eq!(event_ids(&read_events(&mut oldest, 2, T).await), live);
    assert_quiet(&mut oldest, QUIET).await;
    cluster.shutdown().await;
}

/// Publishing continuously while 10 clients drop and resume with their last
/// id (alternating instances on Redis): each client's concatenated ids equal
/// the history order over the span it covered, exactly once.
async fn seam_has_no_gap_or_duplicate_under_load(kind: BusKind) {
    const EVENTS: usize = 400;
    const CLIENTS: usize = 10;
    let cluster = Cluster::start(kind, 2, &[]).await;
    let mut reference = open(&cluster, None, None).await;
    let urls: Vec<String> = (0..2).map(|i| cluster.sse(i)).collect();
    // The last id, once the reference client has seen all events.
    let (final_tx, final_rx) = tokio::sync::watch::channel(None::<String>);

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (urls, final_rx) = (urls.clone(), final_rx.clone());
        clients.push(tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            let mut reconnects = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            loop {
                let url = &urls[(c + reconnects) % urls.len()];
                let (mut client, _) = SseClient::open(url, seen.last().map(String::as_str)).await;
                // Read a varying number of events, then drop the connection.
                let quota = 1 + (c * 7 + reconnects * 13) % 30;
                for _ in 0..quota {
                    match next_got(&mut client, Duration::from_millis(500)).await {
                        Some(Got::Event(id)) => seen.push(id),
                        Some(Got::Reset(reason)) => {
                            panic!("client {c}: reset {reason} after {seen:?}")
                        }
                        None => break,
                    }
                }
                reconnects += 1;
                let last = final_rx.borrow().clone();
                if last.is_some() && last.as_ref() == seen.last() {
                    return (seen, reconnects);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "client {c} did not reach the last event; saw {} events",
                    seen.len()
                );
            }
        }));
    }

    let bases = cluster.bases();
    let publisher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        // ~5 ms apart: ~2 s of continuous publishing on both instances.
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for i in 0..EVENTS {
            tick.tick().await;
            let base = &bases[i % bases.len()];
            let (status, body) = post_account(&http, base, &format!("seam{i}"), 1).await;
            assert_eq!(status, 201, "{body}");
        }
    });
    let all = event_ids(&read_events(&mut reference, EVENTS, Duration::from_secs(60)).await);
    publisher.await.unwrap();
    if let Some(redis) = &cluster.redis {
        assert_eq!(all, history_ids(redis), "the reference client is history");
    }
    final_tx.send(all.last().cloned()).unwrap();

    for (c, client) in clients.into_iter().enumerate() {
        let (seen, reconnects) = client.await.unwrap();
        let start = all
            .iter()
            .position(|id| *id == seen[0])
            .unwrap_or_else(|| panic!("client {c}: first id {} not in history", seen[0]));
        assert_eq!(
            seen,
            all[start..],
            "client {c} ({reconnects} connections) differs from history"
        );
        assert!(
            reconnects > 5,
            "client {c} connected only {reconnects} times"
        );
    }
    cluster.shutdown().await;
}

/// An id received on one instance resumes on the other (Redis: shared history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_the_other_instance() {
    let cluster = Cluster::start(BusKind::Redis, 2, &[]).await;
    let (mut on_a, server) = SseClient::open(&cluster.sse(0), None).await;
    assert_eq!(server, "backend-1");
    let ids = post_n(&cluster, &mut on_a, "x", 5).await;
    drop(on_a);

    let (mut on_b, server) = SseClient::open(&cluster.sse(1), Some(&ids[2])).await;
    assert_eq!(server, "backend-2");
    assert_eq!(event_ids(&read_events(&mut on_b, 2, T).await), ids[3..]);
    // Live events posted on either instance follow, once each.
    let http = reqwest::Client::new();
    for i in 0..4 {
        let (status, _) = post_account(&http, &cluster.base(i), &format!("y{i}"), 1).await;
        assert_eq!(status, 201);
    }
    let live = event_ids(&read_events(&mut on_b, 4, T).await);
    let redis = cluster.redis.as_ref().unwrap();
    let history = history_ids(redis);
    assert_eq!(history[..5], ids[..]);
    assert_eq!(live, history[5..]);
    assert_quiet(&mut on_b, QUIET).await;
    cluster.shutdown().await;
}
