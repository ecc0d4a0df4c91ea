//! Signed model updates: a registry that is a TUF repository, checked on a timer and on
//! command; new versions chosen by staged rollout, downloaded with limits, unpacked,
//! self-tested in a child process, activated without dropping a request, watched on
//! probation, and rolled back when worse than the version they replaced.
//!
//! One task owns all of it ([`run`]); commands and the API talk to it through an
//! [`OtaHandle`]. Each step that changes what serves is written to disk before it takes
//! effect (see [`store`]), so a crash at any point restarts on the old or the new
//! version, never a mixture.

pub mod fault;
pub mod fetch;
pub mod package;
pub mod probation;
pub mod pulled;
pub mod rollout;
pub mod selftest;
pub mod serve;
pub mod status;
pub mod store;
#[cfg(test)]
mod tests;
mod updater;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, OtaSection};
use crate::events::{Event, Events, Kind, Severity};
use edge_infer::engine::stats::ModelStats;
use edge_infer::engine::{Engine, LoadedModel};
use probation::{Numbers, Probation, Verdict};
use rollout::Offer;
pub use status::OtaStatus;
use status::{LastCheck, OtaModelStatus, ProbationStatus};
use store::{ModelState, Store};
pub use updater::{RefreshInfo, Updater};

/// What can go wrong with an update. Each says what, where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model package {path}: {reason}")]
    Package { path: PathBuf, reason: String },
    // Boxed: these errors carry long messages, and every OtaError result would pay
    // for their size otherwise.
    #[error("registry metadata: {0}")]
    Metadata(Box<edge_tuf::Error>),
    #[error("registry download: {0}")]
    Fetch(Box<fetch::FetchError>),
    #[error("{0}")]
    Refused(String),
    /// Refused for a reason of this device, not of the version (a limit in its
    /// configuration, a self-test it could not start): tried again at the next check.
    #[error("{0}; tried again at the next check")]
    Deferred(String),
}

impl From<edge_tuf::Error> for OtaError {
    fn from(e: edge_tuf::Error) -> Self {
        OtaError::Metadata(Box::new(e))
    }
}

impl From<fetch::FetchError> for OtaError {
    fn from(e: fetch::FetchError) -> Self {
        OtaError::Fetch(Box::new(e))
    }
}

impl OtaError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> OtaError {
        OtaError::Io { path: path.to_path_buf(), source }
    }

    /// A short stable name for events.
    pub fn kind(&self) -> &'static str {
        match self {
            OtaError::Io { .. } => "io",
            OtaError::Package { .. } => "package",
            OtaError::Metadata(e) if matches!(**e, edge_tuf::Error::Expired { .. }) => "expired",
            OtaError::Metadata(_) => "metadata",
            OtaError::Fetch(e) => e.kind(),
            OtaError::Refused(_) => "refused",
            OtaError::Deferred(_) => "deferred",
        }
    }
}

type Reply = oneshot::Sender<Result<Value, String>>;

enum Request {
    Check(Reply),
    Apply { model: String, version: String, force: bool, shadow: bool, reply: Reply },
    Rollback { model: Option<String>, reply: Reply },
    ShadowVerdict { model: String, promote: bool, reply: Reply },
}

/// The way to the update task, for commands and the API.
#[derive(Clone)]
pub struct OtaHandle {
    tx: mpsc::Sender<Request>,
    status: Arc<Mutex<OtaStatus>>,
}

impl std::fmt::Debug for OtaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtaHandle")
    }
}

impl OtaHandle {
    async fn ask(&self, make: impl FnOnce(Reply) -> Request) -> Result<Value, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| "the update task has stopped".to_string())?;
        rx.await.map_err(|_| "the update task stopped before answering".to_string())?
    }

    /// Checks the registry now and installs what it allows.
    pub async fn check(&self) -> Result<Value, String> {
        self.ask(Request::Check).await
    }

    /// Installs one signed version, whatever the rollout says (`force` also takes a
    /// version this device marked bad).
    pub async fn apply(&self, model: String, version: String, force: bool) -> Result<Value, String> {
        self.ask(|reply| Request::Apply { model, version, force, shadow: false, reply }).await
    }

    /// Installs one signed version as the shadow candidate of `model`: downloaded,
    /// verified and self-tested as for [`OtaHandle::apply`], then run beside the active
    /// version until its verdict instead of activated.
    pub async fn apply_shadow(&self, model: String, version: String, force: bool) -> Result<Value, String> {
        self.ask(|reply| Request::Apply { model, version, force, shadow: true, reply }).await
    }

    /// Ends the shadow run of `model` now: promotes the candidate (activated, then on
    /// probation) or rejects it (unloaded, marked bad here).
    pub async fn shadow_verdict(&self, model: String, promote: bool) -> Result<Value, String> {
        self.ask(|reply| Request::ShadowVerdict { model, promote, reply }).await
    }

    /// Goes back to the previous version of `model` (the only OTA model if `None`).
    pub async fn rollback(&self, model: Option<String>) -> Result<Value, String> {
        self.ask(|reply| Request::Rollback { model, reply }).await
    }

    /// The update state of every model and of the registry, for the status document.
    pub fn status(&self) -> OtaStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What [`prepare`] found, for [`start`].
#[derive(Debug, Default)]
pub struct Prepared {
    /// Events to send once the update task runs (a current version that does not load
    /// falls back to the previous one, an interrupted activation is abandoned).
    notes: Vec<Event>,
    /// Every model's `state.json`, read here once: the update task starts from it.
    states: BTreeMap<String, ModelState>,
}

