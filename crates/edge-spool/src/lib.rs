//! edge-spool: the on-disk store-and-forward queue for messages accepted while the broker
//! is away, and the atomic file replacement it and edge-agent's state files rely on.
//!
//! # Layout
//! - this file: [`Spool`], its configuration, records and counters; open, append, replay,
//!   acknowledge.
//! - `cursor`: the `acked` cursor file (how far delivery got, the next id).
//! - `segment`: segment files: naming, listing, scanning, rewriting without telemetry.
//! - `frame`: the frame format (length, postcard payload, CRC32C) and its decoder.
//! - `read`: replay: reading records back in id order across segments.
//! - `room`: the `max_bytes` bound and the drop policy (telemetry first).
//! - `error`: [`SpoolError`].
//! - [`durable`]: atomic replacement of small files and directory syncs.
//!
//! # Example
//! ```
//! use edge_spool::{Class, FsyncPolicy, Record, Spool, SpoolConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let dir = tmp.path().join("spool");
//! let cfg = SpoolConfig {
//!     dir,
//!     max_bytes: 16 << 20,
//!     segment_bytes: 1 << 20,
//!     fsync: FsyncPolicy::Always,
//! };
//! let (mut spool, _report) = Spool::open(cfg)?;
//! let (id, _dropped) = spool.append(&Record {
//!     topic: "edge/dev1/results".into(),
//!     qos: 1,
//!     retain: false,
//!     payload: b"{}".to_vec(),
//!     class: Class::Result,
//!     correlation: None,
//! })?;
//! // The publisher hands the batch to MQTT and acknowledges on PUBACK.
//! let batch = spool.next_batch(10)?;
//! assert_eq!(batch[0].0, id);
//! spool.ack_through(id);
//! spool.persist_cursor()?;
//! # Ok(())
//! # }
//! ```
//!
//! Every message the agent accepted to publish (results, events, command replies,
//! telemetry) is appended here while MQTT is down; once connected, the publisher replays
//! it in order with QoS 1 and acknowledges records as PUBACKs come in. The spool survives
//! `kill -9` and a power cut at any byte: a torn tail is detected and cut at the next
//! open, never replayed as garbage.
//!
//! # Using it
//! One owner (the MQTT task) holds the [`Spool`]; every method takes `&mut self`, so
//! there are no locks. Appends go to the OS before they return, so `kill -9` loses
//! nothing already appended; [`FsyncPolicy`] decides what a power cut can lose. The owner
//! calls [`Spool::sync`] on its timer (for `Interval`) and [`Spool::persist_cursor`]
//! every ~200 ms, and both at shutdown. Replay is [`Spool::next_batch`] → publish →
//! [`Spool::ack_through`] on PUBACK, and [`Spool::rewind`] after a disconnect so that
//! what was handed out but not acknowledged is handed out again.
//!
//! Every method does blocking file I/O (an fsync on an SD card can take tens of
//! milliseconds, opening reads the whole spool once): from async code, keep the spool on
//! a blocking thread (`spawn_blocking` or a dedicated thread) rather than on the runtime.
//!
//! # Format
//! `dir` holds segment files and one cursor file:
//! - `{first_id:020}.seg`: frames `u32 length (LE) ‖ payload ‖ u32 CRC32C(payload) (LE)`,
//!   the payload being the postcard encoding of `StoredRecord { id: u64, record: Record }`
//!   (fields in declaration order: `id`, then `topic`, `qos`, `retain`, `payload`,
//!   `class` as a variant index, `correlation` as an option). The name is the first id
//!   ever written to the file; after telemetry was dropped from it, its first record may
//!   have a higher id.
//! - `acked`: one line `acked=<id> next=<id> crc32c=<8 hex>`: every id ≤ `acked` was
//!   delivered; `next` is the id the spool would have assigned next, so ids are never
//!   reused even when the files that held the highest ones are gone. Replaced
//!   atomically (`acked.tmp`, rename). Missing or damaged ⇒ 0 and a warning: everything
//!   on disk is replayed again (duplicates, not loss).
//! - `*.tmp`: leftovers of an interrupted atomic write, deleted at open.
//!
//! Changing `Record` changes the on-disk format (postcard is not self-describing):
//! old segments would read as damaged. A new field needs a new file extension and a
//! conversion at open.
//!
//! Ids are assigned by the spool, start at 1 and increase by one per append, never
//! reused across restarts; dropped records and failed appends leave gaps. Acknowledged
//! segments are deleted, except the last one: it is appended to and holds the highest
//! id; it goes once a newer segment exists.
//!
//! # Recovery
//! Segments are read in id order. In the last one, the first bad frame (short header,
//! zero length, length past the end or above 64 MiB, CRC mismatch, undecodable payload,
//! id not increasing) is where a crash tore the tail: the file is cut there and the
//! bytes counted in [`OpenReport::torn_bytes_cut`]. In an earlier segment a bad frame is
//! storage damage: the frames before it are kept, the rest of that file is unreadable,
//! and [`OpenReport::bad_segments`] says so; the next segments are read as usual.
//!
//! # Bound and drop policy
//! Segment files never total more than `max_bytes` after an append (a spool reopened with
//! a smaller `max_bytes` shrinks on its first append). When an append would
//! go over, the spool first drops the oldest unacknowledged telemetry: it rewrites the
//! oldest segment holding some without it (and without acknowledged records), repeating
//! with the next one as needed. Only when no telemetry is left does it drop whole oldest
//! segments. Every dropped unacknowledged record is counted by class ([`Dropped`]);
//! acknowledged records are freed, not dropped. Records handed out but not acknowledged
//! can be dropped too (the broker may still acknowledge them; that is harmless). A
//! rewrite briefly needs one more segment of disk space for its `.tmp`. Records found
//! unreadable during replay (storage damage after they were written) are counted as
//! dropped too.
//!
//! # Memory
//! Per segment: its ids, lengths and class counts, never payloads. Per record handed out
//! by `next_batch` and not yet acknowledged: 16 bytes (id and class), so that
//! acknowledgments keep the class counts exact without reading the disk; the publisher's
//! in-flight window bounds this in practice.

