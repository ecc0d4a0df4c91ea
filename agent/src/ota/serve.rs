//! `edge-agent registry serve DIR`: a small static file server for a TUF
//! repository directory, for demos and for tests that need a registry that
//! misbehaves on request (see [`Fault`]).
//!
//! Any web server can host a registry; this one exists so a developer needs
//! nothing else, and so tests can inject the attacks TUF clients must survive.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Cache policy for files whose name is never reused for other content.
const IMMUTABLE: &str = "max-age=31536000, immutable";
/// Read and send size for file bodies.
const CHUNK: u64 = 64 * 1024;
/// How long in-flight responses may take to finish after shutdown is asked.
const DRAIN: Duration = Duration::from_secs(5);
/// Distinct paths counted for `requests_for`; beyond this, new paths are not
/// tracked, so a scanner hitting random URLs cannot grow memory without bound.
const MAX_TRACKED_PATHS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub dir: PathBuf,
    pub faults: Arc<Faults>,
}

/// A misbehaviour to inject for requests whose decoded path ends with a suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an empty body.
    Status(u16),
    /// Send the body slowly (slow-retrieval attack).
    Trickle { bytes_per_s: u64 },
    /// Send N extra bytes after the real body, without Content-Length
    /// (endless-data attack).
    Extra(u64),
    /// Send N bytes of the body, then drop the connection (tests resume).
    CloseAfter(u64),
    /// Serve these bytes instead of the file, always as a full 200 (wrong hash,
    /// stale metadata, and a server that ignores Range).
    Replace(Vec<u8>),
}

/// Injected faults and request counters, shared between the server and tests.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<FaultState>,
    requests: AtomicU64,
    bytes_served: AtomicU64,
}

#[derive(Debug, Default)]
struct FaultState {
    rules: Vec<(String, Fault)>,
    per_path: HashMap<String, u64>,
}

impl Faults {
    pub fn none() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// Injects `fault` for paths ending with `path_suffix`, replacing any fault
    /// set for the same suffix. When several suffixes match, the longest wins.
    pub fn set(&self, path_suffix: &str, fault: Fault) {
        let mut state = self.lock();
        match state.rules.iter_mut().find(|(suffix, _)| suffix == path_suffix) {
            Some(rule) => rule.1 = fault,
            None => state.rules.push((path_suffix.to_owned(), fault)),
        }
    }

    /// Removes all faults; counters are kept.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Body bytes handed to the connection (including injected extra bytes).
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::Relaxed)
    }

    /// Requests whose decoded path (without the leading '/') ends with `path_suffix`.
    pub fn requests_for(&self, path_suffix: &str) -> u64 {
        self.lock().per_path.iter().filter(|(path, _)| path.ends_with(path_suffix)).map(|(_, n)| n).sum()
    }

    /// Counts a request and returns the fault to apply to it, if any.
    fn record(&self, path: &str) -> Option<Fault> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        let tracked = state.per_path.len();
        match state.per_path.get_mut(path) {
            Some(n) => *n += 1,
            None if tracked < MAX_TRACKED_PATHS => {
                state.per_path.insert(path.to_owned(), 1);
            }
            None => {}
        }
        state
            .rules
            .iter()
            .filter(|(suffix, _)| path.ends_with(suffix.as_str()))
            .max_by_key(|(suffix, _)| suffix.len())
            .map(|(_, fault)| fault.clone())
    }

    fn add_served(&self, n: u64) {
        self.bytes_served.fetch_add(n, Ordering::Relaxed);
    }

    /// A test that panicked while holding the lock must not take the server down.
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Shared {
    /// Canonical registry directory; every served file must resolve inside it.
    root: PathBuf,
    faults: Arc<Faults>,
}

/// The request handler as an axum router, for callers that bring their own
/// listener or TLS (the HTTPS test does).
pub fn router(opts: ServeOptions) -> io::Result<Router> {
    let root = std::fs::canonicalize(&opts.dir)
        .map_err(|e| io::Error::new(e.kind(), format!("registry directory {}: {e}", opts.dir.display())))?;
    if !root.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("registry directory {} is not a directory", root.display()),
        ));
    }
    let shared = Arc::new(Shared { root, faults: opts.faults });
    Ok(Router::new().fallback(handle).with_state(shared))
}

