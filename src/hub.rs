//! Local fan-out: one `tokio::sync::broadcast` of pre-encoded frames that every
//! SSE stream of this instance reads, plus the per-instance client limit.
//! Knows nothing of Redis or HTTP.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use bytes::{Bytes, BytesMut};
use tokio::sync::{broadcast, Notify, OwnedSemaphorePermit, Semaphore};

use crate::model::{EventId, Frame, FrameKind};

/// Default number of batches the broadcast buffer holds before a slow
/// receiver lags (`BROADCAST_CAPACITY`). A batch is usually one event (~1 KiB)
/// and at most [`MAX_BATCH_BYTES`] under load; batches are shared by all
/// clients (`Arc`). A client that falls further behind is caught up from
/// history, so the number trades memory for how often catch-up reads hit the bus.
pub const BROADCAST_CAPACITY: usize = 4096;

/// Largest batch, in bytes of encoded frames: bounds one write and, with the
/// capacity, the broadcast buffer's memory (4096 × 16 KiB = 64 MiB at worst).
pub const MAX_BATCH_BYTES: usize = 16 * 1024;

/// Frames that go to every client together, in order: one wake-up and, when
/// the client is not at a resume seam, one write of `bytes` per client
/// however many events it holds. Built once per instance.
#[derive(Debug)]
pub struct Batch {
    /// The frames, for clients that need to skip some (resume seam).
    pub frames: Vec<Frame>,
    /// Every frame's bytes joined: what a client usually writes.
    pub bytes: Bytes,
    /// Id of the first event in the batch, if any.
    pub first_id: Option<EventId>,
    /// Id of the last event in the batch, if any.
    pub last_id: Option<EventId>,
    /// Number of `event: reset` frames (for `sse_resets_total`).
    pub resets: u64,
}

impl Batch {
    /// Joins `frames` (ids increasing) into one batch; a single frame's bytes
    /// are shared, not copied.
    pub fn new(frames: Vec<Frame>) -> Self {
        let bytes = match frames.as_slice() {
            [one] => one.bytes.clone(),
            many => {
                let mut joined = BytesMut::with_capacity(many.iter().map(|f| f.bytes.len()).sum());
                for frame in many {
                    joined.extend_from_slice(&frame.bytes);
                }
                joined.freeze()
            }
        };
        Self {
            first_id: frames.iter().find_map(Frame::id),
            last_id: frames.iter().rev().find_map(Frame::id),
            resets: frames.iter().filter(|f| f.kind == FrameKind::Reset).count() as u64,
            frames,
            bytes,
        }
    }
}

