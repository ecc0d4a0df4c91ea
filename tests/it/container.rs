//! The cloud image (`firmware-images/cloud`): built by its own script from this test's
//! binary, then run from the image's root file system. `podman run` cannot start
//! containers in this sandbox (crun's setrlimit is refused), so the test does what a
//! runtime does with the image's configuration: `podman image mount` gives the root file
//! system, an overlay on top of it stands for the container's writable layer (the image
//! stays untouched), and the image's ENTRYPOINT runs in it with `chroot` as the image's
//! USER, in a mount namespace of its own, with the image's ENV. The port is the one
//! thing changed: a free one on 127.0.0.1 instead of 0.0.0.0:8080.
//!
//! A second run is fast: the base tarball is cached under a hash of its recipe, and
//! podman's layer cache turns an unchanged rebuild into metadata checks (about 2 s here).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// The tag the test builds, apart from a user's `edge-agent-serve:VERSION`.
const TAG: &str = "localhost/edge-agent-serve:it";

fn podman(args: &[&str], limit: Duration) -> std::process::Output {
    let mut cmd = Command::new("podman");
    cmd.arg("--storage-driver=vfs").args(args);
    run_with(&mut cmd, None, limit)
}

/// Builds the image with `firmware-images/cloud/build` from the binary under test.
fn build_image() {
    let started = Instant::now();
    let mut cmd = Command::new(root().join("firmware-images/cloud/build"));
    cmd.args(["--binary", bin().to_str().unwrap(), "--tag", TAG]);
    let out = run_with(&mut cmd, None, secs(600));
    assert!(out.status.success(), "firmware-images/cloud/build failed ({}):\n{}", out.status, stderr(&out));
    eprintln!("container: image built in {:.1} s:\n{}", started.elapsed().as_secs_f64(), stderr(&out));
}

