//! The reference profile (`profile.json`): what a model's inputs and outputs looked like
//! on representative data, as histograms of a few model-agnostic summaries per window.
//!
//! Format 1 (docs/monitoring.md):
//!
//! ```json
//! {"format": 1, "model": "vibration", "version": "1", "windows": 5000,
//!  "summaries": [
//!    {"name": "input.std", "edges": [0.71, 0.72, ...], "freq": [0.1, ...], "mean": 0.74, "count": 5000},
//!    {"name": "output.label", "labels": ["normal", "imbalance", "impact"], "freq": [...], "count": 5000}]}
//! ```
//!
//! A numeric summary has `edges`, ascending inner bin edges taken from its quantiles: bin
//! 0 holds values below `edges[0]`, bin i values from `edges[i-1]` up to (not including)
//! `edges[i]`, the last bin the rest. A label summary has `labels`, one bin each plus a
//! last bin for any other label. `freq` is each bin's share of the reference windows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::histogram::Binning;
use edge_infer::engine::spec::{ImageLayout, ModelSpec, PayloadFormat};

/// Name of the profile inside a model directory.
pub const PROFILE_FILE: &str = "profile.json";
/// The format this agent writes and reads.
pub const FORMAT: u32 = 1;
/// Bins of a numeric summary (fewer when quantiles coincide).
pub const BINS: usize = 10;
/// The most bins a profile may declare: bin indices are small, histograms stay small.
pub const MAX_BINS: usize = 64;
/// The top score's summary name.
pub const OUTPUT_SCORE: &str = "output.score";
/// The label's summary name.
pub const OUTPUT_LABEL: &str = "output.label";

/// A reference profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub format: u32,
    pub model: String,
    pub version: String,
    /// Windows the profile was made from.
    pub windows: u64,
    pub summaries: Vec<SummaryProfile>,
}

/// One summary's reference histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryProfile {
    pub name: String,
    /// Numeric summaries: the inner bin edges, ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f64>,
    /// Label summaries: one bin per label, then one for any other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Each bin's share of the reference windows (sums to 1).
    pub freq: Vec<f64>,
    /// Numeric summaries: the mean over the reference windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Reference windows that had this summary.
    pub count: u64,
}

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read the drift profile {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not a drift profile ({message}); make one with `edge-agent model profile --model DIR --input FILE...`"
    )]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {problem}; make it again with `edge-agent model profile`")]
    Invalid { path: PathBuf, problem: String },
    #[error("cannot write the drift profile {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Profile {
    /// Reads and checks `DIR/profile.json`; `Ok(None)` when there is none.
    pub fn load_dir(dir: &Path) -> Result<Option<Profile>, ProfileError> {
        let path = dir.join(PROFILE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ProfileError::Read { path, source }),
        };
        let profile: Profile = serde_json::from_slice(&bytes)
            .map_err(|e| ProfileError::Syntax { path: path.clone(), message: e.to_string() })?;
        profile.check().map_err(|problem| ProfileError::Invalid { path, problem })?;
        Ok(Some(profile))
    }

    /// Writes `DIR/profile.json` durably.
    pub fn write_dir(&self, dir: &Path) -> Result<PathBuf, ProfileError> {
        let path = dir.join(PROFILE_FILE);
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        edge_spool::durable::replace(&path, &bytes)
            .map_err(|source| ProfileError::Write { path: path.clone(), source })?;
        Ok(path)
    }

    /// Every rule a device relies on; the first broken one.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format {} is not the one this agent reads ({FORMAT})", self.format));
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.summaries {
            if !names.insert(s.name.as_str()) {
                return Err(format!("summary `{}` appears twice", s.name));
            }
            let bins = match (s.edges.is_empty(), s.labels.is_empty()) {
                (false, true) => s.edges.len() + 1,
                (true, false) => s.labels.len() + 1,
                (true, true) => 1,
                (false, false) => return Err(format!("summary `{}` has both edges and labels", s.name)),
            };
            if bins > MAX_BINS {
                return Err(format!("summary `{}` has {bins} bins, more than {MAX_BINS}", s.name));
            }
            if !s.edges.iter().all(|e| e.is_finite()) || !s.edges.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!("summary `{}`: edges must be finite and strictly ascending", s.name));
            }
            if s.freq.len() != bins {
                return Err(format!("summary `{}` has {} frequencies for {bins} bins", s.name, s.freq.len()));
            }
            let sum: f64 = s.freq.iter().sum();
            if !s.freq.iter().all(|f| f.is_finite() && *f >= 0.0) || (sum - 1.0).abs() > 1e-6 {
                return Err(format!(
                    "summary `{}`: frequencies must be >= 0 and sum to 1 (sum {sum})",
                    s.name
                ));
            }
        }
        Ok(())
    }

    /// The bins of each summary, by name.
    pub fn binnings(&self) -> Vec<(String, Binning, Vec<f64>)> {
        self.summaries
            .iter()
            .map(|s| {
                let binning = if s.labels.is_empty() {
                    Binning::Edges(s.edges.clone())
                } else {
                    Binning::Labels(s.labels.clone())
                };
                (s.name.clone(), binning, s.freq.clone())
            })
            .collect()
    }
}