/// Serves `opts.dir` on `listener` until `shutdown` resolves. The caller
/// learns the bound address from `listener.local_addr()` before calling (bind
/// to port 0 in tests). After shutdown, in-flight responses get a few seconds
/// to finish; connections still open after that are dropped, so a trickling
/// client cannot hold shutdown up.
pub async fn serve(
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = router(opts)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, app.clone(), stop_rx.clone()));
                }
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning on accept.
                    tracing::warn!(%error, "registry server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        connections.abort_all();
    }
    Ok(())
}

async fn serve_connection(stream: TcpStream, app: Router, mut stop: watch::Receiver<bool>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timer enables hyper's header read timeout (slowloris protection).
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "registry server: connection ended with an error");
            }
            return;
        }
        _ = stop.changed() => {}
    }
    // Finish the response in flight, then close instead of waiting for the
    // next request on a keep-alive connection.
    conn.as_mut().graceful_shutdown();
    if let Err(error) = conn.await {
        tracing::debug!(%error, "registry server: connection ended with an error");
    }
}

async fn handle(State(shared): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let decoded = percent_decode(uri.path());
    let rel = decoded.as_deref().and_then(|p| p.strip_prefix('/'));
    let fault = shared.faults.record(rel.unwrap_or_else(|| uri.path().trim_start_matches('/')));
    let response = respond(&shared, &method, rel, &headers, fault.clone()).await;
    tracing::debug!(
        %method,
        path = uri.path(),
        status = response.status().as_u16(),
        length = response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()),
        ?fault,
        "registry request"
    );
    response
}

async fn respond(
    shared: &Shared,
    method: &Method,
    rel: Option<&str>,
    headers: &HeaderMap,
    fault: Option<Fault>,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
        set(response.headers_mut(), header::ALLOW, "GET, HEAD".to_owned());
        return response;
    }
    let head = method == Method::HEAD;
    // Everything that is not a plain relative path inside the directory is
    // answered like a missing file, so probing reveals nothing.
    let Some(rel) = rel.filter(|rel| is_safe_relative(rel)) else {
        return empty(StatusCode::NOT_FOUND);
    };

    match fault {
        Some(Fault::Status(code)) => {
            return empty(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        }
        Some(Fault::Replace(bytes)) => return replaced(shared, rel, bytes, head),
        _ => {}
    }

    let Some((mut file, meta)) = open_inside(&shared.root, rel).await else {
        return empty(StatusCode::NOT_FOUND);
    };
    let len = meta.len();
    let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    let etag = etag_for(&meta, modified);
    let last_modified = modified.map(|d| http_date(d.as_secs()));

    let mut response = empty(StatusCode::OK);
    {
        let h = response.headers_mut();
        set(h, header::ETAG, etag.clone());
        if let Some(date) = &last_modified {
            set(h, header::LAST_MODIFIED, date.clone());
        }
        set(h, header::CACHE_CONTROL, cache_control(rel).to_owned());
    }

    // RFC 9110: If-None-Match, when present, decides alone; If-Modified-Since
    // has one-second resolution, which is why the ETag carries nanoseconds.
    let not_modified = match headers.get(header::IF_NONE_MATCH) {
        Some(value) => etag_matches(value, &etag),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
            .zip(modified)
            .is_some_and(|(since, mtime)| mtime.as_secs() <= since),
    };
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }

    let range = match headers.get(header::RANGE) {
        Some(value) if if_range_allows(headers, &etag) => parse_range(value, len),
        _ => RangeRequest::Full,
    };
    let (start, count) = match range {
        RangeRequest::Full => (0, len),
        RangeRequest::Satisfiable { start, end } => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(response.headers_mut(), header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            set(response.headers_mut(), header::CONTENT_RANGE, format!("bytes */{len}"));
            return response;
        }
    };

    {
        let h = response.headers_mut();
        set(h, header::ACCEPT_RANGES, "bytes".to_owned());
        set(h, header::CONTENT_TYPE, content_type(rel).to_owned());
        // Extra leaves the length out: the client must notice on its own that
        // the body goes on past what the signed metadata allows.
        if !matches!(fault, Some(Fault::Extra(_))) {
            set(h, header::CONTENT_LENGTH, count.to_string());
        }
    }
    if head {
        return response;
    }
    if start > 0
        && let Err(error) = file.seek(io::SeekFrom::Start(start)).await
    {
        tracing::warn!(%error, path = rel, "registry server: seek failed");
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    }
    *response.body_mut() = file_body(file, count, fault, shared.faults.clone());
    response
}

