//! The stream path of the accept loop: a connection whose first request is a
//! plain `GET` of a stream route is answered here, not by hyper, so an open
//! SSE stream keeps no HTTP read or write buffer (hyper holds 8 KiB of each
//! for a connection's life). The request still goes through the whole axum
//! router — every layer (CORS, auth, metrics, tracing, capacity) runs as for
//! any request; only the bytes on the wire are written here: the response
//! head, then each body frame with chunked framing (HTTP/1.1, RFC 9112 §7.1)
//! or close-delimited (HTTP/1.0, RFC 9112 §6.3 rule 8, as nginx proxies by
//! default).

use std::io::{self, IoSlice};

use axum::{
    body::Body,
    http::{self, header, HeaderValue, Method, Request, Response, Version},
};
use bytes::{BufMut, BytesMut};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::StallTimeout;

/// Routes served on this path (SPEC §3.4 and §8). Query strings are allowed.
const STREAM_PATHS: [&str; 2] = ["/events/sse", "/.well-known/mercure"];

/// Largest request head read before deciding; a longer head (rare: big
/// cookies) goes to hyper, which has its own limits.
pub(super) const MAX_PEEK_BYTES: usize = 8 * 1024;

/// First read's buffer: enough for a browser's `EventSource` request.
const FIRST_READ_BYTES: usize = 2 * 1024;

/// Most headers parsed here; more goes to hyper (its limit is 100).
const MAX_HEADERS: usize = 64;

/// What the first bytes of a connection are.
#[derive(Debug)]
pub(super) enum Peeked {
    /// A plain `GET` of a stream route, ready for the router. `head` holds
    /// every byte read so far (the head and anything after it).
    Stream {
        /// The request, with an empty body (boxed: short-lived and large).
        request: Box<Request<Body>>,
        /// The bytes read, for hyper if the response is not a stream.
        head: BytesMut,
    },
    /// Anything else (other routes, bodies, `Expect`, `Upgrade`, HTTP/2,
    /// big heads): hyper gets these bytes first, then the socket.
    Other(BytesMut),
    /// Not HTTP/1.x syntax: answered `400` with the JSON error body.
    Malformed,
    /// The peer closed (or the socket failed) before a whole head arrived.
    Closed,
}

/// Reads until a request head is complete, [`MAX_PEEK_BYTES`] are in, or the
/// peer stops, and classifies it. The caller bounds the time.
pub(super) async fn peek(stream: &mut TcpStream) -> Peeked {
    let mut buf = BytesMut::with_capacity(FIRST_READ_BYTES);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Peeked::Closed,
            Ok(_) => {}
        }
        match classify(&buf) {
            Some(Class::Stream(request)) => return Peeked::Stream { request, head: buf },
            Some(Class::Other) => return Peeked::Other(buf),
            Some(Class::Malformed) => return Peeked::Malformed,
            None if buf.len() >= MAX_PEEK_BYTES => return Peeked::Other(buf),
            None => {
                if buf.capacity() == buf.len() {
                    buf.reserve(buf.len().min(MAX_PEEK_BYTES - buf.len()));
                }
            }
        }
    }
}

enum Class {
    Stream(Box<Request<Body>>),
    Other,
    Malformed,
}

/// `None` while the head is incomplete.
fn classify(buf: &[u8]) -> Option<Class> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => {
            Some(to_request(&parsed).map_or(Class::Other, |r| Class::Stream(Box::new(r))))
        }
        // HTTP/2 prior knowledge or more headers than we parse: hyper decides.
        Err(httparse::Error::Version | httparse::Error::TooManyHeaders) => Some(Class::Other),
        Err(_) => Some(Class::Malformed),
    }
}

/// The request if it is one this path serves: `GET` of a stream route over
/// HTTP/1.0 or 1.1 without a body, `Expect` or `Upgrade`.
fn to_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let (Some("GET"), Some(path), Some(minor @ (0 | 1))) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return None;
    };
    let route = path.split_once('?').map_or(path, |(route, _)| route);
    if !STREAM_PATHS.contains(&route) {
        return None;
    }
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for h in parsed.headers.iter() {
        let name = h.name;
        let body = (name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
            || name.eq_ignore_ascii_case("transfer-encoding");
        if body || name.eq_ignore_ascii_case("expect") || name.eq_ignore_ascii_case("upgrade") {
            return None;
        }
        builder = builder.header(name, h.value);
    }
    // A name or value `http` refuses (hyper would too): hyper answers it.
    builder.body(Body::empty()).ok()
}

