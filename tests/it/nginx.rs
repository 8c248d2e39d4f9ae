//! The real Debian nginx, running the repository's own `nginx.conf` (rendered only for
//! listen port, loopback upstreams and temp/log/pid paths by `deploy::render_nginx_conf`),
//! in front of two real `sse-fanout` processes sharing one real Redis (SPEC §5, §7):
//!
//! - an event POSTed through nginx reaches an SSE client connected through nginx within
//!   500 ms: nginx does not buffer the stream;
//! - an idle stream through nginx stays open across several keep-alive comments;
//! - SIGKILL (crash) or SIGTERM (redeploy; the stream then ends within 2 s) of the
//!   backend a client is on ends its stream; the client reconnects through nginx with
//!   `Last-Event-ID`, lands on the other backend and resumes: every event that got a
//!   `201` arrives exactly once and in order, with no `reset`;
//! - `/metrics` is refused through nginx (also spelled `/metrics?x`, `//metrics`,
//!   `/%6Detrics`) while `/health`, the page and `/events/sse` pass, and the backends
//!   still answer `/metrics` directly (for Prometheus);
//! - `nginx -s reload` does not leave old workers holding streams: they close them within
//!   `worker_shutdown_timeout` and the client resumes through the new workers.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{
    deploy::{nginx_command, render_nginx_conf},
    support::{app::wait_healthy, post_account, ServerProcess, SseClient, TestRedis},
};

/// A foreground nginx master (`daemon off`) and its workers, stopped on drop.
struct Nginx {
    master: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Renders the repo's `nginx.conf` for `backend_1`/`backend_2`, starts nginx and waits
    /// until a request through it reaches a backend (`/health/live` answers 200).
    async fn start(backend_1: SocketAddr, backend_2: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = render_nginx_conf(port, backend_1, backend_2, dir.path());
        let master = nginx_command(dir.path(), &conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut nginx = Self { master, port, dir };
        let http = reqwest::Client::new();
        let url = format!("{}/health/live", nginx.base());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.master.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            let ok = http.get(&url).send().await.is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not proxy {url} within 10 s:\n{}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        nginx
    }

    /// `http://127.0.0.1:<port>`.
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// nginx's own error log (`error_log <dir>/error.log info`), for failure messages.
    fn error_log(&self) -> String {
        read_or_empty(&self.dir.path().join("error.log"))
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master (it stops its workers), then wait; SIGKILL only as a last
    /// resort (it would orphan the workers).
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.master.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One Redis, `backend-1` and `backend-2` as real processes (both ready), nginx in front.
struct Stack {
    nginx: Nginx,
    backends: Vec<ServerProcess>,
    _redis: TestRedis,
}

impl Stack {
    async fn start(extra_env: &[(&str, &str)]) -> Self {
        let redis = TestRedis::start();
        let url = redis.url();
        let mut backends = Vec::new();
        for id in ["backend-1", "backend-2"] {
            let mut env = vec![("REDIS_URL", url.as_str()), ("SERVER_ID", id)];
            env.extend_from_slice(extra_env);
            let backend = ServerProcess::spawn(&env).await;
            wait_healthy(&backend.base()).await;
            backends.push(backend);
        }
        let nginx = Nginx::start(backends[0].addr, backends[1].addr).await;
        Self {
            nginx,
            backends,
            _redis: redis,
        }
    }

    fn sse_url(&self) -> String {
        format!("{}/events/sse", self.nginx.base())
    }

    fn backend(&mut self, server_id: &str) -> &mut ServerProcess {
        let index = match server_id {
            "backend-1" => 0,
            "backend-2" => 1,
            other => panic!("unknown backend {other}"),
        };
        &mut self.backends[index]
    }
}

/// `(ms, seq)` of a stream entry id `<ms>-<seq>`, to compare ids by order.
fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("not an event id: {id}"));
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// `(event id, account id)` of an `account.created` message.
fn ids(frame: &crate::support::SseFrame) -> (String, String) {
    let event = frame.json();
    let event_id = frame.id.clone().expect("event without id");
    assert_eq!(event["id"].as_str(), Some(event_id.as_str()), "{frame:?}");
    let account = event["data"]["id"]
        .as_str()
        .expect("event without account id");
    (event_id, account.to_owned())
}

/// The median of the POST-sent → frame-read latencies stays under 500 ms: nginx
/// forwards each event as it is written, instead of collecting it in its buffers.
#[tokio::test]
async fn event_posted_through_nginx_reaches_a_client_through_nginx_within_500_ms() {
    let stack = Stack::start(&[]).await;
    let base = stack.nginx.base();
    let (mut client, server) = SseClient::open(&stack.sse_url(), None).await;
    assert!(server == "backend-1" || server == "backend-2", "{server}");
    let content_type = client.headers.get("content-type").unwrap();
    assert_eq!(content_type, "text/event-stream");

    let http = reqwest::Client::new();
    // Warm-up: connections to nginx and from nginx to the backends exist afterwards.
    let (status, _) = post_account(&http, &base, "warm-up", 0).await;
    assert_eq!(status, 201);
    client.messages(1, Duration::from_secs(5)).await;

    let mut latencies = Vec::new();
    for n in 0..7_u64 {
        let sent = Instant::now();
        let (status, account) = post_account(&http, &base, &format!("latency {n}"), n).await;
        assert_eq!(status, 201, "{account}");
        // If nginx buffered, the frame would not arrive until its buffer filled or the
        // stream ended; 5 s is only the give-up deadline.
        let frames = client.messages(1, Duration::from_secs(5)).await;
        latencies.push(sent.elapsed());
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].json()["data"], account);
    }
    let mut sorted = latencies.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        median < Duration::from_millis(500),
        "median POST→SSE latency through nginx {median:?} (all: {latencies:?})"
    );
}

