//! Resource pressure: memory, temperature and load sampled on a timer (never per
//! request), judged against `[fallback.resource]`, behind a latch so that the route
//! does not flap.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::hysteresis::{Change, Latch};
use super::report::ResourceReport;
use crate::config::fallback::ResourceSection;
use crate::telemetry::SystemReading;

/// Margins a reading must clear, beyond its limit, before the latch may release.
const MEMORY_MARGIN: f64 = 1.10;
const TEMPERATURE_MARGIN_C: f32 = 3.0;
const LOAD_MARGIN: f64 = 0.90;

/// What the device looked like at the last sample.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub mem_avail_mb: u64,
    pub temp_c: Option<f32>,
    pub load_per_cpu: f64,
}

impl Sample {
    /// Memory available is the lower of the system's and the cgroup's: a service with
    /// `MemoryMax=` runs out long before the machine does.
    pub fn from_reading(r: &SystemReading, cgroup_avail: Option<u64>, cpus: usize) -> Sample {
        let avail = match cgroup_avail {
            Some(c) => r.mem_avail.min(c),
            None => r.mem_avail,
        };
        Sample {
            mem_avail_mb: avail / (1024 * 1024),
            temp_c: r.temp_c,
            load_per_cpu: r.load1 / cpus.max(1) as f64,
        }
    }
}

/// The verdict on one sample: which limits it is beyond, and whether it is inside all
/// of them by the margins.
pub fn judge(limits: &ResourceSection, s: &Sample) -> (Vec<String>, bool) {
    let mut over = Vec::new();
    let mut calm = true;
    if let Some(min) = limits.min_memory_available_mb {
        if s.mem_avail_mb < min {
            over.push(format!("memory available {} MiB < {min} MiB", s.mem_avail_mb));
        }
        calm &= s.mem_avail_mb as f64 >= min as f64 * MEMORY_MARGIN;
    }
    if let (Some(max), Some(t)) = (limits.max_temperature_c, s.temp_c) {
        if t > max {
            over.push(format!("temperature {t:.1} C > {max:.1} C"));
        }
        calm &= t <= max - TEMPERATURE_MARGIN_C;
    }
    if let Some(max) = limits.max_load_per_cpu {
        if s.load_per_cpu > max {
            over.push(format!("load per CPU {:.2} > {max:.2}", s.load_per_cpu));
        }
        calm &= s.load_per_cpu <= max * LOAD_MARGIN;
    }
    (over, calm)
}

/// The device's pressure state, shared by every request's routing.
#[derive(Debug, Default)]
pub struct Pressure {
    /// Read on every request: one atomic load.
    engaged: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    latch: Latch,
    last: Option<Sample>,
    /// Why it engaged (the limits crossed), while engaged.
    why: Vec<String>,
}

impl Pressure {
    pub fn engaged(&self) -> bool {
        self.engaged.load(Ordering::Relaxed)
    }

    /// Feeds one sample; returns the change and its explanation.
    pub fn update(
        &self,
        limits: &ResourceSection,
        sample: Sample,
        hold: Duration,
        now: Instant,
    ) -> Option<(Change, String)> {
        let (over, calm) = judge(limits, &sample);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let change = inner.latch.update(!over.is_empty(), calm, hold, now);
        if !over.is_empty() {
            inner.why = over;
        }
        inner.last = Some(sample);
        self.engaged.store(inner.latch.is_engaged(), Ordering::Relaxed);
        change.map(|c| {
            let text = match c {
                Change::Engaged => inner.why.join(", "),
                Change::Cleared => format!("within limits for {} s", hold.as_secs()),
            };
            if c == Change::Cleared {
                inner.why.clear();
            }
            (c, text)
        })
    }

    /// For the status document.
    pub fn report(&self) -> ResourceReport {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        ResourceReport {
            engaged: inner.latch.is_engaged(),
            why: inner.why.clone(),
            memory_available_mb: inner.last.as_ref().map(|s| s.mem_avail_mb),
            temperature_c: inner.last.as_ref().and_then(|s| s.temp_c),
            load_per_cpu: inner.last.as_ref().map(|s| (s.load_per_cpu * 100.0).round() / 100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ResourceSection {
        ResourceSection {
            min_memory_available_mb: Some(1000),
            max_temperature_c: Some(80.0),
            max_load_per_cpu: Some(2.0),
            sample_ms: 1000,
        }
    }

    #[test]
    fn each_limit_engages_and_margins_hold_it() {
        let ok = Sample { mem_avail_mb: 5000, temp_c: Some(50.0), load_per_cpu: 0.5 };
        assert_eq!(judge(&limits(), &ok), (vec![], true));
        let low = Sample { mem_avail_mb: 900, ..ok.clone() };
        assert_eq!(judge(&limits(), &low).0, vec!["memory available 900 MiB < 1000 MiB".to_string()]);
        // Just back above the limit but inside the margin: not calm.
        assert_eq!(judge(&limits(), &Sample { mem_avail_mb: 1050, ..ok.clone() }), (vec![], false));
        assert_eq!(judge(&limits(), &Sample { temp_c: Some(81.0), ..ok.clone() }).0.len(), 1);
        assert_eq!(judge(&limits(), &Sample { temp_c: Some(78.0), ..ok.clone() }), (vec![], false));
        // A board without sensors is never judged hot.
        assert_eq!(judge(&limits(), &Sample { temp_c: None, ..ok.clone() }), (vec![], true));
        assert_eq!(judge(&limits(), &Sample { load_per_cpu: 2.5, ..ok.clone() }).0.len(), 1);
        assert_eq!(judge(&limits(), &Sample { load_per_cpu: 1.9, ..ok }), (vec![], false));
    }

    #[test]
    fn pressure_engages_with_the_reason_and_clears_after_the_hold() {
        let p = Pressure::default();
        let t0 = Instant::now();
        let hold = Duration::from_secs(5);
        let ok = Sample { mem_avail_mb: 5000, temp_c: None, load_per_cpu: 0.1 };
        assert!(p.update(&limits(), ok.clone(), hold, t0).is_none());
        let (c, why) = p.update(&limits(), Sample { mem_avail_mb: 10, ..ok.clone() }, hold, t0).unwrap();
        assert_eq!(c, Change::Engaged);
        assert!(why.contains("memory available 10 MiB"), "{why}");
        assert!(p.engaged());
        assert!(p.update(&limits(), ok.clone(), hold, t0 + Duration::from_secs(1)).is_none());
        assert!(p.engaged());
        let (c, _) = p.update(&limits(), ok, hold, t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(c, Change::Cleared);
        assert!(!p.engaged());
    }
}
