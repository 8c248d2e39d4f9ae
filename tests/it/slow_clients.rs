//! Load and slow clients (SPEC §3.4 "Slow clients", §5): a 10,000-event burst
//! reaches 100 clients identically; a client that never reads neither delays
//! the others nor grows the server's memory, and is dropped after
//! `SSE_SEND_TIMEOUT_SECS`; a client that pauses long enough to lag the
//! broadcast is caught up from history exactly once in order, or gets
//! `reset` when history no longer reaches back.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::support::{
    app::wait_healthy,
    delivery::{
        event_ids, history_ids, next_got, post_many, read_events, sse_clients, BusKind, Cluster,
        Got, RawSse,
    },
    eventually, ServerProcess, SseClient, TestRedis,
};

/// Per-event deadline while reading a large run of events.
const T: Duration = Duration::from_secs(60);

/// A name of 95–99 characters of 4 bytes each: about the largest event the
/// API accepts (names are limited to 100 characters; ~0.8 KiB an event).
fn large_prefix() -> String {
    "\u{1F600}".repeat(94)
}

/// Posts batches of `batch` large events to `base` until `done` says so;
/// returns how many were posted. Panics past `max`. Kernel socket buffers
/// differ between machines (here `tcp_wmem` autotunes a stalled socket's
/// send buffer up to 4 MiB), so tests post until the effect is observed
/// instead of a fixed count.
async fn post_until<F, Fut>(base: &str, batch: usize, max: usize, mut done: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut posted = 0;
    while !done().await {
        assert!(posted < max, "condition not reached after {posted} events");
        post_many(&[base.to_owned()], &large_prefix(), batch, 16).await;
        posted += batch;
    }
    posted
}

/// Spawns a task reading events from `client` until it has as many as
/// `total` says (set once known); panics on reset, stall or end of stream.
fn collect_until(
    mut client: SseClient,
    mut total: tokio::sync::watch::Receiver<usize>,
    name: String,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        loop {
            if ids.len() >= *total.borrow_and_update() {
                return ids;
            }
            tokio::select! {
                got = next_got(&mut client, T) => match got {
                    Some(Got::Event(id)) => ids.push(id),
                    Some(Got::Reset(reason)) => panic!("{name}: reset {reason}"),
                    None => panic!("{name}: stream ended or stalled after {} events", ids.len()),
                },
                _ = total.changed() => {}
            }
        }
    })
}

/// Spawns a task reading `n` events from `client`; panics on reset.
fn collect(mut client: SseClient, n: usize, name: String) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            match next_got(&mut client, T).await {
                Some(Got::Event(id)) => ids.push(id),
                Some(Got::Reset(reason)) => panic!("{name}: reset {reason}"),
                None => panic!("{name}: stream ended or stalled after {} events", ids.len()),
            }
        }
        ids
    })
}

/// 10,000 events posted by 16 concurrent tasks to two instances reach each
/// of 100 clients (50 per instance) exactly once, in history order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_10000_events_reaches_100_clients_identically() {
    const EVENTS: usize = 10_000;
    const CLIENTS: usize = 100;
    let cluster = Cluster::start(BusKind::Redis, 2, &[]).await;
    let mut readers = Vec::new();
    for c in 0..CLIENTS {
        let (client, _) = SseClient::open(&cluster.sse(c), None).await;
        readers.push(collect(client, EVENTS, format!("client {c}")));
    }
    post_many(&cluster.bases(), "burst", EVENTS, 16).await;
    let history = history_ids(cluster.redis.as_ref().unwrap());
    assert_eq!(history.len(), EVENTS);
    for (c, reader) in readers.into_iter().enumerate() {
        let ids = reader.await.unwrap();
        assert!(ids == history, "client {c} differs from history");
    }
    cluster.shutdown().await;
}

/// Samples the process's RSS every 50 ms and keeps the maximum, until stopped.
fn sample_max_rss(pid: u32) -> (Arc<AtomicU64>, Arc<AtomicBool>) {
    let (max, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (max_w, stop_r) = (max.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !stop_r.load(Ordering::Relaxed) {
            tick.tick().await;
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                max_w.fetch_max(rss, Ordering::Relaxed);
            }
        }
    });
    (max, stop)
}

