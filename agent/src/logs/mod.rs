//! The agent's own log: a few rotating files of JSON lines under `<state_dir>/log/`,
//! bounded in total bytes, read back by `logs/upload`, `diagnostics/bundle` and
//! `edge-agent logs` (the active file included); and the log level, changeable at run
//! time (`config/set log.level`).
//!
//! The file layer never blocks the code that logs: each formatted line goes into a
//! bounded channel to a writer thread, and a line that finds the channel full is dropped
//! and counted ([`dropped`]). The writer appends to `agent.log` and, when it would pass
//! its share of the bound, shifts `agent.log.1 .. agent.log.{N-1}` up by one (the oldest
//! falls off) and starts a new `agent.log`.

pub mod journal;
pub mod read;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::{Registry, reload};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 4096;

/// Lines dropped because the writer fell behind, since start.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because the writer fell behind (or could not write), since start.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The directory of the own log in a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("log")
}

/// The active file's name; older ones are `agent.log.1` (newest) and up.
pub const ACTIVE: &str = "agent.log";

/// How large the own log may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// All files together.
    pub total_bytes: u64,
    /// Files kept, the active one included (at least 2).
    pub files: u32,
}

impl Bound {
    fn per_file(self) -> u64 {
        (self.total_bytes / u64::from(self.files.max(2))).max(1)
    }
}

/// A `MakeWriter` for the fmt layer: each event's formatted line goes to the channel.
#[derive(Clone)]
pub struct FileSink {
    tx: SyncSender<Vec<u8>>,
}

/// One event's line on its way to the channel.
pub struct LineWriter<'a> {
    tx: &'a SyncSender<Vec<u8>>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The fmt layer writes an event's whole line at once; a full queue loses the
        // line, never blocks the logging thread.
        match self.tx.try_send(buf.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for FileSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { tx: &self.tx }
    }
}

/// Starts the writer thread for `dir` and returns the sink the fmt layer writes to.
pub fn start(dir: &Path, bound: Bound) -> std::io::Result<FileSink> {
    std::fs::create_dir_all(dir)?;
    // Files past the count (`log.files` was lowered) would hold the bound no longer.
    for path in files(dir) {
        let n = path.extension().and_then(|e| e.to_str()).and_then(|e| e.parse::<u32>().ok());
        if n.is_some_and(|n| n >= bound.files.max(2)) {
            std::fs::remove_file(&path)?;
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let mut writer = Rotating::open(dir, bound)?;
    std::thread::Builder::new().name("edge-agent-log".into()).spawn(move || writer.run(rx))?;
    Ok(FileSink { tx })
}

/// The writer thread's files.
struct Rotating {
    dir: PathBuf,
    bound: Bound,
    out: BufWriter<File>,
    size: u64,
}

impl Rotating {
    fn open(dir: &Path, bound: Bound) -> std::io::Result<Rotating> {
        let path = dir.join(ACTIVE);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Rotating { dir: dir.to_path_buf(), bound, out: BufWriter::new(file), size })
    }

    fn run(&mut self, rx: Receiver<Vec<u8>>) {
        while let Ok(line) = rx.recv() {
            self.write(&line);
            // Write out whenever the queue runs dry, so a reader sees the active file
            // up to the last event.
            while let Ok(line) = rx.try_recv() {
                self.write(&line);
            }
            if self.out.flush().is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.bound.per_file() && self.rotate().is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.out.write_all(line).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.size += len;
    }

    /// Shifts the files up by one and starts an empty active file.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let n = self.bound.files.max(2);
        let _ = std::fs::remove_file(self.dir.join(format!("{ACTIVE}.{}", n - 1)));
        for i in (1..n - 1).rev() {
            let from = self.dir.join(format!("{ACTIVE}.{i}"));
            if from.exists() {
                std::fs::rename(&from, self.dir.join(format!("{ACTIVE}.{}", i + 1)))?;
            }
        }
        std::fs::rename(self.dir.join(ACTIVE), self.dir.join(format!("{ACTIVE}.1")))?;
        *self = Rotating::open(&self.dir, self.bound)?;
        Ok(())
    }
}

/// The files of the own log, oldest first (the active one last).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut numbered: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(ACTIVE)?.strip_prefix('.')?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    numbered.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut all: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    let active = dir.join(ACTIVE);
    if active.exists() {
        all.push(active);
    }
    all
}