/// With a 1 s keep-alive, an idle stream through nginx carries several `: keep-alive`
/// comments, each as it is sent, and is still open after them.
#[tokio::test]
async fn idle_stream_through_nginx_stays_open_across_keep_alives() {
    let stack = Stack::start(&[("SSE_KEEPALIVE_SECS", "1")]).await;
    let (mut client, _) = SseClient::open(&stack.sse_url(), None).await;
    let mut comments = 0;
    // The 4th keep-alive arriving proves the stream was still open after the 3rd.
    while comments < 4 {
        let frame = client
            .next_frame(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "stream {} after {comments} keep-alives",
                    if client.ended() {
                        "ended"
                    } else {
                        "went silent"
                    }
                )
            });
        assert_eq!(
            frame.comment.as_deref(),
            Some("keep-alive"),
            "an idle stream carries only keep-alives: {frame:?}"
        );
        comments += 1;
    }
    assert!(!client.ended());
}

/// SIGKILL (crash) of the client's backend: the stream ends, the client reconnects
/// through nginx with its `Last-Event-ID` (as EventSource does), lands on the other
/// backend and gets every `201` event exactly once and in order, including those posted
/// during the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fails_over_through_nginx_after_sigkill_without_loss() {
    fails_over("KILL").await;
}

/// SIGTERM (redeploy) of the client's backend: the same, and the stream ends within
/// 2 s through nginx while the backend drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fails_over_through_nginx_after_sigterm_without_loss() {
    fails_over("TERM").await;
}

/// Two backends behind nginx, a client on one of them, POSTs through nginx before,
/// during and after `signal` hits that backend; the client resumes on the other one.
async fn fails_over(signal: &str) {
    let mut stack = Stack::start(&[]).await;
    let base = stack.nginx.base();
    let http = reqwest::Client::new();
    let (mut client, first_server) = SseClient::open(&stack.sse_url(), None).await;

    // Events before the kill, all received on the first backend.
    let mut accepted = Vec::new(); // account ids of 201 POSTs, in POST order
    for n in 0..3_u64 {
        let (status, account) = post_account(&http, &base, &format!("before {n}"), n).await;
        assert_eq!(status, 201, "{account}");
        accepted.push(account["id"].as_str().unwrap().to_owned());
    }
    // (event id, account id) of every message the client got, in arrival order.
    let mut received: Vec<(String, String)> = client
        .messages(3, Duration::from_secs(5))
        .await
        .iter()
        .filter(|f| f.is_message())
        .map(ids)
        .collect();

    // Keep posting through nginx while the client's backend is killed.
    let poster = {
        let http = http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for n in 0..40_u64 {
                results.push(post_account(&http, &base, &format!("during {n}"), n).await);
            }
            results
        })
    };
    // Kill once the POSTs are flowing: the first of them have reached the client.
    received.extend(
        client
            .messages(2, Duration::from_secs(5))
            .await
            .iter()
            .filter(|f| f.is_message())
            .map(ids),
    );
    let victim = stack.backend(&first_server);
    victim.signal(signal);
    let signalled = Instant::now();

    // The first stream carries whatever reached the victim before it stopped, then ends.
    loop {
        match client.next_frame(Duration::from_secs(10)).await {
            Some(frame) if frame.is_message() => received.push(ids(&frame)),
            Some(frame) => assert!(frame.comment.is_some(), "unexpected frame {frame:?}"),
            None => break,
        }
    }
    let ended_after = signalled.elapsed();
    assert!(
        client.ended(),
        "the stream did not end within 10 s of SIG{signal} of {first_server}"
    );
    let exit = victim.wait_exit(Duration::from_secs(15)).await;
    if signal == "TERM" {
        assert!(exit.success(), "{first_server} after SIGTERM: {exit}");
        assert!(
            ended_after < Duration::from_secs(2),
            "stream through nginx ended {ended_after:?} after SIGTERM"
        );
    }

    let before_reconnect = received.len();
    // EventSource reconnects with the last id it saw.
    let last_id = received.last().unwrap().0.clone();
    let (mut client, second_server) = SseClient::open(&stack.sse_url(), Some(&last_id)).await;
    assert_ne!(
        second_server, first_server,
        "nginx must send the reconnect to the live backend"
    );

    let mut ambiguous = 0; // POSTs nginx answered 502 (in flight at the victim)
    for (status, body) in poster.await.unwrap() {
        match status {
            201 => accepted.push(body["id"].as_str().unwrap().to_owned()),
            502 => ambiguous += 1,
            other => panic!("POST through nginx during failover: {other} {body}"),
        }
    }
    let (status, last) = post_account(&http, &base, "after", 1).await;
    assert_eq!(status, 201, "{last}");
    let last_accepted = last["id"].as_str().unwrap().to_owned();
    accepted.push(last_accepted.clone());

    // Read the resumed stream up to the last event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.last().map(|(_, account)| account) != Some(&last_accepted) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = client.next_frame(left).await.unwrap_or_else(|| {
            panic!("resumed stream stopped; received {received:?}, accepted {accepted:?}")
        });
        assert_ne!(
            frame.event.as_deref(),
            Some("reset"),
            "resume within history must not reset: {frame:?}"
        );
        if frame.is_message() {
            received.push(ids(&frame));
        }
    }

    eprintln!(
        "failover after SIG{signal}: {before_reconnect} events on {first_server}, {} after resuming on \
         {second_server}, {ambiguous} POSTs answered 502",
        received.len() - before_reconnect
    );
    // Exactly once, in order: strictly increasing ids ...
    for pair in received.windows(2) {
        assert!(
            id_order(&pair[0].0) < id_order(&pair[1].0),
            "duplicate or out of order at {pair:?}: {received:?}"
        );
    }
    // ... containing every 201 event ...
    for id in &accepted {
        assert!(
            received.iter().any(|(_, account)| account == id),
            "201 event {id} lost; received {received:?}"
        );
    }
    // ... and nothing else but events whose POST nginx could not answer.
    assert!(
        received.len() <= accepted.len() + ambiguous,
        "{} received, {} accepted, {ambiguous} ambiguous",
        received.len(),
        accepted.len()
    );
    // Nothing more is queued for the client.
    let extra = client.next_frame(Duration::from_millis(500)).await;
    assert!(
        extra.as_ref().is_none_or(|f| f.comment.is_some()),
        "{extra:?}"
    );
}

