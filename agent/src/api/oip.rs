//! The Open Inference Protocol v2 REST API (KServe, Triton, MLServer): health, server
//! and model metadata, readiness, inference with JSON tensors and with the binary tensor
//! extension (`request.rs` decodes requests, `response.rs` encodes answers).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::error::{ApiError, ApiPath};
use super::request::{self, InferRequest, InputTensor, RequestedOutput};
use super::{ApiState, response};
use edge_infer::engine::LoadedModel;
use edge_infer::engine::spec::{DType, InputFrom, ModelSpec, PayloadFormat};
use edge_infer::pipeline::{ImageFrame, InputError, Payload, check_finite, nesting_matches};

fn spec_datatype(dt: DType) -> &'static str {
    crate::oip::datatype(dt.name())
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
        "extensions": ["binary_tensor_data"],
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
    let tensors = |list: &[edge_infer::engine::model::TensorInfo], inputs: bool| -> Vec<Value> {
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
                json!({"name": t.name, "datatype": crate::oip::datatype(&t.dtype), "shape": shape})
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
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let model = find_model(&st, &name, None)?;
    Ok(Json(metadata(&model)))
}

/// `GET /v2/models/{name}/versions/{version}`.
pub async fn model_version_metadata(
    State(st): State<ApiState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
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
pub async fn model_ready(State(st): State<ApiState>, ApiPath(name): ApiPath<String>) -> Response {
    readiness(&st, &name, None)
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
pub async fn model_version_ready(
    State(st): State<ApiState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> Response {
    readiness(&st, &name, Some(&version))
}

/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    State(st): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    infer_inner(st, name, None, &headers, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
pub async fn infer_version(
    State(st): State<ApiState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    infer_inner(st, name, Some(version), &headers, body).await
}

async fn infer_inner(
    st: ApiState,
    name: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (_permit, mut req) = read_request(&st, headers, body).await?;
    // A model that is not installed may still have a cloud endpoint (with its spec).
    let cloud = st.fallback.cloud(&name);
    let (local, missing) = match find_model(&st, &name, version.as_deref()) {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(e)),
    };
    if let Some(m) = local.as_ref().filter(|m| !m.stages.is_empty()) {
        return super::pipelined::infer(&st, m.clone(), &req, started).await;
    }
    // A request for a named version is only for the installed model.
    let cloud_spec = cloud.as_ref().filter(|_| version.is_none());
    let Some((_, spec)) = crate::fallback::serving_spec(local.as_ref(), cloud_spec) else {
        return Err(missing.unwrap_or_else(|| ApiError::not_found(format!("model `{name}` is not loaded"))));
    };
    let Tensor { data, frame, shape } = data_tensor(spec, &name, &mut req)?;
    let requested = match &local {
        Some(m) => requested_outputs(m, &req)?,
        None => req.outputs.clone().unwrap_or_default(),
    };
    let params = Params::read(&std::mem::take(&mut req.parameters))?;

    // An anomaly score compares the answer with the input it reconstructs.
    let anomaly_input = (spec.post.kind == edge_infer::engine::spec::PostKind::Anomaly).then(|| data.clone());
    // Summarised before the data moves into the job (local answers only: see stream.rs).
    let watched = local.as_ref().and_then(|m| st.monitors.summarise(m, &data));
    let deadline = st.health.deadline();
    let job = crate::fallback::Job {
        model: name.clone(),
        stream: params.stream.or_else(|| Some("api".into())),
        data,
        wait: deadline,
        reset: params.reset,
        shape,
    };
    let f = &st.fallback;
    let signals = crate::fallback::Signals {
        forced: params.forced,
        ..crate::fallback::Signals::from_engine(&st.engine, deadline)
    };
    let Some(route) = f.route(&name, local.clone(), &signals) else {
        return Err(ApiError::not_found(format!("model `{name}` is not loaded")));
    };
    let answer = crate::fallback::answer(&st.engine, f, &route, job).await.map_err(|e| match e {
        crate::fallback::Failure::Local(e) => ApiError::from(e),
        rejected => ApiError::unavailable(rejected.to_string()),
    })?;
    let result = route
        .post()
        .map(|p| answer.post_process(p, anomaly_input.as_deref(), frame.as_ref(), 0, None))
        .unwrap_or_default();
    if let (Some(m), Some(summaries), "local") = (&local, watched, answer.place)
        && let Some(change) = st.monitors.observe(m, summaries, &result)
    {
        st.events.emit(change.event(&name)).await;
    }
    let reply = Reply { model: &name, local: local.as_deref(), requested: &requested, result, started };
    Ok(reply.encode(&req, answer))
}

/// Admits a request and reads it: a permit within the concurrency limit, then the
/// body, uncompressed, within the size and time limits, decoded.
async fn read_request(
    st: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(OwnedSemaphorePermit, InferRequest), ApiError> {
    // Overload answers at once rather than queueing without bound. The body is still
    // read (and discarded, within the same limits): a server that answers before taking
    // the upload makes clients fail with a broken pipe instead of reading the 503.
    let Ok(permit) = st.inflight.clone().try_acquire_owned() else {
        st.counters.overloaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        super::discard_body(body, st.limits.max_body_bytes, st.limits.body_timeout).await;
        return Err(ApiError::unavailable(format!(
            "too many requests in flight (limit {}); retry later",
            st.limits.max_concurrency
        )));
    };
    // A compressed body would be read as garbage: say so instead.
    if let Some(enc) = headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        super::discard_body(body, st.limits.max_body_bytes, st.limits.body_timeout).await;
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: format!(
                "Content-Encoding `{}` is not supported; send the body uncompressed",
                String::from_utf8_lossy(enc.as_bytes())
            ),
        });
    }
    let bytes = super::read_body(body, st.limits.max_body_bytes, st.limits.body_timeout).await?;
    let req = request::decode(bytes, headers.get(request::HEADER_LENGTH).map(|v| v.as_bytes()))
        .map_err(|e| ApiError::bad_request(e.0))?;
    Ok((permit, req))
}

/// The request parameters the agent acts on.
struct Params {
    /// `stream`: the stream whose state the request runs in.
    stream: Option<String>,
    /// `reset`: start that stream's state afresh.
    reset: bool,
    /// `route: "cloud"`: send the request to the cloud.
    forced: bool,
}

impl Params {
    fn read(params: &Map<String, Value>) -> Result<Params, ApiError> {
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
        Ok(Params { stream, reset, forced })
    }
}

/// What the answer to a request is encoded with, beside the request and the answer.
struct Reply<'a> {
    model: &'a str,
    /// The installed model, whose declared output types the answer keeps.
    local: Option<&'a LoadedModel>,
    requested: &'a [RequestedOutput],
    /// The post-processed result.
    result: Map<String, Value>,
    started: Instant,
}