/// Clients that never read (tiny receive buffer, send timeout far away)
/// while enough large events are posted to fill their socket buffers and
/// overrun the broadcast (5,000 would still fit in the kernel's 4 MiB send
/// buffers): three normal clients get every event in order, and the
/// server's RSS stays within a fixed bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_do_not_delay_others_or_grow_memory() {
    const STALLED: usize = 20;
    const READERS: usize = 3;
    let redis = TestRedis::start();
    let url = redis.url();
    let server = ServerProcess::spawn(&[
        ("REDIS_URL", &url),
        ("SERVER_ID", "backend-1"),
        ("SSE_SEND_TIMEOUT_SECS", "600"),
        ("EVENT_HISTORY_LEN", "1000000"),
    ])
    .await;
    wait_healthy(&server.base()).await;
    let events = events_to_lag();
    let sse = format!("{}/events/sse", server.base());
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (client, _) = SseClient::open(&sse, None).await;
        readers.push(collect(client, events, format!("reader {r}")));
    }
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(RawSse::send_request(server.addr, 4096, None).await);
    }
    let base = server.base();
    eventually(T, "all streams open", || {
        let base = base.clone();
        async move { (sse_clients(&base).await == Some((READERS + STALLED) as u64)).then_some(()) }
    })
    .await;
    let baseline = server.rss_kib();
    let (max_rss, stop) = sample_max_rss(server.pid());

    post_many(&[server.base()], &large_prefix(), events, 16).await;
    let history = history_ids(&redis);
    assert_eq!(history.len(), events);
    for (r, reader) in readers.into_iter().enumerate() {
        assert!(
            reader.await.unwrap() == history,
            "reader {r} differs from history"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let grown_kib = max_rss.load(Ordering::Relaxed).saturating_sub(baseline);
    // The bound. What legitimately grows: the shared broadcast ring (4096
    // frames × ~0.8 KiB ≈ 3 MiB), per stalled stream at most hyper's write
    // buffer (≤ ~400 KiB) plus one ≤ 64 KiB coalesced chunk (≈ 9 MiB for
    // 20), history pages read for catch-up (1000 events ≈ 0.8 MiB each) and
    // allocator slack of a debug build. The kernel's socket buffers hold up
    // to `tcp_wmem` max per stalled socket, outside RSS. A server that queued
    // in user space what the kernel no longer takes would hold, per stalled
    // client, ~(events × 0.8 KiB − 5 MiB) ≈ 6 MiB, 120 MiB for 20; 40 MiB
    // separates the two.
    const BOUND_KIB: u64 = 40 * 1024;
    assert!(
        grown_kib < BOUND_KIB,
        "RSS grew by {grown_kib} KiB (baseline {baseline} KiB), bound {BOUND_KIB} KiB"
    );
    eprintln!("RSS baseline {baseline} KiB, grew by at most {grown_kib} KiB");
    // The stalled clients are still open (timeout far away): they were not
    // dropped to make room, they were simply not buffered for. (The readers
    // closed their streams when done.)
    assert_eq!(sse_clients(&base).await, Some(STALLED as u64));
    drop(stalled);
}

/// With `SSE_SEND_TIMEOUT_SECS=2`, a client that never reads is dropped
/// once its socket buffers are full (events keep being posted until then),
/// while a normal client gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_after_the_send_timeout() {
    let redis = TestRedis::start();
    let url = redis.url();
    let server = ServerProcess::spawn(&[
        ("REDIS_URL", &url),
        ("SERVER_ID", "backend-1"),
        ("SSE_SEND_TIMEOUT_SECS", "2"),
        ("EVENT_HISTORY_LEN", "1000000"),
    ])
    .await;
    wait_healthy(&server.base()).await;
    let base = server.base();
    let (client, _) = SseClient::open(&format!("{base}/events/sse"), None).await;
    let (total_tx, total_rx) = tokio::sync::watch::channel(usize::MAX);
    let reader = collect_until(client, total_rx, "reader".to_owned());
    let stalled = RawSse::send_request(server.addr, 4096, None).await;
    eventually(T, "both streams open", || {
        let base = base.clone();
        async move { (sse_clients(&base).await == Some(2)).then_some(()) }
    })
    .await;

    let posted = post_until(&base, 1000, 60_000, || {
        let base = base.clone();
        async move { sse_clients(&base).await == Some(1) }
    })
    .await;
    total_tx.send(posted).unwrap();
    let history = history_ids(&redis);
    assert_eq!(history.len(), posted);
    assert!(
        reader.await.unwrap() == history,
        "reader differs from history"
    );
    eprintln!("stalled client dropped after {posted} events");
    drop(stalled);
}

/// How many large events make a paused stream lag the broadcast: enough to
/// fill the server's socket send buffer (autotuned up to `tcp_wmem` max,
/// read from /proc), hyper's write buffer (≤ ~400 KiB) and the client's tiny
/// receive buffer — counted at a conservative 600 bytes an event, though
/// each is ~0.8 KiB — plus the broadcast buffer ([`LAG_CAPACITY`] batches of
/// at most 16 KiB each, at worst 2 MiB of ~600-byte events) and a margin. The lag is
/// only discovered when the stream is polled again, so the tests assert the
/// server's lag log line after reading.
fn events_to_lag() -> usize {
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    (wmem_max + (1 << 20) + LAG_CAPACITY * 16 * 1024) / 600 + 1000
}

