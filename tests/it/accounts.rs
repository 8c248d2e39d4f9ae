//! `POST /accounts` and `GET /accounts/{id}` (SPEC §3.1, §3.2): every row of
//! the error table answers the JSON error envelope and stores and publishes
//! nothing (no SSE message, no history entry, no `account:*` key); a `201`
//! has the documented shape and the account reads back on the other instance.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    post_account,
    redis_inspect::{account_keys, history_len},
    SseClient, TestApp, TestRedis,
};

/// `--max-body-bytes` for the error-table instances.
const MAX_BODY: usize = 1024;
const MAX_BODY_ARG: &str = "1024";

/// How a row's body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// With `Content-Length`.
    Sized,
    /// `Transfer-Encoding: chunked`, length unknown up front.
    Chunked,
}

/// One request that must be rejected.
#[derive(Debug)]
struct Row {
    what: String,
    content_type: Option<&'static str>,
    body: String,
    framing: Framing,
    status: u16,
    code: &'static str,
    /// The field the message must name (422 rows).
    field: Option<&'static str>,
}

fn json_row(what: &str, body: &str, status: u16, code: &'static str) -> Row {
    Row {
        what: what.to_owned(),
        content_type: Some("application/json"),
        body: body.to_owned(),
        framing: Framing::Sized,
        status,
        code,
        field: None,
    }
}

fn invalid(what: &str, body: Value, field: &'static str) -> Row {
    Row {
        field: Some(field),
        ..json_row(what, &body.to_string(), 422, "validation_failed")
    }
}

