//! The in-process bus: the zero-setup default (SPEC §2). Same semantics as
//! Redis as clients see them — ids, bounded history, resume — for one instance.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    hub::Hub,
    model::{self, Account, EventId, Frame},
};

use super::History;

/// In-process accounts, history and publishing straight into the [`Hub`].
#[derive(Debug, Clone)]
pub struct MemoryBus {
    /// `std::sync::Mutex`: every critical section is short and has no `.await`;
    /// publishing under the lock keeps history order equal to broadcast order.
    state: Arc<Mutex<State>>,
    /// Where published events go.
    hub: Hub,
    /// `SERVER_ID`, stamped on events.
    server_id: Arc<str>,
    /// `EVENT_HISTORY_LEN`: events kept for resume.
    history_len: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first; ids strictly increasing, so lookups are binary searches.
    history: VecDeque<Frame>,
    accounts: HashMap<uuid::Uuid, Account>,
    last_id: Option<EventId>,
}

impl MemoryBus {
    /// A memory bus publishing into `hub`, keeping `history_len` events.
    pub fn new(hub: Hub, server_id: &str, history_len: usize) -> Self {
        Self {
            state: Arc::default(),
            hub,
            server_id: server_id.into(),
            history_len: history_len.max(1),
        }
    }

    pub(super) fn create_account(
        &self,
        name: String,
        balance: u64,
    ) -> Result<Account, super::BusError> {
        let account = Account::new(name, balance, &self.server_id);
        let tail = model::event_tail(&account, &self.server_id, &account.created_at)
            .map_err(|err| super::BusError::Corrupt(err.to_string()))?;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = next_id(state.last_id);
        let frame = Frame::event(id, &model::event_json(id, &tail));
        state.last_id = Some(id);
        state.history.push_back(frame.clone());
        if state.history.len() > self.history_len {
            state.history.pop_front();
        }
        state.accounts.insert(account.id, account.clone());
        self.hub.send(frame);
        metrics::counter!(crate::metrics::EVENTS_RECEIVED).increment(1);
        Ok(account)
    }

    pub(super) fn get_account(&self, id: uuid::Uuid) -> Option<Account> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.accounts.get(&id).cloned()
    }

    pub(super) fn history_after(&self, after: EventId, limit: usize) -> History {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.history.binary_search_by_key(&Some(after), Frame::id) {
            Ok(pos) => History::Events(
                state
                    .history
                    .iter()
                    .skip(pos + 1)
                    .take(limit)
                    .cloned()
                    .collect(),
            ),
            Err(_) => History::Missing,
        }
    }
}

/// The next id after `last`, in Redis's `<ms>-<seq>` form: wall-clock ms, or
/// `last.ms` with the next sequence if the clock has not moved (or went back).
fn next_id(last: Option<EventId>) -> EventId {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match last {
        Some(last) if last.ms >= now => EventId {
            ms: last.ms,
            seq: last.seq + 1,
        },
        _ => EventId { ms: now, seq: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_history_is_capped() {
        let bus = MemoryBus::new(Hub::new(1, 16), "s", 3);
        for i in 0..5 {
            bus.create_account(format!("n{i}"), i).unwrap();
        }
        let state = bus.state.lock().unwrap();
        let ids: Vec<_> = state.history.iter().filter_map(Frame::id).collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let (first, last) = (ids[0], ids[2]);
        drop(state);
        let History::Events(after_first) = bus.history_after(first, 10) else {
            panic!()
        };
        assert_eq!(after_first.len(), 2);
        let History::Events(none) = bus.history_after(last, 10) else {
            panic!()
        };
        assert!(none.is_empty());
        assert!(matches!(
            bus.history_after(EventId { ms: 1, seq: 0 }, 10),
            History::Missing
        ));
    }
}
