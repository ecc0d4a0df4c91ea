//! Bounded models: shapes whose size wraps or exceeds the device's limit are refused at
//! every place a model is looked at or loaded; a detection model at a shape its strides
//! cannot take says which multiple it needs; the command line tells a file from a
//! directory and a spec that is not UTF-8 from a missing one.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::common::registry::*;
use crate::common::*;
use edge_agent::ota::selftest::{Limits, run_isolated};
use edge_infer::engine::ModelLimits;

/// The PP-OCR v4 text detector, taken from the rapidocr wheel in the test cache: a real
/// detection model, whose height and width must be multiples of 32 (it downsamples by
/// 32, upsamples and adds the scales back). In `dir/det`, with a spec declaring `shape`
/// and one golden vector, so that it can be published and self-tested.
fn detector(dir: &Path, shape: &str) -> PathBuf {
    let det = dir.join("det");
    std::fs::create_dir_all(&det).unwrap();
    let wheel = cache().join("wheels/rapidocr_onnxruntime-1.4.4-py3-none-any.whl");
    let out = Command::new(cache().join("venv/bin/python"))
        .args([
            "-c",
            "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx'))",
        ])
        .arg(&wheel)
        .arg(det.join("model.onnx"))
        .output()
        .unwrap();
    assert!(out.status.success(), "extracting the detector: {}", String::from_utf8_lossy(&out.stderr));
    set_shape(&det, shape);
    let golden = json!({"tolerance": 1e-3, "cases": [{"name": "zeros", "input": [0.0], "expected": [0.0]}]});
    std::fs::write(det.join("selftest.json"), golden.to_string()).unwrap();
    det
}

fn set_shape(det: &Path, shape: &str) {
    let spec = format!(
        "name = \"det\"\nversion = \"1\"\n\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = {shape}\n\n[pre]\nformat = \"f32le\"\n"
    );
    std::fs::write(det.join("model.toml"), spec).unwrap();
}

/// Stderr of a command that must fail with exit code 2 (a setup error), without a panic.
fn refused(out: &std::process::Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `[1, 3, 65536, 65536]` (48 GiB of input) and `[4294967296, 3, 4294967296, 32]` (a
/// size that wraps 64 bits) on a detection model: before, the first loaded after 90 s
/// and 4.9 GB, the second aborted on a 16 GiB allocation (and grew to 23 GB elsewhere).
/// Both are now refused at once, with the limit and how to raise it, by `model inspect`,
/// by the daemon's load, by `registry publish` and by the device's self-test.
#[test]
fn oversized_and_wrapping_shapes_are_refused_everywhere_a_model_is_loaded() {
    let work = tempdir();
    let det = detector(work.path(), "[1, 3, 96, 96]");
    // The detector itself loads at a shape it takes, under the default limit.
    let out = run(&["model", "inspect", "--model", det.to_str().unwrap(), "--json"], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["memory_limit_bytes"], 256u64 << 20, "{v}");
    assert!(v["memory"]["weights_bytes"].as_u64().unwrap() > 4 << 20, "{v}");

    let p = Publisher::new(1);
    let cases = [
        ("[1, 3, 65536, 65536]", "input `x` [1, 3, 65536, 65536] of f32 needs 48.0 GiB"),
        ("[4294967296, 3, 4294967296, 32]", "is too large to count (its size overflows)"),
    ];
    for (shape, says) in cases {
        set_shape(&det, shape);
        let names_limit = |err: &str| {
            // The wrapped size is past any limit: it is refused as impossible instead.
            shape.starts_with("[4294967296")
                || (err.contains("(256.0 MiB)")
                    && err.contains("raise the limit (engine.max_model_memory_mb"))
        };

        let out = run(&["model", "inspect", "--model", det.to_str().unwrap()], secs(30));
        let err = refused(&out);
        assert!(err.contains(says) && names_limit(&err), "inspect {shape}: {err}");

        // The daemon's load of a configured model.
        let config = work.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\ndevice_id = \"it\"\nstate_dir = \"{}\"\n\n[[model]]\npath = \"{}\"\n",
                work.path().join("state").display(),
                det.display()
            ),
        )
        .unwrap();
        let out = run(&["run", "--config", config.to_str().unwrap()], secs(30));
        let err = refused(&out);
        assert!(err.contains(says) && names_limit(&err), "run {shape}: {err}");

        let out = p.try_publish(&det, &[]);
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains(says) && names_limit(&err), "publish {shape}: {err}");

        // The device's self-test, in its child process (a roomy data limit: the model
        // limit must refuse first).
        let limits = Limits { memory_bytes: 16 << 30, timeout: secs(30), model: ModelLimits::default() };
        let report = run_isolated(&bin(), &det, &limits).unwrap();
        let why = report.error.clone().unwrap_or_default();
        assert!(!report.passed && why.contains(says) && names_limit(&why), "self-test {shape}: {report:?}");
    }
}