/// Every row of the SPEC §3.1 error table, several ways each.
fn error_rows() -> Vec<Row> {
    let valid = r#"{"name":"a","balance":1}"#;
    let long_ascii = "a".repeat(101);
    let long_hangul = "가".repeat(101);
    let big = json!({ "name": "x".repeat(MAX_BODY), "balance": 1 }).to_string();
    let mut rows = vec![
        // 400 invalid_json
        json_row(
            "truncated JSON",
            r#"{"name":"a","balance":1"#,
            400,
            "invalid_json",
        ),
        json_row("not JSON at all", "not json", 400, "invalid_json"),
        json_row("empty body", "", 400, "invalid_json"),
        json_row(
            "trailing garbage",
            r#"{"name":"a","balance":1} x"#,
            400,
            "invalid_json",
        ),
        // 415 unsupported_media_type
        Row {
            content_type: None,
            ..json_row("no Content-Type", valid, 415, "unsupported_media_type")
        },
        Row {
            content_type: Some("text/plain"),
            ..json_row("text/plain", valid, 415, "unsupported_media_type")
        },
        Row {
            content_type: Some("application/x-www-form-urlencoded"),
            ..json_row("form content type", valid, 415, "unsupported_media_type")
        },
        // 422 validation_failed: shape
        invalid("array body", json!([]), "body"),
        invalid("null body", json!(null), "body"),
        invalid("string body", json!("x"), "body"),
        invalid("number body", json!(5), "body"),
        invalid("empty object", json!({}), "name"),
        invalid("no balance", json!({ "name": "a" }), "balance"),
        invalid("no name", json!({ "balance": 1 }), "name"),
        invalid(
            "unknown field",
            json!({ "name": "a", "balance": 1, "extra": 1 }),
            "extra",
        ),
        // 422: name type and content
        invalid(
            "name is a number",
            json!({ "name": 5, "balance": 1 }),
            "name",
        ),
        invalid(
            "name is null",
            json!({ "name": null, "balance": 1 }),
            "name",
        ),
        invalid("empty name", json!({ "name": "", "balance": 1 }), "name"),
        invalid(
            "blank name",
            json!({ "name": "  \t ", "balance": 1 }),
            "name",
        ),
        invalid(
            "101 ASCII chars",
            json!({ "name": long_ascii, "balance": 1 }),
            "name",
        ),
        invalid(
            "101 Hangul chars",
            json!({ "name": long_hangul, "balance": 1 }),
            "name",
        ),
        invalid(
            "NUL in name",
            json!({ "name": "a\u{0}b", "balance": 1 }),
            "name",
        ),
        invalid(
            "BEL in name",
            json!({ "name": "a\u{7}b", "balance": 1 }),
            "name",
        ),
        invalid(
            "LF in name",
            json!({ "name": "a\nb", "balance": 1 }),
            "name",
        ),
        invalid(
            "DEL in name",
            json!({ "name": "a\u{7f}b", "balance": 1 }),
            "name",
        ),
        invalid(
            "NEL in name",
            json!({ "name": "a\u{85}b", "balance": 1 }),
            "name",
        ),
        // 422: balance type and range
        invalid(
            "balance 1.5",
            json!({ "name": "a", "balance": 1.5 }),
            "balance",
        ),
        invalid(
            "balance \"100\"",
            json!({ "name": "a", "balance": "100" }),
            "balance",
        ),
        invalid(
            "balance -1",
            json!({ "name": "a", "balance": -1 }),
            "balance",
        ),
        invalid(
            "balance null",
            json!({ "name": "a", "balance": null }),
            "balance",
        ),
        invalid(
            "balance true",
            json!({ "name": "a", "balance": true }),
            "balance",
        ),
        invalid(
            "balance 2^53",
            json!({ "name": "a", "balance": 9_007_199_254_740_992_u64 }),
            "balance",
        ),
        invalid(
            "balance u64::MAX",
            json!({ "name": "a", "balance": u64::MAX }),
            "balance",
        ),
    ];
    // Literals serde_json::json! cannot spell.
    for (what, literal) in [
        ("balance 1e3", "1e3"),
        ("balance 2^64", "18446744073709551616"),
        ("balance -0.0", "-0.0"),
    ] {
        rows.push(Row {
            field: Some("balance"),
            ..json_row(
                what,
                &format!(r#"{{"name":"a","balance":{literal}}}"#),
                422,
                "validation_failed",
            )
        });
    }
    // 413 payload_too_large, with and without Content-Length.
    rows.push(json_row(
        "body over MAX_BODY_BYTES",
        &big,
        413,
        "payload_too_large",
    ));
    rows.push(Row {
        framing: Framing::Chunked,
        ..json_row(
            "chunked body over MAX_BODY_BYTES",
            &big,
            413,
            "payload_too_large",
        )
    });
    rows
}

async fn send(http: &reqwest::Client, base: &str, row: &Row) -> (u16, Value) {
    let mut request = http.post(format!("{base}/accounts"));
    if let Some(content_type) = row.content_type {
        request = request.header("content-type", content_type);
    }
    request = match row.framing {
        Framing::Sized => request.body(row.body.clone()),
        Framing::Chunked => {
            let bytes = bytes::Bytes::from(row.body.clone().into_bytes());
            // Two chunks, so no length is known before the body ends.
            let (a, b) = (
                bytes.slice(..bytes.len() / 2),
                bytes.slice(bytes.len() / 2..),
            );
            let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(a), Ok(b)]);
            request.body(reqwest::Body::wrap_stream(chunks))
        }
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{}: body is not JSON ({err}): {text:?}", row.what));
    (status, body)
}

/// Asserts `{"error":{"code":<code>,"message":<non-empty string>}}` and
/// nothing else; returns the message.
fn assert_error_body(what: &str, body: &Value, code: &str) -> String {
    let object = body.as_object().unwrap_or_else(|| panic!("{what}: {body}"));
    assert_eq!(object.len(), 1, "{what}: only `error` at top level: {body}");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {body}"));
    assert_eq!(error.len(), 2, "{what}: only code and message: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: message must be a string: {body}"));
    assert!(!message.is_empty(), "{what}: empty message");
    message.to_owned()
}

