//! Signed model updates end to end: a registry made by `edge-agent registry`, served on
//! loopback by a server that misbehaves on request; agents that check it, refuse what
//! they must, activate, watch probation, roll back, and survive SIGKILL at every step.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::broker::{Broker, BrokerOptions};
use crate::common::registry::*;
use crate::common::*;
use edge_agent::ota::serve::Fault;

pub(crate) use crate::common::fleet::body;

fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().filter_map(|e| e["kind"].as_str().map(str::to_string)).collect()
}

#[test]
fn an_update_is_activated_kept_after_probation_and_rolled_back_on_command() {
    let p = Publisher::new(1);
    let work = tempdir();
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let reg = Served::start(&p.repo());
    let broker = Broker::start(BrokerOptions::default());
    let events = broker.subscribe("test", "edge/it/events");
    let ota = ota_section(&reg.url, &p.root_v1(), "[ota.probation]\nrequests = 20\n");
    let d = Daemon::start("run", &body(&demo_model(), Some(broker.port), &ota), "", &[]);

    // The first check comes by itself within seconds of start.
    wait_status(&d, "version 2 kept after probation", secs(60), |s| {
        s["models"]["vibration"]["version"] == "2" && s["ota"]["models"]["vibration"]["kept"] == "2"
    });
    let flow =
        ["update-downloading", "update-downloaded", "selftest-passed", "model-activated", "probation-passed"];
    for kind in flow {
        events.wait_for(kind, secs(20), |_, p| p.contains(&format!("\"kind\":\"{kind}\"")));
    }
    let seen: Vec<Value> =
        events.messages().iter().filter_map(|(_, p)| serde_json::from_str(p).ok()).collect();
    // (The start-up announcement of version 1 comes before.)
    let order: Vec<String> = kinds(&seen)
        .into_iter()
        .skip_while(|k| k != "update-downloading")
        .filter(|k| flow.contains(&k.as_str()))
        .collect();
    assert_eq!(order, flow, "events in the order of the update's steps");
    let passed = seen.iter().find(|e| e["kind"] == "probation-passed").unwrap();
    assert!(passed["detail"]["numbers"]["requests"].as_u64().unwrap() >= 20, "{passed}");
    assert_eq!(passed["detail"]["numbers"]["errors"], 0);

    // An unchanged registry costs a conditional timestamp request (answered 304 with no
    // body) and the specification's probe for a next root version (404).
    let (requests, ts, roots, bytes) = (
        reg.faults.requests(),
        reg.faults.requests_for("timestamp.json"),
        reg.faults.requests_for("2.root.json"),
        reg.faults.bytes_served(),
    );
    let (code, check) = post(&d, "/ota/check", json!({}));
    assert_eq!(code, 200, "{check}");
    assert_eq!(check["registry"]["changed"], false, "{check}");
    assert_eq!(reg.faults.requests() - requests, 2, "timestamp.json and the next root only");
    assert_eq!(reg.faults.requests_for("timestamp.json") - ts, 1);
    assert_eq!(reg.faults.requests_for("2.root.json") - roots, 1);
    assert_eq!(reg.faults.bytes_served() - bytes, 0, "no metadata body was sent");

    // A key the command does not take is refused, named with the accepted ones, as over
    // MQTT (the same argument types); nothing is done.
    for (path, body, why) in [
        (
            "/ota/apply",
            json!({"model": "vibration", "version": "1", "forse": true}),
            "`forse` is not an argument of update/apply; it takes `model`, `version`, `force` and `shadow`",
        ),
        (
            "/ota/rollback",
            json!({"model": "vibration", "version": "1"}),
            "`version` is not an argument of rollback; it takes `model`",
        ),
        ("/ota/check", json!({"force": true}), "`force` is not an argument of update/check; it takes none"),
    ] {
        let (code, v) = post(&d, path, body);
        assert_eq!((code, &v["error"]), (400, &json!(why)), "{path}: {v}");
    }
    assert_eq!(serving(&d), "2");

    // The CLI on the device: list, then roll back.
    let sock = d.socket.to_str().unwrap().to_string();
    let out = run(&["model", "list", "--socket", &sock, "--json"], secs(10));
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["models"][0]["version"], "2", "{list}");
    assert_eq!(list["models"][0]["previous"], "1", "{list}");
    let out = run(&["model", "rollback", "--socket", &sock, "--json"], secs(60));
    // With the agent's own log: once under a loaded CI run the connection broke here.
    assert!(out.status.success(), "{}\nthe agent's log:\n{}", stderr(&out), d.log.lock().unwrap());
    assert_eq!(serving(&d), "1");
    events.wait_for("model-rolled-back", secs(20), |_, p| p.contains("model-rolled-back"));
    let s = status(&d);
    assert!(s["ota"]["models"]["vibration"]["bad"]["2"].as_str().unwrap().contains("operator"), "{s:#}");
    assert_eq!(s["models"]["vibration"]["state"], "rolled-back", "{s:#}");

    // A version rolled back is never taken again by a check.
    let out = run(&["update", "check", "--socket", &sock, "--json"], secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    let skipped = check["models"]["vibration"]["skipped"].to_string();
    assert!(skipped.contains("marked bad"), "{check:#}");
    assert_eq!(serving(&d), "1");

    // update/apply over MQTT, with force, takes it back.
    let cmd = json!({"id": "apply-1", "args": {"model": "vibration", "version": "2", "force": true}});
    let replies = broker.subscribe("test", "edge/it/cmd/update/apply/reply");
    broker.publish("test", "edge/it/cmd/update/apply", cmd.to_string().as_bytes(), 1, false);
    replies.wait_for("apply succeeded", secs(60), |_, p| p.contains("succeeded"));
    assert_eq!(serving(&d), "2");
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn attacks_on_the_registry_are_refused_and_the_old_model_keeps_serving() {
    // Targets need 2 of 2 keys: a signature short of that is an attack too.
    let p = Publisher::new(2);
    let work = tempdir();
    let reg = Served::start(&p.repo());
    let broker = Broker::start(BrokerOptions::default());
    let events = broker.subscribe("test", "edge/it/events");
    let ota =
        ota_section(&reg.url, &p.root_v1(), "min_rate_bytes_s = 20000\n[ota.probation]\nrequests = 10\n");
    let d = Daemon::start("run", &body(&demo_model(), Some(broker.port), &ota), "", &[]);
    let check = || post(&d, "/ota/check", json!({}));
    let refused = |what: &str, code_body: (u16, Value), needle: &str, serves: &str| {
        let (code, v) = code_body;
        let text = v.to_string();
        assert!(code == 422 || text.contains("refused"), "{what}: expected a refusal, got {code} {v}");
        assert!(text.contains(needle), "{what}: the refusal should mention `{needle}`: {v}");
        assert_eq!(serving(&d), serves, "{what}: the old model keeps serving");
    };
    // Let the check the agent makes by itself at start pass first.
    wait_status(&d, "the first check", secs(30), |s| s["ota"]["last_check"]["ok"] == true);
    let (code, v) = check();
    assert_eq!(code, 200, "{v}");

    // A blob whose bytes are not what the metadata says.
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let blob = p.target_path("2");
    let len = std::fs::metadata(p.repo().join(&blob)).unwrap().len() as usize;
    reg.faults.set(&blob, Fault::Replace(vec![b'x'; len]));
    refused("wrong hash", check(), "SHA-256", "1");
    // A server that trickles: the slow-retrieval attack (cut after one 10 s window).
    reg.faults.set(&blob, Fault::Trickle { bytes_per_s: 2000 });
    refused("slow retrieval", check(), "slow-retrieval", "1");
    // More bytes than stated: the endless-data attack (resuming what the trickle left).
    reg.faults.set(&blob, Fault::Extra(1 << 20));
    refused("endless data", check(), "endless-data", "1");
    reg.faults.clear();
    events.wait_for("update-rejected events", secs(10), |_, p| p.contains("update-rejected"));

    // Targets signed by one key of the two required, and by a key root does not know.
    let ts_before = p.meta("timestamp.json");
    p.publish(&model_version(work.path(), "3", |_| {}), 100, &[]);
    let targets_name = format!("{}.targets.json", targets_version(&p));
    let good_targets = p.meta(&targets_name);
    reg.faults.set(&targets_name, Fault::Replace(resign(&good_targets, &[&key(&p, "targets")])));
    refused("below threshold", check(), "required", "1");
    let rogue = edge_tuf::keys::PrivateKey::generate().unwrap();
    reg.faults.set(&targets_name, Fault::Replace(resign(&good_targets, &[&key(&p, "targets"), &rogue])));
    refused("unknown key", check(), "required", "1");
    reg.faults.clear();

    // An older timestamp than the device has seen: the rollback attack. First let the
    // device see the current one (it installs 3, the newest).
    let (code, v) = check();
    assert_eq!(code, 200, "{v}");
    wait_status(&d, "version 3 kept", secs(30), |s| {
        s["models"]["vibration"]["version"] == "3" && s["ota"]["models"]["vibration"]["kept"] == "3"
    });
    reg.faults.set("metadata/timestamp.json", Fault::Replace(ts_before));
    let (_, v) = check();
    assert!(v.to_string().contains("rollback") && v.to_string().contains("timestamp"), "{v}");
    assert_eq!(serving(&d), "3");
    reg.faults.clear();

    // Mix and match: the snapshot the timestamp names is swapped for an older one.
    p.publish(&model_version(work.path(), "4", |_| {}), 100, &[]);
    let snap_v = snapshot_version(&p);
    let older = p.meta(&format!("{}.snapshot.json", snap_v - 1));
    reg.faults.set(&format!("metadata/{snap_v}.snapshot.json"), Fault::Replace(older));
    let (_, v) = check();
    assert!(v.to_string().contains("snapshot"), "{v}");
    assert_eq!(serving(&d), "3");
    reg.faults.clear();

    // A root rotation signed by the new root key only is refused...
    p.keygen("root-new");
    let bad_root = sign_root_with(&p, &["root-new"]);
    let next_root = format!("metadata/{}.root.json", 2);
    std::fs::write(p.repo().join(&next_root), &bad_root).unwrap();
    let (_, v) = check();
    assert!(v.to_string().contains("root"), "{v}");
    assert_eq!(status(&d)["ota"]["registry"]["root"], 1);
    std::fs::remove_file(p.repo().join(&next_root)).unwrap();
    // ...one signed by the old and the new keys is followed, and revokes targets2.
    p.keygen("targets3");
    let (repo, keys) = (p.repo().display().to_string(), p.keys().display().to_string());
    let pubkey = |k: &str| p.keys().join(format!("{k}.key.pub")).display().to_string();
    p.cli(&[
        "rotate-root",
        "--repo",
        &repo,
        "--keys",
        &keys,
        "--root-key",
        &pubkey("root-new"),
        "--targets-key",
        &pubkey("targets"),
        "--targets-key",
        &pubkey("targets3"),
        "--targets-threshold",
        "2",
    ]);
    let (code, v) = check();
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["registry"]["root"], 2, "{v}");
    assert_eq!(serving(&d), "4", "updates continue after the rotation: {v} {:#}", status(&d)["ota"]);
    events.wait_for("root-rotated", secs(10), |_, p| p.contains("root-rotated"));
    // Targets signed with the revoked key (targets + targets2) no longer count.
    p.publish(&model_version(work.path(), "5", |_| {}), 100, &[]);
    let targets_name = format!("{}.targets.json", targets_version(&p));
    let t = p.meta(&targets_name);
    reg.faults.set(&targets_name, Fault::Replace(resign(&t, &[&key(&p, "targets"), &key(&p, "targets2")])));
    refused("revoked key", check(), "required", "4");
    reg.faults.clear();

    // Expired metadata: the registry stops re-signing its timestamp (frozen).
    p.cli(&["timestamp", "--repo", &repo, "--keys", &keys, "--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let (_, v) = check();
    assert!(v.to_string().contains("expired"), "{v}");
    assert_eq!(serving(&d), "4");
    events.wait_for("registry-frozen", secs(10), |_, p| p.contains("registry-frozen"));
    let (status, _) = d.stop();
    assert!(status.success());
}

/// The highest targets version in the registry.
fn targets_version(p: &Publisher) -> u64 {
    highest(p, "targets")
}

fn snapshot_version(p: &Publisher) -> u64 {
    highest(p, "snapshot")
}

fn highest(p: &Publisher, role: &str) -> u64 {
    std::fs::read_dir(p.repo().join("metadata"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(&format!(".{role}.json")).and_then(|v| v.parse().ok())
        })
        .max()
        .unwrap()
}

fn key(p: &Publisher, name: &str) -> edge_tuf::keys::PrivateKey {
    edge_tuf::keys::PrivateKey::read(&p.keys().join(format!("{name}.key"))).unwrap()
}

/// The same metadata, signed by `keys` instead.
fn resign(bytes: &[u8], keys: &[&edge_tuf::keys::PrivateKey]) -> Vec<u8> {
    let env = edge_tuf::metadata::Envelope::from_slice(bytes, "test").unwrap();
    edge_tuf::metadata::Envelope::sign(&env.signed, keys).unwrap().to_bytes().unwrap()
}

/// Root version 2 naming `keys` as root keys, signed by them only.
fn sign_root_with(p: &Publisher, keys: &[&str]) -> Vec<u8> {
    let env = edge_tuf::metadata::Envelope::from_slice(&p.meta("1.root.json"), "root").unwrap();
    let mut signed = env.signed.clone();
    let signers: Vec<_> = keys.iter().map(|k| key(p, k)).collect();
    let ids: Vec<String> = signers.iter().map(|k| k.key_id()).collect();
    for k in &signers {
        signed["keys"][k.key_id()] = serde_json::to_value(k.public()).unwrap();
    }
    signed["roles"]["root"]["keyids"] = json!(ids);
    signed["version"] = json!(2);
    let refs: Vec<&_> = signers.iter().collect();
    edge_tuf::metadata::Envelope::sign(&signed, &refs).unwrap().to_bytes().unwrap()
}

#[test]
fn a_failed_self_test_is_refused_and_a_failed_probation_rolls_back() {
    let p = Publisher::new(1);
    let work = tempdir();
    // Version 2's golden vectors expect other numbers than its model gives.
    let v2 = model_version(work.path(), "2", |dir| {
        let path = dir.join("selftest.json");
        let mut golden: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        golden["cases"][0]["expected"][0] = json!(0.5);
        std::fs::write(&path, golden.to_string()).unwrap();
    });
    // `registry publish` runs the self-test itself and refuses; sneak it in by hand to
    // play a publisher whose tooling was bypassed.
    let out = p.try_publish(&v2, &[]);
    assert!(!out.status.success() && stderr(&out).contains("self-test"), "{}", stderr(&out));
    publish_unchecked(&p, &v2, "2");
    let reg = Served::start(&p.repo());
    let ota = ota_section(
        &reg.url,
        &p.root_v1(),
        "[ota.probation]\nrequests = 20\nmin_requests = 10\nlatency_floor_ms = 10000\n",
    );
    let d = Daemon::start("run", &body(&demo_model(), None, &ota), "", &[]);
    let (_, v) = post(&d, "/ota/check", json!({}));
    assert!(v.to_string().contains("self-test failed"), "{v}");
    assert_eq!(serving(&d), "1");
    let s = status(&d);
    assert!(s["ota"]["models"]["vibration"]["bad"]["2"].as_str().unwrap().contains("golden"), "{s:#}");

    // Version 3 passes its self-test (golden vectors are 256-sample windows) but its spec
    // lost the window: every 100-sample sensor chunk is now an input error.
    let v3 = model_version(work.path(), "3", |dir| {
        let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
        std::fs::write(dir.join("model.toml"), spec.replace("[pre.window]\nsize = 256\nhop = 128\n", ""))
            .unwrap();
    });
    p.publish(&v3, 100, &[]);
    let (code, v) = post(&d, "/ota/check", json!({}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["models"]["vibration"]["action"], "activated 3", "{v}");
    let s = wait_status(&d, "rolled back to 1", secs(60), |s| {
        s["models"]["vibration"]["version"] == "1" && s["ota"]["models"]["vibration"]["bad"]["3"].is_string()
    });
    let why = s["ota"]["models"]["vibration"]["bad"]["3"].as_str().unwrap();
    assert!(why.contains("failed probation") && why.contains("error rate"), "{why}");
    let (status, log) = d.stop();
    assert!(status.success());
    assert!(log.contains("model-rolled-back"), "the rollback is logged");
}

/// Publishes a model directory without the publisher's self-test (a registry written by
/// other tooling), through the library.
pub(crate) fn publish_unchecked(p: &Publisher, model: &Path, version: &str) {
    use edge_tuf::repo::{Expiries, Repository};
    let (bytes, _) = edge_agent::ota::package::pack(model).unwrap();
    let mut repo = Repository::open(&p.repo()).unwrap();
    let custom = json!({"model": "vibration", "version": version, "rollout": {"percent": 100, "salt": "s"}});
    repo.add_target(&format!("stable/vibration/{version}.tar"), &bytes, custom).unwrap();
    let signers: Vec<_> =
        ["targets", "targets2", "snapshot", "timestamp"].iter().map(|k| key(p, k)).collect();
    repo.commit(&signers, std::time::SystemTime::now(), &Expiries::default()).unwrap();
}

#[test]
fn sigkill_at_every_step_of_an_update_leaves_the_old_or_the_new_model() {
    let p = Publisher::new(1);
    let work = tempdir();
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let reg = Served::start(&p.repo());
    // Slow the package down so a kill half-way through the download lands mid-transfer.
    let steps = [
        "download",
        "downloaded",
        "staged",
        "selftested",
        "activate-state-written",
        "activate-between-links",
        "activated",
    ];
    for step in steps {
        let state = tempdir();
        let ota = ota_section(&reg.url, &p.root_v1(), "");
        let config = state.path().join("agent.toml");
        let port = free_port();
        let socket = state.path().join("api.sock");
        std::fs::write(
            &config,
            Daemon::config_text(state.path(), port, &socket, &body(&demo_model(), None, &ota), ""),
        )
        .unwrap();
        let mut child = std::process::Command::new(bin())
            .args(["run", "--config", config.to_str().unwrap(), "--log-format", "json"])
            .env(edge_agent::ota::fault::ENV, step)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let status = wait_timeout(&mut child, secs(60))
            .unwrap_or_else(|| panic!("{step}: the fault switch did not fire"));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{step}: killed by SIGKILL");
        // What a restart serves is what `current` says, whole.
        let current = std::fs::read_link(state.path().join("state/models/vibration/current")).ok();
        let d = restart(state.path(), &config, port, &socket);
        let v = serving(&d);
        match &current {
            Some(link) if link.ends_with("versions/2") => assert_eq!(v, "2", "{step}: current → 2 serves 2"),
            _ => assert_eq!(v, "1", "{step}: no switch yet, 1 serves"),
        }
        // And the update finishes (the first check after start retries it).
        wait_status(&d, &format!("{step}: update finished"), secs(60), |s| {
            s["models"]["vibration"]["version"] == "2"
        });
        let (status, _) = d.stop();
        assert!(status.success(), "{step}");
    }
}

/// Starts a daemon on an existing config and state.
pub(crate) fn restart(dir: &Path, config: &Path, port: u16, socket: &Path) -> Daemon {
    let mut command = std::process::Command::new(bin());
    command.args(["run", "--config", config.to_str().unwrap(), "--log-format", "json"]);
    let mut child = Guard(
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap(),
    );
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    read_into(child.0.stderr.take().unwrap(), log.clone());
    let d = Daemon {
        child,
        log,
        port,
        socket: socket.to_path_buf(),
        dir: tempfile::Builder::new().tempdir_in(dir).unwrap(),
        config: config.to_path_buf(),
    };
    d.wait_ready(secs(60));
    d
}

/// A version pulled from the registry (`registry promote --pull`, as a halted `fleet
/// rollout` does) leaves the devices that run it: back to the previous version with a
/// `model-pulled` event, not marked bad; a pinned device keeps it. (Before, a pulled
/// version stayed on every device that had it.)
#[test]
fn a_pulled_version_goes_back_to_the_previous_one_unless_pinned() {
    let p = Publisher::new(1);
    let work = tempdir();
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let reg = Served::start(&p.repo());
    let broker = Broker::start(BrokerOptions::default());
    let events = broker.subscribe("test", "edge/+/events");
    let probation = "[ota.probation]\nrequests = 5\nmin_requests = 5\nlatency_floor_ms = 10000\n";
    let ota = ota_section(&reg.url, &p.root_v1(), probation);
    let free = Daemon::start("run", &body(&demo_model(), Some(broker.port), &ota), "", &[]);
    let pinned_ota =
        ota_section(&reg.url, &p.root_v1(), &format!("pin = {{ vibration = \"2\" }}\n{probation}"));
    // (Without MQTT: two agents of one device id would take each other's connection.)
    let pinned = Daemon::start("run", &body(&demo_model(), None, &pinned_ota), "", &[]);
    for d in [&free, &pinned] {
        wait_status(d, "version 2 kept", secs(60), |s| s["ota"]["models"]["vibration"]["kept"] == "2");
    }

    let (repo, keys) = (p.repo().display().to_string(), p.keys().display().to_string());
    p.cli(&["promote", "--repo", &repo, "--keys", &keys, "--model", "vibration", "--version", "2", "--pull"]);
    for d in [&free, &pinned] {
        let (code, v) = post(d, "/ota/check", json!({}));
        assert_eq!(code, 200, "{v}");
    }
    assert_eq!(serving(&free), "1", "the pulled version left");
    let (_, pulled) =
        events.wait_for("model-pulled", secs(20), |_, p| p.contains("\"kind\":\"model-pulled\""));
    let e: Value = serde_json::from_str(&pulled).unwrap();
    assert_eq!((&e["detail"]["from"], &e["detail"]["to"]), (&json!("2"), &json!("1")), "{e}");
    assert!(e["detail"]["reason"].as_str().unwrap().contains("pulled"), "{e}");
    let s = status(&free);
    assert!(s["ota"]["models"]["vibration"]["bad"].get("2").is_none(), "not marked bad: {s:#}");
    assert!(
        !events.messages().iter().any(|(_, p)| p.contains("model-rolled-back")),
        "a pull is not a failure of the device"
    );
    assert_eq!(serving(&pinned), "2", "a pinned device keeps its version");

    // Published again (a fixed registry), it is taken again.
    p.publish(&model_version(&work.path().join("again"), "2", |_| {}), 100, &[]);
    let (_, v) = post(&free, "/ota/check", json!({}));
    assert_eq!(v["models"]["vibration"]["action"], "activated 2", "{v}");
    let (status, _) = free.stop();
    assert!(status.success());
}

#[test]
fn a_fleet_of_50_agents_follows_a_staged_rollout_and_rolls_back_a_bad_model() {
    use crate::common::fleet::{Fleet, device_ids, fleet_ota, on, salt_for};
    const FLEET: usize = 50;
    let p = Publisher::new(1);
    let work = tempdir();
    let devices = device_ids(FLEET);
    let (salt, cohort) = salt_for(&devices, 10, 3, 8);
    p.publish(&model_version(work.path(), "2", |_| {}), 10, &["--salt", &salt]);
    let reg = Served::start(&p.repo());
    let broker = Broker::start(BrokerOptions::default());
    let events = broker.subscribe("test", "edge/+/events");

    // Fifty agents: own state, device id and API socket; checks every 2 s.
    // Probation over 20 requests: windows already cut under version 2's spec when 3 comes
    // in are valid inputs for it, and a handful of those could otherwise fill a shorter
    // probation before the first error does (seen once in four runs).
    let fleet = Fleet::start(work.path(), &devices, broker.port, &fleet_ota(&reg.url, &p.root_v1(), 20));
    let serves = |v: &'static str| move |_: &str, s: &Value| s["models"]["vibration"]["version"] == v;

    // 10%: exactly the cohort the hash names takes version 2; the rest stay on 1.
    let started = std::time::Instant::now();
    let in_cohort = |id: &str, s: &Value| {
        let v = s["models"]["vibration"]["version"].as_str().unwrap_or("");
        if cohort.iter().any(|c| c == id) { v == "2" } else { v == "1" }
    };
    let t10 = fleet.wait_until(
        &format!("the 10% cohort {cohort:?} (salt {salt}) on version 2"),
        secs(90),
        in_cohort,
    );
    std::thread::sleep(Duration::from_secs(5)); // two more checks each: nobody else moves
    let vs = fleet.versions();
    assert_eq!(on(&vs, "2"), cohort, "only the cohort updated");
    assert_eq!(on(&vs, "1").len(), FLEET - cohort.len());

    // 100%: everyone converges.
    let bytes_before = reg.faults.bytes_served();
    p.promote("2", 100);
    let t100 = fleet.wait_until("all on version 2", secs(120), serves("2"));
    let bytes_promote = reg.faults.bytes_served() - bytes_before;

    // A bad version 3 (its spec lost the window) at 100%: all take it, all roll back.
    let v3 = model_version(work.path(), "3", |dir| {
        let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
        std::fs::write(dir.join("model.toml"), spec.replace("[pre.window]\nsize = 256\nhop = 128\n", ""))
            .unwrap();
    });
    p.publish(&v3, 100, &[]);
    let rolled = events.wait_count(FLEET, secs(180), |_, p| {
        p.contains("\"kind\":\"model-rolled-back\"") && p.contains("\"from\":\"3\"")
    });
    let t_bad = started.elapsed();
    let mut who: Vec<String> = rolled.iter().map(|(t, _)| t.split('/').nth(1).unwrap().to_string()).collect();
    who.sort();
    who.dedup();
    assert_eq!(who.len(), FLEET, "every device that took 3 rolled back once");
    fleet.wait_until("all back on version 2", secs(30), serves("2"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(on(&fleet.versions(), "2").len(), FLEET, "version 3 is never retried");

    let report = json!({
        "devices": FLEET,
        "cohort_10pct": cohort.len(),
        "seconds_to_cohort": t10.as_secs_f64(),
        "seconds_to_converge_after_promote": t100.as_secs_f64(),
        "bytes_served_for_promote": bytes_promote,
        "bytes_served_total": reg.faults.bytes_served(),
        "requests_total": reg.faults.requests(),
        "seconds_until_all_rolled_back_from_start": t_bad.as_secs_f64(),
    });
    eprintln!("fleet report: {report}");
    let _ = std::fs::write(root().join("target/fleet-report.json"), report.to_string());
}

#[test]
fn a_self_test_runs_in_a_child_process_under_a_memory_limit() {
    use edge_agent::ota::selftest::{Limits, run_isolated};
    // The image classifier with golden vectors recorded from one input.
    let work = tempdir();
    let cls = work.path().join("cls");
    copy_model(&model("ppocr-cls"), &cls);
    let inputs = work.path().join("inputs.json");
    std::fs::write(&inputs, json!([{"name": "grey", "input": vec![0.5f32; 3 * 48 * 192]}]).to_string())
        .unwrap();
    let out = run(
        &["model", "selftest", "--model", cls.to_str().unwrap(), "--record", inputs.to_str().unwrap()],
        secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // 8 MiB of data segment: the small demo model fits; the classifier, which needs
    // about twice that, is refused with why, and nothing else is disturbed.
    let tight = Limits { memory_bytes: 8 << 20, timeout: secs(60), model: Default::default() };
    let report = run_isolated(&bin(), &demo_model(), &tight).unwrap();
    assert!(report.passed, "{report:?}");
    assert_eq!(report.cases.len(), 6);
    let report = run_isolated(&bin(), &cls, &tight).unwrap();
    assert!(!report.passed, "{report:?}");
    let why = report.error.unwrap();
    assert!(why.contains("memory limit 8 MiB"), "{why}");
    let roomy = Limits { memory_bytes: 1 << 30, timeout: secs(60), model: Default::default() };
    assert!(run_isolated(&bin(), &cls, &roomy).unwrap().passed);
    // A self-test that does not finish in time is cut.
    let hasty =
        Limits { memory_bytes: 1 << 30, timeout: Duration::from_millis(1), model: Default::default() };
    let report = run_isolated(&bin(), &cls, &hasty).unwrap();
    assert!(
        report.error.unwrap().contains("did not finish"),
        "a 1 ms limit cuts a model that takes 100 ms to load"
    );
    // No process at all is no verdict on the model.
    let err = run_isolated(&work.path().join("no-such-binary"), &cls, &roomy).unwrap_err();
    assert!(err.contains("cannot start the self-test process"), "{err}");
}
