//! The `acked` cursor file: one text line, `acked=<id> next=<id> crc32c=<8 hex digits>`.
//!
//! `acked` is the highest id known delivered. `next` is the next id the spool would have
//! assigned when the file was written: segments that held the highest ids may be gone
//! (acknowledged and deleted, or dropped when full), and without it a restart could hand
//! out an id again. Text so that `cat` answers "how far did replay get" on a device; the
//! CRC covers everything before ` crc32c=`.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use tracing::warn;

use crate::FsyncPolicy;
use crate::durable::{self, Durability};
use crate::error::SpoolError;

pub(super) const FILE: &str = "acked";
const TMP: &str = "acked.tmp";

/// A valid line is under 80 bytes; reading more than this would only read garbage.
const MAX_LEN: u64 = 256;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Cursor {
    pub acked: u64,
    pub next: u64,
}

/// Reads the cursor; `None` for a missing or damaged file, which means 0 (everything on
/// disk is replayed again: duplicates, which QoS 1 consumers handle, rather than loss).
/// `expected` says whether the file should exist (segments are present); only then is
/// its absence a warning.
pub(super) fn load(dir: &Path, expected: bool) -> Option<Cursor> {
    let path = dir.join(FILE);
    let mut text = Vec::new();
    let read = File::open(&path).and_then(|f| f.take(MAX_LEN).read_to_end(&mut text));
    match read {
        Ok(_) => match parse(&text) {
            Some(c) => Some(c),
            None => {
                warn!(
                    path = %path.display(),
                    "spool cursor file is damaged; replaying all records on disk (duplicates possible)"
                );
                None
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if expected {
                warn!(
                    path = %path.display(),
                    "spool cursor file is missing; replaying all records on disk (duplicates possible)"
                );
            }
            None
        }
        Err(e) => {
            warn!(
                path = %path.display(), error = %e,
                "cannot read the spool cursor file; replaying all records on disk (duplicates possible)"
            );
            None
        }
    }
}

/// Replaces the cursor file atomically: a crash leaves either the old or the new one.
pub(super) fn store(dir: &Path, c: Cursor, policy: &FsyncPolicy) -> Result<(), SpoolError> {
    let tmp = dir.join(TMP);
    // Interval and Never differ for segments, not here: the cursor is written a few
    // times a second at most, and a cursor that goes back after a power cut means
    // duplicates, so Interval pays for the fsync of the file too.
    let durability = Durability {
        file: !matches!(policy, FsyncPolicy::Never),
        dir: matches!(policy, FsyncPolicy::Always),
    };
    durable::replace_via(&dir.join(FILE), &tmp, render(c).as_bytes(), durability)
        .map_err(|e| SpoolError::io("replace", tmp, e))
}

pub(super) fn render(c: Cursor) -> String {
    let body = format!("acked={} next={}", c.acked, c.next);
    let crc = crc32c::crc32c(body.as_bytes());
    format!("{body} crc32c={crc:08x}\n")
}

pub(super) fn parse(text: &[u8]) -> Option<Cursor> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let (body, crc) = line.rsplit_once(" crc32c=")?;
    if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(body.as_bytes()) {
        return None;
    }
    let (acked, next) = body.split_once(' ')?;
    let acked = acked.strip_prefix("acked=")?.parse().ok()?;
    let next = next.strip_prefix("next=")?.parse().ok()?;
    Some(Cursor { acked, next })
}