fn replaced(shared: &Shared, rel: &str, bytes: Vec<u8>, head: bool) -> Response {
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut response = empty(StatusCode::OK);
    {
        let h = response.headers_mut();
        set(h, header::ETAG, format!("\"r-{}\"", hex::encode(&digest.as_ref()[..16])));
        set(h, header::CACHE_CONTROL, cache_control(rel).to_owned());
        set(h, header::CONTENT_TYPE, content_type(rel).to_owned());
        set(h, header::CONTENT_LENGTH, bytes.len().to_string());
    }
    if !head {
        shared.faults.add_served(bytes.len() as u64);
        *response.body_mut() = Body::from(bytes);
    }
    response
}

/// Streams `count` bytes from the file's current position, applying faults.
fn file_body(file: tokio::fs::File, count: u64, fault: Option<Fault>, faults: Arc<Faults>) -> Body {
    struct Progress {
        file: tokio::fs::File,
        left: u64,
        sent: u64,
        extra_left: u64,
    }
    let (chunk, pause) = match fault {
        // Ten small chunks a second approximate a steady trickle.
        Some(Fault::Trickle { bytes_per_s }) => ((bytes_per_s / 10).max(1), Some(Duration::from_millis(100))),
        _ => (CHUNK, None),
    };
    let close_after = match fault {
        Some(Fault::CloseAfter(n)) => Some(n),
        _ => None,
    };
    let extra = match fault {
        Some(Fault::Extra(n)) => n,
        _ => 0,
    };
    let start = Progress { file, left: count, sent: 0, extra_left: extra };
    let body = stream::try_unfold(start, move |mut p| {
        let faults = faults.clone();
        async move {
            if p.left > 0 {
                let mut want = p.left.min(chunk);
                if let Some(limit) = close_after {
                    if p.sent >= limit {
                        // An error from the body makes hyper abort the connection
                        // mid-response, as a crashing server or a cut link would. A
                        // crashing server has handed the kernel what it wrote; hyper drops
                        // what it still buffers, so give it a moment to write that out
                        // first (under load the cut otherwise came before the first byte).
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "fault injection: connection closed mid-body",
                        ));
                    }
                    want = want.min(limit - p.sent);
                }
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
                let mut buf = vec![0u8; usize::try_from(want).map_err(io::Error::other)?];
                p.file.read_exact(&mut buf).await?;
                p.left -= want;
                p.sent += want;
                faults.add_served(want);
                return Ok(Some((Bytes::from(buf), p)));
            }
            if p.extra_left > 0 {
                let n = p.extra_left.min(CHUNK);
                p.extra_left -= n;
                faults.add_served(n);
                let buf = vec![b'X'; usize::try_from(n).map_err(io::Error::other)?];
                return Ok(Some((Bytes::from(buf), p)));
            }
            Ok(None)
        }
    });
    Body::from_stream(body)
}

/// The decoded relative path has no empty, `.` or `..` segment (so it is not
/// absolute and cannot climb out) and no NUL.
fn is_safe_relative(rel: &str) -> bool {
    !rel.contains('\0') && rel.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Opens a regular file under `root`. Symlinks are followed but must land
/// inside `root`: a link to /etc/shadow planted in the repository is not
/// served. Directories are not served either (no listings).
async fn open_inside(root: &Path, rel: &str) -> Option<(tokio::fs::File, std::fs::Metadata)> {
    let canonical = tokio::fs::canonicalize(root.join(rel)).await.ok()?;
    if !canonical.starts_with(root) {
        return None;
    }
    let file = tokio::fs::File::open(&canonical).await.ok()?;
    // Metadata of the opened handle, not the path, so the checks describe the
    // file actually served.
    let meta = file.metadata().await.ok()?;
    meta.is_file().then_some((file, meta))
}

/// Strong ETag from length, mtime in nanoseconds and inode: a file rewritten
/// within one second (same Last-Modified) or replaced by rename still gets a
/// new tag, which a timestamp republished every few seconds needs.
fn etag_for(meta: &std::fs::Metadata, modified: Option<Duration>) -> String {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0u64;
    let nanos = modified.map_or(0, |d| d.as_nanos());
    format!("\"{:x}-{nanos:x}-{inode:x}\"", meta.len())
}

fn etag_matches(if_none_match: &HeaderValue, etag: &str) -> bool {
    // Bytes, not `to_str`: an entity tag may hold obs-text (bytes 0x80-0xFF), and a list
    // that carries one next to ours must still match ours. Splitting at commas is exact
    // for a valid list as far as our tag goes: ours holds no comma or quote, so no piece
    // cut out of another tag can equal it.
    let ours = opaque_tag(etag.as_bytes());
    if_none_match
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|tag| tag == b"*" || opaque_tag(tag) == ours)
}

