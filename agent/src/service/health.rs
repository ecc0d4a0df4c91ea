//! What the agent knows about itself: start time, readiness, what it is doing, and the
//! state of its connections, for `/status`, `STATUS=` and readiness probes.
//!
//! Only the agent's own life cycle lives here. The parts (the MQTT link, the update
//! task, the cloud fallback) are not looked up through it: `service::run` hands each
//! consumer the handles it needs when it builds it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The agent's own state, shared by the service, the API and the watchdog.
#[derive(Debug)]
pub struct Health {
    pub started: Instant,
    pub device: String,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Part name → one line about its state (`listening 127.0.0.1:8470`, ...).
    connections: Mutex<BTreeMap<String, String>>,
    /// What the agent is doing, one line (`serving 2 models`, `reloading`, ...).
    doing: Mutex<String>,
    /// The request deadline in milliseconds: shared here because a reload may change it.
    deadline_ms: AtomicU64,
}

impl Health {
    /// A new, not yet ready agent.
    pub fn new(device: &str, deadline: Duration) -> Health {
        Health {
            started: Instant::now(),
            device: device.to_string(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            connections: Mutex::new(BTreeMap::new()),
            doing: Mutex::new("starting".into()),
            deadline_ms: AtomicU64::new(deadline.as_millis() as u64),
        }
    }

    /// Ready to serve: models loaded, listeners bound, not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Marks the agent ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks the agent as shutting down: readiness turns false at once.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Records the state of one connection or listener.
    pub fn set_connection(&self, part: &str, state: impl Into<String>) {
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).insert(part.to_string(), state.into());
    }

    /// All connection states.
    pub fn connections(&self) -> BTreeMap<String, String> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current request deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed))
    }

    /// Changes the request deadline (reload).
    pub fn set_deadline(&self, d: Duration) {
        self.deadline_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Sets what the agent is doing.
    pub fn set_doing(&self, what: impl Into<String>) {
        *self.doing.lock().unwrap_or_else(|p| p.into_inner()) = what.into();
    }

    /// What the agent is doing.
    pub fn doing(&self) -> String {
        self.doing.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
