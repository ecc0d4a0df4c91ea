//! `[ota]`: signed model updates from a registry (a TUF repository).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ota::probation::Limits;

/// `[ota]`. Present means on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaSection {
    /// The registry's base URL: `metadata/` and `targets/` are under it.
    pub url: String,
    /// PEM file of the certificate authorities for an https registry; default: the
    /// system's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Release channel: target names start with it (`stable/vibration/3.tar`).
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Models this device takes from the registry.
    pub models: Vec<String>,
    /// Device groups that targets may be limited to; default: `mqtt.groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Versions pinned per model: taken whatever the rollout, and nothing else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pin: BTreeMap<String, String>,
    /// Seconds between checks (each waits ± `jitter` of this at random).
    #[serde(default = "default_interval")]
    pub interval_s: u64,
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// The registry's root metadata shipped with the device (trust on first use is
    /// never done). Relative to the config file.
    #[serde(default = "default_root")]
    pub trusted_root: PathBuf,
    /// Memory (MiB) and time (s) a new version's self-test may take.
    #[serde(default = "default_selftest_memory")]
    pub selftest_memory_mb: u64,
    #[serde(default = "default_selftest_timeout")]
    pub selftest_timeout_s: u64,
    /// A download slower than this (bytes/s, over 10 s) is cut: slow-retrieval attack.
    #[serde(default = "default_min_rate")]
    pub min_rate_bytes_s: u64,
    /// Longest time one download may take.
    #[serde(default = "default_download_timeout")]
    pub download_timeout_s: u64,
    /// Largest package accepted, whatever the metadata says.
    #[serde(default = "default_max_package")]
    pub max_package_bytes: u64,
    #[serde(default)]
    pub probation: Limits,
}

fn default_channel() -> String {
    "stable".into()
}
fn default_interval() -> u64 {
    600
}
fn default_jitter() -> f64 {
    0.1
}
fn default_root() -> PathBuf {
    PathBuf::from("trust/root.json")
}
fn default_selftest_memory() -> u64 {
    1024
}
fn default_selftest_timeout() -> u64 {
    120
}
fn default_min_rate() -> u64 {
    1024
}
fn default_download_timeout() -> u64 {
    1800
}
fn default_max_package() -> u64 {
    1 << 30
}

/// Checks `[ota]` and resolves its paths.
pub fn validate(
    o: &OtaSection,
    resolve: &dyn Fn(&Path) -> PathBuf,
    mqtt_groups: &[String],
    problem: &mut dyn FnMut(&str, String),
) -> OtaSection {
    let mut out = o.clone();
    if !(o.url.starts_with("http://") || o.url.starts_with("https://")) {
        problem("ota.url", format!("`{}` is not an http:// or https:// URL of the registry", o.url));
    }
    if !super::is_valid_id(&o.channel) {
        problem("ota.channel", format!("`{}` may only use A-Z a-z 0-9 . _ -", o.channel));
    }
    if o.models.is_empty() {
        problem("ota.models", "no models: name the models this device takes from the registry".into());
    }
    for m in &o.models {
        if !super::is_valid_id(m) {
            problem("ota.models", format!("`{m}` is not a model name (A-Z a-z 0-9 . _ -)"));
        }
    }
    for (m, v) in &o.pin {
        if !o.models.contains(m) {
            problem("ota.pin", format!("`{m}` is pinned but not in ota.models"));
        }
        if !super::is_valid_id(v) {
            problem("ota.pin", format!("version `{v}` of `{m}` may only use A-Z a-z 0-9 . _ -"));
        }
    }
    if !(1..=7 * 86_400).contains(&o.interval_s) {
        problem("ota.interval_s", format!("{} is out of range; use 1 to 604800 (a week)", o.interval_s));
    }
    if !(0.0..=0.5).contains(&o.jitter) {
        problem(
            "ota.jitter",
            format!("{} is out of range; use 0 to 0.5 (a fraction of interval_s)", o.jitter),
        );
    }
    out.trusted_root = resolve(&o.trusted_root);
    if !out.trusted_root.is_file() {
        problem(
            "ota.trusted_root",
            format!(
                "{} does not exist; install the registry's root metadata there (the publisher's metadata/1.root.json)",
                out.trusted_root.display()
            ),
        );
    }
    out.ca_file = o.ca_file.as_ref().map(|p| resolve(p));
    if let Some(ca) = &out.ca_file
        && !ca.is_file()
    {
        problem("ota.ca_file", format!("{} is not a readable file", ca.display()));
    }
    if out.groups.is_empty() {
        out.groups = mqtt_groups.to_vec();
    }
    for (key, v, lo, hi) in [
        ("ota.selftest_memory_mb", o.selftest_memory_mb, 16, 1 << 20),
        ("ota.selftest_timeout_s", o.selftest_timeout_s, 1, 3600),
        ("ota.download_timeout_s", o.download_timeout_s, 1, 7 * 86_400),
        ("ota.max_package_bytes", o.max_package_bytes, 1024, 1 << 40),
    ] {
        if !(lo..=hi).contains(&v) {
            problem(key, format!("{v} is out of range; use {lo} to {hi}"));
        }
    }
    let p = &o.probation;
    if !(0.0..=1.0).contains(&p.max_error_rate) {
        problem(
            "ota.probation.max_error_rate",
            format!("{} is not a fraction from 0 to 1", p.max_error_rate),
        );
    }
    if !(p.max_latency_ratio >= 1.0 && p.max_latency_ratio.is_finite()) {
        problem("ota.probation.max_latency_ratio", format!("{} must be 1 or more", p.max_latency_ratio));
    }
    if !(p.minutes > 0.0 && p.minutes.is_finite()) {
        problem("ota.probation.minutes", format!("{} must be more than 0", p.minutes));
    }
    if !(p.latency_floor_ms >= 0.0 && p.latency_floor_ms.is_finite()) {
        problem("ota.probation.latency_floor_ms", format!("{} must be 0 or more", p.latency_floor_ms));
    }
    if !(0.0..=1.0).contains(&p.max_label_shift) {
        problem(
            "ota.probation.max_label_shift",
            format!("{} is not a Jensen-Shannon distance from 0 (off) to 1", p.max_label_shift),
        );
    }
    if p.requests == 0 {
        problem("ota.probation.requests", "must be at least 1".into());
    }
    out
}
