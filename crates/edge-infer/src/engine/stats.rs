//! Counters and latency histograms of the engine, per model.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        // Bounds are constants that hdrhistogram accepts; it can only fail on bad bounds.
        #[allow(clippy::expect_used)]
        Latency(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// Records one duration (saturating at the upper bound).
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record(d.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
    }

    /// What was recorded after `earlier` (a clone of this histogram taken before).
    pub fn since(&self, earlier: &Latency) -> Latency {
        let mut diff = self.clone();
        // Fails only if `earlier` holds values this one lacks, i.e. is not its past.
        if diff.0.subtract(&earlier.0).is_err() {
            return self.clone();
        }
        diff
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Number of recorded values at or below `micros`.
    pub fn count_at_or_below(&self, micros: u64) -> u64 {
        self.0.count_between(0, micros)
    }

    /// Sum of recorded values in seconds (approximate: each value at its bucket's middle).
    pub fn sum_seconds(&self) -> f64 {
        self.0.mean() * self.0.len() as f64 / 1e6
    }

    /// p50/p95/p99/max in milliseconds.
    pub fn percentiles(&self) -> Percentiles {
        let q = |p: f64| self.0.value_at_quantile(p) as f64 / 1000.0;
        Percentiles {
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            max_ms: self.0.max() as f64 / 1000.0,
        }
    }
}

/// Counts of one model since start.
#[derive(Debug, Clone, Default)]
pub struct ModelStats {
    /// Requests answered.
    pub ok: u64,
    /// Failed requests by error kind (bad_input, run_failed, panic, ...).
    pub errors: BTreeMap<&'static str, u64>,
    /// Requests turned away before running (queue full, deadline, shutdown).
    pub rejected: BTreeMap<&'static str, u64>,
    /// Time from submission to result.
    pub latency: Latency,
    /// Time spent inside the model run alone.
    pub run: Latency,
}

/// A snapshot for reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// Requests answered.
    pub ok: u64,
    /// Failed requests by error kind (bad_input, run_failed, panic, ...).
    pub errors: BTreeMap<&'static str, u64>,
    /// Requests turned away before running (queue full, deadline, shutdown).
    pub rejected: BTreeMap<&'static str, u64>,
    /// Time from submission to result.
    pub latency: Percentiles,
    /// Time spent inside the model run alone.
    pub run: Percentiles,
}

/// One recent failure, for status reports.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    /// When it happened, RFC 3339 with milliseconds.
    pub ts: String,
    /// The model.
    pub model: String,
    /// The error's kind ([`InferError::kind`](super::InferError::kind)).
    pub kind: &'static str,
    /// The error message.
    pub message: String,
}

/// How many recent failures status reports keep.
const RECENT_ERRORS: usize = 16;

/// All models' stats.
///
/// A `Mutex`: updated once per request by worker threads for well under a microsecond;
/// never held across a model run or an await.
#[derive(Debug, Default)]
pub struct Stats {
    models: Mutex<BTreeMap<String, ModelStats>>,
    recent: Mutex<std::collections::VecDeque<ErrorEntry>>,
}

impl Stats {
    /// Counts a failed or rejected request and remembers it among the recent errors.
    pub fn record_error(&self, model: &str, kind: &'static str, rejected: bool, message: String) {
        self.with(model, |s| {
            let map = if rejected { &mut s.rejected } else { &mut s.errors };
            *map.entry(kind).or_default() += 1;
        });
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        recent.push_back(ErrorEntry { ts, model: model.to_string(), kind, message });
    }

    /// The most recent failures, oldest first.
    pub fn recent_errors(&self) -> Vec<ErrorEntry> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Applies `f` to a model's stats.
    pub fn with<R>(&self, model: &str, f: impl FnOnce(&mut ModelStats) -> R) -> R {
        let mut map = self.models.lock().unwrap_or_else(|p| p.into_inner());
        // The name is copied only for a model's first entry: this runs once per request.
        match map.get_mut(model) {
            Some(stats) => f(stats),
            None => f(map.entry(model.to_string()).or_default()),
        }
    }

    /// A copy of one model's stats (zeros if it has none yet).
    pub fn snapshot(&self, model: &str) -> ModelStats {
        let map = self.models.lock().unwrap_or_else(|p| p.into_inner());
        map.get(model).cloned().unwrap_or_default()
    }

    /// Raw latency histograms per model (for Prometheus buckets).
    pub fn latencies(&self) -> BTreeMap<String, Latency> {
        let map = self.models.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, s)| (k.clone(), s.latency.clone())).collect()
    }

    /// A report per model.
    pub fn report(&self) -> BTreeMap<String, ModelReport> {
        let map = self.models.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    ModelReport {
                        ok: s.ok,
                        errors: s.errors.clone(),
                        rejected: s.rejected.clone(),
                        latency: s.latency.percentiles(),
                        run: s.run.percentiles(),
                    },
                )
            })
            .collect()
    }
}
