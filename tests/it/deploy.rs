//! Checks of the deployment files shipped at the repository root (SPEC §7).
//!
//! - `docker-compose.yml`: `redis` with a healthcheck, `backend-1` (`SERVER_ID=backend-1`,
//!   `PORT=3000`) and `backend-2` (`SERVER_ID=backend-2`, `PORT=3002`) waiting for a
//!   healthy Redis, `nginx` on port 80 mounting `nginx.conf`; validated with
//!   `docker compose config -q` too when Docker Compose is installed.
//! - `nginx.conf`: both backends upstream with `least_conn`, and SSE-safe proxying of
//!   `/events/sse` (HTTP/1.1, empty `Connection`, no buffering, no cache, a read
//!   timeout well above the keep-alive interval).
//! - The real Debian nginx accepts `nginx.conf` (`nginx -t`) once rendered for loopback
//!   by [`render_nginx_conf`], the helper the nginx end-to-end tests use too.
//! - `Dockerfile`: multi-stage, non-root runtime user, `HEALTHCHECK`, page built in (`web/`
//!   in the build context, no `WEB_DIR`).
//! - `env.example`: lists every setting of SPEC §2.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

/// Path of a file at the repository root.
fn repo_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn read_repo_file(name: &str) -> String {
    let path = repo_path(name);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

// ---------------------------------------------------------------------------
// nginx helpers (shared with the nginx end-to-end tests)
// ---------------------------------------------------------------------------

/// Upstream server lines of `nginx.conf` that [`render_nginx_conf`] replaces.
pub(crate) const NGINX_BACKEND_1: &str = "server backend-1:3000";
/// See [`NGINX_BACKEND_1`].
pub(crate) const NGINX_BACKEND_2: &str = "server backend-2:3002";
/// The only `listen` directive of `nginx.conf`.
pub(crate) const NGINX_LISTEN: &str = "listen 80 backlog=4096;";
/// Opening of the `http` block, where temp and log paths are injected.
pub(crate) const NGINX_HTTP_BLOCK: &str = "http {";

/// Replaces the single occurrence of `from` in `text`; panics if there is not exactly one,
/// so a test can never silently run against a different file than the one shipped.
fn replace_exactly_once(text: &str, from: &str, to: &str) -> String {
    let count = text.matches(from).count();
    assert!(
        count == 1,
        "nginx.conf must contain `{from}` exactly once (found {count} times): \
         render_nginx_conf and the nginx tests rely on it"
    );
    text.replacen(from, to, 1)
}

/// Writes a copy of the repository's `nginx.conf` into `dir`, rendered to run
/// unprivileged on loopback, and returns its path:
///
/// - `server backend-1:3000` → `server <backend_1>`, `server backend-2:3002` → `server <backend_2>`;
/// - `listen 80 backlog=4096;` → `listen 127.0.0.1:<listen_port> backlog=4096;`;
/// - right after `http {`: `client_body_temp_path`, `proxy_temp_path`, `fastcgi_temp_path`,
///   `uwsgi_temp_path`, `scgi_temp_path` and `access_log` under `dir`.
///
/// `pid` and `error_log` are main-context directives: pass [`nginx_global_directives`]
/// with `-g` (as [`nginx_command`] does). Everything else is the shipped file unchanged.
/// Panics with a clear message if any of the replaced strings is absent or repeated.
///
/// On Unix `dir` is made world-traversable (0755): when nginx runs as root its workers
/// switch to an unprivileged user that must reach the temp directories.
pub(crate) fn render_nginx_conf(
    listen_port: u16,
    backend_1: SocketAddr,
    backend_2: SocketAddr,
    dir: &Path,
) -> PathBuf {
    let original = read_repo_file("nginx.conf");
    let d = dir.display();
    let mut text = replace_exactly_once(&original, NGINX_BACKEND_1, &format!("server {backend_1}"));
    text = replace_exactly_once(&text, NGINX_BACKEND_2, &format!("server {backend_2}"));
    text = replace_exactly_once(
        &text,
        NGINX_LISTEN,
        &NGINX_LISTEN.replace("listen 80", &format!("listen 127.0.0.1:{listen_port}")),
    );
    let injected = format!(
        "{NGINX_HTTP_BLOCK}\n    \
         client_body_temp_path {d}/client_body_temp;\n    \
         proxy_temp_path {d}/proxy_temp;\n    \
         fastcgi_temp_path {d}/fastcgi_temp;\n    \
         uwsgi_temp_path {d}/uwsgi_temp;\n    \
         scgi_temp_path {d}/scgi_temp;\n    \
         access_log {d}/access.log;\n"
    );
    text = replace_exactly_once(&text, NGINX_HTTP_BLOCK, &injected);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = dir.join("nginx.conf");
    fs::write(&path, text).unwrap();
    path
}

/// Main-context directives for `nginx -g`: foreground (`daemon off`, so the spawned
/// child is the master process and can be killed), pid file and error log inside `dir`.
pub(crate) fn nginx_global_directives(dir: &Path) -> String {
    let d = dir.display();
    format!("daemon off; pid {d}/nginx.pid; error_log {d}/error.log info;")
}

/// The nginx executable: `/usr/sbin/nginx`, else `nginx` on `PATH`.
/// Panics if nginx is not installed: these tests must not be skipped silently.
pub(crate) fn nginx_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.is_file() {
        return sbin;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!("nginx not installed: run scripts/test (it installs it) or apt-get install -y nginx")
    })
}

