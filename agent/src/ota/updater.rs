//! The device's TUF client workflow (specification section 5) over HTTP:
//! [`edge_tuf::workflow::Workflow`] says which file comes next (root chain, timestamp,
//! snapshot, targets, delegated targets) and how many bytes to read for it, and verifies
//! what it is fed; this file fetches, and keeps what verified under `<state_dir>/trust/`
//! so that versions never go back across restarts.
//!
//! An unchanged registry costs one conditional request for `timestamp.json`: the
//! snapshot and targets the timestamp still names are re-verified from the local
//! copies (signatures, hashes and expiry against the clock), not downloaded again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::OtaError;
use super::fetch::{Conditional, Downloaded, Fetcher, Limits, Validator};
use super::rollout::{Custom, Offer};
use crate::config::OtaSection;
use edge_tuf::client::TrustedSet;
use edge_tuf::workflow::{self, File, LocalCopies, Next, Request, Workflow};

/// What a refresh found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshInfo {
    /// Whether the timestamp changed since the last refresh.
    pub changed: bool,
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
    /// When the timestamp expires: a registry not re-signed by then is frozen.
    pub timestamp_expires: String,
    /// Root versions (from, to) when a rotation was followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_rotated: Option<(u64, u64)>,
}

/// The validator of the last `timestamp.json` answer, for conditional requests.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedValidator {
    etag: Option<String>,
    last_modified: Option<String>,
}

/// The registry client of one device.
pub struct Updater {
    fetcher: Fetcher,
    trust: PathBuf,
    shipped_root: PathBuf,
    set: Option<TrustedSet>,
    last: Option<RefreshInfo>,
}

impl Updater {
    /// Prepares the client; the shipped root is copied into the trust directory on first
    /// use (and again if the package ships a newer one).
    pub fn open(cfg: &OtaSection, state_dir: &Path) -> Result<Updater, OtaError> {
        let limits = Limits {
            min_rate: cfg.min_rate_bytes_s,
            download_timeout: Duration::from_secs(cfg.download_timeout_s),
            ..Limits::default()
        };
        let ca: Vec<PathBuf> = cfg.ca_file.iter().cloned().collect();
        let fetcher = Fetcher::new(&cfg.url, &ca, limits)?;
        let trust = state_dir.join("trust");
        std::fs::create_dir_all(&trust).map_err(|e| OtaError::io(&trust, e))?;
        Ok(Updater { fetcher, trust, shipped_root: cfg.trusted_root.clone(), set: None, last: None })
    }

    /// Counts the registry's traffic in `wire` (crate::usage).
    pub fn counting_in(mut self, wire: Arc<crate::usage::Counter>) -> Updater {
        self.fetcher = self.fetcher.counting_in(wire);
        self
    }

