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
        assert_eq!(v["edge_agent"]["result"]["label"], if want[1] > want[0] { "180" } else { "0" });
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
        ("[]".into(), 400, "must be a JSON object"),
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

/// Runs tests/fixtures/oip_client.py (NVIDIA's tritonclient) against a daemon in `mode`
/// (`defaults` or `json`), with the reference image as a BYTES input too.
fn tritonclient(d: &Daemon, mode: &str) -> Value {
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
            mode,
            cache.join("reference/cls_image.png").to_str().unwrap(),
        ]),
        None,
        secs(120),
    );
    assert!(out.status.success(), "tritonclient ({mode}) failed: {}", stderr(&out));
    let seen: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(seen["live"], true);
    assert_eq!(seen["ready"], true);
    assert_eq!(seen["model_ready"], true);
    assert_eq!(seen["server"]["name"], "edge-agent");
    assert_eq!(seen["metadata"]["inputs"][0]["shape"], json!([1, 3, 48, 192]));
    assert_eq!(seen["response"]["id"], "triton-1");
    let diff = max_abs_diff(&floats(&seen["output"]), &floats(&case["output"]));
    assert!(diff <= 1e-4, "{mode}: max abs diff {diff}");
    assert_eq!(seen["output_all"], seen["output"], "{mode}: the same answer with no outputs named");
    assert!(seen["missing_model_error"].as_str().unwrap_or("").contains("not loaded"), "{seen}");
    seen
}

/// NVIDIA's tritonclient (HTTP), a real OIP v2 client that no one here wrote, works
/// against the API with all its defaults, which use the binary tensor extension both
/// ways (before it, the API answered 400 "missing field `data`"); its answers are
/// those of the JSON path, to the bit, and an encoded image sent as a BYTES input gives
/// onnxruntime's answer on that image.
#[test]
fn tritonclient_works_with_its_defaults() {
    let d = cls_daemon("");
    let binary = tritonclient(&d, "defaults");
    assert_eq!(binary["binary_sizes"], json!([8]), "outputs came back as binary: {binary}");
    assert_eq!(binary["binary_sizes_all"], json!([8]), "binary_data_output: {binary}");
    let plain = tritonclient(&d, "json");
    assert_eq!(plain["binary_sizes"], json!([null]), "JSON mode gets JSON data: {plain}");
    assert_eq!(binary["output"], plain["output"], "binary and JSON answers differ");
    let reference = read_json(&cache().join("reference/cls_reference.json"));
    let image_case = &reference["cases"][3];
    assert_eq!(image_case["input_file"], "cls_image.png");
    let diff = max_abs_diff(&floats(&binary["image_output"]), &floats(&image_case["output"]));
    assert!(diff <= 1e-4, "BYTES image: max abs diff {diff}");
    // Parameters hold scalars only, as the protocol says; tritonclient parsed them.
    for (k, v) in binary["response"]["parameters"].as_object().unwrap() {
        assert!(v.is_string() || v.is_number() || v.is_boolean(), "parameter {k} is {v}");
    }
}

/// A request with binary tensors: a JSON header, then the tensors' raw bytes.
fn binary_body(header: &Value, tensors: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).unwrap();
    let len = body.len();
    tensors.iter().for_each(|t| body.extend_from_slice(t));
    (body, len)
}

/// Posts a body with an `Inference-Header-Content-Length` header; returns the status,
/// the response's header length (if any) and the raw response body.
fn post_binary(d: &Daemon, body: &[u8], header_length: &str) -> (u16, Option<usize>, Vec<u8>) {
    let mut r = http()
        .post(&d.url("/v2/models/ppocr-cls/infer"))
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header_length)
        .send(body)
        .expect("request");
    let len = r
        .headers()
        .get("inference-header-content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().expect("a length"));
    (r.status().as_u16(), len, r.body_mut().read_to_vec().expect("body"))
}

