//! The bus: where accounts are stored, events get their ids, history is kept
//! and events are published to every instance. Routes use only [`Bus`]; no
//! Redis type leaves this module.

use crate::model::{Account, EventId, NewUpdate, Update};

pub mod memory;
pub mod redis;
mod subscriber;

pub use self::{memory::MemoryBus, redis::RedisBus};

/// Events read from history per request: bounds the memory of one catch-up
/// read (~1 KiB an event) while keeping round trips few.
pub const HISTORY_PAGE: usize = 1000;

/// A bus failure, mapped to `503 bus_unavailable` at the route boundary.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis refused or failed the command, or the connection is down.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis did not answer within the command timeout.
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    /// The instance has not yet connected and subscribed (Redis down at start-up).
    #[error("the bus is not connected yet")]
    NotReady,
    /// Stored data is not what this server writes.
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
}

/// What history holds after a given event id.
#[derive(Debug)]
pub enum History {
    /// The id is not retained (unknown, trimmed, or history was lost): the
    /// caller cannot know what it missed and must signal `reset`.
    Missing,
    /// Up to `limit` events after the id, oldest first.
    Events(Vec<Update>),
}

/// Health of the bus as `/health` reports it (SPEC §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusHealth {
    /// Commands succeed and the subscriber is subscribed (always true for memory).
    pub ready: bool,
    /// `Some(up)` for Redis, `None` for the memory bus.
    pub redis_up: Option<bool>,
}

/// The bus, chosen once at start-up (SPEC §2 "Bus selection"). Cheap to clone.
#[derive(Debug, Clone)]
pub enum Bus {
    /// In-process: single instance, history and accounts in memory.
    Memory(MemoryBus),
    /// Shared Redis: many instances.
    Redis(RedisBus),
}

impl Bus {
    /// `"memory"` or `"redis"`, as `/health` shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            Bus::Memory(_) => "memory",
            Bus::Redis(_) => "redis",
        }
    }

    /// Stores the account, appends its `account.created` event to history and
    /// publishes it, all or nothing (SPEC §3.1).
    ///
    /// # Errors
    /// [`BusError`] when Redis is unavailable; then nothing was stored.
    /// The event is on the topics `accounts/<id>` and `accounts`, private
    /// when `private` (`ACCOUNT_EVENTS_PRIVATE`, SPEC §8.1).
    pub async fn create_account(
        &self,
        name: String,
        balance: u64,
        private: bool,
    ) -> Result<Account, BusError> {
        let account = match self {
            Bus::Memory(bus) => bus.create_account(name, balance, private),
            Bus::Redis(bus) => bus.create_account(name, balance, private).await,
        }?;
        metrics::counter!(crate::metrics::EVENTS_PUBLISHED).increment(1);
        Ok(account)
    }

    /// Appends a Mercure update to history and publishes it, all or nothing
    /// (SPEC §8.3); returns its id (the supplied one, else the stream id).
    /// A supplied id still in history is not published again: its id is
    /// returned and nothing changes (idempotent publishing).
    ///
    /// # Errors
    /// [`BusError`] when Redis is unavailable; then nothing was stored.
    pub async fn publish(&self, update: &NewUpdate) -> Result<String, BusError> {
        let id = match self {
            Bus::Memory(bus) => bus.publish(update),
            Bus::Redis(bus) => bus.publish(update).await,
        }?;
        metrics::counter!(crate::metrics::EVENTS_PUBLISHED).increment(1);
        Ok(id)
    }

    /// The stream position of an event id as a client sends it in
    /// `Last-Event-ID`: a publisher-supplied id, else a stream id; `None` if
    /// it is neither. Whether the event is still retained is for
    /// [`Bus::history_after`] to say.
    ///
    /// # Errors
    /// [`BusError`] when Redis is unavailable.
    pub async fn resolve(&self, id: &str) -> Result<Option<EventId>, BusError> {
        match self {
            Bus::Memory(bus) => Ok(bus.resolve(id)),
            Bus::Redis(bus) => bus.resolve(id).await,
        }
    }

    /// The account with this id, if any.
    ///
    /// # Errors
    /// [`BusError`] when Redis is unavailable.
    pub async fn get_account(&self, id: uuid::Uuid) -> Result<Option<Account>, BusError> {
        match self {
            Bus::Memory(bus) => Ok(bus.get_account(id)),
            Bus::Redis(bus) => bus.get_account(id).await,
        }
    }

    /// Up to `limit` retained events after `after` (`None`: from the
    /// oldest retained), oldest first; `Missing` if `after` itself is not retained.
    ///
    /// # Errors
    /// [`BusError`] when Redis is unavailable.
    pub async fn history_after(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<History, BusError> {
        match self {
            Bus::Memory(bus) => Ok(bus.history_after(after, limit)),
            Bus::Redis(bus) => bus.history_after(after, limit).await,
        }
    }

    /// Current health; for Redis this sends a `PING`.
    pub async fn health(&self) -> BusHealth {
        match self {
            Bus::Memory(_) => BusHealth {
                ready: true,
                redis_up: None,
            },
            Bus::Redis(bus) => bus.health().await,
        }
    }
}
