use crate::common::*;

/// The image classifier gives onnxruntime's outputs (max abs diff <= 1e-4), on raw
/// tensors and on a PNG that goes through the declarative image pre-processing.
#[test]
fn classifier_matches_onnxruntime() {
    let cache = cache();
    let reference = read_json(&cache.join("reference/cls_reference.json"));
    let output_name = reference["output_name"].as_str().expect("output_name");
    let model = model("ppocr-cls");
    let cases = reference["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 4, "three tensors and one image");
    for case in cases {
        let input = cache.join("reference").join(case["input_file"].as_str().expect("input_file"));
        let out = run(
            &[
                "infer",
                "--model",
                model.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--json",
                "--raw",
            ],
            secs(60),
        );
        assert!(out.status.success(), "infer failed: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
        let raw = &report["results"][0]["raw"][output_name];
        let got = floats(&raw["data"]);
        let want = floats(&case["output"]);
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 1e-4, "{}: max abs diff {diff} > 1e-4 (got {got:?}, want {want:?})", input.display());
        assert_eq!(raw["shape"], case["output_shape"], "output shape");
        // Post-processing picks the same class as the reference's argmax.
        let best = if want[1] > want[0] { "180" } else { "0" };
        assert_eq!(report["results"][0]["outputs"]["label"], best);
    }
}

/// Silero VAD streamed frame by frame through `edge-agent run` (WAV file source,
/// 64-sample context windows, recurrent state per stream) gives onnxruntime's speech
/// probabilities within 1e-3 on every frame, and the same speech segments.
#[test]
fn vad_stream_matches_onnxruntime() {
    let cache = cache();
    let reference = read_json(&cache.join("reference/vad_reference.json"));
    let want = floats(&reference["probs"]);
    let want_segments: Vec<(u64, u64)> = reference["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| (s[0].as_u64().expect("start"), s[1].as_u64().expect("end")))
        .collect();
    assert!(!want_segments.is_empty(), "the reference audio has speech");

    let dir = tempdir();
    let config = dir.path().join("vad.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[agent]
device_id = "test-vad"
state_dir = "{state}"

[engine]
threads = 2
deadline_ms = 10000

[[model]]
path = "{model}"

[[source]]
kind = "file"
model = "silero-vad"
path = "{wav}"
stream = "mic-1"
"#,
            state = dir.path().display(),
            model = model("silero-vad").display(),
            wav = cache.join("audio/speech.wav").display()
        ),
    )
    .expect("write config");
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(120));
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), want.len(), "one result per 512-sample frame");

    let mut got = vec![f64::NAN; want.len()];
    let mut segments = Vec::new();
    let mut open = None;
    for (i, r) in lines.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64), "results are numbered in order");
        assert_eq!(r["stream"], "mic-1");
        assert_eq!(r["place"], "local");
        assert_eq!(r["model"], "silero-vad");
        let w = r["window"].as_u64().expect("window") as usize;
        assert_eq!(w, i, "one stream's results come out in order");
        assert_eq!(r["offset"].as_u64(), Some(512 * w as u64));
        got[w] = r["outputs"]["score"].as_f64().expect("score");
        if let Some(seg) = r["outputs"].get("segment") {
            match seg["event"].as_str() {
                Some("start") => open = Some(seg["start"].as_u64().expect("start")),
                Some("end") => {
                    segments.push((open.take().expect("end after start"), seg["end"].as_u64().expect("end")))
                }
                other => panic!("unknown segment event {other:?}"),
            }
        }
    }
    if let Some(start) = open {
        segments.push((start, want.len() as u64));
    }
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 1e-3, "speech probability differs from onnxruntime by {diff} (> 1e-3)");
    assert_eq!(segments, want_segments, "speech segments");
}

/// The demo model gives the outputs recorded from onnxruntime in its golden file, and
/// classifies each golden window as its label.
#[test]
fn demo_model_matches_golden_vectors() {
    let golden = read_json(&demo_model().join("golden.json"));
    let dir = tempdir();
    for (i, case) in golden["cases"].as_array().expect("cases").iter().enumerate() {
        let input = dir.path().join(format!("case{i}.json"));
        std::fs::write(&input, case["input"].to_string()).expect("write input");
        let out = run(
            &[
                "infer",
                "--model",
                demo_model().to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--json",
                "--raw",
            ],
            secs(30),
        );
        assert!(out.status.success(), "infer failed: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let result = &report["results"][0];
        let got = floats(&result["raw"]["probs"]["data"]);
        let diff = max_abs_diff(&got, &floats(&case["probs"]));
        assert!(diff <= 1e-4, "case {i}: max abs diff {diff}");
        assert_eq!(result["outputs"]["label"], case["label"], "case {i}");
    }
}
