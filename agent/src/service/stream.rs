//! One stream's task: decode, window, infer, post-process, in order.
//!
//! A stream's requests run one after another: recurrent state and windows need the
//! previous step, and results of one sensor must come out in order. Different streams
//! run in parallel on the engine's workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::result::ResultRecord;
use crate::capture::{self, Capture};
use crate::events::{Event, Events, Kind};
use crate::fallback::{Fallback, Job, Signals, answer};
use crate::monitor::Monitors;
use crate::sources::SensorMessage;
use edge_infer::engine::spec::{ModelSpec, PayloadFormat, PostKind};
use edge_infer::engine::{Engine, InferError};
use edge_infer::pipeline::{self, Payload, SegmentState, Windower};

/// Windows and post-processing memory of one stream, for what serves it: a loaded model
/// (by its load id) or a cloud endpoint.
struct Pipeline {
    serving: u64,
    /// What cuts the stream: its windows and its DSP front end.
    window: (Option<edge_infer::engine::spec::WindowSpec>, Option<edge_infer::engine::dsp_spec::DspSpec>),
    windower: Option<Windower>,
    segment: SegmentState,
    next_index: u64,
    /// Windows of outputs for the stages of a `from = "outputs"` pipeline.
    chain: edge_infer::stages::OutputStages,
}

impl Pipeline {
    fn new(serving: u64, spec: &ModelSpec) -> Pipeline {
        let window = (spec.pre.window.clone(), spec.pre.dsp.clone());
        let windower = Windower::for_spec(spec);
        Pipeline {
            serving,
            window,
            windower,
            segment: SegmentState::default(),
            next_index: 0,
            chain: Default::default(),
        }
    }

    /// The stream's pipeline for a message served by `serving`. A new model version with
    /// the same windows carries the stream's samples over, so an update loses no sensor
    /// data; other changes (or a reset) start afresh.
    fn follow<'a>(
        pipe: &'a mut Option<Pipeline>,
        serving: u64,
        spec: &ModelSpec,
        reset: bool,
    ) -> &'a mut Pipeline {
        match pipe {
            Some(p) if !reset && p.serving == serving => {}
            Some(p) if !reset && p.window.0 == spec.pre.window && p.window.1 == spec.pre.dsp => {
                p.serving = serving;
                // The stages' windows hold the old version's outputs: they start afresh.
                p.chain = Default::default();
            }
            _ => *pipe = Some(Pipeline::new(serving, spec)),
        }
        pipe.get_or_insert_with(|| Pipeline::new(serving, spec))
    }

    /// The model inputs a message's decoded samples make: the spec's windows, or the
    /// message whole; each with its window index and, for windows, its sample offset.
    fn windows(&mut self, values: Vec<f32>) -> Vec<(Vec<f32>, u64, Option<u64>)> {
        match self.windower.as_mut() {
            Some(w) => w.push(&values).into_iter().map(|w| (w.data, w.index, Some(w.offset))).collect(),
            None => {
                self.next_index += 1;
                vec![(values, self.next_index - 1, None)]
            }
        }
    }
}

/// The most a message may carry: the local model's limit, or a cloud endpoint's if that
/// is larger (a payload beyond the local limit may still go to a cloud that takes more).
fn payload_limit(own: usize, local: bool, cloud: Option<usize>) -> usize {
    match (local, cloud) {
        (true, Some(cloud)) => own.max(cloud),
        _ => own,
    }
}

/// The candidate's run of the input the active version just answered locally (a cloud
/// answer is another model's, and a non-finite answer has no top label to compare).
fn shadow_run(
    trial: Option<Arc<crate::shadow::Trial>>,
    data: Option<Vec<f32>>,
    a: &crate::fallback::Answer,
    spec: &ModelSpec,
    stream: &str,
    reset: bool,
    deadline: Instant,
) -> Option<crate::shadow::Pending> {
    let (trial, data) = (trial?, data?);
    if a.place != "local" {
        return None;
    }
    let active = crate::shadow::report::top1(&spec.post, a.post_values())?;
    Some(crate::shadow::Pending { trial, active, data, stream: stream.to_string(), reset, deadline })
}

