//! Resumable uploads of a file to an HTTP(S) URL by `PUT`, as object stores' pre-signed
//! upload URLs take them: captured samples now (`samples/upload`), log bundles later.
//!
//! The resume protocol is the one resumable-upload services use (Google Cloud Storage's
//! resumable uploads, among others):
//!
//! 1. **Ask** how much the server has: `PUT` with an empty body and
//!    `Content-Range: bytes */TOTAL`. `308` with `Range: bytes=0-LAST` means it has
//!    `LAST + 1` bytes (no `Range`: none); `200` or `201` means the upload is complete.
//! 2. **Send** the rest: `PUT` with `Content-Range: bytes START-END/TOTAL` and the bytes
//!    from `START`. `200`/`201` ends the upload; `308` means the server kept part of it
//!    (go back to 1).
//! 3. A lost connection, a timeout or a `5xx`/`429` answer: wait (backing off) and go
//!    back to 1. The upload gives up after [`Limits::attempts`] tries in a row that
//!    moved no byte; any other answer (`4xx`: the URL expired, was refused) ends it at
//!    once.
//!
//! The URL's query (a pre-signed URL's signature) is never logged or put in an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{StatusCode, Url, header};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use crate::tls;

/// How hard an upload tries.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// Tries in a row that move no byte before giving up.
    pub attempts: u32,
    /// The first wait after a failure; it doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// The slowest a send may go (bytes/s) before it is cut and resumed: a send of
    /// `n` bytes may take `n / min_rate` seconds, and at least `min_time`.
    pub min_rate: u64,
    pub min_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(10),
            attempts: 8,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            min_rate: 8 * 1024,
            min_time: Duration::from_secs(60),
        }
    }
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("`{url}` is not an http(s) URL: {reason}")]
    Url { url: String, reason: String },
    #[error("TLS for {url}: {reason}; set capture.ca_file to the CA that signed the server's certificate")]
    Tls { url: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{url} answered {status} {body}; the upload URL may have expired or be wrong")]
    Refused { url: String, status: u16, body: String },
    #[error("{url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error(
        "{url}: gave up after {attempts} tries without progress ({sent} of {total} bytes uploaded): {last}"
    )]
    GaveUp { url: String, attempts: u32, sent: u64, total: u64, last: String },
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub bytes: u64,
    /// Connections that were lost or refused on the way and resumed from.
    pub resumed: u32,
}

/// The URL without its query and fragment, for logs and errors: a pre-signed URL's
/// query is a credential.
pub fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// A writer that hashes (SHA-256) and counts what goes through it, for an archive whose
/// size and digest a reply reports; past `limit` bytes it fails with
/// [`std::io::ErrorKind::FileTooLarge`].
pub struct Hashing<W> {
    pub inner: W,
    digest: ring::digest::Context,
    pub bytes: u64,
    limit: u64,
}

impl<W: std::io::Write> Hashing<W> {
    pub fn new(inner: W, limit: u64) -> Hashing<W> {
        Hashing { inner, digest: ring::digest::Context::new(&ring::digest::SHA256), bytes: 0, limit }
    }

    /// The writer back, and the hex SHA-256 of what went through.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.digest.finish()))
    }
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes + buf.len() as u64 > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "the archive passed its size limit",
            ));
        }
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Checks an upload URL: http or https, with a host.
pub fn parse_url(text: &str) -> Result<Url, UploadError> {
    let shown = || text.split('?').next().unwrap_or_default().chars().take(200).collect::<String>();
    let url = Url::parse(text).map_err(|e| UploadError::Url { url: shown(), reason: e.to_string() })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UploadError::Url { url: shown(), reason: format!("the scheme is {}", url.scheme()) });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UploadError::Url { url: shown(), reason: "it has no host".into() });
    }
    Ok(url)
}

/// An HTTP client for uploads, on the project's TLS setup.
#[derive(Clone)]
pub struct Uploader {
    client: reqwest::Client,
    limits: Limits,
    /// Bytes to and from upload targets (crate::usage::http: the HTTP messages, not TLS).
    wire: std::sync::Arc<crate::usage::Counter>,
}

/// What one exchange said.
enum Answer {
    /// The server has this many bytes.
    Has(u64),
    Complete,
}

/// One try's failure: worth retrying, or final.
enum Failure {
    Retry(String),
    Final(UploadError),
}

