//! Every way an update can end leaves the next check free to run and to succeed: fleet
//! agents elsewhere have had updates stuck "in progress" forever. Each test ends an
//! update one way, against the real binary and a real registry on loopback, then checks
//! that nothing is left in progress, that the version is marked bad only when the
//! version itself is at fault, and that the next check installs a good version.
//!
//! Endings covered here: a download cut mid-way, a wrong hash, too many and too few
//! bytes, a bad signature and a rolled-back timestamp, a server that stalls (with the
//! operator's request abandoned meanwhile), a failed self-test, a failed probation (with
//! and without a version to roll back to), a self-test that cannot even start, a package
//! above the device's limit, a damaged local copy of the timestamp, and a clock that went
//! back during a probation. A SIGKILL at every step (mid-download, mid-activation) is
//! `ota::sigkill_at_every_step_of_an_update_leaves_the_old_or_the_new_model`; a bad
//! delegated role from the server is `registry::a_bad_delegated_role_from_the_server_does_not_stick`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::common::registry::*;
use crate::common::*;
use crate::ota::{body, publish_unchecked};
use edge_agent::ota::serve::Fault;

/// Probation short enough for a test: five requests of the simulated sensor.
// A latency floor far above any stall: these tests are about how updates end, and a
// loaded test machine can stall a sub-millisecond model for several milliseconds.
const QUICK: &str = "[ota.probation]\nrequests = 5\nmin_requests = 3\nlatency_floor_ms = 10000\n";

fn check(d: &Daemon) -> (u16, Value) {
    post(d, "/ota/check", json!({}))
}

/// The action a check took for vibration.
fn action(v: &Value) -> String {
    v["models"]["vibration"]["action"].as_str().unwrap_or_default().to_string()
}

/// Waits for the check the agent makes by itself soon after start, so that the checks
/// a test asks for are the only ones.
fn first_check_done(d: &Daemon) {
    wait_status(d, "the first check", secs(60), |s| !s["ota"]["last_check"].is_null());
}

/// Nothing is in progress, `serves` serves, and `version` is not marked bad.
fn idle(d: &Daemon, serves: &str, version: &str) {
    let s = status(d);
    let m = &s["ota"]["models"]["vibration"];
    assert!(m.get("doing").is_none(), "nothing is left in progress: {m:#}");
    assert_ne!(m["state"], "downloading", "{m:#}");
    assert!(m["bad"].get(version).is_none(), "version {version} is not marked bad: {m:#}");
    assert_eq!(s["models"]["vibration"]["version"], serves, "{s:#}");
}

/// `version` activated and kept after its probation.
fn kept(d: &Daemon, version: &str) {
    wait_status(d, &format!("version {version} kept"), secs(60), |s| {
        s["models"]["vibration"]["version"] == version && s["ota"]["models"]["vibration"]["kept"] == version
    });
}

/// Checks now: refused with `needle` in the answer, the old version serving, nothing in
/// progress, `version` not marked bad.
fn refused_for_now(d: &Daemon, version: &str, serves: &str, needle: &str) {
    let (code, v) = check(d);
    let text = v.to_string();
    assert!(code == 422 || action(&v).starts_with(&format!("refused {version}")), "{code} {v}");
    assert!(text.contains(needle), "the refusal says `{needle}`: {v}");
    idle(d, serves, version);
}

/// Checks now: `version` is activated, then kept.
fn taken(d: &Daemon, version: &str) {
    let (code, v) = check(d);
    assert_eq!(code, 200, "{v}");
    assert_eq!(action(&v), format!("activated {version}"), "{v}");
    kept(d, version);
}

fn package_len(p: &Publisher, version: &str) -> usize {
    std::fs::metadata(p.repo().join(p.target_path(version))).unwrap().len() as usize
}

