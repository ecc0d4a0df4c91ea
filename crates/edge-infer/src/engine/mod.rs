//! The inference engine: models optimised once, run on a pool of worker threads fed by a
//! bounded queue, with deadlines, counted rejections and recurrent state per stream.
//!
//! Callers submit a [`Request`] and get a [`Ticket`] back at once: either the request is
//! queued, or it is rejected right away (queue full, unknown model, bad input length).
//! tract is CPU-bound, so it runs on dedicated threads and never on the async executor;
//! tickets can be awaited from async code or waited on from plain threads.

pub mod budget;
mod detect_spec;
pub mod dsp_spec;
mod dtype;
pub mod error;
mod fold;
pub mod fuse;
pub mod inline;
pub mod intra;
mod load;
pub mod model;
pub mod nnef;
#[cfg(feature = "onnx")]
pub mod onnx_file;
pub mod panic;
pub mod plans;
mod pool;
pub mod post_spec;
mod prepared;
mod resize_spec;
mod run_states;
pub mod spec;
mod spec_check;
pub mod stats;
pub mod streams;

// The engine on real ONNX models: only with the `onnx` feature.
#[cfg(all(test, feature = "onnx"))]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;
use tract_nnef::prelude::*;

pub use budget::ModelLimits;
pub use error::{InferError, LoadError, SpecError};
pub use load::{Want, check_sizes};
pub use model::{LoadedModel, ModelFormat};
pub use stats::{ModelReport, Percentiles};

use run_states::RunStates;
use stats::Stats;
use streams::{StreamTable, TakeError};

/// Sizing of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Worker threads, each running one request at a time.
    pub threads: usize,
    /// Requests that may wait for a worker; one more is rejected.
    pub queue: usize,
    /// Live streams with recurrent state; the least recently used is evicted beyond it.
    pub max_streams: usize,
    /// How long an idle worker (and a blocking waiter) polls before it sleeps. Waking a
    /// sleeping thread costs tens of microseconds on small machines, twice per request;
    /// a short poll saves that under load and costs nothing measurable when idle.
    pub spin: Duration,
    /// The most memory one model may need; larger models are refused at load.
    pub model_limits: ModelLimits,
    /// Models whose typical run is shorter run on a blocking caller's own thread
    /// ([`inline`]); zero sends every blocking caller's request to a worker.
    pub inline_below: Duration,
    /// Models whose typical run is shorter run on an async caller's executor thread
    /// ([`inline`]); zero sends every async caller's request to a worker.
    pub inline_async_below: Duration,
    /// Threads one model run may use for its matrix products ([`intra`]); 1 for none.
    pub intra_threads: usize,
}

/// Default of [`EngineConfig::spin`].
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: 1,
            queue: 64,
            max_streams: 1024,
            spin: DEFAULT_SPIN,
            model_limits: ModelLimits::default(),
            inline_below: inline::DEFAULT_INLINE_BELOW,
            inline_async_below: inline::DEFAULT_INLINE_ASYNC_BELOW,
            intra_threads: 1,
        }
    }
}

/// One inference request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The name of the model to run, as installed.
    pub model: String,
    /// Stream id for stateful models; requests without one share the stream `default`.
    pub stream: Option<String>,
    /// The data input's values, already pre-processed, flat in row-major order.
    pub data: Vec<f32>,
    /// The request fails with a deadline error if no worker has started it by then.
    pub deadline: Instant,
    /// Start the stream's recurrent state afresh before this call.
    pub reset: bool,
    /// The data input's shape, for an input with dimensions that vary (an image whose
    /// width and height both vary); `None` works it out from the number of values, as
    /// it can for a fixed shape or one varying dimension.
    pub shape: Option<Vec<usize>>,
}

/// One output tensor, as `f32`.
#[derive(Debug, Clone)]
pub struct Output {
    /// The graph output's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, flat in row-major order.
    pub values: Vec<f32>,
}

