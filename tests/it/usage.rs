//! Bytes per destination (docs/data-usage.md): what the agent says it sent and received
//! against what crossed a counting TCP proxy on loopback.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::mqtt_agent::*;
use crate::common::proxy::CountingProxy;
use crate::common::registry::*;
use crate::common::*;

fn sensor_payload(id: u64) -> String {
    let samples: Vec<String> =
        (0..256).map(|i| format!("{:.3}", ((i as f64) * 0.3 + id as f64).sin())).collect();
    format!("{{\"id\":{id},\"data\":[{}]}}", samples.join(","))
}

fn counts(v: &Value) -> (u64, u64) {
    (v["sent"].as_u64().expect("sent"), v["received"].as_u64().expect("received"))
}

/// `lo <= wire <= hi`, and the window between the two readings is a few percent of it.
fn bracketed(what: &str, lo: u64, wire: u64, hi: u64) {
    assert!(lo <= wire && wire <= hi, "{what}: counted {lo}..{hi}, on the wire {wire}");
    assert!((hi - lo) as f64 <= wire as f64 * 0.04, "{what}: counted {lo}..{hi}, on the wire {wire}");
}

#[test]
fn broker_bytes_over_tls_are_the_bytes_that_crossed_the_link() {
    let setup = MqttSetup::new().tls().extra("[telemetry]\ninterval_s = 1\n").prepare();
    // The agent reaches the broker through the proxy.
    let proxy = CountingProxy::start(setup.broker.port);
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let port_line = format!("port = {}\n", setup.broker.port);
    assert!(text.contains(&port_line), "{text}");
    std::fs::write(&setup.config, text.replacen(&port_line, &format!("port = {}\n", proxy.port), 1)).unwrap();
    let Running { dir: _dir, broker, subs: [results, telemetry], agent, .. } =
        setup.start(["edge/dev1/results/#", "edge/dev1/telemetry"]);

    let lines: Vec<(String, String)> =
        (0..400).map(|id| ("sensors/s1/accel".to_string(), sensor_payload(id))).collect();
    broker.publish_many("test", &lines, 1);
    results.wait_count(400, secs(60), |_, _| true);

    // Report r1 was made before the proxy is read, r3 after (two intervals later): the
    // bytes that crossed lie between what they counted.
    let seen = telemetry.received().len();
    let r1 = telemetry.wait_count(seen + 1, secs(10), |_, _| true).pop().unwrap();
    let (up, down) = proxy.counts();
    let r3 = telemetry.wait_count(seen + 3, secs(20), |_, _| true).pop().unwrap();
    let (r1, r3): (Value, Value) =
        (serde_json::from_str(&r1.1).unwrap(), serde_json::from_str(&r3.1).unwrap());
    let ((s1, g1), (s3, g3)) = (counts(&r1["usage"]["broker"]), counts(&r3["usage"]["broker"]));
    eprintln!(
        "broker: sent {s1}..{s3} counted, {up} on the wire; received {g1}..{g3} counted, {down} on the wire"
    );
    assert!(down > 400 * 1500, "the sensor messages came through the proxy: {down}");
    bracketed("sent to the broker", s1, up, s3);
    bracketed("received from the broker", g1, down, g3);
    assert_eq!(r3["usage"]["registry"]["sent"], 0, "{r3}");
    agent.stop();
}

