//! sse-fanout: a Server-Sent Events fan-out server. `POST /accounts` on any
//! instance publishes an `account.created` event; every `GET /events/sse`
//! client of every instance sharing the Redis receives it, exactly once and in
//! order, and resumes after a reconnect with `Last-Event-ID`.
//!
//! # Layout
//! - [`auth`]: publisher/subscriber JWTs, `PUBLISH_TOKEN`, CSRF check (SPEC §8.4).
//! - [`config`]: settings from flags, environment and `.env` (SPEC §2).
//! - [`bus`]: accounts, event ids, history and publishing — Redis or in-memory;
//!   the Redis subscriber task lives in `bus::subscriber`.
//! - [`hub`]: local fan-out of pre-encoded frames to SSE streams.
//! - [`routes`]: HTTP shape only; [`error`]: the JSON error contract.
//! - [`server`]: accept loop, timeouts and graceful drain; [`shutdown`]: signals.
//! - [`topic`]: topic selectors (`*`, exact, URI templates; SPEC §8.2).
//! - [`keepalive`]: one keep-alive tick shared by every SSE stream.
//! - [`model`], [`metrics`], [`state`], [`telemetry`].

pub mod auth;
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
pub mod topic;

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
    #[allow(clippy::cast_precision_loss)] // a client limit is far below 2^52
    ::metrics::gauge!(metrics::SSE_CLIENTS_LIMIT).set(config.max_sse_clients as f64);
    let auth = auth::Authorizer::from_config(&config)?;
    if auth.publishing_open() {
        tracing::warn!("no MERCURE_PUBLISHER_JWT_KEY and no PUBLISH_TOKEN: anyone who can reach this server may publish");
    }
    let hub = Hub::new(config.max_sse_clients, config.broadcast_capacity);
    let tracker = TaskTracker::new();
    let bus = match config.redis_target() {
        Some(target) => {
            let bus = RedisBus::new(
                &target,
                &config.events_channel,
                config.event_history_len,
                &config.server_id,
                (
                    config.redis_min_replicas_ack,
                    config.redis_replicas_ack_timeout_ms,
                ),
            )?;
            let place = match &target {
                config::RedisTarget::Standalone { url } => config::redact_url(url),
                config::RedisTarget::Sentinel {
                    sentinels, master, ..
                } => {
                    format!(
                        "master {master:?} of sentinels {}",
                        config::join_nodes(sentinels)
                    )
                }
                config::RedisTarget::Cluster { nodes, .. } => {
                    format!("the cluster of {}", config::join_nodes(nodes))
                }
            };
            tracing::info!(redis = %place, redis.mode = bus.mode().as_str(), "using the redis bus at {place}");
            bus.spawn_subscriber(
                hub.clone(),
                Duration::from_millis(config.sse_batch_window_ms),
                shutdown.child_token(),
                &tracker,
            );
            Bus::Redis(bus)
        }
        None => {
            tracing::info!("no REDIS_URL, REDIS_HOST, REDIS_SENTINELS or REDIS_CLUSTER_NODES: using the in-process bus (single instance, nothing persisted)");
            ::metrics::gauge!(metrics::SUBSCRIBER_READY).set(1.0);
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
        auth,
        keepalive,
    };
    if let Some(metrics_addr) = state.config.metrics_addr {
        serve_metrics(metrics_addr, state.clone(), shutdown.clone(), &tracker).await?;
    }
    let app = app(state, web_dir.as_deref());
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

/// Binds `METRICS_ADDR` and serves [`routes::metrics_only`] there until
/// `shutdown` fires. A scrape is short, so no drain is needed beyond axum's own.
///
/// # Errors
/// When the address cannot be bound (in use, not local): the process then
/// exits instead of running without the scrape port the operator asked for.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on METRICS_ADDR={addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!("serving /metrics alone on http://{bound} (METRICS_ADDR)");
    let app = routes::metrics_only(state);
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "metrics listener failed: {err}");
        }
    });
    Ok(())
}

/// The whole HTTP application for `state`, without a socket (for router-level
/// tests); `web_dir` as in [`routes::router`].
pub fn app(state: AppState, web_dir: Option<&std::path::Path>) -> axum::Router {
    routes::router(state, web_dir)
}
