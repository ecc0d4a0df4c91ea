//! The order of the TUF client workflow (specification section 5.3 to 5.6), written once
//! and without I/O: root chain, root expiry, timestamp, snapshot, top-level targets, then
//! every delegated targets role, with every loop bounded here.
//!
//! [`Workflow::next_step`] says which file it needs (its name under `metadata/` and the most
//! bytes to read for it); the caller gets the bytes however it likes (HTTP on a device,
//! a directory for `registry verify`, memory in tests) and answers with
//! [`Workflow::feed`], [`Workflow::try_cached`] or [`Workflow::not_found`]. The checks of
//! each step are [`TrustedSet`]'s; a refused file never changes what is trusted.
//!
//! ```no_run
//! # fn get(_name: &str, _max: u64) -> Option<Vec<u8>> { None }
//! # fn run(trusted_root: &[u8]) -> Result<(), edge_tuf::Error> {
//! use edge_tuf::workflow::{File, Limits, LocalCopies, Next, Workflow};
//!
//! let now = std::time::SystemTime::now();
//! let mut wf = Workflow::new(trusted_root, LocalCopies::default(), now, Limits::default())?;
//! loop {
//!     let request = match wf.next_step()? {
//!         Next::Fetch(request) => request,
//!         Next::Refused { error, .. } => return Err(error),
//!         Next::Done => break,
//!     };
//!     match get(&request.name, request.max_length) {
//!         Some(bytes) => wf.feed(&bytes)?,
//!         None if matches!(request.file, File::Root { .. }) => wf.not_found(),
//!         None => panic!("the registry lacks {}", request.name),
//!     }
//! }
//! let targets = wf.trusted().targets_matching("");
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::time::SystemTime;

use super::client::{MAX_DELEGATIONS, TrustedSet};
use super::error::Error;

/// The bounds of one run of the workflow: how many bytes each file may have when no
/// trusted metadata states its length, and how far the root chain and the delegation
/// graph are followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest root metadata accepted.
    pub max_root_length: u64,
    /// Largest timestamp metadata accepted.
    pub max_timestamp_length: u64,
    /// Largest snapshot or targets metadata accepted when the metadata above it does not
    /// state its length.
    pub max_metadata_length: u64,
    /// Root versions followed in one run (the specification's bound on a rotation chain).
    pub max_root_rotations: u64,
    /// Levels of delegation followed below the top-level targets role.
    pub max_delegation_depth: usize,
    /// Delegated roles requested in one run, over all levels.
    pub max_delegated_roles: usize,
}

impl Default for Limits {
    /// 512 KiB for root, 64 KiB for timestamp, 16 MiB for the others; 256 root versions;
    /// delegations 32 levels deep (python-tuf's bound on one search) and 1024 roles.
    fn default() -> Self {
        Limits {
            max_root_length: 512 * 1024,
            max_timestamp_length: 64 * 1024,
            max_metadata_length: 16 * 1024 * 1024,
            max_root_rotations: 256,
            max_delegation_depth: MAX_DELEGATIONS,
            max_delegated_roles: 1024,
        }
    }
}

/// Metadata kept from a previous run: it only raises the version floors against rollback
/// (see [`TrustedSet::load_local`]) and never stands for a file the workflow asks for,
/// unless the caller offers it with [`Workflow::try_cached`].
#[derive(Clone, Debug, Default)]
pub struct LocalCopies {
    /// The last trusted `timestamp.json`.
    pub timestamp: Option<Vec<u8>>,
    /// The last trusted snapshot.
    pub snapshot: Option<Vec<u8>>,
    /// The last trusted top-level targets.
    pub targets: Option<Vec<u8>>,
}

/// Which file of the workflow a [`Request`] is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum File {
    /// The next root version of the chain; not finding it ends the chain.
    Root {
        /// The version asked for: the trusted root's plus one.
        version: u64,
    },
    /// `timestamp.json`.
    Timestamp,
    /// The snapshot the trusted timestamp names.
    Snapshot,
    /// The top-level targets the trusted snapshot names.
    Targets,
    /// A delegated targets role the trusted snapshot names.
    Delegated {
        /// The delegated role.
        role: String,
        /// The targets role that delegates to it.
        parent: String,
    },
}

