use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::engine::EngineConfig;
use crate::{ModelSpec, Payload, Runner};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cache() -> PathBuf {
    std::env::var_os("EDGE_TEST_CACHE").map(PathBuf::from).unwrap_or_else(|| root().join("target/test-cache"))
}

/// The PP-OCR directory tests/run prepares: det.onnx, rec.onnx and keys.txt from the
/// rapidocr wheel, and tests/fixtures/specs/ppocr.toml.
fn ppocr() -> PathBuf {
    let dir = cache().join("models/ppocr");
    assert!(
        dir.join("rec.onnx").is_file() && cache().join("reference/ocr_reference.json").is_file(),
        "{} is not prepared: run tests/run --prepare-only",
        dir.display()
    );
    dir
}

/// The prepared models with this checkout's spec (the cache holds the spec it was
/// prepared with, which may be older).
fn ppocr_here() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["det.onnx", "rec.onnx", "keys.txt"] {
        std::fs::copy(ppocr().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("model.toml"), spec_text()).unwrap();
    dir
}

fn spec_text() -> String {
    std::fs::read_to_string(root().join("tests/fixtures/specs/ppocr.toml")).unwrap()
}

fn parse(text: &str) -> Result<ModelSpec, String> {
    ModelSpec::parse(text, Path::new("model.toml")).map_err(|e| e.to_string())
}

#[test]
fn the_ppocr_spec_declares_a_two_stage_pipeline() {
    let spec = parse(&spec_text()).unwrap();
    assert_eq!(spec.stages.len(), 1);
    assert_eq!(spec.stages[0].name, "rec");
    assert_eq!(spec.stages[0].model_spec(&spec).name, "ppocr.rec");
    // Written back and read again, it is the same spec.
    let again = parse(&toml::to_string(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);
}

#[test]
fn a_crops_stage_needs_text_boxes_before_it_and_an_image_spec() {
    let text = spec_text()
        .replace("kind = \"text_boxes\"", "kind = \"scores\"")
        .replace("[post.text_boxes]", "[unused]");
    let text = text
        .replace("[unused]\nthreshold = 0.3\nbox_threshold = 0.5\nunclip_ratio = 1.6\ndilate = true\n", "");
    let err = parse(&text).unwrap_err();
    assert!(err.contains("stage `rec` takes crops") && err.contains("text_boxes"), "{err}");

    let mut spec = parse(&spec_text()).unwrap();
    spec.stages[0].pre.image = None;
    let err = parse(&toml::to_string(&spec).unwrap()).unwrap_err();
    assert!(err.contains("give it [stage.pre.image]"), "{err}");
}

#[test]
fn stage_names_and_files_must_be_unique_and_ctc_needs_its_table() {
    let twice = format!("{}\n{}", spec_text(), &spec_text()[spec_text().find("[[stage]]").unwrap()..]);
    let err = parse(&twice).unwrap_err();
    assert!(err.contains("used twice") && err.contains("another stage's model"), "{err}");

    let no_ctc = spec_text().replace("[stage.post.ctc]\ncharacters = \"keys.txt\"\nappend = [\" \"]\n", "");
    let err = parse(&no_ctc).unwrap_err();
    assert!(
        err.contains("post.kind = \\\"ctc\\\" needs [post.ctc]") || err.contains("needs [post.ctc]"),
        "{err}"
    );
}

#[test]
fn a_missing_character_list_is_refused_at_load_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["det.onnx", "rec.onnx"] {
        std::fs::copy(ppocr().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("model.toml"), spec_text()).unwrap();
    let err = Runner::open(dir.path(), &EngineConfig::default()).err().unwrap().to_string();
    assert!(err.contains("keys.txt"), "{err}");
    // A list of the wrong length: the model's 6625 classes are named.
    std::fs::write(dir.path().join("keys.txt"), "a\nb\n").unwrap();
    let err = Runner::open(dir.path(), &EngineConfig::default()).err().unwrap().to_string();
    assert!(err.contains("6625"), "{err}");
}

/// Area of the intersection of two convex polygons over their union (Sutherland-Hodgman
/// clipping of one by the other).
fn iou(a: &[[f64; 2]], b: &[[f64; 2]]) -> f64 {
    fn area(p: &[[f64; 2]]) -> f64 {
        (0..p.len())
            .map(|i| p[i][0] * p[(i + 1) % p.len()][1] - p[(i + 1) % p.len()][0] * p[i][1])
            .sum::<f64>()
            .abs()
            / 2.0
    }
    fn ccw(p: &[[f64; 2]]) -> Vec<[f64; 2]> {
        let signed: f64 =
            (0..p.len()).map(|i| p[i][0] * p[(i + 1) % p.len()][1] - p[(i + 1) % p.len()][0] * p[i][1]).sum();
        if signed < 0.0 { p.iter().rev().copied().collect() } else { p.to_vec() }
    }
    let (a, b) = (ccw(a), ccw(b));
    let mut out = a.clone();
    for i in 0..b.len() {
        let (c, d) = (b[i], b[(i + 1) % b.len()]);
        let inside = |p: [f64; 2]| (d[0] - c[0]) * (p[1] - c[1]) - (d[1] - c[1]) * (p[0] - c[0]) >= 0.0;
        let cut = |p: [f64; 2], q: [f64; 2]| {
            let (a1, b1) = (q[1] - p[1], p[0] - q[0]);
            let c1 = a1 * p[0] + b1 * p[1];
            let (a2, b2) = (d[1] - c[1], c[0] - d[0]);
            let c2 = a2 * c[0] + b2 * c[1];
            let det = a1 * b2 - a2 * b1;
            [(b2 * c1 - b1 * c2) / det, (a1 * c2 - a2 * c1) / det]
        };
        let input = std::mem::take(&mut out);
        for j in 0..input.len() {
            let (p, q) = (input[j], input[(j + 1) % input.len()]);
            match (inside(p), inside(q)) {
                (true, true) => out.push(q),
                (true, false) => out.push(cut(p, q)),
                (false, true) => {
                    out.push(cut(p, q));
                    out.push(q);
                }
                (false, false) => {}
            }
        }
        if out.is_empty() {
            return 0.0;
        }
    }
    let inter = area(&out);
    inter / (area(&a) + area(&b) - inter)
}

fn quad(v: &Value) -> Vec<[f64; 2]> {
    v.as_array().unwrap().iter().map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()]).collect()
}

