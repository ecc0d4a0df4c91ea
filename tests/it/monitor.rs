//! Drift monitoring through the binary: `model profile` writes the reference, and the
//! daemon on a drifting simulated machine publishes `model-drift` on MQTT and reports the
//! scores in `/status`, `/metrics` and telemetry.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use crate::common::mqtt_agent::MqttSetup;
use crate::common::{copy_model, demo_model, free_port, http, run, secs, stderr};
use edge_agent::sources::VibrationSim;

/// The demo model with smaller monitor windows (so that the test runs in seconds), in
/// `dir/vibration`.
fn monitored_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("vibration");
    copy_model(&demo_model(), &model);
    let spec = std::fs::read_to_string(model.join("model.toml")).unwrap();
    std::fs::write(model.join("model.toml"), format!("{spec}\n[monitor]\nwindow = 200\nevery = 50\n"))
        .unwrap();
    model
}

/// The demo machine's normal signal (seed 7, as the demo config) as JSON lines of 1,000
/// samples: `windows` windows of the demo model.
fn normal_signal(path: &Path, windows: usize) {
    let mut sim = VibrationSim::new(7, 1000.0, 0.0, 0.0).with_noise_seed(1);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..(windows * 128).div_ceil(1000) + 1 {
        serde_json::to_writer(&mut out, &sim.samples(1000)).unwrap();
        out.write_all(b"\n").unwrap();
    }
}

