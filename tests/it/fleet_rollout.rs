//! `edge-agent fleet rollout` against a real fleet: agent processes on one Mosquitto
//! broker following one registry. A good version goes through every step; a failing one
//! is halted at its first step, pulled, and leaves the devices that took it; a controller
//! killed with SIGKILL resumes, and a broker restart changes nothing of the outcome.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::fleet::*;
use crate::common::*;

/// Every `raised to N%` decision in a state file's log, in order.
fn raises(state: &Value) -> Vec<String> {
    state["state"]["log"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|e| e["what"].as_str())
                .filter(|w| w.starts_with("raised to"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn serves(v: &'static str) -> impl Fn(&str, &Value) -> bool {
    move |_, s| s["models"]["vibration"]["version"] == v
}

/// Waits until every device verified the registry's targets version `v` or later (it
/// checked after that signing), so that what it would download it has.
fn all_checked_after(rig: &FleetRig, v: u64, limit: Duration) {
    rig.fleet.wait_until(&format!("every device checked targets v{v}"), limit, |_, s| {
        s["ota"]["registry"]["targets"].as_u64().is_some_and(|t| t >= v)
    });
}

#[test]
fn a_fleet_of_50_takes_a_good_version_step_by_step_and_a_failing_one_is_halted_at_its_first_step() {
    const FLEET: usize = 50;
    let rig = FleetRig::start(FLEET, 5);
    let devices = rig.fleet.ids();
    let (salt2, first2) = salt_for(&devices, 10, 3, 8);
    rig.publish("2", &salt2, false);
    // The fleet is known from the retained status: every agent online first.
    let statuses = rig.broker.subscribe("test", "edge/+/status");
    statuses.wait_count(FLEET, secs(120), |_, p| p.contains("\"online\""));

    // The plan: the steps and the devices each adds, as the hash computes them.
    let plan = ["--model", "vibration", "--version", "2", "--steps", "10,50,100"];
    let out =
        run_with(&mut rig.rollout_command(&[&plan[..], &["--dry-run", "--json"]].concat()), None, secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dry["devices"], FLEET, "{dry}");
    assert_eq!(dry["steps"][0]["adds"], json!(first2), "{dry}");
    let to50: Vec<String> =
        cohort(&devices, 50, &salt2).into_iter().filter(|d| !first2.contains(d)).collect();
    assert_eq!(dry["steps"][1]["adds"], json!(to50), "{dry}");
    assert_eq!(rig.state(), Value::Null, "a dry run writes nothing");
    assert!(rig.listed("2"), "published at 0% before the rollout");

    // The good version: every step, each signed once, and the whole fleet on it.
    let targets_before = rig.targets_version();
    let args =
        [&plan[..], &["--bake", "2", "--min-devices", "3", "--max-failure-share", "0.3", "--json"]].concat();
    let started = Instant::now();
    let (status, record) = rig.rollout(&args, secs(400));
    assert!(status.success(), "{record:#}");
    assert_eq!((&record["state"], &record["percent"]), (&json!("done"), &json!(100)), "{record:#}");
    assert_eq!(record["failed"], 0, "{record:#}");
    assert_eq!(rig.targets_version(), targets_before + 3, "three steps, three signings");
    assert_eq!(raises(&rig.state()), ["raised to 10%", "raised to 50%", "raised to 100%"]);
    let t_good = started.elapsed();
    rig.fleet.wait_until("all on version 2", secs(180), |_, s| {
        s["models"]["vibration"]["version"] == "2" && s["ota"]["models"]["vibration"]["kept"] == "2"
    });
    let t_converged = started.elapsed();

    // A version that fails probation on every device: halted at 10%, pulled; those of
    // the 10% that took it are back on 2; nobody else ever downloads it.
    let (salt3, first3) = salt_for(&devices, 10, 3, 8);
    rig.publish("3", &salt3, true);
    let bytes_before = rig.reg.faults.bytes_served();
    let args = [
        &["--model", "vibration", "--version", "3", "--steps", "10,50,100"][..],
        &["--bake", "2", "--min-devices", "2", "--max-failure-share", "0.3", "--json"],
    ]
    .concat();
    let (status, record) = rig.rollout(&args, secs(300));
    assert!(!status.success(), "a halted rollout exits 1: {record:#}");
    assert_eq!((&record["state"], &record["percent"]), (&json!("halted"), &json!(10)), "{record:#}");
    assert!(record["reason"].as_str().unwrap().contains("failed at 10%"), "{record:#}");
    assert!(!rig.listed("3"), "pulled from the signed targets");
    assert_eq!(raises(&rig.state()), ["raised to 10%"], "never raised past the failing step");
    let retained = rig.broker.subscribe("test", "edge/fleet/rollouts/vibration");
    let (_, r) = retained.wait_for("the retained rollout record", secs(20), |_, p| p.contains("\"halted\""));
    assert_eq!(serde_json::from_str::<Value>(&r).unwrap()["version"], "3");

    all_checked_after(&rig, rig.targets_version(), secs(120));
    rig.fleet.wait_until("all back on version 2", secs(120), serves("2"));
    let downloaders = rig.downloaders("3");
    assert!(!downloaders.is_empty(), "the first step's devices took it");
    for d in &downloaders {
        assert!(first3.contains(d), "{d} downloaded 3 outside the 10% cohort {first3:?}");
    }
    let served = rig.reg.faults.requests_for(".3.tar");
    assert!(
        served as usize >= downloaders.len() && served as usize <= first3.len(),
        "the registry served 3 {served} times for {downloaders:?} of cohort {first3:?}"
    );
    let s = rig.state();
    let (first_failure, halted) =
        (s["state"]["first_failure_ms"].as_u64().unwrap(), s["state"]["halted_ms"].as_u64().unwrap());
    // The same from the device's clock: its first failure event's own time.
    let first_event_ms = rig
        .events
        .messages()
        .iter()
        .filter_map(|(_, p)| serde_json::from_str::<Value>(p).ok())
        .filter(|e| {
            ["model-rolled-back", "selftest-failed", "update-rejected"]
                .contains(&e["kind"].as_str().unwrap_or(""))
                && (e["detail"]["from"] == "3" || e["detail"]["version"] == "3")
        })
        .filter_map(|e| humantime::parse_rfc3339(e["ts"].as_str()?).ok())
        .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64)
        .min()
        .expect("a failure event of version 3");
    let report = json!({
        "devices": FLEET,
        "good": {"steps": [10, 50, 100], "seconds_to_done": t_good.as_secs_f64(),
                  "seconds_to_converged": t_converged.as_secs_f64()},
        "bad": {
            "cohort_10pct": first3.len(),
            "devices_affected": record["affected"],
            "downloaded": downloaders.len(),
            "seconds_first_failure_to_halt": (halted - first_failure) as f64 / 1000.0,
            "seconds_first_failure_event_to_halt": halted.saturating_sub(first_event_ms) as f64 / 1000.0,
            "bytes_served": rig.reg.faults.bytes_served() - bytes_before,
            "package_requests": served,
        },
    });
    eprintln!("fleet rollout report: {report}");
    let _ = std::fs::write(root().join("target/fleet-rollout-report.json"), report.to_string());

    // `fleet status` on the same fleet: all fifty on version 2 and online (the retained
    // status follows each update); the version pulled appears nowhere; five agents killed
    // show offline (their last will, which names no models).
    let mut rig = rig;
    let pass = rig.work.path().join("test-pass");
    std::fs::write(&pass, "test-pass\n").unwrap();
    let doc = crate::fleet_status::json(&rig.broker, &pass, &[]);
    assert_eq!(doc["devices"].as_array().unwrap().len(), FLEET, "{doc}");
    assert_eq!(crate::fleet_status::version_counts(&doc, "2"), (FLEET as u64, FLEET as u64, 0), "{doc}");
    assert!(!doc["summary"].to_string().contains("\"version\":\"3\""), "{}", doc["summary"]);
    let killed: Vec<String> = devices.iter().take(5).cloned().collect();
    for id in &killed {
        rig.fleet.kill(id);
    }
    statuses.wait_count(killed.len(), secs(60), |t, p| {
        p.contains("\"offline\"") && killed.iter().any(|k| t == format!("edge/{k}/status"))
    });
    let doc = crate::fleet_status::json(&rig.broker, &pass, &["--state", "offline"]);
    let mut offline: Vec<&str> =
        doc["devices"].as_array().unwrap().iter().filter_map(|d| d["device"].as_str()).collect();
    offline.sort_unstable();
    let mut expected: Vec<&str> = killed.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(offline, expected, "{doc}");
    let all = crate::fleet_status::json(&rig.broker, &pass, &[]);
    assert_eq!(
        crate::fleet_status::version_counts(&all, "2"),
        ((FLEET - 5) as u64, (FLEET - 5) as u64, 0),
        "{all}"
    );
    assert_eq!(all["summary"]["offline"], 5, "{}", all["summary"]);
}

/// The same outcomes as undisturbed runs, with the controller killed (SIGKILL) in the
/// middle of a step and resumed, and the broker restarted during a rollout.
#[test]
fn a_killed_controller_resumes_and_a_broker_restart_changes_no_outcome() {
    const FLEET: usize = 12;
    let mut rig = FleetRig::start(FLEET, 5);
    let devices = rig.fleet.ids();
    let (salt2, _) = salt_for(&devices, 25, 2, 4);
    rig.publish("2", &salt2, false);
    let targets_before = rig.targets_version();
    let devices_file = rig.work.path().join("devices.txt");
    std::fs::write(&devices_file, format!("# the fleet\n{}\n", devices.join("\n"))).unwrap();
    let file = devices_file.to_str().unwrap();
    let common = ["--steps", "25,50,100", "--bake", "2", "--min-devices", "2", "--max-failure-share", "0.3"];

    // Killed while its second step bakes.
    let args =
        [&["--model", "vibration", "--version", "2", "--devices", file, "--json"][..], &common].concat();
    let mut child = Guard(
        rig.rollout_command(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    rig.wait_state("the second step baking", secs(240), |s| {
        s["state"]["phase"]["phase"] == "baking" && s["state"]["phase"]["step"] == 1
    });
    // A second controller of the same rollout is refused while the first runs.
    let out = run_with(&mut rig.rollout_command(&["--resume", "--model", "vibration"]), None, secs(20));
    assert!(stderr(&out).contains("another controller runs"), "{}", stderr(&out));
    child.0.kill().unwrap();
    let _ = child.0.wait();
    let (status, record) = rig.rollout(&["--resume", "--model", "vibration", "--json"], secs(300));
    assert!(status.success(), "{record:#}");
    assert_eq!((&record["state"], &record["percent"]), (&json!("done"), &json!(100)), "{record:#}");
    assert_eq!(rig.targets_version(), targets_before + 3, "each step signed once across the kill");
    assert_eq!(raises(&rig.state()), ["raised to 25%", "raised to 50%", "raised to 100%"]);
    rig.fleet
        .wait_until("all on version 2", secs(180), |_, s| s["ota"]["models"]["vibration"]["kept"] == "2");

    // A failing version, the broker restarted while its first step runs: halted at that
    // step all the same, and the cohort back on version 2.
    let (salt3, first3) = salt_for(&devices, 25, 2, 4);
    rig.publish("3", &salt3, true);
    let args =
        [&["--model", "vibration", "--version", "3", "--devices", file, "--json"][..], &common].concat();
    let child = rig
        .rollout_command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    rig.wait_state("the first step of 3 signed", secs(60), |s| {
        s["state"]["plan"]["version"] == "3" && s["state"]["signed_percent"] == 25
    });
    let restarted =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    rig.broker.restart();
    let out = wait_output(child, secs(300));
    let record: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON outcome ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert!(!out.status.success(), "{record:#}");
    assert_eq!((&record["state"], &record["percent"]), (&json!("halted"), &json!(25)), "{record:#}");
    assert!(!rig.listed("3"));
    let halted = rig.state()["state"]["halted_ms"].as_u64().unwrap();
    assert!(halted > restarted, "the broker restarted during the step, before the halt");
    all_checked_after(&rig, rig.targets_version(), secs(120));
    rig.fleet.wait_until("all back on version 2", secs(120), serves("2"));
    for d in rig.downloaders("3") {
        assert!(first3.contains(&d), "{d} downloaded 3 outside the 25% cohort {first3:?}");
    }

    // status and the control commands on an ended rollout.
    let out =
        run_with(&mut rig.rollout_command(&["status", "--model", "vibration", "--json"]), None, secs(20));
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["state"], "halted", "{s}");
    let out = run_with(&mut rig.rollout_command(&["pause", "--model", "vibration"]), None, secs(20));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has ended (halted)"), "{}", stderr(&out));
}

/// A child's output once it exits within `limit` (killed otherwise).
fn wait_output(child: std::process::Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the controller did not end within {limit:?}");
        }
    }
}

#[test]
fn a_rollout_refuses_bad_plans_with_what_to_change() {
    let p = crate::common::registry::Publisher::new(1);
    let work = tempdir();
    p.publish(&crate::common::registry::model_version(work.path(), "2", |_| {}), 0, &["--salt", "s"]);
    let (repo, keys) = (p.repo().display().to_string(), p.keys().display().to_string());
    let state = work.path().join("rollouts").display().to_string();
    let base =
        ["fleet", "rollout", "--repo", &repo, "--keys", &keys, "--model", "vibration", "--state-dir", &state];
    for (extra, why) in [
        (&["--version", "9"][..], "is not published"),
        (&["--version", "2", "--steps", "50,10"], "must increase strictly"),
        (&["--version", "2", "--steps", "0,10"], "not a percentage from 1 to 100"),
        (&["--version", "2", "--max-failure-share", "20"], "0.2 is 20%"),
        (&["--version", "2", "--devices", "/nonexistent/devices"], "cannot read the device list"),
    ] {
        let out = run(&[&base[..], extra].concat(), secs(20));
        assert!(!out.status.success(), "{extra:?}");
        assert!(stderr(&out).contains(why), "{extra:?}: {}", stderr(&out));
    }
    let out = run(&["fleet", "rollout", "--resume", "--model", "vibration", "--state-dir", &state], secs(20));
    assert!(stderr(&out).contains("no rollout of `vibration` to resume"), "{}", stderr(&out));

    // The dry run from a device list: the steps and what each adds, nothing changed.
    let list = work.path().join("devices");
    let ids = device_ids(40);
    std::fs::write(&list, ids.join("\n")).unwrap();
    let dry = [
        &base[..],
        &["--version", "2", "--steps", "10,100", "--devices", list.to_str().unwrap(), "--dry-run"],
    ]
    .concat();
    let out = run(&dry, secs(20));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = cohort(&ids, 10, "s");
    assert!(text.contains(&format!("10%: adds {} (cohort {})", first.len(), first.len())), "{text}");
    assert!(text.contains(&format!("100%: adds {} (cohort 40)", 40 - first.len())), "{text}");
    assert!(!work.path().join("rollouts").exists(), "a dry run writes nothing");
}

/// A rig without agents, version 2 published, and the arguments of its rollout over 20
/// device ids that never report: the first step (50%, not empty) bakes until told.
fn ghost_rollout() -> (FleetRig, Vec<String>) {
    let rig = FleetRig::start(0, 5);
    rig.publish("2", "s", false);
    let list = rig.work.path().join("devices");
    let ghosts: Vec<String> = (0..20).map(|i| format!("ghost-{i:02}")).collect();
    std::fs::write(&list, ghosts.join("\n")).unwrap();
    assert!(!cohort(&ghosts, 50, "s").is_empty());
    let args =
        ["--model", "vibration", "--version", "2", "--steps", "50,100", "--bake", "1", "--json", "--devices"];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    args.push(list.display().to_string());
    (rig, args)
}

/// `pause`, `resume` and `abort` from another terminal reach a running controller
/// through the state directory; `status` shows each; an abort pulls the version.
#[test]
fn an_operator_pauses_resumes_and_aborts_a_running_rollout() {
    let (rig, args) = ghost_rollout();
    let child = rig
        .rollout_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    rig.wait_state("the first step baking", secs(60), |s| s["state"]["phase"]["phase"] == "baking");
    let control = |command: &str| {
        let out = run_with(&mut rig.rollout_command(&[command, "--model", "vibration"]), None, secs(20));
        assert!(out.status.success(), "{command}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("the running controller applies it"), "{command}: {text}");
    };
    let status = || {
        let out =
            run_with(&mut rig.rollout_command(&["status", "--model", "vibration", "--json"]), None, secs(20));
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };

    control("pause");
    rig.wait_state("paused", secs(20), |s| s["state"]["paused"].is_string());
    assert_eq!(status()["state"], "paused");
    let out = run_with(&mut rig.rollout_command(&["status", "--model", "vibration"]), None, secs(20));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vibration stable → 2: paused at 50%"), "{text}");
    assert!(text.contains("Z raised to 50%") && text.contains("Z paused by the operator"), "{text}");
    control("resume");
    rig.wait_state("resumed", secs(20), |s| s["state"]["paused"].is_null());
    assert_eq!(status()["state"], "baking");
    assert!(rig.listed("2"));
    control("abort");
    let out = wait_output(child, secs(60));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success());
    assert_eq!(record["state"], "halted", "{record:#}");
    assert_eq!(record["reason"], "aborted by the operator", "{record:#}");
    assert!(!rig.listed("2"), "an abort pulls the version");
    let s = status();
    assert_eq!((&s["state"], &s["pending"]), (&json!("halted"), &json!([])), "{s:#}");
}

/// An abort queued while no controller runs (it was killed) is applied by the next
/// `--resume`, which pulls the version: a halt is never lost.
#[test]
fn an_abort_queued_for_a_killed_controller_is_applied_when_it_resumes() {
    let (rig, args) = ghost_rollout();
    let mut child = Guard(
        rig.rollout_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    rig.wait_state("the first step baking", secs(60), |s| s["state"]["phase"]["phase"] == "baking");
    child.0.kill().unwrap();
    let _ = child.0.wait();

    let out = run_with(&mut rig.rollout_command(&["abort", "--model", "vibration"]), None, secs(20));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no controller runs"), "{}", stderr(&out));
    assert!(rig.listed("2"), "nothing pulled until a controller runs");
    let (status, record) = rig.rollout(&["--resume", "--model", "vibration", "--json"], secs(60));
    assert!(!status.success());
    assert_eq!((&record["state"], &record["reason"]), (&json!("halted"), &json!("aborted by the operator")));
    assert!(!rig.listed("2"));
    // Resumed again, an ended rollout stays ended: nothing is signed.
    let targets = rig.targets_version();
    let (_, record) = rig.rollout(&["--resume", "--model", "vibration", "--json"], secs(60));
    assert_eq!(record["state"], "halted");
    assert_eq!(rig.targets_version(), targets);

    // On a terminal (`script` gives it one), the decisions show as lines.
    let c = rig.rollout_command(&["--resume", "--model", "vibration"]);
    let quote = |a: &std::ffi::OsStr| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''"));
    let line =
        std::iter::once(quote(c.get_program())).chain(c.get_args().map(quote)).collect::<Vec<_>>().join(" ");
    let out = run_with(
        std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("EDGE_FLEET_MQTT_PASSWORD", "test-pass"),
        None,
        secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vibration raised to 50%"), "{text}");
    assert!(text.contains("vibration halted (version pulled): aborted by the operator"), "{text}");
}

/// The operator's connection over TLS (the broker's CA only, a client certificate): a
/// dry run reads the fleet from the retained status.
#[test]
fn a_dry_run_reads_the_fleet_from_a_tls_broker() {
    use crate::common::broker::{Broker, BrokerOptions};
    let broker = Broker::start(BrokerOptions { tls: true, ..BrokerOptions::default() });
    for id in ["pump-1", "pump-2", "pump-3"] {
        broker.publish("test", &format!("edge/{id}/status"), br#"{"state":"online"}"#, 1, true);
    }
    let p = crate::common::registry::Publisher::new(1);
    let work = tempdir();
    p.publish(&crate::common::registry::model_version(work.path(), "2", |_| {}), 0, &["--salt", "s"]);
    let (repo, keys, port) = (p.repo(), p.keys(), broker.port.to_string());
    let (ca, cert, key) = (broker.ca_file(), broker.client_cert(), broker.client_key());
    let out = run_with(
        std::process::Command::new(bin())
            .args(["fleet", "rollout", "--model", "vibration", "--version", "2", "--steps", "50,100"])
            .args(["--repo", repo.to_str().unwrap(), "--keys", keys.to_str().unwrap()])
            .args(["--port", &port, "--username", "test", "--ca-file", ca.to_str().unwrap()])
            .args(["--cert-file", cert.to_str().unwrap(), "--key-file", key.to_str().unwrap()])
            .args(["--dry-run", "--json"])
            .env("EDGE_FLEET_MQTT_PASSWORD", "test-pass"),
        None,
        secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dry["devices"], 3, "{dry}");
    let all: Vec<String> = ["pump-1", "pump-2", "pump-3"].map(String::from).to_vec();
    assert_eq!(dry["steps"][0]["adds"], json!(cohort(&all, 50, "s")), "{dry}");
}
