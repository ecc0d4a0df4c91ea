use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

fn cls_daemon(api_extra: &str) -> Daemon {
    let body = format!("[engine]\nthreads = 2\n\n[[model]]\npath = \"{}\"\n", model("ppocr-cls").display());
    Daemon::start("serve", &body, api_extra, &[])
}

fn get(d: &Daemon, path: &str) -> (u16, Value) {
    let mut r = http().get(&d.url(path)).call().expect("request");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn post(d: &Daemon, path: &str, body: &[u8]) -> (u16, Value) {
    let mut r =
        http().post(&d.url(path)).header("content-type", "application/json").send(body).expect("request");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn case0() -> (Vec<f64>, Vec<f64>) {
    let cache = cache();
    let reference = read_json(&cache.join("reference/cls_reference.json"));
    let case = &reference["cases"][0];
    let input = floats(&read_json(&cache.join("reference").join(case["input_file"].as_str().unwrap())));
    (input, floats(&case["output"]))
}

#[test]
fn oip_metadata_health_and_readiness() {
    let d = cls_daemon("");
    let (s, v) = get(&d, "/v2");
    assert_eq!((s, v["name"].as_str()), (200, Some("edge-agent")), "{v}");
    assert_eq!(get(&d, "/v2/health/live").0, 200);
    assert_eq!(get(&d, "/v2/health/ready").0, 200);
    let (s, v) = get(&d, "/v2/models/ppocr-cls");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["versions"], json!(["2.0"]));
    assert_eq!(v["inputs"], json!([{"name": "x", "datatype": "FP32", "shape": [1, 3, 48, 192]}]));
    assert_eq!(v["outputs"][0]["name"], "save_infer_model/scale_0.tmp_1");
    assert_eq!(get(&d, "/v2/models/ppocr-cls/versions/2.0").0, 200);
    assert_eq!(get(&d, "/v2/models/ppocr-cls/ready").0, 200);
    assert_eq!(get(&d, "/v2/models/ppocr-cls/versions/2.0/ready").0, 200);
    let (s, v) = get(&d, "/v2/models/ppocr-cls/versions/9");
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("serving version `2.0`"), "{v}");
    let (s, v) = get(&d, "/v2/models/nope");
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("loaded: ppocr-cls"), "{v}");
    assert_eq!(get(&d, "/nothing/here").0, 404);
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn oip_infer_matches_onnxruntime() {
    let d = cls_daemon("");
    let (input, want) = case0();
    let out_name = "save_infer_model/scale_0.tmp_1";
    for path in ["/v2/models/ppocr-cls/infer", "/v2/models/ppocr-cls/versions/2.0/infer"] {
        let body = json!({
            "id": "req-7",
            "parameters": {"trace": true},
            "inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}],
            "outputs": [{"name": out_name}]
        });
        let (s, v) = post(&d, path, body.to_string().as_bytes());
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["id"], "req-7");
        assert_eq!(v["model_name"], "ppocr-cls");
        assert_eq!(v["model_version"], "2.0");
        assert_eq!(v["parameters"]["place"], "local");
        assert_eq!(v["outputs"][0]["datatype"], "FP32");
        assert_eq!(v["outputs"][0]["shape"], json!([1, 2]));
        let diff = max_abs_diff(&floats(&v["outputs"][0]["data"]), &want);
        assert!(diff <= 1e-4, "max abs diff {diff}");
        assert_eq!(v["parameters"]["result"]["label"], if want[1] > want[0] { "180" } else { "0" });
    }
    // Nested data is accepted too.
    let nested: Vec<Vec<Vec<f64>>> =
        input.chunks(48 * 192).map(|c| c.chunks(192).map(|r| r.to_vec()).collect()).collect();
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": [nested]}]});
    let (s, v) = post(&d, "/v2/models/ppocr-cls/infer", body.to_string().as_bytes());
    assert_eq!(s, 200, "{v}");
    assert!(max_abs_diff(&floats(&v["outputs"][0]["data"]), &want) <= 1e-4);
    assert!(v.get("id").is_none(), "no id given, none echoed");
}

