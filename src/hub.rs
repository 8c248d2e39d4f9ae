//! Local fan-out: one `tokio::sync::broadcast` of pre-encoded frames that every
//! SSE stream of this instance reads, plus the per-instance client limit.
//! Knows nothing of Redis or HTTP.

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use crate::model::{EventId, Frame};

/// Frames the broadcast buffer holds before a slow receiver lags. At ~1 KiB a
/// frame this is a few MiB shared by all clients (frames are `Arc`s); a client
/// that falls further behind is caught up from history, so the number trades
/// memory for how often catch-up reads hit the bus.
pub const BROADCAST_CAPACITY: usize = 4096;

/// The fan-out point of one instance. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Sender half; receivers are created per client by [`Hub::subscribe`].
    events_tx: broadcast::Sender<Arc<Frame>>,
    /// Id of the last event sent into the broadcast. Held under the same lock
    /// as `send`, so a new receiver and this cursor always agree: the client
    /// has seen nothing at or before the cursor and will receive everything
    /// after it. `std::sync::Mutex`: held for a few instructions, never across `.await`.
    cursor: Mutex<Option<EventId>>,
    /// One permit per open SSE stream; `MAX_SSE_CLIENTS` in all.
    clients: Arc<Semaphore>,
    /// `MAX_SSE_CLIENTS`, to compute the open-stream count from free permits.
    max_clients: usize,
}

/// A client's slot; dropping it frees the slot and updates the gauge.
#[derive(Debug)]
pub struct ClientPermit {
    _permit: OwnedSemaphorePermit,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::SSE_CLIENTS).decrement(1.0);
    }
}

impl Hub {
    /// A hub for at most `max_clients` concurrent streams.
    pub fn new(max_clients: usize) -> Self {
        let (events_tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                events_tx,
                cursor: Mutex::new(None),
                clients: Arc::new(Semaphore::new(max_clients)),
                max_clients,
            }),
        }
    }

    /// Sends a frame to every local stream. Having no receivers is normal.
    pub fn send(&self, frame: Frame) {
        let frame = Arc::new(frame);
        let mut cursor = lock(&self.inner.cursor);
        if let Some(id) = frame.id() {
            *cursor = Some(id);
        }
        let receivers = self.inner.events_tx.send(frame).unwrap_or(0);
        drop(cursor);
        metrics::counter!(crate::metrics::EVENTS_DELIVERED).increment(receivers as u64);
    }

    /// A new receiver and the id of the last event sent before it existed
    /// (`None` if none since start-up and none seeded by [`Hub::seed_cursor`]).
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Frame>>, Option<EventId>) {
        let cursor = lock(&self.inner.cursor);
        (self.inner.events_tx.subscribe(), *cursor)
    }

    /// The id of the last event sent (or seeded).
    pub fn cursor(&self) -> Option<EventId> {
        *lock(&self.inner.cursor)
    }

    /// Sets the cursor to the newest event in history when nothing newer was
    /// sent yet, so clients that connect before the first live event still
    /// know where they joined.
    pub fn seed_cursor(&self, id: EventId) {
        let mut cursor = lock(&self.inner.cursor);
        if cursor.is_none_or(|c| c < id) {
            *cursor = Some(id);
        }
    }

    /// Takes a client slot, or `None` when `MAX_SSE_CLIENTS` are open.
    pub fn try_admit(&self) -> Option<ClientPermit> {
        let permit = self.inner.clients.clone().try_acquire_owned().ok()?;
        metrics::gauge!(crate::metrics::SSE_CLIENTS).increment(1.0);
        Some(ClientPermit { _permit: permit })
    }

    /// Open SSE streams on this instance.
    pub fn client_count(&self) -> usize {
        self.inner.max_clients - self.inner.clients.available_permits()
    }
}

/// Locks a mutex, recovering from poisoning: the guarded value is a plain
/// cursor that a panicking holder cannot leave half-written.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribe_reports_the_cursor_it_joined_at() {
        let hub = Hub::new(2);
        let (_rx0, c0) = hub.subscribe();
        assert_eq!(c0, None);
        hub.send(Frame::event(EventId { ms: 1, seq: 0 }, "{}"));
        let (mut rx1, c1) = hub.subscribe();
        assert_eq!(c1, Some(EventId { ms: 1, seq: 0 }));
        hub.send(Frame::event(EventId { ms: 2, seq: 0 }, "{}"));
        assert_eq!(
            rx1.recv().await.unwrap().id(),
            Some(EventId { ms: 2, seq: 0 })
        );
        hub.seed_cursor(EventId { ms: 1, seq: 5 });
        assert_eq!(hub.cursor(), Some(EventId { ms: 2, seq: 0 }));
    }

    #[test]
    fn admits_at_most_max_clients() {
        let hub = Hub::new(2);
        let a = hub.try_admit().unwrap();
        let _b = hub.try_admit().unwrap();
        assert!(hub.try_admit().is_none());
        assert_eq!(hub.client_count(), 2);
        drop(a);
        assert_eq!(hub.client_count(), 1);
        assert!(hub.try_admit().is_some());
    }
}