/// An entity tag without its weakness indicator (`W/`, case-sensitive in RFC 9110):
/// If-None-Match compares weakly.
fn opaque_tag(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// If-Range with a different validator means "the file changed, send all of it".
fn if_range_allows(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE).map(HeaderValue::to_str) {
        None => true,
        Some(Ok(value)) => value.trim() == etag,
        Some(Err(_)) => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeRequest {
    Full,
    Satisfiable { start: u64, end: u64 },
    Unsatisfiable,
}

/// One byte range (`N-`, `N-M`, `-N`), as RFC 9110 section 14.1.2 defines it. The unit
/// name is case-insensitive, empty list elements are ignored, and positions too large
/// for a u64 are still positions (beyond any file). Malformed requests and requests for
/// several ranges get the full file, which HTTP allows (a server may ignore Range).
fn parse_range(value: &HeaderValue, len: u64) -> RangeRequest {
    let Ok(value) = value.to_str() else {
        return RangeRequest::Full;
    };
    let Some((unit, set)) = value.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.eq_ignore_ascii_case("bytes") {
        return RangeRequest::Full;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeRequest::Full;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return match position(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            // The last N bytes of nothing are all of it: satisfiable, but a 206 cannot
            // describe an empty range, so the (empty) whole goes out as a 200.
            Some(_) if len == 0 => RangeRequest::Full,
            Some(n) => RangeRequest::Satisfiable { start: len.saturating_sub(n), end: len - 1 },
            None => RangeRequest::Full,
        };
    }
    let Some(start) = position(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        // Compared as written: two positions beyond u64 saturate to the same value.
        match position(last) {
            Some(end) if digits_cmp(last, first).is_ge() => end,
            _ => return RangeRequest::Full,
        }
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Satisfiable { start, end: end.min(len - 1) }
}

/// Orders two strings of ASCII digits by their value, however long.
fn digits_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A byte position: one or more ASCII digits. One too large for a u64 saturates, since
/// it only ever gets compared with a file length.
fn position(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// Consistent snapshots are the point here. With them, every metadata file but
/// the timestamp carries its version in its name (`N.root.json`,
/// `N.snapshot.json`, `N.targets.json`, also under `metadata/`) and every target
/// its hash (`targets/<sha256>.<name>`). Those names never get other content,
/// so any cache (CDN, proxy, the device) may keep them forever and a registry
/// can publish a new version while devices are still fetching the old one.
/// Only unversioned names (`timestamp.json`, `root.json`) change in place and
/// must be revalidated on every poll, which the conditional GET on the
/// timestamp makes cheap: a device with nothing to update costs one 304.
fn cache_control(rel: &str) -> &'static str {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let versioned = name.ends_with(".json")
        && name
            .split_once('.')
            .is_some_and(|(version, _)| !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()));
    if versioned || rel.starts_with("targets/") || rel.contains("/targets/") { IMMUTABLE } else { "no-cache" }
}

fn content_type(rel: &str) -> &'static str {
    if rel.ends_with(".json") { "application/json" } else { "application/octet-stream" }
}

fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Inserts a header; our values are generated ASCII, so failure is a bug worth a log line, not a crash.
fn set(headers: &mut HeaderMap, name: HeaderName, value: String) {
    match HeaderValue::try_from(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(error) => tracing::warn!(%name, %error, "registry server: invalid header value"),
    }
}

/// Percent-decodes a URL path; `None` for malformed escapes or non-UTF-8.
/// Decoding happens before the `..` check so `%2e%2e/` cannot sneak past it.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for seconds since the epoch.
fn http_date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[usize::try_from((days + 4) % 7).unwrap_or(0)];
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    format!(
        "{weekday}, {day:02} {month_name} {year:04} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses IMF-fixdate; other (obsolete) formats are ignored, which only costs a
/// full response instead of a 304.
fn parse_http_date(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as u64 + 1;
    let year: u64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(str::parse::<u64>);
    let (h, m, s) = (clock.next()?.ok()?, clock.next()?.ok()?, clock.next()?.ok()?);
    // IMF-fixdate has four digits of year; a longer one would overflow the arithmetic
    // below (a panic in a debug build, a wrong date in a release build).
    if parts.next()? != "GMT"
        || !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || h > 23
        || m > 59
        || s > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian
/// (Howard Hinnant's algorithm, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_round_trip() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        for secs in [0, 951_782_400, 1_709_164_800, 1_735_689_599, 4_102_444_800] {
            assert_eq!(parse_http_date(&http_date(secs)), Some(secs), "{secs}");
        }
    }

    #[test]
    fn ranges() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_range(&v("bytes=10-"), 100), RangeRequest::Satisfiable { start: 10, end: 99 });
        assert_eq!(parse_range(&v("bytes=10-19"), 100), RangeRequest::Satisfiable { start: 10, end: 19 });
        assert_eq!(parse_range(&v("bytes=90-200"), 100), RangeRequest::Satisfiable { start: 90, end: 99 });
        assert_eq!(parse_range(&v("bytes=-5"), 100), RangeRequest::Satisfiable { start: 95, end: 99 });
        assert_eq!(parse_range(&v("bytes=100-"), 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range(&v("bytes=0-1,5-6"), 100), RangeRequest::Full);
        assert_eq!(parse_range(&v("bytes=5-1"), 100), RangeRequest::Full);
    }

    /// Cases the property tests found (against the code before they existed).
    #[test]
    fn ranges_as_rfc_9110_has_them() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        // The unit is case-insensitive.
        assert_eq!(parse_range(&v("Bytes=10-19"), 100), RangeRequest::Satisfiable { start: 10, end: 19 });
        // Empty list elements do not make a request for several ranges.
        assert_eq!(parse_range(&v("bytes=0-,"), 100), RangeRequest::Satisfiable { start: 0, end: 99 });
        assert_eq!(parse_range(&v("bytes=0-,"), 0), RangeRequest::Unsatisfiable);
        // Positions beyond 64 bits are positions, and still ordered.
        let huge = "bytes=0-99999999999999999999999";
        assert_eq!(parse_range(&v(huge), 100), RangeRequest::Satisfiable { start: 0, end: 99 });
        assert_eq!(parse_range(&v("bytes=99999999999999999999999-"), 100), RangeRequest::Unsatisfiable);
        let reversed = "bytes=100000000000000000000000000-100000000000000000000";
        assert_eq!(parse_range(&v(reversed), 136), RangeRequest::Full);
        // The last bytes of an empty file are all of it: a 200, not a 416.
        assert_eq!(parse_range(&v("bytes=-5"), 0), RangeRequest::Full);
    }

    #[test]
    fn if_none_match_beside_obs_text_and_far_dates() {
        let tag = "\"1f-17a2b3c4d5e6f-2a\"";
        let value = HeaderValue::from_bytes(b"\"\x80\", W/\"1f-17a2b3c4d5e6f-2a\"").unwrap();
        assert!(etag_matches(&value, tag));
        assert!(
            !etag_matches(&HeaderValue::from_static("w/\"1f-17a2b3c4d5e6f-2a\""), tag),
            "`W/` is case-sensitive"
        );
        assert_eq!(parse_http_date("Sun, 01 Jan 584554051224 00:00:00 GMT"), None);
    }

    #[test]
    fn cache_policy() {
        assert_eq!(cache_control("timestamp.json"), "no-cache");
        assert_eq!(cache_control("root.json"), "no-cache");
        assert_eq!(cache_control("3.snapshot.json"), IMMUTABLE);
        assert_eq!(cache_control("metadata/12.targets.json"), IMMUTABLE);
        assert_eq!(cache_control("targets/ab12.model.bin"), IMMUTABLE);
    }

    #[test]
    fn decoding_and_safety() {
        assert_eq!(percent_decode("/%2e%2e/x").as_deref(), Some("/../x"));
        assert_eq!(percent_decode("/%zz"), None);
        assert!(!is_safe_relative("../x"));
        assert!(!is_safe_relative("/etc/passwd"));
        assert!(!is_safe_relative("a//b"));
        assert!(is_safe_relative("targets/a.bin"));
    }
}

