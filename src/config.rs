//! Settings (SPEC §2): parsed from flags and the environment by clap, after a
//! `.env` file is loaded by dotenvy. Owns validation; does no other I/O.

use std::{net::IpAddr, time::Duration};

use clap::{error::ContextKind, CommandFactory, Parser, Subcommand};

/// Default `SERVER_ID`.
pub const DEFAULT_SERVER_ID: &str = "backend-1";
/// Default `PORT`.
pub const DEFAULT_PORT: u16 = 3000;
/// Default `EVENTS_CHANNEL`: the Redis pub/sub channel of the original system.
pub const DEFAULT_EVENTS_CHANNEL: &str = "user-events";
/// Default `SSE_KEEPALIVE_SECS`, in seconds: the original system's 15 s.
pub const DEFAULT_SSE_KEEPALIVE_SECS: u64 = 15;
/// Default `SSE_RETRY_MS`, in milliseconds.
pub const DEFAULT_SSE_RETRY_MS: u64 = 3000;
/// Default `EVENT_HISTORY_LEN`, in events.
pub const DEFAULT_EVENT_HISTORY_LEN: u64 = 10_000;
/// Default `MAX_SSE_CLIENTS`, per instance.
pub const DEFAULT_MAX_SSE_CLIENTS: usize = 50_000;
/// Default `MAX_BODY_BYTES`, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16_384;
/// Default `SHUTDOWN_GRACE_SECS`, in seconds.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Default `SSE_SEND_TIMEOUT_SECS`, in seconds.
pub const DEFAULT_SSE_SEND_TIMEOUT_SECS: u64 = 30;
/// Default `REQUEST_TIMEOUT_SECS`, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 10;
/// Default `SSE_BATCH_WINDOW_MS`, in milliseconds.
pub const DEFAULT_SSE_BATCH_WINDOW_MS: u64 = 20;
/// Default `HEADER_READ_TIMEOUT_SECS`, in seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default `REDIS_MIN_REPLICAS_ACK`: 0, no `WAIT` after a publish.
pub const DEFAULT_REDIS_MIN_REPLICAS_ACK: u32 = 0;
/// Default `REDIS_REPLICAS_ACK_TIMEOUT_MS`, in milliseconds.
pub const DEFAULT_REDIS_REPLICAS_ACK_TIMEOUT_MS: u64 = 500;

/// Default `MERCURE_PUBLISHER_JWT_ALG` and `MERCURE_SUBSCRIBER_JWT_ALG`.
pub const DEFAULT_JWT_ALG: &str = "HS256";

/// A setting whose value cannot be used. Printed as one line on stderr, then
/// the process exits with status 2 (SPEC §2 "Bad configuration").
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    /// Environment variable name, e.g. `PORT`.
    pub var: String,
    /// The value as given.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The command line: settings, or the `healthcheck` subcommand used by the
/// container's `HEALTHCHECK` (the runtime image has no curl).
#[derive(Debug, Parser)]
#[command(
    name = "sse-fanout",
    version,
    about = "Server-Sent Events fan-out over Redis pub/sub"
)]
pub struct Cli {
    /// Optional subcommand; none runs the server.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Every server setting.
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Probe `http://127.0.0.1:$PORT/health/live`; exit 0 if it answers 200, else 1.
    Healthcheck,
}

