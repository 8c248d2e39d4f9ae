//! The container `HEALTHCHECK` command, `sse-fanout healthcheck` (SPEC §7): it probes
//! `http://127.0.0.1:$PORT/health/live` and exits 0 on a 200, 1 otherwise — without curl
//! in the image. Liveness, not readiness: an instance waiting for Redis is not restarted.

use std::{
    process::ExitStatus,
    time::{Duration, Instant},
};

use crate::support::ServerProcess;

/// Runs `sse-fanout healthcheck` with `PORT=port` and nothing else configured.
async fn healthcheck(port: u16) -> ExitStatus {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-fanout"));
    command
        .arg("healthcheck")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PORT", port.to_string())
        .env_remove("REDIS_URL")
        .env_remove("REDIS_HOST")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(10), command.status())
        .await
        .expect("healthcheck did not finish within 10 s")
        .unwrap()
}

/// 0 against a running instance, even one whose Redis is unreachable (`/health` 503).
#[tokio::test]
async fn healthcheck_passes_against_a_live_instance_even_without_redis() {
    let server = ServerProcess::spawn(&[
        ("SERVER_ID", "backend-1"),
        // Nothing listens on port 1: the instance runs but is not ready.
        ("REDIS_URL", "redis://127.0.0.1:1"),
    ])
    .await;
    let health = reqwest::get(format!("{}/health", server.base()))
        .await
        .unwrap();
    assert_eq!(health.status(), 503, "the instance must be not ready here");
    let status = healthcheck(server.addr.port()).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

/// 1 when nothing listens on the port.
#[tokio::test]
async fn healthcheck_fails_against_a_closed_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let status = healthcheck(port).await;
    assert_eq!(status.code(), Some(1), "{status}");
}

/// 1, after its 3 s limit (plus start-up), when the port accepts but never answers.
#[tokio::test]
async fn healthcheck_gives_up_on_a_silent_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            held.push(stream);
        }
    });
    let started = Instant::now();
    let status = healthcheck(port).await;
    let took = started.elapsed();
    hold.abort();
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(
        took < Duration::from_secs(6),
        "healthcheck took {took:?} (limit 3 s)"
    );
}