/// Property tests of the request headers the server decodes: never a panic on any value,
/// and agreement with a reference model of RFC 9110 for valid ones.
#[cfg(test)]
mod props {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    use crate::testing::proptest_config as config;

    /// A byte position as a client may write it: its digits, and its value (saturated,
    /// which is all a comparison with a u64 length needs).
    #[derive(Debug, Clone)]
    struct Pos {
        text: String,
        value: u128,
    }

    fn pos(near: u64) -> impl Strategy<Value = Pos> {
        let small = (0..=near.saturating_add(3)).prop_map(|v| Pos { text: v.to_string(), value: v.into() });
        let padded = (0..=near.saturating_add(3), 1..4usize)
            .prop_map(|(v, zeros)| Pos { text: format!("{}{v}", "0".repeat(zeros)), value: v.into() });
        let wide = any::<u64>().prop_map(|v| Pos { text: v.to_string(), value: v.into() });
        // Beyond u64 and u128: still a valid position (RFC 9110 puts no bound on DIGITs).
        let huge = "[1-9][0-9]{20,45}".prop_map(|text| {
            let value = text.parse::<u128>().unwrap_or(u128::MAX);
            Pos { text, value }
        });
        prop_oneof![4 => small, 1 => padded, 1 => wide, 1 => huge]
    }

