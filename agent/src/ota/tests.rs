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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_installs_and_a_failed_probation_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("registry");
    registry(&reg, tmp.path(), &["2"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opts = ServeOptions { dir: reg.clone(), faults: Faults::none() };
    let server = tokio::spawn(super::serve::serve(listener, opts, async move {
        let _ = stopped.await;
    }));

    let state_dir = tmp.path().join("state");
    let config_file = tmp.path().join("agent.toml");
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
    let (tx, mut tap) = mpsc::unbounded_channel();
    let prepared = super::prepare(&config, &engine);
    let mut ota =
        Ota::new(&config, engine.clone(), Events::log_only().tap(tx), Default::default(), prepared.states)
            .unwrap();
    ota.selftest_exe = passing_selftest(tmp.path());
    assert_eq!(serving(&ota), "1");
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
