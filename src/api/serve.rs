//! The API's HTTP server: HTTP/1.1 with a deadline for each request head and a cap on open
//! connections.
//!
//! `axum::serve` has neither: a client that sent half a request head, or nothing, held its
//! connection (and a file descriptor) for ever, and at the process's descriptor limit the node
//! could no longer open its store, files or inbox. Here a client must send each request head
//! within `api.header_timeout` (the same bound holds a kept-alive connection between requests),
//! at most `api.max_connections` connections are served at once (WebSockets included, until they
//! close), and up to [`REFUSING`] more are answered 503 and closed; beyond those, new connections
//! are closed at once. The cap is kept below the descriptor limit with room for the rest of the
//! node ([`RESERVED_FDS`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::envelope::{ApiError, Kind};

/// Connections past the cap that are answered 503 at the same time; beyond these, new
/// connections are closed unanswered.
pub const REFUSING: usize = 64;
/// Descriptors kept for everything but API connections: the store, the evidence log, files in
/// transfer, the inbox, the link and the calls to services and callbacks.
pub const RESERVED_FDS: u64 = 512;
/// How long a connection past the cap has to send its request head before it is closed
/// unanswered.
const REFUSAL_WITHIN: Duration = Duration::from_secs(2);
/// How often at most the log says that the cap is reached.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Limits on API connections (`api.max_connections`, `api.header_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// The time a client has to send each request head.
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then accepts no more
/// connections, lets the requests under way finish, and returns once their connections closed.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let max = within_fd_limit(limits.max_connections);
    let (serving, refusing) = (Arc::new(Semaphore::new(max)), Arc::new(Semaphore::new(REFUSING)));
    // Each connection task holds a receiver; all dropped means all connections are done.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut warned: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        if let Ok(place) = serving.clone().try_acquire_owned() {
            let service = router.clone().map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                request.map(axum::body::Body::new)
            });
            tokio::spawn(connection(
                Counted { _place: place, stream },
                service,
                limits.header_timeout,
                stop_rx.clone(),
            ));
            continue;
        }
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            warned = Some(Instant::now());
            tracing::warn!(
                max_connections = max,
                "every API connection is in use: new ones are answered 503; raise api.max_connections (and the \
                 unit's LimitNOFILE) if the host apps need more, or make them reuse their connections"
            );
        }
        if let Ok(place) = refusing.clone().try_acquire_owned() {
            tokio::spawn(refuse(Counted { _place: place, stream }, max));
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    stop_tx.closed().await;
}

/// Serves one connection until it closes, or, once `stop` turns true, until its request under
/// way is answered.
async fn connection<S>(io: Counted, service: S, header_timeout: Duration, mut stop: watch::Receiver<bool>)
where
    S: tower::Service<Request<Incoming>, Response = axum::response::Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let served = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)).with_upgrades();
    let mut served = std::pin::pin!(served);
    tokio::select! {
        _ = served.as_mut() => return,
        _ = stop.wait_for(|stop| *stop) => served.as_mut().graceful_shutdown(),
    }
    let _ = served.await;
}

/// Answers a connection past the cap with a 503 once it has sent its request head, and closes it.
async fn refuse(io: Counted, max: usize) {
    let answer = move |_: Request<Incoming>| async move {
        let mut response = ApiError::new(
            Kind::Unavailable,
            format!(
                "this node serves at most {max} API connections at once and all are in use; retry in a moment, reuse \
                 connections (keep-alive), or ask its operator to raise api.max_connections"
            ),
        )
        .into_response();
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        Ok::<_, std::convert::Infallible>(response)
    };
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(REFUSAL_WITHIN).keep_alive(false);
    let _ = builder.serve_connection(TokioIo::new(io), hyper::service::service_fn(answer)).await;
}

/// After a failed accept: a client that gave up is nothing; anything else (out of descriptors or
/// memory) is logged and the accept waits a moment, as retrying at once would only spin.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted) {
        return;
    }
    tracing::error!(error = %e, "cannot accept an API connection; trying again in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// `wanted`, or less if the process's descriptor limit leaves no room for it beside
/// [`REFUSING`] and [`RESERVED_FDS`] (then says so).
fn within_fd_limit(wanted: usize) -> usize {
    let Some(open_files) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current else {
        return wanted; // unlimited
    };
    let room = usize::try_from(open_files.saturating_sub(RESERVED_FDS + REFUSING as u64)).unwrap_or(usize::MAX);
    if room >= wanted {
        return wanted;
    }
    let max = room.max(1);
    tracing::warn!(
        open_files,
        "serving at most {max} API connections instead of api.max_connections = {wanted}, to keep descriptors for \
         the store, files and peers; raise the open-file limit (LimitNOFILE in the unit, or ulimit -n)"
    );
    max
}

/// An accepted connection and its place under the cap, which is given back when the connection
/// closes (also a connection upgraded to a WebSocket, when that ends).
struct Counted {
    // Declared first, so given back before the socket closes.
    _place: OwnedSemaphorePermit,
    stream: TcpStream,
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
