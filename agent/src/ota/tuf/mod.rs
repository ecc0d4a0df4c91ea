//! The Update Framework (specification 1.0) on `ring`: canonical JSON, Ed25519 keys,
//! the four roles' metadata, the client workflow's checks ([`client::TrustedSet`]) and
//! the publisher's side ([`repo`]).

pub mod canonical;
pub mod client;
pub mod error;
pub mod keys;
pub mod metadata;
pub mod repo;

#[cfg(test)]
mod props;
