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
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("edge-agent "));
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
}
