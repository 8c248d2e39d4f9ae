//! App instances: [`TestApp`] runs `sse_fanout::run` in-process on
//! `127.0.0.1:0` with its own shutdown token; [`ServerProcess`] runs the real
//! binary as a child process (for signals, exit codes and crashes).

use std::{
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use sse_fanout::config::Config;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// Path of the repo's `web/` directory.
pub fn web_dir() -> String {
    format!("{}/web", env!("CARGO_MANIFEST_DIR"))
}

/// One in-process instance.
#[derive(Debug)]
pub struct TestApp {
    /// Bound address.
    pub addr: SocketAddr,
    /// Cancels the instance (graceful shutdown).
    pub token: CancellationToken,
    uses_redis: bool,
    join: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts an instance with these flags on top of `--port 0` and the repo's
    /// `web/`; e.g. `&["--server-id", "backend-2", "--redis-url", &redis.url()]`.
    /// With a Redis URL it waits until `/health` is 200 (subscribed).
    pub async fn spawn(args: &[&str]) -> Self {
        let app = Self::spawn_unready(args).await;
        if app.uses_redis {
            app.wait_healthy().await;
        }
        app
    }

    /// Like [`spawn`](Self::spawn) but returns as soon as the instance is
    /// listening, without waiting for `/health`: for a Redis that is down at
    /// start-up.
    pub async fn spawn_unready(args: &[&str]) -> Self {
        Self::start("127.0.0.1:0".parse().unwrap(), args).await
    }

    /// Like [`spawn`](Self::spawn), but listening on `addr`: e.g. the address
    /// of an instance that was just shut down, to restart it "in place" so
    /// that clients reconnect to the same URL.
    pub async fn spawn_on(addr: SocketAddr, args: &[&str]) -> Self {
        let app = Self::start(addr, args).await;
        if app.uses_redis {
            app.wait_healthy().await;
        }
        app
    }

    /// Binds `addr` (retrying for up to 5 s while an old socket on that port
    /// is being released) and runs the instance on it.
    async fn start(addr: SocketAddr, args: &[&str]) -> Self {
        super::init_tracing();
        let web = web_dir();
        let mut all = vec![
            "sse-fanout",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--web-dir",
            &web,
        ];
        all.extend_from_slice(args);
        let config = Config::parse_from(all)
            .unwrap_or_else(|err| panic!("bad test config: {err:?}"))
            .config;
        let uses_redis = config.redis_target().is_some();
        let listener = super::eventually(
            Duration::from_secs(5),
            &format!("{addr} to be free for a new listener"),
            || async move { tokio::net::TcpListener::bind(addr).await.ok() },
        )
        .await;
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let join = tokio::spawn(sse_fanout::run(config, listener, token.clone()));
        Self {
            addr,
            token,
            uses_redis,
            join: Some(join),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits up to 10 s for `/health` to answer 200.
    pub async fn wait_healthy(&self) {
        wait_healthy(&self.base()).await;
    }

    /// Cancels and waits (≤ 15 s) for `run` to return.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(join) = self.join.take() {
            tokio::time::timeout(Duration::from_secs(15), join)
                .await
                .expect("instance did not stop within 15 s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Waits up to 10 s for `GET {base}/health` to answer 200.
pub async fn wait_healthy(base: &str) {
    let http = reqwest::Client::new();
    let url = format!("{base}/health");
    super::eventually(
        Duration::from_secs(10),
        &format!("{url} to answer 200"),
        || {
            let request = http.get(&url).send();
            async move { request.await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        },
    )
    .await;
}

/// The real `sse-fanout` binary as a child process, killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// Bound address, read from the "listening on" log line.
    pub addr: SocketAddr,
    /// Everything the process wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Runs the binary with `PORT=0`, plain logs, the repo as working
    /// directory, and these extra variables; returns once it listens.
    pub async fn spawn(env: &[(&str, &str)]) -> Self {
        Self::spawn_in(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), env).await
    }

    /// Like [`spawn`](Self::spawn), with `dir` as the working directory (e.g. an
    /// empty temp dir: nothing of the repository to lean on).
    pub async fn spawn_in(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sse-fanout"));
        command
            .current_dir(dir)
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("RUST_LOG", "info")
            .env_remove("REDIS_URL")
            .env_remove("REDIS_HOST")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let log_writer = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    if let (Some(tx), Ok(addr)) = (
                        addr_tx.take(),
                        // Text logs end the address at a space, JSON logs at a quote.
                        rest.split(|c: char| c.is_whitespace() || c == '"')
                            .next()
                            .unwrap_or("")
                            .parse(),
                    ) {
                        let _ = tx.send(addr);
                    }
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr: SocketAddr = match tokio::time::timeout(Duration::from_secs(20), addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!(
                "server did not log its address; log:\n{}",
                log.lock().unwrap()
            ),
        };
        Self { child, addr, log }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process already reaped")
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "server did not exit within {timeout:?}; log:\n{}",
                self.log.lock().unwrap()
            ),
        }
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}
