//! One model directory run the way the agent runs a stream, for programs that want a
//! model's answers without the agent's sources, MQTT or HTTP: payloads are decoded by
//! the spec's pre-processing, cut into the spec's windows, run on an engine of their
//! own, and post-processed into answers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::{Engine, EngineConfig, InferError, LoadError, LoadedModel, Output, Request};
use crate::pipeline::{self, InputError, Payload, SegmentState, Windower};

/// How long one window may wait for a worker. A runner feeds its engine one window at a
/// time, so this bounds a stuck run, not a queue.
const WINDOW_DEADLINE: Duration = Duration::from_secs(30);

/// A loaded model and one stream's state: its windower, its segment hysteresis and its
/// recurrent state (kept by the engine under the stream `default`).
pub struct Runner {
    engine: Engine,
    model: Arc<LoadedModel>,
    windower: Option<Windower>,
    segment: SegmentState,
    /// Index of the next answer when the spec cuts no windows (one per payload).
    next_index: u64,
    /// The windows of outputs of a pipeline whose stages take them.
    chain: crate::stages::OutputStages,
}

/// The answer to one model input (one window, or one payload without windows).
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// Index of the input in the stream, from 0.
    pub window: u64,
    /// Stream offset of the window's first new sample; `None` without windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The post-processed answer (`class`, `label`, `score`, `top`, ...), as in the
    /// agent's results; empty with `post.kind = "none"`, where `raw` is the answer.
    pub outputs: Map<String, Value>,
    /// Every output tensor of the model, in graph order.
    #[serde(skip)]
    pub raw: Vec<Output>,
}

impl Runner {
    /// Loads `dir` (its `model.toml` and the model it names) within `config`'s model
    /// limits, and starts an engine of `config`'s size for it.
    pub fn open(dir: &Path, config: &EngineConfig) -> Result<Runner, LoadError> {
        let model = LoadedModel::load_dir(dir, &config.model_limits)?;
        let windower = Windower::for_spec(&model.spec);
        let engine = Engine::start(config);
        let model = engine.install(model);
        let chain = crate::stages::OutputStages::new(&model);
        Ok(Runner { engine, model, windower, segment: SegmentState::default(), next_index: 0, chain })
    }

    /// The model being run.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// Decodes one payload and answers every input it completes: with windows, none
    /// until a window fills, then one per window; without, one per payload. Blocks the
    /// calling thread while the model runs.
    pub fn push(&mut self, payload: Payload) -> Result<Vec<Answer>, InferError> {
        let model = self.model.clone();
        let name = model.name().to_string();
        let chained = crate::stages::takes_outputs(&model);
        if !model.stages.is_empty() && !chained {
            // A pipeline takes one image per payload; its answer is the last stage's
            // per box, with every stage's latency.
            let Payload::Bytes(bytes) = payload else {
                return Err(InferError::Input { model: name, source: InputError::NoImageSpec });
            };
            let outputs = crate::stages::run(&self.engine, &model, &bytes, WINDOW_DEADLINE)?;
            self.next_index += 1;
            return Ok(vec![Answer { window: self.next_index - 1, offset: None, outputs, raw: Vec::new() }]);
        }
        // An image's frame gives the data input's shape, which the number of values
        // does not when the image's height and width both vary, and maps detection
        // boxes back to the image.
        let frame = match &payload {
            Payload::Bytes(b) if model.spec.pre.format == crate::engine::spec::PayloadFormat::Image => {
                pipeline::frame_for(&model.spec, b)
            }
            Payload::Encoded(crate::engine::spec::PayloadFormat::Image, b) => {
                pipeline::frame_for(&model.spec, b)
            }
            _ => None,
        };
        let shape = frame.as_ref().and_then(|f| model.spec.image_input_shape(f.placement.frame));
        let values = pipeline::decode(&model.spec, payload)
            .map_err(|source| InferError::Input { model: name.clone(), source })?;
        let inputs: Vec<(Vec<f32>, u64, Option<u64>)> = match self.windower.as_mut() {
            Some(w) => w.push(&values).into_iter().map(|w| (w.data, w.index, Some(w.offset))).collect(),
            None => {
                self.next_index += 1;
                vec![(values, self.next_index - 1, None)]
            }
        };
        let mut answers = Vec::with_capacity(inputs.len());
        for (data, window, offset) in inputs {
            // Kept for post-processing that compares input and output (anomaly scores).
            let request_data = if model.spec.post.kind == crate::engine::spec::PostKind::Anomaly {
                data.clone()
            } else {
                Vec::new()
            };
            let request = Request {
                model: name.clone(),
                stream: None,
                data,
                deadline: Instant::now() + WINDOW_DEADLINE,
                reset: false,
                shape: shape.clone(),
            };
            let started = Instant::now();
            let response = self.engine.infer_blocking_to(model.clone(), request)?;
            if chained {
                // The output joins the stages' windows; an answer per run of the last stage.
                let head = crate::stages::StageLatency {
                    stage: name.clone(),
                    runs: 1,
                    model_ms: started.elapsed().as_secs_f64() * 1000.0,
                    ..Default::default()
                };
                let output = response.post_values().to_vec();
                let fed = self.chain.feed(&self.engine, &model, output, head, WINDOW_DEADLINE)?;
                if let Some((window, outputs)) = fed.into_outputs() {
                    answers.push(Answer { window, offset, outputs, raw: Vec::new() });
                }
                continue;
            }
            // Detection boxes map back to the image through its frame.
            let outputs = model.post().apply_answer(
                response.post_output(),
                Some(&request_data),
                frame.as_ref(),
                window,
                Some(&mut self.segment),
            );
            answers.push(Answer { window, offset, outputs, raw: response.outputs });
        }
        Ok(answers)
    }
}

#[cfg(all(test, feature = "onnx"))] // on real ONNX models
mod tests;