/// Reads a log filter: comma-separated directives, each a level (`error`, `warn`, `info`,
/// `debug`, `trace`, `off`) or `target=level` (`edge_agent::mqtt=debug`). `None` for
/// anything else, such as a misspelt level, which the filter itself would take as the
/// name of a target and so pass silently. Span and field filters are not supported:
/// they need a regular-expression engine in the binary for a feature devices do not use.
pub fn parse_filter(text: &str) -> Option<Targets> {
    let level = |l: &str| {
        ["off", "error", "warn", "info", "debug", "trace"].iter().any(|k| k.eq_ignore_ascii_case(l.trim()))
    };
    let target = |t: &str| {
        !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
    };
    let fine = text.split(',').all(|d| match d.trim().split_once('=') {
        Some((t, l)) => target(t.trim()) && level(l),
        None => level(d),
    });
    if !fine {
        return None;
    }
    text.split(',').map(str::trim).collect::<Vec<_>>().join(",").parse().ok()
}

/// The level filter's reload handle, once logging is set up.
static LEVEL: OnceLock<Level> = OnceLock::new();

struct Level {
    handle: reload::Handle<Targets, Registry>,
    state: std::sync::Mutex<LevelState>,
}

struct LevelState {
    filter: String,
    /// Bumped by each change, so that a pending revert of an older one does nothing.
    generation: u64,
    /// The filter a temporary change goes back to, and when.
    revert: Option<(String, std::time::SystemTime)>,
}

/// The log level as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogStatus {
    /// The filter in force.
    pub level: String,
    /// When a temporary level goes back (RFC 3339), and to what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_to: Option<String>,
    /// Lines the own log dropped because its writer fell behind, since start.
    pub dropped_lines: u64,
}

/// Keeps the reload handle of the logging set up at start (`cli::init_logging`).
pub fn keep_handle(handle: reload::Handle<Targets, Registry>, level: &str) {
    let state = LevelState { filter: level.to_string(), generation: 0, revert: None };
    let _ = LEVEL.set(Level { handle, state: std::sync::Mutex::new(state) });
}

/// Why the level could not change.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error(
        "`{0}` is not a log filter; use error, warn, info, debug or trace (or a filter such as edge_agent=debug,info)"
    )]
    Filter(String),
    #[error("the log level cannot change in this process: its logging was not set up by edge-agent")]
    NoHandle,
}

/// A change made by [`set_level`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub previous: String,
    /// What [`revert`] takes to undo this change (and no later one).
    pub generation: u64,
    /// The filter a temporary change goes back to.
    pub revert_to: Option<String>,
}

/// Changes the level filter of the running process, for good or (with `revert_at`)
/// until [`revert`] is called with the returned generation. A temporary change made
/// over another goes back to the level before the first.
pub fn set_level(filter: &str, revert_at: Option<std::time::SystemTime>) -> Result<Changed, LevelError> {
    let new = parse_filter(filter).ok_or_else(|| LevelError::Filter(filter.to_string()))?;
    let level = LEVEL.get().ok_or(LevelError::NoHandle)?;
    let mut state = level.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    level.handle.reload(new).map_err(|_| LevelError::NoHandle)?;
    let previous = std::mem::replace(&mut state.filter, filter.to_string());
    state.generation += 1;
    state.revert = revert_at.map(|at| {
        let to = state.revert.take().map_or_else(|| previous.clone(), |(to, _)| to);
        (to, at)
    });
    Ok(Changed {
        previous,
        generation: state.generation,
        revert_to: state.revert.as_ref().map(|r| r.0.clone()),
    })
}

/// Undoes the temporary change of `generation` if no other change came since; returns
/// the filter it went back to.
pub fn revert(generation: u64) -> Option<String> {
    let level = LEVEL.get()?;
    let mut state = level.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if state.generation != generation {
        return None;
    }
    let (to, _) = state.revert.take()?;
    // The filter was in force before, so it parses; fall back to `info` all the same.
    let filter = parse_filter(&to).unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    level.handle.reload(filter).ok()?;
    state.filter = to.clone();
    state.generation += 1;
    Some(to)
}

/// The log level and the own log's losses, when logging was set up by edge-agent.
pub fn status() -> Option<LogStatus> {
    let level = LEVEL.get()?;
    let state = level.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Some(LogStatus {
        level: state.filter.clone(),
        revert_at: state.revert.as_ref().map(|(_, at)| humantime::format_rfc3339_seconds(*at).to_string()),
        revert_to: state.revert.as_ref().map(|(to, _)| to.clone()),
        dropped_lines: dropped(),
    })
}

#[cfg(test)]
mod tests;
