//! Client for a cloud inference endpoint speaking the Open Inference Protocol
//! v2 REST API (KServe, Triton, MLServer), used when the device cannot infer
//! locally.
//!
//! The cloud is a fallback, so the client is built to fail fast and cheaply:
//! a total deadline per request, a concurrency limit that rejects instead of
//! queueing, retries only where the server surely never saw the request (a
//! retried inference that did run would be paid twice), a cap on response
//! size, and strict checks of every answer before the device acts on it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::tls;

/// Largest response body accepted. A 1000-class FP32 output is ~10 KiB of
/// JSON; 16 MiB leaves room for segmentation masks while stopping a hostile or
/// broken server from exhausting the device's memory. Parsed, a full 16 MiB
/// body is at most 8 Mi values (two bytes per value at least: `0,`), 32 MiB.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Error bodies are only read for their message.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// Longest error message kept from a server, in characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// Upper bound of one backoff pause, whatever `backoff` and `retries` say.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Upper bounds for the endpoint settings: far beyond any sensible value.
const MAX_CONCURRENCY: usize = 4096;
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Longest Retry-After honoured; longer ones exceed any sane total timeout anyway.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// One cloud endpoint for one model, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Server base, e.g. `https://cloud.example.com` or `http://10.0.0.5:8000/serving`.
    pub url: String,
    /// Model name on the server (may differ from the local name).
    pub model: String,
    pub version: Option<String>,
    /// File holding a bearer token; read once when the client is built, trimmed.
    pub bearer_token_file: Option<PathBuf>,
    /// PEM CA certificates trusted for this endpoint instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and private key for mutual TLS (both or neither).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// TCP + TLS connection establishment, per connection attempt.
    pub connect_timeout: Duration,
    /// Total per `infer` call: all attempts, backoff pauses and reading the answer.
    pub timeout: Duration,
    /// Requests in flight at once; more are rejected with `Busy`, not queued.
    pub max_concurrency: usize,
    /// Extra attempts after the first, only when the server surely did not
    /// get the request (see `CloudClient::infer`).
    pub retries: u32,
    /// First pause between attempts; doubled each retry, with jitter.
    pub backoff: Duration,
}

impl Endpoint {
    /// An endpoint with defaults suited to a fallback: give up quickly.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Endpoint {
        Endpoint {
            url: url.into(),
            model: model.into(),
            version: None,
            bearer_token_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
            max_concurrency: 4,
            retries: 2,
            backoff: Duration::from_millis(200),
        }
    }
}

/// A tensor as exchanged with the server. Values are f32 whatever the wire
/// datatype: answers in INT64, FP64, BOOL, ... are converted (integers beyond
/// 2^24 lose precision, which no classifier output needs).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// OIP datatype: FP32, FP16, BF16, FP64, INT8..INT64, UINT8..UINT64, BOOL.
    pub datatype: String,
    /// Row-major values; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn fp32(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor { name: name.into(), shape, datatype: "FP32".to_owned(), data }
    }
}

/// A checked answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudReply {
    pub model_version: Option<String>,
    pub outputs: Vec<Tensor>,
    /// From the call to the checked answer, including retries.
    pub latency: Duration,
    /// HTTP requests sent (1 without retries).
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cloud endpoint for model `{model}` is misconfigured: {reason}")]
    Config { model: String, reason: String },

    #[error(
        "inputs for {url} are invalid: {reason}; this is a bug in the caller or the model's pre-processing"
    )]
    Input { url: String, reason: String },

    #[error(
        "{url}: {limit} requests already in flight, request rejected without waiting; raise max_concurrency if the cloud can take more"
    )]
    Busy { url: String, limit: usize },

    #[error(
        "cannot connect to {url} after {attempts} attempt(s): {reason}; check the network, DNS and that the server is running"
    )]
    Connect { url: String, attempts: u32, reason: String },

    #[error(
        "TLS with {url} failed: {reason}; check ca_file (the server's CA), client_cert/client_key for mutual TLS, and the device clock"
    )]
    Tls { url: String, reason: String },

    #[error(
        "{url} did not answer within {after:?} ({attempts} attempt(s)); the server is slow or unreachable; raise the timeout only if the cloud is known to be that slow"
    )]
    Timeout { url: String, after: Duration, attempts: u32 },

    #[error(
        "connection to {url} broke after the request was sent: {reason}; not retried because the server may have run the inference; check the server and any proxy in between"
    )]
    Interrupted { url: String, reason: String },

    #[error("{url} answered HTTP {status}: {message}; {}", status_hint(*status))]
    Status { url: String, status: u16, message: String, attempts: u32 },

    #[error(
        "{url} sent a response larger than {limit} bytes; cut to protect memory; the server or a proxy is misbehaving, or the model's outputs are too big for the cloud fallback"
    )]
    TooLarge { url: String, limit: usize },

    #[error(
        "{url} sent an answer that is not a valid Open Inference Protocol v2 response: {reason}; check that the URL points at an OIP v2 server (KServe, Triton, MLServer)"
    )]
    Malformed { url: String, reason: String },

    #[error(
        "{url} sent an output whose shape does not match its data: {reason}; the server's model or its post-processing is broken"
    )]
    Shape { url: String, reason: String },
}

