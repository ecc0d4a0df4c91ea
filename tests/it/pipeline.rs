//! Pipelines of models declared in one spec (`[[stage]]`), through the real daemon: the
//! PP-OCR detector feeding its recogniser (from the rapidocr wheel), given a rendered
//! text image over MQTT and over the local API, answers what rapidocr's own Python code
//! answers on onnxruntime (tests/fixtures/ocr_reference.py); and the two-model directory
//! is published as one package, self-test included.

use serde_json::{Value, json};

use crate::common::mqtt_agent::{MqttSetup, Running};
use crate::common::*;

fn reference() -> (Vec<u8>, Value) {
    let reference = read_json(&cache().join("reference/ocr_reference.json"));
    let image = std::fs::read(cache().join("reference").join(reference["image"].as_str().unwrap())).unwrap();
    (image, reference)
}

/// Each line's text equals the reference's, in the same order, and each box corner is
/// within one pixel of it (the library test holds the IoU >= 0.99 comparison; here the
/// daemon must give the library's answer).
fn assert_lines(result: &Value, reference: &Value) {
    let got = result["lines"].as_array().unwrap_or_else(|| panic!("no lines: {result}"));
    let want = reference["lines"].as_array().unwrap();
    let texts =
        |l: &[Value]| l.iter().map(|l| l["text"].as_str().unwrap_or("?").to_string()).collect::<Vec<_>>();
    assert_eq!(texts(got), texts(want), "{result}");
    for (g, w) in got.iter().zip(want) {
        let (gb, wb) = (floats(&Value::Array(flat(&g["box"]))), floats(&Value::Array(flat(&w["box"]))));
        assert_eq!(gb.len(), 8, "{g}");
        assert!(max_abs_diff(&gb, &wb) <= 1.0, "{}: box {} vs rapidocr's {}", w["text"], g["box"], w["box"]);
    }
    let stages = result["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(names, ["ppocr", "ppocr.rec"], "{result}");
    assert_eq!(stages[1]["runs"], json!(got.len()), "{result}");
}

fn flat(v: &Value) -> Vec<Value> {
    v.as_array().unwrap().iter().flat_map(|p| p.as_array().unwrap().clone()).collect()
}

#[test]
fn ppocr_pipeline_reads_text_over_mqtt_and_the_local_api() {
    let (image, reference) = reference();
    let port = free_port();
    let model_dir = model("ppocr");
    let Running { broker, subs: [results], agent, .. } = MqttSetup::new()
        .config(move |dir, broker_port| {
            format!(
                "[agent]\ndevice_id = \"dev1\"\nstate_dir = \"{state}\"\n\n[output]\nstdout = false\n\n\
                 [api]\nlisten = \"127.0.0.1:{port}\"\n\n[[model]]\npath = \"{model}\"\n\n\
                 [mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nusername = \"agent\"\npassword = \"agent-pass\"\n\n\
                 [[mqtt.sensor]]\ntopic = \"sensors/+/accel\"\nmodel = \"ppocr\"\nstream_level = 1\n",
                state = dir.join("state").display(),
                model = model_dir.display(),
            )
        })
        .start(["edge/dev1/results/#"]);

    // MQTT: the PNG's bytes as the message; one result with every line.
    broker.publish("test", "sensors/cam-1/accel", &image, 1, false);
    let (topic, payload) =
        results.wait_for("the pipeline's result", secs(60), |t, _| t.starts_with("edge/dev1/results/"));
    assert_eq!(topic, "edge/dev1/results/ppocr");
    let r: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        (r["model"].as_str(), r["version"].as_str(), r["place"].as_str()),
        (Some("ppocr"), Some("4.0"), Some("local"))
    );
    assert_eq!(r["stream"], "cam-1", "{r}");
    assert_lines(&r["outputs"], &reference);

    // A message that is no image: a request-failed event, and the agent goes on.
    let events = broker.subscribe("test", "edge/dev1/events");
    broker.publish("test", "sensors/cam-1/accel", b"not an image", 1, false);
    let (_, e) = events.wait_for("request-failed", secs(30), |_, p| p.contains("request-failed"));
    assert!(e.contains("cannot read the image"), "{e}");

    // The local API: the image as a BYTES input (base64), the answer in edge_agent.result.
    use base64::Engine as _;
    let body = json!({
        "id": "ocr-1",
        "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"},
                    "data": [base64::engine::general_purpose::STANDARD.encode(&image)]}]
    });
    let url = format!("http://127.0.0.1:{port}/v2/models/ppocr/infer");
    let mut resp = http()
        .post(&url)
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.body_mut().read_json().unwrap();
    assert_eq!((v["id"].as_str(), v["model_version"].as_str()), (Some("ocr-1"), Some("4.0")), "{v}");
    assert_lines(&v["edge_agent"]["result"], &reference);
    // Numbers are not an image: the error says what to send.
    let bad = json!({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let mut resp = http()
        .post(&url)
        .header("content-type", "application/json")
        .send(bad.to_string().as_bytes())
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.body_mut().read_json().unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("pipeline that takes one PNG or JPEG image as BYTES"),
        "{v}"
    );
    agent.stop();
}

