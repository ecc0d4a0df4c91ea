//! Capture: keeping the inputs worth retraining on, with what the model said about them.
//!
//! The stream task asks [`Capture::wanted`] before it copies anything (one atomic load:
//! capture is on and the hourly budget is not spent), then, with the result in hand,
//! [`Capture::reason`] (low confidence, a random share; drift and shadow disagreement are
//! raised by their owners through [`Flags`]) and [`Capture::offer`], which hands the
//! sample to the writer thread through a bounded channel and never waits: a full channel
//! drops the sample and counts it. The writer owns the [`store::Store`], which keeps
//! the byte bound (the oldest go first) and the free-space margin.
//!
//! Layout: `store.rs` the file format and the bounded directory; `npy.rs` NumPy's `.npy`
//! for exports; `export.rs` an export directory that Python reads with numpy alone.

pub mod export;
pub mod npy;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::CaptureSection;
pub use store::{Meta, Refused, Sample};

/// The directory of the store under the state directory.
pub const DIR: &str = "capture";

/// Samples waiting for the writer before more are dropped (and counted).
const QUEUE: usize = 32;

/// Why a sample was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The top score was below `capture.low_confidence`.
    LowConfidence,
    /// Drift was active for the model (raised by drift monitoring).
    Drift,
    /// A shadow candidate disagreed with the active version (raised by shadow runs).
    ShadowDisagreement,
    /// The unbiased random share, `capture.random_share`.
    Random,
}

impl Reason {
    /// The name used in files, exports and replies.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LowConfidence => "low-confidence",
            Reason::Drift => "drift",
            Reason::ShadowDisagreement => "shadow-disagreement",
            Reason::Random => "random",
        }
    }
}

/// Reasons that other parts of the agent know about a result (drift monitoring, shadow
/// runs); the stream task passes them to [`Capture::reason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub drift: bool,
    pub shadow_disagreement: bool,
}

/// Counters of what capture did, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub kept: AtomicU64,
    /// Refused by the hourly count.
    pub over_rate: AtomicU64,
    /// Dropped because the writer was behind.
    pub queue_full: AtomicU64,
    /// Refused by the disk margin.
    pub disk_tight: AtomicU64,
    /// Refused for another reason (too large, a write error).
    pub failed: AtomicU64,
}

/// The handle stream tasks share (one per agent).
pub struct Capture {
    low_confidence: f64,
    random_share: f64,
    max_payload_bytes: usize,
    max_per_hour: u32,
    /// Times (ms) of the samples accepted in the last hour, oldest first. A mutex: the
    /// critical section is a few pushes and pops, never across an await, and only
    /// reached when a result already has a reason to be kept.
    hour: Mutex<VecDeque<u64>>,
    /// Until when (ms) the hourly budget is spent: the cheap test of [`Capture::wanted`].
    full_until: AtomicU64,
    tx: std::sync::mpsc::SyncSender<Sample>,
    pub counters: Arc<Counters>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

const HOUR_MS: u64 = 3_600_000;

/// The store's directory under `state_dir`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

impl Capture {
    /// Opens the store under `state_dir` and starts the writer thread; `None` when
    /// capture is off. The thread ends when the last handle is dropped, after writing
    /// what it was handed; [`Writer::finish`] waits for that.
    pub fn start(cfg: &CaptureSection, state_dir: &Path) -> std::io::Result<Option<(Arc<Capture>, Writer)>> {
        if !cfg.enabled {
            return Ok(None);
        }
        let limits = store::Limits {
            max_bytes: cfg.max_kb.saturating_mul(1024),
            min_free_bytes: cfg.min_free_mb.saturating_mul(1024 * 1024),
        };
        let store = store::Store::open(&dir(state_dir), limits)?;
        let (capture, writer) = Capture::with_store(cfg, store)?;
        Ok(Some((Arc::new(capture), writer)))
    }

    /// A handle over an opened store (tests give one with a fake disk).
    pub fn with_store(cfg: &CaptureSection, mut store: store::Store) -> std::io::Result<(Capture, Writer)> {
        // Samples already on disk from the last hour count against this hour's budget,
        // so a restart loop cannot write more than the bound.
        let since = now_ms().saturating_sub(HOUR_MS);
        let mut hour: Vec<u64> = store::entries(store.dir())?
            .iter()
            .filter_map(|e| std::fs::metadata(&e.path).ok()?.modified().ok())
            .filter_map(|t| t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_millis() as u64))
            .filter(|t| *t >= since)
            .collect();
        hour.sort_unstable();
        let counters = Arc::new(Counters::default());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Sample>(QUEUE);
        let c = counters.clone();
        let thread = std::thread::Builder::new().name("capture".into()).spawn(move || {
            for sample in rx {
                match store.put(&sample) {
                    Ok(_) => {
                        c.kept.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let counter = match e {
                            Refused::DiskTight { .. } => &c.disk_tight,
                            _ => &c.failed,
                        };
                        // Logged at the first refusal and then every hundredth, so a
                        // tight disk does not fill the journal too.
                        if counter.fetch_add(1, Ordering::Relaxed) % 100 == 0 {
                            tracing::warn!(model = %sample.meta.model, error = %e, "sample not captured");
                        }
                    }
                }
            }
        })?;
        let writer = Writer { thread, counters: counters.clone() };
        let capture = Capture {
            low_confidence: cfg.low_confidence,
            random_share: cfg.random_share,
            max_payload_bytes: cfg.max_payload_bytes,
            max_per_hour: cfg.max_per_hour,
            hour: Mutex::new(hour.into()),
            full_until: AtomicU64::new(0),
            tx,
            counters,
        };
        Ok((capture, writer))
    }

