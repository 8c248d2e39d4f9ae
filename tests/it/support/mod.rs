//! Test fixtures: real redis-server processes, app instances in-process and as
//! child processes, and an SSE client that parses frames per WHATWG HTML §9.2.

pub mod app;
pub mod browser;
pub mod delivery;
pub mod ha;
pub mod redis;
pub mod redis_inspect;
pub mod sse;

use std::{future::Future, time::Duration};

pub use self::{
    app::{ServerProcess, TestApp},
    redis::TestRedis,
    sse::{SseClient, SseFrame},
};

/// Logs from in-process servers go to the test's captured output, at `warn`
/// unless `RUST_LOG` says otherwise.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`
/// naming `what`. The way to wait on real sockets and processes (no fixed sleeps).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POSTs a valid account to `base` and returns `(status, body)`.
pub async fn post_account(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    balance: u64,
) -> (u16, serde_json::Value) {
    let response = http
        .post(format!("{base}/accounts"))
        .json(&serde_json::json!({ "name": name, "balance": balance }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// `GET url` and its body as JSON (any status).
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}
