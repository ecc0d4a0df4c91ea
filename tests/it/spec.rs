//! What a spec can say and what the CLI makes of a model before it has one: a bare ONNX
//! file inspected, byte-order marks, WAV sample rates, no post-processing, letterbox and
//! BGR against a PIL reference, and a dimension that varies within a range.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::common::*;

fn python() -> PathBuf {
    cache().join("venv/bin/python")
}

/// A model directory in `dir`: a cached model's ONNX file with the spec this checkout
/// ships for it (tests/fixtures/specs), edited by `edit`.
fn fixture_model(name: &str, dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let m = dir.join(name);
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(model(name).join("model.onnx"), m.join("model.onnx")).unwrap();
    let spec = std::fs::read_to_string(root().join(format!("tests/fixtures/specs/{name}.toml"))).unwrap();
    std::fs::write(m.join("model.toml"), edit(spec)).unwrap();
    m
}

/// A model directory holding a test model made by tests/fixtures/make_test_model.py and
/// the spec `spec`.
fn test_model(dir: &Path, kind: &str, shape: &str, spec: &str) -> PathBuf {
    let m = dir.join(kind);
    std::fs::create_dir_all(&m).unwrap();
    let out = Command::new(python())
        .arg(root().join("tests/fixtures/make_test_model.py"))
        .args([kind, m.join("model.onnx").to_str().unwrap(), shape])
        .output()
        .expect("run python");
    assert!(out.status.success(), "make_test_model.py: {}", stderr(&out));
    std::fs::write(m.join("model.toml"), spec).unwrap();
    m
}

fn py(script: &str, args: &[&str]) {
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().expect("run python");
    assert!(out.status.success(), "python: {}", stderr(&out));
}

/// `edge-agent infer --json`: exit code, the report (Null on failure) and stderr.
fn infer_json(m: &Path, input: &Path) -> (i32, Value, String) {
    let out = run(
        &["infer", "--model", m.to_str().unwrap(), "--input", input.to_str().unwrap(), "--json"],
        secs(60),
    );
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, stderr(&out))
}