/// `nginx -p <dir> -c <conf> -g '<nginx_global_directives(dir)>'`: spawn it to run a
/// foreground nginx (the master's log is `<dir>/error.log`), or add `-t` to only check
/// the configuration. nginx accepts a single `-g`: do not add another.
pub(crate) fn nginx_command(dir: &Path, conf: &Path) -> Command {
    let mut cmd = Command::new(nginx_binary());
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(conf)
        .arg("-g")
        .arg(nginx_global_directives(dir));
    cmd
}

// ---------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------

fn compose_file() -> Value {
    compose_file_named("docker-compose.yml")
}

fn compose_file_named(name: &str) -> Value {
    let text = read_repo_file(name);
    let mut doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    doc.apply_merge().unwrap();
    doc
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc.get("services")
        .and_then(|services| services.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

/// A YAML scalar as text (`PORT: 3000` and `PORT: "3000"` are the same to Compose).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `environment` in either map form (`KEY: value`) or list form (`- KEY=value`).
fn environment(service: &Value) -> Vec<(String, String)> {
    match service.get("environment") {
        None => Vec::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| {
                let key = scalar_text(k).unwrap();
                let value = scalar_text(v).unwrap_or_default();
                (key, value)
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let entry = item.as_str().unwrap();
                match entry.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (entry.to_owned(), String::new()),
                }
            })
            .collect(),
        Some(other) => panic!("unexpected `environment` form: {other:?}"),
    }
}

fn env_value(service: &Value, key: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Published `(host port, container port)` pairs, short (`"[ip:]host:container[/proto]"`)
/// or long (`{published, target}`) syntax.
fn published_ports(service: &Value) -> Vec<(u16, u16)> {
    let Some(ports) = service.get("ports").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|port| match port {
            Value::Mapping(_) => {
                let published = port.get("published").and_then(scalar_text)?;
                let target = port.get("target").and_then(scalar_text)?;
                Some((published.parse().ok()?, target.parse().ok()?))
            }
            other => {
                let spec = scalar_text(other)?;
                let spec = spec.split('/').next().unwrap_or_default();
                let parts: Vec<&str> = spec.split(':').collect();
                if parts.len() < 2 {
                    return None;
                }
                let host = parts[parts.len() - 2].parse().ok()?;
                let container = parts[parts.len() - 1].parse().ok()?;
                Some((host, container))
            }
        })
        .collect()
}

/// The `condition` under `depends_on.<dependency>` (long form only: the short list form
/// has no condition, which is what the test must reject).
fn depends_on_condition(service: &Value, dependency: &str) -> Option<String> {
    service
        .get("depends_on")?
        .get(dependency)?
        .get("condition")
        .and_then(scalar_text)
}

