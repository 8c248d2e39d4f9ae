//! `GET|HEAD /health` (readiness) and `/health/live` (liveness), SPEC §3.3.

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;

use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    // `get` also answers HEAD (axum strips the body).
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
}

/// `200` when the bus is usable, else `503` with `"status":"degraded"`.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let bus = state.bus.health().await;
    let mut body = json!({
        "status": if bus.ready { "ok" } else { "degraded" },
        "serverId": state.config.server_id,
        "bus": state.bus.kind(),
        "sseClients": state.hub.client_count(),
        "uptimeSecs": state.started_at.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(up) = bus.redis_up {
        body["redis"] = json!(if up { "up" } else { "down" });
    }
    let status = if bus.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `200 {"status":"ok"}` while the process runs.
async fn live() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}
