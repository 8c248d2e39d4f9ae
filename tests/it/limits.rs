//! Limits, CORS and publisher authorization (issue 7, SPEC §2, §3): an
//! oversized body gets 413 with or without `Content-Length`; the
//! `MAX_SSE_CLIENTS`+1-th stream gets 503 `too_many_clients` with
//! `Retry-After` and a freed slot is reusable; a slowloris connection is cut
//! after `HEADER_READ_TIMEOUT_SECS`; a stalled body gets a JSON 408 after
//! `REQUEST_TIMEOUT_SECS`; errors produced by layers (405, 404, 408) carry the
//! SPEC §3 JSON error body; CORS headers follow `CORS_ALLOWED_ORIGINS`; with
//! `PUBLISH_TOKEN` only a correct bearer token publishes, reads stay open.

use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{eventually, post_account, SseClient, TestApp};

const SECS5: Duration = Duration::from_secs(5);

/// Asserts the SPEC §3 error shape and returns the body.
async fn error_body(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "{response:?}");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

/// `{"name":"<n × x>","balance":1}`: valid JSON, `len` bytes or a bit more.
fn big_json(len: usize) -> String {
    format!(r#"{{"name":"{}","balance":1}}"#, "x".repeat(len))
}

/// Reads `/health` `sseClients`.
async fn sse_clients(http: &reqwest::Client, base: &str) -> u64 {
    let health: serde_json::Value = crate::support::get_json(http, &format!("{base}/health")).await;
    health["sseClients"].as_u64().unwrap()
}

/// A body over `MAX_BODY_BYTES` is refused with 413 `payload_too_large`, whether
/// its size is announced (`Content-Length`) or only discovered while reading
/// (chunked); one byte under the limit is still accepted.
#[tokio::test]
async fn oversized_bodies_get_413_with_and_without_content_length() {
    let app = TestApp::spawn(&["--max-body-bytes", "1024"]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/accounts", app.base());

    let announced = http
        .post(&url)
        .header("content-type", "application/json")
        .body(big_json(4096))
        .send()
        .await
        .unwrap();
    error_body(announced, 413, "payload_too_large").await;

    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(r#"{"name":""#.to_owned()),
        Ok("y".repeat(4096)),
        Ok(r#"","balance":1}"#.to_owned()),
    ];
    let chunked = http
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    error_body(chunked, 413, "payload_too_large").await;

    // Just under the limit: parsed and validated normally (name too long → 422).
    let under = big_json(1024 - big_json(0).len());
    assert_eq!(under.len(), 1024);
    let response = http
        .post(&url)
        .header("content-type", "application/json")
        .body(under)
        .send()
        .await
        .unwrap();
    error_body(response, 422, "validation_failed").await;
    app.shutdown().await;
}

/// With `MAX_SSE_CLIENTS=2` the third stream gets 503 `too_many_clients` with
/// `Retry-After`; once one of the two closes, a new stream is admitted.
#[tokio::test]
async fn sse_clients_beyond_the_limit_get_503_until_a_slot_frees() {
    let app = TestApp::spawn(&["--max-sse-clients", "2"]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/events/sse", app.base());
    let (first, _) = SseClient::open(&url, None).await;
    let (_second, _) = SseClient::open(&url, None).await;
    assert_eq!(sse_clients(&http, &app.base()).await, 2);

    let third = http.get(&url).send().await.unwrap();
    let retry_after: u64 = third
        .headers()
        .get("retry-after")
        .expect("Retry-After on 503")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    error_body(third, 503, "too_many_clients").await;

    drop(first);
    let mut admitted = eventually(SECS5, "a freed slot to admit a new stream", || async {
        let client = SseClient::connect(&url).await;
        (client.status == 200).then_some(client)
    })
    .await;
    let preamble = admitted.next_frame(SECS5).await.unwrap();
    assert!(preamble.retry.is_some(), "{preamble:?}");
    assert_eq!(sse_clients(&http, &app.base()).await, 2);
    app.shutdown().await;
}

/// A client that sends part of a request line and then nothing is
/// disconnected once `HEADER_READ_TIMEOUT_SECS` (1 s) passes, not before.
#[tokio::test]
async fn slowloris_partial_request_is_cut_after_the_header_timeout() {
    let app = TestApp::spawn(&["--header-read-timeout-secs", "1"]).await;
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    partial.write_all(b"GET /health HT").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let mut received = Vec::new();
    let closed = tokio::time::timeout(SECS5, async {
        loop {
            match partial.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        closed.is_ok(),
        "connection still open after {SECS5:?}; got {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before the 1 s timeout"
    );
    // A complete request on a fresh connection is still served.
    let http = reqwest::Client::new();
    let live = http.get(format!("{}/health/live", app.base())).send().await;
    assert_eq!(live.unwrap().status(), 200);
    app.shutdown().await;
}

/// A request whose body stalls is answered 408 with the JSON error body once
/// `REQUEST_TIMEOUT_SECS` (1 s) passes, and nothing is stored.
#[tokio::test]
async fn stalled_body_gets_json_408_after_the_request_timeout() {
    let app = TestApp::spawn(&["--request-timeout-secs", "1"]).await;
    let http = reqwest::Client::new();
    let first: Vec<Result<&'static str, std::io::Error>> = vec![Ok(r#"{"name":"slow","#)];
    let body = stream::iter(first).chain(stream::pending());
    let started = Instant::now();
    let response = tokio::time::timeout(
        SECS5,
        http.post(format!("{}/accounts", app.base()))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    )
    .await
    .expect("no response within 5 s")
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    error_body(response, 408, "request_timeout").await;
    app.shutdown().await;
}

/// Errors made by layers rather than handlers still use the SPEC §3 body:
/// 405 for a wrong method (keeping `Allow`), 404 for an unknown path.
#[tokio::test]
async fn layer_errors_use_the_json_error_body() {
    let app = TestApp::spawn(&[]).await;
    let http = reqwest::Client::new();
    let base = app.base();

    let response = http
        .delete(format!("{base}/accounts"))
        .send()
        .await
        .unwrap();
    let allow = response.headers().get("allow").cloned();
    error_body(response, 405, "method_not_allowed").await;
    assert!(
        allow.is_some_and(|a| a.to_str().unwrap().contains("POST")),
        "Allow header kept"
    );
    let response = http.post(format!("{base}/health")).send().await.unwrap();
    error_body(response, 405, "method_not_allowed").await;
    let response = http.put(format!("{base}/events/sse")).send().await.unwrap();
    error_body(response, 405, "method_not_allowed").await;

    let response = http
        .get(format!("{base}/no/such/api"))
        .send()
        .await
        .unwrap();
    error_body(response, 404, "not_found").await;
    let response = http
        .get(format!("{base}/accounts/not-a-uuid"))
        .send()
        .await
        .unwrap();
    error_body(response, 404, "not_found").await;

    // The page itself is still served as HTML.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    app.shutdown().await;
}

/// `Access-Control-Allow-Origin` of a GET with this `Origin`.
async fn acao(http: &reqwest::Client, url: &str, origin: &str) -> Option<String> {
    let response = http.get(url).header("origin", origin).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// CORS per SPEC §2: unset → no CORS headers (and no preflight success);
/// `*` → `*`; a list → the request's origin echoed when listed, nothing
/// otherwise; preflight for `POST /accounts` allows the method and headers.
#[tokio::test]
async fn cors_follows_the_allowed_origins_setting() {
    let http = reqwest::Client::new();
    let origin = "https://app.example.com";

    let off = TestApp::spawn(&[]).await;
    assert_eq!(
        acao(&http, &format!("{}/health", off.base()), origin).await,
        None
    );
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{}/accounts", off.base()))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    off.shutdown().await;

    let any = TestApp::spawn(&["--cors-allowed-origins", "*"]).await;
    assert_eq!(
        acao(&http, &format!("{}/health", any.base()), origin)
            .await
            .as_deref(),
        Some("*")
    );
    any.shutdown().await;

    let list = TestApp::spawn(&[
        "--cors-allowed-origins",
        "https://app.example.com, http://localhost:8080",
    ])
    .await;
    let health = format!("{}/health", list.base());
    assert_eq!(acao(&http, &health, origin).await.as_deref(), Some(origin));
    assert_eq!(
        acao(&http, &health, "http://localhost:8080")
            .await
            .as_deref(),
        Some("http://localhost:8080")
    );
    assert_eq!(acao(&http, &health, "https://evil.example").await, None);
    let vary = http
        .get(&health)
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    let vary = vary
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    assert!(vary.contains("origin"), "Vary: {vary}");
    assert_eq!(
        acao(&http, &health, "https://app.example.com.evil").await,
        None
    );

    // The SSE stream (what a cross-origin EventSource opens).
    let sse = http
        .get(format!("{}/events/sse", list.base()))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["access-control-allow-origin"], origin);
    drop(sse);

    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/accounts", list.base()),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{preflight:?}");
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], origin);
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    assert!(methods.contains("POST"), "{methods}");
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        headers.contains("content-type") && headers.contains("authorization"),
        "{headers}"
    );
    let denied = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/accounts", list.base()),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(denied
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    list.shutdown().await;
}

/// With `PUBLISH_TOKEN`, `POST /accounts` needs `Authorization: Bearer <token>`:
/// missing, wrong, wrong-scheme or prefix tokens get 401 `unauthorized` with
/// `WWW-Authenticate: Bearer` and publish nothing; the right token gets 201
/// and the event; `GET /accounts/{id}` and the SSE stream need no token.
#[tokio::test]
async fn publish_token_guards_post_only() {
    let token = "s3cret-token-value";
    let app = TestApp::spawn(&["--publish-token", token]).await;
    let http = reqwest::Client::new();
    let base = app.base();
    let (mut sse, _) = SseClient::open(&format!("{base}/events/sse"), None).await;
    let body = serde_json::json!({"name": "guarded", "balance": 5});

    let bad_auth = [
        None,
        Some("Bearer wrong-token-value!".to_owned()),
        Some(format!("Bearer {}", &token[..token.len() - 1])),
        Some(format!("Bearer {token}x")),
        Some(format!("Basic {token}")),
        Some(format!("bearer{token}")),
        Some("Bearer ".to_owned()),
    ];
    for auth in bad_auth {
        let mut request = http.post(format!("{base}/accounts")).json(&body);
        if let Some(auth) = &auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let challenge = response.headers().get("www-authenticate").cloned();
        error_body(response, 401, "unauthorized").await;
        assert_eq!(
            challenge.map(|c| c.to_str().unwrap().to_owned()).as_deref(),
            Some("Bearer"),
            "{auth:?}"
        );
    }
    // Nothing was published by the refused requests.
    assert_eq!(sse.next_frame(Duration::from_millis(300)).await, None);

    let (status, _) = post_account(&http, &base, "no token", 1).await;
    assert_eq!(status, 401);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let response = http
        .post(format!("{base}/accounts"))
        .header("authorization", format!("bearer {token}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let account: serde_json::Value = response.json().await.unwrap();
    let frames = sse.messages(1, SECS5).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].json()["data"], account);

    let fetched = http
        .get(format!(
            "{base}/accounts/{}",
            account["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.json::<serde_json::Value>().await.unwrap(), account);
    app.shutdown().await;
}