impl Uploader {
    /// A client trusting `ca_file` (PEM), or the system's store without one; plain
    /// http needs neither.
    pub fn new(url: &Url, ca_file: Option<&Path>, limits: Limits) -> Result<Uploader, UploadError> {
        let tls_error = |reason: String| UploadError::Tls { url: redacted(url), reason };
        let roots = match ca_file {
            Some(path) => tls::ca_roots(&[path], "capture.ca_file").map_err(|e| tls_error(e.to_string()))?,
            None => match tls::system_roots("capture.ca_file") {
                Ok(roots) => roots,
                Err(_) if url.scheme() != "https" => rustls::RootCertStore::empty(),
                Err(e) => return Err(tls_error(e.to_string())),
            },
        };
        let mut config = tls::client_config(roots, None).map_err(|e| tls_error(e.to_string()))?;
        // reqwest adds no ALPN to a preconfigured config; HTTP/1.1 is what object
        // stores' upload endpoints all speak.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .user_agent(concat!("edge-agent/", env!("CARGO_PKG_VERSION")))
            .tls_backend_preconfigured(config)
            .build()
            .map_err(|e| tls_error(format!("cannot build the HTTP client: {}", tls::error_chain(&e))))?;
        Ok(Uploader { client, limits, wire: Default::default() })
    }

    /// Counts this uploader's traffic in `wire` (the uploads' bytes per destination).
    pub fn counting_in(mut self, wire: std::sync::Arc<crate::usage::Counter>) -> Uploader {
        self.wire = wire;
        self
    }

    /// Sends a request, counting its head (and a body held in memory) and the answer's head.
    async fn execute(&self, url: &Url, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let req = req.build().map_err(|e| self.transport(url, &e))?;
        let defaults = crate::usage::http::defaults(
            concat!("edge-agent/", env!("CARGO_PKG_VERSION")),
            &header::HeaderMap::new(),
        );
        self.wire.add_sent(crate::usage::http::request(&req, defaults));
        let resp = self.client.execute(req).await.map_err(|e| self.transport(url, &e))?;
        self.wire.add_received(crate::usage::http::response_head(&resp));
        Ok(resp)
    }

    /// Uploads the file at `path` to `url`, resuming across lost connections;
    /// `progress` is sent the bytes the server has confirmed or taken so far.
    pub async fn put_file(
        &self,
        url: &Url,
        path: &Path,
        progress: &watch::Sender<u64>,
    ) -> Result<Done, UploadError> {
        let read_err = |source| UploadError::Read { path: path.to_path_buf(), source };
        let total = tokio::fs::metadata(path).await.map_err(read_err)?.len();
        let shown = redacted(url);
        let mut failures = 0u32;
        let mut resumed = 0u32;
        let mut backoff = self.limits.backoff;
        let mut confirmed = 0u64;
        let mut last = String::new();
        loop {
            if failures >= self.limits.attempts {
                return Err(UploadError::GaveUp {
                    url: shown,
                    attempts: failures,
                    sent: confirmed,
                    total,
                    last,
                });
            }
            let step = async {
                let start = match self.ask(url, total).await? {
                    Answer::Complete => return Ok(Answer::Complete),
                    Answer::Has(n) => n,
                };
                if start > confirmed {
                    confirmed = start;
                    let _ = progress.send(start);
                }
                self.send(url, path, start, total, progress).await
            };
            match step.await {
                Ok(Answer::Complete) => {
                    let _ = progress.send(total);
                    return Ok(Done { bytes: total, resumed });
                }
                Ok(Answer::Has(n)) => {
                    // The server kept part: ask again at once.
                    if n > confirmed {
                        confirmed = n;
                        failures = 0;
                        backoff = self.limits.backoff;
                    }
                }
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry(reason)) => {
                    tracing::info!(url = %shown, %reason, confirmed, total, "upload interrupted; resuming");
                    last = reason;
                    resumed += 1;
                    failures += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.limits.max_backoff);
                }
            }
        }
    }

    /// Step 1: how many bytes the server has.
    async fn ask(&self, url: &Url, total: u64) -> Result<Answer, Failure> {
        let req = self
            .client
            .put(url.clone())
            .header(header::CONTENT_RANGE, format!("bytes */{total}"))
            .header(header::CONTENT_LENGTH, 0)
            .timeout(self.limits.min_time);
        let resp = self.execute(url, req).await?;
        self.answer(url, resp, total).await
    }

    /// Step 2: the bytes from `start`.
    async fn send(
        &self,
        url: &Url,
        path: &Path,
        start: u64,
        total: u64,
        progress: &watch::Sender<u64>,
    ) -> Result<Answer, Failure> {
        if start >= total && total > 0 {
            return Err(Failure::Final(UploadError::Protocol {
                url: redacted(url),
                reason: format!(
                    "the server says it has {start} bytes of {total} but not that the upload is complete"
                ),
            }));
        }
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|source| Failure::Final(UploadError::Read { path: path.to_path_buf(), source }))?;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|source| Failure::Final(UploadError::Read { path: path.to_path_buf(), source }))?;
        let left = total - start;
        let sent = progress.clone();
        let wire = self.wire.clone();
        // The body is read in chunks as the connection takes them; progress follows
        // what has been handed to the connection.
        let body = futures_util::stream::unfold((file, start, left), move |(mut file, at, left)| {
            let sent = sent.clone();
            let wire = wire.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let mut buf = vec![0u8; usize::try_from(left.min(64 * 1024)).unwrap_or(64 * 1024)];
                match file.read(&mut buf).await {
                    Ok(0) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the file shrank during the upload",
                        )),
                        (file, at, 0),
                    )),
                    Ok(n) => {
                        buf.truncate(n);
                        wire.add_sent(n as u64);
                        let at = at + n as u64;
                        sent.send_if_modified(|v| {
                            let moved = at > *v;
                            *v = (*v).max(at);
                            moved
                        });
                        Some((Ok(bytes::Bytes::from(buf)), (file, at, left - n as u64)))
                    }
                    Err(e) => Some((Err(e), (file, at, 0))),
                }
            }
        });
        let range =
            if total == 0 { "bytes */0".to_string() } else { format!("bytes {start}-{}/{total}", total - 1) };
        let time = self.limits.min_time.max(Duration::from_secs(left / self.limits.min_rate.max(1)));
        let req = self
            .client
            .put(url.clone())
            .header(header::CONTENT_RANGE, range)
            .header(header::CONTENT_LENGTH, left)
            .timeout(time)
            .body(reqwest::Body::wrap_stream(body));
        let resp = self.execute(url, req).await?;
        self.answer(url, resp, total).await
    }

    /// Reads an answer to either step.
    async fn answer(&self, url: &Url, resp: reqwest::Response, total: u64) -> Result<Answer, Failure> {
        let status = resp.status();
        match status {
            StatusCode::OK | StatusCode::CREATED => Ok(Answer::Complete),
            StatusCode::PERMANENT_REDIRECT => {
                let has = match resp.headers().get(header::RANGE) {
                    None => 0,
                    Some(v) => parse_range(v.to_str().unwrap_or_default()).ok_or_else(|| {
                        Failure::Final(UploadError::Protocol {
                            url: redacted(url),
                            reason: format!("308 with a Range it cannot read: {v:?}; expected bytes=0-N"),
                        })
                    })?,
                };
                if has > total {
                    return Err(Failure::Final(UploadError::Protocol {
                        url: redacted(url),
                        reason: format!("the server says it has {has} bytes of a {total}-byte file"),
                    }));
                }
                Ok(Answer::Has(has))
            }
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                Err(Failure::Retry(format!("the server answered {s}")))
            }
            s => {
                let body = resp.text().await.unwrap_or_default();
                self.wire.add_received(body.len() as u64);
                let body: String = body.chars().take(200).collect();
                Err(Failure::Final(UploadError::Refused { url: redacted(url), status: s.as_u16(), body }))
            }
        }
    }

    /// A transport error: TLS problems are final (retrying does not fix a certificate),
    /// the rest is worth another try.
    fn transport(&self, url: &Url, e: &reqwest::Error) -> Failure {
        if let Some(t) = tls::find_rustls_error(e) {
            return Failure::Final(UploadError::Tls { url: redacted(url), reason: t.to_string() });
        }
        Failure::Retry(tls::error_chain(e).replace(url.as_str(), &redacted(url)))
    }
}

