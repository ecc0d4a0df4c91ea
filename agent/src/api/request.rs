//! Decoding inference requests: the JSON body of the Open Inference Protocol v2, and the
//! binary tensor extension of KServe and Triton, where an `Inference-Header-Content-Length`
//! header gives the length of a JSON header that is followed by the raw tensors.
//!
//! Decoding checks the request's own consistency (the body splits exactly into the
//! header and the sizes its inputs declare, each size fits its shape and datatype, no
//! name twice, `data` nested as a real array); the model's view (names, datatypes,
//! shapes) is checked by the handler. Binary tensors stay slices of the body until the
//! handler converts the one the model takes, so memory stays within the body's size.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use edge_infer::pipeline::Nesting;

/// The header of the binary tensor extension (lower case, as `http` names headers).
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A request that is well formed on its own terms.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InputTensor>,
    /// The outputs asked for, or `None` for all of them.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// Outputs not named in `outputs` (or all when it is absent) are returned as binary
    /// (`parameters.binary_data_output`).
    pub binary_by_default: bool,
}

/// One input tensor.
#[derive(Debug)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub parameters: Map<String, Value>,
    pub data: TensorData,
}

/// An input's values as they arrived.
#[derive(Debug)]
pub enum TensorData {
    /// JSON numbers (booleans as 0 and 1) read straight into `f32`, with how they were
    /// nested (or why the nesting is not an array).
    Numbers { values: Vec<f32>, nesting: Result<Vec<usize>, String> },
    /// JSON strings (`BYTES`), concatenated; `ends[i]` is where element `i` ends.
    Strings { bytes: Vec<u8>, ends: Vec<usize>, nesting: Result<Vec<usize>, String> },
    /// Raw little-endian elements of the binary extension, already checked against the
    /// shape and datatype (`BYTES`: each element a 4-byte length, then its bytes).
    Binary(Bytes),
}

/// An output asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// `parameters.binary_data`, or the request's `binary_data_output`.
    pub binary: bool,
}

/// Why a request cannot be decoded: the message says what and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, RequestError> {
    Err(RequestError(message.into()))
}

/// Bytes per element of a fixed-size datatype (`None` for `BYTES` and unknown names).
pub fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" | "FP16" | "BF16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None,
    })
}

/// The number of elements a shape holds, if no dimension is negative and the product
/// does not overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, d| usize::try_from(*d).ok().and_then(|d| n.checked_mul(d)))
}

/// Decodes a request body; `header_length` is the `Inference-Header-Content-Length`
/// header's value when the request has one.
pub fn decode(body: Bytes, header_length: Option<&[u8]>) -> Result<InferRequest, RequestError> {
    let (json, binary) = split_body(body, header_length)?;
    let wire = parse_header(&json)?;
    let parameters = wire.parameters.unwrap_or_default();
    let binary_by_default = flag(&parameters, "binary_data_output", "parameters")?.unwrap_or(false);
    let inputs = decode_inputs(wire.inputs, &binary, header_length.is_some())?;
    let outputs = wire.outputs.map(|list| decode_outputs(list, binary_by_default)).transpose()?;
    Ok(InferRequest { id: wire.id, parameters, inputs, outputs, binary_by_default })
}

/// The JSON header and the binary data after it: the whole body is JSON unless the
/// request gives the header's length.
fn split_body(body: Bytes, header_length: Option<&[u8]>) -> Result<(Bytes, Bytes), RequestError> {
    let Some(raw) = header_length else {
        return Ok((body, Bytes::new()));
    };
    let text = std::str::from_utf8(raw).unwrap_or("").trim();
    let Ok(n) = text.parse::<usize>() else {
        return err(format!(
            "Inference-Header-Content-Length must be the length in bytes of the JSON header, got `{}`",
            String::from_utf8_lossy(raw).chars().take(40).collect::<String>()
        ));
    };
    if n > body.len() {
        return err(format!(
            "Inference-Header-Content-Length is {n} but the body has only {} bytes",
            body.len()
        ));
    }
    let mut json = body;
    let binary = json.split_off(n);
    Ok((json, binary))
}

