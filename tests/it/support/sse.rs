//! `SseClient`: reads a `text/event-stream` response and parses it into
//! frames per WHATWG HTML §9.2.6 (fields `id`, `event`, `data`, `retry`,
//! comments; LF, CR and CRLF line ends).

use std::{pin::Pin, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// One dispatched block (fields up to a blank line), or one comment line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseFrame {
    /// `id:` field, if present in this block.
    pub id: Option<String>,
    /// `event:` field (`None`: an unnamed message).
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// `retry:` field.
    pub retry: Option<String>,
    /// A comment line (`: keep-alive` → `Some("keep-alive")`), alone in its frame.
    pub comment: Option<String>,
}

impl SseFrame {
    /// An unnamed message with data: one event for `onmessage`.
    pub fn is_message(&self) -> bool {
        self.event.is_none() && self.comment.is_none() && !self.data.is_empty()
    }

    /// The data parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|err| panic!("data is not JSON ({err}): {:?}", self.data))
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A streaming SSE response being parsed.
pub struct SseClient {
    /// Response status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    body: ByteStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed; compacted before the next read, so a
    /// large chunk costs one move instead of one per line.
    start: usize,
    pending: SseFrame,
    has_fields: bool,
    eof: bool,
}

impl std::fmt::Debug for SseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseClient")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl SseClient {
    /// `GET url` with `Accept: text/event-stream`.
    pub async fn connect(url: &str) -> Self {
        Self::connect_with(url, None).await
    }

    /// Like [`connect`](Self::connect), sending `Last-Event-ID` when given.
    pub async fn connect_with(url: &str, last_event_id: Option<&str>) -> Self {
        let http = reqwest::Client::new();
        let mut request = http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {url}: {err}"));
        Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: Box::pin(response.bytes_stream()),
            buf: Vec::new(),
            start: 0,
            pending: SseFrame::default(),
            has_fields: false,
            eof: false,
        }
    }

    /// A client over a body read some other way (e.g. a raw socket with a
    /// small receive buffer, see `support::delivery::RawSse`): the stream
    /// yields body bytes and ends at EOF.
    pub fn from_body(
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Self {
        Self {
            status,
            headers,
            body: Box::pin(body.map(Ok)),
            buf: Vec::new(),
            start: 0,
            pending: SseFrame::default(),
            has_fields: false,
            eof: false,
        }
    }

    /// Connects and reads the preamble (`retry:` then `event: connected`);
    /// returns the `serverId` it names.
    pub async fn open(url: &str, last_event_id: Option<&str>) -> (Self, String) {
        let mut client = Self::connect_with(url, last_event_id).await;
        assert_eq!(client.status, 200, "GET {url}");
        let retry = client
            .next_frame(Duration::from_secs(5))
            .await
            .expect("retry frame");
        assert!(
            retry.retry.is_some(),
            "first frame must be retry:, got {retry:?}"
        );
        let connected = client
            .next_frame(Duration::from_secs(5))
            .await
            .expect("connected frame");
        assert_eq!(
            connected.event.as_deref(),
            Some("connected"),
            "{connected:?}"
        );
        let server_id = connected.json()["serverId"].as_str().unwrap().to_owned();
        (client, server_id)
    }

    /// The next frame, or `None` on timeout or end of stream.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<SseFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(frame) = self.parse_one() {
                return Some(frame);
            }
            if self.eof {
                return None;
            }
            self.buf.drain(..self.start);
            self.start = 0;
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Some(Err(_)) | None) => self.eof = true,
            }
        }
    }

    /// Reads until `n` messages (unnamed, with data) arrived, collecting
    /// every non-comment frame on the way; panics after `timeout` saying how
    /// many came.
    pub async fn messages(&mut self, n: usize, timeout: Duration) -> Vec<SseFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        let mut count = 0;
        while count < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.next_frame(left).await else {
                panic!("got {count} of {n} messages within {timeout:?}; frames: {out:?}");
            };
            if frame.comment.is_some() {
                continue;
            }
            if frame.is_message() {
                count += 1;
            }
            out.push(frame);
        }
        out
    }

    /// True if the stream has ended (EOF) within `timeout`, skipping frames.
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.next_frame(left).await.is_none() {
                return self.eof;
            }
        }
    }

    /// True once the response body has ended (EOF or a connection error).
    pub fn ended(&self) -> bool {
        self.eof
    }

    fn parse_one(&mut self) -> Option<SseFrame> {
        loop {
            // A line ends at LF, CR or CRLF; a CR at the buffer's end waits for more.
            let rest = &self.buf[self.start..];
            let end = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
            let skip = if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None if self.eof => 1,
                    None => return None,
                }
            } else {
                1
            };
            let line = String::from_utf8_lossy(&rest[..end]).into_owned();
            self.start += end + skip;
            if line.is_empty() {
                if self.has_fields {
                    self.has_fields = false;
                    let mut frame = std::mem::take(&mut self.pending);
                    if frame.data.ends_with('\n') {
                        frame.data.pop();
                    }
                    return Some(frame);
                }
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                return Some(SseFrame {
                    comment: Some(comment.trim_start().to_owned()),
                    ..SseFrame::default()
                });
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (line.clone(), String::new()),
            };
            self.has_fields = true;
            match field.as_str() {
                "id" => self.pending.id = Some(value),
                "event" => self.pending.event = Some(value),
                "retry" => self.pending.retry = Some(value),
                "data" => {
                    self.pending.data.push_str(&value);
                    self.pending.data.push('\n');
                }
                _ => {}
            }
        }
    }
}