    #[derive(Debug, Clone)]
    enum Spec {
        /// `first-last` or `first-`; `last < first` is a well-formed but invalid spec.
        Int(Pos, Option<Pos>),
        /// `-suffix`.
        Suffix(Pos),
    }

    fn spec(len: u64) -> impl Strategy<Value = Spec> {
        prop_oneof![
            (pos(len), proptest::option::of(pos(len))).prop_map(|(f, l)| Spec::Int(f, l)),
            pos(len).prop_map(Spec::Suffix),
        ]
    }

    /// A Range header in RFC 9110 syntax: any case of the unit, one to three specs, list
    /// separators with optional whitespace and empty elements.
    fn range_header(len: u64) -> impl Strategy<Value = (String, Vec<Spec>)> {
        let unit = prop::sample::select(vec!["bytes", "Bytes", "BYTES", "bYtEs"]);
        let sep = prop::sample::select(vec![",", ", ", " ,", ",\t", " , ", ", ,", ",,"]);
        let edge = prop::sample::select(vec!["", ",", ", "]);
        (unit, prop::collection::vec((spec(len), sep), 1..4), edge.clone(), edge).prop_map(
            |(unit, specs, lead, trail)| {
                let mut text = format!("{unit}={lead}");
                for (i, (spec, sep)) in specs.iter().enumerate() {
                    if i > 0 {
                        text.push_str(sep);
                    }
                    match spec {
                        Spec::Int(f, None) => text.push_str(&format!("{}-", f.text)),
                        Spec::Int(f, Some(l)) => text.push_str(&format!("{}-{}", f.text, l.text)),
                        Spec::Suffix(n) => text.push_str(&format!("-{}", n.text)),
                    }
                }
                text.push_str(trail);
                (text, specs.into_iter().map(|(s, _)| s).collect())
            },
        )
    }

    /// `a < b` for positions of any length (their saturated values cannot tell).
    fn below(a: &Pos, b: &Pos) -> bool {
        let (a, b) = (a.text.trim_start_matches('0'), b.text.trim_start_matches('0'));
        (a.len(), a) < (b.len(), b)
    }

    /// RFC 9110 section 14 with this server's one choice: a request for several ranges is
    /// answered whole (a server may ignore Range; multipart answers are not worth it here).
    fn range_model(specs: &[Spec], len: u64) -> RangeRequest {
        let [spec] = specs else { return RangeRequest::Full };
        let len128 = u128::from(len);
        let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        match spec {
            // An invalid spec makes the whole header invalid: ignored.
            Spec::Int(f, Some(l)) if below(l, f) => RangeRequest::Full,
            // Satisfiable when the first position is inside the representation.
            Spec::Int(f, _) if f.value >= len128 => RangeRequest::Unsatisfiable,
            Spec::Int(f, l) => {
                let last = l.as_ref().map_or(len128 - 1, |l| l.value.min(len128 - 1));
                RangeRequest::Satisfiable { start: clamp(f.value), end: clamp(last) }
            }
            // A suffix is satisfiable when not zero; longer than the representation means
            // all of it; of an empty representation, that is nothing, which only a 200
            // can carry.
            Spec::Suffix(n) if n.value == 0 => RangeRequest::Unsatisfiable,
            Spec::Suffix(_) if len == 0 => RangeRequest::Full,
            Spec::Suffix(n) => {
                RangeRequest::Satisfiable { start: clamp(len128 - n.value.min(len128)), end: len - 1 }
            }
        }
    }

    /// An If-None-Match value: `*`, or a list of strong and weak entity tags (their
    /// content from RFC 9110's etagc, obs-text included), some of them ours.
    #[derive(Debug, Clone)]
    enum Inm {
        Star,
        /// (weak, opaque tag including its quotes)
        Tags(Vec<(bool, Vec<u8>)>),
    }

