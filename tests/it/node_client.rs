//! The Mercure endpoint driven by a real client nobody here wrote: the npm
//! `eventsource` package (`tests/node/subscribe.mjs`, installed by
//! `scripts/test` with `npm ci` from the committed lock file), against two
//! instances of the real binary on a real Redis (SPEC §8.2–§8.5). Publishing
//! uses the Mercure form on the other instance, by hand and through a real
//! Mercure publisher library from PyPI, `mercure-publisher`
//! (`tests/python/publish.py`, venv made by `scripts/test`).

use std::{process::Stdio, time::Duration};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use crate::support::{ServerProcess, TestRedis};

const PUBLISHER_KEY: &str = "node-client-test-publisher-key";
const SUBSCRIBER_KEY: &str = "node-client-test-subscriber-key";
const WAIT: Duration = Duration::from_secs(15);

fn jwt(key: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// One `node subscribe.mjs` process and the JSON lines it prints.
struct NodeSubscriber {
    _child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl NodeSubscriber {
    /// Starts the script; `options` as documented in `subscribe.mjs`.
    fn start(options: &Value) -> Self {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
        assert!(
            std::path::Path::new(dir).join("node_modules/eventsource").exists(),
            "tests/node/node_modules is missing: run scripts/test (it runs `npm ci --prefix tests/node`)"
        );
        let mut child = Command::new("node")
            .current_dir(dir)
            .arg("subscribe.mjs")
            .arg(options.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed (scripts/test checks)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self {
            _child: child,
            lines,
        }
    }

    /// The next line within [`WAIT`].
    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .expect("the node client printed nothing in time")
            .expect("the node client exited without printing")
    }

    /// Waits for `{"open":true}`: the hub answered 200 and is subscribed
    /// (SPEC §8.2: subscribed before the first byte).
    async fn opened(mut self) -> Self {
        let line = self.next().await;
        assert_eq!(line, json!({"open": true}), "{line}");
        self
    }

    /// The next `n` events as `(id, type, data)`.
    async fn events(&mut self, n: usize) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            let line = self.next().await;
            assert!(line.get("error").is_none(), "after {out:?}: {line}");
            let field = |k: &str| line[k].as_str().unwrap_or_default().to_owned();
            out.push((field("id"), field("type"), field("data")));
        }
        out
    }
}

