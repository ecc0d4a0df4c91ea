//! A latch that engages at once and clears only after a quiet period.
//!
//! Routes that depend on a measurement (memory, temperature, queue wait) would flap
//! between local and cloud when the measurement hovers at its limit. The latch
//! engages as soon as the limit is crossed, and clears only once the measurement has
//! stayed on the safe side of a margin (`calm`) for `hold` without a break.

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Latch {
    engaged: bool,
    /// Since when the measurement has been calm, while engaged.
    calm_since: Option<Instant>,
}

/// What an update changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Engaged,
    Cleared,
}

impl Latch {
    pub fn is_engaged(&self) -> bool {
        self.engaged
    }

    /// Feeds one measurement: `over` when beyond the limit, `calm` when inside the
    /// limit by the margin. Returns the change, if any.
    pub fn update(&mut self, over: bool, calm: bool, hold: Duration, now: Instant) -> Option<Change> {
        if over {
            self.calm_since = None;
            if !self.engaged {
                self.engaged = true;
                return Some(Change::Engaged);
            }
            return None;
        }
        if !self.engaged {
            return None;
        }
        if !calm {
            self.calm_since = None;
            return None;
        }
        let since = *self.calm_since.get_or_insert(now);
        if now.duration_since(since) >= hold {
            self.engaged = false;
            self.calm_since = None;
            return Some(Change::Cleared);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engages_at_once_and_clears_after_a_calm_hold() {
        let hold = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = Latch::default();
        assert_eq!(l.update(false, true, hold, at(0)), None);
        assert_eq!(l.update(true, false, hold, at(1)), Some(Change::Engaged));
        assert_eq!(l.update(true, false, hold, at(2)), None);
        // Back under the limit but not by the margin: stays engaged however long.
        assert_eq!(l.update(false, false, hold, at(3)), None);
        assert_eq!(l.update(false, false, hold, at(30)), None);
        // Calm for 9 s, then over again: the hold starts afresh.
        assert_eq!(l.update(false, true, hold, at(31)), None);
        assert_eq!(l.update(false, true, hold, at(40)), None);
        assert_eq!(l.update(true, false, hold, at(41)), None);
        assert!(l.is_engaged());
        assert_eq!(l.update(false, true, hold, at(42)), None);
        assert_eq!(l.update(false, false, hold, at(45)), None);
        assert_eq!(l.update(false, true, hold, at(46)), None);
        assert_eq!(l.update(false, true, hold, at(56)), Some(Change::Cleared));
        assert!(!l.is_engaged());
        assert_eq!(l.update(false, true, hold, at(57)), None);
    }
}
