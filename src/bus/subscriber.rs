//! The one subscriber task of an instance (SPEC §1): a dedicated pub/sub
//! connection forwarding the channel into the local [`Hub`], with reconnect,
//! backoff and gap fill from history.

use std::{
    collections::{HashSet, VecDeque},
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{redis::RedisBus, topology::Messages, BusError, History, HISTORY_PAGE};
use crate::{
    hub::{Hub, MAX_BATCH_BYTES},
    metrics::{EVENTS_RECEIVED, REDIS_RECONNECTS},
    model::{EventId, Update},
};

/// First reconnect delay; doubles per failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Cap on the reconnect delay (SPEC §2: "capped exponential backoff (≤ 5 s)").
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Event ids remembered by [`Forwarded`] (16 bytes each, twice).
const FORWARDED_CAP: usize = 10_000;

/// Runs until `shutdown` fires. Each round:
///
/// 1. connect (the first round also creates the shared command connection —
///    for Sentinel, again after every switch of primary — and, if the hub has
///    no cursor yet, reads the newest history id *before* subscribing, so
///    nothing published in between is skipped);
/// 2. `SUBSCRIBE` (`SSUBSCRIBE` on a Cluster, see [`super::topology`]);
/// 3. gap fill: forward every history event after the hub's cursor — the last
///    event this instance forwarded — in order. If that id is no longer in
///    history (Redis restarted empty, `FLUSHALL`, or trimmed), local clients
///    get `event: reset` first, then whatever history holds;
/// 4. mark ready and forward live messages, skipping ids at or before the
///    cursor (the gap fill may already have sent them);
///    after a `reset`, the gap fill forwards every event history holds that
///    this instance has not forwarded, whatever its id: after a failover the
///    new primary may hold events other instances wrote to it while this one
///    was still on the old primary, with ids below this instance's cursor;
/// 5. when the message stream ends (connection lost, or the bus announced a
///    new primary), mark not ready, count a reconnect, back off (a new
///    primary cuts the backoff short), and start again.
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
    let mut switches = bus.switches();
    let mut forwarded = Forwarded::default();
    loop {
        switches.borrow_and_update();
        let round = tokio::select! {
            () = shutdown.cancelled() => break,
            round = subscribe_and_fill(&bus, &hub, &mut forwarded) => round,
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
                // A new primary ends the stream as a lost connection would.
                let mut switched = switches.clone();
                let mut messages = pubsub.take_until(Box::pin(async move {
                    let _ = switched.changed().await;
                }));
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
                        crate::metrics::record_delivery_lag(
                            batch.frames.iter().filter_map(Update::id),
                        );
                        forwarded.record(&batch.frames);
                        hub.send_updates(batch.frames);
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
                if bus.mode() == super::redis::RedisMode::Sentinel {
                    // Ask the sentinels again next round: the primary may have moved.
                    bus.drop_connection();
                    switches.borrow_and_update();
                }
                tracing::warn!(error = %err, server.id = bus.server_id(), backoff_ms = backoff.as_millis() as u64,
                    "subscriber cannot reach redis: {err}; retrying in {} ms", backoff.as_millis());
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                    _ = switches.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::info!(server.id = bus.server_id(), "subscriber stopped");
}

/// How long a batch is held per stream of the fan-out still running
/// ([`Hub::busy_streams`]), up to the configured window. One delivery costs
/// ~10 µs of CPU on a small VM (write, wake-up, read; BENCHMARKS.md), so a
/// hold of 4× the running fan-out's cost keeps the writes below ~25 % of a
/// core whatever the event rate, and a small busy group (100 `*` streams of
/// a topic hub: 4 ms) does not wait the 20 ms a group of 500 needs.
const HOLD_PER_BUSY_STREAM: Duration = Duration::from_micros(40);

/// The hold for a batch that finds `busy` streams still taking the previous
/// one: [`HOLD_PER_BUSY_STREAM`] each, at most `window`; zero when none is.
fn hold_for(busy: usize, window: Duration) -> Duration {
    let busy = u32::try_from(busy).unwrap_or(u32::MAX);
    HOLD_PER_BUSY_STREAM.saturating_mul(busy).min(window)
}

/// Adds to `batch` whatever messages are already there. If every local
/// stream has taken the previous batch (the hub is drained), that is all:
/// an event that finds the clients idle goes out at once, with no timer.
/// If the previous fan-out is still running, events come faster than single
/// fan-outs finish, so this keeps gathering (or until the batch is full) for
/// a hold that grows with that fan-out's size, up to `window` ([`hold_for`]):
/// under load each stream then gets one write per hold instead of one per
/// event, which is what keeps CPU per delivery low at high rates.
/// Returns `true` when the message stream ended.
async fn gather<S>(messages: &mut S, hub: &Hub, batch: &mut Batch, window: Duration) -> bool
where
    S: futures_util::Stream<Item = redis::Msg> + Unpin,
{
    let hold = hold_for(hub.busy_streams(), window);
    let holding = !hold.is_zero();
    let mut deadline = std::pin::pin!(tokio::time::sleep(hold));
    while batch.bytes < MAX_BATCH_BYTES {
        let next = match messages.next().now_or_never() {
            Some(ready) => ready,
            None if !holding => return false,
            None => tokio::select! {
                msg = messages.next() => msg,
                () = deadline.as_mut() => return false,
            },
        };
        match next {
            Some(msg) => batch.push(hub, msg.get_payload_bytes()),
            None => return true,
        }
    }
    false
}

/// Steps 1–3 of [`run`]; returns the subscription's message stream.
async fn subscribe_and_fill(
    bus: &RedisBus,
    hub: &Hub,
    forwarded: &mut Forwarded,
) -> Result<Messages, BusError> {
    let connected = bus.connect().await?;
    if hub.cursor().is_none() {
        if let Some(latest) = bus.latest_id().await? {
            hub.seed_cursor(latest);
        }
    }
    if forwarded.ids.is_empty() {
        forwarded.floor = forwarded.floor.max(hub.cursor());
    }
    let pubsub = super::topology::subscribe(bus, &connected).await?;
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
                let unsent = unforwarded_history(bus, forwarded).await?;
                forwarded.record(&unsent);
                metrics::counter!(EVENTS_RECEIVED).increment(unsent.len() as u64);
                hub.send_updates(unsent);
                break;
            }
        };
        let full = events.len() == HISTORY_PAGE;
        if let Some(last) = events.last() {
            after = last.id();
        }
        metrics::counter!(EVENTS_RECEIVED).increment(events.len() as u64);
        forwarded.record(&events);
        hub.send_updates(events);
        if !full {
            break;
        }
    }
    Ok(pubsub)
}

