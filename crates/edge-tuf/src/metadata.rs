//! Serde types for TUF 1.0 metadata (root, timestamp, snapshot, targets and
//! delegations) and the signed envelope around them.
//!
//! The same types are used to write (publisher) and to read (client). On the
//! read side signatures are always checked over the canonical form of the
//! `signed` JSON value exactly as received ([`Envelope::signed`]), never over
//! a re-serialisation of these structs, so fields this code does not know
//! cannot break verification of metadata written by other tools.

use super::canonical;
use super::error::Error;
use super::keys::{PrivateKey, PublicKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The specification version written into new metadata.
pub const SPEC_VERSION: &str = "1.0.31";

/// Unknown fields of a metadata object, kept so the publisher does not drop
/// what another tool wrote when it re-signs a role.
pub type Unrecognized = Map<String, Value>;

/// One signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The id of the key that made the signature.
    pub keyid: String,
    /// The Ed25519 signature over the canonical `signed` bytes, in hex.
    pub sig: String,
}

/// `{"signed": {...}, "signatures": [...]}` with the signed part kept as raw
/// JSON, which is what signatures cover.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The signed metadata, as received.
    pub signed: Value,
    /// The signatures over the canonical form of `signed`.
    pub signatures: Vec<Signature>,
}

impl Envelope {
    /// Parses envelope bytes; `what` names the file in errors.
    pub fn from_slice(bytes: &[u8], what: &str) -> Result<Self, Error> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json { what: what.to_string(), source })
    }

    /// The bytes signatures are computed over.
    pub fn canonical_signed(&self) -> Result<Vec<u8>, Error> {
        canonical::encode(&self.signed)
    }

    /// Deserialises and validates the signed part as role type `T`.
    pub fn parse<T: SignedMeta>(&self) -> Result<T, Error> {
        let found = self.signed.get("_type").and_then(Value::as_str).unwrap_or("<missing>");
        if found != T::TYPE {
            return Err(Error::WrongType { expected: T::TYPE.to_string(), found: found.to_string() });
        }
        let parsed: T = serde_json::from_value(self.signed.clone())
            .map_err(|source| Error::Json { what: format!("{} metadata", T::TYPE), source })?;
        parsed.validate()?;
        Ok(parsed)
    }

    /// Signs `signed` with each key in `keys` (one signature per distinct key).
    pub fn sign<T: Serialize>(signed: &T, keys: &[&PrivateKey]) -> Result<Self, Error> {
        let value = serde_json::to_value(signed)
            .map_err(|source| Error::Json { what: "metadata being signed".to_string(), source })?;
        let bytes = canonical::encode(&value)?;
        let mut signatures: Vec<Signature> = Vec::new();
        for key in keys {
            let keyid = key.key_id();
            if signatures.iter().any(|s| s.keyid == keyid) {
                continue;
            }
            signatures.push(Signature { keyid, sig: key.sign(&bytes) });
        }
        Ok(Envelope { signed: value, signatures })
    }

    /// Pretty JSON bytes for writing to disk (whitespace is irrelevant to
    /// signatures, and readable files help operators).
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = serde_json::to_vec_pretty(self)
            .map_err(|source| Error::Json { what: "metadata being written".to_string(), source })?;
        out.push(b'\n');
        Ok(out)
    }
}

/// Common behaviour of the four top-level role types.
pub trait SignedMeta: Serialize + DeserializeOwned {
    /// The `_type` value, e.g. `"root"`.
    const TYPE: &'static str;
    /// The `spec_version` field.
    fn spec_version(&self) -> &str;
    /// The role's version.
    fn version(&self) -> u64;
    /// The `expires` field (RFC 3339).
    fn expires(&self) -> &str;
    /// Role-specific rules beyond what serde checks.
    fn validate_specific(&self) -> Result<(), Error> {
        Ok(())
    }
    /// All rules: common fields, then role-specific ones.
    fn validate(&self) -> Result<(), Error> {
        validate_spec_version(Self::TYPE, self.spec_version())?;
        if self.version() < 1 {
            return Err(Error::invalid(Self::TYPE, "`version` must be at least 1"));
        }
        parse_expires(self.expires()).map_err(|e| match e {
            Error::Invalid { reason, .. } => Error::invalid(Self::TYPE, reason),
            other => other,
        })?;
        self.validate_specific()
    }
    /// `expires` as a time (valid after [`SignedMeta::validate`]).
    fn expires_at(&self) -> Result<SystemTime, Error> {
        parse_expires(self.expires())
    }
    /// Whether the metadata is expired at `now` (expired when
    /// `expires <= now`, as the specification puts it).
    fn is_expired(&self, now: SystemTime) -> Result<bool, Error> {
        Ok(self.expires_at()? <= now)
    }
}