#[test]
fn registry_bytes_are_within_a_few_percent_of_what_crossed_the_link() {
    let p = Publisher::new(1);
    let work = tempdir();
    // A bigger model file, so that the download is most of the traffic, as in the field.
    p.publish(
        &model_version(work.path(), "2", |dir| {
            let pad: String = (0..200_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            std::fs::write(dir.join("README.pad"), pad).unwrap();
        }),
        100,
        &[],
    );
    let reg = Served::start(&p.repo());
    let port: u16 = reg.url.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = CountingProxy::start(port);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let ota = ota_section(&url, &p.root_v1(), "");
    let d = Daemon::start("run", &crate::ota::body(&demo_model(), None, &ota), "", &[]);
    wait_status(&d, "version 2 active", secs(60), |s| s["models"]["vibration"]["version"] == "2");
    // The update task is done with the registry once the version is active; the
    // connection is idle.
    std::thread::sleep(Duration::from_millis(200));
    let s = status(&d);
    let (sent, received) = counts(&s["usage"]["registry"]);
    let (up, down) = proxy.counts();
    eprintln!(
        "registry: sent {sent} counted, {up} on the wire; received {received} counted, {down} on the wire"
    );
    assert!(down > 200_000, "the model came through the proxy: {down}");
    let near = |what: &str, counted: u64, wire: u64| {
        let off = (counted as f64 - wire as f64).abs() / wire as f64;
        assert!(off < 0.03, "{what}: counted {counted}, on the wire {wire} ({:.1} % off)", off * 100.0);
    };
    near("received from the registry", received, down);
    near("sent to the registry", sent, up);
    assert_eq!(s["usage"]["broker"]["sent"], 0, "{s}");
    d.stop();
}

/// Adds `publish = {...}` to the config's model entry.
fn with_publish(config: &std::path::Path, publish: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let at = text.find("[[model]]\npath = ").expect("a model entry");
    let end = at + text[at..].find('\n').unwrap() + 1;
    let end = end + text[end..].find('\n').unwrap() + 1;
    let text = format!("{}publish = {publish}\n{}", &text[..end], &text[end..]);
    std::fs::write(config, text).unwrap();
}

/// `n` messages of 256 samples from the simulated machine, with an anomaly of 0.1 s
/// every second, so that labels change now and then.
fn varied(n: u64) -> Vec<(String, String)> {
    let mut sim = edge_agent::sources::VibrationSim::new(7, 1000.0, 1.0, 0.1);
    (0..n)
        .map(|id| {
            let samples: Vec<String> = sim.samples(256).iter().map(|x| format!("{x:.4}")).collect();
            ("sensors/s1/accel".to_string(), format!("{{\"id\":{id},\"data\":[{}]}}", samples.join(",")))
        })
        .collect()
}

#[test]
fn on_change_publishes_exactly_the_label_changes_the_full_stream_has() {
    let setup = MqttSetup::new().extra("[telemetry]\ninterval_s = 1\n").prepare();
    with_publish(&setup.config, "{ mode = \"change\" }");
    let Running { dir: _dir, broker, subs: [results, telemetry], agent, .. } =
        setup.start(["edge/dev1/results/#", "edge/dev1/telemetry"]);
    broker.publish_many("test", &varied(100), 1);
    // Every result was computed (the engine's count), whatever was published.
    telemetry.wait_for("100 results computed", secs(60), |_, p| p.contains("\"ok\":100,"));
    let log = agent.stop();
    // The log notes each label change of a stream: the reference.
    let changes: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "label")
        .map(|l| l["window"].as_u64().expect("window"))
        .collect();
    assert!(changes.len() > 2, "the inputs change labels: {changes:?}");
    assert!(changes.len() < 100);
    results.wait_count(changes.len(), secs(10), |_, _| true);
    let published: Vec<u64> =
        results.received().iter().map(|m| m.json()["window"].as_u64().expect("a result")).collect();
    assert_eq!(published, changes, "published exactly the changes");
}