#![warn(missing_docs)]

mod cursor;
pub mod durable;
mod error;
mod frame;
#[cfg(test)]
mod props;
mod read;
mod room;
mod segment;
#[cfg(test)]
mod tests;

pub use error::SpoolError;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

use cursor::Cursor;
use read::Reader;
use segment::Segment;

/// What a record is; decides what is dropped first when the spool is full (telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Class {
    /// An inference result.
    Result,
    /// Something that happened (model swapped, fallback engaged, ...).
    Event,
    /// A reply to a command.
    Reply,
    /// A periodic report; totals since start, so a lost one loses no information, which is
    /// why it goes first when the spool is full.
    Telemetry,
}

impl Class {
    /// Every class, in the order of [`Dropped`]'s fields.
    pub const ALL: [Class; 4] = [Class::Result, Class::Event, Class::Reply, Class::Telemetry];

    /// The name used in logs, metrics and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Result => "result",
            Class::Event => "event",
            Class::Reply => "reply",
            Class::Telemetry => "telemetry",
        }
    }

    /// Index into per-class count arrays.
    fn index(self) -> usize {
        match self {
            Class::Result => 0,
            Class::Event => 1,
            Class::Reply => 2,
            Class::Telemetry => 3,
        }
    }
}

/// One message to publish later. Its encoding is the on-disk format: see the crate docs
/// before changing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The full MQTT topic.
    pub topic: String,
    /// The QoS the message was accepted with (replay itself uses QoS 1).
    pub qos: u8,
    /// The MQTT retain flag.
    pub retain: bool,
    /// The message body, as published.
    pub payload: Vec<u8>,
    /// What it is, which decides what is dropped first.
    pub class: Class,
    /// MQTT 5 correlation data of a reply sent to a request's response topic.
    pub correlation: Option<Vec<u8>>,
}

