//! Helpers for the end-to-end tests: where the real models are, the real binary,
//! temporary directories, and commands that cannot hang.

#![allow(dead_code)]

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