/// Every setting of SPEC §2, with its default. Flags mirror the variables.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Name of this instance, shown in events, /health and logs.
    #[arg(long, env = "SERVER_ID", default_value = DEFAULT_SERVER_ID)]
    pub server_id: String,
    /// Bind address.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Bind port (0 = any free port; the bound address is logged).
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Redis URL: redis://[:password@]host:port[/db]. Unset (with REDIS_HOST unset): in-process bus.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis host, used only when REDIS_URL is unset.
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Redis port, used only when REDIS_URL is unset.
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis password, used only when REDIS_URL is unset.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Redis pub/sub channel for events; history is the stream `<channel>:history`.
    #[arg(long, env = "EVENTS_CHANNEL", default_value = DEFAULT_EVENTS_CHANNEL)]
    pub events_channel: String,
    /// Seconds without an event before a `: keep-alive` comment is sent.
    #[arg(long, env = "SSE_KEEPALIVE_SECS", default_value_t = DEFAULT_SSE_KEEPALIVE_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sse_keepalive_secs: u64,
    /// `retry:` hint sent to clients at connect, in milliseconds.
    #[arg(long, env = "SSE_RETRY_MS", default_value_t = DEFAULT_SSE_RETRY_MS)]
    pub sse_retry_ms: u64,
    /// Number of recent events kept for resume (approximate cap).
    #[arg(long, env = "EVENT_HISTORY_LEN", default_value_t = DEFAULT_EVENT_HISTORY_LEN,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub event_history_len: u64,
    /// SSE clients per instance; more get 503 with Retry-After.
    #[arg(long, env = "MAX_SSE_CLIENTS", default_value_t = DEFAULT_MAX_SSE_CLIENTS)]
    pub max_sse_clients: usize,
    /// Request body limit, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// CORS: unset = no CORS headers; `*` or a comma-separated list of origins.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS")]
    pub cors_allowed_origins: Option<String>,
    /// Drain time on SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A client whose socket accepts no bytes for this many seconds is dropped.
    #[arg(long, env = "SSE_SEND_TIMEOUT_SECS", default_value_t = DEFAULT_SSE_SEND_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub sse_send_timeout_secs: u64,
    /// Time limit for non-streaming requests, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Time limit for a client to send its request headers, in seconds (slowloris).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Longest batch hold under load, in ms: an event that finds every local
    /// client idle (all have taken the previous batch) goes out at once; one
    /// that arrives while the previous fan-out is still running starts a batch
    /// that gathers for 40 µs per stream of that fan-out, at most this long,
    /// and reaches each client in one write. 0 sends every event at once.
    #[arg(long, env = "SSE_BATCH_WINDOW_MS", default_value_t = DEFAULT_SSE_BATCH_WINDOW_MS,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub sse_batch_window_ms: u64,
    /// Batches of events the local broadcast buffers before a slow client
    /// lags and is caught up from history (memory vs. history reads).
    #[arg(long, env = "BROADCAST_CAPACITY", default_value_t = crate::hub::BROADCAST_CAPACITY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_048_576))]
    pub broadcast_capacity: usize,
    /// Directory of the web page served at `/`; unset: the page built into the binary.
    #[arg(long, env = "WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,
    /// A bearer token that may publish anything (POST /accounts and /.well-known/mercure).
    #[arg(long, env = "PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,
    /// A second listener that serves only `GET /metrics` (e.g. `127.0.0.1:9100`),
    /// so Prometheus can scrape a port that is never exposed. Unset: none;
    /// `/metrics` stays on the main port either way.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Redis Sentinel mode: comma-separated `host:port` of the sentinels (SPEC §9).
    #[arg(long, env = "REDIS_SENTINELS")]
    pub redis_sentinels: Option<String>,
    /// The master name the sentinels monitor (required with REDIS_SENTINELS).
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,
    /// Password of the sentinels themselves, if they require one.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,
    /// Redis Cluster mode: comma-separated `host:port` seed nodes (SPEC §9).
    #[arg(long, env = "REDIS_CLUSTER_NODES")]
    pub redis_cluster_nodes: Option<String>,
    /// After each publish, wait until this many replicas hold it (`WAIT`); 0 = off.
    #[arg(long, env = "REDIS_MIN_REPLICAS_ACK", default_value_t = DEFAULT_REDIS_MIN_REPLICAS_ACK,
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_min_replicas_ack: u32,
    /// How long a publish waits for REDIS_MIN_REPLICAS_ACK replicas, in ms
    /// (at most 1500, inside the 2 s command timeout); then 503.
    #[arg(long, env = "REDIS_REPLICAS_ACK_TIMEOUT_MS", default_value_t = DEFAULT_REDIS_REPLICAS_ACK_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=1500))]
    pub redis_replicas_ack_timeout_ms: u64,
    /// Key verifying publisher JWTs (SPEC §8.4): the secret for HS*, a PEM
    /// public key for RS*/PS*/ES*/EdDSA. Unset (with PUBLISH_TOKEN unset): publishing is open.
    #[arg(long, env = "MERCURE_PUBLISHER_JWT_KEY", hide_env_values = true)]
    pub mercure_publisher_jwt_key: Option<String>,
    /// Algorithm of publisher JWTs; a token whose header names another one is rejected.
    #[arg(long, env = "MERCURE_PUBLISHER_JWT_ALG", default_value = DEFAULT_JWT_ALG)]
    pub mercure_publisher_jwt_alg: String,
    /// Key verifying subscriber JWTs (as MERCURE_PUBLISHER_JWT_KEY). Unset: subscriber tokens are refused.
    #[arg(long, env = "MERCURE_SUBSCRIBER_JWT_KEY", hide_env_values = true)]
    pub mercure_subscriber_jwt_key: Option<String>,
    /// Algorithm of subscriber JWTs.
    #[arg(long, env = "MERCURE_SUBSCRIBER_JWT_ALG", default_value = DEFAULT_JWT_ALG)]
    pub mercure_subscriber_jwt_alg: String,
    /// Whether subscribers without a token get public events (`false`: they get 401).
    #[arg(long, env = "MERCURE_ANONYMOUS", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub mercure_anonymous: bool,
    /// Origins allowed to publish with the `mercureAuthorization` cookie (CSRF
    /// protection): a comma-separated list, or `*`. Unset: none.
    #[arg(long, env = "MERCURE_PUBLISH_ORIGINS")]
    pub mercure_publish_origins: Option<String>,
    /// `account.created` events are private: only subscribers whose token
    /// allows `accounts/<id>` or `accounts` receive them (SPEC §8.1).
    #[arg(long, env = "ACCOUNT_EVENTS_PRIVATE", default_value_t = false,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub account_events_private: bool,
}