/// Reads the JSON header, which must be an object.
fn parse_header(json: &[u8]) -> Result<WireRequest, RequestError> {
    // serde's derived structs also accept a JSON array of their fields in order; the
    // protocol's request is an object, so anything else is refused here.
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return err("the request body is empty; send a JSON object {\"inputs\": [...]}"),
        Some(_) => {
            return err(
                "the request body must be a JSON object {\"inputs\": [...]}, not an array or a value",
            );
        }
    }
    serde_json::from_slice(json)
        .map_err(|e| RequestError(format!("request body is not a valid inference request: {e}")))
}

/// The inputs, each with its JSON `data` or its slice of `binary` (taken in order); the
/// slices must use up `binary` exactly. `has_header`: the request gave the header length.
fn decode_inputs(
    wire: Vec<WireInput>,
    binary: &Bytes,
    has_header: bool,
) -> Result<Vec<InputTensor>, RequestError> {
    let mut inputs = Vec::with_capacity(wire.len());
    let mut offset = 0usize;
    for input in wire {
        if inputs.iter().any(|i: &InputTensor| i.name == input.name) {
            return err(format!("input `{}` appears twice; send each input once", input.name));
        }
        let parameters = input.parameters.unwrap_or_default();
        let size = binary_data_size(&input.name, &parameters)?;
        let data = match (input.data, size) {
            (Some(_), Some(_)) => {
                return err(format!(
                    "input `{}` has both `data` and parameters.binary_data_size; send one of them",
                    input.name
                ));
            }
            (None, None) => {
                return err(format!(
                    "input `{}` has no `data` (give `data`, or binary data with parameters.binary_data_size)",
                    input.name
                ));
            }
            (Some(d), None) => d.into_tensor_data(),
            (None, Some(size)) => {
                if !has_header {
                    return err(format!(
                        "input `{}` has parameters.binary_data_size but the request has no Inference-Header-Content-Length header",
                        input.name
                    ));
                }
                let end = offset.checked_add(size).filter(|e| *e <= binary.len()).ok_or_else(|| {
                    RequestError(format!(
                        "binary data of input `{}` ({size} bytes from byte {offset} after the JSON header) runs past the end of the body ({} bytes of binary data)",
                        input.name,
                        binary.len()
                    ))
                })?;
                let raw = binary.slice(offset..end);
                offset = end;
                check_binary(&input.name, &input.datatype, &input.shape, &raw)?;
                TensorData::Binary(raw)
            }
        };
        inputs.push(InputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            parameters,
            data,
        });
    }
    if offset != binary.len() {
        return err(format!(
            "the body has {} bytes after the JSON header but the inputs' binary_data_size add up to {offset}",
            binary.len()
        ));
    }
    Ok(inputs)
}

/// An input's `parameters.binary_data_size`, if given.
fn binary_data_size(name: &str, parameters: &Map<String, Value>) -> Result<Option<usize>, RequestError> {
    match parameters.get("binary_data_size") {
        None => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => err(format!("input `{name}`: parameters.binary_data_size must be a byte count, got {v}")),
        },
    }
}

/// The outputs asked for, each once, binary as it asks or as the request's default.
fn decode_outputs(
    list: Vec<WireOutput>,
    binary_by_default: bool,
) -> Result<Vec<RequestedOutput>, RequestError> {
    let mut outputs: Vec<RequestedOutput> = Vec::with_capacity(list.len());
    for o in list {
        if outputs.iter().any(|r| r.name == o.name) {
            return err(format!("output `{}` is requested twice", o.name));
        }
        let params = o.parameters.unwrap_or_default();
        if params.contains_key("classification") {
            return err(format!(
                "output `{}`: the classification extension is not supported; the post-processed answer (label, score, top-k) is in the response's `edge_agent.result`",
                o.name
            ));
        }
        let binary = flag(&params, "binary_data", &format!("output `{}` parameters", o.name))?
            .unwrap_or(binary_by_default);
        outputs.push(RequestedOutput { name: o.name, binary });
    }
    Ok(outputs)
}