fn status_hint(status: u16) -> &'static str {
    match status {
        300..=399 => "redirects are not followed; set the endpoint url to the final address",
        401 | 403 => "check the bearer token file and that the token is valid for this model",
        404 => "check the model name and version mapping for this endpoint",
        400 | 422 => {
            "the server rejected the inputs; check that the model on the server expects these tensors"
        }
        408 | 429 => "the server is overloaded; the breaker backs off",
        500..=599 => "the server failed; the breaker backs off if this persists",
        _ => "see the server's logs",
    }
}

impl CloudError {
    /// Stable short name for events and counters; never change existing names.
    pub fn kind(&self) -> &'static str {
        match self {
            CloudError::Config { .. } => "config",
            CloudError::Input { .. } => "input",
            CloudError::Busy { .. } => "busy",
            CloudError::Connect { .. } => "connect",
            CloudError::Tls { .. } => "tls",
            CloudError::Timeout { .. } => "timeout",
            CloudError::Interrupted { .. } => "interrupted",
            CloudError::Status { .. } => "status",
            CloudError::TooLarge { .. } => "too_large",
            CloudError::Malformed { .. } => "malformed",
            CloudError::Shape { .. } => "shape",
        }
    }

    /// Whether the circuit breaker should count this against the endpoint.
    ///
    /// Yes when the endpoint is down, slow, overloaded or answering garbage:
    /// more requests would fail the same way. No when the fault is ours or
    /// the request's: a misconfiguration or bad input (no other request is
    /// helped by opening), our own concurrency limit (says nothing about the
    /// server), and a 4xx that judges this request (400, 401, 404, ...: the
    /// server is up and answering). 408 and 429 are 4xx but mean "overloaded",
    /// so they count.
    pub fn counts_as_failure(&self) -> bool {
        match self {
            CloudError::Config { .. } | CloudError::Input { .. } | CloudError::Busy { .. } => false,
            CloudError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            CloudError::Connect { .. }
            | CloudError::Tls { .. }
            | CloudError::Timeout { .. }
            | CloudError::Interrupted { .. }
            | CloudError::TooLarge { .. }
            | CloudError::Malformed { .. }
            | CloudError::Shape { .. } => true,
        }
    }

    /// HTTP status of a `Status` error.
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// OIP v2 client for one endpoint. Share it (`Arc`) between tasks: the
/// connection pool and the concurrency limit are per client.
pub struct CloudClient {
    http: reqwest::Client,
    infer_url: Url,
    /// `infer_url` as text, for errors and logs.
    url_text: String,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    slots: Semaphore,
    max_concurrency: usize,
    /// Bytes to and from the endpoint (crate::usage::http: the HTTP messages, not TLS),
    /// and the size of the headers the client adds to every request.
    wire: Arc<crate::usage::Counter>,
    default_headers: u64,
}

impl fmt::Debug for CloudClient {
    // Written out so that the Authorization header inside the reqwest client
    // can never end up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudClient")
            .field("infer_url", &self.url_text)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

/// How one attempt failed, and whether another attempt is safe.
struct Failed {
    error: CloudError,
    /// `Some(minimum pause)` when the request surely did not reach the model.
    retry_after: Option<Duration>,
}

impl Failed {
    fn fatal(error: CloudError) -> Failed {
        Failed { error, retry_after: None }
    }
}

impl CloudClient {
    /// Checks the endpoint, reads the token and certificates, and builds the
    /// HTTP client. Nothing is sent.
    pub fn new(ep: Endpoint) -> Result<CloudClient, CloudError> {
        let config = |reason: String| CloudError::Config { model: ep.model.clone(), reason };

        if ep.model.trim().is_empty() {
            return Err(config("the model name is empty; set the model's name on the server".to_owned()));
        }
        if ep.version.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(config(
                "the version is empty; remove it or set the model version on the server".to_owned(),
            ));
        }
        if ep.max_concurrency == 0 || ep.max_concurrency > MAX_CONCURRENCY {
            return Err(config(format!(
                "max_concurrency is {}; set it between 1 and {MAX_CONCURRENCY}",
                ep.max_concurrency
            )));
        }
        // The upper bound keeps deadline arithmetic far from Instant overflow.
        let sane = |d: Duration| !d.is_zero() && d <= MAX_TIMEOUT;
        if !sane(ep.timeout) || !sane(ep.connect_timeout) {
            return Err(config(format!(
                "timeout ({:?}) and connect_timeout ({:?}) must be greater than zero and at most {MAX_TIMEOUT:?}",
                ep.timeout, ep.connect_timeout
            )));
        }

