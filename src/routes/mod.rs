//! The router: each module adds its routes; this file adds the layers
//! (metrics, tracing, body limit, CORS, timeouts) and the static page.

use std::time::Duration;

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::StatusCode,
    middleware, Router,
};
use tower_http::{
    cors::{AllowOrigin, Any, CorsLayer},
    services::ServeDir,
    timeout::TimeoutLayer,
    trace::{DefaultOnResponse, TraceLayer},
    LatencyUnit,
};
use tracing::Level;

use crate::state::AppState;

mod accounts;
pub mod events;
mod health;
pub mod mercure;
mod metrics;
pub mod openapi;

/// Builds the whole application for `state`; `web_dir` is served at `/`.
pub fn router(state: AppState, web_dir: &std::path::Path) -> Router {
    let config = state.config.clone();
    // Non-streaming routes get a request timeout; the SSE route must not.
    let bounded = Router::new()
        .merge(accounts::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(config.request_timeout_secs),
        ));
    let mut app = Router::new()
        .merge(bounded)
        .merge(events::router())
        .merge(mercure::router())
        .fallback_service(ServeDir::new(web_dir).append_index_html_on_directories(true))
        .layer(middleware::from_fn(crate::error::json_layer_errors))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(trace_layer(&config.server_id));
    if let Some(cors) = cors_layer(config.cors_allowed_origins.as_deref()) {
        app = app.layer(cors);
    }
    app.with_state(state)
}

/// One `request` span per request at `info` (method, route template, uri,
/// `server.id`) and one `info` line when the response head is ready, with
/// status and latency in µs. For an SSE stream that is when it opens.
fn trace_layer(
    server_id: &str,
) -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&Request) -> tracing::Span + Clone,
    tower_http::trace::DefaultOnRequest,
    DefaultOnResponse,
> {
    let server_id: std::sync::Arc<str> = server_id.into();
    TraceLayer::new_for_http()
        .make_span_with(move |request: &Request| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("other", MatchedPath::as_str);
            tracing::info_span!(
                "request",
                method = %request.method(),
                route,
                uri = %crate::auth::redact_uri(request.uri()),
                server.id = %server_id,
            )
        })
        .on_response(
            DefaultOnResponse::new()
                .level(Level::INFO)
                .latency_unit(LatencyUnit::Micros),
        )
}

/// `CORS_ALLOWED_ORIGINS`: unset → no CORS headers; `*` → any origin,
/// without credentials; else the listed origins (validated by config) with
/// `Access-Control-Allow-Credentials: true`, so the `mercureAuthorization`
/// cookie works cross-origin (SPEC §8.4; never with `*`, Fetch §3.2.5).
/// Allowed request headers: `Authorization`, `Cache-Control`,
/// `Last-Event-ID` (EventSource polyfills resume with it), `Content-Type`.
/// Exposed: `Location` and the Mercure `Last-Event-ID` response header.
fn cors_layer(origins: Option<&str>) -> Option<CorsLayer> {
    let origins = origins?.trim();
    let last_event_id = axum::http::HeaderName::from_static("last-event-id");
    let layer = CorsLayer::new()
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::HEAD,
        ])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::AUTHORIZATION,
            axum::http::header::CACHE_CONTROL,
            last_event_id.clone(),
        ])
        .expose_headers([axum::http::header::LOCATION, last_event_id]);
    Some(if origins == "*" {
        layer.allow_origin(AllowOrigin::from(Any))
    } else {
        layer
            .allow_origin(AllowOrigin::list(
                origins.split(',').filter_map(|o| o.trim().parse().ok()),
            ))
            .allow_credentials(true)
    })
}