/// When appended data is forced to the storage. Appends reach the OS before they return
/// under every policy, so a process crash loses nothing; the policy decides what a power
/// cut can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before `append`/`append_batch` return: nothing acknowledged to the caller is lost.
    Always,
    /// When the owner calls [`Spool::sync`] on its timer, and on an append this long after
    /// the last sync (in case the timer is starved). A power cut loses at most about this
    /// much.
    Interval(Duration),
    /// Only on an explicit [`Spool::sync`]; the kernel writes back on its own (about 30 s).
    Never,
}

/// Where the spool lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Created if missing; holds only spool files.
    pub dir: PathBuf,
    /// Upper bound on the total size of the segment files.
    pub max_bytes: u64,
    /// A new segment starts when the current one would exceed this. Also the largest
    /// record the spool accepts (with `max_bytes` and 64 MiB).
    pub segment_bytes: u64,
    /// When appended data is forced to storage.
    pub fsync: FsyncPolicy,
}

/// Unacknowledged records dropped to stay within `max_bytes` (or lost to storage damage
/// found while reading), by class.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// Inference results.
    pub result: u64,
    /// Events.
    pub event: u64,
    /// Command replies.
    pub reply: u64,
    /// Telemetry reports.
    pub telemetry: u64,
}

impl Dropped {
    /// All classes together.
    pub fn total(&self) -> u64 {
        self.result + self.event + self.reply + self.telemetry
    }

    /// Adds per-class counts indexed by [`Class::index`].
    fn add_counts(&mut self, counts: &[u64; 4]) {
        self.result += counts[0];
        self.event += counts[1];
        self.reply += counts[2];
        self.telemetry += counts[3];
    }
}

/// The spool's state, for telemetry and `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolStats {
    /// Unacknowledged records on disk.
    pub records: u64,
    /// Total size of the segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Since open.
    pub dropped: Dropped,
    /// Cut from a torn tail at open.
    pub torn_bytes_cut: u64,
    /// The id the next append gets.
    pub next_id: u64,
    /// Every id up to this one was delivered.
    pub acked: u64,
}

/// What open (or [`Spool::read_all`]) found. The spool does not log it: the caller does,
/// once, with its own context.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Unacknowledged records on disk.
    pub records: u64,
    /// Segment files read.
    pub segments: usize,
    /// Bytes of a torn last frame cut from the last segment (for `read_all`: that would be).
    pub torn_bytes_cut: u64,
    /// One sentence per damaged segment: which file, where, what was kept.
    pub bad_segments: Vec<String>,
}

/// The spool: see the crate docs.
pub struct Spool {
    cfg: SpoolConfig,
    /// In id order; only the last one is appended to.
    segments: VecDeque<Segment>,
    /// Append handle on the last segment; opened lazily, dropped whenever that file is
    /// replaced or removed.
    writer: Option<File>,
    /// Separate read handle, positioned where replay continues.
    reader: Option<Reader>,
    next_id: u64,
    acked: u64,
    /// What the cursor file holds.
    persisted: Cursor,
    /// The lowest id not yet handed out (always above `acked`).
    read_next: u64,
    /// Highest id whose class the spool has accounted for: records in
    /// (`acked`, `known_through`] are exactly the entries of `handed`.
    known_through: u64,
    handed: VecDeque<(u64, Class)>,
    dropped: Dropped,
    torn_bytes_cut: u64,
    /// The last segment has data written since its last fsync.
    data_unsynced: bool,
    /// Files were created, renamed or removed since the directory was last synced.
    dir_unsynced: bool,
    last_sync: Instant,
    /// Encoding scratch space, kept to avoid an allocation per append.
    frames: Vec<u8>,
    read_buf: Vec<u8>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.cfg.dir).field("stats", &self.stats()).finish()
    }
}

