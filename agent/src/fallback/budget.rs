//! Request budget for the cloud fallback: at most N requests per hour and per day.
//!
//! Cloud inference costs money per request, and a device whose local model
//! keeps failing (or a flapping link) must not turn into an unbounded bill.
//!
//! Design: sliding windows made of 1-minute buckets, one ring of 24 × 60
//! counters shared by both windows (the hour is its newest 60 buckets).
//! Two fixed windows (reset at the top of each hour/day) would be simpler but
//! let a device spend twice its limit in a few minutes around a boundary (N at
//! 10:59, N again at 11:00); the ring bounds any 60-minute span to the hourly
//! limit, give or take the partial minute at the edge. Memory is fixed: 1,440
//! `u32`s (5.6 KiB) whatever the traffic, and running sums keep `try_take` at
//! O(1) apart from catching up on minutes that passed with no request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HOUR_MINUTES: u64 = 60;
const DAY_MINUTES: u64 = 24 * 60;

/// The budget of one window is used up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cloud request budget for the {window} is spent ({limit} requests per {window}); the next request is allowed in {resets_in:?}; raise the per-{window} limit in the cloud fallback config if this is expected traffic"
)]
pub struct Spent {
    /// "hour" or "day".
    pub window: &'static str,
    pub limit: u64,
    /// Until enough old requests leave the window for one more to fit.
    pub resets_in: Duration,
}

#[derive(Debug)]
struct Ring {
    /// Requests per minute, indexed by `minute % DAY_MINUTES`.
    buckets: Box<[u32]>,
    /// The newest minute the ring has been advanced to (minutes since the epoch).
    head: u64,
    hour_sum: u64,
    day_sum: u64,
}

/// Thread-safe; cheap to call on every request.
#[derive(Debug)]
pub struct Budget {
    /// Limits, `u64::MAX` for none: atomics so that a configuration reload changes
    /// them without forgetting what was already spent.
    per_hour: AtomicU64,
    per_day: AtomicU64,
    ring: Mutex<Ring>,
}

impl Budget {
    /// `None` means no limit for that window. `Some(0)` means the cloud is
    /// never used, which is a valid way to switch the fallback off.
    pub fn new(per_hour: Option<u64>, per_day: Option<u64>) -> Budget {
        Budget {
            per_hour: AtomicU64::new(per_hour.unwrap_or(u64::MAX)),
            per_day: AtomicU64::new(per_day.unwrap_or(u64::MAX)),
            ring: Mutex::new(Ring {
                buckets: vec![0u32; DAY_MINUTES as usize].into_boxed_slice(),
                head: 0,
                hour_sum: 0,
                day_sum: 0,
            }),
        }
    }

    /// Takes one request from both windows, or neither if either is spent.
    pub fn try_take(&self, now: SystemTime) -> Result<(), Spent> {
        let (minute, into_minute) = split(now);
        let mut ring = self.lock();
        let minute = ring.advance(minute);
        let (per_hour, per_day) = self.limits();
        if let Some(limit) = per_hour
            && ring.hour_sum >= limit
        {
            let resets_in = ring.frees_in(minute, into_minute, HOUR_MINUTES);
            return Err(Spent { window: "hour", limit, resets_in });
        }
        if let Some(limit) = per_day
            && ring.day_sum >= limit
        {
            let resets_in = ring.frees_in(minute, into_minute, DAY_MINUTES);
            return Err(Spent { window: "day", limit, resets_in });
        }
        let slot = slot(minute);
        // u32 per minute is plenty (71 million requests per second); saturating
        // so that an unlimited budget cannot wrap a bucket back to zero.
        if ring.buckets[slot] < u32::MAX {
            ring.buckets[slot] += 1;
            ring.hour_sum += 1;
            ring.day_sum += 1;
        }
        Ok(())
    }

    /// Requests counted in the last hour and the last day.
    pub fn used(&self, now: SystemTime) -> (u64, u64) {
        let (minute, _) = split(now);
        let mut ring = self.lock();
        ring.advance(minute);
        (ring.hour_sum, ring.day_sum)
    }

