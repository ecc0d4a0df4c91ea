//! Results by exception: which results of a model go to the broker (`[model.publish]`,
//! docs/data-usage.md). Every result is still written locally (stdout); this only
//! decides what the MQTT link carries.
//!
//! - `every`: each result.
//! - `change`: a stream's first result, a label different from the previous result's, a
//!   segment start or end, a score crossing `threshold` (either way).
//! - `summary`: per stream, one message per `interval_s`: how many results, counts per
//!   label, score minimum, maximum and mean, and the `seq` range they cover.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{PublishMode, PublishSection};

/// One stream's memory.
#[derive(Default)]
struct StreamState {
    last_label: Option<String>,
    last_score: Option<f64>,
    summary: Option<Summary>,
}

/// A summary being gathered.
struct Summary {
    started: Instant,
    since: String,
    version: String,
    from_seq: u64,
    to_seq: u64,
    results: u64,
    labels: BTreeMap<String, u64>,
    score: Option<(f64, f64, f64, u64)>,
}

/// The summary message, on the model's results topic. Told from a result by `summary`.
#[derive(Debug, Serialize)]
pub struct SummaryMessage<'a> {
    pub summary: bool,
    pub ts: String,
    pub since: &'a str,
    pub device: &'a str,
    pub model: &'a str,
    pub version: &'a str,
    pub stream: &'a str,
    pub from_seq: u64,
    pub to_seq: u64,
    pub results: u64,
    pub labels: &'a BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreStats>,
}

#[derive(Debug, Serialize)]
pub struct ScoreStats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// What one result is.
pub struct Offered<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub stream: &'a str,
    pub seq: u64,
    pub ts: &'a str,
    pub outputs: &'a Map<String, Value>,
}

/// The decisions for every (model, stream).
#[derive(Default)]
pub struct Gate {
    policies: HashMap<String, PublishSection>,
    streams: HashMap<(String, String), StreamState>,
    /// Results not published (held by `change` or folded into a summary), per model.
    pub held: BTreeMap<String, u64>,
}

impl Gate {
    pub fn new(policies: HashMap<String, PublishSection>) -> Gate {
        Gate { policies, ..Gate::default() }
    }

    /// Whether to publish this result now.
    pub fn offer(&mut self, r: &Offered<'_>) -> bool {
        let policy = self.policies.get(r.model).copied().unwrap_or_default();
        if policy.mode == PublishMode::Every {
            return true;
        }
        let state = self.streams.entry((r.model.to_string(), r.stream.to_string())).or_default();
        let label = r.outputs.get("label").and_then(Value::as_str);
        let score = r.outputs.get("score").and_then(Value::as_f64);
        let publish = match policy.mode {
            PublishMode::Every => true,
            PublishMode::Change => {
                let first = state.last_label.is_none() && state.last_score.is_none();
                let relabelled = label.is_some() && label != state.last_label.as_deref();
                let segment = r.outputs.contains_key("segment");
                let crossed = match (policy.threshold, state.last_score, score) {
                    (Some(t), Some(before), Some(now)) => (before < t) != (now < t),
                    _ => false,
                };
                first || relabelled || segment || crossed
            }
            PublishMode::Summary => {
                let s = state.summary.get_or_insert_with(|| Summary {
                    started: Instant::now(),
                    since: r.ts.to_string(),
                    version: r.version.to_string(),
                    from_seq: r.seq,
                    to_seq: r.seq,
                    results: 0,
                    labels: BTreeMap::new(),
                    score: None,
                });
                s.to_seq = r.seq;
                s.version = r.version.to_string();
                s.results += 1;
                if let Some(l) = label {
                    *s.labels.entry(l.to_string()).or_default() += 1;
                }
                if let Some(v) = score.filter(|v| v.is_finite()) {
                    let (lo, hi, sum, n) = s.score.unwrap_or((v, v, 0.0, 0));
                    s.score = Some((lo.min(v), hi.max(v), sum + v, n + 1));
                }
                false
            }
        };
        if let Some(l) = label {
            state.last_label = Some(l.to_string());
        }
        if score.is_some() {
            state.last_score = score;
        }
        if !publish {
            *self.held.entry(r.model.to_string()).or_default() += 1;
        }
        publish
    }

    /// When the next summary is due, if one is being gathered.
    pub fn next_due(&self) -> Option<Instant> {
        self.streams
            .iter()
            .filter_map(|((model, _), s)| {
                let every = self.policies.get(model).map_or(60, |p| p.interval_s);
                s.summary.as_ref().map(|s| s.started + Duration::from_secs(every))
            })
            .min()
    }

    /// The summaries due at `now` (all of them with `now = None`, at shutdown), as
    /// (model, payload).
    pub fn due(&mut self, now: Option<Instant>, device: &str, ts: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for ((model, stream), state) in self.streams.iter_mut() {
            let every = Duration::from_secs(self.policies.get(model).map_or(60, |p| p.interval_s));
            let ripe = state.summary.as_ref().is_some_and(|s| now.is_none_or(|n| s.started + every <= n));
            if !ripe {
                continue;
            }
            let Some(s) = state.summary.take() else { continue };
            let message = SummaryMessage {
                summary: true,
                ts: ts.to_string(),
                since: &s.since,
                device,
                model,
                version: &s.version,
                stream,
                from_seq: s.from_seq,
                to_seq: s.to_seq,
                results: s.results,
                labels: &s.labels,
                score: s.score.map(|(min, max, sum, n)| ScoreStats { min, max, mean: sum / n.max(1) as f64 }),
            };
            if let Ok(payload) = serde_json::to_vec(&message) {
                out.push((model.clone(), payload));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