/// The healthcheck `test` as one string (`["CMD", "a", "b"]` → `CMD a b`).
fn healthcheck_test(service: &Value) -> Option<String> {
    let test = service.get("healthcheck")?.get("test")?;
    match test {
        Value::Sequence(items) => Some(
            items
                .iter()
                .filter_map(scalar_text)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        other => scalar_text(other),
    }
}

#[test]
fn compose_file_defines_redis_two_backends_and_nginx() {
    let doc = compose_file();
    assert!(
        doc.get("version").is_none(),
        "the top-level `version` key is obsolete in Compose; remove it"
    );

    let redis = service(&doc, "redis");
    let redis_image = redis.get("image").and_then(Value::as_str).unwrap();
    assert!(
        redis_image.starts_with("redis:"),
        "redis image: {redis_image}"
    );
    let redis_check = healthcheck_test(redis).expect("service `redis` needs a healthcheck");
    assert!(
        redis_check.contains("redis-cli") && redis_check.contains("ping"),
        "redis healthcheck should run `redis-cli ping`, got `{redis_check}`"
    );

    for (name, port) in [("backend-1", 3000_u16), ("backend-2", 3002_u16)] {
        let backend = service(&doc, name);
        assert!(
            backend.get("build").is_some(),
            "`{name}` must be built from the repo (build: .)"
        );
        assert_eq!(
            env_value(backend, "SERVER_ID").as_deref(),
            Some(name),
            "{name}: SERVER_ID"
        );
        assert_eq!(
            env_value(backend, "PORT"),
            Some(port.to_string()),
            "{name}: PORT"
        );
        let redis_url = env_value(backend, "REDIS_URL")
            .or_else(|| env_value(backend, "REDIS_HOST"))
            .unwrap_or_else(|| panic!("{name}: REDIS_URL (or REDIS_HOST) must point at `redis`"));
        assert!(
            redis_url.contains("redis"),
            "{name}: Redis address `{redis_url}`"
        );
        assert!(
            published_ports(backend).contains(&(port, port)),
            "{name}: port {port} must be published as \"{port}:{port}\", got {:?}",
            published_ports(backend)
        );
        assert_eq!(
            depends_on_condition(backend, "redis").as_deref(),
            Some("service_healthy"),
            "{name} must wait for a healthy Redis (depends_on: redis: condition: service_healthy)"
        );
        let check =
            healthcheck_test(backend).unwrap_or_else(|| panic!("{name} needs a healthcheck"));
        assert!(
            check.contains("sse-fanout") && check.contains("healthcheck"),
            "{name}: healthcheck should run `sse-fanout healthcheck` (no curl in the image), got `{check}`"
        );
    }

    let nginx = service(&doc, "nginx");
    let nginx_image = nginx.get("image").and_then(Value::as_str).unwrap();
    assert!(
        nginx_image.starts_with("nginx:"),
        "nginx image: {nginx_image}"
    );
    assert!(
        published_ports(nginx).contains(&(80, 80)),
        "nginx: port 80 must be published, got {:?}",
        published_ports(nginx)
    );
    let volumes = nginx
        .get("volumes")
        .and_then(Value::as_sequence)
        .expect("nginx must mount nginx.conf");
    let mounts_conf = volumes.iter().any(|volume| match volume {
        Value::Mapping(_) => {
            let source = volume
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let target = volume
                .get("target")
                .and_then(Value::as_str)
                .unwrap_or_default();
            source.trim_start_matches("./") == "nginx.conf" && target == "/etc/nginx/nginx.conf"
        }
        other => other.as_str().is_some_and(|v| {
            v.trim_start_matches("./")
                .starts_with("nginx.conf:/etc/nginx/nginx.conf")
        }),
    });
    assert!(
        mounts_conf,
        "nginx must mount ./nginx.conf at /etc/nginx/nginx.conf: {volumes:?}"
    );
    for backend in ["backend-1", "backend-2"] {
        assert_eq!(
            depends_on_condition(nginx, backend).as_deref(),
            Some("service_healthy"),
            "nginx must wait for a healthy {backend}"
        );
    }

    // The authoritative check, when Docker Compose is available.
    let compose_available = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if compose_available {
        let out = Command::new("docker")
            .args(["compose", "-f"])
            .arg(repo_path("docker-compose.yml"))
            .args(["config", "-q"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`docker compose config -q` rejected docker-compose.yml:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("docker compose not available: skipping `docker compose config -q`");
    }
}

/// `docker-compose.sentinel.yml` (README "High availability"): primary,
/// replica of it, three sentinels monitoring it with quorum 2, and both
/// backends in Sentinel mode waiting for healthy sentinels, behind nginx.
#[test]
fn sentinel_compose_file_defines_a_sentinel_group_and_two_backends() {
    let doc = compose_file_named("docker-compose.sentinel.yml");
    let replica = service(&doc, "redis-replica");
    let command = replica
        .get("command")
        .and_then(Value::as_sequence)
        .expect("redis-replica needs a command")
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        command.contains("--replicaof redis-primary 6379"),
        "{command}"
    );
    assert!(healthcheck_test(service(&doc, "redis-primary")).is_some());
    for name in ["sentinel-1", "sentinel-2", "sentinel-3"] {
        let sentinel = service(&doc, name);
        let script = sentinel
            .get("command")
            .and_then(Value::as_sequence)
            .and_then(|c| c.last())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{name} needs a command"));
        assert!(
            script.contains("sentinel monitor mymaster redis-primary 6379 2")
                && script.contains("redis-sentinel"),
            "{name}: {script}"
        );
        assert!(
            healthcheck_test(sentinel).is_some_and(|t| t.contains("26379")),
            "{name}"
        );
    }
    for (name, port) in [("backend-1", 3000_u16), ("backend-2", 3002_u16)] {
        let backend = service(&doc, name);
        assert_eq!(env_value(backend, "SERVER_ID").as_deref(), Some(name));
        assert_eq!(env_value(backend, "PORT"), Some(port.to_string()));
        assert_eq!(
            env_value(backend, "REDIS_SENTINELS").as_deref(),
            Some("sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"),
            "{name}"
        );
        assert_eq!(
            env_value(backend, "REDIS_SENTINEL_MASTER").as_deref(),
            Some("mymaster")
        );
        assert_eq!(
            env_value(backend, "REDIS_URL"),
            None,
            "{name}: one Redis mode only"
        );
        for sentinel in ["sentinel-1", "sentinel-2", "sentinel-3"] {
            assert_eq!(
                depends_on_condition(backend, sentinel).as_deref(),
                Some("service_healthy"),
                "{name} must wait for {sentinel}"
            );
        }
        assert!(published_ports(backend).contains(&(port, port)), "{name}");
    }
    let nginx = service(&doc, "nginx");
    for backend in ["backend-1", "backend-2"] {
        assert_eq!(
            depends_on_condition(nginx, backend).as_deref(),
            Some("service_healthy")
        );
    }
}

// ---------------------------------------------------------------------------
// nginx.conf
// ---------------------------------------------------------------------------

/// `nginx.conf` without comments.
fn nginx_conf_without_comments() -> String {
    read_repo_file("nginx.conf")
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The body of the block opened by `header` (e.g. `location /events/sse {`).
fn block<'a>(conf: &'a str, header: &str) -> &'a str {
    let start = conf
        .find(header)
        .unwrap_or_else(|| panic!("nginx.conf has no `{header}` block"))
        + header.len();
    let mut depth = 1_usize;
    for (offset, ch) in conf[start..].char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &conf[start..start + offset];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces after `{header}` in nginx.conf")
}

/// The simple directives directly inside `body` (nested blocks skipped), each with its
/// whitespace normalised: `proxy_set_header  Connection ""` → `proxy_set_header Connection ""`.
fn directives(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0_usize;
    let mut current = String::new();
    for ch in body.chars() {
        match ch {
            '{' => {
                depth += 1;
                current.clear();
            }
            '}' => {
                depth = depth.saturating_sub(1);
                current.clear();
            }
            ';' if depth == 0 => {
                out.push(current.split_whitespace().collect::<Vec<_>>().join(" "));
                current.clear();
            }
            _ if depth == 0 => current.push(ch),
            _ => {}
        }
    }
    out
}

/// An nginx time value in seconds: `90`, `90s`, `5m`, `1h`, `1h30m`, `500ms`.
fn nginx_time_secs(value: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = value.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let mut unit = ch.to_string();
        if ch == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next().unwrap());
        }
        let factor = match unit.as_str() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "M" => 2_592_000.0,
            "y" => 31_536_000.0,
            other => panic!("unknown nginx time unit `{other}` in `{value}`"),
        };
        let n: f64 = number
            .parse()
            .unwrap_or_else(|_| panic!("bad nginx time value `{value}`"));
        total += n * factor;
        number.clear();
    }
    if !number.is_empty() {
        total += number.parse::<f64>().unwrap();
    }
    total
}