/// Where a result comes from: the message and its model's spec, and the window.
struct Origin<'a> {
    msg: &'a SensorMessage,
    spec: &'a ModelSpec,
    window: u64,
    /// The input's shape when the payload gave it (the length does not tell it).
    shape: Option<&'a [usize]>,
}

/// Offers a result's input to capture when one of its reasons holds (low confidence,
/// drift, a random share); the store decides within its bounds.
fn offer_to_capture(
    c: &Capture,
    drifting: bool,
    at: &Origin<'_>,
    a: &crate::fallback::Answer,
    outputs: &serde_json::Map<String, serde_json::Value>,
    input: Vec<f32>,
    raw: Option<&(String, Vec<u8>)>,
) {
    let score = outputs.get("score").and_then(serde_json::Value::as_f64);
    let Some(reason) = c.reason(score, capture::Flags { drift: drifting, ..Default::default() }) else {
        return;
    };
    let msg = at.msg;
    let meta = capture::Meta {
        model: msg.model.clone(),
        version: a.version.clone(),
        stream: msg.stream.clone(),
        time_ms: capture::now_ms(),
        reason,
        score,
        window: at.window,
        shape: match at.shape {
            Some(s) => s.to_vec(),
            None => at.spec.data_input().shape_for(input.len()).unwrap_or(vec![input.len()]),
        },
        place: a.place.to_string(),
        outputs: outputs.clone(),
        input_id: msg.input_id.clone(),
        payload_format: raw.map(|(f, _)| f.clone()),
    };
    c.offer(capture::Sample { meta, input, payload: raw.map(|(_, b)| b.clone()) });
}

/// Logs a stream's failures at most once per interval, with how many were not logged,
/// so a sensor sending garbage at 1 kHz does not flood the journal.
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
    events: Events,
}

const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

impl ErrorLog {
    /// A message that could not be run: counted against its model, and reported.
    async fn failed(&mut self, engine: &Engine, model: &str, stream: &str, err: &InferError) {
        engine.count_error(model, err);
        self.report(model, stream, err).await;
    }