        let infer_url = infer_url(&ep.url, &ep.model, ep.version.as_deref()).map_err(|reason| {
            config(format!(
                "invalid url `{}`: {reason}; use an absolute http:// or https:// base such as https://cloud.example.com",
                ep.url
            ))
        })?;
        let https = infer_url.scheme() == "https";
        if !https && (ep.ca_file.is_some() || ep.client_cert.is_some() || ep.client_key.is_some()) {
            // Certificates on a plain-http endpoint are silently unused: better
            // to refuse than to let someone believe the link is protected.
            return Err(config(format!(
                "ca_file/client_cert/client_key are set but `{}` is plain http; use an https:// url or remove them",
                ep.url
            )));
        }

        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(path) = &ep.bearer_token_file {
            let token = read_token(path).map_err(config)?;
            if !https {
                tracing::warn!(url = %ep.url, "bearer token sent over plain http; anyone on the path can read it");
            }
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                config(format!(
                    "the token in {} contains characters not allowed in an HTTP header; it must be a single line of printable ASCII",
                    path.display()
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }

        let tls = tls_config(&ep, https).map_err(config)?;
        let user_agent = concat!("edge-agent/", env!("CARGO_PKG_VERSION"));
        let default_headers = crate::usage::http::defaults(user_agent, &headers);
        let http = reqwest::Client::builder()
            .connect_timeout(ep.connect_timeout)
            .user_agent(user_agent)
            .default_headers(headers)
            // A redirect to another host would drop the token or, worse, be
            // followed by a GET; a fallback should be pointed at the right URL.
            .redirect(reqwest::redirect::Policy::none())
            // Idle connections beyond what can be in flight at once are never reused.
            .pool_max_idle_per_host(ep.max_concurrency)
            // Must be exactly the rustls 0.23 ClientConfig reqwest links, or
            // build() fails with "unknown TLS backend".
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| config(format!("cannot build the HTTP client: {}", tls::error_chain(&e))))?;

        let url_text = infer_url.to_string();
        Ok(CloudClient {
            http,
            infer_url,
            url_text,
            timeout: ep.timeout,
            retries: ep.retries,
            backoff: ep.backoff,
            slots: Semaphore::new(ep.max_concurrency),
            max_concurrency: ep.max_concurrency,
            wire: Arc::default(),
            default_headers,
        })
    }

    /// Counts this client's traffic in `wire` (the cloud's bytes per destination).
    pub fn counting_in(mut self, wire: Arc<crate::usage::Counter>) -> CloudClient {
        self.wire = wire;
        self
    }

    /// The full infer URL, e.g. `https://host/v2/models/resnet/versions/2/infer`.
    pub fn infer_url(&self) -> &str {
        &self.url_text
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrency - self.slots.available_permits()
    }

    /// Runs one inference. `id` is echoed by the server (empty: none sent);
    /// `outputs` names the outputs wanted (empty: all).
    ///
    /// Retry rule: another attempt is made, up to `retries` times and within
    /// the total `timeout`, only when the request surely did not reach the
    /// model: the connection could not be set up (refused, DNS, connect
    /// timeout, reset during the handshake), or the server answered 503 or
    /// 429 *with* a `Retry-After` (it refused the work and says when to come
    /// back; the pause is then at least that long). Never after a timeout, a
    /// broken connection, a 500 or a 503 without Retry-After (proxies send
    /// those when the upstream died mid-request): the inference may have run
    /// and would be paid twice. TLS certificate errors are not retried either,
    /// they do not fix themselves in a second.
    pub async fn infer(
        &self,
        id: &str,
        inputs: &[Tensor],
        outputs: &[String],
    ) -> Result<CloudReply, CloudError> {
        let started = Instant::now();
        // try_acquire, never acquire: a fallback that queues turns a slow
        // cloud into a slow device.
        let _slot = self
            .slots
            .try_acquire()
            .map_err(|_| CloudError::Busy { url: self.url_text.clone(), limit: self.max_concurrency })?;
        let body = encode_request(id, inputs, outputs)
            .map_err(|reason| CloudError::Input { url: self.url_text.clone(), reason })?;

        // Built once: the body is kept as shared bytes, so a retry re-sends it
        // without copying a possibly large input tensor.
        let request =
            self.http.post(self.infer_url.clone()).body(body).build().map_err(|e| CloudError::Input {
                url: self.url_text.clone(),
                reason: format!("cannot build the request: {}", tls::error_chain(&e)),
            })?;

        let deadline = started + self.timeout;
        let mut attempts = 0u32;
        let result =
            tokio::time::timeout_at(deadline, self.attempts(&request, id, outputs, deadline, &mut attempts))
                .await
                .unwrap_or_else(|_| {
                    Err(CloudError::Timeout { url: self.url_text.clone(), after: self.timeout, attempts })
                });
        let (model_version, outputs) = result?;
        Ok(CloudReply { model_version, outputs, latency: started.elapsed(), attempts })
    }