impl Spool {
    /// Opens (or creates) the spool in `cfg.dir`, recovering from a crash as the module
    /// docs describe.
    pub fn open(cfg: SpoolConfig) -> Result<(Spool, OpenReport), SpoolError> {
        validate(&cfg)?;
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| SpoolError::io("create the directory", &dir, e))?;
        let listing = segment::list(&dir)?;
        for tmp in &listing.tmp {
            // The rename that would have replaced the original never happened, so the
            // original is intact and the leftover is only wasted space.
            if let Err(e) = segment::remove(tmp) {
                warn!(path = %tmp.display(), error = %e, "cannot delete a leftover spool .tmp file");
            }
        }
        let loaded = cursor::load(&dir, !listing.segments.is_empty());
        let cursor = loaded.unwrap_or_default();
        let acked = cursor.acked;

        let mut report = OpenReport::default();
        let mut segments = VecDeque::with_capacity(listing.segments.len());
        let mut min_id = 1;
        let mut highest = 0;
        let count = listing.segments.len();
        for (i, (name_id, path)) in listing.segments.into_iter().enumerate() {
            let scan = segment::scan(&path, min_id.max(name_id), acked, &mut |_, _| {})?;
            let mut seg = Segment::new(&dir, name_id);
            seg.last = scan.last;
            seg.end = scan.end;
            seg.bytes = scan.file_len;
            seg.counts = scan.counts;
            if let Some((offset, bad)) = &scan.bad {
                if i + 1 == count {
                    cut_torn_tail(&seg.path, *offset, &cfg.fsync)?;
                    report.torn_bytes_cut = scan.file_len - offset;
                    seg.bytes = *offset;
                } else {
                    report.bad_segments.push(segment::damage_report(&seg.file_name(), &scan, *offset, bad));
                    seg.sealed = true;
                }
            }
            min_id = scan.last.map_or(min_id, |last| last + 1);
            highest = highest.max(name_id).max(scan.last.unwrap_or(0));
            segments.push_back(seg);
        }
        // Computed before deleting anything: the ids in deleted files count too.
        let next_id = (highest + 1).max(acked.saturating_add(1)).max(cursor.next).max(1);

