//! What a run measured, as JSON (`--json`) or text.

use std::{collections::BTreeMap, fmt};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Args;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The run's id: tokens are `bench-<run_id>-<seq>`.
    pub run_id: String,
    /// The arguments of the run.
    pub args: Args,
    /// SSE connections.
    pub connections: Connections,
    /// Published events (POSTs).
    pub events: Events,
    /// Events received by SSE clients.
    pub deliveries: Deliveries,
    /// POST sent → event read by a client, every delivery with a known send time.
    pub latency_ms: Latency,
    /// Scheduled send time → POST response, 2xx POSTs only (open loop: includes
    /// time spent waiting for a pooled publish connection).
    pub post_latency_ms: Latency,
    /// The `--pid` processes, summed; absent without `--pid`.
    pub server: Option<ServerUsage>,
    /// This bench process.
    pub bench: BenchUsage,
    /// All cores of the machine, busy share during the measured window (%).
    pub machine_cpu_busy_pct: f64,
    /// Failures by reason (`sse: …` for connections, `publish: …` for POSTs).
    pub errors: BTreeMap<String, u64>,
    /// Short-lived streams opened during the run (`--churn-rate`); absent without.
    pub churn: Option<crate::churn::Churn>,
    /// Resumed streams (`--reconnect`); absent without.
    pub resume: Option<Resume>,
}

/// SSE connection counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    /// Clients started (`--clients`).
    pub attempted: u64,
    /// Clients that got a 2xx response.
    pub ok: u64,
    /// Clients that never got a 2xx response.
    pub failed: u64,
    /// Connected clients whose stream ended before the run did.
    pub dropped: u64,
    /// Clients connected before the first publish: the ones `missing` counts for.
    pub eligible: u64,
}

/// Publishing counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Events {
    /// Events scheduled (`rate × duration`).
    pub scheduled: u64,
    /// POSTs answered 2xx.
    pub ok: u64,
    /// POSTs that failed.
    pub failed: u64,
    /// First POST scheduled → last POST finished, seconds (at least `--duration`).
    pub publish_secs: f64,
    /// `ok / publish_secs`.
    pub accepted_per_sec: f64,
}

/// Delivery counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Deliveries {
    /// Token-bearing events received, duplicates included.
    pub total: u64,
    /// `total` over `window_secs`.
    pub per_sec: f64,
    /// First publish → last delivery, seconds (at least `--duration`).
    pub window_secs: f64,
    /// Eligible clients × 2xx events.
    pub expected: u64,
    /// Per eligible client, 2xx events it never saw; summed.
    pub missing: u64,
    /// Events a client saw more than once (each extra sighting counts).
    pub duplicates: u64,
    /// Events with a lower seq than the previous one the same client saw.
    /// Meaningful with one publish URL only, and only where POSTs do not
    /// overlap: concurrent POSTs (several URLs, or a rate above 1 / POST
    /// latency) are legitimately accepted in any order. `order_disagreements`
    /// holds in every case.
    pub order_violations: u64,
    /// Eligible clients that saw every 2xx event exactly once, but in an order
    /// different from the most common order among such clients (the contract
    /// is that every client sees the same events in the same order).
    pub order_disagreements: u64,
    /// Token-bearing events whose seq this run never published.
    pub foreign: u64,
    /// Events a client got although it did not subscribe to their topic
    /// (`--topics`): a routing (or authorization) bug when not 0.
    pub misdelivered: u64,
}

