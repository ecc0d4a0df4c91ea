//! Payload decoding: JSON numbers, raw little-endian samples, images.

use serde_json::Value;

use super::error::InputError;
use super::image::image_to_tensor;
use super::nesting::{Nesting, nesting_matches};
use crate::engine::spec::{ModelSpec, PayloadFormat};

/// One request's content before pre-processing.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Bytes in the encoding named by the model spec's `pre.format`.
    Bytes(Vec<u8>),
    /// Bytes in an explicit encoding (the CLI chooses by file extension).
    Encoded(PayloadFormat, Vec<u8>),
    /// Samples already decoded by a source (simulated signal, WAV, CSV).
    Samples(Vec<f32>),
    /// A parsed JSON value (NDJSON lines): an array of numbers, flat or nested.
    Json(Value),
}

/// Decodes a payload into flat `f32` values (before windowing), rejecting oversized,
/// malformed and non-finite input.
pub fn decode(spec: &ModelSpec, payload: Payload) -> Result<Vec<f32>, InputError> {
    decode_within(spec, payload, spec.limits.max_payload_bytes).map(|d| d.values)
}

/// A decoded payload: its values, its size, and the data input's shape when the number
/// of values does not tell it.
#[derive(Debug, Clone)]
pub struct DecodedPayload {
    /// Flat values, before windowing.
    pub values: Vec<f32>,
    /// The payload's size as the limit measures it.
    pub size: usize,
    /// The data input's shape the payload gives: an image's frame for an input whose
    /// height and width both vary, a JSON object's `shape`, or the nesting of a JSON
    /// array for such an input. `None` when the engine works it out from the length.
    pub shape: Option<Vec<usize>>,
}

/// As [`decode`] with another size limit (a cloud endpoint may take more than the
/// device); also returns the payload's size as the limit measures it, so the caller
/// can tell a payload beyond the spec's own limit, and the shape the payload gives.
pub fn decode_within(spec: &ModelSpec, payload: Payload, max: usize) -> Result<DecodedPayload, InputError> {
    let (format, bytes) = match payload {
        Payload::Samples(values) => {
            let bytes = values.len() * 4;
            if bytes > max {
                return Err(InputError::TooLarge { bytes, max });
            }
            let mut values = values;
            apply_scale(spec, &mut values);
            check_finite(&values)?;
            return Ok(DecodedPayload { values, size: bytes, shape: None });
        }
        Payload::Json(v) => {
            let (mut values, shape) = json_array(v, spec)?;
            let bytes = values.len() * 4;
            if bytes > max {
                return Err(InputError::TooLarge { bytes, max });
            }
            apply_scale(spec, &mut values);
            check_finite(&values)?;
            return Ok(DecodedPayload { values, size: bytes, shape });
        }
        Payload::Bytes(b) => (spec.pre.format, b),
        Payload::Encoded(f, b) => (f, b),
    };
    let size = bytes.len();
    if size > max {
        return Err(InputError::TooLarge { bytes: size, max });
    }
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    let mut shape = None;
    let mut values = match format {
        PayloadFormat::Json => {
            let (values, given) = json_numbers(&bytes, spec)?;
            shape = given;
            values
        }
        PayloadFormat::F32le => le_samples(&bytes, 4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))?,
        PayloadFormat::I16le => {
            le_samples(&bytes, 2, |c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)?
        }
        PayloadFormat::Image => {
            let (Some(img), Some(geo)) = (spec.pre.image.as_ref(), spec.image_geometry()) else {
                return Err(InputError::NoImageSpec);
            };
            // Image values are normalised by the image spec; the sample scale does not apply.
            let values = image_to_tensor(&bytes, img, &geo)?;
            // With both sides varying, the number of values does not tell height from
            // width: the image's frame does.
            let shape = spec
                .image_sides_vary()
                .then(|| super::image::frame_for(spec, &bytes))
                .flatten()
                .and_then(|f| spec.image_input_shape(f.placement.frame));
            return Ok(DecodedPayload { values, size, shape });
        }
    };
    apply_scale(spec, &mut values);
    check_finite(&values)?;
    Ok(DecodedPayload { values, size, shape })
}

fn apply_scale(spec: &ModelSpec, values: &mut [f32]) {
    if let Some(s) = spec.pre.scale {
        values.iter_mut().for_each(|v| *v *= s);
    }
}

/// Rejects NaN and infinities, naming the first.
pub fn check_finite(values: &[f32]) -> Result<(), InputError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(InputError::NotFinite { index, value: values[index] }),
        None => Ok(()),
    }
}

fn le_samples(bytes: &[u8], width: usize, f: impl Fn(&[u8]) -> f32) -> Result<Vec<f32>, InputError> {
    if !bytes.len().is_multiple_of(width) {
        return Err(InputError::Alignment { bytes: bytes.len(), width });
    }
    Ok(bytes.chunks_exact(width).map(f).collect())
}

/// Parses a JSON array of numbers, flat or nested, or an object whose `data` field is
/// one. A nested array must have the data input's shape (leading 1s may be left out).
fn json_numbers(bytes: &[u8], spec: &ModelSpec) -> Result<(Vec<f32>, Option<Vec<usize>>), InputError> {
    let value: Value =
        serde_json::from_slice(strip_bom(bytes)).map_err(|e| InputError::Json { reason: e.to_string() })?;
    json_array(value, spec)
}

