//! The plan cache on a real model: PP-OCR's text direction classifier, whose width is
//! declared as a range here (the test cache's spec fixes it at 192).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::engine::{Engine, EngineConfig, InferError, LoadedModel, ModelLimits, Request};

/// The classifier with its width a range, in a temporary directory; `None` when the test
/// cache is not prepared.
fn varying_cls() -> Option<(tempfile::TempDir, PathBuf)> {
    let cache = std::env::var_os("EDGE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache"));
    let src = cache.join("models/ppocr-cls/model.onnx");
    assert!(src.is_file(), "{} is not prepared: run tests/run --prepare-only", src.display());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cls");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&src, dir.join("model.onnx")).unwrap();
    let spec = "name = \"cls\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\n\
                shape = [1, 3, 48, { min = 64, max = 256, multiple_of = 32 }]\n";
    std::fs::write(dir.join("model.toml"), spec).unwrap();
    Some((tmp, dir))
}

fn shape(width: usize) -> Vec<usize> {
    vec![1, 3, 48, width]
}

fn plans(model: &mut LoadedModel) -> &mut ShapePlans {
    match &mut model.plans {
        Plans::Varying(p) => p,
        Plans::Fixed(_) => panic!("a range dimension gives a plan per size"),
    }
}

#[test]
fn a_plan_is_made_once_per_size_reused_and_the_cache_stays_bounded() {
    let Some((_tmp, dir)) = varying_cls() else { return };
    let mut model = LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
    // The load planned the smallest size, to refuse a model tract cannot plan at once.
    assert_eq!(model.plan_cache().unwrap().sizes, [64]);
    let cache = plans(&mut model);
    cache.set_capacity(2);
    let first = cache.plan_for(&shape(96)).unwrap();
    let again = cache.plan_for(&shape(96)).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "the same size reuses its plan");
    assert_eq!(cache.report().made, 2);
    // 64 was used longest ago: it makes room for 128.
    cache.plan_for(&shape(128)).unwrap();
    let report = cache.report();
    assert_eq!((report.sizes, report.made, report.capacity), (vec![128, 96], 3, 2));
    cache.plan_for(&shape(96)).unwrap();
    assert_eq!(cache.report().made, 3, "96 is still cached");
    eprintln!("plan time: {:.1} ms per size", cache.report().plan_ms / 3.0);
}

/// The plans kept together stay within the model's memory limit: a plan's estimate is
/// the weights plus the working memory scaled to its size, and the least recently used
/// plans make room until the new one fits (before, only the count was bounded, so eight
/// plans of a large detector could hold eight times what the limit allowed for one).
#[test]
fn the_plans_kept_together_stay_within_the_models_memory_limit() {
    let Some((_tmp, dir)) = varying_cls() else { return };
    let mut model = LoadedModel::load_dir(&dir, &ModelLimits::from_mb(64)).unwrap();
    let loaded = model.plan_cache().unwrap();
    assert_eq!(loaded.max_bytes, 64 << 20, "the budget is the model's limit");
    assert!(loaded.bytes >= model.info.memory.weights_bytes, "{loaded:?}");
    let cache = plans(&mut model);
    // Widest 1x3x48x256 = 36,864 values: 1,000 bytes of weights and 25,600 of tensors
    // there give 7,400 bytes at width 64, 10,600 at 96, 13,800 at 128, 26,600 at 256.
    cache.budget =
        Some(PlanBudget { weights: 1_000, peak_at_widest: 25_600, widest_values: 36_864, max_bytes: 27_000 });
    cache.plan_for(&shape(96)).unwrap();
    cache.plan_for(&shape(128)).unwrap();
    let two = cache.report();
    assert_eq!((two.sizes.clone(), two.bytes), (vec![128, 96], 24_400), "{two:?}");
    // 256 alone takes 26,600: both others make room.
    cache.plan_for(&shape(256)).unwrap();
    let one = cache.report();
    assert_eq!((one.sizes.clone(), one.bytes, one.max_bytes), (vec![256], 26_600, 27_000), "{one:?}");
    // A budget smaller than one plan still keeps the plan in use.
    cache.budget = Some(PlanBudget { max_bytes: 1, ..cache.budget.unwrap() });
    cache.plan_for(&shape(64)).unwrap();
    assert_eq!(cache.report().sizes, [64]);
}

#[test]
fn sizes_outside_the_range_are_refused_with_what_the_input_takes() {
    let Some((_tmp, dir)) = varying_cls() else { return };
    let model = LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
    for bad in [shape(100), shape(288), shape(32), vec![1, 3, 64, 96], vec![3, 48, 96]] {
        let err = model.plan_for(&bad).unwrap_err().to_string();
        assert!(
            err.contains("[1, 3, 48, 64..=256 (multiple of 32)]") && err.contains(&format!("{bad:?}")),
            "{err}"
        );
    }
    assert_eq!(model.plan_cache().unwrap().made, 1, "no plan was made for a refused size");
}