    fn local(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.trust.join(name)).ok()
    }

    fn keep(&self, name: &str, bytes: &[u8]) -> Result<(), OtaError> {
        let path = self.trust.join(name);
        edge_spool::durable::replace(&path, bytes).map_err(|e| OtaError::io(&path, e))
    }

    /// The root to start from: the newest of the trust directory's and the shipped one.
    fn starting_root(&self) -> Result<Vec<u8>, OtaError> {
        let version = |b: &[u8]| {
            serde_json::from_slice::<Value>(b)
                .ok()
                .and_then(|v| v.pointer("/signed/version").and_then(Value::as_u64))
        };
        let shipped = std::fs::read(&self.shipped_root).map_err(|e| OtaError::io(&self.shipped_root, e))?;
        match self.local("root.json") {
            Some(local) if version(&local) >= version(&shipped) => Ok(local),
            _ => {
                self.keep("root.json", &shipped)?;
                Ok(shipped)
            }
        }
    }

    /// Runs the client workflow once. Nothing is trusted from a refresh that fails.
    pub async fn refresh(&mut self) -> Result<RefreshInfo, OtaError> {
        let now = SystemTime::now();
        let root = self.starting_root()?;
        let local = LocalCopies {
            timestamp: self.local("timestamp.json"),
            snapshot: self.local("snapshot.json"),
            targets: self.local("targets.json"),
        };
        let mut workflow = Workflow::new(&root, local.clone(), now, workflow::Limits::default())?;
        for why in workflow.trusted().ignored_local_copies() {
            tracing::warn!(%why, "a local metadata copy did not verify and was ignored");
        }
        loop {
            let request = match workflow.next_step()? {
                Next::Fetch(request) => request,
                Next::Refused { error, .. } => return Err(error.into()),
                Next::Done => break,
            };
            match &request.file {
                File::Root { version } => {
                    let path = format!("metadata/{}", request.name);
                    match self.fetcher.get(&path, request.max_length).await? {
                        Some(bytes) => {
                            workflow.feed(&bytes)?;
                            self.keep("root.json", &bytes)?;
                            tracing::info!(version, "followed a root rotation");
                        }
                        None => workflow.not_found(),
                    }
                }
                File::Timestamp => {
                    self.timestamp(&mut workflow, &request, local.timestamp.as_deref()).await?
                }
                // The local copy if it is the one the metadata above names.
                File::Snapshot => {
                    let copy = local.snapshot.as_deref().filter(|b| meta_version(b) == request.version);
                    self.cached_or_fetch(&mut workflow, &request, copy, "snapshot.json").await?
                }
                File::Targets => {
                    let copy = local.targets.as_deref().filter(|b| meta_version(b) == request.version);
                    self.cached_or_fetch(&mut workflow, &request, copy, "targets.json").await?
                }
                // The cached copy only if it still verifies (a refused file leaves the
                // set unchanged, so trying is free); the cache only ever holds verified
                // files, so one bad answer from a server cannot stick.
                File::Delegated { .. } => {
                    let name = &request.name;
                    let cache =
                        format!("delegated.{}", name.rsplit_once('.').map_or(name.as_str(), |(n, _)| n));
                    let copy = self.local(&cache);
                    self.cached_or_fetch(&mut workflow, &request, copy.as_deref(), &cache).await?
                }
            }
        }
        for note in workflow.notes() {
            tracing::warn!(%note, "the registry's metadata was only partly followed");
        }

        let (first_root, changed, rotated) =
            (workflow.first_root_version(), workflow.timestamp_changed(), workflow.root_rotated());
        let set = workflow.into_trusted();
        let root_version = set.root().version;
        let info = RefreshInfo {
            changed,
            root: root_version,
            timestamp: set.timestamp().map_or(0, |t| t.version),
            snapshot: set.snapshot().map_or(0, |s| s.version),
            targets: set.targets().map_or(0, |t| t.version),
            timestamp_expires: set.timestamp().map(|t| t.expires.clone()).unwrap_or_default(),
            root_rotated: rotated.then_some((first_root, root_version)),
        };
        self.set = Some(set);
        self.last = Some(info.clone());
        Ok(info)
    }

    /// The timestamp, conditionally: unchanged since the last answer, the local copy.
    async fn timestamp(
        &self,
        workflow: &mut Workflow,
        request: &Request,
        local: Option<&[u8]>,
    ) -> Result<(), OtaError> {
        let saved: Option<SavedValidator> =
            self.local("timestamp.validator").and_then(|b| serde_json::from_slice(&b).ok());
        // A 304 answer means "use your copy", so the copy must be one that verifies: after
        // a rotation, or when the local file is damaged, the timestamp is fetched whole.
        // (Otherwise every later check would get the same 304 for the same bad copy.)
        let validator = saved
            .as_ref()
            .filter(|_| workflow.trusted().has_local_timestamp() && !workflow.root_rotated())
            .map(|s| Validator { etag: s.etag.clone(), last_modified: s.last_modified.clone() });
        let path = format!("metadata/{}", request.name);
        match self.fetcher.get_conditional(&path, request.max_length, validator.as_ref()).await? {
            Conditional::NotModified => match local {
                Some(local) => Ok(workflow.feed(local)?),
                None => Err(OtaError::Refused(
                    "the registry answered 304 for a timestamp this device does not have".into(),
                )),
            },
            Conditional::Fresh { body, validator } => {
                workflow.feed(&body)?;
                self.keep("timestamp.json", &body)?;
                let saved = SavedValidator { etag: validator.etag, last_modified: validator.last_modified };
                self.keep("timestamp.validator", &serde_json::to_vec(&saved).unwrap_or_default())
            }
        }
    }

    /// Answers `request` with `copy` if it verifies, else with the registry's file, which
    /// is then kept as `keep_as`.
    async fn cached_or_fetch(
        &self,
        workflow: &mut Workflow,
        request: &Request,
        copy: Option<&[u8]>,
        keep_as: &str,
    ) -> Result<(), OtaError> {
        if let Some(copy) = copy
            && workflow.try_cached(copy)
        {
            return Ok(());
        }
        let bytes = self.require(&request.name, request.max_length).await?;
        workflow.feed(&bytes)?;
        self.keep(keep_as, &bytes)
    }

    async fn require(&self, name: &str, max: u64) -> Result<Vec<u8>, OtaError> {
        self.fetcher.get(&format!("metadata/{name}"), max).await?.ok_or_else(|| {
            OtaError::Refused(format!(
                "the registry has no metadata/{name}, which the signed metadata names; the repository is incomplete: re-publish it"
            ))
        })
    }

    /// Every version of `model` in `channel` that the trusted targets list, with our
    /// `custom` fields read. Entries that do not follow our naming are skipped (logged).
    pub fn offers(&self, channel: &str, model: &str) -> Vec<Offer> {
        let Some(set) = &self.set else { return Vec::new() };
        let prefix = format!("{channel}/{model}/");
        let mut out = Vec::new();
        for (name, target) in set.targets_matching(&prefix) {
            let custom = target.custom.clone().map(serde_json::from_value::<Custom>);
            let sha =
                target.sha256().and_then(|h| hex::decode(h).ok()).and_then(|b| <[u8; 32]>::try_from(b).ok());
            match (custom, sha) {
                (Some(Ok(custom)), Some(sha256))
                    if custom.model == model && name == format!("{prefix}{}.tar", custom.version) =>
                {
                    out.push(Offer { target: name, length: target.length, sha256, custom });
                }
                (Some(Err(e)), _) => {
                    tracing::warn!(target = %name, error = %e, "target with an unreadable custom field skipped")
                }
                _ => {
                    tracing::warn!(target = %name, "target skipped: it needs a sha256, our custom field and the name {{channel}}/{{model}}/{{version}}.tar")
                }
            }
        }
        out
    }

    /// Downloads an offered package to `partial` (resuming), checking length and hash.
    pub async fn download(
        &self,
        offer: &Offer,
        partial: &Path,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Downloaded, OtaError> {
        let consistent = self.set.as_ref().is_some_and(|s| s.root().consistent_snapshot);
        let path = if consistent {
            let (dir, base) = offer.target.rsplit_once('/').unwrap_or(("", offer.target.as_str()));
            let hashed = format!("{}.{base}", hex::encode(offer.sha256));
            if dir.is_empty() { format!("targets/{hashed}") } else { format!("targets/{dir}/{hashed}") }
        } else {
            format!("targets/{}", offer.target)
        };
        Ok(self.fetcher.download(&path, partial, offer.length, &offer.sha256, progress).await?)
    }

    /// The trusted versions, for `/status`.
    pub fn summary(&self) -> Option<RefreshInfo> {
        self.last.clone()
    }

    /// Bytes received from the registry so far.
    pub fn bytes_received(&self) -> u64 {
        self.fetcher.bytes_received()
    }
}

/// The `signed.version` of a metadata file, without verifying it.
fn meta_version(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(bytes).ok()?.pointer("/signed/version")?.as_u64()
}
