//! A real YOLO-style detector from outside the project (NudeNet 3.4.2's YOLOv8n, from
//! its wheel), end to end from image files to boxes with labels, compared with a Python
//! reference of the package's published pre- and post-processing on onnxruntime
//! (tests/fixtures/yolo_reference.py): through `edge-agent infer`, the daemon over MQTT
//! and the local API, and an update published with its self-test and installed over OTA.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::broker::{Broker, BrokerOptions};
use crate::common::mqtt_agent::broker_opts;
use crate::common::registry::*;
use crate::common::*;
use edge_infer::engine::spec::{ModelSpec, PayloadFormat};
use edge_infer::pipeline::{Payload, decode};

/// Boxes must overlap the reference's by at least this intersection over union.
const MIN_IOU: f64 = 0.99;
/// Largest score difference: the same tensor through tract and onnxruntime.
const SCORE_TOLERANCE: f64 = 1e-3;

fn reference() -> Value {
    read_json(&cache().join("reference/detect_reference.json"))
}

fn image(name: &str) -> PathBuf {
    cache().join("reference").join(name)
}

fn iou(a: &[f64], b: &[f64]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f64]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// The result's detections are the reference's: as many, and each reference box has
/// one of the same label with IoU >= 0.99 and a close score, in the same order.
fn assert_same(what: &str, outputs: &Value, want: &Value) {
    let got =
        outputs["detections"].as_array().unwrap_or_else(|| panic!("{what}: no detections in {outputs}"));
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: {outputs}\nreference: {want:?}");
    assert!(!want.is_empty(), "{what}: the reference found nothing, so the test proves nothing");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["label"], w["label"], "{what}: {g} vs {w}");
        assert_eq!(g["class"], w["class"], "{what}: {g} vs {w}");
        let overlap = iou(&floats(&g["box"]), &floats(&w["box"]));
        assert!(overlap >= MIN_IOU, "{what}: IoU {overlap} with the reference: {g} vs {w}");
        let diff = (g["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs();
        assert!(diff <= SCORE_TOLERANCE, "{what}: score off by {diff}: {g} vs {w}");
    }
    assert_eq!(outputs["frame"], "image", "{what}: boxes are in the image's pixels");
}

/// Every reference case through `edge-agent infer --json`, from the image file: the
/// letterbox both ways (a wide and a tall crop) and two faces suppressed apart. Before
/// `post.kind = "detection"` the spec could only take an argmax over the whole output.
#[test]
fn a_yolo_detector_finds_the_reference_boxes_in_image_files() {
    let model = model("nudenet");
    for case in reference()["cases"].as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        let out = run(
            &[
                "infer",
                "--model",
                model.to_str().unwrap(),
                "--input",
                image(name).to_str().unwrap(),
                "--json",
            ],
            secs(120),
        );
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_same(name, &v["results"][0]["outputs"], &case["detections"]);
    }
}

/// The agent's config: the detector (at `model`), images from `sensors/+/camera`, the
/// MQTT broker on `port`.
fn daemon_body(model: &Path, port: u16, extra: &str) -> String {
    format!(
        "[output]\nstdout = false\n\n[[model]]\npath = \"{}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
         username = \"agent\"\npassword = \"agent-pass\"\n\n[[mqtt.sensor]]\ntopic = \"sensors/+/camera\"\n\
         model = \"nudenet\"\nstream_level = 1\n\n{extra}\n",
        model.display()
    )
}

/// An OIP v2 request with the encoded image as a base64 BYTES input.
fn image_request(png: &[u8]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    json!({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                       "parameters": {"content_type": "base64"}, "data": [b64]}]})
}