#[test]
fn summary_mode_publishes_summaries_that_cover_every_result() {
    let setup = MqttSetup::new().prepare();
    with_publish(&setup.config, "{ mode = \"summary\", interval_s = 1 }");
    let Running { dir: _dir, broker, subs: [results], agent, .. } = setup.start(["edge/dev1/results/#"]);
    broker.publish_many("test", &varied(60), 1);
    let covered = |all: &[(String, String)]| -> u64 {
        all.iter()
            .map(|(_, p)| serde_json::from_str::<Value>(p).unwrap()["results"].as_u64().unwrap_or(0))
            .sum()
    };
    let start = std::time::Instant::now();
    while covered(&results.messages()) < 60 && start.elapsed() < secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
    let all = results.messages();
    assert_eq!(covered(&all), 60, "{all:?}");
    let mut next_seq = None;
    for (_, p) in &all {
        let s: Value = serde_json::from_str(p).unwrap();
        assert_eq!(s["summary"], true, "only summaries: {s}");
        let labels: u64 = s["labels"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(labels, s["results"].as_u64().unwrap(), "{s}");
        let (lo, hi, mean) = (
            s["score"]["min"].as_f64().unwrap(),
            s["score"]["max"].as_f64().unwrap(),
            s["score"]["mean"].as_f64().unwrap(),
        );
        assert!(lo <= mean && mean <= hi, "{s}");
        // Consecutive summaries of the stream cover consecutive results.
        let from = s["from_seq"].as_u64().unwrap();
        if let Some(n) = next_seq {
            assert_eq!(from, n, "{all:?}");
        }
        next_seq = Some(s["to_seq"].as_u64().unwrap() + 1);
    }
}

#[test]
fn telemetry_with_only_changed_sends_the_whole_report_then_the_changes() {
    let Running { dir: _dir, broker: _broker, subs: [telemetry], agent, .. } = MqttSetup::new()
        .extra("[telemetry]\ninterval_s = 1\nonly_changed = true\n")
        .start(["edge/dev1/telemetry"]);
    let reports = telemetry.wait_count(3, secs(20), |_, _| true);
    agent.stop();
    let r: Vec<Value> = reports.iter().map(|(_, p)| serde_json::from_str(p).unwrap()).collect();
    assert!(r[0]["system"]["mem_total"].as_u64().unwrap() > 0, "the first is whole: {}", r[0]);
    assert!(r[0].get("partial").is_none());
    for later in &r[1..] {
        assert_eq!(later["partial"], true, "{later}");
        assert!(later["ts"].is_string() && later["device"] == "dev1", "{later}");
        assert!(later["system"].get("mem_total").is_none(), "unchanged values are left out: {later}");
        assert!(later.get("engine").is_none(), "an idle engine did not change: {later}");
    }
    assert!(reports[1].1.len() * 2 < reports[0].1.len(), "{} vs {}", reports[1].1.len(), reports[0].1.len());
}

/// One message of 256 samples written short (about 1 KB).
fn short_message(id: u64) -> (String, String) {
    let samples: Vec<String> = (0..256).map(|i| format!("{:.1}", ((i + id) as f64 * 0.3).sin())).collect();
    ("sensors/s1/accel".to_string(), format!("{{\"id\":{id},\"data\":[{}]}}", samples.join(",")))
}

#[test]
fn the_daily_cap_holds_telemetry_first_then_results_and_never_replies_or_events() {
    const CAP: u64 = 20_000;
    let Running { dir: _dir, broker, subs: [all], agent, .. } = MqttSetup::new()
        .mqtt(&format!("max_bytes_per_day = {CAP}"))
        .extra("[telemetry]\ninterval_s = 1\n")
        .start(["edge/dev1/#"]);
    let kind_of = |t: &str, p: &str| -> String {
        if t.ends_with("/telemetry") {
            "telemetry".into()
        } else if t.contains("/results/") {
            "result".into()
        } else if t.ends_with("/events") && p.contains("data-cap-reached") {
            let e: Value = serde_json::from_str(p).unwrap();
            format!("cap:{}", e["detail"]["holding"].as_str().unwrap())
        } else if t.ends_with("/reply") {
            "reply".into()
        } else {
            "other".into()
        }
    };
    // Telemetry alone reaches 80 % of the cap: telemetry stops, announced.
    all.wait_for("the first stage", secs(60), |t, p| kind_of(t, p) == "cap:telemetry");
    // Results still go: one message, one result.
    broker.publish("test", short_message(0).0.as_str(), short_message(0).1.as_bytes(), 1, false);
    all.wait_for("a result under the cap", secs(20), |t, _| t.contains("/results/"));
    // A flood takes it past the cap: results stop, announced.
    let flood: Vec<(String, String)> = (1..60).map(short_message).collect();
    broker.publish_many("test", &flood, 1);
    all.wait_for("the second stage", secs(30), |t, p| kind_of(t, p) == "cap:telemetry and results");
    // Commands are still answered, with the counts of what was held back. No result
    // follows the second stage, so the results seen by now are all there will be; the
    // rest of the flood is held once the agent has read it all (on a loaded machine a
    // first reply may come before the last messages are handled: ask again).
    let seen = || all.messages().iter().filter(|(t, _)| t.contains("/results/")).count();
    let started = Instant::now();
    let mut asked = 0;
    let reply = loop {
        asked += 1;
        let id = format!("st-{asked}");
        broker.publish("test", "edge/dev1/cmd/status", format!("{{\"id\":\"{id}\"}}").as_bytes(), 1, false);
        let (_, reply) = all.wait_for("the status reply", secs(20), |t, p| {
            t.ends_with("/reply") && p.contains(&format!("\"{id}\"")) && p.contains("succeeded")
        });
        let status: Value = serde_json::from_str(&reply).unwrap();
        let held = status["result"]["usage"]["broker_cap"]["held_results"].as_u64().unwrap_or(0) as usize;
        if held + seen() >= 60 || started.elapsed() > secs(20) {
            break reply;
        }
    };
    agent.stop();

    let order: Vec<String> =
        all.messages().iter().map(|(t, p)| kind_of(t, p)).filter(|k| k != "other").collect();
    let first = order.iter().position(|k| k == "cap:telemetry").unwrap();
    let second = order.iter().position(|k| k == "cap:telemetry and results").unwrap();
    assert!(first < second, "{order:?}");
    assert!(
        !order[first..].contains(&"telemetry".to_string()),
        "no telemetry after the first stage: {order:?}"
    );
    assert!(order[first..second].contains(&"result".to_string()), "results between the stages: {order:?}");
    assert!(!order[second..].contains(&"result".to_string()), "no result after the second stage: {order:?}");
    let results = order.iter().filter(|k| *k == "result").count();
    assert!(results < 60, "the flood was held back: {results} results published");

    let status: Value = serde_json::from_str(&reply).unwrap();
    let cap = &status["result"]["usage"]["broker_cap"];
    assert_eq!(cap["bytes_per_day"], CAP, "{status}");
    assert!(cap["held_telemetry"].as_u64().unwrap() >= 1, "{cap}");
    assert_eq!(cap["held_results"].as_u64().unwrap() as usize, 60 - results, "{cap}");
}

#[test]
fn spool_flush_drops_the_spooled_results_and_the_reply_still_comes() {
    const N: u64 = 1500;
    let api = free_port();
    let setup = MqttSetup::new().extra(&format!("[api]\nlisten = \"127.0.0.1:{api}\"\n")).prepare();
    let proxy = CountingProxy::start(setup.broker.port);
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let port_line = format!("port = {}\n", setup.broker.port);
    std::fs::write(&setup.config, text.replacen(&port_line, &format!("port = {}\n", proxy.port), 1)).unwrap();
    let Running { dir: _dir, broker, subs: [results, replies], agent, .. } =
        setup.start(["edge/dev1/results/#", "edge/dev1/cmd/spool/flush/reply"]);
    let status = || -> Value {
        ureq::get(&format!("http://127.0.0.1:{api}/status")).call().unwrap().body_mut().read_json().unwrap()
    };

    // Nothing the agent sends gets through: its results pile up and spill to the spool.
    // (QoS 0 sensor messages: the broker does not wait for the agent's acknowledgements,
    // which are held too.)
    proxy.hold_up(true);
    let flood: Vec<(String, String)> = (0..N).map(short_message).collect();
    broker.publish_many("test", &flood, 0);
    let start = std::time::Instant::now();
    let mut s = status();
    while (s["models"]["flat"]["ok"] != N || s["mqtt"]["spool_records"] == 0) && start.elapsed() < secs(60) {
        std::thread::sleep(Duration::from_millis(100));
        s = status();
    }
    let spooled = s["mqtt"]["spool_records"].as_u64().unwrap();
    assert!(spooled > 100, "{s}");

    broker.publish(
        "test",
        "edge/dev1/cmd/spool/flush",
        br#"{"id":"f-1","args":{"classes":["result"]}}"#,
        1,
        false,
    );
    agent.wait_log("command accepted", secs(20));
    proxy.hold_up(false);
    let (_, reply) = replies.wait_for("the reply", secs(30), |_, p| p.contains("succeeded"));
    assert!(reply.contains("\"dropping\":[\"result\"]"), "{reply}");
    let start = std::time::Instant::now();
    while status()["mqtt"]["spool_records"] != 0 && start.elapsed() < secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = status();
    let dropped = s["mqtt"]["dropped"]["result"].as_u64().unwrap();
    agent.stop();
    let mut ids: Vec<u64> =
        results.received().iter().map(|m| m.json()["input_id"].as_u64().expect("a result")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert!(dropped > 0, "{s}");
    assert!((ids.len() as u64) < N, "results were dropped, not sent: {} arrived", ids.len());
    assert!(ids.len() as u64 + dropped >= N, "each result was sent or dropped: {} + {dropped}", ids.len());
    assert_eq!(s["mqtt"]["dropped"]["reply"], 0, "{s}");
}

#[test]
fn spool_flush_refuses_events_replies_and_unknown_classes() {
    let Running { dir: _dir, broker, subs: [replies], agent, .. } =
        MqttSetup::new().start(["edge/dev1/cmd/spool/flush/reply"]);
    for (id, args, why) in [
        ("r-1", r#"{"classes":["event"]}"#, "events and command replies are always delivered"),
        ("r-2", r#"{"classes":["logs"]}"#, "is not a class of the spool"),
        ("r-3", r#"{}"#, "needs `args.classes`"),
    ] {
        let body = format!(r#"{{"id":"{id}","args":{args}}}"#);
        broker.publish("test", "edge/dev1/cmd/spool/flush", body.as_bytes(), 1, false);
        let (_, p) = replies.wait_for(id, secs(20), |_, p| p.contains(id) && p.contains("rejected"));
        assert!(p.contains(why), "{p}");
    }
    agent.stop();
}