#[test]
fn oip_bad_requests_get_clear_errors() {
    let d = cls_daemon("max_body_bytes = 700000");
    let (input, _) = case0();
    let infer = "/v2/models/ppocr-cls/infer";
    let tensor = |name: &str, shape: Value, datatype: &str, data: Value| {
        json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}).to_string()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"inputs\": [".into(), 400, "not a valid inference request"),
        ("[]".into(), 400, "not a valid inference request"),
        (tensor("x", json!([1, 3, 48, 100]), "FP32", json!(input)), 400, "has shape [1, 3, 48, 100] but the model takes [1, 3, 48, 192]"),
        (tensor("x", json!([1, 3, 48, 192]), "INT64", json!(input)), 400, "datatype INT64 but the model takes FP32"),
        (tensor("y", json!([1, 3, 48, 192]), "FP32", json!(input)), 400, "has no input `y`"),
        (tensor("x", json!([1, 3, 48, 192]), "FP32", json!([1.0, 2.0])), 400, "has 2 values"),
        (tensor("x", json!([1, 3, 48, 192]), "FP32", json!(["a"])), 400, "expected a number, a boolean, or an array of them"),
        (json!({"inputs": []}).to_string(), 400, "input `x` is missing"),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}], "outputs": [{"name": "nope"}]}).to_string(),
            400,
            "has no output `nope`",
        ),
    ];
    for (body, status, needle) in &cases {
        let (s, v) = post(&d, infer, body.as_bytes());
        assert_eq!(s, *status, "{needle}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(msg.contains(needle), "expected `{needle}` in `{msg}`");
    }
    let (s, v) = post(&d, "/v2/models/nope/infer", tensor("x", json!([1]), "FP32", json!([1])).as_bytes());
    assert_eq!(s, 404, "{v}");
    // Oversized body: refused with 413, and the daemon goes on serving.
    let big = format!(
        "{{\"inputs\": [{{\"name\": \"x\", \"shape\": [1], \"datatype\": \"FP32\", \"data\": [{}]}}]}}",
        "0.5,".repeat(250_000) + "0.5"
    );
    let (s, v) = post(&d, infer, big.as_bytes());
    assert_eq!(s, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("exceeds 700000 bytes"), "{v}");
    let (s, _) = post(&d, infer, tensor("x", json!([1, 3, 48, 192]), "FP32", json!(input)).as_bytes());
    assert_eq!(s, 200, "still serving after bad requests");
}

/// Clients that send their headers or body byte by byte are cut off after the timeouts,
/// and never delay other clients.
#[test]
fn slow_clients_do_not_stall_others() {
    let d = cls_daemon("header_timeout_ms = 1000\nbody_timeout_ms = 1000");
    let (input, _) = case0();
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}]})
            .to_string();
    // Twenty connections that trickle their headers.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
            s.write_all(b"GET /v2 HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // One that sends its headers but trickles a body.
    let mut slow_body = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    slow_body
        .write_all(b"POST /v2/models/ppocr-cls/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        .unwrap();
    // Meanwhile, ordinary clients are served.
    let started = Instant::now();
    for _ in 0..10 {
        let (s, _) = post(&d, "/v2/models/ppocr-cls/infer", body.as_bytes());
        assert_eq!(s, 200);
    }
    let normal = started.elapsed();
    for s in slow.iter_mut() {
        let _ = s.write_all(b"X-Slow: 1\r\n"); // keeps trickling
    }
    std::thread::sleep(Duration::from_millis(1500));
    // The header-trickling connections have been closed by the server.
    let mut closed = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => closed += 1,
            Ok(n) => {
                // hyper may answer 408 before closing.
                if String::from_utf8_lossy(&buf[..n]).contains("408") {
                    closed += 1;
                }
            }
        }
    }
    assert_eq!(closed, 20, "slow header connections are cut off");
    slow_body.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = slow_body.read_to_string(&mut answer);
    assert!(answer.contains("408"), "a trickled body gets 408: {answer}");
    assert!(normal < Duration::from_secs(20), "ordinary requests took {normal:?}");
}