/// Replaces configured models by the versions the store says are current. Run before
/// the agent serves, so a restart serves what was last activated.
pub fn prepare(config: &Config, engine: &Engine) -> Prepared {
    let Some(ota) = &config.ota else { return Prepared::default() };
    let store = Store::new(&config.state_dir);
    let mut notes = Vec::new();
    let mut states = BTreeMap::new();
    for model in &ota.models {
        let mut state = store.state(model);
        let current = store.current(model);
        let current_version = current.as_deref().and_then(dir_version);
        // A probation whose version never became current was cut by a crash between
        // writing it and switching: the update is abandoned, the next check retries it.
        if let Some(p) = &state.probation
            && current_version.as_deref() != Some(p.version.as_str())
        {
            tracing::warn!(model, version = %p.version, "an activation was interrupted; staying on the previous version");
            notes.push(
                Event::info(
                    Kind::UpdateAbandoned,
                    json!({"version": p.version, "why": "interrupted before the switch"}),
                )
                .model(model),
            );
            state.probation = None;
            let _ = store.save_state(model, &state);
        }
        states.insert(model.clone(), state);
        let Some(dir) = current else { continue };
        match LoadedModel::load_dir(&dir, &engine.model_limits()) {
            Ok(m) if m.name() == model => {
                tracing::info!(model, version = %m.version(), dir = %dir.display(), "serving the registry's version");
                engine.install(m);
            }
            other => {
                let why = match other {
                    Ok(m) => format!("it holds model `{}`", m.name()),
                    Err(e) => e.to_string(),
                };
                tracing::error!(model, dir = %dir.display(), error = %why, "the current version does not load; trying the previous one");
                let fallback = store
                    .previous(model)
                    .and_then(|p| LoadedModel::load_dir(&p, &engine.model_limits()).ok().map(|m| (p, m)));
                if let Some((p, m)) = fallback {
                    let _ = store.switch(model, &p, None);
                    notes.push(
                        Event::warning(
                            Kind::ModelRolledBack,
                            json!({"from": current_version, "to": m.version(), "reason": format!("does not load: {why}")}),
                        )
                        .model(model),
                    );
                    engine.install(m);
                }
            }
        }
        store.collect_garbage(model);
    }
    Prepared { notes, states }
}

/// The version of a store directory (`versions/<v>`), or of a configured model dir.
fn dir_version(dir: &Path) -> Option<String> {
    edge_infer::engine::spec::ModelSpec::load_dir(dir).ok().map(|s| s.spec.version)
}

/// The update task's state.
struct Ota {
    cfg: OtaSection,
    device: String,
    engine: Arc<Engine>,
    store: Store,
    updater: Updater,
    events: Events,
    status: Arc<Mutex<OtaStatus>>,
    /// Configured model directories: what a rollback falls back to last.
    configured: BTreeMap<String, PathBuf>,
    /// Engine counters at each activation, to measure probation by difference.
    at_switch: BTreeMap<String, ModelStats>,
    selftest_exe: PathBuf,
    last_check: Option<(String, Result<Value, String>)>,
    /// Model → what it is doing now (downloading, self-test, ...), for `/status`.
    doing: BTreeMap<String, String>,
    /// Every model's `state.json`, read once at start. This task is its only writer, and
    /// writes each change through ([`Ota::save_state`]) before it takes effect, so the
    /// file always holds what a restart needs and is never read again while running.
    states: BTreeMap<String, ModelState>,
    /// The version `previous` points at, per model, for `/status`: read when the links
    /// change, not at every status update (a probation updates it once a second).
    previous: BTreeMap<String, Option<String>>,
    /// Shadow runs in progress; the stream tasks feed them.
    shadows: Arc<crate::shadow::Shadows>,
    /// The drift monitors, for the label counts a probation compares.
    monitors: Arc<crate::monitor::Monitors>,
}

/// What the update task reports to and shares with the rest of the agent.
pub struct Links {
    /// Where its events go.
    pub events: Events,
    /// The shadow runs it starts and ends; the stream tasks feed them.
    pub shadows: Arc<crate::shadow::Shadows>,
    /// The drift monitors: a probation compares the label shares they count.
    pub monitors: Arc<crate::monitor::Monitors>,
    /// The registry's bytes, counted on the way in and out.
    pub registry_bytes: Arc<crate::usage::Counter>,
}

