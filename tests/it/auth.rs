//! Publisher authorization of `POST /accounts` (SPEC §8.4 "Publishing"): a
//! publisher JWT whose `mercure.publish` covers the topic `accounts` may
//! publish, every other token gets `401` saying why and publishes nothing
//! (no SSE message, no history entry), and `PUBLISH_TOKEN` keeps working
//! beside the JWT key. On the memory bus and on a real Redis.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{redis_inspect::history_len, SseClient, TestApp, TestRedis};

const SECRET: &str = "integration-test-publisher-secret";
const PUBLISH_TOKEN: &str = "shared-publish-token-value";

fn token(secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs an account with `authorization` (a full header value, or none);
/// returns status, `WWW-Authenticate` and body.
async fn post(
    http: &reqwest::Client,
    base: &str,
    authorization: Option<&str>,
    name: &str,
) -> (u16, Option<String>, Value) {
    let mut request = http
        .post(format!("{base}/accounts"))
        .json(&json!({"name": name, "balance": 1}));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, response.json().await.unwrap())
}

/// The scenario on one instance; `redis` is checked for history entries.
async fn publisher_jwt_scenario(app: &TestApp, redis: Option<&TestRedis>) {
    let http = reqwest::Client::new();
    let base = app.base();
    let (mut sse, _) = SseClient::open(&format!("{base}/events/sse"), None).await;
    let history_before = redis.map(history_len);

    let mut expired = json!({"mercure": {"publish": ["accounts"]}});
    expired["exp"] = json!(now() - 60);
    let refused: Vec<(String, Option<String>, &str, &str)> = vec![
        ("no token".to_owned(), None, "a token is required", "Bearer"),
        (
            "publish: [other]".to_owned(),
            Some(token(SECRET, &json!({"mercure": {"publish": ["other"]}}))),
            "topic accounts not covered by mercure.publish",
            "Bearer",
        ),
        (
            "no mercure claim".to_owned(),
            Some(token(SECRET, &json!({"sub": "backend"}))),
            "token has no mercure claim",
            "Bearer",
        ),
        (
            "wrong key".to_owned(),
            Some(token(
                "not-the-secret",
                &json!({"mercure": {"publish": ["*"]}}),
            )),
            "token signature is invalid",
            "Bearer error=\"invalid_token\", error_description=\"token signature is invalid\"",
        ),
        (
            "expired".to_owned(),
            Some(token(SECRET, &expired)),
            "token expired",
            "Bearer error=\"invalid_token\", error_description=\"token expired\"",
        ),
        (
            "wrong PUBLISH_TOKEN".to_owned(),
            Some(format!("{PUBLISH_TOKEN}x")),
            "token is malformed",
            "Bearer error=\"invalid_token\"",
        ),
    ];
    for (what, bearer, message, challenge) in refused {
        let header = bearer.as_ref().map(|t| format!("Bearer {t}"));
        let (status, got_challenge, body) = post(&http, &base, header.as_deref(), &what).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{what}: {text:?}");
        if let Some(bearer) = &bearer {
            assert!(!text.contains(bearer.as_str()), "{what}: token echoed");
        }
        let got_challenge = got_challenge.unwrap_or_default();
        assert!(
            got_challenge.starts_with(challenge),
            "{what}: WWW-Authenticate {got_challenge:?}"
        );
    }
    if let (Some(redis), Some(before)) = (redis, history_before) {
        assert_eq!(history_len(redis), before, "a refused POST added an event");
    }

    // The stream was live all along: the first message it gets is the first
    // allowed POST, so none of the refused ones was published.
    let allowed = [
        (
            "publish: [accounts]",
            format!(
                "Bearer {}",
                token(SECRET, &json!({"mercure": {"publish": ["accounts"]}}))
            ),
        ),
        (
            "publish: [*]",
            format!(
                "Bearer {}",
                token(SECRET, &json!({"mercure": {"publish": ["*"]}}))
            ),
        ),
        ("PUBLISH_TOKEN", format!("Bearer {PUBLISH_TOKEN}")),
    ];
    for (what, header) in &allowed {
        let (status, _, body) = post(&http, &base, Some(header), what).await;
        assert_eq!(status, 201, "{what}: {body}");
    }
    let frames = sse.messages(allowed.len(), Duration::from_secs(5)).await;
    let names: Vec<Value> = frames
        .iter()
        .filter(|f| f.is_message())
        .map(|f| f.json()["data"]["name"].clone())
        .collect();
    let expected: Vec<Value> = allowed.iter().map(|(what, _)| json!(what)).collect();
    assert_eq!(names, expected);
    if let (Some(redis), Some(before)) = (redis, history_before) {
        assert_eq!(history_len(redis), before + allowed.len() as u64);
    }
}

#[tokio::test]
async fn post_accounts_with_publisher_jwt_on_the_memory_bus() {
    let app = TestApp::spawn(&[
        "--mercure-publisher-jwt-key",
        SECRET,
        "--publish-token",
        PUBLISH_TOKEN,
    ])
    .await;
    publisher_jwt_scenario(&app, None).await;
    app.shutdown().await;
}

#[tokio::test]
async fn post_accounts_with_publisher_jwt_on_redis() {
    let redis = TestRedis::start();
    let url = redis.url();
    let app = TestApp::spawn(&[
        "--redis-url",
        &url,
        "--mercure-publisher-jwt-key",
        SECRET,
        "--publish-token",
        PUBLISH_TOKEN,
    ])
    .await;
    publisher_jwt_scenario(&app, Some(&redis)).await;
    app.shutdown().await;
}

/// CORS with an explicit origin list allows credentials (the
/// `mercureAuthorization` cookie) and the Mercure request headers; with `*`
/// it never allows credentials (SPEC §8.4).
#[tokio::test]
async fn cors_credentials_only_with_an_origin_list() {
    let http = reqwest::Client::new();
    let origin = "https://app.example.com";
    let preflight = |base: String| {
        let http = http.clone();
        async move {
            http.request(reqwest::Method::OPTIONS, format!("{base}/events/sse"))
                .header("origin", origin)
                .header("access-control-request-method", "GET")
                .header(
                    "access-control-request-headers",
                    "authorization,cache-control,last-event-id",
                )
                .send()
                .await
                .unwrap()
        }
    };
    let list = TestApp::spawn(&["--cors-allowed-origins", origin]).await;
    let response = preflight(list.base()).await;
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], origin);
    assert_eq!(h["access-control-allow-credentials"], "true");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "authorization",
        "cache-control",
        "last-event-id",
        "content-type",
    ] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }
    let get = http
        .get(format!("{}/health", list.base()))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    let exposed = get.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("last-event-id"), "{exposed}");
    assert_eq!(get.headers()["access-control-allow-credentials"], "true");
    list.shutdown().await;

    let any = TestApp::spawn(&["--cors-allowed-origins", "*"]).await;
    let response = preflight(any.base()).await;
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(response
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    any.shutdown().await;
}
