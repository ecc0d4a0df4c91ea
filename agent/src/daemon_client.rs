//! One HTTP/1.0 exchange with a running edge-agent's API, over its unix socket or TCP:
//! what `edge-agent status`, `update` and `model rollback` ask the daemon, and how
//! [`crate::diagnostics`] recognises an agent already serving. A client this small (one
//! request per connection, the answer ends at the close or its `Content-Length`) keeps
//! an HTTP client library out of the CLI's path.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Why an exchange over the unix socket gave no answer.
#[derive(Debug)]
pub enum Failure {
    /// Nothing accepted the connection.
    Connect(std::io::Error),
    /// The connection was accepted, then broke before a whole answer came.
    Exchange(std::io::Error),
}

/// One GET over a unix socket; returns (status code, body).
pub fn get(socket: &Path, path: &str) -> Result<(u16, String), Failure> {
    let s = UnixStream::connect(socket).map_err(Failure::Connect)?;
    let exchange = || {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        request(&s, path)
    };
    exchange().map_err(Failure::Exchange)
}

/// One POST with a JSON body over a unix socket, waiting up to `wait` for the answer;
/// returns (status code, body).
pub fn post(socket: &Path, path: &str, body: &str, wait: Duration) -> Result<(u16, String), Failure> {
    let mut s = UnixStream::connect(socket).map_err(Failure::Connect)?;
    let mut exchange = || {
        s.set_read_timeout(Some(wait))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        // Head and body in one write, so that the daemon reads them together.
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes())?;
        read_answer(&s)
    };
    exchange().map_err(Failure::Exchange)
}

/// One GET over a connected stream (timeouts set by the caller); returns (status code,
/// body).
pub fn request(mut s: impl Read + Write, path: &str) -> std::io::Result<(u16, String)> {
    // HTTP/1.0: the answer ends when the connection closes; no chunked decoding needed.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    read_answer(s)
}

/// Reads the answer until the connection closes, or until its `Content-Length` is in:
/// an answer that arrived whole counts even if the connection is then reset (a unix
/// socket closed with unread bytes resets its peer, which would otherwise turn a
/// complete answer into "the connection broke").
fn read_answer(mut s: impl Read) -> std::io::Result<(u16, String)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if complete(&raw) => {
                tracing::debug!(error = %e, "the connection ended after a whole answer");
                break;
            }
            Err(e) => return Err(e),
        }
        if complete(&raw) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Whether `raw` holds a whole HTTP answer with a `Content-Length` (answers without one
/// end when the connection closes).
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..end]);
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| raw.len() >= end + 4 + n)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::read_answer;

    /// The daemon answers, then closes with bytes of ours unread: the kernel resets our
    /// end. The answer arrived whole, so it counts.
    #[test]
    fn a_whole_answer_counts_when_the_connection_is_then_reset() {
        let (client, mut server) = UnixStream::pair().unwrap();
        (&client).write_all(b"POST /ota/check HTTP/1.0\r\n\r\n{}").unwrap();
        server.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}").unwrap();
        drop(server); // unread request bytes: a reset, not an end of file
        assert_eq!(read_answer(&client).unwrap(), (200, "{\"ok\":true}".to_string()));
    }

    /// A reset before the answer is whole is still an error.
    #[test]
    fn a_reset_before_the_whole_answer_is_an_error() {
        let (client, mut server) = UnixStream::pair().unwrap();
        (&client).write_all(b"GET /status HTTP/1.0\r\n\r\n").unwrap();
        server.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 50\r\n\r\n{\"partial\":").unwrap();
        drop(server);
        let err = read_answer(&client).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }

    /// Without a length, the answer ends with the connection.
    #[test]
    fn an_answer_without_a_length_ends_at_the_close() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut request = [0u8; 4];
        (&client).write_all(b"ping").unwrap();
        server.read_exact(&mut request).unwrap();
        server.write_all(b"HTTP/1.0 404 Not Found\r\n\r\nno such path").unwrap();
        drop(server);
        assert_eq!(read_answer(&client).unwrap(), (404, "no such path".to_string()));
    }
}
