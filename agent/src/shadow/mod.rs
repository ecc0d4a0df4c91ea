//! Shadow runs: a candidate version of a model, loaded beside the active one, gets the
//! same input as the active version after the active version answered, on idle capacity
//! only; the two answers are compared and the candidate's is never served.
//!
//! The update task starts a run ([`Shadows::start`], after the candidate's download,
//! verification and self-test), reads its numbers on its tick and ends it with a verdict
//! (promote through the normal activation, or reject). The stream tasks feed it: each
//! keeps a [`Lane`], picks the requests the run's share takes ([`Shadows::pick`]), and
//! hands them over once the active answers are on their way ([`Lane::submit`]).
//!
//! - [`report`]: the comparison maths (agreement, confusion matrix, score differences,
//!   run times) and the verdict, without I/O.

pub mod report;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use edge_infer::engine::stats::ModelStats;
use edge_infer::engine::{Engine, InferError, LoadedModel, Request};
pub use report::{Limits, Numbers, Tally, Top, Verdict};

/// One candidate on trial.
pub struct Trial {
    /// The model's name.
    pub model: String,
    /// The candidate's version.
    pub version: String,
    /// The candidate's directory in the store, for its activation on promotion.
    pub dir: PathBuf,
    /// The candidate, loaded (the engine's shadow slot holds the same).
    pub candidate: Arc<LoadedModel>,
    /// The active version when the run started.
    pub active_version: String,
    pub limits: Limits,
    /// The limits of the probation that follows a promotion.
    pub probation: crate::ota::probation::Limits,
    /// When it started (RFC 3339), for reports.
    pub started_at: String,
    started: Instant,
    /// The active version's counters at the start, to measure its run times by
    /// difference over the same period.
    active_before: ModelStats,
    picked: AtomicU64,
    tally: Mutex<Tally>,
}

impl Trial {
    /// A new trial of `candidate`, against `engine`'s active version of the same name.
    pub fn new(
        engine: &Engine,
        candidate: Arc<LoadedModel>,
        dir: PathBuf,
        limits: Limits,
        probation: crate::ota::probation::Limits,
    ) -> Trial {
        let model = candidate.name().to_string();
        Trial {
            version: candidate.version().to_string(),
            active_version: engine.model(&model).map(|m| m.version().to_string()).unwrap_or_default(),
            active_before: engine.snapshot(&model),
            model,
            dir,
            candidate,
            limits,
            probation,
            started_at: crate::events::now(),
            started: Instant::now(),
            picked: AtomicU64::new(0),
            tally: Mutex::new(Tally::default()),
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        // Poisoned only by a panic between two statements of a tally update; the counts
        // stay usable.
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the next request is one of the `share_pct` percent shadowed: spread
    /// evenly (every other one at 50%), so a short burst gets its share too.
    fn pick(&self) -> bool {
        let n = self.picked.fetch_add(1, Ordering::Relaxed);
        let share = u64::from(self.limits.share_pct.min(100));
        (n + 1) * share / 100 > n * share / 100
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The numbers so far, with the active version's p95 run time over the same period.
    pub fn numbers(&self, engine: &Engine) -> Numbers {
        let now = engine.snapshot(&self.model);
        let run = now.run.since(&self.active_before.run);
        let active = (run.count() > 0).then(|| run.percentiles().p95_ms);
        self.tally().numbers(active)
    }

    /// The report for `/status` and the `shadow-report` event.
    pub fn report(&self, engine: &Engine) -> ShadowStatus {
        ShadowStatus {
            version: self.version.clone(),
            active_version: self.active_version.clone(),
            started: self.started_at.clone(),
            elapsed_s: self.elapsed().as_secs(),
            numbers: self.numbers(engine),
            limits: self.limits.clone(),
        }
    }
}

/// A shadow run's state in `/status` (`ota.models.<model>.shadow`) and its
/// `shadow-report` event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShadowStatus {
    /// The candidate's version.
    pub version: String,
    /// The version serving while it ran.
    pub active_version: String,
    /// When the run started (RFC 3339).
    pub started: String,
    pub elapsed_s: u64,
    pub numbers: Numbers,
    pub limits: Limits,
}

/// The shadow runs in progress, one per model at most. Written by the update task,
/// read by every stream task for every request (one atomic load).
#[derive(Default)]
pub struct Shadows {
    trials: ArcSwap<BTreeMap<String, Arc<Trial>>>,
}

impl Shadows {
    /// Starts (or replaces) the run of `trial.model`.
    pub fn start(&self, trial: Trial) -> Arc<Trial> {
        let trial = Arc::new(trial);
        self.trials.rcu(|old| {
            let mut next = BTreeMap::clone(old);
            next.insert(trial.model.clone(), trial.clone());
            next
        });
        trial
    }

    /// Ends the run of `model`, returning it.
    pub fn end(&self, model: &str) -> Option<Arc<Trial>> {
        let mut ended = None;
        self.trials.rcu(|old| {
            let mut next = BTreeMap::clone(old);
            ended = next.remove(model);
            next
        });
        ended
    }

    /// The run of `model`, if any.
    pub fn get(&self, model: &str) -> Option<Arc<Trial>> {
        self.trials.load().get(model).cloned()
    }

    /// Every run in progress.
    pub fn all(&self) -> Vec<Arc<Trial>> {
        self.trials.load().values().cloned().collect()
    }

    /// The run that takes this request of `model`, if its share picks it and the engine
    /// has idle capacity now (else it is counted as skipped, `busy`, before its input is
    /// copied: under full load nearly every request is, and must cost next to nothing).
    pub fn pick(&self, model: &str, engine: &Engine) -> Option<Arc<Trial>> {
        let trials = self.trials.load();
        if trials.is_empty() {
            return None;
        }
        let trial = trials.get(model).filter(|t| t.pick())?;
        if engine.queue_depth() > 0 || engine.all_busy() {
            trial.tally().skip(report::skip::BUSY);
            return None;
        }
        Some(trial.clone())
    }
}

/// One request for the candidate, held until the active answers are on their way.
pub struct Pending {
    pub trial: Arc<Trial>,
    /// The active version's top-1 answer.
    pub active: Top,
    /// The same pre-processed input the active version ran.
    pub data: Vec<f32>,
    pub stream: String,
    pub reset: bool,
    /// The active request's deadline.
    pub deadline: Instant,
}

/// A stream task's way to the candidate: at most one batch of shadow runs in flight per
/// stream, so a recurrent candidate's state (kept apart from the active version's, under
/// its own load id) sees the stream's windows in order; a batch that finds the previous
/// one still running is skipped (`stream`).
#[derive(Default)]
pub struct Lane {
    busy: Arc<AtomicBool>,
}

/// A candidate run's expected time is this many times its p95 so far: a run that
/// cannot finish well before the request's deadline is not started.
const DEADLINE_MARGIN: u32 = 2;

impl Lane {
    /// Runs `pending` on the candidate, one after another, off the stream task: each
    /// only if the engine has idle capacity and its deadline leaves room, else counted
    /// as skipped. Call it after the active answers were handed on: nothing here waits.
    pub fn submit(&self, engine: &Arc<Engine>, pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        // The usual case under load: no idle worker now. Counted here, without a task.
        if engine.queue_depth() > 0 || engine.all_busy() {
            for p in &pending {
                p.trial.tally().skip(report::skip::BUSY);
            }
            return;
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            for p in &pending {
                p.trial.tally().skip(report::skip::STREAM);
            }
            return;
        }
        let busy = self.busy.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            for p in pending {
                run_one(&engine, p).await;
            }
            busy.store(false, Ordering::Release);
        });
    }
}

