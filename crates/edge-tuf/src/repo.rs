//! The publisher side: a TUF repository with consistent snapshots on disk.
//!
//! Layout (what python-tuf's ngclient fetches):
//!
//! ```text
//! metadata/{N}.root.json        every root version, kept forever
//! metadata/root.json            copy of the newest root (convenience)
//! metadata/timestamp.json       the only unversioned file clients poll
//! metadata/{N}.snapshot.json
//! metadata/{N}.targets.json     (and {N}.{role}.json for delegated roles)
//! targets/{dirname}/{sha256}.{basename}   target `{dirname}/{basename}`
//! ```
//!
//! Every file is written atomically (temporary file in the same directory,
//! fsync, rename), and a publication writes targets, then snapshot, then
//! timestamp last, so a client polling during a commit never sees a
//! timestamp that names files not yet on disk.

use super::canonical;
use super::client::{Lookup, TrustedSet, encode_role_name};
use super::error::Error;
use super::keys::{PrivateKey, PublicKey};
use super::metadata::{
    Envelope, MetaFile, RoleKeys, Root, SPEC_VERSION, SignedMeta, Snapshot, TargetFile, Targets, Timestamp,
    format_expires, verify_length_and_hashes,
};
use super::workflow::{File, Limits, LocalCopies, Next, Request, Workflow};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Public keys and thresholds of the four top-level roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootKeys {
    /// The root role's public keys.
    pub root: Vec<PublicKey>,
    /// How many root keys must sign.
    pub root_threshold: u64,
    /// The targets role's public keys.
    pub targets: Vec<PublicKey>,
    /// How many targets keys must sign.
    pub targets_threshold: u64,
    /// The snapshot role's public keys.
    pub snapshot: Vec<PublicKey>,
    /// How many snapshot keys must sign.
    pub snapshot_threshold: u64,
    /// The timestamp role's public keys.
    pub timestamp: Vec<PublicKey>,
    /// How many timestamp keys must sign.
    pub timestamp_threshold: u64,
}

/// How long newly signed metadata of each role stays valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiries {
    /// Validity of a new root.
    pub root: Duration,
    /// Validity of new targets metadata.
    pub targets: Duration,
    /// Validity of a new snapshot.
    pub snapshot: Duration,
    /// Validity of a new timestamp.
    pub timestamp: Duration,
}

impl Default for Expiries {
    /// One year for root (offline keys), three months for targets and
    /// snapshot, one day for timestamp (re-signed by a cron job).
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Expiries {
            root: Duration::from_secs(365 * DAY),
            targets: Duration::from_secs(90 * DAY),
            snapshot: Duration::from_secs(90 * DAY),
            timestamp: Duration::from_secs(DAY),
        }
    }
}

/// Current versions of the top-level roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    /// The root version.
    pub root: u64,
    /// The timestamp version.
    pub timestamp: u64,
    /// The snapshot version.
    pub snapshot: u64,
    /// The top-level targets version.
    pub targets: u64,
}

/// A repository opened for publishing.
#[derive(Debug)]
pub struct Repository {
    dir: PathBuf,
    root: Root,
    targets: Targets,
    snapshot: Snapshot,
    timestamp: Timestamp,
    /// Target changes not yet committed.
    dirty: bool,
    /// Whether snapshot lists length and sha256 of targets.json, not only
    /// its version. python-tuf omits them by default; the version alone is
    /// enough because signatures already pin the content.
    pub snapshot_lists_hashes: bool,
}