/// The detector, the recogniser, the character list and the one spec are one package:
/// `registry publish` packs them together after the self-test (which loads every stage
/// and runs a golden vector of the recogniser stage), and refuses the directory when a
/// stage's file is missing.
#[test]
fn a_pipeline_is_published_as_one_package_with_its_selftest() {
    use crate::common::registry::Publisher;
    let work = tempdir();
    let dir = work.path().join("ppocr");
    copy_model(&model("ppocr"), &dir);
    record_rec_selftest(work.path(), &dir);
    let golden = read_json(&dir.join("selftest.json"));
    assert_eq!(golden["cases"][0]["stage"], "rec", "{}", golden["cases"][0]["name"]);
    assert_eq!(
        golden["cases"][0]["expected"].as_array().unwrap().len() % 6625,
        0,
        "[1, steps, 6625] probabilities"
    );

    let registry = Publisher::new(1);
    registry.publish(&dir, 100, &[]);
    assert_eq!(package_files(&registry), ["det.onnx", "keys.txt", "model.toml", "rec.onnx", "selftest.json"]);

    // Without the recogniser's character list the pipeline does not load: not published.
    std::fs::remove_file(dir.join("keys.txt")).unwrap();
    let out = registry.try_publish(&dir, &["--rollout", "100"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("self-test") && err.contains("keys.txt"), "{err}");
}

/// The files of the one package a registry holds, sorted.
pub(crate) fn package_files(registry: &crate::common::registry::Publisher) -> Vec<String> {
    let packages: Vec<_> = walk(&registry.repo().join("targets"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    assert_eq!(packages.len(), 1, "{packages:?}");
    let listing = std::process::Command::new("tar").arg("-tf").arg(&packages[0]).output().unwrap();
    let mut names: Vec<String> =
        String::from_utf8_lossy(&listing.stdout).lines().map(str::to_string).collect();
    names.sort();
    names
}

/// `edge-agent infer` on the pipeline's directory and the image file: the same lines, as
/// JSON for scripts, and as text for people with each stage's latency.
#[test]
fn infer_runs_the_whole_pipeline_on_an_image_file() {
    let (_, reference) = reference();
    let image = cache().join("reference").join(reference["image"].as_str().unwrap());
    let (m, i) = (model("ppocr"), image.to_str().unwrap().to_string());
    let out = run(&["infer", "--model", m.to_str().unwrap(), "--input", &i, "--json"], secs(300));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["model"].as_str(), v["version"].as_str()), (Some("ppocr"), Some("4.0")), "{v}");
    assert_lines(&v["results"][0]["outputs"], &reference);
    let out = run(&["infer", "--model", m.to_str().unwrap(), "--input", &i], secs(300));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"Edge inference 2026\"") && text.contains("stage ppocr.rec: 5 run(s)"), "{text}");
}