    async fn attempts(
        &self,
        request: &reqwest::Request,
        id: &str,
        wanted: &[String],
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<(Option<String>, Vec<Tensor>), CloudError> {
        loop {
            *attempts += 1;
            // A request with an in-memory body always clones.
            let Some(request) = request.try_clone() else {
                return Err(CloudError::Input {
                    url: self.url_text.clone(),
                    reason: "request body cannot be re-sent".into(),
                });
            };
            let failed = match self.attempt(request, id, wanted).await {
                Ok(answer) => return Ok(answer),
                Err(failed) => failed,
            };
            let error = with_attempts(failed.error, *attempts);
            let Some(at_least) = failed.retry_after else { return Err(error) };
            if *attempts > self.retries {
                return Err(error);
            }
            let pause = self.backoff_pause(*attempts).max(at_least);
            if Instant::now() + pause >= deadline {
                // Waiting would end in a Timeout that hides the real cause.
                return Err(error);
            }
            tracing::debug!(url = %self.url_text, attempt = *attempts, ?pause, error = %error, "retrying cloud request");
            tokio::time::sleep(pause).await;
        }
    }

    /// `backoff × 2^(n-1)`, capped, with "equal jitter": at least half of it so
    /// retries stay spaced, the rest random so a fleet does not retry in step.
    fn backoff_pause(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
        let full = self.backoff.saturating_mul(factor).min(MAX_BACKOFF);
        let half = full / 2;
        let extra = rand::rng().random_range(0..=half.as_micros().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_micros(extra)
    }

    async fn attempt(
        &self,
        request: reqwest::Request,
        id: &str,
        wanted: &[String],
    ) -> Result<(Option<String>, Vec<Tensor>), Failed> {
        let url = &self.url_text;
        self.wire.add_sent(crate::usage::http::request(&request, self.default_headers));
        let mut response = match self.http.execute(request).await {
            Ok(r) => r,
            Err(e) => return Err(classify_send_error(e, url)),
        };
        self.wire.add_received(crate::usage::http::response_head(&response));

        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let text = read_error_body(&mut response).await;
            self.wire.add_received(text.len() as u64);
            let error = CloudError::Status {
                url: url.clone(),
                status: status.as_u16(),
                message: error_message(&text, status),
                attempts: 0,
            };
            let refused = matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS);
            return Err(Failed { error, retry_after: retry_after.filter(|_| refused) });
        }

        if response.content_length().is_some_and(|len| len > MAX_RESPONSE_BYTES as u64) {
            return Err(Failed::fatal(CloudError::TooLarge { url: url.clone(), limit: MAX_RESPONSE_BYTES }));
        }
        let body = read_capped(&mut response, MAX_RESPONSE_BYTES).await.map_err(|e| {
            Failed::fatal(match e {
                ReadError::TooLarge => CloudError::TooLarge { url: url.clone(), limit: MAX_RESPONSE_BYTES },
                ReadError::Broken(reason) => CloudError::Interrupted { url: url.clone(), reason },
            })
        })?;
        self.wire.add_received(body.len() as u64);
        parse_reply(&body, id, wanted, url).map_err(Failed::fatal)
    }
}

fn with_attempts(error: CloudError, n: u32) -> CloudError {
    match error {
        CloudError::Connect { url, reason, .. } => CloudError::Connect { url, reason, attempts: n },
        CloudError::Status { url, status, message, .. } => {
            CloudError::Status { url, status, message, attempts: n }
        }
        CloudError::Timeout { url, after, .. } => CloudError::Timeout { url, after, attempts: n },
        other => other,
    }
}

/// `{base}/v2/models/{model}[/versions/{v}]/infer`, keeping any path prefix of
/// the base and percent-encoding the names.
fn infer_url(base: &str, model: &str, version: Option<&str>) -> Result<Url, String> {
    let mut url = Url::parse(base.trim()).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL would end up in logs; use bearer_token_file".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a query or fragment is not allowed in the base url".to_owned());
    }
    {
        let mut segments = url.path_segments_mut().map_err(|()| "the url cannot have a path".to_owned())?;
        segments.pop_if_empty().extend(["v2", "models", model]);
        if let Some(v) = version {
            segments.extend(["versions", v]);
        }
        segments.push("infer");
    }
    Ok(url)
}

fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read bearer_token_file {}: {e}; check the path and that the agent may read it",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("bearer_token_file {} is empty; put the token in it", path.display()));
    }
    Ok(token.to_owned())
}

fn tls_config(ep: &Endpoint, https: bool) -> Result<rustls::ClientConfig, String> {
    let roots = match &ep.ca_file {
        // Only the given CA: a private cloud endpoint should not be impersonable by
        // any public CA.
        Some(path) => tls::ca_roots(std::slice::from_ref(path), "ca_file"),
        // Plain http: loading the system store would only cost time.
        None if !https => Ok(rustls::RootCertStore::empty()),
        None => tls::system_roots("ca_file"),
    }
    .map_err(|e| e.to_string())?;
    let identity = match (&ep.client_cert, &ep.client_key) {
        (Some(cert), Some(key)) => {
            Some(tls::ClientIdentity { cert, cert_what: "client_cert", key, key_what: "client_key" })
        }
        (None, None) => None,
        _ => return Err("mutual TLS needs both client_cert and client_key; set both or neither".to_owned()),
    };
    let mut config = tls::client_config(roots, identity).map_err(|e| e.to_string())?;
    // reqwest uses a preconfigured config as is and adds no ALPN; without it
    // an HTTP/2 server would be spoken to in HTTP/1.1 only.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Sorts a failed send into connect (retryable), TLS or broken-after-sending.
fn classify_send_error(e: reqwest::Error, url: &str) -> Failed {
    // The URL is already in our message; reqwest's copy would repeat it.
    let e = e.without_url();
    let reason = tls::error_chain(&e);
    if tls::find_rustls_error(&e).is_some() {
        return Failed::fatal(CloudError::Tls { url: url.to_owned(), reason });
    }
    if e.is_connect() {
        // The connector failed (TCP, DNS, connect timeout, handshake I/O): no
        // request bytes reached an HTTP server.
        return Failed {
            error: CloudError::Connect { url: url.to_owned(), attempts: 0, reason },
            retry_after: Some(Duration::ZERO),
        };
    }
    Failed::fatal(CloudError::Interrupted { url: url.to_owned(), reason })
}

/// Delta-seconds form only; the HTTP-date form needs a date parser and a
/// trustworthy device clock, neither of which is worth it here.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

enum ReadError {
    TooLarge,
    Broken(String),
}

/// Reads the body chunk by chunk so that an endless or huge answer is cut at
/// `limit` instead of being buffered whole.
async fn read_capped(response: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    let hint = response.content_length().map_or(0, |n| n.min(limit as u64) as usize);
    let mut body = Vec::with_capacity(hint);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(ReadError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(ReadError::Broken(tls::error_chain(&e.without_url()))),
        }
    }
}

