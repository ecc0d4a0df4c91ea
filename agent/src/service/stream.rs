//! One stream's task: decode, window, infer, post-process, in order.
//!
//! A stream's requests run one after another: recurrent state and windows need the
//! previous step, and results of one sensor must come out in order. Different streams
//! run in parallel on the engine's workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::result::ResultRecord;
use crate::engine::{Engine, InferError, LoadedModel, Request};
use crate::pipeline::{self, SegmentState, Windower};
use crate::sources::SensorMessage;

/// Windows and post-processing memory of one stream, for one loaded model.
struct Pipeline {
    model: Arc<LoadedModel>,
    windower: Option<Windower>,
    segment: SegmentState,
    next_index: u64,
}

impl Pipeline {
    fn new(model: Arc<LoadedModel>) -> Pipeline {
        let windower = model.spec.pre.window.as_ref().map(Windower::new);
        Pipeline { model, windower, segment: SegmentState::default(), next_index: 0 }
    }
}

/// Logs a stream's failures at most once per interval, with how many were not logged,
/// so a sensor sending garbage at 1 kHz does not flood the journal.
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
    events: Option<crate::mqtt::Mqtt>,
}

const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

impl ErrorLog {
    /// Logs (and, with MQTT, publishes as a `request-failed` event) at most once per
    /// interval, with how many were left out.
    async fn report(&mut self, model: &str, stream: &str, err: &(dyn std::fmt::Display + Sync)) {
        if self.last.is_some_and(|t| t.elapsed() < ERROR_LOG_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(%model, %stream, error = %err, suppressed = self.suppressed, "request failed");
        if let Some(m) = &self.events {
            let detail = serde_json::json!({"stream": stream, "error": err.to_string(), "suppressed": self.suppressed});
            m.event("request-failed", "warning", Some(model), detail).await;
        }
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

pub(super) async fn run(
    mut rx: mpsc::Receiver<SensorMessage>,
    engine: Arc<Engine>,
    health: Arc<super::health::Health>,
    results: mpsc::Sender<ResultRecord>,
    events: Option<crate::mqtt::Mqtt>,
) {
    let mut pipe: Option<Pipeline> = None;
    let mut errors = ErrorLog { last: None, suppressed: 0, events };
    while let Some(mut msg) = rx.recv().await {
        // Dropping `ack` acknowledges the broker's copy: it rides on the message's last
        // result (acknowledged once that is delivered or spooled), or goes when this
        // iteration ends without one.
        let ack = msg.ack.take();
        let Some(model) = engine.model(&msg.model) else {
            let err = InferError::UnknownModel { model: msg.model.clone(), loaded: engine.model_names() };
            engine.count_error(&msg.model, &err);
            errors.report(&msg.model, &msg.stream, &err).await;
            continue;
        };
        // A new model version with the same windows carries the stream's samples over,
        // so an update loses no sensor data; other changes (or a reset) start afresh.
        let switched = pipe.as_ref().is_some_and(|p| p.model.id != model.id);
        if msg.reset || pipe.is_none() {
            pipe = Some(Pipeline::new(model.clone()));
        } else if switched && let Some(p) = pipe.as_mut() {
            if p.model.spec.pre.window == model.spec.pre.window {
                p.model = model.clone();
            } else {
                pipe = Some(Pipeline::new(model.clone()));
            }
        }
        let Some(p) = pipe.as_mut() else { continue };
        let values = match pipeline::decode(&model.spec, msg.payload) {
            Ok(v) => v,
            Err(source) => {
                let err = InferError::Input { model: msg.model.clone(), source };
                engine.count_error(&msg.model, &err);
                errors.report(&msg.model, &msg.stream, &err).await;
                continue;
            }
        };
        let inputs: Vec<(Vec<f32>, u64, Option<u64>)> = match p.windower.as_mut() {
            Some(w) => w.push(&values).into_iter().map(|w| (w.data, w.index, Some(w.offset))).collect(),
            None => {
                p.next_index += 1;
                vec![(values, p.next_index - 1, None)]
            }
        };
        let mut reset = msg.reset;
        let mut records = Vec::with_capacity(inputs.len());
        for (data, window, offset) in inputs {
            let started = Instant::now();
            let req = Request {
                model: msg.model.clone(),
                stream: Some(msg.stream.clone()),
                data,
                deadline: started + health.deadline(),
                reset,
            };
            reset = false;
            let reply = match engine.submit_to(model.clone(), req) {
                Ok(ticket) => ticket.wait().await,
                Err(e) => Err(e),
            };
            match reply {
                Ok(resp) => {
                    let mut outputs = model.post().apply(resp.post_values(), window, Some(&mut p.segment));
                    if model.spec.post.raw {
                        outputs.insert("raw".into(), raw_outputs(&resp.outputs));
                    }
                    let record = ResultRecord {
                        model: msg.model.clone(),
                        version: resp.model.version().to_string(),
                        stream: msg.stream.clone(),
                        source: msg.source.clone(),
                        window,
                        offset,
                        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                        outputs,
                        input_id: msg.input_id.clone(),
                        acks: Vec::new(),
                    };
                    records.push(record);
                }
                Err(e) => errors.report(&msg.model, &msg.stream, &e).await,
            }
        }
        if let (Some(last), Some(ack)) = (records.last_mut(), ack) {
            last.acks.push(ack);
        }
        for record in records {
            if results.send(record).await.is_err() {
                return;
            }
        }
    }
}

/// All outputs as `{name: {"shape": [...], "data": [...]}}`.
pub fn raw_outputs(outputs: &[crate::engine::Output]) -> serde_json::Value {
    let map = outputs
        .iter()
        .map(|o| (o.name.clone(), serde_json::json!({"shape": o.shape, "data": o.values})))
        .collect::<serde_json::Map<_, _>>();
    serde_json::Value::Object(map)
}
