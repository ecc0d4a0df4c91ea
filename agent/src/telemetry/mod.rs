//! Readings about the agent itself (memory); counters and histograms live with what
//! they count (see `engine::stats`).

/// Resident and peak resident memory of this process, in bytes (Linux `/proc`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Memory {
    pub rss: u64,
    pub peak_rss: u64,
}

/// Reads this process's memory use; zeros where `/proc` is not available.
pub fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    Memory { rss: field("VmRSS:"), peak_rss: field("VmHWM:") }
}
