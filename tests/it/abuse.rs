//! Abuse against the real binary on a real Redis (issue 7): 10,000 malformed
//! requests of assorted kinds leave the server healthy, its memory bounded,
//! its metrics' label sets bounded, and Redis untouched (nothing stored,
//! appended or published); 2,000 SSE connections opened and dropped abruptly
//! leave `sseClients` at 0 and memory near where it started.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::{stream, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{
    app::wait_healthy, eventually, post_account, ServerProcess, SseClient, TestRedis,
};

/// Concurrent connections the attackers keep open.
const CONCURRENCY: usize = 32;

/// What the server must answer to one kind of bad request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    TruncatedJson,
    DeepArrays,
    DeepObjects,
    HugeNumber,
    WrongShape,
    WrongMethod,
    ExtensionMethod,
    LongUrl,
    BadUtf8Body,
    BadUtf8Path,
    WrongContentType,
    BadContentLength,
    BadChunk,
    HugeHeader,
    ShortBody,
    Garbage,
}

impl Kind {
    const ALL: [Kind; 16] = [
        Kind::TruncatedJson,
        Kind::DeepArrays,
        Kind::DeepObjects,
        Kind::HugeNumber,
        Kind::WrongShape,
        Kind::WrongMethod,
        Kind::ExtensionMethod,
        Kind::LongUrl,
        Kind::BadUtf8Body,
        Kind::BadUtf8Path,
        Kind::WrongContentType,
        Kind::BadContentLength,
        Kind::BadChunk,
        Kind::HugeHeader,
        Kind::ShortBody,
        Kind::Garbage,
    ];

    /// Statuses the server may answer; `None` in the list: it may also close
    /// without answering (only for bytes that are not HTTP at all).
    fn allowed(self) -> &'static [Option<u16>] {
        match self {
            Kind::TruncatedJson | Kind::DeepArrays | Kind::DeepObjects => &[Some(400)],
            // 1e400 is a syntax error to serde_json (400); 1e30 parses as a float (422).
            Kind::HugeNumber => &[Some(400), Some(422)],
            Kind::WrongShape => &[Some(422)],
            Kind::WrongMethod | Kind::ExtensionMethod => &[Some(405)],
            // Over http's 65,534-byte URI limit: hyper answers 414.
            Kind::LongUrl => &[Some(414), Some(404)],
            Kind::BadUtf8Body => &[Some(400)],
            Kind::BadUtf8Path => &[Some(400), Some(404)],
            Kind::WrongContentType => &[Some(415)],
            Kind::BadContentLength | Kind::BadChunk => &[Some(400)],
            Kind::HugeHeader => &[Some(431)],
            // The body never completes: REQUEST_TIMEOUT_SECS answers.
            Kind::ShortBody => &[Some(408)],
            Kind::Garbage => &[Some(400), Some(505), None],
        }
    }
}

