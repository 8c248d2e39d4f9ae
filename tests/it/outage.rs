//! Redis outages (SPEC §2, §3.3, §5): with Redis killed, `/health` is `503
//! degraded`, `POST` is `503 bus_unavailable`, and open SSE streams stay open
//! with keep-alives; once Redis is back, `/health` is 200 again and the same,
//! never reconnected, clients receive new events. Redis down at start-up is
//! not fatal: the instance starts not-ready and recovers.

use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, post_account, SseClient, SseFrame, TestApp, TestRedis};

/// `GET /health` as `(status, body)`.
async fn health(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let response = http.get(format!("{base}/health")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Waits until `/health` answers `status`; returns the body.
async fn health_becomes(http: &reqwest::Client, base: &str, status: u16) -> Value {
    eventually(
        Duration::from_secs(20),
        &format!("/health to answer {status}"),
        || async move {
            let (got, body) = health(http, base).await;
            (got == status).then_some(body)
        },
    )
    .await
}

fn assert_degraded(body: &Value) {
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["bus"], "redis", "{body}");
    assert_eq!(body["redis"], "down", "{body}");
}

fn assert_ready(body: &Value) {
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["bus"], "redis", "{body}");
    assert_eq!(body["redis"], "up", "{body}");
}

/// POST must be refused with `503 bus_unavailable` in the error envelope.
async fn assert_post_unavailable(http: &reqwest::Client, base: &str) {
    let (status, body) = post_account(http, base, "while down", 1).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "bus_unavailable", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// Reads `n` keep-alives (each within 5 s) and asserts nothing else arrives.
async fn expect_only_keepalives(client: &mut SseClient, n: usize) {
    for i in 0..n {
        let frame = client
            .next_frame(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("stream ended or went silent before keep-alive {i}"));
        assert_eq!(frame.comment.as_deref(), Some("keep-alive"), "{frame:?}");
    }
}

/// Reads frames until one message; every frame before it must be an
/// `event: reset` (history was lost with the restarted Redis). Returns the
/// resets and the message.
async fn next_message_after_resets(client: &mut SseClient) -> (Vec<SseFrame>, SseFrame) {
    let mut frames = client.messages(1, Duration::from_secs(10)).await;
    let message = frames.pop().unwrap();
    for frame in &frames {
        assert_eq!(frame.event.as_deref(), Some("reset"), "{frame:?}");
    }
    (frames, message)
}

/// Nothing but keep-alives for 300 ms.
async fn assert_no_more_events(client: &mut SseClient) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_frame(left).await {
            None => return,
            Some(frame) => assert!(frame.comment.is_some(), "unexpected {frame:?}"),
        }
    }
}

/// Kill Redis under two running instances, then start it again on the
/// same port: 503 then 200, POST 503 then 201, and the old SSE clients
/// (one per instance) keep their streams and receive the new event.
#[tokio::test]
async fn redis_killed_and_restarted_old_streams_survive_and_receive_new_events() {
    let mut redis = TestRedis::start();
    let url = redis.url();
    let args = |id| {
        [
            "--server-id",
            id,
            "--redis-url",
            &url,
            "--sse-keepalive-secs",
            "1",
        ]
    };
    let a = TestApp::spawn(&args("backend-1")).await;
    let b = TestApp::spawn(&args("backend-2")).await;
    let http = reqwest::Client::new();
    let (mut on_a, _) = SseClient::open(&format!("{}/events/sse", a.base()), None).await;
    let (mut on_b, _) = SseClient::open(&format!("{}/events/sse", b.base()), None).await;
    let (status, before) = post_account(&http, &a.base(), "before", 1).await;
    assert_eq!(status, 201);
    for client in [&mut on_a, &mut on_b] {
        let frames = client.messages(1, Duration::from_secs(5)).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].json()["data"], before);
    }

    redis.kill();
    for app in [&a, &b] {
        let body = health_becomes(&http, &app.base(), 503).await;
        assert_degraded(&body);
        assert_post_unavailable(&http, &app.base()).await;
    }
    // Streams stay open through the outage, with keep-alives only.
    expect_only_keepalives(&mut on_a, 2).await;
    expect_only_keepalives(&mut on_b, 2).await;
    assert_post_unavailable(&http, &b.base()).await;

    redis.start_again();
    for app in [&a, &b] {
        let body = health_becomes(&http, &app.base(), 200).await;
        assert_ready(&body);
    }
    let (status, after) = post_account(&http, &b.base(), "after", 2).await;
    assert_eq!(status, 201, "{after}");
    for (name, client) in [("on_a", &mut on_a), ("on_b", &mut on_b)] {
        // History died with Redis, so the instance cannot prove no event was
        // lost: exactly one `reset` (history_lost), then the new event.
        let (resets, message) = next_message_after_resets(client).await;
        assert_eq!(resets.len(), 1, "{name}: {resets:?}");
        assert_eq!(
            resets[0].json(),
            serde_json::json!({ "reason": "history_lost" })
        );
        assert_eq!(resets[0].id, None, "{name}: a reset has no id");
        let event = message.json();
        assert_eq!(event["data"], after, "{name}");
        assert_eq!(event["serverId"], "backend-2", "{name}");
        assert_eq!(message.id.as_deref(), event["id"].as_str(), "{name}");
        assert_no_more_events(client).await;
    }
    // The `before` account died with Redis; the new one reads back anywhere.
    let id = after["id"].as_str().unwrap();
    let read: Value = crate::support::get_json(&http, &format!("{}/accounts/{id}", a.base())).await;
    assert_eq!(read, after);
    a.shutdown().await;
    b.shutdown().await;
}

/// Redis unreachable at start-up: the instance starts anyway, not ready
/// (503 degraded, POST 503), serves SSE, and recovers when Redis appears.
#[tokio::test]
async fn redis_down_at_start_then_up() {
    let mut redis = TestRedis::start();
    let url = redis.url();
    redis.kill();
    let app = TestApp::spawn_unready(&["--redis-url", &url, "--sse-keepalive-secs", "1"]).await;
    let http = reqwest::Client::new();

    let (status, body) = health(&http, &app.base()).await;
    assert_eq!(status, 503, "{body}");
    assert_degraded(&body);
    assert_post_unavailable(&http, &app.base()).await;
    let live = http
        .get(format!("{}/health/live", app.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "liveness does not depend on Redis");
    let (mut client, _) = SseClient::open(&format!("{}/events/sse", app.base()), None).await;
    expect_only_keepalives(&mut client, 1).await;

    redis.start_again();
    let body = health_becomes(&http, &app.base(), 200).await;
    assert_ready(&body);
    let (status, account) = post_account(&http, &app.base(), "first", 7).await;
    assert_eq!(status, 201, "{account}");
    // This instance never forwarded an event, so nothing can have been lost.
    let (resets, message) = next_message_after_resets(&mut client).await;
    assert_eq!(resets, [], "no reset expected");
    assert_eq!(message.json()["data"], account);
    // A client connected after recovery gets it too, with no reset.
    let (mut late, _) = SseClient::open(&format!("{}/events/sse", app.base()), None).await;
    let (status, second) = post_account(&http, &app.base(), "second", 8).await;
    assert_eq!(status, 201);
    for c in [&mut client, &mut late] {
        let frames = c.messages(1, Duration::from_secs(5)).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].json()["data"], second);
    }
    app.shutdown().await;
}