/// Beyond max_concurrency requests in flight, the API answers 503 at once.
#[test]
fn overload_answers_503_at_once() {
    let d = cls_daemon("max_concurrency = 1");
    let (input, _) = case0();
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}]})
            .to_string();
    let url = d.url("/v2/models/ppocr-cls/infer");
    let outcomes: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (url, body) = (url.clone(), body.clone());
                s.spawn(move || {
                    let agent = http();
                    (0..15)
                        .map(|_| {
                            let mut r = agent
                                .post(&url)
                                .header("content-type", "application/json")
                                .send(body.as_bytes())
                                .unwrap();
                            (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let ok = outcomes.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok + busy.len(), outcomes.len(), "only 200 and 503: {outcomes:?}");
    assert!(ok > 0 && !busy.is_empty(), "ok {ok}, 503 {}", busy.len());
    assert!(busy[0].1.contains("too many requests in flight"), "{}", busy[0].1);
    let (_, status) = get(&d, "/status");
    assert_eq!(status["api"]["overloaded"].as_u64(), Some(busy.len() as u64));
}

#[test]
fn status_metrics_and_the_status_command() {
    let d = cls_daemon("");
    let (input, _) = case0();
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}]})
            .to_string();
    for _ in 0..5 {
        assert_eq!(post(&d, "/v2/models/ppocr-cls/infer", body.as_bytes()).0, 200);
    }
    let bad = json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": [1.0]}]})
        .to_string();
    assert_eq!(post(&d, "/v2/models/ppocr-cls/infer", bad.as_bytes()).0, 400);

    let (s, v) = get(&d, "/status");
    assert_eq!(s, 200);
    assert_eq!(v["ready"], true);
    assert_eq!(v["device"], "it");
    assert_eq!(v["models"]["ppocr-cls"]["version"], "2.0");
    assert_eq!(v["models"]["ppocr-cls"]["ok"], 5);
    assert!(v["models"]["ppocr-cls"]["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["engine"]["threads"], 2);
    assert!(v["connections"]["api_tcp"].as_str().unwrap().contains(&d.port.to_string()));
    assert!(v["connections"]["api_unix"].as_str().unwrap().contains("api.sock"));
    assert!(v["memory"]["rss"].as_u64().unwrap() > 0);

    let mut r = http().get(&d.url("/metrics")).call().unwrap();
    assert!(r.headers().get("content-type").unwrap().to_str().unwrap().starts_with("text/plain"));
    let text = r.body_mut().read_to_string().unwrap();
    for needle in [
        "edge_agent_requests_total{model=\"ppocr-cls\",outcome=\"ok\",place=\"local\"} 5",
        "# TYPE edge_agent_request_duration_seconds histogram",
        "edge_agent_request_duration_seconds_bucket{model=\"ppocr-cls\",le=\"+Inf\"} 5",
        "edge_agent_request_duration_seconds_count{model=\"ppocr-cls\"} 5",
        "edge_agent_queue_depth 0",
        "edge_agent_resident_memory_bytes ",
        "edge_agent_cpu_seconds_total ",
        "edge_agent_ready 1",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }

    // The CLI over the unix socket.
    let out = run(&["status", "--socket", d.socket.to_str().unwrap()], secs(20));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ready") && text.contains("ppocr-cls") && text.contains("ok 5"), "{text}");
    let out = run(&["status", "--config", d.config.to_str().unwrap(), "--json"], secs(20));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"]["ppocr-cls"]["ok"], 5);

    let socket = d.socket.clone();
    let (status, _) = d.stop();
    assert!(status.success());
    assert!(!socket.exists(), "the socket is removed on shutdown");
    let out = run(&["status", "--socket", socket.to_str().unwrap()], secs(20));
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("edge-agent is not running"), "{}", stderr(&out));
}

