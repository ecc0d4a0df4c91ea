//! `edge-agent fleet status` against a real Mosquitto and a fleet of real agents on two
//! model versions: counts per version and state, devices killed with SIGKILL shown
//! offline through their last will, filters, sorting, `--watch` into a pipe, and a fake
//! device's malformed retained messages shown without breaking the view.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::broker::{Broker, BrokerOptions};
use crate::common::registry::model_version;
use crate::common::*;

const FLEET: usize = 24;
/// Devices dev-00 .. dev-13 run version 1 of the demo model, the rest version 2.
const ON_V1: usize = 14;

/// Starts one agent as `id` on `model`, with telemetry every second; its config path.
fn start_agent(work: &Path, id: &str, model: &Path, port: u16) -> (PathBuf, Guard) {
    let dir = work.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    // The API on a unix socket only, as in the OTA fleet: no TCP ports to collide.
    let text = format!(
        "[agent]\ndevice_id = \"{id}\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"\"\nsocket = \"{}\"\n\n[engine]\nspin_us = 0\n\n{}",
        dir.join("state").display(),
        dir.join("api.sock").display(),
        crate::ota::body(model, Some(port), "[telemetry]\ninterval_s = 1\n")
            .replace("speed = 5", "speed = 1")
    );
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = Command::new(bin())
        .args(["run", "--config", config.to_str().unwrap(), "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (config, Guard(child))
}

/// `fleet status` as the test user, with `extra` arguments; its exit status, stdout and
/// stderr are checked, and the time it took returned.
pub(crate) fn fleet_status(broker: &Broker, pass: &Path, extra: &[&str]) -> (String, Duration) {
    let port = broker.port.to_string();
    let mut args = vec!["fleet", "status", "--host", "127.0.0.1", "--port", &port, "--username", "test"];
    args.extend(["--password-file", pass.to_str().unwrap()]);
    args.extend(extra);
    let start = Instant::now();
    let out = run(&args, secs(60));
    let took = start.elapsed();
    assert!(out.status.success(), "{args:?}: {}\n{}", out.status, stderr(&out));
    (String::from_utf8(out.stdout).unwrap(), took)
}

pub(crate) fn json(broker: &Broker, pass: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--json"];
    args.extend(extra);
    let (text, _) = fleet_status(broker, pass, &args);
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["complete"], true, "{doc}");
    doc
}

fn ids(doc: &Value) -> Vec<String> {
    doc["devices"].as_array().unwrap().iter().map(|d| d["device"].as_str().unwrap().to_string()).collect()
}

/// (devices, online, offline) of one version of the demo model in the summary.
pub(crate) fn version_counts(doc: &Value, version: &str) -> (u64, u64, u64) {
    let v = doc["summary"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["model"] == "vibration" && v["version"] == version)
        .unwrap_or_else(|| panic!("no vibration@{version} in {}", doc["summary"]));
    (v["devices"].as_u64().unwrap(), v["online"].as_u64().unwrap(), v["offline"].as_u64().unwrap())
}

#[test]
fn fleet_status_counts_versions_shows_killed_agents_offline_and_survives_malformed_devices() {
    let work = tempdir();
    let broker = Broker::start(BrokerOptions::default());
    let pass = work.path().join("test-pass");
    std::fs::write(&pass, "test-pass\n").unwrap();
    let statuses = broker.subscribe("test", "edge/+/status");
    let v2 = model_version(work.path(), "2", |_| {});
    let ids_all: Vec<String> = (0..FLEET).map(|i| format!("dev-{i:02}")).collect();
    let mut fleet = Vec::new();
    for (i, id) in ids_all.iter().enumerate() {
        let model = if i < ON_V1 { demo_model() } else { v2.clone() };
        fleet.push(start_agent(work.path(), id, &model, broker.port));
    }
    statuses.wait_count(FLEET, secs(120), |_, p| p.contains("\"state\":\"online\""));

    // Everyone online, on the version it was given, active.
    let (doc, took) = {
        let start = Instant::now();
        (json(&broker, &pass, &[]), start.elapsed())
    };
    assert_eq!(doc["summary"]["devices"], FLEET, "{}", doc["summary"]);
    assert_eq!(doc["summary"]["online"], FLEET);
    assert_eq!(version_counts(&doc, "1"), (ON_V1 as u64, ON_V1 as u64, 0));
    assert_eq!(version_counts(&doc, "2"), ((FLEET - ON_V1) as u64, (FLEET - ON_V1) as u64, 0));
    for d in doc["devices"].as_array().unwrap() {
        assert_eq!(d["models"]["vibration"]["state"], "active", "{d}");
        assert_eq!(d["agent_version"], env!("CARGO_PKG_VERSION"), "{d}");
    }
    assert_eq!(ids(&doc), ids_all, "sorted by device id");

    // With --listen, live telemetry (every second here) adds each model's drift verdict.
    let listened = json(&broker, &pass, &["--listen", "2.5"]);
    for d in listened["devices"].as_array().unwrap() {
        assert_eq!(d["models"]["vibration"]["drifting"], false, "{d}");
    }
    assert!(doc["devices"][0]["models"]["vibration"]["drifting"].is_null(), "no telemetry without --listen");

    // The broker settings can come from an agent's own config file instead of flags.
    let by_config = run(
        &["fleet", "status", "--json", "--config", fleet[0].0.to_str().unwrap(), "--device", "dev-0?"],
        secs(60),
    );
    assert!(by_config.status.success(), "{}", stderr(&by_config));
    let by_config: Value = serde_json::from_slice(&by_config.stdout).unwrap();
    assert_eq!(ids(&by_config), ids_all[..10]);

    // Watch into a pipe: a line per device at first, then a line per change.
    let port = broker.port.to_string();
    let mut watch = Guard(
        Command::new(bin())
            .args(["fleet", "status", "--watch", "--json", "--host", "127.0.0.1", "--port", &port])
            .args(["--username", "test", "--password-file", pass.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = std::sync::mpsc::channel::<Value>();
    let out = std::io::BufReader::new(watch.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or(Value::Null));
        }
    });
    let mut first = std::collections::BTreeSet::new();
    while first.len() < FLEET {
        let v = lines.recv_timeout(secs(30)).expect("a watch line per device");
        first.insert(v["device"]["device"].as_str().unwrap().to_string());
    }

    // Kill five agents, three of version 1 and two of version 2: their last will says
    // offline, without models (registered at connect time, it cannot know what serves
    // when the agent vanishes), so a one-shot view counts them under no version.
    let killed = ["dev-01", "dev-05", "dev-09", "dev-15", "dev-20"];
    let before = statuses.messages().len();
    for id in killed {
        let i = ids_all.iter().position(|x| x == id).unwrap();
        fleet[i].1.0.kill().unwrap();
    }
    for id in killed {
        statuses.wait_for_after(&format!("{id}'s last will"), before, secs(30), |t, p| {
            t == format!("edge/{id}/status") && p.contains("\"state\":\"offline\"")
        });
    }
    let doc = json(&broker, &pass, &[]);
    assert_eq!(doc["summary"]["online"], FLEET - killed.len(), "{}", doc["summary"]);
    assert_eq!(doc["summary"]["offline"], killed.len());
    assert_eq!(version_counts(&doc, "1"), (ON_V1 as u64 - 3, ON_V1 as u64 - 3, 0));
    assert_eq!(version_counts(&doc, "2"), ((FLEET - ON_V1) as u64 - 2, (FLEET - ON_V1) as u64 - 2, 0));
    // The watcher printed each of them going offline, and still knows what they ran.
    let mut offline = std::collections::BTreeSet::new();
    let limit = Instant::now() + secs(30);
    while offline.len() < killed.len() && Instant::now() < limit {
        if let Ok(v) = lines.recv_timeout(secs(1))
            && v["device"]["online"] == false
        {
            offline.insert(v["device"]["device"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(offline.into_iter().collect::<Vec<_>>(), killed, "watch lines for the killed devices");
    drop(watch);

    // Filters and sorting.
    assert_eq!(ids(&json(&broker, &pass, &["--state", "offline"])), killed);
    let dead = json(&broker, &pass, &["--state", "offline"]);
    for d in dead["devices"].as_array().unwrap() {
        assert_eq!(d["models"], serde_json::json!({}), "a last will names no models: {d}");
    }
    let online_v2 = json(&broker, &pass, &["--model", "vibration", "--version", "2", "--state", "online"]);
    assert_eq!(online_v2["summary"]["devices"], FLEET - ON_V1 - 2);
    assert_eq!(
        ids(&json(&broker, &pass, &["--device", "dev-1*", "--version", "1"])),
        ["dev-10", "dev-11", "dev-12", "dev-13"]
    );
    let by_link = ids(&json(&broker, &pass, &["--sort", "online"]));
    assert_eq!(by_link[..killed.len()], killed, "offline first");
    let by_version = json(&broker, &pass, &["--sort", "version"]);
    let versions: Vec<&str> = by_version["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["models"]["vibration"]["version"].as_str())
        .collect();
    assert_eq!(versions.len(), FLEET - killed.len(), "{versions:?}");
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    assert!(json(&broker, &pass, &["--model", "no-such-model"])["devices"].as_array().unwrap().is_empty());

    // A fake device publishes malformed retained messages; the view shows them as such
    // and its counts of the real fleet do not move.
    broker.publish("test", "edge/fake-1/status", b"{not json", 1, true);
    broker.publish("test", "edge/fake-2/status", br#"{"state":"online","models":["vibration"]}"#, 1, true);
    broker.publish("test", "edge/fake-3/status", &[0xff; 3000], 1, true);
    let doc = json(&broker, &pass, &[]);
    assert_eq!(doc["summary"]["devices"], FLEET + 3, "{}", doc["summary"]);
    assert_eq!(doc["summary"]["malformed"], 3);
    assert_eq!(version_counts(&doc, "1"), (ON_V1 as u64 - 3, ON_V1 as u64 - 3, 0));
    let fake = json(&broker, &pass, &["--state", "malformed"]);
    assert_eq!(ids(&fake), ["fake-1", "fake-2", "fake-3"]);
    let problem = fake["devices"][0]["problem"].as_str().unwrap();
    assert!(problem.starts_with("status: not JSON"), "{problem}");

    // The table for people: a header, the rows, the summary, fit to no terminal (a pipe).
    let (table, _) = fleet_status(&broker, &pass, &["--state", "offline"]);
    let mut rows = table.lines();
    assert!(rows.next().unwrap().starts_with("DEVICE"), "{table}");
    assert!(table.contains("dev-15  offline"), "{table}");
    assert!(table.contains("5 devices: 0 online, 5 offline"), "{table}");

    eprintln!(
        "fleet status of {FLEET} devices: {:.0} ms (the first one-shot run)",
        took.as_secs_f64() * 1000.0
    );
    // Its peak RSS, for the record (docs/fleet.md), where GNU time is installed.
    if Path::new("/usr/bin/time").exists() {
        let port = broker.port.to_string();
        let mut cmd = Command::new("/usr/bin/time");
        cmd.args(["-f", "fleet status: %e s wall, %M KiB peak RSS"]).arg(bin());
        cmd.args(["fleet", "status", "--json", "--host", "127.0.0.1", "--port", &port, "--username", "test"]);
        cmd.args(["--password-file", pass.to_str().unwrap()]);
        let out = run_with(&mut cmd, None, secs(60));
        eprintln!("{}", stderr(&out).trim());
    }
}
