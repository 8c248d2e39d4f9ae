//! The SSE streams: `GET /events/sse` (SPEC §3.4, native format) and the
//! Mercure subscribe of `GET /.well-known/mercure` (SPEC §8.2): admission,
//! authorization, topic filter, resume from history, live fan-out with
//! coalesced writes, lag catch-up, keep-alive, and an end on shutdown or
//! token expiry.

use std::{convert::Infallible, pin::pin, sync::Arc, time::SystemTime};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::{
    bus::{History, HISTORY_PAGE},
    error::ApiError,
    hub::{Batch, ClientPermit, Filter, Subscription},
    keepalive::next_tick,
    metrics::SSE_RESETS,
    model::{EventId, Format, Frame, FrameKind, Update},
    state::AppState,
    topic::Selector,
};

/// Most bytes joined into one body chunk (one socket write). Under load a
/// client is handed everything already queued for it at once, so the cost
/// per event falls far below one syscall; the bound keeps one chunk's copy
/// small and lets other clients' tasks run in between.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Seconds suggested in `Retry-After` when the instance is full.
const FULL_RETRY_AFTER_SECS: u64 = 5;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/events/sse", get(stream_events))
}

/// Most topic selectors one stream may ask for (SPEC §8.2).
pub const MAX_SELECTORS: usize = 1000;

/// What the client asked to resume from (SPEC §3.4, §8.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No `Last-Event-ID`: live events only.
    Live,
    /// Replay retained events after this id (generated or supplied), then live.
    After(String),
    /// `earliest`: every retained event, then live.
    Earliest,
    /// A `Last-Event-ID` header that is not text: `reset`, then live.
    Malformed,
}

impl Resume {
    /// `Last-Event-ID` header, else the `lastEventID` / `lastEventId` query
    /// parameter; the header wins (SPEC §8.5). An empty value means no id
    /// (WHATWG HTML §9.2: the browser sends the last id it saw, which may be empty).
    pub fn from_request(headers: &HeaderMap, query: Option<&str>) -> Self {
        let header = headers
            .get("last-event-id")
            .map(|v| v.to_str().map(str::trim));
        let raw = match header {
            Some(Ok(v)) if !v.is_empty() => Some(v),
            Some(Err(_)) => return Resume::Malformed,
            _ => query.map(str::trim).filter(|v| !v.is_empty()),
        };
        match raw {
            None => Resume::Live,
            Some("earliest") => Resume::Earliest,
            Some(raw) => Resume::After(raw.to_owned()),
        }
    }
}

/// A subscribe request's query: `topic` selectors (repeatable) and the
/// resume id. A query that does not parse yields nothing, never an HTTP
/// error (EventSource stops reconnecting on errors, SPEC §3.4).
#[derive(Debug, Default)]
pub struct SubscribeQuery {
    /// The `topic` parameters, in order.
    pub topics: Vec<String>,
    /// `lastEventID` or `lastEventId` (both accepted on both endpoints).
    pub last_event_id: Option<String>,
}

impl SubscribeQuery {
    /// Parses `query` (`application/x-www-form-urlencoded`).
    pub fn parse(query: Option<&str>) -> Self {
        let mut out = Self::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*name {
                "topic" => out.topics.push(value.into_owned()),
                "lastEventID" | "lastEventId" => out.last_event_id = Some(value.into_owned()),
                _ => {}
            }
        }
        out
    }
}

/// Where a stream starts, once the requested id is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begin {
    /// Live events only.
    Live,
    /// Replay after this position, then live.
    After(EventId),
    /// Replay every retained event, then live.
    Oldest,
    /// `event: reset` with this reason, then live (native format only).
    Reset(&'static str),
}

