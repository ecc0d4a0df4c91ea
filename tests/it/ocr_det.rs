//! A model served alone whose input's height and width both vary: the PP-OCRv4 text
//! detector (`post.kind = "text_boxes"`) without its recogniser. Each request's shape
//! comes from what it carries (an image's frame, an OIP tensor's shape, a JSON
//! message's `shape`) and reaches the engine; the boxes are rapidocr's
//! (tests/fixtures/ocr_reference.py), and a size outside the spec's bounds is refused
//! with a message that says which sizes the input takes.

use std::path::Path;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::broker::{Broker, BrokerOptions};
use crate::common::mqtt_agent::broker_opts;
use crate::common::*;

/// Boxes must overlap rapidocr's by at least this intersection over union, or have
/// every corner within one pixel of it: on the wide image one line's map edge crosses
/// the threshold one row apart (tract's and onnxruntime's sums differ in the last
/// bits), IoU 0.957 for a 48-pixel-high box, as crates/edge-infer/src/stages/tests.rs
/// explains.
const MIN_IOU: f64 = 0.99;
const MAX_OFF: f64 = 1.0;

/// The detector's directory: `det.onnx` from the PP-OCR pipeline, and its spec without
/// the recogniser stage (the head of tests/fixtures/specs/ppocr.toml), named `name`,
/// with `edit` applied to the spec's text.
fn detector(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let pipeline = model("ppocr");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(pipeline.join("det.onnx"), out.join("det.onnx")).unwrap();
    let spec = std::fs::read_to_string(pipeline.join("model.toml")).unwrap();
    let head = spec.split("\n[[stage]]").next().unwrap().to_string();
    let renamed = head.replacen("name = \"ppocr\"", &format!("name = \"{name}\""), 1);
    assert_ne!(renamed, head, "the pipeline's spec changed; update this test");
    std::fs::write(out.join("model.toml"), edit(renamed)).unwrap();
    out
}

/// (image bytes, rapidocr's lines) of a reference case.
fn case(file: &str) -> (Vec<u8>, Value) {
    let reference = read_json(&cache().join("reference").join(file));
    let image = std::fs::read(cache().join("reference").join(reference["image"].as_str().unwrap())).unwrap();
    (image, reference["lines"].clone())
}

/// Four `[x, y]` corners.
fn corners(v: &Value) -> Vec<(f64, f64)> {
    let points: Vec<(f64, f64)> = v
        .as_array()
        .unwrap_or_else(|| panic!("corners: {v}"))
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert_eq!(points.len(), 4, "{v}");
    points
}

/// The axis-aligned extent of four corners: [x0, y0, x1, y1].
fn extent(v: &Value) -> [f64; 4] {
    let points = corners(v);
    let (xs, ys): (Vec<f64>, Vec<f64>) = points.into_iter().unzip();
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [min(&xs), min(&ys), max(&xs), max(&ys)]
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

/// The result's boxes are rapidocr's text lines' boxes, in the original image's pixels:
/// as many, in the same order, each with IoU >= 0.99 or its corners within a pixel.
fn assert_boxes(what: &str, result: &Value, lines: &Value) {
    let got = result["boxes"].as_array().unwrap_or_else(|| panic!("{what}: no boxes in {result}"));
    let want = lines.as_array().unwrap();
    assert!(!want.is_empty(), "{what}: the reference has no lines, so the test proves nothing");
    assert_eq!(got.len(), want.len(), "{what}: {result}\nreference: {lines}");
    for (g, w) in got.iter().zip(want) {
        let overlap = iou(extent(&g["points"]), extent(&w["box"]));
        let off = corners(&g["points"])
            .iter()
            .zip(corners(&w["box"]))
            .map(|(a, b)| (a.0 - b.0).abs().max((a.1 - b.1).abs()))
            .fold(0.0, f64::max);
        assert!(
            overlap >= MIN_IOU || off <= MAX_OFF,
            "{what}: IoU {overlap}, {off} px off rapidocr's box of {}: {g} vs {}",
            w["text"],
            w["box"]
        );
    }
}

/// `POST`s `body` as JSON: (status, the JSON answer). The answer holds the whole map
/// (a value per pixel), beyond the client's default limit of 10 MB.
fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    let r = http().post(&d.url(path)).send_json(&body).expect("POST");
    let status = r.status().as_u16();
    let v = r.into_body().with_config().limit(256 << 20).read_json().unwrap_or(Value::Null);
    (status, v)
}

fn image_request(png: &[u8]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                       "parameters": {"content_type": "base64"}, "data": [b64]}]})
}