/// Starts the update task, from what [`prepare`] found.
pub fn start(
    config: &Config,
    engine: Arc<Engine>,
    links: Links,
    prepared: Prepared,
    token: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<OtaHandle, OtaError> {
    let Prepared { notes, states } = prepared;
    let Links { events, shadows, monitors, registry_bytes } = links;
    let mut ota = Ota::new(config, engine, events, shadows, states)?;
    ota.monitors = monitors;
    ota.updater = ota.updater.counting_in(registry_bytes);
    let (tx, rx) = mpsc::channel(16);
    let status = ota.status.clone();
    tracker.spawn(run(ota, rx, notes, token));
    Ok(OtaHandle { tx, status })
}

/// Time to the next check: the interval ± jitter, at random.
fn next_interval(cfg: &OtaSection) -> Duration {
    let base = cfg.interval_s as f64;
    let spread = base * cfg.jitter;
    let offset = if spread > 0.0 { rand::random_range(-spread..=spread) } else { 0.0 };
    Duration::from_secs_f64((base + offset).max(1.0))
}

async fn run(mut ota: Ota, mut rx: mpsc::Receiver<Request>, notes: Vec<Event>, token: CancellationToken) {
    for note in notes {
        ota.events.emit(note).await;
    }
    for model in ota.cfg.models.clone() {
        if let Some(p) = ota.state(&model).probation {
            ota.at_switch.insert(model.clone(), ota.engine.snapshot(&model));
            ota.events
                .emit(Event::info(Kind::ProbationResumed, json!({"version": p.version})).model(&model))
                .await;
        }
    }
    // The first check comes soon after start (spread a little, so a fleet restarted at
    // once does not hit the registry in the same second).
    let first = Duration::from_secs_f64(rand::random_range(0.0..=ota.cfg.interval_s.min(5) as f64));
    let mut next_check = tokio::time::Instant::now() + first;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep_until(next_check) => {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = ota.check("timer") => {}
                }
                next_check = tokio::time::Instant::now() + next_interval(&ota.cfg);
            }
            _ = tick.tick() => {
                ota.watch_probations().await;
                ota.watch_shadows().await;
            }
            Some(req) = rx.recv() => {
                let work = async {
                    match req {
                        Request::Check(reply) => {
                            let r = ota.check("command").await;
                            let _ = reply.send(r);
                        }
                        Request::Apply { model, version, force, shadow, reply } => {
                            let r = ota.apply(&model, &version, force, shadow).await;
                            let _ = reply.send(r);
                        }
                        Request::ShadowVerdict { model, promote, reply } => {
                            let r = ota.shadow_command(&model, promote).await;
                            let _ = reply.send(r);
                        }
                        Request::Rollback { model, reply } => {
                            let r = ota.operator_rollback(model).await;
                            let _ = reply.send(r);
                        }
                    }
                };
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = work => {}
                }
            }
        }
    }
    tracing::debug!("update task stopped");
}

impl Ota {
    /// The update task's state, starting from every model's `state.json` as [`prepare`]
    /// read it (once: see [`Ota::states`]).
    fn new(
        config: &Config,
        engine: Arc<Engine>,
        events: Events,
        shadows: Arc<crate::shadow::Shadows>,
        mut states: BTreeMap<String, ModelState>,
    ) -> Result<Ota, OtaError> {
        let Some(cfg) = config.ota.clone() else {
            return Err(OtaError::Refused("no [ota] section".into()));
        };
        let updater = Updater::open(&cfg, &config.state_dir)?;
        let store = Store::new(&config.state_dir);
        let mut ota = Ota {
            device: config.device_id.clone(),
            engine,
            states: cfg.models.iter().map(|m| (m.clone(), states.remove(m).unwrap_or_default())).collect(),
            previous: BTreeMap::new(),
            store,
            updater,
            events,
            status: Arc::new(Mutex::new(OtaStatus::default())),
            configured: config.models.iter().map(|m| (m.name.clone(), m.dir.clone())).collect(),
            at_switch: BTreeMap::new(),
            selftest_exe: selftest::current_exe(),
            last_check: None,
            doing: BTreeMap::new(),
            shadows,
            monitors: Default::default(),
            cfg,
        };
        for model in ota.cfg.models.clone() {
            ota.read_previous(&model);
        }
        ota.publish_status();
        Ok(ota)
    }

    /// The OTA state of `model`, from memory.
    fn state(&self, model: &str) -> ModelState {
        self.states.get(model).cloned().unwrap_or_default()
    }

    /// Writes `state` to the model's `state.json`, then keeps it as the state in memory;
    /// a failed write leaves both as they were, as a restart would find them.
    fn save_state(&mut self, model: &str, state: &ModelState) -> Result<(), OtaError> {
        self.store.save_state(model, state)?;
        self.states.insert(model.to_string(), state.clone());
        Ok(())
    }

    /// Re-reads which version `previous` points at, after the links changed.
    fn read_previous(&mut self, model: &str) {
        let version = self.store.previous(model).as_deref().and_then(dir_version);
        self.previous.insert(model.to_string(), version);
    }

    /// Refreshes the registry metadata; failures become events.
    async fn refresh(&mut self) -> Result<Value, String> {
        match self.updater.refresh().await {
            Ok(info) => {
                if let Some((from, to)) = info.root_rotated {
                    self.events.emit(Event::info(Kind::RootRotated, json!({"from": from, "to": to}))).await;
                }
                Ok(serde_json::to_value(&info).unwrap_or(Value::Null))
            }
            Err(e) => {
                let (kind, severity) = if e.kind() == "expired" {
                    (Kind::RegistryFrozen, Severity::Error)
                } else {
                    (Kind::UpdateCheckFailed, Severity::Warning)
                };
                self.events
                    .emit(Event::new(kind, severity, json!({"error": e.to_string(), "kind": e.kind()})))
                    .await;
                Err(e.to_string())
            }
        }
    }

    async fn check(&mut self, origin: &str) -> Result<Value, String> {
        let result = self.check_inner().await;
        self.last_check = Some((crate::events::now(), result.clone()));
        if let Err(e) = &result {
            tracing::warn!(origin, error = %e, "update check failed");
        }
        self.publish_status();
        result
    }