/// Computes the input summaries of one window: mean, standard deviation, minimum,
/// maximum and mean absolute value, per channel for images.
#[derive(Debug, Clone, PartialEq)]
pub struct Summariser {
    channels: usize,
    /// Channels interleaved (NHWC) rather than in planes (NCHW).
    interleaved: bool,
}

const STATS: [&str; 5] = ["mean", "std", "min", "max", "mean_abs"];

impl Summariser {
    /// The summaries `spec`'s data input gets.
    pub fn for_spec(spec: &ModelSpec) -> Summariser {
        match (&spec.pre.image, spec.pre.format) {
            (Some(img), PayloadFormat::Image) if img.channels > 1 => {
                Summariser { channels: img.channels, interleaved: img.layout == ImageLayout::Nhwc }
            }
            _ => Summariser { channels: 1, interleaved: false },
        }
    }

    /// The input summaries' names, in the order [`summarise`](Self::summarise) gives them.
    pub fn names(&self) -> Vec<String> {
        if self.channels == 1 {
            return STATS.iter().map(|s| format!("input.{s}")).collect();
        }
        (0..self.channels).flat_map(|c| STATS.iter().map(move |s| format!("input.c{c}.{s}"))).collect()
    }

    /// The summaries of one window's data, in [`names`](Self::names) order.
    pub fn summarise(&self, data: &[f32]) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.channels * STATS.len());
        let c = self.channels;
        if c == 1 {
            out.extend(stats(data));
        } else if self.interleaved {
            // Gathered into planes first: the one-pass loop below vectorises on a slice,
            // not on a strided iterator.
            let mut plane = Vec::with_capacity(data.len() / c + 1);
            for ch in 0..c {
                plane.clear();
                plane.extend(data.iter().skip(ch).step_by(c));
                out.extend(stats(&plane));
            }
        } else {
            let plane = data.len() / c;
            for ch in 0..c {
                out.extend(stats(&data[ch * plane..(ch + 1) * plane]));
            }
        }
        out
    }
}

/// Lanes of the one-pass loop in [`stats`]: wide enough for the compiler to use vector
/// registers, and a block length after which the lanes' f32 sums go into f64 totals.
const LANES: usize = 8;
const BLOCK: usize = 1024;