/// The UTF-8 byte-order mark some editors (Notepad, Excel exports) put before JSON.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `bytes` without a leading UTF-8 byte-order mark. JSON forbids the mark, but a parser
/// may ignore it (RFC 8259, section 8.1), and files saved on Windows often carry one.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// [`strip_bom`] for text.
pub fn strip_bom_str(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// The numbers of a JSON payload, and the data input's shape it gives (see
/// [`DecodedPayload::shape`]). An object may name its `shape` beside its `data`, as an
/// OIP tensor does: the one way to size flat data for an input whose height and width
/// both vary.
fn json_array(value: Value, spec: &ModelSpec) -> Result<(Vec<f32>, Option<Vec<usize>>), InputError> {
    let (array, given) = match value {
        Value::Object(mut map) => {
            let data = map.remove("data").ok_or_else(|| InputError::Json {
                reason: "an object needs a `data` field holding the numbers".into(),
            })?;
            (data, map.remove("shape"))
        }
        other => (other, None),
    };
    let mut out = Vec::new();
    let mut nesting = Nesting::default();
    flatten(&array, 0, &mut nesting, &mut out)?;
    let shape = nesting.finish().map_err(|reason| InputError::Json { reason })?;
    if let Some(given) = given {
        let shape = given_shape(&given, &shape, out.len(), spec)?;
        return Ok((out, Some(shape)));
    }
    // Windows and DSP front ends take a stream of samples, of any length.
    let mut full = None;
    if spec.pre.window.is_none() && spec.pre.dsp.is_none() {
        let input = spec.data_input();
        let fits = if input.ranges.is_empty() {
            nesting_matches(&shape, &input.shape)
        } else {
            // Flat data is sized by the engine from its length. Nested data may leave out
            // leading 1s here too: put them back, then check each size.
            let missing = input.shape.len().checked_sub(shape.len());
            shape.len() <= 1
                || missing.is_some_and(|m| {
                    input.shape[..m].iter().all(|d| *d == 1)
                        && input.accepts(&[vec![1; m], shape.clone()].concat())
                })
        };
        if !fits {
            return Err(if input.ranges.is_empty() {
                InputError::Shape { input: input.name.clone(), got: shape, want: input.shape.clone() }
            } else {
                InputError::ShapeRange { input: input.name.clone(), got: shape, want: input.shape_text() }
            });
        }
        // Nested data for an input with several ranges: its nesting is the shape (the
        // length alone fits many), with any left-out leading 1s put back.
        if input.ranges.len() > 1 && shape.len() > 1 {
            let missing = input.shape.len().saturating_sub(shape.len());
            full = Some([vec![1; missing], shape].concat());
        }
    }
    Ok((out, full))
}

/// Checks a JSON object's `shape` field: whole sizes, one the data input takes, that
/// holds the values given (nested data must be nested as it says).
fn given_shape(
    given: &Value,
    nested: &[usize],
    len: usize,
    spec: &ModelSpec,
) -> Result<Vec<usize>, InputError> {
    let input = spec.data_input();
    let bad = |reason: String| InputError::Json { reason };
    if spec.pre.window.is_some() || spec.pre.dsp.is_some() {
        return Err(bad(format!(
            "`shape` is for a whole model input, but this model cuts windows from a stream of samples; send `data` alone (input `{}` is {})",
            input.name,
            input.shape_text()
        )));
    }
    let shape = given
        .as_array()
        .and_then(|dims| {
            dims.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            bad(format!(
                "`shape` must be an array of whole numbers, like {}, got {given}",
                input.shape_text()
            ))
        })?;
    if !input.accepts(&shape) {
        return Err(InputError::ShapeRange {
            input: input.name.clone(),
            got: shape,
            want: input.shape_text(),
        });
    }
    if crate::engine::budget::elements(&shape) != Some(len) {
        return Err(InputError::LengthRange {
            input: input.name.clone(),
            got: len,
            shape: format!("{shape:?}, as `shape` says"),
        });
    }
    if nested.len() > 1 && !nesting_matches(nested, &shape) {
        return Err(InputError::Shape { input: input.name.clone(), got: nested.to_vec(), want: shape });
    }
    Ok(shape)
}

fn flatten(v: &Value, depth: usize, nesting: &mut Nesting, out: &mut Vec<f32>) -> Result<(), InputError> {
    match v {
        Value::Array(items) => {
            items.iter().try_for_each(|i| flatten(i, depth + 1, nesting, out))?;
            nesting.array(depth, items.len());
            Ok(())
        }
        Value::Number(n) => {
            nesting.leaf(depth);
            // serde_json gives f64; f32 is what models take. Overflow becomes inf and is
            // rejected by the finiteness check.
            out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        Value::Null => Err(InputError::Json {
            reason: format!("null at value {} (NaN cannot be written in JSON; send a number)", out.len()),
        }),
        other => {
            Err(InputError::Json { reason: format!("value {} is {}, not a number", out.len(), kind(other)) })
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
