//! The update task driven in-process: a registry made with the project's own TUF code
//! and served on loopback by its own server, a temporary state directory, the real
//! engine, a shell script standing in for the self-test child and a channel for events.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::json;
use tokio::sync::mpsc;

use super::Ota;
use super::rollout::{Custom, Rollout};
use super::serve::{Faults, ServeOptions};
use super::store::{ModelState, Store};
use crate::config::{Config, Overrides};
use crate::events::Events;
use edge_infer::engine::InferError;
use edge_tuf::keys::PrivateKey;
use edge_tuf::repo::{Expiries, Repository, RootKeys};
type Tap = mpsc::UnboundedReceiver<crate::events::Event>;

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/models/vibration")
}

/// The demo model as version `version`, in `dir/v{version}`.
fn model_version(dir: &Path, version: &str) -> PathBuf {
    let dest = dir.join(format!("v{version}"));
    std::fs::create_dir_all(&dest).unwrap();
    for e in std::fs::read_dir(demo_dir()).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    }
    let spec = std::fs::read_to_string(dest.join("model.toml")).unwrap();
    let spec = spec.replacen("version = \"1\"", &format!("version = \"{version}\""), 1);
    std::fs::write(dest.join("model.toml"), spec).unwrap();
    dest
}

/// A registry in `dir` offering `versions` of the demo model to every device.
fn registry(dir: &Path, work: &Path, versions: &[&str]) {
    let g = || PrivateKey::generate().unwrap();
    let (root, targets, snapshot, timestamp) = (g(), g(), g(), g());
    let keys = RootKeys {
        root: vec![root.public()],
        root_threshold: 1,
        targets: vec![targets.public()],
        targets_threshold: 1,
        snapshot: vec![snapshot.public()],
        snapshot_threshold: 1,
        timestamp: vec![timestamp.public()],
        timestamp_threshold: 1,
    };
    let signers = [root, targets, snapshot, timestamp];
    let ex = Expiries::default();
    let mut repo = Repository::init(dir, keys, &signers, &ex, SystemTime::now()).unwrap();
    for v in versions {
        let (bytes, _) = super::package::pack(&model_version(work, v)).unwrap();
        let custom = Custom {
            model: "vibration".into(),
            version: v.to_string(),
            rollout: Rollout { percent: 100, salt: format!("vibration-{v}"), mode: Default::default() },
            groups: None,
            min_agent: None,
            probation: None,
            shadow: None,
        };
        repo.add_target(&format!("stable/vibration/{v}.tar"), &bytes, serde_json::to_value(&custom).unwrap())
            .unwrap();
    }
    repo.commit(&signers, SystemTime::now(), &ex).unwrap();
}

