use crate::common::*;

#[test]
fn every_command_has_help() {
    for cmd in [
        &["--help"][..],
        &["run", "--help"],
        &["infer", "--help"],
        &["model", "inspect", "--help"],
        &["bench", "--help"],
    ] {
        let out = run(cmd, secs(10));
        assert!(out.status.success(), "{cmd:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"), "{cmd:?}");
    }
    let out = run(&["--version"], secs(10));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("edge-agent "), "{version}");
    // The long version names the cargo features, so a device build can be told apart.
    assert!(version.contains("\ncargo features: intra-threads, onnx"), "{version}");
    let out = run(&["-V"], secs(10));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "-V stays one line");
    let out = run(&["infer"], secs(10));
    assert_eq!(out.status.code(), Some(2), "missing arguments are a usage error");
}

#[test]
fn model_inspect_reports_inputs_outputs_ops_and_times() {
    let out =
        run(&["model", "inspect", "--model", model("silero-vad").to_str().unwrap(), "--json"], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "silero-vad");
    assert_eq!(v["stateful"], true);
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 576]));
    assert_eq!(v["inputs"][1]["from"], "state");
    assert_eq!(v["outputs"][1]["name"], "stateN");
    assert!(v["op_count"].as_u64().unwrap() > 10);
    assert!(v["load_ms"].as_f64().unwrap() > 0.0 && v["optimise_ms"].as_f64().unwrap() > 0.0);

    let out = run(&["model", "inspect", "--model", demo_model().to_str().unwrap()], secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vibration 1") && text.contains("ops"), "{text}");
}

#[test]
fn infer_prints_segments_for_audio() {
    let out = run(
        &[
            "infer",
            "--model",
            model("silero-vad").to_str().unwrap(),
            "--input",
            cache().join("audio/speech.wav").to_str().unwrap(),
        ],
        secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("segment start").count(), 2, "{text}");
    assert_eq!(text.matches("segment end").count(), 2, "{text}");
}

#[test]
fn bench_reports_latency_throughput_and_memory_as_json() {
    let out = run(
        &[
            "bench",
            "--model",
            demo_model().to_str().unwrap(),
            "-n",
            "60",
            "--warmup",
            "5",
            "--threads",
            "2",
            "--json",
        ],
        secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty() || !stderr(&out).contains('\r'), "no progress bar when not a terminal");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["engine"]["requests"], 60);
    assert_eq!(v["tract_direct"]["requests"], 60);
    assert_eq!(v["concurrency"], 2);
    for key in ["p50_ms", "p95_ms", "p99_ms", "throughput_rps"] {
        assert!(v["engine"][key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    assert!(v["overhead_p50"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 1_000_000);
    // Drift monitoring's cost per result, next to the engine's, and its fixed memory.
    assert!(v["monitor_ns"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["monitor_share"].as_f64().unwrap() > 0.0, "{v}");
    let bytes = v["monitor_memory_bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < 1 << 20, "{v}");
    // Each stage on its own: without --input, pre-processing decodes a JSON payload.
    assert_eq!(v["stages"]["pre_source"], "json payload", "{v}");
    for key in ["pre_ms", "model_ms", "post_ms"] {
        assert!(v["stages"][key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    // A model without [[stage]] is one entry of per_stage, its own; a payload is one input.
    assert_eq!(v["stages"]["pre_inputs"], 1, "{v}");
    let per = v["stages"]["per_stage"].as_array().expect("per_stage");
    assert_eq!(per.len(), 1, "{v}");
    assert_eq!(per[0]["model_ms"], v["stages"]["model_ms"], "{v}");
}

#[test]
fn an_os_error_is_said_once() {
    let dir = tempdir();
    let missing = dir.path().join("absent/agent.toml");
    let out = run(&["run", "--config", missing.to_str().unwrap()], secs(10));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    // ENOENT as std renders it: "No such file or directory (os error 2)".
    let os = std::io::Error::from_raw_os_error(2).to_string();
    assert_eq!(text.matches(&os).count(), 1, "the OS error once, not twice: {text}");
    assert!(text.contains(missing.to_str().unwrap()), "names the file: {text}");
}

#[test]
fn human_logs_carry_no_colour_codes_when_standard_error_is_not_a_terminal() {
    let dir = tempdir();
    let port = free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, Daemon::config_text(dir.path(), port, &dir.path().join("api.sock"), "", ""))
        .unwrap();
    let mut child = Guard(
        std::process::Command::new(bin())
            .args(["serve", "--config", config.to_str().unwrap(), "--log-format", "human"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    read_into(child.0.stderr.take().unwrap(), log.clone());
    let start = std::time::Instant::now();
    while !log.lock().unwrap().contains("INFO") && start.elapsed() < secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    signal(&child.0, "TERM");
    wait_timeout(&mut child.0, secs(30)).expect("stops after SIGTERM");
    let text = log.lock().unwrap().clone();
    assert!(text.contains("INFO"), "the daemon logged in human format: {text}");
    assert!(!text.contains('\u{1b}'), "no terminal escape codes in a pipe: {text:?}");
}

/// `edge-agent ... | head -1`: the reader goes before the output is written.
fn run_into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Guard(
        std::process::Command::new(bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    // Closing our end, the only read end, makes every write of the child fail with EPIPE.
    drop(child.0.stdout.take());
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    read_into(child.0.stderr.take().unwrap(), log.clone());
    let status = wait_timeout(&mut child.0, secs(60)).expect("finishes");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let text = log.lock().unwrap().clone();
    (status.code(), text)
}

#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    let silero = model("silero-vad");
    let demo = demo_model();
    let speech = cache().join("audio/speech.wav");
    for args in [
        &["model", "inspect", "--model", silero.to_str().unwrap()][..],
        &["model", "inspect", "--model", demo.to_str().unwrap(), "--json"],
        &["infer", "--model", silero.to_str().unwrap(), "--input", speech.to_str().unwrap()],
    ] {
        let (code, text) = run_into_closed_pipe(args);
        assert!(!text.contains("panicked"), "{args:?}: {text}");
        assert_eq!(code, Some(0), "{args:?}: {text}");
        assert!(!text.contains("Broken pipe"), "nothing said about the pipe: {text}");
    }
}