fn validate_spec_version(role: &str, v: &str) -> Result<(), Error> {
    // "1.x" or "1.x.y" with numeric parts, as python-tuf accepts.
    let parts: Vec<&str> = v.split('.').collect();
    let numeric = parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if parts.first() != Some(&"1") || !numeric || !(2..=3).contains(&parts.len()) {
        return Err(Error::invalid(role, format!("spec_version `{v}` is not a supported 1.x version")));
    }
    Ok(())
}

/// Parses an `expires` value, which must have the exact form
/// `YYYY-MM-DDTHH:MM:SSZ` the specification uses.
pub fn parse_expires(s: &str) -> Result<SystemTime, Error> {
    // humantime alone would also accept fractions of seconds and other
    // RFC 3339 variants; the reference implementation does not, so metadata
    // accepted here would be refused by python-tuf clients.
    let b = s.as_bytes();
    let shape_ok = b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(Error::invalid(
            "metadata",
            format!("expires `{s}` is not of the form YYYY-MM-DDTHH:MM:SSZ"),
        ));
    }
    humantime::parse_rfc3339(s)
        .map_err(|e| Error::invalid("metadata", format!("expires `{s}` is not a valid date: {e}")))
}

/// Formats a time as an `expires` value (whole seconds, UTC, `Z`).
pub fn format_expires(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `{keyids, threshold}` of a role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// The ids of the keys authorised for the role.
    pub keyids: Vec<String>,
    /// How many of them must sign.
    pub threshold: u64,
    /// Fields this implementation does not know: kept, so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

fn validate_role_keys(role: &str, which: &str, keyids: &[String], threshold: u64) -> Result<(), Error> {
    if threshold < 1 {
        return Err(Error::invalid(role, format!("threshold of `{which}` must be at least 1")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for id in keyids {
        if !seen.insert(id) {
            return Err(Error::invalid(role, format!("key id {id} is listed twice for `{which}`")));
        }
    }
    Ok(())
}

/// Root metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// The `_type` field: the role this metadata is for.
    #[serde(rename = "_type")]
    pub type_: String,
    /// The version of the TUF specification the metadata follows (a 1.x version).
    pub spec_version: String,
    /// This root's version; each is signed by its predecessor's root keys.
    pub version: u64,
    /// When the metadata stops being trusted (RFC 3339, UTC).
    pub expires: String,
    /// python-tuf treats a missing field as `false`; so do we.
    #[serde(default)]
    pub consistent_snapshot: bool,
    /// Every key of the top-level roles, by key id.
    pub keys: BTreeMap<String, PublicKey>,
    /// The keys and threshold of each top-level role.
    pub roles: BTreeMap<String, RoleKeys>,
    /// Fields this implementation does not know: kept, so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// Names of the four top-level roles.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

impl Root {
    /// The `{keyids, threshold}` of a top-level role.
    pub fn role(&self, name: &str) -> Result<&RoleKeys, Error> {
        self.roles
            .get(name)
            .ok_or_else(|| Error::invalid("root", format!("`roles` has no entry for `{name}`")))
    }
}

/// A `meta` entry of timestamp or snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// The version of the metadata file described.
    pub version: u64,
    /// Its length in bytes, when stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes (algorithm to hex digest), when stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
    /// Fields this implementation does not know: kept, so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl MetaFile {
    /// A meta entry naming only a version, as python-tuf writes by default.
    pub fn version_only(version: u64) -> Self {
        MetaFile { version, length: None, hashes: None, unrecognized: Unrecognized::new() }
    }

    /// A meta entry with version, length and sha256 of `bytes`.
    pub fn describing(version: u64, bytes: &[u8]) -> Self {
        let mut hashes = BTreeMap::new();
        hashes.insert("sha256".to_string(), sha256_hex(bytes));
        MetaFile {
            version,
            length: Some(bytes.len() as u64),
            hashes: Some(hashes),
            unrecognized: Unrecognized::new(),
        }
    }
}

fn validate_meta(role: &str, name: &str, m: &MetaFile) -> Result<(), Error> {
    if m.version < 1 {
        return Err(Error::invalid(role, format!("meta `{name}` has version 0, versions start at 1")));
    }
    if m.hashes.as_ref().is_some_and(BTreeMap::is_empty) {
        return Err(Error::invalid(role, format!("meta `{name}` has an empty `hashes` object")));
    }
    Ok(())
}

/// Timestamp metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timestamp {
    /// The `_type` field: the role this metadata is for.
    #[serde(rename = "_type")]
    pub type_: String,
    /// The version of the TUF specification the metadata follows (a 1.x version).
    pub spec_version: String,
    /// This timestamp's version: it never goes back.
    pub version: u64,
    /// When the metadata stops being trusted (RFC 3339, UTC).
    pub expires: String,
    /// The one entry `snapshot.json`: the current snapshot's version.
    pub meta: BTreeMap<String, MetaFile>,
    /// Fields this implementation does not know: kept, so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl Timestamp {
    /// The `snapshot.json` entry (present after validation).
    pub fn snapshot_meta(&self) -> Result<&MetaFile, Error> {
        self.meta
            .get("snapshot.json")
            .ok_or_else(|| Error::invalid("timestamp", "`meta` has no `snapshot.json` entry"))
    }
}

/// Snapshot metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The `_type` field: the role this metadata is for.
    #[serde(rename = "_type")]
    pub type_: String,
    /// The version of the TUF specification the metadata follows (a 1.x version).
    pub spec_version: String,
    /// This snapshot's version: it never goes back.
    pub version: u64,
    /// When the metadata stops being trusted (RFC 3339, UTC).
    pub expires: String,
    /// Every targets role's file (`targets.json`, `{role}.json`) and its version.
    pub meta: BTreeMap<String, MetaFile>,
    /// Fields this implementation does not know: kept, so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// One target file entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetFile {
    /// The target file's length in bytes.
    pub length: u64,
    /// Its hashes (algorithm to hex digest).
    pub hashes: BTreeMap<String, String>,
    /// Application data about the target (for edge-agent: model, version, rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
    /// Fields this implementation does not know: kept, so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl TargetFile {
    /// Describes `bytes` with length and sha256.
    pub fn from_bytes(bytes: &[u8], custom: Option<Value>) -> Self {
        let mut hashes = BTreeMap::new();
        hashes.insert("sha256".to_string(), sha256_hex(bytes));
        TargetFile { length: bytes.len() as u64, hashes, custom, unrecognized: Unrecognized::new() }
    }

    /// The sha256 hex, if listed.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get("sha256").map(String::as_str)
    }
}

