//! `GET /events/sse` (SPEC §3.4): preamble, resume from history, live
//! fan-out with coalesced writes, lag catch-up, keep-alive, and an end on
//! shutdown.

use std::{convert::Infallible, pin::pin, sync::Arc};

use axum::{
    body::Body,
    extract::{Query, State},
    http::{header, HeaderMap, HeaderValue, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::{
    bus::{History, HISTORY_PAGE},
    error::ApiError,
    hub::{Batch, ClientPermit},
    keepalive::next_tick,
    metrics::SSE_RESETS,
    model::{EventId, Frame, FrameKind},
    state::AppState,
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

#[derive(Debug, Deserialize)]
struct ResumeQuery {
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// Where a new stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No `Last-Event-ID`: live events only.
    Live,
    /// Replay retained events after this id, then live.
    After(EventId),
    /// A `Last-Event-ID` that is not an event id: `reset`, then live.
    Malformed,
}

impl Resume {
    /// `Last-Event-ID` header, else `?lastEventId=`; the header wins (SPEC §3.4).
    /// An empty value means no id (WHATWG HTML §9.2: the browser sends the
    /// last id it saw, which may be empty).
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
            Some(raw) => raw.parse().map_or(Resume::Malformed, Resume::After),
        }
    }
}

/// Opens a stream: `503 too_many_clients` beyond `MAX_SSE_CLIENTS`, else
/// `200 text/event-stream`. The client is subscribed before the response is
/// built, so it receives every event accepted after `event: connected`.
#[utoipa::path(get, path = "/events/sse", tag = "events",
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
        ("lastEventId" = Option<String>, Query, description = "Resume after this event id (the header wins)"),
    ),
    responses(
        (status = 200, description = "An endless text/event-stream: `retry:`, `event: connected`, then one unnamed message per event (`id:` + one-line JSON `data:`), `event: reset` when a resume is impossible, `: keep-alive` comments",
            body = String, content_type = "text/event-stream"),
        (status = 503, description = "`too_many_clients`: MAX_SSE_CLIENTS reached", body = crate::error::ErrorBody,
            headers(("Retry-After" = String))),
    ))]