#[test]
fn profile_writes_the_reference_and_says_what_it_holds() {
    let dir = crate::common::tempdir();
    let model = monitored_model(dir.path());
    let input = dir.path().join("normal.jsonl");
    normal_signal(&input, 1200);
    let out = run(
        &[
            "model",
            "profile",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ],
        secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Piped: no progress line.
    assert!(!stderr(&out).contains('\r'), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["model"], "vibration");
    assert!(summary["windows"].as_u64().unwrap() >= 1200, "{summary}");
    let names: Vec<&str> =
        summary["summaries"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    for want in [
        "input.mean",
        "input.std",
        "input.min",
        "input.max",
        "input.mean_abs",
        "output.score",
        "output.label",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    let profile: Value = serde_json::from_slice(&std::fs::read(model.join("profile.json")).unwrap()).unwrap();
    assert_eq!(profile["format"], 1);
    let std = profile["summaries"].as_array().unwrap().iter().find(|s| s["name"] == "input.std").unwrap();
    assert_eq!(std["edges"].as_array().unwrap().len() + 1, std["freq"].as_array().unwrap().len());

    // A file the model cannot take is refused with where and why, and nothing is written.
    std::fs::remove_file(model.join("profile.json")).unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "[1, 2, 3]\n{\"not\": \"samples\"}\n").unwrap();
    let out = run(
        &["model", "profile", "--model", model.to_str().unwrap(), "--input", bad.to_str().unwrap()],
        secs(60),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.jsonl:2"), "{}", stderr(&out));
    assert!(!model.join("profile.json").exists());
}

/// The end-to-end case: a profile of the normal signal, then the daemon on the
/// same machine whose gain goes to 1.5x after 30 s of signal. `model-drift` is published,
/// naming the summaries that moved; `/status`, `/metrics` and telemetry show it.
#[test]
fn a_drifting_machine_raises_model_drift_on_mqtt() {
    let setup = MqttSetup::new();
    let model = monitored_model(setup.dir());
    let input = setup.dir().join("normal.jsonl");
    normal_signal(&input, 2000);
    let out = run(
        &["model", "profile", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()],
        secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("profile.json"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let api = free_port();
    let model_path = model.display().to_string();
    let setup = setup.config(move |dir, port| {
        format!(
            "[agent]\ndevice_id = \"dev1\"\nstate_dir = \"{state}\"\n\n[output]\nstdout = false\n\n\
             [api]\nlisten = \"127.0.0.1:{api}\"\nsocket = \"{socket}\"\n\n[telemetry]\ninterval_s = 1\n\n\
             [[model]]\npath = \"{model_path}\"\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"agent\"\npassword = \"agent-pass\"\n\n\
             [[source]]\nkind = \"simulated\"\nmodel = \"vibration\"\nspeed = 50.0\nanomaly_every_s = 0.0\n\
             seed = 7\nnoise_seed = 2\n\n[source.drift]\nafter_s = 30.0\ngain = 1.5\n",
            state = dir.join("state").display(),
            socket = dir.join("api.sock").display(),
        )
    });
    let running = setup.start(["edge/dev1/events", "edge/dev1/telemetry"]);
    let [events, telemetry] = &running.subs;
    let (_, event) = events.wait_for("a model-drift event", secs(60), |_, p| p.contains("\"model-drift\""));
    let event: Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["model"], "vibration", "{event}");
    assert_eq!(event["severity"], "warning", "{event}");
    assert_eq!(event["detail"]["reference"], "profile", "{event}");
    // Raised after the change (30 s of signal: window 234), not by the noise before it.
    assert!(event["detail"]["results"].as_u64().unwrap() > 234, "{event}");
    let moved = event["detail"]["summaries"].as_array().unwrap();
    let std = moved.iter().find(|s| s["summary"] == "input.std").unwrap_or_else(|| panic!("{event}"));
    assert!(std["score"].as_f64().unwrap() >= 0.3, "{event}");
    // The window is part old, part new: its mean is between the two.
    assert!(std["mean"].as_f64().unwrap() > 1.1 * std["reference_mean"].as_f64().unwrap(), "{event}");
    // No clear: the machine stays changed.
    assert!(!events.messages().iter().any(|(_, p)| p.contains("model-drift-cleared")));

    let get = |path: &str| {
        let mut r = http().get(&format!("http://127.0.0.1:{api}{path}")).call().expect("request");
        r.body_mut().read_to_string().unwrap()
    };
    let status: Value = serde_json::from_str(&get("/status")).unwrap();
    let drift = &status["models"]["vibration"]["drift"];
    assert_eq!(drift["drifting"], true, "{status:#}");
    assert_eq!(drift["reference"], "profile", "{drift}");
    assert!(drift["scores"]["input.std"].as_f64().unwrap() >= 0.2, "{drift}");
    let metrics = get("/metrics");
    assert!(
        metrics.contains("edge_agent_model_drift_active{model=\"vibration\",version=\"1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "edge_agent_model_drift_score{model=\"vibration\",version=\"1\",summary=\"input.std\"}"
        ),
        "{metrics}"
    );
    // `edge-agent status` shows it to a person.
    let socket = running.dir.path().join("api.sock");
    let out = run(&["status", "--socket", socket.to_str().unwrap()], secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("drift RAISED since") && text.contains("(reference: profile)"), "{text}");
    let (_, report) =
        telemetry.wait_for("a report with drift", secs(30), |_, p| p.contains("\"drifting\":true"));
    let report: Value = serde_json::from_str(&report).unwrap();
    assert!(report["models"]["vibration"]["drift"]["input.std"].as_f64().unwrap() > 0.0, "{report}");
}

/// Requests through the local API are watched too: without a profile the first results
/// are the reference (status says so), and a gain on later requests raises drift.
#[test]
fn api_requests_are_watched_against_the_first_results() {
    let dir = crate::common::tempdir();
    let model = dir.path().join("vibration");
    copy_model(&demo_model(), &model);
    let spec = std::fs::read_to_string(model.join("model.toml")).unwrap();
    std::fs::write(
        model.join("model.toml"),
        format!("{spec}\n[monitor]\nwindow = 200\nevery = 50\nreference = 400\n"),
    )
    .unwrap();
    let body = format!("[[model]]\npath = \"{}\"\n", model.display());
    let d = crate::common::Daemon::start("serve", &body, "", &[]);
    let mut sim = VibrationSim::new(7, 1000.0, 0.0, 0.0);
    let mut send = |gain: f32| {
        let data: Vec<f32> = sim.samples(256).into_iter().map(|x| x * gain).collect();
        let req = serde_json::json!({"inputs": [{"name": "vibration", "shape": [1, 256], "datatype": "FP32", "data": data}]});
        let r = http().post(&d.url("/v2/models/vibration/infer")).send_json(&req).expect("request");
        assert_eq!(r.status().as_u16(), 200);
    };
    let drift = || {
        let mut r = http().get(&d.url("/status")).call().expect("request");
        let status: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        status["models"]["vibration"]["drift"].clone()
    };
    for _ in 0..100 {
        send(1.0);
    }
    assert_eq!(drift()["state"], "learning", "{}", drift());
    assert_eq!(drift()["reference"], "first-results");
    for _ in 0..500 {
        send(1.0);
    }
    assert_eq!((&drift()["state"], &drift()["drifting"]), (&json!("ok"), &json!(false)), "{}", drift());
    for _ in 0..200 {
        send(2.0);
    }
    assert_eq!(drift()["drifting"], true, "{}", drift());
    assert_eq!(drift()["state"], "drift");
}

/// `speech` with Gaussian noise of standard deviation `sigma` (of full scale), as 16-bit.
fn noisy_copy(speech: &Path, out: &Path, sigma: f64, seed: u64) {
    let mut reader = hound::WavReader::open(speech).unwrap();
    let spec = reader.spec();
    // The simulated machine with its gain at 0 and noise of 1 is a standard normal source.
    let drift = edge_agent::sources::Drift { from_sample: 0, gain: 0.0, offset: 0.0, noise: 1.0 };
    let mut noise = VibrationSim::new(0, 16000.0, 0.0, 0.0).with_noise_seed(seed).with_drift(drift);
    let mut w = hound::WavWriter::create(out, spec).unwrap();
    for s in reader.samples::<i16>() {
        let x = f64::from(s.unwrap()) + sigma * 32768.0 * f64::from(noise.sample());
        w.write_sample(x.round().clamp(-32768.0, 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

/// Runs Silero VAD over WAV files, one after the other as one stream (recurrent state
/// carried), feeding each result to `monitors`; returns the drift changes with the
/// window each came at.
fn replay_vad(
    model: &std::sync::Arc<edge_infer::engine::LoadedModel>,
    engine: &edge_infer::engine::Engine,
    monitors: &edge_agent::monitor::Monitors,
    wavs: &[&Path],
) -> Vec<(usize, edge_agent::monitor::Transition)> {
    let mut windower = edge_infer::pipeline::Windower::new(model.spec.pre.window.as_ref().unwrap());
    let mut segment = edge_infer::pipeline::SegmentState::default();
    let mut changes = Vec::new();
    let mut n = 0;
    for wav in wavs {
        let (_, samples) = edge_agent::sources::read_wav(wav).unwrap();
        for w in windower.push(&samples) {
            let summaries = monitors.summarise(model, &w.data).unwrap();
            let resp = engine
                .infer_blocking(edge_infer::engine::Request {
                    model: "silero-vad".into(),
                    stream: Some("mic".into()),
                    data: w.data,
                    deadline: std::time::Instant::now() + secs(60),
                    reset: n == 0,
                    shape: None,
                })
                .unwrap();
            let outputs = model.post().apply(resp.post_values(), w.index, Some(&mut segment));
            changes.extend(monitors.observe(model, summaries, &outputs).map(|c| (n, c)));
            n += 1;
        }
    }
    changes
}

/// Silero VAD. The recording's pauses are digital silence (exact zeros), which no
/// microphone gives, so every take here has a microphone's noise floor added (σ 0.001
/// of full scale, -60 dBFS): the profile is made by `model profile` from one take, the
/// device hears another take (another noise seed), then the recording mixed with noise
/// (σ 0.03, about 9 dB below the speech). The scene repeats (the 9.6 s recording is
/// looped) and the monitor's window of 300 results covers one pass: a shorter one would
/// compare a few words with the whole recording. The other take raises nothing in three
/// passes; the noise raises drift within 200 windows (6.4 s) of its start: it changes
/// mostly the pauses (45% of the windows), so more of the window must have changed than
/// when every window moves (about a third).
#[test]
fn silero_vad_notices_a_recording_mixed_with_noise() {
    let dir = crate::common::tempdir();
    let model_dir = dir.path().join("silero-vad");
    copy_model(&crate::common::model("silero-vad"), &model_dir);
    let spec = std::fs::read_to_string(model_dir.join("model.toml")).unwrap();
    std::fs::write(model_dir.join("model.toml"), format!("{spec}\n[monitor]\nwindow = 300\nevery = 10\n"))
        .unwrap();
    let speech = crate::common::cache().join("audio/speech.wav");
    let (take1, take2, noisy) =
        (dir.path().join("take1.wav"), dir.path().join("take2.wav"), dir.path().join("noisy.wav"));
    noisy_copy(&speech, &take1, 0.001, 1);
    noisy_copy(&speech, &take2, 0.001, 3);
    noisy_copy(&speech, &noisy, 0.03, 2);
    let out = run(
        &[
            "model",
            "profile",
            "--model",
            model_dir.to_str().unwrap(),
            "--input",
            take1.to_str().unwrap(),
            "--json",
        ],
        secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let engine = edge_infer::engine::Engine::start(&edge_infer::engine::EngineConfig {
        threads: 1,
        queue: 4,
        ..Default::default()
    });
    let model = engine.install(
        edge_infer::engine::LoadedModel::load_dir(&model_dir, &edge_infer::engine::ModelLimits::default())
            .unwrap(),
    );
    let monitors = edge_agent::monitor::Monitors::new();
    let changes = replay_vad(&model, &engine, &monitors, &[&take2, &take2, &take2]);
    let report = &monitors.report()["silero-vad"];
    eprintln!("another take, 3 passes: {:?}", report.scores);
    assert!(changes.is_empty(), "{:?}", changes.iter().map(|c| &c.1.detail).collect::<Vec<_>>());
    assert_eq!(report.state, "ok", "{report:?}");

    let monitors = edge_agent::monitor::Monitors::new();
    let changes = replay_vad(&model, &engine, &monitors, &[&take2, &take2, &noisy, &noisy]);
    let pass = report.results as usize / 3;
    let (at, raised) =
        changes.first().unwrap_or_else(|| panic!("no drift: {:?}", monitors.report()["silero-vad"].scores));
    assert!(raised.raised);
    eprintln!("noise from window {}: raised at window {at}: {}", 2 * pass, raised.detail);
    assert!(
        *at >= 2 * pass && *at <= 2 * pass + 200,
        "raised at window {at}; the noise starts at {}",
        2 * pass
    );
    let moved: Vec<&str> = raised.detail["summaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["summary"].as_str().unwrap())
        .collect();
    assert!(moved.contains(&"input.std") || moved.contains(&"input.mean_abs"), "{moved:?}");
    engine.shutdown();
}

/// `registry publish` ships profile.json inside the signed package, and refuses one
/// that devices could not use.
#[test]
fn publish_refuses_a_broken_profile_and_ships_a_good_one() {
    let publisher = crate::common::registry::Publisher::new(1);
    let dir = crate::common::tempdir();
    let model = dir.path().join("vibration");
    copy_model(&demo_model(), &model);
    std::fs::write(model.join("profile.json"), "{\"format\": 1}").unwrap();
    let out = publisher.try_publish(&model, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("profile.json") && stderr(&out).contains("model profile"),
        "{}",
        stderr(&out)
    );

    let input = dir.path().join("normal.jsonl");
    normal_signal(&input, 300);
    let out = run(
        &["model", "profile", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()],
        secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    publisher.publish(&model, 100, &[]);
    let tars = crate::common::registry::packages(&publisher.repo());
    assert!(!tars.is_empty(), "no package in {}", publisher.repo().display());
    let profile = std::fs::read(model.join("profile.json")).unwrap();
    for t in tars {
        let tar = std::fs::read(&t).unwrap();
        assert!(
            tar.windows(profile.len()).any(|w| w == profile.as_slice()),
            "profile.json is not in {}",
            t.display()
        );
    }
}
