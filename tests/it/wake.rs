//! openWakeWord's hey-jarvis as one model directory and one spec: the declared log-mel
//! front end, the speech embedding model, then the classifier over a sliding window of
//! the last 16 embeddings (`[[stage]]` with `from = "outputs"`), with segment hysteresis
//! turning one utterance into one keyword event. Compared with openWakeWord's Python
//! reference (oww_reference.json: scores and the windows scoring 0.5 or more).

use crate::audio::{record_selftest, reference, wake_pcm};
use crate::common::*;

/// The pipeline's directory: both ONNX files of the openwakeword wheel (as tests/run
/// prepares them) and tests/fixtures/specs/oww-wake.toml.
fn wake_dir(work: &std::path::Path) -> std::path::PathBuf {
    let dir = work.join("oww-wake");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(model("oww-embedding").join("model.onnx"), dir.join("embedding.onnx")).expect("embedding");
    std::fs::copy(model("oww-hey-jarvis").join("model.onnx"), dir.join("hey_jarvis.onnx"))
        .expect("classifier");
    std::fs::copy(root().join("tests/fixtures/specs/oww-wake.toml"), dir.join("model.toml")).expect("spec");
    dir
}

/// Checks one result per classifier window against the reference: the same number of
/// windows, scores within 1e-4, the windows at 0.5 or more the reference's events, one
/// segment start (the keyword event) at the first of them, and both stages' latencies.
fn check_against_reference(results: &[serde_json::Value]) {
    let reference = reference();
    let want_scores = floats(&reference["jarvis"]["scores"]);
    assert_eq!(results.len(), want_scores.len(), "one answer per window of 16 embeddings");
    let scores: Vec<f64> = results.iter().map(|r| r["outputs"]["score"].as_f64().expect("score")).collect();
    let diff = max_abs_diff(&scores, &want_scores);
    eprintln!("hey-jarvis scores: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "scores: max abs diff {diff} > 1e-4");
    let want_events: Vec<u64> = reference["jarvis"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|v| v.as_u64().expect("event"))
        .collect();
    assert!(!want_events.is_empty(), "the reference hears the wake word");
    let above: Vec<u64> = results
        .iter()
        .filter(|r| r["outputs"]["label"] == "hey-jarvis")
        .map(|r| r["window"].as_u64().expect("window"))
        .collect();
    assert_eq!(above, want_events, "windows at 0.5 or more");
    let starts: Vec<&serde_json::Value> = results
        .iter()
        .filter_map(|r| r["outputs"].get("segment"))
        .filter(|s| s["event"] == "start")
        .collect();
    assert_eq!(starts.len(), 1, "one utterance, one keyword event: {starts:?}");
    assert_eq!(starts[0]["start"].as_u64(), Some(want_events[0]));
    let ends: Vec<&serde_json::Value> =
        results.iter().filter_map(|r| r["outputs"].get("segment")).filter(|s| s["event"] == "end").collect();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["end"].as_u64(), Some(want_events.last().unwrap() + 1));
    for r in results {
        let stages = r["outputs"]["stages"].as_array().expect("stages");
        let names: Vec<&str> = stages.iter().map(|s| s["stage"].as_str().unwrap_or("")).collect();
        assert_eq!(names, ["oww-wake", "oww-wake.jarvis"], "{r}");
        for s in stages {
            assert!(s["model_ms"].as_f64().expect("model_ms") > 0.0, "{s}");
        }
    }
}

/// The daemon over a real Mosquitto: wake.wav's PCM published as one-second i16le
/// messages to one stream; the pipeline answers each new embedding once 16 are in.
#[test]
fn the_wake_word_pipeline_over_mqtt_gives_openwakewords_keyword_events() {
    use crate::common::mqtt_agent::{MqttSetup, mic_config};

    let windows = reference()["jarvis"]["scores"].as_array().expect("scores").len();
    let work = tempdir();
    let model_dir = wake_dir(work.path());
    let api_port = free_port();
    let config = mic_config(&model_dir, "oww-wake", api_port, "[engine]\ndeadline_ms = 10000\n");
    let crate::common::mqtt_agent::Running { dir: _dir, broker, subs: [results], agent, .. } =
        MqttSetup::new().config(config).start(["edge/dev1/results/#"]);
    for chunk in wake_pcm().chunks(2 * 16000) {
        broker.publish("test", "sensors/kitchen/mic", chunk, 1, false);
    }
    let got = results.wait_count(windows, secs(90), |t, _| t == "edge/dev1/results/oww-wake");
    let mut records: Vec<serde_json::Value> =
        got.iter().map(|(_, p)| serde_json::from_str(p).expect("result JSON")).collect();
    records.sort_by_key(|r| r["window"].as_u64());
    for r in &records {
        assert_eq!(r["stream"], "kitchen");
    }
    check_against_reference(&records);

    // The local API keeps no stream: it says where the audio goes instead.
    let body = serde_json::json!({"inputs": [{"name": "input_1", "shape": [1], "datatype": "BYTES",
        "data": ["AAAA"]}]});
    let url = format!("http://127.0.0.1:{api_port}/v2/models/oww-wake/infer");
    let mut r = http()
        .post(&url)
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("request");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("as a stream over MQTT"), "{text}");
    agent.stop();
}

