//! Segment files: naming, listing, the in-memory index entry, scanning and rewriting.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::frame::{self, BadFrame, Frame};
use super::{Class, FsyncPolicy, Record};

const EXT: &str = ".seg";
const TMP_EXT: &str = ".tmp";

/// Read buffer for sequential scans: large enough to make a scan a few big reads, small
/// enough not to matter on a device.
pub(super) const READ_BUF: usize = 64 * 1024;

/// `{first_id:020}.seg`: zero-padded so that name order is id order (`ls` shows the queue).
pub(super) fn file_name(first_id: u64) -> String {
    format!("{first_id:020}{EXT}")
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(EXT)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What the spool knows about one segment file without holding its records.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    /// The id in the file name: the first id ever written to it. Dropping telemetry can
    /// remove that record; the name stays (an atomic rename needs the same name), so the
    /// first record on disk may have a higher id.
    pub name_id: u64,
    pub path: PathBuf,
    /// Highest id in the file; `None` for a file with no valid frame.
    pub last: Option<u64>,
    /// End of the last valid frame: readers stop here.
    pub end: u64,
    /// Size of the file, for the `max_bytes` bound. Above `end` only for a sealed segment
    /// whose damaged tail is kept (only the last segment is ever cut).
    pub bytes: u64,
    /// Unacknowledged records in the file, by class ([`Class::index`]).
    pub counts: [u64; 4],
    /// No more appends: damaged, or a failed write could not be undone.
    pub sealed: bool,
    /// Deleting it failed once (and was logged); retried without logging again.
    pub delete_failed: bool,
}

impl Segment {
    pub fn new(dir: &Path, name_id: u64) -> Segment {
        Segment {
            name_id,
            path: dir.join(file_name(name_id)),
            last: None,
            end: 0,
            bytes: 0,
            counts: [0; 4],
            sealed: false,
            delete_failed: false,
        }
    }

    pub fn unacked(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Whether a record with this id would be in this file.
    pub fn holds(&self, id: u64) -> bool {
        id >= self.name_id && self.last.is_some_and(|last| id <= last)
    }

    pub fn file_name(&self) -> String {
        file_name(self.name_id)
    }
}

/// The spool directory's entries, sorted by id.
pub(super) struct Listing {
    pub segments: Vec<(u64, PathBuf)>,
    /// Leftovers of interrupted atomic writes (`*.tmp`).
    pub tmp: Vec<PathBuf>,
}

pub(super) fn list(dir: &Path) -> Result<Listing, SpoolError> {
    let mut listing = Listing { segments: Vec::new(), tmp: Vec::new() };
    let entries = fs::read_dir(dir).map_err(|e| SpoolError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_EXT) {
            listing.tmp.push(entry.path());
        } else if let Some(id) = parse_name(name) {
            listing.segments.push((id, entry.path()));
        } else if name != super::cursor::FILE {
            tracing::debug!(path = %entry.path().display(), "ignoring a file that is not part of the spool");
        }
    }
    listing.segments.sort_unstable_by_key(|(id, _)| *id);
    Ok(listing)
}

/// The result of reading a segment from the start.
#[derive(Debug)]
pub(super) struct Scan {
    pub end: u64,
    pub file_len: u64,
    pub last: Option<u64>,
    /// Records with an id above `acked`, by class.
    pub counts: [u64; 4],
    /// All valid records, acknowledged or not.
    pub records: u64,
    /// The first bad frame and its offset; the scan stops there.
    pub bad: Option<(u64, BadFrame)>,
}

/// Reads every frame of `path` in order, checking that ids increase from `min_id` on.
/// Calls `visit` with each valid record; returns where the valid frames end.
pub(super) fn scan(
    path: &Path,
    min_id: u64,
    acked: u64,
    visit: &mut dyn FnMut(u64, Record),
) -> Result<Scan, SpoolError> {
    let file = File::open(path).map_err(|e| SpoolError::io("open", path, e))?;
    let file_len = file.metadata().map_err(|e| SpoolError::io("read the size of", path, e))?.len();
    let mut r = BufReader::with_capacity(READ_BUF, file);
    let mut scan = Scan { end: 0, file_len, last: None, counts: [0; 4], records: 0, bad: None };
    let mut min_id = min_id;
    let mut buf = Vec::new();
    loop {
        let frame = frame::read(&mut r, file_len - scan.end, &mut buf)
            .map_err(|e| SpoolError::io("read", path, e))?;
        match frame {
            Frame::End => break,
            Frame::Bad(bad) => {
                scan.bad = Some((scan.end, bad));
                break;
            }
            Frame::Record { stored, len } => {
                if stored.id < min_id {
                    scan.bad = Some((scan.end, BadFrame::IdOrder { id: stored.id, min: min_id }));
                    break;
                }
                min_id = stored.id.saturating_add(1);
                scan.end += len;
                scan.last = Some(stored.id);
                scan.records += 1;
                if stored.id > acked {
                    scan.counts[stored.record.class.index()] += 1;
                }
                visit(stored.id, stored.record);
            }
        }
    }
    Ok(scan)
}

