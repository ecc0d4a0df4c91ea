//! The spool's errors: each names the operation, the file and what to do about it.

use std::io;
use std::path::PathBuf;

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file system operation on a spool file or the spool directory failed.
    #[error("spool: cannot {op} {path}: {source}; {hint}", path = .path.display(), hint = io_hint(.source))]
    Io {
        /// What was being done, as a verb phrase ("append to", "create", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// One record does not fit in a segment or in the whole spool.
    #[error(
        "spool: a record for topic `{topic}` takes {bytes} bytes on disk, more than the {max} bytes \
         allowed (the smaller of spool.segment_bytes and spool.max_bytes, at most 64 MiB); \
         publish it without spooling, shrink it, or raise those limits"
    )]
    TooLarge {
        /// The record's topic.
        topic: String,
        /// Its size as a frame on disk.
        bytes: u64,
        /// The largest frame allowed.
        max: u64,
    },
    /// A record could not be encoded (postcard); in practice unreachable for `Record`.
    #[error("spool: cannot encode the record for topic `{topic}`: {source}; this is a bug, please report it")]
    Encode {
        /// The record's topic.
        topic: String,
        /// What postcard said.
        source: postcard::Error,
    },
    /// The configuration cannot work.
    #[error("spool: invalid configuration for {dir}: {message}", dir = .dir.display())]
    InvalidConfig {
        /// The spool directory of the configuration.
        dir: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl SpoolError {
    pub(super) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io { op, path: path.into(), source }
    }
}

/// The "how to fix" part of an I/O error: the common causes on a device, by kind.
fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            "give the agent's user (edge-agent) read and write access to the spool directory"
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "the file system is full: free space or lower spool.max_bytes below the free space"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            "the file system is read-only (remounted so after I/O errors?): check `dmesg` and the storage"
        }
        io::ErrorKind::NotFound => "check spool.dir in the configuration and that the directory exists",
        io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => {
            "spool.dir must name a directory holding only spool files"
        }
        _ => "check the storage (`dmesg`, free space, mount options) and the directory's permissions",
    }
}