/// `edge-agent infer` on the WAV file: the same answers, one per classifier window.
#[test]
fn infer_runs_the_wake_word_pipeline_on_the_wav_file() {
    let work = tempdir();
    let dir = wake_dir(work.path());
    let wav = cache().join("audio/wake.wav");
    let out = run(
        &["infer", "--model", dir.to_str().unwrap(), "--input", wav.to_str().unwrap(), "--json"],
        secs(120),
    );
    assert!(out.status.success(), "infer failed: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let results = report["results"].as_array().expect("results");
    check_against_reference(results);
}

/// `registry publish` packs both models and the one spec after the self-test, whose
/// golden vectors cover both: a front-end window for the embedding model and a window of
/// 16 embeddings for the `jarvis` stage, recorded equal to openWakeWord's numbers. A
/// golden score the classifier does not give stops the publication.
#[test]
fn the_wake_word_pipeline_publishes_as_one_package_with_its_selftest() {
    use crate::common::registry::Publisher;
    let reference = reference();
    let work = tempdir();
    let dir = wake_dir(work.path());
    let mel = floats(&reference["published_mel"]);
    let emb = floats(&reference["embeddings"]);
    // The classifier's window 15 (embeddings 15..31) is the first that hears the wake word.
    let cases = serde_json::json!([
        {"name": "mel-window-0", "input": &mel[..76 * 32]},
        {"name": "jarvis-window-15", "stage": "jarvis", "input": &emb[15 * 96..31 * 96]},
    ]);
    let golden = record_selftest(&dir, work.path(), &cases);
    let diff = max_abs_diff(&floats(&golden["cases"][0]["expected"]), &emb[..96]);
    assert!(diff <= 5e-4, "embedding: max abs diff {diff}");
    let score = floats(&golden["cases"][1]["expected"]);
    let want = reference["jarvis"]["scores"][15].as_f64().unwrap();
    assert!(score.len() == 1 && (score[0] - want).abs() <= 1e-4, "score {score:?} vs {want}");

    let registry = Publisher::new(1);
    registry.publish(&dir, 100, &[]);
    let names = crate::pipeline::package_files(&registry);
    assert_eq!(names, ["embedding.onnx", "hey_jarvis.onnx", "model.toml", "selftest.json"]);

    // A golden score the stage does not give: the self-test fails and nothing is published.
    let mut bad = golden.clone();
    bad["cases"][1]["expected"] = serde_json::json!([0.1]);
    std::fs::write(dir.join("selftest.json"), bad.to_string()).unwrap();
    let out = registry.try_publish(&dir, &["--rollout", "100"]);
    assert!(!out.status.success(), "a failing self-test must stop the publication");
    let err = stderr(&out);
    assert!(err.contains("self-test") && err.contains("jarvis-window-15"), "{err}");
}

/// `edge-agent bench --json` on the wake-word pipeline with wake.wav: `stages.pre_ms` is
/// one model input's share of reading the WAV and running the log-mel front end (the file
/// makes one input per 80 ms window), and `stages.per_stage` gives the embedding model
/// and the classifier each their pre, model and post. The fields that were there stay.
#[test]
fn bench_gives_the_front_end_within_pre_and_each_stage_its_costs() {
    let work = tempdir();
    let dir = wake_dir(work.path());
    let wav = cache().join("audio/wake.wav");
    let args = ["bench", "--model", dir.to_str().unwrap(), "--input", wav.to_str().unwrap()];
    let out =
        run(&[&args[..], &["-n", "20", "--warmup", "2", "--no-baseline", "--json"]].concat(), secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let s = &v["stages"];
    assert_eq!(s["pre_source"], "input file", "{s}");
    for key in ["pre_ms", "model_ms", "post_ms", "pre_total_ms"] {
        assert!(s[key].as_f64().unwrap_or(0.0) > 0.0, "{key}: {s}");
    }
    let windows = reference()["windows"].as_u64().expect("windows");
    assert_eq!(s["pre_inputs"].as_u64(), Some(windows), "one model input per front-end window: {s}");
    let per = s["per_stage"].as_array().expect("per_stage");
    let names: Vec<&str> = per.iter().map(|e| e["stage"].as_str().unwrap_or("")).collect();
    assert_eq!(names, ["oww-wake", "oww-wake.jarvis"], "{s}");
    for e in per {
        for key in ["pre_ms", "model_ms", "post_ms"] {
            assert!(e[key].as_f64().unwrap_or(0.0) > 0.0, "{key}: {e}");
        }
        assert_eq!(e["runs"].as_f64(), Some(1.0), "{e}");
        assert_eq!(e["requests"].as_u64(), Some(20), "{e}");
    }
}
