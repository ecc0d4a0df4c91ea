//! The comparison of a candidate version with the active one, without I/O: what one
//! compared request adds ([`Tally`]), the report made of it ([`Report`]), and the
//! verdict the limits give ([`judge`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use edge_infer::engine::spec::PostSpec;
use edge_infer::engine::stats::Latency;

/// Limits of a shadow run, given with the version (`custom.shadow` in the signed targets).
/// Integers only: TUF's canonical JSON, which the signatures cover, has no floating-point
/// numbers, so shares and ratios are percentages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Share of the active version's requests the candidate also runs, 1-100.
    #[serde(default = "default_share")]
    pub share_pct: u32,
    /// The verdict comes after this many compared requests...
    #[serde(default = "default_requests")]
    pub requests: u64,
    /// ...or after this many minutes, once at least `min_requests` were compared.
    #[serde(default = "default_minutes")]
    pub minutes: u64,
    /// Fewer compared requests than this say nothing: the run goes on.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Lowest top-1 agreement with the active version, in percent, for a promotion.
    #[serde(default = "default_min_agreement")]
    pub min_agreement_pct: u32,
    /// Highest p95 run time of the candidate, in percent of the active version's.
    #[serde(default = "default_max_latency")]
    pub max_latency_pct: u32,
    /// Run-time differences below this (ms) never reject, whatever the ratio: sub-ms
    /// run times on a busy device vary by several times without meaning anything.
    #[serde(default = "default_latency_floor")]
    pub latency_floor_ms: u64,
    /// Highest share of the candidate's runs that may fail, in percent.
    #[serde(default = "default_max_error")]
    pub max_error_pct: u32,
}

fn default_share() -> u32 {
    100
}
fn default_requests() -> u64 {
    500
}
fn default_minutes() -> u64 {
    60
}
fn default_min_requests() -> u64 {
    50
}
fn default_min_agreement() -> u32 {
    95
}
fn default_max_latency() -> u32 {
    200
}
fn default_latency_floor() -> u64 {
    5
}
fn default_max_error() -> u32 {
    1
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            share_pct: default_share(),
            requests: default_requests(),
            minutes: default_minutes(),
            min_requests: default_min_requests(),
            min_agreement_pct: default_min_agreement(),
            max_latency_pct: default_max_latency(),
            latency_floor_ms: default_latency_floor(),
            max_error_pct: default_max_error(),
        }
    }
}

impl Limits {
    /// Checks the values; the error names the field and its range.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.share_pct) {
            return Err(format!("shadow.share_pct {} is not a percentage from 1 to 100", self.share_pct));
        }
        if self.min_agreement_pct > 100 {
            return Err(format!("shadow.min_agreement_pct {} is above 100", self.min_agreement_pct));
        }
        if self.max_latency_pct == 0 {
            return Err("shadow.max_latency_pct must be above 0 (200: twice the active p95)".into());
        }
        if self.requests == 0 {
            return Err("shadow.requests must be above 0".into());
        }
        Ok(())
    }
}

/// The top-1 answer of one model to one request: its label and score.
#[derive(Debug, Clone, PartialEq)]
pub struct Top {
    pub label: String,
    pub score: f32,
}

/// The top-1 answer read the way post-processing reads it: softmax first if the spec
/// says so; a single score is `active` at or above the threshold (0.5 without one),
/// `inactive` below; several scores give the label of the largest (its index without
/// labels). Labels, not indices, are compared: a candidate that renames classes differs.
pub fn top1(post: &PostSpec, values: &[f32]) -> Option<Top> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let scores: Vec<f32> = if post.softmax && values.len() > 1 {
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = values.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        exp.iter().map(|e| e / sum).collect()
    } else {
        values.to_vec()
    };
    if scores.len() == 1 {
        let score = scores[0];
        let active = score >= post.threshold.unwrap_or(0.5);
        return Some(Top { label: if active { "active" } else { "inactive" }.into(), score });
    }
    let (ix, score) = scores
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, s)| if s > best.1 { (i, s) } else { best });
    let label = post.labels.get(ix).cloned().unwrap_or_else(|| ix.to_string());
    Some(Top { label, score })
}