/// Where the Redis bus connects (SPEC §2 "Bus selection", §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `REDIS_URL`, or the URL built from `REDIS_HOST`/`PORT`/`PASSWORD`.
    Standalone {
        /// The connection URL (may hold a password: log it only through [`redact_url`]).
        url: String,
    },
    /// A primary found through sentinels (`REDIS_SENTINELS`).
    Sentinel {
        /// `host:port` of every sentinel.
        sentinels: Vec<(String, u16)>,
        /// `REDIS_SENTINEL_MASTER`.
        master: String,
        /// `REDIS_SENTINEL_PASSWORD`.
        sentinel_password: Option<String>,
        /// `REDIS_PASSWORD`: of the data nodes.
        password: Option<String>,
    },
    /// A Redis Cluster (`REDIS_CLUSTER_NODES`).
    Cluster {
        /// `host:port` of the seed nodes.
        nodes: Vec<(String, u16)>,
        /// `REDIS_PASSWORD`.
        password: Option<String>,
    },
}

impl Config {
    /// Parses flags and environment (after loading `.env`; real variables win).
    ///
    /// # Errors
    /// `Err(Ok(clap_error))` for `--help`/`--version` and usage errors clap
    /// prints itself; `Err(Err(ConfigError))` for a bad value.
    pub fn from_env() -> Result<Cli, Result<clap::Error, ConfigError>> {
        // Only the working directory's `.env` (dotenvy's `dotenv()` would also
        // search parent directories). Missing is normal; malformed is reported.
        if let Err(err) = dotenvy::from_path(".env") {
            if !err.not_found() {
                return Err(Err(ConfigError {
                    var: ".env".to_owned(),
                    value: String::new(),
                    reason: err.to_string(),
                }));
            }
        }
        Self::parse_from(std::env::args_os())
    }