/// A boolean parameter, if given.
fn flag(params: &Map<String, Value>, key: &str, place: &str) -> Result<Option<bool>, RequestError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => err(format!("{place}.{key} must be true or false, got {other}")),
    }
}

/// Checks that a binary tensor's size is exactly what its shape and datatype need.
fn check_binary(name: &str, datatype: &str, shape: &[i64], raw: &[u8]) -> Result<(), RequestError> {
    let count = element_count(shape).ok_or_else(|| {
        RequestError(format!(
            "input `{name}` has shape {shape:?}: dimensions must be non-negative and their product must fit"
        ))
    })?;
    if datatype == "BYTES" {
        let found = bytes_elements(raw).try_fold(0usize, |n, e| e.map(|_| n + 1)).map_err(|why| {
            RequestError(format!("input `{name}` (BYTES, {} bytes of binary data): {why}", raw.len()))
        })?;
        if found != count {
            return err(format!(
                "input `{name}` has {found} BYTES elements in its binary data but its shape {shape:?} holds {count}"
            ));
        }
        return Ok(());
    }
    let Some(width) = element_size(datatype) else {
        return err(format!(
            "input `{name}` has unknown datatype `{datatype}` (BOOL, UINT8..UINT64, INT8..INT64, FP16, BF16, FP32, FP64, BYTES)"
        ));
    };
    match count.checked_mul(width) {
        Some(want) if want == raw.len() => Ok(()),
        Some(want) => err(format!(
            "input `{name}`: binary_data_size is {} but shape {shape:?} of {datatype} needs {want} bytes ({count} x {width})",
            raw.len()
        )),
        None => err(format!("input `{name}` has shape {shape:?}, too large for {datatype}")),
    }
}

/// The elements of a binary `BYTES` tensor: each a 4-byte little-endian length, then
/// that many bytes (Triton's layout).
pub fn bytes_elements(raw: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= raw.len() {
            return None;
        }
        let Some(prefix) = raw.get(at..at + 4) else {
            let e = format!("element at byte {at} has a truncated 4-byte length prefix");
            at = raw.len();
            return Some(Err(e));
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let start = at + 4;
        match start.checked_add(len).filter(|end| *end <= raw.len()) {
            Some(end) => {
                at = end;
                Some(Ok(&raw[start..end]))
            }
            None => {
                let e = format!(
                    "element at byte {at} says it has {len} bytes but only {} remain",
                    raw.len() - start
                );
                at = raw.len();
                Some(Err(e))
            }
        }
    })
}

impl TensorData {
    /// How the values were nested, when they came as JSON (`None` for binary data).
    pub fn nesting(&self) -> Option<&Result<Vec<usize>, String>> {
        match self {
            TensorData::Numbers { nesting, .. } | TensorData::Strings { nesting, .. } => Some(nesting),
            TensorData::Binary(_) => None,
        }
    }

    /// The values as `f32`s, for a numeric `datatype` (which binary data was checked
    /// against when decoded).
    pub fn to_f32(&self, datatype: &str) -> Result<Vec<f32>, String> {
        match self {
            TensorData::Numbers { values, .. } => Ok(values.clone()),
            TensorData::Strings { .. } => Err(format!(
                "{datatype} data must be numbers: expected a number, a boolean, or an array of them, found a string"
            )),
            TensorData::Binary(raw) => binary_to_f32(datatype, raw),
        }
    }

    /// Takes the values as `f32`s without copying JSON numbers.
    pub fn into_f32(self, datatype: &str) -> Result<Vec<f32>, String> {
        match self {
            TensorData::Numbers { values, .. } => Ok(values),
            other => other.to_f32(datatype),
        }
    }