    /// Logs (and, with MQTT, publishes as a `request-failed` event) at most once per
    /// interval, with how many were left out.
    async fn report(&mut self, model: &str, stream: &str, err: &(dyn std::fmt::Display + Sync)) {
        if self.last.is_some_and(|t| t.elapsed() < ERROR_LOG_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        let detail =
            serde_json::json!({"stream": stream, "error": err.to_string(), "suppressed": self.suppressed});
        self.events.emit(Event::warning(Kind::RequestFailed, detail).model(model)).await;
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// What every stream task shares.
#[derive(Clone)]
pub(super) struct Deps {
    pub engine: Arc<Engine>,
    pub health: Arc<super::health::Health>,
    pub results: mpsc::Sender<ResultRecord>,
    /// Where failures go (the log, and MQTT when it is on).
    pub events: Events,
    pub fallback: Arc<Fallback>,
    /// Keeps samples worth retraining on; `None` when `[capture]` is off (then the
    /// stream task copies nothing).
    pub capture: Option<Arc<Capture>>,
    /// Drift of each model's inputs and outputs (fed with every local result).
    pub monitors: Arc<Monitors>,
    /// Shadow runs of candidate versions, given the same input after the active answer.
    pub shadows: Arc<crate::shadow::Shadows>,
}

pub(super) async fn run(mut rx: mpsc::Receiver<SensorMessage>, deps: Deps) {
    let Deps { engine, health, results, events, fallback, capture, monitors, shadows } = deps;
    let mut pipe: Option<Pipeline> = None;
    let shadow_lane = crate::shadow::Lane::default();
    let mut errors = ErrorLog { last: None, suppressed: 0, events };
    // Messages answered by a pipeline model, the index of its results.
    let mut pipelined = 0u64;
    while let Some(mut msg) = rx.recv().await {
        // Dropping the receipt settles it (the broker's copy is acknowledged): it rides
        // on the message's last result (settled once that is delivered or spooled), or
        // goes when this iteration ends without one.
        let receipt = msg.receipt.take();
        let local = engine.model(&msg.model);
        // A pipeline of crops answers each message whole; one whose stages take windows
        // of outputs streams like any model, its outputs feeding the stages below.
        let crops = |m: &&Arc<edge_infer::engine::LoadedModel>| {
            !m.stages.is_empty() && !edge_infer::stages::takes_outputs(m)
        };
        if let Some(m) = local.as_ref().filter(crops) {
            pipelined += 1;
            match super::pipelined::answer(&engine, m.clone(), &mut msg, pipelined - 1, health.deadline())
                .await
            {
                Ok(mut record) => {
                    record.receipts.extend(receipt);
                    if results.send(record).await.is_err() {
                        return;
                    }
                }
                Err(err) => errors.failed(&engine, &msg.model, &msg.stream, &err).await,
            }
            continue;
        }
        if let Some(m) = &local
            && m.spec.pre.format == PayloadFormat::Json
        {
            read_envelope(&mut msg);
        }
        let cloud = fallback.cloud(&msg.model);
        let Some((serving, spec)) = crate::fallback::serving_spec(local.as_ref(), cloud.as_ref()) else {
            let err = InferError::UnknownModel { model: msg.model.clone(), loaded: engine.model_names() };
            errors.failed(&engine, &msg.model, &msg.stream, &err).await;
            continue;
        };
        let p = Pipeline::follow(&mut pipe, serving, spec, msg.reset);
        let own_limit = spec.limits.max_payload_bytes;
        let limit =
            payload_limit(own_limit, local.is_some(), cloud.as_ref().and_then(|c| c.max_payload_bytes()));
        let payload = std::mem::replace(&mut msg.payload, Payload::Samples(Vec::new()));
        let wanted = capture.as_ref().filter(|c| c.wanted());
        let raw = wanted.and_then(|c| capture::raw_payload(&payload, spec, c.max_payload_bytes()));
        // An image's size and placement, read from its header: detection boxes map back to it.
        let frame = match &payload {
            Payload::Bytes(b) if spec.pre.format == PayloadFormat::Image => pipeline::frame_for(spec, b),
            Payload::Encoded(PayloadFormat::Image, b) => pipeline::frame_for(spec, b),
            _ => None,
        };
        let decoding = Instant::now();
        let pipeline::DecodedPayload { values, size, shape } =
            match pipeline::decode_within(spec, payload, limit) {
                Ok(v) => v,
                Err(source) => {
                    let err = InferError::Input { model: msg.model.clone(), source };
                    errors.failed(&engine, &msg.model, &msg.stream, &err).await;
                    continue;
                }
            };
        let inputs = p.windows(values);
        // Decoding and the DSP front end, shared by the message's windows.
        let pre_ms = decoding.elapsed().as_secs_f64() * 1000.0 / inputs.len().max(1) as f64;
        let mut reset = msg.reset;
        let mut records = Vec::with_capacity(inputs.len());
        let mut shadowed = Vec::new();
        for (data, window, offset) in inputs {
            let started = Instant::now();
            let deadline = health.deadline();
            let signals = Signals {
                oversized: size > own_limit,
                forced: msg.force_cloud,
                ..Signals::from_engine(&engine, deadline)
            };
            let Some(route) = fallback.route(&msg.model, local.clone(), &signals) else { continue };
            // The window is copied only while capture may keep it, or an anomaly score
            // compares the model's output with it.
            let kept_input = wanted.map(|_| data.clone());
            let anomaly_input = (spec.post.kind == PostKind::Anomaly).then(|| data.clone());
            // Summarised before the data moves into the job; only local answers are
            // compared with the reference (a cloud model's outputs are another model's).
            let watched = local.as_ref().and_then(|m| monitors.summarise(m, &data));
            // A shadow run of a candidate gets the same input, once the active answered.
            let trial = shadows.pick(&msg.model, &engine);
            let shadow_data = trial.as_ref().map(|_| data.clone());
            let shadow_reset = reset;
            let job = Job {
                model: msg.model.clone(),
                stream: Some(msg.stream.clone()),
                data,
                reset,
                wait: deadline,
                // A payload that gives its shape is one model input (no windows).
                shape: shape.clone(),
            };
            reset = false;
            match answer(&engine, &fallback, &route, job).await {
                Ok(a) => {
                    let (due, stream) = (started + deadline, &msg.stream);
                    shadowed.extend(shadow_run(trial, shadow_data, &a, spec, stream, shadow_reset, due));
                    let Some(post) = route.post() else { continue };
                    let mut outputs = a.post_process(
                        post,
                        anomaly_input.as_deref(),
                        frame.as_ref(),
                        window,
                        Some(&mut p.segment),
                    );
                    if spec.post.wants_raw() {
                        outputs.insert("raw".into(), raw_outputs(&a.outputs));
                    }
                    if let (Some(m), Some(summaries), "local") = (&local, watched, a.place)
                        && let Some(change) = monitors.observe(m, summaries, &outputs)
                    {
                        errors.events.emit(change.event(&msg.model)).await;
                    }
                    if let (Some(c), Some(input)) = (wanted, kept_input) {
                        let at = Origin { msg: &msg, spec, window, shape: shape.as_deref() };
                        let drifting = monitors.is_drifting(&msg.model);
                        offer_to_capture(c, drifting, &at, &a, &outputs, input, raw.as_ref());
                    }
                    let (window, outputs) = match &local {
                        Some(m) if a.place == "local" && edge_infer::stages::takes_outputs(m) => {
                            let head = edge_infer::stages::StageLatency {
                                stage: msg.model.clone(),
                                runs: 1,
                                pre_ms,
                                model_ms: started.elapsed().as_secs_f64() * 1000.0,
                                post_ms: 0.0,
                            };
                            let output = a.post_values().to_vec();
                            let deadline = health.deadline();
                            match super::pipelined::feed_outputs(
                                &engine,
                                m.clone(),
                                &mut p.chain,
                                output,
                                head,
                                deadline,
                            )
                            .await
                            {
                                Ok(Some(answer)) => answer,
                                Ok(None) => continue,
                                Err(e) => {
                                    errors.failed(&engine, &msg.model, &msg.stream, &e).await;
                                    continue;
                                }
                            }
                        }
                        _ => (window, outputs),
                    };
                    records.push(ResultRecord {
                        model: msg.model.clone(),
                        version: a.version,
                        stream: msg.stream.clone(),
                        source: msg.source.clone(),
                        window,
                        offset,
                        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                        outputs,
                        input_id: msg.input_id.clone(),
                        place: a.place,
                        reason: a.reason,
                        deferred: a.deferred,
                        receipts: Vec::new(),
                    });
                }
                Err(e) => errors.report(&msg.model, &msg.stream, &e).await,
            }
        }
        if let (Some(last), Some(receipt)) = (records.last_mut(), receipt) {
            last.receipts.push(receipt);
        }
        for record in records {
            if results.send(record).await.is_err() {
                return;
            }
        }
        // Only now, with the active answers on their way, may the candidate run.
        shadow_lane.submit(&engine, shadowed);
    }
}

/// Reads raw bytes (an MQTT message) for a model that takes JSON: an object may carry an
/// `id`, echoed on the result so that the sender can match results to messages (and
/// drop duplicates after a crash), and `"route": "cloud"`, which asks for the cloud
/// fallback (audits, A/B comparisons). Bytes that are not a JSON object stay bytes, for
/// the decoder to report in its own words.
fn read_envelope(msg: &mut SensorMessage) {
    let Payload::Bytes(bytes) = &msg.payload else { return };
    let text = edge_infer::pipeline::strip_bom(bytes);
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) {
        msg.input_id = v.get("id").cloned();
        msg.force_cloud = v.get("route").and_then(|r| r.as_str()) == Some("cloud");
        msg.payload = Payload::Json(v);
    }
}

/// All outputs as `{name: {"shape": [...], "data": [...]}}`.
pub fn raw_outputs(outputs: &[edge_infer::engine::Output]) -> serde_json::Value {
    let map = outputs
        .iter()
        .map(|o| (o.name.clone(), serde_json::json!({"shape": o.shape, "data": o.values})))
        .collect::<serde_json::Map<_, _>>();
    serde_json::Value::Object(map)
}
