//! The caller-thread path: a caller runs a model itself instead of handing the request
//! to a worker thread and waiting to be woken with the answer.
//!
//! The hand-over costs a fixed few tens of microseconds (a queue, a wake-up of the
//! worker unless it is polling, the answer's channel, the caller's own wake-up once it
//! stopped polling): about 30 µs on the 2-core test machine. On a model that runs in
//! 13 or 60 µs that was 8% and 39% of the latency, on the PP-OCR classifier (0.8 ms)
//! still 4 to 6% (docs/benchmarks.md). So a request runs on the calling thread when:
//!
//! - the model's typical run time, learnt from its runs so far, is under the caller's
//!   threshold. A blocking caller ([`Engine::infer_blocking_to`]: the CLI, the runner,
//!   pipelines, the self-test) waits for the run either way, so its threshold,
//!   [`EngineConfig::inline_below`](super::EngineConfig::inline_below), is 2 ms: above
//!   it the hand-over is under 1.5% of the run, and a larger model's run state (kept
//!   per thread, below) would cost real memory. An async caller ([`Engine::infer_to`]:
//!   the daemon's streams, the local API, the cloud fallback's local answers) runs the
//!   model on an executor thread, which every other task on that thread waits for, so
//!   its threshold,
//!   [`EngineConfig::inline_async_below`](super::EngineConfig::inline_async_below), is
//!   100 µs, about what an async task may run between two awaits. Zero turns either off;
//!   a model's first runs go to a worker, which learns its run time;
//! - no request is waiting in the queue (a caller must not overtake queued work);
//! - fewer callers than there are workers are running models this way, so the engine
//!   never computes on more threads than `engine.threads` allows plus its workers.
//!
//! With `engine.intra_threads` above 1, a blocking caller keeps to the async threshold:
//! the split matrix products run only on the workers, and only a model too small to
//! split runs on a caller.
//!
//! Each calling thread keeps its own tract run state per model (a thread-local map, as
//! each worker keeps one), so that the plan's buffers are not re-allocated per call.
//! Everything else is the worker's code: the deadline, the stream's recurrent state,
//! panics contained, the same counters and histograms. A run on a caller's thread holds
//! a slot that records when it started, so [`Engine::pool`]'s longest job (what the
//! service watchdog reads) sees a run that hangs there as it sees a wedged worker.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::run_states::RunStates;
use super::{Engine, InferError, Job, LoadedModel, Reply, Request, check_length, record_outcome, run_job};

/// Default of [`EngineConfig::inline_below`](super::EngineConfig::inline_below).
pub const DEFAULT_INLINE_BELOW: Duration = Duration::from_millis(2);

/// Default of [`EngineConfig::inline_async_below`](super::EngineConfig::inline_async_below).
pub const DEFAULT_INLINE_ASYNC_BELOW: Duration = Duration::from_micros(100);

/// A model's typical run time, learnt from its runs; 0 until the first.
///
/// Each run moves the estimate towards its own time by at most an eighth of the
/// estimate, so one run delayed by the scheduler (a 10 ms preemption) barely moves it,
/// while a lasting change is followed within a few dozen runs. Updates from several
/// threads may race; a lost update only delays that by one run.
#[derive(Debug, Default)]
pub struct RunEstimate(AtomicU64);

impl RunEstimate {
    /// Takes one run's time into the estimate.
    pub fn record(&self, run: Duration) {
        let ns = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.0.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns
        } else if ns > old {
            old + (ns - old).min(old / 8 + 1)
        } else {
            old - (old - ns).min(old / 8)
        };
        self.0.store(new.max(1), Ordering::Relaxed);
    }

    /// The estimate, once a run was recorded.
    pub fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// Which kind of caller asks: it decides the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Blocking,
    Async,
}

/// The pool's side of the path: its thresholds, and the callers' runs going on now.
#[derive(Debug)]
pub(super) struct Inline {
    blocking_below: Duration,
    async_below: Duration,
    /// One per run allowed at once (as many as workers): when it started, in
    /// milliseconds since the engine's epoch (at least 1), or 0 when free.
    slots: Vec<AtomicU64>,
    /// Requests answered on callers' threads since start.
    pub(super) done: AtomicU64,
}

impl Inline {
    /// `split_runs`: matrix products are split over intra-run threads (only on workers).
    pub(super) fn new(
        blocking_below: Duration,
        async_below: Duration,
        limit: usize,
        split_runs: bool,
    ) -> Inline {
        Inline {
            blocking_below: if split_runs { blocking_below.min(async_below) } else { blocking_below },
            async_below,
            slots: (0..limit.max(1)).map(|_| AtomicU64::new(0)).collect(),
            done: AtomicU64::new(0),
        }
    }

