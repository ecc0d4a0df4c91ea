//! Inference request decoding: JSON and the binary tensor extension, with examples of
//! every refusal and property tests (never a panic, memory linear in the body, the
//! binary and JSON encodings of one request decode to the same tensors).

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::request::{InferRequest, RequestError, TensorData, decode};

fn binary_request(header: &Value, tensors: &[&[u8]]) -> (Bytes, String) {
    let mut body = serde_json::to_vec(header).unwrap();
    let len = body.len();
    tensors.iter().for_each(|t| body.extend_from_slice(t));
    (Bytes::from(body), len.to_string())
}

/// A case of its own binary request, with its header length.
fn with_len((body, len): (Bytes, String), needle: &str) -> (Bytes, Option<String>, &str) {
    (body, Some(len), needle)
}

fn decode_with(body: &Bytes, header: Option<&str>) -> Result<InferRequest, RequestError> {
    decode(body.clone(), header.map(str::as_bytes))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn input(name: &str, shape: Value, datatype: &str, size: usize) -> Value {
    json!({"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}})
}

#[test]
fn binary_and_json_inputs_mix_in_one_request() {
    let raw = f32_bytes(&[1.0, -2.5, 3.0, 4.0]);
    let header = json!({
        "id": "r",
        "inputs": [
            input("a", json!([2, 2]), "FP32", 16),
            {"name": "b", "shape": [2], "datatype": "INT64", "data": [7, 8]},
            input("c", json!([1]), "BYTES", 7),
        ],
        "outputs": [{"name": "o", "parameters": {"binary_data": true}}, {"name": "p"}],
    });
    let mut bytes_elem = 3u32.to_le_bytes().to_vec();
    bytes_elem.extend_from_slice(b"abc");
    let (body, len) = binary_request(&header, &[&raw, &bytes_elem]);
    let req = decode_with(&body, Some(&len)).unwrap();
    assert_eq!(req.id.as_deref(), Some("r"));
    assert_eq!(req.inputs[0].data.to_f32("FP32").unwrap(), vec![1.0, -2.5, 3.0, 4.0]);
    assert_eq!(req.inputs[1].data.to_f32("INT64").unwrap(), vec![7.0, 8.0]);
    assert_eq!(req.inputs[2].data.to_bytes().unwrap(), vec![b"abc".as_slice()]);
    let outputs = req.outputs.unwrap();
    assert!(outputs[0].binary && !outputs[1].binary);
}

#[test]
fn binary_data_output_is_the_default_that_outputs_override() {
    let body = Bytes::from(
        json!({"parameters": {"binary_data_output": true}, "inputs": [], "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": false}}]})
            .to_string(),
    );
    let req = decode_with(&body, None).unwrap();
    assert!(req.binary_by_default);
    let outputs = req.outputs.unwrap();
    assert!(outputs[0].binary && !outputs[1].binary);
}

