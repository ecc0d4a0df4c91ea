//! Probation: a newly activated version serves real traffic for a number of requests or
//! minutes while its error rate and latency are compared with the version it replaced;
//! worse than the limits, and it is rolled back. Its answers are compared too: the shares
//! of its labels against the replaced version's recent ones (Jensen-Shannon distance), so
//! a version that names things differently (labels swapped, a class never answered) is
//! caught even when it is fast and never fails.

use std::collections::BTreeMap;
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
    /// The largest Jensen-Shannon distance (0 to 1) allowed between the new version's
    /// label shares and the replaced version's recent ones; 0 turns the check off.
    #[serde(default = "default_max_label_shift")]
    pub max_label_shift: f64,
    /// Labelled results each side needs before label shares are compared: fewer say
    /// little about a distribution.
    #[serde(default = "default_min_label_results")]
    pub min_label_results: u64,
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
fn default_max_label_shift() -> f64 {
    0.3
}
fn default_min_label_results() -> u64 {
    100
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
            max_label_shift: default_max_label_shift(),
            min_label_results: default_min_label_results(),
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
            l.max_label_shift = o.max_label_shift.unwrap_or(l.max_label_shift);
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
    /// Labels answered, by label: for the replaced version its recent ones at the switch,
    /// for the new one all since activation. Absent when the drift monitor is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, u64>>,
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
            labels: None,
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
        if let Some(why) = self.label_shift(new) {
            return Verdict::Fail(why);
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

    /// Why the new version's label shares are too far from the replaced version's, once
    /// both sides have `min_label_results`; judged as soon as they do, like errors, since
    /// a version that answers with other names is wrong from its first results.
    fn label_shift(&self, new: &Numbers) -> Option<String> {
        let l = &self.limits;
        let (Some(old), Some(now)) = (&self.baseline.labels, &new.labels) else { return None };
        let enough = |c: &BTreeMap<String, u64>| c.values().sum::<u64>() >= l.min_label_results.max(1);
        if l.max_label_shift <= 0.0 || !enough(old) || !enough(now) {
            return None;
        }
        let shift = label_shift(old, now);
        if shift <= l.max_label_shift {
            return None;
        }
        Some(format!(
            "label shares moved by {shift:.2} (Jensen-Shannon distance, limit {:.2}) from the previous version's: {}",
            l.max_label_shift,
            moved_labels(old, now)
        ))
    }
}

/// Jensen-Shannon distance between two label counts, over the union of their labels.
pub fn label_shift(old: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> f64 {
    let names: std::collections::BTreeSet<&String> = old.keys().chain(now.keys()).collect();
    let side = |c: &BTreeMap<String, u64>| -> Vec<f64> {
        names.iter().map(|n| c.get(*n).copied().unwrap_or(0) as f64).collect()
    };
    crate::monitor::histogram::js_distance(&side(old), &side(now))
}

/// The labels whose shares moved most, as `label before% → after%`, largest first (at
/// most five, those that moved by at least a point).
fn moved_labels(old: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> String {
    let share = |c: &BTreeMap<String, u64>, n: &str| {
        let sum = c.values().sum::<u64>().max(1) as f64;
        c.get(n).copied().unwrap_or(0) as f64 / sum
    };
    let names: std::collections::BTreeSet<&String> = old.keys().chain(now.keys()).collect();
    let mut moved: Vec<(&String, f64, f64)> = names
        .into_iter()
        .map(|n| (n, share(old, n), share(now, n)))
        .filter(|(_, a, b)| (a - b).abs() >= 0.01)
        .collect();
    moved.sort_by(|x, y| (y.2 - y.1).abs().total_cmp(&(x.2 - x.1).abs()));
    moved
        .iter()
        .take(5)
        .map(|(n, a, b)| format!("{n} {:.0}% → {:.0}%", a * 100.0, b * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
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
        Numbers {
            requests,
            errors,
            error_rate: errors as f64 / requests.max(1) as f64,
            p95_ms: p95,
            labels: None,
        }
    }

    fn labelled(mut n: Numbers, labels: &[(&str, u64)]) -> Numbers {
        n.labels = Some(labels.iter().map(|(l, c)| (l.to_string(), *c)).collect());
        n
    }

    #[test]
    fn label_shares_are_judged_against_the_previous_version() {
        let before = [("normal", 700), ("bearing", 200), ("imbalance", 100)];
        let p = probation(labelled(numbers(1000, 0, None), &before));
        // The same shares (fewer results): judged and passed at the end.
        let same = labelled(numbers(100, 0, None), &[("normal", 70), ("bearing", 20), ("imbalance", 10)]);
        assert_eq!(p.judge(&same), Verdict::Pass);
        // Two labels swapped: failed as soon as there are enough results, naming them.
        let swapped = labelled(numbers(60, 0, None), &[("normal", 12), ("bearing", 42), ("imbalance", 6)]);
        assert_eq!(p.judge(&swapped), Verdict::Continue, "60 labelled results are too few to judge");
        let swapped = labelled(numbers(100, 0, None), &[("normal", 20), ("bearing", 70), ("imbalance", 10)]);
        match p.judge(&swapped) {
            Verdict::Fail(why) => {
                assert!(why.contains("label shares moved"), "{why}");
                assert!(why.contains("bearing 20% → 70%") && why.contains("normal 70% → 20%"), "{why}");
                assert!(!why.contains("imbalance"), "an unmoved label is not named: {why}");
            }
            v => panic!("swapped labels passed: {v:?}"),
        }
        // Off (0), or too few results before the switch: no judgement of labels.
        let mut off = p.clone();
        off.limits.max_label_shift = 0.0;
        assert_eq!(off.judge(&swapped), Verdict::Pass);
        let few =
            probation(labelled(numbers(50, 0, None), &[("normal", 35), ("bearing", 10), ("imbalance", 5)]));
        assert_eq!(few.judge(&swapped), Verdict::Pass);
        // No monitor (no counts on one side): nothing to compare.
        let blind = probation(numbers(1000, 0, None));
        assert_eq!(blind.judge(&swapped), Verdict::Pass);
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
