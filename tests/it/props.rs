//! HTTP-level property test (issue 7): for any name, including escapes for
//! control characters and unpaired UTF-16 surrogates, and assorted balances,
//! `POST /accounts` answers 201 or 422 exactly as SPEC §3.1 says (never 5xx,
//! never 400 for valid JSON text), and every 201 reaches an SSE client as a
//! message whose `data` is byte for byte the event JSON of that account.

use std::{sync::Mutex, time::Duration};

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use sse_fanout::model::{event_json, event_tail, Account, EventId, MAX_BALANCE};

use crate::support::{SseClient, TestApp};

/// One piece of the name's JSON text: a character (JSON-encoded by serde)
/// or a raw `\u` escape of a surrogate.
#[derive(Debug, Clone)]
enum Piece {
    Char(char),
    Surrogate(u16),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => any::<char>().prop_map(Piece::Char),
        4 => prop::sample::select(vec![
            'a', '다', '😀', ' ', '\t', '\n', '\r', '\0', '\u{7f}', '\u{85}', '\u{a0}',
            '\u{2028}', '\u{3000}', '"', '\\', '/',
        ]).prop_map(Piece::Char),
        1 => prop::sample::select(vec![0xD800u16, 0xDBFF, 0xDC00, 0xDFFF]).prop_map(Piece::Surrogate),
    ]
}

/// Balances as JSON text, with whether SPEC §3.1 accepts them.
fn balance() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        (0..=MAX_BALANCE).prop_map(|b| (b.to_string(), true)),
        prop::sample::select(vec![
            ("0", true),
            ("9007199254740991", true),
            ("9007199254740992", false),
            ("18446744073709551616", false),
            ("100000000000000000000000000000000", false),
            ("-1", false),
            ("1.5", false),
            ("1e3", false),
            ("1.0", false),
            ("\"100\"", false),
            ("null", false),
        ])
        .prop_map(|(t, ok)| (t.to_owned(), ok)),
    ]
}

/// The SPEC §3.1 name rule (trim White_Space, 1..=100 scalar values, no Cc).
fn name_ok(name: &str) -> bool {
    let trimmed = name.trim_matches(char::is_whitespace);
    let n = trimmed.chars().count();
    (1..=100).contains(&n)
        && !trimmed
            .chars()
            .any(|c| matches!(c as u32, 0..=0x1F | 0x7F..=0x9F))
}

/// 64 random requests against one in-process memory-bus instance.
#[test]
fn any_name_gets_201_or_422_and_201s_arrive_exactly() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestApp::spawn(&["--server-id", "prop-1"]));
    let base = app.base();
    let (sse, _) = rt.block_on(SseClient::open(&format!("{base}/events/sse"), None));
    let sse = tokio::sync::Mutex::new(sse);
    let http = reqwest::Client::new();
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    // Short names of any pieces (mostly refused), and long printable ones
    // around the 100-character limit, padded with whitespace (mostly accepted).
    let printable = "[ \\t\\n\\u{3000}]{0,2}\\PC{1,102}[ \\r\\u{85}]{0,2}"
        .prop_map(|s: String| s.chars().map(Piece::Char).collect::<Vec<_>>());
    let names = prop_oneof![prop::collection::vec(piece(), 0..10), printable];
    let strategy = (names, balance());
    let created = Mutex::new(0u32);
    runner
        .run(&strategy, |(pieces, (balance, balance_ok))| {
            let mut json_name = String::from("\"");
            let mut name = String::new();
            let mut lone_surrogate = false;
            for piece in &pieces {
                match piece {
                    Piece::Char(c) => {
                        name.push(*c);
                        let encoded = serde_json::to_string(&c.to_string()).unwrap();
                        json_name.push_str(&encoded[1..encoded.len() - 1]);
                    }
                    Piece::Surrogate(s) => {
                        lone_surrogate = true;
                        json_name.push_str(&format!("\\u{s:04x}"));
                    }
                }
            }
            json_name.push('"');
            let body = format!(r#"{{"name":{json_name},"balance":{balance}}}"#);
            let accept = !lone_surrogate && balance_ok && name_ok(&name);
            rt.block_on(async {
                let response = http
                    .post(format!("{base}/accounts"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let json: serde_json::Value = response.json().await.unwrap();
                if !accept {
                    prop_assert_eq!(status, 422, "{} -> {}", body, json);
                    prop_assert_eq!(&json["error"]["code"], "validation_failed");
                    return Ok(());
                }
                prop_assert_eq!(status, 201, "{} -> {}", body, json);
                *created.lock().unwrap() += 1;
                let account: Account = serde_json::from_value(json).unwrap();
                prop_assert_eq!(&account.name, name.trim());
                let mut sse = sse.lock().await;
                let frames = sse.messages(1, Duration::from_secs(5)).await;
                prop_assert_eq!(frames.len(), 1, "{:?}", frames);
                let frame = &frames[0];
                let id: EventId = frame.id.as_deref().unwrap().parse().unwrap();
                let timestamp = frame.json()["timestamp"].as_str().unwrap().to_owned();
                let expected = event_json(
                    id,
                    None,
                    &event_tail(&account, false, "prop-1", &timestamp).unwrap(),
                );
                prop_assert_eq!(&frame.data, &expected);
                Ok(())
            })
        })
        .unwrap();
    // The strategy makes valid cases common; a run with none proves little.
    let created = *created.lock().unwrap();
    eprintln!("{created} of 64 cases were accepted");
    assert!(created > 0, "no case was accepted");
    // Nothing else was published.
    let extra = rt.block_on(async {
        sse.lock()
            .await
            .next_frame(Duration::from_millis(200))
            .await
    });
    assert_eq!(extra, None);
    rt.block_on(app.shutdown());
}