/// Every malformed request gets its own clear refusal (the same cases run against the
/// real daemon in tests/it/api.rs).
#[test]
fn malformed_requests_are_refused_with_a_reason() {
    let raw = f32_bytes(&[1.0, 2.0]);
    let one = json!({"inputs": [input("x", json!([2]), "FP32", 8)]});
    let (good, len) = binary_request(&one, &[&raw]);
    assert!(decode_with(&good, Some(&len)).is_ok());
    let cases: Vec<(Bytes, Option<String>, &str)> = vec![
        // The sizes must add up to the body exactly.
        (Bytes::from([&good[..], b"xx"].concat()), Some(len.clone()), "add up to 8"),
        (good.slice(..good.len() - 1), Some(len.clone()), "runs past the end of the body"),
        // The header length must be within the body, and a number.
        (good.clone(), Some((good.len() + 1).to_string()), "but the body has only"),
        (good.clone(), Some("ten".into()), "must be the length in bytes"),
        (good.clone(), Some("-1".into()), "must be the length in bytes"),
        (good.clone(), None, "not a valid inference request"),
        // Each size must be what the shape and datatype need.
        with_len(binary_request(&json!({"inputs": [input("x", json!([3]), "FP32", 8)]}), &[&raw]), "needs 12 bytes"),
        with_len(binary_request(&json!({"inputs": [input("x", json!([2]), "FP64", 8)]}), &[&raw]), "needs 16 bytes"),
        with_len(binary_request(&json!({"inputs": [input("x", json!([-2]), "FP32", 8)]}), &[&raw]), "non-negative"),
        with_len(binary_request(&json!({"inputs": [input("x", json!([2]), "FP33", 8)]}), &[&raw]), "unknown datatype"),
        // BYTES: truncated prefixes and lengths past the end.
        with_len(binary_request(&json!({"inputs": [input("x", json!([1]), "BYTES", 3)]}), &[b"\x05\x00\x00"]), "truncated 4-byte length"),
        with_len(binary_request(&json!({"inputs": [input("x", json!([1]), "BYTES", 6)]}), &[b"\x05\x00\x00\x00ab"]), "says it has 5 bytes but only 2 remain"),
        with_len(binary_request(&json!({"inputs": [input("x", json!([2]), "BYTES", 6)]}), &[b"\x02\x00\x00\x00ab"]), "has 1 BYTES elements"),
        // Binary data needs the header; data and a size are exclusive; one of them is needed.
        (Bytes::from(json!({"inputs": [input("x", json!([2]), "FP32", 8)]}).to_string()), None, "no Inference-Header-Content-Length"),
        (Bytes::from(json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2], "parameters": {"binary_data_size": 8}}]}).to_string()), None, "has both `data` and"),
        (Bytes::from(json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}).to_string()), None, "has no `data`"),
        (Bytes::from(json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": -8}}]}).to_string()), None, "must be a byte count"),
        // The protocol's shape of a request.
        (Bytes::from_static(b"[]"), None, "must be a JSON object"),
        (Bytes::from_static(b"  [{\"inputs\": []}]"), None, "must be a JSON object"),
        (Bytes::from_static(b""), None, "is empty"),
        (Bytes::from(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}, {"name": "x", "shape": [1], "datatype": "FP32", "data": [2]}]}).to_string()), None, "input `x` appears twice"),
        (Bytes::from(json!({"inputs": [], "outputs": [{"name": "o"}, {"name": "o"}]}).to_string()), None, "requested twice"),
        (Bytes::from(json!({"inputs": [], "outputs": [{"name": "o", "parameters": {"binary_data": 1}}]}).to_string()), None, "must be true or false"),
        (Bytes::from(json!({"inputs": [], "outputs": [{"name": "o", "parameters": {"classification": 2}}]}).to_string()), None, "classification extension is not supported"),
    ];
    for (body, header, needle) in cases {
        let e = decode_with(&body, header.as_deref()).expect_err(needle);
        assert!(e.0.contains(needle), "expected `{needle}` in `{}`", e.0);
    }
}

#[test]
fn json_data_keeps_how_it_was_nested() {
    let body = Bytes::from(
        json!({"inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
            {"name": "b", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]},
            {"name": "c", "shape": [1], "datatype": "BYTES", "data": ["héllo"]},
        ]})
        .to_string(),
    );
    let req = decode_with(&body, None).unwrap();
    assert_eq!(req.inputs[0].data.nesting(), Some(&Ok(vec![2, 2])));
    assert!(req.inputs[1].data.nesting().unwrap().as_ref().unwrap_err().contains("ragged"));
    assert_eq!(req.inputs[2].data.to_bytes().unwrap(), vec!["héllo".as_bytes()]);
    assert!(req.inputs[2].data.to_f32("FP32").unwrap_err().contains("expected a number"));
}

// --- property tests ---

