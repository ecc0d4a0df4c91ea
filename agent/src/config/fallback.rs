//! `[fallback]`: inference in the cloud (Open Inference Protocol v2) when the device
//! cannot, or should not, infer locally.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What to do when a request should go to the cloud but the cloud cannot take it
/// (unreachable, breaker open, budget spent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WhenUnavailable {
    /// Answer locally if the model is here (the result says `degraded`), else reject.
    #[default]
    Local,
    /// Reject the request with the reason.
    Reject,
}

/// `[fallback]`. Present means on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSection {
    /// Cloud requests allowed per hour and per day, over all models (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_per_day: Option<u64>,
    /// Consecutive failures that open an endpoint's circuit breaker...
    #[serde(default = "default_failures")]
    pub failures_to_open: u32,
    /// ...for this long, before a probe request may try again.
    #[serde(default = "default_open_s")]
    pub open_s: u64,
    #[serde(default)]
    pub when_unavailable: WhenUnavailable,
    /// A `resource` or `queue` route clears only after its measurement has stayed
    /// clear of the limit (by a margin) this long: no flapping at the edge.
    #[serde(default = "default_hold_s")]
    pub hold_s: u64,
    #[serde(default)]
    pub resource: ResourceSection,
    #[serde(default, rename = "model")]
    pub models: Vec<CloudModelSection>,
}

/// `[fallback.resource]`: device limits beyond which models with `resource = true` go
/// to the cloud. Unset limits are not checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSection {
    /// Memory available (the lower of the system's and the cgroup's), in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory_available_mb: Option<u64>,
    /// The hottest thermal sensor, in degrees Celsius.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_temperature_c: Option<f32>,
    /// One-minute load average divided by the number of CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_load_per_cpu: Option<f64>,
    /// How often the device is sampled (never per request).
    #[serde(default = "default_sample_ms")]
    pub sample_ms: u64,
}

impl Default for ResourceSection {
    fn default() -> Self {
        ResourceSection {
            min_memory_available_mb: None,
            max_temperature_c: None,
            max_load_per_cpu: None,
            sample_ms: default_sample_ms(),
        }
    }
}

impl ResourceSection {
    pub fn any(&self) -> bool {
        self.min_memory_available_mb.is_some()
            || self.max_temperature_c.is_some()
            || self.max_load_per_cpu.is_some()
    }
}

fn default_hold_s() -> u64 {
    10
}
fn default_sample_ms() -> u64 {
    2000
}

impl Default for FallbackSection {
    /// No endpoints: every request runs locally (what an agent without `[fallback]` has).
    fn default() -> Self {
        FallbackSection {
            budget_per_hour: None,
            budget_per_day: None,
            failures_to_open: default_failures(),
            open_s: default_open_s(),
            when_unavailable: WhenUnavailable::default(),
            hold_s: default_hold_s(),
            resource: ResourceSection::default(),
            models: Vec::new(),
        }
    }
}

fn default_failures() -> u32 {
    5
}
fn default_open_s() -> u64 {
    30
}

/// `[[fallback.model]]`: where one model can be run in the cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudModelSection {
    /// The model's name on this device (results, sources).
    pub model: String,
    /// The OIP v2 server's base URL (`/v2/models/...` is appended).
    pub url: String,
    /// The model's name on the server; default: the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_version: Option<String>,
    /// A model directory whose `model.toml` says how to pre- and post-process (the
    /// model file need not be there): used when the model is not installed locally.
    /// Default: the local model's own spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PathBuf>,
    /// Send every request to the cloud (audits, A/B comparisons).
    #[serde(default)]
    pub force: bool,
    /// Go to the cloud when the local queue's expected wait would miss the deadline.
    #[serde(default = "yes")]
    pub queue: bool,
    /// Go to the cloud while the device is beyond a `[fallback.resource]` limit.
    #[serde(default = "yes")]
    pub resource: bool,
    /// Cascade: a local answer whose confidence (the post-processed `score`: the top
    /// class's probability, or the single score) is below this is asked again in the
    /// cloud, and the cloud's answer is returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_confidence: Option<f32>,
    /// Payloads larger than the local spec's `limits.max_payload_bytes`, up to this
    /// size, go to the cloud instead of being refused (unset: refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<usize>,
    /// A file holding a bearer token (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate authorities for an https server; default: the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Whole request, retries included.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Requests in flight to this endpoint; more are answered as unavailable at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Retries of requests that surely did not reach the server (connection refused).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn yes() -> bool {
    true
}
fn default_connect_timeout() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    5000
}
fn default_concurrency() -> usize {
    8
}
fn default_retries() -> u32 {
    2
}