/// A text detector whose height and width vary has no fixed map size: its output is
/// typed at the widest size (1536 x 1536 for PP-OCR's detector) only for the memory
/// check. Before, that size was kept, and a map read from its values alone (`infer`,
/// `profile`, the runner) was taken for a 1536 x 1536 one and gave no boxes.
#[test]
fn a_varying_text_detector_reads_each_map_at_its_frames_size() {
    let det = cache_dir().join("models/ppocr");
    assert!(
        det.join("det.onnx").is_file(),
        "{} is not prepared: run tests/run --prepare-only",
        det.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("det");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(det.join("det.onnx"), dir.join("det.onnx")).unwrap();
    let spec = std::fs::read_to_string(det.join("model.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), spec.split("\n[[stage]]").next().unwrap()).unwrap();
    let model = LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
    // A 64 x 96 map with one bright block, as from an image whose frame is 96 x 64.
    let (h, w) = (64usize, 96usize);
    let values: Vec<f32> = (0..h * w)
        .map(|i| if (16..40).contains(&(i / w)) && (20..70).contains(&(i % w)) { 0.9 } else { 0.0 })
        .collect();
    let frame = crate::pipeline::ImageFrame {
        original: (96, 64),
        placement: crate::pipeline::Placement { frame: (96, 64), size: (96, 64), offset: (0, 0) },
    };
    let out = crate::engine::Output { name: "map".into(), shape: vec![1, 1, h, w], values };
    let from_values = model.post().apply_full(&out.values, None, Some(&frame), 0, None);
    let boxes = from_values["boxes"].as_array().unwrap_or_else(|| panic!("{from_values:?}"));
    assert_eq!(boxes.len(), 1, "{from_values:?}");
    assert_eq!(from_values, model.post().apply_output(Some(&out), Some(&frame), 0));
}

#[test]
fn requests_run_at_their_own_width_and_a_wrong_shape_is_refused() {
    let Some((_tmp, dir)) = varying_cls() else { return };
    let engine = Engine::start(&EngineConfig::default());
    let model = engine.install(LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap());
    let request = |data: Vec<f32>, shape: Option<Vec<usize>>| Request {
        model: "cls".into(),
        stream: None,
        data,
        deadline: Instant::now() + Duration::from_secs(60),
        reset: false,
        shape,
    };
    // The width from the number of values, and the same width given as a shape.
    let a = engine.infer_blocking(request(vec![0.1; 3 * 48 * 128], None)).unwrap();
    let b = engine.infer_blocking(request(vec![0.1; 3 * 48 * 128], Some(shape(128)))).unwrap();
    assert_eq!(a.outputs[0].values, b.outputs[0].values);
    assert_eq!(a.outputs[0].values.len(), 2);
    assert_eq!(model.plan_cache().unwrap().sizes, [128, 64]);
    // A shape outside the range, and one that does not hold the values given.
    let err = engine.infer_blocking(request(vec![0.1; 3 * 48 * 100], Some(shape(100)))).err().unwrap();
    assert!(matches!(err, InferError::Input { .. }) && err.to_string().contains("64..=256"), "{err}");
    let err = engine.infer_blocking(request(vec![0.1; 3 * 48 * 96], Some(shape(128)))).err().unwrap();
    assert!(matches!(err, InferError::Input { .. }) && err.to_string().contains("13824 values"), "{err}");
}

fn cache_dir() -> PathBuf {
    std::env::var_os("EDGE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache"))
}

fn box_iou(a: &[f64], b: &[f64]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: &[f64]| (r[2] - r[0]) * (r[3] - r[1]);
    w * h / (area(a) + area(b) - w * h)
}

/// NudeNet's YOLOv8n with its input's height and width both varying (multiples of 32,
/// the longer side scaled to 320): the two-face image of 768x288 runs at a 320x128
/// frame, not a padded 320x320 square, and finds the boxes onnxruntime finds at that
/// frame (tests/fixtures/yolo_reference.py, `frames`). A size beyond the range is
/// refused with the sizes the input takes.
#[test]
fn a_yolo_detector_runs_at_a_multiple_of_32_frame_of_the_images_aspect() {
    let cache = cache_dir();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("reference/detect_reference.json")).unwrap())
            .unwrap();
    let frames = reference["frames"]
        .as_array()
        .expect("frames in detect_reference.json: run tests/run --prepare-only");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(cache.join("models/nudenet/model.onnx"), tmp.path().join("model.onnx")).unwrap();
    let spec = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/specs/nudenet.toml"))
        .unwrap()
        .replace(
            "shape = [1, 3, 320, 320]",
            "shape = [1, 3, { min = 32, max = 320, multiple_of = 32 }, { min = 32, max = 320, multiple_of = 32 }]",
        )
        .replace("filter = \"linear\"", "filter = \"linear\"\nlimit_side = 320");
    std::fs::write(tmp.path().join("model.toml"), spec).unwrap();
    let mut runner = crate::Runner::open(tmp.path(), &EngineConfig::default()).unwrap();
    for case in frames {
        let bytes = std::fs::read(cache.join("reference").join(case["image"].as_str().unwrap())).unwrap();
        let answers = runner.push(crate::Payload::Bytes(bytes)).unwrap();
        let got = answers[0].outputs["detections"].as_array().unwrap().clone();
        let want = case["detections"].as_array().unwrap();
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len(), "{got:?}\nreference: {want:?}");
        let floats = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        };
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["label"], w["label"]);
            let overlap = box_iou(&floats(&g["box"]), &floats(&w["box"]));
            assert!(overlap >= 0.99, "IoU {overlap}: {g} vs {w}");
            let diff = (g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs();
            assert!(diff < 1e-3, "score off by {diff}: {g} vs {w}");
        }
        let frame: Vec<usize> = floats(&case["frame"]).iter().map(|n| *n as usize).collect();
        let plans = runner.model().plan_cache().unwrap();
        assert!(plans.shapes.contains(&vec![1, 3, frame[1], frame[0]]), "{plans:?}");
        eprintln!("detector plans: {plans:?}");
    }
}