fn input_header(size: usize, extra: Value) -> Value {
    let mut v = json!({
        "inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32",
                    "parameters": {"binary_data_size": size}}],
        "outputs": [{"name": "save_infer_model/scale_0.tmp_1", "parameters": {"binary_data": true}}],
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

/// The binary extension by hand: the answer's header and binary output agree with the
/// JSON path; malformed binary bodies get a 400 that says what is wrong, never a
/// panic, and the daemon keeps serving.
#[test]
fn binary_tensors_both_ways_and_malformed_binary_bodies() {
    let d = cls_daemon("");
    let (input, want) = case0();
    let raw: Vec<u8> = input.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
    let (body, len) = binary_body(&input_header(raw.len(), json!({"id": "b1"})), &[&raw]);
    let (s, header_len, answer) = post_binary(&d, &body, &len.to_string());
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&answer));
    let header_len = header_len.expect("Inference-Header-Content-Length on the answer");
    let header: Value = serde_json::from_slice(&answer[..header_len]).expect("JSON header");
    assert_eq!(header["id"], "b1");
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8, "{header}");
    assert!(header["outputs"][0].get("data").is_none(), "{header}");
    let got: Vec<f64> = answer[header_len..]
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
        .collect();
    assert_eq!(answer.len(), header_len + 8);
    let json_body =
        json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}]});
    let (s, v) = post(&d, "/v2/models/ppocr-cls/infer", json_body.to_string().as_bytes());
    assert_eq!(s, 200, "{v}");
    // Compared as the f32 they are: serde_json reads a decimal to within one f64 ulp.
    let as_f32 = |xs: &[f64]| xs.iter().map(|x| *x as f32).collect::<Vec<f32>>();
    assert_eq!(as_f32(&got), as_f32(&floats(&v["outputs"][0]["data"])), "binary and JSON answers differ");
    assert!(max_abs_diff(&got, &want) <= 1e-4);

    let n = raw.len();
    let mut bytes_input = 3u32.to_le_bytes().to_vec();
    bytes_input.extend_from_slice(b"abc");
    let cases: Vec<(Vec<u8>, String, &str)> = vec![
        // The sizes say less than the body holds.
        {
            let (mut b, l) = binary_body(&input_header(n, json!({})), &[&raw]);
            b.extend_from_slice(b"tail");
            (
                b,
                l.to_string(),
                "the body has 110596 bytes after the JSON header but the inputs' binary_data_size add up to 110592",
            )
        },
        // The body is cut short: the tensor runs past its end.
        {
            let (b, l) = binary_body(&input_header(n, json!({})), &[&raw[..n - 5]]);
            (b, l.to_string(), "runs past the end of the body")
        },
        // The header length points past the end of the body.
        {
            let (b, _) = binary_body(&input_header(n, json!({})), &[&raw]);
            let past = b.len() + 10;
            (b, past.to_string(), "but the body has only")
        },
        // A header length that is no number.
        {
            let (b, _) = binary_body(&input_header(n, json!({})), &[&raw]);
            (b, "12abc".into(), "must be the length in bytes of the JSON header")
        },
        // A header length inside the JSON header: the header is cut.
        {
            let (b, l) = binary_body(&input_header(n, json!({})), &[&raw]);
            (b, (l - 3).to_string(), "not a valid inference request")
        },
        // A size that is not what the shape and datatype need.
        {
            let (b, l) = binary_body(&input_header(n - 4, json!({})), &[&raw[..n - 4]]);
            (
                b,
                l.to_string(),
                "binary_data_size is 110588 but shape [1, 3, 48, 192] of FP32 needs 110592 bytes",
            )
        },
        // BYTES elements whose length prefix runs past the data.
        {
            let header = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                            "parameters": {"binary_data_size": 6}}]});
            let (b, l) = binary_body(&header, &[&bytes_input[..6]]);
            (b, l.to_string(), "says it has 3 bytes but only 2 remain")
        },
        // A BYTES payload the model's pre-processing cannot decode.
        {
            let header = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                            "parameters": {"binary_data_size": 7}}]});
            let (b, l) = binary_body(&header, &[&bytes_input]);
            (b, l.to_string(), "decoded as the model's pre.format `image`")
        },
    ];
    for (body, header_length, needle) in &cases {
        let (s, _, answer) = post_binary(&d, body, header_length);
        let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        assert_eq!(s, 400, "{needle}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(msg.contains(needle), "expected `{needle}` in `{msg}`");
    }
    let (s, _, _) = post_binary(&d, &body, &len.to_string());
    assert_eq!(s, 200, "still serving after malformed binary bodies");
}