impl Reply<'_> {
    fn encode(self, req: &InferRequest, answer: crate::fallback::Answer) -> Response {
        let outputs: Vec<response::Output> = answer
            .outputs
            .iter()
            .filter_map(|o| {
                let binary = if self.requested.is_empty() {
                    req.binary_by_default
                } else {
                    self.requested.iter().find(|r| r.name == o.name)?.binary
                };
                // The local model's declared type where it has the output; the cloud's
                // answers are decoded as numbers and returned as FP32 otherwise.
                let dtype = self
                    .local
                    .and_then(|m| m.outputs.iter().find(|i| i.name == o.name))
                    .map(|i| i.dtype.as_str());
                let datatype = dtype.map(crate::oip::datatype).unwrap_or("FP32");
                Some(response::Output { name: &o.name, shape: &o.shape, datatype, values: &o.values, binary })
            })
            .collect();
        // Response parameters hold scalars only, as the protocol says; the structured
        // extras (the post-processed result, a cascade's deferred answer) go in the
        // `edge_agent` extension object, which OIP clients ignore.
        let mut parameters = Map::new();
        parameters.insert("place".into(), json!(answer.place));
        if let Some(reason) = answer.reason {
            parameters.insert("reason".into(), json!(reason));
        }
        parameters
            .insert("latency_ms".into(), json!((self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3));
        let mut extension = Map::new();
        extension.insert("result".into(), Value::Object(self.result));
        if let Some(d) = answer.deferred {
            extension.insert("deferred".into(), d);
        }
        let header = response::Header {
            model_name: self.model,
            model_version: &answer.version,
            id: req.id.as_deref(),
            parameters,
            extension,
        };
        response::encode(header, &outputs)
    }
}

/// The data input of a request, checked against the model.
struct Tensor {
    data: Vec<f32>,
    /// For an encoded image, its frame (detection boxes map back to it).
    frame: Option<ImageFrame>,
    /// The shape the request gives, for an input whose size its length does not tell
    /// (height and width both vary); `None` where the length does.
    shape: Option<Vec<usize>>,
}

