//! A device's setup, checked: the configuration, the state directory and its free space,
//! every model loading, the clock, the broker, the API's address and socket. One
//! [`Check`] per line, `ok`, `warn` or `fail` with the reason and the fix.
//!
//! `edge-agent doctor` prints a [`Report`]; the `diagnostics` command sends it. The
//! checks load every model again and probe the network: they block, so the daemon runs
//! them off its executor.

pub mod bundle;
mod checks;

use std::path::Path;

use serde::Serialize;

/// How a check went; the order is from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's outcome.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What was checked: `config`, `state`, `disk`, `model`, `clock`, `broker`, `api`, `socket`.
    pub check: String,
    pub level: Level,
    /// What was found.
    pub message: String,
    /// What to do about it, when there is something to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check, and the worst level among them.
#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The worst level of [`Report::checks`] (`ok` if there were none).
    pub result: Level,
}

/// Runs every check of the setup that configuration `file` describes. Blocking.
pub fn run(file: &Path) -> Report {
    let checks = checks::all(file);
    let result = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    Report { checks, result }
}
