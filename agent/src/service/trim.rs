//! Gives back the start-up pages of the agent's own executable once it serves.
//!
//! Loading and optimising a model runs a large part of tract's code once (the ONNX
//! parser, type inference, dozens of graph rewrites), and start-up code of every other
//! part runs once too. The kernel keeps those pages of the executable mapped into the
//! process until memory runs short, so they count in the agent's RSS for its whole life:
//! about 17 of the demo's 25 MiB idle were executable pages of which under 2 MiB were
//! touched again (tests/bench/notes.md has the breakdown). Once the models are loaded,
//! [`release_startup_pages`] unmaps them from the process with `MADV_DONTNEED`; the page
//! cache keeps the file's pages, and whatever code runs again is mapped back on its
//! first use, a minor fault and no disk read while the cache still holds it.
//!
//! Only mappings of the executable that are read-only and hold no private copies
//! (`Anonymous: 0 kB` in smaps) are touched: for those, dropping a page loses nothing,
//! because mapping it again gives the same bytes from the file. The relocated read-only
//! data (RELRO) holds private copies, and is left alone.

/// One mapping of the executable that can be dropped and mapped again from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start: usize,
    pub len: usize,
    /// Resident bytes before release.
    pub rss: u64,
}

/// What one release did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    pub regions: usize,
    /// Resident bytes of those regions before release.
    pub bytes: u64,
}

/// The mappings of `exe` in `smaps` (the text of `/proc/self/smaps`) that are read-only,
/// private and hold no anonymous (copied-on-write) pages. Malformed blocks are skipped.
pub fn regions(smaps: &str, exe: &str) -> Vec<Region> {
    let mut out = Vec::new();
    let mut current: Option<(Region, bool, bool)> = None; // region, eligible so far, anonymous seen
    let finish = |c: Option<(Region, bool, bool)>, out: &mut Vec<Region>| {
        if let Some((r, true, false)) = c {
            out.push(r);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            finish(current.take(), &mut out);
            let (start, end, perms, path) = header;
            let eligible = path == exe && perms.len() == 4 && !perms.contains('w') && perms.ends_with('p');
            current = Some((Region { start, len: end - start, rss: 0 }, eligible, false));
            continue;
        }
        let Some((region, _, anonymous)) = current.as_mut() else { continue };
        if let Some(kb) = field_kb(line, "Rss:") {
            region.rss = kb * 1024;
        } else if let Some(kb) = field_kb(line, "Anonymous:") {
            *anonymous = kb > 0;
        }
    }
    finish(current, &mut out);
    out
}

/// `start-end perms offset dev inode path` → (start, end, perms, path); None for field lines.
fn mapping_header(line: &str) -> Option<(usize, usize, &str, &str)> {
    let mut parts = line.splitn(6, ' ');
    let (range, perms) = (parts.next()?, parts.next()?);
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    if end <= start {
        return None;
    }
    let (_offset, _dev, _inode) = (parts.next()?, parts.next()?, parts.next()?);
    let path = parts.next().unwrap_or("").trim_start();
    Some((start, end, perms, path))
}