/// The bytes a `Range: bytes=0-LAST` header says the server has (`LAST + 1`).
pub fn parse_range(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes=")?;
    let (first, last) = range.split_once('-')?;
    if first.trim() != "0" {
        return None;
    }
    last.trim().parse::<u64>().ok()?.checked_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_the_protocol_writes_them() {
        assert_eq!(parse_range("bytes=0-99"), Some(100));
        assert_eq!(parse_range(" bytes=0-0 "), Some(1));
        assert_eq!(parse_range("bytes=5-99"), None, "only a prefix is resumable");
        assert_eq!(parse_range("bytes=0-"), None);
        assert_eq!(parse_range("items=0-9"), None);
        assert_eq!(parse_range("bytes=0-18446744073709551615"), None);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::parse_range;
        use crate::testing::proptest_config as config;

        proptest! {
            #![proptest_config(config(64))]

            /// Any header value is read without a panic; a prefix range reads back.
            #[test]
            fn range_headers_never_panic_and_prefixes_round_trip(text in ".{0,40}", last in 0u64..u64::MAX) {
                let _ = parse_range(&text);
                prop_assert_eq!(parse_range(&format!("bytes=0-{last}")), Some(last + 1));
            }
        }
    }

    #[test]
    fn urls_are_checked_and_their_secrets_never_shown() {
        let url = parse_url("https://user:pw@store.example/b/o.tar?X-Amz-Signature=secret#f").unwrap();
        assert_eq!(redacted(&url), "https://store.example/b/o.tar");
        let err = parse_url("ftp://store.example/o?sig=secret").unwrap_err().to_string();
        assert!(err.contains("scheme is ftp") && !err.contains("secret"), "{err}");
        assert!(parse_url("not a url?sig=secret").unwrap_err().to_string().contains("not an http(s) URL"));
    }
}