/// A BYTES input carries an encoded image that the model's spec decodes on the device,
/// as MQTT payloads are: base64 in JSON, or raw in binary form.
#[test]
fn bytes_inputs_carry_an_encoded_image() {
    use base64::Engine as _;
    let d = cls_daemon("");
    let reference = read_json(&cache().join("reference/cls_reference.json"));
    let want = floats(&reference["cases"][3]["output"]);
    let png = std::fs::read(cache().join("reference/cls_image.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let body = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                  "parameters": {"content_type": "base64"}, "data": [b64]}]});
    let (s, v) = post(&d, "/v2/models/ppocr-cls/infer", body.to_string().as_bytes());
    assert_eq!(s, 200, "{v}");
    let diff = max_abs_diff(&floats(&v["outputs"][0]["data"]), &want);
    assert!(diff <= 1e-4, "base64 image: max abs diff {diff}");
    let mut element = (png.len() as u32).to_le_bytes().to_vec();
    element.extend_from_slice(&png);
    let header = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": element.len()}}]});
    let (b, l) = binary_body(&header, &[&element]);
    let (s, header_len, answer) = post_binary(&d, &b, &l.to_string());
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&answer));
    assert!(header_len.is_none(), "no binary output was asked for");
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert!(max_abs_diff(&floats(&v["outputs"][0]["data"]), &want) <= 1e-4);
    // Two payloads, and a payload that is not base64.
    for (body, needle) in [
        (
            json!({"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}),
            "send one payload",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"}, "data": ["@@"]}]}),
            "is not",
        ),
    ] {
        let (s, v) = post(&d, "/v2/models/ppocr-cls/infer", body.to_string().as_bytes());
        assert_eq!(s, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{v}");
    }
}

/// Requests the CLI and MQTT refuse are refused by the API too (before, all were
/// answered 200): nested data whose nesting does not match its shape, the same input
/// twice, and a JSON array in place of the request object.
#[test]
fn oip_refuses_misnested_data_duplicate_inputs_and_array_bodies() {
    let d = cls_daemon("");
    let (input, _) = case0();
    let rows: Vec<Vec<f64>> = input.chunks(192).map(|r| r.to_vec()).collect(); // 144 rows
    let tensor =
        |data: Value| json!({"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": data});
    let mut ragged = rows.clone();
    let moved = ragged[0].pop().unwrap();
    ragged[1].push(moved);
    let cases: Vec<(String, &str)> = vec![
        // Ragged rows: the same 27,648 values, one row short and the next one long.
        (json!({"inputs": [tensor(json!(ragged))]}).to_string(), "ragged array"),
        // The right number of values in the wrong rows: 96 rows of 288.
        (
            json!({"inputs": [tensor(json!(input.chunks(288).map(|r| r.to_vec()).collect::<Vec<_>>()))]})
                .to_string(),
            "is nested as [96, 288] but its shape is [1, 3, 48, 192]",
        ),
        // 144 rows of 192 is not [1, 3, 48, 192] nested either.
        (json!({"inputs": [tensor(json!(rows))]}).to_string(), "is nested as [144, 192]"),
        (
            json!({"inputs": [tensor(json!(input)), tensor(json!(input))]}).to_string(),
            "input `x` appears twice",
        ),
        (json!([null, null, [tensor(json!(input))], null]).to_string(), "must be a JSON object"),
    ];
    for (body, needle) in &cases {
        let (s, v) = post(&d, "/v2/models/ppocr-cls/infer", body.as_bytes());
        assert_eq!(s, 400, "{needle}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(msg.contains(needle), "expected `{needle}` in `{msg}`");
    }
}

/// Response `parameters` hold scalars only (before: `"reason": null` and the nested
/// `result`); the structured extras are in the top-level `edge_agent` object.
#[test]
fn oip_response_parameters_are_scalars() {
    let d = cls_daemon("");
    let (input, _) = case0();
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}]});
    let (s, v) = post(&d, "/v2/models/ppocr-cls/infer", body.to_string().as_bytes());
    assert_eq!(s, 200, "{v}");
    let params = v["parameters"].as_object().unwrap();
    for (k, p) in params {
        assert!(p.is_string() || p.is_number() || p.is_boolean(), "parameter {k} is {p}: {v}");
    }
    assert_eq!(params["place"], "local");
    assert!(!params.contains_key("reason"), "no reason for a local answer: {v}");
    assert!(v["edge_agent"]["result"]["label"].is_string(), "{v}");
    assert_eq!(v["edge_agent"]["result"]["top"].as_array().map(Vec::len), Some(2), "{v}");
}