/// The same boxes from the daemon: a PNG published on a sensor topic comes back as a
/// result on MQTT, and the PNG sent to the local API as a BYTES input comes back in
/// `edge_agent.result`; both in the original image's pixels.
#[test]
fn the_daemon_detects_over_mqtt_and_the_local_api() {
    // The users of the MQTT tests, without their ACL (which is for device `dev1`).
    let mut broker = Broker::start(BrokerOptions { acl: None, ..broker_opts() });
    let body = daemon_body(&model("nudenet"), broker.port, "");
    let results = broker.subscribe("test", "edge/it/results/#");
    let statuses = broker.subscribe("test", "edge/it/status");
    let d = Daemon::start("run", &body, "", &[]);
    // Sensor topics are subscribed before the online status: an image sent earlier could
    // reach no subscriber and be dropped by the broker.
    statuses.wait_for("online status", secs(30), |_, p| p.contains("\"online\""));
    let reference = reference();
    for (i, case) in reference["cases"].as_array().unwrap().iter().enumerate() {
        let name = case["image"].as_str().unwrap();
        let png = std::fs::read(image(name)).unwrap();
        broker.publish("test", &format!("sensors/cam{i}/camera"), &png, 1, false);
        let stream = format!("cam{i}");
        let (_, p) = results.wait_for(&format!("a result for {name}"), secs(60), |t, p| {
            t == "edge/it/results/nudenet" && p.contains(&format!("\"stream\":\"{stream}\""))
        });
        let r: Value = serde_json::from_str(&p).unwrap();
        assert_same(&format!("MQTT {name}"), &r["outputs"], &case["detections"]);

        let (s, v) = post(&d, "/v2/models/nudenet/infer", image_request(&png));
        assert_eq!(s, 200, "{v}");
        assert_same(&format!("API {name}"), &v["edge_agent"]["result"], &case["detections"]);
    }
    let (status, _) = d.stop();
    assert!(status.success());
    broker.stop();
}