/// Checks `[fallback]` and resolves its paths.
pub fn validate(
    f: &FallbackSection,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) -> FallbackSection {
    let mut out = f.clone();
    if f.failures_to_open == 0 {
        problem("fallback.failures_to_open", "must be at least 1".into());
    }
    if !(1..=86_400).contains(&f.open_s) {
        problem("fallback.open_s", format!("{} is out of range; use 1 to 86400", f.open_s));
    }
    if !(1..=3600).contains(&f.hold_s) {
        problem("fallback.hold_s", format!("{} is out of range; use 1 to 3600", f.hold_s));
    }
    if !(100..=600_000).contains(&f.resource.sample_ms) {
        problem(
            "fallback.resource.sample_ms",
            format!("{} is out of range; use 100 to 600000", f.resource.sample_ms),
        );
    }
    if let Some(t) = f.resource.max_temperature_c
        && !(0.0..=150.0).contains(&t)
    {
        problem("fallback.resource.max_temperature_c", format!("{t} is out of range; use 0 to 150"));
    }
    if let Some(l) = f.resource.max_load_per_cpu
        && !(l > 0.0 && l <= 1000.0)
    {
        problem(
            "fallback.resource.max_load_per_cpu",
            format!("{l} is out of range; use more than 0, up to 1000"),
        );
    }
    for (i, m) in out.models.iter_mut().enumerate() {
        let key = |k: &str| format!("fallback.model.{i}.{k}");
        if !super::is_valid_id(&m.model) {
            problem(&key("model"), format!("`{}` is not a model name (A-Z a-z 0-9 . _ -)", m.model));
        }
        if !(m.url.starts_with("http://") || m.url.starts_with("https://")) {
            problem(
                &key("url"),
                format!("`{}` is not an http:// or https:// URL of an OIP v2 server", m.url),
            );
        }
        for (name, p) in [
            ("spec", &mut m.spec),
            ("token_file", &mut m.token_file),
            ("ca_file", &mut m.ca_file),
            ("cert_file", &mut m.cert_file),
            ("key_file", &mut m.key_file),
        ] {
            if let Some(path) = p.as_mut() {
                *path = resolve(path);
                let ok = if name == "spec" { path.join("model.toml").is_file() } else { path.is_file() };
                if !ok {
                    problem(&key(name), format!("{} is not there", path.display()));
                }
            }
        }
        if let Some(c) = m.min_confidence
            && !(c > 0.0 && c <= 1.0)
        {
            problem(&key("min_confidence"), format!("{c} is out of range; use more than 0, up to 1"));
        }
        if m.max_payload_bytes == Some(0) {
            problem(&key("max_payload_bytes"), "must be more than 0".into());
        }
        if m.cert_file.is_some() != m.key_file.is_some() {
            problem(&key("cert_file"), "mutual TLS needs both cert_file and key_file".into());
        }
        for (k, v, lo, hi) in [
            ("connect_timeout_ms", m.connect_timeout_ms, 10, 600_000),
            ("timeout_ms", m.timeout_ms, 10, 3_600_000),
            ("max_concurrency", m.max_concurrency as u64, 1, 10_000),
            ("retries", u64::from(m.retries), 0, 10),
        ] {
            if !(lo..=hi).contains(&v) {
                problem(&key(k), format!("{v} is out of range; use {lo} to {hi}"));
            }
        }
    }
    let mut names: Vec<&str> = f.models.iter().map(|m| m.model.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        problem("fallback.model", "a model appears twice; give each model one cloud endpoint".into());
    }
    out
}
