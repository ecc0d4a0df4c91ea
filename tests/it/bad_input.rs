use std::path::Path;

use crate::common::*;

/// `infer` with a model dir and input; returns (exit code, stderr).
fn infer(model: &Path, input: &Path) -> (i32, String) {
    let out =
        run(&["infer", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()], secs(60));
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "a panic escaped: {err}");
    (out.status.code().expect("exit code"), err)
}

fn demo_input(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("ok.json");
    std::fs::write(&p, serde_json::to_string(&vec![0.1f32; 256]).unwrap()).unwrap();
    p
}

/// A model directory holding a copy of the demo model with `edit` applied to its spec.
fn demo_with_spec(dir: &Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let m = dir.join("model");
    copy_model(&demo_model(), &m);
    let spec = std::fs::read_to_string(m.join("model.toml")).unwrap();
    std::fs::write(m.join("model.toml"), edit(spec)).unwrap();
    m
}

#[test]
fn truncated_model_is_a_clear_setup_error() {
    let dir = tempdir();
    let m = dir.path().join("model");
    copy_model(&model("ppocr-cls"), &m);
    let bytes = std::fs::read(m.join("model.onnx")).unwrap();
    std::fs::write(m.join("model.onnx"), &bytes[..bytes.len() / 3]).unwrap();
    let (code, err) = infer(&m, &cache().join("reference/cls_image.png"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a usable ONNX model"), "{err}");
    assert!(err.contains("model.onnx"), "names the file: {err}");
}

#[test]
fn garbage_and_empty_models_are_clear_setup_errors() {
    let dir = tempdir();
    let m = dir.path().join("model");
    copy_model(&demo_model(), &m);
    let input = demo_input(dir.path());
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(m.join("model.onnx"), garbage).unwrap();
    let (code, err) = infer(&m, &input);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a usable ONNX model") || err.contains("panicked while"), "{err}");

    std::fs::write(m.join("model.onnx"), b"").unwrap();
    let (code, err) = infer(&m, &input);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("empty"), "{err}");
}

/// Corrupted models (bytes flipped all over the file) never crash the binary: each one
/// loads, or is refused with a setup error. tract panics on some malformed graphs; those
/// panics must be contained.
#[test]
fn corrupted_models_never_crash() {
    let dir = tempdir();
    let original = std::fs::read(demo_model().join("model.onnx")).unwrap();
    let input = demo_input(dir.path());
    let m = dir.path().join("model");
    copy_model(&demo_model(), &m);
    let mut outcomes = std::collections::BTreeMap::<i32, u32>::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..150u32 {
        let mut bytes = original.clone();
        // 1 to 8 random bytes replaced, at positions spread over the whole file.
        for _ in 0..=(round % 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pos = (x % bytes.len() as u64) as usize;
            bytes[pos] = (x >> 32) as u8;
        }
        std::fs::write(m.join("model.onnx"), &bytes).unwrap();
        let out =
            run(&["infer", "--model", m.to_str().unwrap(), "--input", input.to_str().unwrap()], secs(60));
        let code = out.status.code().unwrap_or(-1);
        let err = stderr(&out);
        assert!(
            matches!(code, 0..=2) && !err.contains("panicked at") && !err.contains("RUST_BACKTRACE"),
            "round {round}: exit {code}: {err}"
        );
        *outcomes.entry(code).or_default() += 1;
    }
    assert!(outcomes.get(&2).copied().unwrap_or(0) > 0, "some corruptions are refused: {outcomes:?}");
}

#[test]
fn missing_spec_says_what_is_needed() {
    let dir = tempdir();
    let m = dir.path().join("model");
    copy_model(&demo_model(), &m);
    std::fs::remove_file(m.join("model.toml")).unwrap();
    let (code, err) = infer(&m, &demo_input(dir.path()));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("model.toml"), "{err}");
}

#[test]
fn spec_that_does_not_match_the_model_is_refused_with_the_fix() {
    let dir = tempdir();
    // Wrong input name.
    let m =
        demo_with_spec(dir.path(), |s| s.replace("name = \"vibration\"\ndtype", "name = \"accel\"\ndtype"));
    let (code, err) = infer(&m, &demo_input(dir.path()));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("model input `vibration` is not declared"), "{err}");
    assert!(err.contains("input `accel` is not an input of the model"), "{err}");

    // Wrong shape (and a window that no longer fits it): every problem at once.
    let dir2 = tempdir();
    let m = demo_with_spec(dir2.path(), |s| s.replace("shape = [1, 256]", "shape = [1, 128]"));
    let (code, err) = infer(&m, &demo_input(dir2.path()));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pre.window"), "{err}");
    assert!(err.contains("set pre.window.size = 128"), "gives the fix: {err}");

    let dir3 = tempdir();
    let m = demo_with_spec(dir3.path(), |s| {
        s.replace("[pre.window]\nsize = 256\nhop = 128\n", "").replace("shape = [1, 256]", "shape = [1, 128]")
    });
    let (code, err) = infer(&m, &demo_input(dir3.path()));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("declared [1, 128] but the model takes [1, 256]"), "{err}");

    // Unknown key in the spec: file and line.
    let dir4 = tempdir();
    let m = demo_with_spec(dir4.path(), |s| s.replace("[post]\n", "[post]\nsoftmaks = true\n"));
    let (code, err) = infer(&m, &demo_input(dir4.path()));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("model.toml:") && err.contains("softmaks"), "{err}");
}

