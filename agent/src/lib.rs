//! edge-agent: an inference agent for edge devices.
//!
//! # Layout
//! - [`api`]: the local HTTP API: Open Inference Protocol v2, `/status`, `/metrics`.
//! - [`capture`]: keeping the inputs worth retraining on, in a bounded on-disk store; exports.
//! - [`cli`]: the command line, one module per subcommand (the binary's edge: `anyhow`).
//! - [`config`]: the configuration schema, loading (file, environment, flags), validation.
//! - [`diagnostics`]: the checks of a device's setup, for `edge-agent doctor` and the
//!   `diagnostics` command.
//! - [`daemon_client`]: one HTTP/1.0 exchange with a running agent's API (CLI, diagnostics).
//! - [`events`]: the typed [`events::Event`] and the one sink that logs and publishes it.
//! - [`sources`]: sensor inputs (simulated, file replay, stdin).
//! - [`service`]: the daemon: wiring sources → engine → results, start-up and shutdown.
//! - [`fallback`]: cloud inference over the Open Inference Protocol v2 when local limits are hit.
//! - [`monitor`]: drift of each model's inputs and outputs against its reference profile.
//! - [`mqtt`]: the link to the fleet: sensor topics in; results, telemetry, events, status out.
//! - [`oip`]: the Open Inference Protocol v2 vocabulary shared by [`api`] and [`fallback`].
//! - [`commands`]: the commands, one file each with its typed arguments (read by MQTT and
//!   `POST /ota/*` alike), and the MQTT command dispatcher.
//! - [`ota`]: signed model updates: the TUF registry client, downloads, self-tests, activation,
//!   probation and rollback; `registry` publishing and serving.
//! - [`shadow`]: shadow runs of a candidate version beside the active one, on idle
//!   capacity, compared and never served.
//! - [`tls`]: TLS client setup (roots, client certificates, rustls on ring) and TLS errors
//!   for [`mqtt`], [`ota`] and [`fallback`].
//! - [`upload`]: resumable `PUT` uploads to pre-signed URLs (captured samples; log bundles).
//! - [`telemetry`]: readings about the agent and its device, and the periodic report.
//!
//! The inference engine (model specs, loading and optimising with tract, the worker pool,
//! stream state) and the declarative pre- and post-processing are the [`edge_infer`]
//! crate: `edge_infer::engine` and `edge_infer::pipeline`.
//!
//! The on-disk spool of the MQTT outbox and the atomic replacement of state files are the
//! [`edge_spool`] crate (`edge_spool::durable` for the latter).

// Daemon paths must not panic on bad input; proven invariants say why with a local allow.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod capture;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon_client;
pub mod diagnostics;
pub mod events;
pub mod fallback;
pub mod logs;
pub mod monitor;
pub mod mqtt;
pub mod oip;
pub mod ota;
pub mod service;
pub mod shadow;
pub mod sources;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod upload;
pub mod usage;
