//! Replay: the read handle, handing records out in id order, and keeping the per-class
//! counts exact as records are acknowledged.
//!
//! Cursors are ids, never offsets: dropping records rewrites or deletes files under the
//! reader, which then finds its place again by id. The open read handle and its offset
//! are only a shortcut, forgotten whenever its file changes other than by an append.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};

use tracing::warn;

use super::frame::{self, BadFrame, Frame};
use super::segment::{self, Segment};
use super::{Class, Record, Spool, SpoolError};

enum Step {
    Record(u64, Record),
    /// Passed over an acknowledged or already handed out record, or moved to another file.
    Skipped,
    /// Nothing more to read now.
    CaughtUp,
}

/// A buffered read handle on one segment, separate from the append handle.
pub(super) struct Reader {
    /// The segment, by name (indexes shift as segments come and go).
    name_id: u64,
    /// Where the next frame starts.
    offset: u64,
    file: BufReader<File>,
}

impl Spool {
    pub(super) fn read_batch(&mut self, max: usize) -> Result<Vec<(u64, Record)>, SpoolError> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.read_one() {
                Ok(Step::Record(id, rec)) => out.push((id, rec)),
                Ok(Step::Skipped) => {}
                Ok(Step::CaughtUp) => break,
                Err(e) => {
                    self.reader = None;
                    if out.is_empty() {
                        return Err(e);
                    }
                    // Hand out what was read; the next call meets the error again.
                    break;
                }
            }
        }
        Ok(out)
    }

    fn read_one(&mut self) -> Result<Step, SpoolError> {
        let Some(idx) = self.position_reader()? else { return Ok(Step::CaughtUp) };
        let (Some(reader), Some(seg)) = (self.reader.as_mut(), self.segments.get_mut(idx)) else {
            return Ok(Step::CaughtUp);
        };
        if reader.offset >= seg.end {
            if idx + 1 == self.segments.len() {
                // Stay here, where the next append lands.
                return Ok(Step::CaughtUp);
            }
            self.open_reader(idx + 1, 0)?;
            return Ok(Step::Skipped);
        }
        let at = reader.offset;
        let frame = frame::read(&mut reader.file, seg.end - at, &mut self.read_buf)
            .map_err(|e| SpoolError::io("read", seg.path.clone(), e))?;
        let (stored, len) = match frame {
            Frame::Record { stored, len } => (stored, len),
            // `End` cannot happen with bytes left; treat it like the damage it would be.
            Frame::End => return self.damaged(idx, at, BadFrame::Short { have: 0 }).map(|()| Step::Skipped),
            Frame::Bad(bad) => return self.damaged(idx, at, bad).map(|()| Step::Skipped),
        };
        reader.offset += len;
        let id = stored.id;
        if id > self.known_through {
            self.known_through = id;
            if id <= self.acked {
                seg.uncount(stored.record.class);
            } else {
                self.handed.push_back((id, stored.record.class));
            }
        }
        if id < self.read_next || id <= self.acked {
            return Ok(Step::Skipped);
        }
        self.read_next = id + 1;
        Ok(Step::Record(id, stored.record))
    }

    /// Index of the segment the reader is on, opening a reader where replay continues if
    /// there is none; `None` when there are no segments.
    fn position_reader(&mut self) -> Result<Option<usize>, SpoolError> {
        if let Some(r) = &self.reader {
            if let Ok(idx) = self.segments.binary_search_by_key(&r.name_id, |s| s.name_id) {
                return Ok(Some(idx));
            }
            self.reader = None;
        }
        let read_next = self.read_next;
        let (idx, offset) = match self.segments.iter().position(|s| s.last.is_some_and(|l| l >= read_next)) {
            // From the start of the file: records below `read_next` are skipped by id.
            Some(idx) => (idx, 0),
            // Everything on disk was handed out: wait at the end of the last segment rather
            // than read it again from the start on the next call.
            None => match self.segments.back() {
                Some(last) => (self.segments.len() - 1, last.end),
                None => return Ok(None),
            },
        };
        self.open_reader(idx, offset)?;
        Ok(Some(idx))
    }

    fn open_reader(&mut self, idx: usize, offset: u64) -> Result<(), SpoolError> {
        self.reader = None;
        let Some(seg) = self.segments.get(idx) else { return Ok(()) };
        let open = || -> io::Result<BufReader<File>> {
            let mut file = BufReader::with_capacity(segment::READ_BUF, File::open(&seg.path)?);
            file.seek(SeekFrom::Start(offset))?;
            Ok(file)
        };
        let file = open().map_err(|e| SpoolError::io("open for reading", &seg.path, e))?;
        self.reader = Some(Reader { name_id: seg.name_id, offset, file });
        Ok(())
    }

    /// Drops the read handle if it is on segment `name_id` (rewritten, removed or cut).
    pub(super) fn forget_reader_on(&mut self, name_id: u64) {
        if self.reader.as_ref().is_some_and(|r| r.name_id == name_id) {
            self.reader = None;
        }
    }

    /// Takes newly acknowledged records out of the class counts. Those the reader has seen
    /// are in `handed`; any others (acknowledged without being handed out in this run) are
    /// found by reading the one segment they can share with unacknowledged records.
    pub(super) fn retire_acked(&mut self) {
        let acked = self.acked;
        while let Some(&(id, class)) = self.handed.front() {
            if id > acked {
                break;
            }
            self.handed.pop_front();
            if let Some(seg) = self.segments.iter_mut().find(|s| s.holds(id)) {
                seg.uncount(class);
            }
        }
        // A burst of handed-out records (a long replay without acknowledgments) should not
        // pin its memory for the rest of the process's life.
        if self.handed.is_empty() && self.handed.capacity() > 4096 {
            self.handed.shrink_to_fit();
        }
        if self.known_through < acked {
            self.retire_unread(acked);
        }
    }

    fn retire_unread(&mut self, through: u64) {
        let from = self.known_through;
        let mut progress = from;
        for seg in self.segments.iter_mut() {
            if seg.name_id > through {
                break;
            }
            let Some(last) = seg.last else { continue };
            if last <= from {
                continue;
            }
            if last <= through {
                seg.counts = [0; 4];
                progress = last;
                continue;
            }
            if let Err(problem) = retire_in(seg, from, through, &mut progress, &mut self.read_buf) {
                // The reader retires the rest when it passes them (ids above
                // `known_through` and not above `acked`); until then the counts are high.
                warn!(
                    segment = %seg.file_name(), problem = %problem,
                    "cannot read a spool segment to account for acknowledged records"
                );
                self.known_through = progress;
                return;
            }
            progress = through;
        }
        self.known_through = through;
    }

    /// The reader met a bad frame at `offset` of segment `idx`, in data that was valid when
    /// written: storage damage. The records behind it are lost; the segment is recounted
    /// from what is still readable and sealed.
    fn damaged(&mut self, idx: usize, offset: u64, bad: BadFrame) -> Result<(), SpoolError> {
        self.reader = None;
        let acked = self.acked;
        let Some(seg) = self.segments.get_mut(idx) else { return Ok(()) };
        let scan = segment::scan(&seg.path, seg.name_id, acked, &mut |_, _| {})?;
        let end = scan.end.min(seg.end);
        if end > offset {
            // The same bytes read fine a moment later: flaky storage. Let the caller retry
            // rather than loop here.
            return Err(SpoolError::io(
                "read",
                seg.path.clone(),
                io::Error::other(format!("bytes at offset {offset} read differently twice ({bad})")),
            ));
        }
        let mut lost = [0; 4];
        for (c, lost) in lost.iter_mut().enumerate() {
            *lost = seg.counts[c].saturating_sub(scan.counts[c]);
        }
        warn!(
            segment = %seg.file_name(), offset, problem = %bad, lost = lost.iter().sum::<u64>(),
            "spool segment damaged after it was written; the records behind the damage are lost"
        );
        let (lo, hi) = (seg.name_id, seg.last.unwrap_or(0));
        let kept_through = scan.last.unwrap_or(0);
        seg.end = end;
        seg.last = scan.last;
        seg.counts = scan.counts;
        seg.sealed = true;
        self.handed.retain(|&(id, _)| !(id >= lo && id <= hi && id > kept_through));
        if idx + 1 == self.segments.len() {
            self.writer = None;
            self.data_unsynced = false;
        }
        self.dropped.add_counts(&lost);
        Ok(())
    }
}

/// Retires the records of `seg` with ids in (`from`, `through`], recording the last one
/// retired in `progress` so a failure part way leaves the bookkeeping consistent.
fn retire_in(
    seg: &mut Segment,
    from: u64,
    through: u64,
    progress: &mut u64,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let file = File::open(&seg.path).map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(segment::READ_BUF, file);
    let mut offset = 0;
    while offset < seg.end {
        match frame::read(&mut r, seg.end - offset, buf).map_err(|e| e.to_string())? {
            Frame::Record { stored, len } => {
                offset += len;
                if stored.id > through {
                    break;
                }
                if stored.id > from {
                    seg.uncount(stored.record.class);
                    *progress = stored.id;
                }
            }
            Frame::End => break,
            Frame::Bad(bad) => return Err(format!("bad frame at byte {offset}: {bad}")),
        }
    }
    Ok(())
}

impl Segment {
    /// One unacknowledged record of `class` fewer.
    pub(super) fn uncount(&mut self, class: Class) {
        let n = &mut self.counts[class.index()];
        *n = n.saturating_sub(1);
    }
}