#[test]
fn wrong_input_shape_and_length_are_input_errors() {
    let dir = tempdir();
    // No window, so the input must be exactly one tensor.
    let m = demo_with_spec(dir.path(), |s| s.replace("[pre.window]\nsize = 256\nhop = 128\n", ""));
    let short = dir.path().join("short.json");
    std::fs::write(&short, serde_json::to_string(&vec![0.5f32; 100]).unwrap()).unwrap();
    let (code, err) = infer(&m, &short);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has 100 values") && err.contains("takes 256"), "{err}");

    let nested = dir.path().join("nested.json");
    std::fs::write(&nested, serde_json::to_string(&vec![vec![0.5f32; 128]; 2]).unwrap()).unwrap();
    let (code, err) = infer(&m, &nested);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("shape [2, 128]") && err.contains("[1, 256]"), "{err}");

    let ragged = dir.path().join("ragged.json");
    std::fs::write(&ragged, "[[1,2,3],[4,5]]").unwrap();
    let (code, err) = infer(&m, &ragged);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ragged"), "{err}");

    let words = dir.path().join("words.json");
    std::fs::write(&words, "[1, 2, \"three\"]").unwrap();
    let (code, err) = infer(&m, &words);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("value 2 is a string"), "{err}");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[1, 2, ").unwrap();
    let (code, err) = infer(&m, &bad);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a JSON array"), "{err}");
}

#[test]
fn nan_and_infinity_are_refused() {
    let dir = tempdir();
    let m = demo_model();
    let mut values = vec![0.25f32; 256];
    values[17] = f32::NAN;
    let raw = dir.path().join("nan.f32");
    std::fs::write(&raw, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let (code, err) = infer(&m, &raw);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("value 17 is NaN"), "{err}");

    // 1e39 overflows f32: infinity.
    let big = dir.path().join("inf.json");
    let mut text = vec!["0.5".to_string(); 256];
    text[3] = "1e39".into();
    std::fs::write(&big, format!("[{}]", text.join(","))).unwrap();
    let (code, err) = infer(&m, &big);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("value 3 is inf"), "{err}");

    let null = dir.path().join("null.json");
    std::fs::write(&null, "[0.5, null, 0.5]").unwrap();
    let (code, err) = infer(&m, &null);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("null"), "{err}");

    // Raw bytes that are not whole samples.
    let odd = dir.path().join("odd.f32");
    std::fs::write(&odd, [0u8; 1023]).unwrap();
    let (code, err) = infer(&m, &odd);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a whole number of 4-byte samples"), "{err}");
}

#[test]
fn oversized_payload_is_refused_before_reading() {
    let dir = tempdir();
    let m = demo_with_spec(dir.path(), |s| format!("{s}\n[limits]\nmax_payload_bytes = 1000\n"));
    let (code, err) = infer(&m, &demo_input(dir.path()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("over the model's limit of 1000 bytes"), "{err}");
}

#[test]
fn unreadable_images_are_input_errors() {
    let dir = tempdir();
    let m = model("ppocr-cls");
    let fake = dir.path().join("fake.png");
    std::fs::write(&fake, b"this is not a picture at all").unwrap();
    let (code, err) = infer(&m, &fake);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot read the image"), "{err}");

    // A real PNG header with its data cut off.
    let png = std::fs::read(cache().join("reference/cls_image.png")).unwrap();
    let cut = dir.path().join("cut.png");
    std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
    let (code, err) = infer(&m, &cut);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot read the image"), "{err}");
}

/// In the daemon, each bad request is a counted error and the daemon keeps serving the
/// good ones around it.
#[test]
fn daemon_counts_bad_requests_and_keeps_serving() {
    let dir = tempdir();
    let m = demo_with_spec(dir.path(), |s| s.replace("[pre.window]\nsize = 256\nhop = 128\n", ""));
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"t\"\nstate_dir = \"{}\"\n[[model]]\npath = \"{}\"\n[[source]]\nkind = \"stdin\"\nmodel = \"vibration\"\n",
            dir.path().display(),
            m.display()
        ),
    )
    .unwrap();
    let good = serde_json::to_string(&vec![0.1f32; 256]).unwrap();
    let mut infinite = vec!["0.5".to_string(); 256];
    infinite[0] = "1e39".into();
    let input = [
        good.clone(),
        "not json at all".to_string(),
        serde_json::to_string(&vec![0.1f32; 10]).unwrap(),
        format!("[{}]", infinite.join(",")),
        "{\"stream\": \"bad stream!\", \"data\": [1]}".to_string(),
        good.clone(),
        format!("{{\"stream\": \"s2\", \"data\": {good}}}"),
    ]
    .join("\n");
    let out = run_with(
        std::process::Command::new(bin()).args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
        ]),
        Some(input.as_bytes()),
        secs(60),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3, "the three good requests give results: {lines:?}");
    // Streams run in parallel, so only each stream's own order is fixed.
    let streams: Vec<&str> = lines.iter().map(|l| l["stream"].as_str().unwrap()).collect();
    assert_eq!(streams.iter().filter(|s| **s == "stdin").count(), 2, "{streams:?}");
    assert_eq!(streams.iter().filter(|s| **s == "s2").count(), 1, "{streams:?}");
    // The final summary counts the two requests that reached the model's pipeline and failed.
    let summary = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "model summary")
        .unwrap_or_else(|| panic!("no model summary in the log: {err}"));
    assert_eq!(summary["ok"], 3, "{summary}");
    assert_eq!(summary["failed"], 2, "{summary}");
    assert!(err.contains("skipping a bad line"), "bad lines are logged: {err}");
}