/// `model inspect` on a bare ONNX file: names, types, shapes with symbolic dimensions,
/// producer and opsets, and a first model.toml that loads and runs as it is.
#[test]
fn model_inspect_reads_a_bare_onnx_file() {
    let cls = model("ppocr-cls").join("model.onnx");
    let out = run(&["model", "inspect", cls.to_str().unwrap(), "--json"], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inputs"][0]["name"], "x");
    assert_eq!(v["inputs"][0]["dtype"], "f32");
    assert_eq!(v["inputs"][0]["shape"], json!(["?", 3, "?", "?"]), "symbolic dimensions by name");
    assert_eq!(v["outputs"][0]["shape"], json!(["?", 2]));
    assert_eq!(v["producer"], "PaddlePaddle");
    assert_eq!(v["opsets"]["ai.onnx"], 11);
    assert!(v["ops"]["Conv"].as_u64().unwrap() > 10);
    assert_eq!(v["unsupported_ops"], json!([]));
    let suggested = v["suggested_spec"].as_str().unwrap();
    assert!(
        suggested.contains("format = \"image\"") && suggested.contains("axes 2 (`?`), 3 (`?`)"),
        "{suggested}"
    );

    // The human form, with --model, names the same things.
    let vad = model("silero-vad").join("model.onnx");
    let out = run(&["model", "inspect", "--model", vad.to_str().unwrap()], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state") && text.contains("[2, 1, 128]") && text.contains("spox"), "{text}");
    assert!(text.contains("state_output = \"stateN\""), "recurrent state paired: {text}");

    // The suggested spec, copied beside the file, loads and runs.
    let dir = tempdir();
    let m = dir.path().join("vad");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(&vad, m.join("model.onnx")).unwrap();
    // A directory with the ONNX file and no spec yet is inspected as the file alone.
    let out = run(&["model", "inspect", m.to_str().unwrap(), "--json"], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    std::fs::write(m.join("model.toml"), v["suggested_spec"].as_str().unwrap()).unwrap();
    let input = dir.path().join("zeros.json");
    std::fs::write(&input, serde_json::to_string(&vec![0.0; 576]).unwrap()).unwrap();
    let (code, report, err) = infer_json(&m, &input);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["results"][0]["raw"]["output"]["shape"], json!([1, 1]), "{report}");
}

/// Files that are not ONNX models: a clear reason and exit 2 (it could not start).
#[test]
fn model_inspect_refuses_bad_onnx_files() {
    let dir = tempdir();
    let bytes = std::fs::read(model("silero-vad").join("model.onnx")).unwrap();
    let cases = [
        ("truncated.onnx", bytes[..bytes.len() / 2].to_vec(), "not a usable ONNX model"),
        ("empty.onnx", Vec::new(), "the file is empty"),
        ("text.onnx", b"name = \"not a model\"\n".repeat(20), "not a usable ONNX model"),
        ("zeros.onnx", vec![0u8; 4096], "not a usable ONNX model"),
    ];
    for (name, content, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let out = run(&["model", "inspect", path.to_str().unwrap()], secs(30));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want) && err.contains(name), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    // A well-formed file with an operator tract lacks: its signature, then exit 2 naming
    // the operator.
    let odd = dir.path().join("odd.onnx");
    let script = r#"
import sys, onnx
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
node = helper.make_node("FrobnicateV9", ["x"], ["y"], domain="com.example")
graph = helper.make_graph([node], "odd", [x], [y])
m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
onnx.save(m, sys.argv[1])
"#;
    py(script, &[odd.to_str().unwrap()]);
    let out = run(&["model", "inspect", odd.to_str().unwrap(), "--json"], secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inputs"][0]["shape"], json!([1, 4]), "{v}");
    assert_eq!(v["unsupported_ops"], json!(["FrobnicateV9"]), "{v}");
    assert!(stderr(&out).contains("tract does not implement FrobnicateV9"), "{}", stderr(&out));

    let missing = dir.path().join("nowhere.onnx");
    let out = run(&["model", "inspect", missing.to_str().unwrap()], secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nowhere.onnx") && stderr(&out).contains("or an ONNX file"),
        "{}",
        stderr(&out)
    );
}

/// JSON and NDJSON files saved with a UTF-8 byte-order mark (Notepad, Excel) are read:
/// `infer` input, `model selftest --record` input, and the daemon's file sources.
#[test]
fn json_inputs_with_a_byte_order_mark_are_read() {
    let dir = tempdir();
    let bom = "\u{feff}";
    let window: Vec<f32> = (0..256).map(|i| (i as f32 * 0.3).sin()).collect();
    let window = serde_json::to_string(&window).unwrap();
    let input = dir.path().join("window.json");
    std::fs::write(&input, format!("{bom}{window}")).unwrap();
    let (code, report, err) = infer_json(&demo_model(), &input);
    assert_eq!(code, 0, "{err}");
    assert!(report["results"][0]["outputs"]["label"].is_string(), "{report}");

    let m = dir.path().join("vibration");
    copy_model(&demo_model(), &m);
    let cases = dir.path().join("cases.json");
    std::fs::write(&cases, format!("{bom}[{{\"name\": \"one\", \"input\": {window}}}]")).unwrap();
    let out = run(
        &["model", "selftest", "--model", m.to_str().unwrap(), "--record", cases.to_str().unwrap(), "--json"],
        secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // NDJSON and CSV sources: the first line is kept, not skipped as a bad line or a
    // header.
    std::fs::write(dir.path().join("a.ndjson"), format!("{bom}{window}\n{window}\n")).unwrap();
    let row: Vec<String> = (0..256).map(|i| format!("{}", (i as f32 * 0.3).sin())).collect();
    std::fs::write(dir.path().join("b.csv"), format!("{bom}{}\n", row.join(","))).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"bom\"\nstate_dir = \"{s}\"\n[[model]]\npath = \"{m}\"\n\
             [[source]]\nkind = \"file\"\nmodel = \"vibration\"\npath = \"a.ndjson\"\n\
             [[source]]\nkind = \"file\"\nmodel = \"vibration\"\npath = \"b.csv\"\n",
            s = dir.path().join("state").display(),
            m = demo_model().display()
        ),
    )
    .unwrap();
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out.stdout);
    let windows = |stream: &str| lines.iter().filter(|l| l["stream"] == stream).count();
    // 512 samples in 256/128 windows: 3; 256 samples: 1.
    assert_eq!((windows("a"), windows("b")), (3, 1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("skipping a bad line"), "{}", stderr(&out));
}

/// Writes a mono 16-bit WAV of `n` samples at `rate` Hz.
fn write_wav(path: &Path, rate: u32, n: usize) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..n {
        w.write_sample(((i as f32 * 0.05).sin() * 8000.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

/// The spec's `pre.sample_rate` against WAV files: another rate or 0 Hz is refused by
/// `infer` and by the daemon's file source, naming both rates.
#[test]
fn wav_sample_rate_is_checked_against_the_spec() {
    let dir = tempdir();
    let m = fixture_model("silero-vad", dir.path(), |s| s);
    let good = dir.path().join("16k.wav");
    write_wav(&good, 16000, 4096);
    let (code, report, err) = infer_json(&m, &good);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["results"].as_array().unwrap().len(), 8);

    let slow = dir.path().join("8k.wav");
    write_wav(&slow, 8000, 4096);
    let (code, _, err) = infer_json(&m, &slow);
    assert_eq!(code, 1, "a bad input: {err}");
    assert!(err.contains("8k.wav") && err.contains("8000 Hz") && err.contains("16000 Hz"), "{err}");

    // 0 Hz, as a damaged header says it: sample rate (bytes 24-27) and byte rate
    // (28-31, rate x 2 bytes), which hound reads without complaint.
    let zero = dir.path().join("0hz.wav");
    write_wav(&zero, 16000, 4096);
    let mut bytes = std::fs::read(&zero).unwrap();
    bytes[24..32].copy_from_slice(&[0; 8]);
    std::fs::write(&zero, bytes).unwrap();
    let (code, _, err) = infer_json(&m, &zero);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("0 Hz") && err.contains("damaged"), "{err}");
    // A model that declares no rate still refuses 0 Hz.
    let any = fixture_model("silero-vad", &dir.path().join("any"), |s| s.replace("sample_rate = 16000", ""));
    let (code, _, err) = infer_json(&any, &zero);
    assert_eq!(code, 1, "{err}");

    // The daemon's file source: refused with both rates; a 0 Hz file paced in real time
    // (speed 1) is refused rather than dividing by zero.
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"wav\"\nstate_dir = \"{s}\"\n[[model]]\npath = \"{m}\"\n\
             [[source]]\nkind = \"file\"\nmodel = \"silero-vad\"\npath = \"8k.wav\"\n\
             [[source]]\nkind = \"file\"\nmodel = \"silero-vad\"\npath = \"0hz.wav\"\nspeed = 1.0\n\
             [[source]]\nkind = \"file\"\nmodel = \"silero-vad\"\npath = \"16k.wav\"\n",
            s = dir.path().join("state").display(),
            m = m.display()
        ),
    )
    .unwrap();
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(60));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("8000 Hz") && log.contains("16000 Hz") && log.contains("0 Hz"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let lines = json_lines(&out.stdout);
    assert!(lines.iter().all(|l| l["stream"] == "16k"), "only the 16 kHz file is served");
    assert_eq!(lines.len(), 8);
}

/// `post.kind = "none"`: no argmax over a detector's output; the raw outputs are the
/// answer, from `infer` and from the daemon.
#[test]
fn post_kind_none_returns_the_raw_outputs() {
    let dir = tempdir();
    let m = fixture_model("ppocr-cls", dir.path(), |s| {
        s.replace("[post]\nlabels = [\"0\", \"180\"]\ntop_k = 2\n", "[post]\nkind = \"none\"\n")
    });
    assert!(std::fs::read_to_string(m.join("model.toml")).unwrap().contains("kind = \"none\""));
    let img = dir.path().join("line.png");
    py(
        "from PIL import Image; Image.new('RGB', (96, 24), (200, 30, 30)).save(__import__('sys').argv[1])",
        &[img.to_str().unwrap()],
    );
    let (code, report, err) = infer_json(&m, &img);
    assert_eq!(code, 0, "{err}");
    let r = &report["results"][0];
    assert_eq!(r["outputs"], json!({}), "no class, label or score: {r}");
    let raw = r["raw"].as_object().unwrap();
    let out = raw.values().next().unwrap();
    assert_eq!(out["shape"], json!([1, 2]), "{r}");
    let sum: f64 = floats(&out["data"]).iter().sum();
    assert!((sum - 1.0).abs() < 1e-4, "the model's own softmax output: {r}");

    // The daemon puts them in the result's outputs.
    let vib = dir.path().join("vibration");
    copy_model(&demo_model(), &vib);
    let spec = std::fs::read_to_string(vib.join("model.toml")).unwrap();
    let post = spec.find("[post]").unwrap();
    std::fs::write(vib.join("model.toml"), format!("{}[post]\nkind = \"none\"\n", &spec[..post])).unwrap();
    let window: Vec<f32> = (0..256).map(|i| (i as f32 * 0.3).sin()).collect();
    std::fs::write(dir.path().join("w.ndjson"), format!("{}\n", serde_json::to_string(&window).unwrap()))
        .unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"none\"\nstate_dir = \"{s}\"\n[[model]]\npath = \"{m}\"\n\
             [[source]]\nkind = \"file\"\nmodel = \"vibration\"\npath = \"w.ndjson\"\n",
            s = dir.path().join("state").display(),
            m = vib.display()
        ),
    )
    .unwrap();
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    let outputs = lines[0]["outputs"].as_object().unwrap();
    assert_eq!(outputs.keys().collect::<Vec<_>>(), vec!["raw"], "{}", lines[0]);
    assert_eq!(outputs["raw"]["probs"]["shape"], json!([1, 3]));
}