    /// Parses the given arguments (and the process environment, via clap).
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn parse_from<I, T>(args: I) -> Result<Cli, Result<clap::Error, ConfigError>>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(|err| match value_error(&err) {
            Some(config_err) => Err(config_err),
            None => Ok(err),
        })?;
        cli.config.validate().map_err(Err)?;
        Ok(cli)
    }

    /// Checks what clap's types cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.server_id.trim().is_empty() {
            return Err(bad("SERVER_ID", &self.server_id, "must not be empty"));
        }
        if self.events_channel.is_empty() {
            return Err(bad(
                "EVENTS_CHANNEL",
                &self.events_channel,
                "must not be empty",
            ));
        }
        self.validate_redis_mode()?;
        if let Some(url) = &self.redis_url {
            redis::Client::open(url.as_str())
                .map_err(|err| bad("REDIS_URL", &redact_url(url), &err.to_string()))?;
        } else if let Some(host) = &self.redis_host {
            if host.is_empty() || host.contains(['/', '@', ' ']) {
                return Err(bad("REDIS_HOST", host, "must be a host name or address"));
            }
        }
        check_origins("CORS_ALLOWED_ORIGINS", self.cors_allowed_origins.as_deref())?;
        check_origins(
            "MERCURE_PUBLISH_ORIGINS",
            self.mercure_publish_origins.as_deref(),
        )?;
        // Keys and algorithms (SPEC §8.4): an unknown algorithm or a key that
        // does not parse is bad configuration, not a 401 on every request.
        crate::auth::Authorizer::from_config(self)?;
        if self.max_sse_clients == 0 {
            return Err(bad("MAX_SSE_CLIENTS", "0", "must be at least 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(bad("MAX_BODY_BYTES", "0", "must be at least 1"));
        }
        Ok(())
    }

    /// Checks the HA settings of SPEC §9: one mode only, lists of
    /// `host:port`, a master name with sentinels.
    fn validate_redis_mode(&self) -> Result<(), ConfigError> {
        let standalone = if self.redis_url.is_some() {
            Some("REDIS_URL")
        } else if self.redis_host.is_some() {
            Some("REDIS_HOST")
        } else {
            None
        };
        let modes = [
            ("REDIS_SENTINELS", self.redis_sentinels.as_ref()),
            ("REDIS_CLUSTER_NODES", self.redis_cluster_nodes.as_ref()),
        ];
        for (var, value) in modes {
            let Some(value) = value else { continue };
            parse_nodes(var, value)?;
            if let Some(other) = standalone {
                return Err(bad(
                    var,
                    value,
                    &format!("cannot be combined with {other}: choose one Redis mode"),
                ));
            }
        }
        if let (Some(sentinels), Some(_)) = (&self.redis_sentinels, &self.redis_cluster_nodes) {
            return Err(bad(
                "REDIS_SENTINELS",
                sentinels,
                "cannot be combined with REDIS_CLUSTER_NODES: choose one Redis mode",
            ));
        }
        match (&self.redis_sentinels, &self.redis_sentinel_master) {
            (Some(sentinels), None) => Err(bad(
                "REDIS_SENTINELS",
                sentinels,
                "needs REDIS_SENTINEL_MASTER (the monitored master name)",
            )),
            (None, Some(master)) => Err(bad(
                "REDIS_SENTINEL_MASTER",
                master,
                "is used only with REDIS_SENTINELS",
            )),
            (Some(_), Some(master))
                if master.is_empty() || master.contains(char::is_whitespace) =>
            {
                Err(bad(
                    "REDIS_SENTINEL_MASTER",
                    master,
                    "must be a name without spaces",
                ))
            }
            _ => Ok(()),
        }
    }

    /// The Redis bus to use, if any (SPEC §2 "Bus selection", §9).
    pub fn redis_target(&self) -> Option<RedisTarget> {
        let nodes = |value: &String| parse_nodes("", value).unwrap_or_default();
        if let Some(sentinels) = &self.redis_sentinels {
            return Some(RedisTarget::Sentinel {
                sentinels: nodes(sentinels),
                master: self.redis_sentinel_master.clone().unwrap_or_default(),
                sentinel_password: self.redis_sentinel_password.clone(),
                password: self.redis_password.clone(),
            });
        }
        if let Some(cluster) = &self.redis_cluster_nodes {
            return Some(RedisTarget::Cluster {
                nodes: nodes(cluster),
                password: self.redis_password.clone(),
            });
        }
        self.redis_url().map(|url| RedisTarget::Standalone { url })
    }

    /// The Redis connection URL, if a Redis bus is configured (SPEC §2 "Bus
    /// selection"): `REDIS_URL`, else one built from `REDIS_HOST`/`PORT`/`PASSWORD`.
    pub fn redis_url(&self) -> Option<String> {
        if let Some(url) = &self.redis_url {
            return Some(url.clone());
        }
        let host = self.redis_host.as_ref()?;
        Some(redis_node_url(
            host,
            self.redis_port,
            self.redis_password.as_deref(),
        ))
    }

    /// `SSE_KEEPALIVE_SECS` as a duration.
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.sse_keepalive_secs)
    }
}

