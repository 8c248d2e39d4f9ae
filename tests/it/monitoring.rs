//! Monitoring with the real binary (issue 12):
//!
//! - `METRICS_ADDR` starts a second listener serving only `/metrics`; the main port
//!   keeps `/metrics` too; an address that cannot be bound stops the process with a
//!   line naming `METRICS_ADDR`.

use std::{net::SocketAddr, time::Duration};

use crate::support::{eventually, ServerProcess};

/// The address the `METRICS_ADDR` listener logged (`serving /metrics alone on http://…`).
async fn metrics_addr(server: &ServerProcess) -> SocketAddr {
    eventually(
        Duration::from_secs(10),
        "the metrics listener's log line",
        || {
            let log = server.log.lock().unwrap().clone();
            async move {
                let rest = log.split("serving /metrics alone on http://").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            }
        },
    )
    .await
}

#[tokio::test]
async fn metrics_addr_serves_metrics_on_a_separate_listener() {
    let server = ServerProcess::spawn(&[("METRICS_ADDR", "127.0.0.1:0")]).await;
    let private = metrics_addr(&server).await;
    assert_ne!(private.port(), server.addr.port());
    let http = reqwest::Client::new();

    let scrape = http
        .get(format!("http://{private}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = scrape.text().await.unwrap();
    assert!(
        text.lines().any(|l| l == "sse_clients 0"),
        "no `sse_clients 0` in:\n{text}"
    );

    // Only /metrics there: no page, no API.
    for path in ["/", "/health", "/accounts", "/events/sse"] {
        let response = http
            .get(format!("http://{private}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} on METRICS_ADDR");
    }
    // The main port keeps /metrics (compatibility; nginx.conf refuses it publicly).
    let public = http
        .get(format!("{}/metrics", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
}

/// The binary's exit status and stderr with `METRICS_ADDR=value` (main port free).
async fn run_with_metrics_addr(value: &str) -> (std::process::ExitStatus, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("METRICS_ADDR", value)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_HOST")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .unwrap_or_else(|_| panic!("METRICS_ADDR={value}: the process did not exit"))
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_unusable_metrics_addr_stops_the_process() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stderr) = run_with_metrics_addr(&addr).await;
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains(&format!("METRICS_ADDR={addr}")),
        "stderr should name METRICS_ADDR={addr}:\n{stderr}"
    );
    drop(taken);

    // Not an address at all: bad configuration (SPEC §2), exit 2.
    let (status, stderr) = run_with_metrics_addr("localhost-9100").await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("METRICS_ADDR"), "{stderr}");
}
