//! The SSE reading side: one task per client, an HTTP/1 connection driven in
//! the same task as its body, and incremental line parsing that looks only at
//! `data:` lines and finds the token by substring search (no JSON parsing).

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use memchr::memmem::Finder;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::target::{connect, Target};

/// A line longer than this (without its newline) is dropped unread.
const MAX_LINE: usize = 1 << 20;

/// State shared by the publisher and every SSE client of one run.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Origin of every `*_ns` time in the run.
    pub t0: Instant,
    /// When each event's POST was sent, in ns since `t0`; 0 = not sent yet.
    pub send_ns: Box<[AtomicU64]>,
    /// Finds the token prefix `bench-<run>-` in a `data:` line.
    pub token: Finder<'static>,
    /// Latency histograms (µs), sharded to keep lock contention low.
    pub latency: Box<[Mutex<Histogram<u64>>]>,
    /// The same, for events sent after `--signal-pid`'s signal only.
    pub latency_after_signal: Box<[Mutex<Histogram<u64>>]>,
    /// When the signal was sent, ns since `t0`; 0 = not (yet).
    pub signal_ns: AtomicU64,
    /// Deliveries so far, for the progress bar.
    pub deliveries: AtomicU64,
    /// Clients that got their response headers so far.
    pub connected: AtomicU64,
    /// Clients that gave up connecting so far.
    pub failed: AtomicU64,
    /// Cancelled when the run ends: clients stop reading and report.
    pub stop: CancellationToken,
}

impl Shared {
    /// Nanoseconds from `t0` to `at`.
    pub fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.t0).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Adds latency samples to histogram shard `shard`.
    fn record(&self, shard: usize, samples: &[Sample]) {
        fn lock(h: &Mutex<Histogram<u64>>) -> std::sync::MutexGuard<'_, Histogram<u64>> {
            h.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }
        let mut all = lock(&self.latency[shard]);
        for &(us, _) in samples {
            all.saturating_record(us);
        }
        drop(all);
        if samples.iter().any(|&(_, after)| after) {
            let mut after = lock(&self.latency_after_signal[shard]);
            for &(us, _) in samples.iter().filter(|(_, after)| *after) {
                after.saturating_record(us);
            }
        }
    }
}

/// A new latency histogram: 1 µs to 1 h, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Splits a byte stream into lines (`\n` or `\r\n`), carrying a partial line
/// between chunks and copying only that partial line.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
    overlong: bool,
}

