//! Registry client transport: how the device fetches TUF metadata and targets
//! from a registry of static files served over HTTP(S).
//!
//! This layer does not verify signatures; it enforces the transport-level
//! protections TUF expects from a client: length limits (endless-data attack),
//! minimum transfer rate (slow-retrieval attack), whole-request deadlines,
//! target hashes, and resumable downloads that never trust a partial file
//! without hashing it.

use std::io::{self, Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::{StatusCode, Url};
use ring::digest;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::tls;

/// Headroom kept free on the staging filesystem beyond the download itself,
/// so that finishing a target never leaves the device with a full disk.
const SPACE_MARGIN: u64 = 1 << 20;

/// Chunk size for hashing an existing partial file before resuming.
const HASH_CHUNK: usize = 64 * 1024;

/// Network limits. The defaults suit a device on a slow but working link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// TCP + TLS connection establishment.
    pub connect_timeout: Duration,
    /// Whole metadata request (headers and body); also bounds the wait for
    /// response headers of a target download.
    pub metadata_timeout: Duration,
    /// Whole target download.
    pub download_timeout: Duration,
    /// Minimum bytes/s averaged over `rate_window`; 0 disables the check.
    pub min_rate: u64,
    /// A transfer below `min_rate` for a whole window is cut (slow-retrieval attack).
    pub rate_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(10),
            metadata_timeout: Duration::from_secs(30),
            download_timeout: Duration::from_secs(30 * 60),
            min_rate: 1024,
            rate_window: Duration::from_secs(10),
        }
    }
}

/// What the server said identifies the version of a file, echoed back on the
/// next poll so an unchanged file costs a 304 instead of a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validator {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// Result of a conditional GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditional {
    NotModified,
    Fresh { body: Vec<u8>, validator: Validator },
}

/// A completed, hash-verified, fsynced download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// Final length of the file (the expected length).
    pub bytes: u64,
    /// Bytes reused from an earlier partial download (0 when started afresh).
    pub resumed_from: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "invalid registry URL `{url}`: {reason}; use an absolute http:// or https:// URL such as https://updates.example.com/repo/"
    )]
    Url { url: String, reason: String },

    #[error(
        "cannot reach the registry at {url}: {reason}; check the network connection, DNS and that the registry server is running"
    )]
    Connect { url: String, reason: String },

    #[error(
        "TLS with {url} failed: {reason}; if the registry uses a private CA pass its PEM certificate as a CA file, and check that the device clock is correct"
    )]
    Tls { url: String, reason: String },

    /// A CA file that cannot be used; the message names it and why.
    #[error(transparent)]
    CaFile(crate::tls::TlsError),

    #[error(
        "registry answered HTTP {status} for {url}; check that the file is published on the server and that the registry URL is right"
    )]
    Status { url: String, status: u16 },

    #[error(
        "{url} is larger than the {max}-byte limit; download cut (endless-data attack, a misconfigured server, or a limit too small for this repository)"
    )]
    TooLarge { url: String, max: u64 },

    #[error(
        "{url} sent more than the {expected} bytes the signed metadata allows; download cut (endless-data attack or a wrong file on the server)"
    )]
    EndlessData { url: String, expected: u64 },

    #[error(
        "{url} was transferring at {rate} B/s, below the {min} B/s minimum; download cut (slow-retrieval attack or a very poor link); it resumes on the next attempt, or lower min_rate"
    )]
    SlowRetrieval { url: String, rate: u64, min: u64 },

    #[error(
        "{url} did not complete within {after:?}; it resumes on the next attempt; raise the timeout for very slow links"
    )]
    TimedOut { url: String, after: Duration },

    #[error(
        "transfer of {url} broke off after {done} bytes: {reason}; retry (target downloads resume from the partial file)"
    )]
    Interrupted { url: String, done: u64, reason: String },

    #[error("{url} sent an invalid response: {reason}; check the registry server and any proxy in between")]
    Protocol { url: String, reason: String },

    #[error(
        "SHA-256 of {url} is {got} but the signed metadata says {expected}; the partial file was deleted; the registry serves a wrong or tampered file: re-publish the target"
    )]
    HashMismatch { url: String, expected: String, got: String },

    #[error(
        "not enough disk space in {}: need {need} bytes, {free} free; free up space on the staging filesystem",
        dir.display()
    )]
    NoSpace { dir: PathBuf, need: u64, free: u64 },

    #[error(
        "I/O error on {}: {source}; check that the staging directory exists, is writable and the disk is healthy",
        path.display()
    )]
    Io { path: PathBuf, source: io::Error },
}