/// The image's configuration (`podman image inspect`'s `.Config`).
fn image_config() -> Value {
    let out = podman(&["image", "inspect", "--format", "{{json .Config}}", TAG], secs(60));
    assert!(out.status.success(), "podman image inspect {TAG}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("image config is JSON")
}

/// The image's root file system, mounted by podman; unmounted on drop.
struct Mounted {
    root: PathBuf,
}

impl Mounted {
    fn new() -> Mounted {
        let out = podman(&["image", "mount", TAG], secs(60));
        assert!(out.status.success(), "podman image mount {TAG}: {}", stderr(&out));
        let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(root.join("usr/bin/edge-agent").is_file(), "{} has no /usr/bin/edge-agent", root.display());
        Mounted { root }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = podman(&["image", "unmount", TAG], secs(60));
        if !out.status.success() {
            eprintln!("podman image unmount {TAG}: {}", stderr(&out));
        }
    }
}

/// In a private mount namespace: an overlay over the image's root (the writable layer),
/// /dev and /proc as a runtime gives them, then `chroot --userspec=USER` into it and exec
/// the entrypoint. Every step execs, so the process the test holds is the agent itself,
/// and its mounts vanish with it.
const RUN_IN_IMAGE: &str = r#"set -eu
lower="$1"; dir="$2"; user="$3"; shift 3
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
mkdir -p "$dir/root/dev" "$dir/root/proc"
mount --rbind /dev "$dir/root/dev"
mount -t proc proc "$dir/root/proc"
exec chroot --userspec="$user" "$dir/root" "$@"
"#;

/// The image's entrypoint, running from its root file system on `port`.
struct Container {
    child: Guard,
    log: Arc<Mutex<String>>,
    port: u16,
    /// The overlay's upper and work directories and its mount point.
    _dir: tempfile::TempDir,
}

impl Container {
    fn start(mounted: &Mounted, config: &Value, port: u16) -> Container {
        let dir = tempdir();
        for d in ["upper", "work", "root"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let user = config["User"].as_str().expect("the image has a USER");
        let entrypoint: Vec<&str> = config["Entrypoint"]
            .as_array()
            .expect("ENTRYPOINT")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", RUN_IN_IMAGE, "sh"])
            .arg(&mounted.root)
            .arg(dir.path())
            .arg(user)
            .args(&entrypoint)
            // Only the image's environment, as a runtime would give it, and the override.
            .env_clear();
        for kv in config["Env"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let (k, v) = kv.as_str().unwrap().split_once('=').expect("ENV is KEY=VALUE");
            cmd.env(k, v);
        }
        cmd.env("EDGE_AGENT_API_LISTEN", format!("127.0.0.1:{port}"));
        let mut child = Guard(
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("unshare"),
        );
        let log = Arc::new(Mutex::new(String::new()));
        read_into(child.0.stderr.take().unwrap(), log.clone());
        let mut c = Container { child, log, port, _dir: dir };
        c.wait_ready(secs(60));
        c
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(r) = http().get(&self.url("/v2/health/ready")).call()
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.0.try_wait().expect("try_wait") {
                panic!("the image's entrypoint exited ({status}) before it was ready:\n{}", self.log());
            }
            assert!(started.elapsed() < limit, "not ready within {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The uid the agent runs as (from /proc).
    fn uid(&self) -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let mut r = http().get(&self.url(path)).call().expect("request");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let mut r = http()
            .post(&self.url(path))
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .expect("request");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// SIGTERM, as `podman stop` sends; the exit status and the log.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        signal(&self.child.0, "TERM");
        let status =
            wait_timeout(&mut self.child.0, secs(30)).expect("the agent stops within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
        (status, self.log())
    }
}

/// The host binary's raw output tensor for `input` (`edge-agent infer --raw --json`).
fn host_infer(dir: &Path, input: &Value) -> (Vec<f64>, Value) {
    let file = dir.join("window.json");
    std::fs::write(&file, input.to_string()).unwrap();
    let model = demo_model();
    let out = run(
        &["infer", "--model", model.to_str().unwrap(), "--input", file.to_str().unwrap(), "--json", "--raw"],
        secs(60),
    );
    assert!(out.status.success(), "edge-agent infer: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("infer --json");
    let result = &v["results"][0];
    (floats(&result["raw"]["probs"]["data"]), result["outputs"].clone())
}

/// The HEALTHCHECK command of the Containerfile (kept by the docker format only).
fn healthcheck() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("firmware-images/cloud/Containerfile")).unwrap();
    let after = text.split("\nHEALTHCHECK").nth(1).expect("the Containerfile has a HEALTHCHECK");
    let cmd = after.split("CMD").nth(1).expect("HEALTHCHECK ... CMD [...]");
    let json_end = cmd.find(']').expect("CMD [...]");
    serde_json::from_str(cmd[..=json_end].trim()).expect("HEALTHCHECK CMD is a JSON array")
}

#[test]
fn the_cloud_image_serves_oip_v2_as_its_user_with_the_host_binarys_numbers() {
    let started = Instant::now();
    build_image();

    // What a runtime reads from the image.
    let config = image_config();
    let user = config["User"].as_str().unwrap_or_default().to_string();
    let (uid, gid) = user.split_once(':').expect("USER is uid:gid");
    let (uid, gid): (u32, u32) = (uid.parse().expect("numeric uid"), gid.parse().expect("numeric gid"));
    assert_ne!(uid, 0, "the image must not run as root: USER {user}");
    let entrypoint = &config["Entrypoint"];
    assert_eq!(entrypoint[0], "/usr/bin/edge-agent", "{config:#}");
    assert_eq!(entrypoint[1], "serve", "{config:#}");
    assert!(config["ExposedPorts"].get("8080/tcp").is_some(), "EXPOSE 8080: {config:#}");
    let labels = &config["Labels"];
    let version = String::from_utf8(run(&["--version"], secs(10)).stdout).unwrap();
    assert_eq!(
        labels["org.opencontainers.image.version"].as_str(),
        version.split_whitespace().nth(1),
        "{labels:#}"
    );
    assert_eq!(labels["org.opencontainers.image.title"], "edge-agent-serve", "{labels:#}");
    // The script reports what it built.
    let report = read_json(&root().join("target/images/cloud.json"));
    assert_eq!(report["tag"], TAG, "{report:#}");
    assert!(report["size_bytes"].as_u64().unwrap() > 1_000_000, "{report:#}");

    let mounted = Mounted::new();
    // Nothing but the agent and its libraries: no shell to exec into.
    assert!(!mounted.root.join("bin/sh").exists(), "the image has a shell");
    let port = free_port();
    let c = Container::start(&mounted, &config, port);
    assert_eq!(c.uid(), uid, "the entrypoint runs as the image's USER");

    // Health and metadata.
    assert_eq!(c.get("/v2/health/live").0, 200);
    assert_eq!(c.get("/v2/health/ready").0, 200);
    let (s, v) = c.get("/v2/models/vibration");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "vibration");
    assert_eq!(v["versions"], json!(["1"]));
    assert_eq!(v["inputs"], json!([{"name": "vibration", "datatype": "FP32", "shape": [1, 256]}]));
    assert_eq!(v["outputs"][0]["name"], "probs", "{v}");

    // Every golden window: the image's answer is the host binary's, to the bit.
    let golden = read_json(&demo_model().join("golden.json"));
    let scratch = tempdir();
    for (i, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let body = json!({
            "id": format!("w{i}"),
            "inputs": [{"name": "vibration", "shape": [1, 256], "datatype": "FP32", "data": case["input"]}]
        });
        let (s, v) = c.post("/v2/models/vibration/infer", &body.to_string());
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["id"], format!("w{i}"));
        assert_eq!(v["model_version"], "1");
        assert_eq!(v["outputs"][0]["name"], "probs");
        assert_eq!(v["outputs"][0]["shape"], json!([1, 3]));
        let (host, host_result) = host_infer(scratch.path(), &case["input"]);
        let image = floats(&v["outputs"][0]["data"]);
        assert_eq!(image, host, "window {i}: the image and the host binary differ");
        assert_eq!(v["edge_agent"]["result"]["label"], host_result["label"], "window {i}");
        assert_eq!(v["edge_agent"]["result"]["label"], case["label"], "window {i}: the golden label");
    }

    // Malformed requests: a 400 that says what is wrong.
    let (s, v) = c.post("/v2/models/vibration/infer", "{\"inputs\": [");
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("not a valid inference request"), "{v}");
    let short = json!({"inputs": [{"name": "vibration", "shape": [1, 100], "datatype": "FP32", "data": vec![0.0; 100]}]});
    let (s, v) = c.post("/v2/models/vibration/infer", &short.to_string());
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("but the model takes [1, 256]"), "{v}");
    assert_eq!(c.get("/v2/models/nope").0, 404);

    // The Containerfile's HEALTHCHECK, inside the running container's file system.
    let check = healthcheck();
    let mut cmd = Command::new("nsenter");
    cmd.args(["--target", &c.child.0.id().to_string(), "--mount", "--root"])
        .args(["--setuid", &uid.to_string(), "--setgid", &gid.to_string()])
        .args(&check)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    let out = run_with(&mut cmd, None, secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "HEALTHCHECK {check:?}: {}{}", text, stderr(&out));
    assert!(text.contains("ready") && !text.contains("NOT READY"), "HEALTHCHECK said: {text}");

    // `podman stop` sends SIGTERM: the agent drains and exits 0.
    let (status, log) = c.stop();
    assert!(status.success(), "exit after SIGTERM: {status}\n{log}");
    assert!(log.contains("\"message\":\"model loaded\""), "JSON log lines from the image's config:\n{log}");
    drop(mounted);
    eprintln!("container: whole test {:.1} s", started.elapsed().as_secs_f64());
}