/// Targets metadata (top-level or delegated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// The `_type` field: the role this metadata is for.
    #[serde(rename = "_type")]
    pub type_: String,
    /// The version of the TUF specification the metadata follows (a 1.x version).
    pub spec_version: String,
    /// This role's version: it never goes back.
    pub version: u64,
    /// When the metadata stops being trusted (RFC 3339, UTC).
    pub expires: String,
    /// The target files this role lists, by name.
    pub targets: BTreeMap<String, TargetFile>,
    /// The roles this one delegates parts of the target name space to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Fields this implementation does not know: kept, so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// The `delegations` object of targets metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delegations {
    /// Every key of the delegated roles, by key id.
    pub keys: BTreeMap<String, PublicKey>,
    /// The delegated roles, in the order a search visits them.
    pub roles: Vec<DelegatedRole>,
    /// Fields this implementation does not know: kept, so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

/// One delegated role. Exactly one of `paths` and `path_hash_prefixes` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// The role's name (its file is `{version}.{name}.json`).
    pub name: String,
    /// The ids of the keys authorised for the role.
    pub keyids: Vec<String>,
    /// How many of them must sign.
    pub threshold: u64,
    /// Whether a search that reaches this role for a target stops here.
    pub terminating: bool,
    /// Target name patterns the role is trusted for (see [`path_matches`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Prefixes of the hex sha256 of target names the role is trusted for (hashed bins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Fields this implementation does not know: kept, so that re-signing preserves them.
    #[serde(flatten)]
    pub unrecognized: Unrecognized,
}