    async fn check_inner(&mut self) -> Result<Value, String> {
        let registry = self.refresh().await?;
        let mut models = serde_json::Map::new();
        let pins = self.cfg.pin.clone();
        let groups = self.cfg.groups.clone();
        for model in self.cfg.models.clone() {
            let offers = self.updater.offers(&self.cfg.channel, &model);
            let active = self.engine.model(&model).map(|m| m.version().to_string());
            // Pulled before anything else: a version on probation is taken off as well.
            if let Some(done) = self.off_if_pulled(&model, active.as_deref(), &offers).await {
                models.insert(model.clone(), done);
                continue;
            }
            let state = self.state(&model);
            if let Some(p) = &state.probation {
                models.insert(
                    model.clone(),
                    json!({"active": active, "probation": p.version, "action": "none: on probation"}),
                );
                continue;
            }
            if let Some(t) = self.shadows.get(&model) {
                models.insert(
                    model.clone(),
                    json!({"active": active, "shadow": t.version, "action": "none: a shadow run is in progress"}),
                );
                continue;
            }
            let device = rollout::Device {
                id: &self.device,
                groups: &groups,
                agent_version: env!("CARGO_PKG_VERSION"),
                pins: &pins,
            };
            let (best, skipped) = rollout::choose(&device, &model, &offers, active.as_deref(), &state.bad);
            let action = match best {
                None => json!("none"),
                Some(offer) => {
                    let version = offer.custom.version.clone();
                    let shadow = offer.custom.rollout.mode == rollout::Mode::Shadow;
                    match self.install(offer, "rollout", shadow).await {
                        Ok(()) if shadow => json!(format!("shadowing {version}")),
                        Ok(()) => json!(format!("activated {version}")),
                        Err(e) => json!(format!("refused {version}: {e}")),
                    }
                }
            };
            models.insert(
                model.clone(),
                json!({
                    "active": self.engine.model(&model).map(|m| m.version().to_string()),
                    "offered": offers.iter().map(|o| o.custom.version.clone()).collect::<Vec<_>>(),
                    "skipped": skipped,
                    "action": action,
                }),
            );
        }
        Ok(json!({"registry": registry, "models": models}))
    }

    async fn apply(
        &mut self,
        model: &str,
        version: &str,
        force: bool,
        shadow: bool,
    ) -> Result<Value, String> {
        if !self.cfg.models.iter().any(|m| m == model) {
            return Err(format!(
                "`{model}` is not a registry model here (ota.models: {})",
                self.cfg.models.join(", ")
            ));
        }
        self.refresh().await?;
        let offers = self.updater.offers(&self.cfg.channel, model);
        let Some(offer) = offers.into_iter().find(|o| o.custom.version == version) else {
            return Err(format!(
                "the signed targets of channel `{}` have no version `{version}` of `{model}`",
                self.cfg.channel
            ));
        };
        let mut state = self.state(model);
        if let Some(why) = state.bad.get(version) {
            if !force {
                return Err(format!(
                    "version {version} is marked bad here ({why}); add \"force\": true to try it again"
                ));
            }
            state.bad.remove(version);
            self.save_state(model, &state).map_err(|e| e.to_string())?;
        }
        if self.engine.model(model).is_some_and(|m| m.version() == version) {
            return Ok(json!({"model": model, "version": version, "action": "already active"}));
        }
        if let Some(t) = self.shadows.get(model) {
            return Err(format!(
                "version {} of `{model}` is running in shadow; end it first with update/shadow {{\"model\": \"{model}\", \"verdict\": \"promote\" or \"reject\"}}",
                t.version
            ));
        }
        if shadow && self.engine.model(model).is_none() {
            return Err(format!(
                "`{model}` has no active version to compare a shadow candidate with; apply version {version} without \"shadow\""
            ));
        }
        self.install(offer, "operator", shadow).await.map_err(|e| e.to_string())?;
        let action = if shadow { "shadowing" } else { "activated" };
        Ok(json!({"model": model, "version": version, "action": action}))
    }

    fn set_doing(&mut self, model: &str, what: Option<&str>) {
        match what {
            Some(w) => self.doing.insert(model.to_string(), w.to_string()),
            None => self.doing.remove(model),
        };
        self.publish_status();
    }

    /// Download, unpack, self-test and activate one offered version. Refusals mark the
    /// version bad where retrying cannot help (bad package, failed self-test).
    async fn install(&mut self, offer: Offer, reason: &str, shadow: bool) -> Result<(), OtaError> {
        let model = offer.custom.model.clone();
        let version = offer.custom.version.clone();
        let result = self.install_steps(&offer, reason, shadow).await;
        self.set_doing(&model, None);
        if let Err(e) = &result {
            // A bad package or a failed self-test will not get better: the version is
            // marked bad. Download failures (a wrong hash included: the signed metadata
            // is right, the server or a cache in between is not) are retried next time.
            let permanent = matches!(e, OtaError::Package { .. } | OtaError::Refused(_));
            self.events
                .emit(Event::error(Kind::UpdateRejected, json!({"version": version, "error": e.to_string(), "kind": e.kind(), "marked_bad": permanent})).model(&model))
                .await;
            if permanent {
                let mut state = self.state(&model);
                state.bad.insert(version.clone(), e.to_string());
                let _ = self.save_state(&model, &state);
            }
            self.store.collect_garbage(&model);
        }
        self.publish_status();
        result
    }