#[test]
fn iou_of_known_boxes() {
    let a = [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]];
    assert!((iou(&a, &a) - 1.0).abs() < 1e-12);
    let b = [[5.0, 0.0], [15.0, 0.0], [15.0, 10.0], [5.0, 10.0]];
    assert!((iou(&a, &b) - 50.0 / 150.0).abs() < 1e-12);
    let far = [[50.0, 50.0], [60.0, 50.0], [60.0, 60.0], [50.0, 60.0]];
    assert_eq!(iou(&a, &far), 0.0);
}

/// The whole PP-OCR pipeline from an image file to text and boxes, against rapidocr's
/// own Python code on onnxruntime (tests/fixtures/ocr_reference.py): the same lines in
/// the same order, the same text, each box with IoU >= 0.99.
#[test]
fn ppocr_reads_the_rendered_image_as_rapidocr_does() {
    let runner = read_as_rapidocr("ocr_reference.json", 0.99, 0.0, 0.02);
    // 800x736 needs no resizing: the detector ran at that size.
    let det = runner.model().plan_cache().unwrap();
    assert!(det.shapes.contains(&vec![1, 3, 736, 800]), "{det:?}");
}

/// The same on an image of 1100x700 that rapidocr's resize rule scales (to 1152x736):
/// the detector runs at the size that rule gives, and each line is read at its own width.
/// Four of the five boxes equal rapidocr's; one lands one pixel lower and wider (IoU
/// 0.957 for a 48-pixel-high box), its map edge crossing the threshold one row apart
/// (tract's and onnxruntime's sums differ in the last bits, and the resize is the same:
/// rapidocr gives the same box with this project's float resize instead of OpenCV's).
/// So here a box passes with IoU >= 0.99 or every corner within one pixel. rapidocr
/// pads every line of a batch to the batch's widest, this pipeline each line to its own
/// width bucket, so confidences differ a little more (0.975 for 0.998 on one line).
#[test]
fn ppocr_resizes_an_image_by_rapidocrs_rule_and_reads_it_as_rapidocr_does() {
    let runner = read_as_rapidocr("ocr_reference_wide.json", 0.99, 1.0, 0.05);
    let det = runner.model().plan_cache().unwrap();
    assert!(det.shapes.contains(&vec![1, 3, 736, 1152]), "{det:?}");
    eprintln!("detector plans: {det:?}");
    let model = runner.model();
    for m in [model, &*model.stages[0]] {
        eprintln!("{}: memory at the largest size {:?}", m.name(), m.info.memory);
    }
}

