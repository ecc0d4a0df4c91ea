//! Probation: a newly activated version serves real traffic for a number of requests or
//! minutes while its error rate and latency are compared with the version it replaced;
//! worse than the limits, and it is rolled back.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::rollout::ProbationOverride;
use edge_infer::engine::stats::ModelStats;

/// Probation limits (config `[ota.probation]`, overridable per version by the publisher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests after which the verdict is given.
    #[serde(default = "default_requests")]
    pub requests: u64,
    /// Minutes after which the verdict is given, whatever the traffic.
    #[serde(default = "default_minutes")]
    pub minutes: f64,
    /// The new version's error rate may exceed the old one's by at most this (0.05:
    /// five percentage points).
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// The new version's p95 run time may be at most this multiple of the old one's.
    #[serde(default = "default_max_latency_ratio")]
    pub max_latency_ratio: f64,
    /// Fewer requests than this say nothing about latency; only errors are judged.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Latency increases smaller than this (ms) are never a failure, whatever the ratio:
    /// sub-millisecond run times on a busy device vary by several times without meaning
    /// anything about the model.
    #[serde(default = "default_latency_floor")]
    pub latency_floor_ms: f64,
}

fn default_requests() -> u64 {
    200
}
fn default_minutes() -> f64 {
    10.0
}
fn default_max_error_rate() -> f64 {
    0.05
}
fn default_max_latency_ratio() -> f64 {
    2.0
}
fn default_min_requests() -> u64 {
    20
}
fn default_latency_floor() -> f64 {
    5.0
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests: default_requests(),
            minutes: default_minutes(),
            max_error_rate: default_max_error_rate(),
            max_latency_ratio: default_max_latency_ratio(),
            min_requests: default_min_requests(),
            latency_floor_ms: default_latency_floor(),
        }
    }
}

impl Limits {
    /// These limits with a publisher's overrides applied.
    pub fn with(&self, o: Option<&ProbationOverride>) -> Limits {
        let mut l = self.clone();
        if let Some(o) = o {
            l.requests = o.requests.unwrap_or(l.requests);
            l.minutes = o.minutes.unwrap_or(l.minutes);
            l.max_error_rate = o.max_error_rate.unwrap_or(l.max_error_rate);
            l.max_latency_ratio = o.max_latency_ratio.unwrap_or(l.max_latency_ratio);
        }
        l
    }
}

/// How the replaced version did, measured before the switch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Numbers {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// p95 of the model run time; absent with too few requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
}

impl Numbers {
    /// Numbers from engine stats (failures counted are those of the model or its input,
    /// not load rejections, which say nothing about the version).
    pub fn from_stats(s: &ModelStats, min_requests: u64) -> Numbers {
        let errors: u64 = s.errors.values().sum();
        let requests = s.ok + errors;
        let p95 = s.run.percentiles().p95_ms;
        Numbers {
            requests,
            errors,
            error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
            p95_ms: (s.ok >= min_requests).then_some(p95),
        }
    }

    /// Numbers of what happened between `before` and `now`.
    pub fn between(before: &ModelStats, now: &ModelStats, min_requests: u64) -> Numbers {
        let mut diff = ModelStats {
            ok: now.ok.saturating_sub(before.ok),
            run: now.run.since(&before.run),
            ..ModelStats::default()
        };
        for (k, v) in &now.errors {
            let was = before.errors.get(k).copied().unwrap_or(0);
            diff.errors.insert(k, v.saturating_sub(was));
        }
        Numbers::from_stats(&diff, min_requests)
    }
}

/// A probation in progress (kept in the model's `state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probation {
    pub version: String,
    /// What was serving before; a rollback goes back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub limits: Limits,
    pub baseline: Numbers,
    /// A version promoted from a shadow run starts probation with that run's numbers
    /// (agreement with the version it replaces, confusion matrix, run times), reported
    /// beside its own; they are not judged again here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::shadow::Numbers>,
}

/// The outcome of looking at a probation.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough requests or time yet.
    Continue,
    Pass,
    Fail(String),
}

impl Probation {
    /// Time since the probation started.
    pub fn elapsed(&self) -> Duration {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        Duration::from_secs(now.saturating_sub(self.started))
    }

    /// Judges the new version's numbers so far. Errors are judged as soon as there are
    /// `min_requests` of them over the limit, so a clearly broken version does not wait
    /// out its whole probation.
    pub fn judge(&self, new: &Numbers) -> Verdict {
        let l = &self.limits;
        let allowed = self.baseline.error_rate + l.max_error_rate;
        let done = new.requests >= l.requests || self.elapsed().as_secs_f64() >= l.minutes * 60.0;
        let judgeable = new.requests >= l.min_requests;
        if judgeable && new.error_rate > allowed && (done || new.errors >= l.min_requests) {
            return Verdict::Fail(format!(
                "error rate {:.1}% over {} requests, limit {:.1}% (previous version {:.1}% + {:.1} points)",
                new.error_rate * 100.0,
                new.requests,
                allowed * 100.0,
                self.baseline.error_rate * 100.0,
                l.max_error_rate * 100.0
            ));
        }
        if !done {
            return Verdict::Continue;
        }
        if let (Some(old), Some(now)) = (self.baseline.p95_ms, new.p95_ms)
            && old > 0.0
            && now > old * l.max_latency_ratio
            && now - old > l.latency_floor_ms
        {
            return Verdict::Fail(format!(
                "p95 run time {now:.2} ms is {:.1}x the previous version's {old:.2} ms (limit {:.1}x)",
                now / old,
                l.max_latency_ratio
            ));
        }
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probation(baseline: Numbers) -> Probation {
        let started = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        Probation {
            version: "2".into(),
            previous: None,
            previous_version: Some("1".into()),
            started,
            limits: Limits { requests: 100, minutes: 10.0, ..Limits::default() },
            baseline,
            shadow: None,
        }
    }

    fn numbers(requests: u64, errors: u64, p95: Option<f64>) -> Numbers {
        Numbers { requests, errors, error_rate: errors as f64 / requests.max(1) as f64, p95_ms: p95 }
    }

    #[test]
    fn verdicts() {
        let p = probation(numbers(1000, 10, Some(10.0)));
        assert_eq!(p.judge(&numbers(50, 0, Some(10.0))), Verdict::Continue);
        assert_eq!(p.judge(&numbers(100, 2, Some(15.0))), Verdict::Pass);
        // Broken: judged early, before the requests run out.
        assert!(matches!(p.judge(&numbers(40, 30, None)), Verdict::Fail(why) if why.contains("error rate")));
        // Slow: judged at the end.
        assert!(matches!(p.judge(&numbers(100, 0, Some(25.0))), Verdict::Fail(why) if why.contains("2.5x")));
        // Three times slower but by less than the floor: noise on a busy device.
        let quick = probation(numbers(1000, 0, Some(0.2)));
        assert_eq!(quick.judge(&numbers(100, 0, Some(0.7))), Verdict::Pass);
        // No baseline latency (few requests before): latency is not judged.
        let fresh = probation(numbers(3, 0, None));
        assert_eq!(fresh.judge(&numbers(100, 0, Some(50.0))), Verdict::Pass);
    }
}
