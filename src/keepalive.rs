//! One keep-alive tick for every SSE stream of an instance (SPEC §3.4
//! "Keep-alive"), instead of a timer per stream: a task ticks every half
//! `SSE_KEEPALIVE_SECS`, and a stream that has been silent for at least
//! `SSE_KEEPALIVE_SECS` at a tick sends `: keep-alive`. The gap between
//! writes is therefore between 1× and 1.5× the setting, and an idle stream
//! holds a 16-byte watch receiver rather than a timer-wheel entry.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The shared tick. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KeepAliveTick {
    tx: Arc<watch::Sender<()>>,
    /// `SSE_KEEPALIVE_SECS`: the silence after which a stream sends one.
    every: Duration,
}

impl KeepAliveTick {
    /// Starts the ticking task on `tracker`; it stops on `shutdown`.
    pub fn spawn(every: Duration, shutdown: CancellationToken, tracker: &TaskTracker) -> Self {
        let (tx, _) = watch::channel(());
        let tick = Self {
            tx: Arc::new(tx),
            every,
        };
        let tx = tick.tx.clone();
        let period = (every / 2).max(Duration::from_millis(1));
        tracker.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = interval.tick() => tx.send_replace(()),
                }
            }
        });
        tick
    }

    /// A receiver that sees ticks from now on.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.tx.subscribe()
    }

    /// The keep-alive interval, `SSE_KEEPALIVE_SECS`.
    pub fn every(&self) -> Duration {
        self.every
    }
}

/// Resolves at the next tick; never, if the ticking task is gone (shutdown
/// ends streams by its own token).
pub async fn next_tick(rx: &mut watch::Receiver<()>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