/// A file the workflow needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Which file it is.
    pub file: File,
    /// Its name under the repository's `metadata/` (`{version}.{role}.json` with
    /// consistent snapshots).
    pub name: String,
    /// The most bytes to read: the length the trusted metadata states, or the bound of
    /// [`Limits`] for the role.
    pub max_length: u64,
    /// Whether `max_length` is the length the trusted metadata states: the file must
    /// then have exactly that length ([`TrustedSet`] checks it with the hashes).
    pub length_stated: bool,
    /// The version the trusted metadata names for it, if it names one: a locally kept
    /// copy of another version is not worth offering.
    pub version: Option<u64>,
}

/// What [`Workflow::next_step`] asks of the caller.
#[derive(Debug)]
pub enum Next {
    /// Get this file and answer with [`Workflow::feed`] (or [`Workflow::try_cached`]
    /// first, or [`Workflow::not_found`]).
    Fetch(Request),
    /// A delegated role cannot be requested (the trusted snapshot does not list it): it is
    /// left out, and the workflow goes on with the others when asked.
    Refused {
        /// The delegated role.
        role: String,
        /// The targets role that delegates to it.
        parent: String,
        /// Why it cannot be requested.
        error: Error,
    },
    /// Every file is in: [`Workflow::trusted`] holds the verified targets.
    Done,
}

/// Where the workflow is.
#[derive(Debug)]
enum Stage {
    RootChain,
    /// The chain ended: the final root's expiry is checked next.
    RootExpiry,
    Timestamp,
    Snapshot,
    Targets,
    /// Delegated roles, a level at a time: `queue` holds the rest of level `depth`.
    Delegations {
        depth: usize,
        queue: VecDeque<(String, String)>,
    },
    Done,
    /// The run cannot go on (a top-level file refused or missing, the final root
    /// expired, a file the metadata does not name): nothing more is asked.
    Stopped,
}

/// One run of the client workflow; see the [module documentation](self).
#[derive(Debug)]
pub struct Workflow {
    set: TrustedSet,
    limits: Limits,
    local: LocalCopies,
    stage: Stage,
    /// The file asked for and not answered yet.
    pending: Option<Request>,
    first_root: u64,
    /// The newest root's bytes: the trusted set restarts from them after a rotation.
    newest_root: Vec<u8>,
    rotations: u64,
    timestamp_changed: bool,
    /// Delegated roles refused or missing: they are not asked for again.
    failed: BTreeSet<(String, String)>,
    delegated_requested: usize,
    notes: Vec<String>,
}

impl Workflow {
    /// Starts from `trusted_root` and the local copies of a previous run, checking expiry
    /// against `now` throughout (the specification's fixed update start time).
    pub fn new(
        trusted_root: &[u8],
        local: LocalCopies,
        now: SystemTime,
        limits: Limits,
    ) -> Result<Self, Error> {
        let set = TrustedSet::load_local(
            trusted_root,
            local.timestamp.as_deref(),
            local.snapshot.as_deref(),
            local.targets.as_deref(),
            now,
        )?;
        Ok(Workflow {
            first_root: set.root().version,
            set,
            limits,
            local,
            stage: Stage::RootChain,
            pending: None,
            newest_root: trusted_root.to_vec(),
            rotations: 0,
            timestamp_changed: false,
            failed: BTreeSet::new(),
            delegated_requested: 0,
            notes: Vec::new(),
        })
    }

    /// What is trusted so far; complete once [`Workflow::next_step`] said [`Next::Done`].
    pub fn trusted(&self) -> &TrustedSet {
        &self.set
    }

    /// What is trusted, to keep after the run (for target lookups).
    pub fn into_trusted(self) -> TrustedSet {
        self.set
    }

    /// The root version the run started from.
    pub fn first_root_version(&self) -> u64 {
        self.first_root
    }

    /// Whether the run followed at least one root rotation.
    pub fn root_rotated(&self) -> bool {
        self.set.root().version != self.first_root
    }

    /// Whether the timestamp fed differs from the one trusted before (see
    /// [`TrustedSet::update_timestamp`]).
    pub fn timestamp_changed(&self) -> bool {
        self.timestamp_changed
    }