/// The start of an error body; a broken or oversized one still yields what arrived.
async fn read_error_body(response: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BYTES {
            break;
        }
    }
    body
}

/// OIP errors are `{"error": "..."}`; anything else is shown as text, cut and
/// stripped of control characters so a server cannot forge log lines.
fn error_message(body: &[u8], status: StatusCode) -> String {
    #[derive(Deserialize)]
    struct OipError {
        error: String,
    }
    let text = match serde_json::from_slice::<OipError>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let clean: String =
        text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_MESSAGE_CHARS).collect();
    if clean.is_empty() { status.canonical_reason().unwrap_or("no message").to_owned() } else { clean }
}

// ---------------------------------------------------------------------------
// Wire format

/// How values of a datatype travel in JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Float,
    /// Inclusive range of the integer type.
    Int {
        min: f64,
        max: f64,
    },
    Bool,
}

fn kind_of(datatype: &str) -> Option<Kind> {
    let int = |min: f64, max: f64| Some(Kind::Int { min, max });
    match datatype {
        "FP32" | "FP64" | "FP16" | "BF16" => Some(Kind::Float),
        "INT8" => int(i8::MIN.into(), i8::MAX.into()),
        "INT16" => int(i16::MIN.into(), i16::MAX.into()),
        "INT32" => int(i32::MIN.into(), i32::MAX.into()),
        "INT64" => int(i64::MIN as f64, i64::MAX as f64),
        "UINT8" => int(0.0, u8::MAX.into()),
        "UINT16" => int(0.0, u16::MAX.into()),
        "UINT32" => int(0.0, u32::MAX.into()),
        "UINT64" => int(0.0, u64::MAX as f64),
        "BOOL" => Some(Kind::Bool),
        _ => None,
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    inputs: Vec<WireInput<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<WireOutputName<'a>>,
}

#[derive(Serialize)]
struct WireInput<'a> {
    name: &'a str,
    shape: &'a [usize],
    datatype: &'a str,
    data: InputData<'a>,
}

#[derive(Serialize)]
struct WireOutputName<'a> {
    name: &'a str,
}

/// Input values written as the datatype expects: servers such as Triton
/// reject `3.0` for an INT64 input.
struct InputData<'a> {
    kind: Kind,
    data: &'a [f32],
}

impl Serialize for InputData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.kind {
            Kind::Float => s.collect_seq(self.data),
            // Values were checked to be integral and in range by encode_request.
            Kind::Int { min, .. } if min < 0.0 => s.collect_seq(self.data.iter().map(|&v| v as i64)),
            Kind::Int { .. } => s.collect_seq(self.data.iter().map(|&v| v as u64)),
            Kind::Bool => s.collect_seq(self.data.iter().map(|&v| v != 0.0)),
        }
    }
}

fn encode_request(id: &str, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<u8>, String> {
    if inputs.is_empty() {
        return Err("no input tensors".to_owned());
    }
    let mut wire = Vec::with_capacity(inputs.len());
    for (i, t) in inputs.iter().enumerate() {
        if t.name.is_empty() {
            return Err(format!("input #{i} has no name"));
        }
        if inputs[..i].iter().any(|o| o.name == t.name) {
            return Err(format!("input `{}` is given twice", t.name));
        }
        let kind = kind_of(&t.datatype)
            .ok_or_else(|| format!("input `{}` has unsupported datatype `{}`", t.name, t.datatype))?;
        let expected = element_count(&t.shape)
            .ok_or_else(|| format!("input `{}`: shape {:?} overflows", t.name, t.shape))?;
        if expected != t.data.len() {
            return Err(format!(
                "input `{}`: shape {:?} needs {expected} values, {} given",
                t.name,
                t.shape,
                t.data.len()
            ));
        }
        if let Some((at, v)) = t.data.iter().enumerate().find(|(_, v)| !fits(**v, kind)) {
            return Err(format!("input `{}`: value {v} at index {at} is not a valid {}", t.name, t.datatype));
        }
        wire.push(WireInput {
            name: &t.name,
            shape: &t.shape,
            datatype: &t.datatype,
            data: InputData { kind, data: &t.data },
        });
    }
    let request = WireRequest {
        id,
        inputs: wire,
        outputs: outputs.iter().map(|name| WireOutputName { name }).collect(),
    };
    serde_json::to_vec(&request).map_err(|e| format!("cannot encode the request: {e}"))
}

fn fits(v: f32, kind: Kind) -> bool {
    match kind {
        Kind::Float => v.is_finite(),
        Kind::Int { min, max } => v.is_finite() && v.fract() == 0.0 && (min..=max).contains(&f64::from(v)),
        Kind::Bool => v == 0.0 || v == 1.0,
    }
}

fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

#[derive(Deserialize)]
struct WireReply {
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    id: Option<String>,
    outputs: Vec<WireTensor>,
}

#[derive(Deserialize)]
struct WireTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: WireData,
}

