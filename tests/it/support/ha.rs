//! Highly available Redis for the HA tests (SPEC §9): [`TestSentinelGroup`]
//! (primary, replica, three `redis-sentinel`s with short timeouts) and
//! [`TestCluster`] (six `redis-server --cluster-enabled yes`, 3 primaries and
//! 3 replicas, joined with `redis-cli --cluster create`). Every wait has a
//! deadline; processes are killed and temp dirs removed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::redis::{free_port, TestRedis};

/// The master name the test sentinels monitor.
pub const MASTER: &str = "mymaster";

/// Deadline for a group or cluster to form.
const FORM: Duration = Duration::from_secs(30);

/// Polls `check` (blocking) every 50 ms until it returns `Some`, or panics
/// after `timeout` naming `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One command on a fresh connection to `addr` (`host:port`), or `None` if
/// the node cannot be reached or refuses it.
pub fn query<T: ::redis::FromRedisValue>(addr: &str, cmd: &::redis::Cmd) -> Option<T> {
    let client = ::redis::Client::open(format!("redis://{addr}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    cmd.query(&mut conn).ok()
}

/// A field of `INFO <section>` on `addr`.
pub fn info_field(addr: &str, section: &str, field: &str) -> Option<String> {
    let info: String = query(addr, ::redis::cmd("INFO").arg(section))?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// A `redis-sentinel` child process.
#[derive(Debug)]
pub struct TestSentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TestSentinel {
    fn start(primary_port: u16) -> Self {
        Self::start_with(primary_port, "")
    }

    /// A sentinel monitoring [`MASTER`] at `primary_port`, with `extra`
    /// lines appended to its config (e.g. `sentinel config-epoch …`).
    pub fn start_with(primary_port: u16, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf: PathBuf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n\
                 sentinel parallel-syncs {MASTER} 1\n{extra}",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("failed to run redis-sentinel (scripts/test installs it): {err}")
            });
        let sentinel = Self {
            child,
            port,
            _dir: dir,
        };
        wait_for(FORM, "redis-sentinel to answer PING", || {
            query::<String>(&sentinel.addr(), &::redis::cmd("PING"))
        });
        sentinel
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The last `lines` lines of this sentinel's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let log =
            std::fs::read_to_string(self._dir.path().join("sentinel.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME`: the primary this sentinel names.
    pub fn primary(&self) -> Option<String> {
        let (host, port): (String, String) = query(
            &self.addr(),
            ::redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER),
        )?;
        Some(format!("{host}:{port}"))
    }
}

impl Drop for TestSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, one replica and three sentinels (quorum 2) with a 1 s
/// `down-after-milliseconds`.
#[derive(Debug)]
pub struct TestSentinelGroup {
    /// The servers; `servers[0]` starts as primary, `servers[1]` as replica.
    pub servers: Vec<TestRedis>,
    /// The sentinels.
    pub sentinels: Vec<TestSentinel>,
}

impl TestSentinelGroup {
    /// Starts the group and waits until the replica is in sync and every
    /// sentinel knows the replica and the other two sentinels.
    pub fn start() -> Self {
        let primary = TestRedis::start();
        let port = primary.port().to_string();
        let replica = TestRedis::start_with(&["--replicaof", "127.0.0.1", &port]);
        wait_for(FORM, "the replica to sync", || {
            (info_field(&replica.addr(), "replication", "master_link_status")? == "up")
                .then_some(())
        });
        let sentinels: Vec<_> = (0..3)
            .map(|_| TestSentinel::start(primary.port()))
            .collect();
        for sentinel in &sentinels {
            wait_for(
                FORM,
                "each sentinel to see the replica and its peers",
                || {
                    let replicas: Vec<::redis::Value> = query(
                        &sentinel.addr(),
                        ::redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER),
                    )?;
                    let peers: Vec<::redis::Value> = query(
                        &sentinel.addr(),
                        ::redis::cmd("SENTINEL").arg("SENTINELS").arg(MASTER),
                    )?;
                    (replicas.len() == 1 && peers.len() == 2).then_some(())
                },
            );
        }
        Self {
            servers: vec![primary, replica],
            sentinels,
        }
    }

    /// What happened, for failure messages: each sentinel's last log lines.
    pub fn sentinel_logs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("--- sentinel {} ---\n{}", s.addr(), s.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `host:port,…` of the sentinels, for `REDIS_SENTINELS`.
    pub fn sentinels_setting(&self) -> String {
        self.sentinels
            .iter()
            .map(TestSentinel::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server every sentinel names as primary (waits until they agree).
    pub fn primary(&self) -> String {
        wait_for(FORM, "the sentinels to agree on a primary", || {
            let first = self.sentinels[0].primary()?;
            self.sentinels
                .iter()
                .all(|s| s.primary().as_deref() == Some(first.as_str()))
                .then_some(first)
        })
    }

    /// Index in `servers` of the server at `addr`.
    pub fn index_of(&self, addr: &str) -> usize {
        self.servers
            .iter()
            .position(|s| s.addr() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a server of the group"))
    }

    /// `SENTINEL FAILOVER` (graceful), repeated every 3 s while the sentinels
    /// refuse it (`NOGOODSLAVE` until they have seen the replica's state,
    /// nothing at all in TILT mode, which a loaded machine triggers), until
    /// a new primary serves. Returns it and when the accepted command was sent.
    pub fn failover(&self, old: &str, timeout: Duration) -> (String, Instant) {
        let mut accepted: Option<Instant> = None;
        let mut last_try: Option<Instant> = None;
        let new = wait_for(timeout, "SENTINEL FAILOVER to promote the replica", || {
            let named = self.sentinels[0].primary()?;
            if named == old && last_try.is_none_or(|t| t.elapsed() > Duration::from_secs(3)) {
                let sent = Instant::now();
                let reply: Option<String> = query(
                    &self.sentinels[0].addr(),
                    ::redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER),
                );
                last_try = Some(sent);
                if reply.is_some() {
                    accepted = Some(sent);
                }
            }
            let role: Vec<::redis::Value> = query(&named, &::redis::cmd("ROLE"))?;
            let is_master = role.first().is_some_and(|r| {
                ::redis::from_redis_value_ref::<String>(r).ok().as_deref() == Some("master")
            });
            (named != old && is_master).then_some(named)
        });
        (new, accepted.unwrap_or_else(Instant::now))
    }

    /// Waits until every sentinel names a primary other than `old`, and that
    /// server says it is one (`ROLE` master); returns it.
    pub fn wait_new_primary(&self, old: &str, timeout: Duration) -> String {
        wait_for(timeout, "the sentinels to promote a new primary", || {
            let primary = self.primary();
            let role: Vec<::redis::Value> = query(&primary, &::redis::cmd("ROLE"))?;
            let is_master = role.first().is_some_and(|r| {
                ::redis::from_redis_value_ref::<String>(r).ok().as_deref() == Some("master")
            });
            (primary != old && is_master).then_some(primary)
        })
    }
}

/// Six cluster nodes, 3 primaries with one replica each, node timeout 1500 ms.
#[derive(Debug)]
pub struct TestCluster {
    /// The nodes.
    pub nodes: Vec<TestRedis>,
}

impl TestCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create
    /// --cluster-replicas 1`, and waits for `cluster_state:ok` on all.
    pub fn start() -> Self {
        let nodes: Vec<_> = (0..6)
            .map(|_| {
                TestRedis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1500",
                ])
            })
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(TestRedis::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            wait_for(
                FORM,
                "cluster_state:ok on every node, replicas in sync",
                || {
                    let ok = info_cluster(&node.addr())?.contains("cluster_state:ok");
                    let synced = info_field(&node.addr(), "replication", "role")? == "master"
                        || info_field(&node.addr(), "replication", "master_link_status")? == "up";
                    let nodes: String = query(&node.addr(), ::redis::cmd("CLUSTER").arg("NODES"))?;
                    let replicas = nodes.lines().filter(|l| l.contains("slave")).count();
                    (ok && synced && replicas == 3).then_some(())
                },
            );
        }
        cluster
    }

    /// `host:port,…` of every node, for `REDIS_CLUSTER_NODES`.
    pub fn nodes_setting(&self) -> String {
        self.nodes
            .iter()
            .map(TestRedis::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A running node to ask.
    fn any(&self) -> String {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .map(TestRedis::addr)
            .unwrap()
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> i64 {
        query(&self.any(), ::redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).unwrap()
    }

    /// `(primary, replicas)` owning `slot`, from a running node's `CLUSTER
    /// NODES` (only nodes not flagged `fail`).
    pub fn slot_owner(&self, slot: i64) -> (String, Vec<String>) {
        self.try_slot_owner(slot)
            .unwrap_or_else(|| panic!("no healthy primary owns slot {slot}"))
    }

    /// [`slot_owner`](Self::slot_owner), or `None` while no healthy primary owns it.
    pub fn try_slot_owner(&self, slot: i64) -> Option<(String, Vec<String>)> {
        let text: String = query(&self.any(), ::redis::cmd("CLUSTER").arg("NODES"))?;
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split(' ').collect())
            .filter(|f: &Vec<&str>| f.len() >= 8)
            .collect();
        let addr = |f: &[&str]| f[1].split('@').next().unwrap().to_owned();
        let owner = lines.iter().find(|f| {
            f[2].contains("master")
                && !f[2].contains("fail")
                && f[8..].iter().any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    match (a.parse::<i64>(), b.parse::<i64>()) {
                        (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                        _ => false,
                    }
                })
        })?;
        let replicas = lines
            .iter()
            .filter(|f| f[3] == owner[0] && !f[2].contains("fail"))
            .map(|f| addr(f))
            .collect();
        Some((addr(owner), replicas))
    }

    /// The node at `addr`.
    pub fn node_mut(&mut self, addr: &str) -> &mut TestRedis {
        self.nodes
            .iter_mut()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a node"))
    }

    /// Waits until every running node reports `cluster_state:ok` and names a
    /// primary other than `old` for `slot`; returns it.
    pub fn wait_new_owner(&self, slot: i64, old: &str, timeout: Duration) -> String {
        wait_for(timeout, "a replica to take over the slot", || {
            let ok =
                self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                    info_cluster(&n.addr()).is_some_and(|i| i.contains("cluster_state:ok"))
                });
            let (owner, _) = self.try_slot_owner(slot)?;
            (ok && owner != old).then_some(owner)
        })
    }
}

/// `CLUSTER INFO` on `addr`.
fn info_cluster(addr: &str) -> Option<String> {
    query(addr, ::redis::cmd("CLUSTER").arg("INFO"))
}
