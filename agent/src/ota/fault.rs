//! A test-only fault switch: `EDGE_FAULT_KILL_AT=<step>` (not `EDGE_AGENT_...`, which
//! would be read as a configuration override) makes the agent kill
//! itself with SIGKILL when an update reaches that step, so tests can prove that a
//! crash at any step leaves the old or the new model serving, never a mixture.
//!
//! Steps: `download` (half-way through a download), `downloaded`, `staged`,
//! `selftested`, `activate-state-written`, `activate-between-links`, `activated`.
//! Unset (always, in production) it costs one environment lookup per update step.

/// The environment variable naming the step.
pub const ENV: &str = "EDGE_FAULT_KILL_AT";

/// Kills this process with SIGKILL if the fault switch names `step`.
pub fn point(step: &str) {
    if std::env::var(ENV).is_ok_and(|s| s == step) {
        tracing::error!(step, "fault switch: killing the agent with SIGKILL");
        // SAFETY: kill(2) on our own pid with a valid signal number.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
