//! Local fan-out: `tokio::sync::broadcast` groups of pre-encoded frames, one
//! per distinct stream filter, found by topic (SPEC §8.6), plus the
//! per-instance client limit.
//! Knows nothing of Redis or HTTP.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::{Bytes, BytesMut};
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use crate::{
    model::{EventId, Format, Frame, FrameKind, Update},
    topic::Selector,
};

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

/// What a stream receives: its format, topic selectors and the token's
/// `mercure.subscribe` selectors (SPEC §8.2). Streams with equal filters
/// share one broadcast group.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Encoding the stream is sent.
    pub format: Format,
    /// The `topic` selectors of the request (`*` for a plain `/events/sse`).
    pub selectors: Vec<Selector>,
    /// `mercure.subscribe` of the subscriber's token; `None` for an anonymous
    /// subscriber, who never receives private updates.
    pub allowed: Option<Vec<Selector>>,
}

/// Identity of a group: format, sorted selectors, sorted allowed selectors.
type GroupKey = (Format, Vec<Box<str>>, Option<Vec<Box<str>>>);

impl Filter {
    /// Whether a stream with this filter receives `update`: any topic
    /// matches any selector (`*` matches everything, even a topic-less
    /// foreign message) and, if private, some topic matches an allowed
    /// selector. Resets go to native streams only.
    pub fn accepts(&self, update: &Update) -> bool {
        if update.kind == FrameKind::Reset {
            return self.format == Format::Native;
        }
        let topical = self.selectors.iter().any(Selector::is_any)
            || crate::topic::matches_any(&self.selectors, &update.topics);
        topical
            && (!update.private
                || self
                    .allowed
                    .as_deref()
                    .is_some_and(|allowed| crate::topic::matches_any(allowed, &update.topics)))
    }

    /// True when matching needs more than a topic lookup: `*` or a template.
    fn is_wild(&self) -> bool {
        self.selectors.iter().any(|s| s.is_any() || s.is_template())
    }

    fn key(&self) -> GroupKey {
        let sorted = |selectors: &[Selector]| {
            let mut v: Vec<Box<str>> = selectors.iter().map(|s| s.as_str().into()).collect();
            v.sort();
            v.dedup();
            v
        };
        (
            self.format,
            sorted(&self.selectors),
            self.allowed.as_deref().map(sorted),
        )
    }
}

/// The fan-out point of one instance. Cheap to clone.
///
/// Fan-out by topic (SPEC §8.6): streams with the same [`Filter`] share one
/// broadcast group; groups whose selectors are all exact topics are found
/// through an index from topic to groups, and only groups with `*` or a
/// template selector are checked for every event. Delivering an event thus
/// costs one index lookup per topic plus the wild groups plus the groups it
/// reaches, not the streams of the instance; each reached group gets the
/// event's bytes, encoded once per format, shared by `Arc`.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Groups, index and cursor. `std::sync::Mutex`: held while an event is
    /// routed and sent (no `.await`), and while a stream joins, so a new
    /// receiver and the cursor always agree: the stream has seen nothing at
    /// or before the cursor and will receive everything after it.
    state: Mutex<State>,
    /// Broadcast buffer of each group, in batches.
    capacity: usize,
    /// One permit per open SSE stream; `MAX_SSE_CLIENTS` in all.
    clients: Arc<Semaphore>,
    /// `MAX_SSE_CLIENTS`, to compute the open-stream count from free permits.
    max_clients: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Id of the last event sent into the broadcasts (or seeded).
    cursor: Option<EventId>,
    groups: HashMap<u64, Group>,
    by_key: HashMap<GroupKey, u64>,
    /// Exact topic → groups whose selectors are all exact and include it.
    exact: HashMap<Box<str>, Vec<u64>>,
    /// Groups with a `*` or template selector: checked for every event.
    wild: Vec<u64>,
    /// Groups sent a batch that some receiver may not have taken yet: the
    /// only ones whose backlog can be non-zero (a broadcast's length grows
    /// only on send), so the drain check costs the groups reached by recent
    /// events, not every group (10,000 one-topic streams are 10,000 groups).
    unsettled: Vec<u64>,
    next_group: u64,
}

#[derive(Debug)]
struct Group {
    filter: Arc<Filter>,
    key: GroupKey,
    tx: broadcast::Sender<Arc<Batch>>,
    /// Streams in the group; the group is removed when it drops to 0.
    members: usize,
    /// Listed in [`State::unsettled`].
    unsettled: bool,
}