#[test]
fn nginx_conf_is_sse_safe() {
    let conf = nginx_conf_without_comments();

    let upstream = directives(block(&conf, "upstream sse_fanout {"));
    for expected in ["least_conn", NGINX_BACKEND_1, NGINX_BACKEND_2] {
        assert!(
            upstream.iter().any(|d| d == expected),
            "upstream sse_fanout lacks `{expected};`: {upstream:?}"
        );
    }
    // nginx requires the balancing method before `keepalive`.
    if let Some(keepalive) = upstream.iter().position(|d| d.starts_with("keepalive ")) {
        let least_conn = upstream.iter().position(|d| d == "least_conn").unwrap();
        assert!(
            least_conn < keepalive,
            "`least_conn` must come before `keepalive`"
        );
    }

    let sse = directives(block(&conf, "location /events/sse {"));
    let has = |wanted: &str| sse.iter().any(|d| d == wanted);
    assert!(
        has("proxy_pass http://sse_fanout"),
        "SSE location must proxy to the upstream: {sse:?}"
    );
    assert!(
        has("proxy_http_version 1.1"),
        "SSE location needs `proxy_http_version 1.1;`"
    );
    assert!(
        has("proxy_set_header Connection \"\"") || has("proxy_set_header Connection ''"),
        "SSE location needs `proxy_set_header Connection \"\";`"
    );
    assert!(
        has("proxy_buffering off"),
        "SSE location needs `proxy_buffering off;`"
    );
    assert!(
        has("proxy_cache off"),
        "SSE location needs `proxy_cache off;`"
    );
    let read_timeout = sse
        .iter()
        .find_map(|d| d.strip_prefix("proxy_read_timeout "))
        .expect("SSE location needs an explicit proxy_read_timeout");
    let secs = nginx_time_secs(read_timeout.trim());
    assert!(
        secs >= 60.0,
        "proxy_read_timeout {read_timeout} ({secs} s) must be well above the 15 s keep-alive"
    );

    // What render_nginx_conf relies on: one listen, one http block, no fixed log/pid
    // paths that an unprivileged test could not override.
    let all_directives = conf.split(';').map(str::trim).collect::<Vec<_>>();
    for forbidden in ["pid ", "error_log ", "access_log /"] {
        assert!(
            !all_directives
                .iter()
                .any(|d| d.lines().any(|l| l.trim().starts_with(forbidden))),
            "nginx.conf must not set `{forbidden}…` (tests pass their own paths)"
        );
    }
    assert_eq!(
        conf.matches("listen ").count(),
        1,
        "nginx.conf must have exactly one `listen`"
    );
    assert_eq!(
        conf.matches(NGINX_LISTEN).count(),
        1,
        "nginx.conf must contain `{NGINX_LISTEN}`"
    );
}

