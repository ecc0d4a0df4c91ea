//! A resumable-upload server on loopback for the upload commands' tests
//! (`samples/upload`, `logs/upload`, `diagnostics/bundle`), and those commands' replies.

use serde_json::Value;

use super::secs;

/// What the test's upload server saw and keeps.
#[derive(Default)]
pub struct Uploaded {
    /// The bytes kept so far (a resumable service keeps what arrived before a cut).
    pub bytes: Vec<u8>,
    pub complete: bool,
    /// Each request's `Content-Range`.
    pub ranges: Vec<String>,
    /// Connections left to cut in the middle of a body.
    pub cuts_left: u32,
}

/// A resumable-upload server on loopback (the protocol of `agent/src/upload.rs`), over
/// TLS when given a config: `PUT /ok` answers as the protocol says, cutting the
/// connection in the middle of the first `cuts` bodies after keeping half of what they
/// sent; `PUT /expired` answers 403.
pub fn upload_server(
    cuts: u32,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> (u16, std::sync::Arc<std::sync::Mutex<Uploaded>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let state =
        std::sync::Arc::new(std::sync::Mutex::new(Uploaded { cuts_left: cuts, ..Default::default() }));
    let shared = state.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (state, tls) = (shared.clone(), tls.clone());
            std::thread::spawn(move || match tls {
                Some(config) => {
                    let Ok(server) = rustls::ServerConnection::new(config) else { return };
                    serve_put(rustls::StreamOwned::new(server, conn), &state)
                }
                None => serve_put(conn, &state),
            });
        }
    });
    (port, state)
}

/// Answers one request on `conn` (then closes it), as [`upload_server`] says.
fn serve_put<S: std::io::Read + std::io::Write>(conn: S, state: &std::sync::Mutex<Uploaded>) {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(conn);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let header = |name: &str| {
        head.iter()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.trim().to_string())
    };
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let range = header("content-range").unwrap_or_default();
    let respond = |reader: &mut BufReader<S>, status: &str, extra: String| {
        let conn = reader.get_mut();
        let _ = write!(conn, "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = conn.flush();
    };
    if head[0].starts_with("PUT /expired") {
        return respond(&mut reader, "403 Forbidden", String::new());
    }
    let mut s = state.lock().unwrap();
    s.ranges.push(range.clone());
    if len > 0 && s.cuts_left > 0 {
        // Keep half of this body, then drop the connection without a word.
        s.cuts_left -= 1;
        let mut part = vec![0u8; len / 2];
        drop(s);
        reader.read_exact(&mut part).unwrap();
        state.lock().unwrap().bytes.extend_from_slice(&part);
        return;
    }
    let mut body = vec![0u8; len];
    drop(s);
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut s = state.lock().unwrap();
    let total: usize = range.rsplit('/').next().and_then(|t| t.parse().ok()).unwrap_or(usize::MAX);
    if !body.is_empty() {
        let start: usize = range["bytes ".len()..].split('-').next().unwrap().parse().unwrap();
        assert_eq!(start, s.bytes.len(), "a send starts where the server's bytes end");
        s.bytes.extend_from_slice(&body);
    }
    let answer = if s.bytes.len() == total {
        s.complete = true;
        ("201 Created", String::new())
    } else if s.bytes.is_empty() {
        ("308 Resume Incomplete", String::new())
    } else {
        ("308 Resume Incomplete", format!("Range: bytes=0-{}\r\n", s.bytes.len() - 1))
    };
    drop(s);
    respond(&mut reader, answer.0, answer.1);
}

/// Every reply to the command `id` on `command`'s reply topic, once its final one came.
pub fn replies_to(replies: &super::broker::Subscription, command: &str, id: &str) -> Vec<Value> {
    let topic = format!("edge/dev1/cmd/{command}/reply");
    replies.wait_for(&format!("the final reply to {id}"), secs(120), |t, p| {
        t == topic
            && p.contains(&format!("\"id\":\"{id}\""))
            && ["succeeded", "failed", "rejected"].iter().any(|s| p.contains(&format!("\"state\":\"{s}\"")))
    });
    replies
        .messages()
        .iter()
        .filter(|(t, p)| *t == topic && p.contains(&format!("\"id\":\"{id}\"")))
        .map(|(_, p)| serde_json::from_str(p).unwrap())
        .collect()
}