    fn inm(ours: Vec<u8>) -> impl Strategy<Value = (Vec<u8>, Inm)> {
        let etagc = prop_oneof![Just(0x21u8), 0x23u8..=0x7e, 0x80u8..=0xff];
        let other = prop::collection::vec(etagc, 0..12).prop_map(|mut c| {
            c.insert(0, b'"');
            c.push(b'"');
            c
        });
        let tag = prop_oneof![2 => other, 1 => Just(ours)];
        let sep = prop::sample::select(vec![&b","[..], &b", "[..], &b" ,\t"[..], &b", ,"[..], &b",,"[..]]);
        let list = prop::collection::vec((any::<bool>(), tag, sep), 1..5).prop_map(|tags| {
            let mut text = Vec::new();
            for (i, (weak, tag, sep)) in tags.iter().enumerate() {
                if i > 0 {
                    text.extend_from_slice(sep);
                }
                if *weak {
                    text.extend_from_slice(b"W/");
                }
                text.extend_from_slice(tag);
            }
            (text, Inm::Tags(tags.into_iter().map(|(w, t, _)| (w, t)).collect()))
        });
        prop_oneof![1 => Just((b"*".to_vec(), Inm::Star)), 6 => list]
    }

    /// RFC 9110 section 13.1.2: `*` matches any current representation; a list matches
    /// when one of its tags matches ours by weak comparison (opaque tags equal).
    fn inm_model(inm: &Inm, ours: &[u8]) -> bool {
        match inm {
            Inm::Star => true,
            Inm::Tags(tags) => tags.iter().any(|(_, t)| t.as_slice() == ours),
        }
    }

