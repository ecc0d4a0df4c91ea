//! NNEF, the deployment route: `model convert` and `registry publish` write
//! `model.nnef.tgz` beside the ONNX file, the agent loads it instead, with the same
//! outputs, and a damaged archive is a clear error.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::registry::{Publisher, model_version, packages};
use crate::common::*;

/// `infer --json --raw` of `input` on the model in `dir`.
fn infer(dir: &Path, input: &Path) -> Value {
    let out = run(
        &["infer", "--model", dir.to_str().unwrap(), "--input", input.to_str().unwrap(), "--json", "--raw"],
        secs(120),
    );
    assert!(out.status.success(), "infer on {}: {}", dir.display(), stderr(&out));
    serde_json::from_slice(&out.stdout).expect("infer JSON")
}

/// Every number of `v` in document order, without the timings (which differ per run).
fn numbers(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Number(n) => out.push(n.as_f64().unwrap()),
        Value::Array(a) => a.iter().for_each(|x| numbers(x, out)),
        Value::Object(o) => o.iter().filter(|(k, _)| !k.ends_with("_ms")).for_each(|(_, x)| numbers(x, out)),
        _ => {}
    }
}

/// The two `infer` answers give the same results: labels and every raw output value.
fn assert_same_results(onnx: &Value, nnef: &Value) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    numbers(&onnx["results"], &mut a);
    numbers(&nnef["results"], &mut b);
    assert!(a.len() > 2, "no outputs to compare: {onnx:#}");
    let diff = max_abs_diff(&a, &b);
    assert!(diff <= 1e-5, "NNEF answers differ from ONNX by {diff}:\nONNX {onnx:#}\nNNEF {nnef:#}");
    let labels = |v: &Value| -> Vec<Value> {
        v["results"].as_array().unwrap().iter().map(|r| r["outputs"]["label"].clone()).collect()
    };
    assert_eq!(labels(onnx), labels(nnef));
}

/// The format `model inspect` says the folder loads from.
fn loaded_format(dir: &Path) -> String {
    let out = run(&["model", "inspect", "--model", dir.to_str().unwrap(), "--json"], secs(60));
    assert!(out.status.success(), "inspect {}: {}", dir.display(), stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["format"].as_str().unwrap_or_default().to_string()
}

/// `n` samples of a noisy tone in [-1, 1], as a JSON array file.
fn signal(path: &Path, n: usize) {
    let mut x = 12345u32;
    let samples: Vec<f64> = (0..n)
        .map(|i| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (x >> 8) as f64 / (1u64 << 24) as f64 - 0.5;
            0.6 * (i as f64 / 7.0).sin() + 0.3 * noise
        })
        .collect();
    std::fs::write(path, serde_json::to_string(&samples).unwrap()).unwrap();
}

/// `model convert --model DIR --json`, which must succeed.
fn convert(dir: &Path) -> Value {
    let out = run(&["model", "convert", "--model", dir.to_str().unwrap(), "--json"], secs(300));
    assert!(out.status.success(), "convert {}: {}", dir.display(), stderr(&out));
    serde_json::from_slice(&out.stdout).expect("convert JSON")
}

/// A copy of `src` in `work/name`, answered once from ONNX, then converted: the agent
/// loads the archive and answers the same.
fn converts_and_answers_the_same(work: &Path, src: &Path, name: &str, samples: usize) {
    let dir = work.join(name);
    copy_model(src, &dir);
    let input = work.join(format!("{name}.json"));
    signal(&input, samples);
    assert_eq!(loaded_format(&dir), "onnx");
    let from_onnx = infer(&dir, &input);

    let v = convert(&dir);
    assert_eq!(v["result"], "converted", "{v:#}");
    let file = &v["files"][0];
    let archive = dir.join("model.nnef.tgz");
    assert_eq!(PathBuf::from(file["path"].as_str().unwrap()), archive, "{v:#}");
    assert!(archive.is_file());
    assert_eq!(file["bytes"].as_u64(), Some(std::fs::metadata(&archive).unwrap().len()), "{v:#}");
    assert!(file["compared"].as_u64().unwrap() >= 1, "{v:#}");
    for key in ["max_diff", "onnx_load_ms", "onnx_optimise_ms", "nnef_load_ms", "nnef_optimise_ms"] {
        assert!(file[key].is_number(), "{key} missing: {v:#}");
    }

    assert_eq!(loaded_format(&dir), "nnef");
    assert_same_results(&from_onnx, &infer(&dir, &input));
}