    /// Whether a result may be kept at all now: false while the hourly budget is spent,
    /// so the stream task copies nothing then.
    pub fn wanted(&self) -> bool {
        self.full_until.load(Ordering::Relaxed) <= now_ms()
    }

    /// The largest raw payload kept with a sample.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Why a result with this top score should be kept, if it should: drift and shadow
    /// disagreement first (the rarer, more telling reasons), then low confidence, then
    /// the random share (drawn for every result, so the share is of all results).
    pub fn reason(&self, score: Option<f64>, flags: Flags) -> Option<Reason> {
        let random = self.random_share > 0.0 && rand::random::<f64>() < self.random_share;
        if flags.drift {
            Some(Reason::Drift)
        } else if flags.shadow_disagreement {
            Some(Reason::ShadowDisagreement)
        } else if score.is_some_and(|s| s < self.low_confidence) {
            Some(Reason::LowConfidence)
        } else if random {
            Some(Reason::Random)
        } else {
            None
        }
    }

    /// Hands a sample to the writer, within the hourly count; never waits.
    pub fn offer(&self, sample: Sample) {
        if !self.take_budget(sample.meta.time_ms) {
            self.counters.over_rate.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.try_send(sample).is_err() {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one sample against the last hour's budget, if it has room.
    fn take_budget(&self, now: u64) -> bool {
        let Ok(mut hour) = self.hour.lock() else { return false };
        while hour.front().is_some_and(|t| *t + HOUR_MS <= now) {
            hour.pop_front();
        }
        if hour.len() >= self.max_per_hour as usize {
            // Spent until the oldest of the hour leaves the window.
            let until = hour.front().map_or(now, |t| t + HOUR_MS);
            self.full_until.store(until, Ordering::Relaxed);
            return false;
        }
        hour.push_back(now);
        true
    }

    /// Waits until the writer has taken every sample offered so far (tests).
    #[cfg(test)]
    pub fn settle(&self, want: u64, limit: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            let c = &self.counters;
            let done = c.kept.load(Ordering::Relaxed)
                + c.disk_tight.load(Ordering::Relaxed)
                + c.failed.load(Ordering::Relaxed);
            if done >= want {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        false
    }
}

/// The writer thread, for the daemon to wait on at shutdown.
pub struct Writer {
    thread: std::thread::JoinHandle<()>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Waits (at most `limit`) until the writer has written what it was handed, once
    /// every [`Capture`] handle is gone, and logs what capture did in this run.
    pub async fn finish(self, limit: std::time::Duration) {
        let Writer { thread, counters } = self;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(limit, joined).await.is_err() {
            tracing::warn!("the capture writer did not finish in time; the last samples may be missing");
        }
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        tracing::info!(
            kept = c(&counters.kept),
            over_rate = c(&counters.over_rate),
            queue_full = c(&counters.queue_full),
            disk_tight = c(&counters.disk_tight),
            failed = c(&counters.failed),
            "capture: samples kept and refused in this run"
        );
    }
}

/// The message's bytes as received, with their format's name, when they are at most
/// `max` bytes: what a retraining pipeline may want besides the decoded window (an
/// image before resizing, say). Samples a source decoded itself have no such bytes.
pub fn raw_payload(
    payload: &edge_infer::pipeline::Payload,
    spec: &edge_infer::engine::spec::ModelSpec,
    max: usize,
) -> Option<(String, Vec<u8>)> {
    use edge_infer::pipeline::Payload;
    let name = |f: edge_infer::engine::spec::PayloadFormat| {
        serde_json::to_value(f).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    };
    match payload {
        _ if max == 0 => None,
        Payload::Bytes(b) if b.len() <= max => Some((name(spec.pre.format), b.clone())),
        Payload::Encoded(f, b) if b.len() <= max => Some((name(*f), b.clone())),
        Payload::Json(v) => serde_json::to_vec(v).ok().filter(|b| b.len() <= max).map(|b| ("json".into(), b)),
        _ => None,
    }
}