/// `redis://[:password@]host:port` for one node (IPv6 hosts bracketed, the
/// password percent-encoded): the seed-compatible settings, and each primary
/// or cluster node found at run time.
pub fn redis_node_url(host: &str, port: u16, password: Option<&str>) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match password {
        Some(password) => format!("redis://:{}@{host}:{port}", utf8_percent_encode(password)),
        None => format!("redis://{host}:{port}"),
    }
}

/// `host:port,host:port` for log lines.
pub fn join_nodes(nodes: &[(String, u16)]) -> String {
    nodes
        .iter()
        .map(|(host, port)| format!("{host}:{port}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The URL with any password replaced, for logs and error lines.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Percent-encodes a password for the userinfo part of a URL (RFC 3986 §3.2.1).
fn utf8_percent_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Parses `host:port,host:port,…` (`[v6]:port` for IPv6); at least one.
fn parse_nodes(var: &str, value: &str) -> Result<Vec<(String, u16)>, ConfigError> {
    let mut nodes = Vec::new();
    for node in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let parsed = node.rsplit_once(':').and_then(|(host, port)| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let ok = !host.is_empty() && !host.contains(['/', '@', ' ']);
            Some((ok.then(|| host.to_owned())?, port.parse::<u16>().ok()?))
        });
        match parsed {
            Some(node) => nodes.push(node),
            None => return Err(bad(var, value, "expected host:port[,host:port…]")),
        }
    }
    if nodes.is_empty() {
        return Err(bad(var, value, "expected host:port[,host:port…]"));
    }
    Ok(nodes)
}

/// `*` or a comma list of `http(s)://host[:port]` origins.
fn check_origins(var: &str, origins: Option<&str>) -> Result<(), ConfigError> {
    let Some(origins) = origins else {
        return Ok(());
    };
    if origins.trim() == "*" {
        return Ok(());
    }
    for origin in origins.split(',').map(str::trim) {
        let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
            && axum::http::HeaderValue::from_str(origin).is_ok();
        if !ok {
            return Err(bad(
                var,
                origins,
                "each origin must look like https://example.com",
            ));
        }
    }
    Ok(())
}

pub(crate) fn bad(var: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError {
        var: var.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Turns clap's "invalid value" error into our one-line form naming the
/// environment variable (clap names the flag, which env users never typed).
fn value_error(err: &clap::Error) -> Option<ConfigError> {
    use clap::error::{ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let arg = match err.get(ContextKind::InvalidArg)? {
        ContextValue::String(arg) => arg.clone(),
        _ => return None,
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    let long = arg
        .trim_start_matches("--")
        .split([' ', '='])
        .next()?
        .to_owned();
    let command = Cli::command();
    let var = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))
        .and_then(|a| a.get_env())
        .map_or_else(|| arg.clone(), |env| env.to_string_lossy().into_owned());
    let reason = match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
        _ => err
            .source()
            .map_or_else(|| "invalid value".to_owned(), ToString::to_string),
    };
    Some(ConfigError { var, value, reason })
}

use std::error::Error as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, Result<clap::Error, ConfigError>> {
        let mut all = vec!["sse-fanout"];
        all.extend_from_slice(args);
        Config::parse_from(all)
    }

    #[test]
    fn defaults_match_the_spec() {
        let cli = parse(&[]).unwrap();
        let c = cli.config;
        assert_eq!(c.server_id, "backend-1");
        assert_eq!(c.port, 3000);
        assert_eq!(c.events_channel, "user-events");
        assert_eq!(c.sse_keepalive_secs, 15);
        assert_eq!(c.sse_retry_ms, 3000);
        assert_eq!(c.event_history_len, 10_000);
        assert_eq!(c.max_sse_clients, 50_000);
        assert_eq!(c.max_body_bytes, 16_384);
        assert_eq!(c.shutdown_grace_secs, 10);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_port_names_the_variable() {
        let Err(Err(err)) = parse(&["--port", "abc"]) else {
            panic!("expected ConfigError")
        };
        assert_eq!(err.var, "PORT");
        assert_eq!(err.value, "abc");
        let Err(Err(err)) = parse(&["--log-format", "xml"]) else {
            panic!("expected ConfigError")
        };
        assert_eq!(err.var, "LOG_FORMAT");
        assert!(err.reason.contains("text"), "{err}");
    }

    #[test]
    fn malformed_redis_url_is_rejected_without_the_password() {
        let Err(Err(err)) = parse(&["--redis-url", "http://:secret@host"]) else {
            panic!("expected ConfigError")
        };
        assert_eq!(err.var, "REDIS_URL");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn redis_host_fallback_builds_a_url() {
        let cli = parse(&[
            "--redis-host",
            "cache",
            "--redis-port",
            "6380",
            "--redis-password",
            "p@ss",
        ])
        .unwrap();
        assert_eq!(
            cli.config.redis_url().unwrap(),
            "redis://:p%40ss@cache:6380"
        );
        assert_eq!(parse(&[]).unwrap().config.redis_url(), None);
        let cli = parse(&["--redis-url", "redis://a:1", "--redis-host", "b"]).unwrap();
        assert_eq!(cli.config.redis_url().unwrap(), "redis://a:1");
    }

    #[test]
    fn redis_modes_are_parsed_and_exclusive() {
        let cli = parse(&[
            "--redis-sentinels",
            "a:26379, b:26380",
            "--redis-sentinel-master",
            "mymaster",
        ])
        .unwrap();
        assert_eq!(
            cli.config.redis_target(),
            Some(RedisTarget::Sentinel {
                sentinels: vec![("a".to_owned(), 26379), ("b".to_owned(), 26380)],
                master: "mymaster".to_owned(),
                sentinel_password: None,
                password: None,
            })
        );
        let cli = parse(&["--redis-cluster-nodes", "[::1]:7000"]).unwrap();
        assert!(matches!(
            cli.config.redis_target(),
            Some(RedisTarget::Cluster { nodes, .. }) if nodes == [("::1".to_owned(), 7000)]
        ));
        for (args, var) in [
            (&["--redis-sentinels", "a:1"][..], "REDIS_SENTINELS"),
            (
                &["--redis-sentinels", "a", "--redis-sentinel-master", "m"][..],
                "REDIS_SENTINELS",
            ),
            (
                &["--redis-sentinel-master", "m"][..],
                "REDIS_SENTINEL_MASTER",
            ),
            (&["--redis-cluster-nodes", "a:x"][..], "REDIS_CLUSTER_NODES"),
            (&["--redis-cluster-nodes", ","][..], "REDIS_CLUSTER_NODES"),
            (
                &["--redis-cluster-nodes", "a:1", "--redis-url", "redis://b:1"][..],
                "REDIS_CLUSTER_NODES",
            ),
            (
                &[
                    "--redis-cluster-nodes",
                    "a:1",
                    "--redis-sentinels",
                    "b:1",
                    "--redis-sentinel-master",
                    "m",
                ][..],
                "REDIS_SENTINELS",
            ),
            (
                &["--redis-min-replicas-ack", "x"][..],
                "REDIS_MIN_REPLICAS_ACK",
            ),
        ] {
            let Err(Err(err)) = parse(args) else {
                panic!("{args:?} must be rejected")
            };
            assert_eq!(err.var, var, "{args:?}: {err}");
        }
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
