//! The on-disk model store, under `<state_dir>/models/<name>/`:
//!
//! ```text
//! versions/<version>/   unpacked packages, never changed once renamed in
//! current  -> versions/<v>       the version that serves (a symlink, switched by rename)
//! previous -> versions/<v> | DIR what a rollback goes back to (may be the configured dir)
//! state.json             probation in progress, versions found bad, the last one kept
//! ```
//!
//! The `current` link is the single truth of what serves after a restart: it is
//! switched by renaming a new link over it and forcing the directory to storage, so a
//! power cut leaves either the old or the new target, never a mixture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::OtaError;

/// Per-model OTA state that must survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    /// A probation in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<super::probation::Probation>,
    /// Versions that failed here, with why; never installed again unless forced.
    #[serde(default)]
    pub bad: BTreeMap<String, String>,
    /// The last version that passed probation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// The model store of one state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    staging: PathBuf,
}

impl Store {
    /// The store under `state_dir`; directories are made on first write.
    pub fn new(state_dir: &Path) -> Store {
        Store { root: state_dir.join("models"), staging: state_dir.join("ota").join("staging") }
    }

    fn dir(&self, model: &str) -> PathBuf {
        self.root.join(model)
    }

    /// Where downloads and unpacking happen before a version is complete.
    pub fn staging(&self) -> Result<PathBuf, OtaError> {
        std::fs::create_dir_all(&self.staging).map_err(|e| OtaError::io(&self.staging, e))?;
        Ok(self.staging.clone())
    }

    /// The directory of an installed version.
    pub fn version_dir(&self, model: &str, version: &str) -> PathBuf {
        self.dir(model).join("versions").join(version)
    }

    /// The directory `current` points at, if any.
    pub fn current(&self, model: &str) -> Option<PathBuf> {
        self.link(model, "current")
    }

    /// The directory `previous` points at, if any.
    pub fn previous(&self, model: &str) -> Option<PathBuf> {
        self.link(model, "previous")
    }

    fn link(&self, model: &str, name: &str) -> Option<PathBuf> {
        let link = self.dir(model).join(name);
        let target = std::fs::read_link(&link).ok()?;
        let full = if target.is_absolute() { target } else { self.dir(model).join(target) };
        full.is_dir().then_some(full)
    }