impl Repository {
    /// Creates a new repository in `dir` with version 1 of every role.
    pub fn init(
        dir: &Path,
        keys: RootKeys,
        signers: &[PrivateKey],
        expiries: &Expiries,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let meta_dir = dir.join("metadata");
        if meta_dir.join("1.root.json").exists() {
            return Err(Error::Usage(format!(
                "`{}` already holds a repository (metadata/1.root.json exists); open it \
                 instead, or choose an empty directory",
                dir.display()
            )));
        }
        let root = build_root(1, &keys, expiries.root, now)?;
        let targets = Targets {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: format_expires(now + expiries.targets),
            targets: BTreeMap::new(),
            delegations: None,
            unrecognized: Default::default(),
        };
        // Resolve every role's keys before writing anything, so a missing
        // key leaves no half-initialised repository behind.
        let root_signers = signers_for(&root, "root", signers)?;
        let targets_signers = signers_for(&root, "targets", signers)?;
        let snapshot_signers = signers_for(&root, "snapshot", signers)?;
        let timestamp_signers = signers_for(&root, "timestamp", signers)?;

        create_dir(&meta_dir)?;
        create_dir(&dir.join("targets"))?;
        let root_bytes = Envelope::sign(&root, &root_signers)?.to_bytes()?;
        write_atomic(&meta_dir.join("1.root.json"), &root_bytes)?;
        write_atomic(&meta_dir.join("root.json"), &root_bytes)?;

        let mut repo = Repository {
            dir: dir.to_path_buf(),
            root,
            targets,
            snapshot: Snapshot {
                type_: "snapshot".into(),
                spec_version: SPEC_VERSION.into(),
                version: 0,
                expires: String::new(),
                meta: BTreeMap::new(),
                unrecognized: Default::default(),
            },
            timestamp: Timestamp {
                type_: "timestamp".into(),
                spec_version: SPEC_VERSION.into(),
                version: 0,
                expires: String::new(),
                meta: BTreeMap::new(),
                unrecognized: Default::default(),
            },
            dirty: false,
            snapshot_lists_hashes: false,
        };
        repo.write_targets(&targets_signers)?;
        repo.write_snapshot(&snapshot_signers, now + expiries.snapshot)?;
        repo.write_timestamp(&timestamp_signers, now + expiries.timestamp)?;
        Ok(repo)
    }

