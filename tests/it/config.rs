//! Configuration through the real binary (SPEC §2): `--help` lists every
//! setting with its default; a bad value exits 2 with one stderr line naming
//! the variable and the value; `.env` in the working directory is read and
//! real environment variables win over it; `LOG_FORMAT=json` logs JSON lines.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// The binary with an empty environment (so the test's own variables do not
/// leak in) and `dir` as working directory (so no repo `.env` is read).
fn binary(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sse-fanout"));
    command
        .env_clear()
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs to completion (≤ 10 s); returns `(exit code, stdout, stderr)`.
async fn run(mut command: Command) -> (Option<i32>, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .expect("the binary did not exit within 10 s (did it start serving?)")
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Every variable of SPEC §2 and its default (`None`: unset by default).
pub(crate) const SETTINGS: &[(&str, Option<&str>)] = &[
    ("SERVER_ID", Some("backend-1")),
    ("HOST", Some("0.0.0.0")),
    ("PORT", Some("3000")),
    ("REDIS_URL", None),
    ("REDIS_HOST", None),
    ("REDIS_PORT", Some("6379")),
    ("REDIS_PASSWORD", None),
    ("EVENTS_CHANNEL", Some("user-events")),
    ("SSE_KEEPALIVE_SECS", Some("15")),
    ("SSE_RETRY_MS", Some("3000")),
    ("EVENT_HISTORY_LEN", Some("10000")),
    ("MAX_SSE_CLIENTS", Some("50000")),
    ("MAX_BODY_BYTES", Some("16384")),
    ("CORS_ALLOWED_ORIGINS", None),
    ("SHUTDOWN_GRACE_SECS", Some("10")),
    ("LOG_FORMAT", Some("text")),
    // SPEC §8.4.
    ("MERCURE_PUBLISHER_JWT_KEY", None),
    ("MERCURE_PUBLISHER_JWT_ALG", Some("HS256")),
    ("MERCURE_SUBSCRIBER_JWT_KEY", None),
    ("MERCURE_SUBSCRIBER_JWT_ALG", Some("HS256")),
    ("MERCURE_ANONYMOUS", Some("true")),
    ("MERCURE_PUBLISH_ORIGINS", None),
];

/// `--help` exits 0 and lists every SPEC §2 variable with its default.
#[tokio::test]
async fn help_lists_every_setting_with_its_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = binary(dir.path());
    command.arg("--help");
    let (code, stdout, stderr) = run(command).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    for (var, default) in SETTINGS {
        // clap prints `[env: VAR=]` (or `[env: VAR]` for hidden values) in
        // the option's block, followed by `[default: …]`.
        let at = stdout
            .find(&format!("[env: {var}="))
            .or_else(|| stdout.find(&format!("[env: {var}]")))
            .unwrap_or_else(|| panic!("--help does not list {var}:\n{stdout}"));
        let block_end = stdout[at..].find("\n\n").map_or(stdout.len(), |i| at + i);
        let block = &stdout[at..block_end];
        match default {
            Some(default) => assert!(
                block.contains(&format!("[default: {default}]")),
                "{var}: default {default} not shown: {block:?}"
            ),
            None => assert!(!block.contains("[default:"), "{var}: {block:?}"),
        }
    }
}

/// A bad value: exit status 2, exactly one stderr line naming the variable
/// and the value, nothing on stdout.
#[tokio::test]
async fn bad_values_exit_2_with_one_line_naming_variable_and_value() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("LOG_FORMAT", "xml"),
        ("REDIS_URL", "http://x"),
        ("SSE_KEEPALIVE_SECS", "0"),
        ("MAX_BODY_BYTES", "lots"),
        ("HOST", "not-an-address"),
        ("MERCURE_PUBLISHER_JWT_ALG", "XX999"),
        ("MERCURE_SUBSCRIBER_JWT_ALG", "none"),
        ("MERCURE_ANONYMOUS", "maybe"),
        ("MERCURE_PUBLISH_ORIGINS", "evil"),
    ] {
        let mut command = binary(dir.path());
        command.env(var, value);
        let (code, stdout, stderr) = run(command).await;
        assert_eq!(code, Some(2), "{var}={value}: stderr {stderr:?}");
        assert_eq!(stdout, "", "{var}={value}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{var}={value}: one line expected: {stderr:?}"
        );
        assert!(stderr.ends_with('\n'), "{stderr:?}");
        assert!(
            stderr.contains(var) && stderr.contains(value),
            "{var}={value}: the line must name both: {stderr:?}"
        );
    }
}

