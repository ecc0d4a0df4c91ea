//! Reloading the configuration on SIGHUP.
//!
//! What can change while running is applied: models (added, removed, or changed on disk,
//! found by the size and modification time of their files) and the request deadline.
//! What cannot (threads, queue, sources, API, the log format, capture) is reported as needing a restart.
//! A configuration that does not validate is refused and the running one stays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::health::Health;
use super::systemd::Notifier;
use crate::config::{Config, Overrides};
use edge_infer::engine::Engine;

/// The size and modification time of a model's files, to tell a changed model.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    meta.is_file().then(|| (e.path(), meta.len(), meta.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Keeps the running configuration, to compare a reloaded one with.
pub struct Reloader {
    current: Config,
    flags: Overrides,
    models: BTreeMap<String, (PathBuf, Fingerprint)>,
}

impl Reloader {
    /// Starts from the configuration the agent runs with.
    pub fn new(current: Config, flags: Overrides) -> Reloader {
        let models =
            current.models.iter().map(|m| (m.name.clone(), (m.dir.clone(), fingerprint(&m.dir)))).collect();
        Reloader { current, flags, models }
    }

    /// Re-reads the configuration file and applies what can change at run time; returns
    /// what happened, in one line.
    pub fn reload(
        &mut self,
        engine: &Engine,
        health: &Health,
        fallback: &crate::fallback::Fallback,
        notifier: &Notifier,
    ) -> String {
        let file = self.current.file.clone();
        notifier.send("RELOADING=1\nSTATUS=reloading the configuration");
        tracing::info!(file = %file.display(), "reloading the configuration");
        let next = match Config::load(&file, &self.flags) {
            Ok(c) => c,
            Err(e) => {
                let first = e.to_string().lines().take(2).collect::<Vec<_>>().join(" ");
                tracing::error!(error = %e, "new configuration refused; the running one stays");
                notifier.send(&format!("READY=1\nSTATUS=reload refused: {first}"));
                health.set_doing(format!("reload refused: {first}"));
                return format!("reload refused: {first}");
            }
        };
        let mut changed = Vec::new();
        let mut failed = Vec::new();
        let models = self.reload_models(&next, engine, &mut changed, &mut failed);
        if next.deadline != self.current.deadline {
            health.set_deadline(next.deadline);
            changed.push(format!(
                "engine.deadline_ms {} -> {}",
                self.current.deadline.as_millis(),
                next.deadline.as_millis()
            ));
        }
        if next.fallback != self.current.fallback {
            match fallback.reconfigure(next.fallback.as_ref()) {
                Ok(()) => {
                    changed.push("fallback reconfigured".to_string());
                    self.current.fallback = next.fallback.clone();
                }
                Err(e) => {
                    tracing::error!(error = %e, "fallback not reconfigured; the running one stays");
                    failed.push(format!("fallback refused: {e}"));
                }
            }
        }
        if next.log.level != self.current.log.level {
            // The level filter reloads in place (`config/set log.level` uses it too).
            match crate::logs::set_level(&next.log.level, None) {
                Ok(_) => {
                    changed.push(format!("log.level {} -> {}", self.current.log.level, next.log.level));
                    self.current.log.level = next.log.level.clone();
                }
                Err(e) => failed.push(format!("log.level not changed: {e}")),
            }
        }
        let restart = needs_restart(&self.current, &next);
        let mut summary = if changed.is_empty() { vec!["no change applied".to_string()] } else { changed };
        summary.extend(failed);
        if !restart.is_empty() {
            summary.push(format!("needs a restart for: {}", restart.join(", ")));
        }
        let line = summary.join("; ");
        tracing::info!(changes = %line, "configuration reloaded");
        // A reload may have loaded models: their loading code need not stay resident.
        super::trim::release_and_log("reload");
        notifier.send(&format!("READY=1\nSTATUS=reloaded: {line}"));
        health.set_doing(format!("reloaded: {line}"));
        self.models = models;
        // Keep what did not change in place: the parts that need a restart still run
        // with the old values, and the next reload compares against those.
        self.current.models = next.models;
        self.current.deadline = next.deadline;
        line
    }
    /// Loads the models that are new or changed on disk and removes those no longer
    /// configured; a model that fails to load keeps its running version. Returns what
    /// the next reload compares against.
    fn reload_models(
        &self,
        next: &Config,
        engine: &Engine,
        changed: &mut Vec<String>,
        failed: &mut Vec<String>,
    ) -> BTreeMap<String, (PathBuf, Fingerprint)> {
        let mut models = BTreeMap::new();
        for m in &next.models {
            let print = fingerprint(&m.dir);
            let same = self.models.get(&m.name).is_some_and(|(dir, p)| dir == &m.dir && p == &print);
            if !same {
                match super::load_model(&m.dir, &engine.model_limits()) {
                    Ok(loaded) => {
                        let version = loaded.version().to_string();
                        let before = engine.model(&m.name).map(|old| old.version().to_string());
                        engine.install(loaded);
                        changed.push(match before {
                            Some(v) => format!("model {} reloaded ({v} -> {version})", m.name),
                            None => format!("model {} added ({version})", m.name),
                        });
                    }
                    Err(e) => {
                        tracing::error!(model = %m.name, error = %e, "model not reloaded; the running version stays");
                        failed.push(format!("model {} refused", m.name));
                        if let Some(old) = self.models.get(&m.name) {
                            models.insert(m.name.clone(), old.clone());
                        }
                        continue;
                    }
                }
            }
            models.insert(m.name.clone(), (m.dir.clone(), print));
        }
        for name in self.models.keys().filter(|n| !next.models.iter().any(|m| &&m.name == n)) {
            engine.remove(name);
            changed.push(format!("model {name} removed"));
        }
        models
    }
}

/// The parts whose settings changed but only take effect after a restart.
fn needs_restart(c: &Config, next: &Config) -> Vec<&'static str> {
    let mut restart = Vec::new();
    if next.engine.threads != c.engine.threads
        || next.engine.queue != c.engine.queue
        || next.engine.max_streams != c.engine.max_streams
        || next.engine.spin != c.engine.spin
        || next.engine.model_limits != c.engine.model_limits
    {
        restart.push("engine");
    }
    if next.api != c.api {
        restart.push("api");
    }
    if serde_json::to_string(&next.sources).ok() != serde_json::to_string(&c.sources).ok() {
        restart.push("source");
    }
    let (l, n) = (&c.log, &next.log);
    if n.level != l.level
        || n.format != l.format
        || (n.file_max_mb, n.files, n.upload_max_mb) != (l.file_max_mb, l.files, l.upload_max_mb)
    {
        restart.push("log");
    }
    if next.device_id != c.device_id || next.state_dir != c.state_dir {
        restart.push("agent");
    }
    if next.capture != c.capture {
        restart.push("capture");
    }
    restart
}
