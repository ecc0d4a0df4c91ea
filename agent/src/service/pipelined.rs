//! A message for a model that declares a pipeline (`[[stage]]` in its spec): the
//! payload (one image) runs through every stage on the engine's workers, and the result
//! holds each box's answer and each stage's latency (edge_infer::stages). A pipeline has
//! no windows, no recurrent state and no cloud fallback, so it skips those steps of the
//! stream task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::result::ResultRecord;
use crate::sources::SensorMessage;
use edge_infer::engine::{Engine, InferError, LoadedModel};
use edge_infer::pipeline::{InputError, Payload};
use edge_infer::stages::{OutputStages, StageLatency};

/// Runs `msg`'s payload through `model`'s pipeline; a result record on success.
pub(super) async fn answer(
    engine: &Arc<Engine>,
    model: Arc<LoadedModel>,
    msg: &mut SensorMessage,
    index: u64,
    deadline: Duration,
) -> Result<ResultRecord, InferError> {
    let started = Instant::now();
    let name = model.name().to_string();
    let bad = |source: InputError| InferError::Input { model: name.clone(), source };
    let payload = std::mem::replace(&mut msg.payload, Payload::Samples(Vec::new()));
    // A pipeline starts from an encoded image; samples or JSON are not one.
    let bytes = match payload {
        Payload::Bytes(b) => b,
        _ => {
            return Err(bad(InputError::Image {
                reason: "a pipeline takes one PNG or JPEG per message".into(),
            }));
        }
    };
    let max = model.spec.limits.max_payload_bytes;
    if bytes.len() > max {
        return Err(bad(InputError::TooLarge { bytes: bytes.len(), max }));
    }
    let (engine, run_model) = (engine.clone(), model.clone());
    let outputs: Map<String, Value> =
        tokio::task::spawn_blocking(move || edge_infer::stages::run(&engine, &run_model, &bytes, deadline))
            .await
            .map_err(|_| InferError::ShuttingDown)??;
    Ok(ResultRecord {
        model: name,
        version: model.version().to_string(),
        stream: msg.stream.clone(),
        source: msg.source.clone(),
        window: index,
        offset: None,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        outputs,
        input_id: msg.input_id.clone(),
        place: "local",
        reason: None,
        deferred: None,
        receipts: Vec::new(),
    })
}

/// One output of a model whose stages take windows of outputs (`from = "outputs"`),
/// fed to the stream's windows: the last stage's window index and answer (with each
/// stage's latency) when a window completed, `None` while one is filling. The stream's
/// window of outputs moves to a blocking thread while the stages run, and back.
pub(super) async fn feed_outputs(
    engine: &Arc<Engine>,
    model: Arc<LoadedModel>,
    chain: &mut OutputStages,
    output: Vec<f32>,
    head: StageLatency,
    deadline: Duration,
) -> Result<Option<(u64, Map<String, Value>)>, InferError> {
    let mut state = std::mem::take(chain);
    let engine = engine.clone();
    let (state, fed) = tokio::task::spawn_blocking(move || {
        let fed = state.feed(&engine, &model, output, head, deadline);
        (state, fed)
    })
    .await
    .map_err(|_| InferError::ShuttingDown)?;
    *chain = state;
    Ok(fed?.into_outputs())
}
