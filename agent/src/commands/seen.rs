//! Command ids already answered, with their final replies, kept across restarts so that
//! a repeated request (a retry, a redelivery after a crash) gets the same answer and
//! does not run twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Ids remembered at most; the oldest go first.
const CAPACITY: usize = 1000;
/// Ids older than this are forgotten.
pub const WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// Seconds since the epoch when the final reply was recorded.
    at: u64,
    reply: Value,
}

pub struct Seen {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Seen {
    /// Loads the file; an unreadable one starts empty (with a warning): forgetting ids
    /// risks running a command twice, refusing to start would be worse.
    pub fn open(path: PathBuf) -> Seen {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "command history unreadable; starting afresh");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Seen { path, entries }
    }

    /// The recorded final reply of `id`, if it was answered within the window.
    pub fn get(&self, id: &str) -> Option<&Value> {
        let e = self.entries.get(id)?;
        (now_s().saturating_sub(e.at) < WINDOW.as_secs()).then_some(&e.reply)
    }

    /// Records a final reply and writes the file (atomically).
    pub fn record(&mut self, id: &str, reply: Value) {
        let now = now_s();
        self.entries.retain(|_, e| now.saturating_sub(e.at) < WINDOW.as_secs());
        while self.entries.len() >= CAPACITY {
            let oldest = self.entries.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
        self.entries.insert(id.to_string(), Entry { at: now, reply });
        if let Err(e) = self.write() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record a command reply; a retry may run it again");
        }
    }

    fn write(&self) -> std::io::Result<()> {
        edge_spool::durable::replace(&self.path, &serde_json::to_vec(&self.entries)?)
    }
}
