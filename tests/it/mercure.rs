//! The Mercure hub (SPEC §8) end to end: topics and selectors, framing,
//! publishing and its error table, idempotent ids, resume with supplied ids
//! and `earliest`, fan-out by topic across two instances. Real redis-server,
//! real instances; the in-process bus where the rule holds for it too.

use std::time::Duration;

use crate::support::{
    delivery::{BusKind, Cluster},
    redis_inspect::history_len,
    SseClient, SseFrame,
};

const WAIT: Duration = Duration::from_secs(5);
/// How long a subscriber must stay silent to show nothing was delivered.
const QUIET: Duration = Duration::from_millis(400);

/// `POST /.well-known/mercure` with form `fields`; `(status, content type, body)`.
async fn publish_with(
    base: &str,
    fields: &[(&str, &str)],
    bearer: Option<&str>,
) -> (u16, String, String) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    publish_raw(base, &body, bearer).await
}

async fn publish_raw(base: &str, body: &str, bearer: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/.well-known/mercure"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// Publishes and asserts `200 text/plain`; returns the event id.
async fn publish(base: &str, fields: &[(&str, &str)]) -> String {
    let (status, content_type, body) = publish_with(base, fields, None).await;
    assert_eq!(status, 200, "{fields:?}: {body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    body
}

/// `GET /.well-known/mercure?topic=…` (plus `extra` query pairs); asserts 200
/// and reads the `:` comment the hub sends first.
async fn subscribe(base: &str, topics: &[&str], last_event_id: Option<&str>) -> SseClient {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(topics.iter().map(|t| ("topic", *t)))
        .finish();
    let url = format!("{base}/.well-known/mercure?{query}");
    let mut client = SseClient::connect_with(&url, last_event_id).await;
    assert_eq!(client.status, 200, "GET {url}");
    let first = client.next_frame(WAIT).await.expect("first frame");
    assert!(
        first.comment.is_some(),
        "expected a comment first: {first:?}"
    );
    client
}

/// The next update frame (skipping comments), or `None` within `timeout`.
async fn next_update(client: &mut SseClient, timeout: Duration) -> Option<SseFrame> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = client.next_frame(left).await?;
        if frame.comment.is_none() {
            return Some(frame);
        }
    }
}

/// Reads exactly `n` updates; panics if fewer arrive within [`WAIT`].
async fn updates(client: &mut SseClient, n: usize) -> Vec<SseFrame> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_update(client, WAIT).await {
            Some(frame) => out.push(frame),
            None => panic!("got {} of {n} updates: {out:?}", out.len()),
        }
    }
    out
}

fn ids(frames: &[SseFrame]) -> Vec<String> {
    frames.iter().map(|f| f.id.clone().unwrap()).collect()
}

async fn assert_silent(client: &mut SseClient) {
    if let Some(frame) = next_update(client, QUIET).await {
        panic!("expected nothing, got {frame:?}");
    }
}