/// The result of one request.
pub struct Response {
    /// The model (and so the version) that computed it.
    pub model: Arc<LoadedModel>,
    /// Every output of the model, in graph order.
    pub outputs: Vec<Output>,
    /// Time spent waiting for a worker.
    pub queued: Duration,
    /// Time spent running the model.
    pub run: Duration,
}

impl Response {
    /// The output read by post-processing.
    pub fn post_output(&self) -> Option<&Output> {
        self.outputs.get(self.model.post_output())
    }

    /// The values post-processing reads (empty if the model gave no such output).
    pub fn post_values(&self) -> &[f32] {
        self.post_output().map(|o| o.values.as_slice()).unwrap_or(&[])
    }
}

type Reply = Result<Response, InferError>;

struct Job {
    model: Arc<LoadedModel>,
    /// The request's stream, or `default` (borrowed: no allocation per request).
    stream: std::borrow::Cow<'static, str>,
    data: Vec<f32>,
    /// The data input's shape, as [`check_length`] resolved it.
    shape: Vec<usize>,
    deadline: Instant,
    reset: bool,
    submitted: Instant,
    /// Where a worker sends the answer; `None` for a run on the caller's own thread.
    reply: Option<oneshot::Sender<Reply>>,
    /// A shadow run of a candidate version: not counted in the model's stats (the
    /// caller keeps its own), and taken only when no other job waits.
    shadow: bool,
}

impl Job {
    /// The job for `req` on `model`, taking its data (left empty in `req`), and the
    /// receiver of its reply. `shape` is what [`check_length`] resolved.
    fn new(
        model: Arc<LoadedModel>,
        req: &mut Request,
        shape: Vec<usize>,
        shadow: bool,
    ) -> (Job, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        (Job { reply: Some(reply), shadow, ..Job::here(model, req, shape) }, rx)
    }

    /// The job for `req` on `model` run by its caller: no reply channel.
    fn here(model: Arc<LoadedModel>, req: &mut Request, shape: Vec<usize>) -> Job {
        Job {
            model,
            stream: req.stream.take().map_or(std::borrow::Cow::Borrowed("default"), std::borrow::Cow::Owned),
            data: std::mem::take(&mut req.data),
            shape,
            deadline: req.deadline,
            reset: req.reset,
            submitted: Instant::now(),
            reply: None,
            shadow: false,
        }
    }
}

/// Refuses input of a length the model's data input cannot take; for input that fits,
/// the shape of the data input it fills (the request's own, taken, or the one its length
/// fits): worked out once, here, for the run.
fn check_length(model: &LoadedModel, req: &mut Request) -> Result<Vec<usize>, InferError> {
    let input = model.spec.data_input();
    if let Some(shape) = req.shape.take() {
        let source = if !input.accepts(&shape) {
            crate::pipeline::InputError::ShapeRange {
                input: input.name.clone(),
                got: shape,
                want: input.shape_text(),
            }
        } else if budget::elements(&shape) != Some(req.data.len()) {
            crate::pipeline::InputError::LengthRange {
                input: input.name.clone(),
                got: req.data.len(),
                shape: format!("{shape:?}, as the request says"),
            }
        } else {
            return Ok(shape);
        };
        return Err(InferError::Input { model: req.model.clone(), source });
    }
    if let Some(shape) = input.shape_for(req.data.len()) {
        return Ok(shape);
    }
    let source = if input.ranges.is_empty() {
        crate::pipeline::InputError::Length {
            input: input.name.clone(),
            got: req.data.len(),
            want: input.len(),
            shape: input.shape.clone(),
        }
    } else {
        crate::pipeline::InputError::LengthRange {
            input: input.name.clone(),
            got: req.data.len(),
            shape: input.shape_text(),
        }
    };
    Err(InferError::Input { model: req.model.clone(), source })
}

/// A queued request's result, to wait for.
pub struct Ticket {
    rx: oneshot::Receiver<Reply>,
    deadline: Instant,
    model: String,
    spin: Duration,
}

/// Extra time a caller waits past the deadline for a request a worker has started: a run
/// that started in time is allowed to finish.
const RUN_GRACE: Duration = Duration::from_secs(30);

