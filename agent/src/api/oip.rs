//! The Open Inference Protocol v2 REST API (KServe, Triton, MLServer): health, server
//! and model metadata, readiness, inference with JSON tensors.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::ApiState;
use super::error::ApiError;
use crate::engine::LoadedModel;
use crate::engine::spec::{DType, InputFrom, ModelSpec};
use crate::pipeline::{InputError, check_finite};

/// OIP datatype name of an engine dtype name (`f32` → `FP32`).
pub fn oip_datatype(dtype: &str) -> &'static str {
    match dtype {
        "f32" => "FP32",
        "f64" => "FP64",
        "f16" => "FP16",
        "i64" => "INT64",
        "i32" => "INT32",
        "i16" => "INT16",
        "i8" => "INT8",
        "u8" => "UINT8",
        "u16" => "UINT16",
        "u32" => "UINT32",
        "u64" => "UINT64",
        "bool" => "BOOL",
        _ => "BYTES",
    }
}

fn spec_datatype(dt: DType) -> &'static str {
    oip_datatype(dt.name())
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    #[allow(dead_code)] // accepted as the protocol allows; none are acted on
    parameters: Option<Map<String, Value>>,
    data: TensorData,
}

/// Tensor data, flat or nested, read straight into `f32`s: a 1x3x48x192 image is 27,648
/// numbers, and building a JSON value per number first doubled the time a request took.
#[derive(Debug, Default)]
struct TensorData(Vec<f32>);

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::DeserializeSeed;
        let mut values = Vec::new();
        Flatten(&mut values).deserialize(d)?;
        Ok(TensorData(values))
    }
}

/// Appends every number (booleans as 0 and 1) of a nested array to a vector.
struct Flatten<'a>(&'a mut Vec<f32>);

impl<'de> serde::de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, a boolean, or an array of them")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push(if v { 1.0 } else { 0.0 });
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
struct InferResponse {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    parameters: Map<String, Value>,
    outputs: Vec<ResponseOutput>,
}

#[derive(Debug, Serialize)]
struct ResponseOutput {
    name: String,
    shape: Vec<usize>,
    datatype: &'static str,
    data: Vec<Value>,
}

/// `GET /v2/health/live`: the process answers.
pub async fn live() -> StatusCode {
    StatusCode::OK
}