/// Mean, standard deviation, min, max, mean absolute value; all 0 for no values. It runs
/// on every result (a 3x48x192 image is 27,648 values), so in one pass over the slice in
/// f32 lanes that the compiler vectorises, with the lanes' sums moved into f64 totals
/// every block. The values are taken relative to the first one, so the variance from
/// the sums of squares does not lose the spread of values far from zero. Inputs are
/// finite (the pipeline refuses NaN and infinities before a model runs).
fn stats(data: &[f32]) -> [f64; 5] {
    let Some(&shift) = data.first() else { return [0.0; 5] };
    let (mut sum, mut squares, mut abs) = (0f64, 0f64, 0f64);
    let (mut lo, mut hi) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
    for block in data.chunks(BLOCK) {
        let (mut s, mut q, mut a) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        let mut lanes = block.chunks_exact(LANES);
        for chunk in &mut lanes {
            for i in 0..LANES {
                let v = chunk[i];
                let d = v - shift;
                s[i] += d;
                q[i] += d * d;
                a[i] += v.abs();
                lo[i] = if v < lo[i] { v } else { lo[i] };
                hi[i] = if v > hi[i] { v } else { hi[i] };
            }
        }
        for &v in lanes.remainder() {
            let d = v - shift;
            s[0] += d;
            q[0] += d * d;
            a[0] += v.abs();
            lo[0] = lo[0].min(v);
            hi[0] = hi[0].max(v);
        }
        sum += s.iter().map(|&x| f64::from(x)).sum::<f64>();
        squares += q.iter().map(|&x| f64::from(x)).sum::<f64>();
        abs += a.iter().map(|&x| f64::from(x)).sum::<f64>();
    }
    let n = data.len() as f64;
    let mean_shifted = sum / n;
    let variance = (squares / n - mean_shifted * mean_shifted).max(0.0);
    let lo = lo.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    [f64::from(shift) + mean_shifted, variance.sqrt(), f64::from(lo), f64::from(hi), abs / n]
}

/// What one result tells the monitor: the input summaries and the answer's top score and
/// label.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub inputs: Vec<f64>,
    pub score: Option<f64>,
    pub label: Option<String>,
}

impl Observation {
    /// Reads the score and label from a result's `outputs` (`label`, or `class` without
    /// labels).
    pub fn new(inputs: Vec<f64>, outputs: &Map<String, Value>) -> Observation {
        let score = outputs.get("score").and_then(Value::as_f64).filter(|s| s.is_finite());
        let label = match (outputs.get("label"), outputs.get("class")) {
            (Some(Value::String(l)), _) => Some(l.clone()),
            (_, Some(Value::Number(c))) => Some(c.to_string()),
            _ => None,
        };
        Observation { inputs, score, label }
    }
}

/// Collects observations and turns them into a [`Profile`]. Memory grows with the
/// observations (a `f64` per summary each): the CLI profiles files it was given, the
/// device learns from a bounded number of first results.
#[derive(Debug, Clone)]
pub struct ProfileBuilder {
    names: Vec<String>,
    /// Per numeric summary (inputs, then the score): the values seen.
    values: Vec<Vec<f64>>,
    labels: BTreeMap<String, u64>,
    /// Labels the spec declares, in order: their bins come first.
    declared: Vec<String>,
    windows: u64,
}

impl ProfileBuilder {
    /// A builder for a model with this spec.
    pub fn new(spec: &ModelSpec) -> ProfileBuilder {
        let mut names = Summariser::for_spec(spec).names();
        names.push(OUTPUT_SCORE.to_string());
        let values = vec![Vec::new(); names.len()];
        ProfileBuilder {
            names,
            values,
            labels: BTreeMap::new(),
            declared: spec.post.labels.clone(),
            windows: 0,
        }
    }

    /// Adds one window.
    pub fn add(&mut self, obs: &Observation) {
        self.windows += 1;
        let n = self.names.len() - 1;
        for (i, v) in obs.inputs.iter().take(n).enumerate() {
            if v.is_finite() {
                self.values[i].push(*v);
            }
        }
        if let Some(s) = obs.score {
            self.values[n].push(s);
        }
        if let Some(l) = &obs.label {
            *self.labels.entry(l.clone()).or_default() += 1;
        }
    }

    /// Windows added so far.
    pub fn windows(&self) -> u64 {
        self.windows
    }

