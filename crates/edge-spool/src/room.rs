//! Staying within `max_bytes`: the oldest telemetry goes first, then whole oldest segments.

use tracing::warn;

use super::segment;
use super::{Class, Dropped, Spool, SpoolError};

impl Spool {
    /// Drops records until `len` more bytes fit within `max_bytes`.
    pub(super) fn make_room(&mut self, len: u64, dropped: &mut Dropped) -> Result<(), SpoolError> {
        let telemetry = Class::Telemetry.index();
        // Terminates: each round empties one segment of telemetry or removes a segment
        // (or returns an error).
        while self.total_bytes() + len > self.cfg.max_bytes {
            if let Some(idx) = self.segments.iter().position(|s| s.counts[telemetry] > 0) {
                self.drop_telemetry(idx, dropped)?;
            } else if !self.segments.is_empty() {
                self.drop_segment(0, dropped)?;
            } else {
                // Unreachable: encode_checked refuses a record larger than max_bytes.
                break;
            }
        }
        Ok(())
    }

    /// Rewrites segment `idx` without its unacknowledged telemetry (and acknowledged
    /// records). If the rewrite fails (no space for the `.tmp`, unreadable file), the
    /// segment is dropped whole instead: the append that needs room must go through.
    fn drop_telemetry(&mut self, idx: usize, dropped: &mut Dropped) -> Result<(), SpoolError> {
        let Some(seg) = self.segments.get(idx) else { return Ok(()) };
        let done = match segment::rewrite_without_telemetry(seg, self.acked, &self.cfg.fsync) {
            Ok(done) => done,
            Err(e) => {
                warn!(
                    segment = %seg.file_name(), error = %e,
                    "spool full; cannot rewrite the segment with the oldest telemetry, dropping it whole"
                );
                return self.drop_segment(idx, dropped);
            }
        };
        let telemetry = Class::Telemetry.index();
        let mut lost = [0; 4];
        lost[telemetry] = done.telemetry_dropped;
        if let Some((offset, bad)) = &done.bad {
            // What the index counted but the rewrite neither kept nor dropped was behind
            // the damage.
            for (c, lost) in lost.iter_mut().enumerate() {
                *lost = (*lost).max(seg.counts[c].saturating_sub(done.counts[c]));
            }
            warn!(
                segment = %seg.file_name(), offset, problem = %bad,
                "spool segment damaged after it was written; the records behind the damage are lost"
            );
        }
        let (lo, hi, name) = (seg.name_id, seg.last.unwrap_or(0), seg.name_id);
        let damaged_after = done.bad.as_ref().map(|_| done.read_last.unwrap_or(0));
        self.handed.retain(|&(id, class)| {
            let gone = class == Class::Telemetry || damaged_after.is_some_and(|after| id > after);
            !(id >= lo && id <= hi && gone)
        });
        let is_last = idx + 1 == self.segments.len();
        if let Some(seg) = self.segments.get_mut(idx) {
            seg.end = done.end;
            seg.bytes = done.end;
            seg.last = done.last;
            seg.counts = done.counts;
        }
        if is_last {
            // The handle points at the replaced file; the rewrite synced the new one as
            // the policy asks.
            self.writer = None;
            self.data_unsynced = false;
        }
        self.forget_reader_on(name);
        self.dir_unsynced = true;
        self.count_dropped(dropped, &lost);
        warn!(
            segment = %segment::file_name(name), telemetry = lost[telemetry],
            "spool full: dropped the oldest unacknowledged telemetry"
        );
        // A sealed segment left empty is only a file name; the last one is reused by appends.
        if done.last.is_none() && !is_last {
            self.drop_segment(idx, dropped)?;
        }
        Ok(())
    }

    /// Deletes segment `idx`, counting its unacknowledged records as dropped.
    pub(super) fn drop_segment(&mut self, idx: usize, dropped: &mut Dropped) -> Result<(), SpoolError> {
        let Some(seg) = self.segments.get(idx) else { return Ok(()) };
        segment::remove(&seg.path).map_err(|e| SpoolError::io("delete", &seg.path, e))?;
        let counts = seg.counts;
        let name = seg.name_id;
        if seg.unacked() > 0 {
            warn!(
                segment = %seg.file_name(), result = counts[0], event = counts[1], reply = counts[2],
                telemetry = counts[3], "spool full and no telemetry left: dropped the oldest segment"
            );
        }
        self.handed.retain(|&(id, _)| !seg.holds(id));
        if idx + 1 == self.segments.len() {
            self.writer = None;
            self.data_unsynced = false;
        }
        self.segments.remove(idx);
        self.forget_reader_on(name);
        self.dir_unsynced = true;
        self.count_dropped(dropped, &counts);
        Ok(())
    }

    /// Adds to the caller's tally and to the totals since open.
    fn count_dropped(&mut self, dropped: &mut Dropped, counts: &[u64; 4]) {
        dropped.add_counts(counts);
        self.dropped.add_counts(counts);
    }
}
