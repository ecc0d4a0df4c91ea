//! edge-infer: edge-agent's inference engine as a library. A Rust program can run a
//! model directory (an ONNX file and the `model.toml` spec beside it) the way the agent
//! does, without MQTT, HTTP or updates.
//!
//! # Layout
//! - [`engine`]: model specs ([`ModelSpec`]), loading, checking and optimising models
//!   with tract ([`LoadedModel`]) within a device's memory limits ([`ModelLimits`]), and
//!   the [`Engine`]: a pool of worker threads fed by a bounded queue, with deadlines,
//!   counted rejections and recurrent state per stream. Blocking callers run models
//!   under 100 µs on their own thread ([`engine::inline`]); models are rewritten at load
//!   where tract leaves activation chains unfused ([`engine::fuse`]).
//! - [`pipeline`]: the spec's declarative pre-processing (decoding JSON, raw samples and
//!   images; sliding windows) and post-processing (softmax, argmax, top-k, threshold,
//!   labels, segments; text detection maps to boxes, CTC decoding, crops).
//! - [`stages`]: pipelines of models in one spec (`[[stage]]`): a detector's boxes cut
//!   out of the image and fed to a recogniser, every stage on the same engine.
//! - [`Runner`]: the two together for one stream of payloads, blocking; the shortest way
//!   from a model directory to answers.
//! - [`locate`]: finding the line of a TOML key, for errors that point at it.
//!
//! # Example
//!
//! Answers for a file of payloads, one per line, in the spec's `pre.format` (the
//! `run_dir` example does this with the demo model):
//!
//! ```no_run
//! use std::path::Path;
//!
//! use edge_infer::{EngineConfig, Payload, Runner};
//!
//! let mut runner = Runner::open(Path::new("configs/models/vibration"), &EngineConfig::default())?;
//! for line in std::fs::read_to_string("samples.jsonl")?.lines() {
//!     for answer in runner.push(Payload::Bytes(line.as_bytes().to_vec()))? {
//!         println!("window {}: {:?}", answer.window, answer.outputs.get("label"));
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Several streams, models or callers share one [`Engine`] instead: [`Engine::install`]
//! a [`LoadedModel`], then [`Engine::submit`] a [`Request`] from any thread or task and
//! wait on its [`Ticket`].

#![warn(missing_docs)]
// Serving paths must not panic on bad input; proven invariants say why with a local allow.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod engine;
pub mod locate;
pub mod pipeline;
mod runner;
pub mod stages;

pub use engine::spec::{LoadedSpec, ModelSpec};
pub use engine::{
    Engine, EngineConfig, InferError, LoadError, LoadedModel, ModelLimits, Output, Request, Response,
    SpecError, Ticket,
};
pub use pipeline::{InputError, Payload, PostProcessor, Window, Windower};
pub use runner::{Answer, Runner};
/// The tract the engine is built on, for callers that use [`LoadedModel`]'s run plan
/// directly (its types are tract's).
pub use tract_nnef;
/// tract's ONNX loader, in builds with the `onnx` feature.
#[cfg(feature = "onnx")]
pub use tract_onnx;