/// Checks the request's inputs against the model and returns the data input: its
/// values, and what they alone do not tell (an image's frame, the shape).
fn data_tensor(spec: &ModelSpec, name: &str, req: &mut InferRequest) -> Result<Tensor, ApiError> {
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
    let at = req.inputs.iter().position(|i| i.name == want.name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "input `{}` is missing; model `{}` takes `{}` {:?} {}",
            want.name,
            name,
            want.name,
            want.shape,
            spec_datatype(want.dtype)
        ))
    })?;
    let input = req.inputs.swap_remove(at);
    if input.datatype == "BYTES" {
        return payload_tensor(spec, input);
    }
    let expected = spec_datatype(want.dtype);
    if input.datatype != expected {
        return Err(ApiError::bad_request(format!(
            "input `{}` has datatype {} but the model takes {expected} (or BYTES: one payload the model's pre-processing decodes)",
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
    // Nested data must be nested as the shape says, as the CLI and MQTT require.
    match input.data.nesting() {
        Some(Err(why)) => {
            return Err(ApiError::bad_request(format!(
                "input `{}`: `data` is not a well-formed array: {why}",
                input.name
            )));
        }
        Some(Ok(got)) if !nesting_matches(got, &shape) => {
            return Err(ApiError::bad_request(format!(
                "input `{}`: `data` is nested as {got:?} but its shape is {:?}; nest it as the shape, or send it flat",
                input.name, input.shape
            )));
        }
        _ => {}
    }
    let values = input
        .data
        .into_f32(&input.datatype)
        .map_err(|why| ApiError::bad_request(format!("input `{}`: {why}", input.name)))?;
    let holds = shape.iter().product::<usize>();
    if values.len() != holds {
        return Err(ApiError::bad_request(format!(
            "input `{}` has {} values but its shape {:?} holds {holds}",
            input.name,
            values.len(),
            input.shape,
        )));
    }
    check_finite(&values)
        .map_err(|e: InputError| ApiError::bad_request(format!("input `{}`: {e}", input.name)))?;
    // The declared shape goes with the values: with two dimensions varying, the number
    // of values alone fits several.
    Ok(Tensor { data: values, frame: None, shape: Some(shape) })
}

/// A `BYTES` data input: one payload (an encoded image, raw samples, JSON text) that the
/// model's spec decodes, as it does MQTT payloads and the CLI's input files.
fn payload_tensor(spec: &ModelSpec, input: InputTensor) -> Result<Tensor, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("input `{}` (BYTES): {why}", input.name));
    let payload = super::pipelined::payload_bytes(&input)?;
    let format = format_name(spec.pre.format);
    let frame = match spec.pre.format {
        PayloadFormat::Image => edge_infer::pipeline::frame_for(spec, &payload),
        _ => None,
    };
    let edge_infer::pipeline::DecodedPayload { values, shape, .. } =
        edge_infer::pipeline::decode_within(spec, Payload::Bytes(payload), spec.limits.max_payload_bytes)
            .map_err(|e| bad(format!("decoded as the model's pre.format `{format}`: {e}")))?;
    let values = match &spec.pre.dsp {
        Some(dsp) => through_front_end(spec, dsp, values).map_err(bad)?,
        None => values,
    };
    let want = spec.data_input();
    // The payload's own shape (an image's frame) is checked by decoding and again by
    // the engine; without one the number of values must fit the input.
    if shape.is_none() && want.shape_for(values.len()).is_none() {
        return Err(bad(format!(
            "the payload decodes (pre.format `{format}`) to {} values but `{}` takes {}",
            values.len(),
            want.name,
            want.shape_text()
        )));
    }
    Ok(Tensor { data: values, frame, shape })
}

/// A payload of samples through the model's DSP front end (`[pre.dsp]`), from a fresh
/// stream: one request is one model input, so the samples must make exactly one.
fn through_front_end(
    spec: &ModelSpec,
    dsp: &edge_infer::engine::dsp_spec::DspSpec,
    samples: Vec<f32>,
) -> Result<Vec<f32>, String> {
    let Some(mut front) = edge_infer::Windower::for_spec(spec) else {
        return Err("the model's pre.dsp does not build".into());
    };
    let mut inputs = front.push(&samples);
    let one = (dsp.frames - 1) * dsp.hop + dsp.fft_size();
    let span = format!(
        "send {one} to {} samples ({} frames of {} samples every {}, pre.dsp)",
        one + dsp.frame_hop * dsp.hop - 1,
        dsp.frames,
        dsp.fft_size(),
        dsp.hop
    );
    match inputs.len() {
        1 => Ok(inputs.remove(0).data),
        0 => Err(format!("{} samples are too few for one model input; {span}", samples.len())),
        n => Err(format!(
            "{} samples make {n} model inputs, and one request answers one; {span}, or stream them over MQTT",
            samples.len()
        )),
    }
}

fn format_name(f: PayloadFormat) -> &'static str {
    match f {
        PayloadFormat::Json => "json",
        PayloadFormat::F32le => "f32le",
        PayloadFormat::I16le => "i16le",
        PayloadFormat::Image => "image",
    }
}

/// The outputs to return with how: the requested ones, or every output that is not
/// recurrent state (an empty list: all, as `binary_data_output` says).
fn requested_outputs(model: &LoadedModel, req: &InferRequest) -> Result<Vec<RequestedOutput>, ApiError> {
    let all: Vec<&str> = model.outputs.iter().map(|o| o.name.as_str()).collect();
    match &req.outputs {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|r| {
                if all.contains(&r.name.as_str()) {
                    Ok(r.clone())
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
        _ => Ok(all
            .into_iter()
            .filter(|o| !model.is_state_output(o))
            .map(|o| RequestedOutput { name: o.to_string(), binary: req.binary_by_default })
            .collect()),
    }
}