    async fn install_steps(&mut self, offer: &Offer, reason: &str, shadow: bool) -> Result<(), OtaError> {
        let model = offer.custom.model.clone();
        let version = offer.custom.version.clone();
        if !crate::config::is_valid_id(&version) {
            return Err(OtaError::Refused(format!(
                "version `{version}` is not a safe name (A-Z a-z 0-9 . _ -)"
            )));
        }
        if offer.length > self.cfg.max_package_bytes {
            // The device's limit, not the version, is at fault: raising the limit must be
            // enough to get the version, so it is not marked bad.
            return Err(OtaError::Deferred(format!(
                "the package has {} bytes; this device takes at most {} (ota.max_package_bytes)",
                offer.length, self.cfg.max_package_bytes
            )));
        }
        // 1. Download (resumable) into staging.
        self.set_doing(&model, Some(&format!("downloading {version}")));
        self.events
            .emit(
                Event::info(
                    Kind::UpdateDownloading,
                    json!({"version": version, "bytes": offer.length, "reason": reason}),
                )
                .model(&model),
            )
            .await;
        let staging = self.store.staging()?;
        let partial =
            staging.join(format!("{model}-{version}-{}.tar.partial", hex::encode(&offer.sha256[..6])));
        let started = Instant::now();
        let total = offer.length;
        let mut halfway = false;
        let mut progress = move |done: u64, _: u64| {
            if !halfway && done * 2 >= total {
                halfway = true;
                fault::point("download");
            }
        };
        let got = self.updater.download(offer, &partial, &mut progress).await?;
        fault::point("downloaded");
        let secs = started.elapsed().as_secs_f64();
        self.events
            .emit(Event::info(Kind::UpdateDownloaded, json!({"version": version, "bytes": got.bytes, "resumed_from": got.resumed_from, "seconds": secs})).model(&model))
            .await;
        // 2. Unpack and check it is the model and version the signed metadata says.
        self.set_doing(&model, Some(&format!("unpacking {version}")));
        let unpacked = staging.join(format!("{model}-{version}"));
        let _ = std::fs::remove_dir_all(&unpacked);
        let (p, u) = (partial.clone(), unpacked.clone());
        tokio::task::spawn_blocking(move || package::unpack(&p, &u))
            .await
            .map_err(|e| OtaError::Refused(format!("unpacking stopped: {e}")))??;
        let spec = edge_infer::engine::spec::ModelSpec::load_dir(&unpacked)
            .map_err(|e| OtaError::Package { path: unpacked.clone(), reason: e.to_string() })?;
        if spec.spec.name != model || spec.spec.version != version {
            let _ = std::fs::remove_dir_all(&unpacked);
            return Err(OtaError::Package {
                path: partial.clone(),
                reason: format!(
                    "holds {} version {} but the signed metadata says {model} version {version}",
                    spec.spec.name, spec.spec.version
                ),
            });
        }
        let dir = self.store.adopt(&model, &version, &unpacked)?;
        let _ = std::fs::remove_file(&partial);
        fault::point("staged");
        // 3. Self-test in a child process under limits.
        self.set_doing(&model, Some(&format!("self-testing {version}")));
        let limits = selftest::Limits {
            memory_bytes: self.cfg.selftest_memory_mb << 20,
            timeout: Duration::from_secs(self.cfg.selftest_timeout_s),
            model: self.engine.model_limits(),
        };
        let (exe, d) = (self.selftest_exe.clone(), dir.clone());
        let report = tokio::task::spawn_blocking(move || selftest::run_isolated(&exe, &d, &limits))
            .await
            .map_err(|e| OtaError::Refused(format!("the self-test stopped: {e}")))?
            // No verdict at all (the binary was replaced by an upgrade, no processes left):
            // nothing is known against the version.
            .map_err(OtaError::Deferred)?;
        if !report.passed {
            let why = report.error.clone().unwrap_or_else(|| "failed".into());
            self.events
                .emit(
                    Event::error(Kind::SelftestFailed, json!({"version": version, "report": report}))
                        .model(&model),
                )
                .await;
            return Err(OtaError::Refused(format!("self-test failed: {why}")));
        }
        self.events
            .emit(Event::info(Kind::SelftestPassed, json!({"version": version, "cases": report.cases.len(), "max_latency_ms": report.max_latency_ms, "peak_rss_kib": report.peak_rss_kib})).model(&model))
            .await;
        fault::point("selftested");
        // 4. Activate, then probation; or run in shadow until the verdict.
        let limits = self.cfg.probation.with(offer.custom.probation.as_ref());
        if shadow {
            let shadow_limits = offer.custom.shadow.clone().unwrap_or_default();
            return self.start_shadow(&model, &version, &dir, shadow_limits, limits, reason).await;
        }
        self.activate(&model, &version, &dir, limits, reason, None).await
    }

    /// Loads a version's directory off the task, within the engine's memory limits.
    async fn load(&self, dir: &Path) -> Result<LoadedModel, OtaError> {
        let d = dir.to_path_buf();
        let model_limits = self.engine.model_limits();
        tokio::task::spawn_blocking(move || LoadedModel::load_dir(&d, &model_limits))
            .await
            .map_err(|e| OtaError::Refused(format!("loading stopped: {e}")))?
            .map_err(|e| OtaError::Refused(format!("does not load: {e}")))
    }