async fn run_one(engine: &Engine, p: Pending) {
    let trial = p.trial;
    let expected = trial.tally().run_p95().unwrap_or_default() * DEADLINE_MARGIN;
    if Instant::now() + expected >= p.deadline {
        trial.tally().skip(report::skip::DEADLINE);
        return;
    }
    let req = Request {
        model: trial.model.clone(),
        stream: Some(p.stream),
        data: p.data,
        deadline: p.deadline,
        reset: p.reset,
        shape: None,
    };
    let ticket = match engine.submit_idle(trial.candidate.clone(), req) {
        Ok(Some(t)) => t,
        Ok(None) => return trial.tally().skip(report::skip::BUSY),
        Err(InferError::ShuttingDown) => return,
        Err(e) => return trial.tally().error(e.to_string()),
    };
    match ticket.wait().await {
        Ok(resp) => {
            match report::top1(&trial.candidate.spec.post, resp.post_values()) {
                Some(top) => trial.tally().compare(&p.active, &top, resp.run),
                None => trial.tally().error("the candidate's output has no finite scores".into()),
            };
        }
        Err(InferError::Deadline { .. }) => trial.tally().skip(report::skip::DEADLINE),
        Err(InferError::ShuttingDown) => {}
        Err(e) => trial.tally().error(e.to_string()),
    }
}

/// Why a candidate cannot be shadowed beside the active version: it must read the input
/// the active version's pre-processing makes.
pub fn check_compatible(active: &LoadedModel, candidate: &LoadedModel) -> Result<(), String> {
    if active.spec.pre != candidate.spec.pre {
        return Err(format!(
            "version {} pre-processes its input differently from the active version {} ([pre] differs): a shadow run feeds both the same windows",
            candidate.version(),
            active.version()
        ));
    }
    let (a, c) = (active.spec.data_input(), candidate.spec.data_input());
    if a.len() != c.len() {
        return Err(format!(
            "version {} takes {} input values per request where the active version {} takes {}",
            candidate.version(),
            c.len(),
            active.version(),
            a.len()
        ));
    }
    Ok(())
}