/// Whether the router's answer is an event stream (else hyper writes it).
pub(super) fn is_event_stream(response: &Response<Body>) -> bool {
    response.status() == http::StatusCode::OK
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Writes the response head and then every body frame until the body ends
/// (instance shutdown), the peer closes, or a write fails (including the
/// stall timeout). The socket is read only to notice the peer leaving; what
/// it sends after the head is discarded.
pub(super) async fn serve_stream(
    mut io: StallTimeout,
    version: Version,
    response: Response<Body>,
) -> io::Result<()> {
    let chunked = version == Version::HTTP_11;
    let (parts, mut body) = response.into_parts();
    let mut head = response_head(parts.status, &parts.headers);
    drop(parts); // The headers are written; keep nothing of them per stream.
    head.put_slice(if chunked {
        b"transfer-encoding: chunked\r\n\r\n"
    } else {
        b"connection: close\r\n\r\n"
    });
    io.write_all(&head).await?;
    drop(head);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            gone = peer_gone(io.get_ref()) => return gone,
        };
        let data = match frame {
            None => break,
            Some(Err(err)) => return Err(io::Error::other(err)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if chunked {
            let size = ChunkSize::new(data.len());
            write_all_vectored(
                &mut io,
                &mut [
                    IoSlice::new(size.as_bytes()),
                    IoSlice::new(&data),
                    IoSlice::new(b"\r\n"),
                ],
            )
            .await?;
        } else {
            io.write_all(&data).await?;
        }
    }
    if chunked {
        io.write_all(b"0\r\n\r\n").await?;
    }
    io.shutdown().await
}

/// Resolves when the peer has closed its side or the socket failed; bytes
/// it sends meanwhile are read into a small stack buffer and dropped.
async fn peer_gone(stream: &TcpStream) -> io::Result<()> {
    loop {
        stream.readable().await?;
        let mut scratch = [0u8; 64];
        match stream.try_read(&mut scratch) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}

/// Writes a whole response and closes: for requests that never reach the
/// router (a malformed head).
pub(super) async fn write_and_close(
    stream: &mut TcpStream,
    response: Response<Body>,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(io::Error::other)?;
    let mut head = response_head(parts.status, &parts.headers);
    head.put_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    head.put_slice(&body);
    stream.write_all(&head).await?;
    stream.shutdown().await
}

/// Status line, the response's headers and a `date` (as hyper adds), without
/// the blank line that ends the head.
fn response_head(status: http::StatusCode, headers: &http::HeaderMap) -> BytesMut {
    let mut head = BytesMut::with_capacity(256);
    head.put_slice(b"HTTP/1.1 ");
    head.put_slice(status.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.put_slice(b"\r\n");
    for (name, value) in headers {
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(date) = HeaderValue::from_str(&date) {
            head.put_slice(b"date: ");
            head.put_slice(date.as_bytes());
            head.put_slice(b"\r\n");
        }
    }
    head
}

/// A chunk-size line (`<hex>\r\n`) without allocating.
struct ChunkSize {
    bytes: [u8; 18],
    start: usize,
}

impl ChunkSize {
    fn new(mut len: usize) -> Self {
        let mut bytes = [0u8; 18];
        bytes[16] = b'\r';
        bytes[17] = b'\n';
        let mut start = 16;
        loop {
            start -= 1;
            bytes[start] = b"0123456789abcdef"[len & 0xf];
            len >>= 4;
            if len == 0 {
                break;
            }
        }
        Self { bytes, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

/// `write_all` for a list of slices: one `writev` per attempt.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let written = io.write_vectored(bufs).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, written);
    }
    Ok(())
}

/// A socket whose first reads return bytes already read from it, so hyper
/// parses a connection from its first byte after [`peek`] looked at it.
#[derive(Debug)]
pub(super) struct Rewind<T> {
    prefix: BytesMut,
    inner: T,
}

impl<T> Rewind<T> {
    /// Reads `prefix`, then `inner`.
    pub(super) fn new(prefix: BytesMut, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            if self.prefix.is_empty() {
                // Free the peek buffer for the rest of the connection.
                self.prefix = BytesMut::new();
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_lines() {
        assert_eq!(ChunkSize::new(0).as_bytes(), b"0\r\n");
        assert_eq!(ChunkSize::new(255).as_bytes(), b"ff\r\n");
        assert_eq!(ChunkSize::new(65536).as_bytes(), b"10000\r\n");
    }

    #[test]
    fn only_plain_gets_of_stream_routes_are_streams() {
        let class = |head: &str| classify(head.as_bytes());
        assert!(matches!(
            class("GET /events/sse?lastEventId=1-0 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Class::Stream(_))
        ));
        assert!(matches!(
            class("GET /.well-known/mercure?topic=a HTTP/1.0\r\n\r\n"),
            Some(Class::Stream(_))
        ));
        assert!(class("GET /events/sse HTTP/1.1\r\nHost: x\r\n").is_none());
        for other in [
            "GET /health HTTP/1.1\r\n\r\n",
            "HEAD /events/sse HTTP/1.1\r\n\r\n",
            "POST /events/sse HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            "GET /events/sse HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            "GET /events/sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /events/sse HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /events/sse HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(matches!(class(other), Some(Class::Other)), "{other:?}");
        }
        assert!(matches!(
            class("GET /events/sse HTTP/1.1\r\nbad header\r\n\r\n"),
            Some(Class::Malformed)
        ));
        assert!(matches!(
            class("\x01\x02 nonsense\r\n\r\n"),
            Some(Class::Malformed)
        ));
    }
}