/// One generated input: its datatype and its values as the protocol carries them.
#[derive(Debug, Clone)]
enum Values {
    Float(&'static str, Vec<f64>),
    Int(&'static str, Vec<i64>),
    Bool(Vec<bool>),
    Bytes(Vec<String>),
}

impl Values {
    fn datatype(&self) -> &'static str {
        match self {
            Values::Float(d, _) | Values::Int(d, _) => d,
            Values::Bool(_) => "BOOL",
            Values::Bytes(_) => "BYTES",
        }
    }

    fn json(&self) -> Vec<Value> {
        match self {
            Values::Float(_, v) => v.iter().map(|x| json!(x)).collect(),
            Values::Int(_, v) => v.iter().map(|x| json!(x)).collect(),
            Values::Bool(v) => v.iter().map(|x| json!(x)).collect(),
            Values::Bytes(v) => v.iter().map(|x| json!(x)).collect(),
        }
    }

    fn binary(&self) -> Vec<u8> {
        match self {
            Values::Float("FP32", v) => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
            Values::Float(_, v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::Int("INT64", v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::Int("INT32", v) => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
            Values::Int("INT16", v) => v.iter().flat_map(|x| (*x as i16).to_le_bytes()).collect(),
            Values::Int("INT8", v) => v.iter().map(|x| *x as i8 as u8).collect(),
            Values::Int(_, v) => v.iter().map(|x| *x as u8).collect(),
            Values::Bool(v) => v.iter().map(|x| u8::from(*x)).collect(),
            Values::Bytes(v) => {
                v.iter().flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes())).collect()
            }
        }
    }

    /// What a model would be given: the reference the decoders must agree with.
    fn expected_f32(&self) -> Vec<f32> {
        match self {
            Values::Float(_, v) => v.iter().map(|x| *x as f32).collect(),
            Values::Int(_, v) => v.iter().map(|x| *x as f32).collect(),
            Values::Bool(v) => v.iter().map(|x| f32::from(u8::from(*x))).collect(),
            Values::Bytes(_) => Vec::new(),
        }
    }
}

fn values(n: usize) -> impl Strategy<Value = Values> {
    prop_oneof![
        // FP32 values are generated as f32 so both encodings carry them exactly.
        prop::collection::vec(any::<f32>().prop_filter("finite", |x| x.is_finite()), n)
            .prop_map(|v| Values::Float("FP32", v.into_iter().map(f64::from).collect())),
        prop::collection::vec(any::<f64>().prop_filter("finite", |x| x.is_finite()), n)
            .prop_map(|v| Values::Float("FP64", v)),
        prop::collection::vec(any::<i64>(), n).prop_map(|v| Values::Int("INT64", v)),
        prop::collection::vec(any::<i32>().prop_map(i64::from), n).prop_map(|v| Values::Int("INT32", v)),
        prop::collection::vec(any::<i16>().prop_map(i64::from), n).prop_map(|v| Values::Int("INT16", v)),
        prop::collection::vec(any::<i8>().prop_map(i64::from), n).prop_map(|v| Values::Int("INT8", v)),
        prop::collection::vec(any::<u8>().prop_map(i64::from), n).prop_map(|v| Values::Int("UINT8", v)),
        prop::collection::vec(any::<bool>(), n).prop_map(Values::Bool),
        prop::collection::vec(".{0,12}", n).prop_map(Values::Bytes),
    ]
}

#[derive(Debug, Clone)]
struct GenInput {
    shape: Vec<usize>,
    values: Values,
    /// Sent as binary (else as JSON `data`) in the binary encoding.
    binary: bool,
    /// Nested as the shape in JSON (else flat).
    nested: bool,
}

fn gen_input() -> impl Strategy<Value = GenInput> {
    prop::collection::vec(0usize..4, 0..4).prop_flat_map(|shape| {
        let n = shape.iter().product::<usize>();
        (Just(shape), values(n), any::<bool>(), any::<bool>())
            .prop_map(|(shape, values, binary, nested)| GenInput { shape, values, binary, nested })
    })
}

fn nest(flat: &[Value], shape: &[usize]) -> Value {
    match shape {
        [] => flat.first().cloned().unwrap_or(Value::Null),
        [_] => Value::Array(flat.to_vec()),
        [n, rest @ ..] => {
            let step = rest.iter().product::<usize>();
            Value::Array((0..*n).map(|i| nest(&flat[i * step..(i + 1) * step], rest)).collect())
        }
    }
}

/// The JSON form of an input; nested only where the shape can be written as nesting
/// (no zero dimension, at least one dimension).
fn json_input(name: &str, g: &GenInput) -> Value {
    let flat = g.values.json();
    let nestable = !g.shape.is_empty() && g.shape.iter().all(|d| *d > 0);
    let data = if g.nested && nestable { nest(&flat, &g.shape) } else { Value::Array(flat) };
    json!({"name": name, "shape": g.shape, "datatype": g.values.datatype(), "data": data})
}

fn encode_json(inputs: &[GenInput], outputs: &[(String, Option<bool>)]) -> Bytes {
    let list: Vec<Value> = inputs.iter().enumerate().map(|(i, g)| json_input(&format!("in{i}"), g)).collect();
    Bytes::from(json!({"id": "p", "inputs": list, "outputs": outputs_json(outputs)}).to_string())
}

fn encode_binary(inputs: &[GenInput], outputs: &[(String, Option<bool>)]) -> (Bytes, String) {
    let mut raw = Vec::new();
    let list: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, g)| {
            if !g.binary {
                return json_input(&format!("in{i}"), g);
            }
            let b = g.values.binary();
            raw.push(b.clone());
            input(&format!("in{i}"), json!(g.shape), g.values.datatype(), b.len())
        })
        .collect();
    let header = json!({"id": "p", "inputs": list, "outputs": outputs_json(outputs)});
    let parts: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
    binary_request(&header, &parts)
}

fn outputs_json(outputs: &[(String, Option<bool>)]) -> Value {
    outputs
        .iter()
        .map(|(name, binary)| match binary {
            Some(b) => json!({"name": name, "parameters": {"binary_data": b}}),
            None => json!({"name": name}),
        })
        .collect()
}

