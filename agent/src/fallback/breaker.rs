//! Circuit breaker in front of the cloud endpoint.
//!
//! When the cloud is down, every request would otherwise wait for a connect
//! error or a timeout before the device gives up, and the endpoint would be
//! hammered by a whole fleet the moment it comes back. The breaker turns a run
//! of failures into immediate rejections for a while, then lets a few trial
//! requests ("probes") through to find out whether the endpoint recovered.
//!
//! Time is passed in (`now`) instead of read inside, so the transitions can be
//! tested with a fake clock and the caller decides which clock is authoritative.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

const MAX_OPEN_FOR: Duration = Duration::from_secs(24 * 3600);

/// What [`Breaker::allow`] decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: go ahead as a trial; its outcome decides whether the breaker closes.
    Probe,
    /// Do not send; the breaker may let requests through again after `retry_in`.
    Open { retry_in: Duration },
}

/// Coarse state for status pages and telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BreakerState {
    Closed,
    Open,
    #[serde(rename = "half-open")]
    HalfOpen,
}

impl BreakerState {
    /// The state's name, as the status document writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Counters since the breaker was created (monotonic, for telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct BreakerCounters {
    /// Times the breaker went to open (from closed or after a failed probe).
    pub opened: u64,
    /// Requests refused by `allow` (open, or half-open with all probe slots taken).
    pub rejected: u64,
    /// Current run of consecutive failures while closed.
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// `since` is when the current probe slots were handed out: probes whose
    /// callers never report back (a cancelled future) are written off after
    /// `open_for`, otherwise the breaker could stay half-open forever.
    HalfOpen {
        probes: u32,
        since: Instant,
    },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    consecutive_failures: u32,
    opened: u64,
    rejected: u64,
}