impl FetchError {
    /// Stable short name for events and counters; never change existing names.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Url { .. } => "url",
            FetchError::Connect { .. } => "connect",
            FetchError::Tls { .. } => "tls",
            FetchError::CaFile(_) => "ca_file",
            FetchError::Status { .. } => "status",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::EndlessData { .. } => "endless_data",
            FetchError::SlowRetrieval { .. } => "slow_retrieval",
            FetchError::TimedOut { .. } => "timed_out",
            FetchError::Interrupted { .. } => "interrupted",
            FetchError::Protocol { .. } => "protocol",
            FetchError::HashMismatch { .. } => "hash_mismatch",
            FetchError::NoSpace { .. } => "no_space",
            FetchError::Io { .. } => "io",
        }
    }
}

/// HTTP(S) client for one registry. Cheap to clone; clones share the
/// connection pool and the byte counter.
const USER_AGENT: &str = concat!("edge-agent/", env!("CARGO_PKG_VERSION"));

#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    base: Url,
    limits: Limits,
    received: AtomicU64,
    /// The registry's share of the bytes per destination (crate::usage).
    wire: Arc<crate::usage::Counter>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("base", &self.inner.base.as_str())
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// `base_url` is the registry root (http:// or https://), treated as a
    /// directory. With `ca_files`, only those CAs (PEM) are trusted, which is
    /// what a fleet with a private registry wants; without, the system store.
    pub fn new(base_url: &str, ca_files: &[PathBuf], limits: Limits) -> Result<Fetcher, FetchError> {
        let base = parse_base(base_url)?;
        let roots = load_roots(ca_files, &base)?;
        let tls_error = |reason: String| FetchError::Tls { url: base.to_string(), reason };
        let mut tls = tls::client_config(roots, None).map_err(|e| tls_error(e.to_string()))?;
        // A preconfigured config is used as is: reqwest does not add ALPN, and
        // without it an HTTP/2-capable server would be spoken to in HTTP/1.1.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let client = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .user_agent(USER_AGENT)
            // Must be exactly rustls 0.23's ClientConfig (the version reqwest
            // links); anything else silently becomes an "unknown TLS backend"
            // error at build().
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| tls_error(format!("cannot build the HTTP client: {}", tls::error_chain(&e))))?;

        let wire = Arc::new(crate::usage::Counter::default());
        Ok(Fetcher { inner: Arc::new(Inner { client, base, limits, received: AtomicU64::new(0), wire }) })
    }

    /// Counts this fetcher's traffic in `wire` (the registry's counter of the agent's
    /// bytes per destination) instead of a counter of its own.
    pub fn counting_in(self, wire: Arc<crate::usage::Counter>) -> Fetcher {
        let Inner { client, base, limits, received, .. } = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => return Fetcher { inner: shared },
        };
        Fetcher { inner: Arc::new(Inner { client, base, limits, received, wire }) }
    }

    /// Total body bytes received from the network by this fetcher and its clones.
    pub fn bytes_received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// A metadata file, at most `max_len` bytes (cut beyond: endless-data
    /// attack). `Ok(None)` on 404 and 403, because S3-style servers answer 403
    /// for missing keys and TUF probes for files that may not exist yet (the
    /// next root version).
    pub async fn get(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let url = self.url_for(path)?;
        let limit = self.inner.limits.metadata_timeout;
        let work = async {
            let resp = self.send(self.inner.client.get(url.clone()), &url).await?;
            match resp.status() {
                StatusCode::OK => Ok(Some(self.read_body(resp, &url, max_len).await?)),
                StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(None),
                status => Err(FetchError::Status { url: url.to_string(), status: status.as_u16() }),
            }
        };
        with_timeout(&url, limit, work).await
    }

    /// Conditional GET for the frequently polled timestamp. A missing file is
    /// an error here (not `None`): a registry without timestamp.json is broken.
    pub async fn get_conditional(
        &self,
        path: &str,
        max_len: u64,
        validator: Option<&Validator>,
    ) -> Result<Conditional, FetchError> {
        let url = self.url_for(path)?;
        let limit = self.inner.limits.metadata_timeout;
        let work = async {
            let mut req = self.inner.client.get(url.clone());
            if let Some(v) = validator {
                if let Some(etag) = &v.etag {
                    req = req.header(header::IF_NONE_MATCH, etag.as_str());
                }
                if let Some(date) = &v.last_modified {
                    req = req.header(header::IF_MODIFIED_SINCE, date.as_str());
                }
            }
            let resp = self.send(req, &url).await?;
            match resp.status() {
                StatusCode::NOT_MODIFIED => Ok(Conditional::NotModified),
                StatusCode::OK => {
                    let validator = Validator {
                        etag: header_string(resp.headers(), header::ETAG),
                        last_modified: header_string(resp.headers(), header::LAST_MODIFIED),
                    };
                    let body = self.read_body(resp, &url, max_len).await?;
                    Ok(Conditional::Fresh { body, validator })
                }
                status => Err(FetchError::Status { url: url.to_string(), status: status.as_u16() }),
            }
        };
        with_timeout(&url, limit, work).await
    }

    /// Downloads a target to `partial`, resuming from what is already there.
    /// On success the file holds exactly `expected_len` bytes hashing to
    /// `expected_sha256` and is fsynced; the caller renames it into place.
    pub async fn download(
        &self,
        path: &str,
        partial: &Path,
        expected_len: u64,
        expected_sha256: &[u8; 32],
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Downloaded, FetchError> {
        let started = Instant::now();
        let url = self.url_for(path)?;
        let job = Transfer { url: &url, partial, expected_len, started };
        let Some(mut at) = resume_point(&job, expected_sha256).await? else {
            progress(expected_len, expected_len);
            return Ok(Downloaded {
                bytes: expected_len,
                resumed_from: expected_len,
                elapsed: started.elapsed(),
            });
        };

        // A kept prefix is only proven right by the hash of the whole file. When a resumed
        // download does not hash (an earlier server or cache answered with other bytes),
        // it starts over from zero at once, so this check still succeeds rather than
        // leaving it to the next one.
        let mut first_attempt = true;
        loop {
            let mut file = open_at(partial, at.offset).await.map_err(|e| job.io_err(e))?;
            let result = self.transfer(&job, &mut file, at, progress).await;
            // tokio's File finishes writes in the background; flush so the partial
            // on disk is exactly what was counted, for the next resume.
            let flushed = file.flush().await;

            let (done, resumed_from) = match result {
                Ok(done) => done,
                Err(e) => {
                    if let Err(flush_error) = flushed {
                        tracing::warn!(path = %partial.display(), error = %flush_error, "cannot flush partial download");
                    }
                    return Err(e);
                }
            };
            flushed.map_err(|e| job.io_err(e))?;

            let got = done.finish();
            if got.as_ref() != expected_sha256 {
                drop(file);
                // A wrong file must not be resumed from.
                tokio::fs::remove_file(partial).await.map_err(|e| job.io_err(e))?;
                if resumed_from > 0 && first_attempt {
                    tracing::warn!(%url, resumed_from, "a resumed download does not hash; downloading it whole");
                    first_attempt = false;
                    at = Written::empty();
                    continue;
                }
                return Err(FetchError::HashMismatch {
                    url: url.to_string(),
                    expected: hex::encode(expected_sha256),
                    got: hex::encode(got.as_ref()),
                });
            }
            // The caller renames the file into place next; without fsync a power
            // cut could leave a renamed but empty or short file.
            file.sync_all().await.map_err(|e| job.io_err(e))?;
            return Ok(Downloaded { bytes: expected_len, resumed_from, elapsed: started.elapsed() });
        }
    }

    /// Requests the rest of the target and streams it into `file` (positioned
    /// at `at.offset`). Returns the hash context over the whole file and the
    /// offset the transfer resumed from.
    async fn transfer(
        &self,
        job: &Transfer<'_>,
        file: &mut tokio::fs::File,
        mut at: Written,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<(digest::Context, u64), FetchError> {
        let deadline = job.started + self.inner.limits.download_timeout;
        let resp = self.request_rest(job, file, &mut at, deadline).await?;
        let resumed_from = at.offset;
        if resp.content_length().is_some_and(|len| len > job.expected_len - at.offset) {
            return Err(job.endless());
        }
        self.receive(job, resp, file, &mut at, deadline, progress).await?;
        Ok((at.hasher, resumed_from))
    }

    /// Asks for the target from `at.offset` on and returns the response that carries
    /// it. A server that ignores the range, or whose file is shorter than the partial
    /// (once), makes `at` start over from zero.
    async fn request_rest(
        &self,
        job: &Transfer<'_>,
        file: &mut tokio::fs::File,
        at: &mut Written,
        deadline: Instant,
    ) -> Result<reqwest::Response, FetchError> {
        let url = job.url;
        let mut restarted_after_416 = false;
        loop {
            let offset = at.offset;
            let mut req = self.inner.client.get(url.clone());
            if offset > 0 {
                req = req.header(header::RANGE, format!("bytes={offset}-"));
            }
            let headers_by = deadline.min(Instant::now() + self.inner.limits.metadata_timeout);
            let resp = tokio::time::timeout_at(headers_by, self.send(req, url))
                .await
                .map_err(|_| job.timed_out())??;
            match resp.status() {
                StatusCode::PARTIAL_CONTENT if offset > 0 => {
                    let start = content_range_start(resp.headers());
                    if start != Some(offset) {
                        return Err(FetchError::Protocol {
                            url: url.to_string(),
                            reason: format!(
                                "asked for bytes from {offset}, got Content-Range {:?}",
                                header_string(resp.headers(), header::CONTENT_RANGE)
                            ),
                        });
                    }
                    return Ok(resp);
                }
                StatusCode::OK => {
                    if offset > 0 {
                        // HTTP lets a server ignore Range; the full body follows,
                        // so the partial is discarded rather than appended to.
                        tracing::debug!(%url, offset, "server ignored Range, restarting from zero");
                        at.restart(file).await.map_err(|e| job.io_err(e))?;
                    }
                    return Ok(resp);
                }
                StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 && !restarted_after_416 => {
                    // The server's file is shorter than our partial: the partial
                    // belongs to another version. Start over, once.
                    tracing::debug!(%url, offset, "416 for resume, restarting from zero");
                    at.restart(file).await.map_err(|e| job.io_err(e))?;
                    restarted_after_416 = true;
                }
                status => {
                    return Err(FetchError::Status { url: url.to_string(), status: status.as_u16() });
                }
            }
        }
    }

    /// Streams the response body into `file` at `at`, up to the expected length. Cuts
    /// the download when it runs past the deadline, sends more than the expected length,
    /// or stays below the minimum rate for a whole window.
    async fn receive(
        &self,
        job: &Transfer<'_>,
        resp: reqwest::Response,
        file: &mut tokio::fs::File,
        at: &mut Written,
        deadline: Instant,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<(), FetchError> {
        let url = job.url;
        let expected_len = job.expected_len;
        // Rate is checked over consecutive windows; the timer wakes us even
        // when nothing arrives, so a server that stalls completely is cut too.
        let mut window = RateWindow::new(&self.inner.limits);
        let mut stream = resp.bytes_stream();
        loop {
            let wake = window.end().map_or(deadline, |end| end.min(deadline));
            let next = tokio::time::timeout_at(wake, stream.next()).await;
            let now = Instant::now();
            match next {
                Ok(Some(Ok(chunk))) => {
                    self.count(chunk.len());
                    let room = expected_len - at.offset;
                    let take = usize::try_from(room).map_or(chunk.len(), |r| r.min(chunk.len()));
                    if take > 0 {
                        let data = &chunk[..take];
                        file.write_all(data).await.map_err(|e| job.io_err(e))?;
                        at.hasher.update(data);
                        at.offset += take as u64;
                        window.bytes += take as u64;
                        progress(at.offset, expected_len);
                    }
                    if take < chunk.len() {
                        return Err(job.endless());
                    }
                }
                Ok(Some(Err(e))) => {
                    return Err(FetchError::Interrupted {
                        url: url.to_string(),
                        done: at.offset,
                        reason: tls::error_chain(&e),
                    });
                }
                Ok(None) => break,
                Err(_) => {} // timer: checked below
            }
            if now >= deadline {
                return Err(job.timed_out());
            }
            if let Some(rate) = window.too_slow(now) {
                return Err(FetchError::SlowRetrieval { url: url.to_string(), rate, min: window.min_rate });
            }
        }
        if at.offset < expected_len {
            let offset = at.offset;
            return Err(FetchError::Interrupted {
                url: url.to_string(),
                done: offset,
                reason: format!("the response ended at {offset} of {expected_len} bytes"),
            });
        }
        Ok(())
    }

    /// Joins a repository path onto the base URL segment by segment. Each
    /// segment is percent-encoded, so `?` or `#` in a target name stay part of
    /// the path; `..`, `.` and empty segments are refused so no path, even from
    /// signed metadata, can address anything outside the registry.
    fn url_for(&self, path: &str) -> Result<Url, FetchError> {
        let base = &self.inner.base;
        let bad = |reason: &str| FetchError::Url { url: format!("{base}{path}"), reason: reason.to_owned() };
        let mut url = base.clone();
        {
            let mut segments =
                url.path_segments_mut().map_err(|()| bad("the base URL cannot have a path"))?;
            segments.pop_if_empty();
            for segment in path.split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(bad(
                        "repository paths must be relative, without empty, `.` or `..` segments",
                    ));
                }
                segments.push(segment);
            }
        }
        Ok(url)
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &Url) -> Result<reqwest::Response, FetchError> {
        let defaults = crate::usage::http::defaults(USER_AGENT, &HeaderMap::new());
        let (client, req) = req.build_split();
        let req =
            req.map_err(|e| FetchError::Connect { url: url.to_string(), reason: tls::error_chain(&e) })?;
        self.inner.wire.add_sent(crate::usage::http::request(&req, defaults));
        let resp = client.execute(req).await;
        if let Ok(r) = &resp {
            self.inner.wire.add_received(crate::usage::http::response_head(r));
        }
        resp.map_err(|e| {
            if let Some(tls) = tls::find_rustls_error(&e) {
                return FetchError::Tls { url: url.to_string(), reason: tls.to_string() };
            }
            if e.is_timeout() {
                return FetchError::TimedOut {
                    url: url.to_string(),
                    after: self.inner.limits.connect_timeout,
                };
            }
            FetchError::Connect { url: url.to_string(), reason: tls::error_chain(&e) }
        })
    }

    async fn read_body(
        &self,
        resp: reqwest::Response,
        url: &Url,
        max_len: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let too_large = || FetchError::TooLarge { url: url.to_string(), max: max_len };
        // A declared length over the limit is refused before reading anything.
        if resp.content_length().is_some_and(|len| len > max_len) {
            return Err(too_large());
        }
        let capacity = resp.content_length().unwrap_or(0).min(max_len).min(1 << 20);
        let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| FetchError::Interrupted {
                url: url.to_string(),
                done: body.len() as u64,
                reason: tls::error_chain(&e),
            })?;
            self.count(chunk.len());
            if (body.len() + chunk.len()) as u64 > max_len {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn count(&self, n: usize) {
        self.inner.received.fetch_add(n as u64, Ordering::Relaxed);
        self.inner.wire.add_received(n as u64);
    }
}

/// Fixed facts of one download, shared by its steps.
struct Transfer<'a> {
    url: &'a Url,
    partial: &'a Path,
    expected_len: u64,
    started: Instant,
}