    /// Opens the newest versions of a repository written by [`Repository::init`]
    /// (or any TUF tool using the same layout). Signatures are not checked
    /// here; use [`verify`] for that.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let meta_dir = dir.join("metadata");
        let root_version = newest_root_version(&meta_dir)?;
        let root: Root = read_meta(&meta_dir.join(format!("{root_version}.root.json")))?;
        let timestamp: Timestamp = read_meta(&meta_dir.join("timestamp.json"))?;
        let snap_v = timestamp.snapshot_meta()?.version;
        let snapshot: Snapshot = read_meta(&meta_dir.join(versioned(&root, "snapshot", snap_v)))?;
        let targets_v = snapshot
            .meta
            .get("targets.json")
            .ok_or_else(|| Error::NotListed {
                file: "targets.json".into(),
                listed_in: format!("snapshot v{}", snapshot.version),
                fix: "the repository is damaged; restore metadata/ from a backup".into(),
            })?
            .version;
        let targets: Targets = read_meta(&meta_dir.join(versioned(&root, "targets", targets_v)))?;
        Ok(Repository {
            dir: dir.to_path_buf(),
            root,
            targets,
            snapshot,
            timestamp,
            dirty: false,
            snapshot_lists_hashes: false,
        })
    }

    /// The repository directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Versions of the top-level roles as last written.
    pub fn versions(&self) -> Versions {
        Versions {
            root: self.root.version,
            timestamp: self.timestamp.version,
            snapshot: self.snapshot.version,
            targets: self.targets.version,
        }
    }

    /// The targets (including uncommitted changes).
    pub fn targets_list(&self) -> Vec<(String, TargetFile)> {
        self.targets.targets.iter().map(|(n, t)| (n.clone(), t.clone())).collect()
    }

    /// Stores `bytes` as target `name` and lists it (on the next commit)
    /// with `custom` (`null` for none). Replaces an existing entry.
    pub fn add_target(&mut self, name: &str, bytes: &[u8], custom: Value) -> Result<(), Error> {
        check_target_name(name)?;
        let custom = check_custom(name, custom)?;
        let entry = TargetFile::from_bytes(bytes, custom);
        let sha = entry.sha256().unwrap_or_default().to_string();
        let path = self.dir.join("targets").join(target_file_path(name, &sha));
        // Content-addressed: an existing file with this name has this
        // content already (a different content would have a different name).
        if !path.exists() {
            if let Some(parent) = path.parent() {
                create_dir(parent)?;
            }
            write_atomic(&path, bytes)?;
        }
        self.targets.targets.insert(name.to_string(), entry);
        self.dirty = true;
        Ok(())
    }

    /// Unlists target `name` on the next commit. The stored file stays:
    /// clients of older snapshots may still be downloading it.
    pub fn remove_target(&mut self, name: &str) -> Result<(), Error> {
        if self.targets.targets.remove(name).is_none() {
            return Err(not_a_target(name));
        }
        self.dirty = true;
        Ok(())
    }

    /// Replaces the `custom` object of target `name` (`null` removes it).
    pub fn set_custom(&mut self, name: &str, custom: Value) -> Result<(), Error> {
        let custom = check_custom(name, custom)?;
        let entry = self.targets.targets.get_mut(name).ok_or_else(|| not_a_target(name))?;
        entry.custom = custom;
        self.dirty = true;
        Ok(())
    }

    /// Publishes: new targets, snapshot and timestamp versions.
    pub fn commit(
        &mut self,
        signers: &[PrivateKey],
        now: SystemTime,
        expiries: &Expiries,
    ) -> Result<Versions, Error> {
        let targets_signers = signers_for(&self.root, "targets", signers)?;
        let snapshot_signers = signers_for(&self.root, "snapshot", signers)?;
        let timestamp_signers = signers_for(&self.root, "timestamp", signers)?;
        self.targets.version += 1;
        self.targets.expires = format_expires(now + expiries.targets);
        self.targets.spec_version = SPEC_VERSION.into();
        self.write_targets(&targets_signers)?;
        self.write_snapshot(&snapshot_signers, now + expiries.snapshot)?;
        self.write_timestamp(&timestamp_signers, now + expiries.timestamp)?;
        self.dirty = false;
        Ok(self.versions())
    }

    /// Re-signs only the timestamp with a new version (the online-key job
    /// that keeps clients from seeing a frozen repository).
    pub fn refresh_timestamp(
        &mut self,
        signers: &[PrivateKey],
        now: SystemTime,
        expiry: Duration,
    ) -> Result<Versions, Error> {
        let ts_signers = signers_for(&self.root, "timestamp", signers)?;
        self.write_timestamp(&ts_signers, now + expiry)?;
        Ok(self.versions())
    }

    /// Writes root version N+1 with `keys`, signed by a threshold of the
    /// current root keys and of the new ones. Roles whose keys changed are
    /// re-signed with a version bump (targets → snapshot → timestamp) so
    /// clients that follow the new root can continue at once.
    pub fn rotate_root(
        &mut self,
        keys: RootKeys,
        signers: &[PrivateKey],
        now: SystemTime,
        expiry: Duration,
    ) -> Result<Versions, Error> {
        if self.dirty {
            return Err(Error::Usage(
                "there are uncommitted target changes; commit them before rotating root so \
                 the rotation does not publish them by accident"
                    .into(),
            ));
        }
        let new_root = build_root(self.root.version + 1, &keys, expiry, now)?;
        let old_signers = signers_for(&self.root, "root", signers)?;
        let new_signers = signers_for(&new_root, "root", signers)?;
        let changed = |role: &str| role_keys(&self.root, role) != role_keys(&new_root, role);
        let targets_changed = changed("targets");
        let snapshot_changed = targets_changed || changed("snapshot");
        let timestamp_changed = snapshot_changed || changed("timestamp");
        // The re-signed roles must verify under the new root, so resolve
        // their signers against it, all before anything is written.
        let targets_signers =
            if targets_changed { signers_for(&new_root, "targets", signers)? } else { Vec::new() };
        let snapshot_signers =
            if snapshot_changed { signers_for(&new_root, "snapshot", signers)? } else { Vec::new() };
        let timestamp_signers =
            if timestamp_changed { signers_for(&new_root, "timestamp", signers)? } else { Vec::new() };

        let mut all: Vec<&PrivateKey> = old_signers;
        for k in new_signers {
            if !all.iter().any(|a| a.key_id() == k.key_id()) {
                all.push(k);
            }
        }
        let bytes = Envelope::sign(&new_root, &all)?.to_bytes()?;
        let meta_dir = self.dir.join("metadata");
        write_atomic(&meta_dir.join(format!("{}.root.json", new_root.version)), &bytes)?;
        write_atomic(&meta_dir.join("root.json"), &bytes)?;
        self.root = new_root;

        // Re-signed roles keep their current expiry: a rotation is not a
        // publication and should not silently extend validity.
        if targets_changed {
            self.targets.version += 1;
            self.write_targets(&targets_signers)?;
        }
        if snapshot_changed {
            let expires = self.snapshot.expires_at()?;
            self.write_snapshot(&snapshot_signers, expires)?;
        }
        if timestamp_changed {
            let expires = self.timestamp.expires_at()?;
            self.write_timestamp(&timestamp_signers, expires)?;
        }
        Ok(self.versions())
    }

    fn write_targets(&mut self, signers: &[&PrivateKey]) -> Result<(), Error> {
        let bytes = Envelope::sign(&self.targets, signers)?.to_bytes()?;
        let name = versioned(&self.root, "targets", self.targets.version);
        write_atomic(&self.dir.join("metadata").join(name), &bytes)?;
        let meta = if self.snapshot_lists_hashes {
            MetaFile::describing(self.targets.version, &bytes)
        } else {
            MetaFile::version_only(self.targets.version)
        };
        // Other entries (delegated roles another tool published) are kept.
        self.snapshot.meta.insert("targets.json".into(), meta);
        Ok(())
    }

    fn write_snapshot(&mut self, signers: &[&PrivateKey], expires: SystemTime) -> Result<(), Error> {
        self.snapshot.version += 1;
        self.snapshot.expires = format_expires(expires);
        self.snapshot.spec_version = SPEC_VERSION.into();
        let bytes = Envelope::sign(&self.snapshot, signers)?.to_bytes()?;
        let name = versioned(&self.root, "snapshot", self.snapshot.version);
        write_atomic(&self.dir.join("metadata").join(name), &bytes)?;
        self.timestamp
            .meta
            .insert("snapshot.json".into(), MetaFile::describing(self.snapshot.version, &bytes));
        Ok(())
    }

    fn write_timestamp(&mut self, signers: &[&PrivateKey], expires: SystemTime) -> Result<(), Error> {
        self.timestamp.version += 1;
        self.timestamp.expires = format_expires(expires);
        self.timestamp.spec_version = SPEC_VERSION.into();
        let bytes = Envelope::sign(&self.timestamp, signers)?.to_bytes()?;
        write_atomic(&self.dir.join("metadata").join("timestamp.json"), &bytes)
    }
}