/// `data` flattened while parsing (OIP allows nested arrays in row-major
/// order), with what kinds of JSON values were seen, checked against the
/// datatype afterwards because `datatype` may come after `data` in the object.
#[derive(Default)]
struct WireData {
    values: Vec<f32>,
    bools: usize,
    fractional: usize,
    negative: usize,
    /// Numbers outside what the element type can hold once converted.
    first_out_of_range: Option<f64>,
}

impl<'de> Deserialize<'de> for WireData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = WireData::default();
        d.deserialize_seq(Flatten(&mut data))?;
        Ok(data)
    }
}

/// Visits one array level, recursing into nested arrays. Depth is bounded by
/// serde_json's recursion limit (128).
struct Flatten<'a>(&'a mut WireData);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers or booleans (possibly nested)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.bools += 1;
        self.0.values.push(if v { 1.0 } else { 0.0 });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        if v < 0 {
            self.0.negative += 1;
        }
        self.0.values.push(v as f32);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.values.push(v as f32);
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let x = v as f32;
        if !x.is_finite() && self.0.first_out_of_range.is_none() {
            self.0.first_out_of_range = Some(v);
        }
        if v.fract() != 0.0 {
            self.0.fractional += 1;
        }
        if v < 0.0 {
            self.0.negative += 1;
        }
        self.0.values.push(x);
        Ok(())
    }
}

fn parse_reply(
    body: &[u8],
    id: &str,
    wanted: &[String],
    url: &str,
) -> Result<(Option<String>, Vec<Tensor>), CloudError> {
    let malformed = |reason: String| CloudError::Malformed { url: url.to_owned(), reason };
    let shape_error = |reason: String| CloudError::Shape { url: url.to_owned(), reason };

    let reply: WireReply = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    if let Some(got) = reply.id.as_deref().filter(|got| !id.is_empty() && !got.is_empty() && *got != id) {
        // A proxy or server mixing up answers: acting on it would attach
        // another request's result to this one.
        return Err(malformed(format!("answer is for request id `{got}`, not `{id}`")));
    }
    if reply.outputs.is_empty() {
        return Err(malformed("no outputs".to_owned()));
    }
    if let Some(name) = &reply.model_name {
        tracing::trace!(model = %name, "cloud answer");
    }

    let mut outputs: Vec<Tensor> = Vec::with_capacity(reply.outputs.len());
    for t in reply.outputs {
        if t.name.is_empty() {
            return Err(malformed("an output has an empty name".to_owned()));
        }
        if outputs.iter().any(|o| o.name == t.name) {
            return Err(malformed(format!("output `{}` appears twice", t.name)));
        }
        let kind = match kind_of(&t.datatype) {
            Some(kind) => kind,
            None if t.datatype == "BYTES" => {
                return Err(malformed(format!(
                    "output `{}` is BYTES (strings), which the device cannot use; request numeric outputs only",
                    t.name
                )));
            }
            None => {
                return Err(malformed(format!("output `{}` has unknown datatype `{}`", t.name, t.datatype)));
            }
        };
        let shape =
            t.shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<usize>, _>>().map_err(|_| {
                shape_error(format!("output `{}` has a negative dimension in {:?}", t.name, t.shape))
            })?;
        let expected = element_count(&shape)
            .ok_or_else(|| shape_error(format!("output `{}`: shape {:?} overflows", t.name, t.shape)))?;
        let data = t.data;
        if data.values.len() != expected {
            return Err(shape_error(format!(
                "output `{}`: shape {:?} needs {expected} values, {} sent",
                t.name,
                t.shape,
                data.values.len()
            )));
        }
        check_kind(&data, kind)
            .map_err(|why| malformed(format!("output `{}` ({}): {why}", t.name, t.datatype)))?;
        outputs.push(Tensor { name: t.name, shape, datatype: t.datatype, data: data.values });
    }
    if let Some(missing) = wanted.iter().find(|w| !outputs.iter().any(|o| &o.name == *w)) {
        return Err(malformed(format!("requested output `{missing}` is missing")));
    }
    Ok((reply.model_version, outputs))
}

