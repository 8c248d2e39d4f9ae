//! Signals and the drain order (SPEC §7 "Shutdown").
//!
//! 1. SIGTERM or SIGINT cancels the instance's token.
//! 2. The accept loop stops accepting new connections.
//! 3. Every SSE body ends at once (it selects on the token), so EventSource
//!    clients reconnect — through nginx, to another instance — and resume.
//! 4. In-flight requests finish; idle keep-alive connections close.
//! 5. The subscriber task and other tracked tasks stop.
//! 6. All of it is bounded by `SHUTDOWN_GRACE_SECS`; then the process exits 0.

use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM and cancels `token`.
pub async fn signal(token: CancellationToken) {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received; draining"),
        () = terminate => tracing::info!("SIGTERM received; draining"),
        () = token.cancelled() => return,
    }
    token.cancel();
}