/// The fan-out point of one instance. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Sender half; receivers are created per client by [`Hub::subscribe`].
    events_tx: broadcast::Sender<Arc<Batch>>,
    /// Id of the last event sent into the broadcast. Held under the same lock
    /// as `send`, so a new receiver and this cursor always agree: the client
    /// has seen nothing at or before the cursor and will receive everything
    /// after it. `std::sync::Mutex`: held for a few instructions, never across `.await`.
    cursor: Mutex<Option<EventId>>,
    /// One permit per open SSE stream; `MAX_SSE_CLIENTS` in all.
    clients: Arc<Semaphore>,
    /// `MAX_SSE_CLIENTS`, to compute the open-stream count from free permits.
    max_clients: usize,
    /// Set while the subscriber holds events back until the previous batch
    /// has drained; only then do streams check and poke [`Inner::drained`].
    awaiting_drain: AtomicBool,
    /// Poked by the stream that takes the last batch while the subscriber waits.
    drained: Notify,
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
    /// A hub for at most `max_clients` concurrent streams whose broadcast
    /// buffer holds `capacity` batches.
    pub fn new(max_clients: usize, capacity: usize) -> Self {
        let (events_tx, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                events_tx,
                cursor: Mutex::new(None),
                clients: Arc::new(Semaphore::new(max_clients)),
                max_clients,
                awaiting_drain: AtomicBool::new(false),
                drained: Notify::new(),
            }),
        }
    }

    /// Whether every stream has taken the last batch sent (or none was sent):
    /// a new event can go out at once without queueing behind a fan-out.
    pub fn is_drained(&self) -> bool {
        self.inner.events_tx.is_empty()
    }

    /// Resolves once a stream reports, via [`Hub::note_caught_up`], that the
    /// broadcast has drained, or at once if it already has. Spurious wake-ups
    /// are possible; callers re-check [`Hub::is_drained`]. No timer: the
    /// subscriber bounds the wait with its batch window.
    pub async fn drained(&self) {
        let notified = self.inner.drained.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        self.inner.awaiting_drain.store(true, Ordering::SeqCst);
        if !self.is_drained() {
            notified.await;
        }
        self.inner.awaiting_drain.store(false, Ordering::SeqCst);
    }

    /// Called by a stream that has taken everything queued for it. Costs one
    /// atomic load unless the subscriber is waiting for the drain.
    pub fn note_caught_up(&self) {
        if self.inner.awaiting_drain.load(Ordering::SeqCst) && self.is_drained() {
            self.inner.drained.notify_one();
        }
    }

    /// Sends one frame to every local stream. Having no receivers is normal.
    pub fn send(&self, frame: Frame) {
        self.send_frames(vec![frame]);
    }

    /// Sends frames (event ids increasing) to every local stream, in batches
    /// of at most [`MAX_BATCH_BYTES`].
    pub fn send_frames(&self, frames: Vec<Frame>) {
        let mut batch = Vec::new();
        let mut size = 0;
        for frame in frames {
            if size + frame.bytes.len() > MAX_BATCH_BYTES && !batch.is_empty() {
                self.send_batch(Batch::new(std::mem::take(&mut batch)));
                size = 0;
            }
            size += frame.bytes.len();
            batch.push(frame);
        }
        if !batch.is_empty() {
            self.send_batch(Batch::new(batch));
        }
    }

    fn send_batch(&self, batch: Batch) {
        let events = batch.frames.len() as u64;
        let batch = Arc::new(batch);
        let mut cursor = lock(&self.inner.cursor);
        if let Some(id) = batch.last_id {
            *cursor = Some(id);
        }
        let receivers = self.inner.events_tx.send(batch).unwrap_or(0);
        drop(cursor);
        metrics::counter!(crate::metrics::EVENTS_DELIVERED).increment(receivers as u64 * events);
    }

    /// A new receiver and the id of the last event sent before it existed
    /// (`None` if none since start-up and none seeded by [`Hub::seed_cursor`]).
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Batch>>, Option<EventId>) {
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

    #[test]
    fn batches_join_frames_and_split_by_size() {
        let id = |ms| EventId { ms, seq: 0 };
        let batch = Batch::new(vec![
            Frame::event(id(1), "{}"),
            Frame::foreign("{}"),
            Frame::event(id(2), "{}"),
        ]);
        assert_eq!((batch.first_id, batch.last_id), (Some(id(1)), Some(id(2))));
        assert_eq!(
            &batch.bytes[..],
            b"id: 1-0\ndata: {}\n\ndata: {}\n\nid: 2-0\ndata: {}\n\n"
        );
        let hub = Hub::new(1, 64);
        let (mut rx, _) = hub.subscribe();
        let big = "x".repeat(MAX_BATCH_BYTES / 2);
        hub.send_frames((1..=3).map(|ms| Frame::event(id(ms), &big)).collect());
        assert_eq!(rx.try_recv().unwrap().frames.len(), 1);
        assert_eq!(rx.try_recv().unwrap().frames.len(), 1);
        assert_eq!(rx.try_recv().unwrap().last_id, Some(id(3)));
        assert_eq!(hub.cursor(), Some(id(3)));
    }

    #[tokio::test]
    async fn subscribe_reports_the_cursor_it_joined_at() {
        let hub = Hub::new(2, 16);
        let (_rx0, c0) = hub.subscribe();
        assert_eq!(c0, None);
        hub.send(Frame::event(EventId { ms: 1, seq: 0 }, "{}"));
        let (mut rx1, c1) = hub.subscribe();
        assert_eq!(c1, Some(EventId { ms: 1, seq: 0 }));
        hub.send(Frame::event(EventId { ms: 2, seq: 0 }, "{}"));
        assert_eq!(
            rx1.recv().await.unwrap().last_id,
            Some(EventId { ms: 2, seq: 0 })
        );
        hub.seed_cursor(EventId { ms: 1, seq: 5 });
        assert_eq!(hub.cursor(), Some(EventId { ms: 2, seq: 0 }));
    }

    #[tokio::test]
    async fn drained_once_every_receiver_has_taken_the_last_batch() {
        let hub = Hub::new(2, 16);
        assert!(hub.is_drained(), "nothing sent yet");
        let (mut a, _) = hub.subscribe();
        let (mut b, _) = hub.subscribe();
        hub.send(Frame::event(EventId { ms: 1, seq: 0 }, "{}"));
        assert!(!hub.is_drained());
        let waiter = tokio::spawn({
            let hub = hub.clone();
            async move { hub.drained().await }
        });
        a.try_recv().unwrap();
        hub.note_caught_up();
        assert!(!hub.is_drained(), "b has not taken it");
        b.try_recv().unwrap();
        hub.note_caught_up();
        assert!(hub.is_drained());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiting subscriber is woken")
            .unwrap();
    }

    #[test]
    fn admits_at_most_max_clients() {
        let hub = Hub::new(2, 16);
        let a = hub.try_admit().unwrap();
        let _b = hub.try_admit().unwrap();
        assert!(hub.try_admit().is_none());
        assert_eq!(hub.client_count(), 2);
        drop(a);
        assert_eq!(hub.client_count(), 1);
        assert!(hub.try_admit().is_some());
    }
}
