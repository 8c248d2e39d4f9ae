//! The one subscriber task of an instance (SPEC §1): a dedicated pub/sub
//! connection forwarding the channel into the local [`Hub`], with reconnect,
//! backoff and gap fill from history.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{redis::RedisBus, BusError, History, HISTORY_PAGE};
use crate::{
    hub::{Hub, MAX_BATCH_BYTES},
    metrics::{EVENTS_RECEIVED, REDIS_RECONNECTS},
    model::{EventId, Update},
};

/// First reconnect delay; doubles per failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Cap on the reconnect delay (SPEC §2: "capped exponential backoff (≤ 5 s)").
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `shutdown` fires. Each round:
///
/// 1. connect (the first round also creates the shared command connection
///    and, if the hub has no cursor yet, reads the newest history id *before*
///    subscribing, so nothing published in between is skipped);
/// 2. `SUBSCRIBE`;
/// 3. gap fill: forward every history event after the hub's cursor — the last
///    event this instance forwarded — in order. If that id is no longer in
///    history (Redis restarted empty, `FLUSHALL`, or trimmed), local clients
///    get `event: reset` first, then whatever history holds;
/// 4. mark ready and forward live messages, skipping ids at or before the
///    cursor (the gap fill may already have sent them);
/// 5. when the message stream ends (connection lost), mark not ready, count
///    a reconnect, back off, and start again.
///
/// A malformed message is logged at `warn` and dropped; nothing a publisher
/// sends ends the loop (SPEC §4).
///
/// Batching: after sending a batch to the hub, the subscriber gathers
/// messages for up to `batch_window` before the next send, so that under
/// load every client gets one wake-up and one write per window instead of
/// per event (a loopback write that wakes a reader costs ~5 µs of CPU). The
/// first event after a quiet spell is sent at once, and while batches hold
/// single events the window is a quarter as long: latency grows only under
/// load, by at most the window.
pub(super) async fn run(
    bus: RedisBus,
    hub: Hub,
    batch_window: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let mut connected_before = false;
    loop {
        let round = tokio::select! {
            () = shutdown.cancelled() => break,
            round = subscribe_and_fill(&bus, &hub) => round,
        };
        match round {
            Ok(pubsub) => {
                if connected_before {
                    tracing::info!(
                        channel = bus.channel(),
                        server.id = bus.server_id(),
                        "subscriber reconnected to {}",
                        bus.channel()
                    );
                } else {
                    tracing::info!(
                        channel = bus.channel(),
                        server.id = bus.server_id(),
                        "subscriber subscribed to {}",
                        bus.channel()
                    );
                }
                connected_before = true;
                backoff = MIN_BACKOFF;
                bus.set_subscribed(true);
                let mut messages = pubsub.into_on_message();
                // Start "quiet", so the first event goes out at once.
                let mut last_batch_len = 0;
                let mut last_send = Instant::now()
                    .checked_sub(batch_window)
                    .unwrap_or_else(Instant::now);
                loop {
                    let msg = tokio::select! {
                        () = shutdown.cancelled() => break,
                        msg = messages.next() => msg,
                    };
                    let Some(msg) = msg else { break };
                    let mut batch = Batch::default();
                    batch.push(&hub, msg.get_payload_bytes());
                    // Within the batch window of the previous send, wait out the
                    // window gathering what arrives; then take what is ready.
                    // Light load (the last batch was one event): a quarter
                    // window, so isolated events stay fast; sustained load:
                    // the full window, so writes per client stay few.
                    let window = if last_batch_len > 1 {
                        batch_window
                    } else {
                        batch_window / 4
                    };
                    let deadline = last_send + window;
                    let mut ended = false;
                    while batch.bytes < MAX_BATCH_BYTES {
                        let next = if Instant::now() < deadline {
                            tokio::select! {
                                msg = messages.next() => Some(msg),
                                () = tokio::time::sleep_until(deadline) => None,
                            }
                        } else {
                            messages.next().now_or_never()
                        };
                        match next {
                            Some(Some(msg)) => batch.push(&hub, msg.get_payload_bytes()),
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    if !batch.frames.is_empty() {
                        // Counted when handed on, so the counter never runs ahead
                        // of what local clients can see.
                        metrics::counter!(EVENTS_RECEIVED).increment(batch.frames.len() as u64);
                        last_batch_len = batch.frames.len();
                        hub.send_updates(batch.frames);
                        last_send = Instant::now();
                    }
                    if ended {
                        break;
                    }
                }
                bus.set_subscribed(false);
                if shutdown.is_cancelled() {
                    break;
                }
                tracing::warn!(
                    channel = bus.channel(),
                    server.id = bus.server_id(),
                    "subscriber lost its redis connection; reconnecting"
                );
                metrics::counter!(REDIS_RECONNECTS).increment(1);
            }
            Err(err) => {
                bus.set_subscribed(false);
                tracing::warn!(error = %err, server.id = bus.server_id(), backoff_ms = backoff.as_millis() as u64,
                    "subscriber cannot reach redis: {err}; retrying in {} ms", backoff.as_millis());
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::info!(server.id = bus.server_id(), "subscriber stopped");
}

/// Steps 1–3 of [`run`]; returns the subscribed connection.
async fn subscribe_and_fill(bus: &RedisBus, hub: &Hub) -> Result<redis::aio::PubSub, BusError> {
    bus.connect_commands().await?;
    if hub.cursor().is_none() {
        if let Some(latest) = bus.latest_id().await? {
            hub.seed_cursor(latest);
        }
    }
    let mut pubsub = super::redis::timed(bus.client().get_async_pubsub()).await?;
    super::redis::timed(pubsub.subscribe(bus.channel())).await?;
    let mut after = hub.cursor();
    loop {
        let page = match after {
            Some(id) => bus.history_after(Some(id), HISTORY_PAGE).await?,
            None => bus.history_after(None, HISTORY_PAGE).await?,
        };
        let events = match page {
            History::Events(events) => events,
            History::Missing => {
                tracing::warn!(event.id = ?after.map(|a| a.to_string()),
                    "history no longer holds the last forwarded event; sending reset to local clients");
                hub.send(Update::reset("history_lost"));
                match bus.history_after(None, HISTORY_PAGE).await? {
                    History::Events(events) => {
                        events.into_iter().filter(|f| f.id() > after).collect()
                    }
                    History::Missing => Vec::new(),
                }
            }
        };
        let full = events.len() == HISTORY_PAGE;
        if let Some(last) = events.last() {
            after = last.id();
        }
        metrics::counter!(EVENTS_RECEIVED).increment(events.len() as u64);
        hub.send_updates(events);
        if !full {
            break;
        }
    }
    Ok(pubsub)
}

/// Updates gathered from the channel for one send to the hub: an ordered
/// batch of decoded events (the batching policy above stays swappable).
#[derive(Default)]
struct Batch {
    frames: Vec<Update>,
    /// Encoded size so far, in bytes.
    bytes: usize,
    /// Newest id in `frames`, for deduplication before the hub sees them.
    last: Option<EventId>,
}

impl Batch {
    /// Decodes one channel message (SPEC §4, [`Update::decode`]) and adds
    /// it: our events keep their id and are dropped if at or before the
    /// hub's cursor or this batch's last id (the gap fill may have sent
    /// them); foreign messages pass through live, without id; anything else
    /// is logged and dropped.
    fn push(&mut self, hub: &Hub, payload: &[u8]) {
        let decoded = std::str::from_utf8(payload)
            .map_err(|_| crate::model::Undeliverable::NotAnObject)
            .and_then(Update::decode);
        let update = match decoded {
            Ok(update) => update,
            Err(err) => {
                tracing::warn!(bytes = payload.len(), "dropped a channel message: {err}");
                return;
            }
        };
        if let Some(id) = update.id() {
            let newest = self.last.max(hub.cursor());
            if newest.is_some_and(|newest| id <= newest) {
                return; // Already forwarded by the gap fill.
            }
            self.last = Some(id);
        }
        self.bytes += update.native.len();
        self.frames.push(update);
    }
}
