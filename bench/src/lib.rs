//! `sse-fanout-bench`: a load generator for SSE fan-out servers.
//!
//! It opens `--clients` SSE connections spread round-robin over the `--sse`
//! URLs, waits until they are connected (and `--warmup` has passed), then
//! publishes `rate × duration` events open-loop through the `--publish` URLs,
//! each carrying a unique token `bench-<run>-<seq>` in its name, waits
//! `--drain` seconds and reports what the clients received: deliveries,
//! missing, duplicates, order violations and latency from POST sent to event
//! read, plus the CPU and memory of the `--pid` processes and of the bench.
//!
//! It works against any server whose SSE `data:` lines carry the token: the
//! reader never parses JSON, it looks for `bench-<run>-` in `data:` lines
//! and reads the digits after it. `--publish-mode raw` posts
//! `{"name":"<token>"}` as is (for nchan's publisher endpoint);
//! `accounts` (the default) posts `{"name":"<token>","balance":<seq>}` to
//! sse-fanout's `POST /accounts`.
//!
//! # Timeline
//! 1. Sample the `--pid` processes (RSS before any connection).
//! 2. Connect every client (at most `--connect-concurrency` at once, each
//!    bound to one of `--source-addrs` loopback addresses). Publishing starts
//!    once every client has connected or failed **and** `--warmup` seconds
//!    have passed; clients connected by then are *eligible*.
//! 3. Sample again (RSS with the connections idle; CPU and the window start).
//! 4. Publish: event `k` is due `k / rate` s after the start, in its own
//!    task, over at most `--publish-connections` keep-alive connections per URL.
//! 5. When every POST has finished, wait `--drain` seconds, sample, stop.
//!
//! `missing` is, per eligible client, the 2xx events it never saw. Order
//! violations (a seq lower than the previous one) are meaningful with one
//! publish URL and non-overlapping POSTs only; order disagreements (complete
//! clients that saw a different order than the majority) hold in every case.

mod churn;
mod procstat;
mod publish;
mod report;
mod sse;
mod target;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memchr::memmem::Finder;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use crate::{
    churn::Churn,
    procstat::{MachineSample, ProcSample},
    report::{BenchUsage, Connections, Deliveries, Events, Latency, Report, Resume, ServerUsage},
    target::Target,
};
use crate::{
    publish::{PublishPlan, Publisher},
    sse::{new_histogram, run_client, ClientOutcome, ClientPlan, Shared},
};

/// Runs longer than this (warmup + duration + drain, seconds) show a progress bar.
const PROGRESS_MIN_SECS: f64 = 3.0;
/// Latency histogram shards shared by the clients.
const LATENCY_SHARDS: usize = 8;
/// Replaced by the topic name in `--sse` and `--publish` URLs.
pub const TOPIC_PLACEHOLDER: &str = "{topic}";

/// What to publish to the `--publish` URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// sse-fanout's `POST /accounts`: `{"name":"<token>","balance":<seq>}`.
    Accounts,
    /// A raw message body, e.g. nchan's publisher: `{"name":"<token>"}`.
    Raw,
    /// A Mercure update (draft-07 §5): form fields `topic=<topic>` and
    /// `data={"name":"<token>"}`, e.g. to sse-fanout's `POST /.well-known/mercure`
    /// (needs `--publish-token` with a publisher JWT).
    Mercure,
}