/// The stored file name of target `name` with consistent snapshots:
/// `{dirname}/{sha256}.{basename}`, as python-tuf's ngclient requests it.
pub fn target_file_path(name: &str, sha256: &str) -> String {
    match name.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/{sha256}.{base}"),
        None => format!("{sha256}.{name}"),
    }
}

/// Status of one role in a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleStatus {
    /// The role's name.
    pub role: String,
    /// The version that verified.
    pub version: u64,
    /// When it expires.
    pub expires: String,
}

fn push_role(roles: &mut Vec<RoleStatus>, role: &str, version: u64, expires: &str) {
    roles.push(RoleStatus { role: role.to_string(), version, expires: expires.to_string() });
}

/// Result of [`verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Roles that verified, in workflow order.
    pub roles: Vec<RoleStatus>,
    /// Targets that resolve through the delegation graph.
    pub target_count: usize,
    /// Everything wrong, each with what to do about it.
    pub problems: Vec<String>,
}

impl Report {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the client workflow ([`Workflow`]) over the repository files in `dir` as a device
/// trusting `trusted_root` would at time `now` (root chain, timestamp, snapshot, targets,
/// all delegated roles, within the same [`Limits`]), then checks every target file's
/// length and hashes. Failures are collected as problems; `Err` only when the trusted
/// root itself cannot be used.
pub fn verify(dir: &Path, trusted_root: &[u8], now: SystemTime) -> Result<Report, Error> {
    let meta_dir = dir.join("metadata");
    let mut workflow = Workflow::new(trusted_root, LocalCopies::default(), now, Limits::default())?;
    let mut report = Report::default();
    verify_metadata(&meta_dir, &mut workflow, &mut report);
    let set = workflow.trusted();
    for (_, role, t) in set.loaded_roles() {
        if role != "targets" {
            report.roles.push(RoleStatus {
                role: role.to_string(),
                version: t.version,
                expires: t.expires.clone(),
            });
        }
    }
    verify_target_files(&dir.join("targets"), set, &mut report);
    Ok(report)
}

/// Feeds the workflow the files of `meta_dir`, noting what is wrong as it goes: a refused
/// root version ends the chain, a refused delegated role is left out, anything else ends
/// the check.
fn verify_metadata(meta_dir: &Path, workflow: &mut Workflow, report: &mut Report) {
    let mut root_checked = false;
    loop {
        let next = workflow.next_step();
        let in_root_chain = matches!(&next, Ok(Next::Fetch(Request { file: File::Root { .. }, .. })));
        if !in_root_chain && !root_checked {
            root_checked = true;
            check_root(meta_dir, workflow.trusted().root(), report);
        }
        let request = match next {
            Ok(Next::Fetch(request)) => request,
            Ok(Next::Refused { role, parent, error }) => {
                report.problems.push(format!("delegated role {role} (delegated by {parent}): {error}"));
                continue;
            }
            Ok(Next::Done) => break,
            Err(e) => {
                report.problems.push(e.to_string());
                break;
            }
        };
        let path = meta_dir.join(&request.name);
        if matches!(request.file, File::Root { .. }) && !path.exists() {
            // The end of the root chain.
            workflow.not_found();
            continue;
        }
        let result = match read(&path) {
            Ok(bytes) => workflow.feed(&bytes),
            Err(e) => {
                workflow.not_found();
                Err(e)
            }
        };
        let set = workflow.trusted();
        match (&request.file, result) {
            (File::Timestamp, Ok(())) => {
                if let Some(t) = set.timestamp() {
                    push_role(&mut report.roles, "timestamp", t.version, &t.expires);
                }
            }
            (File::Snapshot, Ok(())) => {
                if let Some(s) = set.snapshot() {
                    push_role(&mut report.roles, "snapshot", s.version, &s.expires);
                }
            }
            (File::Targets, Ok(())) => {
                if let Some(t) = set.targets() {
                    push_role(&mut report.roles, "targets", t.version, &t.expires);
                }
            }
            (File::Root { .. } | File::Delegated { .. }, Ok(())) => {}
            (File::Delegated { role, parent }, Err(e)) => {
                report.problems.push(format!("delegated role {role} (delegated by {parent}): {e}"));
            }
            (_, Err(e)) => {
                report.problems.push(format!("{}: {e}", request.name));
                if !matches!(request.file, File::Root { .. }) {
                    break;
                }
            }
        }
    }
    // Where a bound stopped the check short, devices stop there too.
    report.problems.extend(workflow.notes().iter().map(|n| format!("{n}; devices stop there too")));
}

/// The newest root, once the chain is followed: listed in the report, and
/// `metadata/root.json` must be a copy of it.
fn check_root(meta_dir: &Path, root: &Root, report: &mut Report) {
    push_role(&mut report.roles, "root", root.version, &root.expires);
    match (read(&meta_dir.join(format!("{}.root.json", root.version))), read(&meta_dir.join("root.json"))) {
        (Ok(a), Ok(b)) if a == b => {}
        (Ok(_), Ok(_)) => report.problems.push(format!(
            "metadata/root.json is not a copy of the newest root {}.root.json; copy it over",
            root.version
        )),
        (_, Err(e)) | (Err(e), _) => report.problems.push(e.to_string()),
    }
}

fn verify_target_files(targets_dir: &Path, set: &TrustedSet, report: &mut Report) {
    let resolved = set.targets_matching("");
    report.target_count = resolved.len();
    for (name, t) in &resolved {
        if let Err(e) = check_target_name(name) {
            report.problems.push(e.to_string());
            continue;
        }
        // ngclient names the file after the first listed hash; with the
        // hashes kept sorted, prefer sha256 as writers put it first.
        let Some(digest) = t.sha256().or_else(|| t.hashes.values().next().map(String::as_str)) else {
            report.problems.push(format!("target {name} lists no hash"));
            continue;
        };
        let rel = target_file_path(name, digest);
        let path = targets_dir.join(&rel);
        let result = read(&path).and_then(|bytes| {
            verify_length_and_hashes(
                &format!("target file targets/{rel}"),
                &format!("the entry for {name}"),
                &bytes,
                Some(t.length),
                Some(&t.hashes),
            )
        });
        if let Err(e) = result {
            report.problems.push(format!("target {name}: {e}"));
        }
    }
    // Entries clients will never use because no delegation covers them.
    for (_, role, meta) in set.loaded_roles() {
        for name in meta.targets.keys() {
            if set.lookup(name) == Lookup::NotFound {
                report.problems.push(format!(
                    "role {role} lists {name}, but no delegation trusts {role} for that path, \
                     so clients ignore it; move it to a role delegated for it"
                ));
            }
        }
    }
}

fn build_root(version: u64, keys: &RootKeys, expiry: Duration, now: SystemTime) -> Result<Root, Error> {
    let mut all = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for (name, list, threshold) in [
        ("root", &keys.root, keys.root_threshold),
        ("targets", &keys.targets, keys.targets_threshold),
        ("snapshot", &keys.snapshot, keys.snapshot_threshold),
        ("timestamp", &keys.timestamp, keys.timestamp_threshold),
    ] {
        let mut ids: Vec<String> = Vec::new();
        for k in list {
            k.ed25519_bytes()?;
            let id = k.key_id();
            if !ids.contains(&id) {
                ids.push(id.clone());
            }
            all.insert(id, k.clone());
        }
        if threshold < 1 || threshold > ids.len() as u64 {
            return Err(Error::Usage(format!(
                "the {name} role has {} distinct key(s) and threshold {threshold}; the \
                 threshold must be between 1 and the number of keys",
                ids.len()
            )));
        }
        roles.insert(name.to_string(), RoleKeys { keyids: ids, threshold, unrecognized: Default::default() });
    }
    Ok(Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: format_expires(now + expiry),
        consistent_snapshot: true,
        keys: all,
        roles,
        unrecognized: Default::default(),
    })
}

