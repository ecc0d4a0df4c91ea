//! This process's own memory and CPU time, from Linux `/proc`.

/// Resident and peak resident memory of this process, in bytes (Linux `/proc`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
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

/// CPU time (user + system) used by this process so far, in seconds (Linux `/proc`).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces, hence the last ')').
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name
    // and state. Clock ticks are 100 per second on every Linux architecture we target.
    (ticks(11) + ticks(12)) / 100.0
}