/// The sentence `OpenReport::bad_segments` carries for a damaged sealed segment.
pub(super) fn damage_report(name: &str, scan: &Scan, offset: u64, bad: &BadFrame) -> String {
    format!(
        "segment {name}: bad frame at byte {offset} ({bad}); kept the {} record(s) before it, \
         {} byte(s) after it cannot be read. Only the last segment can be torn by a crash, so \
         this is storage damage: check `dmesg` and the storage's health",
        scan.records,
        scan.file_len - offset
    )
}

/// Which records a rewrite keeps: not acknowledged, not telemetry.
pub(super) struct Rewritten {
    pub end: u64,
    pub last: Option<u64>,
    pub counts: [u64; 4],
    /// Unacknowledged telemetry left out.
    pub telemetry_dropped: u64,
    /// Id of the last valid frame read: with `bad`, every record after it is lost.
    pub read_last: Option<u64>,
    /// A bad frame met on the way: the rest of the file is lost.
    pub bad: Option<(u64, BadFrame)>,
}

/// Rewrites `seg` without its unacknowledged telemetry and without acknowledged records:
/// writes `<name>.seg.tmp`, syncs it unless the policy is `Never`, renames it over the
/// original. A crash at any point leaves either the old file or the new one, and the
/// `.tmp` a leftover that the next open deletes. Frames are copied as they are (same
/// bytes, same ids), so nothing is re-encoded.
pub(super) fn rewrite_without_telemetry(
    seg: &Segment,
    acked: u64,
    policy: &FsyncPolicy,
) -> Result<Rewritten, SpoolError> {
    let tmp = tmp_path(&seg.path);
    let result = copy_filtered(seg, &tmp, acked, policy);
    match result {
        Ok(done) => {
            fs::rename(&tmp, &seg.path).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                SpoolError::io("rename into place", &tmp, e)
            })?;
            Ok(done)
        }
        Err(e) => {
            // Best effort: the leftover would be deleted at the next open anyway.
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn copy_filtered(
    seg: &Segment,
    tmp: &Path,
    acked: u64,
    policy: &FsyncPolicy,
) -> Result<Rewritten, SpoolError> {
    let src = File::open(&seg.path).map_err(|e| SpoolError::io("open", &seg.path, e))?;
    let mut r = BufReader::with_capacity(READ_BUF, src);
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| SpoolError::io("create", tmp, e))?;
    let mut w = BufWriter::with_capacity(READ_BUF, out);
    let mut done =
        Rewritten { end: 0, last: None, counts: [0; 4], telemetry_dropped: 0, read_last: None, bad: None };
    let mut buf = Vec::new();
    let mut frame_bytes = Vec::new();
    let mut offset = 0;
    while offset < seg.end {
        let frame = frame::read(&mut r, seg.end - offset, &mut buf)
            .map_err(|e| SpoolError::io("read", &seg.path, e))?;
        let (stored, len) = match frame {
            Frame::Record { stored, len } => (stored, len),
            Frame::End => break,
            Frame::Bad(bad) => {
                done.bad = Some((offset, bad));
                break;
            }
        };
        offset += len;
        done.read_last = Some(stored.id);
        let class = stored.record.class;
        if stored.id <= acked {
            continue;
        }
        if class == Class::Telemetry {
            done.telemetry_dropped += 1;
            continue;
        }
        // `buf` holds payload ‖ CRC of the frame just read; put the length back in front.
        frame_bytes.clear();
        frame_bytes.extend_from_slice(&((len - frame::OVERHEAD) as u32).to_le_bytes());
        frame_bytes.extend_from_slice(&buf);
        w.write_all(&frame_bytes).map_err(|e| SpoolError::io("write", tmp, e))?;
        done.end += len;
        done.last = Some(stored.id);
        done.counts[class.index()] += 1;
    }
    let out = w.into_inner().map_err(|e| SpoolError::io("write", tmp, e.into_error()))?;
    if !matches!(policy, FsyncPolicy::Never) {
        out.sync_data().map_err(|e| SpoolError::io("sync", tmp, e))?;
    }
    Ok(done)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_EXT);
    PathBuf::from(s)
}

/// Removes a file; one that is already gone counts as removed.
pub(super) fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
