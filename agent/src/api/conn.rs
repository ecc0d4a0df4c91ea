//! Connections of one listener.
//!
//! Each listener (the TCP port, the unix admin socket) has its own table of open
//! connections, so that a flood on one never locks out the other. A table admits up to
//! `max_connections`; when full, it makes room by closing the oldest *idle* connection
//! (one with no request in progress: a client that connected and sent nothing, one
//! trickling its headers, a keep-alive connection between requests) rather than turning
//! the newcomer away. Only when every connection is busy is a new one refused.
//!
//! Also here: hyper answers a request line or headers it cannot parse (400, and 414
//! for a URI over 64 KB, 431 for headers too large) by itself, with an empty body;
//! [`JsonErrors`] gives those answers the `{"error": ...}` body every other error has.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// The open connections of one listener.
pub struct ConnTable {
    max: usize,
    // A std mutex: held only to insert, remove or scan at most `max` entries, never
    // across an await.
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next: u64,
    /// By age: ids grow, so the first idle entry is the oldest idle connection.
    slots: BTreeMap<u64, Slot>,
}

struct Slot {
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// What admitting a connection did.
pub enum Admission {
    /// Admitted; `evicted` tells whether an idle connection was closed to make room.
    Admitted { conn: Admitted, evicted: bool },
    /// Every connection is busy with a request: the new one is refused.
    Full,
}

/// An admitted connection: leaves the table when dropped.
pub struct Admitted {
    id: u64,
    table: Arc<ConnTable>,
    /// Requests in progress on it (from the head read to the last body byte handed over).
    pub busy: Arc<AtomicUsize>,
    /// Fires when the table closes it to make room.
    pub evict: CancellationToken,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table.lock().slots.remove(&self.id);
    }
}

impl ConnTable {
    pub fn new(max: usize) -> Arc<ConnTable> {
        Arc::new(ConnTable { max: max.max(1), open: Mutex::new(Open::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The table stays consistent even if a holder panicked: each change is one call.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection, closing the oldest idle one if the table is full.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut open = self.lock();
        let mut evicted = false;
        if open.slots.len() >= self.max {
            let idle =
                open.slots.iter().find(|(_, s)| s.busy.load(Ordering::Acquire) == 0).map(|(id, _)| *id);
            match idle.and_then(|id| open.slots.remove(&id)) {
                Some(victim) => {
                    victim.evict.cancel();
                    evicted = true;
                }
                None => return Admission::Full,
            }
        }
        let id = open.next;
        open.next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let evict = CancellationToken::new();
        open.slots.insert(id, Slot { busy: busy.clone(), evict: evict.clone() });
        drop(open);
        Admission::Admitted { conn: Admitted { id, table: self.clone(), busy, evict }, evicted }
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether no connection is open.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The router as a hyper service that counts the connection's requests in progress.
#[derive(Clone)]
pub struct Tracked {
    inner: TowerToHyperService<Router>,
    busy: Arc<AtomicUsize>,
}

impl Tracked {
    pub fn new(app: Router, busy: Arc<AtomicUsize>) -> Tracked {
        Tracked { inner: TowerToHyperService::new(app), busy }
    }
}

/// One request in progress; ends when dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(n: &Arc<AtomicUsize>) -> Busy {
        n.fetch_add(1, Ordering::AcqRel);
        Busy(n.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = Busy::enter(&self.busy);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            // Busy until hyper has taken the whole body (and drops it), so a connection
            // still sending an answer is never taken for idle.
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _still_busy = &busy;
                    frame
                }))
            }))
        })
    }
}

/// A connection's stream, with hyper's body-less error answers given a JSON body.
pub struct JsonErrors<S> {
    io: S,
    /// A rewritten answer still to be written, and how much of it was.
    pending: Vec<u8>,
    sent: usize,
}

impl<S> JsonErrors<S> {
    pub fn new(io: S) -> JsonErrors<S> {
        JsonErrors { io, pending: Vec::new(), sent: 0 }
    }
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written if it is one of hyper's error answers, queuing the JSON
    /// version instead.
    fn take_error_answer(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let answer = with_json_body(buf)?;
        self.pending = answer;
        self.sent = 0;
        // Start writing now; the rest goes out on flush (hyper flushes next).
        if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
            return Some(Poll::Ready(Err(e)));
        }
        Some(Poll::Ready(Ok(buf.len())))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(done) = this.take_error_answer(cx, buf) {
            return done;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next())
            && let Some(done) = this.take_error_answer(cx, only)
        {
            return done;
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// hyper's answer to an unparsable request is a bare head (`HTTP/1.1 414 URI Too Long`,
/// `content-length: 0`, `date`) written in one piece; the API's own answers always have
/// a body. Returns that answer with a JSON body, or `None` for anything else.
fn with_json_body(buf: &[u8]) -> Option<Vec<u8>> {
    let message = match buf.get(..12)? {
        b"HTTP/1.1 400" | b"HTTP/1.0 400" => {
            "malformed HTTP request: the request line or a header cannot be parsed; percent-encode the URL and check the headers"
        }
        b"HTTP/1.1 414" | b"HTTP/1.0 414" => {
            "the URL is longer than 65534 bytes; send the data in the request body"
        }
        b"HTTP/1.1 431" | b"HTTP/1.0 431" => {
            "the request headers are too large; send fewer or shorter headers"
        }
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if end != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..end - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut kept = Vec::new();
    let mut empty = false;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        match lower.strip_prefix("content-length:") {
            Some(v) => empty = v.trim() == "0",
            None => kept.push(line),
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::json!({ "error": message }).to_string();
    let mut out = format!("{status_line}\r\n");
    for line in kept {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_error_answers_get_a_json_body() {
        let bare =
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(with_json_body(bare).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("date: Tue"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("longer than 65534 bytes"));
    }

    #[test]
    fn answers_with_a_body_or_other_statuses_are_left_alone() {
        assert!(with_json_body(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(with_json_body(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none());
        assert!(with_json_body(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}").is_none());
        assert!(with_json_body(b"HTTP/1.1 400").is_none());
        assert!(with_json_body(b"").is_none());
    }

    #[test]
    fn a_full_table_closes_its_oldest_idle_connection() {
        let table = ConnTable::new(2);
        let Admission::Admitted { conn: a, evicted: false } = table.admit() else { panic!("first") };
        let Admission::Admitted { conn: b, evicted: false } = table.admit() else { panic!("second") };
        // `a` is busy with a request: `b` is the oldest idle one.
        a.busy.fetch_add(1, Ordering::AcqRel);
        let Admission::Admitted { conn: c, evicted: true } = table.admit() else { panic!("third") };
        assert!(b.evict.is_cancelled() && !a.evict.is_cancelled());
        drop(b);
        assert_eq!(table.len(), 2);
        // Both busy: a fourth is refused.
        c.busy.fetch_add(1, Ordering::AcqRel);
        assert!(matches!(table.admit(), Admission::Full));
        drop((a, c));
        assert!(table.is_empty());
    }
}