/// Sends every row and checks the answer; after each, `after_row` proves
/// nothing was stored or published.
async fn check_error_rows(app: &TestApp, sse: &mut SseClient, after_row: impl Fn(&Row)) {
    let http = reqwest::Client::new();
    for row in error_rows() {
        let (status, body) = send(&http, &app.base(), &row).await;
        assert_eq!(status, row.status, "{}: {body}", row.what);
        let message = assert_error_body(&row.what, &body, row.code);
        if let Some(field) = row.field {
            assert!(
                message.contains(field),
                "{}: message must name `{field}`: {message:?}",
                row.what
            );
        }
        let leaked = sse.next_frame(Duration::from_millis(150)).await;
        assert_eq!(leaked, None, "{}: the SSE client got a frame", row.what);
        after_row(&row);
    }
    // The client was live all along: a valid POST reaches it.
    let (status, account) = post_account(&http, &app.base(), "after the errors", 1).await;
    assert_eq!(status, 201, "{account}");
    let frames = sse.messages(1, Duration::from_secs(5)).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].json()["data"], account);
}

/// Every error row on the Redis bus: right status, code and envelope, and no
/// SSE message, history entry or account key afterwards.
#[tokio::test]
async fn every_error_row_on_redis_answers_json_and_stores_nothing() {
    let redis = TestRedis::start();
    let url = redis.url();
    let app = TestApp::spawn(&["--redis-url", &url, "--max-body-bytes", MAX_BODY_ARG]).await;
    let (mut sse, _) = SseClient::open(&format!("{}/events/sse", app.base()), None).await;
    assert_eq!(history_len(&redis), 0);
    check_error_rows(&app, &mut sse, |row| {
        assert_eq!(history_len(&redis), 0, "{}: history grew", row.what);
        assert_eq!(
            account_keys(&redis),
            Vec::<String>::new(),
            "{}: an account was stored",
            row.what
        );
    })
    .await;
    assert_eq!(history_len(&redis), 1);
    assert_eq!(account_keys(&redis).len(), 1);
    app.shutdown().await;
}

/// The same table on the memory bus: same answers, nothing published.
#[tokio::test]
async fn every_error_row_on_memory_bus_answers_json_and_publishes_nothing() {
    let app = TestApp::spawn(&["--max-body-bytes", MAX_BODY_ARG]).await;
    let (mut sse, _) = SseClient::open(&format!("{}/events/sse", app.base()), None).await;
    check_error_rows(&app, &mut sse, |_| {}).await;
    app.shutdown().await;
}