/// Command-line arguments (see `--help`).
#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "sse-fanout-bench",
    version,
    about = "Load generator for SSE fan-out servers: N SSE readers, open-loop publishing, latency and loss"
)]
pub struct Args {
    /// SSE URL to subscribe to; repeat it to spread clients round-robin.
    #[arg(long = "sse", value_name = "URL")]
    pub sse: Vec<String>,
    /// Number of SSE clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// URL to POST events to; repeat it to publish round-robin.
    #[arg(long = "publish", value_name = "URL")]
    pub publish: Vec<String>,
    /// Events per second (open loop); 0 publishes nothing.
    #[arg(long, value_name = "EVENTS_PER_SEC", default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing (or of idling, without --publish or with --rate 0).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds from the start before publishing begins (connect and settle);
    /// publishing also waits until every client has connected or failed.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait after the last POST finished, for late deliveries.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub drain: f64,
    /// Bind SSE clients round-robin to 127.0.0.1 ..= 127.0.0.N (IPv4 loopback
    /// targets only), so more than ~28k connections fit in the port range.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addrs: u8,
    /// Server process to sample (CPU, RSS); repeat for several, figures are summed.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// What to POST: `accounts` (sse-fanout) or `raw` (e.g. nchan).
    #[arg(long, value_enum, default_value_t = PublishMode::Accounts)]
    pub publish_mode: PublishMode,
    /// Keep-alive connections (= concurrent POSTs) per publish URL.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub publish_connections: usize,
    /// Send `Authorization: Bearer <TOKEN>` with each POST (sse-fanout's PUBLISH_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip)]
    pub publish_token: Option<String>,
    /// SSE clients connecting at once (the rest wait), to spare the listen backlog.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds allowed for a connection, for response headers, and for a POST.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,
    /// Run id used in tokens (default: random).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Connection churn: open this many short-lived SSE streams per second
    /// during the run (each reads its first bytes and closes), while the
    /// `--clients` stay open; 0 = none.
    #[arg(long, value_name = "STREAMS_PER_SEC", default_value_t = 0.0)]
    pub churn_rate: f64,
    /// Topics: 0 = none (every client gets every event); N > 0 = each event
    /// goes to a topic `t<k>` with `k` uniform in `0..N` (seeded by
    /// `--seed`), and client `i` subscribes to topic `t<i mod N>`. A
    /// `{topic}` in an `--sse` or `--publish` URL is replaced by the topic.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub topics: u32,
    /// Clients subscribed to every topic (besides `--clients`), through the
    /// `--wildcard-sse` URLs (e.g. a Mercure `topic=*` or nchan's channel
    /// that every publish also goes to).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub wildcard_clients: usize,
    /// SSE URL of the `--wildcard-clients`; repeat it to spread them round-robin.
    #[arg(long = "wildcard-sse", value_name = "URL")]
    pub wildcard_sse: Vec<String>,
    /// Seed of the event → topic choice.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Reconnect a stream that ends or fails before the run does, with
    /// `Last-Event-ID` set to the last `id:` it read (WHATWG HTML §9.2.3), until
    /// it gets a 2xx again (retrying every 50 ms within `--timeout`).
    #[arg(long)]
    pub reconnect: bool,
    /// Send SIGTERM to this process (`kill -TERM`) `--signal-at` seconds into
    /// the publishing: the reconnect-storm scenario. The report's `resume`
    /// part says when the last stream resumed and the latency of the events
    /// published after the signal.
    #[arg(long, value_name = "PID", requires = "reconnect")]
    pub signal_pid: Option<u32>,
    /// Seconds after publishing starts to send the `--signal-pid` SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub signal_at: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Never show the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        for (name, v) in [
            ("--rate", self.rate),
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--drain", self.drain),
            ("--churn-rate", self.churn_rate),
            ("--signal-at", self.signal_at),
        ] {
            anyhow::ensure!(v.is_finite() && v >= 0.0, "{name} must be ≥ 0, got {v}");
        }
        anyhow::ensure!(
            self.timeout.is_finite() && self.timeout > 0.0,
            "--timeout must be > 0"
        );
        anyhow::ensure!(
            self.churn_rate == 0.0 || !self.sse.is_empty(),
            "--churn-rate needs at least one --sse URL"
        );
        anyhow::ensure!(
            self.clients == 0 || !self.sse.is_empty(),
            "--clients {} needs at least one --sse URL",
            self.clients
        );
        anyhow::ensure!(
            self.wildcard_clients == 0 || !self.wildcard_sse.is_empty(),
            "--wildcard-clients {} needs at least one --wildcard-sse URL",
            self.wildcard_clients
        );
        anyhow::ensure!(
            self.topics > 0 || self.wildcard_clients == 0,
            "--wildcard-clients needs --topics"
        );
        for url in self.sse.iter().chain(&self.publish) {
            anyhow::ensure!(
                self.topics > 0 || !url.contains(TOPIC_PLACEHOLDER),
                "{url:?} has {TOPIC_PLACEHOLDER} but --topics is 0"
            );
        }
        if let Some(id) = &self.run_id {
            anyhow::ensure!(
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
                "--run-id must be ASCII letters and digits"
            );
        }
        let seen_bytes = (self.all_clients() as f64) * self.events() as f64 / 8.0;
        anyhow::ensure!(
            seen_bytes < 8.0 * f64::from(1u32 << 30),
            "--clients × rate × duration is too large to track (needs {:.0} GiB)",
            seen_bytes / f64::from(1u32 << 30)
        );
        Ok(())
    }

    /// Every SSE client of the run: `--clients` + `--wildcard-clients`.
    fn all_clients(&self) -> usize {
        self.clients + self.wildcard_clients
    }

    /// Events the run publishes: `rate × duration` when there is a publish URL.
    fn events(&self) -> u64 {
        if self.publish.is_empty() {
            0
        } else {
            (self.rate * self.duration).round() as u64
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(0)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Runs one benchmark and returns its report.
///
/// # Errors
/// Bad arguments, or a URL that cannot be resolved. Failures during the run
/// (refused connections, failed POSTs) are counted in the report instead.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    args.validate()?;
    let nofile = raise_nofile_limit();
    if nofile != 0 && (args.clients as u64) + 256 > nofile {
        eprintln!(
            "warning: {} clients with an open-files limit of {nofile}: some connections will fail",
            args.clients
        );
    }
    let mut sse_targets = Vec::new();
    for url in &args.sse {
        sse_targets.push(Arc::new(Target::resolve(url).await?));
    }
    let mut wildcard_targets = Vec::new();
    for url in &args.wildcard_sse {
        wildcard_targets.push(Arc::new(Target::resolve(url).await?));
    }
    let mut publish_targets = Vec::new();
    for url in &args.publish {
        publish_targets.push(Target::resolve(url).await?);
    }
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
    let prefix = format!("bench-{run_id}-");
    let total = args.events();
    let timeout = Duration::from_secs_f64(args.timeout);
    let topic_of: Arc<[u32]> = if args.topics > 0 {
        let mut rng = fastrand::Rng::with_seed(args.seed);
        (0..total).map(|_| rng.u32(0..args.topics)).collect()
    } else {
        Arc::from([])
    };

    let shared = Arc::new(Shared {
        t0: Instant::now(),
        send_ns: (0..total).map(|_| AtomicU64::new(0)).collect(),
        token: Finder::new(prefix.as_bytes()).into_owned(),
        latency: (0..LATENCY_SHARDS)
            .map(|_| Mutex::new(new_histogram()))
            .collect(),
        latency_after_signal: (0..LATENCY_SHARDS)
            .map(|_| Mutex::new(new_histogram()))
            .collect(),
        signal_ns: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: CancellationToken::new(),
    });
    let publisher = Arc::new(
        Publisher::new(PublishPlan {
            targets: publish_targets,
            connections_per_url: args.publish_connections,
            mode: args.publish_mode,
            prefix,
            bearer: args.publish_token.clone(),
            timeout,
            total,
            topic_of: topic_of.clone(),
        })
        .context("publisher")?,
    );
    let progress = start_progress(&args, &shared, &publisher);

    // 1–2: sample, connect, settle.
    let server_start = ProcSample::read_all(&args.pids);
    let connecting = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let clients: Vec<_> = (0..args.all_clients())
        .map(|index| {
            let (target, topic) = if index < args.clients {
                let topic =
                    (args.topics > 0).then(|| (index as u64 % u64::from(args.topics)) as u32);
                (sse_targets[index % sse_targets.len()].clone(), topic)
            } else {
                let k = index - args.clients;
                (wildcard_targets[k % wildcard_targets.len()].clone(), None)
            };
            let plan = ClientPlan {
                index,
                source: target.source_for(index, args.source_addrs),
                path: target.path_for(topic.map(topic_name).as_deref()),
                topic,
                target,
                connect_timeout: timeout,
                reconnect: args.reconnect,
            };
            tokio::spawn(run_client(plan, shared.clone(), connecting.clone()))
        })
        .collect();
    let warmup_end = shared.t0 + Duration::from_secs_f64(args.warmup);
    loop {
        let settled =
            shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if settled >= args.all_clients() as u64 && Instant::now() >= warmup_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 3–5: sample, publish, drain, sample.
    let server_connected = ProcSample::read_all(&args.pids);
    let bench_start = ProcSample::read(None).unwrap_or_default();
    let machine_start = MachineSample::read();
    let publish_start = Instant::now();
    let publish_start_ns = shared.ns(publish_start);
    let publishing = async {
        if total > 0 {
            publisher.clone().run(shared.clone(), args.rate).await;
        } else {
            tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        }
    };
    let churning = async {
        if args.churn_rate > 0.0 {
            let window = Duration::from_secs_f64(args.duration);
            Some(churn::run(&sse_targets, args.churn_rate, window, timeout).await)
        } else {
            None
        }
    };
    let signalling = async {
        let pid = args.signal_pid?;
        tokio::time::sleep_until((publish_start + Duration::from_secs_f64(args.signal_at)).into())
            .await;
        shared
            .signal_ns
            .store(shared.ns(Instant::now()).max(1), Ordering::Relaxed);
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        match killed {
            Ok(status) if status.success() => None,
            Ok(status) => Some(format!("kill -TERM {pid}: {status}")),
            Err(e) => Some(format!("kill -TERM {pid}: {e}")),
        }
    };
    let ((), churn, signal_error) = tokio::join!(publishing, churning, signalling);
    tokio::time::sleep(Duration::from_secs_f64(args.drain)).await;
    let server_end = ProcSample::read_all(&args.pids);
    let bench_end = ProcSample::read(None).unwrap_or_default();
    let machine_end = MachineSample::read();
    let window_ns = shared
        .ns(Instant::now())
        .saturating_sub(publish_start_ns)
        .max(1);

    shared.stop.cancel();
    let mut outcomes = Vec::with_capacity(clients.len());
    for client in clients {
        outcomes.push(client.await.context("client task panicked")?);
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    // Aggregate.
    let mut accepted = vec![0u64; total.div_ceil(64) as usize];
    for (seq, ok) in publisher.accepted.iter().enumerate() {
        if ok.load(Ordering::Relaxed) {
            accepted[seq / 64] |= 1 << (seq % 64);
        }
    }
    let events_ok = publisher.ok.load(Ordering::Relaxed);
    // Accepted events per topic: what a client of that topic should see.
    let mut ok_per_topic = vec![0u64; args.topics as usize];
    for (seq, &topic) in topic_of.iter().enumerate() {
        if accepted[seq / 64] & (1 << (seq % 64)) != 0 {
            ok_per_topic[topic as usize] += 1;
        }
    }
    let mut errors = BTreeMap::new();
    if let Some(e) = signal_error {
        errors.insert(format!("signal: {e}"), 1);
    }
    let mut connections = Connections {
        attempted: args.all_clients() as u64,
        ..Connections::default()
    };
    let mut resume = args.reconnect.then(|| Resume {
        signal_at_secs: args.signal_pid.map(|_| args.signal_at),
        ..Resume::default()
    });
    let signal_ns = shared.signal_ns.load(Ordering::Relaxed);
    let mut deliveries = Deliveries::default();
    let mut last_delivery_ns = 0;
    // (topic, order hash) → clients: clients of one topic must agree.
    let mut orders: BTreeMap<(Option<u32>, u64), u64> = BTreeMap::new();
    for out in &outcomes {
        if let Some(e) = &out.error {
            connections.failed += 1;
            *errors.entry(format!("sse: {e}")).or_default() += 1;
        }
        if let Some(e) = &out.resume_error {
            *errors.entry(format!("resume: {e}")).or_default() += 1;
        }
        let Some(connected_ns) = out.connected_ns else {
            continue;
        };
        connections.ok += 1;
        connections.dropped += u64::from(out.dropped);
        deliveries.total += out.deliveries;
        deliveries.duplicates += out.duplicates;
        deliveries.order_violations += out.order_violations;
        deliveries.foreign += out.foreign;
        last_delivery_ns = last_delivery_ns.max(out.last_delivery_ns);
        if let Some(r) = resume.as_mut() {
            r.reconnects += out.reconnects;
            r.clients_reconnected += u64::from(out.reconnects > 0);
            if let Some(resumed) = out
                .resumed_ns
                .filter(|&at| signal_ns != 0 && at >= signal_ns)
            {
                let after = secs(resumed - signal_ns);
                r.last_resumed_secs_after_signal = Some(
                    r.last_resumed_secs_after_signal
                        .map_or(after, |v: f64| v.max(after)),
                );
            }
        }
        let seen = seen_accepted(out, &accepted, &topic_of);
        deliveries.misdelivered += seen.other_topics;
        if connected_ns <= publish_start_ns {
            connections.eligible += 1;
            let expected = out.topic.map_or(events_ok, |t| ok_per_topic[t as usize]);
            deliveries.expected += expected;
            let missing = expected.saturating_sub(seen.own);
            deliveries.missing += missing;
            if missing == 0 && out.duplicates == 0 {
                *orders.entry((out.topic, out.order_hash)).or_default() += 1;
            }
        }
    }
    let mut agreeing: BTreeMap<Option<u32>, (u64, u64)> = BTreeMap::new();
    for (&(topic, _), &n) in &orders {
        let (complete, most) = agreeing.entry(topic).or_default();
        *complete += n;
        *most = (*most).max(n);
    }
    deliveries.order_disagreements = agreeing.values().map(|(c, m)| c - m).sum();
    deliveries.window_secs =
        secs(last_delivery_ns.saturating_sub(publish_start_ns)).max(args.duration);
    if deliveries.window_secs > 0.0 {
        deliveries.per_sec = deliveries.total as f64 / deliveries.window_secs;
    }
    for (e, n) in publisher
        .errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        errors.insert(format!("publish: {e}"), *n);
    }

    let publish_secs = secs(
        publisher
            .last_done_ns
            .load(Ordering::Relaxed)
            .saturating_sub(publish_start_ns),
    )
    .max(args.duration);
    let events = Events {
        scheduled: total,
        ok: events_ok,
        failed: publisher.failed.load(Ordering::Relaxed),
        publish_secs,
        accepted_per_sec: if publish_secs > 0.0 {
            events_ok as f64 / publish_secs
        } else {
            0.0
        },
    };
    let mut latency = new_histogram();
    for shard in shared.latency.iter() {
        latency
            .add(&*shard.lock().unwrap_or_else(PoisonError::into_inner))
            .context("merging histograms")?;
    }
    let per = |cpu_us: u64, n: u64| (n > 0).then(|| cpu_us as f64 / n as f64);
    let window_us = window_ns as f64 / 1000.0;
    let server = match (server_start, server_connected, server_end) {
        (Some(s0), Some(s1), Some(s2)) => {
            let cpu_us = s2.cpu_us.saturating_sub(s1.cpu_us);
            Some(ServerUsage {
                pids: args.pids.clone(),
                rss_kib_start: s0.rss_kib,
                rss_kib_connected: s1.rss_kib,
                rss_kib_end: s2.rss_kib,
                rss_kib_per_connection: (connections.ok > 0)
                    .then(|| (s1.rss_kib as f64 - s0.rss_kib as f64) / connections.ok as f64),
                cpu_us,
                cpu_cores: cpu_us as f64 / window_us,
                cpu_us_per_delivery: per(cpu_us, deliveries.total),
                cpu_us_per_event: per(cpu_us, events_ok),
            })
        }
        _ if !args.pids.is_empty() => {
            errors.insert(format!("pid: cannot read /proc of {:?}", args.pids), 1);
            None
        }
        _ => None,
    };
    let bench_cpu = bench_end.cpu_us.saturating_sub(bench_start.cpu_us);
    if let Some(r) = resume.as_mut() {
        let mut after = new_histogram();
        for shard in shared.latency_after_signal.iter() {
            after
                .add(&*shard.lock().unwrap_or_else(PoisonError::into_inner))
                .context("merging histograms")?;
        }
        r.latency_after_signal_ms = Latency::from_us(&after);
    }
    let post_latency_ms = Latency::from_us(
        &publisher
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    Ok(Report {
        run_id,
        connections,
        events,
        deliveries: deliveries.clone(),
        latency_ms: Latency::from_us(&latency),
        post_latency_ms,
        server,
        bench: BenchUsage {
            cpu_us: bench_cpu,
            cpu_cores: bench_cpu as f64 / window_us,
            cpu_us_per_delivery: per(bench_cpu, deliveries.total),
            rss_kib: bench_end.rss_kib,
        },
        machine_cpu_busy_pct: machine_start.busy_pct_until(machine_end),
        errors,
        churn,
        resume,
        args,
    })
}

/// What a client saw of the 2xx events (bits of `accepted`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    /// Accepted events of its own topic (or of any, without topics).
    own: u64,
    /// Events of a topic it did not subscribe to.
    other_topics: u64,
}

fn seen_accepted(out: &ClientOutcome, accepted: &[u64], topic_of: &[u32]) -> Seen {
    let Some(topic) = out.topic else {
        let own = out
            .seen
            .iter()
            .zip(accepted)
            .map(|(s, a)| u64::from((s & a).count_ones()))
            .sum();
        return Seen {
            own,
            other_topics: 0,
        };
    };
    let mut seen = Seen::default();
    for (word, &bits) in out.seen.iter().enumerate() {
        let mut rest = bits;
        while rest != 0 {
            let bit = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let seq = word * 64 + bit;
            if topic_of.get(seq) != Some(&topic) {
                seen.other_topics += 1;
            } else if accepted.get(word).is_some_and(|a| a & (1 << bit) != 0) {
                seen.own += 1;
            }
        }
    }
    seen
}

/// Topic `k`'s name in URLs and Mercure updates: `t<k>`.
pub fn topic_name(k: u32) -> String {
    format!("t{k}")
}

/// A progress bar over the planned run time, redrawn from the shared
/// counters every 250 ms; `None` for short runs, `--no-progress`, or when
/// stderr is not a terminal (indicatif hides it then).
fn start_progress(
    args: &Args,
    shared: &Arc<Shared>,
    publisher: &Arc<Publisher>,
) -> Option<ProgressBar> {
    let planned = args.warmup + args.duration + args.drain;
    if args.no_progress || planned < PROGRESS_MIN_SECS {
        return None;
    }
    let target = ProgressDrawTarget::stderr();
    if target.is_hidden() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some((planned * 10.0) as u64), target);
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{wide_bar}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let (bar2, shared, publisher) = (bar.clone(), shared.clone(), publisher.clone());
    let clients = args.clients;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while !shared.stop.is_cancelled() {
            tick.tick().await;
            bar2.set_position((shared.t0.elapsed().as_secs_f64() * 10.0) as u64);
            bar2.set_message(format!(
                "clients {}/{clients} (failed {})  posted {} (failed {})  deliveries {}",
                shared.connected.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed),
                publisher.ok.load(Ordering::Relaxed),
                publisher.failed.load(Ordering::Relaxed),
                shared.deliveries.load(Ordering::Relaxed),
            ));
        }
    });
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(topic: Option<u32>, seqs: &[usize]) -> ClientOutcome {
        let mut out = ClientOutcome::default();
        out.topic = topic;
        for &seq in seqs {
            if seq / 64 >= out.seen.len() {
                out.seen.resize(seq / 64 + 1, 0);
            }
            out.seen[seq / 64] |= 1 << (seq % 64);
        }
        out
    }

    #[test]
    fn counts_what_a_client_saw_of_its_own_topic() {
        // Events 0..70 alternate topics 0 and 1; event 2 was not accepted.
        let topic_of: Vec<u32> = (0..70).map(|seq| seq % 2).collect();
        let accepted = [!0b100u64, (1 << 6) - 1];
        let mine = client(Some(0), &[0, 2, 4, 64, 3]);
        assert_eq!(
            seen_accepted(&mine, &accepted, &topic_of),
            Seen {
                own: 3,
                other_topics: 1
            }
        );
        let all = client(None, &[0, 1, 2, 65]);
        assert_eq!(
            seen_accepted(&all, &accepted, &topic_of),
            Seen {
                own: 3,
                other_topics: 0
            }
        );
    }
}