/// A device's own `engine.max_model_memory_mb` decides its self-test: Silero VAD (a
/// 1.2 MiB file, estimated at 1.9 MiB) passes the publisher's default limit and is
/// refused by a device that allows 1 MiB, which keeps serving what it has.
#[test]
fn the_device_limit_applies_to_an_update_in_its_self_test() {
    let work = tempdir();
    let vad = work.path().join("silero-vad");
    copy_model(&model("silero-vad"), &vad);
    let inputs = work.path().join("inputs.json");
    std::fs::write(&inputs, json!([{"name": "quiet", "input": vec![0.0f32; 576]}]).to_string()).unwrap();
    let out = run(
        &["model", "selftest", "--model", vad.to_str().unwrap(), "--record", inputs.to_str().unwrap()],
        secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let p = Publisher::new(1);
    p.publish(&vad, 100, &[]);
    let reg = Served::start(&p.repo());
    let body = format!(
        "[engine]\nmax_model_memory_mb = 1\n\n[[model]]\npath = \"{}\"\n\n[output]\nstdout = false\n\n[ota]\nurl = \"{}\"\nmodels = [\"silero-vad\"]\ntrusted_root = \"{}\"\ninterval_s = 3600\n",
        demo_model().display(),
        reg.url,
        p.root_v1().display()
    );
    let d = Daemon::start("serve", &body, "", &[]);
    let (_, v) = post(&d, "/ota/check", json!({}));
    let text = v.to_string();
    assert!(text.contains("self-test failed"), "{v}");
    assert!(text.contains("more than this device allows one model (1.0 MiB)"), "{v}");
    assert!(text.contains("engine.max_model_memory_mb"), "{v}");
    let s = status(&d);
    assert!(s["models"]["silero-vad"].is_null(), "not installed: {s:#}");
    assert_eq!(s["models"]["vibration"]["version"], "1", "{s:#}");
}

/// A spec shape that is not a multiple of what the detector's strides need used to end
/// in a raw dump of tract's unification failure; now the dimensions and the multiple
/// are named, with two shapes that work.
#[test]
fn a_detection_shape_off_its_stride_names_the_dimension_and_the_multiple() {
    let work = tempdir();
    let det = detector(work.path(), "[1, 3, 100, 96]");
    let out = run(&["model", "inspect", "--model", det.to_str().unwrap()], secs(60));
    let err = refused(&out);
    assert!(
        err.contains(
            "input `x` is declared [1, 3, 100, 96], but the model needs dimension 2 to be a multiple of 32"
        ),
        "{err}"
    );
    assert!(err.contains("declare [1, 3, 96, 96] or [1, 3, 128, 96]"), "{err}");
    assert!(!err.contains("Impossible to unify") && !err.contains("Failed analyse"), "{err}");
    // And the shapes it suggests load.
    set_shape(&det, "[1, 3, 128, 96]");
    let out = run(&["model", "inspect", "--model", det.to_str().unwrap()], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `model.toml` not in UTF-8 is reported as such (it was "cannot read model spec" with
/// the hint that a directory needs a model.toml, as if it were missing).
#[test]
fn a_spec_that_is_not_utf8_is_not_reported_missing() {
    let work = tempdir();
    let m = work.path().join("m");
    copy_model(&demo_model(), &m);
    let mut spec = std::fs::read(m.join("model.toml")).unwrap();
    // "é" in Latin-1 inside the description.
    let at = spec.windows(12).position(|w| w == b"description ").unwrap() + 15;
    spec[at] = 0xe9;
    std::fs::write(m.join("model.toml"), &spec).unwrap();
    let out = run(&["model", "inspect", "--model", m.to_str().unwrap()], secs(30));
    let err = refused(&out);
    assert!(err.contains(&format!("not UTF-8 text: byte {at} (0xe9) is not valid UTF-8")), "{err}");
    assert!(!err.contains("needs a model.toml"), "{err}");
}

/// A file where a model directory is expected is a usage error (exit 2) that says so,
/// not "the directory does not exist" with exit 1.
#[test]
fn a_file_given_as_the_model_directory_is_a_usage_error() {
    let model_file = demo_model().join("model.onnx");
    let file = model_file.to_str().unwrap();
    let input = demo_model().join("golden.json");
    for args in [
        vec!["model", "selftest", "--model", file],
        vec!["infer", "--model", file, "--input", input.to_str().unwrap()],
    ] {
        let out = run(&args, secs(30));
        let err = refused(&out);
        assert!(err.contains(&format!("{file} is a file, not a model directory")), "{args:?}: {err}");
    }
    let out = run(&["model", "selftest", "--model", "/nonexistent/model-dir"], secs(30));
    let err = refused(&out);
    assert!(err.contains("/nonexistent/model-dir does not exist"), "{err}");
}
