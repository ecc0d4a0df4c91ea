//! The one error type of the TUF core.
//!
//! Every message says what failed, where (role, file, version) and what an
//! operator can do about it, because these errors end up in device event logs
//! and CLI output read by people who did not write this code.

use std::path::PathBuf;

/// Everything that can go wrong while encoding, signing, verifying or
/// publishing TUF metadata.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value cannot be written as OLPC canonical JSON.
    #[error(
        "canonical JSON: {reason} at `{path}`; TUF metadata may only hold integers, strings, \
         booleans, null, arrays and objects, so write this value as an integer or a string"
    )]
    Canonical { path: String, reason: String },

    /// Bytes are not valid JSON or do not have the expected shape.
    #[error(
        "cannot parse {what}: {source}; the file is corrupt or not TUF metadata, \
         re-download or re-publish it"
    )]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// JSON parsed but breaks a rule of the TUF 1.0 specification.
    #[error(
        "{role} metadata is invalid: {reason}; fix the producer so it writes TUF 1.0 \
         metadata, then re-sign and re-publish {role}"
    )]
    Invalid { role: String, reason: String },

    /// The `_type` field names another role than the one being loaded.
    #[error(
        "expected {expected} metadata but the file says `_type: {found}`; the repository \
         serves the wrong file under this name, re-publish {expected}"
    )]
    WrongType { expected: String, found: String },

    /// A key is malformed or of an unsupported type.
    #[error("key error: {reason}; {fix}")]
    Key { reason: String, fix: String },

    /// A file system operation failed.
    #[error("{action} `{}`: {source}; check the path exists and its permissions", path.display())]
    Io {
        action: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Not enough authorised keys produced valid signatures.
    #[error(
        "{role} v{version}: {valid} valid signature(s) from keys authorised for {role}, \
         {threshold} required (signatures from unauthorised or unknown keys: [{}]; \
         authorised keys whose signature did not verify: [{}]); re-sign {role} with at \
         least {threshold} of the keys that the {authority} lists for it",
        unauthorised.join(", "),
        bad.join(", ")
    )]
    Threshold {
        role: String,
        version: u64,
        valid: u64,
        threshold: u64,
        /// Who delegates to `role` ("root" or the parent targets role).
        authority: String,
        unauthorised: Vec<String>,
        bad: Vec<String>,
    },

    /// Metadata is past its `expires` time.
    #[error("{role} expired at {expires}: {}", expiry_hint(role))]
    Expired { role: String, expires: String },

    /// A version number is not the one the workflow requires.
    #[error("{role}: {problem}; {fix}")]
    Version { role: String, problem: String, fix: String },

    /// The length of downloaded bytes differs from what the trusted metadata states.
    #[error(
        "{what}: length {actual} bytes but {authority} states {expected}; the download was \
         truncated or tampered with, fetch it again (if it persists the repository is \
         inconsistent: re-publish)"
    )]
    Length { what: String, authority: String, expected: u64, actual: u64 },

    /// A hash of downloaded bytes differs from what the trusted metadata states.
    #[error(
        "{what}: {algorithm} is {actual} but {authority} states {expected}; the download was \
         corrupted or tampered with, fetch it again (if it persists the repository is \
         inconsistent: re-publish)"
    )]
    Hash { what: String, authority: String, algorithm: String, expected: String, actual: String },

    /// Trusted metadata names a hash algorithm this implementation cannot compute.
    #[error(
        "{what}: {authority} states a hash with algorithm `{algorithm}` which this client \
         cannot compute (supported: sha256, sha384, sha512); re-publish with sha256"
    )]
    UnsupportedHash { what: String, authority: String, algorithm: String },

    /// A file is longer than the client workflow reads for it (when no trusted metadata
    /// states its length, the workflow's own bound applies).
    #[error(
        "{file} is {actual} bytes, more than the {max} this client reads for it; the \
         registry serves a wrong or hostile file under this name, re-publish it"
    )]
    TooLong { file: String, max: u64, actual: u64 },

    /// A file the workflow needs is not listed by the metadata that should list it.
    #[error("{file} is not listed in {listed_in}; {fix}")]
    NotListed { file: String, listed_in: String, fix: String },

    /// The client workflow was driven in the wrong order.
    #[error("client workflow misuse: {0}")]
    Order(String),

    /// The publisher does not hold enough private keys for a role.
    #[error(
        "cannot sign {role}: {available} of the {threshold} required private keys are \
         available (authorised key ids: [{}]); pass the missing signing keys",
        keyids.join(", ")
    )]
    MissingKeys { role: String, available: u64, threshold: u64, keyids: Vec<String> },

    /// A publisher operation was given unusable input.
    #[error("{0}")]
    Usage(String),
}

/// What an operator should do when `role` expired; shown in [`Error::Expired`].
fn expiry_hint(role: &str) -> String {
    match role {
        "timestamp" => "the registry is not being refreshed; re-sign the timestamp \
                        (edge-agent registry timestamp)"
            .to_string(),
        "snapshot" | "targets" => format!(
            "{role} was not re-published in time; publish again with a new expiry \
             (edge-agent registry publish or promote)"
        ),
        "root" => "the trusted root is out of date; sign a new root version with the offline \
                   root keys (edge-agent registry rotate-root) and publish it"
            .to_string(),
        other => format!(
            "the delegated role `{other}` was not re-signed in time; ask its key holders to \
             re-sign it, then commit the repository"
        ),
    }
}

impl Error {
    pub(crate) fn io(action: &str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action: action.to_string(), path: path.into(), source }
    }

    pub(crate) fn invalid(role: &str, reason: impl Into<String>) -> Self {
        Error::Invalid { role: role.to_string(), reason: reason.into() }
    }
}