#[test]
fn broken_downloads_leave_the_next_check_free() {
    let p = Publisher::new(1);
    let work = tempdir();
    let reg = Served::start(&p.repo());
    let ota = ota_section(&reg.url, &p.root_v1(), QUICK);
    let d = Daemon::start("run", &body(&demo_model(), None, &ota), "", &[]);
    first_check_done(&d);

    // Cut mid-way: the server drops the connection after 70 000 bytes of the package
    // (about 100 KiB). Depending on the server's buffering the client sees the transfer
    // break off, or the connection closed before the answer was complete; how much
    // reached the disk varies too (resuming itself is
    // `ota_net::download_resumes_after_connection_drop`).
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let package = p.target_path("2");
    reg.faults.set(&package, Fault::CloseAfter(70_000));
    refused_for_now(&d, "2", "1", "registry download");
    reg.faults.clear();
    taken(&d, "2");

    // Bytes that do not hash to what the signed metadata says.
    p.publish(&model_version(work.path(), "3", |_| {}), 100, &[]);
    let package = p.target_path("3");
    let len = package_len(&p, "3");
    reg.faults.set(&package, Fault::Replace(vec![b'x'; len]));
    refused_for_now(&d, "3", "2", "SHA-256");
    reg.faults.clear();
    taken(&d, "3");

    // More bytes than the signed length, then fewer.
    p.publish(&model_version(work.path(), "4", |_| {}), 100, &[]);
    let package = p.target_path("4");
    let len = package_len(&p, "4");
    reg.faults.set(&package, Fault::Replace(vec![b'x'; len + 100]));
    refused_for_now(&d, "4", "3", "more than");
    reg.faults.set(&package, Fault::Replace(vec![b'x'; len / 2]));
    refused_for_now(&d, "4", "3", "broke off");
    // Those bytes are on disk as the start of the download; resuming from them cannot
    // hash, so the check that follows downloads the package whole.
    reg.faults.clear();
    taken(&d, "4");
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn refused_metadata_and_stalled_servers_leave_the_next_check_free() {
    let p = Publisher::new(1);
    let work = tempdir();
    let reg = Served::start(&p.repo());
    let ota = ota_section(&reg.url, &p.root_v1(), &format!("download_timeout_s = 3\n{QUICK}"));
    let d = Daemon::start("run", &body(&demo_model(), None, &ota), "", &[]);
    first_check_done(&d);

    // A timestamp changed after signing.
    let ts_v1 = p.meta("timestamp.json");
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let mut tampered: Value = serde_json::from_slice(&p.meta("timestamp.json")).unwrap();
    tampered["signed"]["version"] = json!(tampered["signed"]["version"].as_u64().unwrap() + 1);
    reg.faults.set("metadata/timestamp.json", Fault::Replace(serde_json::to_vec(&tampered).unwrap()));
    refused_for_now(&d, "2", "1", "signature");
    reg.faults.clear();
    taken(&d, "2");

    // An older timestamp than the device trusts (a rollback).
    p.publish(&model_version(work.path(), "3", |_| {}), 100, &[]);
    reg.faults.set("metadata/timestamp.json", Fault::Replace(ts_v1));
    refused_for_now(&d, "3", "2", "rollback");
    reg.faults.clear();
    taken(&d, "3");

    // A server that stalls in the middle of the package, while the operator who asked
    // for the check gives up waiting: the request is abandoned, the download is cut by
    // its own deadline, and the next check resumes it.
    p.publish(&model_version(work.path(), "4", |_| {}), 100, &[]);
    let package = p.target_path("4");
    reg.faults.set(&package, Fault::Trickle { bytes_per_s: 10 });
    let impatient: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(secs(1))).build().into();
    let abandoned = impatient.post(&d.url("/ota/check")).send_json(json!({}));
    assert!(abandoned.is_err(), "the impatient client gave up: {abandoned:?}");
    refused_for_now(&d, "4", "3", "did not complete");
    reg.faults.clear();
    taken(&d, "4");
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn after_a_failed_self_test_or_probation_the_next_good_version_is_taken() {
    let p = Publisher::new(1);
    let work = tempdir();
    let reg = Served::start(&p.repo());
    let ota = ota_section(
        &reg.url,
        &p.root_v1(),
        "[ota.probation]\nrequests = 20\nmin_requests = 10\nlatency_floor_ms = 10000\n",
    );
    let d = Daemon::start("run", &body(&demo_model(), None, &ota), "", &[]);
    first_check_done(&d);

    // Version 2's golden vectors do not match its model: refused and marked bad.
    let v2 = model_version(work.path(), "2", |dir| {
        let path = dir.join("selftest.json");
        let mut golden: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        golden["cases"][0]["expected"][0] = json!(0.5);
        std::fs::write(&path, golden.to_string()).unwrap();
    });
    publish_unchecked(&p, &v2, "2");
    let (code, v) = check(&d);
    assert_eq!(code, 200, "{v}");
    assert!(action(&v).contains("self-test failed"), "{v}");
    // The next check runs, skips the bad version, and is done.
    let (code, v) = check(&d);
    assert_eq!(code, 200, "{v}");
    assert_eq!(action(&v), "none", "{v}");
    assert!(v["models"]["vibration"]["skipped"].to_string().contains("marked bad"), "{v}");

    // Version 3 fails its probation on real traffic (its spec lost the window) and is
    // rolled back to 1.
    let v3 = model_version(work.path(), "3", |dir| {
        let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
        std::fs::write(dir.join("model.toml"), spec.replace("[pre.window]\nsize = 256\nhop = 128\n", ""))
            .unwrap();
    });
    p.publish(&v3, 100, &[]);
    let (_, v) = check(&d);
    assert_eq!(action(&v), "activated 3", "{v}");
    wait_status(&d, "3 rolled back", secs(60), |s| {
        s["models"]["vibration"]["version"] == "1" && s["ota"]["models"]["vibration"]["bad"]["3"].is_string()
    });

    // A good version 4: taken.
    p.publish(&model_version(work.path(), "4", |_| {}), 100, &[]);
    let (code, v) = check(&d);
    assert_eq!(code, 200, "{v}");
    assert_eq!(action(&v), "activated 4", "{v}");
    wait_status(&d, "4 kept", secs(60), |s| s["ota"]["models"]["vibration"]["kept"] == "4");
    let (status, _) = d.stop();
    assert!(status.success());
}

/// A model that only the registry provides: its first version has no predecessor.
fn registry_only(ota: &str) -> String {
    format!(
        "[[source]]\nkind = \"simulated\"\nmodel = \"vibration\"\nspeed = 5\n\n[output]\nstdout = false\n\n{ota}"
    )
}

#[test]
fn a_failed_probation_with_nothing_to_roll_back_to_does_not_block_the_next_version() {
    let p = Publisher::new(1);
    let work = tempdir();
    // The first version this device ever gets fails on real traffic (no window).
    let v2 = model_version(work.path(), "2", |dir| {
        let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
        std::fs::write(dir.join("model.toml"), spec.replace("[pre.window]\nsize = 256\nhop = 128\n", ""))
            .unwrap();
    });
    p.publish(&v2, 100, &[]);
    let reg = Served::start(&p.repo());
    let ota = ota_section(
        &reg.url,
        &p.root_v1(),
        "[ota.probation]\nrequests = 20\nmin_requests = 10\nlatency_floor_ms = 10000\n",
    );
    let d = Daemon::start("run", &registry_only(&ota), "", &[]);
    // Its probation fails; there is nothing to go back to, so it keeps serving, but it
    // is marked bad and the probation is over.
    let s = wait_status(&d, "2 failed its probation", secs(60), |s| {
        s["ota"]["models"]["vibration"]["bad"]["2"].is_string()
    });
    let m = &s["ota"]["models"]["vibration"];
    assert!(m.get("probation").is_none(), "{m:#}");
    assert!(m["bad"]["2"].as_str().unwrap().contains("nothing to roll back to"), "{m:#}");
    assert_eq!(s["models"]["vibration"]["version"], "2", "the only version keeps serving");

    // So the next check takes a good version 3.
    p.publish(&model_version(work.path(), "3", |_| {}), 100, &[]);
    let (code, v) = check(&d);
    assert_eq!(code, 200, "{v}");
    assert_eq!(action(&v), "activated 3", "{v}");
    wait_status(&d, "3 kept", secs(60), |s| s["ota"]["models"]["vibration"]["kept"] == "3");
    let (status, log) = d.stop();
    assert!(status.success());
    assert!(log.contains("probation-failed"), "the failure is an event");
}

#[test]
fn a_damaged_local_timestamp_does_not_stick() {
    let p = Publisher::new(1);
    let work = tempdir();
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let reg = Served::start(&p.repo());
    let ota = ota_section(&reg.url, &p.root_v1(), QUICK);
    let d = Daemon::start("run", &body(&demo_model(), None, &ota), "", &[]);
    kept(&d, "2");
    // The device's copy of the timestamp gets damaged (a bad block, a bit flip) while
    // the registry's file stays the same, so its validator would still get a 304.
    let local = d.dir.path().join("state/trust/timestamp.json");
    let mut bytes = std::fs::read(&local).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&local, bytes).unwrap();
    for _ in 0..2 {
        let (code, v) = check(&d);
        assert_eq!(code, 200, "the damaged copy is replaced by a fresh one: {v}");
    }
    p.publish(&model_version(work.path(), "3", |_| {}), 100, &[]);
    taken(&d, "3");
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn a_clock_that_goes_back_during_a_probation_does_not_stretch_it_forever() {
    let p = Publisher::new(1);
    let work = tempdir();
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let reg = Served::start(&p.repo());
    // A probation decided by time alone: three seconds.
    let ota = ota_section(&reg.url, &p.root_v1(), "[ota.probation]\nrequests = 1000000\nminutes = 0.05\n");
    let d = Daemon::start("run", &body(&demo_model(), None, &ota), "", &[]);
    wait_status(&d, "2 on probation", secs(60), |s| s["ota"]["models"]["vibration"]["state"] == "probation");
    // The clock was ahead when 2 was activated (or went back since): its probation
    // started "in 2100".
    let path = d.dir.path().join("state/models/vibration/state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["probation"]["started"] = json!(4_102_444_800u64);
    let tmp = path.with_extension("json.test");
    std::fs::write(&tmp, state.to_string()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    kept(&d, "2");
    p.publish(&model_version(work.path(), "3", |_| {}), 100, &[]);
    let (_, v) = check(&d);
    assert_eq!(action(&v), "activated 3", "{v}");
    let (status, _) = d.stop();
    assert!(status.success());
}

/// An agent started from `exe`, with its config and state under `dir` (kept across
/// restarts).
fn launch(exe: &Path, dir: &Path, body: &str) -> Daemon {
    let port = free_port();
    let socket = dir.join("api.sock");
    let config = dir.join("agent.toml");
    std::fs::write(&config, Daemon::config_text(dir, port, &socket, body, "")).unwrap();
    let mut command = Command::new(exe);
    command.args(["run", "--config", config.to_str().unwrap(), "--log-format", "json"]);
    let mut child = Guard(command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    read_into(child.0.stderr.take().unwrap(), log.clone());
    let mut d =
        Daemon { child, log, port, socket, dir: tempfile::Builder::new().tempdir_in(dir).unwrap(), config };
    let started = std::time::Instant::now();
    while http().get(&d.url("/v2/health/ready")).call().map(|r| r.status().as_u16()).ok() != Some(200) {
        let exited = d.child.0.try_wait().unwrap();
        assert!(
            exited.is_none() && started.elapsed() < secs(60),
            "not ready ({exited:?}); log:\n{}",
            d.log.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    d
}

#[test]
fn a_package_above_the_device_limit_is_taken_once_the_limit_allows_it() {
    let p = Publisher::new(1);
    let work = tempdir();
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let reg = Served::start(&p.repo());
    let state = tempdir();
    let small = ota_section(&reg.url, &p.root_v1(), &format!("max_package_bytes = 4096\n{QUICK}"));
    let d = launch(&bin(), state.path(), &body(&demo_model(), None, &small));
    first_check_done(&d);
    refused_for_now(&d, "2", "1", "ota.max_package_bytes");
    let (status, _) = d.stop();
    assert!(status.success());
    // The operator raises the limit: the version is taken at the first check.
    let roomy = ota_section(&reg.url, &p.root_v1(), QUICK);
    let d = launch(&bin(), state.path(), &body(&demo_model(), None, &roomy));
    kept(&d, "2");
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn a_self_test_that_cannot_start_is_no_verdict_on_the_version() {
    // The agent runs from a copy of the binary that goes away, as an upgrade of the
    // package replaces it under a running agent.
    let work = tempdir();
    let exe = work.path().join("edge-agent");
    std::fs::copy(bin(), &exe).unwrap();
    let p = Publisher::new(1);
    let reg = Served::start(&p.repo());
    let state = tempdir();
    let ota = ota_section(&reg.url, &p.root_v1(), QUICK);
    let d = launch(&exe, state.path(), &body(&demo_model(), None, &ota));
    first_check_done(&d);
    let away: PathBuf = work.path().join("edge-agent.moved");
    std::fs::rename(&exe, &away).unwrap();
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    refused_for_now(&d, "2", "1", "cannot start the self-test process");
    std::fs::rename(&away, &exe).unwrap();
    taken(&d, "2");
    let (status, _) = d.stop();
    assert!(status.success());
}

/// A pulled version with nothing to go back to (the first this device got, no configured
/// model) keeps serving, and does not keep the next version out.
#[test]
fn a_pulled_version_with_nothing_to_go_back_to_does_not_block_the_next_version() {
    let p = Publisher::new(1);
    let work = tempdir();
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &[]);
    let reg = Served::start(&p.repo());
    // (Requests refused before the first version loads count against its probation:
    // the limit here lets it pass whatever their share.)
    let ota = ota_section(&reg.url, &p.root_v1(), &format!("{QUICK}max_error_rate = 1.0\n"));
    let d = Daemon::start("run", &registry_only(&ota), "", &[]);
    kept(&d, "2");
    let (repo, keys) = (p.repo().display().to_string(), p.keys().display().to_string());
    p.cli(&["promote", "--repo", &repo, "--keys", &keys, "--model", "vibration", "--version", "2", "--pull"]);
    let (code, v) = check(&d);
    assert_eq!(code, 200, "{v}");
    assert_eq!(action(&v), "none", "{v}");
    assert_eq!(serving(&d), "2", "the only version keeps serving");
    p.publish(&model_version(work.path(), "3", |_| {}), 100, &[]);
    let (_, v) = check(&d);
    assert_eq!(action(&v), "activated 3", "{v}");
    let (status, log) = d.stop();
    assert!(status.success());
    assert!(log.contains("nothing to go back to"), "the refusal is logged");
}
