//! HTTP byte counts, as close to the wire as reqwest lets us see: the HTTP/1.1 message
//! (request line, headers, body; status line, headers, body). reqwest adds a few headers
//! of its own after we see the request (`host`, `user-agent`, `accept`, the client's
//! default headers, `content-length`); [`request_head`] counts the ones it knows of.
//! TLS is not in the count (docs/data-usage.md gives the overhead).

use reqwest::header::HeaderMap;

/// `name: value\r\n` for each header.
fn headers_len(h: &HeaderMap) -> u64 {
    h.iter().map(|(k, v)| (k.as_str().len() + 2 + v.len() + 2) as u64).sum()
}

/// The request line and headers of `req`, plus `defaults` (the client's default
/// headers and user agent) and the `host`, `accept` and `content-length` lines reqwest
/// adds, plus the body when it is held in memory (a streamed body is counted as it is
/// read).
pub fn request(req: &reqwest::Request, defaults: u64) -> u64 {
    let url = req.url();
    let target = url.path().len() + url.query().map_or(0, |q| q.len() + 1);
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let host = "host: \r\n".len() + url.host_str().map_or(0, str::len) + url.port().map_or(0, |_| 6);
    let accept = "accept: */*\r\n".len();
    let body = req.body().and_then(|b| b.as_bytes()).map_or(0, <[u8]>::len);
    let length = if body > 0 { "content-length: \r\n".len() + body.to_string().len() } else { 0 };
    (line + host + accept + length + 2 + body) as u64 + headers_len(req.headers()) + defaults
}

/// The client-wide headers: `user-agent` and the defaults given to the builder.
pub fn defaults(user_agent: &str, headers: &HeaderMap) -> u64 {
    ("user-agent: \r\n".len() + user_agent.len()) as u64 + headers_len(headers)
}

/// The status line and headers of a response (the body is counted as it is read).
pub fn response_head(resp: &reqwest::Response) -> u64 {
    let reason = resp.status().canonical_reason().map_or(0, str::len);
    ("HTTP/1.1 200 \r\n".len() + reason + 2) as u64 + headers_len(resp.headers())
}