/// A daemon that takes the connection and drops it unanswered is not "not running": the
/// request may have been acted on, so the CLI says the connection broke and exits 1, for
/// the read-only `status` and for `model rollback` alike.
#[test]
fn a_connection_dropped_before_the_answer_is_not_called_not_running() {
    let dir = tempdir();
    let socket = dir.path().join("api.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (conn, _) = listener.accept().unwrap();
            // Closing with the request unread resets the connection (ECONNRESET).
            std::thread::sleep(Duration::from_millis(200));
            drop(conn);
        }
    });
    let sock = socket.to_str().unwrap();
    for args in [vec!["status", "--socket", sock], vec!["model", "rollback", "--socket", sock, "--json"]] {
        let out = run(&args, secs(20));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("the connection broke before its answer"), "{args:?}: {err}");
        assert!(!err.contains("not running"), "{args:?}: {err}");
    }
    server.join().unwrap();
}

#[test]
fn doctor_reports_each_check() {
    let dir = tempdir();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[agent]\nstate_dir = \"{}\"\n[[model]]\npath = \"{}\"\n[api]\nlisten = \"127.0.0.1:{}\"\n",
            dir.path().join("state").display(),
            demo_model().display(),
            free_port()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let out = run(&["doctor", "--config", good.to_str().unwrap()], secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for needle in
        ["ok    config", "ok    state", "ok    model", "vibration 1 loads", "ok    clock", "ok    api"]
    {
        assert!(text.contains(needle), "missing `{needle}`:\n{text}");
    }
    let out = run(&["doctor", "--config", good.to_str().unwrap(), "--json"], secs(60));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "ok");

    // A state "directory" that is a file, and a model that does not load.
    let broken_model = dir.path().join("broken");
    copy_model(&demo_model(), &broken_model);
    std::fs::write(broken_model.join("model.onnx"), b"junk").unwrap();
    std::fs::write(dir.path().join("statefile"), b"").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[agent]\nstate_dir = \"{}\"\n[[model]]\npath = \"{}\"\n",
            dir.path().join("statefile").display(),
            broken_model.display()
        ),
    )
    .unwrap();
    let out = run(&["doctor", "--config", bad.to_str().unwrap()], secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("FAIL  state") && text.contains("is not a directory"), "{text}");
    assert!(text.contains("FAIL  model") && text.contains("not a usable ONNX model"), "{text}");

    let out = run(&["doctor", "--config", "/nonexistent.toml"], secs(20));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL  config"));
}

/// NVIDIA's tritonclient (HTTP), a real OIP v2 client that no one here wrote, works
/// against the API unchanged: readiness, metadata and inference on the image classifier.
#[test]
fn tritonclient_works_unchanged() {
    let d = cls_daemon("");
    let cache = cache();
    let reference = read_json(&cache.join("reference/cls_reference.json"));
    let case = &reference["cases"][0];
    let python = cache.join("venv/bin/python");
    let out = run_with(
        std::process::Command::new(&python).args([
            root().join("tests/fixtures/oip_client.py").to_str().unwrap(),
            &format!("127.0.0.1:{}", d.port),
            "ppocr-cls",
            cache.join("reference").join(case["input_file"].as_str().unwrap()).to_str().unwrap(),
        ]),
        None,
        secs(120),
    );
    assert!(out.status.success(), "tritonclient failed: {}", stderr(&out));
    let seen: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(seen["live"], true);
    assert_eq!(seen["ready"], true);
    assert_eq!(seen["model_ready"], true);
    assert_eq!(seen["server"]["name"], "edge-agent");
    assert_eq!(seen["metadata"]["inputs"][0]["shape"], json!([1, 3, 48, 192]));
    assert_eq!(seen["response"]["id"], "triton-1");
    let diff = max_abs_diff(&floats(&seen["output"]), &floats(&case["output"]));
    assert!(diff <= 1e-4, "max abs diff {diff}");
    assert!(seen["missing_model_error"].as_str().unwrap_or("").contains("not loaded"), "{seen}");
}