/// `BROADCAST_CAPACITY` for the lag tests: small, so that lagging does not
/// depend on how many events the subscriber happens to batch together.
const LAG_CAPACITY: usize = 64;

/// The debug line `routes::events` logs when a stream lags the broadcast.
const LAGGED_LOG: &str = "client lagged; catching up from history";

/// Starts a real instance with `env`, a raw client with a tiny receive
/// buffer that reads the preamble then pauses, and a normal reference client.
async fn paused_client_setup(
    redis: &TestRedis,
    env: &[(&str, &str)],
) -> (ServerProcess, SseClient, SseClient) {
    let url = redis.url();
    let mut all = vec![
        ("REDIS_URL", url.as_str()),
        ("SERVER_ID", "backend-1"),
        ("SSE_SEND_TIMEOUT_SECS", "600"),
        ("BROADCAST_CAPACITY", "64"),
        ("RUST_LOG", "info,sse_fanout::routes::events=debug"),
    ];
    all.extend_from_slice(env);
    let server = ServerProcess::spawn(&all).await;
    wait_healthy(&server.base()).await;
    let (reference, _) = SseClient::open(&format!("{}/events/sse", server.base()), None).await;
    let stream = RawSse::send_request(server.addr, 4096, None).await;
    let mut paused = RawSse::into_client(stream).await;
    assert_eq!(paused.status, 200);
    let retry = paused.next_frame(T).await.unwrap();
    assert!(retry.retry.is_some(), "{retry:?}");
    let connected = paused.next_frame(T).await.unwrap();
    assert_eq!(connected.event.as_deref(), Some("connected"));
    (server, paused, reference)
}

/// A client that stops reading until it has lagged the broadcast buffer, and then reads again, gets every event exactly once, in order:
/// caught up from history (then live again for a last batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_is_caught_up_from_history() {
    let redis = TestRedis::start();
    let (server, mut paused, _reference) =
        paused_client_setup(&redis, &[("EVENT_HISTORY_LEN", "1000000")]).await;
    let mut posted = events_to_lag();
    post_many(&[server.base()], &large_prefix(), posted, 16).await;
    let got = read_events(&mut paused, posted, T).await;
    assert_lagged(&server);
    post_many(&[server.base()], "after", 100, 4).await;
    posted += 100;
    let mut got = event_ids(&got);
    got.extend(event_ids(&read_events(&mut paused, 100, T).await));
    let history = history_ids(&redis);
    assert_eq!(history.len(), posted);
    assert!(got == history, "the paused client differs from history");
}

/// The same pause with `EVENT_HISTORY_LEN=100`: history no longer reaches
/// back, so the client gets `reset` (`lagged_beyond_history`) and then an
/// unbroken run of events up to the newest, never a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_lagging_beyond_history_gets_reset() {
    let redis = TestRedis::start();
    let (server, mut paused, reference) =
        paused_client_setup(&redis, &[("EVENT_HISTORY_LEN", "100")]).await;
    let (total_tx, total_rx) = tokio::sync::watch::channel(usize::MAX);
    let reference = collect_until(reference, total_rx, "reference".to_owned());
    let posted = events_to_lag();
    post_many(&[server.base()], &large_prefix(), posted, 16).await;
    total_tx.send(posted).unwrap();
    let all = reference.await.unwrap();

    let mut got = Vec::new();
    while got.last() != Some(&Got::Event(all[posted - 1].clone())) {
        got.push(
            next_got(&mut paused, T)
                .await
                .unwrap_or_else(|| panic!("stalled after {} items", got.len())),
        );
    }
    let reset_at = got
        .iter()
        .position(|g| *g == Got::Reset("lagged_beyond_history".to_owned()))
        .unwrap_or_else(|| panic!("no reset among {} items", got.len()));
    let before = event_ids(&got[..reset_at]);
    let after = event_ids(&got[reset_at + 1..]);
    assert_eq!(before, all[..before.len()], "before the reset: a prefix");
    assert!(!after.is_empty());
    assert_eq!(
        after,
        all[posted - after.len()..],
        "after the reset: a suffix"
    );
    assert!(
        before.len() + after.len() < posted,
        "a reset must stand for missed events"
    );
    assert_lagged(&server);
}

fn assert_lagged(server: &ServerProcess) {
    assert!(
        server.log.lock().unwrap().contains(LAGGED_LOG),
        "the paused client never lagged the broadcast; raise events_to_lag()"
    );
}