    /// Loads `dir`, records the probation, switches the links, then swaps the engine's
    /// model: requests in flight finish on the old version, new ones take the new.
    async fn activate(
        &mut self,
        model: &str,
        version: &str,
        dir: &Path,
        limits: probation::Limits,
        reason: &str,
        shadow: Option<crate::shadow::Numbers>,
    ) -> Result<(), OtaError> {
        self.set_doing(model, Some(&format!("activating {version}")));
        let loaded = self.load(dir).await?;
        let old = self.engine.model(model);
        let previous = old.as_ref().map(|m| m.dir.clone()).or_else(|| self.configured.get(model).cloned());
        let previous_version = old.as_ref().map(|m| m.version().to_string());
        let before = self.engine.snapshot(model);
        let mut state = self.state(model);
        state.probation = Some(Probation {
            version: version.to_string(),
            previous: previous.clone(),
            previous_version: previous_version.clone(),
            started: unix_now(),
            // With no version serving before, the counters hold only requests refused
            // for want of a model: not a baseline, or a new version failing every request
            // would pass (1.0 + max_error_rate).
            baseline: if old.is_some() {
                Numbers {
                    labels: self.old_labels(model, previous_version.as_deref()),
                    ..Numbers::from_stats(&before, limits.min_requests)
                }
            } else {
                Numbers::default()
            },
            limits,
            shadow: shadow.clone(),
        });
        self.save_state(model, &state)?;
        fault::point("activate-state-written");
        let switched = self.store.switch(model, dir, previous.as_deref());
        // Even a switch cut halfway may have moved `previous`.
        self.read_previous(model);
        switched?;
        self.engine.install(loaded);
        self.at_switch.insert(model.to_string(), before);
        fault::point("activated");
        self.events
            .emit(Event::info(Kind::ModelActivated, with_shadow(json!({"version": version, "previous": previous_version, "reason": reason, "probation": true}), shadow.as_ref())).model(model))
            .await;
        Ok(())
    }

    /// The replaced version's recent labels, read just before the switch (the monitor
    /// still holds that version's results then), when they are that version's.
    fn old_labels(&self, model: &str, version: Option<&str>) -> Option<BTreeMap<String, u64>> {
        self.monitors.labels(model).filter(|c| Some(c.version.as_str()) == version).map(|c| c.recent)
    }

    /// A probation's numbers so far: the engine's counters since the switch, and every
    /// label the new version answered (none before its monitor restarted for it).
    fn probation_numbers(&self, model: &str, p: &Probation) -> Numbers {
        let before = self.at_switch.get(model).cloned().unwrap_or_default();
        let mut now = Numbers::between(&before, &self.engine.snapshot(model), p.limits.min_requests);
        // The version as the engine names it (its model.toml), as the monitor does.
        let serving = self.engine.model(model).map(|m| m.version().to_string());
        if p.baseline.labels.is_some() {
            now.labels =
                self.monitors.labels(model).filter(|c| Some(&c.version) == serving.as_ref()).map(|c| c.total);
        }
        now
    }

    /// Judges every probation in progress; passes keep the version, failures roll back.
    async fn watch_probations(&mut self) {
        // Nothing on probation (the usual case): nothing to read, judge or publish.
        if self.states.values().all(|s| s.probation.is_none()) {
            return;
        }
        let mut watched = false;
        for model in self.cfg.models.clone() {
            let mut state = self.state(&model);
            let Some(mut p) = state.probation.clone() else { continue };
            watched = true;
            // A start in the future means the clock went back (or was ahead when the
            // version was activated): counted from now, the probation still ends.
            if p.started > unix_now() {
                tracing::warn!(model, version = %p.version, started = p.started, "the clock went back during a probation; its time starts again now");
                p.started = unix_now();
                state.probation = Some(p.clone());
                let _ = self.save_state(&model, &state);
            }
            let now = self.probation_numbers(&model, &p);
            match p.judge(&now) {
                Verdict::Continue => {}
                Verdict::Pass => {
                    state.probation = None;
                    state.kept = Some(p.version.clone());
                    if self.save_state(&model, &state).is_ok() {
                        self.events
                            .emit(
                                Event::info(
                                    Kind::ProbationPassed,
                                    with_shadow(
                                        json!({"version": p.version, "numbers": now, "baseline": p.baseline}),
                                        p.shadow.as_ref(),
                                    ),
                                )
                                .model(&model),
                            )
                            .await;
                    }
                }
                Verdict::Fail(why) => {
                    let why = format!("failed probation: {why}");
                    let detail =
                        with_shadow(json!({"numbers": now, "baseline": p.baseline}), p.shadow.as_ref());
                    if let Err(e) = self.roll_back(&model, &why, detail.clone()).await {
                        self.end_failed_probation(&model, &p, &why, &e, detail).await;
                    }
                }
            }
        }
        // Only a probation's numbers change from one tick to the next; every other
        // change publishes the status where it happens.
        if watched {
            self.publish_status();
        }
    }

    /// A failed probation with nothing to roll back to (a first version from the
    /// registry, or a previous version that no longer loads): the version keeps serving,
    /// since it is all there is, but it is marked bad and the probation ends, so that the
    /// next check can install a newer version instead of waiting on it forever.
    async fn end_failed_probation(
        &mut self,
        model: &str,
        p: &Probation,
        why: &str,
        error: &str,
        detail: Value,
    ) {
        tracing::error!(model, error, "rollback failed; the version keeps serving, marked bad");
        let mut state = self.state(model);
        state.probation = None;
        state.bad.insert(p.version.clone(), format!("{why}; nothing to roll back to ({error})"));
        if let Err(e) = self.save_state(model, &state) {
            tracing::error!(model, error = %e, "cannot end the probation");
            return;
        }
        self.at_switch.remove(model);
        let mut body = json!({"version": p.version, "reason": why, "rollback": error, "kept_serving": true});
        if let (Some(obj), Value::Object(extra)) = (body.as_object_mut(), detail) {
            obj.extend(extra);
        }
        self.events.emit(Event::error(Kind::ProbationFailed, body).model(model)).await;
    }

