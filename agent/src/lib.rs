//! edge-agent: an inference agent for edge devices.
//!
//! # Layout
//! - [`api`]: the local HTTP API: Open Inference Protocol v2, `/status`, `/metrics`.
//! - [`cli`]: the command line, one module per subcommand (the binary's edge: `anyhow`).
//! - [`config`]: the configuration schema, loading (file, environment, flags), validation.
//! - [`engine`]: model specs, loading and optimising with tract, the worker pool, stream state.
//! - [`pipeline`]: declarative pre-processing (decode, images, windows) and post-processing.
//! - [`sources`]: sensor inputs (simulated, file replay, stdin).
//! - [`service`]: the daemon: wiring sources → engine → results, start-up and shutdown.
//! - [`telemetry`]: readings about the agent itself.

// Daemon paths must not panic on bad input; proven invariants say why with a local allow.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod pipeline;
pub mod service;
pub mod sources;
pub mod telemetry;
