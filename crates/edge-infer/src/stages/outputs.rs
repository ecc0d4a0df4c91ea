//! `from = "outputs"`: a stage that takes a sliding window of the stage before it's
//! outputs (openWakeWord: one speech embedding every 80 ms, the wake-word classifier over
//! the last 16). Each stream keeps its own window of outputs, so every output is computed
//! once and each new one runs the stage over the window it completes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{StageFrom, StageLatency, ms, run_model};
use crate::engine::{Engine, InferError, LoadedModel};
use crate::pipeline::SegmentState;

/// `[stage.window]`: how many of the previous stage's outputs one run takes, and by how
/// many outputs the window advances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputWindowSpec {
    /// Outputs per run (16 embeddings for openWakeWord's classifiers).
    pub size: usize,
    /// Outputs between runs (1: a run for every new output).
    #[serde(default = "one")]
    pub hop: usize,
}

fn one() -> usize {
    1
}

/// One stage's per-stream memory: the last outputs of the stage before, how many came
/// since its last run, its next window index and its segment hysteresis.
#[derive(Debug, Default)]
struct StageWindow {
    outputs: VecDeque<Vec<f32>>,
    since: usize,
    next: u64,
    segment: SegmentState,
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
            state.outputs.push_back(value);
            while state.outputs.len() > window.size {
                state.outputs.pop_front();
            }
            state.since += 1;
            // The first run waits for a full window; later ones come every `hop` outputs.
            let due = state.outputs.len() == window.size && (state.next == 0 || state.since >= window.hop);
            if !due {
                return Ok(Fed { answer: None, stages: lat });
            }
            state.since = 0;
            let data: Vec<f32> = state.outputs.iter().flatten().copied().collect();
            let mut l = StageLatency { stage: stage.name().to_string(), runs: 1, ..Default::default() };
            l.pre_ms = ms(started.elapsed());
            let started = Instant::now();
            let response = run_model(engine, stage, data, deadline)?;
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