/// A key that does not parse for its algorithm is bad configuration too; the
/// line names the variable but never shows the key (it is a secret).
#[tokio::test]
async fn unusable_jwt_key_exits_2_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = binary(dir.path());
    command
        .env("MERCURE_SUBSCRIBER_JWT_KEY", "secret-not-a-pem")
        .env("MERCURE_SUBSCRIBER_JWT_ALG", "RS256");
    let (code, stdout, stderr) = run(command).await;
    assert_eq!(code, Some(2), "stderr: {stderr:?}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("MERCURE_SUBSCRIBER_JWT_KEY"), "{stderr:?}");
    assert!(!stderr.contains("secret-not-a-pem"), "{stderr:?}");
}

/// A started binary whose stderr lines arrive on a channel.
struct Started {
    _child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Started {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _child: child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one contains `needle` (≤ 10 s); returns that line.
    async fn line_containing(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                _ => panic!("no stderr line with {needle:?}; got {:#?}", self.seen),
            }
        }
    }

    /// Waits for `listening on http://<addr>` and returns the address.
    async fn listening(&mut self) -> SocketAddr {
        let line = self.line_containing("listening on http://").await;
        let rest = line.split("listening on http://").nth(1).unwrap();
        let addr: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        addr.parse()
            .unwrap_or_else(|err| panic!("{addr:?} in {line:?}: {err}"))
    }
}

/// `.env` in the working directory is read, and a real variable wins over it.
#[tokio::test]
async fn dotenv_file_is_read_and_real_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "PORT=abc\nSERVER_ID=from-dotenv\nHOST=127.0.0.1\n",
    )
    .unwrap();

    // Only the .env file sets PORT: its bad value is reported.
    let (code, _, stderr) = run(binary(dir.path())).await;
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("PORT") && stderr.contains("abc"),
        "{stderr}"
    );

    // The real PORT=0 wins over .env's PORT=abc; .env's SERVER_ID still applies.
    let mut command = binary(dir.path());
    command.env("PORT", "0");
    let mut server = Started::spawn(command);
    let addr = server.listening().await;
    assert!(addr.ip().is_loopback(), "HOST from .env: {addr}");
    let health: Value = reqwest::get(format!("http://{addr}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["serverId"], "from-dotenv", "{health}");
    assert_eq!(health["bus"], "memory", "{health}");
}

/// `LOG_FORMAT=json`: every stderr line is a JSON object, from start-up to
/// request logs.
#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = binary(dir.path());
    command
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    let mut server = Started::spawn(command);
    let addr = server.listening().await;
    let http = reqwest::Client::new();
    let (status, account) =
        crate::support::post_account(&http, &format!("http://{addr}"), "logged", 1).await;
    assert_eq!(status, 201);
    let id = account["id"].as_str().unwrap();
    server.line_containing(id).await;
    assert!(server.seen.len() >= 2, "{:#?}", server.seen);
    for line in &server.seen {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line:?}"));
        assert!(value.is_object(), "{line}");
        assert!(value["level"].is_string(), "{line}");
    }
    let listening: Value = serde_json::from_str(
        server
            .seen
            .iter()
            .find(|l| l.contains("listening on"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        listening["message"],
        format!("listening on http://{addr}"),
        "{listening}"
    );
}

/// The seed-compatible `REDIS_HOST`/`REDIS_PORT` select the Redis bus when
/// `REDIS_URL` is unset; `REDIS_URL` wins when both are set.
#[tokio::test]
async fn redis_host_and_port_select_the_redis_bus_unless_redis_url_is_set() {
    let redis = crate::support::TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let port = redis.port().to_string();
    let url = redis.url();
    for env in [
        vec![("REDIS_HOST", "127.0.0.1"), ("REDIS_PORT", port.as_str())],
        // A REDIS_HOST that cannot resolve is ignored when REDIS_URL is set.
        vec![
            ("REDIS_URL", url.as_str()),
            ("REDIS_HOST", "no-such-host.invalid"),
        ],
    ] {
        let mut command = binary(dir.path());
        command
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .envs(env.iter().copied());
        let mut server = Started::spawn(command);
        let base = format!("http://{}", server.listening().await);
        crate::support::app::wait_healthy(&base).await;
        let health: Value = reqwest::get(format!("{base}/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["bus"], "redis", "{env:?}: {health}");
        assert_eq!(health["redis"], "up", "{env:?}: {health}");
    }
}