#[test]
fn model_convert_writes_an_archive_the_agent_loads_with_the_same_outputs() {
    let work = tempdir();
    converts_and_answers_the_same(work.path(), &demo_model(), "vibration", 1024);
    // Stateful: the state input and output pair survive the conversion.
    converts_and_answers_the_same(work.path(), &model("silero-vad"), "silero-vad", 576 * 6);
    // Text output: the human form says what was written and how it compared.
    let out =
        run(&["model", "convert", "--model", work.path().join("vibration").to_str().unwrap()], secs(120));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("model.nnef.tgz") && text.contains("equal to ONNX"),
        "{text}"
    );
}

/// A model tract cannot write as NNEF: exit 1, the reason (naming the cause), no archive.
#[test]
fn model_convert_of_a_model_tract_cannot_convert_says_why() {
    let work = tempdir();
    let dir = work.path().join("ppocr");
    copy_model(&model("ppocr"), &dir);
    let out = run(&["model", "convert", "--model", dir.to_str().unwrap(), "--json"], secs(300));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("convert JSON");
    assert_eq!(v["result"], "onnx_only", "{v:#}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("tract cannot") && reason.contains("range"), "{reason}");
    let archives: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("nnef"))
        .collect();
    assert!(archives.is_empty(), "left {archives:?}");
    // The folder still loads, from ONNX.
    assert_eq!(loaded_format(&dir), "onnx");
}