fn role_keys(root: &Root, role: &str) -> Option<(BTreeSet<String>, u64)> {
    root.roles.get(role).map(|r| (r.keyids.iter().cloned().collect(), r.threshold))
}

/// The private keys in `signers` authorised for `role` by `root` (whose
/// key entries must match them), or an error naming what is missing.
fn signers_for<'a>(root: &Root, role: &str, signers: &'a [PrivateKey]) -> Result<Vec<&'a PrivateKey>, Error> {
    let r = root.role(role)?;
    let mut chosen: Vec<&PrivateKey> = Vec::new();
    for s in signers {
        let id = s.key_id();
        let authorised = r.keyids.contains(&id) && root.keys.get(&id) == Some(&s.public());
        if authorised && !chosen.iter().any(|c| c.key_id() == id) {
            chosen.push(s);
        }
    }
    if (chosen.len() as u64) < r.threshold {
        return Err(Error::MissingKeys {
            role: format!("{role} v{}", root.version),
            available: chosen.len() as u64,
            threshold: r.threshold,
            keyids: r.keyids.clone(),
        });
    }
    Ok(chosen)
}

fn versioned(root: &Root, role: &str, version: u64) -> String {
    let encoded = encode_role_name(role);
    if root.consistent_snapshot { format!("{version}.{encoded}.json") } else { format!("{encoded}.json") }
}

