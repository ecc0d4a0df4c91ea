use crate::common::*;
use edge_infer::ModelSpec;
use edge_infer::pipeline::dsp::Dsp;

fn reference() -> serde_json::Value {
    read_json(&cache().join("reference/oww_reference.json"))
}

/// The WAV's samples as openWakeWord feeds them: int16 values as floats.
fn wake_samples() -> Vec<f32> {
    let mut reader = hound::WavReader::open(cache().join("audio/wake.wav")).expect("wake.wav");
    reader.samples::<i16>().map(|s| f32::from(s.expect("sample"))).collect()
}

/// oww-embedding's declared log-mel front end (`[pre.dsp]`, computed by rustfft in f32)
/// gives the numpy reference of the same parameters, and openWakeWord's own published
/// front end (its melspectrogram.onnx, then x/10 + 2), within 1e-4 on every value of
/// every frame (the values span 4 to 12).
#[test]
fn declared_log_mel_matches_numpy_and_openwakeword_front_end() {
    let reference = reference();
    let spec = ModelSpec::load_dir(&model("oww-embedding")).expect("spec").spec;
    let dsp = Dsp::new(spec.pre.dsp.as_ref().expect("[pre.dsp]"), spec.pre.sample_rate).expect("front end");
    assert_eq!(dsp.features(), 32);
    let got: Vec<f64> = dsp.frames_of(&wake_samples()).iter().map(|v| f64::from(*v)).collect();
    let frames = reference["frames"].as_u64().expect("frames") as usize;
    assert_eq!(got.len(), frames * 32, "one frame every 160 samples, as the reference");
    assert_eq!(reference["clipped"], 0, "the published front end's 80 dB floor did not act on this clip");
    for key in ["numpy_mel", "published_mel"] {
        let want = floats(&reference[key]);
        let diff = max_abs_diff(&got, &want);
        eprintln!("{key}: max abs diff {diff:e}");
        assert!(diff <= 1e-4, "{key}: max abs diff {diff} > 1e-4");
    }
}

/// Embeddings of every 76-frame window, every 8 frames.
fn embeddings_through_the_daemon(dir: &std::path::Path) -> Vec<Vec<f64>> {
    let config = dir.join("emb.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[agent]
device_id = "test-oww"
state_dir = "{state}"

[engine]
threads = 2
deadline_ms = 10000

[[model]]
path = "{model}"

[[source]]
kind = "file"
model = "oww-embedding"
path = "{wav}"
stream = "mic-1"
"#,
            state = dir.join("s1").display(),
            model = model("oww-embedding").display(),
            wav = cache().join("audio/wake.wav").display()
        ),
    )
    .expect("write config");
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(120));
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    json_lines(&out.stdout)
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["window"].as_u64(), Some(i as u64), "in order");
            assert_eq!(r["offset"].as_u64(), Some(8 * 160 * i as u64), "window k starts at frame 8k");
            floats(&r["outputs"]["raw"]["conv2d_19"]["data"])
        })
        .collect()
}

/// openWakeWord end to end from a WAV file: the daemon streams wake.wav through
/// oww-embedding (declared log-mel front end, per-stream frames, a model input every 8
/// frames), then the embeddings through oww-hey-jarvis (a window of 16 embeddings,
/// advancing by one). The embeddings equal onnxruntime's on the published front end
/// within 5e-4, the scores within 1e-4, and the keyword events (windows scoring 0.5 or
/// more) are the same windows.
#[test]
fn wake_word_events_through_the_daemon_match_openwakeword() {
    let reference = reference();
    let dir = tempdir();
    let got = embeddings_through_the_daemon(dir.path());
    let windows = reference["windows"].as_u64().expect("windows") as usize;
    assert_eq!(got.len(), windows, "one embedding per 8 frames");
    let want = floats(&reference["embeddings"]);
    let flat: Vec<f64> = got.iter().flatten().copied().collect();
    let diff = max_abs_diff(&flat, &want);
    eprintln!("embeddings: max abs diff {diff:e}");
    assert!(diff <= 5e-4, "embeddings: max abs diff {diff} > 5e-4");

    // The embeddings, one JSON array a line, are the second model's stream.
    let lines: String = got.iter().map(|e| format!("{}\n", serde_json::json!(e))).collect();
    let emb = dir.path().join("embeddings.ndjson");
    std::fs::write(&emb, lines).expect("write embeddings");
    let config = dir.path().join("ww.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[agent]
device_id = "test-oww"
state_dir = "{state}"

[[model]]
path = "{model}"

[[source]]
kind = "file"
model = "oww-hey-jarvis"
path = "{emb}"
stream = "mic-1"
"#,
            state = dir.path().join("s2").display(),
            model = model("oww-hey-jarvis").display(),
            emb = emb.display()
        ),
    )
    .expect("write config");
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(120));
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let results = json_lines(&out.stdout);
    let want_scores = floats(&reference["jarvis"]["scores"]);
    assert_eq!(results.len(), want_scores.len(), "one score per 16 embeddings");
    let scores: Vec<f64> = results.iter().map(|r| r["outputs"]["score"].as_f64().expect("score")).collect();
    let diff = max_abs_diff(&scores, &want_scores);
    eprintln!("scores: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "scores: max abs diff {diff} > 1e-4");
    let events: Vec<u64> = results
        .iter()
        .filter(|r| r["outputs"]["label"] == "hey-jarvis")
        .map(|r| r["window"].as_u64().expect("window"))
        .collect();
    let want_events: Vec<u64> = reference["jarvis"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|v| v.as_u64().expect("event"))
        .collect();
    assert!(!want_events.is_empty(), "the reference hears the wake word");
    assert_eq!(events, want_events, "keyword events");
}