    pub fn limits(&self) -> (Option<u64>, Option<u64>) {
        let get = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|v| *v != u64::MAX);
        (get(&self.per_hour), get(&self.per_day))
    }

    /// New limits (a reload); requests already counted stay counted.
    pub fn set_limits(&self, per_hour: Option<u64>, per_day: Option<u64>) {
        self.per_hour.store(per_hour.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.per_day.store(per_day.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Updates leave the ring consistent at every step and nothing panics
        // under the lock, so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ring {
    /// Moves the ring forward to `minute`, dropping buckets that left the
    /// windows, and returns the minute to count in.
    fn advance(&mut self, minute: u64) -> u64 {
        if minute <= self.head {
            // Clock stepped back (NTP correction). Counting in the newest
            // bucket keeps the budget honest: going back must not free it.
            // A step back of more than a day is a clock reset (RTC lost on an
            // edge device): start over rather than refuse for that long.
            if self.head - minute > DAY_MINUTES {
                self.reset(minute);
                return minute;
            }
            return self.head;
        }
        if minute - self.head >= DAY_MINUTES {
            self.reset(minute);
            return minute;
        }
        for m in self.head + 1..=minute {
            // The minute leaving the hour is still in the ring (it is in the day).
            if let Some(left_hour) = m.checked_sub(HOUR_MINUTES) {
                self.hour_sum -= u64::from(self.buckets[slot(left_hour)]);
            }
            // The minute leaving the day shares its slot with the new minute.
            let s = slot(m);
            self.day_sum -= u64::from(self.buckets[s]);
            self.buckets[s] = 0;
        }
        self.head = minute;
        minute
    }

    fn reset(&mut self, minute: u64) {
        self.buckets.fill(0);
        self.hour_sum = 0;
        self.day_sum = 0;
        self.head = minute;
    }

    /// Time until the oldest counted request of a `window`-minute window
    /// leaves it, which is when one more request fits.
    fn frees_in(&self, minute: u64, into_minute: Duration, window: u64) -> Duration {
        let oldest_start = minute.saturating_sub(window - 1);
        let oldest = (oldest_start..=minute).find(|&m| self.buckets[slot(m)] > 0).unwrap_or(minute);
        // Bucket `oldest` leaves the window when minute `oldest + window` begins.
        let minutes_left = oldest + window - minute;
        Duration::from_secs(minutes_left * 60).saturating_sub(into_minute)
    }
}

fn slot(minute: u64) -> usize {
    (minute % DAY_MINUTES) as usize
}

/// Minutes since the epoch and the time into that minute. Times before 1970
/// (a device with no RTC battery can report anything) count as minute 0.
fn split(now: SystemTime) -> (u64, Duration) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let minute = since.as_secs() / 60;
    (minute, since - Duration::from_secs(minute * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arbitrary minute-aligned wall-clock start (2026-01-01T00:00:00Z).
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn unlimited_counts_but_never_refuses() {
        let b = Budget::new(None, None);
        for _ in 0..1000 {
            assert!(b.try_take(t0()).is_ok());
        }
        assert_eq!(b.used(t0()), (1000, 1000));
    }

    #[test]
    fn hour_limit_refuses_with_reset_time() {
        let b = Budget::new(Some(3), None);
        for i in 0..3 {
            assert!(b.try_take(t0() + secs(i * 60)).is_ok());
        }
        // First request at minute 0: it leaves the window when minute 60 begins.
        let err = b.try_take(t0() + secs(10 * 60 + 15)).unwrap_err();
        assert_eq!(err.window, "hour");
        assert_eq!(err.limit, 3);
        assert_eq!(err.resets_in, secs(50 * 60 - 15));
        assert!(err.to_string().contains("per-hour limit"));
        // A refused request is not counted.
        assert_eq!(b.used(t0() + secs(10 * 60)), (3, 3));
        // Once the first minute leaves, exactly one more fits.
        assert!(b.try_take(t0() + secs(60 * 60)).is_ok());
        assert!(b.try_take(t0() + secs(60 * 60)).is_err());
        assert!(b.try_take(t0() + secs(61 * 60)).is_ok());
    }

    #[test]
    fn day_limit_refuses_and_frees_after_24_hours() {
        let b = Budget::new(Some(100), Some(5));
        for h in 0..5 {
            assert!(b.try_take(t0() + secs(h * 3600)).is_ok());
        }
        let err = b.try_take(t0() + secs(6 * 3600)).unwrap_err();
        assert_eq!(err.window, "day");
        assert_eq!(err.resets_in, secs(18 * 3600));
        assert!(b.try_take(t0() + secs(24 * 3600 - 1)).is_err());
        assert!(b.try_take(t0() + secs(24 * 3600)).is_ok());
        assert_eq!(b.used(t0() + secs(24 * 3600)), (1, 5));
    }

    #[test]
    fn hour_is_checked_before_day() {
        let b = Budget::new(Some(2), Some(2));
        assert!(b.try_take(t0()).is_ok());
        assert!(b.try_take(t0()).is_ok());
        assert_eq!(b.try_take(t0()).unwrap_err().window, "hour");
    }

    #[test]
    fn flapping_device_cannot_exceed_either_limit_in_any_window() {
        let (per_hour, per_day) = (20u64, 100u64);
        let b = Budget::new(Some(per_hour), Some(per_day));
        // Bursts of 50 attempts every 7 minutes for 3 days.
        let mut granted = Vec::new();
        let mut t = 0u64;
        while t < 3 * 86_400 {
            for k in 0..50 {
                if b.try_take(t0() + secs(t + k)).is_ok() {
                    granted.push(t + k);
                }
            }
            t += 7 * 60;
        }
        assert!(!granted.is_empty());
        for (i, &start) in granted.iter().enumerate() {
            let in_hour = granted[i..].iter().take_while(|&&g| g < start + 3600).count() as u64;
            let in_day = granted[i..].iter().take_while(|&&g| g < start + 86_400).count() as u64;
            assert!(in_hour <= per_hour, "{in_hour} requests in the hour from {start}");
            assert!(in_day <= per_day, "{in_day} requests in the day from {start}");
        }
        // And the device does get its budget, not less: 100 a day for 3 days.
        assert!(granted.len() as u64 >= 3 * per_day - per_hour);
    }

    #[test]
    fn zero_limit_never_allows() {
        let b = Budget::new(Some(0), None);
        let err = b.try_take(t0()).unwrap_err();
        assert_eq!(err.window, "hour");
        assert!(err.resets_in <= secs(3600));
    }

    #[test]
    fn clock_stepping_back_does_not_free_the_budget() {
        let b = Budget::new(Some(2), None);
        assert!(b.try_take(t0() + secs(600)).is_ok());
        assert!(b.try_take(t0() + secs(600)).is_ok());
        assert!(b.try_take(t0()).is_err());
        assert!(b.try_take(t0() + secs(300)).is_err());
    }

    #[test]
    fn clock_reset_by_more_than_a_day_starts_over() {
        let b = Budget::new(Some(1), None);
        assert!(b.try_take(t0()).is_ok());
        assert!(b.try_take(UNIX_EPOCH).is_ok());
        assert_eq!(b.used(UNIX_EPOCH), (1, 1));
    }

    #[test]
    fn long_idle_gap_clears_everything() {
        let b = Budget::new(Some(10), Some(10));
        for _ in 0..10 {
            assert!(b.try_take(t0()).is_ok());
        }
        assert_eq!(b.used(t0() + secs(30 * 86_400)), (0, 0));
        assert!(b.try_take(t0() + secs(30 * 86_400)).is_ok());
    }

    #[test]
    fn hour_sum_tracks_a_recount_after_random_traffic() {
        let b = Budget::new(None, None);
        let mut log = Vec::new();
        let mut t = 0u64;
        for i in 0..5000u64 {
            t += (i * 7919) % 1200; // irregular gaps, up to 20 minutes
            let at = t0() + secs(t);
            assert!(b.try_take(at).is_ok());
            log.push(t);
            let hour = log.iter().filter(|&&x| x / 60 + 60 > t / 60).count() as u64;
            let day = log.iter().filter(|&&x| x / 60 + 1440 > t / 60).count() as u64;
            assert_eq!(b.used(at), (hour, day), "at {t}");
        }
    }
}