/// Bins of the absolute score difference: 0.001 wide from 0 to 1, then one overflow bin
/// (logits without softmax can differ by more). Fixed memory, p95 within 0.001.
const DIFF_BINS: usize = 1000;
const DIFF_WIDTH: f64 = 1.0 / DIFF_BINS as f64;

/// Distinct labels kept per axis of the confusion matrix; more go to `(other)`, so a
/// model with thousands of classes cannot grow the report without bound.
pub const MAX_LABELS: usize = 64;
/// The row or column of labels beyond [`MAX_LABELS`].
pub const OTHER_LABEL: &str = "(other)";

/// What the shadow run has seen so far.
#[derive(Debug, Clone)]
pub struct Tally {
    compared: u64,
    agreed: u64,
    skipped: BTreeMap<&'static str, u64>,
    errors: u64,
    last_error: Option<String>,
    confusion: BTreeMap<String, BTreeMap<String, u64>>,
    columns: std::collections::BTreeSet<String>,
    diff_bins: Vec<u64>,
    diff_sum: f64,
    diff_max: f64,
    run: Latency,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            compared: 0,
            agreed: 0,
            skipped: BTreeMap::new(),
            errors: 0,
            last_error: None,
            confusion: BTreeMap::new(),
            columns: Default::default(),
            diff_bins: vec![0; DIFF_BINS + 1],
            diff_sum: 0.0,
            diff_max: 0.0,
            run: Latency::default(),
        }
    }
}

/// Why a request was not shadowed.
pub mod skip {
    /// A request waited in the engine's queue, every worker was busy, or the shadow lane
    /// was full.
    pub const BUSY: &str = "busy";
    /// The request's deadline was too close for a candidate run (or passed while the
    /// shadow run waited).
    pub const DEADLINE: &str = "deadline";
    /// The stream's previous shadow run had not finished.
    pub const STREAM: &str = "stream";
}

impl Tally {
    /// Adds one request both versions answered.
    pub fn compare(&mut self, active: &Top, candidate: &Top, run: Duration) {
        self.compared += 1;
        if active.label == candidate.label {
            self.agreed += 1;
        }
        let row = if self.confusion.contains_key(&active.label) || self.confusion.len() < MAX_LABELS {
            active.label.clone()
        } else {
            OTHER_LABEL.to_string()
        };
        let column = if self.columns.contains(&candidate.label) || self.columns.len() < MAX_LABELS {
            self.columns.insert(candidate.label.clone());
            candidate.label.clone()
        } else {
            OTHER_LABEL.to_string()
        };
        *self.confusion.entry(row).or_default().entry(column).or_default() += 1;
        let diff = f64::from((active.score - candidate.score).abs());
        let bin = ((diff / DIFF_WIDTH) as usize).min(DIFF_BINS);
        self.diff_bins[bin] += 1;
        self.diff_sum += diff;
        self.diff_max = self.diff_max.max(diff);
        self.run.record(run);
    }

    /// Counts a request not shadowed, and why ([`skip`]).
    pub fn skip(&mut self, why: &'static str) {
        *self.skipped.entry(why).or_default() += 1;
    }

    /// Counts a candidate run that failed.
    pub fn error(&mut self, message: String) {
        self.errors += 1;
        self.last_error = Some(message);
    }

    /// The candidate's p95 run time so far (None before its first run).
    pub fn run_p95(&self) -> Option<Duration> {
        (self.run.count() > 0).then(|| Duration::from_secs_f64(self.run.percentiles().p95_ms / 1000.0))
    }

