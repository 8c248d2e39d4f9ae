//! Shared handles every route receives.

use std::{sync::Arc, time::Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::{auth::Authorizer, bus::Bus, config::Config, hub::Hub, keepalive::KeepAliveTick};

/// Cheap-to-clone handles; one per instance.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Settings, read-only after start-up.
    pub config: Arc<Config>,
    /// Where accounts and events go (memory or Redis).
    pub bus: Bus,
    /// Local fan-out to SSE streams.
    pub hub: Hub,
    /// Fires on shutdown; SSE streams end on it so the server can drain.
    pub shutdown: CancellationToken,
    /// Start time, for `uptimeSecs`.
    pub started_at: Instant,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Who may publish and subscribe (SPEC §8.4).
    pub auth: Authorizer,
    /// The instance's one keep-alive tick for all SSE streams.
    pub keepalive: KeepAliveTick,
}
