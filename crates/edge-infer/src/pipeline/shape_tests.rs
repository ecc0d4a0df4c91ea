//! The shape a payload gives for an input whose height and width both vary: a JSON
//! object's `shape`, a nested array's nesting, an image's frame.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{InputError, Payload, decode_within};
use crate::engine::spec::{ModelSpec, PostKind};
use crate::pipeline::{ImageFrame, Placement, PostProcessor};

/// A text detector's spec: `[1, 3, H, W]`, both multiples of 8 within 8..=64, taking
/// `format` payloads.
fn detector(format: &str) -> ModelSpec {
    let range = "{ min = 8, max = 64, multiple_of = 8 }";
    let text = format!(
        "name = \"det\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 3, {range}, {range}]\n\
         [pre]\nformat = \"{format}\"\n[pre.image]\nlimit_side = 16\nlimit_type = \"min\"\nchannels = 3\n\
         [post]\nkind = \"text_boxes\"\n"
    );
    ModelSpec::parse(&text, Path::new("model.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn decode_json(spec: &ModelSpec, v: Value) -> Result<(Vec<f32>, Option<Vec<usize>>), InputError> {
    decode_within(spec, Payload::Json(v), usize::MAX).map(|d| (d.values, d.shape))
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

/// [1, 3, h, w] values nested as the shape says.
fn nested(h: usize, w: usize) -> Value {
    let values = ramp(3 * h * w);
    let rows = |c: usize| -> Vec<Value> {
        (0..h).map(|y| json!(values[(c * h + y) * w..(c * h + y + 1) * w])).collect()
    };
    json!([(0..3).map(|c| Value::Array(rows(c))).collect::<Vec<_>>()])
}

#[test]
fn a_json_object_names_its_shape_and_a_nested_array_has_one() {
    let s = detector("json");
    let (values, shape) =
        decode_json(&s, json!({"shape": [1, 3, 16, 24], "data": ramp(3 * 16 * 24)})).unwrap();
    assert_eq!((values.len(), shape), (3 * 16 * 24, Some(vec![1, 3, 16, 24])));
    // Nested as [1, 3, 16, 24], or without its leading 1: the nesting is the shape.
    let (_, shape) = decode_json(&s, nested(16, 24)).unwrap();
    assert_eq!(shape, Some(vec![1, 3, 16, 24]));
    let (_, shape) = decode_json(&s, nested(16, 24)[0].clone()).unwrap();
    assert_eq!(shape, Some(vec![1, 3, 16, 24]));
    // Flat numbers alone do not tell 16 x 24 from 24 x 16: the engine will ask for a shape.
    assert_eq!(decode_json(&s, json!(ramp(3 * 16 * 24))).unwrap().1, None);
}

#[test]
fn a_shape_the_input_does_not_take_is_refused_with_the_sizes_it_takes() {
    let s = detector("json");
    let msg = |v: Value| decode_json(&s, v).unwrap_err().to_string();
    let e = msg(json!({"shape": [1, 3, 12, 16], "data": ramp(3 * 12 * 16)}));
    assert!(e.contains("[1, 3, 12, 16]") && e.contains("8..=64 (multiple of 8)"), "{e}");
    let e = msg(json!({"shape": [1, 3, 16, 16], "data": ramp(10)}));
    assert!(e.contains("10 values") && e.contains("[1, 3, 16, 16], as `shape` says"), "{e}");
    let e = msg(json!({"shape": "16x16", "data": ramp(3 * 16 * 16)}));
    assert!(e.contains("`shape` must be an array of whole numbers"), "{e}");
    let e = msg(json!({"shape": [1, 3, -16, 16], "data": ramp(3 * 16 * 16)}));
    assert!(e.contains("whole numbers"), "{e}");
    // Nested one way, said to be another.
    let mut v = json!({"shape": [1, 3, 24, 16]});
    v["data"] = nested(16, 24);
    let e = msg(v);
    assert!(e.contains("[1, 3, 16, 24]") && e.contains("[1, 3, 24, 16]"), "{e}");
    // Sizes whose product overflows are refused, not multiplied.
    let e = msg(json!({"shape": [1, 3, u64::MAX, u64::MAX], "data": ramp(3)}));
    assert!(e.contains("takes"), "{e}");
}

#[test]
fn an_image_gives_its_frame_as_the_shape() {
    let s = detector("image");
    let img = ::image::RgbImage::from_pixel(40, 20, ::image::Rgb([200, 100, 50]));
    let mut png = Vec::new();
    ::image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), ::image::ImageFormat::Png)
        .unwrap();
    let d = decode_within(&s, Payload::Bytes(png), usize::MAX).unwrap();
    // The shorter side (20) is not below limit_side (16): the image keeps its size, each
    // side rounded to a multiple of 8.
    let shape = d.shape.unwrap();
    assert_eq!(d.values.len(), shape.iter().product::<usize>());
    assert_eq!((shape[0], shape[1]), (1, 3));
    assert!(shape[2].is_multiple_of(8) && shape[3].is_multiple_of(8), "{shape:?}");
    assert!(shape[3] > shape[2], "the image is wider than high: {shape:?}");
}

/// A text detector's map of a varying size: read at the size the output has, boxes in
/// the original image's pixels; without an image, in the map's.
#[test]
fn a_varying_map_is_read_at_its_own_size_and_mapped_to_the_image() {
    let s = detector("image");
    assert_eq!(s.post.kind, PostKind::TextBoxes);
    let post = PostProcessor::new(&s.post);
    // A 16 x 32 map with one bright block.
    let (h, w) = (16usize, 32usize);
    let values: Vec<f32> = (0..h * w)
        .map(|i| if (4..12).contains(&(i / w)) && (8..24).contains(&(i % w)) { 0.9 } else { 0.0 })
        .collect();
    let out = crate::engine::Output { name: "map".into(), shape: vec![1, 1, h, w], values };
    let in_map = post.apply_output(Some(&out), None, 0);
    let frame = ImageFrame {
        original: (64, 32),
        placement: Placement { frame: (32, 16), size: (32, 16), offset: (0, 0) },
    };
    let in_image = post.apply_output(Some(&out), Some(&frame), 0);
    let right = |m: &serde_json::Map<String, Value>| {
        let b = m["boxes"].as_array().unwrap_or_else(|| panic!("{m:?}"));
        assert_eq!(b.len(), 1, "{m:?}");
        b[0]["points"][1][0].as_f64().unwrap()
    };
    let (a, b) = (right(&in_map), right(&in_image));
    assert!(a > 20.0 && a < 32.0, "{in_map:?}");
    assert!((b - 2.0 * a).abs() <= 2.0, "twice as wide in the image: {in_image:?} vs {in_map:?}");
    // From the values alone with the image's frame: the same boxes.
    assert_eq!(post.apply_full(&out.values, None, Some(&frame), 0, None), in_image);
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Any accepted size round-trips: the shape a JSON object names, or its nesting, is
    /// the shape decoding gives, with the values in order.
    #[test]
    fn shapes_round_trip(h in 1..=8usize, w in 1..=8usize, named in any::<bool>()) {
        let s = detector("json");
        let (h, w) = (h * 8, w * 8);
        let v = if named { json!({"shape": [1, 3, h, w], "data": ramp(3 * h * w)}) } else { nested(h, w) };
        let (values, shape) = decode_json(&s, v).unwrap();
        prop_assert_eq!(shape, Some(vec![1, 3, h, w]));
        prop_assert_eq!(values, ramp(3 * h * w));
    }

    /// Any `shape` field, however wrong, gives a shape the input takes that holds the
    /// values, or an error: never a panic.
    #[test]
    fn any_shape_field_is_checked(dims in proptest::collection::vec(any::<u64>(), 0..6), n in 0..64usize) {
        let s = detector("json");
        if let Ok((values, Some(shape))) = decode_json(&s, json!({"shape": dims, "data": ramp(n)})) {
            prop_assert!(s.data_input().accepts(&shape));
            prop_assert_eq!(shape.iter().product::<usize>(), values.len());
        }
    }
}
