//! Helpers for the zero-loss delivery tests (`resume`, `failover`,
//! `slow_clients`): a cluster on either bus, concurrent posting, reading ids
//! and resets from SSE streams, history as Redis holds it, `/metrics` and
//! `/health` readers, and a raw SSE client with a small receive buffer that
//! can stop reading.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};

pub use super::redis_inspect::history_ids;
use super::{post_account, SseClient, TestApp, TestRedis};

/// The Redis stream holding history for the default channel (SPEC §4).
pub const HISTORY_KEY: &str = "user-events:history";

/// Which bus a conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// The in-process bus (one instance).
    Memory,
    /// A real redis-server shared by the instances.
    Redis,
}

/// Instances on one bus: one for memory (it is single-instance by design),
/// `n` named `backend-1..n` sharing one [`TestRedis`] for Redis.
#[derive(Debug)]
pub struct Cluster {
    /// The Redis server, for the Redis bus.
    pub redis: Option<TestRedis>,
    /// The instances.
    pub apps: Vec<TestApp>,
}

impl Cluster {
    /// Starts the instances with `extra` flags on top of the server id and bus.
    pub async fn start(kind: BusKind, n: usize, extra: &[&str]) -> Self {
        let redis = (kind == BusKind::Redis).then(TestRedis::start);
        let url = redis.as_ref().map(TestRedis::url);
        let count = if kind == BusKind::Memory { 1 } else { n };
        let mut apps = Vec::new();
        for i in 0..count {
            let id = format!("backend-{}", i + 1);
            let mut args = vec!["--server-id", &id];
            if let Some(url) = &url {
                args.extend(["--redis-url", url]);
            }
            args.extend_from_slice(extra);
            apps.push(TestApp::spawn(&args).await);
        }
        Self { redis, apps }
    }

    /// Base URL of instance `i` (modulo the number of instances).
    pub fn base(&self, i: usize) -> String {
        self.apps[i % self.apps.len()].base()
    }

    /// `GET /events/sse` URL of instance `i` (modulo the number of instances).
    pub fn sse(&self, i: usize) -> String {
        format!("{}/events/sse", self.base(i))
    }

    /// Every instance's base URL.
    pub fn bases(&self) -> Vec<String> {
        self.apps.iter().map(TestApp::base).collect()
    }

    /// Stops every instance.
    pub async fn shutdown(self) {
        for app in self.apps {
            app.shutdown().await;
        }
    }
}

/// What a client received, in order, ignoring comments and `connected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// An unnamed message: its `id:`.
    Event(String),
    /// `event: reset`: its reason.
    Reset(String),
}

/// The next event or reset, or `None` on timeout or end of stream.
pub async fn next_got(client: &mut SseClient, timeout: Duration) -> Option<Got> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = client.next_frame(left).await?;
        if frame.is_message() {
            let id = frame
                .id
                .clone()
                .unwrap_or_else(|| panic!("message without id: {frame:?}"));
            return Some(Got::Event(id));
        }
        if frame.event.as_deref() == Some("reset") {
            return Some(Got::Reset(
                frame.json()["reason"].as_str().unwrap().to_owned(),
            ));
        }
    }
}

/// Reads until `n` events arrived (resets are collected on the way); panics
/// after `timeout` or at end of stream, saying how many came.
pub async fn read_events(client: &mut SseClient, n: usize, timeout: Duration) -> Vec<Got> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut events = 0;
    while events < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_got(client, left).await {
            Some(got) => {
                events += usize::from(matches!(got, Got::Event(_)));
                out.push(got);
            }
            None => panic!(
                "got {events} of {n} events within {timeout:?}; last: {:?}",
                out.last()
            ),
        }
    }
    out
}

/// The event ids of `got`, asserting there is no reset among them.
pub fn event_ids(got: &[Got]) -> Vec<String> {
    got.iter()
        .map(|g| match g {
            Got::Event(id) => id.clone(),
            Got::Reset(reason) => panic!("unexpected reset ({reason}) in {got:?}"),
        })
        .collect()
}

/// Asserts that nothing but comments arrives within `quiet`.
pub async fn assert_quiet(client: &mut SseClient, quiet: Duration) {
    if let Some(got) = next_got(client, quiet).await {
        panic!("expected nothing more, got {got:?}");
    }
}

/// Posts `n` accounts from `concurrency` tasks, spread over `bases` round
/// robin, asserting every answer is 201; names are `{prefix}{i}`.
pub async fn post_many(bases: &[String], prefix: &str, n: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let bases = Arc::new(bases.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, bases, prefix) = (next.clone(), bases.clone(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let base = &bases[i % bases.len()];
                let (status, body) = post_account(&http, base, &format!("{prefix}{i}"), 1).await;
                assert_eq!(status, 201, "POST {base}/accounts: {body}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The value of an unlabelled series in `GET {base}/metrics`.
pub async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in /metrics:\n{text}"))
}

/// `sseClients` from `GET {base}/health` (whatever the status code).
pub async fn sse_clients(base: &str) -> Option<u64> {
    let response = reqwest::get(format!("{base}/health")).await.ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    body["sseClients"].as_u64()
}

/// A raw `GET /events/sse` over a socket whose receive buffer is set small
/// *before* connecting (so the advertised window stays small and the
/// server's writes stall quickly when the test stops reading).
#[derive(Debug)]
pub struct RawSse;

impl RawSse {
    /// Connects with `SO_RCVBUF = rcvbuf` bytes and sends the request;
    /// reads nothing.
    pub async fn send_request(
        addr: SocketAddr,
        rcvbuf: u32,
        last_event_id: Option<&str>,
    ) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(rcvbuf).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let mut request =
            format!("GET /events/sse HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// Reads the response head and returns an [`SseClient`] over the
    /// de-chunked body; the socket is read only while the client is polled.
    pub async fn into_client(stream: TcpStream) -> SseClient {
        let mut reader = BufReader::with_capacity(4096, stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.unwrap();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = reqwest::header::HeaderMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.insert(
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                value.trim().parse().unwrap(),
            );
        }
        assert_eq!(
            headers
                .get("transfer-encoding")
                .map(|v| v.to_str().unwrap()),
            Some("chunked"),
            "{headers:?}"
        );
        let body = async_stream::stream! {
            loop {
                let mut size_line = String::new();
                if reader.read_line(&mut size_line).await.unwrap_or(0) == 0 {
                    break;
                }
                let size = size_line.trim().split(';').next().unwrap_or("");
                let Ok(size) = usize::from_str_radix(size, 16) else { break };
                if size == 0 {
                    break;
                }
                let mut chunk = vec![0; size];
                if reader.read_exact(&mut chunk).await.is_err() {
                    break;
                }
                yield Bytes::from(chunk);
                let mut crlf = [0u8; 2];
                if reader.read_exact(&mut crlf).await.is_err() {
                    break;
                }
            }
        };
        SseClient::from_body(status, headers, body)
    }
}