impl Ticket {
    /// Waits for the result from async code.
    pub async fn wait(self) -> Reply {
        let limit = tokio::time::Instant::from_std(self.deadline + RUN_GRACE);
        match tokio::time::timeout_at(limit, self.rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(InferError::ShuttingDown),
            Err(_) => Err(InferError::Run {
                model: self.model,
                reason: "no result in time: a worker seems stuck".into(),
            }),
        }
    }

    /// Waits for the result from a plain thread (not from inside an async runtime).
    pub fn wait_blocking(mut self) -> Reply {
        let start = Instant::now();
        while start.elapsed() < self.spin {
            match self.rx.try_recv() {
                Ok(reply) => return reply,
                Err(oneshot::error::TryRecvError::Closed) => return Err(InferError::ShuttingDown),
                Err(oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        self.rx.blocking_recv().unwrap_or(Err(InferError::ShuttingDown))
    }
}

struct Shared {
    models: ArcSwap<BTreeMap<String, Arc<LoadedModel>>>,
    /// Candidate versions on trial beside the serving ones, one per model name: they
    /// never answer a request of their own (see [`Engine::submit_idle`]).
    shadows: ArcSwap<BTreeMap<String, Arc<LoadedModel>>>,
    streams: StreamTable,
    stats: Stats,
    /// Per worker: milliseconds since `epoch` when its current job started, 0 when idle.
    /// Lets a watchdog tell a wedged worker from an idle one.
    busy_since: Vec<AtomicU64>,
    /// Per worker: jobs finished.
    done: Vec<AtomicU64>,
    epoch: Instant,
    /// Requests answered on callers' threads.
    inline: inline::Inline,
}

/// The engine. Cheap to share behind an `Arc`; safe to call from many threads and tasks.
pub struct Engine {
    shared: Arc<Shared>,
    tx: RwLock<Option<Lanes>>,
    capacity: usize,
    spin: Duration,
    model_limits: ModelLimits,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// The two ways to the workers: the request queue, and a small lane of shadow runs that
/// a worker takes only when the request queue is empty, so a shadow job never waits in
/// front of a request.
struct Lanes {
    requests: Sender<Job>,
    shadow: Sender<Job>,
}

/// Health of the worker pool, for status reports and watchdogs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolReport {
    /// Worker threads.
    pub threads: usize,
    /// Requests waiting for a worker.
    pub queue_depth: usize,
    /// Requests that may wait at most.
    pub queue_capacity: usize,
    /// Workers running a request now.
    pub busy: usize,
    /// Longest time a worker has been on its current job.
    pub longest_job_ms: u64,
    /// Requests finished since start, by all workers.
    pub jobs_done: u64,
    /// Streams holding recurrent state.
    pub live_streams: usize,
    /// Streams whose state was dropped to make room for newer ones.
    pub streams_evicted: u64,
}

impl Engine {
    /// Starts the worker threads.
    pub fn start(config: &EngineConfig) -> Engine {
        let threads = config.threads.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(config.queue.max(1));
        // One shadow job per worker at most: more would only wait for a busy pool.
        let (shadow_tx, shadow_rx) = crossbeam_channel::bounded::<Job>(threads);
        let shared = Arc::new(Shared {
            models: ArcSwap::from_pointee(BTreeMap::new()),
            shadows: ArcSwap::from_pointee(BTreeMap::new()),
            streams: StreamTable::new(config.max_streams),
            stats: Stats::default(),
            busy_since: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            done: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            inline: inline::Inline::new(
                config.inline_below,
                config.inline_async_below,
                threads,
                config.intra_threads > 1,
            ),
        });
        let pool = intra::executor(config.intra_threads);
        let mut workers = Vec::with_capacity(threads);
        for ix in 0..threads {
            let rx = rx.clone();
            let shadow_rx = shadow_rx.clone();
            let shared = shared.clone();
            let spin = config.spin;
            let pool = pool.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("engine-{ix}"))
                .spawn(move || intra::scoped(pool, || worker(ix, rx, shadow_rx, shared, spin)));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => tracing::error!(error = %e, worker = ix, "cannot start engine worker thread"),
            }
        }
        Engine {
            shared,
            tx: RwLock::new(Some(Lanes { requests: tx, shadow: shadow_tx })),
            capacity: config.queue.max(1),
            spin: config.spin,
            model_limits: config.model_limits,
            workers: std::sync::Mutex::new(workers),
        }
    }

    /// Makes a model available under its name, replacing an older one. Requests already
    /// queued or running keep the model they were submitted with.
    pub fn install(&self, model: LoadedModel) -> Arc<LoadedModel> {
        let model = Arc::new(model);
        let name = model.name().to_string();
        self.shared.models.rcu(|old| {
            let mut next = BTreeMap::clone(old);
            next.insert(name.clone(), model.clone());
            next
        });
        model
    }

    /// The most memory one model may need here: what models loaded for this engine are
    /// checked against (configured models, updates, rollbacks).
    pub fn model_limits(&self) -> ModelLimits {
        self.model_limits
    }

    /// The model currently serving `name`.
    pub fn model(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.shared.models.load().get(name).cloned()
    }

    /// The names of the models serving, comma-separated (for error messages).
    pub fn model_names(&self) -> String {
        self.shared.models.load().keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// All models currently serving, by name.
    pub fn models(&self) -> BTreeMap<String, Arc<LoadedModel>> {
        BTreeMap::clone(&self.shared.models.load())
    }

    /// Queues a request, or rejects it at once (counted).
    pub fn submit(&self, req: Request) -> Result<Ticket, InferError> {
        let Some(model) = self.model(&req.model) else {
            let err = InferError::UnknownModel { model: req.model.clone(), loaded: self.model_names() };
            self.count_error(&req.model, &err);
            return Err(err);
        };
        self.submit_to(model, req)
    }

    /// Queues a request for one loaded model (version), even if another version has
    /// replaced it meanwhile: a caller that pre-processed the input for this version's
    /// spec gets this version's answer.
    pub fn submit_to(&self, model: Arc<LoadedModel>, mut req: Request) -> Result<Ticket, InferError> {
        let shape = match check_length(&model, &mut req) {
            Ok(shape) => shape,
            Err(err) => {
                self.count_error(&req.model, &err);
                return Err(err);
            }
        };
        let (job, rx) = Job::new(model, &mut req, shape, false);
        let guard = self.tx.read().unwrap_or_else(|p| p.into_inner());
        let Some(lanes) = guard.as_ref() else {
            return Err(InferError::ShuttingDown);
        };
        match lanes.requests.try_send(job) {
            Ok(()) => Ok(self.ticket(rx, req)),
            Err(TrySendError::Full(_)) => {
                let err = InferError::QueueFull { capacity: self.capacity };
                self.count_error(&req.model, &err);
                Err(err)
            }
            Err(TrySendError::Disconnected(_)) => Err(InferError::ShuttingDown),
        }
    }

    fn ticket(&self, rx: oneshot::Receiver<Reply>, req: Request) -> Ticket {
        Ticket { rx, deadline: req.deadline, model: req.model, spin: self.spin }
    }

    /// Submits and waits from a plain thread (small models run on it: see [`inline`]).
    pub fn infer_blocking(&self, req: Request) -> Reply {
        let Some(model) = self.model(&req.model) else {
            let err = InferError::UnknownModel { model: req.model.clone(), loaded: self.model_names() };
            self.count_error(&req.model, &err);
            return Err(err);
        };
        self.infer_blocking_to(model, req)
    }

    /// Counts an error found outside the engine (pre-processing) against a model.
    pub fn count_error(&self, model: &str, err: &InferError) {
        self.shared.stats.record_error(model, err.kind(), err.is_rejection(), err.to_string());
    }

    /// The most recent failures, oldest first.
    pub fn recent_errors(&self) -> Vec<stats::ErrorEntry> {
        self.shared.stats.recent_errors()
    }

    /// Latency histograms per model.
    pub fn latencies(&self) -> BTreeMap<String, stats::Latency> {
        self.shared.stats.latencies()
    }

    /// Stops serving a model; requests already queued keep the model they hold.
    pub fn remove(&self, name: &str) -> bool {
        let mut removed = false;
        self.shared.models.rcu(|old| {
            let mut next = BTreeMap::clone(old);
            removed = next.remove(name).is_some();
            next
        });
        removed
    }

    /// A copy of one model's counters and histograms, to measure a period by difference.
    pub fn snapshot(&self, model: &str) -> stats::ModelStats {
        self.shared.stats.snapshot(model)
    }

    /// Per-model counters and latency percentiles.
    pub fn stats(&self) -> BTreeMap<String, ModelReport> {
        self.shared.stats.report()
    }

    /// Requests waiting for a worker (cheap: for routing every request).
    pub fn queue_depth(&self) -> usize {
        self.tx.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|t| t.requests.len()).unwrap_or(0)
    }

    /// Loads a candidate version of a model beside the serving one, replacing an earlier
    /// candidate. It serves nothing; [`Engine::submit_idle`] gives it work.
    pub fn install_shadow(&self, model: LoadedModel) -> Arc<LoadedModel> {
        let model = Arc::new(model);
        let name = model.name().to_string();
        self.shared.shadows.rcu(|old| {
            let mut next = BTreeMap::clone(old);
            next.insert(name.clone(), model.clone());
            next
        });
        model
    }

    /// The candidate version on trial for `name`, if any (cheap: one atomic load).
    pub fn shadow(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.shared.shadows.load().get(name).cloned()
    }

    /// Unloads the candidate of `name`; shadow runs already queued finish on it.
    pub fn remove_shadow(&self, name: &str) -> Option<Arc<LoadedModel>> {
        let mut removed = None;
        self.shared.shadows.rcu(|old| {
            let mut next = BTreeMap::clone(old);
            removed = next.remove(name);
            next
        });
        removed
    }

    /// Queues a shadow run of `model` (a candidate version) on idle capacity only:
    /// `Ok(None)`, and nothing queued, when a request waits in the queue, every worker is
    /// busy, or the shadow lane is full. A worker takes a shadow job only when the
    /// request queue is empty, and drops it unrun once its deadline passed. Shadow runs
    /// are not counted in the engine's stats; the caller counts them.
    pub fn submit_idle(
        &self,
        model: Arc<LoadedModel>,
        mut req: Request,
    ) -> Result<Option<Ticket>, InferError> {
        let shape = check_length(&model, &mut req)?;
        let guard = self.tx.read().unwrap_or_else(|p| p.into_inner());
        let Some(lanes) = guard.as_ref() else {
            return Err(InferError::ShuttingDown);
        };
        if !lanes.requests.is_empty() || self.all_busy() {
            return Ok(None);
        }
        let (job, rx) = Job::new(model, &mut req, shape, true);
        match lanes.shadow.try_send(job) {
            Ok(()) => Ok(Some(self.ticket(rx, req))),
            Err(TrySendError::Full(_)) => Ok(None),
            Err(TrySendError::Disconnected(_)) => Err(InferError::ShuttingDown),
        }
    }

    /// Every worker is running a request: a new one will wait (cheap: one atomic read
    /// per worker).
    pub fn all_busy(&self) -> bool {
        self.shared.busy_since.iter().all(|b| b.load(Ordering::Relaxed) != 0)
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.shared.busy_since.len()
    }

    /// State of the worker pool.
    pub fn pool(&self) -> PoolReport {
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        let started: Vec<u64> = self.shared.busy_since.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        // A run on a caller's thread counts for the longest job (a watchdog's reading),
        // not for the workers' `busy`.
        let inline_start = self.shared.inline.oldest_start();
        let queue_depth = self.queue_depth();
        PoolReport {
            threads: started.len(),
            queue_depth,
            queue_capacity: self.capacity,
            busy: started.iter().filter(|s| **s != 0).count(),
            longest_job_ms: started
                .iter()
                .filter(|s| **s != 0)
                .chain(inline_start.as_ref())
                .map(|s| now.saturating_sub(*s))
                .max()
                .unwrap_or(0),
            jobs_done: self.shared.done.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>()
                + self.shared.inline.done.load(Ordering::Relaxed),
            live_streams: self.shared.streams.len(),
            streams_evicted: self.shared.streams.evicted(),
        }
    }

    /// Stops taking requests, lets the workers finish what is queued, and joins them;
    /// a worker still busy after [`JOIN_GRACE`] is logged and left behind (it ends with
    /// the process) rather than hanging shutdown.
    pub fn shutdown(&self) {
        self.tx.write().unwrap_or_else(|p| p.into_inner()).take();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        if workers.is_empty() {
            return;
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let count = workers.len();
        for w in workers {
            let done_tx = done_tx.clone();
            // A joiner per worker, so one stuck worker does not hide the others' end.
            let _ = std::thread::Builder::new().name("engine-join".into()).spawn(move || {
                let name = w.thread().name().unwrap_or("engine").to_string();
                let panicked = w.join().is_err();
                let _ = done_tx.send((name, panicked));
            });
        }
        let deadline = Instant::now() + JOIN_GRACE;
        let mut finished = 0;
        while finished < count {
            match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((name, true)) => {
                    finished += 1;
                    tracing::error!(worker = %name, "engine worker ended with a panic");
                }
                Ok(_) => finished += 1,
                Err(_) => {
                    tracing::error!(
                        stuck = count - finished,
                        grace_s = JOIN_GRACE.as_secs(),
                        "engine workers still busy; leaving them behind"
                    );
                    return;
                }
            }
        }
    }
}

/// How long [`Engine::shutdown`] waits for busy workers.
pub const JOIN_GRACE: Duration = Duration::from_secs(5);

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The next job: a request first, a shadow run only when no request waits. Polls for up
/// to `spin`, then sleeps until either lane has one. None once the engine shuts down and
/// the request queue is empty (shadow runs still queued then are dropped unrun).
fn next_job(rx: &Receiver<Job>, shadow: &Receiver<Job>, spin: Duration) -> Option<Job> {
    use crossbeam_channel::TryRecvError;
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        if let Ok(job) = shadow.try_recv() {
            return Some(job);
        }
        if start.elapsed() < spin {
            std::hint::spin_loop();
            continue;
        }
        // Both lanes' senders go together at shutdown, so `ready` cannot spin on a
        // disconnected shadow lane while requests still flow.
        let mut select = crossbeam_channel::Select::new();
        select.recv(rx);
        select.recv(shadow);
        select.ready();
    }
}

