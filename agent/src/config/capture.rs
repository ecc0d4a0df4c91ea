//! `[capture]`: keeping the inputs worth retraining on (see `capture/` and
//! docs/monitoring.md). Off unless `enabled = true`: the data may be private.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[capture]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSection {
    /// Keep samples at all; `false` by default.
    #[serde(default)]
    pub enabled: bool,
    /// Keep a result whose top score is below this (0 turns the reason off).
    #[serde(default)]
    pub low_confidence: f64,
    /// Keep this share of all results at random (0 to 1), an unbiased sample.
    #[serde(default)]
    pub random_share: f64,
    /// The most the store may hold on disk, in KiB; the oldest samples go first.
    #[serde(default = "default_max_kb")]
    pub max_kb: u64,
    /// The most samples kept in any hour; more are refused and counted.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
    /// Free space (MiB) that must remain on the state directory's file system after a
    /// write; a sample that would eat into it is refused and counted.
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
    /// The raw payload is kept next to the decoded window when it is at most this many
    /// bytes (0: never).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// PEM file of the certificate authorities trusted for `samples/upload` over https;
    /// default: the system's store. Relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for CaptureSection {
    fn default() -> Self {
        CaptureSection {
            enabled: false,
            low_confidence: 0.0,
            random_share: 0.0,
            max_kb: default_max_kb(),
            max_per_hour: default_max_per_hour(),
            min_free_mb: default_min_free_mb(),
            max_payload_bytes: default_max_payload_bytes(),
            ca_file: None,
        }
    }
}

fn default_max_kb() -> u64 {
    64 * 1024
}
fn default_max_per_hour() -> u32 {
    600
}
fn default_min_free_mb() -> u64 {
    256
}
fn default_max_payload_bytes() -> usize {
    64 * 1024
}

/// The largest store allowed: 64 GiB, in KiB.
const MAX_KB: u64 = 64 * 1024 * 1024;
/// The largest payload kept with a sample.
const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// Checks `[capture]`'s ranges; resolves `ca_file`.
pub fn validate(
    c: &CaptureSection,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) -> CaptureSection {
    if !c.low_confidence.is_finite() || c.low_confidence < 0.0 {
        problem(
            "capture.low_confidence",
            format!("{} is not a score; use 0 (off) or a positive number such as 0.6", c.low_confidence),
        );
    }
    if !(0.0..=1.0).contains(&c.random_share) {
        problem(
            "capture.random_share",
            format!("{} is not a share; use 0 to 1 (0.01 keeps one result in a hundred)", c.random_share),
        );
    }
    if !(1..=MAX_KB).contains(&c.max_kb) {
        problem("capture.max_kb", format!("{} is out of range; use 1 to {MAX_KB} (KiB)", c.max_kb));
    }
    if c.max_per_hour == 0 {
        problem("capture.max_per_hour", "0 would keep nothing; use at least 1, or enabled = false".into());
    }
    if c.max_payload_bytes > MAX_PAYLOAD {
        problem(
            "capture.max_payload_bytes",
            format!("{} is out of range; use 0 to {MAX_PAYLOAD}", c.max_payload_bytes),
        );
    }
    let mut out = c.clone();
    out.ca_file = c.ca_file.as_deref().map(resolve);
    if c.enabled && c.low_confidence == 0.0 && c.random_share == 0.0 {
        problem(
            "capture.enabled",
            "capture is on but no reason keeps anything; set capture.low_confidence or capture.random_share"
                .into(),
        );
    }
    out
}
