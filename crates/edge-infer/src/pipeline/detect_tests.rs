use proptest::prelude::*;

use super::*;
use crate::engine::spec::{ImageGeometry, ImageSpec, PadPosition, ResizeMode};
use crate::pipeline::image::Placement;

fn det(class: usize, score: f32, bbox: [f32; 4]) -> Detection {
    Detection { class, score, bbox }
}

/// A YOLOv8-style output, `[4 + classes, n]`, from candidates `(cx, cy, w, h, scores)`.
fn v8_output(cands: &[([f32; 4], Vec<f32>)]) -> Vec<f32> {
    let n = cands.len();
    let attrs = 4 + cands.first().map_or(0, |c| c.1.len());
    let mut out = vec![0.0; attrs * n];
    for (i, (b, scores)) in cands.iter().enumerate() {
        for (a, v) in b.iter().chain(scores.iter()).enumerate() {
            out[a * n + i] = *v;
        }
    }
    out
}

#[test]
fn iou_of_known_boxes() {
    let a = [0.0, 0.0, 10.0, 10.0];
    assert_eq!(iou(&a, &a), 1.0);
    assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
    // Half of a overlaps a box of the same size: 50 / 150.
    assert!((iou(&a, &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
    // Degenerate and NaN boxes overlap nothing.
    assert_eq!(iou(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]), 0.0);
    assert_eq!(iou(&[f32::NAN, 0.0, 1.0, 1.0], &a), 0.0);
}

#[test]
fn decodes_a_yolov8_output_and_suppresses_per_class() {
    let out = v8_output(&[
        ([50.0, 50.0, 20.0, 20.0], vec![0.9, 0.1]),
        // Same object, a bit lower: suppressed.
        ([51.0, 50.0, 20.0, 20.0], vec![0.8, 0.1]),
        // Same place, other class: kept with class-wise NMS.
        ([50.0, 50.0, 20.0, 20.0], vec![0.1, 0.7]),
        // Below the score threshold.
        ([10.0, 10.0, 4.0, 4.0], vec![0.2, 0.1]),
    ]);
    let spec = DetectSpec::default();
    let dets = detect(&out, &spec, 2, None);
    assert_eq!(dets.len(), 2, "{dets:?}");
    assert_eq!((dets[0].class, dets[0].score), (0, 0.9));
    assert_eq!(dets[0].bbox, [40.0, 40.0, 60.0, 60.0]);
    assert_eq!(dets[1].class, 1);
    let agnostic = DetectSpec { class_agnostic: true, ..DetectSpec::default() };
    assert_eq!(detect(&out, &agnostic, 2, None).len(), 1, "across classes only the best box stays");
}

#[test]
fn candidates_first_layout_with_objectness() {
    // YOLOv5: [n, 4 + 1 + classes]; the score is class score x objectness.
    let out = vec![
        50.0, 50.0, 20.0, 20.0, 0.5, 0.2, 0.9, //
        10.0, 10.0, 4.0, 4.0, 0.1, 0.9, 0.9,
    ];
    let spec =
        DetectSpec { layout: DetectLayout::CandidatesFirst, objectness: true, ..DetectSpec::default() };
    let dets = detect(&out, &spec, 2, None);
    assert_eq!(dets.len(), 1);
    assert_eq!(dets[0].class, 1);
    assert!((dets[0].score - 0.45).abs() < 1e-6);
}

#[test]
fn boxes_map_back_through_the_letterbox() {
    // A 640x480 image letterboxed (centred) into 320x320: scale 0.5, 40 rows of
    // padding above.
    let spec = ImageSpec {
        resize: ResizeMode::Letterbox,
        position: Some(PadPosition::Center),
        ..toml::from_str("").unwrap()
    };
    let geo = ImageGeometry {
        width: 320,
        height: 320,
        channels: 3,
        width_range: None,
        height_range: None,
        limit: None,
    };
    let frame = ImageFrame { original: (640, 480), placement: crate::pipeline::place(640, 480, &spec, &geo) };
    assert_eq!(frame.placement.offset, (0, 40));
    assert_eq!(frame.to_original([10.0, 50.0, 30.0, 70.0]), [20.0, 20.0, 60.0, 60.0]);
    // Boxes reaching into the padding are clipped to the image.
    assert_eq!(frame.to_original([-5.0, 0.0, 400.0, 300.0]), [0.0, 0.0, 640.0, 480.0]);
}

#[test]
fn result_json_is_stable() {
    let labels = vec!["cat".to_string()];
    let out = to_json(&[det(0, 0.5, [1.0, 2.0, 3.0, 4.0]), det(3, 0.25, [0.0; 4])], &labels, true);
    let text = serde_json::to_string(&out).unwrap();
    assert_eq!(
        text,
        r#"{"detections":[{"box":[1.0,2.0,3.0,4.0],"class":0,"label":"cat","score":0.5},{"box":[0.0,0.0,0.0,0.0],"class":3,"label":null,"score":0.25}],"frame":"image"}"#
    );
}

#[test]
fn odd_shapes_and_non_finite_values_give_no_panic() {
    let spec = DetectSpec::default();
    assert!(detect(&[], &spec, 2, None).is_empty());
    assert!(detect(&[1.0; 7], &spec, 2, None).is_empty(), "7 values are not whole candidates of 6");
    assert!(detect(&[1.0; 12], &spec, 0, None).is_empty());
    let out = v8_output(&[
        ([f32::NAN, 50.0, 20.0, 20.0], vec![0.9]),
        ([50.0, 50.0, f32::INFINITY, 20.0], vec![0.9]),
        ([50.0, 50.0, 20.0, 20.0], vec![f32::NAN]),
        ([50.0, 50.0, 20.0, 20.0], vec![f32::INFINITY]),
    ]);
    assert!(detect(&out, &spec, 1, None).is_empty());
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => 0.0f32..1.0,
        4 => -10.0f32..200.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
    ]
}

fn boxes() -> impl Strategy<Value = Vec<Detection>> {
    proptest::collection::vec(
        (0usize..3, 0.0f32..1.0, 0.0f32..100.0, 0.0f32..100.0, 0.0f32..40.0, 0.0f32..40.0)
            .prop_map(|(c, s, x, y, w, h)| det(c, s, [x, y, x + w, y + h])),
        0..40,
    )
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// NMS keeps a subset of its input, ordered by score, with no two boxes of one class
    /// overlapping beyond the limit (any two, across classes), and at most `max`.
    #[test]
    fn nms_invariants(dets in boxes(), limit in 0.05f32..1.0, agnostic: bool, max in 1usize..50) {
        let kept = nms(dets.clone(), limit, agnostic, max);
        prop_assert!(kept.len() <= max.min(dets.len()));
        for k in &kept {
            prop_assert!(dets.contains(k), "{k:?} is not an input box");
        }
        for w in kept.windows(2) {
            prop_assert!(w[0].score >= w[1].score);
        }
        for (i, a) in kept.iter().enumerate() {
            for b in &kept[i + 1..] {
                if agnostic || a.class == b.class {
                    prop_assert!(iou(&a.bbox, &b.bbox) <= limit, "{a:?} and {b:?} overlap");
                }
            }
        }
        // Every input box left out overlaps a kept one of its class (or `max` was hit).
        if kept.len() < max {
            for d in &dets {
                if !kept.contains(d) {
                    prop_assert!(kept.iter().any(|k| (agnostic || k.class == d.class) && iou(&k.bbox, &d.bbox) > limit));
                }
            }
        }
    }

    /// Any output values, any length, either layout: no panic, and every detection has
    /// a finite score at or above the threshold, a known class and a finite box.
    #[test]
    fn never_panics_on_any_output(
        values in proptest::collection::vec(value(), 0..200),
        classes in 0usize..5,
        objectness: bool,
        first: bool,
        th in 0.0f32..1.0,
    ) {
        let spec = DetectSpec {
            layout: if first { DetectLayout::AttributesFirst } else { DetectLayout::CandidatesFirst },
            objectness,
            score_threshold: th,
            ..DetectSpec::default()
        };
        let frame = ImageFrame {
            original: (640, 480),
            placement: Placement { frame: (320, 320), size: (320, 240), offset: (0, 40) },
        };
        for d in detect(&values, &spec, classes, Some(&frame)) {
            prop_assert!(d.score.is_finite() && d.score >= th);
            prop_assert!(d.class < classes);
            prop_assert!(d.bbox.iter().all(|v| v.is_finite() && *v >= 0.0));
            prop_assert!(d.bbox[0] <= 640.0 && d.bbox[2] <= 640.0 && d.bbox[3] <= 480.0);
        }
    }
}

fn parse(text: &str) -> Result<crate::engine::spec::ModelSpec, String> {
    crate::engine::spec::ModelSpec::parse(text, std::path::Path::new("model.toml")).map_err(|e| e.to_string())
}

const DETECTOR: &str = "name = \"d\"\nversion = \"1\"\n[[input]]\nname = \"images\"\ndtype = \"f32\"\nshape = [1, 3, 64, 64]\n[pre]\nformat = \"image\"\n[pre.image]\nresize = \"letterbox\"\n";

#[test]
fn detection_specs_are_checked_with_fixes() {
    let ok = parse(&format!("{DETECTOR}[post]\nkind = \"detection\"\nlabels = [\"a\", \"b\"]\n")).unwrap();
    assert_eq!(ok.post.kind, crate::engine::spec::PostKind::Detection);
    let cases = [
        ("[post]\nkind = \"detection\"\n", "needs the number of classes"),
        (
            "[post]\nkind = \"detection\"\nlabels = [\"a\"]\n[post.detection]\nclasses = 3\n",
            "classes is 3 but post.labels names 1",
        ),
        (
            "[post]\nkind = \"detection\"\nlabels = [\"a\"]\n[post.detection]\niou_threshold = 0\n",
            "iou_threshold is 0",
        ),
        (
            "[post]\nkind = \"detection\"\nlabels = [\"a\"]\n[post.detection]\nscore_threshold = 2\n",
            "score_threshold is 2",
        ),
        (
            "[post]\nkind = \"detection\"\nlabels = [\"a\"]\nsoftmax = true\n",
            "post.softmax does nothing with post.kind = \"detection\"",
        ),
        (
            "[post]\nlabels = [\"a\", \"b\"]\n[post.detection]\nclasses = 2\n",
            "post.detection applies only to kind = \"detection\"",
        ),
        (
            "[post]\nkind = \"detection\"\nlabels = [\"a\"]\n[post.detection]\nlayout = \"rows\"\n",
            "unknown variant `rows`",
        ),
    ];
    for (post, says) in cases {
        let err = parse(&format!("{DETECTOR}{post}")).unwrap_err();
        assert!(err.contains(says), "{post}: {err}");
    }
    let err = parse(&format!("{DETECTOR}filter = \"cubic\"\n[post]\nlabels = [\"a\", \"b\"]\n")).unwrap_err();
    assert!(err.contains("unknown variant `cubic`"), "{err}");
}

/// The complete example specs of docs/model-spec.md's image and detection sections parse
/// and pass the checks.
#[test]
fn the_documented_example_specs_are_valid() {
    let doc = include_str!("../../../../docs/model-spec.md");
    for section in ["### Image pre-processing", "### Object detection"] {
        let from = doc.find(section).unwrap_or_else(|| panic!("{section} is missing"));
        let rest = &doc[from..];
        let start = rest.find("```toml\n").unwrap_or_else(|| panic!("{section} has no example")) + 8;
        let len = rest[start..].find("```").unwrap();
        parse(&rest[start..start + len]).unwrap_or_else(|e| panic!("{section}: {e}"));
    }
}

#[test]
fn output_shapes_are_checked_against_the_classes() {
    let v8 = DetectSpec::default();
    assert_eq!(v8.output_problem(18, &[1, 22, 2100], "out"), None);
    let why = v8.output_problem(17, &[1, 22, 2100], "out").unwrap();
    assert!(why.contains("expects 21 attributes per candidate (4 box + 17 classes)"), "{why}");
    let v5 = DetectSpec { objectness: true, ..DetectSpec::default() };
    let why = v5.output_problem(80, &[1, 25200, 85], "out").unwrap();
    assert!(why.contains("layout = \"candidates-first\""), "the flip is suggested: {why}");
    let v5 = DetectSpec { layout: DetectLayout::CandidatesFirst, ..v5 };
    assert_eq!(v5.output_problem(80, &[1, 25200, 85], "out"), None);
    let why = v8.output_problem(2, &[1, 2, 3, 4], "out").unwrap();
    assert!(why.contains("post.output"), "{why}");
}