/// Streams resumed after they ended (`--reconnect`), e.g. the reconnect storm
/// after `--signal-pid` got SIGTERM.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resume {
    /// Seconds into the publishing when SIGTERM was sent; `None` without `--signal-pid`.
    pub signal_at_secs: Option<f64>,
    /// Streams that ended and were resumed at least once.
    pub clients_reconnected: u64,
    /// Resumes in all (a stream can end more than once).
    pub reconnects: u64,
    /// Signal → the last resumed stream's response headers, seconds.
    pub last_resumed_secs_after_signal: Option<f64>,
    /// POST written → event read, for events sent after the signal (ms).
    pub latency_after_signal_ms: Latency,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a histogram of microseconds.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// CPU and memory of the `--pid` processes, summed over them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerUsage {
    /// The processes.
    pub pids: Vec<u32>,
    /// `VmRSS` before any client connected, KiB.
    pub rss_kib_start: u64,
    /// `VmRSS` once the clients connected, before publishing, KiB.
    pub rss_kib_connected: u64,
    /// `VmRSS` at the end, before the clients disconnect, KiB.
    pub rss_kib_end: u64,
    /// `(rss_kib_connected − rss_kib_start) / connections.ok`, KiB.
    pub rss_kib_per_connection: Option<f64>,
    /// CPU used from the first publish to the end of the drain, µs.
    pub cpu_us: u64,
    /// `cpu_us` over that window: cores kept busy on average.
    pub cpu_cores: f64,
    /// `cpu_us / deliveries.total`.
    pub cpu_us_per_delivery: Option<f64>,
    /// `cpu_us / events.ok`.
    pub cpu_us_per_event: Option<f64>,
}

/// CPU and memory of the bench itself, over the same window as the server's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchUsage {
    /// CPU used, µs.
    pub cpu_us: u64,
    /// Cores kept busy on average (near the machine's core count: the bench
    /// is the bottleneck and the figures are a lower bound of the server's).
    pub cpu_cores: f64,
    /// `cpu_us / deliveries.total`.
    pub cpu_us_per_delivery: Option<f64>,
    /// `VmRSS` at the end, KiB.
    pub rss_kib: u64,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  ({} samples)",
            self.p50, self.p90, self.p99, self.p99_9, self.max, self.count
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.connections;
        let e = &self.events;
        let d = &self.deliveries;
        writeln!(f, "run {}", self.run_id)?;
        writeln!(
            f,
            "connections   ok {} / {}  failed {}  dropped {}  eligible {}",
            c.ok, c.attempted, c.failed, c.dropped, c.eligible
        )?;
        writeln!(
            f,
            "events        ok {} / {}  failed {}  ({:.0}/s accepted over {:.2} s)",
            e.ok, e.scheduled, e.failed, e.accepted_per_sec, e.publish_secs
        )?;
        writeln!(
            f,
            "deliveries    {}  ({:.0}/s)  expected {}  missing {}  duplicates {}  order: {} violations, {} disagreements{}",
            d.total,
            d.per_sec,
            d.expected,
            d.missing,
            d.duplicates,
            d.order_violations,
            d.order_disagreements,
            if d.foreign > 0 {
                format!("  foreign {}", d.foreign)
            } else {
                String::new()
            }
        )?;
        if d.misdelivered > 0 {
            writeln!(
                f,
                "misdelivered  {} (events of a topic the client did not subscribe to)",
                d.misdelivered
            )?;
        }
        writeln!(f, "latency       {}", self.latency_ms)?;
        writeln!(f, "POST latency  {}", self.post_latency_ms)?;
        if let Some(s) = &self.server {
            writeln!(
                f,
                "server        RSS {} → {} → {} KiB ({} KiB per connection)  CPU {:.2} cores, {} µs per delivery, {} µs per event",
                s.rss_kib_start,
                s.rss_kib_connected,
                s.rss_kib_end,
                opt(s.rss_kib_per_connection, 2),
                s.cpu_cores,
                opt(s.cpu_us_per_delivery, 3),
                opt(s.cpu_us_per_event, 1)
            )?;
        }
        if let Some(c) = &self.churn {
            writeln!(
                f,
                "churn         ok {} / {}  failed {}  connect {}",
                c.ok, c.scheduled, c.failed, c.connect_ms
            )?;
        }
        if let Some(r) = &self.resume {
            writeln!(
                f,
                "resume        {} streams resumed ({} resumes), last {} s after the signal",
                r.clients_reconnected,
                r.reconnects,
                opt(r.last_resumed_secs_after_signal, 3)
            )?;
            writeln!(f, "  after signal {}", r.latency_after_signal_ms)?;
        }
        writeln!(
            f,
            "bench         CPU {:.2} cores, {} µs per delivery, RSS {} KiB; machine {:.0}% busy",
            self.bench.cpu_cores,
            opt(self.bench.cpu_us_per_delivery, 3),
            self.bench.rss_kib,
            self.machine_cpu_busy_pct
        )?;
        for (reason, n) in &self.errors {
            writeln!(f, "error         {n} × {reason}")?;
        }
        Ok(())
    }
}
