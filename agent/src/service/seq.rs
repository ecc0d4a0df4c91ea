//! Result sequence numbers that never repeat, also across restarts and crashes.
//!
//! Writing the counter for every result would wear flash out; instead a block of
//! numbers is reserved on disk before any of it is used. After a restart numbering
//! continues at the next block, so `seq` can jump forward (by less than [`BLOCK`]) but
//! never repeats or goes back, and a consumer can still tell duplicates from new results.

use std::path::{Path, PathBuf};

/// Numbers reserved per write.
pub const BLOCK: u64 = 4096;

pub struct SeqAllocator {
    path: PathBuf,
    next: u64,
    reserved: u64,
}

impl SeqAllocator {
    /// Opens the counter file in `state_dir` (a missing file starts at 0; an unreadable
    /// one is an error, since guessing could repeat numbers).
    pub fn open(state_dir: &Path) -> std::io::Result<SeqAllocator> {
        let path = state_dir.join("result-seq");
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: `{}` is not a number ({e}); remove the file to restart numbering",
                        path.display(),
                        text.trim()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(SeqAllocator { path, next, reserved: next })
    }

    /// The next number; reserves a new block on disk first when needed. On a write
    /// failure numbering goes on in memory (results matter more than perfect numbering
    /// after a crash), and the failure is logged once per block.
    pub fn next(&mut self) -> u64 {
        if self.next >= self.reserved {
            let end = self.next + BLOCK;
            match crate::durable::replace(&self.path, format!("{end}\n").as_bytes()) {
                Ok(()) => {}
                Err(e) => tracing::error!(path = %self.path.display(), error = %e,
                    "cannot reserve result numbers; after a crash seq may repeat"),
            }
            self.reserved = end;
        }
        self.next += 1;
        self.next - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_never_repeat_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SeqAllocator::open(dir.path()).unwrap();
        let first: Vec<u64> = (0..10).map(|_| a.next()).collect();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        drop(a);
        let mut b = SeqAllocator::open(dir.path()).unwrap();
        assert_eq!(b.next(), BLOCK);
        std::fs::write(dir.path().join("result-seq"), "garbage").unwrap();
        assert!(SeqAllocator::open(dir.path()).is_err());
    }
}