/// Every regular file in a tar package, by name.
fn package_files(tar: &Path) -> Vec<String> {
    let dest = tar.with_extension("unpacked");
    edge_agent::ota::package::unpack(tar, &dest).expect("unpack");
    let mut names: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `registry publish` converts the model and ships the archive beside the ONNX file;
/// the package, unpacked as a device does, loads from NNEF with the ONNX answers.
/// `--no-nnef` publishes the ONNX file alone.
#[test]
fn publish_ships_the_archive_and_the_unpacked_package_serves_it() {
    let work = tempdir();
    let p = Publisher::new(1);
    let v2 = model_version(work.path(), "2", |_| {});
    let out = p.try_publish(&v2, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("model.nnef.tgz"), "{}", stderr(&out));
    let tars = packages(&p.repo());
    assert_eq!(tars.len(), 1, "{tars:?}");
    let files = package_files(&tars[0]);
    assert!(files.contains(&"model.nnef.tgz".into()) && files.contains(&"model.onnx".into()), "{files:?}");

    let unpacked = tars[0].with_extension("unpacked");
    let input = work.path().join("in.json");
    signal(&input, 1024);
    assert_eq!(loaded_format(&unpacked), "nnef");
    assert_same_results(&infer(&demo_model(), &input), &infer(&unpacked, &input));

    let v3 = model_version(work.path(), "3", |_| {});
    let out = p.try_publish(&v3, &["--no-nnef"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!v3.join("model.nnef.tgz").exists());
    let tar = packages(&p.repo()).into_iter().find(|t| t.to_string_lossy().contains(".3.")).expect("v3");
    let files = package_files(&tar);
    assert!(!files.contains(&"model.nnef.tgz".into()) && files.contains(&"model.onnx".into()), "{files:?}");

    // An archive left by `model convert` would be shipped unchecked: refused, with why.
    let v4 = model_version(work.path(), "4", |_| {});
    convert(&v4);
    let out = p.try_publish(&v4, &["--no-nnef"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "published with a leftover archive");
    assert!(err.contains("model.nnef.tgz") && err.contains("without being checked"), "{err}");
}

/// A damaged `model.nnef.tgz` is refused with what it is and how to fix it, by `infer`
/// and `model inspect`, never a panic; deleting it brings the ONNX model back.
#[test]
fn a_malformed_archive_is_a_clear_error() {
    let work = tempdir();
    let dir = work.path().join("vibration");
    copy_model(&demo_model(), &dir);
    convert(&dir);
    let good = std::fs::read(dir.join("model.nnef.tgz")).unwrap();
    let input = work.path().join("in.json");
    signal(&input, 512);
    let mut gz_of_text = Vec::new();
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(&mut gz_of_text, flate2::Compression::default());
        e.write_all(b"version 1.0; graph g() -> () { }").unwrap();
        e.finish().unwrap();
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("text", b"not an archive at all".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("gzip of text", gz_of_text),
    ];
    for (what, bytes) in cases {
        std::fs::write(dir.join("model.nnef.tgz"), &bytes).unwrap();
        for args in [
            vec!["infer", "--model", dir.to_str().unwrap(), "--input", input.to_str().unwrap()],
            vec!["model", "inspect", "--model", dir.to_str().unwrap()],
        ] {
            let out = run(&args, secs(60));
            let err = stderr(&out);
            assert!(!out.status.success(), "{what}: {args:?} succeeded");
            assert!(
                err.contains("model.nnef.tgz")
                    && err.contains("not a usable NNEF archive")
                    && err.contains("model convert"),
                "{what}: {args:?}: {err}"
            );
            assert!(!err.contains("panicked"), "{what}: {err}");
        }
    }
    std::fs::remove_file(dir.join("model.nnef.tgz")).unwrap();
    assert_eq!(loaded_format(&dir), "onnx");
}

/// The ONNX file changed after `model convert` (same size, as a retrained model's is):
/// the archive is refused rather than served in the new model's place, and converting
/// again fixes it.
#[test]
fn an_archive_converted_from_an_older_onnx_file_is_refused() {
    let work = tempdir();
    let dir = work.path().join("vibration");
    copy_model(&demo_model(), &dir);
    convert(&dir);
    let input = work.path().join("in.json");
    signal(&input, 512);
    let onnx = dir.join("model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&onnx, &bytes).unwrap();
    let out = run(&["infer", "--model", dir.to_str().unwrap(), "--input", input.to_str().unwrap()], secs(60));
    let err = stderr(&out);
    assert!(!out.status.success(), "served a stale archive");
    assert!(
        err.contains("model.nnef.tgz")
            && err.contains("converted from another version")
            && err.contains("model convert"),
        "{err}"
    );
    // Converted again, from the file as it is now (the flipped byte is in a weight, so
    // the model still loads; if it did not, convert would say so).
    let v = convert(&dir);
    assert_eq!(v["result"], "converted", "{v:#}");
    assert_eq!(loaded_format(&dir), "nnef");
}

/// The daemon serves a converted model from its archive (its log says which file it
/// loaded) with onnxruntime's answer, over the local API as users call it.
#[test]
fn the_daemon_serves_the_archive_with_onnxruntime_answers() {
    let work = tempdir();
    let dir = work.path().join("ppocr-cls");
    copy_model(&model("ppocr-cls"), &dir);
    assert_eq!(convert(&dir)["result"], "converted");
    let cache = cache();
    let reference = read_json(&cache.join("reference/cls_reference.json"));
    let case = &reference["cases"][0];
    let input = floats(&read_json(&cache.join("reference").join(case["input_file"].as_str().unwrap())));
    let want = floats(&case["output"]);

    let body = format!("[[model]]\npath = \"{}\"\n", dir.display());
    let d = Daemon::start("serve", &body, "", &[]);
    let request = serde_json::json!({
        "inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}]
    });
    let mut r = http()
        .post(&d.url("/v2/models/ppocr-cls/infer"))
        .header("content-type", "application/json")
        .send(request.to_string().as_bytes())
        .expect("infer request");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let diff = max_abs_diff(&floats(&v["outputs"][0]["data"]), &want);
    assert!(diff <= 1e-4, "max abs diff {diff} against onnxruntime: {v}");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    let loaded = log.lines().find(|l| l.contains("model loaded")).unwrap_or_default();
    assert!(loaded.contains("nnef"), "the log does not say the archive was loaded: {log}");
}

/// A model tract cannot write as NNEF (the openWakeWord classifier's `If`) still
/// publishes, as ONNX alone, and the publisher is told why.
#[test]
fn publish_of_a_model_tract_cannot_convert_ships_it_as_onnx_with_a_warning() {
    let work = tempdir();
    let dir = work.path().join("oww-hey-jarvis");
    copy_model(&model("oww-hey-jarvis"), &dir);
    let inputs = work.path().join("inputs.json");
    let values: Vec<f64> = (0..16 * 96).map(|i| ((i % 97) as f64 / 97.0) - 0.5).collect();
    std::fs::write(&inputs, serde_json::json!([{"name": "ramp", "input": values}]).to_string()).unwrap();
    let out = run(
        &["model", "selftest", "--model", dir.to_str().unwrap(), "--record", inputs.to_str().unwrap()],
        secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let p = Publisher::new(1);
    let out = p.try_publish(&dir, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("not converted to NNEF") && err.contains("If"), "{err}");
    let tars = packages(&p.repo());
    assert_eq!(tars.len(), 1, "{tars:?}");
    let files = package_files(&tars[0]);
    assert!(!files.contains(&"model.nnef.tgz".into()) && files.contains(&"model.onnx".into()), "{files:?}");
}
