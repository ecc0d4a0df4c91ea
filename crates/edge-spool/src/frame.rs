//! One frame: `u32 length (LE) ‖ payload ‖ u32 CRC32C(payload) (LE)`, the payload being the
//! postcard encoding of a [`StoredRecord`].

use std::fmt;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use super::Record;

/// Length prefix plus CRC suffix.
pub(super) const OVERHEAD: u64 = 8;

/// The largest payload a reader accepts. A length field above it is damage, not data: it
/// keeps a flipped high bit from making the reader allocate gigabytes. Appends are held
/// to the same limit, so the spool never writes a frame it would refuse to read back.
pub(super) const MAX_PAYLOAD: u64 = 64 << 20;

/// The payload as read back.
#[derive(Debug, Deserialize)]
pub(super) struct StoredRecord {
    pub id: u64,
    pub record: Record,
}

/// The payload as written: borrows the record so appends do not clone payloads. It
/// serializes exactly as [`StoredRecord`] (postcard writes a reference as its value).
#[derive(Serialize)]
struct StoredRef<'a> {
    id: u64,
    record: &'a Record,
}

/// Appends the frame for `(id, rec)` to `out`; returns the frame's length in bytes.
pub(super) fn encode(id: u64, rec: &Record, out: &mut Vec<u8>) -> Result<u64, postcard::Error> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // to_extend takes the writer by value; moving the Vec in and out keeps its allocation.
    *out = postcard::to_extend(&StoredRef { id, record: rec }, std::mem::take(out))?;
    let payload_len = out.len() - start - 4;
    let crc = crc32c::crc32c(&out[start + 4..]);
    // A payload over u32::MAX is refused by the caller's size limit before it is written;
    // saturating here only keeps this function total.
    let len = u32::try_from(payload_len).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    Ok((out.len() - start) as u64)
}

/// Why the bytes at some offset are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BadFrame {
    /// Fewer bytes left than a frame's length prefix and CRC.
    Short {
        have: u64,
    },
    /// A zero length: no record encodes to nothing; typically zero-filled space that a
    /// file system left at the end of a file after a crash.
    ZeroLength,
    /// The length field points past the end of the file.
    PastEnd {
        len: u64,
        have: u64,
    },
    /// The length field is above [`MAX_PAYLOAD`].
    TooLong {
        len: u64,
    },
    Crc {
        stored: u32,
        computed: u32,
    },
    Decode(postcard::Error),
    /// The payload decoded with bytes left over: not the encoding the spool writes.
    Trailing {
        bytes: usize,
    },
    /// A record id not above the one before it (ids only ever increase along a spool).
    IdOrder {
        id: u64,
        min: u64,
    },
}

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadFrame::Short { have } => write!(f, "only {have} bytes left, too short for a frame"),
            BadFrame::ZeroLength => write!(f, "zero length field (zero-filled space)"),
            BadFrame::PastEnd { len, have } => {
                write!(f, "length field says {len} bytes but only {have} follow")
            }
            BadFrame::TooLong { len } => write!(f, "length field {len} is above the {MAX_PAYLOAD} limit"),
            BadFrame::Crc { stored, computed } => {
                write!(f, "CRC32C mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            BadFrame::Decode(e) => write!(f, "payload does not decode as a record ({e})"),
            BadFrame::Trailing { bytes } => write!(f, "{bytes} stray bytes after the record"),
            BadFrame::IdOrder { id, min } => write!(f, "record id {id} where at least {min} was expected"),
        }
    }
}

/// What [`read`] found.
#[derive(Debug)]
pub(super) enum Frame {
    /// A valid frame of `len` bytes.
    Record {
        stored: StoredRecord,
        len: u64,
    },
    /// No bytes left: the clean end of the frames.
    End,
    Bad(BadFrame),
}

/// Reads one frame from `r`, which has `remaining` bytes of the segment left. `buf` is
/// scratch space reused across calls. I/O errors other than a short read are returned as
/// errors: they say nothing about the data, so the caller must not cut a file over them.
pub(super) fn read(r: &mut impl Read, remaining: u64, buf: &mut Vec<u8>) -> io::Result<Frame> {
    if remaining == 0 {
        return Ok(Frame::End);
    }
    if remaining < OVERHEAD {
        return Ok(Frame::Bad(BadFrame::Short { have: remaining }));
    }
    let mut head = [0u8; 4];
    if let Some(bad) = read_exact(r, &mut head, remaining)? {
        return Ok(Frame::Bad(bad));
    }
    let len = u64::from(u32::from_le_bytes(head));
    if len == 0 {
        return Ok(Frame::Bad(BadFrame::ZeroLength));
    }
    if len > MAX_PAYLOAD {
        return Ok(Frame::Bad(BadFrame::TooLong { len }));
    }
    if len + OVERHEAD > remaining {
        return Ok(Frame::Bad(BadFrame::PastEnd { len, have: remaining - 4 }));
    }
    // Bounded by MAX_PAYLOAD and by the bytes actually in the file (checked just above),
    // so garbage cannot make this allocate more than the file holds.
    buf.resize(len as usize + 4, 0);
    if let Some(bad) = read_exact(r, buf, remaining)? {
        return Ok(Frame::Bad(bad));
    }
    let (payload, tail) = buf.split_at(len as usize);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Ok(Frame::Bad(BadFrame::Crc { stored, computed }));
    }
    match postcard::take_from_bytes::<StoredRecord>(payload) {
        Ok((stored, [])) => Ok(Frame::Record { stored, len: len + OVERHEAD }),
        Ok((_, rest)) => Ok(Frame::Bad(BadFrame::Trailing { bytes: rest.len() })),
        Err(e) => Ok(Frame::Bad(BadFrame::Decode(e))),
    }
}

/// `read_exact`, except that running out of bytes (the file is shorter than the index
/// says, e.g. cut by someone else) is a bad frame rather than an I/O error.
fn read_exact(r: &mut impl Read, buf: &mut [u8], remaining: u64) -> io::Result<Option<BadFrame>> {
    match r.read_exact(buf) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(BadFrame::Short { have: remaining })),
        Err(e) => Err(e),
    }
}
