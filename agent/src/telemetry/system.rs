//! Device readings: CPU, memory, temperature, free space of the state directory, uptime.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sysinfo::{Components, CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// One sample of the device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemReading {
    /// CPU use over all cores since the previous sample, 0 to 100.
    pub cpu_pct: f32,
    pub mem_total: u64,
    pub mem_used: u64,
    pub mem_avail: u64,
    /// The hottest sensor, where the board has any (thermal zones, hwmon).
    pub temp_c: Option<f32>,
    /// Bytes free for the agent on the state directory's file system.
    pub disk_free: u64,
    pub uptime_s: u64,
    pub load1: f64,
}

/// Keeps what sysinfo needs between samples (CPU use is a difference).
pub struct SystemSampler {
    system: System,
    components: Components,
    state_dir: PathBuf,
}

impl SystemSampler {
    pub fn new(state_dir: &Path) -> SystemSampler {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        SystemSampler {
            system,
            components: Components::new_with_refreshed_list(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn sample(&mut self) -> SystemReading {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        self.components.refresh(false);
        let temp_c = self
            .components
            .iter()
            .filter_map(|c| c.temperature())
            .filter(|t| t.is_finite())
            .fold(None, |max: Option<f32>, t| Some(max.map_or(t, |m| m.max(t))));
        SystemReading {
            cpu_pct: self.system.global_cpu_usage(),
            mem_total: self.system.total_memory(),
            mem_used: self.system.used_memory(),
            mem_avail: self.system.available_memory(),
            temp_c,
            disk_free: disk_free(&self.state_dir).unwrap_or(0),
            uptime_s: System::uptime(),
            load1: System::load_average().one,
        }
    }
}

/// Memory the process's cgroup (v2) and its ancestors may still use: the least of
/// `memory.max - memory.current` on the way up, `None` without any limit. Read from the
/// process's own cgroup (`/proc/self/cgroup`), not the file system root, so that a
/// service or a `systemd-run --scope -p MemoryMax=` limit is seen.
pub fn cgroup_memory_available() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim().trim_start_matches('/');
    let read = |p: &Path, f: &str| std::fs::read_to_string(p.join(f)).ok().map(|s| s.trim().to_string());
    let mut dir = Path::new("/sys/fs/cgroup").join(rel);
    let mut least: Option<u64> = None;
    loop {
        if let (Some(max), Some(cur)) = (read(&dir, "memory.max"), read(&dir, "memory.current"))
            && let (Ok(max), Ok(cur)) = (max.parse::<u64>(), cur.parse::<u64>())
        {
            let free = max.saturating_sub(cur);
            least = Some(least.map_or(free, |l| l.min(free)));
        }
        if dir == Path::new("/sys/fs/cgroup") || !dir.pop() {
            break;
        }
    }
    least
}

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn disk_free(path: &Path) -> Option<u64> {
    free_space(path).ok()
}

/// As [`disk_free`], with the reason when it cannot be read (for callers that refuse
/// work on it, such as a download that must fit).
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` writable memory of the right
    // type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    // u64::from rather than `as`: the field types differ between 32- and 64-bit targets.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}