    /// Takes a version the signed targets no longer list off this device (see [`pulled`]):
    /// back to the previous version, with a `model-pulled` event. Not marked bad: the
    /// registry decided, not this device, and a version published again is taken again.
    /// `None` when the running version is not pulled, or cannot be left.
    async fn off_if_pulled(&mut self, model: &str, active: Option<&str>, offers: &[Offer]) -> Option<Value> {
        let from_registry =
            active.is_some_and(|v| self.store.current(model) == Some(self.store.version_dir(model, v)));
        let running = pulled::Running { active, from_registry, pinned: self.cfg.pin.contains_key(model) };
        if !pulled::is_pulled(running, model, offers) || self.shadows.get(model).is_some() {
            return None;
        }
        let version = active.unwrap_or_default().to_string();
        tracing::warn!(
            model,
            version,
            "the registry no longer lists the version serving; going back to the previous one"
        );
        let why = format!("version {version} was pulled from the registry");
        match self.roll_back_as(model, &why, json!({}), Kind::ModelPulled, false).await {
            Ok(body) => Some(json!({
                "active": body["to"],
                "pulled": version,
                "action": format!("pulled {version}: back on {}", body["to"].as_str().unwrap_or("?")),
            })),
            // Nothing to go back to: it keeps serving, and the check goes on as usual,
            // so that a newer version can still replace it.
            Err(e) => {
                tracing::error!(model, error = %e, "a pulled version keeps serving: nothing to go back to");
                None
            }
        }
    }

    /// Goes back to the previous version and marks the current one bad.
    async fn roll_back(&mut self, model: &str, why: &str, detail: Value) -> Result<Value, String> {
        self.roll_back_as(model, why, detail, Kind::ModelRolledBack, true).await
    }

    /// Goes back to the previous version, reported as `kind`; `mark_bad` keeps this
    /// device from taking the version it leaves again.
    async fn roll_back_as(
        &mut self,
        model: &str,
        why: &str,
        detail: Value,
        kind: Kind,
        mark_bad: bool,
    ) -> Result<Value, String> {
        let from = self.engine.model(model).map(|m| m.version().to_string());
        let mut state = self.state(model);
        let target = self
            .store
            .previous(model)
            .or_else(|| state.probation.as_ref().and_then(|p| p.previous.clone()))
            .or_else(|| self.configured.get(model).cloned())
            .filter(|p| p.is_dir())
            .ok_or_else(|| format!("`{model}` has no previous version to roll back to"))?;
        let t = target.clone();
        let model_limits = self.engine.model_limits();
        let loaded = tokio::task::spawn_blocking(move || LoadedModel::load_dir(&t, &model_limits))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the previous version in {} does not load: {e}", target.display()))?;
        let to = loaded.version().to_string();
        if let Some(v) = from.as_ref().filter(|_| mark_bad) {
            state.bad.insert(v.clone(), why.to_string());
        }
        state.probation = None;
        self.save_state(model, &state).map_err(|e| e.to_string())?;
        let switched = self.store.switch(model, &target, None);
        self.read_previous(model);
        switched.map_err(|e| e.to_string())?;
        self.engine.install(loaded);
        self.at_switch.remove(model);
        self.store.collect_garbage(model);
        let mut body = json!({"from": from, "to": to, "reason": why});
        if let (Some(obj), Value::Object(extra)) = (body.as_object_mut(), detail) {
            obj.extend(extra);
        }
        self.events.emit(Event::warning(kind, body.clone()).model(model)).await;
        self.publish_status();
        Ok(body)
    }

    async fn operator_rollback(&mut self, model: Option<String>) -> Result<Value, String> {
        let model = match model {
            Some(m) => m,
            None if self.cfg.models.len() == 1 => self.cfg.models[0].clone(),
            None => return Err(format!("say which model: one of {}", self.cfg.models.join(", "))),
        };
        if !self.cfg.models.contains(&model) {
            return Err(format!(
                "`{model}` is not a registry model here (ota.models: {})",
                self.cfg.models.join(", ")
            ));
        }
        self.roll_back(&model, "rolled back by the operator", json!({})).await
    }

    /// Loads a verified, self-tested version as the shadow candidate of `model`, beside
    /// the active version, and starts its run. Nothing is written to disk: a restart
    /// ends the run (the registry's shadow stage starts it again at the next check).
    async fn start_shadow(
        &mut self,
        model: &str,
        version: &str,
        dir: &Path,
        limits: crate::shadow::Limits,
        probation: probation::Limits,
        reason: &str,
    ) -> Result<(), OtaError> {
        limits.check().map_err(|e| OtaError::Package { path: dir.to_path_buf(), reason: e })?;
        let Some(active) = self.engine.model(model) else {
            return Err(OtaError::Deferred(format!(
                "`{model}` has no active version to compare a shadow candidate with"
            )));
        };
        self.set_doing(model, Some(&format!("loading {version} for a shadow run")));
        let loaded = self.load(dir).await?;
        crate::shadow::check_compatible(&active, &loaded).map_err(OtaError::Refused)?;
        let candidate = self.engine.install_shadow(loaded);
        let trial = crate::shadow::Trial::new(&self.engine, candidate, dir.to_path_buf(), limits, probation);
        let trial = self.shadows.start(trial);
        tracing::info!(model, version, active = %trial.active_version, reason, share_pct = trial.limits.share_pct, "shadow run started");
        Ok(())
    }

