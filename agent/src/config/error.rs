//! Errors of loading a configuration.

use std::path::PathBuf;

/// A configuration that cannot be used; the agent does not start with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Syntax { path: PathBuf, line: usize, message: String },
    #[error("environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("{count} problem(s) in the configuration:\n{problems}")]
    Invalid { count: usize, problems: String },
}
