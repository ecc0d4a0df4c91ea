//! The aarch64 build (`cross/build --arch aarch64 --profile ci`, which tests/run runs)
//! under user-mode QEMU: the same commands, the same outputs as the x86_64 build under
//! test, the demo, and an MQTT round trip against the host's Mosquitto.
//!
//! Timings under emulation mean nothing, so nothing here measures speed; limits are
//! generous because qemu-user runs the optimised code 5 to 20 times slower.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::broker::{Broker, BrokerOptions};
use crate::common::*;

const TRIPLE: &str = "aarch64-unknown-linux-gnu";

/// The aarch64 binary: `EDGE_TEST_AARCH64_BIN`, else what tests/run builds.
fn aarch64_bin() -> PathBuf {
    let path = std::env::var_os("EDGE_TEST_AARCH64_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target").join(TRIPLE).join("ci/edge-agent"));
    assert!(
        path.is_file(),
        "the aarch64 build {} is missing: run tests/run (it runs cross/build --arch aarch64 --profile ci)",
        path.display()
    );
    path
}

/// A command running the aarch64 binary through qemu-aarch64-static. No `-L`: the
/// loader and glibc both come from the multiarch libc6:arm64 (see .cargo/config.toml).
fn qemu(args: &[&str]) -> Command {
    let mut cmd = Command::new("qemu-aarch64-static");
    cmd.arg(aarch64_bin()).args(args);
    cmd
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed under qemu ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn aarch64_binary_is_arm64_and_answers_version_and_inspect() {
    let bin = aarch64_bin();
    // The ELF header's machine field (offset 18, little endian): 0xb7 is EM_AARCH64.
    let head = std::fs::read(&bin).expect("read the aarch64 binary");
    assert_eq!(&head[..4], b"\x7fELF", "{} is not an ELF file", bin.display());
    assert_eq!(u16::from_le_bytes([head[18], head[19]]), 0xb7, "{} is not an aarch64 binary", bin.display());

    // cross/build links through lld, which packs the relative relocations (DT_RELR) on
    // aarch64 where Debian's GNU ld cannot; the binary records that it needs a glibc that
    // reads them (GLIBC_ABI_DT_RELR), so an older one refuses it instead of crashing.
    // The rest of this file runs that very binary under qemu.
    let elf = Command::new("readelf")
        .args(["--dynamic", "--version-info"])
        .arg(&bin)
        .output()
        .expect("run readelf");
    let elf = ok(&elf, "readelf");
    assert!(
        elf.contains("(RELR)"),
        "{} has no packed relocations (DT_RELR): cross/build linked it without lld",
        bin.display()
    );
    assert!(
        elf.contains("GLIBC_ABI_DT_RELR"),
        "{} does not ask for a glibc that reads DT_RELR",
        bin.display()
    );

    let version = ok(&run_with(&mut qemu(&["--version"]), None, secs(60)), "--version");
    let native = ok(&run(&["--version"], secs(30)), "native --version");
    assert_eq!(version, native, "the two builds report different versions");

    let demo = demo_model();
    let out = run_with(
        &mut qemu(&["model", "inspect", "--model", demo.to_str().unwrap(), "--json"]),
        None,
        secs(120),
    );
    let arm: Value = serde_json::from_str(&ok(&out, "model inspect")).expect("inspect --json");
    let out = run(&["model", "inspect", "--model", demo.to_str().unwrap(), "--json"], secs(60));
    let x86: Value = serde_json::from_str(&ok(&out, "native model inspect")).expect("inspect --json");
    for key in ["inputs", "outputs", "pre", "post"] {
        assert!(!arm[key].is_null(), "inspect --json has no {key}: {arm}");
        assert_eq!(arm[key], x86[key], "{key} differ between aarch64 and x86_64");
    }
    // The optimised graphs may differ in kernels, not in being there.
    assert!(arm["op_count"].as_u64().is_some_and(|n| n > 10), "{arm}");
}

/// Compares two `infer --json --raw` reports: the same structure and strings, every number
/// within `tol`, relative to the number's size once it is over 1 (Silero's recurrent
/// state reaches magnitudes of 30, where f32 itself resolves only about 2e-6). Timings
/// and the input path are left out.
fn assert_close(arm: &Value, x86: &Value, tol: f64, at: &str, worst: &mut f64) {
    match (arm, x86) {
        (Value::Object(a), Value::Object(b)) => {
            let keys = |m: &serde_json::Map<String, Value>| {
                let mut k: Vec<String> =
                    m.keys().filter(|k| !["latency_ms", "input"].contains(&k.as_str())).cloned().collect();
                k.sort();
                k
            };
            assert_eq!(keys(a), keys(b), "different fields at {at}");
            for k in keys(a) {
                assert_close(&a[&k], &b[&k], tol, &format!("{at}.{k}"), worst);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "different lengths at {at}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(x, y, tol, &format!("{at}[{i}]"), worst);
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            let diff = (a - b).abs() / b.abs().max(1.0);
            *worst = worst.max(diff);
            assert!(diff <= tol, "{at}: aarch64 {a} vs x86_64 {b} (difference {diff:e} > {tol:e})");
        }
        _ => assert_eq!(arm, x86, "different values at {at}"),
    }
}

fn infer_both(model: &Path, input: &Path, limit: Duration) -> (Value, Value) {
    let args =
        ["infer", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap(), "--json", "--raw"];
    let arm = ok(&run_with(&mut qemu(&args), None, limit), &format!("infer {}", input.display()));
    let x86 = ok(&run(&args, secs(60)), "native infer");
    (serde_json::from_str(&arm).expect("aarch64 json"), serde_json::from_str(&x86).expect("x86_64 json"))
}

/// The three real models give the x86_64 build's outputs within 1e-5 on aarch64: the demo
/// classifier on every golden window, the PP-OCR classifier on a tensor and on a PNG
/// (image pre-processing), and Silero VAD over the whole speech recording (recurrent
/// state carried across 500 windows).
#[test]
fn aarch64_outputs_equal_the_x86_64_build() {
    const TOL: f64 = 1e-5;
    let dir = tempdir();
    let mut worst = 0.0f64;

    let golden = read_json(&demo_model().join("golden.json"));
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 3, "the golden file has windows of each class");
    // One stream of all golden windows end to end: with the spec's hop of half a window,
    // every second window is a golden one and those between straddle two.
    let samples: Vec<Value> =
        cases.iter().flat_map(|c| c["input"].as_array().expect("input").clone()).collect();
    let input = dir.path().join("windows.json");
    std::fs::write(&input, Value::Array(samples).to_string()).unwrap();
    let (arm, x86) = infer_both(&demo_model(), &input, secs(120));
    let results = arm["results"].as_array().expect("results");
    assert_eq!(results.len(), 2 * cases.len() - 1, "windows of the golden stream: {arm}");
    assert_close(&arm, &x86, TOL, "vibration", &mut worst);
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(results[2 * i]["outputs"]["label"], case["label"], "aarch64 label of golden window {i}");
    }

    let cache = cache();
    let reference = read_json(&cache.join("reference/cls_reference.json"));
    let cls_cases = reference["cases"].as_array().expect("cases");
    let tensor = cache.join("reference").join(cls_cases[0]["input_file"].as_str().unwrap());
    let png = cls_cases
        .iter()
        .map(|c| cache.join("reference").join(c["input_file"].as_str().unwrap()))
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .expect("the reference has a PNG case");
    for input in [tensor, png] {
        let (arm, x86) = infer_both(&model("ppocr-cls"), &input, secs(300));
        assert_close(&arm, &x86, TOL, "ppocr-cls", &mut worst);
    }

    let wav = cache.join("audio/speech.wav");
    let (arm, x86) = infer_both(&model("silero-vad"), &wav, secs(300));
    let n = arm["results"].as_array().map_or(0, Vec::len);
    assert!(n > 100, "VAD gave {n} results for {}", wav.display());
    assert_close(&arm, &x86, TOL, "silero-vad", &mut worst);
    eprintln!("aarch64 vs x86_64: largest (relative past 1) difference {worst:e} over all outputs");
}

