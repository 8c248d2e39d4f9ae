//! `GET /metrics` of the real binary (its own process, so its own recorder), SPEC §3.5:
//! every listed series is there on the very first scrape, and the counters and the
//! gauge follow what happens — POSTs, deliveries, open and closed streams, and the
//! per-route HTTP counter and histogram.

use std::{collections::HashMap, time::Duration};

use crate::support::{
    app::wait_healthy, eventually, post_account, ServerProcess, SseClient, TestRedis,
};

/// One scrape as `series → value`, the series written as in the exposition
/// (`name` or `name{label="value",...}`). Also checks the content type.
async fn scrape(http: &reqwest::Client, base: &str) -> HashMap<String, f64> {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("bad sample line {l:?}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn value(scrape: &HashMap<String, f64>, series: &str) -> f64 {
    *scrape
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {scrape:#?}"))
}

const POST_201: &str = r#"http_requests_total{method="POST",route="/accounts",status="201"}"#;

/// All SPEC §3.5 series on the first scrape; published/received/delivered counters,
/// `sse_clients` and the HTTP series move with the traffic.
#[tokio::test]
async fn metrics_follow_the_traffic() {
    let redis = TestRedis::start();
    let server = ServerProcess::spawn(&[
        ("REDIS_URL", &redis.url()),
        ("SERVER_ID", "backend-1"),
        // A closed stream is noticed at the next write at the latest.
        ("SSE_KEEPALIVE_SECS", "1"),
    ])
    .await;
    let base = server.base();
    let http = reqwest::Client::new();

    // The very first request the process serves.
    let first = scrape(&http, &base).await;
    for series in [
        "sse_clients",
        "events_published_total",
        "events_received_total",
        "events_delivered_total",
        "sse_resets_total",
        "redis_reconnects_total",
    ] {
        assert_eq!(value(&first, series), 0.0, "{series} at start-up");
    }
    for family in [
        "http_requests_total{",
        "http_request_duration_seconds_bucket{",
        "http_request_duration_seconds_sum{",
        "http_request_duration_seconds_count{",
    ] {
        assert!(
            first.keys().any(|k| k.starts_with(family)),
            "no {family}…}} series at start-up: {first:#?}"
        );
    }

    wait_healthy(&base).await;
    for n in 0..3_u64 {
        let (status, body) = post_account(&http, &base, &format!("metrics {n}"), n).await;
        assert_eq!(status, 201, "{body}");
    }
    let after_posts = scrape(&http, &base).await;
    assert_eq!(value(&after_posts, "events_published_total"), 3.0);
    assert_eq!(value(&after_posts, POST_201), 3.0);
    let bucket =
        r#"http_request_duration_seconds_bucket{method="POST",route="/accounts",le="+Inf"}"#;
    assert_eq!(value(&after_posts, bucket), 3.0);
    assert_eq!(
        value(
            &after_posts,
            r#"http_request_duration_seconds_count{method="POST",route="/accounts"}"#
        ),
        3.0
    );
    // The subscriber receives its own instance's events back from Redis.
    eventually(Duration::from_secs(5), "events_received_total 3", || {
        let scrape = scrape(&http, &base);
        async move { (value(&scrape.await, "events_received_total") == 3.0).then_some(()) }
    })
    .await;
    let health = r#"http_requests_total{method="GET",route="/health",status="200"}"#;
    assert!(value(&after_posts, health) >= 1.0);

    // Two open streams.
    let url = format!("{base}/events/sse");
    let (mut a, _) = SseClient::open(&url, None).await;
    let (mut b, _) = SseClient::open(&url, None).await;
    assert_eq!(value(&scrape(&http, &base).await, "sse_clients"), 2.0);
    let (status, _) = post_account(&http, &base, "delivered twice", 7).await;
    assert_eq!(status, 201);
    a.messages(1, Duration::from_secs(5)).await;
    b.messages(1, Duration::from_secs(5)).await;
    let with_streams = scrape(&http, &base).await;
    assert_eq!(value(&with_streams, "events_published_total"), 4.0);
    assert_eq!(value(&with_streams, "events_delivered_total"), 2.0);
    assert_eq!(value(&with_streams, POST_201), 4.0);
    assert_eq!(value(&with_streams, "sse_resets_total"), 0.0);
    let sse_200 = r#"http_requests_total{method="GET",route="/events/sse",status="200"}"#;
    assert_eq!(value(&with_streams, sse_200), 2.0);

    // Closed streams leave the gauge.
    drop(a);
    drop(b);
    eventually(Duration::from_secs(10), "sse_clients back to 0", || {
        let scrape = scrape(&http, &base);
        async move { (value(&scrape.await, "sse_clients") == 0.0).then_some(()) }
    })
    .await;
}
