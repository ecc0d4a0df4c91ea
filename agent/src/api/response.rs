//! Encoding inference answers: JSON, or with the binary tensor extension a JSON header
//! followed by the raw little-endian outputs the client asked to get as binary.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::ser::SerializeSeq;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::request::HEADER_LENGTH;

/// One output to return.
pub struct Output<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub datatype: &'static str,
    pub values: &'a [f32],
    /// Asked for as binary; honoured for the fixed-size numeric types the values can be
    /// written as exactly (FP16, BF16 and BYTES stay JSON, which clients also read).
    pub binary: bool,
}

/// What the answer says besides its outputs.
pub struct Header<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: Option<&'a str>,
    /// Scalars only (strings, numbers, booleans), as the protocol defines parameters.
    pub parameters: Map<String, Value>,
    /// This agent's structured extras (`result`, `deferred`), sent as the top-level
    /// `edge_agent` object, which OIP clients ignore.
    pub extension: Map<String, Value>,
}

/// The answer's JSON (the header, when outputs are binary).
#[derive(Serialize)]
struct Wire<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    parameters: &'a Map<String, Value>,
    edge_agent: &'a Map<String, Value>,
    outputs: Vec<WireOutput<'a>>,
}

#[derive(Serialize)]
struct WireOutput<'a> {
    name: &'a str,
    shape: &'a [usize],
    datatype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonValues<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// Values written as the datatype's JSON numbers (booleans for BOOL), without building
/// a JSON value per number.
struct JsonValues<'a> {
    datatype: &'static str,
    values: &'a [f32],
}

impl Serialize for JsonValues<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.values.len()))?;
        for v in self.values {
            match self.datatype {
                // As f64, the way the API always wrote them (and `infer --json` does): a
                // client comparing the two sees the same numbers.
                "FP32" | "FP64" | "FP16" | "BF16" => seq.serialize_element(&f64::from(*v))?,
                "BOOL" => seq.serialize_element(&(*v != 0.0))?,
                _ => seq.serialize_element(&(*v as i64))?,
            }
        }
        seq.end()
    }
}

/// Appends `values` as little-endian elements of `datatype`; `false` if the datatype has
/// no exact binary form here.
fn write_binary(datatype: &str, values: &[f32], out: &mut Vec<u8>) -> bool {
    fn put<const N: usize>(values: &[f32], out: &mut Vec<u8>, f: impl Fn(f32) -> [u8; N]) {
        out.reserve(values.len() * N);
        values.iter().for_each(|v| out.extend_from_slice(&f(*v)));
    }
    match datatype {
        "FP32" => put(values, out, f32::to_le_bytes),
        "FP64" => put(values, out, |v| f64::from(v).to_le_bytes()),
        "INT64" => put(values, out, |v| (v as i64).to_le_bytes()),
        "INT32" => put(values, out, |v| (v as i32).to_le_bytes()),
        "INT16" => put(values, out, |v| (v as i16).to_le_bytes()),
        "INT8" => put(values, out, |v| (v as i8).to_le_bytes()),
        "UINT64" => put(values, out, |v| (v as u64).to_le_bytes()),
        "UINT32" => put(values, out, |v| (v as u32).to_le_bytes()),
        "UINT16" => put(values, out, |v| (v as u16).to_le_bytes()),
        "UINT8" => put(values, out, |v| [v as u8]),
        "BOOL" => put(values, out, |v| [u8::from(v != 0.0)]),
        _ => return false,
    }
    true
}

/// The HTTP answer: plain JSON, or the JSON header followed by the binary outputs with
/// `Inference-Header-Content-Length` saying where the header ends.
pub fn encode(header: Header<'_>, outputs: &[Output<'_>]) -> Response {
    let mut binary = Vec::new();
    let mut any_binary = false;
    let wire_outputs = outputs
        .iter()
        .map(|o| {
            let start = binary.len();
            if o.binary && write_binary(o.datatype, o.values, &mut binary) {
                any_binary = true;
                WireOutput {
                    name: o.name,
                    shape: o.shape,
                    datatype: o.datatype,
                    parameters: Some(BinarySize { binary_data_size: binary.len() - start }),
                    data: None,
                }
            } else {
                WireOutput {
                    name: o.name,
                    shape: o.shape,
                    datatype: o.datatype,
                    parameters: None,
                    data: Some(JsonValues { datatype: o.datatype, values: o.values }),
                }
            }
        })
        .collect();
    let wire = Wire {
        model_name: header.model_name,
        model_version: header.model_version,
        id: header.id,
        parameters: &header.parameters,
        edge_agent: &header.extension,
        outputs: wire_outputs,
    };
    let mut body = match serde_json::to_vec(&wire) {
        Ok(b) => b,
        // Only non-string map keys or a failing writer make this fail; neither occurs.
        Err(e) => {
            return ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("cannot encode the answer: {e}"),
            }
            .into_response();
        }
    };
    if !any_binary {
        return ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
            .into_response();
    }
    let json_len = body.len();
    body.extend_from_slice(&binary);
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(HEADER_LENGTH, HeaderValue::from(json_len));
    response
}