    /// Judges every shadow run in progress by its limits.
    async fn watch_shadows(&mut self) {
        let trials = self.shadows.all();
        if trials.is_empty() {
            return;
        }
        for trial in trials {
            let numbers = trial.numbers(&self.engine);
            match crate::shadow::report::judge(&numbers, &trial.limits, trial.elapsed()) {
                crate::shadow::Verdict::Continue => {}
                crate::shadow::Verdict::Promote(why) => {
                    let _ = self.end_shadow(&trial.model, true, &why, "limits").await;
                }
                crate::shadow::Verdict::Reject(why) => {
                    let _ = self.end_shadow(&trial.model, false, &why, "limits").await;
                }
            }
        }
        self.publish_status();
    }

    /// `update/shadow`: the operator's verdict on a shadow run.
    async fn shadow_command(&mut self, model: &str, promote: bool) -> Result<Value, String> {
        let why = if promote { "promoted by the operator" } else { "rejected by the operator" };
        self.end_shadow(model, promote, why, "command").await
    }

    /// Ends the shadow run of `model` with its report (a `shadow-report` event): the
    /// candidate is activated through the normal path (then on probation), or unloaded
    /// and marked bad here.
    async fn end_shadow(&mut self, model: &str, promote: bool, why: &str, by: &str) -> Result<Value, String> {
        let Some(trial) = self.shadows.get(model) else {
            return Err(format!("`{model}` has no shadow run in progress"));
        };
        let report = trial.report(&self.engine);
        self.shadows.end(model);
        self.engine.remove_shadow(model);
        let verdict = if promote { "promote" } else { "reject" };
        let mut detail = serde_json::to_value(&report).unwrap_or(Value::Null);
        if let Value::Object(o) = &mut detail {
            o.insert("verdict".into(), json!(verdict));
            o.insert("reason".into(), json!(why));
            o.insert("by".into(), json!(by));
        }
        let severity = if promote { Severity::Info } else { Severity::Warning };
        self.events.emit(Event::new(Kind::ShadowReport, severity, detail.clone()).model(model)).await;
        let outcome = if promote {
            let version = trial.version.clone();
            let activated = self
                .activate(
                    model,
                    &version,
                    &trial.dir,
                    trial.probation.clone(),
                    "shadow",
                    Some(report.numbers.clone()),
                )
                .await;
            self.set_doing(model, None);
            match activated {
                Ok(()) => "activated",
                Err(e) => {
                    let mut state = self.state(model);
                    state.bad.insert(version.clone(), format!("promoted from shadow but not activated: {e}"));
                    let _ = self.save_state(model, &state);
                    self.publish_status();
                    return Err(format!("version {version} was promoted but does not activate: {e}"));
                }
            }
        } else {
            let mut state = self.state(model);
            state.bad.insert(trial.version.clone(), format!("rejected in shadow: {why}"));
            self.save_state(model, &state).map_err(|e| e.to_string())?;
            self.store.collect_garbage(model);
            "rejected"
        };
        self.publish_status();
        Ok(
            json!({"model": model, "version": trial.version, "verdict": verdict, "action": outcome, "report": detail}),
        )
    }

    /// Rewrites the update task's part of the status document (`ota`).
    fn publish_status(&self) {
        let mut models = BTreeMap::new();
        for model in &self.cfg.models {
            let state = self.state(model);
            let active = self.engine.model(model).map(|m| m.version().to_string());
            // Rolled back: a newer version than the one serving failed here.
            let rolled_back = active.as_ref().is_some_and(|a| {
                state.bad.keys().any(|v| rollout::compare_versions(v, a) == std::cmp::Ordering::Greater)
            });
            let doing = self.doing.get(model).cloned();
            let phase = if let Some(d) = &doing {
                d.split(' ').next().unwrap_or("busy").to_string()
            } else if state.probation.is_some() {
                "probation".into()
            } else if active.is_none() {
                "missing".into()
            } else if rolled_back {
                "rolled-back".into()
            } else {
                "active".into()
            };
            let probation = state.probation.as_ref().map(|p| ProbationStatus {
                version: p.version.clone(),
                elapsed_s: p.elapsed().as_secs(),
                numbers: self.probation_numbers(model, p),
                baseline: p.baseline.clone(),
                limits: p.limits.clone(),
                shadow: p.shadow.clone(),
            });
            let entry = OtaModelStatus {
                state: phase,
                version: active,
                previous: self.previous.get(model).cloned().flatten(),
                kept: state.kept.clone(),
                bad: state.bad.clone(),
                doing,
                probation,
                shadow: self.shadows.get(model).map(|t| t.report(&self.engine)),
            };
            models.insert(model.clone(), entry);
        }
        let doc = OtaStatus {
            url: self.cfg.url.clone(),
            channel: self.cfg.channel.clone(),
            registry: self.updater.summary(),
            last_check: self.last_check.as_ref().map(|(ts, r)| LastCheck {
                ts: ts.clone(),
                ok: r.is_ok(),
                error: r.as_ref().err().cloned(),
            }),
            models,
        };
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = doc;
    }
}

/// An event's detail with a shadow run's numbers added, for a version promoted from one.
fn with_shadow(mut detail: Value, shadow: Option<&crate::shadow::Numbers>) -> Value {
    if let (Value::Object(o), Some(n)) = (&mut detail, shadow) {
        o.insert("shadow".into(), serde_json::to_value(n).unwrap_or(Value::Null));
    }
    detail
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}
