//! Recurrent state per stream, bounded in number.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tract_nnef::prelude::TValue;

/// (model load id, stream id): a model update starts its streams afresh, because the new
/// version's state may not even have the same shape.
type Key = (u64, String);

struct Slot {
    state: Option<Vec<TValue>>,
    busy: bool,
    last_used: Instant,
}

/// The live streams of all stateful models.
///
/// A `Mutex` rather than a task: the table is touched twice per stateful request, for a
/// few hundred nanoseconds, by the worker threads, which are not async; nothing is held
/// across a model run.
pub struct StreamTable {
    max: usize,
    slots: Mutex<HashMap<Key, Slot>>,
    evicted: AtomicU64,
}

/// Why a stream's state could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub enum TakeError {
    /// Another request of the same stream is running.
    Busy,
}

impl StreamTable {
    /// A table of at most `max` live streams.
    pub fn new(max: usize) -> StreamTable {
        StreamTable { max: max.max(1), slots: Mutex::new(HashMap::new()), evicted: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        // A poisoned lock only means a thread panicked while holding it; the map itself
        // is always consistent between statements, so keep using it.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a stream's state for one call (None: start from zeros) and marks the stream
    /// busy. When the table is full the least recently used idle stream is evicted.
    pub fn take(&self, model: u64, stream: &str) -> Result<Option<Vec<TValue>>, TakeError> {
        let mut slots = self.lock();
        let key = (model, stream.to_string());
        if let Some(slot) = slots.get_mut(&key) {
            if slot.busy {
                return Err(TakeError::Busy);
            }
            slot.busy = true;
            return Ok(slot.state.take());
        }
        if slots.len() >= self.max {
            let oldest = slots
                .iter()
                .filter(|(_, s)| !s.busy)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                slots.remove(&k);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        slots.insert(key, Slot { state: None, busy: true, last_used: Instant::now() });
        Ok(None)
    }

    /// Gives a stream's state back after a call: the new state, or (after a failure) the
    /// state it had before.
    pub fn put(&self, model: u64, stream: &str, state: Option<Vec<TValue>>) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(&(model, stream.to_string())) {
            slot.state = state;
            slot.busy = false;
            slot.last_used = Instant::now();
        }
    }

    /// Forgets a stream: its next call starts from zeros. Returns whether it existed.
    pub fn reset(&self, model: u64, stream: &str) -> bool {
        self.lock().remove(&(model, stream.to_string())).is_some()
    }

    /// Number of live streams.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no stream is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams evicted to respect the bound, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}
