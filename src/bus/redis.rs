//! The Redis bus: one multiplexed [`ConnectionManager`] for commands (shared
//! by every request and client) and one subscriber task with its own pub/sub
//! connection (see [`super::subscriber`]).

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use redis::{aio::ConnectionManager, AsyncCommands};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::{BusError, BusHealth, History};
use crate::{
    hub::Hub,
    model::{self, Account, EventId, NewUpdate, Update},
};

/// Upper bound on one Redis command, in ms: a POST while Redis is down fails
/// with 503 after at most this long instead of hanging.
pub const COMMAND_TIMEOUT_MS: u64 = 2000;

/// Appends one event to history and publishes it, in one atomic step, so
/// the channel's order is history's order and a subscriber never sees an
/// event history lacks (SPEC §3.1 "All or nothing", §8.3). For an account
/// event it also stores the account. The stream entry id `XADD` assigns is
/// the event's position (and its id unless the publisher supplied one).
///
/// KEYS[1] = history stream, KEYS[2] = supplied-id hash (id → position),
/// KEYS[3] = supplied-id order (sorted set, score = position ms), KEYS[4]
/// (account events only) = `account:<id>`.
/// ARGV[1] = `EVENT_HISTORY_LEN` (`MAXLEN ~`), ARGV[2] = channel,
/// ARGV[3] = event tail (see [`model::event_tail`]), ARGV[4] = supplied id
/// or '', ARGV[5] = supplied id as a JSON string or '', ARGV[6] = account JSON.
/// Returns `{position, 1}` when published, `{position, 0}` when the supplied
/// id is still in history (idempotent publishing: nothing is written).
///
/// Supplied ids are pruned here: after `XADD` trims history, the ids of
/// events older than the oldest retained entry's millisecond are deleted
/// (at most 100 per publish, so the work per call stays bounded). A lookup
/// also checks that the entry is still in history, so an id whose event was
/// trimmed resolves to nothing even before it is pruned.
/// Every command that can fail on a wrong key type (`HGET`, `ZCARD`,
/// `XADD`) runs before the first write, so a script that fails changes nothing.
const PUBLISH_SCRIPT: &str = r#"
local supplied = ARGV[4]
if supplied ~= '' then
  local known = redis.call('HGET', KEYS[2], supplied)
  if known and #redis.call('XRANGE', KEYS[1], known, known) > 0 then
    return {known, 0}
  end
end
local tracked = redis.call('ZCARD', KEYS[3])
local id
if supplied ~= '' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'tail', ARGV[3], 'sid', ARGV[5])
  redis.call('HSET', KEYS[2], supplied, id)
  redis.call('ZADD', KEYS[3], tonumber(string.match(id, '^(%d+)')), supplied)
  tracked = tracked + 1
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'tail', ARGV[3])
end
if tracked > 0 then
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
  local bound = '(' .. string.match(oldest, '^(%d+)')
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', bound, 'LIMIT', 0, 100)
  if #gone > 0 then
    redis.call('HDEL', KEYS[2], unpack(gone))
    redis.call('ZREM', KEYS[3], unpack(gone))
  end
end
if #KEYS >= 4 then
  redis.call('SET', KEYS[4], ARGV[6])
end
local head
if supplied ~= '' then
  head = '{"id":' .. ARGV[5] .. ',"streamId":"' .. id .. '",'
else
  head = '{"id":"' .. id .. '",'
end
redis.call('PUBLISH', ARGV[2], head .. ARGV[3])
return {id, 1}
"#;

/// Every Redis key of a channel, computed in one place (SPEC §4, §9).
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `<channel>:history`: the Redis Stream of recent events.
    pub(super) history: String,
    /// `<channel>:ids`: hash from a publisher-supplied event id to its position.
    pub(super) supplied_ids: String,
    /// `<channel>:ids:order`: the same ids scored by position ms, for pruning.
    pub(super) supplied_order: String,
}

impl Keys {
    fn new(channel: &str) -> Self {
        Self {
            history: format!("{channel}:history"),
            supplied_ids: format!("{channel}:ids"),
            supplied_order: format!("{channel}:ids:order"),
        }
    }

    /// `account:<id>` (SPEC §4).
    pub(super) fn account(&self, id: uuid::Uuid) -> String {
        format!("account:{id}")
    }
}

