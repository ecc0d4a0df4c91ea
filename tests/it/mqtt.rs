//! The MQTT link against a real Mosquitto started by each test: results, status and the
//! last will, commands, store-and-forward across broker restarts and a SIGKILL, the
//! spool's bound, TLS with client certificates, MQTT 5 request/response.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::broker::{Broker, BrokerOptions, Subscription};
use crate::common::mqtt_agent::{Agent, MqttSetup, Prepared, Running, broker_opts, flat_model, write_config};
use crate::common::*;

/// A sensor message: 256 samples of a quiet signal, with an id.
fn sensor_payload(id: u64) -> String {
    let samples: Vec<String> = (0..256).map(|i| format!("{:.3}", ((i as f64) * 0.3).sin() * 0.1)).collect();
    format!("{{\"id\":{id},\"data\":[{}]}}", samples.join(","))
}

fn json_of(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|e| panic!("not JSON ({e}): {payload}"))
}

#[test]
fn results_status_and_last_will() {
    let Running { dir: _dir, broker, config, status, subs: [results], agent, online: s } =
        MqttSetup::new().start(["edge/dev1/results/#"]);
    assert_eq!(s["models"]["flat"], "1", "{s}");
    assert!(s["version"].is_string() && s["since"].is_string(), "{s}");

    for (i, sensor) in ["pump-1", "pump-2", "pump-1"].iter().enumerate() {
        broker.publish(
            "test",
            &format!("sensors/{sensor}/accel"),
            sensor_payload(i as u64).as_bytes(),
            1,
            false,
        );
    }
    let got = results.wait_count(3, secs(30), |t, _| t == "edge/dev1/results/flat");
    // Streams run in parallel: order by input, then check each.
    let mut got: Vec<Value> = got.iter().map(|(_, p)| json_of(p)).collect();
    got.sort_by_key(|r| r["input_id"].as_u64());
    let mut seqs = Vec::new();
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r["input_id"], json!(i), "{r}");
        assert_eq!(r["stream"], if i == 1 { "pump-2" } else { "pump-1" }, "{r}");
        assert_eq!(r["source"], format!("sensors/{}/accel", r["stream"].as_str().unwrap()));
        assert_eq!(r["place"], "local");
        assert_eq!(r["version"], "1");
        assert!(r["outputs"]["label"].is_string(), "{r}");
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0);
        seqs.push(r["seq"].as_u64().unwrap());
    }
    // pump-1's two results in order; all three numbered differently.
    assert!(seqs[2] > seqs[0], "seq increases within a stream: {seqs:?}");
    let mut distinct = seqs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{seqs:?}");
    seqs.sort();

    // A malformed sensor message: counted, reported as an event, acknowledged.
    let events = broker.subscribe("test", "edge/dev1/events");
    broker.publish("test", "sensors/pump-1/accel", b"{\"id\": 9, \"data\": [1, \"x\"]}", 1, false);
    let (_, e) = events.wait_for("request-failed event", secs(30), |_, p| p.contains("request-failed"));
    let e = json_of(&e);
    assert_eq!(e["model"], "flat", "{e}");
    assert_eq!(e["detail"]["stream"], "pump-1", "{e}");
    assert!(e["detail"]["error"].as_str().unwrap().contains("not a number"), "{e}");

    // Killed: the broker publishes the last will (retained).
    agent.kill();
    status
        .wait_for("offline last will", secs(60), |t, p| t == "edge/dev1/status" && p.contains("\"offline\""));
    let late = broker.subscribe("test", "edge/dev1/status");
    late.wait_for("retained offline", secs(10), |_, p| p.contains("\"offline\""));

    // Back: online again, and numbering goes on after the crash, never repeating.
    let mark = status.messages().len();
    let agent = Agent::start(&config);
    status.wait_for_after("online after restart", mark, secs(30), |_, p| p.contains("\"online\""));
    broker.publish("test", "sensors/pump-1/accel", sensor_payload(3).as_bytes(), 1, false);
    let (_, p) = results.wait_for("result after restart", secs(30), |_, p| p.contains("\"input_id\":3"));
    let seq = json_of(&p)["seq"].as_u64().unwrap();
    assert!(seq > *seqs.last().unwrap(), "seq {seq} after restart must exceed {seqs:?}");

    // A clean stop says offline itself.
    let mark = status.messages().len();
    agent.stop();
    status.wait_for_after("offline at shutdown", mark, secs(10), |_, p| p.contains("\"offline\""));
}

/// Sends a command as `test` and returns its final reply.
fn command(
    broker: &Broker,
    replies: &Subscription,
    name: &str,
    payload: &str,
    id: impl Into<Value>,
) -> Value {
    let id: Value = id.into();
    let mark = replies.messages().len();
    broker.publish("test", &format!("edge/dev1/cmd/{name}"), payload.as_bytes(), 1, false);
    let topic = format!("edge/dev1/cmd/{name}/reply");
    let (_, p) = replies.wait_for_after(&format!("final reply to {name} {id}"), mark, secs(30), |t, p| {
        t == topic
            && serde_json::from_str::<Value>(p).is_ok_and(|v| v["id"] == id)
            && ["succeeded", "failed", "rejected"].iter().any(|s| p.contains(&format!("\"state\":\"{s}\"")))
    });
    json_of(&p)
}