    /// Where a bound of [`Limits`] stopped the run short (a root chain or a delegation
    /// graph longer than allowed): what is trusted is then partial, though verified.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The next file needed, [`Next::Done`] when there is none. `Err` when the run cannot
    /// go on: the final root is expired, or the trusted metadata does not name the next
    /// top-level file, or an earlier top-level file was refused.
    pub fn next_step(&mut self) -> Result<Next, Error> {
        if let Some(request) = &self.pending {
            return Ok(Next::Fetch(request.clone()));
        }
        loop {
            let request = match &self.stage {
                Stage::RootChain if self.rotations < self.limits.max_root_rotations => {
                    let version = self.set.root().version + 1;
                    Request {
                        file: File::Root { version },
                        name: format!("{version}.root.json"),
                        max_length: self.limits.max_root_length,
                        length_stated: false,
                        version: Some(version),
                    }
                }
                Stage::RootChain => {
                    self.notes.push(format!(
                        "followed {} root versions, the most one run follows; the rest are followed next time",
                        self.rotations
                    ));
                    self.stage = Stage::RootExpiry;
                    continue;
                }
                Stage::RootExpiry => {
                    self.end_root_chain()?;
                    continue;
                }
                Stage::Timestamp => Request {
                    file: File::Timestamp,
                    name: "timestamp.json".into(),
                    max_length: self.limits.max_timestamp_length,
                    length_stated: false,
                    version: None,
                },
                Stage::Snapshot => {
                    let name = self.set.snapshot_file_name();
                    let name = self.stop_on(name)?;
                    let meta = self.set.timestamp().map(|t| t.snapshot_meta().map(|m| (m.version, m.length)));
                    let meta = self.stop_on(meta.transpose())?;
                    Request {
                        file: File::Snapshot,
                        name,
                        max_length: meta.and_then(|m| m.1).unwrap_or(self.limits.max_metadata_length),
                        length_stated: meta.and_then(|m| m.1).is_some(),
                        version: meta.map(|m| m.0),
                    }
                }
                Stage::Targets => {
                    let name = self.set.targets_file_name("targets");
                    let name = self.stop_on(name)?;
                    self.listed("targets", File::Targets, name)
                }
                Stage::Delegations { .. } => match self.next_delegated() {
                    Some(Ok(request)) => request,
                    Some(Err(refused)) => return Ok(refused),
                    None => continue,
                },
                Stage::Done => return Ok(Next::Done),
                Stage::Stopped => {
                    return Err(Error::Order(
                        "the workflow stopped at a refused file; start a new run".into(),
                    ));
                }
            };
            self.pending = Some(request.clone());
            return Ok(Next::Fetch(request));
        }
    }

    /// The next delegated role of the current level, or (`None`) the move to the next
    /// level or to the end. Both bounds on the delegation graph are here.
    fn next_delegated(&mut self) -> Option<Result<Request, Next>> {
        let Stage::Delegations { depth, queue } = &mut self.stage else {
            return None;
        };
        let Some((role, parent)) = queue.pop_front() else {
            let level: VecDeque<_> =
                self.set.unloaded_delegations().into_iter().filter(|p| !self.failed.contains(p)).collect();
            if level.is_empty() {
                self.stage = Stage::Done;
            } else if *depth >= self.limits.max_delegation_depth {
                self.notes.push(format!(
                    "delegations deeper than {} levels were not loaded ({} role(s) left out)",
                    self.limits.max_delegation_depth,
                    level.len()
                ));
                self.stage = Stage::Done;
            } else {
                *depth += 1;
                *queue = level;
            }
            return None;
        };
        if self.delegated_requested >= self.limits.max_delegated_roles {
            self.notes.push(format!(
                "more than {} delegated roles: the rest were not loaded",
                self.limits.max_delegated_roles
            ));
            self.stage = Stage::Done;
            return None;
        }
        self.delegated_requested += 1;
        match self.set.targets_file_name(&role) {
            Ok(name) => Some(Ok(self.listed(&role, File::Delegated { role: role.clone(), parent }, name))),
            Err(error) => {
                self.failed.insert((role.clone(), parent.clone()));
                Some(Err(Next::Refused { role, parent, error }))
            }
        }
    }