/// `registry publish` runs the detector's self-test (golden vectors recorded from the
/// pre-processed reference image); a device installs the update over OTA, runs its own
/// self-test and then serves the same boxes.
#[test]
fn a_detector_update_is_published_self_tested_and_served() {
    let work = tempdir();
    let det = work.path().join("nudenet");
    copy_model(&model("nudenet"), &det);
    let spec = ModelSpec::load_dir(&det).unwrap().spec;
    let case = &reference()["cases"][0];
    let png = std::fs::read(image(case["image"].as_str().unwrap())).unwrap();
    let tensor = decode(&spec, Payload::Encoded(PayloadFormat::Image, png.clone())).unwrap();
    let inputs = work.path().join("inputs.json");
    std::fs::write(&inputs, json!([{"name": "wide", "input": tensor}]).to_string()).unwrap();
    let out = run(
        &["model", "selftest", "--model", det.to_str().unwrap(), "--record", inputs.to_str().unwrap()],
        secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let p = Publisher::new(1);
    p.publish(&det, 100, &[]);
    let reg = Served::start(&p.repo());
    let body = format!(
        "[[model]]\npath = \"{}\"\n\n[output]\nstdout = false\n\n[ota]\nurl = \"{}\"\nmodels = [\"nudenet\"]\ntrusted_root = \"{}\"\ninterval_s = 3600\n",
        demo_model().display(),
        reg.url,
        p.root_v1().display()
    );
    let d = Daemon::start("serve", &body, "", &[]);
    let (s, v) = post(&d, "/ota/check", json!({}));
    assert_eq!(s, 200, "{v}");
    let st =
        wait_status(&d, "nudenet installed", secs(120), |s| s["models"]["nudenet"]["version"] == "3.4.2");
    assert_eq!(st["models"]["vibration"]["version"], "1", "{st:#}");
    let (s, v) = post(&d, "/v2/models/nudenet/infer", image_request(&png));
    assert_eq!(s, 200, "{v}");
    assert_same("after OTA", &v["edge_agent"]["result"], &case["detections"]);
    let (status, _) = d.stop();
    assert!(status.success());
}

/// `edge-agent bench` on the detector with an image: pre-processing (decoding the PNG,
/// letterbox, normalising), the model run and post-processing (NMS, mapping the boxes
/// back) are each reported, in the human output and in `--json`.
#[test]
fn bench_reports_the_detector_stages_apart() {
    // Drift monitoring off: its cost, measured over a thousand results of 307,200
    // inputs, would take minutes in a debug build and is not what this test is about.
    let work = tempdir();
    let model = work.path().join("nudenet");
    copy_model(&crate::common::model("nudenet"), &model);
    let spec = std::fs::read_to_string(model.join("model.toml")).unwrap();
    std::fs::write(model.join("model.toml"), format!("{spec}\n[monitor]\nenabled = false\n")).unwrap();
    let input = image("detect_pair.png");
    let args = ["bench", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()];
    let quick = ["-n", "5", "--warmup", "1", "--rounds", "1", "--no-baseline"];
    let out = run(&[&args[..], &quick, &["--json"]].concat(), secs(300));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let stages = &v["stages"];
    assert_eq!(stages["pre_source"], "input file", "{v}");
    for key in ["pre_ms", "model_ms", "post_ms"] {
        assert!(stages[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    let out = run(&[&args[..], &quick].concat(), secs(300));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stages (mean ms): pre ") && text.contains("(input file)"), "{text}");
}

/// A spec whose classes do not fit the detector's output is refused when the model
/// loads, saying what it expected and how to fix it, rather than finding no boxes.
#[test]
fn a_detector_spec_that_misreads_the_output_is_refused_at_load() {
    let work = tempdir();
    let det = work.path().join("nudenet");
    copy_model(&model("nudenet"), &det);
    let spec = std::fs::read_to_string(det.join("model.toml")).unwrap();
    let spec = spec.replace("class_agnostic = true", "class_agnostic = true\nclasses = 17");
    let spec = spec.replace("    \"BUTTOCKS_COVERED\",\n", "");
    assert!(!spec.contains("BUTTOCKS_COVERED"), "the fixture changed; update this test");
    std::fs::write(det.join("model.toml"), spec).unwrap();
    let out = run(
        &["infer", "--model", det.to_str().unwrap(), "--input", image("detect_wide.png").to_str().unwrap()],
        secs(120),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("expects 21 attributes per candidate (4 box + 17 classes)"), "{err}");
    assert!(err.contains("[1, 22, 2100]"), "{err}");
}

/// The detector with its input's height and width both varying (multiples of 32, the
/// longer side scaled to 320) through `edge-agent infer`: the two-face image of 768x288
/// runs at a 320x128 frame and gives the boxes onnxruntime gives at that frame
/// (`frames` of the reference). Before, an input could vary in one dimension only and
/// the engine told its shape from the number of values.
#[test]
fn a_yolo_detector_runs_at_a_multiple_of_32_frame_from_the_cli() {
    let work = tempdir();
    let dir = work.path().join("nudenet-any");
    copy_model(&model("nudenet"), &dir);
    let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap().replace(
        "shape = [1, 3, 320, 320]",
        "shape = [1, 3, { min = 32, max = 320, multiple_of = 32 }, { min = 32, max = 320, multiple_of = 32 }]",
    );
    std::fs::write(
        dir.join("model.toml"),
        spec.replace("filter = \"linear\"", "filter = \"linear\"\nlimit_side = 320"),
    )
    .unwrap();
    let frames = reference()["frames"].as_array().expect("frames: run tests/run --prepare-only").clone();
    for case in &frames {
        let name = case["image"].as_str().unwrap();
        let path = image(name);
        let args = ["infer", "--model", dir.to_str().unwrap(), "--input", path.to_str().unwrap(), "--json"];
        let out = run(&args, secs(120));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_same(name, &v["results"][0]["outputs"], &case["detections"]);
    }
    // Without the limit, a 768-pixel side is beyond the input's 320: refused, saying so.
    std::fs::write(dir.join("model.toml"), spec).unwrap();
    let path = image("detect_pair.png");
    let args = ["infer", "--model", dir.to_str().unwrap(), "--input", path.to_str().unwrap()];
    let out = run(&args, secs(120));
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("768x288") && err.contains("limit_side"), "{err}");
}
