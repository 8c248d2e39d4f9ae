//! sse-fanout: a Server-Sent Events fan-out server. `POST /accounts` on any
//! instance publishes an `account.created` event; every `GET /events/sse`
//! client of every instance sharing the Redis receives it, exactly once and in
//! order, and resumes after a reconnect with `Last-Event-ID`.
//!
//! # Layout
//! - [`config`]: settings from flags, environment and `.env` (SPEC §2).
//! - [`bus`]: accounts, event ids, history and publishing — Redis or in-memory;
//!   the Redis subscriber task lives in `bus::subscriber`.
//! - [`hub`]: local fan-out of pre-encoded frames to SSE streams.
//! - [`routes`]: HTTP shape only; [`error`]: the JSON error contract.
//! - [`server`]: accept loop, timeouts and graceful drain; [`shutdown`]: signals.
//! - [`keepalive`]: one keep-alive tick shared by every SSE stream.
//! - [`model`], [`metrics`], [`state`], [`telemetry`].

pub mod bus;
pub mod config;
pub mod error;
pub mod hub;
pub mod keepalive;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    bus::{Bus, MemoryBus, RedisBus},
    config::Config,
    hub::Hub,
    state::AppState,
};

/// Runs one instance on `listener` until `shutdown` is cancelled, then drains
/// (see [`shutdown`]) within `SHUTDOWN_GRACE_SECS` and returns.
///
/// # Errors
/// When the Redis URL cannot be used (config normally catches this first).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = metrics::install();
    let hub = Hub::new(config.max_sse_clients, config.broadcast_capacity);
    let tracker = TaskTracker::new();
    let bus = match config.redis_url() {
        Some(url) => {
            let bus = RedisBus::new(
                &url,
                &config.events_channel,
                config.event_history_len,
                &config.server_id,
            )?;
            tracing::info!(redis = %config::redact_url(&url), "using the redis bus at {}", config::redact_url(&url));
            bus.spawn_subscriber(
                hub.clone(),
                Duration::from_millis(config.sse_batch_window_ms),
                shutdown.child_token(),
                &tracker,
            );
            Bus::Redis(bus)
        }
        None => {
            tracing::info!("no REDIS_URL or REDIS_HOST: using the in-process bus (single instance, nothing persisted)");
            Bus::Memory(MemoryBus::new(
                hub.clone(),
                &config.server_id,
                usize::try_from(config.event_history_len).unwrap_or(usize::MAX),
            ))
        }
    };
    let limits = server::ServeLimits {
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        send_timeout: Duration::from_secs(config.sse_send_timeout_secs),
    };
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let web_dir = config.web_dir.clone();
    let server_id = config.server_id.clone();
    let keepalive =
        keepalive::KeepAliveTick::spawn(config.keepalive(), shutdown.child_token(), &tracker);
    let state = AppState {
        config: Arc::new(config),
        bus,
        hub,
        shutdown: shutdown.clone(),
        started_at: std::time::Instant::now(),
        metrics,
        keepalive,
    };
    let app = app(state, &web_dir);
    let addr = listener.local_addr()?;
    tracing::info!(server.id = %server_id, "listening on http://{addr}");

    let served = server::serve(listener, app, limits, shutdown.clone());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = served => result?,
        () = deadline => tracing::warn!("drain did not finish within {} s; exiting", grace.as_secs()),
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop in time");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The whole HTTP application for `state`, without a socket (for router-level tests).
pub fn app(state: AppState, web_dir: &std::path::Path) -> axum::Router {
    routes::router(state, web_dir)
}
