//! `from = "outputs"`: a stage that takes a sliding window of the stage before it's
//! outputs (openWakeWord: one speech embedding every 80 ms, the wake-word classifier over
//! the last 16). Each stream keeps its own window of outputs, so every output is computed
//! once and each new one runs the stage over the window it completes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::{StageFrom, StageLatency, ms, run_model};
pub use crate::engine::spec::OutputWindowSpec;
use crate::engine::{Engine, InferError, LoadedModel};
use crate::pipeline::SegmentState;

/// One stage's per-stream memory: the last outputs of the stage before, how many came
/// since its last run, its next window index and its segment hysteresis.
#[derive(Debug, Default)]
struct StageWindow {
    outputs: VecDeque<Vec<f32>>,
    since: usize,
    next: u64,
    segment: SegmentState,
}

impl StageWindow {
    /// Adds one output; the window's values, oldest first, when a run is due: the first
    /// once the window is full, then every `hop` outputs.
    fn push(&mut self, value: Vec<f32>, window: &OutputWindowSpec) -> Option<Vec<f32>> {
        self.outputs.push_back(value);
        while self.outputs.len() > window.size {
            self.outputs.pop_front();
        }
        self.since += 1;
        let due = self.outputs.len() == window.size && (self.next == 0 || self.since >= window.hop);
        if !due {
            return None;
        }
        self.since = 0;
        Some(self.outputs.iter().flatten().copied().collect())
    }
}

/// The per-stream state of a pipeline whose stages take windows of outputs.
#[derive(Debug, Default)]
pub struct OutputStages {
    stages: Vec<StageWindow>,
}

/// What one output of the first model led to: the last stage's answer when every stage
/// ran (`None` while a window is still filling), and each stage's latency.
#[derive(Debug)]
pub struct Fed {
    /// The last stage's window index and post-processed answer (`score`, `label`,
    /// `segment`, ...).
    pub answer: Option<(u64, Map<String, Value>)>,
    /// The stages that ran, first model included.
    pub stages: Vec<StageLatency>,
}

impl Fed {
    /// The answer as a result's outputs: the last stage's answer and `stages`.
    pub fn into_outputs(self) -> Option<(u64, Map<String, Value>)> {
        let stages = self.stages;
        self.answer.map(|(window, mut out)| {
            out.insert("stages".into(), json!(stages));
            (window, out)
        })
    }
}

/// Whether `head`'s pipeline takes windows of outputs (every stage `from = "outputs"`).
pub fn takes_outputs(head: &LoadedModel) -> bool {
    !head.spec.stages.is_empty() && head.spec.stages.iter().all(|s| s.from == StageFrom::Outputs)
}

impl OutputStages {
    /// Empty windows for `head`'s stages.
    pub fn new(head: &LoadedModel) -> OutputStages {
        OutputStages { stages: head.stages.iter().map(|_| StageWindow::default()).collect() }
    }

    /// Feeds one output of `head` (its values, and the latency of computing them) to the
    /// first stage; a stage that completes a window runs, and its output feeds the next.
    /// Blocks while the models run; `deadline` bounds each run's wait for a worker.
    pub fn feed(
        &mut self,
        engine: &Engine,
        head: &LoadedModel,
        output: Vec<f32>,
        head_latency: StageLatency,
        deadline: Duration,
    ) -> Result<Fed, InferError> {
        if self.stages.len() != head.stages.len() {
            *self = OutputStages::new(head);
        }
        let mut lat = vec![head_latency];
        let mut value = output;
        let last = head.stages.len().saturating_sub(1);
        for (ix, (stage, state)) in head.stages.iter().zip(self.stages.iter_mut()).enumerate() {
            let Some(window) = head.spec.stages[ix].window.as_ref() else { break };
            let started = Instant::now();
            let Some(data) = state.push(value, window) else {
                return Ok(Fed { answer: None, stages: lat });
            };
            let mut l = StageLatency { stage: stage.name().to_string(), runs: 1, ..Default::default() };
            l.pre_ms = ms(started.elapsed());
            let started = Instant::now();
            let response = run_model(engine, stage, data, None, deadline)?;
            l.model_ms = ms(started.elapsed());
            let index = state.next;
            state.next += 1;
            if ix == last {
                let started = Instant::now();
                let answer =
                    stage.post().apply_to(response.post_values(), None, index, Some(&mut state.segment));
                l.post_ms = ms(started.elapsed());
                lat.push(l);
                return Ok(Fed { answer: Some((index, answer)), stages: lat });
            }
            value = response.post_output().map(|o| o.values.clone()).unwrap_or_default();
            lat.push(l);
        }
        Ok(Fed { answer: None, stages: lat })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{OutputWindowSpec, StageWindow};

    proptest! {
        /// Agreement with the window written out by hand: runs come at output
        /// size - 1, then every hop, each holding the last `size` outputs in order, with
        /// only `size` outputs kept (bounded memory).
        #[test]
        fn a_window_of_outputs_runs_at_size_then_every_hop(size in 1usize..20, hop in 1usize..8, n in 0usize..80) {
            let spec = OutputWindowSpec { size, hop };
            let mut w = StageWindow::default();
            for i in 0..n {
                let got = w.push(vec![i as f32, -(i as f32)], &spec);
                if got.is_some() {
                    w.next += 1;
                }
                let due = i + 1 >= size && (i + 1 - size) % hop == 0;
                let want: Option<Vec<f32>> =
                    due.then(|| (i + 1 - size..=i).flat_map(|k| [k as f32, -(k as f32)]).collect());
                prop_assert_eq!(got, want, "output {}", i);
                prop_assert!(w.outputs.len() <= size);
            }
        }
    }
}