/// Every event in history that this instance has not forwarded, oldest first.
async fn unforwarded_history(
    bus: &RedisBus,
    forwarded: &Forwarded,
) -> Result<Vec<Update>, BusError> {
    let mut unsent = Vec::new();
    let mut after = None;
    loop {
        let page = match bus.history_after(after, HISTORY_PAGE).await? {
            History::Events(page) => page,
            // Trimmed while we read: what we have is all we can get.
            History::Missing => break,
        };
        let full = page.len() == HISTORY_PAGE;
        after = page.last().and_then(Update::id).or(after);
        unsent.extend(
            page.into_iter()
                .filter(|f| f.id().is_some_and(|id| forwarded.is_new(id))),
        );
        if !full {
            break;
        }
    }
    Ok(unsent)
}

/// The ids this instance forwarded lately, so that a gap fill after a reset
/// sends exactly what local clients have not seen.
#[derive(Default)]
struct Forwarded {
    /// In forwarding order, at most [`FORWARDED_CAP`].
    order: VecDeque<EventId>,
    /// The same ids, for lookup.
    ids: HashSet<EventId>,
    /// Ids at or before this count as forwarded: the cursor at start-up
    /// (clients got older events from history) and every forgotten id.
    floor: Option<EventId>,
}

impl Forwarded {
    fn record(&mut self, frames: &[Update]) {
        for id in frames.iter().filter_map(Update::id) {
            if self.ids.insert(id) {
                self.order.push_back(id);
            }
        }
        while self.order.len() > FORWARDED_CAP {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
                self.floor = self.floor.max(Some(old));
            }
        }
    }

    fn is_new(&self, id: EventId) -> bool {
        self.floor.is_none_or(|floor| id > floor) && !self.ids.contains(&id)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_grows_with_the_busy_fan_out_up_to_the_window() {
        let window = Duration::from_millis(20);
        assert_eq!(hold_for(0, window), Duration::ZERO, "drained: no hold");
        assert_eq!(hold_for(1, window), Duration::from_micros(40));
        assert_eq!(hold_for(100, window), Duration::from_millis(4));
        assert_eq!(hold_for(500, window), window);
        assert_eq!(hold_for(usize::MAX, window), window);
        assert_eq!(
            hold_for(100, Duration::ZERO),
            Duration::ZERO,
            "0 = never batch"
        );
        assert_eq!(
            hold_for(100, Duration::from_millis(1)),
            Duration::from_millis(1)
        );
    }
}
