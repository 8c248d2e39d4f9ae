//! `GET /events/sse` (SPEC §3.4, §5): clients on two instances receive
//! concurrently posted events exactly once and in one order (history's
//! order); response headers, preamble and keep-alive timing; the memory bus
//! end to end with resume; and the classic two-instance demo with the real
//! binary.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::Value;

use crate::support::{
    app::wait_healthy, post_account, redis_inspect::history_ids, ServerProcess, SseClient,
    SseFrame, TestApp, TestRedis,
};

/// `<ms>-<seq>` as a pair, for ordering assertions (clients treat ids as
/// opaque; the test knows their form to check "strictly increasing").
fn id_pair(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("event id {id:?}"));
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// The event ids of `frames`, checking each is an unnamed message whose
/// `id:` equals the JSON's `id`, and that ids strictly increase.
fn checked_ids(who: &str, frames: &[SseFrame]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(frames.len());
    for frame in frames {
        assert!(frame.is_message(), "{who}: unexpected frame {frame:?}");
        let id = frame.id.clone().unwrap_or_else(|| panic!("{who}: no id"));
        assert_eq!(frame.json()["id"], id.as_str(), "{who}");
        if let Some(last) = ids.last() {
            assert!(
                id_pair(last) < id_pair(&id),
                "{who}: id {id} after {last} is not increasing"
            );
        }
        ids.push(id);
    }
    ids
}

/// Three clients (two on A, one on B) receive 300 events posted
/// concurrently to both instances exactly once each, in the same order,
/// which is history's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_on_two_instances_get_300_concurrent_events_once_in_one_order() {
    const TASKS: usize = 30;
    const PER_TASK: usize = 10;
    const TOTAL: usize = TASKS * PER_TASK;
    let redis = TestRedis::start();
    let url = redis.url();
    let a = TestApp::spawn(&["--server-id", "backend-1", "--redis-url", &url]).await;
    let b = TestApp::spawn(&["--server-id", "backend-2", "--redis-url", &url]).await;

    let mut readers = Vec::new();
    for (name, base) in [("a1", a.base()), ("a2", a.base()), ("b1", b.base())] {
        let (mut client, _) = SseClient::open(&format!("{base}/events/sse"), None).await;
        readers.push(tokio::spawn(async move {
            let frames = client.messages(TOTAL, Duration::from_secs(60)).await;
            let extra = client.next_frame(Duration::from_millis(300)).await;
            (name, frames, extra)
        }));
    }

    let http = reqwest::Client::new();
    let mut posters = Vec::new();
    for task in 0..TASKS {
        let http = http.clone();
        let bases = [a.base(), b.base()];
        posters.push(tokio::spawn(async move {
            let mut created = Vec::new();
            for i in 0..PER_TASK {
                let base = &bases[(task + i) % 2];
                let (status, account) = post_account(
                    &http,
                    base,
                    &format!("t{task}-{i}"),
                    (task * 100 + i) as u64,
                )
                .await;
                assert_eq!(status, 201, "{account}");
                created.push(account);
            }
            created
        }));
    }
    let mut accounts: HashMap<String, Value> = HashMap::new();
    for poster in posters {
        for account in poster.await.unwrap() {
            accounts.insert(account["id"].as_str().unwrap().to_owned(), account);
        }
    }
    assert_eq!(accounts.len(), TOTAL);

    let mut sequences = Vec::new();
    for reader in readers {
        let (name, frames, extra) = reader.await.unwrap();
        assert_eq!(frames.len(), TOTAL, "{name}: only messages expected");
        assert_eq!(extra, None, "{name}: more than {TOTAL} frames");
        let ids = checked_ids(name, &frames);
        let mut seen = HashSet::new();
        for frame in &frames {
            let event = frame.json();
            assert_eq!(event["type"], "account.created", "{name}");
            let account_id = event["data"]["id"].as_str().unwrap();
            assert!(seen.insert(account_id.to_owned()), "{name}: duplicate");
            assert_eq!(event["data"], accounts[account_id], "{name}");
            assert_eq!(event["serverId"], accounts[account_id]["serverId"]);
        }
        assert_eq!(seen.len(), TOTAL, "{name}: every account exactly once");
        sequences.push((name, ids));
    }
    let (_, first) = &sequences[0];
    for (name, ids) in &sequences[1..] {
        assert_eq!(ids, first, "{name} saw another order than a1");
    }
    assert_eq!(
        &history_ids(&redis),
        first,
        "clients' order = history's order"
    );

    a.shutdown().await;
    b.shutdown().await;
}

