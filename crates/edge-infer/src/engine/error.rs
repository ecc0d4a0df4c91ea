//! Errors of the engine: reading specs, loading models, running requests.

use std::path::PathBuf;

use super::budget::{LIMIT_NAMES, human};
use crate::pipeline::InputError;

/// A `model.toml` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The directory has no `model.toml`.
    #[error("no model spec at {path}; a model directory needs a model.toml beside its model file")]
    Missing {
        /// Where the spec was looked for.
        path: PathBuf,
    },
    /// The spec exists but cannot be read.
    #[error("cannot read model spec {path}: {source}")]
    Read {
        /// The spec file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The spec is not UTF-8 text.
    #[error(
        "{path}:{line}: not UTF-8 text: byte {offset} (0x{byte:02x}) is not valid UTF-8; save the spec as UTF-8"
    )]
    NotUtf8 {
        /// The spec file.
        path: PathBuf,
        /// Byte offset of the first invalid byte.
        offset: usize,
        /// That byte.
        byte: u8,
        /// Its 1-based line.
        line: usize,
    },
    /// `file` names a model outside the model directory.
    #[error(
        "{path}: file `{file}` leads to {target}, outside the model directory: a model may only read files that travel with it; copy the model file into the directory"
    )]
    Outside {
        /// The spec file.
        path: PathBuf,
        /// What the spec's `file` says.
        file: String,
        /// Where that leads once resolved.
        target: PathBuf,
    },
    /// The spec is not valid TOML or does not fit the spec's schema.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The spec file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The spec parses but breaks its rules; every problem is listed.
    #[error("{path}: invalid model spec:\n  {problems}")]
    Invalid {
        /// The spec file.
        path: PathBuf,
        /// One problem per line, each with its `file:line` and fix.
        problems: String,
    },
}

/// A model that cannot be loaded, checked against its spec, or optimised.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The spec cannot be used.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The model file cannot be read.
    #[error("cannot read model file {path}: {source}")]
    Read {
        /// The model file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The model file is not an ONNX model tract can read.
    #[error(
        "{path}: not a usable ONNX model ({bytes} bytes): {reason}; check that the file is complete and is an ONNX model"
    )]
    Parse {
        /// The model file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// tract's error.
        reason: String,
    },
    /// The NNEF archive beside the ONNX file cannot be read.
    #[error(
        "{path}: not a usable NNEF archive ({bytes} bytes): {reason}; convert the model again (`edge-agent model convert --model DIR`, or publish it with `edge-agent registry publish`), or delete the archive so that the ONNX file is loaded"
    )]
    Nnef {
        /// The archive.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// tract's error.
        reason: String,
    },
    /// This build has no ONNX loader and the model folder has no NNEF archive.
    #[error(
        "{path}: this edge-agent is built without ONNX support (the `onnx` feature) and reads only NNEF, but {nnef} does not exist; publish the model with `edge-agent registry publish`, which converts it, or convert it with `edge-agent model convert --model DIR` on a build with ONNX"
    )]
    NoOnnx {
        /// The ONNX file the spec names.
        path: PathBuf,
        /// The NNEF archive looked for.
        nnef: PathBuf,
    },
    /// The spec's inputs and outputs disagree with the model's; every problem is listed.
    #[error("{spec}: the spec does not match the model {path}:\n  {problems}")]
    Mismatch {
        /// The spec file.
        spec: PathBuf,
        /// The model file.
        path: PathBuf,
        /// One problem per line, each with its fix.
        problems: String,
    },
    /// Something the model needs is larger than this device allows one model.
    #[error(
        "{path}: {what} needs {} ({bytes} bytes), more than this device allows one model ({}); raise the limit ({LIMIT_NAMES}) if the device has the memory, or {instead}",
        human(*bytes),
        human(*limit)
    )]
    TooLarge {
        /// The spec or model file the size comes from.
        path: PathBuf,
        /// What is too large (an input, the file, the working memory).
        what: String,
        /// Its size.
        bytes: u64,
        /// The limit it exceeds ([`ModelLimits::max_bytes`](super::ModelLimits::max_bytes)).
        limit: u64,
        /// What to do instead of raising the limit.
        instead: &'static str,
    },
    /// tract cannot type or optimise the model at the spec's shapes.
    #[error("{path}: the model cannot be prepared for the shapes in its spec: {reason}")]
    Optimise {
        /// The model file.
        path: PathBuf,
        /// tract's error.
        reason: String,
    },
    /// tract panicked on the model (caught: the caller keeps running).
    #[error(
        "{path}: tract panicked while {stage} the model: {message}; the model is malformed or uses something tract does not support"
    )]
    Panic {
        /// The model file.
        path: PathBuf,
        /// What tract was doing: parsing, analysing, optimising or planning.
        stage: &'static str,
        /// The panic's message.
        message: String,
    },
}

/// A request that did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Every queue slot is taken.
    #[error(
        "queue full ({capacity} requests waiting): request rejected; retry later, or raise engine.queue / engine.threads"
    )]
    QueueFull {
        /// The queue's size ([`EngineConfig::queue`](super::EngineConfig::queue)).
        capacity: usize,
    },
    /// No worker started the request before its deadline.
    #[error(
        "deadline exceeded: the request waited {waited_ms} ms of its {deadline_ms} ms; raise the deadline or reduce the load"
    )]
    Deadline {
        /// How long it waited.
        waited_ms: u64,
        /// How long it was allowed to wait.
        deadline_ms: u64,
    },
    /// The engine stopped taking requests.
    #[error("the engine is shutting down; the request was not run")]
    ShuttingDown,
    /// No model of that name is installed.
    #[error("model `{model}` is not loaded; loaded models: {loaded}")]
    UnknownModel {
        /// The name asked for.
        model: String,
        /// The names installed, comma-separated.
        loaded: String,
    },
    /// The stream's recurrent state is held by a request still running.
    #[error(
        "stream `{stream}` of model `{model}` already has a request in flight; send one stream's requests one after another"
    )]
    StreamBusy {
        /// The model.
        model: String,
        /// The stream.
        stream: String,
    },
    /// The input does not fit the model (pre-processing or length).
    #[error("bad input for model `{model}`: {source}")]
    Input {
        /// The model.
        model: String,
        /// What is wrong with the input.
        #[source]
        source: InputError,
    },
    /// tract failed on this input.
    #[error("model `{model}` failed on this input: {reason}")]
    Run {
        /// The model.
        model: String,
        /// tract's error, or why the result cannot be read.
        reason: String,
    },
    /// tract panicked on this input (caught: the worker keeps serving).
    #[error(
        "model `{model}` panicked during inference: {message}; the request was dropped, the engine keeps serving"
    )]
    Panic {
        /// The model.
        model: String,
        /// The panic's message.
        message: String,
    },
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