    /// The profile of what was added.
    pub fn build(&self, model: &str, version: &str) -> Profile {
        let mut summaries = Vec::new();
        for (name, values) in self.names.iter().zip(&self.values) {
            if values.is_empty() {
                continue;
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let edges = quantile_edges(&sorted, BINS);
            let binning = Binning::Edges(edges.clone());
            let mut counts = vec![0u64; binning.bins()];
            for v in values {
                counts[binning.index_of(*v)] += 1;
            }
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            summaries.push(SummaryProfile {
                name: name.clone(),
                edges,
                labels: Vec::new(),
                freq: shares(&counts),
                mean: Some(mean),
                count: values.len() as u64,
            });
        }
        let seen: u64 = self.labels.values().sum();
        if seen > 0 {
            // Declared labels first (in the spec's order), then others seen, up to the bin
            // limit; the last bin takes the rest.
            let mut labels = self.declared.clone();
            for l in self.labels.keys() {
                if !labels.contains(l) {
                    labels.push(l.clone());
                }
            }
            labels.truncate(MAX_BINS - 1);
            let binning = Binning::Labels(labels.clone());
            let mut counts = vec![0u64; binning.bins()];
            for (l, n) in &self.labels {
                counts[binning.index_of_label(l)] += n;
            }
            summaries.push(SummaryProfile {
                name: OUTPUT_LABEL.to_string(),
                edges: Vec::new(),
                labels,
                freq: shares(&counts),
                mean: None,
                count: seen,
            });
        }
        Profile {
            format: FORMAT,
            model: model.to_string(),
            version: version.to_string(),
            windows: self.windows,
            summaries,
        }
    }
}

/// Inner edges at the `1/bins .. (bins-1)/bins` quantiles of sorted finite values. An
/// edge closer to the one before than a quarter of an even split of the central 80% of
/// the values is dropped: where many windows share nearly one value (digital silence,
/// a saturated score), deciles would otherwise cut bins a rounding step wide, and the
/// score would measure noise at the level of the data's own resolution. A constant
/// summary gets one edge, two bins.
pub fn quantile_edges(sorted: &[f64], bins: usize) -> Vec<f64> {
    let mut edges: Vec<f64> = Vec::with_capacity(bins);
    if sorted.is_empty() || bins < 2 {
        return edges;
    }
    let at = |q: usize| sorted[(q * sorted.len() / bins).min(sorted.len() - 1)];
    let central = at(bins - 1) - at(1);
    let resolution = if central.is_finite() { central / (4 * bins) as f64 } else { 0.0 };
    for i in 1..bins {
        let e = at(i);
        if edges.last().is_none_or(|last| e > *last && e - *last > resolution) {
            edges.push(e);
        }
    }
    edges
}

/// Counts as shares of their total (all 0 for no counts).
pub fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return vec![0.0; counts.len()];
    }
    counts.iter().map(|c| *c as f64 / total as f64).collect()
}

#[cfg(test)]
mod stats_tests {
    use proptest::prelude::*;

    /// The two-pass f64 computation the one-pass loop replaces.
    fn reference(data: &[f32]) -> [f64; 5] {
        let n = data.len() as f64;
        let v: Vec<f64> = data.iter().map(|&x| f64::from(x)).collect();
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        [mean, var.sqrt(), lo, hi, v.iter().map(|x| x.abs()).sum::<f64>() / n]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(64))]
        #[test]
        fn one_pass_stats_agree_with_two_passes_in_f64(
            offset in -1000f32..1000.0,
            values in proptest::collection::vec(-10f32..10.0, 1..5000),
        ) {
            let data: Vec<f32> = values.iter().map(|v| v + offset).collect();
            let got = super::stats(&data);
            let want = reference(&data);
            // Relative to the data's scale: f32 lanes, summed per block in f64.
            let scale = 1.0 + f64::from(offset.abs());
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                prop_assert!((g - w).abs() <= 1e-4 * scale, "summary {i}: {g} against {w}");
            }
        }
    }

    #[test]
    fn no_values_are_all_zero() {
        assert_eq!(super::stats(&[]), [0.0; 5]);
    }
}
