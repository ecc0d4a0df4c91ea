//! The local HTTP API, on loopback TCP and on a unix socket: the Open Inference Protocol
//! v2 (`/v2/...`), `GET /status` (JSON) and `GET /metrics` (Prometheus text).
//!
//! Protection against slow and greedy clients, so one client never stalls the others:
//! headers must arrive within `header_timeout` (idle keep-alive connections are closed
//! after it too), a body within `body_timeout`; bodies are capped at `max_body_bytes`;
//! inference requests beyond `max_concurrency` in flight get 503 at once; each listener
//! keeps at most `max_connections` open, making room for a new one by closing its oldest
//! idle connection, so that idle connections can never lock clients out of the TCP port
//! nor `edge-agent status` out of the unix socket (`conn.rs`).
//!
//! Layout: `oip.rs` the inference protocol's handlers, `request.rs` and `response.rs`
//! its JSON and binary wire formats, `status.rs` `/status` and `/metrics`, `ota.rs` the
//! update commands, `conn.rs` connection limits, `error.rs` the `{"error"}` answers.

mod conn;
pub mod diagnostics;
mod error;
pub mod oip;
mod ota;
mod pipelined;
pub mod request;
mod response;
pub mod status;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use conn::ConnTable;
pub use error::ApiError;

use crate::fallback::Fallback;
use crate::mqtt::OutboxStats;
use crate::ota::OtaHandle;
use crate::service::health::Health;
use edge_infer::engine::Engine;

/// Limits of the API.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub max_body_bytes: usize,
    pub max_concurrency: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// Counters of the API itself.
#[derive(Debug, Default)]
pub struct ApiCounters {
    pub overloaded: AtomicU64,
    /// Connections turned away because every open one was busy with a request.
    pub refused_connections: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted_connections: AtomicU64,
}

/// What the handlers share: the API's own limits and counters, and the handles of the
/// parts it serves, given by the service when it builds the API.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub health: Arc<Health>,
    /// The model update task, for `/ota/*` (`None` without `[ota]`).
    pub ota: Option<OtaHandle>,
    /// The cloud fallback (configured or not: an empty one routes everything locally).
    pub fallback: Arc<Fallback>,
    /// Drift of each model, for `/status` and `/metrics`.
    pub monitors: Arc<crate::monitor::Monitors>,
    /// Where drift changes seen on API requests go (the log, and MQTT when it is on).
    pub events: crate::events::Events,
    /// The MQTT link's counters, for `/status` and `/metrics`, when it is configured.
    pub mqtt: Option<Arc<OutboxStats>>,
    /// Bytes per destination, for `/status` and `/metrics`.
    pub usage: crate::usage::Usage,
    pub limits: Arc<ApiLimits>,
    pub inflight: Arc<Semaphore>,
    pub counters: Arc<ApiCounters>,
    /// For `/logs/upload` and `/diagnostics/bundle`.
    pub diagnostics: Arc<diagnostics::DiagnosticsSetup>,
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "cannot listen on {addr}: {source}; another process (a running edge-agent?) may hold the port: change api.listen"
    )]
    Tcp { addr: String, source: std::io::Error },
    #[error("cannot listen on unix socket {path}: {source}; check that its directory exists and is writable")]
    Unix { path: PathBuf, source: std::io::Error },
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2", get(oip::server_metadata))
        .route("/v2/models/{name}", get(oip::model_metadata))
        .route("/v2/models/{name}/ready", get(oip::model_ready))
        .route("/v2/models/{name}/infer", post(oip::infer))
        .route("/v2/models/{name}/versions/{version}", get(oip::model_version_metadata))
        .route("/v2/models/{name}/versions/{version}/ready", get(oip::model_version_ready))
        .route("/v2/models/{name}/versions/{version}/infer", post(oip::infer_version))
        .route("/status", get(status::status))
        .route("/metrics", get(status::metrics))
        .route("/ota/check", post(ota::check))
        .route("/ota/apply", post(ota::apply))
        .route("/ota/shadow", post(ota::shadow))
        .route("/ota/rollback", post(ota::rollback))
        .route("/logs/upload", post(diagnostics::logs))
        .route("/diagnostics/bundle", post(diagnostics::bundle))
        .fallback(|| async { ApiError::not_found("no such endpoint; see docs/api.md") })
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// Reads a whole body, within a size and a time limit.
///
/// Past the size limit the rest is read and dropped (up to four times the limit, still
/// within the time limit) before answering 413: clients that upload before reading
/// would otherwise see a broken pipe instead of the answer. A far larger upload is cut
/// off.
pub async fn read_body(body: Body, max: usize, limit: Duration) -> Result<axum::body::Bytes, ApiError> {
    consume_body(body, max, limit, true).await
}