/// `POST /.well-known/mercure` with form `fields`; returns the event id.
async fn publish(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    fields: &[(&str, &str)],
) -> String {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let response = http
        .post(format!("{base}/.well-known/mercure"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{fields:?}: {text}");
    text
}

/// Two instances on one Redis, with publisher and subscriber keys.
async fn two_instances(redis: &TestRedis) -> (ServerProcess, ServerProcess) {
    let url = redis.url();
    let spawn = |id: &'static str| {
        let url = url.clone();
        async move {
            ServerProcess::spawn(&[
                ("SERVER_ID", id),
                ("REDIS_URL", &url),
                ("MERCURE_PUBLISHER_JWT_KEY", PUBLISHER_KEY),
                ("MERCURE_SUBSCRIBER_JWT_KEY", SUBSCRIBER_KEY),
            ])
            .await
        }
    };
    let a = spawn("backend-1").await;
    let b = spawn("backend-2").await;
    crate::support::app::wait_healthy(&a.base()).await;
    crate::support::app::wait_healthy(&b.base()).await;
    (a, b)
}

/// Public and private updates, with and without a token, multi-line data and
/// a named type, received by `eventsource` on instance B from a publish on
/// instance A; then resume with `Last-Event-ID` (an id and `earliest`) on A;
/// an invalid token is a 401 the client reports.
#[tokio::test]
async fn eventsource_package_receives_what_each_subscriber_may_see() {
    let redis = TestRedis::start();
    let (a, b) = two_instances(&redis).await;
    let http = reqwest::Client::new();
    let hub_b = format!("{}/.well-known/mercure?topic=books%2F%7Bid%7D", b.base());
    let reader = jwt(
        SUBSCRIBER_KEY,
        &json!({"mercure": {"subscribe": ["books/{id}"]}}),
    );
    let outsider = jwt(
        SUBSCRIBER_KEY,
        &json!({"mercure": {"subscribe": ["authors/{id}"]}}),
    );
    let types = json!(["book.updated"]);

    let mut anonymous = NodeSubscriber::start(&json!({"url": hub_b, "count": 2, "types": types}))
        .opened()
        .await;
    let mut allowed =
        NodeSubscriber::start(&json!({"url": hub_b, "token": reader, "count": 3, "types": types}))
            .opened()
            .await;
    let mut other = NodeSubscriber::start(
        &json!({"url": hub_b, "token": outsider, "count": 2, "types": types}),
    )
    .opened()
    .await;

    let publisher = jwt(PUBLISHER_KEY, &json!({"mercure": {"publish": ["*"]}}));
    let multiline = "first line\nsecond line\n\nfourth line after an empty one";
    let id1 = publish(
        &http,
        &a.base(),
        &publisher,
        &[("topic", "books/1"), ("data", multiline)],
    )
    .await;
    let id2 = publish(
        &http,
        &a.base(),
        &publisher,
        &[
            ("topic", "books/2"),
            ("data", "private: for readers"),
            ("private", "on"),
        ],
    )
    .await;
    // Not selected by anyone: no subscriber may receive it.
    publish(
        &http,
        &a.base(),
        &publisher,
        &[("topic", "authors/1"), ("data", "elsewhere")],
    )
    .await;
    let id3 = publish(
        &http,
        &a.base(),
        &publisher,
        &[
            ("topic", "https://example.com/other"),
            ("topic", "books/3"),
            ("type", "book.updated"),
            ("data", r#"{"title":"alternate topic"}"#),
        ],
    )
    .await;

    let public = vec![
        (id1.clone(), "message".to_owned(), multiline.to_owned()),
        (
            id3.clone(),
            "book.updated".to_owned(),
            r#"{"title":"alternate topic"}"#.to_owned(),
        ),
    ];
    assert_eq!(anonymous.events(2).await, public, "anonymous");
    assert_eq!(other.events(2).await, public, "token without books/{{id}}");
    let with_private = vec![
        public[0].clone(),
        (
            id2.clone(),
            "message".to_owned(),
            "private: for readers".to_owned(),
        ),
        public[1].clone(),
    ];
    assert_eq!(allowed.events(3).await, with_private, "reader");

    // Resume on the other instance, from an id and from `earliest`.
    let hub_a = format!("{}/.well-known/mercure?topic=books%2F%7Bid%7D", a.base());
    let mut resumed = NodeSubscriber::start(&json!({
        "url": hub_a, "token": reader, "lastEventId": id1, "count": 2, "types": types
    }));
    assert_eq!(resumed.next().await, json!({"open": true}));
    assert_eq!(
        resumed.events(2).await,
        with_private[1..].to_vec(),
        "resume from id1"
    );
    let mut from_start = NodeSubscriber::start(&json!({
        "url": hub_a, "lastEventId": "earliest", "count": 2, "types": types
    }));
    assert_eq!(from_start.next().await, json!({"open": true}));
    assert_eq!(from_start.events(2).await, public, "earliest, anonymous");

    // A bad token is refused, never treated as anonymous.
    let mut refused =
        NodeSubscriber::start(&json!({"url": hub_a, "token": "not.a.jwt", "count": 1}));
    let line = refused.next().await;
    assert_eq!(line["code"], 401, "{line}");
}

/// The PyPI `mercure-publisher` venv `scripts/test` creates.
fn mercure_publisher_python() -> std::path::PathBuf {
    let python = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/mercure-publisher-venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run scripts/test, which creates it with `pip install mercure-publisher`",
        python.display()
    );
    python
}

/// Runs `tests/python/publish.py` (the PyPI `mercure-publisher` library);
/// returns its exit code and the JSON line it printed.
async fn python_publish(options: &Value) -> (Option<i32>, Value) {
    let output = tokio::time::timeout(
        WAIT,
        Command::new(mercure_publisher_python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/publish.py"
            ))
            .arg(options.to_string())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("publish.py did not finish in time")
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "publish.py printed no JSON ({err}): {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), line)
}

/// An existing Mercure publisher library pointed at sse-fanout works
/// unchanged (issue 10 "Done when"): the PyPI `mercure-publisher` package
/// mints its own `mercure.publish` JWT and posts the Mercure form to instance
/// A; `eventsource` on instance B receives its public, private and
/// multi-topic updates; a topic its token does not cover is refused with 401
/// and published nowhere.
#[tokio::test]
async fn mercure_publisher_library_publishes_to_the_hub() {
    let redis = TestRedis::start();
    let (a, b) = two_instances(&redis).await;
    let hub_a = format!("{}/.well-known/mercure", a.base());
    let reader = jwt(SUBSCRIBER_KEY, &json!({"mercure": {"subscribe": ["*"]}}));
    let mut subscriber = NodeSubscriber::start(&json!({
        "url": format!("{}/.well-known/mercure?topic=chat%2F%7Broom%7D", b.base()),
        "token": reader, "count": 3, "types": ["chat.message"]
    }))
    .opened()
    .await;

    let options = |topic: Value, data: &str, private: bool| {
        json!({
            "hub_url": hub_a, "key": PUBLISHER_KEY, "publish": ["chat/{room}"],
            "topic": topic, "data": data, "private": private, "type": "chat.message"
        })
    };
    let mut ids = Vec::new();
    for (topic, data, private) in [
        (json!("chat/lobby"), "hello\nfrom python", false),
        (json!("chat/staff"), "private hello", true),
    ] {
        let (code, line) = python_publish(&options(topic, data, private)).await;
        assert_eq!(code, Some(0), "{line}");
        ids.push(line["id"].as_str().unwrap().to_owned());
    }
    // `outside` is not covered by the library's token: nothing is published.
    let (code, line) =
        python_publish(&options(json!(["chat/lobby", "outside"]), "no", false)).await;
    assert_eq!(code, Some(3), "{line}");
    assert_eq!(line["status"], 401, "{line}");
    let body: Value = serde_json::from_str(line["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["error"]["message"],
        "topic outside not covered by mercure.publish"
    );
    let (code, line) = python_publish(&options(
        json!(["chat/lobby", "chat/general"]),
        "both rooms",
        false,
    ))
    .await;
    assert_eq!(code, Some(0), "{line}");
    ids.push(line["id"].as_str().unwrap().to_owned());

    let kind = "chat.message".to_owned();
    assert_eq!(
        subscriber.events(3).await,
        vec![
            (
                ids[0].clone(),
                kind.clone(),
                "hello\nfrom python".to_owned()
            ),
            (ids[1].clone(), kind.clone(), "private hello".to_owned()),
            (ids[2].clone(), kind, "both rooms".to_owned()),
        ]
    );
}