/// A stream's place in the hub: its receiver, the cursor it joined at and
/// its filter. Dropping it leaves the group (and removes an empty group).
#[derive(Debug)]
pub struct Subscription {
    /// Batches of this stream's group, in order.
    pub rx: broadcast::Receiver<Arc<Batch>>,
    /// The hub's cursor when the stream joined: it has seen nothing up to it.
    pub joined_at: Option<EventId>,
    /// What the group receives (for filtering catch-up reads).
    pub filter: Arc<Filter>,
    _membership: Membership,
}

#[derive(Debug)]
struct Membership {
    inner: Arc<Inner>,
    group: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        let Some(group) = state.groups.get_mut(&self.group) else {
            return;
        };
        group.members -= 1;
        if group.members > 0 {
            return;
        }
        if let Some(group) = state.groups.remove(&self.group) {
            state.by_key.remove(&group.key);
            if group.filter.is_wild() {
                state.wild.retain(|&g| g != self.group);
            } else {
                for topic in &group.key.1 {
                    if let Some(list) = state.exact.get_mut(topic) {
                        list.retain(|&g| g != self.group);
                        if list.is_empty() {
                            state.exact.remove(topic);
                        }
                    }
                }
            }
        }
    }
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
    /// groups each buffer `capacity` batches.
    pub fn new(max_clients: usize, capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                capacity: capacity.max(1),
                clients: Arc::new(Semaphore::new(max_clients)),
                max_clients,
            }),
        }
    }

    /// Whether every stream has taken the last batch sent (or none was sent):
    /// a new event can go out at once without queueing behind a fan-out.
    pub fn is_drained(&self) -> bool {
        self.backlog() == 0
    }

    /// Sends one update to every local stream it matches. Having no receivers is normal.
    pub fn send(&self, update: Update) {
        self.send_updates(vec![update]);
    }

    /// Sends updates (event positions increasing) to the streams each
    /// matches, in one batch per group of at most [`MAX_BATCH_BYTES`].
    pub fn send_updates(&self, updates: Vec<Update>) {
        self.route(updates);
    }

    /// [`Hub::send_updates`]; returns how many groups were examined (for the
    /// cost test of SPEC §8.6).
    fn route(&self, updates: Vec<Update>) -> usize {
        let mut state = lock(&self.inner.state);
        // Group → (index of the last update pushed, frames), in first-touch order.
        let mut pending: HashMap<u64, (usize, Vec<Frame>)> = HashMap::new();
        let mut examined = 0;
        for (n, update) in updates.iter().enumerate() {
            if let Some(id) = update.id() {
                state.cursor = Some(id);
            }
            let mut offer = |g: u64, group: &Group| {
                examined += 1;
                let slot = pending.entry(g).or_insert((usize::MAX, Vec::new()));
                if slot.0 == n || !group.filter.accepts(update) {
                    return;
                }
                if let Some(frame) = update.frame(group.filter.format) {
                    slot.0 = n;
                    slot.1.push(frame);
                }
            };
            if update.kind == FrameKind::Reset {
                for (&g, group) in &state.groups {
                    offer(g, group);
                }
                continue;
            }
            for topic in update.topics.iter() {
                for g in state.exact.get(topic.as_str()).into_iter().flatten() {
                    if let Some(group) = state.groups.get(g) {
                        offer(*g, group);
                    }
                }
            }
            for g in &state.wild {
                if let Some(group) = state.groups.get(g) {
                    offer(*g, group);
                }
            }
        }
        let mut delivered = 0;
        let State {
            groups, unsettled, ..
        } = &mut *state;
        for (g, (_, frames)) in pending {
            let Some(group) = groups.get_mut(&g) else {
                continue;
            };
            if frames.is_empty() {
                continue;
            }
            if !group.unsettled {
                group.unsettled = true;
                unsettled.push(g);
            }
            let mut batch = Vec::new();
            let mut size = 0;
            for frame in frames {
                if size + frame.bytes.len() > MAX_BATCH_BYTES && !batch.is_empty() {
                    delivered += send_batch(&group.tx, std::mem::take(&mut batch));
                    size = 0;
                }
                size += frame.bytes.len();
                batch.push(frame);
            }
            if !batch.is_empty() {
                delivered += send_batch(&group.tx, batch);
            }
        }
        drop(state);
        metrics::counter!(crate::metrics::EVENTS_DELIVERED).increment(delivered);
        examined
    }

    /// Joins (or creates) the group for `filter`; returns the receiver and
    /// the cursor it joined at (`None` if no event was sent since start-up
    /// and none seeded by [`Hub::seed_cursor`]).
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        let key = filter.key();
        let mut state = lock(&self.inner.state);
        let joined_at = state.cursor;
        let g = match state.by_key.get(&key) {
            Some(&g) => g,
            None => {
                let g = state.next_group;
                state.next_group += 1;
                if filter.is_wild() {
                    state.wild.push(g);
                } else {
                    for topic in &key.1 {
                        state.exact.entry(topic.clone()).or_default().push(g);
                    }
                }
                state.by_key.insert(key.clone(), g);
                let (tx, _) = broadcast::channel(self.inner.capacity);
                state.groups.insert(
                    g,
                    Group {
                        filter: Arc::new(filter),
                        key,
                        tx,
                        members: 0,
                        unsettled: false,
                    },
                );
                g
            }
        };
        let group = state
            .groups
            .get_mut(&g)
            .unwrap_or_else(|| unreachable!("group {g} was just found or inserted"));
        group.members += 1;
        Subscription {
            rx: group.tx.subscribe(),
            joined_at,
            filter: group.filter.clone(),
            _membership: Membership {
                inner: self.inner.clone(),
                group: g,
            },
        }
    }

    /// Number of broadcast groups (distinct filters of open streams).
    pub fn group_count(&self) -> usize {
        lock(&self.inner.state).groups.len()
    }

    /// The most batches any group's slowest receiver has yet to take
    /// (`broadcast::Sender::len`): 0 when every stream has taken every batch.
    /// Looks only at the groups sent to since they last drained (and forgets
    /// those that have).
    pub fn backlog(&self) -> usize {
        self.settle().0
    }

    /// Streams in the groups whose slowest receiver has not yet taken the
    /// last batch: the size of the fan-out still running (0 = drained). A
    /// group counts whole, since its receivers share one broadcast.
    pub fn busy_streams(&self) -> usize {
        self.settle().1
    }

    /// (most batches any unsettled group holds, streams of the groups
    /// holding any), forgetting the groups that have drained.
    fn settle(&self) -> (usize, usize) {
        let mut state = lock(&self.inner.state);
        let state = &mut *state;
        let (mut most, mut busy) = (0, 0);
        let groups = &mut state.groups;
        state.unsettled.retain(|g| {
            let Some(group) = groups.get_mut(g) else {
                return false;
            };
            let len = group.tx.len();
            most = most.max(len);
            group.unsettled = len > 0;
            if group.unsettled {
                busy += group.members;
            }
            group.unsettled
        });
        (most, busy)
    }

    /// Groups listed as possibly not drained (for tests of the drain check's cost).
    #[cfg(test)]
    fn unsettled(&self) -> usize {
        lock(&self.inner.state).unsettled.len()
    }

    /// The id of the last event sent (or seeded).
    pub fn cursor(&self) -> Option<EventId> {
        lock(&self.inner.state).cursor
    }

    /// Sets the cursor to the newest event in history when nothing newer was
    /// sent yet, so clients that connect before the first live event still
    /// know where they joined.
    pub fn seed_cursor(&self, id: EventId) {
        let mut state = lock(&self.inner.state);
        if state.cursor.is_none_or(|c| c < id) {
            state.cursor = Some(id);
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

/// Sends one batch; returns receivers × events (for `events_delivered_total`).
fn send_batch(tx: &broadcast::Sender<Arc<Batch>>, frames: Vec<Frame>) -> u64 {
    let events = frames.len() as u64;
    tx.send(Arc::new(Batch::new(frames))).unwrap_or(0) as u64 * events
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

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    /// An event on `topics` whose native frame is `id: <ms>-0` / `data: {}`.
    fn event(ms: u64, topics: &[&str], private: bool) -> Update {
        let frame = Frame::event(id(ms), "{}");
        Update {
            kind: FrameKind::Event(id(ms)),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            private,
            native: frame.bytes.clone(),
            mercure: Some(frame.bytes),
        }
    }

    fn filter(format: Format, selectors: &[&str], allowed: Option<&[&str]>) -> Filter {
        let parse = |v: &[&str]| v.iter().map(|s| Selector::parse(s)).collect::<Vec<_>>();
        Filter {
            format,
            selectors: parse(selectors),
            allowed: allowed.map(parse),
        }
    }

    fn native(selectors: &[&str]) -> Filter {
        filter(Format::Native, selectors, None)
    }

    fn ids(sub: &mut Subscription) -> Vec<EventId> {
        let mut out = Vec::new();
        while let Ok(batch) = sub.rx.try_recv() {
            out.extend(batch.frames.iter().filter_map(Frame::id));
        }
        out
    }

    #[test]
    fn batches_join_frames_and_split_by_size() {
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
        let mut sub = hub.subscribe(native(&["*"]));
        let big = "x".repeat(MAX_BATCH_BYTES / 2);
        hub.send_updates(
            (1..=3)
                .map(|ms| {
                    let frame = Frame::event(id(ms), &big);
                    Update {
                        kind: frame.kind,
                        topics: Arc::new([]),
                        private: false,
                        native: frame.bytes,
                        mercure: None,
                    }
                })
                .collect(),
        );
        assert_eq!(sub.rx.try_recv().unwrap().frames.len(), 1);
        assert_eq!(sub.rx.try_recv().unwrap().frames.len(), 1);
        assert_eq!(sub.rx.try_recv().unwrap().last_id, Some(id(3)));
        assert_eq!(hub.cursor(), Some(id(3)));
    }

    #[tokio::test]
    async fn subscribe_reports_the_cursor_it_joined_at() {
        let hub = Hub::new(2, 16);
        let s0 = hub.subscribe(native(&["*"]));
        assert_eq!(s0.joined_at, None);
        hub.send(event(1, &["a"], false));
        let mut s1 = hub.subscribe(native(&["*"]));
        assert_eq!(s1.joined_at, Some(id(1)));
        hub.send(event(2, &["a"], false));
        assert_eq!(s1.rx.recv().await.unwrap().last_id, Some(id(2)));
        hub.seed_cursor(EventId { ms: 1, seq: 5 });
        assert_eq!(hub.cursor(), Some(id(2)));
    }

    #[test]
    fn events_reach_exactly_the_groups_whose_selectors_match() {
        let hub = Hub::new(16, 16);
        let mut exact = hub.subscribe(native(&["books/1"]));
        let mut exact_twin = hub.subscribe(native(&["books/1"]));
        let mut other = hub.subscribe(native(&["books/2"]));
        let mut template = hub.subscribe(native(&["books/{id}"]));
        let mut any = hub.subscribe(native(&["*"]));
        let mut mercure = hub.subscribe(filter(Format::Mercure, &["books/1"], None));
        let mut both = hub.subscribe(native(&["books/1", "authors/9"]));
        // Same filter → same group; format and selectors tell groups apart.
        assert_eq!(hub.group_count(), 6);
        // Canonical topic books/1, alternate authors/9: `both` gets it once.
        hub.send(event(1, &["books/1", "authors/9"], false));
        hub.send(event(2, &["books/2"], false));
        hub.send(event(3, &["elsewhere"], false));
        assert_eq!(ids(&mut exact), [id(1)]);
        assert_eq!(ids(&mut exact_twin), [id(1)]);
        assert_eq!(ids(&mut other), [id(2)]);
        assert_eq!(ids(&mut template), [id(1), id(2)]);
        assert_eq!(ids(&mut any), [id(1), id(2), id(3)]);
        assert_eq!(ids(&mut mercure), [id(1)]);
        assert_eq!(ids(&mut both), [id(1)]);
    }

    #[test]
    fn private_events_need_an_allowing_token() {
        let hub = Hub::new(16, 16);
        let mut anonymous = hub.subscribe(native(&["*"]));
        let mut allowed = hub.subscribe(filter(Format::Native, &["*"], Some(&["users/{id}"])));
        let mut denied = hub.subscribe(filter(Format::Native, &["*"], Some(&["users/7"])));
        // Selector on one topic, allowance on the alternate: still delivered.
        let mut alternate = hub.subscribe(filter(Format::Native, &["feed"], Some(&["users/5"])));
        hub.send(event(1, &["feed", "users/5"], true));
        hub.send(event(2, &["feed"], false));
        assert_eq!(ids(&mut anonymous), [id(2)]);
        assert_eq!(ids(&mut allowed), [id(1), id(2)]);
        assert_eq!(ids(&mut denied), [id(2)]);
        assert_eq!(ids(&mut alternate), [id(1), id(2)]);
    }

    #[test]
    fn routing_cost_follows_the_groups_reached_not_the_streams_open() {
        let hub = Hub::new(20_000, 4);
        let subs: Vec<_> = (0..10_000)
            .map(|n| hub.subscribe(native(&[&format!("topic/{n}")])))
            .collect();
        let _any = hub.subscribe(native(&["*"]));
        assert_eq!(hub.group_count(), 10_001);
        // One exact group plus the one wild group, not 10,001.
        assert_eq!(hub.route(vec![event(1, &["topic/42"], false)]), 2);
        drop(subs);
        // Empty groups leave the index.
        assert_eq!(hub.group_count(), 1);
        assert_eq!(hub.route(vec![event(2, &["topic/42"], false)]), 1);
    }

    #[test]
    fn the_drain_check_looks_only_at_groups_sent_to() {
        let hub = Hub::new(1_000, 16);
        let mut subs: Vec<_> = (0..1_000)
            .map(|i| hub.subscribe(native(&[&format!("topic/{i}")])))
            .collect();
        assert_eq!(hub.unsettled(), 0);
        hub.send(event(1, &["topic/7"], false));
        hub.send(event(2, &["topic/8"], false));
        assert_eq!(hub.unsettled(), 2);
        assert_eq!(hub.backlog(), 1);
        subs[7].rx.try_recv().unwrap();
        assert_eq!(hub.backlog(), 1, "topic/8's stream has not taken its batch");
        assert_eq!(
            hub.unsettled(),
            1,
            "topic/7's group has drained and is forgotten"
        );
        subs[8].rx.try_recv().unwrap();
        assert!(hub.is_drained());
        assert_eq!(hub.unsettled(), 0);
        // A group that left while unsettled is dropped from the list too.
        hub.send(event(3, &["topic/9"], false));
        drop(subs.remove(9));
        assert!(hub.is_drained());
        assert_eq!(hub.unsettled(), 0);
    }

    #[test]
    fn resets_go_to_native_streams_only() {
        let hub = Hub::new(4, 16);
        let mut n = hub.subscribe(native(&["a"]));
        let mut m = hub.subscribe(filter(Format::Mercure, &["*"], None));
        hub.send(Update::reset("history_lost"));
        assert_eq!(n.rx.try_recv().unwrap().resets, 1);
        assert!(m.rx.try_recv().is_err());
        assert_eq!(hub.backlog(), 0);
    }

    #[test]
    fn drained_once_every_receiver_has_taken_the_last_batch() {
        let hub = Hub::new(2, 16);
        assert!(hub.is_drained(), "nothing sent yet");
        let mut a = hub.subscribe(native(&["a"]));
        let mut b = hub.subscribe(native(&["*"]));
        hub.send(event(1, &["a"], false));
        assert!(!hub.is_drained());
        a.rx.try_recv().unwrap();
        assert!(!hub.is_drained(), "b has not taken it");
        b.rx.try_recv().unwrap();
        assert!(hub.is_drained());
    }

    #[test]
    fn busy_streams_counts_the_groups_still_taking_a_batch() {
        let hub = Hub::new(8, 16);
        let mut a1 = hub.subscribe(native(&["a"]));
        let mut a2 = hub.subscribe(native(&["a"]));
        let mut b = hub.subscribe(native(&["b"]));
        assert_eq!(hub.busy_streams(), 0, "nothing sent yet");
        hub.send(event(1, &["a"], false));
        assert_eq!(hub.busy_streams(), 2, "group a has two streams");
        a1.rx.try_recv().unwrap();
        assert_eq!(
            hub.busy_streams(),
            2,
            "a2 has not taken it: the group is busy"
        );
        hub.send(event(2, &["b"], false));
        assert_eq!(hub.busy_streams(), 3);
        a2.rx.try_recv().unwrap();
        assert_eq!(hub.busy_streams(), 1, "only b's group is still busy");
        b.rx.try_recv().unwrap();
        assert_eq!(hub.busy_streams(), 0);
        assert!(hub.is_drained());
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