impl LineSplitter {
    /// Calls `on_line` for each line that `chunk` completes, without its line end.
    pub fn feed(&mut self, chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        let mut rest = chunk;
        if !self.partial.is_empty() || self.overlong {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.keep(rest);
                return;
            };
            self.keep(&rest[..i]);
            if !self.overlong {
                on_line(strip_cr(&self.partial));
            }
            self.partial.clear();
            self.overlong = false;
            rest = &rest[i + 1..];
        }
        let mut start = 0;
        for i in memchr::memchr_iter(b'\n', rest) {
            on_line(strip_cr(&rest[start..i]));
            start = i + 1;
        }
        self.keep(&rest[start..]);
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.overlong || self.partial.len() + bytes.len() > MAX_LINE {
            self.partial.clear();
            self.overlong = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The sequence number after the token prefix in an SSE line, if it is a
/// `data:` line that carries one.
pub(crate) fn token_seq(line: &[u8], token: &Finder<'_>) -> Option<u64> {
    let data = line.strip_prefix(b"data:")?;
    let at = token.find(data)? + token.needle().len();
    let digits = &data[at..];
    let len = digits
        .iter()
        .take(20)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if len == 0 {
        return None;
    }
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

/// What one client saw.
#[derive(Debug)]
pub(crate) struct ClientOutcome {
    /// The topic index it subscribed to (`--topics`); `None` = every event.
    pub topic: Option<u32>,
    /// When the response headers (2xx) arrived, ns since `t0`.
    pub connected_ns: Option<u64>,
    /// Why it never connected.
    pub error: Option<String>,
    /// The stream ended (or failed) before the run did, and was not resumed.
    pub dropped: bool,
    /// Why the last resume attempt of a dropped stream failed (`--reconnect`).
    pub resume_error: Option<String>,
    /// Times the stream ended and was resumed (`--reconnect`).
    pub reconnects: u64,
    /// When the last resumed stream got its response headers, ns since `t0`.
    pub resumed_ns: Option<u64>,
    /// Events carrying this run's token, duplicates included.
    pub deliveries: u64,
    /// Events seen again by this client.
    pub duplicates: u64,
    /// Events whose seq is lower than the previous one this client saw.
    pub order_violations: u64,
    /// Token-bearing events with a seq this run never published.
    pub foreign: u64,
    /// When the last delivery arrived, ns since `t0`.
    pub last_delivery_ns: u64,
    /// Bit `seq` set once seq was seen.
    pub seen: Vec<u64>,
    /// Order-sensitive hash (FNV-1a over seqs) of everything seen, in order:
    /// clients that saw the same events in the same order agree on it.
    pub order_hash: u64,
    last_seq: Option<u64>,
    /// The value of the last `id:` line, sent as `Last-Event-ID` on resume.
    last_id: Vec<u8>,
}

/// FNV-1a offset basis: `order_hash` of a client that saw nothing.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// Pause between failed resume attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl Default for ClientOutcome {
    fn default() -> Self {
        Self {
            topic: None,
            connected_ns: None,
            error: None,
            dropped: false,
            resume_error: None,
            reconnects: 0,
            resumed_ns: None,
            deliveries: 0,
            duplicates: 0,
            order_violations: 0,
            foreign: 0,
            last_delivery_ns: 0,
            seen: Vec::new(),
            order_hash: FNV_OFFSET,
            last_seq: None,
            last_id: Vec::new(),
        }
    }
}

/// A latency sample: µs, and whether the event was sent after `--signal-pid`'s signal.
type Sample = (u64, bool);

impl ClientOutcome {
    fn on_seq(&mut self, seq: u64, now_ns: u64, shared: &Shared, latencies: &mut Vec<Sample>) {
        let Some(sent) = usize::try_from(seq)
            .ok()
            .and_then(|i| shared.send_ns.get(i))
        else {
            self.foreign += 1;
            return;
        };
        self.deliveries += 1;
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
        }
        self.seen[word] |= bit;
        if self.last_seq.is_some_and(|last| seq < last) {
            self.order_violations += 1;
        }
        self.last_seq = Some(seq);
        self.order_hash = (self.order_hash ^ seq).wrapping_mul(0x0100_0000_01b3);
        let sent = sent.load(Ordering::Relaxed);
        if sent != 0 {
            let signal = shared.signal_ns.load(Ordering::Relaxed);
            latencies.push((
                now_ns.saturating_sub(sent) / 1000,
                signal != 0 && sent >= signal,
            ));
        }
    }

    /// Remembers the value of an `id:` line (one leading space stripped, as
    /// WHATWG HTML §9.2.6 does).
    fn on_line(&mut self, line: &[u8]) {
        if let Some(value) = line.strip_prefix(b"id:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            self.last_id.clear();
            self.last_id.extend_from_slice(value);
        }
    }
}

/// Everything a client task needs.
#[derive(Debug, Clone)]
pub(crate) struct ClientPlan {
    pub index: usize,
    pub target: Arc<Target>,
    /// The request target (the URL's path with `{topic}` filled in).
    pub path: String,
    pub topic: Option<u32>,
    pub source: Option<IpAddr>,
    pub connect_timeout: Duration,
    /// Resume a stream that ends before the run does (`--reconnect`).
    pub reconnect: bool,
}

/// Connects, subscribes and counts token-bearing events until `shared.stop`.
/// `connecting` bounds how many clients are between connect and response
/// headers the first time (resumes do not wait: that is the storm).
pub(crate) async fn run_client(
    plan: ClientPlan,
    shared: Arc<Shared>,
    connecting: Arc<Semaphore>,
) -> ClientOutcome {
    let out = client(plan, &shared, connecting).await;
    if out.error.is_some() {
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
    out
}

async fn client(plan: ClientPlan, shared: &Shared, connecting: Arc<Semaphore>) -> ClientOutcome {
    let mut out = ClientOutcome {
        topic: plan.topic,
        ..ClientOutcome::default()
    };
    let mut permit = tokio::select! {
        p = connecting.acquire_owned() => p.ok(),
        () = shared.stop.cancelled() => {
            out.error = Some("run ended before connecting".to_owned());
            return out;
        }
    };
    // When the stream last ended; resumes are tried until `connect_timeout` after it.
    let mut ended_at: Option<Instant> = None;
    loop {
        let (had_headers, ended) = stream_once(&plan, shared, &mut out, &mut permit).await;
        let stopped = shared.stop.is_cancelled();
        if out.connected_ns.is_none() {
            out.error = Some(match ended {
                Err(e) => e,
                Ok(()) if stopped => "run ended before response headers".to_owned(),
                Ok(()) => "closed before response headers".to_owned(),
            });
            return out;
        }
        if stopped {
            return out;
        }
        if !plan.reconnect {
            out.dropped = true;
            return out;
        }
        if had_headers {
            ended_at = Some(Instant::now());
        } else {
            if ended_at.is_some_and(|at| at.elapsed() > plan.connect_timeout) {
                out.dropped = true;
                out.resume_error = Some(match ended {
                    Err(e) => e,
                    Ok(()) => "closed before response headers".to_owned(),
                });
                return out;
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY_PAUSE) => {}
                () = shared.stop.cancelled() => return out,
            }
        }
    }
}

/// One HTTP/1 connection and its stream: returns whether response headers
/// (2xx) arrived, and how it ended (`Ok` = the stream or the run ended).
async fn stream_once(
    plan: &ClientPlan,
    shared: &Shared,
    out: &mut ClientOutcome,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> (bool, Result<(), String>) {
    let target = &plan.target;
    let connected = tokio::time::timeout(plan.connect_timeout, async {
        let stream = connect(target.addr, plan.source)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))
    })
    .await;
    let (mut sender, conn) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return (false, Err(e)),
        Err(_) => return (false, Err("connect: timed out".to_owned())),
    };
    let mut request = Request::get(plan.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::ACCEPT, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    if !out.last_id.is_empty() {
        if let Ok(id) = header::HeaderValue::from_bytes(&out.last_id) {
            request = request.header("last-event-id", id);
        }
    }
    let request = request.body(Empty::<Bytes>::new()).expect("valid request");
    let mut conn = std::pin::pin!(conn);
    let shard = plan.index % shared.latency.len();
    let mut had_headers = false;

    let reader = async {
        let response = tokio::time::timeout(plan.connect_timeout, sender.send_request(request))
            .await
            .map_err(|_| "response headers: timed out".to_owned())?
            .map_err(|e| format!("request: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let now_ns = shared.ns(Instant::now());
        had_headers = true;
        if out.connected_ns.is_none() {
            out.connected_ns = Some(now_ns);
            shared.connected.fetch_add(1, Ordering::Relaxed);
            drop(permit.take());
        } else {
            out.reconnects += 1;
            out.resumed_ns = Some(now_ns);
        }
        let mut body = response.into_body();
        let mut lines = LineSplitter::default();
        let mut latencies = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body: {e}"))?;
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            let now_ns = shared.ns(Instant::now());
            let before = out.deliveries;
            lines.feed(chunk, |line| {
                if let Some(seq) = token_seq(line, &shared.token) {
                    out.on_seq(seq, now_ns, shared, &mut latencies);
                } else if plan.reconnect {
                    out.on_line(line);
                }
            });
            let new = out.deliveries - before;
            if new > 0 {
                out.last_delivery_ns = now_ns;
                shared.deliveries.fetch_add(new, Ordering::Relaxed);
            }
            if !latencies.is_empty() {
                shared.record(shard, &latencies);
                latencies.clear();
            }
        }
        Ok(())
    };

    let ended: Result<(), String> = tokio::select! {
        biased;
        () = shared.stop.cancelled() => Ok(()),
        res = &mut conn => res.map_err(|e| format!("connection: {e}")),
        res = reader => res,
    };
    (had_headers, ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            splitter.feed(c, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        assert_eq!(
            lines(&[b"id: 1\ndata: a", b"bc\r\n\r", b"\n", b"x", b"y", b"\n"]),
            ["id: 1", "data: abc", "", "xy"]
        );
        assert_eq!(lines(&[b"no newline yet"]), Vec::<String>::new());
    }

    #[test]
    fn drops_overlong_lines_only() {
        let big = vec![b'a'; MAX_LINE + 10];
        let got = lines(&[b"data: x", &big, b"tail\nnext\n"]);
        assert_eq!(got, ["next"]);
    }

    #[test]
    fn finds_the_token_in_data_lines_only() {
        let token = Finder::new(b"bench-r1-").into_owned();
        let data = br#"data: {"id":"9","data":{"name":"bench-r1-42","balance":42}}"#;
        assert_eq!(token_seq(data, &token), Some(42));
        assert_eq!(token_seq(br#"data:{"name":"bench-r1-7"}"#, &token), Some(7));
        assert_eq!(token_seq(b"id: bench-r1-5", &token), None);
        assert_eq!(token_seq(br#"data: {"name":"bench-r2-5"}"#, &token), None);
        assert_eq!(token_seq(br#"data: {"name":"bench-r1-"}"#, &token), None);
        assert_eq!(token_seq(b"data: {\"serverId\":\"a\"}", &token), None);
    }

    /// State for 10 events all sent at `send_ns`, token `x`.
    fn test_shared(send_ns: u64) -> Shared {
        Shared {
            t0: Instant::now(),
            send_ns: (0..10).map(|_| AtomicU64::new(send_ns)).collect(),
            token: Finder::new(b"x").into_owned(),
            latency: vec![Mutex::new(new_histogram())].into_boxed_slice(),
            latency_after_signal: vec![Mutex::new(new_histogram())].into_boxed_slice(),
            signal_ns: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stop: CancellationToken::new(),
        }
    }

    #[test]
    fn counts_duplicates_order_and_foreign() {
        let shared = test_shared(1_000);
        let mut out = ClientOutcome::default();
        let mut lat = Vec::new();
        for seq in [0, 1, 3, 2, 3, 99] {
            out.on_seq(seq, 3_001_000, &shared, &mut lat);
        }
        assert_eq!(out.deliveries, 5);
        assert_eq!(out.duplicates, 1);
        assert_eq!(out.order_violations, 1);
        assert_eq!(out.foreign, 1);
        assert_eq!(lat, [(3000, false); 5]);
        assert_eq!(out.seen, [0b1111]);
    }

    #[test]
    fn marks_samples_sent_after_the_signal_and_keeps_the_last_id() {
        let shared = test_shared(1_000);
        shared.signal_ns.store(500, Ordering::Relaxed);
        let mut out = ClientOutcome::default();
        let mut lat = Vec::new();
        out.on_seq(0, 2_000, &shared, &mut lat);
        assert_eq!(lat, [(1, true)]);
        out.on_line(b"id: 1-0");
        out.on_line(b"data: x");
        assert_eq!(out.last_id, b"1-0");
        out.on_line(b"id:abc");
        assert_eq!(out.last_id, b"abc");
    }

    #[test]
    fn order_hash_depends_on_order() {
        let shared = test_shared(0);
        let hash = |seqs: &[u64]| {
            let mut out = ClientOutcome::default();
            for &seq in seqs {
                out.on_seq(seq, 0, &shared, &mut Vec::new());
            }
            out.order_hash
        };
        assert_eq!(hash(&[1, 2, 3]), hash(&[1, 2, 3]));
        assert_ne!(hash(&[1, 2, 3]), hash(&[2, 1, 3]));
        assert_ne!(hash(&[]), hash(&[0]));
    }
}
