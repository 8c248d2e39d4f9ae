//! The in-process bus: the zero-setup default (SPEC §2). Same semantics as
//! Redis as clients see them — ids, bounded history, resume — for one instance.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    hub::Hub,
    model::{self, Account, EventId, NewUpdate, Update},
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
    /// Oldest first, with the publisher's id if any; positions strictly
    /// increasing, so lookups are binary searches.
    history: VecDeque<(Update, Option<String>)>,
    /// Publisher-supplied id → position, for the events still in `history`.
    supplied: HashMap<String, EventId>,
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
        private: bool,
    ) -> Result<Account, super::BusError> {
        let account = Account::new(name, balance, &self.server_id);
        let tail = model::event_tail(&account, private, &self.server_id, &account.created_at)
            .map_err(|err| super::BusError::Corrupt(err.to_string()))?;
        // Stored first, so an account event never precedes its account.
        self.lock().accounts.insert(account.id, account.clone());
        self.append(&tail, None)?;
        Ok(account)
    }

    pub(super) fn publish(&self, update: &NewUpdate) -> Result<String, super::BusError> {
        let tail = update
            .tail(&self.server_id, &model::now_rfc3339_ms())
            .map_err(|err| super::BusError::Corrupt(err.to_string()))?;
        let position = self.append(&tail, update.id.as_deref())?;
        Ok(update.id.clone().unwrap_or_else(|| position.to_string()))
    }

    /// Appends and publishes one event under the lock (history order =
    /// broadcast order); with a supplied id still in history, does nothing
    /// and returns that event's position (idempotent publishing, SPEC §8.3).
    fn append(&self, tail: &str, supplied: Option<&str>) -> Result<EventId, super::BusError> {
        let mut state = self.lock();
        if let Some(&known) = supplied.and_then(|id| state.supplied.get(id)) {
            return Ok(known);
        }
        let id = next_id(state.last_id);
        let id_json = supplied.map(|s| serde_json::Value::from(s).to_string());
        let json = model::event_json(id, id_json.as_deref(), tail);
        let update = Update::decode(&json)
            .map_err(|err| super::BusError::Corrupt(format!("event {id}: {err}")))?;
        state.last_id = Some(id);
        if let Some(supplied) = supplied {
            state.supplied.insert(supplied.to_owned(), id);
        }
        state
            .history
            .push_back((update.clone(), supplied.map(str::to_owned)));
        if state.history.len() > self.history_len {
            if let Some((_, Some(gone))) = state.history.pop_front() {
                state.supplied.remove(&gone);
            }
        }
        self.hub.send(update);
        metrics::counter!(crate::metrics::EVENTS_RECEIVED).increment(1);
        Ok(id)
    }

    /// The position of an event id: a supplied id still retained, else the
    /// id itself if it has the stream id form.
    pub(super) fn resolve(&self, id: &str) -> Option<EventId> {
        self.lock()
            .supplied
            .get(id)
            .copied()
            .or_else(|| id.parse().ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn get_account(&self, id: uuid::Uuid) -> Option<Account> {
        self.lock().accounts.get(&id).cloned()
    }

    /// Up to `limit` events after `after` (`None`: from the oldest), or
    /// `Missing` if `after` is not retained.
    pub(super) fn history_after(&self, after: Option<EventId>, limit: usize) -> History {
        let state = self.lock();
        let start = match after {
            None => 0,
            Some(after) => match state
                .history
                .binary_search_by_key(&Some(after), |(u, _)| u.id())
            {
                Ok(pos) => pos + 1,
                Err(_) => return History::Missing,
            },
        };
        History::Events(
            state
                .history
                .iter()
                .skip(start)
                .take(limit)
                .map(|(u, _)| u.clone())
                .collect(),
        )
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
            bus.create_account(format!("n{i}"), i, false).unwrap();
        }
        let state = bus.state.lock().unwrap();
        let ids: Vec<_> = state.history.iter().filter_map(|(u, _)| u.id()).collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let (first, last) = (ids[0], ids[2]);
        drop(state);
        let History::Events(after_first) = bus.history_after(Some(first), 10) else {
            panic!()
        };
        assert_eq!(after_first.len(), 2);
        let History::Events(none) = bus.history_after(Some(last), 10) else {
            panic!()
        };
        assert!(none.is_empty());
        assert!(matches!(
            bus.history_after(Some(EventId { ms: 1, seq: 0 }), 10),
            History::Missing
        ));
    }

    #[test]
    fn supplied_ids_are_idempotent_while_retained() {
        let bus = MemoryBus::new(Hub::new(1, 16), "s", 2);
        let update = NewUpdate {
            topics: vec!["t".to_owned()],
            r#type: None,
            data: "x".to_owned(),
            private: false,
            retry: None,
            id: Some("urn:a".to_owned()),
        };
        assert_eq!(bus.publish(&update).unwrap(), "urn:a");
        let position = bus.resolve("urn:a").unwrap();
        assert_eq!(bus.publish(&update).unwrap(), "urn:a");
        assert_eq!(bus.lock().history.len(), 1);
        bus.create_account("a".to_owned(), 1, false).unwrap();
        bus.create_account("b".to_owned(), 1, false).unwrap();
        // Trimmed: the id no longer resolves, and publishing it is new.
        assert_eq!(bus.resolve("urn:a"), None);
        assert_eq!(bus.publish(&update).unwrap(), "urn:a");
        assert!(bus.resolve("urn:a").unwrap() > position);
    }
}