/// Sends raw bytes on a fresh connection and reads the answer until the server closes
/// it or a blank-line-terminated head and its Content-Length body have arrived.
fn raw_exchange(port: u16, request: &[u8]) -> (u16, String, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before taking a long request whole.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // An answer is framed like a request: head, then a body by Content-Length.
        if let Some(whole) = http_request_len(&buf)
            && buf.len() >= whole
        {
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = serde_json::from_slice(&buf[end + 4..whole]).unwrap_or(Value::Null);
            return (status, head, body);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => {
                panic!("connection closed before a whole answer: {}", String::from_utf8_lossy(&buf))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// 405, 414 and malformed URLs are answered `{"error": ...}` with the right status, like
/// every other error (before: empty bodies, or plain text).
#[test]
fn protocol_errors_are_json() {
    let d = cls_daemon("");
    // A known path with a method it does not take: 405 with Allow.
    let mut r = http().get(&d.url("/v2/models/ppocr-cls/infer")).call().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers().get("allow").map(|v| v.to_str().unwrap()), Some("POST"));
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("GET is not allowed"), "{v}");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        // A URI longer than hyper takes: 414.
        (
            format!("GET /v2/models/{} HTTP/1.1\r\nHost: x\r\n\r\n", "m".repeat(70_000)).into_bytes(),
            414,
            "longer than 65534 bytes",
        ),
        // A request line that is no HTTP: 400 from the parser.
        (b"GET /v2 models HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "malformed HTTP request"),
        // A path segment that is not UTF-8 once percent-decoded.
        (
            b"GET /v2/models/%ff%fe/ready HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "malformed URL /v2/models/%ff%fe/ready",
        ),
        (
            b"POST /v2/models/%c3/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            400,
            "malformed URL",
        ),
        (b"DELETE /status HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405, "DELETE is not allowed on /status"),
    ];
    for (request, status, needle) in &cases {
        let (s, head, v) = raw_exchange(d.port, request);
        assert_eq!(s, *status, "{needle}: {head}");
        assert!(head.contains("content-type: application/json"), "{needle}: {head}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{needle}: no error field: {head} {v}"));
        assert!(msg.contains(needle), "expected `{needle}` in `{msg}`");
    }
    assert_eq!(get(&d, "/v2/health/ready").0, 200, "still serving");
}

/// More idle connections than `max_connections` (300 > 256) lock out neither the TCP
/// port nor the unix socket: a new connection closes the oldest idle one, and each
/// listener has its own limit, so `edge-agent status` and inference keep working
/// (before: both were refused until the idle connections timed out).
#[test]
fn idle_connections_lock_out_neither_the_port_nor_the_admin_socket() {
    // A long header timeout: idle connections are not cut off while the test runs.
    let d = cls_daemon("header_timeout_ms = 120000");
    let (input, _) = case0();
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}]})
            .to_string();
    let status = |d: &Daemon| {
        let out = run(&["status", "--socket", d.socket.to_str().unwrap(), "--json"], secs(20));
        assert!(out.status.success(), "edge-agent status: {}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).expect("status json")
    };
    let idle_tcp: Vec<TcpStream> =
        (0..300).map(|_| TcpStream::connect(("127.0.0.1", d.port)).expect("connect")).collect();
    // The admin socket answers with 300 idle TCP connections open.
    assert_eq!(status(&d)["ready"], true);
    // And so does the port: its accept queue is in order, so this connection comes
    // after the 300 and makes room by closing the oldest idle one.
    let (s, v) = post(&d, "/v2/models/ppocr-cls/infer", body.as_bytes());
    assert_eq!(s, 200, "inference with 300 idle TCP connections open: {v}");
    let v = status(&d);
    assert!(v["api"]["evicted_connections"].as_u64().unwrap() >= 45, "{}", v["api"]);
    assert_eq!(v["api"]["refused_connections"], 0, "{}", v["api"]);
    // The oldest idle connections were the ones closed.
    let mut first = &idle_tcp[0];
    first.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(first.read(&mut buf), Ok(0) | Err(_)), "the oldest idle connection was closed");

    let idle_unix: Vec<std::os::unix::net::UnixStream> =
        (0..300).map(|_| std::os::unix::net::UnixStream::connect(&d.socket).expect("connect")).collect();
    let v = status(&d);
    assert_eq!(v["ready"], true);
    assert_eq!(post(&d, "/v2/models/ppocr-cls/infer", body.as_bytes()).0, 200);
    drop((idle_tcp, idle_unix));
}