/// Resolves the requested id: for the native format an id that is not
/// retained is `reset` (SPEC §3.4); for Mercure it is a replay from the
/// earliest retained event with the response header `Last-Event-ID:
/// earliest` (SPEC §8.5). Returns the start and that header's value.
async fn resolve_start(
    state: &AppState,
    format: Format,
    resume: Resume,
) -> (Begin, Option<String>) {
    let unknown = |reason| match format {
        Format::Native => (Begin::Reset(reason), None),
        Format::Mercure => (Begin::Oldest, Some("earliest".to_owned())),
    };
    match resume {
        Resume::Live => (Begin::Live, None),
        Resume::Earliest => (Begin::Oldest, Some("earliest".to_owned())),
        Resume::Malformed => unknown("malformed_event_id"),
        Resume::After(raw) => match state.bus.resolve(&raw).await {
            Ok(Some(position)) => match state.bus.history_after(Some(position), 0).await {
                Ok(History::Events(_)) => (Begin::After(position), Some(raw)),
                Ok(History::Missing) => unknown("unknown_event_id"),
                Err(err) => {
                    tracing::warn!(error = %err, "history read failed; sending reset: {err}");
                    unknown("history_unavailable")
                }
            },
            Ok(None) => unknown("malformed_event_id"),
            Err(err) => {
                tracing::warn!(error = %err, "event id lookup failed; sending reset: {err}");
                unknown("history_unavailable")
            }
        },
    }
}

/// Everything a subscribe route hands to [`open_stream`].
struct StreamRequest {
    format: Format,
    selectors: Vec<String>,
    resume: Resume,
}

/// Admits, authorizes and subscribes a stream, resolves its resume point
/// and builds the response: `503 too_many_clients` beyond `MAX_SSE_CLIENTS`
/// (both endpoints together), `400` beyond [`MAX_SELECTORS`], `401` for a
/// bad subscriber token, else `200 text/event-stream`. The stream is
/// subscribed before the response exists, so it receives every event
/// accepted after its headers (SPEC §8.2).
async fn open_stream(
    state: AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    request: StreamRequest,
) -> Result<Response, ApiError> {
    let permit = state.hub.try_admit().ok_or(ApiError::TooManyClients {
        retry_after: FULL_RETRY_AFTER_SECS,
    })?;
    if request.selectors.len() > MAX_SELECTORS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_SELECTORS} topic selectors per subscription, got {}",
            request.selectors.len()
        )));
    }
    let auth = state.auth.authorize_subscribe(headers, query)?;
    let filter = Filter {
        format: request.format,
        selectors: request
            .selectors
            .iter()
            .map(|s| Selector::parse(s))
            .collect(),
        allowed: (!auth.anonymous).then(|| auth.subscribe.clone()),
    };
    let subscription = state.hub.subscribe(filter);
    let (begin, last_event_id) = resolve_start(&state, request.format, request.resume).await;
    let expires_at = auth.expires_at;
    let body = Body::from_stream(event_stream(state, subscription, begin, permit, expires_at));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    match request.format {
        Format::Native => {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        Format::Mercure => {
            // As the Go hub sends them (subscribe.go).
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
            );
            if let Some(value) = last_event_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                h.insert("last-event-id", value);
            }
        }
    }
    Ok(response)
}

/// Opens a native stream (SPEC §3.4, §8.2): no `topic` means `*`.
#[utoipa::path(get, path = "/events/sse", tag = "events",
    params(
        ("topic" = Option<Vec<String>>, Query, description = "Topic selectors (`*`, exact, URI template); repeatable; none = `*`"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id, or `earliest`"),
        ("lastEventId" = Option<String>, Query, description = "Resume after this event id (the header wins); `lastEventID` too"),
    ),
    responses(
        (status = 200, description = "An endless text/event-stream: `retry:`, `event: connected`, then one unnamed message per event (`id:` + one-line JSON `data:`), `event: reset` when a resume is impossible, `: keep-alive` comments",
            body = String, content_type = "text/event-stream"),
        (status = 400, description = "`bad_request`: more than 1,000 topic selectors", body = crate::error::ErrorBody),
        (status = 401, description = "`unauthorized`: invalid or expired subscriber token", body = crate::error::ErrorBody,
            headers(("WWW-Authenticate" = String))),
        (status = 503, description = "`too_many_clients`: MAX_SSE_CLIENTS reached", body = crate::error::ErrorBody,
            headers(("Retry-After" = String))),
    ))]