/// Handle to Redis shared by routes and the subscriber. Cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// Opens connections; holds the parsed URL.
    client: redis::Client,
    /// Created by the subscriber on its first successful connection (so a
    /// POST cannot succeed before this instance is subscribed), then kept:
    /// the manager reconnects by itself.
    commands: OnceCell<ConnectionManager>,
    /// Set while the subscriber is subscribed and caught up (readiness).
    subscribed: AtomicBool,
    /// Pub/sub channel name.
    channel: String,
    /// Every key this bus uses.
    keys: Keys,
    /// `EVENT_HISTORY_LEN`.
    history_len: u64,
    /// `SERVER_ID`.
    server_id: String,
    /// The publish script; `invoke_async` sends `EVALSHA` and loads it once on `NOSCRIPT`.
    script: redis::Script,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel", &self.inner.channel)
            .field("subscribed", &self.inner.subscribed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// A bus for `url` (already validated by config). Connects nothing yet.
    ///
    /// # Errors
    /// [`BusError::Redis`] if the URL does not parse.
    pub fn new(
        url: &str,
        channel: &str,
        history_len: u64,
        server_id: &str,
    ) -> Result<Self, BusError> {
        Ok(Self {
            inner: Arc::new(Inner {
                client: redis::Client::open(url)?,
                commands: OnceCell::new(),
                subscribed: AtomicBool::new(false),
                channel: channel.to_owned(),
                keys: Keys::new(channel),
                history_len,
                server_id: server_id.to_owned(),
                script: redis::Script::new(PUBLISH_SCRIPT),
            }),
        })
    }

    /// Starts the one subscriber task of this instance (SPEC §1), batching
    /// events within `batch_window` (`SSE_BATCH_WINDOW_MS`). It runs until
    /// `shutdown` fires.
    pub fn spawn_subscriber(
        &self,
        hub: Hub,
        batch_window: Duration,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) {
        tracker.spawn(super::subscriber::run(
            self.clone(),
            hub,
            batch_window,
            shutdown,
        ));
    }

    pub(super) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// `SERVER_ID` of this instance (for log fields).
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    pub(super) fn channel(&self) -> &str {
        &self.inner.channel
    }

    pub(super) fn set_subscribed(&self, subscribed: bool) {
        self.inner.subscribed.store(subscribed, Ordering::Release);
    }

    /// The command connection, creating it on first use by the subscriber.
    pub(super) async fn connect_commands(&self) -> Result<ConnectionManager, BusError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(1000)))
            .set_response_timeout(Some(Duration::from_millis(COMMAND_TIMEOUT_MS)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = self
            .inner
            .commands
            .get_or_try_init(|| timed(self.inner.client.get_connection_manager_with_config(config)))
            .await?;
        Ok(conn.clone())
    }

    /// The command connection if the subscriber has created it.
    fn commands(&self) -> Result<ConnectionManager, BusError> {
        self.inner.commands.get().cloned().ok_or(BusError::NotReady)
    }

    pub(super) async fn create_account(
        &self,
        name: String,
        balance: u64,
        private: bool,
    ) -> Result<Account, BusError> {
        let account = Account::new(name, balance, &self.inner.server_id);
        let account_json =
            serde_json::to_string(&account).map_err(|e| BusError::Corrupt(e.to_string()))?;
        let tail = model::event_tail(
            &account,
            private,
            &self.inner.server_id,
            &account.created_at,
        )
        .map_err(|e| BusError::Corrupt(e.to_string()))?;
        self.append(
            &tail,
            None,
            Some((self.inner.keys.account(account.id), account_json)),
        )
        .await?;
        Ok(account)
    }

    pub(super) async fn publish(&self, update: &NewUpdate) -> Result<String, BusError> {
        let tail = update
            .tail(&self.inner.server_id, &model::now_rfc3339_ms())
            .map_err(|e| BusError::Corrupt(e.to_string()))?;
        let position = self.append(&tail, Some(update), None).await?;
        Ok(update.id.clone().unwrap_or(position))
    }

    /// Runs [`PUBLISH_SCRIPT`]; returns the event's position.
    async fn append(
        &self,
        tail: &str,
        update: Option<&NewUpdate>,
        account: Option<(String, String)>,
    ) -> Result<String, BusError> {
        let mut conn = self.commands()?;
        let keys = &self.inner.keys;
        let mut invocation = self.inner.script.key(&keys.history);
        invocation.key(&keys.supplied_ids).key(&keys.supplied_order);
        let (account_key, account_json) = account.unzip();
        if let Some(key) = account_key {
            invocation.key(key);
        }
        let supplied = update.and_then(|u| u.id.clone()).unwrap_or_default();
        let supplied_json = update.and_then(NewUpdate::id_json).unwrap_or_default();
        invocation
            .arg(self.inner.history_len)
            .arg(&self.inner.channel)
            .arg(tail)
            .arg(supplied)
            .arg(supplied_json)
            .arg(account_json.unwrap_or_default());
        let (position, _published): (String, i64) =
            timed(invocation.invoke_async(&mut conn)).await?;
        Ok(position)
    }

    /// The position of an event id: a supplied id (`HGET` of the id hash;
    /// whether it is still retained is checked by the history read that
    /// follows), else the id itself if it has the stream id form.
    pub(super) async fn resolve(&self, id: &str) -> Result<Option<EventId>, BusError> {
        let mut conn = self.commands()?;
        let known: Option<String> = timed(conn.hget(&self.inner.keys.supplied_ids, id)).await?;
        Ok(match known {
            Some(position) => Some(parse_id(&position)?),
            None => id.parse().ok(),
        })
    }

    pub(super) async fn get_account(&self, id: uuid::Uuid) -> Result<Option<Account>, BusError> {
        let mut conn = self.commands()?;
        let json: Option<String> = timed(conn.get(self.inner.keys.account(id))).await?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| BusError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Up to `limit` events after `after` (`None`: from the oldest retained).
    /// With `after`, one `XRANGE <after> + COUNT limit+1` both checks that
    /// `after` is still retained (it must be the first entry; if history was
    /// lost or trimmed it is not) and reads what follows, atomically. An
    /// inclusive start also works for the largest possible id, where the
    /// exclusive `(id` form is a Redis error.
    pub(super) async fn history_after(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<History, BusError> {
        let mut conn = self.commands()?;
        let key = &self.inner.keys.history;
        let entries = match after {
            Some(after) => {
                let mut entries: Vec<StreamEntry> = timed(
                    redis::cmd("XRANGE")
                        .arg(key)
                        .arg(after.to_string())
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit.saturating_add(1))
                        .query_async(&mut conn),
                )
                .await?;
                let first = entries.first().map(|e| parse_id(&e.0)).transpose()?;
                if first != Some(after) {
                    return Ok(History::Missing);
                }
                entries.remove(0);
                entries
            }
            None => {
                timed(
                    redis::cmd("XRANGE")
                        .arg(key)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit)
                        .query_async(&mut conn),
                )
                .await?
            }
        };
        entries
            .into_iter()
            .map(StreamEntry::into_update)
            .collect::<Result<_, _>>()
            .map(History::Events)
    }

    /// The newest event id in history, if any (`XREVRANGE … COUNT 1`).
    pub(super) async fn latest_id(&self) -> Result<Option<EventId>, BusError> {
        let mut conn = self.commands()?;
        let entries: Vec<StreamEntry> = timed(
            redis::cmd("XREVRANGE")
                .arg(&self.inner.keys.history)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn),
        )
        .await?;
        entries.first().map(|e| parse_id(&e.0)).transpose()
    }

    pub(super) async fn health(&self) -> BusHealth {
        let up = match self.commands() {
            Ok(mut conn) => timed(redis::cmd("PING").query_async::<String>(&mut conn))
                .await
                .is_ok(),
            Err(_) => false,
        };
        BusHealth {
            ready: up && self.inner.subscribed.load(Ordering::Acquire),
            redis_up: Some(up),
        }
    }
}