fn newest_root_version(meta_dir: &Path) -> Result<u64, Error> {
    let entries = fs::read_dir(meta_dir).map_err(|e| Error::io("list", meta_dir, e))?;
    let mut newest = None;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", meta_dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(v) = name.strip_suffix(".root.json").and_then(|n| n.parse::<u64>().ok()) {
            newest = newest.max(Some(v));
        }
    }
    newest.ok_or_else(|| {
        Error::Usage(format!(
            "`{}` holds no N.root.json; it is not a repository (create one with init)",
            meta_dir.display()
        ))
    })
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| Error::io("read", path, e))
}

fn read_meta<T: SignedMeta>(path: &Path) -> Result<T, Error> {
    let bytes = read(path)?;
    Envelope::from_slice(&bytes, &path.display().to_string())?.parse()
}

fn create_dir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|e| Error::io("create directory", path, e))
}

fn not_a_target(name: &str) -> Error {
    Error::Usage(format!("`{name}` is not a target of this repository; list them with targets_list"))
}

fn check_custom(name: &str, custom: Value) -> Result<Option<Value>, Error> {
    if custom.is_null() {
        return Ok(None);
    }
    // Fail now, naming the target, rather than at commit time.
    canonical::encode(&custom)
        .map_err(|e| Error::Usage(format!("custom metadata of target `{name}` cannot be signed: {e}")))?;
    Ok(Some(custom))
}

