//! Files that must survive a crash or a power cut whole: atomic replacement and directory
//! syncs. The one implementation of both for the spool's cursor, the agent's state files
//! (sequence numbers, seen command ids, the runtime overlay, OTA state) and the TUF
//! repository's metadata.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What [`replace_via`] forces to storage. Without `file`, a power cut can leave the new
/// name holding a partly written file; without `dir`, it can bring the old file back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    /// Force the new content to storage before the rename.
    pub file: bool,
    /// Force the rename to storage after it (the directory entry).
    pub dir: bool,
}

impl Durability {
    /// Both: after a crash or a power cut the file holds the old or the new content.
    pub const FULL: Durability = Durability { file: true, dir: true };
}

/// Replaces `path` with `bytes` so that, after a crash or power cut at any moment, the
/// file holds either the old or the new content: written to a temporary file beside it,
/// forced to storage, renamed over it, and the rename forced to storage too.
///
/// The temporary file is hidden and unique to the process and call
/// (`.<name>.tmp-<pid>-<n>`), so concurrent writers of the same file never write into
/// each other's temporary; it is removed if the replacement fails.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_via(path, &unique_tmp(path), bytes, Durability::FULL)
}

/// Replaces `path` with `bytes` through the temporary file `tmp` (in the same directory,
/// since a rename does not cross file systems), forcing to storage what `durability`
/// says. A crash leaves the old or the new file under `path`, and maybe `tmp`; `tmp` is
/// removed when the replacement fails. For callers that clean up leftovers by name, such
/// as the spool, which deletes `*.tmp` at open.
pub fn replace_via(path: &Path, tmp: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(tmp)?;
        f.write_all(bytes)?;
        if durability.file {
            f.sync_all()?;
        }
        fs::rename(tmp, path)?;
        if durability.dir
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        // Best effort: whoever cleans up leftovers would find it anyway.
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Forces a directory's entries (files created, renamed or removed in it) to storage.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Distinguishes the temporary files of one process's concurrent replacements.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_tmp(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), TMP_COUNTER.fetch_add(1, Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_creates_then_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_failed_replace_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        // Renaming a file over a non-empty directory fails.
        let tmp = dir.path().join("target.tmp");
        assert!(replace_via(&path, &tmp, b"new", Durability::FULL).is_err());
        assert!(!tmp.exists());
        assert!(path.join("inside").exists());
    }
}
