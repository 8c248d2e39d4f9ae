//! Where the primary is and how to follow it (SPEC §9): one server, a
//! Sentinel-managed primary (found with `SENTINEL GET-MASTER-ADDR-BY-NAME`,
//! followed through the sentinels' `+switch-master`), or a Redis Cluster
//! (redis-rs `cluster-async`, RESP3, the subscriber on `SSUBSCRIBE`).

use std::{pin::Pin, time::Duration};

use futures_util::{Stream, StreamExt};
use redis::{cluster::ClusterClient, PushKind};
use tokio_util::sync::CancellationToken;

use super::{
    redis::{timed, Commands, Connected, RedisBus, RedisMode, COMMAND_TIMEOUT_MS},
    BusError,
};
use crate::config::{redis_node_url, RedisTarget};

/// The subscriber's stream of channel messages; it ends when the
/// subscription is lost (connection closed, `sunsubscribe`, failed probe).
pub(super) type Messages = Pin<Box<dyn Stream<Item = redis::Msg> + Send>>;

/// How often a Cluster subscriber sends a command to the channel's slot:
/// redis-rs refreshes its slot map only when a command fails, so an
/// instance that never publishes would otherwise not notice a failover.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Reconnect delays of a sentinel watcher: first, and cap.
const WATCH_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The deployment, with what it takes to connect.
pub(crate) enum Target {
    /// One server.
    Standalone(redis::Client),
    /// A Sentinel-managed group.
    Sentinel(Sentinel),
    /// A Redis Cluster.
    Cluster(Cluster),
}

/// Sentinels and the master they monitor.
pub(crate) struct Sentinel {
    /// One client per sentinel (with `REDIS_SENTINEL_PASSWORD`).
    sentinels: Vec<redis::Client>,
    /// `REDIS_SENTINEL_MASTER`.
    master: String,
    /// `REDIS_PASSWORD` of the data nodes.
    password: Option<String>,
}

/// Seed nodes of a Redis Cluster.
pub(crate) struct Cluster {
    /// Seed node URLs (without password).
    nodes: Vec<String>,
    /// `REDIS_PASSWORD`.
    password: Option<String>,
}

impl Target {
    pub(super) fn new(target: &RedisTarget) -> Result<Self, BusError> {
        Ok(match target {
            RedisTarget::Standalone { url } => {
                Target::Standalone(redis::Client::open(url.as_str())?)
            }
            RedisTarget::Sentinel {
                sentinels,
                master,
                sentinel_password,
                password,
            } => Target::Sentinel(Sentinel {
                sentinels: sentinels
                    .iter()
                    .map(|(host, port)| {
                        redis::Client::open(redis_node_url(
                            host,
                            *port,
                            sentinel_password.as_deref(),
                        ))
                    })
                    .collect::<Result<_, _>>()?,
                master: master.clone(),
                password: password.clone(),
            }),
            RedisTarget::Cluster { nodes, password } => Target::Cluster(Cluster {
                nodes: nodes
                    .iter()
                    .map(|(host, port)| redis_node_url(host, *port, None))
                    .collect(),
                password: password.clone(),
            }),
        })
    }

    pub(super) fn mode(&self) -> RedisMode {
        match self {
            Target::Standalone(_) => RedisMode::Standalone,
            Target::Sentinel(_) => RedisMode::Sentinel,
            Target::Cluster(_) => RedisMode::Cluster,
        }
    }

    /// The primary known before connecting: a standalone server's address.
    pub(super) fn fixed_primary(&self) -> Option<String> {
        match self {
            Target::Standalone(client) => Some(client.get_connection_info().addr().to_string()),
            Target::Sentinel(_) | Target::Cluster(_) => None,
        }
    }

    /// A new connection to the current primary, and its `host:port` when
    /// found at run time (Sentinel).
    pub(super) async fn connect(&self) -> Result<(Connected, Option<String>), BusError> {
        match self {
            Target::Standalone(client) => Ok((
                Connected {
                    commands: Commands::Single(
                        timed(client.get_connection_manager_with_config(manager_config())).await?,
                    ),
                    pubsub: Some(client.clone()),
                },
                None,
            )),
            Target::Sentinel(sentinel) => {
                let (host, port) = sentinel.primary().await?;
                let client =
                    redis::Client::open(redis_node_url(&host, port, sentinel.password.as_deref()))?;
                let mut commands =
                    timed(client.get_connection_manager_with_config(manager_config())).await?;
                // A sentinel that has not yet seen a failover may name a demoted server.
                let role: Vec<redis::Value> =
                    timed(redis::cmd("ROLE").query_async(&mut commands)).await?;
                let role = role
                    .into_iter()
                    .next()
                    .map(redis::from_redis_value::<String>)
                    .transpose()
                    .map_err(redis::RedisError::from)?;
                if role.as_deref() != Some("master") {
                    return Err(BusError::NotPrimary(format!("{host}:{port}")));
                }
                Ok((
                    Connected {
                        commands: Commands::Single(commands),
                        pubsub: Some(client),
                    },
                    Some(format!("{host}:{port}")),
                ))
            }
            Target::Cluster(cluster) => {
                let conn = timed(cluster.builder().build()?.get_async_connection()).await?;
                Ok((
                    Connected {
                        commands: Commands::Cluster(conn),
                        pubsub: None,
                    },
                    None,
                ))
            }
        }
    }
}