/// The detector alone in the daemon: images published on MQTT and sent to
/// `POST /v2/models/{name}/infer` come back with rapidocr's boxes (before, the agent
/// could not tell the image's height from its width by the number of values, and
/// every request failed); an image that resizes beyond the input's 1536 pixels is
/// refused with the sizes the input takes, on the events topic and as a 400.
#[test]
fn a_text_detector_alone_takes_images_of_any_size_over_mqtt_and_the_api() {
    let work = tempdir();
    let det = detector(work.path(), "ppocr-det", |s| s);
    let mut broker = Broker::start(BrokerOptions { acl: None, ..broker_opts() });
    let body = format!(
        "[output]\nstdout = false\n\n[[model]]\npath = \"{}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
         username = \"agent\"\npassword = \"agent-pass\"\n\n[[mqtt.sensor]]\ntopic = \"sensors/+/camera\"\n\
         model = \"ppocr-det\"\nstream_level = 1\n",
        det.display(),
        broker.port
    );
    let results = broker.subscribe("test", "edge/it/results/#");
    let events = broker.subscribe("test", "edge/it/events");
    let d = Daemon::start("run", &body, "", &[]);

    // Two sizes (800x736 and 1100x700): two frames, 736x800 and 736x1152 after resizing.
    for (i, file) in ["ocr_reference.json", "ocr_reference_wide.json"].into_iter().enumerate() {
        let (png, lines) = case(file);
        broker.publish("test", &format!("sensors/cam{i}/camera"), &png, 1, false);
        let stream = format!("\"stream\":\"cam{i}\"");
        let (topic, p) =
            results.wait_for(&format!("a result for {file}"), secs(120), |_, p| p.contains(&stream));
        assert_eq!(topic, "edge/it/results/ppocr-det");
        let r: Value = serde_json::from_str(&p).unwrap();
        assert_eq!(r["place"], "local", "{r}");
        assert_boxes(&format!("MQTT {file}"), &r["outputs"], &lines);

        let (s, v) = post(&d, "/v2/models/ppocr-det/infer", image_request(&png));
        assert_eq!(s, 200, "{v}");
        assert_boxes(&format!("API {file}"), &v["edge_agent"]["result"], &lines);
        // The map output has the frame's size, as the request's shape said.
        let map = v["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["shape"].as_array().is_some_and(|s| s.len() == 4));
        let frame = if i == 0 { json!([1, 1, 736, 800]) } else { json!([1, 1, 736, 1152]) };
        assert_eq!(map.map(|o| o["shape"].clone()), Some(frame), "{}", v["outputs"]);
    }

    // 768x288 resizes (shorter side to 736) to 1952x736: wider than the input's 1536.
    let wide = std::fs::read(cache().join("reference/detect_pair.png")).unwrap();
    broker.publish("test", "sensors/cam9/camera", &wide, 1, false);
    let (_, e) = events.wait_for("request-failed", secs(60), |_, p| p.contains("request-failed"));
    for part in ["768x288", "1952x736", "32..=1536", "limit_side"] {
        assert!(e.contains(part), "the error should say {part:?}: {e}");
    }
    let (s, v) = post(&d, "/v2/models/ppocr-det/infer", image_request(&wide));
    assert_eq!(s, 400, "{v}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.contains("1952x736") && err.contains("limit_side"), "{v}");
    // The daemon goes on: the next image is answered.
    let (png, lines) = case("ocr_reference.json");
    broker.publish("test", "sensors/cam5/camera", &png, 1, false);
    let (_, p) =
        results.wait_for("a result after the refusal", secs(120), |_, p| p.contains("\"stream\":\"cam5\""));
    assert_boxes("MQTT after a refusal", &serde_json::from_str::<Value>(&p).unwrap()["outputs"], &lines);

    let (status, _) = d.stop();
    assert!(status.success());
    broker.stop();
}

/// Tensors that say their shape: an OIP FP32 input of [1, 3, 64, 96] and an MQTT JSON
/// message `{"shape": [1, 3, 64, 96], "data": [...]}` (to a copy of the detector that
/// takes JSON) run at that size, their map [1, 1, 64, 96]; a height of 40 (no multiple
/// of 32) is refused over both with the sizes the input takes.
#[test]
fn a_text_detector_takes_tensors_of_the_shape_they_declare() {
    let work = tempdir();
    let det = detector(work.path(), "ppocr-det", |s| s);
    let json_det = detector(work.path(), "det-json", |s| {
        let edited = s.replacen("format = \"image\"", "format = \"json\"", 1).replacen(
            "[post]\nkind = \"text_boxes\"",
            "[post]\nkind = \"text_boxes\"\nraw = true",
            1,
        );
        assert_eq!(edited.matches("format = \"json\"").count() + edited.matches("raw = true").count(), 2);
        edited
    });
    let mut broker = Broker::start(BrokerOptions { acl: None, ..broker_opts() });
    let body = format!(
        "[output]\nstdout = false\n\n[[model]]\npath = \"{}\"\n\n[[model]]\npath = \"{}\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"agent\"\npassword = \"agent-pass\"\n\n\
         [[mqtt.sensor]]\ntopic = \"sensors/+/tensor\"\nmodel = \"det-json\"\nstream_level = 1\n",
        det.display(),
        json_det.display(),
        broker.port
    );
    let results = broker.subscribe("test", "edge/it/results/#");
    let events = broker.subscribe("test", "edge/it/events");
    let d = Daemon::start("run", &body, "", &[]);
    // A grey ramp, so that the values are not all alike.
    let values = |h: usize, w: usize| -> Vec<f64> {
        (0..3 * h * w).map(|i| (i % w) as f64 / w as f64 - 0.5).collect()
    };

    let request = |h: usize, w: usize| json!({"inputs": [{"name": "x", "shape": [1, 3, h, w], "datatype": "FP32", "data": values(h, w)}]});
    let (s, v) = post(&d, "/v2/models/ppocr-det/infer", request(64, 96));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["outputs"][0]["shape"], json!([1, 1, 64, 96]), "{v}");
    assert!(v["edge_agent"]["result"]["boxes"].is_array(), "{v}");
    let (s, v) = post(&d, "/v2/models/ppocr-det/infer", request(40, 96));
    assert_eq!(s, 400, "{v}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.contains("[1, 3, 40, 96]") && err.contains("multiple of 32"), "{v}");

    let message = |h: usize, w: usize| json!({"shape": [1, 3, h, w], "data": values(h, w)}).to_string();
    broker.publish("test", "sensors/t1/tensor", message(64, 96).as_bytes(), 1, false);
    let (topic, p) =
        results.wait_for("the tensor's result", secs(60), |_, p| p.contains("\"stream\":\"t1\""));
    assert_eq!(topic, "edge/it/results/det-json");
    let r: Value = serde_json::from_str(&p).unwrap();
    assert!(r["outputs"]["boxes"].is_array(), "{r}");
    let raw = r["outputs"]["raw"].as_object().unwrap_or_else(|| panic!("no raw outputs: {r}"));
    assert_eq!(raw.values().next().map(|o| o["shape"].clone()), Some(json!([1, 1, 64, 96])), "{r}");

    broker.publish("test", "sensors/t2/tensor", message(40, 96).as_bytes(), 1, false);
    let (_, e) = events.wait_for("request-failed", secs(60), |_, p| p.contains("request-failed"));
    assert!(e.contains("[1, 3, 40, 96]") && e.contains("multiple of 32") && e.contains("t2"), "{e}");

    let (status, _) = d.stop();
    assert!(status.success());
    broker.stop();
}

/// The CLI takes the detector's images at their own size too: `infer` gives rapidocr's
/// boxes for the wide image (before, it read the map at a wrong size and found none),
/// and `bench --input` runs it through the engine and straight into tract, with the
/// pre, model and post costs.
#[test]
fn infer_and_bench_take_the_detectors_images_at_their_own_size() {
    let work = tempdir();
    let det = detector(work.path(), "ppocr-det", |s| s);
    let reference = cache().join("reference");
    let wide = read_json(&reference.join("ocr_reference_wide.json"));
    let image = reference.join(wide["image"].as_str().unwrap());
    let out = run(
        &["infer", "--model", det.to_str().unwrap(), "--input", image.to_str().unwrap(), "--json"],
        secs(120),
    );
    assert!(out.status.success(), "infer: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_boxes("infer", &report["results"][0]["outputs"], &wide["lines"]);

    // Before, the engine was handed no shape (the image's values alone do not tell
    // height from width) and tract's baseline ran on a plan for the largest size.
    let args = [
        "bench",
        "--model",
        det.to_str().unwrap(),
        "--input",
        image.to_str().unwrap(),
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--json",
    ];
    let out = run(&args, secs(300));
    assert!(out.status.success(), "bench: {}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    for mode in ["engine", "tract_direct"] {
        assert!(r[mode]["p50_ms"].as_f64().unwrap_or(0.0) > 0.0, "{mode}: {r}");
    }
    assert_eq!(r["stages"]["pre_source"], "input file", "{r}");
    assert!(r["stages"]["post_ms"].as_f64().is_some(), "{r}");
}