/// One `XRANGE` entry: id and flat field/value list.
#[derive(Debug)]
struct StreamEntry(String, Vec<String>);

impl redis::FromRedisValue for StreamEntry {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let (id, fields): (String, Vec<String>) = redis::FromRedisValue::from_redis_value(v)?;
        Ok(Self(id, fields))
    }
}

impl StreamEntry {
    /// The entry as an update: `tail` and, for a publisher-supplied id,
    /// `sid` (the id as a JSON string) rebuild the channel message exactly.
    fn into_update(self) -> Result<Update, BusError> {
        let id = parse_id(&self.0)?;
        let field = |name: &str| {
            self.1
                .chunks(2)
                .find(|kv| kv.first().map(String::as_str) == Some(name))
                .and_then(|kv| kv.get(1))
        };
        let tail = field("tail")
            .ok_or_else(|| BusError::Corrupt(format!("history entry {id} has no tail field")))?;
        let json = model::event_json(id, field("sid").map(String::as_str), tail);
        Update::decode(&json).map_err(|err| BusError::Corrupt(format!("history entry {id}: {err}")))
    }
}

fn parse_id(raw: &str) -> Result<EventId, BusError> {
    raw.parse()
        .map_err(|_| BusError::Corrupt(format!("stream id {raw:?}")))
}

/// Bounds a Redis call by [`COMMAND_TIMEOUT_MS`].
pub(super) async fn timed<T>(
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(Duration::from_millis(COMMAND_TIMEOUT_MS), fut).await {
        Ok(result) => result.map_err(BusError::from),
        Err(_) => Err(BusError::Timeout(COMMAND_TIMEOUT_MS)),
    }
}
