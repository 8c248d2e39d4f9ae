//! Graceful shutdown of the real binary (SPEC §7) on SIGTERM and on SIGINT:
//!
//! - every open SSE stream ends (EOF, so EventSource reconnects) within 2 s, not at
//!   the end of `SHUTDOWN_GRACE_SECS`;
//! - the listener closes: new connections are refused while the drain goes on;
//! - a POST in flight (its handler is reading the body, proven by `100 Continue`)
//!   completes with a full `201` after the signal, and is stored in Redis;
//! - POSTs racing the signal each get either a complete `201` (stored in Redis) or a
//!   connection error before any response, never a truncated one;
//! - the process exits with status 0 within `SHUTDOWN_GRACE_SECS`.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{app::wait_healthy, eventually, ServerProcess, SseClient, TestRedis};

const GRACE_SECS: u64 = 5;

/// The body of the slow POST, sent in two halves around the signal.
const SLOW_BODY: &str = r#"{"name":"in flight during shutdown","balance":42}"#;

/// Opens a raw connection and sends a POST's head with `Expect: 100-continue` plus
/// nothing of its body; returns once the server answered `100 Continue`, i.e. the
/// request is accepted and its handler is waiting for the body.
async fn start_slow_post(base_addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(base_addr).await.unwrap();
    let head = format!(
        "POST /accounts HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        SLOW_BODY.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0_u8; 256];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("no 100 Continue within 5 s")
            .unwrap();
        assert!(n > 0, "connection closed before 100 Continue");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 100 Continue"), "{text}");
    stream
}

/// Sends the body and reads the whole response to EOF (the draining server closes the
/// connection after it); returns `(status, body)`.
async fn finish_slow_post(mut stream: TcpStream) -> (u16, serde_json::Value) {
    stream.write_all(SLOW_BODY.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("no complete response within 5 s")
        .unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("truncated response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    assert_eq!(body.len(), length, "truncated body: {text:?}");
    (status, serde_json::from_str(body).unwrap())
}

/// True if `account:<id>` exists in Redis.
fn stored(redis: &TestRedis, id: &str) -> bool {
    let exists: bool = ::redis::cmd("EXISTS")
        .arg(format!("account:{id}"))
        .query(&mut redis.conn())
        .unwrap();
    exists
}

/// The whole drain, for `signal` (`TERM` or `INT`).
async fn drains_on(signal: &str) {
    let redis = TestRedis::start();
    let grace = GRACE_SECS.to_string();
    let mut server = ServerProcess::spawn(&[
        ("REDIS_URL", &redis.url()),
        ("SERVER_ID", "backend-1"),
        ("SHUTDOWN_GRACE_SECS", &grace),
    ])
    .await;
    wait_healthy(&server.base()).await;
    let url = format!("{}/events/sse", server.base());
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(SseClient::open(&url, None).await.0);
    }
    let slow = start_slow_post(server.addr).await;

    // POSTs racing the signal, each on its own connection.
    let racing: Vec<_> = (0..6_u64)
        .map(|n| {
            let base = server.base();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let sent = http
                    .post(format!("{base}/accounts"))
                    .json(&serde_json::json!({ "name": format!("racing {n}"), "balance": n }))
                    .send()
                    .await;
                match sent {
                    // Refused or closed before any response: the request was not accepted.
                    Err(err) => Err(err.to_string()),
                    // A response was started: it must be complete.
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body = response.bytes().await.expect("truncated response body");
                        let json: serde_json::Value =
                            serde_json::from_slice(&body).expect("truncated JSON body");
                        Ok((status, json))
                    }
                }
            })
        })
        .collect();
    tokio::task::yield_now().await;

    let signalled = Instant::now();
    server.signal(signal);

    for (n, stream) in streams.iter_mut().enumerate() {
        let left = Duration::from_secs(2).saturating_sub(signalled.elapsed());
        assert!(
            stream.ends_within(left).await,
            "SSE stream {n} still open 2 s after SIG{signal}"
        );
    }
    let ended_after = signalled.elapsed();
    assert!(ended_after < Duration::from_secs(2), "{ended_after:?}");

    // The listener is closed while the in-flight POST is still pending.
    eventually(Duration::from_secs(2), "new connections refused", || {
        let addr = server.addr;
        async move { TcpStream::connect(addr).await.is_err().then_some(()) }
    })
    .await;

    let (status, account) = finish_slow_post(slow).await;
    assert_eq!(status, 201, "in-flight POST after SIG{signal}: {account}");
    assert_eq!(account["name"], "in flight during shutdown");
    let mut accepted = vec![account["id"].as_str().unwrap().to_owned()];

    for task in racing {
        match task.await.unwrap() {
            Ok((201, body)) => accepted.push(body["id"].as_str().unwrap().to_owned()),
            Ok((status, body)) => panic!("racing POST got {status} {body}"),
            Err(_not_accepted) => {}
        }
    }

    let status = server.wait_exit(Duration::from_secs(GRACE_SECS + 5)).await;
    let exited_after = signalled.elapsed();
    assert!(status.success(), "exit status after SIG{signal}: {status}");
    assert!(
        exited_after < Duration::from_secs(GRACE_SECS),
        "exited {exited_after:?} after SIG{signal}, grace is {GRACE_SECS} s"
    );
    eprintln!("SIG{signal}: streams ended after {ended_after:?}, exit after {exited_after:?}, {} of 7 POSTs accepted", accepted.len());
    for id in &accepted {
        assert!(stored(&redis, id), "201 account {id} is not in Redis");
    }
}

/// SIGTERM (docker stop, Kubernetes): streams end at once, in-flight POST completes, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_gracefully() {
    drains_on("TERM").await;
}

/// SIGINT (Ctrl-C): the same drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_gracefully() {
    drains_on("INT").await;
}
