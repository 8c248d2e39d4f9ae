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
    model::{self, Account, EventId, Frame},
};

/// Upper bound on one Redis command, in ms: a POST while Redis is down fails
/// with 503 after at most this long instead of hanging.
pub const COMMAND_TIMEOUT_MS: u64 = 2000;

/// Stores the account, appends the event to history and publishes it, in one
/// atomic step, so the channel's order is history's order and a subscriber
/// never sees an event history lacks (SPEC §3.1 "All or nothing").
/// The stream entry id `XADD` assigns is the event id.
///
/// KEYS[1] = `account:<id>`, KEYS[2] = `<channel>:history`.
/// ARGV[1] = account JSON, ARGV[2] = `EVENT_HISTORY_LEN` (`MAXLEN ~`),
/// ARGV[3] = event tail (the event JSON after its id, see [`model::event_tail`]),
/// ARGV[4] = channel. Returns the entry id.
/// `XADD` runs first: it is the command that can fail on a wrong key type,
/// and a script that fails before any write changes nothing.
const PUBLISH_SCRIPT: &str = r#"
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'tail', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[4], '{"id":"' .. id .. '",' .. ARGV[3])
return id
"#;

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
    /// `<channel>:history`: the Redis Stream of recent events.
    history_key: String,
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
                history_key: format!("{channel}:history"),
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
        metrics::gauge!(crate::metrics::SUBSCRIBER_READY).set(f64::from(u8::from(subscribed)));
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
    ) -> Result<Account, BusError> {
        let mut conn = self.commands()?;
        let account = Account::new(name, balance, &self.inner.server_id);
        let account_json =
            serde_json::to_string(&account).map_err(|e| BusError::Corrupt(e.to_string()))?;
        let tail = model::event_tail(&account, &self.inner.server_id, &account.created_at)
            .map_err(|e| BusError::Corrupt(e.to_string()))?;
        let mut invocation = self.inner.script.key(account_key(account.id));
        invocation
            .key(&self.inner.history_key)
            .arg(account_json)
            .arg(self.inner.history_len)
            .arg(tail)
            .arg(&self.inner.channel);
        let _id: String = timed(invocation.invoke_async(&mut conn)).await?;
        Ok(account)
    }

    pub(super) async fn get_account(&self, id: uuid::Uuid) -> Result<Option<Account>, BusError> {
        let mut conn = self.commands()?;
        let json: Option<String> = timed(conn.get(account_key(id))).await?;
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
        let key = &self.inner.history_key;
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
            .map(|entry| entry.into_frame())
            .collect::<Result<_, _>>()
            .map(History::Events)
    }

    /// The newest event id in history, if any (`XREVRANGE … COUNT 1`).
    pub(super) async fn latest_id(&self) -> Result<Option<EventId>, BusError> {
        let mut conn = self.commands()?;
        let entries: Vec<StreamEntry> = timed(
            redis::cmd("XREVRANGE")
                .arg(&self.inner.history_key)
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

/// `account:<id>` (SPEC §4).
fn account_key(id: uuid::Uuid) -> String {
    format!("account:{id}")
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
    fn into_frame(self) -> Result<Frame, BusError> {
        let id = parse_id(&self.0)?;
        let tail = self
            .1
            .chunks(2)
            .find(|kv| kv.first().map(String::as_str) == Some("tail"))
            .and_then(|kv| kv.get(1))
            .ok_or_else(|| BusError::Corrupt(format!("history entry {id} has no tail field")))?;
        Ok(Frame::event(id, &model::event_json(id, tail)))
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