    /// Answers the pending request with the file's bytes. A refused root version ends
    /// the chain and a refused delegated role is left out (the run goes on when asked);
    /// any other refused file stops the run.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let request = self
            .pending
            .take()
            .ok_or_else(|| Error::Order("feed called with no file requested; call next first".into()))?;
        let result = self.apply(&request, bytes);
        if let Err(e) = result {
            self.refused(&request);
            return Err(e);
        }
        Ok(())
    }

    /// Offers a locally kept copy of the pending file: if it verifies it answers the
    /// request (`true`); if not, nothing changes and the request stays pending.
    pub fn try_cached(&mut self, bytes: &[u8]) -> bool {
        let Some(request) = self.pending.take() else { return false };
        let accepted = self.apply(&request, bytes).is_ok();
        if !accepted {
            self.pending = Some(request);
        }
        accepted
    }

    /// The pending file cannot be had. For a root version this is the normal end of the
    /// chain (the next version is not published); a delegated role is left out; for the
    /// other files the run stops.
    pub fn not_found(&mut self) {
        if let Some(request) = self.pending.take() {
            self.refused(&request);
        }
    }

    /// Checks `bytes` as the file `request` names and, when they verify, moves on.
    fn apply(&mut self, request: &Request, bytes: &[u8]) -> Result<(), Error> {
        // A stated length is checked exactly, with the hashes, by the trusted set.
        let actual = bytes.len() as u64;
        if !request.length_stated && actual > request.max_length {
            return Err(Error::TooLong { file: request.name.clone(), max: request.max_length, actual });
        }
        match &request.file {
            File::Root { .. } => {
                self.set.update_root(bytes)?;
                self.newest_root = bytes.to_vec();
                self.rotations += 1;
            }
            File::Timestamp => {
                self.timestamp_changed = self.set.update_timestamp(bytes)?;
                self.stage = Stage::Snapshot;
            }
            File::Snapshot => {
                self.set.update_snapshot(bytes)?;
                self.stage = Stage::Targets;
            }
            File::Targets => {
                self.set.update_targets(bytes)?;
                self.stage = Stage::Delegations { depth: 0, queue: VecDeque::new() };
            }
            File::Delegated { role, parent } => self.set.update_delegated_targets(bytes, role, parent)?,
        }
        Ok(())
    }

    /// Moves on after `request` was refused or not found.
    fn refused(&mut self, request: &Request) {
        match &request.file {
            // The expiry check of the final root comes with the next call to next_step().
            File::Root { .. } => self.stage = Stage::RootExpiry,
            File::Delegated { role, parent } => {
                self.failed.insert((role.clone(), parent.clone()));
            }
            File::Timestamp | File::Snapshot | File::Targets => self.stage = Stage::Stopped,
        }
    }

    /// After the root chain: the final root must not be expired (spec 5.3.10), and after
    /// a rotation the local copies are checked again against the new root's keys, keeping
    /// the version floors (new keys may invalidate them, spec 5.3.11).
    fn end_root_chain(&mut self) -> Result<(), Error> {
        let expiry = self.set.check_root_expiry();
        self.stop_on(expiry)?;
        if self.root_rotated() {
            let set = TrustedSet::load_local(
                &self.newest_root,
                self.local.timestamp.as_deref(),
                self.local.snapshot.as_deref(),
                self.local.targets.as_deref(),
                self.set.now(),
            );
            self.set = self.stop_on(set)?;
        }
        self.stage = Stage::Timestamp;
        Ok(())
    }

    /// The request for a role the trusted snapshot lists, bounded by the length it states.
    fn listed(&self, role: &str, file: File, name: String) -> Request {
        let meta = self.set.snapshot().and_then(|s| s.meta.get(&format!("{role}.json")));
        Request {
            file,
            name,
            max_length: meta.and_then(|m| m.length).unwrap_or(self.limits.max_metadata_length),
            length_stated: meta.and_then(|m| m.length).is_some(),
            version: meta.map(|m| m.version),
        }
    }

    /// `result`, stopping the run if it is an error.
    fn stop_on<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        result.inspect_err(|_| self.stage = Stage::Stopped)
    }
}

#[cfg(test)]
mod tests;
