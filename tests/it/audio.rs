use crate::common::registry::Publisher;
use crate::common::*;
use edge_infer::ModelSpec;
use edge_infer::pipeline::dsp::Dsp;

/// openWakeWord's reference outputs for wake.wav (tests/fixtures/oww_reference.py).
pub(crate) fn reference() -> serde_json::Value {
    read_json(&cache().join("reference/oww_reference.json"))
}

/// wake.wav's int16 samples.
fn wake_i16() -> Vec<i16> {
    let mut reader = hound::WavReader::open(cache().join("audio/wake.wav")).expect("wake.wav");
    reader.samples::<i16>().map(|s| s.expect("sample")).collect()
}

/// The WAV's samples as openWakeWord feeds them: int16 values as floats.
fn wake_samples() -> Vec<f32> {
    wake_i16().into_iter().map(f32::from).collect()
}

/// wake.wav's samples as little-endian int16, as a microphone sends them over MQTT.
pub(crate) fn wake_pcm() -> Vec<u8> {
    wake_i16().into_iter().flat_map(i16::to_le_bytes).collect()
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

/// `edge-agent run` with one file source of `path` feeding model `name`, until the file
/// ends; the results it printed.
fn run_file_source(dir: &std::path::Path, name: &str, path: &std::path::Path) -> Vec<serde_json::Value> {
    let config = dir.join(format!("{name}.toml"));
    let text = format!(
        "[agent]\ndevice_id = \"test-oww\"\nstate_dir = \"{state}\"\n[engine]\ndeadline_ms = 10000\n\
         [[model]]\npath = \"{model}\"\n\
         [[source]]\nkind = \"file\"\nmodel = \"{name}\"\npath = \"{path}\"\nstream = \"mic-1\"\n",
        state = dir.join(format!("state-{name}")).display(),
        model = model(name).display(),
        path = path.display()
    );
    std::fs::write(&config, text).expect("write config");
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(120));
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    json_lines(&out.stdout)
}

/// Embeddings of every 76-frame window, every 8 frames.
fn embeddings_through_the_daemon(dir: &std::path::Path) -> Vec<Vec<f64>> {
    run_file_source(dir, "oww-embedding", &cache().join("audio/wake.wav"))
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
    let results = run_file_source(dir.path(), "oww-hey-jarvis", &emb);
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

/// The same embeddings through the daemon's other doors: wake.wav's PCM published over
/// a real Mosquitto as i16le messages of one second (the front end keeps each stream's
/// frames across messages), and one model input's worth of samples sent to the local
/// API as an OIP v2 BYTES payload; both equal onnxruntime on the published pipeline
/// within 5e-4. A payload of other length is refused with the span it needs.
#[test]
fn wake_word_embeddings_over_mqtt_and_the_local_api() {
    use crate::common::mqtt_agent::{MqttSetup, mic_config};
    use base64::Engine as _;

    let reference = reference();
    let want = floats(&reference["embeddings"]);
    let windows = reference["windows"].as_u64().expect("windows") as usize;
    let api_port = free_port();
    let model_dir = model("oww-embedding");
    let config = mic_config(&model_dir, "oww-embedding", api_port, "");
    let crate::common::mqtt_agent::Running { dir: _dir, broker, subs: [results], agent, .. } =
        MqttSetup::new().config(config).start(["edge/dev1/results/#"]);

    let pcm = wake_pcm();
    for chunk in pcm.chunks(2 * 16000) {
        broker.publish("test", "sensors/kitchen/mic", chunk, 1, false);
    }
    let got = results.wait_count(windows, secs(60), |t, _| t == "edge/dev1/results/oww-embedding");
    let mut by_window = vec![Vec::new(); windows];
    for (_, p) in &got {
        let r: serde_json::Value = serde_json::from_str(p).expect("result JSON");
        assert_eq!(r["stream"], "kitchen");
        let w = r["window"].as_u64().expect("window") as usize;
        by_window[w] = floats(&r["outputs"]["raw"]["conv2d_19"]["data"]);
    }
    let flat: Vec<f64> = by_window.into_iter().flatten().collect();
    let diff = max_abs_diff(&flat, &want);
    assert!(diff <= 5e-4, "MQTT embeddings: max abs diff {diff} > 5e-4");

    // The local API: the first 76 frames' samples, (76 - 1) * 160 + 512 of them.
    let url = format!("http://127.0.0.1:{api_port}/v2/models/oww-embedding/infer");
    let ask = |samples: usize| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&pcm[..2 * samples]);
        let body = serde_json::json!({"inputs": [{"name": "input_1", "shape": [1], "datatype": "BYTES",
            "parameters": {"content_type": "base64"}, "data": [b64]}]});
        let mut r = http()
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .expect("request");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str::<serde_json::Value>(&text).unwrap_or(serde_json::Value::Null))
    };
    let (status, answer) = ask(75 * 160 + 512);
    assert_eq!(status, 200, "{answer}");
    let out = answer["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == "conv2d_19")
        .expect("embedding");
    let diff = max_abs_diff(&floats(&out["data"]), &want[..96]);
    assert!(diff <= 5e-4, "API embedding: max abs diff {diff} > 5e-4");
    let (status, answer) = ask(12000);
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap_or("").contains("send 12512 to 13791 samples"), "{answer}");
    agent.stop();
}

