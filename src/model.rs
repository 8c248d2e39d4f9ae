//! Domain types: accounts, event ids and the pre-encoded SSE frames that the
//! fan-out shares between clients. Pure data and validation, no I/O.

use std::{fmt, str::FromStr, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Largest accepted balance: 2^53−1, the largest integer JavaScript holds exactly (SPEC §3.1).
pub const MAX_BALANCE: u64 = 9_007_199_254_740_991;
/// Longest accepted name, in Unicode scalar values after trimming (SPEC §3.1).
pub const MAX_NAME_CHARS: usize = 100;
/// The `type` of the event `POST /accounts` publishes.
pub const ACCOUNT_CREATED: &str = "account.created";

/// An event id: a Redis Stream entry id `<ms>-<seq>` (Redis docs, "Streams
/// introduction: entry IDs"). The memory bus makes ids of the same form, so
/// ordering and parsing are shared. Clients treat the string as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Milliseconds since the Unix epoch when the entry was added.
    pub ms: u64,
    /// Sequence number within that millisecond.
    pub seq: u64,
}

/// An event id string that is not `<u64>-<u64>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event id")]
pub struct MalformedEventId;

impl FromStr for EventId {
    type Err = MalformedEventId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(MalformedEventId)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(MalformedEventId);
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| MalformedEventId)?,
            seq: seq.parse().map_err(|_| MalformedEventId)?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A stored account; also the `data` of an `account.created` event and the
