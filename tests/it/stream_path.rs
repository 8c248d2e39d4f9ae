//! The server's own stream path (`server::stream`): a connection whose first
//! request is a plain `GET /events/sse` is answered without hyper. Raw
//! sockets check the wire format — chunked for HTTP/1.1, close-delimited for
//! HTTP/1.0 — and that everything else still reaches hyper intact: requests
//! pipelined after a peeked head, bodies on a stream path, non-stream
//! answers (503) from a stream path, and a malformed head (400 JSON).

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{post_account, SseClient, TestApp};

const SECS5: Duration = Duration::from_secs(5);

/// Reads from `stream` into `buf` until `done(buf)` holds; panics after 5 s
/// or on EOF before that.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    tokio::time::timeout(SECS5, async {
        while !done(buf) {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF; got {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; got {:?}", String::from_utf8_lossy(buf)));
}

/// Reads to EOF (≤ 5 s) and returns everything.
async fn read_to_end(stream: &mut TcpStream, mut buf: Vec<u8>) -> Vec<u8> {
    tokio::time::timeout(SECS5, stream.read_to_end(&mut buf))
        .await
        .expect("no EOF within 5 s")
        .unwrap();
    buf
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The head (lower-cased) and the bytes after it.
fn split_head(response: &[u8]) -> (String, &[u8]) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&response[..end]).to_lowercase();
    (head, &response[end + 4..])
}

/// Decodes a chunked body: the chunks' data joined, and whether the last
/// chunk (`0\r\n\r\n`) was seen. Panics on bad framing.
fn dechunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16)
            .unwrap_or_else(|_| panic!("chunk size line {:?}", &body[..line_end]));
        if size == 0 {
            assert_eq!(
                &body[line_end..],
                b"\r\n\r\n",
                "trailer after the last chunk"
            );
            return (data, true);
        }
        let rest = &body[line_end + 2..];
        if rest.len() < size + 2 {
            break; // Incomplete chunk: the caller reads more.
        }
        assert_eq!(&rest[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        data.extend_from_slice(&rest[..size]);
        body = &rest[size + 2..];
    }
    (data, false)
}

/// HTTP/1.1: `200`, the SSE headers, `Transfer-Encoding: chunked`; the
/// preamble and a published event as well-formed chunks; at shutdown the
/// last chunk and a clean close.
#[tokio::test]
async fn http11_stream_is_chunked_and_ends_with_the_last_chunk() {
    let app = TestApp::spawn(&[]).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /events/sse HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |b| {
        contains(b, "\r\n\r\n") && contains(&dechunk(split_head(b).1).0, "event: connected")
    })
    .await;
    let (head, _) = split_head(&buf);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for header in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "x-accel-buffering: no",
        "transfer-encoding: chunked",
        "date: ",
    ] {
        assert!(head.contains(header), "{header} missing in {head}");
    }
    assert!(!head.contains("content-length"), "{head}");

    let http = reqwest::Client::new();
    let (status, account) = post_account(&http, &app.base(), "chunked", 1).await;
    assert_eq!(status, 201);
    let id = account["id"].as_str().unwrap().to_owned();
    read_until(&mut stream, &mut buf, |b| {
        contains(&dechunk(split_head(b).1).0, &id)
    })
    .await;

    app.token.cancel();
    let buf = read_to_end(&mut stream, buf).await;
    let (data, ended) = dechunk(split_head(&buf).1);
    assert!(ended, "no last chunk: {:?}", String::from_utf8_lossy(&buf));
    let data = String::from_utf8(data).unwrap();
    assert!(data.starts_with("retry: "), "{data}");
    assert!(data.contains("\n\nid: "), "{data}");
}

