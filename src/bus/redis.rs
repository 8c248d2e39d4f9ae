//! The Redis bus: one multiplexed command connection (shared by every request
//! and client) and one subscriber task with its own pub/sub connection (see
//! [`super::subscriber`]), against one server, a Sentinel-managed primary or a
//! Redis Cluster (SPEC §9; finding and following the primary is in
//! [`super::topology`]).

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use redis::{
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
    AsyncCommands,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{topology::Target, BusError, BusHealth, History};
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
/// `publish` is `PUBLISH` or, on a Cluster, `SPUBLISH` (prepended by
/// [`publish_script`]; SPEC §9: one slot owns every key and the shard channel).
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
redis.call(publish, ARGV[2], head .. ARGV[3])
return {id, 1}
"#;

/// [`PUBLISH_SCRIPT`] for `mode`: the one place `PUBLISH` vs `SPUBLISH` is chosen.
fn publish_script(mode: RedisMode) -> String {
    let publish = match mode {
        RedisMode::Cluster => "SPUBLISH",
        RedisMode::Standalone | RedisMode::Sentinel => "PUBLISH",
    };
    format!("local publish = '{publish}'{PUBLISH_SCRIPT}")
}

/// How the Redis bus reaches Redis (SPEC §9), as `/health` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (`REDIS_URL` / `REDIS_HOST`).
    Standalone,
    /// The primary of a Sentinel-managed group (`REDIS_SENTINELS`).
    Sentinel,
    /// A Redis Cluster (`REDIS_CLUSTER_NODES`).
    Cluster,
}

impl RedisMode {
    /// `standalone`, `sentinel` or `cluster`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Sentinel => "sentinel",
            RedisMode::Cluster => "cluster",
        }
    }
}

/// Every key and channel name of one event channel, in one place. Standalone
/// and Sentinel keep SPEC §4's names (`<channel>`, `<channel>:history`,
/// `account:<id>`); on a Cluster everything sits under the hash tag
/// `{<channel>}` so the publish script touches one slot (SPEC §9):
/// `{<channel>}` (shard channel), `{<channel>}:history`, `{<channel>}:account:<id>`.
/// New per-channel keys (e.g. custom event ids) get a method here using `prefix`.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// Pub/sub (or shard) channel.
    channel: String,
    /// History stream.
    history: String,
    /// Prefix of every other key: empty, or `{<channel>}:` on a Cluster.
    prefix: String,
}

impl Keys {
    fn new(channel: &str, mode: RedisMode) -> Self {
        match mode {
            RedisMode::Cluster => Self {
                channel: format!("{{{channel}}}"),
                history: format!("{{{channel}}}:history"),
                prefix: format!("{{{channel}}}:"),
            },
            RedisMode::Standalone | RedisMode::Sentinel => Self {
                channel: channel.to_owned(),
                history: format!("{channel}:history"),
                prefix: String::new(),
            },
        }
    }

    /// The channel events are published on.
    pub(super) fn channel(&self) -> &str {
        &self.channel
    }

    /// The history stream.
    pub(super) fn history(&self) -> &str {
        &self.history
    }

    /// Hash from a publisher-supplied event id to its position (`<channel>:ids`).
    pub(super) fn supplied_ids(&self) -> String {
        format!("{}:ids", self.channel)
    }

    /// The same ids scored by position ms, for pruning (`<channel>:ids:order`).
    pub(super) fn supplied_order(&self) -> String {
        format!("{}:ids:order", self.channel)
    }

    /// The account's key (SPEC §4 `account:<id>`).
    pub(super) fn account(&self, id: uuid::Uuid) -> String {
        format!("{}account:{id}", self.prefix)
    }
}

