//! Small state files that must survive a crash or a power cut whole.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` so that, after a crash or power cut at any moment, the
/// file holds either the old or the new content: written to a temporary file beside it,
/// forced to storage, renamed over it, and the rename forced to storage too.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Forces a directory's entries (files created, renamed or removed in it) to storage.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