/// `text/event-stream`, `no-cache`, `X-Accel-Buffering: no`; the stream
/// opens with `retry:` (default 3000, configurable) and `event: connected`.
#[tokio::test]
async fn sse_response_headers_and_preamble() {
    for (args, retry) in [
        (vec!["--server-id", "backend-7"], "3000"),
        (
            vec!["--server-id", "backend-7", "--sse-retry-ms", "1500"],
            "1500",
        ),
    ] {
        let app = TestApp::spawn(&args).await;
        let mut client = SseClient::connect(&format!("{}/events/sse", app.base())).await;
        assert_eq!(client.status, 200);
        let header = |name: &str| {
            client.headers.get(name).map_or_else(
                || panic!("no {name} header"),
                |v| v.to_str().unwrap().to_owned(),
            )
        };
        assert_eq!(header("content-type"), "text/event-stream");
        assert_eq!(header("cache-control"), "no-cache");
        assert_eq!(header("x-accel-buffering"), "no");
        let first = client.next_frame(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            first,
            SseFrame {
                retry: Some(retry.to_owned()),
                ..SseFrame::default()
            }
        );
        let connected = client.next_frame(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            connected,
            SseFrame {
                event: Some("connected".to_owned()),
                data: r#"{"serverId":"backend-7"}"#.to_owned(),
                ..SseFrame::default()
            }
        );
        // Nothing else until an event (keep-alive is 15 s by default).
        assert_eq!(client.next_frame(Duration::from_millis(300)).await, None);
        app.shutdown().await;
    }
}

/// Waits for the next frame and asserts it is `: keep-alive`; returns when it came.
async fn expect_keepalive(client: &mut SseClient, within: Duration) -> Instant {
    let frame = client
        .next_frame(within)
        .await
        .unwrap_or_else(|| panic!("no keep-alive within {within:?}"));
    assert_eq!(frame.comment.as_deref(), Some("keep-alive"), "{frame:?}");
    Instant::now()
}

/// With `SSE_KEEPALIVE_SECS=1` an idle client gets `: keep-alive` about
/// every second, never sooner, and an event restarts the timer.
#[tokio::test]
async fn keepalive_comments_follow_one_second_of_silence() {
    let redis = TestRedis::start();
    let url = redis.url();
    let app = TestApp::spawn(&["--redis-url", &url, "--sse-keepalive-secs", "1"]).await;
    let (mut client, _) = SseClient::open(&format!("{}/events/sse", app.base()), None).await;
    let opened = Instant::now();
    // Lower bounds are 0.8 s, not 1 s, for client-side scheduling jitter;
    // upper bounds are generous for a loaded machine.
    let first = expect_keepalive(&mut client, Duration::from_secs(5)).await;
    assert!(
        first - opened >= Duration::from_millis(800),
        "{:?}",
        first - opened
    );
    let second = expect_keepalive(&mut client, Duration::from_secs(5)).await;
    assert!(
        second - first >= Duration::from_millis(800),
        "{:?}",
        second - first
    );
    let third = expect_keepalive(&mut client, Duration::from_secs(5)).await;
    assert!(
        third - second >= Duration::from_millis(800),
        "{:?}",
        third - second
    );

    // Post an event in the middle of an interval: after 0.6 s of silence
    // following a keep-alive. If the timer did not restart on the event, the
    // next keep-alive would come about 0.4 s after it. (On a slow machine a
    // keep-alive may land inside the 0.6 s window; then try the next one.)
    let mut tries = 0;
    while let Some(frame) = client.next_frame(Duration::from_millis(600)).await {
        assert_eq!(frame.comment.as_deref(), Some("keep-alive"), "{frame:?}");
        tries += 1;
        assert!(tries < 5, "never 0.6 s of silence after a keep-alive");
    }
    let http = reqwest::Client::new();
    let (status, account) = post_account(&http, &app.base(), "tick", 1).await;
    assert_eq!(status, 201);
    let frames = client.messages(1, Duration::from_secs(5)).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].json()["data"], account);
    let event_at = Instant::now();
    assert_eq!(
        client.next_frame(Duration::from_millis(500)).await,
        None,
        "nothing within 0.5 s of an event"
    );
    let after_event = expect_keepalive(&mut client, Duration::from_secs(5)).await;
    assert!(
        after_event - event_at >= Duration::from_millis(800),
        "keep-alive {:?} after an event",
        after_event - event_at
    );
    app.shutdown().await;
}