/// `registry publish` runs the package's self-test: golden vectors recorded from
/// reference front-end windows pass, the package carries the spec with its `[pre.dsp]`,
/// and its recorded outputs are onnxruntime's embeddings.
#[test]
fn a_wake_word_model_with_a_front_end_publishes_with_its_self_test() {
    let reference = reference();
    let work = tempdir();
    let dir = work.path().join("oww-embedding");
    copy_model(&model("oww-embedding"), &dir);
    // The first two model inputs: published frames 0..76 and 8..84.
    let mel = floats(&reference["published_mel"]);
    let cases: Vec<serde_json::Value> = (0..2)
        .map(|k| serde_json::json!({"name": format!("window-{k}"), "input": &mel[k * 8 * 32..(k * 8 + 76) * 32]}))
        .collect();
    let golden = record_selftest(&dir, work.path(), &cases.into());
    let want = floats(&reference["embeddings"]);
    for k in 0..2 {
        let got = floats(&golden["cases"][k]["expected"]);
        let diff = max_abs_diff(&got, &want[k * 96..(k + 1) * 96]);
        assert!(diff <= 5e-4, "case {k}: max abs diff {diff}");
    }
    let p = Publisher::new(1);
    p.publish(&dir, 100, &[]);
    let package = find_tar(&p.repo(), "oww-embedding").expect("the published package");
    let bytes = std::fs::read(&package).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("[pre.dsp]") && text.contains("kind = \"mel\""),
        "the package carries the front end"
    );
}

/// `edge-agent model selftest --record` of `cases` (written to `work`/inputs.json) for
/// the model in `dir`, tolerance 0.001; the golden file it wrote.
pub(crate) fn record_selftest(
    dir: &std::path::Path,
    work: &std::path::Path,
    cases: &serde_json::Value,
) -> serde_json::Value {
    let inputs = work.join("inputs.json");
    std::fs::write(&inputs, cases.to_string()).unwrap();
    let args = [
        "model",
        "selftest",
        "--model",
        dir.to_str().unwrap(),
        "--record",
        inputs.to_str().unwrap(),
        "--tolerance",
        "0.001",
    ];
    let out = run(&args, secs(120));
    assert!(out.status.success(), "record: {}", stderr(&out));
    read_json(&dir.join("selftest.json"))
}

/// The first `.tar` under `dir` whose path names `model`.
fn find_tar(dir: &std::path::Path, model: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_tar(&path, model) {
                return Some(found);
            }
        } else if path.extension().is_some_and(|e| e == "tar") && path.to_string_lossy().contains(model) {
            return Some(path);
        }
    }
    None
}

/// Writes `seconds` of a chord at `rate` Hz, 16-bit mono: tones every 40 Hz from 60 Hz
/// to 3.8 kHz with fixed phases, so that every mel band of oww-embedding holds energy
/// (an empty band's log would be ruled by rounding noise, which differs between rates).
fn chord_wav(path: &std::path::Path, rate: u32, seconds: f64) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create wav");
    for i in 0..(seconds * f64::from(rate)) as usize {
        let t = i as f64 / f64::from(rate);
        let v: f64 = (0..95)
            .map(|k| {
                let f = 60.0 + 40.0 * f64::from(k);
                0.01 * (2.0 * std::f64::consts::PI * f * t + f64::from(k * k) * 0.7).sin()
            })
            .sum();
        w.write_sample((v * 32767.0) as i16).expect("sample");
    }
    w.finalize().expect("finish wav");
}

fn infer_embeddings(model: &std::path::Path, wav: &std::path::Path) -> Result<Vec<Vec<f64>>, String> {
    let out = run(
        &["infer", "--model", model.to_str().unwrap(), "--input", wav.to_str().unwrap(), "--json"],
        secs(60),
    );
    if !out.status.success() {
        return Err(stderr(&out));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    Ok(report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| floats(&r["raw"]["conv2d_19"]["data"]))
        .collect())
}

