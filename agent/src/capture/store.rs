//! The on-disk store of captured samples: one file per sample under
//! `<state_dir>/capture/`, named by a number that only grows (`0000000000000042.cap`), so
//! the oldest is the first name. Each file is written whole through
//! `edge_spool::durable` (temporary file, sync, rename), so a crash leaves the old set
//! of files or the new one, never half a sample.
//!
//! A file is, in order (integers little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | `EDGECAP1` |
//! | 4 | length of the metadata, `m` |
//! | m | the metadata, JSON ([`Meta`]) |
//! | 4 | number of values, `n` |
//! | 4n | the decoded window, f32 |
//! | 4 | length of the raw payload, `p` (0: not kept) |
//! | p | the raw payload |
//! | 4 | CRC-32C of everything before |

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Reason;

/// The first bytes of every sample file.
pub const MAGIC: &[u8; 8] = b"EDGECAP1";
/// The extension of sample files; anything else in the directory is ignored.
pub const EXTENSION: &str = "cap";
/// The largest sample file read back: a damaged length field cannot make a reader
/// allocate more than this.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// The largest metadata block.
const MAX_META_BYTES: usize = 1024 * 1024;

/// What is known about a sample besides its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub model: String,
    pub version: String,
    pub stream: String,
    /// When it was kept, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub reason: Reason,
    /// The top score the result reported, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The stream's window index.
    pub window: u64,
    /// The model input's shape for this window (its product is the number of values).
    pub shape: Vec<usize>,
    /// Where the answer came from: `local` or `cloud`.
    pub place: String,
    /// The result's `outputs`, as published.
    pub outputs: Map<String, Value>,
    /// The message's own `id`, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_id: Option<Value>,
    /// How the raw payload is encoded (the model's `pre.format`), when it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format: Option<String>,
}

/// One captured sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub meta: Meta,
    /// The decoded, pre-processed window the model ran on.
    pub input: Vec<f32>,
    /// The message's bytes as received, when small enough to keep.
    pub payload: Option<Vec<u8>>,
}

/// Why a sample file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a sample file (no EDGECAP1 header)")]
    Magic,
    #[error("cut short: {what} needs {need} bytes, {left} are left")]
    Short { what: &'static str, need: u64, left: usize },
    #[error("the metadata block is {0} bytes, more than a sample's metadata can be")]
    MetaTooLarge(usize),
    #[error("the metadata is not valid: {0}")]
    Meta(String),
    #[error("the window has {values} values but its shape {shape:?} holds {want}")]
    Shape { values: usize, shape: Vec<usize>, want: u64 },
    #[error("{0} bytes follow the checksum")]
    Trailing(usize),
    #[error("the checksum does not match (the file is damaged)")]
    Checksum,
}

impl Sample {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        let payload = self.payload.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(24 + meta.len() + self.input.len() * 4 + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&len32(meta.len()).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&len32(self.input.len()).to_le_bytes());
        for v in &self.input {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&len32(payload.len()).to_le_bytes());
        out.extend_from_slice(payload);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a file's bytes; never panics, whatever they are, and allocates no more
    /// than the bytes given.
    pub fn decode(bytes: &[u8]) -> Result<Sample, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(8, "the header")? != MAGIC {
            return Err(DecodeError::Magic);
        }
        let m = r.u32("the metadata length")? as usize;
        if m > MAX_META_BYTES {
            return Err(DecodeError::MetaTooLarge(m));
        }
        let meta: Meta = serde_json::from_slice(r.take(m as u64, "the metadata")?)
            .map_err(|e| DecodeError::Meta(e.to_string()))?;
        let n = r.u32("the number of values")?;
        let data = r.take(u64::from(n) * 4, "the window")?;
        let input: Vec<f32> =
            data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let want = meta.shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d as u64)).unwrap_or(u64::MAX);
        if want != u64::from(n) {
            return Err(DecodeError::Shape { values: input.len(), shape: meta.shape, want });
        }
        let p = r.u32("the payload length")?;
        let payload = r.take(u64::from(p), "the payload")?;
        let payload = (p > 0).then(|| payload.to_vec());
        let body = r.at;
        let crc = r.u32("the checksum")?;
        if r.at != bytes.len() {
            return Err(DecodeError::Trailing(bytes.len() - r.at));
        }
        if crc32c::crc32c(&bytes[..body]) != crc {
            return Err(DecodeError::Checksum);
        }
        Ok(Sample { meta, input, payload })
    }
}

