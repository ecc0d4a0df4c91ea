//! A model registry for tests: keys and a TUF repository made with the real
//! `edge-agent registry` commands, served on loopback by the agent's own static server
//! (in this process), whose faults a test switches on and off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edge_agent::ota::serve::{Faults, ServeOptions};

use super::*;

/// A registry directory with its signing keys.
pub struct Publisher {
    pub dir: tempfile::TempDir,
}

impl Publisher {
    /// Keys `root`, `targets`, `targets2`, `snapshot`, `timestamp` and a repository whose
    /// targets role needs `targets_threshold` of the two targets keys.
    pub fn new(targets_threshold: u64) -> Publisher {
        let p = Publisher { dir: tempdir() };
        std::fs::create_dir_all(p.keys()).unwrap();
        for k in ["root", "targets", "targets2", "snapshot", "timestamp"] {
            p.keygen(k);
        }
        let key = |k: &str| p.keys().join(format!("{k}.key.pub")).display().to_string();
        let t = targets_threshold.to_string();
        let repo = p.repo().display().to_string();
        let keys = p.keys().display().to_string();
        p.cli(&[
            "init",
            "--repo",
            &repo,
            "--keys",
            &keys,
            "--root-key",
            &key("root"),
            "--targets-key",
            &key("targets"),
            "--targets-key",
            &key("targets2"),
            "--targets-threshold",
            &t,
            "--snapshot-key",
            &key("snapshot"),
            "--timestamp-key",
            &key("timestamp"),
        ]);
        p
    }

    pub fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("registry")
    }

    /// The root a device ships with.
    pub fn root_v1(&self) -> PathBuf {
        self.repo().join("metadata/1.root.json")
    }

    /// Makes `keys/NAME.key` (and `.pub`) with `registry keygen`.
    pub fn keygen(&self, name: &str) {
        let file = self.keys().join(format!("{name}.key"));
        self.cli(&["keygen", file.to_str().unwrap()]);
    }

    /// Runs `edge-agent registry ARGS`, which must succeed; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.try_cli(args);
        assert!(out.status.success(), "registry {args:?} failed:\n{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_cli(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["registry"];
        full.extend_from_slice(args);
        run(&full, secs(120))
    }

    /// `registry publish` of a model directory (more `extra` flags), whatever its outcome.
    pub fn try_publish(&self, model: &Path, extra: &[&str]) -> std::process::Output {
        let (repo, keys) = (self.repo().display().to_string(), self.keys().display().to_string());
        let mut args = vec!["publish", "--repo", &repo, "--keys", &keys, "--model", model.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.try_cli(&args)
    }

    /// Publishes a model directory on `stable` at `rollout` percent (more `extra` flags).
    pub fn publish(&self, model: &Path, rollout: u32, extra: &[&str]) {
        let pct = rollout.to_string();
        let mut flags = vec!["--rollout", &pct];
        flags.extend_from_slice(extra);
        let out = self.try_publish(model, &flags);
        assert!(out.status.success(), "registry publish {model:?} {flags:?} failed:\n{}", stderr(&out));
    }

    /// `registry promote` of vibration `version` to `rollout` percent.
    pub fn promote(&self, version: &str, rollout: u32) {
        let (repo, keys) = (self.repo().display().to_string(), self.keys().display().to_string());
        let pct = rollout.to_string();
        self.cli(&[
            "promote",
            "--repo",
            &repo,
            "--keys",
            &keys,
            "--model",
            "vibration",
            "--version",
            version,
            "--rollout",
            &pct,
        ]);
    }

    /// A file of the registry's metadata directory.
    pub fn meta(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.repo().join("metadata").join(name)).unwrap()
    }

    /// The path (under the registry, as the server's faults match it) of the package of
    /// vibration `version`.
    pub fn target_path(&self, version: &str) -> String {
        let dir = self.repo().join("targets/stable/vibration");
        let suffix = format!(".{version}.tar");
        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            .unwrap_or_else(|| panic!("no package of version {version}"));
        format!("targets/stable/vibration/{}", entry.file_name().to_string_lossy())
    }
}

/// Every package (`.tar`) under a registry directory: their file names may carry their
/// hash, for consistent snapshots.
pub fn packages(repo: &Path) -> Vec<PathBuf> {
    let mut tars = Vec::new();
    let mut dirs = vec![repo.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "tar") {
                tars.push(p);
            }
        }
    }
    tars
}

/// The demo model as version `version`, in `dir/v{version}`, after `edit` ran on its
/// directory (before the golden vectors are kept as they are).
pub fn model_version(dir: &Path, version: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dest = dir.join(format!("v{version}"));
    copy_model(&demo_model(), &dest);
    let spec = std::fs::read_to_string(dest.join("model.toml")).unwrap();
    let spec = spec.replacen("version = \"1\"", &format!("version = \"{version}\""), 1);
    std::fs::write(dest.join("model.toml"), spec).unwrap();
    edit(&dest);
    dest
}

/// A registry served on 127.0.0.1 by `edge_agent::ota::serve` on its own thread.
pub struct Served {
    pub url: String,
    pub faults: Arc<Faults>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    pub fn start(dir: &Path) -> Served {
        let faults = Faults::none();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = ServeOptions { dir: dir.to_path_buf(), faults: faults.clone() };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                edge_agent::ota::serve::serve(listener, opts, async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("registry server started");
        Served { url: format!("http://{addr}"), faults, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `[ota]` section of an agent that follows `url` with the shipped root `root`.
pub fn ota_section(url: &str, root: &Path, extra: &str) -> String {
    format!(
        "[ota]\nurl = \"{url}\"\nmodels = [\"vibration\"]\ntrusted_root = \"{}\"\ninterval_s = 3600\n{extra}\n",
        root.display()
    )
}

/// POSTs to the agent's API and returns (status, JSON body).
pub fn post(d: &Daemon, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = http().post(&d.url(path)).send_json(&body).expect("POST");
    let status = r.status().as_u16();
    let v: serde_json::Value = r.into_body().read_json().unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// The agent's `/status`.
pub fn status(d: &Daemon) -> serde_json::Value {
    http().get(&d.url("/status")).call().expect("status").into_body().read_json().expect("status JSON")
}

/// The version of vibration the agent serves.
pub fn serving(d: &Daemon) -> String {
    status(d)["models"]["vibration"]["version"].as_str().unwrap_or("").to_string()
}

/// Waits until `pred` holds on `/status`.
pub fn wait_status(
    d: &Daemon,
    what: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let s = status(d);
        if pred(&s) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; /status: {s:#}\nlog: {}",
            d.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
