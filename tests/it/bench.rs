//! The benchmark's own tools, so that `tests/bench/run` compares like with like: the
//! native load driver (`examples/mqtt_load.rs`) counts every result of both agents, and
//! the Python peer (`tests/bench/peer/peer.py`) answers the same messages with the same
//! results as edge-agent, over a real Mosquitto.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::broker::{Broker, BrokerOptions};
use crate::common::*;

/// The load driver, built by `cargo test` beside the test binary (examples are built
/// with the tests).
fn driver() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe.parent().and_then(Path::parent).expect("target/<profile>/deps").join("examples/mqtt_load");
    assert!(
        path.is_file(),
        "{} is missing: cargo test builds it (cargo build --example mqtt_load)",
        path.display()
    );
    path
}

fn drive(port: u16, results: &str, payload: &Path, extra: &[&str]) -> Value {
    let mut cmd = Command::new(driver());
    cmd.args(["--port", &port.to_string(), "--results", results, "--json", "--payload"])
        .arg(payload)
        .args(extra);
    let out = run_with(&mut cmd, None, Duration::from_secs(60));
    assert!(out.status.success(), "the load driver failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("driver output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Samples of message `k` of a stream, shaped like the demo's training data: a 50 Hz
/// hum with its harmonic (normal), louder in some messages (imbalance), with decaying
/// 300 Hz bursts in others (impact), so that the labels vary.
fn samples(k: usize, n: usize) -> Vec<String> {
    use std::f64::consts::PI;
    let amp = if k % 5 == 2 { 2.5 } else { 1.0 };
    (0..n)
        .map(|i| {
            let t = (k * n + i) as f64 / 1000.0;
            let mut v = amp * (2.0 * PI * 50.0 * t).sin() + 0.3 * amp * (2.0 * PI * 100.0 * t).sin();
            if k % 7 == 3 {
                let tau = (i % 30) as f64 / 1000.0;
                v += 3.0 * (-tau / 0.003).exp() * (2.0 * PI * 300.0 * tau).sin();
            }
            format!("{v:.5}")
        })
        .collect()
}

/// Results per (stream, window) on one device's results topic.
fn results_of(messages: &[(String, String)], device: &str) -> BTreeMap<(String, u64), Value> {
    let prefix = format!("edge/{device}/results/");
    messages
        .iter()
        .filter(|(t, _)| t.starts_with(&prefix))
        .map(|(_, p)| serde_json::from_str::<Value>(p).expect("result JSON"))
        .filter(|r| r["stream"].as_str().is_some_and(|s| s.starts_with("cmp")))
        .map(|r| ((r["stream"].as_str().unwrap().to_owned(), r["window"].as_u64().unwrap()), r))
        .collect()
}

fn start_peer(port: u16) -> Guard {
    Guard(
        Command::new(cache().join("venv/bin/python"))
            .arg(root().join("tests/bench/peer/peer.py"))
            .args(["--port", &port.to_string(), "--device", "peer", "--model"])
            .arg(demo_model())
            .args([
                "--topic",
                "sensors/+/accel",
                "--stream-level",
                "1",
                "--threads",
                "1",
                "--log-level",
                "WARNING",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the peer (the test venv needs paho-mqtt: tests/run installs it)"),
    )
}

#[test]
fn load_driver_counts_every_result_and_the_peer_answers_like_the_agent() {
    let broker = Broker::start(BrokerOptions {
        allow_anonymous: true,
        persistence: false,
        max_queued_messages: Some(0),
        ..BrokerOptions::default()
    });
    let dir = tempdir();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"bench\"\nstate_dir = \"{}\"\n[engine]\nthreads = 1\n[output]\nstdout = false\n\
             [[model]]\npath = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
             [[mqtt.sensor]]\ntopic = \"sensors/+/accel\"\nmodel = \"vibration\"\nstream_level = 1\n[telemetry]\ninterval_s = 0\n",
            dir.path().join("state").display(),
            demo_model().display(),
            broker.port
        ),
    )
    .unwrap();
    let _agent = Guard(
        Command::new(bin())
            .args(["run", "--quiet", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent"),
    );
    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, format!("[{}]", samples(0, 128).join(","))).unwrap();

    // One agent at a time, so that each run counts only what was sent while it listened
    // (both take every message on the sensor topic). Start-up mode doubles as the wait
    // until the agent subscribes.
    let mut peer = None;
    for device in ["bench", "peer"] {
        if device == "peer" {
            peer = Some(start_peer(broker.port));
        }
        let filter = format!("edge/{device}/results/#");
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let first = drive(broker.port, &filter, &payload, &["--first-result-since", &since.to_string()]);
        let ms = first["first_result_ms"].as_f64().expect("first_result_ms");
        assert!(ms > 0.0 && ms < 60_000.0, "{device}: start-up {ms} ms");
        let r = drive(broker.port, &filter, &payload, &["--rate", "800", "--count", "400"]);
        assert_eq!(r["sent"], 400, "{device}: {r}");
        assert_eq!(r["results"], 400, "{device}: every message completes one window: {r}");
        assert_eq!(r["lost"], 0, "{device}: {r}");
        assert_eq!(r["duplicates"], 0, "{device}: {r}");
        let (p50, p99) = (r["p50_ms"].as_f64().unwrap(), r["p99_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{device}: percentiles {r}");
    }
    let _peer = peer;

    // Same varied messages to both: the same windows, labels and scores.
    let sub = broker.subscribe("test", "edge/+/results/#");
    let messages: Vec<(String, String)> = (0..2)
        .flat_map(|s| {
            (0..20).map(move |k| {
                (
                    format!("sensors/cmp{s}/accel"),
                    format!("{{\"id\":{},\"data\":[{}]}}", s * 100 + k, samples(k, 128).join(",")),
                )
            })
        })
        .collect();
    broker.publish_many("test", &messages, 1);
    // 20 messages of 128 samples make 19 windows of 256 per stream, for each agent.
    sub.wait_count(76, Duration::from_secs(30), |t, p| {
        t.starts_with("edge/") && p.contains("\"stream\":\"cmp")
    });
    let all = sub.messages();
    let (agent, peer) = (results_of(&all, "bench"), results_of(&all, "peer"));
    assert_eq!(agent.len(), 38, "edge-agent's windows");
    assert_eq!(peer.keys().collect::<Vec<_>>(), agent.keys().collect::<Vec<_>>(), "the same windows");
    let mut labels = std::collections::BTreeSet::new();
    for (key, a) in &agent {
        let p = &peer[key];
        assert_eq!(a["input_id"], p["input_id"], "{key:?}");
        assert_eq!(a["outputs"]["label"], p["outputs"]["label"], "{key:?}: {a} against {p}");
        let (sa, sp) = (a["outputs"]["score"].as_f64().unwrap(), p["outputs"]["score"].as_f64().unwrap());
        // Two engines in f32: the in-graph features (squares, logs) differ in the last
        // digits, up to 1e-5 on this signal.
        assert!((sa - sp).abs() < 1e-4, "{key:?}: score {sa} against {sp}");
        labels.insert(a["outputs"]["label"].as_str().unwrap().to_owned());
    }
    assert!(labels.len() >= 2, "the signal should give more than one label: {labels:?}");
}