fn worker(ix: usize, rx: Receiver<Job>, shadow: Receiver<Job>, shared: Arc<Shared>, spin: Duration) {
    // One tract run state per model: reusing it saves re-allocating the plan's buffers on
    // every call. Keyed by load id; cleared when models change often enough to pile up.
    // With a varying dimension, one per model and size.
    let mut states = RunStates::default();
    while let Some(job) = next_job(&rx, &shadow, spin) {
        let started = Instant::now();
        let since = (shared.epoch.elapsed().as_millis() as u64).max(1);
        shared.busy_since[ix].store(since, Ordering::Relaxed);
        let mut job = job;
        let result = run_job(&mut job, &mut states, &shared);
        record_outcome(&shared, &job, &result);
        // Idle before the caller hears back: a caller that looks at the pool right after
        // its answer (a shadow run waiting for idle capacity) must see this worker free.
        shared.busy_since[ix].store(0, Ordering::Relaxed);
        shared.done[ix].fetch_add(1, Ordering::Relaxed);
        // The caller may have given up waiting; nothing to do then.
        if let Some(reply) = job.reply.take() {
            let _ = reply.send(result);
        }
        tracing::trace!(worker = ix, us = started.elapsed().as_micros() as u64, "job done");
    }
}

/// Counts a finished job in the model's stats (a worker's or a caller's).
fn record_outcome(shared: &Shared, job: &Job, result: &Reply) {
    let name = job.model.name();
    match result {
        // The candidate shares the serving version's name; its runs are the caller's
        // to count, so the serving version's numbers (probation, /metrics) stay its own.
        _ if job.shadow => {}
        Ok(r) => shared.stats.with(name, |s| {
            s.ok += 1;
            s.latency.record(job.submitted.elapsed());
            s.run.record(r.run);
        }),
        Err(e) => shared.stats.record_error(name, e.kind(), e.is_rejection(), e.to_string()),
    }
    if let Err(e) = result {
        tracing::debug!(model = %name, stream = %job.stream, error = %e, "request failed");
    }
}

