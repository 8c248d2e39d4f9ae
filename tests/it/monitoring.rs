//! Monitoring with the real binary (issue 12):
//!
//! - `METRICS_ADDR` starts a second listener serving only `/metrics`; the main port
//!   keeps `/metrics` too; an address that cannot be bound stops the process with a
//!   line naming `METRICS_ADDR`.
//! - A real Prometheus (Debian's), scraping two real instances every second with the
//!   repository's `deploy/prometheus/rules.yml` loaded, answers `sum(sse_clients)`
//!   and the recording rule `job:sse_clients:sum` with the number of open streams,
//!   before and after some close.
//! - Every metric name in the PromQL of every panel of the Grafana dashboard is in a
//!   live `/metrics` of the real server (or is a recording rule of `rules.yml`, or
//!   Prometheus's own `up`), and `event_delivery_lag_seconds` counts delivered events.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use crate::support::{
    app::wait_healthy, eventually, post_account, ServerProcess, SseClient, TestRedis,
};

fn repo_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

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

// ---------------------------------------------------------------------------
// A real Prometheus
// ---------------------------------------------------------------------------

/// The Prometheus executable (Debian package `prometheus`); panics if missing, so the
/// test is never skipped silently.
fn prometheus_binary() -> PathBuf {
    let path = PathBuf::from("/usr/bin/prometheus");
    assert!(
        path.is_file(),
        "prometheus not installed: run scripts/test (it installs it) or apt-get install -y prometheus"
    );
    path
}