/// Selectors (exact, `*`, templates, alternate topics) and the Mercure
/// framing: `event:` if typed, `retry:` if set, `id:`, one `data:` line per
/// line of data (CRLF, CR and LF all split); the native endpoint's envelope.
async fn selectors_and_framing(kind: BusKind) {
    let cluster = Cluster::start(kind, 2, &[]).await;
    let (a, b) = (cluster.base(0), cluster.base(1));
    let mut exact = subscribe(&a, &["https://example.com/books/1"], None).await;
    let mut template = subscribe(&b, &["https://example.com/books/{id}"], None).await;
    let mut any = subscribe(&a, &["*"], None).await;
    let mut author = subscribe(&b, &["authors/9"], None).await;
    let (mut native, _) = SseClient::open(&format!("{b}/events/sse?topic=authors%2F9"), None).await;

    let first = publish(
        &b,
        &[
            ("topic", "https://example.com/books/1"),
            ("topic", "authors/9"),
            ("data", "line one\r\nline two\rline three\nline four"),
            ("type", "book.updated"),
            ("retry", "2500"),
        ],
    )
    .await;
    let second = publish(
        &a,
        &[
            ("topic", "https://example.com/books/2"),
            ("data", "{\"n\":2}"),
        ],
    )
    .await;
    let third = publish(&a, &[("topic", "elsewhere"), ("data", "")]).await;
    assert!(
        first.parse::<sse_fanout::model::EventId>().is_ok(),
        "generated ids are stream ids: {first}"
    );

    let got = updates(&mut exact, 1).await;
    assert_eq!(ids(&got), [first.as_str()]);
    assert_eq!(got[0].event.as_deref(), Some("book.updated"));
    assert_eq!(got[0].retry.as_deref(), Some("2500"));
    assert_eq!(got[0].data, "line one\nline two\nline three\nline four");
    assert_eq!(
        ids(&updates(&mut template, 2).await),
        [first.clone(), second.clone()]
    );
    let all = updates(&mut any, 3).await;
    assert_eq!(ids(&all), [first.clone(), second.clone(), third.clone()]);
    // No type: no `event:` line; JSON data verbatim; empty data is one empty `data:`.
    assert_eq!(
        (all[1].event.as_deref(), all[1].data.as_str()),
        (None, "{\"n\":2}")
    );
    assert_eq!(all[2].data, "");
    // An alternate topic matches like the canonical one.
    assert_eq!(ids(&updates(&mut author, 1).await), [first.as_str()]);
    let frames = native.messages(1, WAIT).await;
    let envelope = frames[0].json();
    assert_eq!(frames[0].id.as_deref(), Some(first.as_str()));
    assert_eq!(envelope["type"], "book.updated");
    assert_eq!(
        envelope["topics"],
        serde_json::json!(["https://example.com/books/1", "authors/9"])
    );
    assert_eq!(
        envelope["data"],
        "line one\r\nline two\rline three\nline four"
    );
    let publisher = if kind == BusKind::Memory {
        "backend-1"
    } else {
        "backend-2"
    };
    assert_eq!(envelope["serverId"], publisher);
    for client in [&mut exact, &mut template, &mut author] {
        assert_silent(client).await;
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn selectors_and_framing_on_memory() {
    selectors_and_framing(BusKind::Memory).await;
}

#[tokio::test]
async fn selectors_and_framing_on_redis_across_two_instances() {
    selectors_and_framing(BusKind::Redis).await;
}

/// `POST /accounts` publishes `account.created` on `accounts/<id>` and
/// `accounts` (SPEC §8.1): a Mercure subscriber of one account's topic gets
/// its event with the account as data; others do not.
#[tokio::test]
async fn account_events_have_topics() {
    let cluster = Cluster::start(BusKind::Redis, 2, &[]).await;
    let mut all_accounts = subscribe(&cluster.base(0), &["accounts"], None).await;
    let mut per_account = subscribe(&cluster.base(1), &["accounts/{id}"], None).await;
    let mut books = subscribe(&cluster.base(1), &["books/{id}"], None).await;
    let http = reqwest::Client::new();
    let (status, account) = crate::support::post_account(&http, &cluster.base(1), "Ada", 5).await;
    assert_eq!(status, 201);
    let got = updates(&mut all_accounts, 1).await;
    assert_eq!(got[0].event.as_deref(), Some("account.created"));
    let data: serde_json::Value = serde_json::from_str(&got[0].data).unwrap();
    assert_eq!(data, account);
    assert_eq!(ids(&updates(&mut per_account, 1).await), ids(&got));
    let mut exact = subscribe(
        &cluster.base(0),
        &[&format!("accounts/{}", account["id"].as_str().unwrap())],
        Some(&ids(&got)[0]),
    )
    .await;
    let (status, _) = crate::support::post_account(&http, &cluster.base(0), "Bob", 5).await;
    assert_eq!(status, 201);
    assert_eq!(ids(&updates(&mut all_accounts, 1).await).len(), 1);
    assert_silent(&mut exact).await;
    assert_silent(&mut books).await;
    cluster.shutdown().await;
}

/// Every row of the SPEC §8.3 table: the status, a JSON error that says
/// why, and proof that nothing was published (history length unchanged, a
/// `*` subscriber silent).
#[tokio::test]
async fn publish_errors_publish_nothing() {
    let mut cluster = Cluster::start(BusKind::Redis, 1, &["--publish-token", "s3cret"]).await;
    let base = cluster.base(0);
    let mut watcher = subscribe(&base, &["*"], None).await;
    let ok = publish_with(&base, &[("topic", "t"), ("data", "ok")], Some("s3cret")).await;
    assert_eq!(ok.0, 200, "{ok:?}");
    assert_eq!(ids(&updates(&mut watcher, 1).await), [ok.2.as_str()]);
    let redis = cluster.redis.as_ref().unwrap();
    let before = history_len(redis);
    let many = vec!["topic=t"; 1001].join("&");
    let big = format!("topic=t&data={}", "x".repeat(20_000));
    let cases: Vec<(String, Option<&str>, u16, &str)> = vec![
        ("data=x".to_owned(), Some("s3cret"), 400, "topic"),
        (many, Some("s3cret"), 400, "at most 1000"),
        (
            "topic=t&data=%zz".to_owned(),
            Some("s3cret"),
            400,
            "percent-escape",
        ),
        (
            "topic=t&retry=soon".to_owned(),
            Some("s3cret"),
            400,
            "retry",
        ),
        (
            "topic=t&id=a%0Ab".to_owned(),
            Some("s3cret"),
            400,
            "CR, LF or NUL",
        ),
        (
            "topic=t&type=a%0Db".to_owned(),
            Some("s3cret"),
            400,
            "CR, LF or NUL",
        ),
        (
            "topic=t&id=a%00b".to_owned(),
            Some("s3cret"),
            400,
            "CR, LF or NUL",
        ),
        ("topic=t&id=%23frag".to_owned(), Some("s3cret"), 400, "#"),
        (
            "topic=t&id=earliest".to_owned(),
            Some("s3cret"),
            400,
            "earliest",
        ),
        ("topic=t&data=x".to_owned(), None, 401, ""),
        ("topic=t&data=x".to_owned(), Some("wrong"), 401, ""),
        (
            "topic=https%3A%2F%2Fh%2F.well-known%2Fmercure%2Fsubscriptions".to_owned(),
            Some("s3cret"),
            403,
            "/.well-known/mercure",
        ),
        (big, Some("s3cret"), 413, "larger than"),
    ];
    for (body, token, status, says) in &cases {
        let (got, content_type, text) = publish_raw(&base, body, *token).await;
        let short = &body[..body.len().min(60)];
        assert_eq!(got, *status, "{short}: {text}");
        assert!(
            content_type.starts_with("application/json"),
            "{short}: {content_type}"
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let message = json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(says),
            "{short}: {message:?} should say {says:?}"
        );
    }
    assert_eq!(history_len(redis), before, "an error published something");
    assert_silent(&mut watcher).await;
    // Redis down: 503 bus_unavailable, and nothing appears once it is back.
    cluster.redis.as_mut().unwrap().kill();
    let (status, _, text) = publish_with(&base, &[("topic", "t")], Some("s3cret")).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("bus_unavailable"), "{text}");
    cluster.shutdown().await;
}

/// A supplied `id` still in history is not published again: same `200` and
/// id, one history entry, one delivery (SPEC §8.3); both buses.
async fn idempotent_publish(kind: BusKind) {
    let cluster = Cluster::start(kind, 2, &[]).await;
    let mut watcher = subscribe(&cluster.base(0), &["orders/{id}"], None).await;
    let fields = [
        ("topic", "orders/7"),
        ("id", "urn:uuid:order-7"),
        ("data", "paid"),
    ];
    assert_eq!(publish(&cluster.base(0), &fields).await, "urn:uuid:order-7");
    let before = cluster.redis.as_ref().map(history_len);
    assert_eq!(publish(&cluster.base(1), &fields).await, "urn:uuid:order-7");
    assert_eq!(cluster.redis.as_ref().map(history_len), before);
    let got = updates(&mut watcher, 1).await;
    assert_eq!(ids(&got), ["urn:uuid:order-7"]);
    assert_eq!(got[0].data, "paid");
    assert_silent(&mut watcher).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn idempotent_publish_on_memory() {
    idempotent_publish(BusKind::Memory).await;
}

#[tokio::test]
async fn idempotent_publish_on_redis() {
    idempotent_publish(BusKind::Redis).await;
}

/// A supplied id is forgotten with its event: once `EVENT_HISTORY_LEN`
/// trims it, publishing it again is a new event, resume from it is
/// `earliest`, and the id bookkeeping stays bounded.
#[tokio::test]
async fn supplied_ids_expire_with_their_events() {
    let cluster = Cluster::start(BusKind::Redis, 1, &["--event-history-len", "5"]).await;
    let base = cluster.base(0);
    let first = publish(&base, &[("topic", "t"), ("id", "urn:first")]).await;
    for n in 0..300 {
        let id = format!("urn:n{n}");
        publish(&base, &[("topic", "t"), ("id", &id)]).await;
    }
    let redis = cluster.redis.as_ref().unwrap();
    let mut conn = redis.conn();
    let tracked: u64 = ::redis::cmd("HLEN")
        .arg("user-events:ids")
        .query(&mut conn)
        .unwrap();
    assert!(
        tracked < 300,
        "supplied ids are pruned with history: {tracked} tracked"
    );
    let mut late = subscribe(&base, &["t"], Some(&first)).await;
    assert_eq!(
        late.headers.get("last-event-id").unwrap(),
        "earliest",
        "a trimmed id resumes from earliest"
    );
    let before = history_len(redis);
    assert_eq!(
        publish(&base, &[("topic", "t"), ("id", "urn:first")]).await,
        first
    );
    assert_eq!(
        history_len(redis),
        before + 1,
        "a trimmed id publishes a new event"
    );
    // The replay (what `MAXLEN ~` retained), then the new event, once.
    let mut replayed = Vec::new();
    while replayed.last().map(String::as_str) != Some("urn:first") {
        let frame = next_update(&mut late, WAIT)
            .await
            .expect("the new urn:first");
        replayed.push(frame.id.unwrap());
    }
    replayed.pop();
    assert!(
        !replayed.is_empty() && replayed.len() < 300,
        "{}",
        replayed.len()
    );
    assert!(
        replayed.iter().all(|id| id.starts_with("urn:n")),
        "{replayed:?}"
    );
    assert_silent(&mut late).await;
    cluster.shutdown().await;
}

/// Resume (SPEC §8.5) on both endpoints and the other instance: supplied
/// and generated ids, the header and both query spellings, `earliest`, an
/// unknown id (Mercure: `Last-Event-ID: earliest` and the retained events;
/// native: `reset`), and the replay filtered by selectors.
#[tokio::test]
async fn resume_with_supplied_ids_earliest_and_unknown_ids() {
    let cluster = Cluster::start(BusKind::Redis, 2, &[]).await;
    let (a, b) = (cluster.base(0), cluster.base(1));
    let mut published = Vec::new();
    for n in 0..6 {
        let topic = if n % 2 == 0 { "even" } else { "odd" };
        let id = format!("urn:e{n}");
        let supplied: &[(&str, &str)] = &[("topic", topic), ("id", &id)];
        let generated: &[(&str, &str)] = &[("topic", topic)];
        published.push(publish(&a, if n < 3 { supplied } else { generated }).await);
    }
    let even: Vec<String> = published.iter().step_by(2).cloned().collect();
    // Mercure, supplied id, header, on the other instance.
    let mut client = subscribe(&b, &["even"], Some(&published[0])).await;
    assert_eq!(
        client.headers.get("last-event-id").unwrap(),
        published[0].as_str()
    );
    assert_eq!(ids(&updates(&mut client, 2).await), even[1..]);
    // Live continues on the same stream, exactly once.
    let live = publish(&a, &[("topic", "even")]).await;
    assert_eq!(ids(&updates(&mut client, 1).await), [live.as_str()]);
    assert_silent(&mut client).await;
    // Query parameter, generated id, both spellings.
    for name in ["lastEventID", "lastEventId"] {
        let url = format!("{b}/.well-known/mercure?topic=odd&{name}={}", published[3]);
        let mut client = SseClient::connect_with(&url, None).await;
        assert_eq!(
            client.headers.get("last-event-id").unwrap(),
            published[3].as_str()
        );
        assert_eq!(ids(&updates(&mut client, 1).await), [published[5].clone()]);
    }
    // `earliest`: every retained event the selectors match.
    let mut client = subscribe(&b, &["even"], Some("earliest")).await;
    assert_eq!(client.headers.get("last-event-id").unwrap(), "earliest");
    let mut expected = even.clone();
    expected.push(live.clone());
    assert_eq!(ids(&updates(&mut client, 4).await), expected);
    // Unknown id: `earliest` and the retained events.
    let mut client = subscribe(&b, &["odd"], Some("urn:never")).await;
    assert_eq!(client.headers.get("last-event-id").unwrap(), "earliest");
    assert_eq!(ids(&updates(&mut client, 3).await).len(), 3);
    // No Last-Event-ID asked: no header.
    let client = subscribe(&b, &["odd"], None).await;
    assert!(client.headers.get("last-event-id").is_none());
    // Native endpoint: a supplied id resumes; an unknown one resets.
    let url = format!("{b}/events/sse?topic=even");
    let (mut native, _) = SseClient::open(&url, Some(&published[2])).await;
    let frames = native.messages(2, WAIT).await;
    assert_eq!(ids(&frames), [published[4].clone(), live.clone()]);
    let (mut native, _) = SseClient::open(&url, Some("urn:never")).await;
    let reset = next_update(&mut native, WAIT).await.unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    let (mut native, _) = SseClient::open(&format!("{url}&lastEventId=earliest"), None).await;
    assert_eq!(ids(&native.messages(4, WAIT).await), expected);
    cluster.shutdown().await;
}

/// `400` without `topic` or with more than 1,000 selectors (SPEC §8.2).
#[tokio::test]
async fn subscribe_needs_one_to_a_thousand_selectors() {
    let cluster = Cluster::start(BusKind::Memory, 1, &[]).await;
    let base = cluster.base(0);
    let http = reqwest::Client::new();
    let none = http
        .get(format!("{base}/.well-known/mercure"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 400);
    let body: serde_json::Value = none.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("topic"));
    let query = vec!["topic=t"; 1001].join("&");
    for path in ["/.well-known/mercure", "/events/sse"] {
        let response = http
            .get(format!("{base}{path}?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
    }
    let ok = vec!["topic=t"; 1000].join("&");
    let response = http
        .get(format!("{base}/.well-known/mercure?{ok}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert!(response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-store"));
    cluster.shutdown().await;
}

/// `MAX_SSE_CLIENTS` counts the streams of both endpoints together.
#[tokio::test]
async fn max_sse_clients_counts_both_endpoints() {
    let cluster = Cluster::start(BusKind::Memory, 1, &["--max-sse-clients", "2"]).await;
    let base = cluster.base(0);
    let _mercure = subscribe(&base, &["*"], None).await;
    let _native = SseClient::open(&format!("{base}/events/sse"), None).await;
    for url in [
        format!("{base}/.well-known/mercure?topic=a"),
        format!("{base}/events/sse"),
    ] {
        let full = SseClient::connect(&url).await;
        assert_eq!(full.status, 503, "{url}");
    }
    cluster.shutdown().await;
}

/// SPEC §8.6 end to end: 200 events on 20 topics from both instances to 40
/// subscribers on two instances (one topic each, a template on two topics,
/// `*`, on both endpoints); each gets exactly its events, in history order.
#[tokio::test]
async fn two_hundred_events_on_twenty_topics_to_forty_subscribers() {
    let cluster = Cluster::start(BusKind::Redis, 2, &[]).await;
    let topic = |n: usize| format!("rooms/{n}");
    let mut subscribers = Vec::new();
    for s in 0..40 {
        let base = cluster.base(s);
        let (selectors, wants): (Vec<String>, Box<dyn Fn(usize) -> bool>) = match s {
            0..=19 => (vec![topic(s)], Box::new(move |t| t == s)),
            20..=29 => (
                vec![topic(s - 20), topic(s - 10)],
                Box::new(move |t| t == s - 20 || t == s - 10),
            ),
            30..=37 => (vec!["rooms/{n}".to_owned()], Box::new(|_| true)),
            _ => (vec!["*".to_owned()], Box::new(|_| true)),
        };
        let refs: Vec<&str> = selectors.iter().map(String::as_str).collect();
        let client = if s % 3 == 0 {
            let query: Vec<String> = selectors
                .iter()
                .map(|t| format!("topic={}", urlenc(t)))
                .collect();
            SseClient::open(&format!("{base}/events/sse?{}", query.join("&")), None)
                .await
                .0
        } else {
            subscribe(&base, &refs, None).await
        };
        subscribers.push((client, wants));
    }
    let mut sent = Vec::new();
    for n in 0..200 {
        let t = n % 20;
        let id = publish(
            &cluster.base(n),
            &[("topic", &topic(t)), ("data", &format!("{n}"))],
        )
        .await;
        sent.push((id, t));
    }
    let history = crate::support::redis_inspect::history_ids(cluster.redis.as_ref().unwrap());
    let order: Vec<&String> = sent.iter().map(|(id, _)| id).collect();
    let mut in_history: Vec<&String> = history.iter().filter(|id| order.contains(id)).collect();
    in_history.dedup();
    assert_eq!(in_history.len(), 200);
    for (s, (client, wants)) in subscribers.iter_mut().enumerate() {
        let expected: Vec<String> = in_history
            .iter()
            .filter(|id| sent.iter().any(|(sid, t)| sid == **id && wants(*t)))
            .map(|id| (*id).clone())
            .collect();
        let got = ids(&updates(client, expected.len()).await);
        assert_eq!(got, expected, "subscriber {s}");
        assert_silent(client).await;
    }
    cluster.shutdown().await;
}

fn urlenc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const PUBLISHER_KEY: &str = "mercure-test-publisher-key";
const SUBSCRIBER_KEY: &str = "mercure-test-subscriber-key";

/// An HS256 JWT with `claims`, made with the `jsonwebtoken` crate.
fn jwt(key: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn subscriber_token(selectors: &[&str], exp_in_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jwt(
        SUBSCRIBER_KEY,
        &serde_json::json!({ "exp": now + exp_in_secs, "mercure": { "subscribe": selectors } }),
    )
}

/// Mercure subscribe with the token in the `authorization` query parameter.
async fn subscribe_as(
    base: &str,
    topics: &[&str],
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> SseClient {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(topics.iter().map(|t| ("topic", *t)));
    if let Some(token) = token {
        query.append_pair("authorization", token);
    }
    let url = format!("{base}/.well-known/mercure?{}", query.finish());
    let mut client = SseClient::connect_with(&url, last_event_id).await;
    assert_eq!(client.status, 200, "GET {url}");
    assert!(client.next_frame(WAIT).await.unwrap().comment.is_some());
    client
}

const AUTH_FLAGS: &[&str] = &[
    "--mercure-publisher-jwt-key",
    PUBLISHER_KEY,
    "--mercure-subscriber-jwt-key",
    SUBSCRIBER_KEY,
];

/// Private updates (SPEC §8.2, §8.4) on two instances: anonymous never,
/// a token whose `mercure.subscribe` matches a topic (canonical or
/// alternate) yes, a non-matching one no; on both endpoints; the replay of
/// a resume applies the same rule; a bad token is `401`.
#[tokio::test]
async fn private_updates_reach_only_allowed_subscribers_live_and_on_replay() {
    let cluster = Cluster::start(BusKind::Redis, 2, AUTH_FLAGS).await;
    let (a, b) = (cluster.base(0), cluster.base(1));
    let publisher = jwt(
        PUBLISHER_KEY,
        &serde_json::json!({ "mercure": { "publish": ["*"] } }),
    );
    let mine = subscriber_token(&["users/1"], 600);
    let theirs = subscriber_token(&["users/2"], 600);
    let mut anonymous = subscribe_as(&a, &["users/{id}"], None, None).await;
    let mut allowed = subscribe_as(&b, &["users/{id}"], Some(&mine), None).await;
    let mut denied = subscribe_as(&a, &["users/{id}"], Some(&theirs), None).await;
    // Selected by `feed`, allowed through the alternate topic users/1.
    let mut feed = subscribe_as(&b, &["feed"], Some(&mine), None).await;
    let url = format!("{a}/events/sse?topic=feed&authorization={mine}");
    let (mut native, _) = SseClient::open(&url, None).await;

    let private = [
        ("topic", "users/1"),
        ("topic", "feed"),
        ("private", "on"),
        ("data", "secret"),
    ];
    let (status, _, private_id) = publish_with(&b, &private, Some(&publisher)).await;
    assert_eq!(status, 200, "{private_id}");
    let (status, _, public_id) = publish_with(
        &a,
        &[("topic", "users/2"), ("topic", "feed")],
        Some(&publisher),
    )
    .await;
    assert_eq!(status, 200, "{public_id}");

    assert_eq!(ids(&updates(&mut anonymous, 1).await), [public_id.as_str()]);
    let got = updates(&mut allowed, 2).await;
    assert_eq!(ids(&got), [private_id.as_str(), public_id.as_str()]);
    assert_eq!(got[0].data, "secret");
    assert_eq!(ids(&updates(&mut denied, 1).await), [public_id.as_str()]);
    assert_eq!(
        ids(&updates(&mut feed, 2).await),
        [private_id.as_str(), public_id.as_str()]
    );
    let frames = native.messages(2, WAIT).await;
    assert_eq!(frames[0].json()["private"], true);
    for client in [&mut anonymous, &mut denied] {
        assert_silent(client).await;
    }

    // Replay respects authorization too, on the other instance.
    let mut replay = subscribe_as(&b, &["users/{id}"], None, Some("earliest")).await;
    assert_eq!(ids(&updates(&mut replay, 1).await), [public_id.as_str()]);
    assert_silent(&mut replay).await;
    let mut replay = subscribe_as(&a, &["users/{id}"], Some(&mine), Some("earliest")).await;
    assert_eq!(
        ids(&updates(&mut replay, 2).await),
        [private_id.as_str(), public_id.as_str()]
    );

    // A token signed with another key: 401 with a challenge, never anonymous.
    let forged = jwt(
        "not-the-key",
        &serde_json::json!({ "mercure": { "subscribe": ["*"] } }),
    );
    let response = reqwest::Client::new()
        .get(format!(
            "{a}/.well-known/mercure?topic=*&authorization={forged}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    cluster.shutdown().await;
}

/// A stream ends when its token's `exp` passes (SPEC §8.4): it is open and
/// delivering before, and closed (EOF) soon after.
#[tokio::test]
async fn a_stream_ends_at_its_token_expiry() {
    let cluster = Cluster::start(BusKind::Memory, 1, AUTH_FLAGS).await;
    let base = cluster.base(0);
    let publisher = jwt(
        PUBLISHER_KEY,
        &serde_json::json!({ "mercure": { "publish": ["*"] } }),
    );
    let token = subscriber_token(&["*"], 2);
    let mut client = subscribe_as(&base, &["t"], Some(&token), None).await;
    let (status, _, id) = publish_with(&base, &[("topic", "t")], Some(&publisher)).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&updates(&mut client, 1).await), [id.as_str()]);
    assert!(!client.ended());
    assert!(
        client.ends_within(Duration::from_secs(6)).await,
        "the stream outlived exp"
    );
    cluster.shutdown().await;
}

/// `ACCOUNT_EVENTS_PRIVATE=true`: an account's event reaches only
/// subscribers whose token allows `accounts/<id>` or `accounts` (SPEC §8.1).
#[tokio::test]
async fn private_account_events_reach_only_their_owner() {
    let mut flags = AUTH_FLAGS.to_vec();
    flags.extend(["--account-events-private", "true"]);
    let cluster = Cluster::start(BusKind::Redis, 2, &flags).await;
    let publisher = jwt(
        PUBLISHER_KEY,
        &serde_json::json!({ "mercure": { "publish": ["accounts"] } }),
    );
    let mut anonymous = subscribe_as(&cluster.base(0), &["accounts"], None, None).await;
    let mut admin = subscribe_as(
        &cluster.base(1),
        &["accounts"],
        Some(&subscriber_token(&["accounts"], 600)),
        None,
    )
    .await;
    let response = reqwest::Client::new()
        .post(format!("{}/accounts", cluster.base(0)))
        .bearer_auth(&publisher)
        .json(&serde_json::json!({ "name": "Ada", "balance": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let account: serde_json::Value = response.json().await.unwrap();
    let own_topic = format!("accounts/{}", account["id"].as_str().unwrap());
    let got = updates(&mut admin, 1).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&got[0].data).unwrap(),
        account
    );
    // The owner's token names only its own topic, and resumes to get it.
    let owner = subscriber_token(&[&own_topic], 600);
    let mut own = subscribe_as(
        &cluster.base(1),
        &["accounts/{id}"],
        Some(&owner),
        Some("earliest"),
    )
    .await;
    assert_eq!(ids(&updates(&mut own, 1).await), ids(&got));
    let other = subscriber_token(&["accounts/someone-else"], 600);
    let mut stranger = subscribe_as(
        &cluster.base(0),
        &["accounts/{id}"],
        Some(&other),
        Some("earliest"),
    )
    .await;
    assert_silent(&mut stranger).await;
    assert_silent(&mut anonymous).await;
    cluster.shutdown().await;
}