/// `GET /v2/health/ready`: models loaded and not draining.
pub async fn ready(State(st): State<ApiState>) -> StatusCode {
    if st.health.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "edge-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

fn find_model(st: &ApiState, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, ApiError> {
    let model = st.engine.model(name).ok_or_else(|| {
        ApiError::not_found(format!("model `{name}` is not loaded (loaded: {})", st.engine.model_names()))
    })?;
    if let Some(v) = version
        && v != model.version()
    {
        return Err(ApiError::not_found(format!(
            "model `{name}` version `{v}` is not loaded (serving version `{}`)",
            model.version()
        )));
    }
    Ok(model)
}

fn metadata(model: &LoadedModel) -> Value {
    let tensors = |list: &[crate::engine::model::TensorInfo], inputs: bool| -> Vec<Value> {
        list.iter()
            .filter(|t| {
                // Only what a client sends or reads: state and constants are the agent's business.
                let spec = model.spec.inputs.iter().find(|i| i.name == t.name);
                if inputs {
                    spec.is_none_or(|i| i.from == InputFrom::Data)
                } else {
                    !model.is_state_output(&t.name)
                }
            })
            .map(|t| {
                // A symbolic dimension (a spec range, or what follows from one) is -1, as
                // KServe writes a variable dimension.
                let shape: Vec<i64> = match &t.dims {
                    Some(dims) => dims.iter().map(|d| d.parse().unwrap_or(-1)).collect(),
                    None => t.shape.iter().map(|n| *n as i64).collect(),
                };
                json!({"name": t.name, "datatype": oip_datatype(&t.dtype), "shape": shape})
            })
            .collect()
    };
    json!({
        "name": model.name(),
        "versions": [model.version()],
        "platform": "onnx_onnxv1",
        "inputs": tensors(&model.inputs, true),
        "outputs": tensors(&model.outputs, false),
    })
}

/// `GET /v2/models/{name}`.
pub async fn model_metadata(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = find_model(&st, &name, None)?;
    Ok(Json(metadata(&model)))
}

/// `GET /v2/models/{name}/versions/{version}`.
pub async fn model_version_metadata(
    State(st): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let model = find_model(&st, &name, Some(&version))?;
    Ok(Json(metadata(&model)))
}

fn readiness(st: &ApiState, name: &str, version: Option<&str>) -> Response {
    match find_model(st, name, version) {
        Ok(m) => {
            let ready = st.health.is_ready();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (status, Json(json!({"name": m.name(), "ready": ready}))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /v2/models/{name}/ready`.
pub async fn model_ready(State(st): State<ApiState>, Path(name): Path<String>) -> Response {
    readiness(&st, &name, None)
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
pub async fn model_version_ready(
    State(st): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    readiness(&st, &name, Some(&version))
}

/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    infer_inner(st, name, None, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
pub async fn infer_version(
    State(st): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    infer_inner(st, name, Some(version), body).await
}

async fn infer_inner(
    st: ApiState,
    name: String,
    version: Option<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // Overload answers at once rather than queueing without bound. The body is still
    // read (and discarded, within the same limits): a server that answers before taking
    // the upload makes clients fail with a broken pipe instead of reading the 503.
    let Ok(_permit) = st.inflight.clone().try_acquire_owned() else {
        st.counters.overloaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        super::discard_body(body, st.limits.max_body_bytes, st.limits.body_timeout).await;
        return Err(ApiError::unavailable(format!(
            "too many requests in flight (limit {}); retry later",
            st.limits.max_concurrency
        )));
    };
    let bytes = super::read_body(body, st.limits.max_body_bytes, st.limits.body_timeout).await?;
    let mut req: InferRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not a valid inference request: {e}")))?;
    // A model that is not installed may still have a cloud endpoint (with its spec).
    let fallback = st.health.fallback().cloned();
    let cloud = fallback.as_ref().and_then(|f| f.cloud(&name));
    let (local, missing) = match find_model(&st, &name, version.as_deref()) {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(e)),
    };
    // A request for a named version is only for the installed model.
    let cloud_spec = cloud.as_ref().filter(|_| version.is_none());
    let Some((_, spec)) = crate::fallback::serving_spec(local.as_ref(), cloud_spec) else {
        return Err(missing.unwrap_or_else(|| ApiError::not_found(format!("model `{name}` is not loaded"))));
    };
    let data = data_tensor(spec, &name, &mut req)?;
    let requested = match &local {
        Some(m) => requested_outputs(m, req.outputs.as_deref())?,
        None => req.outputs.as_deref().unwrap_or_default().iter().map(|r| r.name.clone()).collect(),
    };
    let params = req.parameters.unwrap_or_default();
    let stream = match params.get("stream") {
        None => None,
        Some(Value::String(s)) if crate::config::is_valid_id(s) => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "parameters.stream must be an id (A-Z a-z 0-9 . _ -), got {other}"
            )));
        }
    };
    let reset = matches!(params.get("reset"), Some(Value::Bool(true)));
    let forced = match params.get("route") {
        None => false,
        Some(Value::String(r)) if r == "cloud" => true,
        Some(Value::String(r)) if r == "auto" => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "parameters.route must be \"cloud\" or \"auto\", got {other}"
            )));
        }
    };

    let deadline = st.health.deadline();
    let job = crate::fallback::Job {
        model: name.clone(),
        stream: stream.or_else(|| Some("api".into())),
        data,
        wait: deadline,
        reset,
    };
    // The service sets the fallback before the API listens; without it nothing can run.
    let Some(f) = &fallback else {
        return Err(ApiError::unavailable("the agent is starting; retry".to_string()));
    };
    let signals =
        crate::fallback::Signals { forced, ..crate::fallback::Signals::from_engine(&st.engine, deadline) };
    let Some(route) = f.route(&name, local.clone(), &signals) else {
        return Err(ApiError::not_found(format!("model `{name}` is not loaded")));
    };
    let answer = crate::fallback::answer(&st.engine, f, &route, job).await.map_err(|e| match e {
        crate::fallback::Failure::Local(e) => ApiError::from(e),
        rejected => ApiError::unavailable(rejected.to_string()),
    })?;
    let result = route.post().map(|p| p.apply(answer.post_values(), 0, None)).unwrap_or_default();

    let outputs = answer
        .outputs
        .iter()
        .filter(|o| requested.is_empty() || requested.iter().any(|r| r == &o.name))
        .map(|o| {
            // The local model's declared type where it has the output; the cloud's
            // answers are decoded as numbers and returned as FP32 otherwise.
            let dtype = local
                .as_ref()
                .and_then(|m| m.outputs.iter().find(|i| i.name == o.name))
                .map(|i| i.dtype.as_str());
            let datatype = dtype.map(oip_datatype).unwrap_or("FP32");
            let data = o
                .values
                .iter()
                .map(|v| match datatype {
                    "FP32" | "FP64" | "FP16" => json!(v),
                    "BOOL" => json!(*v != 0.0),
                    _ => json!(*v as i64),
                })
                .collect();
            ResponseOutput { name: o.name.clone(), shape: o.shape.clone(), datatype, data }
        })
        .collect();
    let mut parameters = Map::new();
    parameters.insert("place".into(), json!(answer.place));
    parameters.insert("reason".into(), json!(answer.reason));
    parameters.insert("latency_ms".into(), json!((started.elapsed().as_secs_f64() * 1e6).round() / 1e3));
    parameters.insert("result".into(), Value::Object(result));
    if let Some(d) = answer.deferred {
        parameters.insert("deferred".into(), d);
    }
    let body =
        InferResponse { model_name: name, model_version: answer.version, id: req.id, parameters, outputs };
    Ok(Json(body).into_response())
}

/// Checks the request's inputs against the model and returns the data input's values.
fn data_tensor(spec: &ModelSpec, name: &str, req: &mut InferRequest) -> Result<Vec<f32>, ApiError> {
    let want = spec.data_input();
    for input in &req.inputs {
        match spec.inputs.iter().find(|i| i.name == input.name) {
            None => {
                return Err(ApiError::bad_request(format!(
                    "model `{}` has no input `{}`; it takes `{}` {:?} {}",
                    name,
                    input.name,
                    want.name,
                    want.shape,
                    spec_datatype(want.dtype)
                )));
            }
            Some(i) if i.from != InputFrom::Data => {
                return Err(ApiError::bad_request(format!(
                    "input `{}` is managed by the agent ({}); send only `{}`{}",
                    input.name,
                    if i.from == InputFrom::State {
                        "recurrent state, kept per stream"
                    } else {
                        "a constant"
                    },
                    want.name,
                    if i.from == InputFrom::State { " and name the stream in parameters.stream" } else { "" }
                )));
            }
            Some(_) => {}
        }
    }
    let input = req.inputs.iter_mut().find(|i| i.name == want.name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "input `{}` is missing; model `{}` takes `{}` {:?} {}",
            want.name,
            name,
            want.name,
            want.shape,
            spec_datatype(want.dtype)
        ))
    })?;
    let expected = spec_datatype(want.dtype);
    if input.datatype != expected {
        return Err(ApiError::bad_request(format!(
            "input `{}` has datatype {} but the model takes {expected}",
            input.name, input.datatype
        )));
    }
    let shape: Option<Vec<usize>> = input.shape.iter().map(|d| usize::try_from(*d).ok()).collect();
    let Some(shape) = shape.filter(|s| want.accepts(s)) else {
        return Err(ApiError::bad_request(format!(
            "input `{}` has shape {:?} but the model takes {}",
            input.name,
            input.shape,
            want.shape_text()
        )));
    };
    let values = &input.data.0;
    let holds = shape.iter().product::<usize>();
    if values.len() != holds {
        return Err(ApiError::bad_request(format!(
            "input `{}` has {} values but its shape {:?} holds {holds}",
            input.name,
            values.len(),
            input.shape,
        )));
    }
    check_finite(values)
        .map_err(|e: InputError| ApiError::bad_request(format!("input `{}`: {e}", input.name)))?;
    Ok(std::mem::take(&mut input.data.0))
}

/// Names of the outputs to return: the requested ones, or every output that is not
/// recurrent state.
fn requested_outputs(
    model: &LoadedModel,
    requested: Option<&[RequestOutput]>,
) -> Result<Vec<String>, ApiError> {
    let all: Vec<&str> = model.outputs.iter().map(|o| o.name.as_str()).collect();
    match requested {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|r| {
                if all.contains(&r.name.as_str()) {
                    Ok(r.name.clone())
                } else {
                    Err(ApiError::bad_request(format!(
                        "model `{}` has no output `{}` (outputs: {})",
                        model.name(),
                        r.name,
                        all.join(", ")
                    )))
                }
            })
            .collect(),
        _ => Ok(all.into_iter().filter(|o| !model.is_state_output(o)).map(str::to_string).collect()),
    }
}
