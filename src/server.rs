//! The HTTP/1.1 accept loop: a header-read timeout (slowloris), `TCP_NODELAY`
//! (SSE frames are small and latency-bound), a write-stall timeout per
//! connection (SPEC §3.4 "Slow clients"), and graceful drain. A connection
//! whose first request is a plain `GET` of a stream route is served by
//! [`stream`] with a few hundred bytes of state; everything else by hyper.

mod stream;

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::{pin, Pin},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, http::Request, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use self::stream::{Peeked, Rewind};

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time a socket may refuse all writes before the connection is dropped.
    pub send_timeout: Duration,
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    app: Router,
    limits: ServeLimits,
    http1: hyper::server::conn::http1::Builder,
    shutdown: CancellationToken,
}

/// The listen socket's accept queue length (`listen(2)` backlog; the kernel
/// caps it at `net.core.somaxconn`, 4096 on current Linux). tokio's default
/// of 1024 overflows when thousands of SSE clients reconnect at once (an
/// instance stopped, nginx retrying the survivor), and each dropped SYN
/// costs its client a 1 s, then 3 s retransmit.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with `SO_REUSEADDR` (a restart does not
/// wait for old connections in TIME_WAIT) and a [`LISTEN_BACKLOG`] queue.
///
/// # Errors
/// The socket cannot be created, bound (address in use, no permission) or listened on.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until `shutdown` fires, then stops accepting and
/// returns once every connection has closed. SSE bodies end on the same
/// token (see `routes::events`), so the wait is short; the caller bounds it
/// with `SHUTDOWN_GRACE_SECS`.
///
/// # Errors
/// Never in practice: accept errors (e.g. `EMFILE`) are logged and retried.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let shared = Arc::new(Shared {
        app,
        limits,
        http1,
        shutdown: shutdown.clone(),
    });
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(stream, shared.clone()));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection: peek at the first request head (within the header-read
/// timeout), then serve it as a stream or hand the connection to hyper.
async fn connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let peeked = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        peeked = tokio::time::timeout(shared.limits.header_read_timeout, stream::peek(&mut stream)) => peeked,
    };
    let result = match peeked {
        // Slowloris or an idle connection: close, as hyper does.
        Err(_) | Ok(Peeked::Closed) => return,
        Ok(Peeked::Malformed) => {
            let response =
                crate::error::ApiError::BadRequest("malformed HTTP request head".to_owned());
            stream::write_and_close(
                &mut stream,
                axum::response::IntoResponse::into_response(response),
            )
            .await
        }
        Ok(Peeked::Other(head)) => Box::pin(hyper_connection(stream, head, None, &shared)).await,
        Ok(Peeked::Stream { request, head }) => {
            let request = unbox(request);
            let version = request.version();
            // Boxed: the router's future is large and short-lived; inline it
            // would stay in every stream's task for the stream's life.
            let Ok(response) = Box::pin(shared.app.clone().oneshot(request)).await;
            if stream::is_event_stream(&response) {
                drop(head);
                let io = StallTimeout::new(stream, shared.limits.send_timeout);
                stream::serve_stream(io, version, response).await
            } else {
                Box::pin(hyper_connection(stream, head, Some(response), &shared)).await
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended: {err}");
    }
}

/// Moves `value` out of its box and frees the box now, not at the end of
/// the caller's scope (a moved-from `Box` binding keeps its allocation).
#[allow(clippy::boxed_local)] // Taking the box by value is the point.
fn unbox<T>(value: Box<T>) -> T {
    *value
}

/// hyper serves the connection from its first byte (`head` was read by the
/// peek). With `first`, the router already answered the first request and
/// hyper writes that answer instead of calling the router again, so every
/// layer runs exactly once per request.
async fn hyper_connection(
    stream: TcpStream,
    head: bytes::BytesMut,
    first: Option<axum::response::Response>,
    shared: &Shared,
) -> io::Result<()> {
    let io = TokioIo::new(Rewind::new(
        head,
        StallTimeout::new(stream, shared.limits.send_timeout),
    ));
    let first = Mutex::new(first);
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let answered = first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let app = shared.app.clone();
        async move {
            match answered {
                Some(response) => Ok::<_, Infallible>(response),
                None => app.oneshot(request.map(Body::new)).await,
            }
        }
    });
    let conn = shared.http1.serve_connection(io, service);
    let mut conn = pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    result.map_err(io::Error::other)
}

/// A TCP stream whose writes fail with `TimedOut` once the peer has accepted
/// no bytes for `timeout`. hyper has no write timeout, and a client that stops
/// reading would otherwise hold its connection (and slot) forever. The timer
/// exists only while a write is pending, so idle streams cost nothing.
#[derive(Debug)]
pub struct StallTimeout {
    inner: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl StallTimeout {
    /// Wraps `inner`.
    pub fn new(inner: TcpStream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// The socket, for readiness checks that bypass the timeout.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.stalled = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stopped reading",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for StallTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The container `HEALTHCHECK`: `GET /health/live` on `127.0.0.1:port` with a
/// 3 s limit; success when the status line says 200. A raw HTTP/1.0 request
/// keeps an HTTP client out of the binary.
pub async fn healthcheck(port: u16) -> std::process::ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health/live HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, io::Error>(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
    };
    match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Ok(true)) => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}
