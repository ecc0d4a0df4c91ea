//! Shadow runs of a candidate version end to end: the real binary, a real Mosquitto, a
//! registry made by `edge-agent registry` served on loopback. A candidate identical to
//! the active version is promoted with full agreement; one with two labels swapped (the
//! same ONNX file, so its scores are the same and only its answers' names differ) is
//! rejected with its confusion matrix. Neither delays the active version into a missed
//! deadline. Applied without a shadow run, a version with swapped labels is caught by
//! its probation instead: its label shares against the active version's.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::broker::{Broker, BrokerOptions, Subscription};
use crate::common::registry::*;
use crate::common::*;

/// The demo model (version 1) fed by the simulated machine ten times faster than real
/// time, with MQTT and `[ota]`. A third of its signal is anomalous (2 s of every 6 s,
/// imbalance and impact in turn).
fn body(port: u16, ota: &str) -> String {
    format!(
        "[[model]]\npath = \"{}\"\n\n[[source]]\nkind = \"simulated\"\nmodel = \"vibration\"\nspeed = 10\n\n[output]\nstdout = false\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"agent\"\npassword = \"agent-pass\"\n\n{ota}",
        demo_model().display()
    )
}

/// An agent following a registry of `p`'s, with a broker and subscriptions to its
/// events and command replies; returned once the agent is online.
struct Agent {
    d: Daemon,
    broker: Broker,
    events: Subscription,
    replies: Subscription,
    _registry: Served,
}

fn start(p: &Publisher) -> Agent {
    let registry = Served::start(&p.repo());
    let broker = Broker::start(BrokerOptions::default());
    let events = broker.subscribe("test", "edge/it/events");
    let replies = broker.subscribe("test", "edge/it/cmd/#");
    let online = broker.subscribe("test", "edge/it/status");
    // A long probation: a promoted version stays on it while the test looks.
    let ota =
        ota_section(&registry.url, &p.root_v1(), "[ota.probation]\nrequests = 1000000\nminutes = 600.0\n");
    let d = Daemon::start("run", &body(broker.port, &ota), "", &[]);
    // Commands reach an agent once it is subscribed: after its online status.
    online.wait_for("online status", secs(30), |_, p| p.contains("\"online\""));
    Agent { d, broker, events, replies, _registry: registry }
}

/// Checks that no active request was turned away, then stops the agent cleanly.
fn finish(d: Daemon) {
    assert_no_active_rejections(&d);
    let (code, _) = d.stop();
    assert!(code.success());
}

fn event(events: &Subscription, kind: &str) -> Value {
    let (_, payload) = events.wait_for(kind, secs(120), |_, p| p.contains(&format!("\"kind\":\"{kind}\"")));
    serde_json::from_str(&payload).unwrap()
}

/// Every request of the active version was answered: none turned away for its deadline
/// (or a full queue) while the candidate ran beside it.
fn assert_no_active_rejections(d: &Daemon) {
    let s = status(d);
    let rejected = &s["models"]["vibration"]["rejected"];
    assert!(rejected.get("deadline").is_none() && rejected.get("queue_full").is_none(), "{s:#}");
    assert!(s["models"]["vibration"]["ok"].as_u64().unwrap() > 0, "{s:#}");
}

