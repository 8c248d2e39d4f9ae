//! `rediss://` (TLS) works end to end: a TLS-only redis-server with a
//! self-signed certificate (`#insecure` skips verification, as redis-rs documents).

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::{eventually, post_account, SseClient, TestApp};

/// A TLS-only redis-server on a free port, killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl is needed to make a test certificate");
        assert!(status.success());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An instance on `rediss://` becomes ready, publishes and delivers.
#[tokio::test]
async fn rediss_url_publishes_and_delivers() {
    let redis = TlsRedis::start();
    let url = format!("rediss://127.0.0.1:{}/#insecure", redis.port);
    // spawn() waits for /health 200, which needs TLS commands and the subscription.
    let app = TestApp::spawn(&["--redis-url", &url]).await;
    let (mut client, _) = SseClient::open(&format!("{}/events/sse", app.base()), None).await;
    let http = reqwest::Client::new();
    let (status, account) = post_account(&http, &app.base(), "tls", 1).await;
    assert_eq!(status, 201, "{account}");
    let frames = client.messages(1, Duration::from_secs(5)).await;
    assert_eq!(frames.last().unwrap().json()["data"], account);
    let health = eventually(Duration::from_secs(5), "health", || {
        let request = http.get(format!("{}/health", app.base())).send();
        async move { request.await.ok()?.json::<serde_json::Value>().await.ok() }
    })
    .await;
    assert_eq!(health["redis"], "up");
    app.shutdown().await;
}