    /// The elements of `BYTES` data.
    pub fn to_bytes(&self) -> Result<Vec<&[u8]>, String> {
        match self {
            TensorData::Strings { bytes, ends, .. } => {
                let mut start = 0;
                Ok(ends
                    .iter()
                    .map(|&end| {
                        let e = &bytes[start..end];
                        start = end;
                        e
                    })
                    .collect())
            }
            TensorData::Numbers { values, .. } if values.is_empty() => Ok(Vec::new()),
            TensorData::Numbers { .. } => Err("BYTES data must be strings, not numbers".into()),
            TensorData::Binary(raw) => bytes_elements(raw).collect(),
        }
    }
}

/// Converts raw little-endian elements to `f32` (integers beyond 2^24 round, as they do
/// from JSON).
fn binary_to_f32(datatype: &str, raw: &[u8]) -> Result<Vec<f32>, String> {
    fn each<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        raw.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    Ok(match datatype {
        "FP32" => each(raw, f32::from_le_bytes),
        "FP64" => each(raw, |b| f64::from_le_bytes(b) as f32),
        "INT64" => each(raw, |b| i64::from_le_bytes(b) as f32),
        "INT32" => each(raw, |b| i32::from_le_bytes(b) as f32),
        "INT16" => each(raw, |b| f32::from(i16::from_le_bytes(b))),
        "INT8" => each(raw, |b: [u8; 1]| f32::from(b[0] as i8)),
        "UINT8" => each(raw, |b: [u8; 1]| f32::from(b[0])),
        "UINT16" => each(raw, |b| f32::from(u16::from_le_bytes(b))),
        "UINT32" => each(raw, |b| u32::from_le_bytes(b) as f32),
        "UINT64" => each(raw, |b| u64::from_le_bytes(b) as f32),
        "BOOL" => {
            if let Some(i) = raw.iter().position(|b| *b > 1) {
                return Err(format!("BOOL element {i} is the byte {}; booleans are 0 or 1", raw[i]));
            }
            raw.iter().map(|b| f32::from(*b)).collect()
        }
        other => {
            return Err(format!(
                "{other} data cannot be given to the model; send FP32 or the model's datatype"
            ));
        }
    })
}

#[derive(Deserialize)]
struct WireRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<WireInput>,
    #[serde(default)]
    outputs: Option<Vec<WireOutput>>,
}

#[derive(Deserialize)]
struct WireInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<JsonData>,
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// `data` read straight into `f32`s (or string bytes): a 1x3x48x192 image is 27,648
/// numbers, and building a JSON value per number first doubled the time a request took.
#[derive(Default)]
struct JsonData {
    numbers: Vec<f32>,
    strings: Vec<u8>,
    ends: Vec<usize>,
    nesting: Nesting,
}

impl JsonData {
    fn into_tensor_data(self) -> TensorData {
        let mut nesting = self.nesting.finish();
        if !self.numbers.is_empty() && !self.ends.is_empty() {
            nesting = Err("numbers and strings mixed in one tensor".into());
        }
        if self.ends.is_empty() {
            TensorData::Numbers { values: self.numbers, nesting }
        } else {
            TensorData::Strings { bytes: self.strings, ends: self.ends, nesting }
        }
    }
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::DeserializeSeed;
        let mut data = JsonData::default();
        Level { data: &mut data, depth: 0 }.deserialize(d)?;
        Ok(data)
    }
}

/// One level of a nested `data` array.
struct Level<'a> {
    data: &'a mut JsonData,
    depth: usize,
}

impl Level<'_> {
    fn number(self, v: f32) {
        self.data.nesting.leaf(self.depth);
        self.data.numbers.push(v);
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Level<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Level<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, a boolean, a string, or an array of them")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.number(v as f32);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.number(v as f32);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.number(v as f32);
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.number(if v { 1.0 } else { 0.0 });
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.data.nesting.leaf(self.depth);
        self.data.strings.extend_from_slice(v.as_bytes());
        self.data.ends.push(self.data.strings.len());
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0usize;
        while seq.next_element_seed(Level { data: &mut *self.data, depth: self.depth + 1 })?.is_some() {
            n += 1;
        }
        self.data.nesting.array(self.depth, n);
        Ok(())
    }
}
