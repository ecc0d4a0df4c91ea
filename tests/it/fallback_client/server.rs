//! Test servers: an axum OIP v2 server whose behaviour is switched at run
//! time, and raw TCP servers for faults axum cannot produce (a connection
//! dropped mid-request, endless bodies). All listen on 127.0.0.1, port 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use edge_agent::fallback::client::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// A fixed softmax-like answer, echoing the request id.
    Ok,
    /// HTTP 500 with an OIP error body.
    Fail500,
    /// 503 with `Retry-After: 0` for the first `n` hits, then Ok.
    Unavailable { n: usize, retry_after: bool },
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with data.len() != product(shape).
    WrongShape,
    /// Ok, after a delay.
    Slow(Duration),
    /// Ok only with `Authorization: Bearer <token>`, else 401.
    RequireToken(String),
}

#[derive(Debug, Default)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Option<serde_json::Value>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Clone)]
struct AppState {
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
}

impl TestServer {
    pub async fn start(mode: Mode) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, mode)
    }

    /// Serves on an already bound listener (to bring a server up on a known port).
    pub fn serve(listener: TcpListener, mode: Mode) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let state = AppState {
            mode: Arc::new(Mutex::new(mode)),
            hits: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Seen::default())),
        };
        let app = Router::new()
            .route("/v2/models/{model}/infer", post(infer))
            .route("/v2/models/{model}/versions/{version}/infer", post(infer_version))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestServer { addr, hits: state.hits, seen: state.seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }
}

async fn infer(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, format!("/v2/models/{model}/infer"), headers, body).await
}

async fn infer_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, format!("/v2/models/{model}/versions/{version}/infer"), headers, body).await
}

async fn handle(state: AppState, path: String, headers: HeaderMap, body: Bytes) -> Response {
    let hit = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let request: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    {
        let mut seen = state.seen.lock().unwrap();
        *seen = Seen { path, authorization: authorization.clone(), body: request.clone() };
    }
    let id = request.as_ref().and_then(|r| r.get("id")).cloned();
    let mode = state.mode.lock().unwrap().clone();
    match mode {
        Mode::Ok => ok_answer(id),
        Mode::Fail500 => {
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(serde_json::json!({"error": "boom"})))
                .into_response()
        }
        Mode::Unavailable { n, retry_after } if hit <= n => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"error": "model not ready"})),
            )
                .into_response();
            if retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, "0".parse().unwrap());
            }
            response
        }
        Mode::Unavailable { .. } => ok_answer(id),
        Mode::Malformed => (StatusCode::OK, "{\"outputs\": [{\"name\": ").into_response(),
        Mode::WrongShape => axum::Json(serde_json::json!({
            "model_name": "m",
            "outputs": [{"name": "probs", "shape": [1, 3], "datatype": "FP32", "data": [0.5, 0.5]}]
        }))
        .into_response(),
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            ok_answer(id)
        }
        Mode::RequireToken(token) => {
            if authorization.as_deref() == Some(&format!("Bearer {token}")) {
                ok_answer(id)
            } else {
                (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"error": "missing or bad token"})))
                    .into_response()
            }
        }
    }
}

fn ok_answer(id: Option<serde_json::Value>) -> Response {
    let mut answer = serde_json::json!({
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": "probs", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.7, 0.2]},
            {"name": "label", "shape": [1], "datatype": "INT64", "data": [1]}
        ]
    });
    if let Some(id) = id {
        answer["id"] = id;
    }
    axum::Json(answer).into_response()
}

/// An endpoint at `url` with short timeouts suited to tests.
pub fn endpoint(url: &str) -> Endpoint {
    Endpoint {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        max_concurrency: 4,
        retries: 0,
        backoff: Duration::from_millis(20),
        ..Endpoint::new(url, "m")
    }
}

/// What a raw server does after reading a whole request.
#[derive(Debug, Clone, Copy)]
pub enum Raw {
    /// Close the socket without answering.
    Drop,
    /// Send headers announcing 1000 bytes and part of the body, then close.
    HalfBody,
    /// A 64 MiB JSON answer; with a Content-Length header or read-until-close.
    Huge { content_length: bool },
}

pub const HUGE: u64 = 64 << 20;

pub struct RawServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Body bytes the server managed to write.
    pub written: Arc<AtomicU64>,
}

impl RawServer {
    pub async fn start(behaviour: Raw) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (h, w) = (hits.clone(), written.clone());
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                let (h, w) = (h.clone(), w.clone());
                tokio::spawn(async move {
                    let mut socket = socket;
                    if read_request(&mut socket).await.is_none() {
                        return;
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    respond(socket, behaviour, &w).await;
                });
            }
        });
        RawServer { addr, hits, written }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP/1.1 request (headers and Content-Length body).
pub async fn read_request(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while crate::common::http_request_len(&buf).is_none_or(|len| buf.len() < len) {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

async fn respond(mut socket: TcpStream, behaviour: Raw, written: &AtomicU64) {
    match behaviour {
        Raw::Drop => drop(socket),
        Raw::HalfBody => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(b"{\"outputs\": [{\"name\": \"probs\", ").await;
            let _ = socket.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Raw::Huge { content_length } => {
            let head = if content_length {
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {HUGE}\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n".to_owned()
            };
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            // A valid-looking answer that never ends: `{"outputs":[{"name":"p",...,"data":[0,0,0,...`
            let prefix = b"{\"outputs\":[{\"name\":\"p\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[";
            if socket.write_all(prefix).await.is_err() {
                return;
            }
            let zeros: Vec<u8> = b"0,".iter().copied().cycle().take(64 * 1024).collect();
            let mut sent = prefix.len() as u64;
            while sent < HUGE {
                let n = zeros.len().min((HUGE - sent) as usize);
                if socket.write_all(&zeros[..n]).await.is_err() {
                    return;
                }
                sent += n as u64;
                written.store(sent, Ordering::SeqCst);
            }
        }
    }
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub async fn refused_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

pub fn fp32_input() -> Vec<edge_agent::fallback::client::Tensor> {
    vec![edge_agent::fallback::client::Tensor::fp32("x", vec![1, 4], vec![0.0, 0.25, 0.5, 1.0])]
}
