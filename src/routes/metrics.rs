//! `GET /metrics` in Prometheus text format (SPEC §3.5).

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};

use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