/// A Prometheus server on a free loopback port with its storage in a temp dir,
/// scraping `targets` (job `sse-fanout`) every second, with the repo's rules loaded.
/// Killed on drop.
struct TestPrometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl TestPrometheus {
    async fn start(targets: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let targets = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: sse-fanout\n    static_configs:\n      - targets: [{targets}]\n",
            rules = repo_path("deploy/prometheus/rules.yml").display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = crate::nginx::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = std::process::Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let http = reqwest::Client::new();
        let ready = format!("{}/-/ready", prometheus.base);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            if http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The single value of an instant query, if it returned exactly one sample.
    async fn scalar(&self, http: &reqwest::Client, query: &str) -> Option<f64> {
        let response = http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        assert_eq!(body["status"], "success", "{query}: {body}");
        let result = body["data"]["result"].as_array()?;
        match result.as_slice() {
            [sample] => sample["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Waits (≤ 30 s) until each query answers its expected value; on time-out
    /// panics with what it answered and Prometheus's log.
    async fn wait_for(&self, http: &reqwest::Client, expected: &[(&str, f64)]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut got = Vec::new();
            for (query, _) in expected {
                got.push(self.scalar(http, query).await);
            }
            if got
                .iter()
                .zip(expected)
                .all(|(got, (_, want))| *got == Some(*want))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus did not answer {expected:?} within 30 s; got {got:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two real instances on one Redis, both ready.
async fn two_instances(redis: &TestRedis) -> Vec<ServerProcess> {
    let url = redis.url();
    let mut instances = Vec::new();
    for id in ["backend-1", "backend-2"] {
        let server = ServerProcess::spawn(&[("REDIS_URL", &url), ("SERVER_ID", id)]).await;
        wait_healthy(&server.base()).await;
        instances.push(server);
    }
    instances
}

#[tokio::test]
async fn a_real_prometheus_sums_the_clients_of_two_instances() {
    let redis = TestRedis::start();
    let instances = two_instances(&redis).await;
    let mut streams_1 = Vec::new();
    for _ in 0..3 {
        let url = format!("{}/events/sse", instances[0].base());
        streams_1.push(SseClient::open(&url, None).await.0);
    }
    let mut streams_2 = Vec::new();
    for _ in 0..2 {
        let url = format!("{}/events/sse", instances[1].base());
        streams_2.push(SseClient::open(&url, None).await.0);
    }
    let prometheus = TestPrometheus::start(&[instances[0].addr, instances[1].addr]).await;
    let http = reqwest::Client::new();
    prometheus
        .wait_for(
            &http,
            &[
                ("count(up{job=\"sse-fanout\"} == 1)", 2.0),
                ("sum(sse_clients)", 5.0),
                ("sum(subscriber_ready)", 2.0),
                // The repo's recording rule, evaluated by the real Prometheus.
                ("sum(job:sse_clients:sum)", 5.0),
            ],
        )
        .await;

    // Two streams of backend-1 close: the sum follows.
    streams_1.truncate(1);
    prometheus
        .wait_for(
            &http,
            &[("sum(sse_clients)", 3.0), ("sum(job:sse_clients:sum)", 3.0)],
        )
        .await;
    drop(streams_2);
}

// ---------------------------------------------------------------------------
// The Grafana dashboard
// ---------------------------------------------------------------------------

/// PromQL words followed by a list of label names: `by (a, b)`, `on (instance)`.
const PROMQL_GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other PromQL words that are not metric names: aggregation operators (which may be
/// followed by `by` instead of `(`), set operators and modifiers.
const PROMQL_KEYWORDS: [&str; 17] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
];

/// The metric names a PromQL expression reads: identifiers outside strings, label
/// matchers (`{…}`), ranges (`[…]`) and grouping lists (`by (…)`), that are neither
/// function calls nor keywords. Enough for the dashboard's queries (no subqueries
/// of the form `name[5m:1m]` are special-cased beyond the brackets).
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Drop strings, {…} and […].
    let mut plain = String::new();
    let mut skip_until: Option<char> = None;
    for ch in expr.chars() {
        match skip_until {
            Some(end) if ch == end => skip_until = None,
            Some(_) => {}
            None => match ch {
                '"' => skip_until = Some('"'),
                '{' => skip_until = Some('}'),
                '[' => skip_until = Some(']'),
                _ => plain.push(ch),
            },
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut after_grouping = false;
    while i < chars.len() {
        let ch = chars[i];
        if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next] == ' ' {
                next += 1;
            }
            let is_call = chars.get(next) == Some(&'(');
            if PROMQL_GROUPING.contains(&word.as_str()) {
                // `by (a, b)`: the list that follows is labels.
                after_grouping = is_call;
            } else if !is_call && !PROMQL_KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
            continue;
        }
        if ch == '(' && after_grouping {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            after_grouping = false;
        }
        i += 1;
    }
    names
}

/// Every panel (rows' nested panels included) as `(title, [expr])`.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        let exprs = panel["targets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .filter_map(|t| t["expr"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        out.push((title, exprs));
    }
    out
}

#[test]
fn promql_metric_names_are_extracted() {
    let expr = r#"histogram_quantile(0.99, sum by (instance, le) (rate(event_delivery_lag_seconds_bucket{job="x",instance=~"$instance"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["event_delivery_lag_seconds_bucket"]
    );
    let expr = r#"sse_clients{a="b"} / on (instance) sse_clients_limit or up"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["sse_clients", "sse_clients_limit", "up"]
    );
}

#[tokio::test]
async fn every_dashboard_metric_is_exposed_by_the_real_server() {
    let text =
        std::fs::read_to_string(repo_path("deploy/grafana/dashboards/sse-fanout.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_path("deploy/prometheus/rules.yml")).unwrap(),
    )
    .unwrap();
    let recorded: BTreeSet<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect();
    assert!(!recorded.is_empty(), "rules.yml has no recording rules");

    let redis = TestRedis::start();
    let server = ServerProcess::spawn(&[("REDIS_URL", &redis.url())]).await;
    wait_healthy(&server.base()).await;
    let http = reqwest::Client::new();
    // Traffic, so that the event series have moved.
    let (mut stream, _) = SseClient::open(&format!("{}/events/sse", server.base()), None).await;
    let (status, body) = post_account(&http, &server.base(), "dashboard", 1).await;
    assert_eq!(status, 201, "{body}");
    stream.messages(1, Duration::from_secs(5)).await;
    let exposition = eventually(
        Duration::from_secs(5),
        "event_delivery_lag_seconds_count 1",
        || {
            let request = http.get(format!("{}/metrics", server.base())).send();
            async move {
                let text = request.await.ok()?.text().await.ok()?;
                text.lines()
                    .any(|l| l == "event_delivery_lag_seconds_count 1")
                    .then_some(text)
            }
        },
    )
    .await;
    // The one event's lag: append to history → hand-over, on one machine.
    let lag_sum: f64 = exposition
        .lines()
        .find_map(|l| l.strip_prefix("event_delivery_lag_seconds_sum "))
        .and_then(|v| v.parse().ok())
        .expect("event_delivery_lag_seconds_sum");
    assert!(
        (0.0..5.0).contains(&lag_sum),
        "delivery lag of one event on loopback: {lag_sum} s"
    );
    let exposed: BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();

    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 8, "dashboard has {} panels", queries.len());
    let mut used = BTreeSet::new();
    for (title, exprs) in &queries {
        assert!(!exprs.is_empty(), "panel `{title}` has no PromQL query");
        for expr in exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel `{title}`: no metric in `{expr}`");
            for name in names {
                assert!(
                    exposed.contains(&name) || recorded.contains(&name) || name == "up",
                    "panel `{title}` queries `{name}`, which the server does not expose \
                     and rules.yml does not record (`{expr}`)"
                );
                used.insert(name);
            }
        }
    }
    // What the dashboard is for (issue 12).
    for wanted in [
        "sse_clients",
        "events_published_total",
        "events_received_total",
        "events_delivered_total",
        "event_delivery_lag_seconds_bucket",
        "sse_resets_total",
        "redis_reconnects_total",
        "http_requests_total",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}: {used:?}");
    }
}