/// body of `201`/`GET /accounts/{id}` (SPEC §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// UUID v7 (time-ordered).
    pub id: uuid::Uuid,
    /// Trimmed display name.
    #[schema(min_length = 1, max_length = 100, example = "다중서버테스트")]
    pub name: String,
    /// 0 ..= [`MAX_BALANCE`].
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub balance: u64,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T05:34:02.123Z`.
    #[schema(format = DateTime, example = "2026-11-23T05:34:02.123Z")]
    pub created_at: String,
    /// `SERVER_ID` of the instance that accepted it.
    pub server_id: String,
}

impl Account {
    /// A new account accepted now by `server_id`: a fresh UUID v7 and the
    /// current time as `createdAt`.
    pub fn new(name: String, balance: u64, server_id: &str) -> Self {
        Self {
            id: uuid::Uuid::now_v7(),
            name,
            balance,
            created_at: now_rfc3339_ms(),
            server_id: server_id.to_owned(),
        }
    }
}

/// The `POST /accounts` body before validation. Unknown fields are rejected.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// Untrimmed name: surrounding whitespace is trimmed, then 1 to 100
    /// characters without control characters.
    #[schema(example = "다중서버테스트")]
    pub name: String,
    /// Balance; serde rejects negatives, fractions, strings and exponents.
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub balance: u64,
}

/// A request that breaks a rule of SPEC §3.1; `field` names the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The JSON field, e.g. `name`; `body` when the whole body is wrong.
    pub field: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl NewAccount {
    /// Parses and validates a JSON value into `(name, balance)`.
    ///
    /// # Errors
    /// [`ValidationError`] naming the field for a wrong shape, type, range,
    /// unknown field, empty or over-long name, or a control character.
    pub fn from_json(value: serde_json::Value) -> Result<(String, u64), ValidationError> {
        if !value.is_object() {
            return Err(invalid(
                "body",
                "must be a JSON object with name and balance",
            ));
        }
        let parsed: NewAccount = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            let message = inner
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned();
            if path == "." {
                // Missing or unknown field: serde names it in the message.
                let field = ["name", "balance"]
                    .into_iter()
                    .find(|f| message.contains(&format!("`{f}`")))
                    .unwrap_or("body");
                invalid(field, &message)
            } else if path == "balance" {
                invalid(
                    "balance",
                    &format!("must be an integer from 0 to {MAX_BALANCE}"),
                )
            } else {
                invalid(&path, &message)
            }
        })?;
        let name = parsed.name.trim();
        let chars = name.chars().count();
        if chars == 0 {
            return Err(invalid("name", "must not be empty"));
        }
        if chars > MAX_NAME_CHARS {
            return Err(invalid(
                "name",
                &format!("must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid("name", "must not contain control characters"));
        }
        if parsed.balance > MAX_BALANCE {
            return Err(invalid(
                "balance",
                &format!("must be an integer from 0 to {MAX_BALANCE}"),
            ));
        }
        Ok((name.to_owned(), parsed.balance))
    }
}

fn invalid(field: &str, message: &str) -> ValidationError {
    ValidationError {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// The topic every account event is published on, besides `accounts/<id>` (SPEC §8.1).
pub const ACCOUNTS_TOPIC: &str = "accounts";

/// The topics of an account's `account.created` event: `accounts/<id>`
/// (canonical) and `accounts` (SPEC §8.1).
pub fn account_topics(id: uuid::Uuid) -> Vec<String> {
    vec![format!("{ACCOUNTS_TOPIC}/{id}"), ACCOUNTS_TOPIC.to_owned()]
}

/// The event JSON *after* its id: `"type":…,"topics":[…],"serverId":…,"timestamp":…,"data":{…}}`.
/// Stored in history as is; the full event is `{"id":"<id>",` + this, so the
/// id can be assigned by `XADD` inside the publish script (see [`event_json`]).
///
/// # Errors
/// Only if serde cannot serialize (it always can for these types).
pub fn event_tail(
    account: &Account,
    private: bool,
    server_id: &str,
    timestamp: &str,
) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Tail<'a> {
        r#type: &'a str,
        topics: Vec<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        private: bool,
        server_id: &'a str,
        timestamp: &'a str,
        data: &'a Account,
    }
    let json = serde_json::to_string(&Tail {
        r#type: ACCOUNT_CREATED,
        topics: account_topics(account.id),
        private,
        server_id,
        timestamp,
        data: account,
    })?;
    // Drop the leading `{`: the tail continues an object opened by the id.
    Ok(json[1..].to_owned())
}

/// The default `type` of an update published without one (SPEC §8.2): the
/// SSE default event type, so the Mercure frame carries no `event:` line.
pub const DEFAULT_TYPE: &str = "message";

/// An update as a publisher sent it to `POST /.well-known/mercure`, already
/// validated (SPEC §8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpdate {
    /// One or more topics; the first is canonical.
    pub topics: Vec<String>,
    /// SSE `event:` name, if any.
    pub r#type: Option<String>,
    /// The data, any string (may hold newlines).
    pub data: String,
    /// Delivered only to subscribers whose token allows one of its topics.
    pub private: bool,
    /// SSE `retry:` in ms, if any.
    pub retry: Option<u64>,
    /// The publisher's id, if supplied (else the stream entry id is the id).
    pub id: Option<String>,
}

impl NewUpdate {
    /// The event JSON after its id, like [`event_tail`]: the native envelope
    /// of SPEC §8.2 `{"type","topics","serverId","timestamp","data"}`, where
    /// `data` is the published data when it is one line of JSON (not a
    /// string), else the data parsed as JSON, else the string. When the
    /// envelope's `data` is not the published text verbatim, `"raw"` holds the
    /// text, so the Mercure frame can repeat it exactly. `"private"` and
    /// `"retry"` appear when set.
    ///
    /// # Errors
    /// Only if serde cannot serialize (it always can for these types).
    pub fn tail(&self, server_id: &str, timestamp: &str) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Data<'a> {
            Verbatim(Box<serde_json::value::RawValue>),
            Parsed(serde_json::Value),
            Text(&'a str),
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Tail<'a> {
            r#type: &'a str,
            topics: &'a [String],
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            private: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            retry: Option<u64>,
            server_id: &'a str,
            timestamp: &'a str,
            data: Data<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            raw: Option<&'a str>,
        }
        let text = self.data.as_str();
        let one_line = !text.contains(['\r', '\n']);
        let (data, raw) = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) if one_line && !value.is_string() && text.trim() == text => (
                Data::Verbatim(serde_json::value::RawValue::from_string(text.to_owned())?),
                None,
            ),
            Ok(value) => (Data::Parsed(value), Some(text)),
            Err(_) => (Data::Text(text), None),
        };
        let json = serde_json::to_string(&Tail {
            r#type: self.r#type.as_deref().unwrap_or(DEFAULT_TYPE),
            topics: &self.topics,
            private: self.private,
            retry: self.retry,
            server_id,
            timestamp,
            data,
            raw,
        })?;
        Ok(json[1..].to_owned())
    }

    /// The supplied id as a JSON string (for [`event_json`]), if any.
    pub fn id_json(&self) -> Option<String> {
        self.id
            .as_ref()
            .map(|id| serde_json::Value::from(id.as_str()).to_string())
    }
}

/// The full event JSON for a stream position and a stored tail:
/// `{"id":"<position>",<tail>`, or with a publisher-supplied id (given as a
/// JSON string) `{"id":<supplied>,"streamId":"<position>",<tail>`: the
/// stream position keeps one order and deduplication for every event.
pub fn event_json(position: EventId, supplied_id_json: Option<&str>, tail: &str) -> String {
    match supplied_id_json {
        None => format!("{{\"id\":\"{position}\",{tail}"),
        Some(id) => format!("{{\"id\":{id},\"streamId\":\"{position}\",{tail}"),
    }
}

/// Output format of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// `GET /events/sse`: unnamed messages whose data is the event JSON (SPEC §3.4).
    Native,
    /// `GET /.well-known/mercure`: `event:`, `retry:`, `id:`, `data:` lines (SPEC §8.2).
    Mercure,
}

/// A channel message or history entry, decoded once per instance and
/// encoded once per [`Format`]; shared (`Arc`'d bytes) by every stream.
#[derive(Debug, Clone)]
pub struct Update {
    /// Event (with stream position), foreign message or reset.
    pub kind: FrameKind,
    /// The topics, canonical first (empty for resets and topic-less foreign messages).
    pub topics: Arc<[String]>,
    /// Private updates reach only subscribers whose token allows a topic (SPEC §8.2).
    pub private: bool,
    /// The `/events/sse` frame.
    pub native: Bytes,
    /// The `/.well-known/mercure` frame; `None` for what that format has no
    /// frame for (`event: reset`).
    pub mercure: Option<Bytes>,
}

/// A channel message that is neither our event nor a deliverable foreign
/// message (SPEC §4): logged at `warn` and dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undeliverable {
    /// Not UTF-8 or not a JSON object.
    #[error("not a JSON object")]
    NotAnObject,
    /// A JSON object without a string `type`.
    #[error("no string type")]
    NoType,
}

/// The fields of a channel message; raw so that any JSON object parses and
/// `data` keeps its exact text.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default, rename = "streamId")]
    stream_id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    r#type: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    topics: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    private: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    retry: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    raw: Option<&'a serde_json::value::RawValue>,
}

fn raw_as<T: serde::de::DeserializeOwned>(raw: Option<&serde_json::value::RawValue>) -> Option<T> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

impl Update {
    /// Decodes a channel message or a history entry's event JSON (SPEC §4).
    /// Ours — compact JSON starting with `{"id":"…"` whose `streamId`, or
    /// else `id`, is a stream position — keeps its id and position; any other
    /// JSON object with a string `type` is a foreign message (live only,
    /// no id; its `topics` and `private` are honoured when well-formed).
    ///
    /// # Errors
    /// [`Undeliverable`] for anything else.
    pub fn decode(text: &str) -> Result<Update, Undeliverable> {
        let wire: Wire<'_> = serde_json::from_str(text).map_err(|_| Undeliverable::NotAnObject)?;
        let kind: String = raw_as(wire.r#type).ok_or(Undeliverable::NoType)?;
        let topics: Vec<String> = raw_as(wire.topics).unwrap_or_default();
        let private: bool = raw_as(wire.private).unwrap_or(false);
        let wire_id: Option<String> = raw_as(wire.id);
        let position = raw_as::<String>(wire.stream_id)
            .or_else(|| wire_id.clone())
            .and_then(|p| p.parse::<EventId>().ok());
        let ours = text.starts_with("{\"id\":\"") && !text.contains(['\n', '\r']);
        let (Some(position), Some(wire_id), true) = (position, wire_id, ours) else {
            let bytes = data_lines(None, text);
            return Ok(Update {
                kind: FrameKind::Foreign,
                topics: topics.into(),
                private,
                native: bytes.clone(),
                mercure: Some(bytes),
            });
        };
        let data: String = match (raw_as::<String>(wire.raw), wire.data) {
            (Some(raw), _) => raw,
            (None, None) => String::new(),
            (None, Some(data)) => {
                serde_json::from_str::<String>(data.get()).unwrap_or_else(|_| data.get().to_owned())
            }
        };
        let retry: Option<u64> = raw_as(wire.retry);
        let mut mercure = BytesMut::with_capacity(data.len() + wire_id.len() + 48);
        if kind != DEFAULT_TYPE {
            mercure.put_slice(b"event: ");
            mercure.put_slice(kind.as_bytes());
            mercure.put_u8(b'\n');
        }
        if let Some(retry) = retry {
            mercure.put_slice(format!("retry: {retry}\n").as_bytes());
        }
        mercure.put_slice(b"id: ");
        mercure.put_slice(wire_id.as_bytes());
        mercure.put_u8(b'\n');
        mercure.put_slice(&data_lines(None, &data));
        Ok(Update {
            kind: FrameKind::Event(position),
            topics: topics.into(),
            private,
            native: Frame::event_with_id(position, &wire_id, text).bytes,
            mercure: Some(mercure.freeze()),
        })
    }

    /// `event: reset` for native streams (SPEC §3.4); Mercure streams get nothing.
    pub fn reset(reason: &str) -> Update {
        Update {
            kind: FrameKind::Reset,
            topics: Arc::new([]),
            private: false,
            native: Frame::reset(reason).bytes,
            mercure: None,
        }
    }

    /// The stream position if this is one of our events.
    pub fn id(&self) -> Option<EventId> {
        match self.kind {
            FrameKind::Event(id) => Some(id),
            _ => None,
        }
    }

    /// The frame a stream of `format` is sent, if that format has one.
    pub fn frame(&self, format: Format) -> Option<Frame> {
        let bytes = match format {
            Format::Native => self.native.clone(),
            Format::Mercure => self.mercure.clone()?,
        };
        Some(Frame {
            kind: self.kind,
            bytes,
        })
    }
}

/// What a frame means to a client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An event with an id (ours): ordered, deduplicated, in history.
    Event(EventId),
    /// A message another program published: live only, no id (SPEC §4).
    Foreign,
    /// `event: reset`: the instance lost events (history lost on Redis restart).
    Reset,
}

/// One SSE message, encoded once per instance and shared by every client.
#[derive(Debug, Clone)]
pub struct Frame {
    /// How the stream treats it.
    pub kind: FrameKind,
    /// The wire bytes, ending with the blank line (WHATWG HTML §9.2.6).
    pub bytes: Bytes,
}

impl Frame {
    /// `id: <id>\ndata: <json>\n\n` — an unnamed message, so `onmessage` gets it.
    /// `json` must be one line (serde_json output always is).
    pub fn event(id: EventId, json: &str) -> Self {
        Self::event_with_id(id, &id.to_string(), json)
    }

    /// Like [`Frame::event`] with the `id:` line showing `wire_id` (a
    /// publisher-supplied id) while `position` orders and deduplicates.
    pub fn event_with_id(position: EventId, wire_id: &str, json: &str) -> Self {
        let mut buf = BytesMut::with_capacity(json.len() + 40);
        buf.put_slice(b"id: ");
        buf.put_slice(wire_id.as_bytes());
        buf.put_slice(b"\ndata: ");
        buf.put_slice(json.as_bytes());
        buf.put_slice(b"\n\n");
        Self {
            kind: FrameKind::Event(position),
            bytes: buf.freeze(),
        }
    }

    /// A message without id whose data is `text` exactly: each line becomes a
    /// `data:` line, which the client joins back with `\n` (WHATWG HTML §9.2.6).
    pub fn foreign(text: &str) -> Self {
        Self {
            kind: FrameKind::Foreign,
            bytes: data_lines(None, text),
        }
    }

    /// `event: reset` with `data: {"reason":"<reason>"}`.
    pub fn reset(reason: &str) -> Self {
        let data = serde_json::json!({ "reason": reason }).to_string();
        Self {
            kind: FrameKind::Reset,
            bytes: data_lines(Some("reset"), &data),
        }
    }

    /// The id if this is one of our events.
    pub fn id(&self) -> Option<EventId> {
        match self.kind {
            FrameKind::Event(id) => Some(id),
            _ => None,
        }
    }
}

/// Encodes a message with optional event name; CR, LF and CRLF in `text` all
/// split lines, as the SSE parser would.
pub fn data_lines(event: Option<&str>, text: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(text.len() + 32);
    if let Some(event) = event {
        buf.put_slice(b"event: ");
        buf.put_slice(event.as_bytes());
        buf.put_u8(b'\n');
    }
    for line in text.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// `createdAt`/`timestamp` format: RFC 3339 UTC with milliseconds.
pub fn now_rfc3339_ms() -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(FORMAT)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_ids_parse_order_and_print() {
        let a: EventId = "1700000000000-0".parse().unwrap();
        let b: EventId = "1700000000000-1".parse().unwrap();
        let c: EventId = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "1700000000001-0");
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-1-1",
            " 1-1",
            "1-+1",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation_table() {
        let ok = |v: serde_json::Value| NewAccount::from_json(v).unwrap();
        let field = |v: serde_json::Value| NewAccount::from_json(v).unwrap_err().field;
        assert_eq!(
            ok(json!({"name":"  다중서버테스트 ","balance":999999})),
            ("다중서버테스트".to_owned(), 999999)
        );
        assert_eq!(ok(json!({"name":"a","balance":MAX_BALANCE})).1, MAX_BALANCE);
        assert_eq!(ok(json!({"name":"x".repeat(100),"balance":0})).1, 0);
        assert_eq!(field(json!({"name":"x".repeat(101),"balance":0})), "name");
        assert_eq!(field(json!({"name":"   ","balance":0})), "name");
        assert_eq!(field(json!({"name":"a\u{0}b","balance":0})), "name");
        assert_eq!(field(json!({"name":"a\nb","balance":0})), "name");
        assert_eq!(field(json!({"name":1,"balance":0})), "name");
        assert_eq!(field(json!({"balance":0})), "name");
        assert_eq!(field(json!({"name":"a"})), "balance");
        assert_eq!(field(json!({"name":"a","balance":1.5})), "balance");
        assert_eq!(field(json!({"name":"a","balance":"100"})), "balance");
        assert_eq!(field(json!({"name":"a","balance":-1})), "balance");
        assert_eq!(field(json!({"name":"a","balance":1e3})), "balance");
        assert_eq!(
            field(json!({"name":"a","balance":MAX_BALANCE + 1})),
            "balance"
        );
        assert_eq!(field(json!({"name":"a","balance":1,"extra":true})), "extra");
        assert_eq!(field(json!([1])), "body");
        assert_eq!(field(json!(null)), "body");
    }

    #[test]
    fn frames_encode_per_whatwg() {
        let id = EventId { ms: 5, seq: 1 };
        let f = Frame::event(id, r#"{"id":"5-1"}"#);
        assert_eq!(&f.bytes[..], b"id: 5-1\ndata: {\"id\":\"5-1\"}\n\n");
        assert_eq!(
            &Frame::foreign("{\"type\":\"x\",\n\"a\":1}").bytes[..],
            b"data: {\"type\":\"x\",\ndata: \"a\":1}\n\n"
        );
        assert_eq!(
            &Frame::foreign("a\r\nb\rc").bytes[..],
            b"data: a\ndata: b\ndata: c\n\n"
        );
        assert_eq!(
            &Frame::reset("history_lost").bytes[..],
            b"event: reset\ndata: {\"reason\":\"history_lost\"}\n\n"
        );
    }

    #[test]
    fn event_json_round_trips() {
        let account = Account {
            id: uuid::Uuid::now_v7(),
            name: "n".to_owned(),
            balance: 1,
            created_at: now_rfc3339_ms(),
            server_id: "s".to_owned(),
        };
        let tail = event_tail(&account, false, "s", &account.created_at).unwrap();
        let json = event_json(EventId { ms: 1, seq: 2 }, None, &tail);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["id"], "1-2");
        assert_eq!(v["type"], ACCOUNT_CREATED);
        assert_eq!(v["data"]["name"], "n");
        assert!(json.starts_with("{\"id\":\"1-2\",\"type\""), "{json}");
        assert_eq!(account.created_at.len(), "2026-11-23T05:34:02.123Z".len());
    }
}

/// Property tests: validation against an oracle written from SPEC §3.1 alone,
/// and SSE framing checked with a WHATWG HTML §9.2.6 parser.
#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    /// Unicode `White_Space` (PropList.txt), listed rather than taken from `str::trim`.
    const WHITE_SPACE: &[(u32, u32)] = &[
        (0x09, 0x0D),
        (0x20, 0x20),
        (0x85, 0x85),
        (0xA0, 0xA0),
        (0x1680, 0x1680),
        (0x2000, 0x200A),
        (0x2028, 0x2029),
        (0x202F, 0x202F),
        (0x205F, 0x205F),
        (0x3000, 0x3000),
    ];

    fn white(c: char) -> bool {
        WHITE_SPACE
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&u32::from(c)))
    }

    /// General category Cc: C0, DEL and C1.
    fn control(c: char) -> bool {
        matches!(u32::from(c), 0x00..=0x1F | 0x7F..=0x9F)
    }

    /// SPEC §3.1: the trimmed name if valid.
    fn name_oracle(name: &str) -> Option<String> {
        let chars: Vec<char> = name.chars().collect();
        let start = chars.iter().position(|&c| !white(c))?;
        let end = chars.iter().rposition(|&c| !white(c))? + 1;
        let core = &chars[start..end];
        (core.len() <= 100 && !core.iter().any(|&c| control(c))).then(|| core.iter().collect())
    }

    /// SPEC §3.1: a JSON integer in 0 ..= 2^53−1 (not a float, string, …).
    fn balance_oracle(balance: &Value) -> Option<u64> {
        match balance {
            Value::Number(n) if !n.is_f64() => n.as_u64().filter(|&b| b < (1 << 53)),
            _ => None,
        }
    }

    fn interesting_char() -> impl Strategy<Value = char> {
        prop_oneof![
            3 => any::<char>(),
            2 => prop::sample::select(vec![
                'a', 'Z', '다', '😀', ' ', '\t', '\n', '\r', '\0', '\u{7f}', '\u{85}', '\u{9f}',
                '\u{a0}', '\u{1f}', '\u{200b}', '\u{2028}', '\u{2029}', '\u{3000}', '\u{feff}',
                '"', '\\', ':', '\u{10ffff}',
            ]),
        ]
    }

    /// Short arbitrary names, and names around the 100-character limit with
    /// whitespace padding.
    fn name() -> impl Strategy<Value = String> {
        let padding = || {
            prop::collection::vec(
                prop::sample::select(vec![' ', '\t', '\n', '\r', '\u{3000}', '\u{85}']),
                0..3,
            )
        };
        prop_oneof![
            prop::collection::vec(interesting_char(), 0..12).prop_map(String::from_iter),
            any::<String>(),
            (
                padding(),
                98usize..=102,
                prop::sample::select(vec!["x", "다", "😀"]),
                padding()
            )
                .prop_map(|(a, n, c, b)| {
                    let mut s: String = a.into_iter().collect();
                    s.push_str(&c.repeat(n));
                    s.extend(b);
                    s
                }),
        ]
    }

    fn balance() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0u64..=MAX_BALANCE).prop_map(|b| json!(b)),
            (MAX_BALANCE - 2..=MAX_BALANCE + 2).prop_map(|b| json!(b)),
            any::<u64>().prop_map(|b| json!(b)),
            any::<i64>().prop_map(|b| json!(b)),
            any::<f64>().prop_map(|b| json!(b)),
            Just(json!(1000.0)),
            Just(json!("100")),
            Just(json!(null)),
            Just(json!([1])),
        ]
    }

    /// The events a WHATWG `EventSource` would dispatch for `bytes`:
    /// `(type, data, lastEventId)` (HTML §9.2.6 "Interpreting an event stream").
    fn whatwg_events(bytes: &[u8]) -> Vec<(String, String, String)> {
        let text = String::from_utf8_lossy(bytes);
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let (mut data, mut event_type, mut last_id) = (String::new(), String::new(), String::new());
        let mut events = Vec::new();
        let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut lines: Vec<&str> = normalized.split('\n').collect();
        // The text after the last line end is an incomplete line: ignored.
        lines.pop();
        for line in lines {
            if line.is_empty() {
                if data.is_empty() {
                    event_type.clear();
                    continue;
                }
                if data.ends_with('\n') {
                    data.pop();
                }
                let kind = if event_type.is_empty() {
                    "message".to_owned()
                } else {
                    std::mem::take(&mut event_type)
                };
                events.push((kind, std::mem::take(&mut data), last_id.clone()));
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => event_type = value.to_owned(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => last_id = value.to_owned(),
                _ => {}
            }
        }
        events
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// `from_json` accepts exactly what the SPEC §3.1 oracle accepts, returns
        /// the trimmed name, and blames a field that is actually wrong.
        #[test]
        fn validation_matches_the_spec_oracle(name in name(), balance in balance()) {
            let result = NewAccount::from_json(json!({ "name": name, "balance": balance }));
            let expected = (name_oracle(&name), balance_oracle(&balance));
            match (result, expected) {
                (Ok(got), (Some(n), Some(b))) => prop_assert_eq!(got, (n, b)),
                (Err(err), (n, b)) if n.is_none() || b.is_none() => {
                    let blamed_ok = (err.field == "name" && n.is_none())
                        || (err.field == "balance" && b.is_none());
                    prop_assert!(blamed_ok, "blamed {:?} for {:?} / {}", err, name, balance);
                }
                (got, expected) => prop_assert!(false, "{:?} for {:?} / {}: expected {:?}", got, name, balance, expected),
            }
        }

        /// For any account (any name, even one validation would refuse) and id,
        /// the event frame parses back per WHATWG to exactly the event JSON,
        /// with the id as `lastEventId`, and that JSON holds the same account.
        #[test]
        fn event_frames_round_trip_through_a_whatwg_parser(
            name in name(),
            balance in 0u64..=MAX_BALANCE,
            server_id in "[a-z0-9-]{1,12}|\\PC{0,12}",
            ms in any::<u64>(),
            seq in any::<u64>(),
        ) {
            let account = Account {
                id: uuid::Uuid::now_v7(),
                name,
                balance,
                created_at: now_rfc3339_ms(),
                server_id: server_id.clone(),
            };
            let id = EventId { ms, seq };
            let tail = event_tail(&account, false, &server_id, &account.created_at).unwrap();
            let json = event_json(id, None, &tail);
            let frame = Frame::event(id, &json);
            let events = whatwg_events(&frame.bytes);
            prop_assert_eq!(events.len(), 1, "{:?}", frame.bytes);
            let (kind, data, last_id) = &events[0];
            prop_assert_eq!(kind, "message");
            prop_assert_eq!(data, &json);
            prop_assert_eq!(last_id, &id.to_string());
            let event: Value = serde_json::from_str(data).unwrap();
            prop_assert_eq!(&event["id"], &json!(id.to_string()));
            let parsed: Account = serde_json::from_value(event["data"].clone()).unwrap();
            prop_assert_eq!(parsed, account);
        }
    }

    #[test]
    fn the_oracle_itself_agrees_with_the_spec_examples() {
        assert_eq!(
            name_oracle("  다중서버테스트 ").as_deref(),
            Some("다중서버테스트")
        );
        assert_eq!(name_oracle("\u{3000}a\u{85}").as_deref(), Some("a"));
        assert_eq!(name_oracle("a\nb"), None);
        assert_eq!(name_oracle(" \t "), None);
        assert_eq!(name_oracle(&"x".repeat(101)), None);
        assert_eq!(balance_oracle(&json!(1e3)), None);
        assert_eq!(balance_oracle(&json!(-1)), None);
        assert_eq!(balance_oracle(&json!(MAX_BALANCE)), Some(MAX_BALANCE));
        assert_eq!(
            whatwg_events(b"data: a\r\ndata: b\rid: 1\n\n: c\n\n"),
            vec![("message".to_owned(), "a\nb".to_owned(), "1".to_owned())]
        );
    }
}