/// The README's demo, for a few seconds of simulated signal: results on stdout as JSON
/// lines with the fault labels the simulated pump produces.
#[test]
fn aarch64_runs_the_demo() {
    let config = root().join("configs/demo.toml");
    let mut cmd = qemu(&["run", "--config", config.to_str().unwrap(), "--log-format", "json"]);
    let child = Guard(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn qemu"));
    std::thread::sleep(Duration::from_secs(8));
    signal(&child.0, "TERM");
    let out = child_output(child, secs(60));
    let stdout = ok(&out, "run --config configs/demo.toml");
    let results = json_lines(stdout.as_bytes());
    assert!(results.len() >= 10, "the demo gave {} results in 8 s under qemu:\n{stdout}", results.len());
    for r in &results {
        assert_eq!(r["model"], "vibration", "{r}");
        assert_eq!(r["place"], "local", "{r}");
        let label = r["outputs"]["label"].as_str().unwrap_or_default();
        assert!(["normal", "imbalance", "impact"].contains(&label), "{r}");
    }
}

/// Waits for a child that was told to stop and collects its output.
fn child_output(mut child: Guard, limit: Duration) -> Output {
    let stdout = child.0.stdout.take().expect("stdout");
    let stderr = child.0.stderr.take().expect("stderr");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = wait_timeout(&mut child.0, limit).expect("the agent stops after SIGTERM");
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// The aarch64 agent joins the host's Mosquitto: retained online status, a reply to
/// `ping`, a result for a sensor message, and offline at shutdown.
#[test]
fn aarch64_mqtt_round_trip() {
    let dir = tempdir();
    let broker = Broker::start(BrokerOptions::default());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"arm1\"\nstate_dir = \"{state}\"\n\n[output]\nstdout = false\n\n\
             [[model]]\npath = \"{model}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
             username = \"agent\"\npassword = \"agent-pass\"\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n\n\
             [[mqtt.sensor]]\ntopic = \"sensors/+/accel\"\nmodel = \"vibration\"\nstream_level = 1\n",
            state = dir.path().join("state").display(),
            model = demo_model().display(),
            port = broker.port,
        ),
    )
    .unwrap();
    let status = broker.subscribe("test", "edge/arm1/status");
    let replies = broker.subscribe("test", "edge/arm1/cmd/+/reply");
    let results = broker.subscribe("test", "edge/arm1/results/#");
    let mut child = Guard(
        qemu(&["run", "--config", config.to_str().unwrap(), "--log-format", "json", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu"),
    );
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    read_into(child.0.stderr.take().expect("stderr"), log.clone());
    let diagnose = || log.lock().unwrap().clone();

    let (_, online) = status
        .wait_for("online status", secs(120), |t, p| t == "edge/arm1/status" && p.contains("\"online\""));
    let online: Value = serde_json::from_str(&online).expect("status json");
    assert_eq!(online["models"]["vibration"], "1", "{online}\n{}", diagnose());

    broker.publish("test", "edge/arm1/cmd/ping", br#"{"id":"arm-ping"}"#, 1, false);
    replies.wait_for("ping reply", secs(60), |t, p| {
        t == "edge/arm1/cmd/ping/reply" && p.contains("arm-ping") && p.contains("\"succeeded\"")
    });

    // Two 128-sample halves complete the first 256-sample window: one result.
    let golden = read_json(&demo_model().join("golden.json"));
    let window = golden["cases"][0]["input"].as_array().expect("window").clone();
    for (i, half) in window.chunks(window.len() / 2).enumerate() {
        let payload = serde_json::json!({ "id": i, "data": half }).to_string();
        broker.publish("test", "sensors/pump-1/accel", payload.as_bytes(), 1, false);
    }
    let (_, result) = results.wait_for("a result", secs(60), |t, _| t == "edge/arm1/results/vibration");
    let result: Value = serde_json::from_str(&result).expect("result json");
    assert_eq!(result["stream"], "pump-1", "{result}");
    assert_eq!(result["outputs"]["label"], golden["cases"][0]["label"], "{result}");

    let mark = status.messages().len();
    signal(&child.0, "TERM");
    let exit = wait_timeout(&mut child.0, secs(60)).expect("the agent stops after SIGTERM");
    assert!(exit.success(), "exit {exit:?}:\n{}", diagnose());
    status.wait_for_after("offline at shutdown", mark, secs(10), |_, p| p.contains("\"offline\""));
}