/// `nginx -s reload` (SIGHUP): the old workers close their SSE streams within
/// `worker_shutdown_timeout` instead of lingering, and the client resumes through the
/// new workers with `Last-Event-ID`, missing nothing posted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_reload_ends_streams_promptly_and_clients_resume() {
    let stack = Stack::start(&[]).await;
    let base = stack.nginx.base();
    let http = reqwest::Client::new();
    let (mut client, _) = SseClient::open(&stack.sse_url(), None).await;
    let (status, first) = post_account(&http, &base, "before reload", 1).await;
    assert_eq!(status, 201);
    let before = ids(client
        .messages(1, Duration::from_secs(5))
        .await
        .last()
        .unwrap());
    assert_eq!(before.1, first["id"].as_str().unwrap());

    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(stack.nginx.master.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    // nginx.conf: worker_shutdown_timeout 5s; the margin covers a loaded machine.
    assert!(
        client.ends_within(Duration::from_secs(15)).await,
        "SSE stream through nginx still open 15 s after reload:\n{}",
        stack.nginx.error_log()
    );
    let (status, during) = post_account(&http, &base, "after reload", 2).await;
    assert_eq!(status, 201);
    let (mut client, _) = SseClient::open(&stack.sse_url(), Some(&before.0)).await;
    let frames = client.messages(1, Duration::from_secs(5)).await;
    assert_eq!(frames.len(), 1, "no reset, no duplicate: {frames:?}");
    assert_eq!(ids(&frames[0]).1, during["id"].as_str().unwrap());
}

/// The shipped nginx.conf keeps `/metrics` from the internet; everything else passes.
#[tokio::test]
async fn metrics_are_refused_through_nginx_while_the_rest_passes() {
    let stack = Stack::start(&[]).await;
    let base = stack.nginx.base();
    let http = reqwest::Client::new();
    for path in [
        "/metrics",
        "/metrics?format=text",
        "//metrics",
        "/%6Detrics",
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 403, "GET {path} through nginx");
        let body = response.text().await.unwrap();
        assert!(!body.contains("sse_clients"), "{path} leaked metrics");
    }
    for path in ["/health", "/health/live", "/"] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path} through nginx");
    }
    let (mut client, server) = SseClient::open(&stack.sse_url(), None).await;
    assert!(server == "backend-1" || server == "backend-2", "{server}");
    let (status, account) = post_account(&http, &base, "metrics stay private", 1).await;
    assert_eq!(status, 201, "{account}");
    let frames = client.messages(1, Duration::from_secs(5)).await;
    assert_eq!(frames[0].json()["data"], account);
    // Prometheus scrapes the backends themselves.
    for backend in &stack.backends {
        let direct = http
            .get(format!("{}/metrics", backend.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(direct.status(), 200);
    }
}