/// Bytes a decoded request keeps besides the body itself.
fn retained(req: &InferRequest) -> usize {
    req.inputs
        .iter()
        .map(|i| match &i.data {
            TensorData::Numbers { values, .. } => values.len() * 4,
            TensorData::Strings { bytes, ends, .. } => bytes.len() + ends.len() * 8,
            TensorData::Binary(_) => 0,
        })
        .sum()
}

// proptest's default case count (256; PROPTEST_CASES=N for a longer run).
proptest! {
    /// A random request encoded with binary tensors (some inputs, as clients mix them)
    /// and as plain JSON decodes to the same tensors, and those are the values sent.
    #[test]
    fn binary_and_json_encodings_decode_to_the_same_tensors(
        inputs in prop::collection::vec(gen_input(), 0..4),
        outputs in prop::collection::vec(prop::option::of(any::<bool>()), 0..3),
    ) {
        let outputs: Vec<(String, Option<bool>)> =
            outputs.into_iter().enumerate().map(|(i, b)| (format!("out{i}"), b)).collect();
        let from_json = decode_with(&encode_json(&inputs, &outputs), None).unwrap();
        let (body, len) = encode_binary(&inputs, &outputs);
        let from_binary = decode_with(&body, Some(&len)).unwrap();
        prop_assert_eq!(from_json.inputs.len(), inputs.len());
        for ((j, b), g) in from_json.inputs.iter().zip(&from_binary.inputs).zip(&inputs) {
            let shape: Vec<i64> = g.shape.iter().map(|d| *d as i64).collect();
            prop_assert_eq!(&j.name, &b.name);
            prop_assert_eq!((&j.shape, &j.datatype), (&shape, &b.datatype));
            prop_assert_eq!(&b.shape, &shape);
            if let Values::Bytes(strings) = &g.values {
                let want: Vec<&[u8]> = strings.iter().map(|s| s.as_bytes()).collect();
                prop_assert_eq!(j.data.to_bytes().unwrap(), want.clone());
                prop_assert_eq!(b.data.to_bytes().unwrap(), want);
            } else {
                let want = g.values.expected_f32();
                let (jv, bv) = (j.data.to_f32(&j.datatype).unwrap(), b.data.to_f32(&b.datatype).unwrap());
                // Bit equality: NaN cannot occur (finite inputs), -0.0 must stay -0.0.
                prop_assert_eq!(jv.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
                prop_assert_eq!(bv.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            }
            // Nested JSON reports the shape it was nested as.
            if let Some(Ok(nesting)) = j.data.nesting() {
                let nested = g.nested && !g.shape.is_empty() && g.shape.iter().all(|d| *d > 0);
                if nested {
                    prop_assert_eq!(nesting, &g.shape);
                }
            } else {
                prop_assert!(false, "JSON data of a well-formed array has a nesting: {:?}", j.data.nesting());
            }
        }
        prop_assert_eq!(from_json.outputs, from_binary.outputs);
    }

    /// Arbitrary bytes with an arbitrary header value: an answer (mostly a refusal),
    /// never a panic, and what is kept grows at most linearly with the body.
    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), header in prop::option::of(".{0,8}")) {
        let body = Bytes::from(body);
        if let Ok(req) = decode_with(&body, header.as_deref()) {
            prop_assert!(retained(&req) <= 12 * body.len());
        }
    }

    /// A valid binary request cut, extended or given a wrong header length anywhere is
    /// refused or decoded, never a panic.
    #[test]
    fn damaged_binary_requests_never_panic(
        inputs in prop::collection::vec(gen_input(), 1..3),
        cut in any::<prop::sample::Index>(),
        junk in prop::collection::vec(any::<u8>(), 0..16),
        shift in -20i64..20,
        flip in any::<prop::sample::Index>(),
    ) {
        let (body, len) = encode_binary(&inputs, &[]);
        let n: usize = len.parse().unwrap();
        let cut_body = body.slice(..cut.index(body.len() + 1));
        let _ = decode_with(&cut_body, Some(&len));
        let longer = Bytes::from([&body[..], &junk[..]].concat());
        let longer_ok = decode_with(&longer, Some(&len)).is_ok();
        prop_assert!(junk.is_empty() || !longer_ok, "trailing bytes must be refused");
        let _ = decode_with(&body, Some(&(n as i64 + shift).to_string()));
        let mut flipped = body.to_vec();
        if !flipped.is_empty() {
            let i = flip.index(flipped.len());
            flipped[i] ^= 0x5a;
        }
        let _ = decode_with(&Bytes::from(flipped), Some(&len));
    }
}
