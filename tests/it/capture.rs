//! Capture (`[capture]`, `edge-agent samples`, `samples/upload`): the store's bounds under
//! a flood, exports read by numpy and re-run through `infer`, uploads that resume.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::upload_server::upload_server;
use crate::common::*;

/// A config that replays `seconds` of the simulated sensor as fast as the model takes it,
/// with `capture` as the `[capture]` table's body.
fn config(dir: &Path, seconds: u32, capture: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    let text = format!(
        "[agent]\ndevice_id = \"it\"\nstate_dir = \"{state}\"\n\n[output]\nstdout = false\n\n\
         [[model]]\npath = \"{model}\"\n\n[[source]]\nkind = \"simulated\"\nmodel = \"vibration\"\n\
         speed = 0.0\nduration_s = {seconds}.0\n\n[capture]\nenabled = true\nmin_free_mb = 0\n{capture}\n",
        state = dir.join("state").display(),
        model = demo_model().display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the daemon until its source ends; returns its log.
fn run_to_end(config: &Path) -> String {
    let out = run(&["run", "--config", config.to_str().unwrap(), "--log-format", "json"], secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

/// The sample files of a state directory: (name, bytes).
fn sample_files(state: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(state.join("capture"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cap"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    out.sort();
    out
}

/// `samples list --json` of a config's store.
fn list(config: &Path) -> Vec<Value> {
    let out = run(&["samples", "list", "--config", config.to_str().unwrap(), "--json"], secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&out.stdout)
}

/// What the daemon's last capture log line says: kept, over_rate, queue_full, disk_tight.
fn counters(log: &str) -> [u64; 4] {
    let line = json_lines(log.as_bytes())
        .into_iter()
        .rfind(|l| l["message"] == "capture: samples kept and refused in this run")
        .unwrap_or_else(|| panic!("no capture summary in the log: {log}"));
    ["kept", "over_rate", "queue_full", "disk_tight"].map(|k| line[k].as_u64().unwrap())
}

/// Every window of a 60 s replay (467 windows, replayed as fast as the model answers) is
/// low confidence. The writer syncs each file, so it cannot keep up: the samples it
/// has no room for in its queue are dropped and counted, and inference never waits.
/// The byte bound holds, the oldest going first; then the hourly count holds.
#[test]
fn a_flood_of_low_confidence_inputs_keeps_the_byte_and_rate_bounds() {
    let dir = tempdir();
    let cfg = config(dir.path(), 60, "low_confidence = 1.01\nmax_kb = 16\nmax_per_hour = 100000");
    let [kept, over_rate, queue_full, disk_tight] = counters(&run_to_end(&cfg));
    assert_eq!(kept + queue_full, 467, "each window kept or counted as dropped");
    assert_eq!((over_rate, disk_tight), (0, 0));
    let files = sample_files(&dir.path().join("state"));
    let total: u64 = files.iter().map(|(_, b)| b).sum();
    assert!(total <= 16 * 1024, "{total} bytes on disk, over max_kb = 16");
    assert!(files.len() >= 5, "{} samples kept in 16 KiB", files.len());
    assert!((files.len() as u64) < kept, "{kept} written, {} left: the oldest went", files.len());
    // The ones left are the newest written: numbered kept - n .. kept.
    let numbers: Vec<u64> = files.iter().map(|(n, _)| n.trim_end_matches(".cap").parse().unwrap()).collect();
    assert_eq!(numbers, (kept - files.len() as u64..kept).collect::<Vec<_>>());
    let listed = list(&cfg);
    assert_eq!(listed.len(), files.len());
    assert!(listed.iter().all(|s| s["reason"] == "low-confidence" && s["model"] == "vibration"));
    let windows: Vec<u64> = listed.iter().map(|s| s["window"].as_u64().unwrap()).collect();
    assert!(windows.windows(2).all(|w| w[0] < w[1]) && windows[0] > 0, "{windows:?}");

    // The same flood with room for everything but 50 an hour: no more than 50 are
    // offered to the writer; the rest are counted once, then not even copied.
    let dir = tempdir();
    let cfg = config(dir.path(), 60, "low_confidence = 1.01\nmax_per_hour = 50");
    let [kept, over_rate, queue_full, _] = counters(&run_to_end(&cfg));
    assert_eq!(kept + queue_full, 50);
    assert_eq!(over_rate, 1, "the stream task stops copying once the hour's budget is spent");
    assert_eq!(sample_files(&dir.path().join("state")).len() as u64, kept);
}

/// The Python script of docs/monitoring.md ("## Capture"), as it is written there.
fn doc_script() -> String {
    let doc = std::fs::read_to_string(root().join("docs/monitoring.md")).unwrap();
    let capture = &doc[doc.find("## Capture").expect("a Capture section")..];
    let start = capture.find("```python\n").expect("a python block") + "```python\n".len();
    let end = start + capture[start..].find("```").unwrap();
    capture[start..end].to_string()
}

/// An export is read by the documented numpy script, and each exported window run
/// through `edge-agent infer` gives the outputs the daemon recorded.
#[test]
fn exported_samples_are_read_by_numpy_and_rerun_through_infer_to_the_recorded_outputs() {
    let dir = tempdir();
    let cfg = config(dir.path(), 6, "low_confidence = 1.01\nmax_per_hour = 6");
    run_to_end(&cfg);
    let out_dir = dir.path().join("export");
    let out = run(
        &["samples", "export", "--config", cfg.to_str().unwrap(), "--out", out_dir.to_str().unwrap()],
        secs(30),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("6 sample(s)"), "{}", stderr(&out));
    let index: Vec<Value> = json_lines(&std::fs::read(out_dir.join("index.jsonl")).unwrap());
    assert_eq!(index.len(), 6);

    // The documented script, run as it is, and its `load` imported to read the values.
    let script = dir.path().join("read_samples.py");
    std::fs::write(&script, doc_script()).unwrap();
    let python = cache().join("venv/bin/python");
    let shown = Command::new(&python).arg(&script).arg(&out_dir).output().expect("run python");
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("vibration (6, 1, 256)"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("(1, 256) float32")).count(), 6, "{text}");
    let dump = Command::new(&python)
        .current_dir(dir.path())
        .args(["-c", "import json, sys, read_samples as r\nprint(json.dumps([[m['id'], list(w.shape), w.astype(float).ravel().tolist()] for m, w, p in r.load(sys.argv[1])]))"])
        .arg(&out_dir)
        .output()
        .expect("run python");
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let read: Vec<Value> = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(read.len(), 6);

    for (meta, seen) in index.iter().zip(&read) {
        assert_eq!(meta["id"], seen[0]);
        assert_eq!(seen[1], serde_json::json!([1, 256]));
        let npy = out_dir.join(meta["input"].as_str().unwrap());
        let out = run(
            &["infer", "--model", demo_model().to_str().unwrap(), "--input", npy.to_str().unwrap(), "--json"],
            secs(60),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "a .npy is one model input, not windowed again");
        let again = &results[0]["outputs"];
        let recorded = &meta["outputs"];
        assert_eq!(again["label"], recorded["label"], "{again} vs {recorded}");
        let (a, r) = (again["score"].as_f64().unwrap(), recorded["score"].as_f64().unwrap());
        assert!((a - r).abs() <= 1e-6, "score {a} vs recorded {r}");
        assert_eq!(meta["score"].as_f64(), recorded["score"].as_f64());
        // numpy read the values the daemon kept (the store's file, read by the agent).
        let stored =
            std::fs::read(dir.path().join(format!("state/capture/{:016}.cap", meta["id"].as_u64().unwrap())));
        let stored = edge_agent::capture::store::Sample::decode(&stored.unwrap()).unwrap();
        let numpy: Vec<f32> =
            seen[2].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(numpy, stored.input);
    }
}

/// `samples` refuses a missing store location and a non-empty export directory, plainly.
#[test]
fn samples_commands_refuse_bad_locations() {
    let dir = tempdir();
    let out = run(&["samples", "list", "--state-dir", dir.path().join("nope").to_str().unwrap()], secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    std::fs::write(dir.path().join("x"), b"").unwrap();
    let out = run(
        &[
            "samples",
            "export",
            "--state-dir",
            dir.path().to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ],
        secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not an empty directory"), "{}", stderr(&out));
    // An empty store lists nothing, and says so.
    let out = run(&["samples", "list", "--state-dir", dir.path().to_str().unwrap(), "--json"], secs(10));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("0 sample(s)"), "{}", stderr(&out));
}

/// `infer` takes a `.npy` only in a size the model takes, and float32 only.
#[test]
fn infer_refuses_a_npy_it_cannot_run() {
    let dir = tempdir();
    let small = dir.path().join("small.npy");
    std::fs::write(&small, edge_agent::capture::npy::write_f32(&[3], &[0.0, 1.0, 2.0])).unwrap();
    let out = run(
        &["infer", "--model", demo_model().to_str().unwrap(), "--input", small.to_str().unwrap()],
        secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("shape [3]") && stderr(&out).contains("vibration"), "{}", stderr(&out));
    let mut f64 = edge_agent::capture::npy::write_f32(&[1, 256], &[0.0; 256]);
    let at = f64.windows(3).position(|w| w == b"<f4").unwrap();
    f64[at + 2] = b'8';
    let wrong = dir.path().join("f64.npy");
    std::fs::write(&wrong, f64).unwrap();
    let out = run(
        &["infer", "--model", demo_model().to_str().unwrap(), "--input", wrong.to_str().unwrap()],
        secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("float32"), "{}", stderr(&out));
}

/// Every reply to the command `id`, in order, once its final one came.
fn replies_to(replies: &crate::common::broker::Subscription, id: &str) -> Vec<Value> {
    crate::common::upload_server::replies_to(replies, "samples/upload", id)
}

/// `samples/upload` over a real broker to a server that cuts the connection twice: the
/// upload resumes from what the server kept, completes, and the reply's size and
/// SHA-256 are those of the bytes the server holds, a tar of the export format. Bad
/// arguments are refused before anything starts; an expired URL fails plainly.
#[test]
fn samples_upload_resumes_after_two_cuts_and_completes_with_the_right_digest() {
    use crate::common::mqtt_agent::MqttSetup;
    use edge_agent::capture::store::{Limits, Store};

    let setup = MqttSetup::new().extra("[capture]\nenabled = true\nlow_confidence = 0.5\nmin_free_mb = 0\n");
    // 300 samples of 4096 values (about 5 MB) already in the store.
    let store_dir = setup.dir().join("state/capture");
    let mut store = Store::open(&store_dir, Limits { max_bytes: 1 << 30, min_free_bytes: 0 }).unwrap();
    for i in 0..300u64 {
        let sample = edge_agent::capture::Sample {
            meta: serde_json::from_value(serde_json::json!({
                "model": "flat", "version": "1", "stream": "s1", "time_ms": 1_000 + i, "reason": "low-confidence",
                "score": 0.4, "window": i, "shape": [1, 4096], "place": "local", "outputs": {"label": "normal"}
            }))
            .unwrap(),
            input: (0..4096).map(|v| (v as f32 + i as f32).sin()).collect(),
            payload: None,
        };
        store.put(&sample).unwrap();
    }
    drop(store);
    // A crashed upload's archive, which the next upload clears away.
    std::fs::create_dir_all(setup.dir().join("state/uploads")).unwrap();
    std::fs::write(setup.dir().join("state/uploads/samples-old.tar"), b"left over").unwrap();
    let crate::common::mqtt_agent::Running { broker, subs: [replies], agent, dir: _dir, .. } =
        setup.start(["edge/dev1/cmd/#"]);
    let (port, server) = upload_server(2, None);

    // Refused before `accepted`: no URL, a scheme that is not http(s), an unknown key.
    for (id, args, why) in [
        ("u-1", r#"{}"#, "needs `args.url`"),
        ("u-2", r#"{"url":"ftp://127.0.0.1/x?sig=secret"}"#, "the scheme is ftp"),
        (
            "u-3",
            r#"{"url":"http://127.0.0.1/x","bucket":"b"}"#,
            "`args.bucket` is not an argument of samples/upload",
        ),
        ("u-4", r#"{"url":"http://127.0.0.1/x","model":"../etc"}"#, "not a model name"),
    ] {
        broker.publish(
            "test",
            "edge/dev1/cmd/samples/upload",
            format!(r#"{{"id":"{id}","args":{args}}}"#).as_bytes(),
            1,
            false,
        );
        let all = replies_to(&replies, id);
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0]["state"], "rejected", "{all:?}");
        let error = all[0]["error"].as_str().unwrap();
        assert!(error.contains(why) && !error.contains("secret"), "{id}: {error}");
    }

    let url = format!("http://127.0.0.1:{port}/ok?X-Signature=secret");
    let request = serde_json::json!({"id": "u-5", "args": {"url": url}}).to_string();
    broker.publish("test", "edge/dev1/cmd/samples/upload", request.as_bytes(), 1, false);
    let all = replies_to(&replies, "u-5");
    let states: Vec<&str> = all.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states.first(), Some(&"accepted"), "{all:?}");
    assert!(states.iter().filter(|s| **s == "running").count() >= 2, "progress replies: {all:?}");
    let last = all.last().unwrap();
    assert_eq!(last["state"], "succeeded", "{last}");
    let result = &last["result"];
    let got = server.lock().unwrap();
    assert!(got.complete);
    assert_eq!(got.cuts_left, 0, "both cuts happened");
    assert_eq!(result["bytes"].as_u64(), Some(got.bytes.len() as u64));
    let digest = ring::digest::digest(&ring::digest::SHA256, &got.bytes);
    assert_eq!(result["sha256"].as_str(), Some(hex::encode(digest).as_str()));
    assert_eq!(result["samples"], 300);
    assert!(result["resumed"].as_u64().unwrap() >= 2, "{result}");
    assert_eq!(result["url"], format!("http://127.0.0.1:{port}/ok"), "the signature is not echoed");
    // Each send after a cut started where the server's kept bytes ended (the server
    // asserts it), after asking with `bytes */total`.
    let total = got.bytes.len();
    let asks = got.ranges.iter().filter(|r| **r == format!("bytes */{total}")).count();
    assert!(asks >= 3, "{:?}", got.ranges);
    assert_eq!(got.ranges.iter().filter(|r| r.starts_with("bytes 0-")).count(), 1, "{:?}", got.ranges);
    // What arrived is the export format: a tar with index.jsonl and 300 .npy files.
    let mut names = Vec::new();
    let mut index = String::new();
    for entry in tar::Archive::new(&got.bytes[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == "samples/index.jsonl" {
            std::io::Read::read_to_string(&mut entry, &mut index).unwrap();
        }
        names.push(name);
    }
    assert_eq!(names.iter().filter(|n| n.ends_with(".npy")).count(), 300);
    assert_eq!(index.lines().count(), 300);
    drop(got);
    assert!(!agent_dir_has_archives(&_dir), "the archive is removed after the upload");

    // An expired URL: a plain failure naming the status, the signature left out.
    let url = format!("http://127.0.0.1:{port}/expired?X-Signature=secret");
    let request = serde_json::json!({"id": "u-6", "args": {"url": url}}).to_string();
    broker.publish("test", "edge/dev1/cmd/samples/upload", request.as_bytes(), 1, false);
    let last = replies_to(&replies, "u-6").pop().unwrap();
    assert_eq!(last["state"], "failed", "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("403") && !error.contains("secret"), "{error}");
    agent.stop();
}

/// Whether an upload archive was left in the state directory.
fn agent_dir_has_archives(dir: &tempfile::TempDir) -> bool {
    std::fs::read_dir(dir.path().join("state/uploads"))
        .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().ends_with(".tar")))
        .unwrap_or(false)
}

/// A TLS server config for 127.0.0.1 from `make_certificates`'s files in `dir`.
fn tls_server(dir: &Path) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    crate::common::broker::make_certificates(dir);
    let certs = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    std::sync::Arc::new(config)
}

/// Over https the uploader trusts the CA of `capture.ca_file` (and resumes there too); a
/// server whose certificate another CA signed is refused at once, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_https_trust_the_capture_ca_file_only() {
    use edge_agent::upload::{Limits, Uploader, parse_url};
    let dir = tempdir();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    let (port, server) = upload_server(1, Some(tls_server(&ours)));
    let file = dir.path().join("archive.tar");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let url = parse_url(&format!("https://127.0.0.1:{port}/ok?sig=secret")).unwrap();
    let limits = Limits { backoff: std::time::Duration::from_millis(50), ..Limits::default() };

    let (tx, rx) = tokio::sync::watch::channel(0);
    let done = Uploader::new(&url, Some(&ours.join("ca.crt")), limits)
        .unwrap()
        .put_file(&url, &file, &tx)
        .await
        .unwrap();
    assert_eq!((done.bytes, done.resumed), (data.len() as u64, 1));
    assert_eq!(*rx.borrow(), data.len() as u64, "progress ends at the whole file");
    assert_eq!(server.lock().unwrap().bytes, data);

    // Another CA, whose certificate the server's was not signed by.
    drop(tls_server(&theirs));
    let err = Uploader::new(&url, Some(&theirs.join("ca.crt")), limits)
        .unwrap()
        .put_file(&url, &file, &tx)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, edge_agent::upload::UploadError::Tls { .. }), "{text}");
    assert!(text.contains("capture.ca_file") && !text.contains("secret"), "{text}");
}
