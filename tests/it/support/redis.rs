//! `TestRedis`: a private `redis-server` on a free port, killed on drop, and
//! restartable on the same port for outage tests.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A redis-server child process with no persistence.
#[derive(Debug)]
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Extra `redis-server` arguments (replication, cluster mode).
    extra: Vec<String>,
}

impl TestRedis {
    /// Starts `redis-server` (from `SSE_FANOUT_REDIS_SERVER` or `PATH`) on a
    /// free port and waits until it answers `PING`. Panics with the log if it
    /// does not: a missing redis-server is a setup error (scripts/test
    /// installs it), never a skipped test.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments
    /// (e.g. `--replicaof`, `--cluster-enabled yes`).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut redis = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|&a| a.to_owned()).collect(),
        };
        redis.spawn();
        redis
    }

    /// `127.0.0.1:<port>`, as Sentinel and Cluster settings name nodes.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether the process is still running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client for direct commands in assertions.
    pub fn client(&self) -> ::redis::Client {
        ::redis::Client::open(self.url()).unwrap()
    }

    /// A synchronous connection for quick assertions.
    pub fn conn(&self) -> ::redis::Connection {
        self.client().get_connection().unwrap()
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Its data is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port (after [`kill`](Self::kill)).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "kill() first");
        self.spawn();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let bin =
            std::env::var("SSE_FANOUT_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new(&bin)
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(&self.extra)
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--logfile")
                .arg(self.log_path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|err| {
                    panic!("failed to run {bin:?} (install redis-server; scripts/test does): {err}")
                });
            self.child = Some(child);
            // Ready when PING answers; a restart may find the port briefly busy.
            loop {
                if let Ok(mut conn) = self
                    .client()
                    .get_connection_with_timeout(Duration::from_millis(200))
                {
                    if ::redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                        return;
                    }
                }
                let exited = self
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                if exited || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill();
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!(
                    "redis-server on port {} did not start; log:\n{log}",
                    self.port
                );
            }
        }
    }
}

/// A free TCP port on 127.0.0.1 (bind-then-drop: another process could take
/// it in between, in which case the server's start fails loudly).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