    /// Whether `model` is small enough to run on this kind of caller's thread.
    fn small(&self, model: &LoadedModel, caller: Caller) -> bool {
        let below = match caller {
            Caller::Blocking => self.blocking_below,
            Caller::Async => self.async_below,
        };
        !below.is_zero() && model.run_estimate.get().is_some_and(|t| t < below)
    }

    /// A free slot, taken (its run's start set by [`Slot::started`]); released on drop.
    fn slot(&self) -> Option<Slot<'_>> {
        self.slots
            .iter()
            .find(|s| s.compare_exchange(0, TAKEN, Ordering::AcqRel, Ordering::Relaxed).is_ok())
            .map(Slot)
    }

    /// When the oldest run on a caller's thread started (as [`Slot::started`] set it).
    pub(super) fn oldest_start(&self) -> Option<u64> {
        self.slots.iter().map(|s| s.load(Ordering::Relaxed)).filter(|s| *s != 0 && *s != TAKEN).min()
    }
}

/// A slot taken but its run's start not yet set: later than any start, so that it never
/// counts as the oldest run.
const TAKEN: u64 = u64::MAX;

struct Slot<'a>(&'a AtomicU64);

impl Slot<'_> {
    /// The run started `since` after the engine's epoch (the job's own clock reading,
    /// so that taking a slot reads no clock of its own).
    fn started(&self, since: Duration) {
        self.0.store((since.as_millis() as u64).max(1), Ordering::Release);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// A thread's tract run states (as a worker keeps them).
#[derive(Default)]
struct States(RunStates);

impl Drop for States {
    /// Dropping a run state reaches into tract's own thread-local scratch space, which
    /// may already be gone when this thread's locals are destroyed (see `WARM`): a panic
    /// then is contained, and what is left of the states is leaked with the thread.
    fn drop(&mut self) {
        let states = self.0.take();
        let _ = super::panic::contain(move || drop(states));
    }
}

thread_local! {
    static STATES: RefCell<States> = RefCell::new(States::default());
    /// Whether this thread has run a model yet. Its first run uses states of its own,
    /// dropped at once, so that tract's thread-locals exist before `STATES` does: locals
    /// are destroyed in the reverse order of their creation, so the states then go
    /// first, while tract's scratch space is still there.
    static WARM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Engine {
    /// Runs a request on one loaded model (version) and waits for the answer, from a
    /// plain thread (not from inside an async runtime): on this thread when the model is
    /// small and the engine idle enough (see [the module](self)), else through a worker.
    pub fn infer_blocking_to(&self, model: Arc<LoadedModel>, req: Request) -> Reply {
        match self.run_here(model, req, Caller::Blocking) {
            Here::Done(reply) => reply,
            Here::Queue(model, req) => self.submit_to(model, req)?.wait_blocking(),
        }
    }

    /// Runs a request on one loaded model (version) from async code: on the executor's
    /// thread when the model's runs are shorter than an async task may hold it and the
    /// engine is idle enough (see [the module](self)), else through a worker, awaited.
    pub async fn infer_to(&self, model: Arc<LoadedModel>, req: Request) -> Reply {
        match self.run_here(model, req, Caller::Async) {
            Here::Done(reply) => reply,
            Here::Queue(model, req) => self.submit_to(model, req)?.wait().await,
        }
    }

    /// Runs `req` on this thread if the path allows it (see [the module](self)).
    fn run_here(&self, model: Arc<LoadedModel>, mut req: Request, caller: Caller) -> Here {
        let inline = &self.shared.inline;
        if !inline.small(&model, caller) || super::wedge_fault() {
            return Here::Queue(model, req);
        }
        let shape = match check_length(&model, &mut req) {
            Ok(shape) => shape,
            Err(err) => {
                self.count_error(&req.model, &err);
                return Here::Done(Err(err));
            }
        };
        let Some(slot) = self.idle_slot() else {
            req.shape = Some(shape);
            return Here::Queue(model, req);
        };
        let mut job = Job::here(model, &mut req, shape);
        slot.started(job.submitted.saturating_duration_since(self.shared.epoch));
        let result = if WARM.get() {
            STATES.with_borrow_mut(|states| run_job(&mut job, &mut states.0, &self.shared))
        } else {
            let mut first = RunStates::default();
            let result = run_job(&mut job, &mut first, &self.shared);
            drop(first);
            WARM.set(true);
            result
        };
        drop(slot);
        if let Err(InferError::StreamBusy { .. }) = result {
            // Another caller or a worker holds this stream's state: the queue serialises
            // requests of one stream, so wait in it. The data was not taken yet.
            req.data = std::mem::take(&mut job.data);
            req.shape = Some(std::mem::take(&mut job.shape));
            req.stream = match std::mem::take(&mut job.stream) {
                std::borrow::Cow::Owned(s) => Some(s),
                std::borrow::Cow::Borrowed(_) => None,
            };
            return Here::Queue(job.model, req);
        }
        record_outcome(&self.shared, &job, &result);
        inline.done.fetch_add(1, Ordering::Relaxed);
        Here::Done(result)
    }

    /// A caller's slot, when no request waits for a worker and the engine is not
    /// shutting down.
    fn idle_slot(&self) -> Option<Slot<'_>> {
        let guard = self.tx.read().unwrap_or_else(|p| p.into_inner());
        let lanes = guard.as_ref()?;
        if !lanes.requests.is_empty() {
            return None;
        }
        self.shared.inline.slot()
    }
}

/// What [`Engine::run_here`] did: answered, or handed the request back to be queued.
enum Here {
    Done(Reply),
    Queue(Arc<LoadedModel>, Request),
}

#[cfg(all(test, feature = "onnx"))] // uses the engine tests' ONNX models
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_lasting_changes_and_shrugs_off_one_outlier() {
        let e = RunEstimate::default();
        assert_eq!(e.get(), None);
        e.record(Duration::from_micros(50));
        assert_eq!(e.get(), Some(Duration::from_micros(50)));
        // One run preempted for 10 ms moves the estimate by an eighth at most.
        e.record(Duration::from_millis(10));
        let after = e.get().unwrap();
        assert!(after <= Duration::from_nanos(56_251), "{after:?}");
        // A model that became slow for good (a larger input range) is followed.
        for _ in 0..60 {
            e.record(Duration::from_millis(2));
        }
        assert!(e.get().unwrap() > Duration::from_millis(1), "{:?}", e.get());
    }

    #[test]
    fn slots_are_bounded_by_the_workers_and_remember_when_their_run_started() {
        let inline = Inline::new(DEFAULT_INLINE_BELOW, DEFAULT_INLINE_ASYNC_BELOW, 2, false);
        let a = inline.slot().unwrap();
        let b = inline.slot().unwrap();
        assert_eq!(inline.oldest_start(), None, "taken slots whose runs have not started");
        a.started(Duration::from_millis(70));
        b.started(Duration::from_millis(40));
        assert!(inline.slot().is_none(), "a third caller must use the queue");
        assert_eq!(inline.oldest_start(), Some(40), "the oldest run is what a watchdog needs");
        drop(b);
        assert_eq!(inline.oldest_start(), Some(70));
        assert!(inline.slot().is_some(), "a released slot is free again");
        drop(a);
        assert_eq!(inline.oldest_start(), None);
    }

    #[test]
    fn split_runs_keep_blocking_callers_to_small_models() {
        let plain = Inline::new(DEFAULT_INLINE_BELOW, DEFAULT_INLINE_ASYNC_BELOW, 1, false);
        let split = Inline::new(DEFAULT_INLINE_BELOW, DEFAULT_INLINE_ASYNC_BELOW, 1, true);
        assert_eq!(plain.blocking_below, DEFAULT_INLINE_BELOW);
        assert_eq!(split.blocking_below, DEFAULT_INLINE_ASYNC_BELOW);
    }

    use crate::engine::tests::{demo_dir, vad_dir};
    use crate::engine::{EngineConfig, ModelLimits};
    use std::time::Instant;

    /// A threshold every model is under, even in an unoptimised test build under load:
    /// these tests are about the path, not about timing.
    const ANY_MODEL: Duration = Duration::from_secs(1);

    fn engine(inline_below: Duration) -> Engine {
        Engine::start(&EngineConfig {
            threads: 1,
            queue: 8,
            inline_below,
            inline_async_below: inline_below,
            ..EngineConfig::default()
        })
    }

    fn req(model: &str, data: Vec<f32>) -> Request {
        Request {
            model: model.into(),
            stream: Some("s".into()),
            data,
            deadline: Instant::now() + Duration::from_secs(30),
            reset: false,
            shape: None,
        }
    }

    /// Every output's values of `n` requests, in order, through `infer_blocking`.
    fn answers(engine: &Engine, model: &str, frames: &[Vec<f32>]) -> Vec<Vec<f32>> {
        frames
            .iter()
            .flat_map(|f| engine.infer_blocking(req(model, f.clone())).unwrap().outputs)
            .map(|o| o.values)
            .collect()
    }

    fn frames(len: usize, n: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|k| (0..len).map(|i| (((i + 31 * k) * 7919) % 2001) as f32 / 1000.0 - 1.0).collect())
            .collect()
    }

    #[test]
    fn small_models_run_on_the_callers_thread_with_the_same_answers_and_counts() {
        let on = engine(ANY_MODEL);
        let off = engine(Duration::ZERO);
        for e in [&on, &off] {
            e.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
        }
        let input = frames(256, 40);
        assert_eq!(answers(&on, "vibration", &input), answers(&off, "vibration", &input));
        // The first run goes to a worker (nothing is known of the model yet); the rest
        // is answered on this thread.
        let inline_done = on.shared.inline.done.load(Ordering::Relaxed);
        assert!(inline_done >= 30, "only {inline_done} of 40 on the caller's thread");
        assert_eq!(off.shared.inline.done.load(Ordering::Relaxed), 0, "inline_below 0 turns the path off");
        for e in [&on, &off] {
            assert_eq!(e.stats()["vibration"].ok, 40, "every answer is counted once");
            assert_eq!(e.pool().jobs_done, 40);
        }
    }

    /// Every output's values of requests through `infer_to`, awaited on a
    /// current-thread executor (as the daemon's stream tasks do, on a smaller runtime).
    fn answers_async(engine: &Engine, model: &str, frames: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let loaded = engine.model(model).unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            for f in frames {
                out.extend(engine.infer_to(loaded.clone(), req(model, f.clone())).await.unwrap().outputs);
            }
            out.into_iter().map(|o| o.values).collect()
        })
    }

    #[test]
    fn async_callers_run_small_models_on_their_own_thread_and_others_through_a_worker() {
        // The defaults: the demo model (tens of µs even unoptimised) is small for an
        // async caller only once optimised, so the thresholds are set per case here.
        let on = engine(ANY_MODEL);
        let off = engine(Duration::ZERO);
        let blocking_only = Engine::start(&EngineConfig {
            threads: 1,
            inline_below: ANY_MODEL,
            inline_async_below: Duration::ZERO,
            ..EngineConfig::default()
        });
        for e in [&on, &off, &blocking_only] {
            e.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
        }
        let input = frames(256, 40);
        let want = answers(&off, "vibration", &input);
        assert_eq!(answers_async(&on, "vibration", &input), want);
        let inline_done = on.shared.inline.done.load(Ordering::Relaxed);
        assert!(inline_done >= 30, "only {inline_done} of 40 on the executor's thread");
        assert_eq!(answers_async(&blocking_only, "vibration", &input), want);
        assert_eq!(
            blocking_only.shared.inline.done.load(Ordering::Relaxed),
            0,
            "an async caller keeps to its own threshold"
        );
        assert_eq!(on.stats()["vibration"].ok, 40, "every answer is counted once");
        assert_eq!(blocking_only.pool().jobs_done, 40);
    }

    #[test]
    fn recurrent_state_carries_over_between_the_two_paths() {
        let Some(dir) = vad_dir() else { panic!("the test cache has silero-vad") };
        let on = engine(ANY_MODEL);
        let off = engine(Duration::ZERO);
        for e in [&on, &off] {
            e.install(LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap());
        }
        let len = on.model("silero-vad").unwrap().spec.data_input().len();
        // Each answer depends on every frame before it in the stream: a state lost or
        // applied twice when requests move between a worker and the caller shows here.
        let input = frames(len, 30);
        let want = answers(&off, "silero-vad", &input);
        assert_eq!(answers(&on, "silero-vad", &input), want);
        // The same stream afresh, through async callers this time.
        let again = engine(ANY_MODEL);
        again.install(LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap());
        assert_eq!(answers_async(&again, "silero-vad", &input), want);
    }

    #[test]
    fn large_models_and_bad_input_stay_on_the_worker_path() {
        let e = engine(Duration::from_nanos(1));
        e.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
        answers(&e, "vibration", &frames(256, 5));
        assert_eq!(e.shared.inline.done.load(Ordering::Relaxed), 0, "no model runs under 1 ns");
        let on = engine(ANY_MODEL);
        on.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
        answers(&on, "vibration", &frames(256, 5));
        let err = on.infer_blocking(req("vibration", vec![0.0; 3])).err().unwrap();
        assert!(matches!(err, InferError::Input { .. }), "{err}");
        let r = &on.stats()["vibration"];
        let counted = r.errors.values().sum::<u64>() + r.rejected.values().sum::<u64>();
        assert_eq!(counted, 1, "the bad request is counted once: {r:?}");
    }
}