/// A fake self-test child: it passes every version without loading anything (the test
/// binary is not `edge-agent`, so it cannot be its own child as the daemon is).
fn passing_selftest(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let exe = dir.join("selftest.sh");
    let report = json!({"passed": true, "model": "vibration", "version": "", "cases": [],
        "load_ms": 0.0, "max_latency_ms": 0.0, "peak_rss_kib": 0});
    std::fs::write(&exe, format!("#!/bin/sh\necho '{report}'\n")).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

/// The kinds of the events sent so far.
fn kinds(tap: &mut Tap) -> Vec<String> {
    std::iter::from_fn(|| tap.try_recv().ok()).map(|e| e.kind.as_str().to_string()).collect()
}

/// What `state.json` holds, read as a restart would.
fn on_disk(state_dir: &Path) -> ModelState {
    Store::new(state_dir).state("vibration")
}

fn serving(ota: &Ota) -> String {
    ota.engine.model("vibration").map(|m| m.version().to_string()).unwrap_or_default()
}

/// The update task over a loopback registry offering version 2, the demo model's
/// version 1 serving.
struct Rig {
    ota: Ota,
    engine: std::sync::Arc<edge_infer::engine::Engine>,
    tap: Tap,
    config: Config,
    state_dir: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn rig(tmp: &Path) -> Rig {
    let reg = tmp.join("registry");
    registry(&reg, tmp, &["2"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opts = ServeOptions { dir: reg.clone(), faults: Faults::none() };
    let server = tokio::spawn(super::serve::serve(listener, opts, async move {
        let _ = stopped.await;
    }));

    let state_dir = tmp.join("state");
    let config_file = tmp.join("agent.toml");
    std::fs::write(
        &config_file,
        format!(
            "[agent]\ndevice_id = \"dev-1\"\nstate_dir = \"{}\"\n\n[[model]]\npath = \"{}\"\n\n\
             [ota]\nurl = \"{url}\"\nmodels = [\"vibration\"]\ntrusted_root = \"{}\"\ninterval_s = 3600\n",
            state_dir.display(),
            demo_dir().display(),
            reg.join("metadata/1.root.json").display()
        ),
    )
    .unwrap();
    let config = Config::load_with_env(&config_file, &Overrides::default(), &[]).unwrap();
    let engine = crate::service::start_engine(&config).unwrap();
    let (tx, tap) = mpsc::unbounded_channel();
    let prepared = super::prepare(&config, &engine);
    let mut ota =
        Ota::new(&config, engine.clone(), Events::log_only().tap(tx), Default::default(), prepared.states)
            .unwrap();
    ota.selftest_exe = passing_selftest(tmp);
    assert_eq!(serving(&ota), "1");
    Rig { ota, engine, tap, config, state_dir, stop, server }
}

impl Rig {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
        self.engine.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_installs_and_a_failed_probation_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let Rig { mut ota, engine, mut tap, config, state_dir, stop, server } = rig(tmp.path()).await;
    assert_eq!(ota.state("vibration"), ModelState::default());

    // A check installs version 2, on probation, and writes that before it serves.
    let report = ota.check("test").await.unwrap();
    assert_eq!(report["models"]["vibration"]["action"], "activated 2", "{report:#}");
    assert_eq!(serving(&ota), "2");
    let events = kinds(&mut tap);
    for kind in ["update-downloading", "update-downloaded", "selftest-passed", "model-activated"] {
        assert!(events.iter().any(|k| k == kind), "no {kind} in {events:?}");
    }
    let state = ota.state("vibration");
    assert_eq!(state.probation.as_ref().map(|p| p.version.as_str()), Some("2"));
    assert_eq!(on_disk(&state_dir), state, "the file holds what memory holds");
    assert_eq!(ota.status.lock().unwrap().state_of("vibration"), Some("probation"));

    // A tick with too few requests judges nothing.
    ota.watch_probations().await;
    assert_eq!(serving(&ota), "2");
    assert!(kinds(&mut tap).is_empty());

    // Every request failing: the next tick rolls back to the configured version and
    // marks 2 bad, on disk as in memory.
    let failure = InferError::Run { model: "vibration".into(), reason: "broken".into() };
    for _ in 0..25 {
        engine.count_error("vibration", &failure);
    }
    ota.watch_probations().await;
    assert_eq!(serving(&ota), "1");
    assert!(kinds(&mut tap).iter().any(|k| k == "model-rolled-back"));
    let state = ota.state("vibration");
    assert!(state.probation.is_none());
    assert!(state.bad.get("2").is_some_and(|why| why.contains("failed probation")), "{state:?}");
    assert_eq!(on_disk(&state_dir), state, "the file holds what memory holds");
    let status = ota.status.lock().unwrap().clone();
    assert_eq!(status.state_of("vibration"), Some("rolled-back"), "{status:#?}");

    // The next check does not take the bad version again.
    let report = ota.check("test").await.unwrap();
    assert_eq!(report["models"]["vibration"]["action"], "none", "{report:#}");
    assert_eq!(serving(&ota), "1");

    // A restart reads the same state back.
    let again = Ota::new(
        &config,
        engine.clone(),
        Events::log_only(),
        Default::default(),
        super::prepare(&config, &engine).states,
    )
    .unwrap();
    assert_eq!(again.state("vibration"), state);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    engine.shutdown();
}

/// Feeds `model`'s monitor `n` results of the version now serving, labelled in turn
/// from `labels` (each repeated as many times as its count), as the stream tasks do.
fn answer(ota: &Ota, labels: &[(&str, usize)]) {
    let model = ota.engine.model("vibration").unwrap();
    for (label, n) in labels {
        for _ in 0..*n {
            let outputs = json!({"label": label}).as_object().unwrap().clone();
            ota.monitors.observe(&model, Vec::new(), &outputs);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_answering_other_labels_fails_probation_for_its_label_shift() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = rig(tmp.path()).await;
    r.ota.monitors = std::sync::Arc::new(crate::monitor::Monitors::new());
    // Version 1's recent answers: mostly normal.
    answer(&r.ota, &[("normal", 210), ("imbalance", 60), ("impact", 30)]);

    let report = r.ota.check("test").await.unwrap();
    assert_eq!(report["models"]["vibration"]["action"], "activated 2", "{report:#}");
    let p = r.ota.state("vibration").probation.unwrap();
    let before = p.baseline.labels.expect("the replaced version's labels are kept at the switch");
    assert_eq!(before.get("normal"), Some(&210), "{before:?}");
    kinds(&mut r.tap);

    // Version 2 names normal vibration `imbalance` and the reverse; with too few results
    // it is not judged yet, but its labels show in the status.
    answer(&r.ota, &[("imbalance", 35), ("normal", 10), ("impact", 5)]);
    r.ota.watch_probations().await;
    assert_eq!(serving(&r.ota), "2");
    let status = r.ota.status.lock().unwrap().clone();
    let shown = serde_json::to_value(&status).unwrap();
    let labels = &shown["models"]["vibration"]["probation"]["numbers"]["labels"];
    assert_eq!(labels["imbalance"], 35, "{shown:#}");
    assert_eq!(shown["models"]["vibration"]["probation"]["baseline"]["labels"]["normal"], 210);

    // With the minimum of results, the shift fails the probation: rolled back, the
    // reason naming the labels that moved.
    answer(&r.ota, &[("imbalance", 35), ("normal", 10), ("impact", 5)]);
    r.ota.watch_probations().await;
    assert_eq!(serving(&r.ota), "1");
    let events: Vec<_> = std::iter::from_fn(|| r.tap.try_recv().ok()).collect();
    let rolled = events.iter().find(|e| e.kind.as_str() == "model-rolled-back").expect("rolled back");
    assert_eq!(rolled.detail["numbers"]["labels"]["imbalance"], 70, "{:#}", rolled.detail);
    let state = r.ota.state("vibration");
    let why = state.bad.get("2").cloned().unwrap_or_default();
    assert!(why.contains("label shares moved"), "{why}");
    assert!(why.contains("normal 70% → 20%") && why.contains("imbalance 20% → 70%"), "{why}");
    r.stop().await;
}