/// A tiny deterministic PRNG (xorshift64*), so a failure reproduces.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// The raw bytes of request number `i` of `kind`.
fn request(kind: Kind, i: usize, rng: &mut Rng) -> Vec<u8> {
    const JSON: &str = "application/json";
    match kind {
        Kind::TruncatedJson => {
            let full = br#"{"name":"truncated","balance":12345}"#;
            let cut = 1 + rng.below(full.len() - 1);
            post("/accounts", JSON, &full[..cut])
        }
        Kind::DeepArrays => {
            let depth = 10_000;
            let mut body = "[".repeat(depth);
            body.push_str(&"]".repeat(depth));
            post("/accounts", JSON, body.as_bytes())
        }
        Kind::DeepObjects => {
            let depth = 5_000;
            let mut body = r#"{"name":"#.repeat(depth);
            body.push('1');
            body.push_str(&"}".repeat(depth));
            post("/accounts", JSON, body.as_bytes())
        }
        Kind::HugeNumber => {
            let numbers = ["1e400", "-1e400", "1e30", &"9".repeat(5000), "123456789012345678901234567890"];
            let body = format!(r#"{{"name":"n","balance":{}}}"#, numbers[i % numbers.len()]);
            post("/accounts", JSON, body.as_bytes())
        }
        Kind::WrongShape => {
            let bodies = [
                r#"{"name":"a","balance":1,"admin":true}"#,
                r#"{"name":"","balance":1}"#,
                r#"{"name":"a\u0000b","balance":1}"#,
                r#"{"name":"a","balance":-1}"#,
                r#"{"name":"a","balance":"1"}"#,
                r#"[{"name":"a","balance":1}]"#,
                r#"{"name":"a\ud800","balance":1}"#,
                "null",
            ];
            post("/accounts", JSON, bodies[i % bodies.len()].as_bytes())
        }
        Kind::WrongMethod => {
            let lines = [
                "PUT /accounts",
                "DELETE /accounts",
                "PATCH /accounts",
                "POST /health",
                "DELETE /health/live",
                "POST /events/sse",
                "PUT /metrics",
                "DELETE /",
            ];
            format!(
                "{} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                lines[i % lines.len()]
            )
            .into_bytes()
        }
        Kind::ExtensionMethod => {
            // A new method name every time: metrics must not grow a series per name.
            format!(
                "X{:016X} /accounts HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                rng.next()
            )
            .into_bytes()
        }
        Kind::LongUrl => {
            let path = format!("/accounts/{}", "a".repeat(64 * 1024));
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
        }
        Kind::BadUtf8Body => post(
            "/accounts",
            JSON,
            b"{\"name\":\"\xff\xfe\xc3\x28 \xed\xa0\x80\",\"balance\":1}",
        ),
        Kind::BadUtf8Path => {
            let mut r = b"GET /accounts/\xff\xfe\xc3\x28".to_vec();
            r.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            r
        }
        Kind::WrongContentType => post("/accounts", "text/plain", br#"{"name":"a","balance":1}"#),
        Kind::BadContentLength => {
            b"POST /accounts HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}".to_vec()
        }
        Kind::BadChunk => b"POST /accounts HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n".to_vec(),
        Kind::HugeHeader => format!(
            "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "b".repeat(512 * 1024)
        )
        .into_bytes(),
        Kind::ShortBody => b"POST /accounts HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":".to_vec(),
        Kind::Garbage => {
            let fixed: [&[u8]; 6] = [
                b"\x00\x01\x02\x03",
                b"HELLO WORLD",
                b"GET",
                b"GET / HTTP/9.9",
                b"GET / HTTP/1.1\r\nNo colon here",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            ];
            let mut bytes = if i.is_multiple_of(2) {
                fixed[(i / 2) % fixed.len()].to_vec()
            } else {
                (0..1 + rng.below(200)).map(|_| rng.next() as u8).collect()
            };
            bytes.extend_from_slice(b"\r\n\r\n");
            bytes
        }
    }
}

/// Sends `bytes` on a fresh connection and reads to EOF: the status, or
/// `None` if the server closed without a status line.
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may refuse before reading it all (431, 413): a reset is fine.
    let _ = stream.write_all(bytes).await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no response or close within 20 s");
    let head = std::str::from_utf8(response.get(..12)?).ok()?;
    head.strip_prefix("HTTP/1.1 ")?.trim().parse().ok()
}

/// Runs `count` requests cycling through every kind; returns how many of
/// each kind got which answer. Panics on any answer the kind does not allow.
async fn attack(addr: std::net::SocketAddr, count: usize, seed: u64) -> usize {
    let rng = Arc::new(Mutex::new(Rng(seed)));
    let done = Arc::new(AtomicUsize::new(0));
    stream::iter(0..count)
        .for_each_concurrent(CONCURRENCY, |i| {
            let rng = rng.clone();
            let done = done.clone();
            async move {
                // ShortBody waits REQUEST_TIMEOUT_SECS: only one in 500.
                let kind = if i % 500 == 499 {
                    Kind::ShortBody
                } else {
                    let kinds: Vec<Kind> = Kind::ALL
                        .into_iter()
                        .filter(|k| *k != Kind::ShortBody)
                        .collect();
                    kinds[i % kinds.len()]
                };
                let bytes = request(kind, i, &mut rng.lock().unwrap());
                let status = send_raw(addr, &bytes).await;
                assert!(
                    kind.allowed().contains(&status),
                    "{kind:?} #{i} got {status:?}; request starts {:?}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
    done.load(Ordering::Relaxed)
}

async fn health(http: &reqwest::Client, base: &str) -> serde_json::Value {
    let response = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// 10,000 malformed requests: every one gets a 4xx (or, for non-HTTP bytes, a
/// close), none a 5xx or 2xx; afterwards `/health` is 200, RSS grew by less
/// than the bound, `/metrics` did not grow a series per method name, no SSE
/// client got a message, and Redis holds no account and no history.
#[tokio::test]
async fn ten_thousand_malformed_requests_leave_no_trace() {
    let redis = TestRedis::start();
    let url = redis.url();
    let server = ServerProcess::spawn(&[
        ("REDIS_URL", &url),
        ("SERVER_ID", "abuse-1"),
        ("MAX_BODY_BYTES", "65536"),
        ("REQUEST_TIMEOUT_SECS", "2"),
        ("HEADER_READ_TIMEOUT_SECS", "5"),
    ])
    .await;
    let base = server.base();
    wait_healthy(&base).await;
    let http = reqwest::Client::new();
    let (mut sse, _) = SseClient::open(&format!("{base}/events/sse"), None).await;

    // Warm-up: allocator arenas, lazily built tables and metric series settle.
    let warm = attack(server.addr, 1_000, 1).await;
    let before = server.rss_kib();
    let tried = attack(server.addr, 10_000, 2).await;
    let after = server.rss_kib();
    eprintln!("malformed requests: {warm} warm-up + {tried}; RSS {before} KiB -> {after} KiB");
    assert_eq!(tried, 10_000);

    let body = health(&http, &base).await;
    assert_eq!(body["redis"], "up");
    // A leak of even 1 KiB per request would add ~10 MiB; allocator noise
    // from 32 concurrent 64 KiB–512 KiB requests stays well under 8 MiB.
    assert!(
        after <= before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 10,000 bad requests"
    );

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .count();
    assert!(
        series < 100,
        "{series} http_requests_total series:\n{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "events_published_total 0"),
        "events_published_total must be 0"
    );

    let mut conn = redis.conn();
    let xlen: u64 = ::redis::cmd("XLEN")
        .arg("user-events:history")
        .query(&mut conn)
        .unwrap();
    assert_eq!(xlen, 0, "history holds entries");
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("account:*")
        .query(&mut conn)
        .unwrap();
    assert!(keys.is_empty(), "stored accounts: {keys:?}");
    let published = sse.next_frame(Duration::from_millis(300)).await;
    assert!(
        published.as_ref().is_none_or(|f| f.comment.is_some()),
        "an SSE client received {published:?}"
    );

    // Still fully working: a valid request is stored, published and delivered.
    let (status, account) = post_account(&http, &base, "after abuse", 1).await;
    assert_eq!(status, 201);
    let frames = sse.messages(1, Duration::from_secs(5)).await;
    assert_eq!(frames.last().unwrap().json()["data"], account);
}

/// Opens an SSE stream on a raw socket, optionally reads the preamble, then
/// drops the socket: with `SO_LINGER` 0 (a reset) or a plain close.
async fn churn_one(addr: std::net::SocketAddr, i: usize) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /events/sse HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    if !i.is_multiple_of(4) {
        // Wait for the stream to be open (its preamble) before dropping.
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let opened = tokio::time::timeout(Duration::from_secs(10), async {
            while !seen.windows(16).any(|w| w == b"event: connected") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            true
        })
        .await;
        assert_eq!(
            opened,
            Ok(true),
            "stream #{i} did not open: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    if i.is_multiple_of(2) {
        // Deprecated because a non-zero linger blocks on drop; zero never
        // blocks: the kernel sends RST at once.
        #[allow(deprecated)]
        stream.set_linger(Some(Duration::ZERO)).unwrap();
    }
    drop(stream);
}

/// 2,000 SSE connections opened and dropped abruptly (resets and closes,
/// some before the preamble arrives): `sseClients` returns to 0, RSS returns
/// near its baseline, and the instance still delivers events.
#[tokio::test]
async fn two_thousand_abruptly_dropped_sse_clients_are_released() {
    let redis = TestRedis::start();
    let url = redis.url();
    let server = ServerProcess::spawn(&[("REDIS_URL", &url), ("SERVER_ID", "churn-1")]).await;
    let base = server.base();
    wait_healthy(&base).await;
    let http = reqwest::Client::new();
    let addr = server.addr;
    let churn = |n: usize| stream::iter(0..n).for_each_concurrent(50, move |i| churn_one(addr, i));
    let released = || async {
        eventually(
            Duration::from_secs(20),
            "sseClients to return to 0",
            || async { (health(&http, &base).await["sseClients"] == 0).then_some(()) },
        )
        .await;
    };

    churn(200).await;
    released().await;
    let before = server.rss_kib();
    churn(2_000).await;
    released().await;
    let after = server.rss_kib();
    eprintln!("SSE churn: 200 warm-up + 2000 dropped; RSS {before} KiB -> {after} KiB");
    // A stream's task, buffers and broadcast receiver are a few KiB; 2,000
    // leaked would exceed 8 MiB, and allocator noise stays below it.
    assert!(
        after <= before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 2,000 dropped SSE clients"
    );

    let (mut sse, _) = SseClient::open(&format!("{base}/events/sse"), None).await;
    assert_eq!(health(&http, &base).await["sseClients"], 1);
    let (status, account) = post_account(&http, &base, "after churn", 2).await;
    assert_eq!(status, 201);
    let frames = sse.messages(1, Duration::from_secs(5)).await;
    assert_eq!(frames.last().unwrap().json()["data"], account);
}
