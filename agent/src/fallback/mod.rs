//! Cloud fallback: which requests go to a cloud endpoint (Open Inference Protocol v2),
//! sending them there within a circuit breaker and a request budget, and what happens
//! when the cloud cannot take them.
//!
//! Pre-processing always runs on the device (with the model's spec), so the cloud gets
//! the model's input tensors; its answer passes through the same post-processing as a
//! local one. Every result says where it was computed (`local`, `cloud`) and why.

pub mod answer;
pub mod breaker;
pub mod budget;
pub mod client;
pub mod hysteresis;
pub mod report;
pub mod resource;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::FallbackSection;
use crate::config::fallback::{CloudModelSection, ResourceSection, WhenUnavailable};
pub use answer::{Answer, Failure, Job, answer};
use breaker::{Breaker, Permit};
use budget::Budget;
use client::{CloudClient, Endpoint, Tensor};
use edge_infer::engine::spec::{InputFrom, ModelSpec};
use edge_infer::engine::{LoadedModel, Output};
use edge_infer::pipeline::PostProcessor;
use hysteresis::{Change, Latch};
pub use report::FallbackReport;
use report::{BudgetReport, EndpointReport};
use resource::Pressure;

/// Why a request goes to the cloud. These names are part of the result format.
pub const REASON_MODEL_MISSING: &str = "model-missing";
pub const REASON_QUEUE: &str = "queue";
pub const REASON_RESOURCE: &str = "resource";
pub const REASON_LOW_CONFIDENCE: &str = "low-confidence";
pub const REASON_INPUT_LIMIT: &str = "input-limit";
pub const REASON_FORCED: &str = "forced";
/// A local answer given because the cloud could not take the request.
pub const REASON_DEGRADED: &str = "degraded";

/// Why the fallback could not start (or a reload was refused).
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("fallback.model `{model}`: {reason}")]
    Setup { model: String, reason: String },
}

/// One model's cloud endpoint and routing policy.
pub struct CloudModel {
    pub name: String,
    /// Unique per build, so a stream can tell a cloud route from a local model.
    pub id: u64,
    /// Pre- and post-processing when the model is not installed locally.
    pub spec: Option<ModelSpec>,
    pub post: Option<PostProcessor>,
    section: CloudModelSection,
    client: CloudClient,
    breaker: Breaker,
    /// Recent local run time of this model, in microseconds (an f64's bits): with the
    /// queue depth, the expected wait of a new request.
    run_us: AtomicU64,
    queue: Mutex<Latch>,
    queue_engaged: AtomicBool,
}

impl CloudModel {
    pub fn min_confidence(&self) -> Option<f32> {
        self.section.min_confidence
    }

    /// The larger payload the cloud takes for this model, if any.
    pub fn max_payload_bytes(&self) -> Option<usize> {
        self.section.max_payload_bytes
    }

    /// Folds one local run time into the running estimate (weight 1/8 to the newest).
    pub fn observe_run(&self, run: Duration) {
        let now = run.as_secs_f64() * 1e6;
        let old = f64::from_bits(self.run_us.load(Ordering::Relaxed));
        let next = if old == 0.0 { now } else { old + (now - old) / 8.0 };
        self.run_us.store(next.to_bits(), Ordering::Relaxed);
    }

    /// How long a new request would wait for a worker: the requests ahead of it, each
    /// taking about the recent run time, shared among the workers. (The deadline is on
    /// the start of the run, so its own run time does not count.)
    fn expected_wait(&self, queue_depth: usize, threads: usize) -> Duration {
        let run_us = f64::from_bits(self.run_us.load(Ordering::Relaxed));
        Duration::from_secs_f64(run_us * 1e-6 * queue_depth as f64 / threads.max(1) as f64)
    }
}

/// Where one request runs.
pub enum Route {
    /// On the device; `cloud` is the model's endpoint, if any (for a cascade, to learn
    /// local run times, and, when `overflow`, to take the request if it misses its
    /// deadline in a queue that was not empty).
    Local { model: Arc<LoadedModel>, cloud: Option<Arc<CloudModel>>, overflow: bool },
    /// In the cloud, for `reason`; with the local model, if any, to degrade to.
    Cloud { cloud: Arc<CloudModel>, reason: &'static str, local: Option<Arc<LoadedModel>> },
}

impl Route {
    /// The spec that pre- and post-processes the request.
    pub fn spec(&self) -> Option<&ModelSpec> {
        match self {
            Route::Local { model, .. } | Route::Cloud { local: Some(model), .. } => Some(&model.spec),
            Route::Cloud { cloud, local: None, .. } => cloud.spec.as_ref(),
        }
    }