/// Reads the image of `reference` (in the test cache's reference directory) through the
/// pipeline with this checkout's spec, checks every line against rapidocr's, and returns
/// the runner for more checks.
fn read_as_rapidocr(reference: &str, min_iou: f64, max_off: f64, max_conf: f64) -> Runner {
    let here = ppocr_here();
    let dir = here.path().to_path_buf();
    let path = cache().join("reference").join(reference);
    let reference: Value = serde_json::from_slice(
        &std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run tests/run --prepare-only", path.display())),
    )
    .unwrap();
    let image = std::fs::read(cache().join("reference").join(reference["image"].as_str().unwrap())).unwrap();
    let mut runner = Runner::open(&dir, &EngineConfig::default()).unwrap();
    let answers = runner.push(Payload::Bytes(image)).unwrap();
    assert_eq!(answers.len(), 1);
    let out = &answers[0].outputs;
    let got = out["lines"].as_array().unwrap();
    let want = reference["lines"].as_array().unwrap();
    let texts = |l: &[Value]| l.iter().map(|l| l["text"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(texts(got), texts(want), "{out:?}");
    for (g, w) in got.iter().zip(want) {
        let overlap = iou(&quad(&g["box"]), &quad(&w["box"]));
        eprintln!("{}: IoU {overlap:.4}", w["text"]);
        let off = quad(&g["box"])
            .iter()
            .zip(quad(&w["box"]))
            .map(|(a, b)| (a[0] - b[0]).abs().max((a[1] - b[1]).abs()))
            .fold(0.0, f64::max);
        assert!(
            overlap >= min_iou || off <= max_off,
            "{}: box {} vs rapidocr's {} (IoU {overlap:.4}, {off} px off)",
            w["text"],
            g["box"],
            w["box"]
        );
    }
    for (g, w) in got.iter().zip(want) {
        let (gc, wc) = (g["confidence"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!((gc - wc).abs() < max_conf, "{}: confidence {gc} vs {wc}", w["text"]);
    }
    // Each stage's latency: the detector once, the recogniser once per line.
    let stages = out["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert_eq!((stages[0]["stage"].as_str(), stages[0]["runs"].as_u64()), (Some("ppocr"), Some(1)));
    assert_eq!(
        (stages[1]["stage"].as_str(), stages[1]["runs"].as_u64()),
        (Some("ppocr.rec"), Some(got.len() as u64))
    );
    for s in stages {
        for k in ["pre_ms", "model_ms", "post_ms"] {
            assert!(s[k].as_f64().unwrap() >= 0.0, "{s:?}");
        }
    }
    eprintln!("stage latencies: {stages:?}");
    // The recogniser ran each line at its own width: one plan per width bucket.
    let rec = runner.model().stages[0].plan_cache().unwrap();
    assert!(!rec.sizes.is_empty() && rec.sizes.iter().all(|w| w % 32 == 0 && *w >= 320), "{rec:?}");
    eprintln!("recogniser plans: {rec:?}");
    runner
}

/// The wake-word pipeline's directory (tests/fixtures/specs/oww-wake.toml and the two
/// openwakeword models tests/run prepares), in a temporary directory.
fn wake_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let models = cache().join("models");
    assert!(models.join("oww-hey-jarvis/model.onnx").is_file(), "run tests/run --prepare-only");
    std::fs::copy(models.join("oww-embedding/model.onnx"), dir.path().join("embedding.onnx")).unwrap();
    std::fs::copy(models.join("oww-hey-jarvis/model.onnx"), dir.path().join("hey_jarvis.onnx")).unwrap();
    std::fs::copy(root().join("tests/fixtures/specs/oww-wake.toml"), dir.path().join("model.toml")).unwrap();
    dir
}

fn wake_text() -> String {
    std::fs::read_to_string(root().join("tests/fixtures/specs/oww-wake.toml")).unwrap()
}

#[test]
fn an_outputs_stage_needs_its_window_and_stages_do_not_mix() {
    let spec = parse(&wake_text()).unwrap();
    assert_eq!(spec.stages[0].window, Some(super::OutputWindowSpec { size: 16, hop: 1 }));
    assert_eq!(parse(&toml::to_string(&spec).unwrap()).unwrap(), spec, "round trip");

    let no_window = wake_text().replace("[stage.window]\nsize = 16\nhop = 1\n", "");
    let err = parse(&no_window).unwrap_err();
    assert!(err.contains("stage `jarvis` takes outputs: give it [stage.window]"), "{err}");
    let zero = wake_text().replace("size = 16", "size = 0");
    assert!(parse(&zero).unwrap_err().contains("must be at least 1"));

    let mut crops = parse(&spec_text()).unwrap();
    crops.stages[0].window = Some(super::OutputWindowSpec { size: 2, hop: 1 });
    let err = parse(&toml::to_string(&crops).unwrap()).unwrap_err();
    assert!(
        err.contains("[stage.window] is for from = \\\"outputs\\\"") || err.contains("is for from"),
        "{err}"
    );

    let mut mixed = parse(&wake_text()).unwrap();
    let mut second = mixed.stages[0].clone();
    (second.name, second.file, second.from, second.window) =
        ("b".into(), "b.onnx".into(), super::StageFrom::Crops, None);
    mixed.stages.push(second);
    let err = parse(&toml::to_string(&mixed).unwrap()).unwrap_err();
    assert!(err.contains("all take crops or all take outputs"), "{err}");
}

/// wake.wav through the Runner in payloads of odd sizes: the log-mel frames, the
/// embeddings and the window of 16 carry over between payloads, the classifier runs once
/// per new embedding (nothing recomputed), and the scores are openWakeWord's (its Python
/// reference) within 1e-4.
#[test]
fn the_wake_word_pipeline_streams_and_scores_as_openwakeword() {
    let reference: Value =
        serde_json::from_slice(&std::fs::read(cache().join("reference/oww_reference.json")).unwrap())
            .unwrap();
    let want: Vec<f64> =
        reference["jarvis"]["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // wake.wav is 16 kHz mono int16: its samples are the bytes after the `data` chunk's header.
    let wav = std::fs::read(cache().join("audio/wake.wav")).unwrap();
    let at = wav.windows(4).position(|w| w == b"data").unwrap();
    let len = u32::from_le_bytes(wav[at + 4..at + 8].try_into().unwrap()) as usize;
    let pcm = wav[at + 8..at + 8 + len].to_vec();
    let dir = wake_dir();
    let mut runner = Runner::open(dir.path(), &EngineConfig::default()).unwrap();
    let mut answers = Vec::new();
    for chunk in pcm.chunks(2 * 3001) {
        answers.extend(runner.push(Payload::Bytes(chunk.to_vec())).unwrap());
    }
    assert_eq!(answers.len(), want.len(), "one answer per embedding once 16 are in");
    for (i, (a, w)) in answers.iter().zip(&want).enumerate() {
        assert_eq!(a.window, i as u64);
        let got = a.outputs["score"].as_f64().unwrap();
        assert!((got - w).abs() <= 1e-4, "window {i}: {got} vs openWakeWord's {w}");
        let stages = a.outputs["stages"].as_array().unwrap();
        assert_eq!(stages[1]["runs"].as_u64(), Some(1), "one classifier run per new embedding");
    }
}
