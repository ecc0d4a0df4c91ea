//! The caller-thread path: a blocking caller runs a small model itself instead of
//! handing the request to a worker thread and waiting to be woken with the answer.
//!
//! The hand-over costs a fixed few tens of microseconds (a queue, a wake-up of the
//! worker unless it is polling, the answer's channel, the caller's own wake-up once it
//! stopped polling). On a model that runs in a millisecond that is noise; on one that
//! runs in 13 or 60 µs it was 8% and 39% of the latency (docs/benchmarks.md). So a
//! request from [`Engine::infer_blocking_to`] runs on the calling thread when:
//!
//! - the model's typical run time, learnt from its runs so far, is under
//!   [`EngineConfig::inline_below`](super::EngineConfig::inline_below) (100 µs by
//!   default; 0 turns the path off). A model's first runs go to a worker, which learns it;
//! - no request is waiting in the queue (a caller must not overtake queued work);
//! - fewer callers than there are workers are running models this way, so the engine
//!   never computes on more threads than `engine.threads` allows plus its workers.
//!
//! Each calling thread keeps its own tract run state per model (a thread-local map, as
//! each worker keeps one), so that the plan's buffers are not re-allocated per call.
//! Everything else is the worker's code: the deadline, the stream's recurrent state,
//! panics contained, the same counters and histograms. Async callers
//! ([`Ticket::wait`](super::Ticket::wait)) always use the workers: blocking an async
//! executor's thread on a model, however short, would delay every task behind it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tract_nnef::prelude::TypedSimpleState;

use super::{Engine, InferError, Job, LoadedModel, Reply, Request, check_length, record_outcome, run_job};

/// Default of [`EngineConfig::inline_below`](super::EngineConfig::inline_below).
pub const DEFAULT_INLINE_BELOW: Duration = Duration::from_micros(100);

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

/// The pool's side of the path: its threshold, and how many callers use it now.
#[derive(Debug)]
pub(super) struct Inline {
    below: Duration,
    /// At most this many callers run models at once (the number of workers).
    limit: usize,
    running: AtomicUsize,
    /// Requests answered on callers' threads since start.
    pub(super) done: AtomicU64,
}

impl Inline {
    pub(super) fn new(below: Duration, limit: usize) -> Inline {
        Inline { below, limit: limit.max(1), running: AtomicUsize::new(0), done: AtomicU64::new(0) }
    }

    /// Whether `model` is small enough to run on a caller's thread.
    fn small(&self, model: &LoadedModel) -> bool {
        !self.below.is_zero() && model.run_estimate.get().is_some_and(|t| t < self.below)
    }

    /// A slot for one caller, if fewer than `limit` hold one; released on drop.
    fn slot(&self) -> Option<Slot<'_>> {
        if self.running.fetch_add(1, Ordering::AcqRel) < self.limit {
            Some(Slot(self))
        } else {
            self.running.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

struct Slot<'a>(&'a Inline);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A thread's tract run states, by model load id and input shape (as a worker keeps them).
#[derive(Default)]
struct States(HashMap<(u64, Vec<usize>), TypedSimpleState>);

impl Drop for States {
    /// Dropping a run state reaches into tract's own thread-local scratch space, which
    /// may already be gone when this thread's locals are destroyed (see `WARM`): a panic
    /// then is contained, and what is left of the states is leaked with the thread.
    fn drop(&mut self) {
        let states = std::mem::take(&mut self.0);
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
    pub fn infer_blocking_to(&self, model: Arc<LoadedModel>, mut req: Request) -> Reply {
        let inline = &self.shared.inline;
        if !inline.small(&model) || super::wedge_fault() {
            return self.submit_to(model, req)?.wait_blocking();
        }
        if let Err(err) = check_length(&model, &req) {
            self.count_error(&req.model, &err);
            return Err(err);
        }
        let Some(slot) = self.idle_slot() else {
            return self.submit_to(model, req)?.wait_blocking();
        };
        let (mut job, _unused) = Job::new(model, &mut req, false);
        let result = if WARM.get() {
            STATES.with_borrow_mut(|states| run_job(&mut job, &mut states.0, &self.shared))
        } else {
            let mut first = HashMap::new();
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
            return self.submit_to(job.model, req)?.wait_blocking();
        }
        record_outcome(&self.shared, &job, &result);
        inline.done.fetch_add(1, Ordering::Relaxed);
        result
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
    fn slots_are_bounded_by_the_workers() {
        let inline = Inline::new(DEFAULT_INLINE_BELOW, 2);
        let a = inline.slot();
        let b = inline.slot();
        assert!(a.is_some() && b.is_some());
        assert!(inline.slot().is_none(), "a third caller must use the queue");
        drop(a);
        assert!(inline.slot().is_some(), "a released slot is free again");
    }

    use crate::engine::tests::{demo_dir, vad_dir};
    use crate::engine::{EngineConfig, ModelLimits};
    use std::time::Instant;

    /// A threshold every model is under, even in an unoptimised test build under load:
    /// these tests are about the path, not about timing.
    const ANY_MODEL: Duration = Duration::from_secs(1);

    fn engine(inline_below: Duration) -> Engine {
        Engine::start(&EngineConfig { threads: 1, queue: 8, inline_below, ..EngineConfig::default() })
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
        assert_eq!(answers(&on, "silero-vad", &input), answers(&off, "silero-vad", &input));
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