/// The demo model as version 2 in `work`, the same network with `labels` (a TOML
/// array) in place of its own: its scores are the same, its answers' names differ.
fn relabelled(work: &Path, labels: &str) -> std::path::PathBuf {
    model_version(work, "2", |dir: &Path| {
        let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
        let spec = spec.replace(r#"["normal", "imbalance", "impact"]"#, labels);
        assert!(spec.contains(labels), "the demo model's labels changed: update this test");
        std::fs::write(dir.join("model.toml"), spec).unwrap();
    })
}

fn confusion_total(detail: &Value) -> u64 {
    detail["numbers"]["confusion"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|row| row.as_object().unwrap().values())
        .map(|v| v.as_u64().unwrap())
        .sum()
}

#[test]
fn an_identical_candidate_in_a_shadow_stage_is_promoted_with_full_agreement() {
    let p = Publisher::new(1);
    let work = tempdir();
    let limits = r#"{"requests":150,"min_requests":20}"#;
    p.publish(&model_version(work.path(), "2", |_| {}), 100, &["--shadow", "--shadow-limits", limits]);
    let Agent { d, events, broker: _broker, replies: _replies, _registry } = start(&p);

    let report = event(&events, "shadow-report");
    let detail = &report["detail"];
    assert_eq!(detail["verdict"], "promote", "{report:#}");
    assert_eq!(detail["by"], "limits", "{report:#}");
    assert_eq!((detail["version"].as_str(), detail["active_version"].as_str()), (Some("2"), Some("1")));
    let n = &detail["numbers"];
    assert_eq!(n["agreement"], 1.0, "{report:#}");
    let compared = n["compared"].as_u64().unwrap();
    assert!(compared >= 150, "{report:#}");
    assert_eq!(confusion_total(detail), compared);
    for (active, row) in n["confusion"].as_object().unwrap() {
        assert_eq!(
            row.as_object().unwrap().keys().collect::<Vec<_>>(),
            [active],
            "only the diagonal: {report:#}"
        );
    }
    assert_eq!(n["score_diff_mean"], 0.0, "the same model gives the same scores");
    assert_eq!(n["errors"], 0);
    assert!(n["run_p95_ms"].as_f64().unwrap() > 0.0 && n["active_run_p95_ms"].as_f64().unwrap() > 0.0);

    // Promoted through the normal activation: it serves, on probation.
    let (_, activated) = events.wait_for("activated from shadow", secs(60), |_, p| {
        p.contains("\"kind\":\"model-activated\"") && p.contains("\"reason\":\"shadow\"")
    });
    let activated: Value = serde_json::from_str(&activated).unwrap();
    assert_eq!(activated["detail"]["reason"], "shadow", "{activated:#}");
    assert_eq!(activated["detail"]["version"], "2");
    // Probation starts with the shadow run's numbers, reported beside its own.
    assert_eq!(activated["detail"]["shadow"]["agreement"], 1.0, "{activated:#}");
    let s = status(&d);
    let probation = &s["ota"]["models"]["vibration"]["probation"];
    assert!(probation["shadow"]["compared"].as_u64().unwrap() >= 150, "{s:#}");
    let s = wait_status(&d, "version 2 serving", secs(30), |s| s["models"]["vibration"]["version"] == "2");
    assert!(s["ota"]["models"]["vibration"].get("shadow").is_none(), "the run ended: {s:#}");
    finish(d);
}

#[test]
fn a_candidate_that_disagrees_on_a_third_of_inputs_is_rejected_with_its_confusion_matrix() {
    let p = Publisher::new(1);
    let work = tempdir();
    // The same network with two of its labels swapped: every anomaly gets the other name.
    let swapped = relabelled(work.path(), r#"["normal", "impact", "imbalance"]"#);
    // At 0%: no device takes it by itself; the operator asks for a shadow run.
    let limits = r#"{"requests":300,"min_requests":50}"#;
    p.publish(&swapped, 0, &["--shadow-limits", limits]);
    let Agent { d, broker, events, replies, _registry } = start(&p);

    let cmd = json!({"id": "shadow-1", "args": {"model": "vibration", "version": "2", "shadow": true}});
    broker.publish("test", "edge/it/cmd/update/apply", cmd.to_string().as_bytes(), 1, false);
    let (_, reply) = replies.wait_for("apply in shadow", secs(60), |t, p| {
        t.ends_with("/reply")
            && p.contains("shadow-1")
            && (p.contains("succeeded") || p.contains("failed") || p.contains("rejected"))
    });
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["state"], "succeeded", "{reply:#}");
    assert_eq!(reply["result"]["action"], "shadowing", "{reply:#}");
    assert_eq!(serving(&d), "1", "a shadow candidate does not serve");

    // While it runs, the status (on the API and the MQTT `status` command) shows it.
    let cmd = json!({"id": "status-1"});
    broker.publish("test", "edge/it/cmd/status", cmd.to_string().as_bytes(), 1, false);
    let (_, doc) = replies.wait_for("status", secs(30), |t, p| {
        t.ends_with("/reply") && p.contains("status-1") && p.contains("succeeded")
    });
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let shadow = &doc["result"]["ota"]["models"]["vibration"]["shadow"];
    assert_eq!(shadow["version"], "2", "{doc:#}");
    assert_eq!(shadow["limits"]["requests"], 300, "the limits published with the version: {doc:#}");

    let report = event(&events, "shadow-report");
    let detail = &report["detail"];
    assert_eq!(detail["verdict"], "reject", "{report:#}");
    assert_eq!(report["severity"], "warning");
    let n = &detail["numbers"];
    let agreement = n["agreement"].as_f64().unwrap();
    assert!((0.45..0.9).contains(&agreement), "about a third disagrees: {report:#}");
    assert!(detail["reason"].as_str().unwrap().contains("agreement"), "{report:#}");
    let compared = n["compared"].as_u64().unwrap();
    assert_eq!(confusion_total(detail), compared);
    let cell = |a: &str, c: &str| n["confusion"][a][c].as_u64().unwrap_or(0);
    assert!(cell("normal", "normal") > 0, "{report:#}");
    assert!(cell("imbalance", "impact") > 0 && cell("impact", "imbalance") > 0, "{report:#}");
    assert_eq!(cell("imbalance", "imbalance") + cell("impact", "impact"), 0, "{report:#}");
    assert_eq!(n["agreed"].as_u64().unwrap(), cell("normal", "normal"));

    // Unloaded and marked bad; version 1 served throughout.
    let s = wait_status(&d, "the run ended", secs(30), |s| {
        s["ota"]["models"]["vibration"].get("shadow").is_none()
    });
    assert_eq!(s["models"]["vibration"]["version"], "1", "{s:#}");
    let bad = s["ota"]["models"]["vibration"]["bad"]["2"].as_str().unwrap_or_default();
    assert!(bad.contains("rejected in shadow"), "{s:#}");
    finish(d);
}

#[test]
fn an_operator_ends_a_shadow_run_by_command() {
    let p = Publisher::new(1);
    let work = tempdir();
    // Limits that would keep it running for long: only a command ends it here.
    p.publish(&model_version(work.path(), "2", |_| {}), 0, &["--shadow-limits", r#"{"requests":1000000}"#]);
    let Agent { d, broker, events, replies, _registry } = start(&p);
    let sock = d.socket.to_str().unwrap().to_string();

    // The CLI on the device starts it.
    let args = [
        "update",
        "apply",
        "--model",
        "vibration",
        "--version",
        "2",
        "--shadow",
        "--socket",
        &sock,
        "--json",
    ];
    let out = run(&args, secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let started: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started["action"], "shadowing", "{started:#}");
    // `model list` shows it beside the active version.
    let out = run(&["model", "list", "--socket", &sock], secs(10));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("shadow: version 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // It holds back other installs of the model until its verdict.
    let (code, refused) = post(&d, "/ota/apply", json!({"model": "vibration", "version": "2"}));
    assert_eq!(code, 422, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("update/shadow"), "{refused}");
    wait_status(&d, "a few compared", secs(60), |s| {
        s["ota"]["models"]["vibration"]["shadow"]["numbers"]["compared"].as_u64().unwrap_or(0) >= 5
    });

    // update/shadow over MQTT promotes it.
    let cmd = json!({"id": "verdict-1", "args": {"model": "vibration", "verdict": "promote"}});
    broker.publish("test", "edge/it/cmd/update/shadow", cmd.to_string().as_bytes(), 1, false);
    let (_, reply) = replies.wait_for("update/shadow", secs(60), |t, p| {
        t.ends_with("/reply") && p.contains("verdict-1") && (p.contains("succeeded") || p.contains("failed"))
    });
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["state"], "succeeded", "{reply:#}");
    assert_eq!(reply["result"]["action"], "activated", "{reply:#}");
    let report = event(&events, "shadow-report");
    assert_eq!(
        (report["detail"]["verdict"].as_str(), report["detail"]["by"].as_str()),
        (Some("promote"), Some("command"))
    );
    assert_eq!(serving(&d), "2");
    assert_eq!(status(&d)["ota"]["models"]["vibration"]["state"], "probation");

    // Nothing runs in shadow now: the CLI says so, and fails.
    let out = run(
        &["update", "shadow", "--model", "vibration", "--verdict", "reject", "--socket", &sock],
        secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no shadow run in progress"), "{}", stderr(&out));
    finish(d);
}

#[test]
fn a_version_with_swapped_labels_applied_directly_is_rolled_back_by_probation() {
    let p = Publisher::new(1);
    let work = tempdir();
    // Normal and imbalance swapped: most answers change name.
    let swapped = relabelled(work.path(), r#"["imbalance", "normal", "impact"]"#);
    p.publish(&swapped, 0, &[]);
    let Agent { d, broker, events, replies: _replies, _registry } = start(&p);
    // Version 1 answers enough for its label shares to be a baseline.
    wait_status(&d, "150 results of version 1", secs(60), |s| {
        s["models"]["vibration"]["ok"].as_u64().unwrap_or(0) >= 150
    });

    // Applied at once (no shadow run); the probation (a million requests, ten hours)
    // can only end early by a failure.
    let cmd = json!({"id": "apply-1", "args": {"model": "vibration", "version": "2"}});
    broker.publish("test", "edge/it/cmd/update/apply", cmd.to_string().as_bytes(), 1, false);
    let rolled = event(&events, "model-rolled-back");
    let detail = &rolled["detail"];
    let reason = detail["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("failed probation: label shares moved"), "{rolled:#}");
    assert!(reason.contains("normal") && reason.contains("imbalance"), "{rolled:#}");
    let (before, after) = (&detail["baseline"]["labels"], &detail["numbers"]["labels"]);
    assert!(before["normal"].as_u64().unwrap() > before["imbalance"].as_u64().unwrap_or(0), "{rolled:#}");
    assert!(after["imbalance"].as_u64().unwrap() > after["normal"].as_u64().unwrap_or(0), "{rolled:#}");

    let s = wait_status(&d, "version 1 serving", secs(30), |s| s["models"]["vibration"]["version"] == "1");
    let bad = s["ota"]["models"]["vibration"]["bad"]["2"].as_str().unwrap_or_default();
    assert!(bad.contains("label shares moved"), "{s:#}");
    finish(d);
}