    pub fn post(&self) -> Option<&PostProcessor> {
        match self {
            Route::Local { model, .. } | Route::Cloud { local: Some(model), .. } => Some(model.post()),
            Route::Cloud { cloud, local: None, .. } => cloud.post.as_ref(),
        }
    }

    /// What serves the request: the local model's load id, else the endpoint's.
    pub fn serving(&self) -> u64 {
        match self {
            Route::Local { model, .. } | Route::Cloud { local: Some(model), .. } => model.id,
            Route::Cloud { cloud, local: None, .. } => cloud.id,
        }
    }
}

/// What a request's routing needs to know besides the model.
#[derive(Debug, Clone, Copy)]
pub struct Signals {
    /// The payload is beyond the local spec's limit (but within the cloud's).
    pub oversized: bool,
    /// The request asks for the cloud.
    pub forced: bool,
    /// Time the request may wait for a local worker.
    pub deadline: Duration,
    pub queue_depth: usize,
    pub threads: usize,
    /// Every local worker is busy: even an empty queue means a wait.
    pub all_busy: bool,
}

impl Signals {
    /// The engine's side of the signals (queue, workers) for a request that may wait
    /// `deadline`; the request's own (size, wish) start false.
    pub fn from_engine(engine: &edge_infer::engine::Engine, deadline: Duration) -> Signals {
        Signals {
            oversized: false,
            forced: false,
            deadline,
            queue_depth: engine.queue_depth(),
            threads: engine.threads(),
            all_busy: engine.all_busy(),
        }
    }
}

/// Why the cloud did not answer.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// `breaker-open`, `budget`, `busy`, or the client's error kind.
    pub kind: &'static str,
    pub message: String,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the cloud did not answer ({}): {}", self.kind, self.message)
    }
}

/// A fallback route engaged or cleared (`resource` for the device, `queue` per model).
#[derive(Debug, Clone)]
pub struct Transition {
    pub engaged: bool,
    pub reason: &'static str,
    pub model: Option<String>,
    pub detail: String,
}