/// HTTP/1.0 (what nginx sends upstream by default): no chunked framing, the
/// body is the raw event stream and ends with the connection.
#[tokio::test]
async fn http10_stream_is_close_delimited() {
    let app = TestApp::spawn(&[]).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /events/sse HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |b| contains(b, "event: connected")).await;
    let (head, _) = split_head(&buf);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");

    let http = reqwest::Client::new();
    let (status, account) = post_account(&http, &app.base(), "close-delimited", 2).await;
    assert_eq!(status, 201);
    let id = account["id"].as_str().unwrap().to_owned();
    read_until(&mut stream, &mut buf, |b| contains(b, &id)).await;

    app.token.cancel();
    let buf = read_to_end(&mut stream, buf).await;
    let body = String::from_utf8(split_head(&buf).1.to_vec()).unwrap();
    assert!(body.starts_with("retry: "), "{body}");
    assert!(body.ends_with("\n\n"), "{body:?}");
    assert!(
        !body.contains("\r\n"),
        "chunk framing in a 1.0 body: {body:?}"
    );
}

/// Two pipelined non-stream requests on one keep-alive connection: both are
/// answered, in order, after the first head was peeked at.
#[tokio::test]
async fn pipelined_requests_after_a_peeked_head_are_all_answered() {
    let app = TestApp::spawn(&[]).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\nGET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |b| {
        b.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count() == 2
    })
    .await;
    let text = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(text.contains("application/json"), "{text}");
    // Keep-alive: a third request on the same connection is answered too.
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let buf = read_to_end(&mut stream, buf).await;
    assert_eq!(
        buf.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count(),
        3
    );
    app.shutdown().await;
}

/// A stream request the router refuses (503, the instance is full) is
/// written by hyper with the router's answer, and the keep-alive connection
/// goes on to serve the next request.
#[tokio::test]
async fn a_refused_stream_request_keeps_the_connection_for_the_next() {
    let app = TestApp::spawn(&["--max-sse-clients", "1"]).await;
    let (_holder, _) = SseClient::open(&format!("{}/events/sse", app.base()), None).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /events/sse HTTP/1.1\r\nHost: t\r\n\r\nGET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let buf = read_to_end(&mut stream, Vec::new()).await;
    let text = String::from_utf8_lossy(&buf);
    let first = text.find("HTTP/1.1 503").expect("503 first");
    let second = text.find("HTTP/1.1 200").expect("then 200");
    assert!(first < second, "{text}");
    assert!(text.contains("\"too_many_clients\""), "{text}");
    assert!(text.to_lowercase().contains("retry-after: "), "{text}");
    app.shutdown().await;
}

/// A body on a stream path is hyper's business: `GET` with a body still
/// gets the stream (the handler ignores bodies), `POST` gets the JSON 405.
#[tokio::test]
async fn requests_with_a_body_to_a_stream_path_go_to_hyper() {
    let app = TestApp::spawn(&[]).await;
    let mut get = TcpStream::connect(app.addr).await.unwrap();
    get.write_all(b"GET /events/sse HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut get, &mut buf, |b| contains(b, "event: connected")).await;
    let (head, _) = split_head(&buf);
    assert!(head.starts_with("http/1.1 200 ok"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");

    let mut post = TcpStream::connect(app.addr).await.unwrap();
    post.write_all(
        b"POST /events/sse HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await
    .unwrap();
    let buf = read_to_end(&mut post, Vec::new()).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.contains("\"method_not_allowed\""), "{text}");
    drop(get);
    app.shutdown().await;
}

/// A head that is not HTTP gets `400` with the JSON error body, and the
/// connection closes.
#[tokio::test]
async fn a_malformed_head_gets_a_json_400() {
    let app = TestApp::spawn(&[]).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /events/sse HTTP/1.1\r\nno colon here\r\n\r\n")
        .await
        .unwrap();
    let buf = read_to_end(&mut stream, Vec::new()).await;
    let (head, body) = split_head(&buf);
    assert!(head.starts_with("http/1.1 400 bad request"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let error: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(error["error"]["code"], "bad_request", "{error}");
    assert!(error["error"]["message"].is_string(), "{error}");
    app.shutdown().await;
}