#[test]
fn debian_nginx_accepts_the_repo_nginx_conf() {
    let dir = tempfile::tempdir().unwrap();
    let conf = render_nginx_conf(
        18_080,
        "127.0.0.1:13000".parse().unwrap(),
        "127.0.0.1:13002".parse().unwrap(),
        dir.path(),
    );
    let rendered = fs::read_to_string(&conf).unwrap();
    assert!(rendered.contains("server 127.0.0.1:13000;"), "{rendered}");
    assert!(rendered.contains("server 127.0.0.1:13002;"), "{rendered}");
    assert!(
        rendered.contains("listen 127.0.0.1:18080 backlog=4096;"),
        "{rendered}"
    );
    assert!(!rendered.contains("backend-1:3000") && !rendered.contains("backend-2:3002"));

    let out = nginx_command(dir.path(), &conf).arg("-t").output().unwrap();
    assert!(
        out.status.success(),
        "nginx -t rejected the rendered nginx.conf ({}):\n{}\n--- rendered file ---\n{rendered}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Dockerfile, .dockerignore, env.example
// ---------------------------------------------------------------------------

/// Dockerfile instructions `(KEYWORD, arguments)`, comments dropped, continuation lines joined.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let text = read_repo_file("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        out.push((keyword.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_healthcheck_and_embedded_web() {
    let instructions = dockerfile_instructions();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(
        froms.len() >= 2,
        "Dockerfile must be multi-stage (two or more FROM)"
    );
    let runtime = &instructions[*froms.last().unwrap()..];

    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, args)| args.clone())
        .expect("the runtime stage must switch to a non-root USER");
    let user_name = user.split(':').next().unwrap_or_default();
    assert!(
        user_name != "root" && user_name != "0",
        "the runtime stage must run as a non-root user, got `USER {user}`"
    );

    let healthcheck = runtime
        .iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .map(|(_, args)| args.clone())
        .expect("the runtime stage needs a HEALTHCHECK");
    assert!(
        healthcheck.contains("healthcheck"),
        "HEALTHCHECK should run `sse-fanout healthcheck`, got `{healthcheck}`"
    );

    // The page is built into the binary (SPEC §3.6): the build stage needs web/ in
    // its context, and the runtime stage must not point WEB_DIR at a directory it lacks.
    assert!(
        !runtime
            .iter()
            .any(|(k, args)| k == "ENV" && args.contains("WEB_DIR")),
        "the runtime image must serve the embedded page (no WEB_DIR)"
    );
    let ignore = read_repo_file(".dockerignore");
    assert!(
        !ignore.lines().any(|l| l.trim().trim_matches('/') == "web"),
        ".dockerignore must not exclude web/: the build embeds it"
    );
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_matches('/') == "target"),
        ".dockerignore must exclude target/"
    );
}