    /// Models that have a `current` link.
    pub fn models(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| self.current(n).is_some())
            .collect();
        names.sort();
        names
    }

    /// Moves a complete, checked staging directory in as `versions/<version>`. An
    /// existing directory of that version is replaced (it was never activated if we
    /// are installing it again).
    pub fn adopt(&self, model: &str, version: &str, staged: &Path) -> Result<PathBuf, OtaError> {
        let versions = self.dir(model).join("versions");
        std::fs::create_dir_all(&versions).map_err(|e| OtaError::io(&versions, e))?;
        let dest = versions.join(version);
        if self.current(model).as_deref() == Some(dest.as_path()) {
            let _ = std::fs::remove_dir_all(staged);
            return Ok(dest);
        }
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|e| OtaError::io(&dest, e))?;
        }
        std::fs::rename(staged, &dest).map_err(|e| OtaError::io(&dest, e))?;
        sync_dir(&versions)?;
        Ok(dest)
    }

    /// Points `previous` at `previous` (or removes it) and then `current` at `current`,
    /// each by an atomic rename forced to storage.
    pub fn switch(&self, model: &str, current: &Path, previous: Option<&Path>) -> Result<(), OtaError> {
        let dir = self.dir(model);
        std::fs::create_dir_all(&dir).map_err(|e| OtaError::io(&dir, e))?;
        match previous {
            Some(p) => self.set_link(model, "previous", p)?,
            None => {
                let link = dir.join("previous");
                if std::fs::symlink_metadata(&link).is_ok() {
                    std::fs::remove_file(&link).map_err(|e| OtaError::io(&link, e))?;
                }
            }
        }
        super::fault::point("activate-between-links");
        self.set_link(model, "current", current)?;
        sync_dir(&dir)
    }

    fn set_link(&self, model: &str, name: &str, target: &Path) -> Result<(), OtaError> {
        let dir = self.dir(model);
        // Inside the model's own directory the link is relative, so the state directory
        // can be moved or bind-mounted elsewhere (images, containers).
        let target =
            target.strip_prefix(&dir).map(Path::to_path_buf).unwrap_or_else(|_| target.to_path_buf());
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| OtaError::io(&tmp, e))?;
        let link = dir.join(name);
        std::fs::rename(&tmp, &link).map_err(|e| OtaError::io(&link, e))?;
        sync_dir(&dir)
    }

    /// Reads `state.json` (missing: the default).
    pub fn state(&self, model: &str) -> ModelState {
        let path = self.dir(model).join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable OTA state; starting afresh");
                ModelState::default()
            }),
            Err(_) => ModelState::default(),
        }
    }

    /// Writes `state.json` atomically.
    pub fn save_state(&self, model: &str, state: &ModelState) -> Result<(), OtaError> {
        let dir = self.dir(model);
        std::fs::create_dir_all(&dir).map_err(|e| OtaError::io(&dir, e))?;
        let path = dir.join("state.json");
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        edge_spool::durable::replace(&path, &bytes).map_err(|e| OtaError::io(&path, e))
    }

    /// Removes versions that neither `current` nor `previous` point at, and leftovers of
    /// unpacking interrupted by a crash. Partial downloads stay, to be resumed.
    pub fn collect_garbage(&self, model: &str) {
        let keep: Vec<PathBuf> = [self.current(model), self.previous(model)].into_iter().flatten().collect();
        let versions = self.dir(model).join("versions");
        if let Ok(entries) = std::fs::read_dir(&versions) {
            for e in entries.filter_map(Result::ok) {
                let p = e.path();
                if !keep.contains(&p) {
                    tracing::info!(model, path = %p.display(), "removing an unused model version");
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.staging) {
            for e in entries.filter_map(Result::ok) {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), OtaError> {
    edge_spool::durable::sync_dir(dir).map_err(|e| OtaError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_keeps_previous_and_survives_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let outside = tmp.path().join("configured");
        std::fs::create_dir_all(&outside).unwrap();
        for v in ["1", "2"] {
            let staged = store.staging().unwrap().join(format!("m-{v}"));
            std::fs::create_dir_all(&staged).unwrap();
            std::fs::write(staged.join("model.toml"), v).unwrap();
            store.adopt("m", v, &staged).unwrap();
        }
        store.switch("m", &store.version_dir("m", "1"), Some(&outside)).unwrap();
        assert_eq!(store.current("m").unwrap(), store.version_dir("m", "1"));
        assert_eq!(store.previous("m").unwrap(), outside);
        store.switch("m", &store.version_dir("m", "2"), Some(&store.version_dir("m", "1"))).unwrap();
        let again = Store::new(tmp.path());
        assert_eq!(again.current("m").unwrap(), again.version_dir("m", "2"));
        assert_eq!(again.previous("m").unwrap(), again.version_dir("m", "1"));
        // Links inside the store are relative: the state directory can move.
        assert_eq!(std::fs::read_link(tmp.path().join("models/m/current")).unwrap(), Path::new("versions/2"));
        assert_eq!(again.models(), vec!["m".to_string()]);
        let mut state = again.state("m");
        state.bad.insert("3".into(), "failed self-test".into());
        again.save_state("m", &state).unwrap();
        assert_eq!(Store::new(tmp.path()).state("m").bad.len(), 1);
        std::fs::create_dir_all(again.version_dir("m", "0")).unwrap();
        again.collect_garbage("m");
        assert!(!again.version_dir("m", "0").exists());
        assert!(again.version_dir("m", "1").exists() && again.version_dir("m", "2").exists());
    }
}