        let mut persisted = cursor;
        if loaded.is_none() {
            // Written now, so that a missing file at a later start means it was lost (worth
            // the warning) and not that nothing was acknowledged yet.
            persisted = Cursor { acked, next: next_id };
            cursor::store(&dir, persisted, &cfg.fsync)?;
        }
        let mut spool = Spool {
            dir_unsynced: false,
            cfg,
            segments,
            writer: None,
            reader: None,
            next_id,
            acked,
            persisted,
            read_next: acked.saturating_add(1),
            known_through: acked,
            handed: VecDeque::new(),
            dropped: Dropped::default(),
            torn_bytes_cut: report.torn_bytes_cut,
            data_unsynced: false,
            last_sync: Instant::now(),
            frames: Vec::new(),
            read_buf: Vec::new(),
        };
        // Safe for every segment but the last: the cursor file on disk already covers their
        // ids. The last stays so that the highest id stays on disk (see `free_acked`).
        spool.free_acked();
        report.records = spool.segments.iter().map(Segment::unacked).sum();
        report.segments = spool.segments.len();
        Ok((spool, report))
    }

    /// Appends; returns the id and what was dropped to make room (empty if nothing).
    /// Syncs before returning under [`FsyncPolicy::Always`].
    pub fn append(&mut self, rec: &Record) -> Result<(u64, Dropped), SpoolError> {
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        let id = self.next_id;
        let mut dropped = Dropped::default();
        let appended = encode_checked(id, rec, &self.cfg, &mut frames)
            .and_then(|()| self.append_frame(id, rec.class, &frames, &mut dropped));
        self.frames = frames;
        appended?;
        self.sync_per_policy()?;
        Ok((id, dropped))
    }

    /// Appends many and syncs once (per policy) at the end; returns their ids and what was
    /// dropped. Every record is checked against the size limits before any is written. If
    /// writing fails part way, the records before the failing one stay stored (they will
    /// be replayed) and the error is returned.
    pub fn append_batch(&mut self, recs: &[Record]) -> Result<(Vec<u64>, Dropped), SpoolError> {
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        let mut spans = Vec::with_capacity(recs.len());
        for (i, rec) in recs.iter().enumerate() {
            let start = frames.len();
            if let Err(e) = encode_checked(self.next_id + i as u64, rec, &self.cfg, &mut frames) {
                self.frames = frames;
                return Err(e);
            }
            spans.push(start..frames.len());
        }
        let mut ids = Vec::with_capacity(recs.len());
        let mut dropped = Dropped::default();
        let mut appended = Ok(());
        for (rec, span) in recs.iter().zip(spans) {
            // append_frame consumes exactly one id per call, so this is the id encoded above.
            let id = self.next_id;
            appended = self.append_frame(id, rec.class, &frames[span], &mut dropped);
            if appended.is_err() {
                break;
            }
            ids.push(id);
        }
        self.frames = frames;
        // Sync what was written even when a later record failed: those records are stored.
        let synced = if ids.is_empty() { Ok(()) } else { self.sync_per_policy() };
        appended?;
        synced?;
        Ok((ids, dropped))
    }

    /// Forces appended data (and new or removed file names) to the storage if anything is
    /// unsynced, whatever the policy. The owner calls it on its timer under `Interval`, and
    /// at shutdown.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.data_unsynced {
            if let (Some(file), Some(seg)) = (&self.writer, self.segments.back_mut())
                && let Err(e) = file.sync_data()
            {
                // After a failed fsync Linux may drop the dirty pages and mark them clean,
                // so a retry would "succeed" without the data on disk. Stop appending to
                // this file; the next append starts a new segment.
                seg.sealed = true;
                let path = seg.path.clone();
                self.writer = None;
                self.data_unsynced = false;
                return Err(SpoolError::io("sync", path, e));
            }
            self.data_unsynced = false;
        }
        if self.dir_unsynced {
            durable::sync_dir(&self.cfg.dir)
                .map_err(|e| SpoolError::io("sync the directory", &self.cfg.dir, e))?;
            self.dir_unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Up to `max` records after the read cursor, in id order, advancing the read cursor.
    /// An empty vector means nothing is unread right now.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<(u64, Record)>, SpoolError> {
        self.read_batch(max)
    }

    /// Every record with id ≤ `id` was delivered: updates the in-memory cursor and deletes
    /// segment files that hold nothing else. Does not write the cursor file
    /// ([`Spool::persist_cursor`] does). An id the spool never assigned is clamped to the
    /// last assigned one, so that future records cannot count as acknowledged.
    pub fn ack_through(&mut self, id: u64) {
        let last_assigned = self.next_id - 1;
        let id = if id > last_assigned {
            warn!(id, last_assigned, "spool: acknowledgment for an id never assigned; clamped");
            last_assigned
        } else {
            id
        };
        if id <= self.acked {
            return;
        }
        self.acked = id;
        self.read_next = self.read_next.max(id + 1);
        self.retire_acked();
        self.free_acked();
    }

    /// Writes the cursor file if the acknowledged id changed since it was last written.
    pub fn persist_cursor(&mut self) -> Result<(), SpoolError> {
        if self.acked == self.persisted.acked {
            return Ok(());
        }
        let c = Cursor { acked: self.acked, next: self.next_id };
        cursor::store(&self.cfg.dir, c, &self.cfg.fsync)?;
        self.persisted = c;
        Ok(())
    }

    /// Moves the read cursor back to the first unacknowledged record: after a disconnect,
    /// what was handed out but not acknowledged is handed out again.
    pub fn rewind(&mut self) {
        self.read_next = self.acked + 1;
        self.reader = None;
    }

    /// No unacknowledged records.
    pub fn is_empty(&self) -> bool {
        self.highest_on_disk().is_none_or(|last| last <= self.acked)
    }

    /// Records after the read cursor.
    pub fn has_unread(&self) -> bool {
        self.highest_on_disk().is_some_and(|last| last >= self.read_next)
    }

    /// Counters for telemetry and `/status`; no I/O.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            records: self.segments.iter().map(Segment::unacked).sum(),
            bytes: self.total_bytes(),
            segments: self.segments.len(),
            dropped: self.dropped.clone(),
            torn_bytes_cut: self.torn_bytes_cut,
            next_id: self.next_id,
            acked: self.acked,
        }
    }

    /// Every unacknowledged record in `dir`, for `edge-agent spool inspect`. Read-only: it
    /// neither cuts a torn tail nor deletes anything, so it is safe on a live spool. Holds
    /// all payloads in memory.
    pub fn read_all(dir: &Path) -> Result<(Vec<(u64, Record)>, OpenReport), SpoolError> {
        let listing = segment::list(dir)?;
        let acked = cursor::load(dir, !listing.segments.is_empty()).unwrap_or_default().acked;
        Self::read_segments(&listing.segments, acked)
    }

    /// [`read_all`](Self::read_all) over a listing taken earlier. A live agent may drop a
    /// segment (spool full, or acknowledged) between the listing and its reading: one
    /// that is gone by then is left out, as its records are.
    fn read_segments(
        segments: &[(u64, std::path::PathBuf)],
        acked: u64,
    ) -> Result<(Vec<(u64, Record)>, OpenReport), SpoolError> {
        let mut records = Vec::new();
        let mut report = OpenReport::default();
        let mut min_id = 1;
        let count = segments.len();
        for (i, (name_id, path)) in segments.iter().enumerate() {
            let mut keep = |id, rec| {
                if id > acked {
                    records.push((id, rec));
                }
            };
            let scan = match segment::scan(path, min_id.max(*name_id), acked, &mut keep) {
                Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                other => other?,
            };
            report.segments += 1;
            if let Some((offset, bad)) = &scan.bad {
                if i + 1 == count {
                    report.torn_bytes_cut = scan.file_len - offset;
                } else {
                    let name = segment::file_name(*name_id);
                    report.bad_segments.push(segment::damage_report(&name, &scan, *offset, bad));
                }
            }
            min_id = scan.last.map_or(min_id, |last| last + 1);
        }
        report.records = records.len() as u64;
        Ok((records, report))
    }

    fn highest_on_disk(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(|s| s.last)
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Writes one encoded frame to the last segment (starting a new one if needed), after
    /// making room. Once the write is attempted, `id` is used up even if it fails: part of
    /// the frame may have reached the disk, and an id must never be reused.
    fn append_frame(
        &mut self,
        id: u64,
        class: Class,
        frame: &[u8],
        dropped: &mut Dropped,
    ) -> Result<(), SpoolError> {
        use std::io::Write;

        let len = frame.len() as u64;
        self.make_room(len, dropped)?;
        self.open_writer(id, len)?;
        self.next_id = id + 1;
        let (Some(file), Some(seg)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(SpoolError::io(
                "append to",
                &self.cfg.dir,
                std::io::Error::other("no open segment after opening one (a bug in the spool)"),
            ));
        };
        if let Err(e) = file.write_all(frame) {
            let (path, name) = (seg.path.clone(), seg.name_id);
            // Cut what part of the frame got written, so later appends do not land behind
            // garbage (which the next open would cut, together with everything after it).
            if let Err(undo) = file.set_len(seg.bytes) {
                warn!(
                    path = %path.display(), error = %undo,
                    "cannot cut a partly written spool frame; continuing in a new segment"
                );
                seg.sealed = true;
                self.writer = None;
            }
            self.forget_reader_on(name);
            return Err(SpoolError::io("append to", path, e));
        }
        seg.bytes += len;
        seg.end += len;
        seg.last = Some(id);
        seg.counts[class.index()] += 1;
        self.data_unsynced = true;
        Ok(())
    }

    /// Makes the writer append to a segment with room for `len` more bytes: the last one, or
    /// a new one named `id` (the id about to be written).
    fn open_writer(&mut self, id: u64, len: u64) -> Result<(), SpoolError> {
        let roll = match self.segments.back() {
            None => true,
            Some(last) => last.sealed || (last.bytes > 0 && last.bytes + len > self.cfg.segment_bytes),
        };
        if roll {
            self.seal_writer();
            let seg = Segment::new(&self.cfg.dir, id);
            // create_new: appending to a file the spool does not know would mix records.
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&seg.path)
                .map_err(|e| SpoolError::io("create", &seg.path, e))?;
            self.segments.push_back(seg);
            self.writer = Some(file);
            self.dir_unsynced = true;
            // The segment just sealed may be fully acknowledged already.
            self.free_acked();
        } else if self.writer.is_none()
            && let Some(last) = self.segments.back()
        {
            let file = OpenOptions::new()
                .append(true)
                .open(&last.path)
                .map_err(|e| SpoolError::io("open for appending", &last.path, e))?;
            self.writer = Some(file);
        }
        Ok(())
    }

    /// Closes the append handle, first syncing what it wrote unless the policy is `Never`:
    /// sync() only reaches the last segment, so a file left behind must be synced now.
    fn seal_writer(&mut self) {
        if let Some(file) = self.writer.take()
            && self.data_unsynced
            && !matches!(self.cfg.fsync, FsyncPolicy::Never)
            && let Err(e) = file.sync_data()
        {
            // Nothing to undo: the records are written; only their durability is in doubt,
            // and the caller's next append must not fail because of an older file.
            let path = self.segments.back().map(|s| s.path.display().to_string());
            warn!(path = ?path, error = %e, "cannot sync a full spool segment before moving on");
        }
        self.data_unsynced = false;
    }

    fn sync_per_policy(&mut self) -> Result<(), SpoolError> {
        match self.cfg.fsync {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => self.sync(),
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => Ok(()),
        }
    }

    /// Deletes segments whose records are all acknowledged, oldest first, except the last
    /// one: it holds the highest id assigned, which tells the next start where ids continue
    /// if the cursor file lags behind. It is deleted once a newer segment exists.
    fn free_acked(&mut self) {
        while self.segments.len() > 1 {
            let Some(seg) = self.segments.front_mut() else { break };
            if seg.last.is_some_and(|last| last > self.acked) {
                break;
            }
            if let Err(e) = segment::remove(&seg.path) {
                if !seg.delete_failed {
                    warn!(
                        path = %seg.path.display(), error = %e,
                        "cannot delete an acknowledged spool segment; will retry"
                    );
                    seg.delete_failed = true;
                }
                break;
            }
            let name = seg.name_id;
            self.segments.pop_front();
            self.forget_reader_on(name);
            self.dir_unsynced = true;
        }
    }
}