/// Letterbox resize, padding and BGR order, fed through an identity model so that the
/// agent's own tensor comes back, against the same steps done with PIL and numpy.
#[test]
fn letterbox_and_bgr_match_a_pil_reference() {
    let dir = tempdir();
    let spec = "name = \"identity\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 3, 32, 48]\n\
                [pre]\nformat = \"image\"\n[pre.image]\nmean = [0.4, 0.5, 0.6]\nstd = [0.2, 0.25, 0.3]\n\
                resize = \"letterbox\"\npad = 114\nchannel_order = \"bgr\"\n[post]\nkind = \"none\"\n";
    let m = test_model(dir.path(), "identity", "1,3,32,48", spec);
    // The reference: 64x20 scales by 0.75 to 48x15, centred at row (32 - 15) / 2 = 8.
    let script = r#"
import json, sys
import numpy as np
from PIL import Image
png, out = sys.argv[1], sys.argv[2]
x = np.arange(64)[None, :]; y = np.arange(20)[:, None]
rgb = np.stack([(x * 4) % 256 + 0 * y, (y * 12) % 256 + 0 * x, (x * 2 + y * 5) % 256], -1).astype(np.uint8)
Image.fromarray(rgb, "RGB").save(png)
small = np.asarray(Image.fromarray(rgb, "RGB").resize((48, 15), Image.BILINEAR), dtype=np.float32)
frame = np.full((32, 48, 3), 114.0, dtype=np.float32)
frame[8:23, :, :] = small
bgr = frame[:, :, ::-1] / 255.0
norm = (bgr - np.array([0.4, 0.5, 0.6])) / np.array([0.2, 0.25, 0.3])
json.dump(norm.transpose(2, 0, 1).reshape(-1).tolist(), open(out, "w"))
"#;
    let png = dir.path().join("grad.png");
    let reference = dir.path().join("reference.json");
    py(script, &[png.to_str().unwrap(), reference.to_str().unwrap()]);
    let want = floats(&read_json(&reference));
    let (code, report, err) = infer_json(&m, &png);
    assert_eq!(code, 0, "{err}");
    let y = &report["results"][0]["raw"]["y"];
    assert_eq!(y["shape"], json!([1, 3, 32, 48]));
    let got = floats(&y["data"]);
    // Padding and layout are exact; bilinear resampling differs from PIL's by rounding:
    // at most 2 levels of 255, over the smallest std.
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 2.0 / 255.0 / 0.2 + 1e-5, "max |diff| {diff}");
    let pad: Vec<usize> = (0..want.len()).filter(|i| (i % (32 * 48)) / 48 < 8).collect();
    assert!(pad.iter().all(|i| (got[*i] - want[*i]).abs() < 1e-5), "padding rows are exact");
    // The same tensor would be far off in RGB order: the comparison can fail.
    let blue_first = got[8 * 48 + 10];
    let red_first = want[2 * 32 * 48 + 8 * 48 + 10];
    assert!((blue_first - red_first).abs() > 0.1, "channels differ in this image");
}