/// Thread-safe circuit breaker. The lock is only held for a few field updates
/// and never across an `.await`.
#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    open_for: Duration,
    half_open_probes: u32,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// `failures_to_open` consecutive failures open the breaker for `open_for`;
    /// then up to `half_open_probes` concurrent trial requests are let through.
    /// Zero counts are raised to 1: a breaker that opens on no failure, or that
    /// never lets a probe through, would block the cloud forever. `open_for`
    /// is capped at a day, which keeps `now + open_for` from overflowing.
    pub fn new(failures_to_open: u32, open_for: Duration, half_open_probes: u32) -> Breaker {
        Breaker {
            failures_to_open: failures_to_open.max(1),
            open_for: open_for.min(MAX_OPEN_FOR),
            half_open_probes: half_open_probes.max(1),
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                consecutive_failures: 0,
                opened: 0,
                rejected: 0,
            }),
        }
    }

    /// Whether a request may be sent now. Every `Allowed` or `Probe` must be
    /// followed by exactly one of [`success`](Self::success),
    /// [`failure`](Self::failure) or [`release`](Self::release).
    pub fn allow(&self, now: Instant) -> Permit {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => Permit::Allowed,
            Phase::Open { until } => {
                if now >= until {
                    inner.phase = Phase::HalfOpen { probes: 1, since: now };
                    Permit::Probe
                } else {
                    inner.rejected += 1;
                    Permit::Open { retry_in: until - now }
                }
            }
            Phase::HalfOpen { probes, since } => {
                let stale_at = since + self.open_for;
                if now >= stale_at {
                    // The earlier probes had a whole open period to report and
                    // did not: treat them as lost and start a fresh round.
                    inner.phase = Phase::HalfOpen { probes: 1, since: now };
                    Permit::Probe
                } else if probes < self.half_open_probes {
                    inner.phase = Phase::HalfOpen { probes: probes + 1, since };
                    Permit::Probe
                } else {
                    inner.rejected += 1;
                    Permit::Open { retry_in: stale_at - now }
                }
            }
        }
    }

    /// The request reached the endpoint and it worked (or answered in a way
    /// that proves it is up). Closes the breaker from half-open.
    pub fn success(&self, _now: Instant) {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed | Phase::HalfOpen { .. } => {
                inner.phase = Phase::Closed;
                inner.consecutive_failures = 0;
            }
            // A late answer to a request sent before the breaker opened says
            // little about now; the open period runs its course.
            Phase::Open { .. } => {}
        }
    }

    /// The request failed in a way that blames the endpoint (see
    /// `CloudError::counts_as_failure`).
    pub fn failure(&self, now: Instant) {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= self.failures_to_open {
                    self.open(&mut inner, now);
                }
            }
            Phase::HalfOpen { .. } => self.open(&mut inner, now),
            // Late failures of requests sent before opening must not extend
            // the open period, or a burst of slow timeouts would keep it open.
            Phase::Open { .. } => {}
        }
    }

    /// The permitted request ended without telling anything about the
    /// endpoint (rejected locally, over budget, cancelled, a 4xx for a bad
    /// request): frees its probe slot without changing the state.
    pub fn release(&self, _now: Instant) {
        let mut inner = self.lock();
        if let Phase::HalfOpen { probes, since } = inner.phase {
            inner.phase = Phase::HalfOpen { probes: probes.saturating_sub(1), since };
        }
    }

    /// Current state as last updated. An open breaker whose period has passed
    /// still reports `open` until the next `allow` turns it half-open.
    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    pub fn counters(&self) -> BreakerCounters {
        let inner = self.lock();
        BreakerCounters {
            opened: inner.opened,
            rejected: inner.rejected,
            consecutive_failures: inner.consecutive_failures,
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.phase = Phase::Open { until: now + self.open_for };
        inner.consecutive_failures = 0;
        inner.opened += 1;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held, and every update leaves the
        // fields consistent, so a poisoned lock still holds a usable state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn opened_breaker(t0: Instant) -> Breaker {
        let b = Breaker::new(3, OPEN_FOR, 2);
        for _ in 0..3 {
            assert_eq!(b.allow(t0), Permit::Allowed);
            b.failure(t0);
        }
        assert_eq!(b.state(), BreakerState::Open);
        b
    }

    #[test]
    fn state_names_are_the_documents() {
        for s in [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(serde_json::from_value::<BreakerState>(s.as_str().into()).unwrap(), s);
        }
    }

    #[test]
    fn closed_allows_and_opens_after_n_consecutive_failures() {
        let t0 = Instant::now();
        let b = Breaker::new(3, OPEN_FOR, 1);
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.allow(t0), Permit::Allowed);
        assert_eq!(b.counters().consecutive_failures, 2);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.counters().opened, 1);
        assert_eq!(b.counters().consecutive_failures, 0);
    }

    #[test]
    fn a_success_resets_the_failure_run() {
        let t0 = Instant::now();
        let b = Breaker::new(3, OPEN_FOR, 1);
        b.failure(t0);
        b.failure(t0);
        b.success(t0);
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn release_does_not_change_the_failure_run() {
        let t0 = Instant::now();
        let b = Breaker::new(2, OPEN_FOR, 1);
        b.failure(t0);
        b.release(t0);
        assert_eq!(b.counters().consecutive_failures, 1);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn open_rejects_with_the_remaining_time_and_counts_rejections() {
        let t0 = Instant::now();
        let b = opened_breaker(t0);
        assert_eq!(b.allow(t0), Permit::Open { retry_in: OPEN_FOR });
        assert_eq!(b.allow(t0 + ms(30)), Permit::Open { retry_in: ms(70) });
        assert_eq!(b.allow(t0 + ms(99)), Permit::Open { retry_in: ms(1) });
        assert_eq!(b.counters().rejected, 3);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn open_turns_half_open_after_open_for_and_limits_probes() {
        let t0 = Instant::now();
        let b = opened_breaker(t0);
        let t1 = t0 + OPEN_FOR;
        assert_eq!(b.allow(t1), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.allow(t1), Permit::Probe);
        // Both probe slots are taken: the third caller waits for them.
        assert_eq!(b.allow(t1 + ms(10)), Permit::Open { retry_in: ms(90) });
        assert_eq!(b.counters().rejected, 1);
    }

    #[test]
    fn probe_success_closes() {
        let t0 = Instant::now();
        let b = opened_breaker(t0);
        let t1 = t0 + OPEN_FOR;
        assert_eq!(b.allow(t1), Permit::Probe);
        b.success(t1);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.allow(t1), Permit::Allowed);
        // A fresh run of failures is needed to open again.
        b.failure(t1);
        b.failure(t1);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn probe_failure_reopens_for_open_for_again() {
        let t0 = Instant::now();
        let b = opened_breaker(t0);
        let t1 = t0 + OPEN_FOR + ms(5);
        assert_eq!(b.allow(t1), Permit::Probe);
        b.failure(t1 + ms(20));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.counters().opened, 2);
        assert_eq!(b.allow(t1 + ms(20)), Permit::Open { retry_in: OPEN_FOR });
        assert_eq!(b.allow(t1 + ms(20) + OPEN_FOR), Permit::Probe);
    }

    #[test]
    fn released_probe_frees_its_slot() {
        let t0 = Instant::now();
        let b = Breaker::new(1, OPEN_FOR, 1);
        b.failure(t0);
        let t1 = t0 + OPEN_FOR;
        assert_eq!(b.allow(t1), Permit::Probe);
        assert!(matches!(b.allow(t1), Permit::Open { .. }));
        b.release(t1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.allow(t1), Permit::Probe);
    }

    #[test]
    fn lost_probes_are_written_off_after_open_for() {
        let t0 = Instant::now();
        let b = Breaker::new(1, OPEN_FOR, 1);
        b.failure(t0);
        let t1 = t0 + OPEN_FOR;
        assert_eq!(b.allow(t1), Permit::Probe);
        // Its caller never reports (cancelled): one open period later a new probe goes out.
        assert!(matches!(b.allow(t1 + ms(99)), Permit::Open { .. }));
        assert_eq!(b.allow(t1 + OPEN_FOR), Permit::Probe);
    }

    #[test]
    fn late_reports_while_open_do_not_change_the_period() {
        let t0 = Instant::now();
        let b = opened_breaker(t0);
        b.failure(t0 + ms(50));
        b.success(t0 + ms(60));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.counters().opened, 1);
        assert_eq!(b.allow(t0 + OPEN_FOR), Permit::Probe);
    }

    #[test]
    fn zero_settings_are_raised_to_one() {
        let t0 = Instant::now();
        let b = Breaker::new(0, OPEN_FOR, 0);
        assert_eq!(b.allow(t0), Permit::Allowed);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(t0 + OPEN_FOR), Permit::Probe);
    }

    #[test]
    fn huge_open_for_does_not_overflow() {
        let t0 = Instant::now();
        let b = Breaker::new(1, Duration::MAX, 1);
        b.failure(t0);
        assert_eq!(b.allow(t0), Permit::Open { retry_in: MAX_OPEN_FOR });
    }

    #[test]
    fn state_serializes_in_kebab_case() {
        let json = serde_json::to_string(&[BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen])
            .unwrap_or_default();
        assert_eq!(json, r#"["closed","open","half-open"]"#);
    }

    #[test]
    fn usable_from_many_threads() {
        let b = std::sync::Arc::new(Breaker::new(1000, OPEN_FOR, 1));
        let now = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        assert_eq!(b.allow(now), Permit::Allowed);
                        b.failure(now);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.counters().opened, 1);
    }
}