#[test]
fn env_example_lists_every_setting() {
    let text = read_repo_file("env.example");
    let defined: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim_start())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    // SPEC §2's settings plus the ones this server adds.
    let extra: &[(&str, Option<&str>)] = &[
        ("PUBLISH_TOKEN", None),
        ("REDIS_SENTINELS", None),
        ("REDIS_SENTINEL_MASTER", None),
        ("REDIS_SENTINEL_PASSWORD", None),
        ("REDIS_CLUSTER_NODES", None),
        ("REDIS_MIN_REPLICAS_ACK", Some("0")),
        ("REDIS_REPLICAS_ACK_TIMEOUT_MS", Some("500")),
        ("SSE_SEND_TIMEOUT_SECS", Some("30")),
        ("REQUEST_TIMEOUT_SECS", Some("10")),
        ("HEADER_READ_TIMEOUT_SECS", Some("10")),
        ("SSE_BATCH_WINDOW_MS", Some("20")),
        ("BROADCAST_CAPACITY", Some("4096")),
        ("WEB_DIR", None),
        ("METRICS_ADDR", None),
    ];
    for (name, default) in crate::config::SETTINGS
        .iter()
        .copied()
        .chain(extra.iter().copied())
    {
        assert!(defined.contains(&name), "env.example lacks {name}");
        let assignment = format!("{name}=");
        match default {
            Some(value) => {
                let expected = format!("{assignment}{value}");
                assert!(
                    text.lines().any(|l| l.trim() == expected),
                    "env.example should set `{expected}` (the default)"
                );
            }
            None => assert!(
                !text.lines().any(|l| l.trim().starts_with(&assignment)),
                "{name} is unset by default: env.example should only show it commented out"
            ),
        }
    }
}