fn check_kind(data: &WireData, kind: Kind) -> Result<(), String> {
    if let Some(v) = data.first_out_of_range {
        return Err(format!("value {v} does not fit in f32"));
    }
    let n = data.values.len();
    match kind {
        Kind::Bool if data.bools != n => Err("numbers where booleans are expected".to_owned()),
        Kind::Bool => Ok(()),
        _ if data.bools > 0 => Err("booleans where numbers are expected".to_owned()),
        Kind::Int { .. } if data.fractional > 0 => Err("fractional values in an integer tensor".to_owned()),
        Kind::Int { min, .. } if min >= 0.0 && data.negative > 0 => {
            Err("negative values in an unsigned tensor".to_owned())
        }
        Kind::Int { .. } | Kind::Float => {
            // Every number was finite as f64 (JSON has no NaN or infinity) and
            // fits f32 (checked above); re-check so the guarantee does not
            // depend on the parser.
            match data.values.iter().position(|v| !v.is_finite()) {
                Some(at) => Err(format!("non-finite value at index {at}")),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://test/v2/models/m/infer";

    fn parse(json: &str) -> Result<(Option<String>, Vec<Tensor>), CloudError> {
        parse_reply(json.as_bytes(), "", &[], URL)
    }

    fn kind(json: &str) -> &'static str {
        parse(json).err().map_or("ok", |e| e.kind())
    }

    #[test]
    fn infer_url_is_built_with_prefix_version_and_encoding() {
        let u = infer_url("https://h.example/", "resnet", None).unwrap();
        assert_eq!(u.as_str(), "https://h.example/v2/models/resnet/infer");
        let u = infer_url("http://h:8000/serving", "a b/c", Some("2")).unwrap();
        assert_eq!(u.as_str(), "http://h:8000/serving/v2/models/a%20b%2Fc/versions/2/infer");
        assert!(infer_url("ftp://h", "m", None).is_err());
        assert!(infer_url("not a url", "m", None).is_err());
        assert!(infer_url("https://user:pw@h", "m", None).is_err());
        assert!(infer_url("https://h/?x=1", "m", None).is_err());
    }

    #[test]
    fn good_reply_parses_with_conversions_and_nesting() {
        let (version, out) = parse(
            r#"{"model_name":"m","model_version":"3","outputs":[
                {"name":"p","shape":[1,3],"datatype":"FP32","data":[0.1,0.7,0.2]},
                {"name":"n","shape":[2,2],"datatype":"INT64","data":[[1,-2],[3,4]]},
                {"name":"d","shape":[1],"datatype":"FP64","data":[1e-300]},
                {"name":"b","shape":[2],"datatype":"BOOL","data":[true,false]},
                {"name":"e","shape":[0,4],"datatype":"FP32","data":[]}
            ],"parameters":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(version.as_deref(), Some("3"));
        assert_eq!(out[0].data, vec![0.1, 0.7, 0.2]);
        assert_eq!(out[1].data, vec![1.0, -2.0, 3.0, 4.0]);
        assert_eq!(out[1].datatype, "INT64");
        assert_eq!(out[2].data, vec![0.0]);
        assert_eq!(out[3].data, vec![1.0, 0.0]);
        assert!(out[4].data.is_empty());
    }

    #[test]
    fn bad_replies_are_rejected_with_the_right_kind() {
        assert_eq!(kind("{not json"), "malformed");
        assert_eq!(kind(r#"{"outputs":[]}"#), "malformed");
        assert_eq!(kind(r#"{"model_name":"m"}"#), "malformed");
        assert_eq!(kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"FP32"}]}"#), "malformed");
        assert_eq!(kind(r#"{"outputs":[{"name":"p","shape":[1],"data":[1]}]}"#), "malformed");
        assert_eq!(kind(r#"{"outputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}"#), "malformed");
        assert_eq!(kind(r#"{"outputs":[{"name":"p","datatype":"FP32","data":[1]}]}"#), "malformed");
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"FP32","data":["1"]}]}"#),
            "malformed"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"FP32","data":[null]}]}"#),
            "malformed"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"FP64","data":[1e300]}]}"#),
            "malformed"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"FP64","data":[1e999]}]}"#),
            "malformed"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"INT32","data":[1.5]}]}"#),
            "malformed"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"UINT8","data":[-1]}]}"#),
            "malformed"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"BOOL","data":[1]}]}"#),
            "malformed"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"FP32","data":[true]}]}"#),
            "malformed"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"BYTES","data":["a"]}]}"#),
            "malformed"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"FP8","data":[1]}]}"#),
            "malformed"
        );
        assert_eq!(kind(r#"{"outputs":[{"name":"p","shape":[1],"datatype":"FP32","data":1}]}"#), "malformed");
        let twice = r#"{"outputs":[{"name":"p","shape":[1],"datatype":"FP32","data":[1]},
                                   {"name":"p","shape":[1],"datatype":"FP32","data":[1]}]}"#;
        assert_eq!(kind(twice), "malformed");
    }

    #[test]
    fn shape_mismatches_are_shape_errors() {
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5]}]}"#),
            "shape"
        );
        assert_eq!(
            kind(r#"{"outputs":[{"name":"p","shape":[2],"datatype":"FP32","data":[[1,2],[3]]}]}"#),
            "shape"
        );
        assert_eq!(kind(r#"{"outputs":[{"name":"p","shape":[-1],"datatype":"FP32","data":[1]}]}"#), "shape");
        let huge =
            r#"{"outputs":[{"name":"p","shape":[4294967296,4294967296,16],"datatype":"FP32","data":[1]}]}"#;
        assert_eq!(kind(huge), "shape");
    }

    #[test]
    fn id_and_requested_outputs_are_checked() {
        let body = br#"{"id":"other","outputs":[{"name":"p","shape":[1],"datatype":"FP32","data":[1]}]}"#;
        assert_eq!(parse_reply(body, "mine", &[], URL).unwrap_err().kind(), "malformed");
        assert!(parse_reply(body, "", &[], URL).is_ok());
        let body = br#"{"id":"mine","outputs":[{"name":"p","shape":[1],"datatype":"FP32","data":[1]}]}"#;
        assert!(parse_reply(body, "mine", &["p".to_owned()], URL).is_ok());
        let err = parse_reply(body, "mine", &["q".to_owned()], URL).unwrap_err();
        assert!(err.to_string().contains("`q` is missing"), "{err}");
    }

    #[test]
    fn requests_are_encoded_per_datatype_and_validated() {
        let inputs = [
            Tensor::fp32("x", vec![1, 2], vec![0.5, -1.0]),
            Tensor { name: "ids".into(), shape: vec![2], datatype: "INT64".into(), data: vec![3.0, -4.0] },
            Tensor { name: "mask".into(), shape: vec![2], datatype: "BOOL".into(), data: vec![1.0, 0.0] },
        ];
        let body = encode_request("r1", &inputs, &["out".to_owned()]).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"r1","inputs":[
                {"name":"x","shape":[1,2],"datatype":"FP32","data":[0.5,-1.0]},
                {"name":"ids","shape":[2],"datatype":"INT64","data":[3,-4]},
                {"name":"mask","shape":[2],"datatype":"BOOL","data":[true,false]}
            ],"outputs":[{"name":"out"}]})
        );
        let body = encode_request("", &inputs[..1], &[]).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json.get("id").is_none() && json.get("outputs").is_none());

        assert!(encode_request("", &[], &[]).is_err());
        assert!(encode_request("", &[Tensor::fp32("x", vec![3], vec![1.0])], &[]).is_err());
        assert!(encode_request("", &[Tensor::fp32("x", vec![1], vec![f32::NAN])], &[]).is_err());
        let bad_int =
            Tensor { name: "i".into(), shape: vec![1], datatype: "UINT8".into(), data: vec![256.0] };
        assert!(encode_request("", &[bad_int], &[]).is_err());
        let bad_type = Tensor { name: "s".into(), shape: vec![1], datatype: "BYTES".into(), data: vec![1.0] };
        assert!(encode_request("", &[bad_type], &[]).is_err());
        let x = Tensor::fp32("x", vec![1], vec![1.0]);
        assert!(encode_request("", &[x.clone(), x], &[]).is_err());
    }

    #[test]
    fn error_messages_are_extracted_and_sanitised() {
        assert_eq!(
            error_message(br#"{"error":"model not ready"}"#, StatusCode::SERVICE_UNAVAILABLE),
            "model not ready"
        );
        assert_eq!(error_message(b"line1\nline2", StatusCode::BAD_GATEWAY), "line1 line2");
        assert_eq!(error_message(b"", StatusCode::BAD_GATEWAY), "Bad Gateway");
        assert_eq!(error_message(&[b'x'; 5000], StatusCode::BAD_GATEWAY).len(), MAX_MESSAGE_CHARS);
    }

    #[test]
    fn failure_classification() {
        let status =
            |s| CloudError::Status { url: URL.into(), status: s, message: String::new(), attempts: 1 };
        assert!(status(500).counts_as_failure());
        assert!(status(503).counts_as_failure());
        assert!(status(429).counts_as_failure());
        assert!(status(408).counts_as_failure());
        assert!(!status(400).counts_as_failure());
        assert!(!status(401).counts_as_failure());
        assert!(!status(404).counts_as_failure());
        assert!(!CloudError::Busy { url: URL.into(), limit: 1 }.counts_as_failure());
        assert!(
            CloudError::Timeout { url: URL.into(), after: Duration::ZERO, attempts: 1 }.counts_as_failure()
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let client = CloudClient::new(Endpoint {
            backoff: Duration::from_millis(100),
            ..Endpoint::new("http://h", "m")
        })
        .unwrap();
        for _ in 0..100 {
            let p1 = client.backoff_pause(1);
            assert!(p1 >= Duration::from_millis(50) && p1 <= Duration::from_millis(100), "{p1:?}");
            let p3 = client.backoff_pause(3);
            assert!(p3 >= Duration::from_millis(200) && p3 <= Duration::from_millis(400), "{p3:?}");
            assert!(client.backoff_pause(40) <= MAX_BACKOFF);
        }
    }
}