/// Target names become paths under `targets/`, so anything that could
/// escape that directory or be ambiguous is refused.
fn check_target_name(name: &str) -> Result<(), Error> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.chars().any(char::is_control)
        || name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        return Err(Error::Usage(format!(
            "target name `{}` is not a safe relative path; use segments separated by `/` \
             without `.`, `..`, empty segments or backslashes (e.g. stable/vibration/2.tar)",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically ([`edge_spool::durable::replace`]): a reader sees
/// the old or the new file, never a partial one, even across a power cut.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    edge_spool::durable::replace(path, bytes).map_err(|e| Error::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::super::metadata::sha256_hex;
    use super::*;
    use serde_json::json;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    struct Keys {
        root: Vec<PrivateKey>,
        targets: Vec<PrivateKey>,
        snapshot: PrivateKey,
        timestamp: PrivateKey,
    }

    fn keys() -> Keys {
        let g = || PrivateKey::generate().unwrap();
        Keys { root: vec![g(), g(), g()], targets: vec![g(), g()], snapshot: g(), timestamp: g() }
    }

    fn root_keys(k: &Keys) -> RootKeys {
        RootKeys {
            root: k.root.iter().map(PrivateKey::public).collect(),
            root_threshold: 2,
            targets: k.targets.iter().map(PrivateKey::public).collect(),
            targets_threshold: 2,
            snapshot: vec![k.snapshot.public()],
            snapshot_threshold: 1,
            timestamp: vec![k.timestamp.public()],
            timestamp_threshold: 1,
        }
    }

    fn all_signers(k: Keys) -> Vec<PrivateKey> {
        let mut v = k.root;
        v.extend(k.targets);
        v.push(k.snapshot);
        v.push(k.timestamp);
        v
    }

    #[test]
    fn init_commit_verify() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys();
        let rk = root_keys(&k);
        let signers = all_signers(k);
        let ex = Expiries::default();
        let mut repo = Repository::init(dir.path(), rk, &signers, &ex, now()).unwrap();
        assert_eq!(repo.versions(), Versions { root: 1, timestamp: 1, snapshot: 1, targets: 1 });
        let custom = json!({"model": "vibration", "version": "2",
            "rollout": {"percent": 20, "salt": "s1"}});
        repo.add_target("stable/vibration/2.tar", b"model two", custom.clone()).unwrap();
        repo.add_target("top.bin", b"top", Value::Null).unwrap();
        let v = repo.commit(&signers, now(), &ex).unwrap();
        assert_eq!(v, Versions { root: 1, timestamp: 2, snapshot: 2, targets: 2 });
        let sha = sha256_hex(b"model two");
        assert!(dir.path().join(format!("targets/stable/vibration/{sha}.2.tar")).exists());
        assert!(dir.path().join(format!("targets/{}.top.bin", sha256_hex(b"top"))).exists());

        let root1 = fs::read(dir.path().join("metadata/1.root.json")).unwrap();
        let report = verify(dir.path(), &root1, now()).unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.target_count, 2);

        let reopened = Repository::open(dir.path()).unwrap();
        assert_eq!(reopened.versions(), v);
        let list = reopened.targets_list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].1.custom, Some(custom));
    }

    #[test]
    fn missing_keys_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys();
        let rk = root_keys(&k);
        // Only one of the two targets keys.
        let mut signers = all_signers(k);
        signers.remove(3);
        let err = Repository::init(dir.path(), rk, &signers, &Expiries::default(), now()).unwrap_err();
        assert!(
            matches!(&err, Error::MissingKeys { role, available: 1, threshold: 2, .. } if role == "targets v1"),
            "{err}"
        );
        assert!(!dir.path().join("metadata").exists());
    }

    #[test]
    fn rejects_bad_names_and_float_custom() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys();
        let rk = root_keys(&k);
        let signers = all_signers(k);
        let mut repo = Repository::init(dir.path(), rk, &signers, &Expiries::default(), now()).unwrap();
        for name in ["../x", "/abs", "a//b", "a/./b", "", "a\\b"] {
            assert!(repo.add_target(name, b"x", Value::Null).is_err(), "{name}");
        }
        let err = repo.add_target("a/b", b"x", json!({"rollout": {"percent": 0.5}})).unwrap_err();
        assert!(err.to_string().contains("custom metadata of target `a/b`"), "{err}");
        assert!(repo.remove_target("nope").is_err());
        assert!(repo.set_custom("nope", Value::Null).is_err());
    }

    #[test]
    fn rotate_root_and_refresh_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys();
        let rk = root_keys(&k);
        let mut signers = all_signers(k);
        let ex = Expiries::default();
        let mut repo = Repository::init(dir.path(), rk.clone(), &signers, &ex, now()).unwrap();
        repo.add_target("a/1.bin", b"1", Value::Null).unwrap();
        repo.commit(&signers, now(), &ex).unwrap();
        let root1 = fs::read(dir.path().join("metadata/1.root.json")).unwrap();

        // New root keys and a new timestamp key.
        let new_root: Vec<PrivateKey> = (0..2).map(|_| PrivateKey::generate().unwrap()).collect();
        let new_ts = PrivateKey::generate().unwrap();
        let mut rk2 = rk.clone();
        rk2.root = new_root.iter().map(PrivateKey::public).collect();
        rk2.root_threshold = 2;
        rk2.timestamp = vec![new_ts.public()];

        // New keys alone cannot rotate.
        let only_new: Vec<PrivateKey> = new_root
            .iter()
            .map(|k| PrivateKey::from_pem(&k.to_pem()).unwrap())
            .chain([PrivateKey::from_pem(&new_ts.to_pem()).unwrap()])
            .collect();
        let err = repo.rotate_root(rk2.clone(), &only_new, now(), ex.root).unwrap_err();
        assert!(matches!(&err, Error::MissingKeys { role, .. } if role == "root v1"), "{err}");

        signers.extend(new_root);
        signers.push(new_ts);
        let v = repo.rotate_root(rk2, &signers, now(), ex.root).unwrap();
        assert_eq!(v, Versions { root: 2, timestamp: 3, snapshot: 2, targets: 2 });
        let report = verify(dir.path(), &root1, now()).unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(
            report.roles[0],
            RoleStatus { role: "root".into(), version: 2, expires: format_expires(now() + ex.root) }
        );

        let v = repo.refresh_timestamp(&signers, now(), ex.timestamp).unwrap();
        assert_eq!(v.timestamp, 4);
        assert!(verify(dir.path(), &root1, now()).unwrap().is_ok());

        // A day later (timestamp expiry) the report names the frozen registry.
        let later = now() + ex.timestamp + Duration::from_secs(1);
        let report = verify(dir.path(), &root1, later).unwrap();
        assert!(report.problems.iter().any(|p| p.contains("timestamp expired")), "{report:?}");
    }

    #[test]
    fn verify_reports_tampered_target_file() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys();
        let rk = root_keys(&k);
        let signers = all_signers(k);
        let ex = Expiries::default();
        let mut repo = Repository::init(dir.path(), rk, &signers, &ex, now()).unwrap();
        repo.add_target("m/1.tar", b"good", Value::Null).unwrap();
        repo.commit(&signers, now(), &ex).unwrap();
        let path = dir.path().join(format!("targets/m/{}.1.tar", sha256_hex(b"good")));
        fs::write(&path, b"evil").unwrap();
        let root1 = fs::read(dir.path().join("metadata/1.root.json")).unwrap();
        let report = verify(dir.path(), &root1, now()).unwrap();
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert!(report.problems[0].contains("sha256"), "{report:?}");
    }

    #[test]
    fn target_paths() {
        assert_eq!(target_file_path("stable/vibration/2.tar", "ab"), "stable/vibration/ab.2.tar");
        assert_eq!(target_file_path("x.bin", "ab"), "ab.x.bin");
    }
}
