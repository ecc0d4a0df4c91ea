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
    Canonical {
        /// Where in the value, as `$.field.field[index]`.
        path: String,
        /// What cannot be encoded.
        reason: String,
    },

    /// Bytes are not valid JSON or do not have the expected shape.
    #[error(
        "cannot parse {what}: {source}; the file is corrupt or not TUF metadata, \
         re-download or re-publish it"
    )]
    Json {
        /// The file or object being parsed.
        what: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },

    /// JSON parsed but breaks a rule of the TUF 1.0 specification.
    #[error(
        "{role} metadata is invalid: {reason}; fix the producer so it writes TUF 1.0 \
         metadata, then re-sign and re-publish {role}"
    )]
    Invalid {
        /// The role whose metadata breaks the rule.
        role: String,
        /// The rule broken.
        reason: String,
    },

    /// The `_type` field names another role than the one being loaded.
    #[error(
        "expected {expected} metadata but the file says `_type: {found}`; the repository \
         serves the wrong file under this name, re-publish {expected}"
    )]
    WrongType {
        /// The role being loaded.
        expected: String,
        /// The `_type` the file has.
        found: String,
    },

    /// A key is malformed or of an unsupported type.
    #[error("key error: {reason}; {fix}")]
    Key {
        /// What is wrong with the key.
        reason: String,
        /// What to do about it.
        fix: String,
    },

    /// A file system operation failed.
    #[error("{action} `{}`: {source}; check the path exists and its permissions", path.display())]
    Io {
        /// What was being done ("read", "write", ...).
        action: String,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
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
        /// The role being verified.
        role: String,
        /// Its version.
        version: u64,
        /// Valid signatures from authorised keys.
        valid: u64,
        /// Valid signatures required.
        threshold: u64,
        /// Who delegates to `role` ("root" or the parent targets role).
        authority: String,
        /// Ids of signing keys that are not authorised for the role.
        unauthorised: Vec<String>,
        /// Ids of authorised keys whose signature did not verify.
        bad: Vec<String>,
    },

    /// Metadata is past its `expires` time.
    #[error("{role} expired at {expires}: {}", expiry_hint(role))]
    Expired {
        /// The expired role.
        role: String,
        /// Its `expires` time.
        expires: String,
    },

    /// A version number is not the one the workflow requires.
    #[error("{role}: {problem}; {fix}")]
    Version {
        /// The role.
        role: String,
        /// Which version was found against which was required.
        problem: String,
        /// What to do about it.
        fix: String,
    },

    /// The length of downloaded bytes differs from what the trusted metadata states.
    #[error(
        "{what}: length {actual} bytes but {authority} states {expected}; the download was \
         truncated or tampered with, fetch it again (if it persists the repository is \
         inconsistent: re-publish)"
    )]
    Length {
        /// The file checked.
        what: String,
        /// The metadata that states the length.
        authority: String,
        /// The stated length.
        expected: u64,
        /// The length received.
        actual: u64,
    },

    /// A hash of downloaded bytes differs from what the trusted metadata states.
    #[error(
        "{what}: {algorithm} is {actual} but {authority} states {expected}; the download was \
         corrupted or tampered with, fetch it again (if it persists the repository is \
         inconsistent: re-publish)"
    )]
    Hash {
        /// The file checked.
        what: String,
        /// The metadata that states the hash.
        authority: String,
        /// The hash algorithm.
        algorithm: String,
        /// The stated digest (hex).
        expected: String,
        /// The digest of the bytes received (hex).
        actual: String,
    },

    /// Trusted metadata names a hash algorithm this implementation cannot compute.
    #[error(
        "{what}: {authority} states a hash with algorithm `{algorithm}` which this client \
         cannot compute (supported: sha256, sha384, sha512); re-publish with sha256"
    )]
    UnsupportedHash {
        /// The file to check.
        what: String,
        /// The metadata that states the hash.
        authority: String,
        /// The algorithm named.
        algorithm: String,
    },

    /// A file is longer than the client workflow reads for it (when no trusted metadata
    /// states its length, the workflow's own bound applies).
    #[error(
        "{file} is {actual} bytes, more than the {max} this client reads for it; the \
         registry serves a wrong or hostile file under this name, re-publish it"
    )]
    TooLong {
        /// The file, by its name under `metadata/`.
        file: String,
        /// The most bytes read for it.
        max: u64,
        /// Its length.
        actual: u64,
    },

    /// A file the workflow needs is not listed by the metadata that should list it.
    #[error("{file} is not listed in {listed_in}; {fix}")]
    NotListed {
        /// The file needed.
        file: String,
        /// The metadata that should list it.
        listed_in: String,
        /// What to do about it.
        fix: String,
    },

    /// The client workflow was driven in the wrong order.
    #[error("client workflow misuse: {0}")]
    Order(String),

    /// The publisher does not hold enough private keys for a role.
    #[error(
        "cannot sign {role}: {available} of the {threshold} required private keys are \
         available (authorised key ids: [{}]); pass the missing signing keys",
        keyids.join(", ")
    )]
    MissingKeys {
        /// The role to sign.
        role: String,
        /// Authorised private keys given.
        available: u64,
        /// Signatures required.
        threshold: u64,
        /// Ids of the keys authorised for the role.
        keyids: Vec<String>,
    },

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
