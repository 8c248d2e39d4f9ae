//! `GET|HEAD /health` (readiness) and `/health/live` (liveness), SPEC §3.3.

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde::Serialize;

use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    // `get` also answers HEAD (axum strips the body).
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
}

/// The `/health` body (SPEC §3.3).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthBody {
    /// `ok` when ready, else `degraded`.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// `SERVER_ID`.
    pub server_id: String,
    /// `redis` or `memory`.
    #[schema(example = "redis")]
    pub bus: &'static str,
    /// `up` or `down`; absent with the memory bus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<&'static str>,
    /// `standalone`, `sentinel` or `cluster` (SPEC §9); absent with the memory bus.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "sentinel")]
    pub redis_mode: Option<&'static str>,
    /// `host:port` of the Redis primary in use (Cluster: the one owning the
    /// channel's slot), without credentials; absent until known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "10.0.0.5:6379")]
    pub redis_primary: Option<String>,
    /// Open SSE streams on this instance.
    pub sse_clients: usize,
    /// Seconds since start-up.
    pub uptime_secs: u64,
    /// Crate version.
    pub version: &'static str,
}

/// The `/health/live` body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LiveBody {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Readiness: `200` when the bus is usable, else `503` with `"status":"degraded"`.
#[utoipa::path(get, path = "/health", tag = "health",
    responses(
        (status = 200, description = "Ready: the bus is usable", body = HealthBody),
        (status = 503, description = "Not ready (Redis down or not subscribed)", body = HealthBody),
    ))]
pub(super) async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let bus = state.bus.health().await;
    let (redis_mode, redis_primary) = match &state.bus {
        crate::bus::Bus::Redis(redis) => (Some(redis.mode().as_str()), redis.primary()),
        crate::bus::Bus::Memory(_) => (None, None),
    };
    let body = HealthBody {
        status: if bus.ready { "ok" } else { "degraded" },
        server_id: state.config.server_id.clone(),
        bus: state.bus.kind(),
        redis: bus.redis_up.map(|up| if up { "up" } else { "down" }),
        redis_mode,
        redis_primary,
        sse_clients: state.hub.client_count(),
        uptime_secs: state.started_at.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
    };
    let status = if bus.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Liveness: `200 {"status":"ok"}` while the process runs.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "The process runs", body = LiveBody)))]
pub(super) async fn live() -> impl IntoResponse {
    Json(LiveBody { status: "ok" })
}