fn validate(cfg: &SpoolConfig) -> Result<(), SpoolError> {
    let problem = if cfg.max_bytes == 0 {
        "spool.max_bytes is 0; set it to the disk space the spool may use (e.g. 64 MiB)"
    } else if cfg.segment_bytes == 0 {
        "spool.segment_bytes is 0; set it to a few MiB, well below spool.max_bytes"
    } else {
        return Ok(());
    };
    Err(SpoolError::InvalidConfig { dir: cfg.dir.clone(), message: problem.to_owned() })
}

/// Encodes the frame for `(id, rec)` into `out`, refusing records over the size limits.
fn encode_checked(id: u64, rec: &Record, cfg: &SpoolConfig, out: &mut Vec<u8>) -> Result<(), SpoolError> {
    let start = out.len();
    let len = frame::encode(id, rec, out)
        .map_err(|source| SpoolError::Encode { topic: rec.topic.clone(), source })?;
    let max = cfg.max_bytes.min(cfg.segment_bytes).min(frame::MAX_PAYLOAD + frame::OVERHEAD);
    if len > max {
        out.truncate(start);
        return Err(SpoolError::TooLarge { topic: rec.topic.clone(), bytes: len, max });
    }
    Ok(())
}

/// Cuts the last segment at the end of its last whole frame.
fn cut_torn_tail(path: &Path, at: u64, policy: &FsyncPolicy) -> Result<(), SpoolError> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| SpoolError::io("open", path, e))?;
    file.set_len(at).map_err(|e| SpoolError::io("cut the torn tail of", path, e))?;
    // Durable before new frames go behind it, or a power cut could bring the garbage back
    // in front of them.
    if !matches!(policy, FsyncPolicy::Never) {
        file.sync_all().map_err(|e| SpoolError::io("sync", path, e))?;
    }
    Ok(())
}