impl DelegatedRole {
    /// Whether this delegation covers `target` (the specification's
    /// `paths` / `path_hash_prefixes` rule).
    pub fn matches(&self, target: &str) -> bool {
        if let Some(prefixes) = &self.path_hash_prefixes {
            let digest = sha256_hex(target.as_bytes());
            return prefixes.iter().any(|p| digest.starts_with(p.as_str()));
        }
        if let Some(patterns) = &self.paths {
            return patterns.iter().any(|p| path_matches(p, target));
        }
        false
    }
}

/// Matches a target path against a delegation path pattern.
///
/// The pattern and the target must have the same number of `/`-separated
/// segments and each segment must match with shell-style wildcards (`*`,
/// `?`, `[seq]`, `[!seq]`), so `*` never crosses a `/`. This is how
/// python-tuf interprets the specification.
pub fn path_matches(pattern: &str, target: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = target.split('/').collect();
    p.len() == t.len()
        && p.iter().zip(t.iter()).all(|(ps, ts)| {
            let pc: Vec<char> = ps.chars().collect();
            let tc: Vec<char> = ts.chars().collect();
            glob_segment(&pc, &tc)
        })
}

fn glob_segment(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|skip| glob_segment(&p[1..], &t[skip..])),
        Some('?') => !t.is_empty() && glob_segment(&p[1..], &t[1..]),
        Some('[') => match (class_match(&p[1..], t.first().copied()), t.is_empty()) {
            (Some((true, used)), false) => glob_segment(&p[1 + used..], &t[1..]),
            (Some((false, _)), _) | (_, true) => false,
            // An unclosed `[` is a literal, as in fnmatch.
            (None, false) => t[0] == '[' && glob_segment(&p[1..], &t[1..]),
        },
        Some(c) => t.first() == Some(c) && glob_segment(&p[1..], &t[1..]),
    }
}