/// Records `selftest.json` in `dir` with one golden vector of the recogniser stage.
fn record_rec_selftest(work: &std::path::Path, dir: &std::path::Path) {
    // A grey ramp as the recogniser's [1, 3, 48, 320] input.
    let input: Vec<f64> = (0..3 * 48 * 320).map(|i| ((i % 320) as f64 / 160.0) - 1.0).collect();
    let inputs = work.join("inputs.json");
    std::fs::write(&inputs, json!([{"name": "ramp", "stage": "rec", "input": input}]).to_string()).unwrap();
    let args = ["model", "selftest", "--model", dir.to_str().unwrap(), "--record", inputs.to_str().unwrap()];
    let out = run(&args, secs(300));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The image through the API as a BYTES input: (the version that answered, the result).
fn read_over_api(d: &Daemon, image: &[u8]) -> (String, Value) {
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(image);
    let body = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                  "parameters": {"content_type": "base64"}, "data": [data]}]});
    let mut resp = http().post(&d.url("/v2/models/ppocr/infer")).send_json(&body).unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.body_mut().read_json().unwrap();
    (v["model_version"].as_str().unwrap_or("").to_string(), v["edge_agent"]["result"].clone())
}

/// An update brings the detector, the recogniser and the spec that ties them together
/// at once, and a rollback takes them all back: version 4.1 keeps only lines read with
/// a confidence of at least 0.99999 (its recogniser stage's threshold), so it answers
/// with no lines; after the rollback 4.0 reads every line again.
#[test]
fn a_pipeline_is_updated_and_rolled_back_as_one_unit() {
    use crate::common::registry::{Publisher, Served, ota_section, wait_status};
    let (image, reference) = reference();
    let work = tempdir();
    let (v1, v2) = (work.path().join("v1"), work.path().join("v2"));
    copy_model(&model("ppocr"), &v1);
    copy_model(&model("ppocr"), &v2);
    let spec = std::fs::read_to_string(v2.join("model.toml")).unwrap();
    let edited = spec.replacen("version = \"4.0\"", "version = \"4.1\"", 1).replacen(
        "kind = \"ctc\"\nthreshold = 0.5",
        "kind = \"ctc\"\nthreshold = 0.99999",
        1,
    );
    assert_eq!(
        edited.matches("4.1").count() + edited.matches("0.99999").count(),
        2,
        "the spec changed; update this test"
    );
    std::fs::write(v2.join("model.toml"), edited).unwrap();
    record_rec_selftest(work.path(), &v2);
    let p = Publisher::new(1);
    p.publish(&v2, 100, &[]);
    let reg = Served::start(&p.repo());
    let ota =
        ota_section(&reg.url, &p.root_v1(), "").replace("models = [\"vibration\"]", "models = [\"ppocr\"]");
    let body = format!("[[model]]\npath = \"{}\"\n\n[output]\nstdout = false\n\n{ota}", v1.display());
    let d = Daemon::start("run", &body, "", &[]);

    wait_status(&d, "version 4.1 active", secs(180), |s| s["models"]["ppocr"]["version"] == "4.1");
    let (version, result) = read_over_api(&d, &image);
    assert_eq!(version, "4.1");
    assert_eq!(result["lines"], json!([]), "4.1's recogniser threshold keeps no line: {result}");
    let stages = result["stages"].as_array().unwrap();
    assert_eq!(stages[1]["runs"], json!(reference["lines"].as_array().unwrap().len()), "{result}");

    let (code, v) = crate::common::registry::post(&d, "/ota/rollback", json!({"model": "ppocr"}));
    assert_eq!(code, 200, "{v}");
    let (version, result) = read_over_api(&d, &image);
    assert_eq!(version, "4.0");
    assert_lines(&result, &reference);
    let (status, _) = d.stop();
    assert!(status.success());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