/// Counters for `/status`, `/metrics` and telemetry.
#[derive(Default)]
struct Counters {
    /// Requests routed to the cloud, by reason.
    routed: BTreeMap<&'static str, u64>,
    /// Cloud answers.
    answered: u64,
    /// Cloud failures and refusals, by kind.
    unavailable: BTreeMap<&'static str, u64>,
    /// Local answers given in place of the cloud.
    degraded: u64,
    /// Requests rejected because neither could answer.
    rejected: u64,
    /// Local answers judged by a cascade (of which `routed["low-confidence"]` deferred).
    judged: u64,
    /// Answers computed in the cloud, per model and reason (for telemetry).
    by_model: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The configured endpoints; replaced whole on reload.
struct Setup {
    models: BTreeMap<String, Arc<CloudModel>>,
    when_unavailable: WhenUnavailable,
    hold: Duration,
    resource: ResourceSection,
}

/// The cloud fallback of one agent. It always exists, so that a reload can add
/// endpoints to an agent started without; with none, every route is local.
pub struct Fallback {
    setup: ArcSwap<Setup>,
    /// Survives reloads: a reload must not hand out a fresh budget.
    budget: Budget,
    pressure: Pressure,
    /// Models forced to the cloud by a command, until when.
    forced: Mutex<BTreeMap<String, Instant>>,
    any_forced: AtomicBool,
    counters: Mutex<Counters>,
    next_request: AtomicU64,
    transitions: mpsc::Sender<Transition>,
    /// Bytes to and from the endpoints (crate::usage), kept across reloads.
    wire: Arc<crate::usage::Counter>,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("models", &self.setup.load().models.keys().collect::<Vec<_>>())
            .finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 40);

/// How many transitions may wait for the event task before new ones are dropped.
const TRANSITION_QUEUE: usize = 64;

/// A counter map with owned keys, as the status document (which is also read back)
/// holds it.
fn owned(map: &BTreeMap<&'static str, u64>) -> BTreeMap<String, u64> {
    map.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

impl Fallback {
    /// Builds the endpoints (reading token and certificate files now, so a bad file is
    /// a start-up error, not a failure at the first request). The receiver gets every
    /// route engaged or cleared.
    pub fn new(
        cfg: Option<&FallbackSection>,
    ) -> Result<(Fallback, mpsc::Receiver<Transition>), FallbackError> {
        Fallback::counting_in(cfg, Arc::default())
    }

    /// [`Fallback::new`], its endpoints' traffic counted in `wire`.
    pub fn counting_in(
        cfg: Option<&FallbackSection>,
        wire: Arc<crate::usage::Counter>,
    ) -> Result<(Fallback, mpsc::Receiver<Transition>), FallbackError> {
        let empty = FallbackSection::default();
        let cfg = cfg.unwrap_or(&empty);
        let setup = build(cfg, &BTreeMap::new(), &wire)?;
        let (tx, rx) = mpsc::channel(TRANSITION_QUEUE);
        let fallback = Fallback {
            setup: ArcSwap::from_pointee(setup),
            budget: Budget::new(cfg.budget_per_hour, cfg.budget_per_day),
            pressure: Pressure::default(),
            forced: Mutex::new(BTreeMap::new()),
            any_forced: AtomicBool::new(false),
            counters: Mutex::new(Counters::default()),
            next_request: AtomicU64::new(1),
            transitions: tx,
            wire,
        };
        Ok((fallback, rx))
    }

    /// Applies a reloaded `[fallback]`: endpoints whose settings did not change keep
    /// their breaker and estimates; the budget keeps what was spent.
    pub fn reconfigure(&self, cfg: Option<&FallbackSection>) -> Result<(), FallbackError> {
        let empty = FallbackSection::default();
        let cfg = cfg.unwrap_or(&empty);
        let next = build(cfg, &self.setup.load().models, &self.wire)?;
        self.budget.set_limits(cfg.budget_per_hour, cfg.budget_per_day);
        self.setup.store(Arc::new(next));
        Ok(())
    }

    /// Any endpoint configured.
    pub fn is_configured(&self) -> bool {
        !self.setup.load().models.is_empty()
    }

    /// The endpoint for `model`, if any.
    pub fn cloud(&self, model: &str) -> Option<Arc<CloudModel>> {
        self.setup.load().models.get(model).cloned()
    }

    pub fn when_unavailable(&self) -> WhenUnavailable {
        self.setup.load().when_unavailable
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn transition(&self, t: Transition) {
        if self.transitions.try_send(t).is_err() {
            tracing::warn!("fallback transition not reported: the event queue is full");
        }
    }

    /// Where a request for `model` runs, given the local model (if installed). Cheap:
    /// a map lookup, a few atomics and one uncontended lock per request.
    pub fn route(&self, model: &str, local: Option<Arc<LoadedModel>>, s: &Signals) -> Option<Route> {
        let setup = self.setup.load();
        let cloud = setup.models.get(model).cloned();
        let route = match (cloud, local) {
            (None, None) => return None,
            (None, Some(model)) => return Some(Route::Local { model, cloud: None, overflow: false }),
            (Some(cloud), None) => Route::Cloud { cloud, reason: REASON_MODEL_MISSING, local: None },
            // Recurrent state cannot be carried to a stateless endpoint.
            (Some(cloud), Some(model)) if model.is_stateful() => {
                return Some(Route::Local { model, cloud: Some(cloud), overflow: false });
            }
            (Some(cloud), Some(model)) => match self.reason(&setup, &cloud, s) {
                Some(reason) => Route::Cloud { cloud, reason, local: Some(model) },
                None => {
                    // The estimate is a guess: a request queued behind others may still
                    // miss its deadline, and then the cloud takes it.
                    let overflow = cloud.section.queue && (s.queue_depth > 0 || s.all_busy);
                    return Some(Route::Local { model, cloud: Some(cloud), overflow });
                }
            },
        };
        if let Route::Cloud { reason, .. } = &route {
            self.count(|c| *c.routed.entry(reason).or_default() += 1);
        }
        Some(route)
    }

    /// The reason to send a request for an installed model to the cloud, if any, in
    /// order of precedence.
    fn reason(&self, setup: &Setup, cloud: &CloudModel, s: &Signals) -> Option<&'static str> {
        if cloud.section.force || s.forced || self.is_forced(&cloud.name) {
            return Some(REASON_FORCED);
        }
        if s.oversized {
            return Some(REASON_INPUT_LIMIT);
        }
        if cloud.section.resource && self.pressure.engaged() {
            return Some(REASON_RESOURCE);
        }
        if cloud.section.queue {
            let wait = cloud.expected_wait(s.queue_depth, s.threads);
            let engaged =
                self.feed_queue_latch(cloud, wait > s.deadline, wait * 2 < s.deadline, setup.hold, || {
                    format!(
                        "expected wait {} ms ({} queued) against a deadline of {} ms",
                        wait.as_millis(),
                        s.queue_depth,
                        s.deadline.as_millis()
                    )
                });
            if engaged {
                return Some(REASON_QUEUE);
            }
        }
        None
    }

    /// A request missed its deadline (or found the queue full) here: the queue route
    /// engages, as if the estimate had said so.
    pub(crate) fn overflowed(&self, cloud: &CloudModel, why: &str) {
        self.count(|c| *c.routed.entry(REASON_QUEUE).or_default() += 1);
        let hold = self.setup.load().hold;
        self.feed_queue_latch(cloud, true, false, hold, || {
            format!("a request missed the local queue: {why}")
        });
    }

    /// Feeds one queue measurement to the endpoint's latch, reports a change as a
    /// transition (described by `detail`), and says whether the route is engaged.
    fn feed_queue_latch(
        &self,
        cloud: &CloudModel,
        over: bool,
        calm: bool,
        hold: Duration,
        detail: impl FnOnce() -> String,
    ) -> bool {
        let (change, engaged) = {
            let mut latch = cloud.queue.lock().unwrap_or_else(|p| p.into_inner());
            let change = latch.update(over, calm, hold, Instant::now());
            cloud.queue_engaged.store(latch.is_engaged(), Ordering::Relaxed);
            (change, latch.is_engaged())
        };
        if let Some(c) = change {
            self.transition(Transition {
                engaged: c == Change::Engaged,
                reason: REASON_QUEUE,
                model: Some(cloud.name.clone()),
                detail: detail(),
            });
        }
        engaged
    }

    fn is_forced(&self, model: &str) -> bool {
        if !self.any_forced.load(Ordering::Relaxed) {
            return false;
        }
        let mut forced = self.forced.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        forced.retain(|_, until| *until > now);
        self.any_forced.store(!forced.is_empty(), Ordering::Relaxed);
        forced.contains_key(model)
    }

    /// Forces `model` to the cloud for `duration` (a command), or stops forcing it.
    pub fn force(&self, model: &str, duration: Option<Duration>) -> Result<(), String> {
        if !self.setup.load().models.contains_key(model) {
            return Err(format!(
                "`{model}` has no cloud endpoint; configure one in [[fallback.model]] first (configured: {})",
                self.setup.load().models.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let mut forced = self.forced.lock().unwrap_or_else(|p| p.into_inner());
        match duration {
            Some(d) => {
                forced.insert(model.to_string(), Instant::now() + d);
            }
            None => {
                forced.remove(model);
            }
        }
        self.any_forced.store(!forced.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    /// Infers `data` (the data input's values, pre-processed for `spec`) in the cloud.
    /// Returns the outputs and the version the server named.
    pub async fn infer(
        &self,
        cloud: &CloudModel,
        spec: &ModelSpec,
        data: Vec<f32>,
        shape: Option<&[usize]>,
    ) -> Result<(Vec<Output>, Option<String>), Unavailable> {
        let result = self.infer_inner(cloud, spec, data, shape).await;
        match &result {
            Ok(_) => self.count(|c| c.answered += 1),
            Err(u) => self.count(|c| *c.unavailable.entry(u.kind).or_default() += 1),
        }
        result
    }

    async fn infer_inner(
        &self,
        cloud: &CloudModel,
        spec: &ModelSpec,
        data: Vec<f32>,
        shape: Option<&[usize]>,
    ) -> Result<(Vec<Output>, Option<String>), Unavailable> {
        if let Permit::Open { retry_in } = cloud.breaker.allow(Instant::now()) {
            return Err(Unavailable {
                kind: "breaker-open",
                message: format!(
                    "the circuit breaker of `{}` is open after repeated failures; next try in {} ms",
                    cloud.name,
                    retry_in.as_millis()
                ),
            });
        }
        if let Err(spent) = self.budget.try_take(SystemTime::now()) {
            // Not the endpoint's fault: give back the breaker's permit (a probe slot).
            cloud.breaker.release(Instant::now());
            return Err(Unavailable { kind: "budget", message: spent.to_string() });
        }
        let inputs = tensors(spec, data, shape);
        let id = format!("ea-{}", self.next_request.fetch_add(1, Ordering::Relaxed));
        let reply = match cloud.client.infer(&id, &inputs, &[]).await {
            Ok(reply) => reply,
            Err(e) => {
                if e.counts_as_failure() {
                    cloud.breaker.failure(Instant::now());
                } else {
                    cloud.breaker.release(Instant::now());
                }
                return Err(Unavailable { kind: e.kind(), message: e.to_string() });
            }
        };
        let outputs: Vec<Output> = reply
            .outputs
            .into_iter()
            .map(|t| Output { name: t.name, shape: t.shape, values: t.data })
            .collect();
        // An answer post-processing cannot read is the endpoint's failure too: a
        // different model behind the URL, or a broken one.
        if let Err(reason) = check_outputs(spec, &outputs) {
            cloud.breaker.failure(Instant::now());
            return Err(Unavailable {
                kind: "shape",
                message: format!(
                    "{}: {reason}; check the model behind the endpoint",
                    cloud.client.infer_url()
                ),
            });
        }
        cloud.breaker.success(Instant::now());
        Ok((outputs, reply.model_version))
    }

    pub(crate) fn count_cloud_answer(&self, model: &str, reason: &'static str) {
        self.count(|c| {
            *c.by_model.entry(model.to_string()).or_default().entry(reason.to_string()).or_default() += 1
        });
    }

    /// Answers computed in the cloud since start, per model and reason.
    pub fn cloud_answers(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner()).by_model.clone()
    }

    pub(crate) fn count_degraded(&self) {
        self.count(|c| c.degraded += 1);
    }

    pub(crate) fn count_rejected(&self) {
        self.count(|c| c.rejected += 1);
    }

    pub(crate) fn count_judged(&self, deferred: bool) {
        self.count(|c| {
            c.judged += 1;
            if deferred {
                *c.routed.entry(REASON_LOW_CONFIDENCE).or_default() += 1;
            }
        });
    }

    /// Samples the device every `sample_ms` while resource limits are configured, and
    /// reports transitions, until `token` fires.
    pub async fn watch_resources(self: Arc<Self>, state_dir: std::path::PathBuf, token: CancellationToken) {
        let mut sampler = crate::telemetry::SystemSampler::new(&state_dir);
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        loop {
            let setup = self.setup.load_full();
            if setup.resource.any() {
                let cgroup = crate::telemetry::cgroup_memory_available();
                let sample = resource::Sample::from_reading(&sampler.sample(), cgroup, cpus);
                if let Some((change, detail)) =
                    self.pressure.update(&setup.resource, sample, setup.hold, Instant::now())
                {
                    self.transition(Transition {
                        engaged: change == Change::Engaged,
                        reason: REASON_RESOURCE,
                        model: None,
                        detail,
                    });
                }
            } else if self.pressure.engaged() {
                // Limits removed by a reload: with none to judge, any sample is calm.
                let any = resource::Sample::default();
                if let Some((_, detail)) =
                    self.pressure.update(&setup.resource, any, Duration::ZERO, Instant::now())
                {
                    self.transition(Transition {
                        engaged: false,
                        reason: REASON_RESOURCE,
                        model: None,
                        detail,
                    });
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(setup.resource.sample_ms)) => {}
            }
        }
    }

    /// The fallback's state for `/status` and telemetry; `None` when nothing is
    /// configured.
    pub fn report(&self) -> Option<FallbackReport> {
        let setup = self.setup.load();
        if setup.models.is_empty() {
            return None;
        }
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let (used_hour, used_day) = self.budget.used(SystemTime::now());
        let (per_hour, per_day) = self.budget.limits();
        let now = Instant::now();
        let forced = self.forced.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let endpoints = setup
            .models
            .iter()
            .map(|(name, m)| {
                let run_us = f64::from_bits(m.run_us.load(Ordering::Relaxed));
                let endpoint = EndpointReport {
                    url: m.client.infer_url().to_string(),
                    breaker: m.breaker.state(),
                    in_flight: m.client.in_flight(),
                    force: m.section.force,
                    forced_for_s: forced.get(name).map(|u| u.saturating_duration_since(now).as_secs()),
                    queue_engaged: m.queue_engaged.load(Ordering::Relaxed),
                    local_run_ms: (run_us / 10.0).round() / 100.0,
                };
                (name.clone(), endpoint)
            })
            .collect();
        Some(FallbackReport {
            routed: owned(&c.routed),
            answered: c.answered,
            unavailable: owned(&c.unavailable),
            degraded: c.degraded,
            rejected: c.rejected,
            cascade_judged: c.judged,
            budget: BudgetReport { used_hour, used_day, per_hour, per_day },
            resource: self.pressure.report(),
            endpoints,
        })
    }

    /// Counters as Prometheus metrics: name, type, help, and samples (labels, value).
    /// Label values are reasons, error kinds and model names: ids with nothing to escape.
    pub fn metrics(&self) -> Vec<Metric> {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let by = |label: &str, map: &BTreeMap<&'static str, u64>| -> Vec<(String, f64)> {
            map.iter().map(|(k, n)| (format!("{{{label}=\"{k}\"}}"), *n as f64)).collect()
        };
        let plain = |n: u64| vec![(String::new(), n as f64)];
        let mut out = vec![
            Metric::counter(
                "edge_agent_fallback_routed_total",
                "Requests routed to the cloud, by reason.",
                by("reason", &c.routed),
            ),
            Metric::counter(
                "edge_agent_fallback_unavailable_total",
                "Cloud requests that got no answer, by kind.",
                by("kind", &c.unavailable),
            ),
            Metric::counter(
                "edge_agent_fallback_answered_total",
                "Answers from the cloud.",
                plain(c.answered),
            ),
            Metric::counter(
                "edge_agent_fallback_degraded_total",
                "Local answers given because the cloud could not answer.",
                plain(c.degraded),
            ),
            Metric::counter(
                "edge_agent_fallback_rejected_total",
                "Requests neither the cloud nor the device answered.",
                plain(c.rejected),
            ),
        ];
        drop(c);
        let (hour, day) = self.budget.used(SystemTime::now());
        out.push(Metric::gauge(
            "edge_agent_fallback_budget_used",
            "Cloud requests counted against the budget.",
            vec![("{window=\"hour\"}".into(), hour as f64), ("{window=\"day\"}".into(), day as f64)],
        ));
        out.push(Metric::gauge(
            "edge_agent_fallback_resource_engaged",
            "1 while the device is beyond a resource limit.",
            vec![(String::new(), if self.pressure.engaged() { 1.0 } else { 0.0 })],
        ));
        let breakers = self
            .setup
            .load()
            .models
            .iter()
            .map(|(name, m)| {
                let open = !matches!(m.breaker.state(), breaker::BreakerState::Closed);
                (format!("{{model=\"{name}\"}}"), if open { 1.0 } else { 0.0 })
            })
            .collect();
        out.push(Metric::gauge(
            "edge_agent_fallback_breaker_open",
            "1 while an endpoint's breaker is not closed.",
            breakers,
        ));
        out
    }
}

/// One Prometheus metric.
pub struct Metric {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    pub samples: Vec<(String, f64)>,
}

impl Metric {
    fn counter(name: &'static str, help: &'static str, samples: Vec<(String, f64)>) -> Metric {
        Metric { name, kind: "counter", help, samples }
    }
    fn gauge(name: &'static str, help: &'static str, samples: Vec<(String, f64)>) -> Metric {
        Metric { name, kind: "gauge", help, samples }
    }
}

/// Builds the endpoints of `cfg`, reusing those of `old` whose settings are the same.
fn build(
    cfg: &FallbackSection,
    old: &BTreeMap<String, Arc<CloudModel>>,
    wire: &Arc<crate::usage::Counter>,
) -> Result<Setup, FallbackError> {
    let mut models = BTreeMap::new();
    for m in &cfg.models {
        if let Some(same) = old.get(&m.model).filter(|o| o.section == *m) {
            models.insert(m.model.clone(), same.clone());
            continue;
        }
        let setup = |reason: String| FallbackError::Setup { model: m.model.clone(), reason };
        let spec = match &m.spec {
            Some(dir) => Some(ModelSpec::load_dir(dir).map_err(|e| setup(e.to_string()))?.spec),
            None => None,
        };
        if spec.as_ref().is_some_and(|s| s.inputs.iter().any(|i| i.from == InputFrom::State)) {
            return Err(setup(
                "the model keeps recurrent state between calls, which a stateless cloud endpoint cannot carry".into(),
            ));
        }
        let endpoint = Endpoint {
            url: m.url.clone(),
            model: m.remote_model.clone().unwrap_or_else(|| m.model.clone()),
            version: m.remote_version.clone(),
            bearer_token_file: m.token_file.clone(),
            ca_file: m.ca_file.clone(),
            client_cert: m.cert_file.clone(),
            client_key: m.key_file.clone(),
            connect_timeout: Duration::from_millis(m.connect_timeout_ms),
            timeout: Duration::from_millis(m.timeout_ms),
            max_concurrency: m.max_concurrency,
            retries: m.retries,
            backoff: Duration::from_millis(50),
        };
        let client = CloudClient::new(endpoint).map_err(|e| setup(e.to_string()))?.counting_in(wire.clone());
        let post = spec.as_ref().map(|s| PostProcessor::new(&s.post));
        models.insert(
            m.model.clone(),
            Arc::new(CloudModel {
                name: m.model.clone(),
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                spec,
                post,
                section: m.clone(),
                client,
                breaker: Breaker::new(cfg.failures_to_open, Duration::from_secs(cfg.open_s), 1),
                run_us: AtomicU64::new(0),
                queue: Mutex::new(Latch::default()),
                queue_engaged: AtomicBool::new(false),
            }),
        );
    }
    Ok(Setup {
        models,
        when_unavailable: cfg.when_unavailable,
        hold: Duration::from_secs(cfg.hold_s),
        resource: cfg.resource.clone(),
    })
}

/// The request's tensors: the data input (with `shape` when the request has one), and
/// the spec's constant inputs (which the device would otherwise add itself).
fn tensors(spec: &ModelSpec, data: Vec<f32>, shape: Option<&[usize]>) -> Vec<Tensor> {
    let datatype = |i: &edge_infer::engine::spec::InputSpec| crate::oip::datatype(i.dtype.name()).to_string();
    let mut data = Some(data);
    spec.inputs
        .iter()
        .filter_map(|i| {
            let (values, given) = match i.from {
                InputFrom::Data => (data.take()?, shape),
                InputFrom::Const => (i.value.as_ref()?.iter().map(|v| *v as f32).collect(), None),
                InputFrom::State => return None,
            };
            // The request's shape (checked against the spec before it got here), else a
            // range dimension takes the size the data's length gives it.
            let shape = match given {
                Some(s) => s.to_vec(),
                None => i.shape_for(values.len()).unwrap_or_else(|| i.shape.clone()),
            };
            Some(Tensor { name: i.name.clone(), shape, datatype: datatype(i), data: values })
        })
        .collect()
}

/// Checks that post-processing can read the cloud's outputs: the named output is
/// there, and a classifier's scores match its labels.
fn check_outputs(spec: &ModelSpec, outputs: &[Output]) -> Result<(), String> {
    let Some(i) = post_output(spec, outputs) else {
        return Err(match &spec.post.output {
            Some(name) => format!("the answer has no output `{name}`, which post-processing reads"),
            None => "the answer has no outputs".into(),
        });
    };
    let n = outputs[i].values.len();
    let labels = spec.post.labels.len();
    if n == 0 {
        return Err(format!("output `{}` is empty", outputs[i].name));
    }
    if labels > 2 && n != labels {
        return Err(format!(
            "output `{}` has {n} values but the spec names {labels} classes",
            outputs[i].name
        ));
    }
    Ok(())
}

/// The spec that pre-processes a request for a model, and what serves it (for a
/// stream's windows): the installed model's, else the cloud endpoint's own spec.
pub fn serving_spec<'a>(
    local: Option<&'a Arc<LoadedModel>>,
    cloud: Option<&'a Arc<CloudModel>>,
) -> Option<(u64, &'a ModelSpec)> {
    match (local, cloud) {
        (Some(m), _) => Some((m.id, &m.spec)),
        (None, Some(c)) => c.spec.as_ref().map(|s| (c.id, s)),
        (None, None) => None,
    }
}

/// The index of the output post-processing reads: the one the spec names, else the
/// first.
pub fn post_output(spec: &ModelSpec, outputs: &[Output]) -> Option<usize> {
    match &spec.post.output {
        Some(name) => outputs.iter().position(|o| &o.name == name),
        None => (!outputs.is_empty()).then_some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Arc<LoadedModel> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models/vibration");
        Arc::new(LoadedModel::load_dir(&dir, &Default::default()).unwrap())
    }

    fn fallback(extra: &str) -> Fallback {
        let section: FallbackSection = toml::from_str(&format!(
            "hold_s = 60\n[[model]]\nmodel = \"vibration\"\nurl = \"http://127.0.0.1:9\"\n{extra}"
        ))
        .unwrap();
        Fallback::new(Some(&section)).unwrap().0
    }

    fn signals() -> Signals {
        Signals {
            oversized: false,
            forced: false,
            deadline: Duration::from_millis(10),
            queue_depth: 0,
            threads: 1,
            all_busy: false,
        }
    }

    fn reason(r: Option<Route>) -> Option<&'static str> {
        match r {
            Some(Route::Cloud { reason, .. }) => Some(reason),
            Some(Route::Local { .. }) => Some("local"),
            None => None,
        }
    }

    #[test]
    fn reasons_in_order_of_precedence() {
        let f = fallback("");
        let m = demo();
        let route = |s: Signals| reason(f.route("vibration", Some(m.clone()), &s));
        assert_eq!(route(signals()), Some("local"));
        assert_eq!(reason(f.route("vibration", None, &signals())), Some(REASON_MODEL_MISSING));
        assert_eq!(reason(f.route("other", None, &signals())), None);
        assert_eq!(reason(f.route("other", Some(m.clone()), &signals())), Some("local"));
        assert_eq!(route(Signals { oversized: true, ..signals() }), Some(REASON_INPUT_LIMIT));
        assert_eq!(route(Signals { oversized: true, forced: true, ..signals() }), Some(REASON_FORCED));
        // 8 queued requests of 5 ms each on one worker: 40 ms > 10 ms.
        f.cloud("vibration").unwrap().observe_run(Duration::from_millis(5));
        assert_eq!(route(Signals { queue_depth: 8, ..signals() }), Some(REASON_QUEUE));
        // The queue emptied, but the route holds until calm for hold_s.
        assert_eq!(route(signals()), Some(REASON_QUEUE));
        f.force("vibration", Some(Duration::from_secs(60))).unwrap();
        assert_eq!(route(signals()), Some(REASON_FORCED));
        f.force("vibration", None).unwrap();
        assert!(f.force("other", Some(Duration::from_secs(1))).unwrap_err().contains("no cloud endpoint"));
        let report = f.report().unwrap();
        assert_eq!(report.routed.get("queue"), Some(&2), "{report:?}");
        assert_eq!(report.routed.get("input-limit"), Some(&1), "{report:?}");
        assert!(report.endpoints["vibration"].queue_engaged, "{report:?}");
    }

    /// An input whose height and width both vary goes to the cloud with the request's
    /// shape (its length fits many); without one, a range takes the size the length gives.
    #[test]
    fn the_cloud_gets_the_requests_shape() {
        let range = "{ min = 32, max = 256, multiple_of = 32 }";
        let text = format!(
            "name = \"det\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 3, {range}, {range}]\n\
             [pre]\nformat = \"image\"\n[pre.image]\nchannels = 3\nlimit_side = 64\n"
        );
        let spec = ModelSpec::parse(&text, std::path::Path::new("model.toml")).unwrap();
        let t = tensors(&spec, vec![0.0; 3 * 64 * 96], Some(&[1, 3, 64, 96]));
        assert_eq!((t.len(), t[0].name.as_str(), t[0].shape.as_slice()), (1, "x", &[1, 3, 64, 96][..]));
        let one = ModelSpec::parse(
            "name = \"rec\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 3, 48, { min = 32, max = 320 }]\n",
            std::path::Path::new("model.toml"),
        )
        .unwrap();
        assert_eq!(tensors(&one, vec![0.0; 3 * 48 * 100], None)[0].shape, [1, 3, 48, 100]);
    }

    #[test]
    fn endpoints_can_be_switched_off_per_reason_and_reload_keeps_the_budget() {
        let f = fallback("queue = false\nresource = false");
        let m = demo();
        f.cloud("vibration").unwrap().observe_run(Duration::from_millis(5));
        let s = Signals { queue_depth: 100, ..signals() };
        assert_eq!(reason(f.route("vibration", Some(m.clone()), &s)), Some("local"));
        assert!(f.budget.try_take(SystemTime::now()).is_ok());
        let section: FallbackSection = toml::from_str("budget_per_hour = 1\n").unwrap();
        f.reconfigure(Some(&section)).unwrap();
        assert!(f.report().is_none(), "no endpoint left");
        assert!(f.budget.try_take(SystemTime::now()).is_err(), "1 spent before the reload, limit 1 now");
        assert_eq!(reason(f.route("vibration", Some(m), &s)), Some("local"));
    }
}