impl Transfer<'_> {
    fn io_err(&self, source: io::Error) -> FetchError {
        FetchError::Io { path: self.partial.to_path_buf(), source }
    }

    fn timed_out(&self) -> FetchError {
        FetchError::TimedOut { url: self.url.to_string(), after: self.started.elapsed() }
    }

    fn endless(&self) -> FetchError {
        FetchError::EndlessData { url: self.url.to_string(), expected: self.expected_len }
    }
}

/// How far a transfer has written the partial file, with the hash of all of it.
struct Written {
    offset: u64,
    hasher: digest::Context,
}

impl Written {
    /// Nothing written yet.
    fn empty() -> Written {
        Written { offset: 0, hasher: digest::Context::new(&digest::SHA256) }
    }

    /// Empties `file` and starts the hash over: the bytes kept so far are not a prefix
    /// of what the server sends.
    async fn restart(&mut self, file: &mut tokio::fs::File) -> io::Result<()> {
        file.set_len(0).await?;
        file.seek(SeekFrom::Start(0)).await?;
        *self = Written::empty();
        Ok(())
    }
}

/// Where a download starts: what an earlier partial download left, hashed, or nothing
/// when that cannot be a prefix of the target. `None` when the partial already is the
/// whole target. Refuses to start without room for the rest on the staging filesystem.
async fn resume_point(job: &Transfer<'_>, expected_sha256: &[u8; 32]) -> Result<Option<Written>, FetchError> {
    let (partial, expected_len) = (job.partial, job.expected_len);
    let mut existing = match tokio::fs::metadata(partial).await {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(job.io_err(e)),
    };
    if existing > expected_len {
        // Longer than the signed length: it cannot be a prefix of this target.
        tokio::fs::remove_file(partial).await.map_err(|e| job.io_err(e))?;
        existing = 0;
    }

    let dir = staging_dir(partial);
    let need = (expected_len - existing).saturating_add(SPACE_MARGIN);
    let free =
        crate::telemetry::free_space(&dir).map_err(|source| FetchError::Io { path: dir.clone(), source })?;
    if free < need {
        return Err(FetchError::NoSpace { dir, need, free });
    }

    // The partial's bytes are hashed rather than trusted: they may come from
    // an earlier attempt against a server that has since been fixed.
    let mut at = Written::empty();
    if existing > 0 {
        (at.hasher, at.offset) = hash_prefix(partial).await.map_err(|e| job.io_err(e))?;
    }
    if at.offset == expected_len && at.offset > 0 {
        if at.hasher.clone().finish().as_ref() == expected_sha256 {
            return Ok(None);
        }
        tokio::fs::remove_file(partial).await.map_err(|e| job.io_err(e))?;
        at = Written::empty();
    }
    Ok(Some(at))
}

