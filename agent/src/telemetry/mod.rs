//! Readings about the agent and its device, and the periodic telemetry report.
//!
//! Counters and histograms live with what they count (`engine::stats`, the outbox);
//! this module reads them, with the system through `sysinfo`, into one report.

mod process;
pub mod report;
mod system;

pub use process::{Memory, cpu_seconds, memory};
pub use report::{Report, decode_postcard};
pub use system::{SystemReading, SystemSampler, cgroup_memory_available, disk_free, free_space};