    /// Header values as a client can send them: any bytes but the controls HTTP forbids.
    fn any_value() -> impl Strategy<Value = HeaderValue> {
        let text = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            "[ -~]{0,40}".prop_map(String::into_bytes),
            "(bytes|Bytes)?=?[-0-9, ]{0,30}".prop_map(String::into_bytes),
            r#"(W/)?"[!#-~]{0,8}"(, ?(W/)?"[!#-~]{0,8}"){0,3}"#.prop_map(String::into_bytes),
            "[A-Z][a-z]{2}, [0-9]{1,40} [A-Z][a-z]{2} [0-9]{1,40} [0-9]{1,3}:[0-9]{1,3}:[0-9]{1,3} GMT"
                .prop_map(String::into_bytes),
            // Well-formed IMF-fixdates, with years from the epoch to far beyond.
            (
                prop::sample::select(WEEKDAYS.to_vec()),
                1u64..=31,
                prop::sample::select(MONTHS.to_vec()),
                prop_oneof![1970u64..2200, any::<u64>()],
                0u64..24,
                0u64..60,
                0u64..61
            )
                .prop_map(|(wd, d, mon, y, h, m, s)| format!(
                    "{wd}, {d:02} {mon} {y} {h:02}:{m:02}:{s:02} GMT"
                )
                .into_bytes()),
        ];
        text.prop_filter_map("not a valid header value", |b| HeaderValue::from_bytes(&b).ok())
    }

    const ETAG: &str = "\"1f-17a2b3c4d5e6f-2a\"";

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn range_agrees_with_rfc_9110((len, (text, specs)) in (0u64..400).prop_flat_map(|len| (Just(len), range_header(len)))) {
            let value = HeaderValue::from_str(&text).expect("generated headers are ASCII");
            prop_assert_eq!(parse_range(&value, len), range_model(&specs, len), "Range: {}", text);
        }

        #[test]
        fn large_files_and_positions_agree_too((len, (text, specs)) in (any::<u64>()).prop_flat_map(|len| (Just(len), range_header(len)))) {
            let value = HeaderValue::from_str(&text).expect("generated headers are ASCII");
            prop_assert_eq!(parse_range(&value, len), range_model(&specs, len), "Range: {}", text);
        }

        #[test]
        fn if_none_match_agrees_with_rfc_9110((text, parsed) in inm(ETAG.as_bytes().to_vec())) {
            let value = HeaderValue::from_bytes(&text).expect("etagc bytes are valid in a header");
            prop_assert_eq!(etag_matches(&value, ETAG), inm_model(&parsed, ETAG.as_bytes()), "If-None-Match: {:?}", value);
        }

        #[test]
        fn any_header_value_parses_without_panic(value in any_value(), len in prop_oneof![0u64..300, any::<u64>()]) {
            match parse_range(&value, len) {
                RangeRequest::Satisfiable { start, end } => prop_assert!(start <= end && end < len, "{start}-{end} of {len}"),
                RangeRequest::Full | RangeRequest::Unsatisfiable => {}
            }
            let _ = etag_matches(&value, ETAG);
            let _ = if_range_allows(&HeaderMap::from_iter([(header::IF_RANGE, value.clone())]), ETAG);
            if let Ok(text) = value.to_str() {
                let _ = parse_http_date(text);
            }
        }
    }

    /// `data` as the file `file` of a fresh registry directory.
    struct OneFile {
        _dir: tempfile::TempDir,
        shared: Shared,
        etag: String,
    }

    fn one_file(data: &[u8]) -> OneFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("file");
        std::fs::write(&path, data).expect("write");
        let meta = std::fs::metadata(&path).expect("metadata");
        let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        let etag = etag_for(&meta, modified);
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        OneFile { _dir: dir, shared: Shared { root, faults: Faults::none() }, etag }
    }

    /// A GET of the file through `respond`, with `headers`: status, headers and body.
    async fn ask(file: &OneFile, headers: HeaderMap) -> (StatusCode, HeaderMap, Vec<u8>) {
        let response = respond(&file.shared, &Method::GET, Some("file"), &headers, None).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes().to_vec();
        (parts.status, parts.headers, body)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    proptest! {
        #![proptest_config(config(96))]

        /// The whole answer, not just the parser: status, Content-Range and the bytes sent
        /// are what the model says, for a real file of every small length.
        #[test]
        fn responses_carry_exactly_the_ranges_the_model_selects(
            (data, (text, specs)) in prop::collection::vec(any::<u8>(), 0..300)
                .prop_flat_map(|d| { let len = d.len() as u64; (Just(d), range_header(len)) }),
            if_range in prop::option::of(prop_oneof![Just(true), Just(false)]),
        ) {
            let len = data.len() as u64;
            let file = one_file(&data);
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, HeaderValue::from_str(&text).expect("ASCII"));
            let mut expected = range_model(&specs, len);
            if let Some(same) = if_range {
                let tag = if same { file.etag.clone() } else { "\"other\"".to_string() };
                headers.insert(header::IF_RANGE, HeaderValue::from_str(&tag).expect("ASCII"));
                if !same {
                    expected = RangeRequest::Full;
                }
            }
            let (status, h, body) = runtime().block_on(ask(&file, headers));
            let content_range = h.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
            match expected {
                RangeRequest::Full => {
                    prop_assert_eq!(status, StatusCode::OK);
                    prop_assert_eq!(body, data);
                }
                RangeRequest::Satisfiable { start, end } => {
                    prop_assert_eq!(status, StatusCode::PARTIAL_CONTENT);
                    prop_assert_eq!(content_range, Some(format!("bytes {start}-{end}/{len}")));
                    prop_assert_eq!(&body[..], &data[start as usize..=end as usize]);
                }
                RangeRequest::Unsatisfiable => {
                    prop_assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
                    prop_assert_eq!(content_range, Some(format!("bytes */{len}")));
                    prop_assert!(body.is_empty());
                }
            }
        }

        /// Any value in any of the headers the server reads: an answer, never a panic, and
        /// one that is consistent with itself.
        #[test]
        fn any_request_headers_get_a_consistent_answer(
            data in prop::collection::vec(any::<u8>(), 0..64),
            values in prop::collection::vec((0..4usize, any_value()), 0..4),
        ) {
            let names = [header::RANGE, header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE, header::IF_RANGE];
            let mut headers = HeaderMap::new();
            for (i, v) in values {
                headers.insert(names[i].clone(), v);
            }
            let (status, h, body) = runtime().block_on(ask(&one_file(&data), headers));
            let len = data.len();
            match status {
                StatusCode::OK => {
                    prop_assert_eq!(body, data);
                }
                StatusCode::NOT_MODIFIED => {
                    prop_assert!(body.is_empty());
                }
                StatusCode::PARTIAL_CONTENT => {
                    let cr = h.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                    let range = cr.strip_prefix("bytes ").and_then(|r| r.strip_suffix(&format!("/{len}")));
                    let (s, e) = range.and_then(|r| r.split_once('-')).expect("Content-Range of a 206");
                    let (s, e): (usize, usize) = (s.parse().expect("start"), e.parse().expect("end"));
                    prop_assert!(s <= e && e < len);
                    prop_assert_eq!(&body[..], &data[s..=e]);
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    prop_assert!(body.is_empty());
                }
                other => {
                    prop_assert!(false, "unexpected status {}", other);
                }
            }
        }
    }
}