pub(super) async fn stream_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let permit = state.hub.try_admit().ok_or(ApiError::TooManyClients {
        retry_after: FULL_RETRY_AFTER_SECS,
    })?;
    // A query that does not parse is ignored, never an HTTP error: EventSource
    // stops reconnecting on errors (SPEC §3.4).
    let query = Query::<ResumeQuery>::try_from_uri(&uri)
        .ok()
        .and_then(|Query(q)| q.last_event_id);
    let resume = Resume::from_request(&headers, query.as_deref());
    let body = Body::from_stream(event_stream(state, resume, permit));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
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
            FrameKind::Reset => metrics::counter!(SSE_RESETS).increment(1),
            FrameKind::Foreign => {}
        }
        out.push(&frame.bytes);
    }

    /// Appends a batch: its joined bytes as they are when every event in it
    /// is new to this client (the usual case), frame by frame otherwise.
    fn take_batch(&mut self, batch: &Batch, out: &mut Chunk) {
        let all_new = match (self.last, batch.first_id) {
            (Some(last), Some(first)) => first > last,
            _ => true,
        };
        if all_new {
            if batch.resets > 0 {
                metrics::counter!(SSE_RESETS).increment(batch.resets);
            }
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

/// Reads history after `cursor.last` into `out`, page by page, until caught
/// up. On `Missing`, or when the bus fails, appends `event: reset` with
/// `reason` and returns `true`: the client continues live and refetches state.
async fn catch_up(
    state: &AppState,
    cursor: &mut Cursor,
    out: &mut Vec<Bytes>,
    missing_reason: &str,
) -> bool {
    let Some(mut after) = cursor.last else {
        out.push(reset(missing_reason));
        return true;
    };
    loop {
        let page = match state.bus.history_after(after, HISTORY_PAGE).await {
            Ok(History::Events(page)) => page,
            Ok(History::Missing) => {
                out.push(reset(missing_reason));
                return true;
            }
            Err(err) => {
                tracing::warn!(error = %err, "history read failed; sending reset: {err}");
                out.push(reset("history_unavailable"));
                return true;
            }
        };
        let full = page.len() == HISTORY_PAGE;
        let mut chunk = Chunk::default();
        for frame in &page {
            cursor.take(frame, &mut chunk);
            if chunk.len() >= MAX_CHUNK_BYTES {
                out.extend(chunk.take());
            }
        }
        out.extend(chunk.take());
        match page.last().and_then(Frame::id) {
            Some(id) if full => after = id,
            _ => return false,
        }
    }
}

fn reset(reason: &str) -> Bytes {
    metrics::counter!(SSE_RESETS).increment(1);
    Frame::reset(reason).bytes
}

/// What woke the stream.
enum Wake {
    Shutdown,
    Frame(Result<Arc<Batch>, broadcast::error::RecvError>),
    Tick,
}

/// The body of one SSE response. Order: `retry:` + `event: connected`; the
/// resume replay (or `reset`); then live frames. Ends, with the connection
/// left to close cleanly, when the instance shuts down.
///
/// Lag (`RecvError::Lagged`: the client fell more than the broadcast
/// capacity behind) is not skipped over as in a chat demo: the client is
/// caught up from history after the last id it got, then the broadcast
/// resumes with duplicates dropped by id; if history no longer reaches
/// back, it gets `event: reset` (SPEC §3.4 "Slow clients").
fn event_stream(
    state: AppState,
    resume: Resume,
    permit: ClientPermit,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    async_stream::stream! {
        let _permit = permit;
        let (mut rx, joined_at) = state.hub.subscribe();
        let mut cursor = Cursor { last: joined_at };
        let connected = serde_json::json!({ "serverId": state.config.server_id }).to_string();
        let mut head = BytesMut::new();
        head.extend_from_slice(format!("retry: {}\n\n", state.config.sse_retry_ms).as_bytes());
        head.extend_from_slice(&crate::model::data_lines(Some("connected"), &connected));
        yield Ok(head.freeze());

        let mut replay = Vec::new();
        match resume {
            Resume::Live => {}
            Resume::Malformed => replay.push(reset("malformed_event_id")),
            Resume::After(id) => {
                cursor.last = Some(id);
                // Boxed (here and below): a rare, large future, kept out of every idle stream's state.
                if Box::pin(catch_up(&state, &mut cursor, &mut replay, "unknown_event_id")).await && cursor.last == Some(id) {
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
        loop {
            let wake = tokio::select! {
                biased;
                () = &mut shutdown => Wake::Shutdown,
                received = rx.recv() => Wake::Frame(received),
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
                        match rx.try_recv() {
                            Ok(batch) => cursor.take_batch(&batch, &mut chunk),
                            Err(TryRecvError::Lagged(_)) => {
                                lagged = true;
                                break;
                            }
                            Err(TryRecvError::Empty) => {
                                state.hub.note_caught_up();
                                break;
                            }
                            Err(TryRecvError::Closed) => break,
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
                if Box::pin(catch_up(&state, &mut cursor, &mut replay, "lagged_beyond_history")).await && cursor.last == before {
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
            Resume::After(EventId { ms: 5, seq: 1 })
        );
        headers.insert("last-event-id", HeaderValue::from_static("7-0"));
        assert_eq!(
            Resume::from_request(&headers, Some("5-1")),
            Resume::After(EventId { ms: 7, seq: 0 })
        );
        headers.insert("last-event-id", HeaderValue::from_static("garbage"));
        assert_eq!(
            Resume::from_request(&headers, Some("5-1")),
            Resume::Malformed
        );
        headers.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(
            Resume::from_request(&headers, Some("5-1")),
            Resume::After(EventId { ms: 5, seq: 1 })
        );
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
