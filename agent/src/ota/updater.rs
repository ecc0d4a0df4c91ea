//! The device's TUF client workflow (specification section 5) over HTTP: the root
//! chain, then timestamp, snapshot, targets and delegated targets, each verified by
//! [`tuf::client::TrustedSet`] and kept under `<state_dir>/trust/` so that versions
//! never go back across restarts.
//!
//! An unchanged registry costs one conditional request for `timestamp.json`: the
//! snapshot and targets the timestamp still names are re-verified from the local
//! copies (signatures, hashes and expiry against the clock), not downloaded again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fetch::{Conditional, Downloaded, Fetcher, Limits, Validator};
use super::rollout::{Custom, Offer};
use super::tuf::client::TrustedSet;
use super::{OtaError, tuf};
use crate::config::OtaSection;

/// Largest root metadata accepted.
const MAX_ROOT: u64 = 512 * 1024;
/// Largest timestamp metadata accepted.
const MAX_TIMESTAMP: u64 = 64 * 1024;
/// Largest snapshot or targets metadata accepted when the metadata above does not state
/// its length.
const MAX_META: u64 = 16 * 1024 * 1024;
/// Root versions followed in one refresh (the specification's bound on a rotation chain).
const MAX_ROOT_ROTATIONS: u64 = 256;

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
        let (ts, snap, targets) =
            (self.local("timestamp.json"), self.local("snapshot.json"), self.local("targets.json"));
        let mut set = TrustedSet::load_local(&root, ts.as_deref(), snap.as_deref(), targets.as_deref(), now)?;
        for why in set.ignored_local_copies() {
            tracing::warn!(%why, "a local metadata copy did not verify and was ignored");
        }

        // 1. Follow the root chain.
        let first_root = set.root().version;
        for _ in 0..MAX_ROOT_ROTATIONS {
            let next = set.root().version + 1;
            let Some(bytes) = self.fetcher.get(&format!("metadata/{next}.root.json"), MAX_ROOT).await? else {
                break;
            };
            set.update_root(&bytes)?;
            self.keep("root.json", &bytes)?;
            tracing::info!(version = next, "followed a root rotation");
        }
        set.check_root_expiry()?;
        let root_version = set.root().version;
        if root_version != first_root {
            // New root keys may invalidate the local copies of the other roles: start
            // their checks from the new root, keeping the version floors.
            set = TrustedSet::load_local(
                &self.local("root.json").unwrap_or(root),
                ts.as_deref(),
                snap.as_deref(),
                targets.as_deref(),
                now,
            )?;
        }

        // 2. Timestamp, conditionally.
        let saved: Option<SavedValidator> =
            self.local("timestamp.validator").and_then(|b| serde_json::from_slice(&b).ok());
        // A 304 answer means "use your copy", so the copy must be one that verifies: after
        // a rotation, or when the local file is damaged, the timestamp is fetched whole.
        // (Otherwise every later check would get the same 304 for the same bad copy.)
        let validator = saved
            .as_ref()
            .filter(|_| set.has_local_timestamp() && root_version == first_root)
            .map(|s| Validator { etag: s.etag.clone(), last_modified: s.last_modified.clone() });
        let (ts_bytes, fresh) = match self
            .fetcher
            .get_conditional("metadata/timestamp.json", MAX_TIMESTAMP, validator.as_ref())
            .await?
        {
            Conditional::NotModified => match &ts {
                Some(local) => (local.clone(), None),
                None => {
                    return Err(OtaError::Refused(
                        "the registry answered 304 for a timestamp this device does not have".into(),
                    ));
                }
            },
            Conditional::Fresh { body, validator } => (body, Some(validator)),
        };
        let changed = set.update_timestamp(&ts_bytes)?;
        if let Some(v) = fresh {
            self.keep("timestamp.json", &ts_bytes)?;
            let saved = SavedValidator { etag: v.etag, last_modified: v.last_modified };
            self.keep("timestamp.validator", &serde_json::to_vec(&saved).unwrap_or_default())?;
        }

        // 3. Snapshot: the local copy if it is the one the timestamp names.
        let snapshot_meta =
            set.timestamp().map(|t| t.snapshot_meta().map(|m| (m.version, m.length))).transpose()?;
        let (want_snapshot, snapshot_len) = snapshot_meta.unwrap_or((0, None));
        let local_snap = snap.filter(|b| meta_version(b) == Some(want_snapshot));
        match local_snap {
            Some(bytes) if set.update_snapshot(&bytes).is_ok() => {}
            _ => {
                let name = set.snapshot_file_name()?;
                let bytes = self.require(&name, snapshot_len.unwrap_or(MAX_META)).await?;
                set.update_snapshot(&bytes)?;
                self.keep("snapshot.json", &bytes)?;
            }
        }

        // 4. Top-level targets, likewise.
        let targets_meta = set
            .snapshot()
            .and_then(|s| s.meta.get("targets.json"))
            .map(|m| (m.version, m.length))
            .unwrap_or((0, None));
        let local_targets = targets.filter(|b| meta_version(b) == Some(targets_meta.0));
        match local_targets {
            Some(bytes) if set.update_targets(&bytes).is_ok() => {}
            _ => {
                let name = set.targets_file_name("targets")?;
                let bytes = self.require(&name, targets_meta.1.unwrap_or(MAX_META)).await?;
                set.update_targets(&bytes)?;
                self.keep("targets.json", &bytes)?;
            }
        }

        // 5. Delegated targets roles, so listings cover every model's versions.
        for _ in 0..tuf::client::MAX_DELEGATIONS {
            let pending = set.unloaded_delegations();
            if pending.is_empty() {
                break;
            }
            for (role, parent) in pending {
                let name = set.targets_file_name(&role)?;
                let cache = format!("delegated.{}", name.rsplit_once('.').map_or(name.as_str(), |(n, _)| n));
                // The cached copy only if it still verifies (a refused file leaves the
                // set unchanged, so trying is free); the cache only ever holds verified
                // files, so one bad answer from a server cannot stick.
                if let Some(cached) = self.local(&cache)
                    && set.update_delegated_targets(&cached, &role, &parent).is_ok()
                {
                    continue;
                }
                let max = set
                    .snapshot()
                    .and_then(|s| s.meta.get(&format!("{role}.json")))
                    .and_then(|m| m.length)
                    .unwrap_or(MAX_META);
                let bytes = self.require(&name, max).await?;
                set.update_delegated_targets(&bytes, &role, &parent)?;
                self.keep(&cache, &bytes)?;
            }
        }

        let info = RefreshInfo {
            changed,
            root: root_version,
            timestamp: set.timestamp().map_or(0, |t| t.version),
            snapshot: set.snapshot().map_or(0, |s| s.version),
            targets: set.targets().map_or(0, |t| t.version),
            timestamp_expires: set.timestamp().map(|t| t.expires.clone()).unwrap_or_default(),
            root_rotated: (root_version != first_root).then_some((first_root, root_version)),
        };
        self.set = Some(set);
        self.last = Some(info.clone());
        Ok(info)
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
