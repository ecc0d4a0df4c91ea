//! How long the connection task waits before connecting again.
//!
//! The wait doubles on every failure, of any kind: a broker that refuses us, a network
//! that is down, and a connection that came up and was lost again soon after (a broker
//! that kicks us, a message that makes the client drop the link). It goes back to the
//! minimum only once a connection has stayed up for [`HEALTHY_AFTER`]: resetting it at
//! every successful connect, as a first version did, let a link that fails right after
//! each connect reconnect at the minimum rate for ever (measured: 52 reconnects in 20 s).

use std::time::{Duration, Instant};

use rand::Rng;

/// How long a connection must stay up before the next failure counts as a first one
/// again. Long enough to outlast whatever kills a connection right after the connect
/// (a resent oversized message, a duplicate client id, an ACL that rejects a
/// subscription), short enough that a device that lost a long-lived link retries at
/// once.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(20);

/// Capped exponential backoff, reset by a healthy connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// The base of the next wait (before jitter).
    next: Duration,
    /// When the current connection came up, if one is up.
    up_since: Option<Instant>,
}

impl Backoff {
    /// Starts at `min`; never waits more than `max` (`min` if `max` is smaller).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff { min, max: max.max(min), next: min, up_since: None }
    }

    /// A connection came up at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// Whether the connection that is up has been up for [`HEALTHY_AFTER`] at `now`.
    pub fn healthy(&self, now: Instant) -> bool {
        self.up_since.is_some_and(|t| now.saturating_duration_since(t) >= HEALTHY_AFTER)
    }

    /// A connection attempt failed, or the connection was lost, at `now`: the base of
    /// the wait before the next attempt (give it to [`jitter`]). It doubles with each
    /// failure in a row, up to `max`, and starts again from `min` only when the lost
    /// connection had been healthy.
    pub fn failed(&mut self, now: Instant) -> Duration {
        if self.healthy(now) {
            self.next = self.min;
        }
        self.up_since = None;
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }
}

/// A delay between half and all of `d`, so that a fleet that lost its broker at once
/// does not come back at once.
pub fn jitter(d: Duration) -> Duration {
    let ms = (d.as_millis().min(u128::from(u64::MAX)) as u64).max(2);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}