/// Runs tests/fixtures/prom_check.py (prometheus_client's parser, and the format's rules
/// it lets through) on an exposition; returns whether it passed and what it read.
fn prom_check(text: &str) -> (bool, Value) {
    let python = cache().join("venv/bin/python");
    let out = run_with(
        std::process::Command::new(&python).arg(root().join("tests/fixtures/prom_check.py")),
        Some(text.as_bytes()),
        secs(60),
    );
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("prom_check.py printed no JSON ({e}): {}", stderr(&out)));
    (out.status.success(), seen)
}

/// `/metrics` parses as the Prometheus text format, and says what `/status` says; the
/// check itself refuses malformed expositions (a second HELP line, a bad escape in a
/// label value, a family split in two).
#[test]
fn metrics_pass_a_prometheus_parser() {
    let d = cls_daemon("");
    let (input, _) = case0();
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": input}]})
            .to_string();
    for _ in 0..3 {
        assert_eq!(post(&d, "/v2/models/ppocr-cls/infer", body.as_bytes()).0, 200);
    }
    let text = http().get(&d.url("/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    let (ok, seen) = prom_check(&text);
    assert!(ok, "{}\n{text}", seen["problems"]);
    let families = &seen["families"];
    let requests = &families["edge_agent_requests_total"];
    assert_eq!(requests["type"], "counter");
    let ok_sample = requests["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[1]["model"] == "ppocr-cls" && s[1]["outcome"] == "ok")
        .expect("ok sample");
    let (_, status) = get(&d, "/status");
    assert_eq!(ok_sample[2].as_f64(), status["models"]["ppocr-cls"]["ok"].as_f64());
    let hist = &families["edge_agent_request_duration_seconds"];
    assert_eq!(hist["type"], "histogram");
    let count = hist["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == "edge_agent_request_duration_seconds_count");
    assert_eq!(count.map(|s| s[2].as_f64()), Some(Some(3.0)));
    assert_eq!(families["edge_agent_ready"]["samples"][0][2], 1.0);

    // The check is not a rubber stamp: each malformation is named.
    let first_help = text.lines().find(|l| l.starts_with("# HELP")).unwrap();
    let broken = [
        (format!("{first_help}\n{text}"), "second HELP line"),
        (text.replacen("model=\"ppocr-cls\"", "model=\"ppocr\\q-cls\"", 1), "invalid escape"),
        (
            format!("{text}edge_agent_requests_total{{model=\"m\",outcome=\"ok\",place=\"local\"}} 1\n"),
            "are not together",
        ),
        (text.replacen("\nedge_agent_ready 1\n", "\nedge_agent_ready one\n", 1), "is not a number"),
    ];
    for (bad, needle) in &broken {
        let (ok, seen) = prom_check(bad);
        assert!(!ok, "accepted a malformed exposition ({needle})");
        assert!(seen["problems"].to_string().contains(needle), "expected `{needle}` in {}", seen["problems"]);
    }
}
