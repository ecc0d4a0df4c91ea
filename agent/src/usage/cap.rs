//! The broker's daily cap (`mqtt.max_bytes_per_day`): what gives way, in a stated order,
//! when a UTC day's bytes to and from the broker reach it (docs/data-usage.md).
//!
//! 1. From 80 % of the cap, telemetry reports are held back (the detail a fleet can best
//!    do without, and the largest share at defaults).
//! 2. From 100 %, results are held back too (they stay in the local stream).
//! 3. Events (updates, rollbacks, caps) and command replies always go, as do the MQTT
//!    link's own packets: they are what an operator needs to act on a device over its cap.
//!
//! The count includes received bytes (sensor messages, commands), which the agent cannot
//! refuse: a day's total may pass the cap, but nothing held back is sent to push it up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Counter;
use crate::events::{Event, Events, Kind, Severity};

/// What may be held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Telemetry,
    Result,
}

/// The cap's state in `/status` and telemetry (`usage.broker_cap`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapReport {
    /// Bytes per UTC day; 0 when there is no cap.
    pub bytes_per_day: u64,
    /// Bytes to and from the broker since 00:00 UTC (or since start, if later).
    pub used_today: u64,
    /// Messages held back since start, by class.
    pub held_telemetry: u64,
    pub held_results: u64,
}

#[derive(Default)]
struct Day {
    /// Days since the epoch (UTC).
    day: u64,
    /// The broker's total (sent + received) when the day began.
    base: u64,
    /// The stage already announced today: 0 none, 1 telemetry held, 2 results held.
    announced: u8,
}

/// The cap and its counters; one, shared by the result sink and the telemetry task.
pub struct DailyCap {
    bytes_per_day: u64,
    counter: Arc<Counter>,
    day: Mutex<Day>,
    held_telemetry: AtomicU64,
    held_results: AtomicU64,
    events: OnceLock<Events>,
}

impl std::fmt::Debug for DailyCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DailyCap").field("bytes_per_day", &self.bytes_per_day).finish_non_exhaustive()
    }
}

fn today() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400)
}

impl DailyCap {
    pub fn new(bytes_per_day: u64, counter: Arc<Counter>) -> DailyCap {
        let base = counter.totals();
        DailyCap {
            bytes_per_day,
            counter,
            day: Mutex::new(Day { day: today(), base: base.sent + base.received, announced: 0 }),
            held_telemetry: AtomicU64::new(0),
            held_results: AtomicU64::new(0),
            events: OnceLock::new(),
        }
    }

    /// Where `data-cap-reached` goes (the events sink is built after the MQTT link).
    pub fn announce_to(&self, events: Events) {
        let _ = self.events.set(events);
    }

    /// Bytes used today, starting a new day when the date has changed.
    fn used(&self, day: &mut Day) -> u64 {
        let t = self.counter.totals();
        let total = t.sent + t.received;
        let now = today();
        if now != day.day {
            *day = Day { day: now, base: total, announced: 0 };
        }
        total.saturating_sub(day.base)
    }

    /// Whether a message of `class` may go now; counts it when it may not, and announces
    /// each stage once a day.
    pub async fn allow(&self, class: Class) -> bool {
        let Some(announce) = self.check(class) else { return true };
        if let (Some(event), Some(events)) = (announce, self.events.get()) {
            events.emit(event).await;
        }
        false
    }

    /// `None`: it may go. Otherwise held, with the event to announce when this is the
    /// first of its stage today.
    fn check(&self, class: Class) -> Option<Option<Event>> {
        if self.bytes_per_day == 0 {
            return None;
        }
        let mut day = self.day.lock().ok()?;
        let used = self.used(&mut day);
        let (limit, stage, held) = match class {
            Class::Telemetry => (self.bytes_per_day / 10 * 8, 1, &self.held_telemetry),
            Class::Result => (self.bytes_per_day, 2, &self.held_results),
        };
        if used < limit {
            return None;
        }
        held.fetch_add(1, Ordering::Relaxed);
        if day.announced >= stage {
            return Some(None);
        }
        day.announced = stage;
        let holding = if stage == 1 { "telemetry" } else { "telemetry and results" };
        tracing::warn!(
            used,
            cap = self.bytes_per_day,
            holding,
            "daily data cap of the MQTT link reached; holding back until 00:00 UTC (mqtt.max_bytes_per_day)"
        );
        Some(Some(Event::new(
            Kind::DataCapReached,
            Severity::Warning,
            serde_json::json!({"destination": "broker", "cap": self.bytes_per_day, "used": used, "holding": holding}),
        )))
    }

    pub fn report(&self) -> CapReport {
        let used_today = match self.day.lock() {
            Ok(mut day) => self.used(&mut day),
            Err(_) => 0,
        };
        CapReport {
            bytes_per_day: self.bytes_per_day,
            used_today,
            held_telemetry: self.held_telemetry.load(Ordering::Relaxed),
            held_results: self.held_results.load(Ordering::Relaxed),
        }
    }
}