#[test]
fn commands_life_cycle_and_bad_requests() {
    let Running { dir, broker, config, subs: [replies, telemetry], agent, .. } = MqttSetup::new()
        .extra("[telemetry]\ninterval_s = 3600\n")
        .start(["edge/dev1/cmd/#", "edge/dev1/telemetry"]);

    let r = command(&broker, &replies, "ping", r#"{"id":"p-1"}"#, "p-1");
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["result"]["pong"], true);
    let accepted =
        replies.messages().iter().filter(|(_, p)| p.contains("\"p-1\"") && p.contains("accepted")).count();
    assert_eq!(accepted, 1, "one accepted reply before the final one");

    // The same id again: the recorded reply, not a second run.
    let before = replies.messages().len();
    broker.publish("test", "edge/dev1/cmd/ping", br#"{"id":"p-1"}"#, 1, false);
    let (_, p) =
        replies.wait_for_after("the repeated id's reply", before, secs(10), |t, _| t.ends_with("/reply"));
    assert_eq!(json_of(&p), r, "a repeated id gets the recorded final reply");
    std::thread::sleep(Duration::from_millis(500));
    let accepted =
        replies.messages().iter().filter(|(_, p)| p.contains("\"p-1\"") && p.contains("accepted")).count();
    assert_eq!(accepted, 1, "a repeated id is not run again");

    // Bad requests: each rejected with a reason, the agent keeps going.
    let r = command(&broker, &replies, "ping", "{not json", Value::Null);
    assert_eq!(r["state"], "rejected");
    assert!(r["error"].as_str().unwrap().contains("not a command request"), "{r}");
    let r = command(&broker, &replies, "reboot-now", r#"{"id":"u-1"}"#, "u-1");
    assert_eq!(r["state"], "rejected");
    assert!(r["error"].as_str().unwrap().contains("unknown command `reboot-now`"), "{r}");
    let r = command(&broker, &replies, "ping", r#"{"id":7}"#, 7);
    assert_eq!(r["state"], "rejected", "an id must be a string: {r}");
    assert!(r["error"].as_str().unwrap().contains("expected a string"), "{r}");
    let r = command(
        &broker,
        &replies,
        "config/set",
        r#"{"id":"s-1","args":{"key":"telemetry.interval_s","value":"soon"}}"#,
        "s-1",
    );
    assert_eq!(r["state"], "rejected");
    assert!(r["error"].as_str().unwrap().contains("telemetry.interval_s"), "{r}");
    let r = command(
        &broker,
        &replies,
        "config/set",
        r#"{"id":"s-2","args":{"key":"mqtt.host","value":"evil"}}"#,
        "s-2",
    );
    assert_eq!(r["state"], "rejected");
    assert!(r["error"].as_str().unwrap().contains("cannot be changed at run time"), "{r}");
    let r = command(
        &broker,
        &replies,
        "config/set",
        r#"{"id":"s-3","args":{"key":"engine.deadline_ms","value":0}}"#,
        "s-3",
    );
    assert_eq!(r["state"], "rejected", "out of range: {r}");
    let big = format!(r#"{{"id":"b-1","args":{{"pad":"{}"}}}}"#, "x".repeat(4000));
    let r = command(&broker, &replies, "ping", &big, Value::Null);
    assert_eq!(r["state"], "rejected");
    assert!(r["error"].as_str().unwrap().contains("max_command_bytes"), "{r}");
    let r = command(&broker, &replies, "ping", r#"{"id":"e-1","expires":"2020-01-01T00:00:00Z"}"#, "e-1");
    assert_eq!(r["state"], "rejected");
    assert!(r["error"].as_str().unwrap().contains("expired"), "{r}");

    // Outside the ACL: the broker drops it, so no reply is possible; the agent is fine.
    let before = replies.messages().len();
    broker.publish("outsider", "edge/dev1/cmd/ping", br#"{"id":"x-1"}"#, 1, false);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !replies.messages()[before..].iter().any(|(_, p)| p.contains("x-1")),
        "an ACL-denied command must not run"
    );

    // Group and fleet topics reach the device; replies come on its own topic.
    let r = command_on(&broker, &replies, "edge/group/line-1/cmd/ping", "g-1");
    assert_eq!(r["state"], "succeeded");
    let r = command_on(&broker, &replies, "edge/all/cmd/ping", "a-1");
    assert_eq!(r["state"], "succeeded");

    // Runtime settings: validated, applied at once, persisted, read back.
    let r = command(
        &broker,
        &replies,
        "config/set",
        r#"{"id":"s-4","args":{"key":"telemetry.interval_s","value":1}}"#,
        "s-4",
    );
    assert_eq!(r["state"], "succeeded", "{r}");
    let (_, t) = telemetry.wait_for("telemetry after config/set", secs(10), |_, _| true);
    let t = json_of(&t);
    assert!(t["models"]["flat"]["ok"].is_u64(), "{t}");
    assert!(t["system"]["mem_total"].as_u64().unwrap() > 0, "{t}");
    assert!(t["agent"]["rss"].as_u64().unwrap() > 0, "{t}");
    assert!(t["agent"]["mqtt"]["connected"].as_bool().unwrap(), "{t}");
    let overlay = std::fs::read_to_string(dir.path().join("state/runtime.toml")).unwrap();
    assert!(overlay.contains("telemetry.interval_s") && overlay.contains('1'), "{overlay}");
    let r = command(
        &broker,
        &replies,
        "config/get",
        r#"{"id":"g-2","args":{"key":"telemetry.interval_s"}}"#,
        "g-2",
    );
    assert_eq!(r["result"]["value"], 1, "{r}");
    let r = command(&broker, &replies, "config/get", r#"{"id":"g-3"}"#, "g-3");
    assert_eq!(r["result"]["config"]["mqtt"]["password"], "(hidden)", "{r}");

    let r = command(&broker, &replies, "models/list", r#"{"id":"m-1"}"#, "m-1");
    assert_eq!(r["result"]["models"][0]["name"], "flat", "{r}");
    let r = command(&broker, &replies, "status", r#"{"id":"st-1"}"#, "st-1");
    assert_eq!(r["result"]["device"], "dev1", "{r}");
    let r = command(&broker, &replies, "diagnostics", r#"{"id":"d-1"}"#, "d-1");
    assert_eq!(r["state"], "succeeded", "{r}");
    let checks = r["result"]["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["check"] == "broker" && c["level"] == "ok"), "{r}");
    assert!(
        replies.messages().iter().any(|(_, p)| p.contains("\"d-1\"") && p.contains("\"running\"")),
        "diagnostics reports progress"
    );

    // The setting survives a restart.
    agent.stop();
    let agent = Agent::start(&config);
    let before = telemetry.messages().len();
    telemetry.wait_count(before + 2, secs(10), |_, _| true);
    agent.stop();
}

/// Every key path of a JSON document (`models.flat.ok`, `last_errors[].kind`): its
/// shape, whatever its values.
fn key_paths(v: &Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &Value, at: String, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    let here = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                    out.insert(here.clone());
                    walk(v, here, out);
                }
            }
            Value::Array(a) => {
                for v in a {
                    walk(v, format!("{at}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(v, String::new(), &mut out);
    out
}

/// The MQTT `status` command answers with the document `GET /status` serves: the same
/// key paths, from the same daemon.
#[test]
fn the_status_command_and_get_status_have_one_shape() {
    let setup = MqttSetup::new();
    let socket = setup.dir().join("api.sock");
    let api = format!("[api]\nlisten = \"\"\nsocket = \"{}\"\n", socket.display());
    let Running { dir: _dir, broker, subs: [results, replies], agent, .. } =
        setup.extra(&api).start(["edge/dev1/results/#", "edge/dev1/cmd/#"]);
    // One result, so that the model has counters and latencies to report.
    broker.publish("test", "sensors/pump-1/accel", sensor_payload(1).as_bytes(), 1, false);
    results.wait_for("a result", secs(30), |t, _| t == "edge/dev1/results/flat");

    let r = command(&broker, &replies, "status", r#"{"id":"shape-1"}"#, "shape-1");
    assert_eq!(r["state"], "succeeded", "{r}");
    let by_mqtt = &r["result"];
    let (code, body) = edge_agent::cli::status::get(&socket, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let by_http: Value = json_of(&body);

    let (mqtt_keys, http_keys) = (key_paths(by_mqtt), key_paths(&by_http));
    let only_mqtt: Vec<_> = mqtt_keys.difference(&http_keys).collect();
    let only_http: Vec<_> = http_keys.difference(&mqtt_keys).collect();
    assert!(
        only_mqtt.is_empty() && only_http.is_empty(),
        "only in the MQTT reply: {only_mqtt:?}; only in GET /status: {only_http:?}"
    );
    for key in
        ["api.in_flight", "mqtt.connected", "models.flat.ok", "models.flat.state", "engine.queue_depth"]
    {
        assert!(http_keys.contains(key), "no {key} in {http_keys:?}");
    }
    assert_eq!(by_mqtt["device"], by_http["device"]);
    assert_eq!(by_mqtt["models"]["flat"]["version"], by_http["models"]["flat"]["version"]);
    agent.stop();
}

fn command_on(broker: &Broker, replies: &Subscription, topic: &str, id: &str) -> Value {
    broker.publish("test", topic, format!(r#"{{"id":"{id}"}}"#).as_bytes(), 1, false);
    let (_, p) = replies.wait_for(&format!("reply to {id}"), secs(30), |t, p| {
        t == "edge/dev1/cmd/ping/reply" && p.contains(id) && !p.contains("accepted")
    });
    json_of(&p)
}

#[test]
fn mqtt5_request_response_with_correlation() {
    let Running { dir: _dir, broker, subs: [responses], agent, .. } =
        MqttSetup::new().mqtt("version = \"5\"").start(["replies/#"]);
    broker.publish_v5("test", "edge/dev1/cmd/ping", br#"{"id":"v5-1"}"#, "replies/me", b"corr-42");
    let m = responses
        .wait_for_message("reply on the response topic", secs(30), |m| m.text().contains("succeeded"));
    assert_eq!(m.json()["id"], "v5-1");
    assert_eq!(m.correlation_data.as_deref(), Some("corr-42"), "the correlation data is echoed");
    agent.stop();
}

#[test]
fn tls_with_client_certificates() {
    let Running { dir: _dir, broker, subs: [results], agent, .. } =
        MqttSetup::new().tls().start(["edge/dev1/results/#"]);
    broker.publish("test", "sensors/s1/accel", sensor_payload(1).as_bytes(), 1, false);
    results.wait_for("a result over TLS", secs(30), |_, p| p.contains("\"input_id\":1"));
    agent.stop();
}

/// Results by input id: the first arrival of each, and how many arrived in all.
#[derive(Default)]
struct Tally {
    first: BTreeMap<u64, (String, u64)>,
    arrivals: u64,
}

fn tally(messages: &[(String, String)]) -> Tally {
    let mut t = Tally::default();
    for (topic, p) in messages {
        if !topic.starts_with("edge/dev1/results/") {
            continue;
        }
        let r = json_of(p);
        t.arrivals += 1;
        let id = r["input_id"].as_u64().expect("input id");
        t.first.entry(id).or_insert((r["stream"].as_str().unwrap().to_string(), r["seq"].as_u64().unwrap()));
    }
    t
}

#[test]
fn ten_thousand_messages_through_broker_restarts_and_a_sigkill() {
    const TOTAL: u64 = 10_000;
    const SENSORS: u64 = 4;
    let setup = MqttSetup::new()
        .broker(BrokerOptions { max_queued_messages: Some(0), ..broker_opts() })
        .extra("[spool]\nfsync = \"always\"\n")
        .prepare();
    let collector = setup.broker.subscribe_persistent("test", "edge/dev1/results/#", "collector");
    let Running { dir: _dir, mut broker, config, agent, .. } = setup.start([]);
    let mut agent = Some(agent);

    let chunk = TOTAL / 10;
    for c in 0..10 {
        let lines: Vec<(String, String)> = (c * chunk..(c + 1) * chunk)
            .map(|id| (format!("sensors/s{}/accel", id % SENSORS), sensor_payload(id)))
            .collect();
        broker.publish_many("test", &lines, 1);
        match c {
            // The broker goes away twice while the agent is busy.
            2 | 6 => {
                std::thread::sleep(Duration::from_millis(300));
                broker.stop();
                std::thread::sleep(Duration::from_secs(2));
                broker.restart();
            }
            // The agent is killed mid-stream and started again.
            4 => {
                std::thread::sleep(Duration::from_millis(300));
                agent.take().unwrap().kill();
                std::thread::sleep(Duration::from_millis(500));
                agent = Some(Agent::start(&config));
            }
            _ => {}
        }
    }
    let start = Instant::now();
    let mut t = tally(&collector.messages());
    while (t.first.len() as u64) < TOTAL && start.elapsed() < secs(240) {
        std::thread::sleep(Duration::from_millis(500));
        t = tally(&collector.messages());
    }
    let missing: Vec<u64> = (0..TOTAL).filter(|id| !t.first.contains_key(id)).take(20).collect();
    assert!(
        missing.is_empty(),
        "{} of {TOTAL} inputs have no result (first missing: {missing:?}); agent log:\n{}",
        TOTAL - t.first.len() as u64,
        agent.as_ref().map(|a| a.log()).unwrap_or_default()
    );
    // In order per stream: by first arrival, input ids of one sensor only go up.
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut trail: Vec<(u64, u64, String)> = Vec::new();
    let mut passed = std::collections::HashSet::new();
    for (topic, p) in collector.messages() {
        if !topic.starts_with("edge/dev1/results/") {
            continue;
        }
        let r = json_of(&p);
        let id = r["input_id"].as_u64().unwrap();
        let stream = r["stream"].as_str().unwrap().to_string();
        if !passed.insert(id) {
            continue; // a duplicate (at least once): already counted at its first arrival
        }
        trail.push((id, r["seq"].as_u64().unwrap(), stream.clone()));
        if let Some(prev) = last.get(&stream) {
            let recent: Vec<_> = trail.iter().rev().filter(|(_, _, s)| *s == stream).take(12).collect();
            assert!(id > *prev, "stream {stream}: input {id} after {prev}; recent (input, seq): {recent:?}");
        }
        last.insert(stream, id);
    }
    let duplicates = t.arrivals - TOTAL;
    eprintln!("10k: {TOTAL} inputs, {} results delivered, {duplicates} duplicates", t.arrivals);
    agent.unwrap().stop();
}

/// A flood through a client request queue far smaller than what arrives in one read of
/// the socket: every acknowledgement the queue refuses is sent later, never dropped.
/// Dropped ones stay in flight at the broker, and once enough are held it stops sending
/// (`tests/bench/run` found this: a stall after about 107,000 messages of a flood with
/// the real queue).
#[test]
fn a_flood_past_the_request_queue_stalls_nothing() {
    const TOTAL: u64 = 3_000;
    let Running { dir: _dir, broker, subs: [collector], agent, .. } = MqttSetup::new()
        .broker(BrokerOptions { max_queued_messages: Some(0), ..broker_opts() })
        .env("EDGE_TEST_MQTT_REQUEST_QUEUE", "8")
        .start(["edge/dev1/results/#"]);
    let lines: Vec<(String, String)> =
        (0..TOTAL).map(|id| (format!("sensors/s{}/accel", id % 4), sensor_payload(id))).collect();
    broker.publish_many("test", &lines, 1);
    let start = Instant::now();
    let mut t = tally(&collector.messages());
    while (t.first.len() as u64) < TOTAL && start.elapsed() < secs(120) {
        std::thread::sleep(Duration::from_millis(300));
        t = tally(&collector.messages());
    }
    assert_eq!(t.first.len() as u64, TOTAL, "results of the flood; agent log:\n{}", agent.log());
    // And the broker still sends: one more message, one more result.
    broker.publish("test", "sensors/s0/accel", sensor_payload(TOTAL).as_bytes(), 1, false);
    collector.wait_for("the result after the flood", secs(30), |_, p| {
        p.contains(&format!("\"input_id\":{TOTAL}"))
    });
    agent.stop();
}

#[test]
fn spool_drops_telemetry_first_and_reports_it() {
    // Offline from the start: a fast simulated sensor and telemetry every second fill a
    // small spool.
    let extra = "[telemetry]\ninterval_s = 1\n\n[spool]\nmax_bytes = 65536\nsegment_bytes = 4096\nfsync = \"never\"\n\n\
                 [[source]]\nkind = \"simulated\"\nmodel = \"flat\"\nstream = \"sim\"\nsample_rate = 256000\nchunk_ms = 1\nspeed = 1\n";
    let Prepared { dir, mut broker, config, .. } = MqttSetup::new().extra(extra).prepare();
    broker.stop();
    let agent = Agent::start(&config);
    agent.wait_log("spool full", secs(60));
    std::thread::sleep(Duration::from_secs(3));
    // What waits can be looked at while the agent runs (read-only).
    let out = run(&["spool", "inspect", dir.path().join("state/spool").to_str().unwrap()], secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let waiting = json_lines(&out.stdout);
    assert!(waiting.iter().any(|r| r["class"] == "result" && r["payload"]["model"] == "flat"), "{waiting:?}");
    assert!(waiting.windows(2).all(|w| w[1]["id"].as_u64() > w[0]["id"].as_u64()), "in order");
    assert!(stderr(&out).contains("waiting"), "{}", stderr(&out));
    broker.restart();
    let sub = broker.subscribe("test", "edge/dev1/#");
    let (_, ev) = sub.wait_for("spool overflow event", secs(60), |t, p| {
        t == "edge/dev1/events" && p.contains("spool-overflow")
    });
    let ev = json_of(&ev);
    assert!(ev["detail"]["dropped_total"]["telemetry"].as_u64().unwrap() > 0, "telemetry goes first: {ev}");
    // A fresh report after reconnecting counts what was dropped.
    let (_, t) = sub.wait_for("telemetry with drops", secs(30), |t, p| {
        t == "edge/dev1/telemetry"
            && serde_json::from_str::<Value>(p).is_ok_and(|v| v["agent"]["mqtt"]["connected"] == true)
    });
    let t = json_of(&t);
    let dropped = &t["agent"]["mqtt"]["dropped"];
    assert!(dropped["telemetry"].as_u64().unwrap() > 0, "{t}");
    // Results are dropped only once no telemetry is left to drop: no result may have been
    // dropped while an offline report that survived was waiting. Each report counts the
    // results dropped before it was written, so every surviving report must count all of
    // them, but for the oldest survivor, whose own admission may have dropped results
    // (there was no telemetry left then). Reports written after the last drop survive
    // rightly: on a loaded machine the simulated source can stall while telemetry goes on.
    let all_dropped = dropped["result"].as_u64().unwrap();
    let survivors: Vec<Value> = sub
        .messages()
        .iter()
        .filter(|(t, p)| t == "edge/dev1/telemetry" && p.contains("\"connected\":false"))
        .map(|(_, p)| json_of(p))
        .collect();
    for report in survivors.iter().skip(1) {
        let before = report["agent"]["mqtt"]["dropped"]["result"].as_u64().unwrap();
        assert_eq!(
            before, all_dropped,
            "results were dropped while this report waited: {report}\nlater: {t}"
        );
    }
    assert!(sub.messages().iter().any(|(t, _)| t.starts_with("edge/dev1/results/")), "results replayed");
    agent.stop();
}

#[test]
fn postcard_telemetry_decodes_to_the_json_report() {
    let port = free_port();
    let extra = format!(
        "[telemetry]\ninterval_s = 1\nformat = \"postcard\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let Running { dir, broker: _broker, subs: [telemetry], agent, .. } =
        MqttSetup::new().extra(&extra).start(["edge/dev1/telemetry"]);

    // The local API shows the link too.
    let doc: Value = http()
        .get(&format!("http://127.0.0.1:{port}/status"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(doc["mqtt"]["connected"], true, "{doc}");
    let metrics = http()
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(metrics.contains("edge_agent_mqtt_connected 1"), "{metrics}");
    assert!(metrics.contains("edge_agent_spool_dropped_total{class=\"telemetry\"} 0"), "{metrics}");
    let m = telemetry.wait_for_message("a postcard report", secs(30), |_| true);
    assert!(serde_json::from_slice::<Value>(&m.payload).is_err(), "postcard, not JSON");
    let file = dir.path().join("report.bin");
    std::fs::write(&file, &m.payload).unwrap();
    let out = run(&["spool", "decode", file.to_str().unwrap()], secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["schema"], 3);
    assert_eq!(report["device"], "dev1");
    assert!(report["usage"]["broker"]["sent"].as_u64().unwrap() > 0, "{report}");
    assert!(report["models"]["flat"].is_object(), "{report}");
    assert!(report["system"]["mem_total"].as_u64().unwrap() > 0, "{report}");
    // The JSON form of the same report is several times larger.
    let json_len = serde_json::to_vec(&report).unwrap().len();
    eprintln!("telemetry: postcard {} bytes, JSON {json_len} bytes", m.payload.len());
    assert!(m.payload.len() * 2 < json_len, "postcard {} vs JSON {json_len}", m.payload.len());
    // Garbage is refused with a reason, not a panic.
    std::fs::write(&file, b"not a report").unwrap();
    let out = run(&["spool", "decode", file.to_str().unwrap()], secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a postcard telemetry report"), "{}", stderr(&out));
    agent.stop();
}

#[test]
fn each_sensor_keeps_its_own_windows_and_raw_payloads_decode() {
    let setup = MqttSetup::new();
    // The flat model again, reading raw little-endian f32 instead of JSON.
    let raw = setup.dir().join("raw");
    copy_model(setup.model(), &raw);
    let spec = std::fs::read_to_string(raw.join("model.toml")).unwrap();
    let spec = spec
        .replacen("name = \"flat\"", "name = \"raw\"", 1)
        .replace("format = \"json\"", "format = \"f32le\"");
    std::fs::write(raw.join("model.toml"), spec).unwrap();
    let config = move |dir: &Path, port: u16| {
        format!(
            "[agent]\ndevice_id = \"dev1\"\nstate_dir = \"{state}\"\n[output]\nstdout = false\n\
             [[model]]\npath = \"{demo}\"\n[[model]]\npath = \"{raw}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"agent\"\npassword = \"agent-pass\"\n\
             [[mqtt.sensor]]\ntopic = \"sensors/+/accel\"\nmodel = \"vibration\"\nstream_level = 1\n\
             [[mqtt.sensor]]\ntopic = \"sensors/+/raw\"\nmodel = \"raw\"\nstream_level = 1\n",
            state = dir.join("state").display(),
            demo = demo_model().display(),
            raw = raw.display(),
        )
    };
    let Running { dir: _dir, broker, subs: [results], agent, .. } =
        setup.config(config).start(["edge/dev1/results/#"]);

    // Two sensors, interleaved, 128 samples a message: the 256-sample windows (hop 128)
    // of each sensor are made from its own samples only.
    let half = |k: u64| {
        let v: Vec<String> =
            (0..128).map(|i| format!("{:.3}", ((i + k * 128) as f64 * 0.3).sin() * 0.1)).collect();
        format!("[{}]", v.join(","))
    };
    for k in 0..4 {
        for sensor in ["a", "b"] {
            broker.publish("test", &format!("sensors/{sensor}/accel"), half(k).as_bytes(), 1, false);
        }
    }
    let got = results.wait_count(6, secs(30), |t, _| t == "edge/dev1/results/vibration");
    for sensor in ["a", "b"] {
        let mine: Vec<Value> =
            got.iter().map(|(_, p)| json_of(p)).filter(|r| r["stream"] == sensor).collect();
        let windows: Vec<u64> = mine.iter().map(|r| r["window"].as_u64().unwrap()).collect();
        let offsets: Vec<u64> = mine.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
        assert_eq!(windows, [0, 1, 2], "sensor {sensor}: {mine:?}");
        assert_eq!(offsets, [0, 128, 256], "sensor {sensor}: {mine:?}");
    }

    // Raw f32: 256 little-endian floats, 1,024 bytes.
    let bytes: Vec<u8> = (0..256).flat_map(|i| (((i as f32) * 0.3).sin() * 0.1).to_le_bytes()).collect();
    broker.publish("test", "sensors/r1/raw", &bytes, 1, false);
    let (_, p) = results.wait_for("a result from raw f32", secs(30), |t, _| t == "edge/dev1/results/raw");
    let r = json_of(&p);
    assert_eq!(r["stream"], "r1", "{r}");
    assert!(r["outputs"]["label"].is_string(), "{r}");
    // Three bytes are not whole floats: refused, reported, and the agent goes on.
    let events = broker.subscribe("test", "edge/dev1/events");
    broker.publish("test", "sensors/r2/raw", &[1, 2, 3], 1, false);
    events.wait_for("request-failed for raw bytes", secs(30), |_, p| {
        p.contains("request-failed") && p.contains("r2")
    });
    agent.stop();
}

/// The MQTT counters (`agent.mqtt`) of the first telemetry report after the first
/// `after` messages of `sub` for which `pred` holds.
fn link_report(sub: &Subscription, after: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let (_, p) = sub.wait_for_after(what, after, secs(30), |t, p| {
        t == "edge/dev1/telemetry"
            && serde_json::from_str::<Value>(p).is_ok_and(|v| pred(&v["agent"]["mqtt"]))
    });
    json_of(&p)["agent"]["mqtt"].clone()
}

/// A sensor message over `max_packet_bytes` under MQTT 3.1.1 (which cannot tell the
/// broker the limit), QoS 1, persistent session: the client drops the connection at the
/// message's header, and the broker resends the message at every reconnect. The agent
/// counts it, reports it, and when it comes back on the next connection, discards the
/// session once; it is online again at once and later messages flow. (Before: 52
/// reconnects in 20 s, offline for good.) Then the same at QoS 0, which the broker does
/// not resend: counted, one reconnect, no reset.
#[test]
fn an_oversized_message_costs_one_session_reset_not_the_link() {
    let port = free_port();
    let extra = format!("[telemetry]\ninterval_s = 1\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n");
    let Running { dir: _dir, broker, status, subs: [results, events, telemetry], agent, .. } =
        MqttSetup::new().mqtt("max_packet_bytes = 4096").extra(&extra).start([
            "edge/dev1/results/#",
            "edge/dev1/events",
            "edge/dev1/telemetry",
        ]);
    broker.publish("test", "sensors/s1/accel", sensor_payload(1).as_bytes(), 1, false);
    results.wait_for("a result before", secs(30), |_, p| p.contains("\"input_id\":1"));

    let big = vec![b'x'; 10_000];
    let mark = status.messages().len();
    let sent = Instant::now();
    broker.publish("test", "sensors/big/accel", &big, 1, false);
    let (_, e) = events.wait_for("the oversize event", secs(30), |_, p| p.contains("\"message-oversize\""));
    let e = json_of(&e);
    assert_eq!(e["detail"]["limit"], 4096, "{e}");
    let size = e["detail"]["size"].as_u64().unwrap();
    assert!((10_000..10_100).contains(&size), "the size of the message's packet: {e}");
    let (_, r) = events.wait_for("the session reset event", secs(30), |_, p| p.contains("\"session-reset\""));
    // The event goes out on the connection that is back, after its online status.
    let recovered = sent.elapsed();
    let r = json_of(&r);
    assert_eq!(r["detail"]["size"], size, "{r}");
    assert!(r["detail"]["error"].as_str().unwrap().contains("every message the broker held"), "{r}");
    let late = broker.subscribe("test", "edge/dev1/status");
    late.wait_for("the retained status is online", secs(10), |_, p| p.contains("\"online\""));
    eprintln!("oversize (QoS 1, 3.1.1): back online with a fresh session {recovered:?} after the publish");
    // The bound (docs/mqtt.md): one backoff wait, at most reconnect_max_ms (1 s here),
    // and three connection set-ups. Measured: 68 to 117 ms. The margin is for slow machines.
    assert!(recovered < secs(10), "{recovered:?}");
    // The two connections the message ended left the last will; the fresh session was
    // left with a clean disconnect, which does not.
    let wills = status.messages()[mark..].iter().filter(|(_, p)| p.contains("\"offline\"")).count();
    assert_eq!(wills, 2, "{:?}", status.messages());

    // Later messages are processed; the counters say what happened, and stay.
    broker.publish("test", "sensors/s1/accel", sensor_payload(2).as_bytes(), 1, false);
    results.wait_for("a result after", secs(30), |_, p| p.contains("\"input_id\":2"));
    let mark = telemetry.messages().len();
    let m = link_report(&telemetry, mark, "counters after the reset", |m| m["session_resets"] == 1);
    assert_eq!(m["oversize"], 1, "{m}");
    assert_eq!(m["connected"], true, "{m}");
    // The connection the message ended, and the one it ended again: no more.
    assert_eq!(m["reconnects"], 2, "{m}");
    let mark = telemetry.messages().len();
    telemetry.wait_count(mark + 2, secs(30), |t, _| t == "edge/dev1/telemetry");
    let m = link_report(&telemetry, mark + 1, "a later report", |_| true);
    assert_eq!((m["reconnects"].as_u64(), m["connected"].as_bool()), (Some(2), Some(true)), "{m}");
    // The local API shows the same counters.
    let doc: Value = http()
        .get(&format!("http://127.0.0.1:{port}/status"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!((&doc["mqtt"]["oversize"], &doc["mqtt"]["session_resets"]), (&json!(1), &json!(1)), "{doc}");
    let metrics = http()
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for line in ["edge_agent_mqtt_oversize_total 1", "edge_agent_mqtt_session_resets_total 1"] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }

    // QoS 0: never resent, so one lost connection and no reset.
    let mark = events.messages().len();
    broker.publish("test", "sensors/big/accel", &big, 0, false);
    events.wait_for_after("the second oversize event", mark, secs(30), |_, p| {
        p.contains("\"message-oversize\"")
    });
    broker.publish("test", "sensors/s1/accel", sensor_payload(3).as_bytes(), 1, false);
    results.wait_for("a result after the QoS 0 one", secs(30), |_, p| p.contains("\"input_id\":3"));
    let mark = telemetry.messages().len();
    let m = link_report(&telemetry, mark, "counters after QoS 0", |m| m["oversize"] == 2);
    eprintln!("oversize (QoS 0, 3.1.1): {m}");
    assert_eq!(m["session_resets"], 1, "{m}");
    assert_eq!(m["reconnects"], 3, "{m}");
    agent.stop();
}

/// MQTT 5 tells the broker the limit (maximum packet size): Mosquitto drops an oversized
/// message itself, so the link never drops and later messages flow. The agent cannot
/// count what it never sees (docs/mqtt.md says so).
#[test]
fn mqtt5_brokers_drop_oversized_messages_themselves() {
    let Running { dir: _dir, broker, subs: [results, telemetry], agent, .. } = MqttSetup::new()
        .mqtt("version = \"5\"\nmax_packet_bytes = 4096")
        .extra("[telemetry]\ninterval_s = 1\n")
        .start(["edge/dev1/results/#", "edge/dev1/telemetry"]);
    broker.publish("test", "sensors/big/accel", &vec![b'x'; 10_000], 1, false);
    broker.publish("test", "sensors/s1/accel", sensor_payload(1).as_bytes(), 1, false);
    results.wait_for("the result after the oversized message", secs(30), |_, p| p.contains("\"input_id\":1"));
    let mark = telemetry.messages().len();
    let m = link_report(&telemetry, mark, "a report", |_| true);
    assert_eq!((m["reconnects"].as_u64(), m["oversize"].as_u64()), (Some(0), Some(0)), "{m}");
    let dropped = "Dropping too large outgoing PUBLISH for dev1";
    assert!(broker.log().contains(dropped), "Mosquitto 2 logs `{dropped}`:\n{}", broker.log());
    agent.stop();
}

/// Every reply to `id` on `replies` so far, as JSON.
fn replies_to(replies: &Subscription, id: &Value) -> Vec<Value> {
    replies
        .messages()
        .iter()
        .filter(|(t, _)| t.ends_with("/reply"))
        .filter_map(|(_, p)| serde_json::from_str::<Value>(p).ok())
        .filter(|v| v["id"] == *id)
        .collect()
}

/// `rejected` means the command never started: bad arguments, and commands this device
/// cannot run, are refused before any `accepted` (before, `accepted` came first). Ids
/// follow the rule of every id (1 to 128 of A-Z a-z 0-9 . _ -), and a refusal never
/// echoes an id or field that breaks it (a 60 KB id came back in full).
#[test]
fn commands_are_checked_before_they_are_accepted() {
    let Running { dir: _dir, broker, subs: [replies], agent, .. } =
        MqttSetup::new().start(["edge/dev1/cmd/#"]);

    for (name, payload, id, why) in [
        (
            "config/set",
            r#"{"id":"a-1","args":{"key":"telemetry.interval_s","value":"soon"}}"#,
            "a-1",
            "telemetry.interval_s",
        ),
        (
            "config/set",
            r#"{"id":"a-2","args":{"key":"mqtt.host","value":"evil"}}"#,
            "a-2",
            "cannot be changed at run time",
        ),
        (
            "config/set",
            r#"{"id":"a-3","args":{"key":"engine.deadline_ms"}}"#,
            "a-3",
            "`args.value` is missing",
        ),
        ("config/get", r#"{"id":"a-4","args":{"key":"no.such.key"}}"#, "a-4", "no key `no.such.key`"),
        ("update/check", r#"{"id":"a-5"}"#, "a-5", "no [ota] section"),
        ("fallback/force", r#"{"id":"a-6","args":{"model":"flat"}}"#, "a-6", "no [[fallback.model]]"),
        // A key the command does not take (ignored before): named, with the accepted ones.
        (
            "ping",
            r#"{"id":"a-7","args":{"verbose":true}}"#,
            "a-7",
            "`args.verbose` is not an argument of ping; it takes none",
        ),
        (
            "config/get",
            r#"{"id":"a-8","args":{"key":"telemetry.interval_s","default":1}}"#,
            "a-8",
            "`args.default` is not an argument of config/get; it takes `key`",
        ),
        (
            "update/apply",
            r#"{"id":"a-9","args":{"model":"flat","version":"2","forse":true}}"#,
            "a-9",
            "`args.forse` is not an argument of update/apply; it takes `model`, `version`, `force` and `shadow`",
        ),
    ] {
        let r = command(&broker, &replies, name, payload, id);
        assert_eq!(r["state"], "rejected", "{name}: {r}");
        assert!(r["error"].as_str().unwrap().contains(why), "{name}: {r}");
        let all = replies_to(&replies, &json!(id));
        assert_eq!(all.len(), 1, "{name}: one reply, `rejected`, and no `accepted` before it: {all:?}");
    }

    // Ids: too long (echoed in full before), not ASCII (run before), empty.
    let long = "i".repeat(1000);
    let before = replies.messages().len();
    broker.publish("test", "edge/dev1/cmd/ping", format!(r#"{{"id":"{long}"}}"#).as_bytes(), 1, false);
    let (_, p) =
        replies.wait_for_after("the refusal of a long id", before, secs(30), |t, _| t.ends_with("/reply"));
    let r = json_of(&p);
    assert_eq!((&r["id"], &r["state"]), (&Value::Null, &json!("rejected")), "{r}");
    assert!(r["error"].as_str().unwrap().contains("1 to 128 characters of A-Z a-z 0-9 . _ -"), "{r}");
    assert!(p.len() < 400, "the reply quotes a bounded part of the id: {} bytes", p.len());
    for bad in ["pompe-é", ""] {
        let r = command(&broker, &replies, "ping", &format!(r#"{{"id":"{bad}"}}"#), Value::Null);
        assert_eq!(r["state"], "rejected", "{bad:?}: {r}");
        assert!(r["error"].as_str().unwrap().starts_with("`id` must be"), "{bad:?}: {r}");
    }
    // An unknown field with a long name: named, in part.
    let wide = format!(r#"{{"id":"w-1","{}":1}}"#, "f".repeat(1900));
    let r = command(&broker, &replies, "ping", &wide, "w-1");
    assert_eq!(r["state"], "rejected", "{r}");
    assert!(r.to_string().len() < 600, "{r}");

    // A valid command still runs, with its life cycle.
    let r = command(
        &broker,
        &replies,
        "config/get",
        r#"{"id":"ok-1","args":{"key":"telemetry.interval_s"}}"#,
        "ok-1",
    );
    assert_eq!(r["state"], "succeeded", "{r}");
    let states: Vec<Value> =
        replies_to(&replies, &json!("ok-1")).iter().map(|v| v["state"].clone()).collect();
    assert_eq!(states, [json!("accepted"), json!("succeeded")]);
    agent.stop();
}

/// Stream ids taken from a topic level (`stream_level`) follow the rule the HTTP API
/// applies to its own (1 to 128 of A-Z a-z 0-9 . _ -): an empty level (which used to
/// make the whole topic the stream id), a non-ASCII one, a 60 KB one are refused,
/// counted, reported, and acknowledged; good messages go on.
#[test]
fn stream_ids_from_topic_levels_are_checked() {
    let Running { dir: _dir, broker, subs: [results, events, telemetry], agent, .. } = MqttSetup::new()
        .extra("[telemetry]\ninterval_s = 1\n")
        .start(["edge/dev1/results/#", "edge/dev1/events", "edge/dev1/telemetry"]);

    let huge = "s".repeat(60_000);
    for (i, level) in ["", "pompe-é", huge.as_str()].iter().enumerate() {
        broker.publish(
            "test",
            &format!("sensors/{level}/accel"),
            sensor_payload(i as u64).as_bytes(),
            1,
            false,
        );
    }
    broker.publish("test", "sensors/ok-1/accel", sensor_payload(9).as_bytes(), 1, false);
    results.wait_for("the good message's result", secs(30), |_, p| p.contains("\"input_id\":9"));
    let mark = telemetry.messages().len();
    let m = link_report(&telemetry, mark, "three refused", |m| m["bad_stream"] == 3);
    assert_eq!(m["reconnects"], 0, "{m}");
    let (_, e) = events.wait_for("the refusal event", secs(30), |_, p| p.contains("request-failed"));
    let e = json_of(&e);
    assert_eq!(e["model"], "flat", "{e}");
    assert!(e["detail"]["error"].as_str().unwrap().contains("stream_level"), "{e}");
    assert!(e.to_string().len() < 1000, "the event is bounded: {e}");
    let streams: Vec<String> =
        results.messages().iter().map(|(_, p)| json_of(p)["stream"].as_str().unwrap().to_string()).collect();
    assert_eq!(streams, ["ok-1"], "no result for a refused message");
    let log = agent.stop();
    assert!(log.contains("sensor message refused"), "{log}");
}

/// Retained commands: the broker replays them at every subscription, so at every
/// reconnect (flagged retained), and the agent used to answer each replay (a bad one
/// was rejected again and again). Now a retained command runs once, when it is
/// published to a connected agent; the replays, and the empty message that clears it,
/// are ignored.
#[test]
fn retained_commands_run_once_not_at_every_reconnect() {
    let setup = MqttSetup::new().prepare();
    // Left retained before the agent ever connects: a good one and an unreadable one.
    setup.broker.publish("test", "edge/dev1/cmd/ping", br#"{"id":"r-1"}"#, 1, true);
    setup.broker.publish("test", "edge/dev1/cmd/status", b"{not json", 1, true);
    let Running { dir: _dir, mut broker, status, subs: [replies], agent, .. } =
        setup.start(["edge/dev1/cmd/+/reply"]);
    // Retained messages come with the subscription acknowledgement, before this.
    assert_eq!(command(&broker, &replies, "ping", r#"{"id":"live-1"}"#, "live-1")["state"], "succeeded");

    // Published retained while the agent is connected: it arrives live, and runs.
    broker.publish("test", "edge/dev1/cmd/ping", br#"{"id":"r-2"}"#, 1, true);
    replies.wait_for("the live retained command's reply", secs(30), |_, p| {
        p.contains("\"r-2\"") && p.contains("succeeded")
    });
    // Cleared with an empty retained message: nothing to answer.
    broker.publish("test", "edge/dev1/cmd/status", b"", 1, true);

    // The broker restarts (retained messages persist); the agent reconnects and
    // subscribes again, and the broker replays what is retained.
    let mark = status.messages().len();
    broker.restart();
    status.wait_for_after("online after the broker restart", mark, secs(30), |_, p| p.contains("\"online\""));
    assert_eq!(command(&broker, &replies, "ping", r#"{"id":"live-2"}"#, "live-2")["state"], "succeeded");
    assert_eq!(replies_to(&replies, &json!("r-1")), Vec::<Value>::new(), "a replayed command is not run");
    assert_eq!(replies_to(&replies, &Value::Null), Vec::<Value>::new(), "nor refused");
    let r2: Vec<Value> = replies_to(&replies, &json!("r-2"));
    assert_eq!(r2.len(), 2, "accepted and succeeded, once: {r2:?}");
    let log = agent.stop();
    assert!(log.contains("command message ignored"), "{log}");
}

/// A broker that accepts every connection and drops it right after the CONNACK (as a
/// resent oversized message did, or a broker kicking a duplicate client id): each such
/// connection is a failure, so the waits between connects grow. Before, a successful
/// connect reset the backoff, and the agent came back every 50 to 100 ms for ever.
#[test]
fn reconnect_backoff_grows_when_connections_drop_right_after_the_connect() {
    use std::io::{Read, Write};
    let dir = tempdir();
    let model = flat_model(dir.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // reconnect_min_ms = 100 and reconnect_max_ms = 1000 from write_config.
    let config = write_config(dir.path(), port, &model, "", "");
    let agent = Agent::start(&config);
    let mut connects = Vec::new();
    while connects.len() < 6 {
        let (mut socket, _) = listener.accept().unwrap();
        connects.push(Instant::now());
        socket.set_read_timeout(Some(secs(10))).unwrap();
        // The CONNECT packet, then CONNACK (session not present, accepted), then close.
        let mut buf = [0u8; 1024];
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0 && buf[0] == 0x10, "a CONNECT packet: {:?}", &buf[..n]);
        socket.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap();
    }
    let gaps: Vec<Duration> = connects.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("gaps between connects: {gaps:?}");
    // Each wait is 50-100% of a base that doubles from 100 ms up to the 1000 ms cap
    // (100, 200, 400, 800, 1000): the 3rd to 5th waits are at least 200, 400 and 500 ms.
    // Lower bounds only: a slow machine lengthens the gaps, never shortens them.
    for (i, least) in [(2, 200), (3, 400), (4, 500)] {
        assert!(gaps[i] >= Duration::from_millis(least), "wait {i}: {gaps:?}");
    }
    drop(listener);
    agent.stop();
}

/// A JSON sensor message that begins with a UTF-8 byte-order mark is read like any
/// other, and its `id` still comes back on the result.
#[test]
fn a_sensor_message_with_a_byte_order_mark_keeps_its_id() {
    let Running { dir: _dir, broker, subs: [results], agent, .. } =
        MqttSetup::new().start(["edge/dev1/results/#"]);
    let payload = format!("\u{feff}{}", sensor_payload(7));
    broker.publish("test", "sensors/pump-1/accel", payload.as_bytes(), 1, false);
    let (_, p) = results.wait_for("result of the marked message", secs(30), |_, p| p.contains("input_id"));
    let r = json_of(&p);
    assert_eq!(r["input_id"], json!(7), "{r}");
    assert!(r["outputs"]["label"].is_string(), "{r}");
    agent.stop();
}