/// A text-recogniser-like input whose width varies within a range: images of two widths
/// and JSON of a third all run through one prepared model, with outputs as wide as the
/// input, from `infer` and from the OIP API.
#[test]
fn a_variable_width_model_runs_inputs_of_two_widths() {
    let dir = tempdir();
    let spec = "name = \"colmean\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\n\
                shape = [1, 3, 8, { min = 8, max = 64, multiple_of = 4 }]\n\
                [pre]\nformat = \"image\"\n[pre.image]\nscale = 1.0\n[post]\nkind = \"none\"\n";
    let m = test_model(dir.path(), "colmean", "1,3,8,width", spec);
    let script = r#"
import sys
from PIL import Image
d = sys.argv[1]
Image.new("RGB", (20, 8), (10, 20, 30)).save(d + "/w20.png")
Image.new("RGB", (80, 16), (40, 50, 60)).save(d + "/w40.png")
"#;
    py(script, &[dir.path().to_str().unwrap()]);
    for (file, width, colour) in [("w20.png", 20, [10.0, 20.0, 30.0]), ("w40.png", 40, [40.0, 50.0, 60.0])] {
        let (code, report, err) = infer_json(&m, &dir.path().join(file));
        assert_eq!(code, 0, "{file}: {err}");
        let y = &report["results"][0]["raw"]["y"];
        assert_eq!(y["shape"], json!([1, width, 3]), "{file}: {y}");
        let data = floats(&y["data"]);
        assert!(data.chunks(3).all(|c| c == colour), "{file}: column means {data:?}");
    }
    // JSON gives its shape: width 12 (nested) works, width 10 (not a multiple of 4) not.
    let col = |w: usize| json!([[vec![vec![1.0; w]; 8], vec![vec![2.0; w]; 8], vec![vec![3.0; w]; 8]]]);
    let input = dir.path().join("w12.json");
    std::fs::write(&input, col(12).to_string()).unwrap();
    let (code, report, err) = infer_json(&m, &input);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["results"][0]["raw"]["y"]["shape"], json!([1, 12, 3]));
    std::fs::write(&input, col(10).to_string()).unwrap();
    let (code, _, err) = infer_json(&m, &input);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("8..=64 (multiple of 4)"), "{err}");

    // The API takes each width the range allows, and says which it takes.
    let d = Daemon::start("serve", &format!("[[model]]\npath = \"{}\"\n", m.display()), "", &[]);
    let agent = http();
    let mut r = agent.get(&d.url("/v2/models/colmean")).call().unwrap();
    let meta: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(meta["inputs"][0]["shape"], json!([1, 3, 8, -1]), "{meta}");
    assert_eq!(meta["outputs"][0]["shape"], json!([1, -1, 3]), "{meta}");
    let call = |w: usize| {
        let body = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 8, w], "data": vec![1.0; 24 * w]}]});
        let mut r = agent
            .post(&d.url("/v2/models/colmean/infer"))
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str::<Value>(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
        )
    };
    for w in [8, 36, 64] {
        let (status, v) = call(w);
        assert_eq!(status, 200, "width {w}: {v}");
        assert_eq!(v["outputs"][0]["shape"], json!([1, w, 3]), "{v}");
    }
    let (status, v) = call(68);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("8..=64"), "{v}");
}