/// Opens the partial file for writing at `offset`, cutting off whatever follows it.
async fn open_at(partial: &Path, offset: u64) -> io::Result<tokio::fs::File> {
    let mut file =
        tokio::fs::OpenOptions::new().create(true).write(true).truncate(false).open(partial).await?;
    file.set_len(offset).await?;
    file.seek(SeekFrom::Start(offset)).await?;
    Ok(file)
}

/// The minimum transfer rate, checked over consecutive windows (slow-retrieval attack).
struct RateWindow {
    /// `None` when the check is off (`min_rate` or `rate_window` is zero).
    length: Option<Duration>,
    min_rate: u64,
    start: Instant,
    bytes: u64,
}

impl RateWindow {
    fn new(limits: &Limits) -> RateWindow {
        let length = (limits.min_rate > 0 && !limits.rate_window.is_zero()).then_some(limits.rate_window);
        RateWindow { length, min_rate: limits.min_rate, start: Instant::now(), bytes: 0 }
    }

    /// When the current window ends.
    fn end(&self) -> Option<Instant> {
        self.length.map(|w| self.start + w)
    }

    /// Once the current window has ended: its rate if that is below the minimum;
    /// otherwise the next window starts at `now`.
    fn too_slow(&mut self, now: Instant) -> Option<u64> {
        let end = self.end()?;
        if now < end {
            return None;
        }
        let elapsed_ms = (now - self.start).as_millis().max(1);
        let rate = u64::try_from(u128::from(self.bytes) * 1000 / elapsed_ms).unwrap_or(u64::MAX);
        if rate < self.min_rate {
            return Some(rate);
        }
        self.start = now;
        self.bytes = 0;
        None
    }
}