/// A body of exactly `MAX_BODY_BYTES` is accepted (the limit is inclusive
/// of its value, not off by one).
#[tokio::test]
async fn body_of_exactly_max_body_bytes_is_accepted() {
    let app = TestApp::spawn(&["--max-body-bytes", MAX_BODY_ARG]).await;
    let prefix = r#"{"name":"a","balance":1}"#;
    // Pad with JSON whitespace up to the limit.
    let body = format!("{prefix}{}", " ".repeat(MAX_BODY - prefix.len()));
    assert_eq!(body.len(), MAX_BODY);
    let response = reqwest::Client::new()
        .post(format!("{}/accounts", app.base()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    app.shutdown().await;
}

/// Splits `YYYY-MM-DDTHH:MM:SS.mmmZ` into a UTC instant; panics on any other form.
fn parse_rfc3339_ms_utc(s: &str) -> time::OffsetDateTime {
    let b = s.as_bytes();
    assert_eq!(
        b.len(),
        24,
        "createdAt {s:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    for (i, &c) in b.iter().enumerate() {
        let expected_sep = match i {
            4 | 7 => Some(b'-'),
            10 => Some(b'T'),
            13 | 16 => Some(b':'),
            19 => Some(b'.'),
            23 => Some(b'Z'),
            _ => None,
        };
        match expected_sep {
            Some(sep) => assert_eq!(c, sep, "createdAt {s:?} at {i}"),
            None => assert!(c.is_ascii_digit(), "createdAt {s:?} at {i}"),
        }
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap();
    let month = time::Month::try_from(u8::try_from(n(5..7)).unwrap()).unwrap();
    let date = time::Date::from_calendar_date(n(0..4) as i32, month, n(8..10) as u8).unwrap();
    let clock = time::Time::from_hms_milli(
        n(11..13) as u8,
        n(14..16) as u8,
        n(17..19) as u8,
        n(20..23) as u16,
    )
    .unwrap();
    time::PrimitiveDateTime::new(date, clock).assume_utc()
}

/// `201`: Location, UUID v7 id, RFC 3339 ms UTC createdAt, serverId, a
/// trimmed non-ASCII name; the other instance reads the same JSON back.
#[tokio::test]
async fn created_account_has_documented_shape_and_reads_back_on_the_other_instance() {
    let redis = TestRedis::start();
    let url = redis.url();
    let a = TestApp::spawn(&["--server-id", "backend-1", "--redis-url", &url]).await;
    let b = TestApp::spawn(&["--server-id", "backend-2", "--redis-url", &url]).await;
    let http = reqwest::Client::new();

    let response = http
        .post(format!("{}/accounts", b.base()))
        .json(&json!({ "name": "  다중서버테스트 \t", "balance": 999_999 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let account: Value = response.json().await.unwrap();

    let fields: Vec<&str> = account
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = fields.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["balance", "createdAt", "id", "name", "serverId"],
        "{account}"
    );
    assert_eq!(account["name"], "다중서버테스트", "name is trimmed");
    assert_eq!(account["balance"], 999_999);
    assert_eq!(account["serverId"], "backend-2");
    let id_text = account["id"].as_str().unwrap();
    let id = uuid::Uuid::parse_str(id_text).unwrap();
    assert_eq!(id.get_version_num(), 7, "{id} is not a UUID v7");
    assert_eq!(
        id_text,
        id.hyphenated().to_string(),
        "lower-case hyphenated"
    );
    assert_eq!(location, format!("/accounts/{id_text}"));

    let created_at = parse_rfc3339_ms_utc(account["createdAt"].as_str().unwrap());
    let now = time::OffsetDateTime::now_utc();
    assert!(
        (now - created_at).abs() < time::Duration::seconds(60),
        "createdAt {created_at} is not now ({now})"
    );
    let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
    let id_time = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap()
        + time::Duration::nanoseconds(i64::from(nanos));
    assert!(
        (id_time - created_at).abs() < time::Duration::seconds(5),
        "id time {id_time} vs createdAt {created_at}"
    );

    // Read back on the other instance and on the creating one: same JSON.
    for base in [a.base(), b.base()] {
        let response = http.get(format!("{base}{location}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{base}");
        let read: Value = response.json().await.unwrap();
        assert_eq!(read, account, "{base}");
    }
    assert_eq!(account_keys(&redis), [format!("account:{id_text}")]);

    // 100 characters (after trimming) is the largest valid name.
    let hundred = format!(" {} ", "가".repeat(100));
    let (status, long) = post_account(&http, &a.base(), &hundred, 0).await;
    assert_eq!(status, 201, "{long}");
    assert_eq!(long["name"].as_str().unwrap().chars().count(), 100);
    let (status, max) = post_account(&http, &a.base(), "max", 9_007_199_254_740_991).await;
    assert_eq!(status, 201, "{max}");
    assert_eq!(max["balance"], 9_007_199_254_740_991_u64);

    a.shutdown().await;
    b.shutdown().await;
}

/// `GET /accounts/{id}` for an unknown or malformed id: 404 `not_found`.
#[tokio::test]
async fn unknown_or_malformed_account_id_is_not_found() {
    let redis = TestRedis::start();
    let url = redis.url();
    let a = TestApp::spawn(&["--redis-url", &url]).await;
    let memory = TestApp::spawn(&[]).await;
    let http = reqwest::Client::new();
    let unknown = uuid::Uuid::now_v7().to_string();
    for app in [&a, &memory] {
        for id in [
            unknown.as_str(),
            "not-a-uuid",
            "0193f1a2-7c4e-7b21-9a53",
            "1",
            "%E2%9C%93",
        ] {
            let response = http
                .get(format!("{}/accounts/{id}", app.base()))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{id}");
            let body: Value = response.json().await.unwrap();
            assert_error_body(id, &body, "not_found");
        }
    }
    a.shutdown().await;
    memory.shutdown().await;
}
