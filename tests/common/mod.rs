//! Helpers for the end-to-end tests: where the real models are, the real binary,
//! temporary directories, and commands that cannot hang.

#![allow(dead_code)]

pub mod broker;
pub mod fleet;
pub mod mqtt_agent;
pub mod proxy;
pub mod registry;
pub mod upload_server;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use std::time::{Duration, Instant};

/// The built `edge-agent` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"))
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("agent/ has a parent").to_path_buf()
}

/// The test cache prepared by `tests/run` (real models, audio, reference outputs).
pub fn cache() -> PathBuf {
    let dir = std::env::var_os("EDGE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-cache"));
    assert!(
        dir.join("reference/vad_reference.json").is_file(),
        "the test cache {} is not prepared: run tests/run (or tests/run --prepare-only) first",
        dir.display()
    );
    dir
}

/// A real model directory from the cache.
pub fn model(name: &str) -> PathBuf {
    cache().join("models").join(name)
}

/// The committed demo model.
pub fn demo_model() -> PathBuf {
    root().join("configs/models/vibration")
}

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("edge-agent-it-").tempdir().expect("temp dir")
}

/// Copies a model directory (model.toml and files) into `dest`.
pub fn copy_model(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read model dir") {
        let entry = entry.expect("entry");
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dest.join(entry.file_name())).expect("copy");
        }
    }
}

/// Runs the binary with `args` to completion, killing it after `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    run_with(Command::new(bin()).args(args), None, limit)
}

/// Runs a prepared command, feeding `stdin`, killing it after `limit`.
pub fn run_with(cmd: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().expect("spawn edge-agent"));
    if let Some(data) = stdin {
        use std::io::Write;
        let mut pipe = child.0.stdin.take().expect("stdin");
        pipe.write_all(data).expect("write stdin");
    }
    let mut stdout = child.0.stdout.take().expect("stdout");
    let mut stderr = child.0.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = wait_timeout(&mut child.0, limit)
        .unwrap_or_else(|| panic!("edge-agent did not finish within {limit:?}: {cmd:?}"));
    Output { status, stdout: out_reader.join().expect("stdout"), stderr: err_reader.join().expect("stderr") }
}

/// Waits for a child up to `limit`; kills it and returns None on timeout.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child process when dropped (a failed assertion never leaks a process).
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a pipe to its end into `sink` on a thread (lossy UTF-8), so that the pipe never
/// fills and the text can be looked at while the process runs.
pub fn read_into(mut pipe: impl Read + Send + 'static, sink: std::sync::Arc<std::sync::Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// Spawns `what` (for the panic message) with stdout discarded and stderr read into the
/// returned log as it comes.
pub fn spawn_logged(cmd: &mut Command, what: &str) -> (Guard, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = Guard(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}")),
    );
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    read_into(child.0.stderr.take().expect("stderr"), log.clone());
    (child, log)
}

/// Sends a signal to a process.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args(["-s", sig, &child.id().to_string()]).status().expect("kill");
    assert!(status.success(), "kill -s {sig} failed");
}

/// Stdout as JSON lines.
pub fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// Text of a command's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest absolute difference of two equally long vectors.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length differs");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// A JSON array of numbers as f64s.
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// Seconds, for limits.
pub const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// An HTTP client that returns error statuses as responses.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A running daemon with the API on, stopped on drop.
pub struct Daemon {
    pub child: Guard,
    /// Everything the daemon logged so far (read continuously so the pipe never fills).
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    pub port: u16,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Daemon {
    /// Writes `body` (config without [agent] and [api]) and starts `edge-agent CMD`,
    /// waiting until the API answers ready. `api_extra` goes into the [api] table.
    pub fn start(cmd: &str, body: &str, api_extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempdir();
        let port = free_port();
        let socket = dir.path().join("api.sock");
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, Self::config_text(dir.path(), port, &socket, body, api_extra))
            .expect("config");
        let mut command = Command::new(bin());
        command.args([cmd, "--config", config.to_str().unwrap(), "--log-format", "json"]);
        for (k, v) in env {
            command.env(k, v);
        }
        let (child, log) = spawn_logged(&mut command, "daemon");
        let d = Daemon { child, log, port, socket, dir, config };
        d.wait_ready(Duration::from_secs(60));
        d
    }

    /// The config text the daemon runs with.
    pub fn config_text(dir: &Path, port: u16, socket: &Path, body: &str, api_extra: &str) -> String {
        format!(
            "[agent]\ndevice_id = \"it\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\nsocket = \"{}\"\n{api_extra}\n\n{body}\n",
            dir.join("state").display(),
            socket.display()
        )
    }

    /// The base URL of the TCP API.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `/v2/health/ready` answers 200.
    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        let agent = http();
        while start.elapsed() < limit {
            if let Ok(r) = agent.get(&self.url("/v2/health/ready")).call()
                && r.status() == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon not ready within {limit:?}");
    }

    /// Stops the daemon with SIGTERM; returns its exit status and log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        signal(&self.child.0, "TERM");
        let status =
            wait_timeout(&mut self.child.0, Duration::from_secs(30)).expect("daemon stops after SIGTERM");
        std::thread::sleep(Duration::from_millis(100)); // let the reader take the last lines
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }
}

/// The whole length of the HTTP/1.1 request at the start of `buf` (head, then a body by
/// Content-Length), once its head has arrived.
pub fn http_request_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some(end + 4 + length)
}

/// Reads one HTTP/1.1 request from a blocking stream, for hand-written test servers;
/// `None` when the peer closed or failed first.
pub fn read_http_request(stream: &mut impl Read) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while http_request_len(&buf).is_none_or(|len| buf.len() < len) {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}