pub(super) async fn stream_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = SubscribeQuery::parse(uri.query());
    let mut selectors = query.topics;
    if selectors.is_empty() {
        selectors.push("*".to_owned());
    }
    let resume = Resume::from_request(&headers, query.last_event_id.as_deref());
    let request = StreamRequest {
        format: Format::Native,
        selectors,
        resume,
    };
    open_stream(state, &headers, uri.query(), request).await
}

/// Opens a Mercure stream (SPEC §8.2); `400` without `topic`.
pub(super) async fn subscribe_mercure(
    state: AppState,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query = SubscribeQuery::parse(uri.query());
    if query.topics.is_empty() {
        return Err(ApiError::BadRequest(
            "missing \"topic\" parameter: give at least one topic selector".to_owned(),
        ));
    }
    let resume = Resume::from_request(&headers, query.last_event_id.as_deref());
    let request = StreamRequest {
        format: Format::Mercure,
        selectors: query.topics,
        resume,
    };
    open_stream(state, &headers, uri.query(), request).await
}

/// What the client has been sent, for deduplication at every seam.
#[derive(Debug)]
struct Cursor {
    /// Newest event id the client has received or, at connect, the hub's
    /// cursor when it subscribed (it wants nothing at or before it).
    last: Option<EventId>,
}

impl Cursor {
    /// Appends `frame` to `out` unless it is a duplicate or out of order.
    fn take(&mut self, frame: &Frame, out: &mut Chunk) {
        match frame.kind {
            FrameKind::Event(id) => {
                if self.last.is_some_and(|last| id <= last) {
                    return;
                }
                self.last = Some(id);
            }
            // After a reset from the bus (history lost, failover) the
            // subscriber sends what this instance has not forwarded, in the
            // new history's order, whose ids may be below what came before.
            FrameKind::Reset => {
                metrics::counter!(SSE_RESETS).increment(1);
                self.last = None;
            }
            FrameKind::Foreign => {}
        }
        out.push(&frame.bytes);
    }

    /// Appends a batch: its joined bytes as they are when every event in it
    /// is new to this client (the usual case), frame by frame otherwise.
    fn take_batch(&mut self, batch: &Batch, out: &mut Chunk) {
        let all_new = batch.resets == 0
            && match (self.last, batch.first_id) {
                (Some(last), Some(first)) => first > last,
                _ => true,
            };
        if all_new {
            self.last = batch.last_id.or(self.last);
            out.push(&batch.bytes);
        } else {
            for frame in &batch.frames {
                self.take(frame, out);
            }
        }
    }
}

/// Bytes for one write: zero-copy for a single frame, one buffer for many.
#[derive(Debug, Default)]
struct Chunk {
    single: Option<Bytes>,
    joined: BytesMut,
}

