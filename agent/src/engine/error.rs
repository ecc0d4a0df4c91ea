//! Errors of the engine: reading specs, loading models, running requests.

use std::path::PathBuf;

use super::budget::{LIMIT_NAMES, human};
use crate::pipeline::InputError;

/// A `model.toml` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no model spec at {path}; a model directory needs a model.toml beside its model file")]
    Missing { path: PathBuf },
    #[error("cannot read model spec {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}:{line}: not UTF-8 text: byte {offset} (0x{byte:02x}) is not valid UTF-8; save the spec as UTF-8"
    )]
    NotUtf8 { path: PathBuf, offset: usize, byte: u8, line: usize },
    #[error(
        "{path}: file `{file}` leads to {target}, outside the model directory: a model may only read files that travel with it; copy the model file into the directory"
    )]
    Outside { path: PathBuf, file: String, target: PathBuf },
    #[error("{path}:{line}: {message}")]
    Syntax { path: PathBuf, line: usize, message: String },
    #[error("{path}: invalid model spec:\n  {problems}")]
    Invalid { path: PathBuf, problems: String },
}

/// A model that cannot be loaded, checked against its spec, or optimised.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot read model file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: not a usable ONNX model ({bytes} bytes): {reason}; check that the file is complete and is an ONNX model"
    )]
    Parse { path: PathBuf, bytes: u64, reason: String },
    #[error("{spec}: the spec does not match the model {path}:\n  {problems}")]
    Mismatch { spec: PathBuf, path: PathBuf, problems: String },
    #[error(
        "{path}: {what} needs {} ({bytes} bytes), more than this device allows one model ({}); raise the limit ({LIMIT_NAMES}) if the device has the memory, or {instead}",
        human(*bytes),
        human(*limit)
    )]
    TooLarge { path: PathBuf, what: String, bytes: u64, limit: u64, instead: &'static str },
    #[error("{path}: the model cannot be prepared for the shapes in its spec: {reason}")]
    Optimise { path: PathBuf, reason: String },
    #[error(
        "{path}: tract panicked while {stage} the model: {message}; the model is malformed or uses something tract does not support"
    )]
    Panic { path: PathBuf, stage: &'static str, message: String },
}

/// A request that did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(
        "queue full ({capacity} requests waiting): request rejected; retry later, or raise engine.queue / engine.threads"
    )]
    QueueFull { capacity: usize },
    #[error(
        "deadline exceeded: the request waited {waited_ms} ms of its {deadline_ms} ms; raise the deadline or reduce the load"
    )]
    Deadline { waited_ms: u64, deadline_ms: u64 },
    #[error("the engine is shutting down; the request was not run")]
    ShuttingDown,
    #[error("model `{model}` is not loaded; loaded models: {loaded}")]
    UnknownModel { model: String, loaded: String },
    #[error(
        "stream `{stream}` of model `{model}` already has a request in flight; send one stream's requests one after another"
    )]
    StreamBusy { model: String, stream: String },
    #[error("bad input for model `{model}`: {source}")]
    Input {
        model: String,
        #[source]
        source: InputError,
    },
    #[error("model `{model}` failed on this input: {reason}")]
    Run { model: String, reason: String },
    #[error(
        "model `{model}` panicked during inference: {message}; the request was dropped, the engine keeps serving"
    )]
    Panic { model: String, message: String },
}

impl InferError {
    /// A short stable name for counters and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            InferError::QueueFull { .. } => "queue_full",
            InferError::Deadline { .. } => "deadline",
            InferError::ShuttingDown => "shutting_down",
            InferError::UnknownModel { .. } => "unknown_model",
            InferError::StreamBusy { .. } => "stream_busy",
            InferError::Input { .. } => "bad_input",
            InferError::Run { .. } => "run_failed",
            InferError::Panic { .. } => "panic",
        }
    }

    /// Whether the request was turned away before running (as opposed to failing).
    pub fn is_rejection(&self) -> bool {
        matches!(self, InferError::QueueFull { .. } | InferError::Deadline { .. } | InferError::ShuttingDown)
    }
}