/// The post-processing families through `edge-agent infer` and the daemon, on a model
/// that halves its input ([1, 2, 3, 4] -> [0.5, 1, 1.5, 2]), with hand-computed answers:
/// the anomaly score is the mean squared error 0.25 * 30 / 4 = 1.875 (at or above the
/// threshold 1.0), multi-label thresholds pick `a` and `c`, regression scales and names
/// each value with its unit. Before, each spec was refused (unknown post.kind).
#[test]
fn post_families_answer_through_infer_and_the_daemon() {
    let dir = tempdir();
    let input = dir.path().join("x.json");
    std::fs::write(&input, "[1.0, 2.0, 3.0, 4.0]").unwrap();
    let head = "name = \"half\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 4]\n";
    let cases = [
        ("anomaly", "[post]\nkind = \"anomaly\"\nthreshold = 1.0\n[post.anomaly]\nmetric = \"mse\"\n"),
        (
            "multilabel",
            "[post]\nkind = \"multilabel\"\nlabels = [\"a\", \"b\", \"c\", \"d\"]\n[post.multilabel]\nthresholds = [0.4, 1.1, 1.5, 2.5]\n",
        ),
        (
            "regression",
            "[post]\nkind = \"regression\"\n[post.regression]\nnames = [\"w\", \"x\", \"y\", \"z\"]\nunits = [\"m\", \"m\", \"s\", \"kg\"]\nscale = [2.0, 2.0, 2.0, 2.0]\n",
        ),
    ];
    let mut answers = serde_json::Map::new();
    for (family, post) in cases {
        let m = test_model(&dir.path().join(family), "half", "1,4", &format!("{head}{post}"));
        let (code, report, err) = infer_json(&m, &input);
        assert_eq!(code, 0, "{family}: {err}");
        answers.insert(family.into(), report["results"][0]["outputs"].clone());
    }
    assert!((answers["anomaly"]["score"].as_f64().unwrap() - 1.875).abs() < 1e-6, "{answers:?}");
    assert_eq!(answers["anomaly"]["anomaly"], true);
    assert_eq!(answers["multilabel"]["labels"], json!(["a", "c"]));
    assert_eq!(answers["multilabel"]["active"], json!([true, false, true, false]));
    assert_eq!(answers["regression"]["values"][2], json!({"name": "y", "value": 3.0, "unit": "s"}));

    // The daemon's stream path scores the same input from a file source.
    let m = dir.path().join("anomaly/half");
    let lines = dir.path().join("x.ndjson");
    std::fs::write(&lines, "[1.0, 2.0, 3.0, 4.0]\n[2.0, 2.0, 2.0, 2.0]\n").unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"it\"\nstate_dir = \"{}\"\n[[model]]\npath = \"{}\"\n[[source]]\nkind = \"file\"\nmodel = \"half\"\npath = \"{}\"\n",
            dir.path().join("state").display(),
            m.display(),
            lines.display()
        ),
    )
    .unwrap();
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let results = json_lines(&out.stdout);
    let scores: Vec<(f64, bool)> = results
        .iter()
        .map(|r| (r["outputs"]["score"].as_f64().unwrap(), r["outputs"]["anomaly"].as_bool().unwrap()))
        .collect();
    // [2, 2, 2, 2] -> [1, 1, 1, 1]: MSE 1.0, at the threshold.
    assert_eq!(scores, vec![(1.875, true), (1.0, true)]);
}