/// Evaluates a `[...]` class (pattern starting after `[`) against `c`.
/// Returns whether it matched and how many pattern chars the class used
/// (including the closing `]`), or `None` if the class is not closed.
fn class_match(p: &[char], c: Option<char>) -> Option<(bool, usize)> {
    let mut i = 0;
    let negate = matches!(p.first(), Some('!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            let hit = c.is_some() && (matched != negate);
            return Some((hit, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if let Some(ch) = c
                && p[i] <= ch
                && ch <= p[i + 2]
            {
                matched = true;
            }
            i += 3;
        } else {
            if c == Some(p[i]) {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Checks `bytes` against a length and hashes stated by trusted metadata.
/// `what` names the checked file, `authority` the metadata stating them.
pub fn verify_length_and_hashes(
    what: &str,
    authority: &str,
    bytes: &[u8],
    length: Option<u64>,
    hashes: Option<&BTreeMap<String, String>>,
) -> Result<(), Error> {
    if let Some(expected) = length
        && bytes.len() as u64 != expected
    {
        return Err(Error::Length {
            what: what.to_string(),
            authority: authority.to_string(),
            expected,
            actual: bytes.len() as u64,
        });
    }
    for (algorithm, expected) in hashes.into_iter().flatten() {
        let alg = match algorithm.as_str() {
            "sha256" => &ring::digest::SHA256,
            "sha384" => &ring::digest::SHA384,
            "sha512" => &ring::digest::SHA512,
            // A hash we cannot compute cannot vouch for the bytes; refusing
            // is what python-tuf does too.
            _ => {
                return Err(Error::UnsupportedHash {
                    what: what.to_string(),
                    authority: authority.to_string(),
                    algorithm: algorithm.clone(),
                });
            }
        };
        let actual = hex::encode(ring::digest::digest(alg, bytes));
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Error::Hash {
                what: what.to_string(),
                authority: authority.to_string(),
                algorithm: algorithm.clone(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(())
}

macro_rules! signed_meta_common {
    () => {
        fn spec_version(&self) -> &str {
            &self.spec_version
        }
        fn version(&self) -> u64 {
            self.version
        }
        fn expires(&self) -> &str {
            &self.expires
        }
    };
}

impl SignedMeta for Root {
    const TYPE: &'static str = "root";
    signed_meta_common!();
    fn validate_specific(&self) -> Result<(), Error> {
        for name in TOP_LEVEL_ROLES {
            let role = self.role(name)?;
            validate_role_keys("root", name, &role.keyids, role.threshold)?;
        }
        for (id, key) in &self.keys {
            // Unsupported key types are tolerated in the key list (another
            // tool may list them); they simply never verify a signature.
            if key.keytype == super::keys::ED25519 && key.scheme == super::keys::ED25519 {
                key.ed25519_bytes().map_err(|e| Error::invalid("root", format!("key {id}: {e}")))?;
            }
        }
        Ok(())
    }
}

impl SignedMeta for Timestamp {
    const TYPE: &'static str = "timestamp";
    signed_meta_common!();
    fn validate_specific(&self) -> Result<(), Error> {
        let m = self.snapshot_meta()?;
        validate_meta("timestamp", "snapshot.json", m)
    }
}

impl SignedMeta for Snapshot {
    const TYPE: &'static str = "snapshot";
    signed_meta_common!();
    fn validate_specific(&self) -> Result<(), Error> {
        for (name, m) in &self.meta {
            validate_meta("snapshot", name, m)?;
        }
        Ok(())
    }
}

impl SignedMeta for Targets {
    const TYPE: &'static str = "targets";
    signed_meta_common!();
    fn validate_specific(&self) -> Result<(), Error> {
        for (name, t) in &self.targets {
            if t.hashes.is_empty() {
                return Err(Error::invalid("targets", format!("target `{name}` lists no hashes")));
            }
        }
        if let Some(d) = &self.delegations {
            let mut names = std::collections::BTreeSet::new();
            for r in &d.roles {
                if !names.insert(r.name.as_str()) {
                    return Err(Error::invalid(
                        "targets",
                        format!("delegated role `{}` is listed twice", r.name),
                    ));
                }
                if TOP_LEVEL_ROLES.contains(&r.name.as_str()) {
                    return Err(Error::invalid(
                        "targets",
                        format!("a delegated role may not be named `{}`", r.name),
                    ));
                }
                validate_role_keys("targets", &r.name, &r.keyids, r.threshold)?;
                if r.paths.is_some() == r.path_hash_prefixes.is_some() {
                    return Err(Error::invalid(
                        "targets",
                        format!(
                            "delegated role `{}` must set exactly one of `paths` and \
                             `path_hash_prefixes`",
                            r.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn expires_format() {
        let t = parse_expires("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(format_expires(t), "2030-01-02T03:04:05Z");
        assert!(parse_expires("2030-01-02T03:04:05.5Z").is_err());
        assert!(parse_expires("2030-01-02T03:04:05+00:00").is_err());
        assert!(parse_expires("2030-01-02 03:04:05Z").is_err());
        assert!(parse_expires("2030-13-02T03:04:05Z").is_err());
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_900);
        assert_eq!(format_expires(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn spec_version_rules() {
        assert!(validate_spec_version("root", "1.0.31").is_ok());
        assert!(validate_spec_version("root", "1.1").is_ok());
        assert!(validate_spec_version("root", "2.0.0").is_err());
        assert!(validate_spec_version("root", "1.x").is_err());
        assert!(validate_spec_version("root", "1").is_err());
        assert!(validate_spec_version("root", "1.0.31.1").is_err());
    }

    #[test]
    fn targets_round_trip_keeps_unknown_fields() {
        let v = json!({
            "_type": "targets", "spec_version": "1.0.31", "version": 3,
            "expires": "2030-01-01T00:00:00Z", "x-vendor": {"a": 1},
            "targets": {"a/b.tar": {"length": 3, "hashes": {"sha256": "00"},
                "custom": {"model": "m"}, "extra": true}},
            "delegations": {"keys": {}, "roles": [{"name": "r", "keyids": [],
                "threshold": 1, "terminating": false, "paths": ["a/*"]}]}
        });
        let env = Envelope { signed: v.clone(), signatures: vec![] };
        let t: Targets = env.parse().unwrap();
        assert_eq!(t.version, 3);
        assert_eq!(t.targets["a/b.tar"].custom, Some(json!({"model": "m"})));
        assert_eq!(serde_json::to_value(&t).unwrap(), v);
    }

    #[test]
    fn wrong_type_and_invalid_refused() {
        let env = Envelope { signed: json!({"_type": "snapshot"}), signatures: vec![] };
        assert!(matches!(env.parse::<Targets>(), Err(Error::WrongType { .. })));
        let env = Envelope {
            signed: json!({"_type": "timestamp", "spec_version": "1.0.31", "version": 0,
                "expires": "2030-01-01T00:00:00Z", "meta": {"snapshot.json": {"version": 1}}}),
            signatures: vec![],
        };
        assert!(matches!(env.parse::<Timestamp>(), Err(Error::Invalid { .. })));
        let env = Envelope {
            signed: json!({"_type": "targets", "spec_version": "1.0.31", "version": 1,
                "expires": "2030-01-01T00:00:00Z", "targets": {},
                "delegations": {"keys": {}, "roles": [{"name": "r", "keyids": [],
                "threshold": 1, "terminating": false}]}}),
            signatures: vec![],
        };
        assert!(matches!(env.parse::<Targets>(), Err(Error::Invalid { .. })));
    }

    #[test]
    fn path_patterns() {
        assert!(path_matches("stable/*/*.tar", "stable/vibration/2.tar"));
        assert!(!path_matches("stable/*", "stable/vibration/2.tar"));
        assert!(path_matches("stable/*", "stable/x"));
        assert!(path_matches("a/?.tar", "a/1.tar"));
        assert!(!path_matches("a/?.tar", "a/12.tar"));
        assert!(path_matches("a/[0-9].tar", "a/7.tar"));
        assert!(!path_matches("a/[!0-9].tar", "a/7.tar"));
        assert!(path_matches("a/[!0-9].tar", "a/x.tar"));
        assert!(path_matches("exact/name", "exact/name"));
        assert!(!path_matches("exact/name", "exact/nam"));
        assert!(path_matches("*", "file"));
        assert!(path_matches("a/[x", "a/[x"));
    }

    #[test]
    fn hash_prefix_match() {
        let digest = sha256_hex(b"stable/vibration/2.tar");
        let r = DelegatedRole {
            name: "bin".into(),
            keyids: vec![],
            threshold: 1,
            terminating: false,
            paths: None,
            path_hash_prefixes: Some(vec![digest[..2].to_string()]),
            unrecognized: Unrecognized::new(),
        };
        assert!(r.matches("stable/vibration/2.tar"));
        let other = if &digest[..1] == "0" { "1" } else { "0" };
        let r2 = DelegatedRole { path_hash_prefixes: Some(vec![other.to_string()]), ..r };
        assert!(!r2.matches("stable/vibration/2.tar"));
    }

    #[test]
    fn length_and_hash_checks() {
        let mut h = BTreeMap::new();
        h.insert("sha256".to_string(), sha256_hex(b"abc"));
        assert!(verify_length_and_hashes("f", "a", b"abc", Some(3), Some(&h)).is_ok());
        assert!(matches!(
            verify_length_and_hashes("f", "a", b"abd", Some(3), Some(&h)),
            Err(Error::Hash { .. })
        ));
        assert!(matches!(
            verify_length_and_hashes("f", "a", b"abcd", Some(3), Some(&h)),
            Err(Error::Length { .. })
        ));
        h.insert("md5".to_string(), "00".to_string());
        assert!(matches!(
            verify_length_and_hashes("f", "a", b"abc", None, Some(&h)),
            Err(Error::UnsupportedHash { .. })
        ));
    }
}