/// Settings of a command [`redis::aio::ConnectionManager`]: short connect
/// and response timeouts so a POST fails fast while Redis is away.
fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(1000)))
        .set_response_timeout(Some(Duration::from_millis(COMMAND_TIMEOUT_MS)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

impl Sentinel {
    /// The master's address by the sentinel with the highest configuration
    /// epoch. Every sentinel is asked at once (`SENTINEL MASTER <name>`:
    /// `ip`, `port`, `config-epoch`; Redis docs, "Sentinel API"): right after
    /// a failover the sentinels that have not heard of it yet still name the
    /// old primary, which may already be back, empty, answering `ROLE` as a
    /// master; the first answer would send writes there to be thrown away.
    /// Unreachable sentinels are skipped; each answer is bounded by the
    /// command timeout.
    ///
    /// # Errors
    /// The last error when no sentinel answered; [`BusError::NotPrimary`]
    /// when none knows the master.
    async fn primary(&self) -> Result<(String, u16), BusError> {
        let answers =
            futures_util::future::join_all(self.sentinels.iter().map(|s| self.ask(s))).await;
        let mut newest: Option<(u64, String, u16)> = None;
        let mut last = BusError::NotReady;
        for answer in answers {
            match answer {
                Ok(found) => {
                    if newest.as_ref().is_none_or(|(epoch, ..)| found.0 > *epoch) {
                        newest = Some(found);
                    }
                }
                Err(err) => last = err,
            }
        }
        newest.map(|(_, host, port)| (host, port)).ok_or(last)
    }

    /// One sentinel's view of the master: (config epoch, host, port).
    async fn ask(&self, sentinel: &redis::Client) -> Result<(u64, String, u16), BusError> {
        let fields = timed(async {
            let mut conn = sentinel.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(&self.master)
                .query_async::<std::collections::HashMap<String, String>>(&mut conn)
                .await
        })
        .await
        .map_err(|err| match err {
            // An error reply: "ERR No such master with that name".
            BusError::Redis(e) if e.code().is_some() => {
                BusError::NotPrimary(format!("no master named {:?}", self.master))
            }
            other => other,
        })?;
        let field = |name: &str| {
            fields.get(name).ok_or_else(|| {
                BusError::NotPrimary(format!("SENTINEL MASTER answered without {name:?}"))
            })
        };
        let host = field("ip")?.clone();
        let port = field("port")?;
        let port = port
            .parse()
            .map_err(|_| BusError::NotPrimary(format!("SENTINEL MASTER port {port:?}")))?;
        let epoch = field("config-epoch")?.parse().unwrap_or(0);
        Ok((epoch, host, port))
    }
}

impl Cluster {
    /// A client builder: RESP3 (needed for `SSUBSCRIBE` pushes), short timeouts.
    fn builder(&self) -> redis::cluster::ClusterClientBuilder {
        let mut builder = ClusterClient::builder(self.nodes.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(Duration::from_millis(1000))
            .response_timeout(Duration::from_millis(COMMAND_TIMEOUT_MS));
        if let Some(password) = &self.password {
            builder = builder.password(password.clone());
        }
        builder
    }
}

/// Subscribes to the channel on `connected`'s server (`SUBSCRIBE`), or on a
/// Cluster to the shard channel with its own connection (`SSUBSCRIBE`).
pub(super) async fn subscribe(bus: &RedisBus, connected: &Connected) -> Result<Messages, BusError> {
    match (&connected.pubsub, bus.target()) {
        (Some(client), _) => {
            let mut pubsub = timed(client.get_async_pubsub()).await?;
            timed(pubsub.subscribe(bus.channel())).await?;
            Ok(Box::pin(pubsub.into_on_message()))
        }
        (None, Target::Cluster(cluster)) => subscribe_cluster(bus, cluster).await,
        (None, _) => Err(BusError::NotReady),
    }
}

/// The Cluster subscriber: a fresh cluster connection whose RESP3 pushes go
/// to a channel, `SSUBSCRIBE`d to the shard channel. The stream ends on
/// `sunsubscribe` (failover or slot migration: redis-rs would silently drop
/// the subscription), on a disconnection, or when the periodic probe of the
/// channel's slot fails; the subscriber then subscribes again and fills the
/// gap from history.
async fn subscribe_cluster(bus: &RedisBus, cluster: &Cluster) -> Result<Messages, BusError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = cluster.builder().push_sender(tx).build()?;
    let mut conn = timed(client.get_async_connection()).await?;
    timed(conn.ssubscribe(bus.channel())).await?;
    if let Some(primary) = slot_primary(&mut conn, bus.keys().history()).await? {
        bus.set_primary(primary);
    }
    let history = bus.keys().history().to_owned();
    Ok(Box::pin(async_stream::stream! {
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        loop {
            tokio::select! {
                push = rx.recv() => {
                    let Some(push) = push else { break };
                    match push.kind {
                        PushKind::SMessage => {
                            if let Some(msg) = redis::Msg::from_push_info(push) {
                                yield msg;
                            }
                        }
                        PushKind::SUnsubscribe | PushKind::Disconnection => {
                            tracing::warn!(push = %push.kind, "redis cluster ended the shard-channel subscription; subscribing again");
                            break;
                        }
                        _ => {}
                    }
                }
                _ = probe.tick() => {
                    let probed: Result<bool, BusError> =
                        timed(redis::cmd("EXISTS").arg(&history).query_async(&mut conn)).await;
                    if let Err(err) = probed {
                        tracing::warn!(error = %err, "probe of the channel's slot failed; subscribing again");
                        break;
                    }
                }
            }
        }
    }))
}

/// `host:port` of the primary owning `key`'s slot, from `CLUSTER SLOTS`
/// (entries `[start, end, [host, port, id…], replicas…]`).
async fn slot_primary(
    conn: &mut redis::cluster_async::ClusterConnection,
    key: &str,
) -> Result<Option<String>, BusError> {
    let slot: i64 = timed(
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(conn),
    )
    .await?;
    let ranges: Vec<Vec<redis::Value>> =
        timed(redis::cmd("CLUSTER").arg("SLOTS").query_async(conn)).await?;
    for range in ranges {
        let mut fields = range.into_iter();
        let (Some(start), Some(end), Some(primary)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let start: i64 = redis::from_redis_value(start).map_err(redis::RedisError::from)?;
        let end: i64 = redis::from_redis_value(end).map_err(redis::RedisError::from)?;
        if (start..=end).contains(&slot) {
            let node: Vec<redis::Value> =
                redis::from_redis_value(primary).map_err(redis::RedisError::from)?;
            let mut node = node.into_iter();
            if let (Some(host), Some(port)) = (node.next(), node.next()) {
                let host: String =
                    redis::from_redis_value(host).map_err(redis::RedisError::from)?;
                let port: u16 = redis::from_redis_value(port).map_err(redis::RedisError::from)?;
                return Ok(Some(format!("{host}:{port}")));
            }
        }
    }
    Ok(None)
}

/// Starts one task per sentinel that listens for `+switch-master` (Sentinel
/// docs, "Pub/Sub messages") and, for our master, makes the bus stop using
/// the old primary at once and the subscriber reconnect to the new one.
pub(super) fn spawn_sentinel_watchers(
    bus: &RedisBus,
    shutdown: &CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    let Target::Sentinel(sentinel) = bus.target() else {
        return;
    };
    for client in &sentinel.sentinels {
        tracker.spawn(watch_sentinel(
            bus.clone(),
            client.clone(),
            sentinel.master.clone(),
            shutdown.clone(),
        ));
    }
}

/// One sentinel's `+switch-master` feed, reconnecting with capped backoff.
async fn watch_sentinel(
    bus: RedisBus,
    client: redis::Client,
    master: String,
    shutdown: CancellationToken,
) {
    let sentinel = client.get_connection_info().addr().to_string();
    let mut backoff = WATCH_BACKOFF.0;
    loop {
        let subscribed = tokio::select! {
            () = shutdown.cancelled() => return,
            subscribed = async {
                let mut pubsub = timed(client.get_async_pubsub()).await?;
                timed(pubsub.subscribe("+switch-master")).await?;
                Ok::<_, BusError>(pubsub)
            } => subscribed,
        };
        match subscribed {
            Ok(pubsub) => {
                backoff = WATCH_BACKOFF.0;
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        () = shutdown.cancelled() => return,
                        msg = messages.next() => msg,
                    };
                    let Some(msg) = msg else { break };
                    // `<master-name> <old-ip> <old-port> <new-ip> <new-port>`
                    let text: String = msg.get_payload().unwrap_or_default();
                    let fields: Vec<&str> = text.split(' ').collect();
                    if let [name, _, _, host, port] = fields[..] {
                        if name == master {
                            follow_switch(&bus, format!("{host}:{port}"), &sentinel);
                        }
                    }
                }
                tracing::debug!(sentinel = %sentinel, "lost the sentinel connection; reconnecting");
            }
            Err(err) => {
                tracing::debug!(sentinel = %sentinel, error = %err, "cannot subscribe to the sentinel")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(WATCH_BACKOFF.1);
    }
}

/// A `+switch-master` for our master: unless already there, switch now.
fn follow_switch(bus: &RedisBus, primary: String, sentinel: &str) {
    if bus.primary().as_deref() == Some(primary.as_str()) {
        return;
    }
    tracing::info!(sentinel = %sentinel, redis.primary = %primary, "+switch-master: following the new primary");
    bus.set_primary(primary);
    bus.drop_connection();
}