impl Chunk {
    fn push(&mut self, bytes: &Bytes) {
        if self.single.is_none() && self.joined.is_empty() {
            self.single = Some(bytes.clone());
            return;
        }
        if let Some(first) = self.single.take() {
            self.joined.reserve(first.len() + bytes.len());
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(bytes);
    }

    fn len(&self) -> usize {
        self.single.as_ref().map_or(self.joined.len(), Bytes::len)
    }

    fn take(&mut self) -> Option<Bytes> {
        if let Some(single) = self.single.take() {
            return Some(single);
        }
        (!self.joined.is_empty()).then(|| self.joined.split().freeze())
    }
}

/// Reads history after `from` (`None`: from the oldest retained) into
/// `out`, page by page, until caught up, keeping what the stream's filter
/// accepts. On `Missing`, or when the bus fails, appends `event: reset` with
/// `reason` (native streams; Mercure has no such frame) and returns `true`:
/// the client continues live and refetches state.
async fn catch_up(
    state: &AppState,
    filter: &Filter,
    cursor: &mut Cursor,
    from: Option<EventId>,
    out: &mut Vec<Bytes>,
    missing_reason: &str,
) -> bool {
    let mut after = from;
    loop {
        let page = match state.bus.history_after(after, HISTORY_PAGE).await {
            Ok(History::Events(page)) => page,
            Ok(History::Missing) => {
                out.extend(reset(filter.format, missing_reason));
                return true;
            }
            Err(err) => {
                tracing::warn!(error = %err, "history read failed; sending reset: {err}");
                out.extend(reset(filter.format, "history_unavailable"));
                return true;
            }
        };
        let full = page.len() == HISTORY_PAGE;
        let mut chunk = Chunk::default();
        for update in &page {
            if !filter.accepts(update) {
                continue;
            }
            if let Some(frame) = update.frame(filter.format) {
                cursor.take(&frame, &mut chunk);
            }
            if chunk.len() >= MAX_CHUNK_BYTES {
                out.extend(chunk.take());
            }
        }
        out.extend(chunk.take());
        match page.last().and_then(Update::id) {
            Some(id) if full => after = Some(id),
            _ => return false,
        }
    }
}

/// `event: reset` for a native stream; nothing for Mercure.
fn reset(format: Format, reason: &str) -> Option<Bytes> {
    (format == Format::Native).then(|| {
        metrics::counter!(SSE_RESETS).increment(1);
        Frame::reset(reason).bytes
    })
}

/// What woke the stream.
enum Wake {
    Shutdown,
    Frame(Result<Arc<Batch>, broadcast::error::RecvError>),
    Tick,
}

/// The body of one SSE response. Order: the preamble (native: `retry:` +
/// `event: connected`; Mercure: a `:` comment that flushes the headers, as
/// the Go hub does); the resume replay (or `reset`); then live frames. Ends,
/// with the connection left to close cleanly, when the instance shuts down
/// or the subscriber token's `exp` passes (SPEC §8.4).
///
/// Lag (`RecvError::Lagged`: the client fell more than the broadcast
/// capacity behind) is not skipped over as in a chat demo: the client is
/// caught up from history after the last id it got, then the broadcast
/// resumes with duplicates dropped by id; if history no longer reaches
/// back, it gets `event: reset` (SPEC §3.4 "Slow clients").
fn event_stream(
    state: AppState,
    subscription: Subscription,
    begin: Begin,
    permit: ClientPermit,
    expires_at: Option<SystemTime>,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    async_stream::stream! {
        let _permit = permit;
        let mut subscription = subscription;
        let joined_at = subscription.joined_at;
        let filter = subscription.filter.clone();
        let format = filter.format;
        let mut cursor = Cursor { last: joined_at };
        match format {
            Format::Native => {
                let connected = serde_json::json!({ "serverId": state.config.server_id }).to_string();
                let mut head = BytesMut::new();
                head.extend_from_slice(format!("retry: {}\n\n", state.config.sse_retry_ms).as_bytes());
                head.extend_from_slice(&crate::model::data_lines(Some("connected"), &connected));
                yield Ok(head.freeze());
            }
            Format::Mercure => yield Ok(Bytes::from_static(b":\n")),
        }

        let mut replay = Vec::new();
        match begin {
            Begin::Live => {}
            Begin::Reset(reason) => replay.extend(reset(format, reason)),
            Begin::Oldest => {
                cursor.last = None;
                Box::pin(catch_up(&state, &filter, &mut cursor, None, &mut replay, "history_unavailable")).await;
                // Everything up to the join point came from history.
                cursor.last = cursor.last.max(joined_at);
            }
            Begin::After(id) => {
                cursor.last = Some(id);
                // Boxed (here and below): a rare, large future, kept out of every idle stream's state.
                if Box::pin(catch_up(&state, &filter, &mut cursor, Some(id), &mut replay, "unknown_event_id")).await && cursor.last == Some(id) {
                    // Nothing replayed: continue live from where this client subscribed.
                    cursor.last = joined_at;
                }
            }
        }
        for chunk in replay.drain(..) {
            yield Ok(chunk);
        }

        let keepalive = state.keepalive.every();
        let mut tick = state.keepalive.subscribe();
        let mut last_write = std::time::Instant::now();
        let shutdown = state.shutdown.clone();
        let mut shutdown = pin!(shutdown.cancelled_owned());
        let expiry = expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let mut expired = pin!(async move {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        });
        loop {
            let wake = tokio::select! {
                biased;
                () = &mut shutdown => Wake::Shutdown,
                () = &mut expired => Wake::Shutdown,
                received = subscription.rx.recv() => Wake::Frame(received),
                () = next_tick(&mut tick) => Wake::Tick,
            };
            let mut lagged = false;
            match wake {
                Wake::Shutdown => break,
                // Silent for less than the interval: nothing to send yet.
                Wake::Tick if last_write.elapsed() < keepalive => continue,
                Wake::Tick => yield Ok(Bytes::from_static(b": keep-alive\n\n")),
                Wake::Frame(Err(broadcast::error::RecvError::Closed)) => break,
                Wake::Frame(Err(broadcast::error::RecvError::Lagged(_))) => lagged = true,
                Wake::Frame(Ok(frame)) => {
                    let mut chunk = Chunk::default();
                    cursor.take_batch(&frame, &mut chunk);
                    // Coalesce whatever else is already queued into this write.
                    while chunk.len() < MAX_CHUNK_BYTES {
                        match subscription.rx.try_recv() {
                            Ok(batch) => cursor.take_batch(&batch, &mut chunk),
                            Err(TryRecvError::Lagged(_)) => {
                                lagged = true;
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                        }
                    }
                    if let Some(bytes) = chunk.take() {
                        yield Ok(bytes);
                    }
                }
            }
            if lagged {
                tracing::debug!(event.id = ?cursor.last.map(|id| id.to_string()), "client lagged; catching up from history");
                let before = cursor.last;
                let missing = match before {
                    Some(from) => Box::pin(catch_up(&state, &filter, &mut cursor, Some(from), &mut replay, "lagged_beyond_history")).await,
                    None => {
                        replay.extend(reset(format, "lagged_beyond_history"));
                        true
                    }
                };
                if missing && cursor.last == before {
                    // Gap acknowledged: take whatever the broadcast still holds.
                    cursor.last = None;
                }
                for chunk in replay.drain(..) {
                    yield Ok(chunk);
                }
            }
            last_write = std::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_over_query_and_bad_ids_reset() {
        let mut headers = HeaderMap::new();
        assert_eq!(Resume::from_request(&headers, None), Resume::Live);
        assert_eq!(Resume::from_request(&headers, Some("")), Resume::Live);
        assert_eq!(
            Resume::from_request(&headers, Some("5-1")),
            Resume::After("5-1".to_owned())
        );
        assert_eq!(
            Resume::from_request(&headers, Some("earliest")),
            Resume::Earliest
        );
        headers.insert("last-event-id", HeaderValue::from_static("7-0"));
        assert_eq!(
            Resume::from_request(&headers, Some("5-1")),
            Resume::After("7-0".to_owned())
        );
        headers.insert("last-event-id", HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(
            Resume::from_request(&headers, Some("5-1")),
            Resume::Malformed
        );
        headers.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(
            Resume::from_request(&headers, Some("5-1")),
            Resume::After("5-1".to_owned())
        );
        let q = SubscribeQuery::parse(Some("topic=a%2Fb&topic=%2A&lastEventID=x&other=1"));
        assert_eq!(q.topics, ["a/b", "*"]);
        assert_eq!(q.last_event_id.as_deref(), Some("x"));
    }

    #[test]
    fn cursor_drops_duplicates_and_chunk_joins() {
        let mut cursor = Cursor {
            last: Some(EventId { ms: 1, seq: 0 }),
        };
        let mut chunk = Chunk::default();
        cursor.take(&Frame::event(EventId { ms: 1, seq: 0 }, "{}"), &mut chunk);
        assert_eq!(chunk.len(), 0);
        cursor.take(&Frame::event(EventId { ms: 2, seq: 0 }, "{}"), &mut chunk);
        cursor.take(&Frame::foreign("{\"type\":\"x\"}"), &mut chunk);
        cursor.take(&Frame::event(EventId { ms: 1, seq: 5 }, "{}"), &mut chunk);
        let bytes = chunk.take().unwrap();
        assert_eq!(
            &bytes[..],
            b"id: 2-0\ndata: {}\n\ndata: {\"type\":\"x\"}\n\n"
        );
        assert!(chunk.take().is_none());
    }
}