/// Reads and drops a body within the same limits, keeping no more than one chunk in
/// memory (for requests refused before their body is needed).
pub async fn discard_body(body: Body, max: usize, limit: Duration) {
    let _ = consume_body(body, max, limit, false).await;
}

async fn consume_body(
    body: Body,
    max: usize,
    limit: Duration,
    keep: bool,
) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let read = async {
        let mut buf = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            let Some(data) = frame.data_ref() else { continue };
            seen += data.len();
            if keep && seen <= max {
                buf.extend_from_slice(data);
            } else if seen > max.saturating_mul(4) {
                break;
            }
        }
        if seen > max {
            return Err(ApiError {
                status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("request body exceeds {max} bytes (api.max_body_bytes)"),
            });
        }
        Ok(axum::body::Bytes::from(buf))
    };
    match tokio::time::timeout(limit, read).await {
        Err(_) => Err(ApiError {
            status: axum::http::StatusCode::REQUEST_TIMEOUT,
            message: format!("the request body did not arrive within {} ms", limit.as_millis()),
        }),
        Ok(r) => r,
    }
}

/// A listener the API accepts connections from (TCP or unix).
trait Acceptor: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Acceptor for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        let (stream, _) = self.accept().await?;
        // Small JSON answers must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Acceptor for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts connections until `token` fires; `on_end` runs after the loop.
fn accept_loop<A: Acceptor>(
    listener: A,
    app: Router,
    conns: Arc<ConnTable>,
    state: ApiState,
    token: CancellationToken,
    tracker: &TaskTracker,
    on_end: impl FnOnce() + Send + 'static,
) {
    let t = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = token.cancelled() => break,
                a = listener.accept_io() => a,
            };
            match accepted {
                Ok(stream) => connection(stream, app.clone(), &conns, &state, &token, &t),
                // Out of file descriptors, mostly: retry after a pause rather than spin
                // or end the listener.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        on_end();
    });
}

/// The bound listeners, before serving.
pub struct Listeners {
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    /// Binds the TCP address and the unix socket (a stale socket file is replaced).
    pub async fn bind(tcp: Option<&str>, unix: Option<&Path>) -> Result<Listeners, BindError> {
        let tcp = match tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| BindError::Tcp { addr: addr.to_string(), source })?,
            ),
            None => None,
        };
        let unix = match unix {
            Some(path) => {
                if path.exists() {
                    // Only a socket nobody answers on is stale; a live one means another
                    // agent runs, and binding must fail rather than steal its socket.
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(BindError::Unix {
                            path: path.to_path_buf(),
                            source: std::io::Error::new(
                                std::io::ErrorKind::AddrInUse,
                                "another process answers on it",
                            ),
                        });
                    }
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path)
                    .map_err(|source| BindError::Unix { path: path.to_path_buf(), source })?;
                Some((l, path.to_path_buf()))
            }
            None => None,
        };
        Ok(Listeners { tcp, unix })
    }

    /// The TCP address actually bound (port 0 picks a free one).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The unix socket path.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, p)| p.as_path())
    }

    /// Serves until `token` fires, then lets open requests finish.
    pub fn serve(self, state: ApiState, token: CancellationToken, tracker: &TaskTracker) {
        let app = router(state.clone());
        // One table per listener: a flood of TCP connections leaves the admin socket
        // (`edge-agent status`, updates) reachable, and the other way round.
        let max = state.limits.max_connections;
        if let Some(l) = self.tcp {
            accept_loop(l, app.clone(), ConnTable::new(max), state.clone(), token.clone(), tracker, || {});
        }
        if let Some((l, path)) = self.unix {
            accept_loop(l, app, ConnTable::new(max), state, token, tracker, move || {
                let _ = std::fs::remove_file(&path);
            });
        }
    }
}

fn connection<S>(
    stream: S,
    app: Router,
    conns: &Arc<ConnTable>,
    state: &ApiState,
    token: &CancellationToken,
    tracker: &TaskTracker,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let admitted = match conns.admit() {
        conn::Admission::Admitted { conn, evicted } => {
            if evicted {
                state.counters.evicted_connections.fetch_add(1, Ordering::Relaxed);
            }
            conn
        }
        conn::Admission::Full => {
            state.counters.refused_connections.fetch_add(1, Ordering::Relaxed);
            return; // dropping the stream closes it
        }
    };
    let header_timeout = state.limits.header_timeout;
    let token = token.clone();
    tracker.spawn(async move {
        let service = conn::Tracked::new(app, admitted.busy.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(conn::JsonErrors::new(stream)), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            // Closed to make room: it had no request in progress.
            _ = admitted.evict.cancelled() => {}
            _ = token.cancelled() => {
                // Finish the request in progress, then close.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        drop(admitted);
    });
}
