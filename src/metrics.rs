//! Prometheus metrics (SPEC §3.5): series names, the process-wide recorder and
//! the HTTP middleware that counts requests.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Gauge: open SSE streams.
pub const SSE_CLIENTS: &str = "sse_clients";
/// Counter: events this instance accepted and published.
pub const EVENTS_PUBLISHED: &str = "events_published_total";
/// Counter: messages this instance received from the bus (live or gap fill).
pub const EVENTS_RECEIVED: &str = "events_received_total";
/// Counter: frames handed to local SSE streams (one per stream per frame).
pub const EVENTS_DELIVERED: &str = "events_delivered_total";
/// Counter: `event: reset` frames sent to clients.
pub const SSE_RESETS: &str = "sse_resets_total";
/// Counter: times the subscriber lost Redis and reconnected.
pub const REDIS_RECONNECTS: &str = "redis_reconnects_total";
/// Counter: switches to a new Redis primary seen by this instance (SPEC §9).
pub const REDIS_FAILOVERS: &str = "redis_failovers_total";
/// Counter: HTTP responses by `method`, `route`, `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Histogram: seconds from request to response head, by `method`, `route`.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";

/// Histogram: seconds from an event's append to history to its hand-over to
/// the local hub by this instance's subscriber (live messages only, Redis
/// bus only). The start is the event id's millisecond part (Redis's clock,
/// Redis docs "Streams: entry IDs"), the end this host's clock, so clock
/// skew between the two shows up here too.
pub const EVENT_DELIVERY_LAG: &str = "event_delivery_lag_seconds";

/// Gauge: `MAX_SSE_CLIENTS` of this instance, so alerts can compare
/// [`SSE_CLIENTS`] with it.
pub const SSE_CLIENTS_LIMIT: &str = "sse_clients_limit";
/// Gauge: 1 while this instance's subscriber is subscribed and caught up
/// (always 1 on the memory bus), else 0 — the subscriber half of `/health`
/// readiness (SPEC §3.3), visible to Prometheus without probing.
pub const SUBSCRIBER_READY: &str = "subscriber_ready";

/// Installs the process-wide recorder once and returns its handle. The
/// `metrics` facade has one global recorder, so several in-process instances
/// (tests) share series; each real process has its own.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(HTTP_REQUEST_DURATION.to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full(EVENT_DELIVERY_LAG.to_owned()),
                        &[
                            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0,
                        ],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; ours then stays unused
            // but still renders the series described below.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Describes every series and registers it at zero, so a scrape right after
/// start-up lists them all (SPEC §3.5).
fn describe() {
    metrics::describe_gauge!(SSE_CLIENTS, "Open SSE streams on this instance");
    metrics::describe_counter!(
        EVENTS_PUBLISHED,
        "Events accepted and published by this instance"
    );
    metrics::describe_counter!(EVENTS_RECEIVED, "Messages received from the bus");
    metrics::describe_counter!(EVENTS_DELIVERED, "Frames handed to local SSE streams");
    metrics::describe_counter!(SSE_RESETS, "event: reset frames sent to clients");
    metrics::describe_counter!(REDIS_RECONNECTS, "Subscriber reconnections to Redis");
    metrics::describe_counter!(REDIS_FAILOVERS, "Switches to a new Redis primary");
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP responses by method, route and status");
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to response head"
    );
    metrics::describe_histogram!(
        EVENT_DELIVERY_LAG,
        metrics::Unit::Seconds,
        "Event append to history -> hand-over to local SSE streams"
    );
    let _ = metrics::histogram!(EVENT_DELIVERY_LAG);
    metrics::describe_gauge!(SSE_CLIENTS_LIMIT, "MAX_SSE_CLIENTS of this instance");
    metrics::describe_gauge!(
        SUBSCRIBER_READY,
        "1 while the subscriber is subscribed and caught up (memory bus: always 1)"
    );
    metrics::gauge!(SUBSCRIBER_READY).set(0.0);
    metrics::gauge!(SSE_CLIENTS).set(0.0);
    for name in [
        EVENTS_PUBLISHED,
        EVENTS_RECEIVED,
        EVENTS_DELIVERED,
        SSE_RESETS,
        REDIS_RECONNECTS,
        REDIS_FAILOVERS,
    ] {
        metrics::counter!(name).absolute(0);
    }
    // The HTTP series are labelled, so there is no unlabelled zero to show.
    // Register the one label set every scrape produces (`GET /metrics` 200),
    // so the very first scrape lists them too.
    metrics::counter!(HTTP_REQUESTS, "method" => "GET", "route" => "/metrics", "status" => "200")
        .absolute(0);
    let _ = metrics::histogram!(HTTP_REQUEST_DURATION, "method" => "GET", "route" => "/metrics");
}

/// Records [`EVENT_DELIVERY_LAG`] for the event positions `ids`, now. One
/// clock read and one histogram lookup per batch; a negative lag (clock
/// skew) counts as 0.
pub fn record_delivery_lag(ids: impl IntoIterator<Item = crate::model::EventId>) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let histogram = metrics::histogram!(EVENT_DELIVERY_LAG);
    for id in ids {
        #[allow(clippy::cast_precision_loss)] // ms lags are far below 2^52
        histogram.record(now_ms.saturating_sub(id.ms) as f64 / 1000.0);
    }
}

/// The `method` label: a standard method's name, else `other`. Clients may
/// send any token as a method (RFC 9110 §9.1); one series per invented name
/// would let them grow the registry without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

/// Middleware: counts every response and times it to the response head.
/// `route` is the matched route template (`/accounts/{id}`), or `other`, so
/// label cardinality stays bounded whatever URLs clients send.
pub async fn track(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_REQUEST_DURATION, "method" => method.clone(), "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}
