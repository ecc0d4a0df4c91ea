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
use crate::pipeline::{self, Payload, SegmentState, Windower};

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
        let windower = model.spec.pre.window.as_ref().map(Windower::new);
        let engine = Engine::start(config);
        let model = engine.install(model);
        Ok(Runner { engine, model, windower, segment: SegmentState::default(), next_index: 0 })
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
            let request = Request {
                model: name.clone(),
                stream: None,
                data,
                deadline: Instant::now() + WINDOW_DEADLINE,
                reset: false,
            };
            let response = self.engine.submit_to(model.clone(), request)?.wait_blocking()?;
            let outputs = model.post().apply(response.post_values(), window, Some(&mut self.segment));
            answers.push(Answer { window, offset, outputs, raw: response.outputs });
        }
        Ok(answers)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The `run_dir` example's demo, as the README shows it: the payloads of
    /// `examples/vibration.jsonl` (the demo model's golden cases, one per line, 256 samples
    /// each) through the spec's 256/128 windows. Every other window is exactly one golden
    /// case and must get its label; the windows between straddle two cases.
    #[test]
    fn the_example_payloads_get_the_golden_labels_on_the_demo_model() {
        let golden: Value = serde_json::from_slice(
            &std::fs::read(root().join("configs/models/vibration/golden.json")).unwrap(),
        )
        .unwrap();
        let labels: Vec<&str> =
            golden["cases"].as_array().unwrap().iter().map(|c| c["label"].as_str().unwrap()).collect();
        let payloads = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/vibration.jsonl"),
        )
        .unwrap();
        let mut runner =
            Runner::open(&root().join("configs/models/vibration"), &EngineConfig::default()).unwrap();
        assert_eq!(runner.model().name(), "vibration");
        let mut answers = Vec::new();
        for line in payloads.lines() {
            answers.extend(runner.push(Payload::Bytes(line.as_bytes().to_vec())).unwrap());
        }
        assert_eq!(labels.len(), 6);
        assert_eq!(answers.len(), 2 * labels.len() - 1, "windows every 128 of 6 x 256 samples");
        for (ix, a) in answers.iter().enumerate() {
            assert_eq!((a.window, a.offset), (ix as u64, Some(128 * ix as u64)));
            assert_eq!(a.raw.len(), 1, "the demo model has one output");
        }
        for (case, label) in labels.iter().enumerate() {
            let a = &answers[2 * case];
            assert_eq!(
                a.outputs["label"], *label,
                "window {} is golden case {case}: {:?}",
                a.window, a.outputs
            );
            assert_eq!(a.outputs["confident"], true, "{:?}", a.outputs);
        }
    }

    #[test]
    fn a_payload_the_spec_cannot_decode_is_a_bad_input_and_the_stream_goes_on() {
        let mut runner =
            Runner::open(&root().join("configs/models/vibration"), &EngineConfig::default()).unwrap();
        let err = runner.push(Payload::Bytes(b"not json".to_vec())).unwrap_err();
        assert_eq!(err.kind(), "bad_input", "{err}");
        assert!(runner.push(Payload::Samples(vec![0.0; 200])).unwrap().is_empty(), "no window filled yet");
        assert_eq!(runner.push(Payload::Samples(vec![0.0; 56])).unwrap().len(), 1);
    }
}
