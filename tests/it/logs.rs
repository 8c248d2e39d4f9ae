//! Logs of the real binary (SPEC §2 `LOG_FORMAT`, issue 4 "Logs"):
//!
//! - `LOG_FORMAT=json`: every line is a JSON object with `timestamp`, `level` and
//!   `message`;
//! - one `info` line per request, in a `request` span naming method, route template
//!   and `server.id`, with status and latency (JSON and text);
//! - the subscriber logs subscribe, connection loss and reconnect with `server.id`.

use std::time::Duration;

use crate::support::{app::wait_healthy, eventually, post_account, ServerProcess, TestRedis};

/// The captured log lines parsed as JSON; panics on any line that is not a JSON object
/// with `timestamp`, `level` and `message`.
fn json_lines(server: &ServerProcess) -> Vec<serde_json::Value> {
    let log = server.log.lock().unwrap().clone();
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"));
            for key in ["timestamp", "level", "message"] {
                assert!(value.get(key).is_some(), "no {key:?} in {line}");
            }
            value
        })
        .collect()
}

/// Waits up to 10 s for a JSON line matching `predicate`.
async fn json_line(
    server: &ServerProcess,
    what: &str,
    predicate: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(Duration::from_secs(10), what, || {
        let found = json_lines(server).into_iter().find(|l| predicate(l));
        async move { found }
    })
    .await
}

/// JSON logs: request lines with method/route/status/latency and `server.id`;
/// subscriber subscribe, loss and reconnect lines with `server.id`.
#[tokio::test]
async fn json_logs_trace_requests_and_the_subscriber() {
    let mut redis = TestRedis::start();
    let server = ServerProcess::spawn(&[
        ("REDIS_URL", &redis.url()),
        ("SERVER_ID", "backend-7"),
        ("LOG_FORMAT", "json"),
    ])
    .await;
    wait_healthy(&server.base()).await;
    let http = reqwest::Client::new();
    let (status, _) = post_account(&http, &server.base(), "logged", 1).await;
    assert_eq!(status, 201);

    let request = json_line(&server, "the POST /accounts request line", |l| {
        l["span"]["route"] == "/accounts" && l["message"] == "finished processing request"
    })
    .await;
    assert_eq!(request["level"], "INFO", "{request}");
    assert_eq!(request["status"], 201, "{request}");
    assert_eq!(request["span"]["method"], "POST", "{request}");
    assert_eq!(request["span"]["server.id"], "backend-7", "{request}");
    assert!(request["latency"].is_string(), "{request}");

    let subscribed = json_line(&server, "the subscribe line", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("subscriber subscribed"))
    })
    .await;
    assert_eq!(subscribed["server.id"], "backend-7", "{subscribed}");
    assert_eq!(subscribed["level"], "INFO", "{subscribed}");

    redis.kill();
    let lost = json_line(&server, "the connection-lost line", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("subscriber lost its redis connection"))
    })
    .await;
    assert_eq!(lost["server.id"], "backend-7", "{lost}");
    assert_eq!(lost["level"], "WARN", "{lost}");

    redis.start_again();
    let reconnected = json_line(&server, "the reconnect line", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("subscriber reconnected"))
    })
    .await;
    assert_eq!(reconnected["server.id"], "backend-7", "{reconnected}");
}

/// Text logs (the default) carry the same request fields on one `INFO` line.
#[tokio::test]
async fn text_logs_have_one_info_line_per_request() {
    let server = ServerProcess::spawn(&[("SERVER_ID", "backend-8")]).await;
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/accounts/nope", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let line = eventually(Duration::from_secs(10), "the request log line", || {
        let log = server.log.lock().unwrap().clone();
        let line = log
            .lines()
            .find(|l| l.contains("finished processing request") && l.contains("/accounts/nope"))
            .map(str::to_owned);
        async move { line }
    })
    .await;
    for expected in [
        " INFO ",
        "method=GET",
        "route=\"/accounts/{id}\"",
        "server.id=backend-8",
        "status=404",
        "latency=",
    ] {
        assert!(line.contains(expected), "no `{expected}` in {line}");
    }
}