/// A WAV recorded at 48 kHz goes through `edge-agent infer` on a model whose front end
/// allows resampling: it is converted to the model's 16 kHz, and its embeddings are
/// those of the same chord recorded at 16 kHz (within 5e-3; 7e-4 measured); with
/// `resample = false` it is refused, naming both rates.
#[test]
fn a_wav_at_another_rate_is_resampled_by_the_front_end() {
    let work = tempdir();
    let (at16, at48) = (work.path().join("chord16.wav"), work.path().join("chord48.wav"));
    chord_wav(&at16, 16000, 2.0);
    chord_wav(&at48, 48000, 2.0);
    let model = model("oww-embedding");
    let want = infer_embeddings(&model, &at16).expect("16 kHz");
    let got = infer_embeddings(&model, &at48).expect("48 kHz");
    assert_eq!(got.len(), want.len(), "the same number of model inputs");
    // The first input starts at the file's start, where the resampler sees zeros before
    // it: compare the inputs that lie wholly inside.
    for (k, (g, w)) in got.iter().zip(&want).enumerate().skip(1) {
        let diff = max_abs_diff(g, w);
        assert!(diff <= 5e-3, "input {k}: max abs diff {diff}");
    }
    let strict = work.path().join("strict");
    copy_model(&model, &strict);
    let spec = std::fs::read_to_string(strict.join("model.toml"))
        .unwrap()
        .replace("frame_hop = 8", "frame_hop = 8\nresample = false");
    std::fs::write(strict.join("model.toml"), spec).unwrap();
    let err = infer_embeddings(&strict, &at48).expect_err("refused");
    assert!(err.contains("sampled at 48000 Hz but model `oww-embedding` takes 16000 Hz"), "{err}");
}

/// The largest difference relative to the reference's size, `|got - want| / (1 + |want|)`.
fn max_rel_diff(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter().zip(want).map(|(g, w)| (g - w).abs() / (1.0 + w.abs())).fold(0.0, f64::max)
}

fn front_end(toml_text: &str, rate: u32) -> Dsp {
    let spec: edge_infer::engine::dsp_spec::DspSpec = toml::from_str(toml_text).expect("[pre.dsp]");
    Dsp::new(&spec, Some(rate)).expect("front end")
}

/// MFCCs (librosa.feature.mfcc's defaults without centring) of speech.wav, and spectral
/// features (RMS, 3 peaks, 4 log bands per axis) of a 3-axis accelerometer signal, from
/// the declared front ends equal numpy's (tests/fixtures/dsp_reference.py, in f64)
/// relative to each value's size: MFCCs within 5e-4 (9.3e-5 measured: bands some 100 dB
/// below a frame's peak are ruled by the f32 FFT's rounding), spectral features within
/// 1e-5 (5e-7 measured).
#[test]
fn mfcc_and_spectral_features_match_numpy() {
    let reference = read_json(&cache().join("reference/dsp_reference.json"));
    let dsp = front_end(
        "kind = \"mfcc\"\nframe = 400\nn_fft = 512\nhop = 160\nmels = 40\nmfcc = 13\nlog = \"db\"\nframes = 1",
        16000,
    );
    let mut reader = hound::WavReader::open(cache().join("audio/speech.wav")).expect("speech.wav");
    let speech: Vec<f32> = reader.samples::<i16>().map(|s| f32::from(s.expect("sample")) / 32768.0).collect();
    let got: Vec<f64> = dsp.frames_of(&speech).iter().map(|v| f64::from(*v)).collect();
    let want = floats(&reference["mfcc"]);
    assert_eq!(got.len(), reference["mfcc_frames"].as_u64().expect("frames") as usize * 13);
    let diff = max_rel_diff(&got, &want);
    eprintln!("mfcc: max relative diff {diff:e}");
    assert!(diff <= 5e-4, "MFCC: max relative diff {diff}");

    let spectral = &reference["spectral"];
    let dsp = front_end(
        "kind = \"spectral\"\naxes = 3\nframe = 200\nhop = 100\npeaks = 3\nbins = 4\nlog = \"log10\"\nframes = 1",
        spectral["rate"].as_u64().expect("rate") as u32,
    );
    let signal: Vec<f32> = floats(&spectral["signal"]).iter().map(|v| *v as f32).collect();
    let got: Vec<f64> = dsp.frames_of(&signal).iter().map(|v| f64::from(*v)).collect();
    let diff = max_rel_diff(&got, &floats(&spectral["features"]));
    eprintln!("spectral: max relative diff {diff:e}");
    assert!(diff <= 1e-5, "spectral features: max relative diff {diff}");
}