/// No Redis at all: POST reaches the SSE client, GET reads the account,
/// `/health` says `"bus":"memory"` without a `redis` field, and a
/// `Last-Event-ID` resume replays exactly the later events.
#[tokio::test]
async fn memory_bus_end_to_end_with_resume() {
    let app = TestApp::spawn(&["--server-id", "solo"]).await;
    let http = reqwest::Client::new();

    let response = http
        .get(format!("{}/health", app.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["bus"], "memory", "{health}");
    assert_eq!(health["serverId"], "solo", "{health}");
    assert!(health.get("redis").is_none(), "no redis field: {health}");
    assert_eq!(health["sseClients"], 0, "{health}");
    for path in ["/health", "/health/live"] {
        let head = http
            .head(format!("{}{path}", app.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
    }

    let sse = format!("{}/events/sse", app.base());
    let (mut client, server) = SseClient::open(&sse, None).await;
    assert_eq!(server, "solo");
    let mut created = Vec::new();
    for (name, balance) in [("one", 1), ("two", 2), ("three", 3)] {
        let (status, account) = post_account(&http, &app.base(), name, balance).await;
        assert_eq!(status, 201, "{account}");
        created.push(account);
    }
    let frames = client.messages(3, Duration::from_secs(5)).await;
    let ids = checked_ids("live", &frames);
    for (frame, account) in frames.iter().zip(&created) {
        let event = frame.json();
        assert_eq!(event["type"], "account.created");
        assert_eq!(event["serverId"], "solo");
        assert_eq!(&event["data"], account);
    }

    let id = created[1]["id"].as_str().unwrap();
    let read: Value =
        crate::support::get_json(&http, &format!("{}/accounts/{id}", app.base())).await;
    assert_eq!(read, created[1]);

    // Resume after the first event: exactly the second and third, then live.
    let (mut resumed, _) = SseClient::open(&sse, Some(&ids[0])).await;
    let health: Value = crate::support::get_json(&http, &format!("{}/health", app.base())).await;
    assert_eq!(health["sseClients"], 2, "{health}");
    let replay = resumed.messages(2, Duration::from_secs(5)).await;
    assert_eq!(checked_ids("resumed", &replay), ids[1..]);
    assert_eq!(resumed.next_frame(Duration::from_millis(300)).await, None);
    let (status, four) = post_account(&http, &app.base(), "four", 4).await;
    assert_eq!(status, 201);
    for c in [&mut client, &mut resumed] {
        let frames = c.messages(1, Duration::from_secs(5)).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].json()["data"], four);
    }
    app.shutdown().await;
}

/// Reads raw SSE bytes until `blocks` blank-line-terminated blocks arrived.
async fn read_blocks(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    text: &mut String,
    blocks: usize,
    timeout: Duration,
) {
    tokio::time::timeout(timeout, async {
        while text.matches("\n\n").count() < blocks {
            let chunk = body.next().await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {blocks} SSE blocks within {timeout:?}: {text:?}"));
}

/// The README demo with the real binary: two processes on one Redis, a
/// stream on backend-1, a POST to backend-2; prints the exchange.
#[tokio::test]
async fn classic_demo_two_real_processes_one_redis() {
    let redis = TestRedis::start();
    let url = redis.url();
    let one = ServerProcess::spawn(&[("REDIS_URL", &url), ("SERVER_ID", "backend-1")]).await;
    let two = ServerProcess::spawn(&[("REDIS_URL", &url), ("SERVER_ID", "backend-2")]).await;
    wait_healthy(&one.base()).await;
    wait_healthy(&two.base()).await;

    let sse_url = format!("{}/events/sse", one.base());
    let http = reqwest::Client::new();
    let response = http.get(&sse_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    read_blocks(&mut body, &mut text, 2, Duration::from_secs(5)).await;
    assert_eq!(
        text,
        "retry: 3000\n\nevent: connected\ndata: {\"serverId\":\"backend-1\"}\n\n"
    );

    let request = r#"{"name":"다중서버테스트","balance":999999}"#;
    let response = http
        .post(format!("{}/accounts", two.base()))
        .header("content-type", "application/json")
        .body(request)
        .send()
        .await
        .unwrap();
    let posted = Instant::now();
    assert_eq!(response.status(), 201);
    let mut head = format!("HTTP/1.1 {}\n", response.status());
    for (name, value) in response.headers() {
        head.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
    }
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let raw_account = response.text().await.unwrap();
    let account: Value = serde_json::from_str(&raw_account).unwrap();
    assert_eq!(
        location,
        format!("/accounts/{}", account["id"].as_str().unwrap())
    );
    assert_eq!(account["serverId"], "backend-2");
    assert_eq!(account["name"], "다중서버테스트");
    assert_eq!(account["balance"], 999_999);

    read_blocks(&mut body, &mut text, 3, Duration::from_secs(5)).await;
    let latency = posted.elapsed();
    let event_block = text.split("\n\n").nth(2).unwrap();
    let lines: Vec<&str> = event_block.lines().collect();
    assert_eq!(lines.len(), 2, "{event_block:?}");
    let id = lines[0].strip_prefix("id: ").unwrap();
    let event: Value = serde_json::from_str(lines[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(event["id"], id);
    assert_eq!(event["type"], "account.created");
    assert_eq!(event["serverId"], "backend-2");
    assert_eq!(event["data"], account);
    assert!(
        latency < Duration::from_secs(1),
        "SPEC §5: within 1 s of the 201, took {latency:?}"
    );

    println!("$ curl -N {sse_url}        # terminal 1, backend-1");
    print!("{text}");
    println!(
        "$ curl -i -X POST {}/accounts -H 'Content-Type: application/json' -d '{request}'        # terminal 2, backend-2",
        two.base()
    );
    println!("{head}\n{raw_account}");
    println!("# event received by backend-1's client {latency:?} after backend-2 answered 201");
}
