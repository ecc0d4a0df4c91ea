//! edge-tuf: The Update Framework (specification 1.0) on `ring`, as edge-agent's model
//! registry uses it: devices verify what they install, publishers sign what they serve.
//!
//! Nothing here does network I/O: the client workflow asks for files by name and is fed
//! their bytes, so the same checks run over HTTP on a device (edge-agent's updater) and
//! over a directory (`edge-agent registry verify`). Only the publisher ([`repo`]) reads
//! and writes files.
//!
//! # Layout
//! - [`canonical`]: OLPC canonical JSON, the bytes that are signed.
//! - [`keys`]: Ed25519 public and private keys, key ids, key files.
//! - [`metadata`]: the four roles' metadata, envelopes, signing, lengths and hashes.
//! - [`client`]: [`client::TrustedSet`], the checks of each step of the client workflow.
//! - [`workflow`]: [`workflow::Workflow`], the order of those steps (root chain, expiry,
//!   timestamp, snapshot, targets, delegations) with every loop bounded, without I/O.
//! - [`repo`]: the publisher's side: a repository with consistent snapshots on disk, and
//!   [`repo::verify`], which runs the workflow over it.
//! - [`error`]: [`Error`], the one error type; every message says what to do.

#![warn(missing_docs)]

pub mod canonical;
pub mod client;
pub mod error;
pub mod keys;
pub mod metadata;
pub mod repo;
pub mod workflow;

pub use error::Error;

#[cfg(test)]
mod props;
#[cfg(test)]
mod testing;