/// A length as the format's u32; the store refuses samples anywhere near 4 GiB first.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let left = self.bytes.len() - self.at;
        if n > left as u64 {
            return Err(DecodeError::Short { what, need: n, left });
        }
        let n = n as usize;
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes of sample files kept at most; the oldest go first.
    pub max_bytes: u64,
    /// Free bytes the file system must keep after a write.
    pub min_free_bytes: u64,
}

/// Why the store did not keep a sample (the hourly count is the handle's, before).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the sample is {bytes} bytes, more than the whole store may hold ({max} bytes, capture.max_kb)")]
    TooLarge { bytes: u64, max: u64 },
    #[error(
        "the disk is tight: {free} bytes free, {need} needed to keep capture.min_free_mb free after writing"
    )]
    DiskTight { free: u64, need: u64 },
    #[error("cannot write {path}: {reason}")]
    Io { path: String, reason: String },
}

/// One sample file as found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub bytes: u64,
    pub path: PathBuf,
}

/// The sample files of `dir`, oldest first. A missing directory holds none.
pub fn entries(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
            continue;
        }
        let Some(seq) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
        out.push(Entry { seq, bytes, path });
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

/// Reads one sample file (at most [`MAX_FILE_BYTES`] of it).
pub fn read(path: &Path) -> Result<Sample, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{} is larger than any sample file ({MAX_FILE_BYTES} bytes)", path.display()));
    }
    Sample::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The writer's view of the store: the files kept, their total, the times of the last
/// hour's samples. Owned by the one writer thread.
pub struct Store {
    dir: PathBuf,
    files: VecDeque<Entry>,
    total: u64,
    next: u64,
    limits: Limits,
    /// Free bytes of the file system, asked for each write (a test replaces it).
    free: FreeSpace,
}

/// How the free bytes of a directory's file system are measured.
type FreeSpace = Box<dyn Fn(&Path) -> std::io::Result<u64> + Send>;

impl Store {
    /// Opens (creating) the store in `dir`, counting what is already there.
    pub fn open(dir: &Path, limits: Limits) -> std::io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let files: VecDeque<Entry> = entries(dir)?.into();
        let total = files.iter().map(|e| e.bytes).sum();
        let next = files.back().map_or(0, |e| e.seq + 1);
        Ok(Store {
            dir: dir.to_path_buf(),
            files,
            total,
            next,
            limits,
            free: Box::new(crate::telemetry::free_space),
        })
    }

    /// Replaces how free space is measured (tests of a tight disk).
    #[cfg(test)]
    pub fn with_free(mut self, free: impl Fn(&Path) -> std::io::Result<u64> + Send + 'static) -> Store {
        self.free = Box::new(free);
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of sample files kept.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Sample files kept.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no sample is kept.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Writes a sample within the byte bound (the oldest go first) and the free-space
    /// margin. The hourly count is the handle's to check, before the sample is copied.
    pub fn put(&mut self, sample: &Sample) -> Result<u64, Refused> {
        let bytes = sample.encode();
        let len = bytes.len() as u64;
        if len > self.limits.max_bytes {
            return Err(Refused::TooLarge { bytes: len, max: self.limits.max_bytes });
        }
        while self.total + len > self.limits.max_bytes {
            let Some(old) = self.files.pop_front() else { break };
            if let Err(e) = std::fs::remove_file(&old.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %old.path.display(), error = %e, "cannot remove an old captured sample");
            }
            self.total = self.total.saturating_sub(old.bytes);
        }
        // Checked after the eviction, which freed space: a sample is refused only if it
        // would eat into the margin the rest of the device needs.
        let need = len.saturating_add(self.limits.min_free_bytes);
        let free = (self.free)(&self.dir).map_err(|e| self.io(&self.dir, &e))?;
        if free < need {
            return Err(Refused::DiskTight { free, need });
        }
        let seq = self.next;
        let path = self.dir.join(format!("{seq:016}.{EXTENSION}"));
        edge_spool::durable::replace(&path, &bytes).map_err(|e| self.io(&path, &e))?;
        self.next += 1;
        self.total += len;
        self.files.push_back(Entry { seq, bytes: len, path });
        Ok(seq)
    }

    fn io(&self, path: &Path, e: &std::io::Error) -> Refused {
        Refused::Io { path: path.display().to_string(), reason: e.to_string() }
    }
}
