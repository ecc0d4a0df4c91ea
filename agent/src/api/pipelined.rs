//! `POST /v2/models/{name}/infer` for a model that declares a pipeline (`[[stage]]`):
//! the request brings one image as a `BYTES` input, every stage runs on the engine, and
//! the answer's `edge_agent.result` holds each box's answer and each stage's latency
//! (`lines`, `stages`). There are no output tensors: the stages' raw outputs are many
//! and of varying shapes, and the result is the answer.

use std::sync::Arc;
use std::time::Instant;

use axum::response::Response;
use serde_json::{Map, Value, json};

use super::ApiState;
use super::error::ApiError;
use super::request::{self, InferRequest, InputTensor};
use super::response;
use edge_infer::engine::LoadedModel;

pub(super) async fn infer(
    st: &ApiState,
    model: Arc<LoadedModel>,
    req: &InferRequest,
    started: Instant,
) -> Result<Response, ApiError> {
    if edge_infer::stages::takes_outputs(&model) {
        return Err(ApiError::bad_request(format!(
            "model `{}` is a pipeline whose stages take windows of its outputs, kept per stream: \
             send its input as a stream over MQTT or a source, or run `edge-agent infer` on a file",
            model.name()
        )));
    }
    let want = model.spec.data_input();
    let Some(input) = req.inputs.iter().find(|i| i.name == want.name) else {
        return Err(ApiError::bad_request(format!(
            "model `{}` is a pipeline: send its input `{}` as BYTES holding one PNG or JPEG image",
            model.name(),
            want.name
        )));
    };
    if input.datatype != "BYTES" {
        return Err(ApiError::bad_request(format!(
            "input `{}` has datatype {}, but model `{}` is a pipeline that takes one PNG or JPEG image as BYTES",
            input.name,
            input.datatype,
            model.name()
        )));
    }
    let bytes = payload_bytes(input)?;
    let max = model.spec.limits.max_payload_bytes;
    if bytes.len() > max {
        return Err(ApiError::bad_request(format!(
            "input `{}`: the image has {} bytes, more than the model's limits.max_payload_bytes ({max})",
            input.name,
            bytes.len()
        )));
    }
    let (engine, run_model, deadline) = (st.engine.clone(), model.clone(), st.health.deadline());
    let result =
        tokio::task::spawn_blocking(move || edge_infer::stages::run(&engine, &run_model, &bytes, deadline))
            .await
            .map_err(|_| ApiError::unavailable("the pipeline's worker stopped; retry".to_string()))??;
    let mut parameters = Map::new();
    parameters.insert("place".into(), json!("local"));
    parameters.insert("latency_ms".into(), json!((started.elapsed().as_secs_f64() * 1e6).round() / 1e3));
    let mut extension = Map::new();
    extension.insert("result".into(), Value::Object(result));
    let header = response::Header {
        model_name: model.name(),
        model_version: model.version(),
        id: req.id.as_deref(),
        parameters,
        extension,
    };
    Ok(response::encode(header, &[]))
}

/// The one payload of a `BYTES` input, raw or base64 as its `content_type` says.
pub(super) fn payload_bytes(input: &InputTensor) -> Result<Vec<u8>, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("input `{}` (BYTES): {why}", input.name));
    let elements = input.data.to_bytes().map_err(bad)?;
    if elements.len() != 1 || request::element_count(&input.shape) != Some(1) {
        return Err(bad(format!(
            "send one payload with shape [1], not {} element(s) with shape {:?}",
            elements.len(),
            input.shape
        )));
    }
    let payload = match input.parameters.get("content_type") {
        None => elements[0].to_vec(),
        Some(Value::String(t)) if t == "base64" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(elements[0])
                .map_err(|e| bad(format!("parameters.content_type is base64 but the payload is not: {e}")))?
        }
        Some(other) => {
            return Err(bad(format!(
                "parameters.content_type must be \"base64\" (or absent for raw bytes), got {other}"
            )));
        }
    };
    Ok(payload)
}