fn field_kb(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Releases the start-up pages of this process's executable (see the module comment),
/// and hands the allocator's free memory back to the system. Returns what was released;
/// errors only when `/proc` cannot be read, which costs nothing but the saving.
pub fn release_startup_pages() -> std::io::Result<Released> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for r in regions(&smaps, &exe.to_string_lossy()) {
        // SAFETY: the range is a whole mapping of this process, read-only and private,
        // with no page copied on write (checked just above from smaps), so its contents
        // are exactly the file's: MADV_DONTNEED only unmaps pages that the next access maps
        // again from the same file. No Rust object lives in a file-backed mapping.
        let rc = unsafe { libc::madvise(r.start as *mut libc::c_void, r.len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released.regions += 1;
            released.bytes += r.rss;
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    Ok(released)
}

/// [`release_startup_pages`], logged; a failure is only a debug line (nothing is lost).
pub fn release_and_log(after: &str) {
    match release_startup_pages() {
        Ok(r) => tracing::debug!(
            after,
            regions = r.regions,
            released_kib = r.bytes / 1024,
            "released the executable's start-up pages"
        ),
        Err(e) => tracing::debug!(after, error = %e, "start-up pages not released"),
    }
}

/// How often a serving agent releases its executable's pages again. Code touched by
/// one-off work since (a burst of messages, a reload, an update, a diagnostics bundle)
/// then leaves the RSS; code in steady use is mapped back at once, a few hundred minor
/// faults a period (the page cache maps whole folios, some 100 KiB each, on a fault).
pub const PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

/// Releases the start-up pages every [`PERIOD`] until `token` is cancelled.
pub async fn every_period(token: tokio_util::sync::CancellationToken) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Reading smaps of a process with a few hundred mappings takes about a millisecond.
        let _ = tokio::task::spawn_blocking(|| release_and_log("period")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/usr/bin/edge-agent";

    fn block(range: &str, perms: &str, path: &str, rss_kb: u64, anon_kb: u64) -> String {
        format!(
            "{range} {perms} 00000000 fd:01 1234                       {path}\nSize:               8 kB\nRss:             {rss_kb} kB\nPss:             {rss_kb} kB\nAnonymous:       {anon_kb} kB\nVmFlags: rd mr mw me\n"
        )
    }

    #[test]
    fn picks_read_only_clean_mappings_of_the_executable_only() {
        let smaps = [
            block("1000-3000", "r--p", EXE, 8, 0),                  // rodata: taken
            block("3000-9000", "r-xp", EXE, 20, 0),                 // text: taken
            block("9000-a000", "r--p", EXE, 4, 4),                  // RELRO, relocated: copies, left
            block("a000-b000", "rw-p", EXE, 4, 0),                  // data: writable, left
            block("b000-c000", "r-xp", "/usr/lib/libc.so.6", 4, 0), // another file
            block("c000-d000", "rw-p", "", 4, 4),                   // anonymous
            block("d000-e000", "r-xs", EXE, 4, 0),                  // shared mapping: left
        ]
        .concat();
        let got = regions(&smaps, EXE);
        assert_eq!(
            got,
            vec![
                Region { start: 0x1000, len: 0x2000, rss: 8 * 1024 },
                Region { start: 0x3000, len: 0x6000, rss: 20 * 1024 }
            ]
        );
    }

    #[test]
    fn a_deleted_executable_and_paths_with_spaces_match_as_written() {
        let path = "/opt/edge agent/edge-agent (deleted)";
        let smaps = block("1000-2000", "r-xp", path, 4, 0);
        assert_eq!(regions(&smaps, path).len(), 1);
        assert!(regions(&smaps, "/opt/edge agent/edge-agent").is_empty());
    }

    #[test]
    fn malformed_text_yields_nothing_and_never_panics() {
        for text in
            ["", "garbage\n", "3000-1000 r-xp 0 0 0 /x\nRss: 4 kB\n", "zz-yy r-xp 0 0 0 /x\n", "Rss: 4 kB\n"]
        {
            assert!(regions(text, "/x").is_empty(), "{text:?}");
        }
    }

    proptest::proptest! {
        /// Any text, including real headers with arbitrary fields, parses without panic
        /// and yields only non-empty ranges of the named file.
        #[test]
        fn any_text_parses_without_panic(lines in proptest::collection::vec("[0-9a-f]{1,4}-[0-9a-f]{1,4} [rwxps-]{4} 0 0 0 /x|Rss: [0-9]{1,6} kB|Anonymous: [0-9]{1,3} kB|.{0,40}", 0..20)) {
            let text = lines.join("\n");
            for r in regions(&text, "/x") {
                proptest::prop_assert!(r.len > 0);
            }
        }
    }

    #[test]
    fn releasing_our_own_pages_keeps_the_process_working() {
        // The test binary's own code: release it, then run code from it again.
        let first = release_startup_pages().expect("proc is readable");
        assert!(first.regions >= 1, "the test binary has read-only mappings: {first:?}");
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(v.iter().sum::<u64>(), 5050);
        assert!(release_startup_pages().is_ok());
    }
}