fn run_job(job: &mut Job, states: &mut RunStates, shared: &Shared) -> Reply {
    let model = &job.model;
    // A job run by its caller (no reply channel) starts as it is made: its submission
    // time serves, one clock reading fewer on the path of the smallest models.
    let now = if job.reply.is_none() { job.submitted } else { Instant::now() };
    if now > job.deadline {
        let deadline_ms = job.deadline.saturating_duration_since(job.submitted).as_millis() as u64;
        return Err(InferError::Deadline {
            waited_ms: (now - job.submitted).as_millis() as u64,
            deadline_ms,
        });
    }
    let queued = now - job.submitted;
    if wedge_fault() {
        tracing::error!("EDGE_TEST_FAULT=wedge-worker: this worker now hangs for good");
        loop {
            std::thread::park();
        }
    }
    let stateful = model.is_stateful();
    let previous = if stateful {
        if job.reset {
            shared.streams.reset(model.id, &job.stream);
        }
        match shared.streams.take(model.id, &job.stream) {
            Ok(s) => s,
            Err(TakeError::Busy) => {
                return Err(InferError::StreamBusy {
                    model: model.name().into(),
                    stream: job.stream.to_string(),
                });
            }
        }
    } else {
        None
    };
    let fail = |reason: String| InferError::Run { model: model.name().into(), reason };

    let outcome = (|| {
        let (at, state) = states.find_or_spawn(model, &job.shape).map_err(fail)?;
        let data = std::mem::take(&mut job.data);
        let inputs = model
            .assemble_shaped(data, &job.shape, previous.as_deref())
            .map_err(|e| fail(format!("{e:#}")))?;
        let started = Instant::now();
        let ran = panic::contain(|| state.run(inputs));
        let run = started.elapsed();
        match ran {
            Ok(Ok(outputs)) => Ok((outputs, run)),
            Ok(Err(e)) => Err(fail(format!("{e:#}"))),
            Err(message) => {
                // The run state may be half-updated after a panic: rebuild it next time.
                states.discard(at);
                Err(InferError::Panic { model: model.name().into(), message })
            }
        }
    })();

    match outcome {
        Ok((outputs, run)) => {
            model.run_estimate.record(run);
            if stateful {
                shared.streams.put(model.id, &job.stream, Some(model.next_state(&outputs)));
            }
            let outputs = outputs
                .iter()
                .zip(&model.outputs)
                .map(|(v, info)| to_output(&info.name, v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?;
            Ok(Response { model: model.clone(), outputs, queued, run })
        }
        Err(e) => {
            if stateful {
                shared.streams.put(model.id, &job.stream, previous);
            }
            Err(e)
        }
    }
}

/// Test-only fault switch: with `EDGE_TEST_FAULT=wedge-worker` in the environment, a
/// worker hangs forever on its first request, so tests can prove the systemd watchdog
/// notices a wedged worker. Read once; never set it on a device.
fn wedge_fault() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| std::env::var("EDGE_TEST_FAULT").is_ok_and(|v| v == "wedge-worker"))
}

fn to_output(name: &str, value: &TValue) -> Result<Output, String> {
    let cast = value.cast_to::<f32>().map_err(|e| format!("output `{name}` cannot be read as f32: {e:#}"))?;
    let values: Vec<f32> = cast
        .to_plain_array_view::<f32>()
        .map_err(|e| format!("output `{name}`: {e:#}"))?
        .iter()
        .copied()
        .collect();
    Ok(Output { name: name.to_string(), shape: value.shape().to_vec(), values })
}
