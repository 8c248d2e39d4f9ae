//! The one subscriber task of an instance (SPEC §1): a dedicated pub/sub
//! connection forwarding the channel into the local [`Hub`], with reconnect,
//! backoff and gap fill from history.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{redis::RedisBus, BusError, History, HISTORY_PAGE};
use crate::{
    hub::{Hub, MAX_BATCH_BYTES},
    metrics::{EVENTS_RECEIVED, REDIS_RECONNECTS},
    model::{EventId, Frame},
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
/// Batching (see [`gather`]): an event goes to the hub at once when every
/// local stream has taken the previous batch; while streams are still busy
/// with it, events accumulate and go together once they have drained (or
/// after `batch_window` at most), so under load every client gets one
/// wake-up and one write per batch instead of per event (a loopback write
/// that wakes a reader costs ~5 µs of CPU), and at low rates nothing waits.
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
                loop {
                    let msg = tokio::select! {
                        () = shutdown.cancelled() => break,
                        msg = messages.next() => msg,
                    };
                    let Some(msg) = msg else { break };
                    let mut batch = Batch::default();
                    batch.push(&hub, msg.get_payload_bytes());
                    let ended = gather(&mut messages, &hub, &mut batch, batch_window).await;
                    if !batch.frames.is_empty() {
                        // Counted when handed on, so the counter never runs ahead
                        // of what local clients can see.
                        metrics::counter!(EVENTS_RECEIVED).increment(batch.frames.len() as u64);
                        hub.send_frames(batch.frames);
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

/// Adds to `batch` whatever messages are already there, then, while the
/// hub's previous batch has not drained, keeps gathering until it has, the
/// batch is full, or `window` has passed since the wait began (a stalled
/// stream never drains; the window bounds the delay it causes). Returns
/// `true` when the message stream ended. No timer exists unless the hub is
/// busy, so an idle instance pays nothing per event.
async fn gather<S>(messages: &mut S, hub: &Hub, batch: &mut Batch, window: Duration) -> bool
where
    S: futures_util::Stream<Item = redis::Msg> + Unpin,
{
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    while batch.bytes < MAX_BATCH_BYTES {
        let next = match messages.next().now_or_never() {
            Some(ready) => Some(ready),
            None if hub.is_drained() || window.is_zero() => return false,
            None => {
                let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(window)));
                tokio::select! {
                    msg = messages.next() => Some(msg),
                    () = hub.drained() => None,
                    () = sleep.as_mut() => return false,
                }
            }
        };
        match next {
            Some(Some(msg)) => batch.push(hub, msg.get_payload_bytes()),
            Some(None) => return true,
            None => {} // Drained (or a spurious wake): re-check.
        }
    }
    false
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
                hub.send(Frame::reset("history_lost"));
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
        hub.send_frames(events);
        if !full {
            break;
        }
    }
    Ok(pubsub)
}

/// Frames gathered from the channel for one send to the hub.
#[derive(Default)]
struct Batch {
    frames: Vec<Frame>,
    /// Encoded size so far, in bytes.
    bytes: usize,
    /// Newest id in `frames`, for deduplication before the hub sees them.
    last: Option<EventId>,
}

impl Batch {
    /// Classifies one channel message (SPEC §4) and adds it: our events
    /// (compact JSON starting with an `id` that is a stream id) keep their id
    /// and are dropped if at or before the hub's cursor or this batch's last
    /// id (the gap fill may have sent them); any other JSON object with a
    /// string `type` is passed through live, without id; anything else is
    /// logged and dropped.
    fn push(&mut self, hub: &Hub, payload: &[u8]) {
        let parsed = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| Some((text, serde_json::from_str::<serde_json::Value>(text).ok()?)));
        let Some((text, serde_json::Value::Object(map))) = parsed else {
            tracing::warn!(
                bytes = payload.len(),
                "dropped a channel message that is not a JSON object"
            );
            return;
        };
        if !map.get("type").is_some_and(serde_json::Value::is_string) {
            tracing::warn!(
                bytes = payload.len(),
                "dropped a channel message without a string type"
            );
            return;
        }
        let id = map
            .get("id")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| s.parse::<EventId>().ok());
        let frame = match id {
            Some(id) if text.starts_with("{\"id\":\"") && !text.contains(['\n', '\r']) => {
                let newest = self.last.max(hub.cursor());
                if newest.is_some_and(|newest| id <= newest) {
                    return; // Already forwarded by the gap fill.
                }
                self.last = Some(id);
                Frame::event(id, text)
            }
            _ => Frame::foreign(text),
        };
        self.bytes += frame.bytes.len();
        self.frames.push(frame);
    }
}