/// The command connection: a [`ConnectionManager`] to one server (standalone,
/// or the current Sentinel primary), or a cluster connection that routes by
/// key and follows `MOVED`.
#[derive(Clone)]
pub(super) enum Commands {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Commands::Single(conn) => conn.req_packed_command(cmd),
            Commands::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Commands::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(conn) => conn.get_db(),
            Commands::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A usable connection to the current primary: commands, and for one server
/// the client that opens the subscriber's pub/sub connection (a Cluster
/// subscriber builds its own, see [`super::topology`]).
#[derive(Clone)]
pub(super) struct Connected {
    /// Shared by every request.
    pub(super) commands: Commands,
    /// Opens pub/sub connections to the same server; `None` on a Cluster.
    pub(super) pubsub: Option<redis::Client>,
}

/// Handle to Redis shared by routes and the subscriber. Cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where Redis is and how to find its primary.
    target: Target,
    /// Created by the subscriber on its first successful connection (so a
    /// POST cannot succeed before this instance is subscribed), then kept
    /// (the manager and the cluster connection reconnect by themselves) —
    /// except that a Sentinel switch drops it at once, so nothing more is
    /// written to the old primary, until the subscriber has found the new one.
    connected: RwLock<Option<Connected>>,
    /// `host:port` of the primary in use (for a Cluster: of the channel's slot),
    /// for `/health`; never holds a password.
    primary: RwLock<Option<String>>,
    /// Bumped on every primary switch; the subscriber reconnects when it changes.
    switches: watch::Sender<u64>,
    /// Set while the subscriber is subscribed and caught up (readiness).
    subscribed: AtomicBool,
    /// Every key and channel name.
    keys: Keys,
    /// `EVENT_HISTORY_LEN`.
    history_len: u64,
    /// `SERVER_ID`.
    server_id: String,
    /// `REDIS_MIN_REPLICAS_ACK` and `REDIS_REPLICAS_ACK_TIMEOUT_MS`.
    replicas_ack: Option<(u32, u64)>,
    /// The publish script; `invoke_async` sends `EVALSHA` and loads it once on `NOSCRIPT`.
    script: redis::Script,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel", &self.inner.keys.channel)
            .field("mode", &self.inner.target.mode())
            .field("subscribed", &self.inner.subscribed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// A bus for `target` (already validated by config). Connects nothing yet.
    /// `replicas_ack` is `REDIS_MIN_REPLICAS_ACK` (0 = off) and its timeout in ms.
    ///
    /// # Errors
    /// [`BusError::Redis`] if a URL does not parse.
    pub fn new(
        target: &crate::config::RedisTarget,
        channel: &str,
        history_len: u64,
        server_id: &str,
        replicas_ack: (u32, u64),
    ) -> Result<Self, BusError> {
        let target = Target::new(target)?;
        let mode = target.mode();
        Ok(Self {
            inner: Arc::new(Inner {
                primary: RwLock::new(target.fixed_primary()),
                target,
                connected: RwLock::new(None),
                switches: watch::Sender::new(0),
                subscribed: AtomicBool::new(false),
                keys: Keys::new(channel, mode),
                history_len,
                server_id: server_id.to_owned(),
                replicas_ack: (replicas_ack.0 > 0).then_some(replicas_ack),
                script: redis::Script::new(&publish_script(mode)),
            }),
        })
    }

    /// Standalone, Sentinel or Cluster.
    pub fn mode(&self) -> RedisMode {
        self.inner.target.mode()
    }

    /// `host:port` of the primary in use, if known (for a Cluster: the one
    /// owning the channel's slot). Never holds a password.
    pub fn primary(&self) -> Option<String> {
        self.inner
            .primary
            .read()
            .ok()
            .and_then(|primary| primary.clone())
    }

    pub(super) fn target(&self) -> &Target {
        &self.inner.target
    }

    pub(super) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Records the primary in use; a change from a known one is a failover:
    /// counted in `redis_failovers_total` and logged at `warn`.
    pub(super) fn set_primary(&self, primary: String) {
        let Ok(mut current) = self.inner.primary.write() else {
            return;
        };
        if current.as_deref() == Some(primary.as_str()) {
            return;
        }
        if let Some(old) = current.replace(primary.clone()) {
            metrics::counter!(crate::metrics::REDIS_FAILOVERS).increment(1);
            tracing::warn!(redis.mode = self.mode().as_str(), redis.old_primary = %old,
                redis.primary = %primary, server.id = self.server_id(),
                "redis primary switched from {old} to {primary}");
        }
    }

    /// Stops using the current connection at once (Sentinel: the primary
    /// changed, or answered `READONLY`) and tells the subscriber to
    /// reconnect; until it has, requests get `503`.
    pub(super) fn drop_connection(&self) {
        if let Ok(mut connected) = self.inner.connected.write() {
            *connected = None;
        }
        self.inner.switches.send_modify(|n| *n += 1);
    }

    /// Changes whenever the subscriber must reconnect to a new primary.
    pub(super) fn switches(&self) -> watch::Receiver<u64> {
        self.inner.switches.subscribe()
    }

    /// Starts the one subscriber task of this instance (SPEC §1), batching
    /// events within `batch_window` (`SSE_BATCH_WINDOW_MS`), and in Sentinel
    /// mode one `+switch-master` watcher per sentinel. They run until
    /// `shutdown` fires.
    pub fn spawn_subscriber(
        &self,
        hub: Hub,
        batch_window: Duration,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) {
        super::topology::spawn_sentinel_watchers(self, &shutdown, tracker);
        tracker.spawn(super::subscriber::run(
            self.clone(),
            hub,
            batch_window,
            shutdown,
        ));
    }

    /// `SERVER_ID` of this instance (for log fields).
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    pub(super) fn channel(&self) -> &str {
        &self.inner.keys.channel
    }

    pub(super) fn set_subscribed(&self, subscribed: bool) {
        self.inner.subscribed.store(subscribed, Ordering::Release);
        metrics::gauge!(crate::metrics::SUBSCRIBER_READY).set(f64::from(u8::from(subscribed)));
    }

    /// The connection to the current primary, creating it (and, for
    /// Sentinel, finding the primary) if there is none. Called by the
    /// subscriber only, so creation is never concurrent.
    pub(super) async fn connect(&self) -> Result<Connected, BusError> {
        if let Some(connected) = self.connected() {
            return Ok(connected);
        }
        let switches = *self.inner.switches.borrow();
        let (connected, primary) = self.inner.target.connect().await?;
        // A switch announced while connecting may have made this one stale.
        if *self.inner.switches.borrow() != switches {
            return Err(BusError::NotReady);
        }
        if let Some(primary) = primary {
            self.set_primary(primary);
        }
        if let Ok(mut slot) = self.inner.connected.write() {
            *slot = Some(connected.clone());
        }
        Ok(connected)
    }

    fn connected(&self) -> Option<Connected> {
        self.inner.connected.read().ok().and_then(|c| c.clone())
    }

    /// The command connection if the subscriber has created it.
    fn commands(&self) -> Result<Commands, BusError> {
        self.connected()
            .map(|c| c.commands)
            .ok_or(BusError::NotReady)
    }

    /// A failed write on a Sentinel primary: `READONLY` (it was demoted) or
    /// a refused/dropped connection (it died) means the primary may have
    /// changed, so stop using it and let the subscriber ask the sentinels.
    fn after_write_error(&self, err: &BusError) {
        if self.mode() != RedisMode::Sentinel {
            return;
        }
        if let BusError::Redis(err) = err {
            if err.code() == Some("READONLY")
                || err.is_connection_refusal()
                || err.is_connection_dropped()
            {
                tracing::warn!(error = %err, "redis primary refused a write; asking the sentinels for the primary");
                self.drop_connection();
            }
        }
    }

    /// `REDIS_MIN_REPLICAS_ACK`: `WAIT n timeout` on the connection that
    /// wrote (on a Cluster: routed to the slot's primary), so the answer
    /// counts replicas holding this write (Redis docs, `WAIT`).
    ///
    /// # Errors
    /// [`BusError::NotReplicated`] when fewer replicas acknowledged in time.
    async fn wait_for_replicas(&self, conn: &mut Commands) -> Result<(), BusError> {
        let Some((wanted, timeout_ms)) = self.inner.replicas_ack else {
            return Ok(());
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(timeout_ms);
        let acked: i64 = self.on_channel_slot(conn, wait).await?;
        if acked < i64::from(wanted) {
            return Err(BusError::NotReplicated {
                wanted,
                acked: acked.max(0).unsigned_abs(),
                timeout_ms,
            });
        }
        Ok(())
    }

    /// Runs a keyless command where the channel lives: on a Cluster, routed
    /// to the primary of the channel's slot (redis-rs would send `WAIT` or
    /// `PING` to every node).
    async fn on_channel_slot<T: redis::FromRedisValue>(
        &self,
        conn: &mut Commands,
        cmd: redis::Cmd,
    ) -> Result<T, BusError> {
        match conn {
            Commands::Single(conn) => timed(cmd.query_async(conn)).await,
            Commands::Cluster(conn) => {
                let route = redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(
                        redis::cluster_routing::Route::with_key(
                            self.inner.keys.history(),
                            redis::cluster_routing::SlotAddr::Master,
                        ),
                    ),
                );
                let value = timed(conn.route_command(cmd, route)).await?;
                Ok(redis::FromRedisValue::from_redis_value(value)
                    .map_err(redis::RedisError::from)?)
            }
        }
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
        let mut invocation = self.inner.script.key(keys.history());
        invocation
            .key(keys.supplied_ids())
            .key(keys.supplied_order());
        let (account_key, account_json) = account.unzip();
        if let Some(key) = account_key {
            invocation.key(key);
        }
        let supplied = update.and_then(|u| u.id.clone()).unwrap_or_default();
        let supplied_json = update.and_then(NewUpdate::id_json).unwrap_or_default();
        invocation
            .arg(self.inner.history_len)
            .arg(keys.channel())
            .arg(tail)
            .arg(supplied)
            .arg(supplied_json)
            .arg(account_json.unwrap_or_default());
        let written: Result<(String, i64), BusError> =
            timed(invocation.invoke_async(&mut conn)).await;
        if let Err(err) = &written {
            self.after_write_error(err);
        }
        let (position, _published) = written?;
        self.wait_for_replicas(&mut conn).await?;
        Ok(position)
    }

    /// The position of an event id: a supplied id (`HGET` of the id hash;
    /// whether it is still retained is checked by the history read that
    /// follows), else the id itself if it has the stream id form.
    pub(super) async fn resolve(&self, id: &str) -> Result<Option<EventId>, BusError> {
        let mut conn = self.commands()?;
        let known: Option<String> = timed(conn.hget(self.inner.keys.supplied_ids(), id)).await?;
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
        let key = self.inner.keys.history();
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
                .arg(self.inner.keys.history())
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
            Ok(mut conn) => self
                .on_channel_slot::<String>(&mut conn, redis::cmd("PING"))
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