    /// The p95 absolute score difference: the upper edge of the bin holding it, or the
    /// largest difference when it is past the bins.
    fn diff_p95(&self) -> f64 {
        let n = self.compared;
        if n == 0 {
            return 0.0;
        }
        let rank = (n as f64 * 0.95).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.diff_bins.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return if i == DIFF_BINS {
                    self.diff_max
                } else {
                    ((i + 1) as f64 * DIFF_WIDTH).min(self.diff_max)
                };
            }
        }
        self.diff_max
    }

    /// The numbers so far; `active_run_p95_ms` is the active version's p95 run time over
    /// the same period (None with too few runs).
    pub fn numbers(&self, active_run_p95_ms: Option<f64>) -> Numbers {
        let candidate = self.run_p95().map(|d| d.as_secs_f64() * 1000.0);
        Numbers {
            compared: self.compared,
            agreed: self.agreed,
            agreement: (self.compared > 0).then(|| self.agreed as f64 / self.compared as f64),
            skipped: self.skipped.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            confusion: self.confusion.clone(),
            score_diff_mean: if self.compared == 0 { 0.0 } else { self.diff_sum / self.compared as f64 },
            score_diff_p95: self.diff_p95(),
            errors: self.errors,
            last_error: self.last_error.clone(),
            run_p95_ms: candidate,
            active_run_p95_ms,
            latency_ratio: match (candidate, active_run_p95_ms) {
                (Some(c), Some(a)) if a > 0.0 => Some(c / a),
                _ => None,
            },
        }
    }
}

/// A shadow run's numbers: in `/status` (`ota.models.<m>.shadow`) and in the
/// `shadow-report` event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Numbers {
    /// Requests both versions answered.
    pub compared: u64,
    /// Of those, how many got the same top-1 label.
    pub agreed: u64,
    /// `agreed / compared`, 0 to 1; absent before the first comparison.
    pub agreement: Option<f64>,
    /// Requests not shadowed, by reason (`busy`, `deadline`, `stream`).
    pub skipped: BTreeMap<String, u64>,
    /// Active label → candidate label → requests.
    pub confusion: BTreeMap<String, BTreeMap<String, u64>>,
    /// Mean absolute difference of the top-1 scores.
    pub score_diff_mean: f64,
    /// 95th percentile of the absolute difference of the top-1 scores (within 0.001).
    pub score_diff_p95: f64,
    /// Candidate runs that failed.
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The candidate's p95 run time.
    pub run_p95_ms: Option<f64>,
    /// The active version's p95 run time over the same period.
    pub active_run_p95_ms: Option<f64>,
    /// `run_p95_ms / active_run_p95_ms`.
    pub latency_ratio: Option<f64>,
}

/// What the limits say of the numbers so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough compared requests or time yet.
    Continue,
    Promote(String),
    Reject(String),
}

/// Judges a shadow run after `elapsed`.
pub fn judge(n: &Numbers, limits: &Limits, elapsed: Duration) -> Verdict {
    let done = n.compared >= limits.requests
        || (elapsed.as_secs() >= limits.minutes * 60 && n.compared >= limits.min_requests);
    if !done {
        return Verdict::Continue;
    }
    let runs = n.compared + n.errors;
    let error_pct = if runs == 0 { 0.0 } else { n.errors as f64 * 100.0 / runs as f64 };
    if error_pct > f64::from(limits.max_error_pct) {
        return Verdict::Reject(format!(
            "the candidate failed {:.1}% of {runs} runs (limit {}%){}",
            error_pct,
            limits.max_error_pct,
            n.last_error.as_ref().map(|e| format!("; last: {e}")).unwrap_or_default()
        ));
    }
    let agreement = n.agreement.unwrap_or(0.0);
    if agreement * 100.0 < f64::from(limits.min_agreement_pct) {
        return Verdict::Reject(format!(
            "top-1 agreement {:.1}% over {} requests, below {}%",
            agreement * 100.0,
            n.compared,
            limits.min_agreement_pct
        ));
    }
    if let (Some(c), Some(a), Some(ratio)) = (n.run_p95_ms, n.active_run_p95_ms, n.latency_ratio)
        && ratio * 100.0 > f64::from(limits.max_latency_pct)
        && c - a > limits.latency_floor_ms as f64
    {
        return Verdict::Reject(format!(
            "p95 run time {c:.2} ms is {ratio:.1}x the active version's {a:.2} ms (limit {}%)",
            limits.max_latency_pct
        ));
    }
    Verdict::Promote(format!(
        "top-1 agreement {:.1}% over {} requests (at least {}%)",
        agreement * 100.0,
        n.compared,
        limits.min_agreement_pct
    ))
}