async fn with_timeout<T>(
    url: &Url,
    limit: Duration,
    work: impl Future<Output = Result<T, FetchError>>,
) -> Result<T, FetchError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(FetchError::TimedOut { url: url.to_string(), after: limit }))
}

fn parse_base(base_url: &str) -> Result<Url, FetchError> {
    let bad = |reason: String| FetchError::Url { url: base_url.to_owned(), reason };
    let mut url = Url::parse(base_url).map_err(|e| bad(e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad(format!("scheme `{}` is not supported", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host".to_owned()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("the URL must not have a query or fragment".to_owned()));
    }
    // Url::join drops the last segment of a base without a trailing slash
    // (".../repo" + "root.json" = ".../root.json"), so make it a directory.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The given CA files only, which is what a fleet with a private registry wants;
/// without any, the system store.
fn load_roots(ca_files: &[PathBuf], base: &Url) -> Result<rustls::RootCertStore, FetchError> {
    if !ca_files.is_empty() {
        return tls::ca_roots(ca_files, "CA file").map_err(FetchError::CaFile);
    }
    match tls::system_roots("a CA file") {
        Ok(roots) => Ok(roots),
        // Plain-http registries work without any CA; https without one cannot.
        Err(_) if base.scheme() != "https" => Ok(rustls::RootCertStore::empty()),
        Err(e) => Err(FetchError::Tls { url: base.to_string(), reason: e.to_string() }),
    }
}

fn header_string(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// First byte position of `Content-Range: bytes N-M/T`.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    let (start, _) = range.split_once('-')?;
    start.trim().parse().ok()
}

fn staging_dir(partial: &Path) -> PathBuf {
    match partial.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Hashes the whole existing file; returns the context and the bytes hashed.
/// Runs on the blocking pool: a partial can be gigabytes.
async fn hash_prefix(path: &Path) -> io::Result<(digest::Context, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; HASH_CHUNK];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok((ctx, total));
            }
            ctx.update(&buf[..n]);
            total += n as u64;
        }
    })
    .await
    .map_err(io::Error::other)?
}
