use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The README's first command: the demo shows results within seconds and stops cleanly
/// on SIGTERM.
#[test]
fn demo_shows_results_within_seconds_and_stops_on_sigterm() {
    let config = root().join("configs/demo.toml");
    let mut child = Guard(
        Command::new(bin())
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let started = Instant::now();
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let (first_at, first) = rx.recv_timeout(Duration::from_secs(10)).expect("a result within 10 s");
    let first_after = first_at - started;
    assert!(first_after < Duration::from_secs(5), "first result after {first_after:?}");
    let first: serde_json::Value = serde_json::from_str(&first).expect("json line");
    assert_eq!(first["model"], "vibration");
    assert_eq!(first["device"], "demo");
    assert!(first["outputs"]["label"].is_string(), "{first}");

    // Let it run a little, then stop it like systemd would.
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child.0, "TERM");
    let status = wait_timeout(&mut child.0, Duration::from_secs(15)).expect("stops within 15 s of SIGTERM");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    let count = 1 + rx.try_iter().count();
    assert!(count >= 10, "only {count} results in ~2 s of 4x real time");
}

/// The simulated machine's injected anomalies are what the demo model reports.
#[test]
fn demo_model_detects_injected_anomalies() {
    let dir = tempdir();
    let config = dir.path().join("demo.toml");
    let text = std::fs::read_to_string(root().join("configs/demo.toml"))
        .unwrap()
        .replace("path = \"models/vibration\"", &format!("path = \"{}\"", demo_model().display()))
        .replace("speed = 4.0", "speed = 0.0\nduration_s = 48.0");
    std::fs::write(&config, text).unwrap();
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out.stdout);
    // 48 s at 1 kHz, 256-sample windows every 128 samples.
    assert_eq!(lines.len(), (48_000 - 256) / 128 + 1);

    // Truth per window, from the simulator's schedule: an anomaly of 2 s every 6 s,
    // imbalance in odd periods, impact in even ones. Windows straddling a change are skipped.
    let truth = |t: f64| -> &'static str {
        if t >= 6.0 && t % 6.0 < 2.0 {
            if ((t / 6.0).floor() as u64) % 2 == 1 { "imbalance" } else { "impact" }
        } else {
            "normal"
        }
    };
    let mut seen = std::collections::BTreeMap::<&str, (u32, u32)>::new();
    for r in &lines {
        let t0 = r["offset"].as_f64().unwrap() / 1000.0;
        let (a, b) = (truth(t0), truth(t0 + 0.255));
        if a != b {
            continue;
        }
        let e = seen.entry(a).or_default();
        e.1 += 1;
        if r["outputs"]["label"] == a {
            e.0 += 1;
        }
    }
    for class in ["normal", "imbalance", "impact"] {
        let (ok, n) = seen.get(class).copied().unwrap_or_default();
        assert!(n > 20, "{class}: only {n} windows");
        let accuracy = f64::from(ok) / f64::from(n);
        assert!(accuracy >= 0.9, "{class}: accuracy {accuracy:.3} ({ok}/{n})");
    }
}

/// CSV replay with a header, NDJSON with per-line streams and resets, both windowed.
#[test]
fn file_sources_replay_csv_and_ndjson() {
    let dir = tempdir();
    let csv = dir.path().join("accel.csv");
    let mut text = String::from("a,b,c,d\n");
    for i in 0..128 {
        let v: Vec<String> = (0..4).map(|j| format!("{}", ((i * 4 + j) as f32 * 0.3).sin())).collect();
        text.push_str(&v.join(","));
        text.push('\n');
    }
    std::fs::write(&csv, text).unwrap(); // 512 samples → windows at 0, 128, 256
    let nd = dir.path().join("multi.ndjson");
    let chunk: Vec<f32> = (0..256).map(|i| (i as f32 * 0.2).sin()).collect();
    let chunk = serde_json::to_string(&chunk).unwrap();
    std::fs::write(
        &nd,
        format!(
            "{{\"stream\":\"a\",\"data\":{chunk}}}\n{{\"stream\":\"b\",\"data\":{chunk}}}\n{{\"stream\":\"a\",\"data\":{chunk}}}\n{{\"stream\":\"a\",\"reset\":true,\"data\":{chunk}}}\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("files.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"files\"\n[[model]]\npath = \"{m}\"\n[[source]]\nkind = \"file\"\nmodel = \"vibration\"\npath = \"accel.csv\"\n[[source]]\nkind = \"file\"\nmodel = \"vibration\"\npath = \"multi.ndjson\"\n",
            m = demo_model().display()
        ),
    )
    .unwrap();
    let out = run(&["run", "--config", config.to_str().unwrap()], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out.stdout);
    let windows = |stream: &str| -> Vec<u64> {
        lines.iter().filter(|l| l["stream"] == stream).map(|l| l["window"].as_u64().unwrap()).collect()
    };
    assert_eq!(windows("accel"), vec![0, 1, 2], "CSV: 512 samples in 256/128 windows");
    assert_eq!(windows("b"), vec![0]);
    // Stream a: 256 samples → window 0; 256 more → windows 1, 2; reset → starts at 0 again.
    assert_eq!(windows("a"), vec![0, 1, 2, 0]);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..lines.len() as u64).collect::<Vec<_>>(), "seq numbers every result once");
}
