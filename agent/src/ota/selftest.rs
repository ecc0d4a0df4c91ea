//! Golden vectors: a model package carries inputs and the outputs its publisher saw, and
//! a device runs them before it lets the model near real data.
//!
//! The device runs the self-test in a child process (`edge-agent model selftest --json`)
//! under a memory limit and a time limit, because a broken model can do worse than
//! return wrong numbers: it can panic inside tract, allocate without bound or never
//! finish, and none of that may touch the daemon that keeps serving the old model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use edge_infer::engine::{Engine, EngineConfig, LoadedModel, ModelLimits, Request};

/// `selftest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    /// Largest absolute difference allowed between an output and its expected value.
    pub tolerance: f64,
    /// A case slower than this fails (after one warm-up run); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
    pub cases: Vec<Case>,
}

/// One golden vector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// A pipeline's stage the case runs (its `[[stage]]` name); default: the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The data input's values, pre-processed and flat (as the engine takes them).
    pub input: Vec<f32>,
    /// The output compared; default: the one post-processing reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub expected: Vec<f32>,
}

/// What a self-test found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub passed: bool,
    pub model: String,
    pub version: String,
    pub cases: Vec<CaseReport>,
    pub load_ms: f64,
    /// Slowest case (after a warm-up run).
    pub max_latency_ms: f64,
    pub peak_rss_kib: u64,
    /// Why it failed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// A report of a self-test that did not get to judge the cases.
    fn failed(error: Option<String>) -> Report {
        Report {
            passed: false,
            model: String::new(),
            version: String::new(),
            cases: Vec::new(),
            load_ms: 0.0,
            max_latency_ms: 0.0,
            peak_rss_kib: 0,
            error,
        }
    }
}

/// One case's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseReport {
    pub name: String,
    pub max_abs_diff: f64,
    pub latency_ms: f64,
    pub passed: bool,
}

/// Reads `selftest.json` of a model directory.
pub fn read(dir: &Path) -> Result<Golden, String> {
    let path = dir.join(super::package::SELFTEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let golden: Golden = serde_json::from_str(edge_infer::pipeline::strip_bom_str(&text))
        .map_err(|e| format!("{}: not a golden vectors file: {e}", path.display()))?;
    if golden.cases.is_empty() {
        return Err(format!("{}: no cases; a self-test needs at least one", path.display()));
    }
    if !(golden.tolerance >= 0.0 && golden.tolerance.is_finite()) {
        return Err(format!("{}: tolerance {} is not a number ≥ 0", path.display(), golden.tolerance));
    }
    Ok(golden)
}

/// Runs a model's golden vectors in this process, loading the model within `limits`.
/// Never panics on a bad model: load errors and failed cases come back in the report.
pub fn run_here(dir: &Path, limits: &ModelLimits) -> Report {
    let mut report = Report::failed(None);
    let result = run_cases(dir, limits, &mut report);
    report.peak_rss_kib = crate::telemetry::memory().peak_rss / 1024;
    match result {
        Ok(()) => {
            let failed: Vec<&str> =
                report.cases.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
            report.passed = failed.is_empty();
            if !failed.is_empty() {
                report.error = Some(format!("golden vectors failed: {}", failed.join(", ")));
            }
        }
        Err(e) => report.error = Some(e),
    }
    report
}

/// A one-thread engine serving only `model` (and the stages of its pipeline), for
/// running golden vectors.
struct Runner {
    engine: Engine,
    model: Arc<LoadedModel>,
}

impl Runner {
    fn new(model: LoadedModel) -> Runner {
        let engine = Engine::start(&EngineConfig {
            threads: 1,
            queue: 4,
            max_streams: 4,
            spin: Duration::ZERO,
            ..EngineConfig::default()
        });
        let model = engine.install(model);
        Runner { engine, model }
    }

    /// The model a case runs: the installed one, or one of its pipeline's stages.
    fn target(&self, stage: Option<&str>) -> Result<Arc<LoadedModel>, String> {
        let Some(stage) = stage else { return Ok(self.model.clone()) };
        let full = format!("{}.{stage}", self.model.name());
        self.model.stages.iter().find(|s| s.name() == full).cloned().ok_or_else(|| {
            let names: Vec<&str> = self.model.spec.stages.iter().map(|s| s.name.as_str()).collect();
            format!("no stage `{stage}` in the model's spec (stages: {})", names.join(", "))
        })
    }

    /// Runs one input on a fresh stream state.
    fn infer(
        &self,
        stage: Option<&str>,
        input: &[f32],
        stream: &str,
    ) -> Result<edge_infer::engine::Response, String> {
        let model = self.target(stage)?;
        let request = Request {
            model: model.name().to_string(),
            stream: Some(stream.to_string()),
            data: input.to_vec(),
            deadline: Instant::now() + Duration::from_secs(600),
            reset: true,
            shape: None,
        };
        self.engine.submit_to(model, request).and_then(|t| t.wait_blocking()).map_err(|e| e.to_string())
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}

fn run_cases(dir: &Path, limits: &ModelLimits, report: &mut Report) -> Result<(), String> {
    let golden = read(dir)?;
    let started = Instant::now();
    let model = LoadedModel::load_dir(dir, limits).map_err(|e| format!("the model does not load: {e}"))?;
    report.load_ms = started.elapsed().as_secs_f64() * 1000.0;
    report.model = model.name().to_string();
    report.version = model.version().to_string();
    let runner = Runner::new(model);
    let infer = |case: &Case, stream: &str| runner.infer(case.stage.as_deref(), &case.input, stream);
    for (ix, case) in golden.cases.iter().enumerate() {
        // One warm-up run, so the latency measured is the steady one a device sees.
        infer(case, "warm-up").map_err(|e| format!("case `{}`: {e}", case.name))?;
        let t = Instant::now();
        let resp = infer(case, &format!("case-{ix}")).map_err(|e| format!("case `{}`: {e}", case.name))?;
        let latency_ms = t.elapsed().as_secs_f64() * 1000.0;
        let got = match &case.output {
            None => resp.post_output(),
            Some(n) => resp.outputs.iter().find(|o| &o.name == n),
        }
        .ok_or_else(|| {
            let outputs: Vec<&str> = resp.model.outputs.iter().map(|o| o.name.as_str()).collect();
            format!(
                "case `{}`: the model has no output `{}` (outputs: {})",
                case.name,
                case.output.as_deref().unwrap_or("?"),
                outputs.join(", ")
            )
        })?;
        let max_abs_diff = if got.values.len() == case.expected.len() {
            got.values
                .iter()
                .zip(&case.expected)
                .map(|(a, b)| f64::from((a - b).abs()))
                .fold(0.0, |m: f64, d| if d.is_nan() { f64::INFINITY } else { m.max(d) })
        } else {
            f64::INFINITY
        };
        let slow = golden.max_latency_ms.is_some_and(|limit| latency_ms > limit);
        report.max_latency_ms = report.max_latency_ms.max(latency_ms);
        report.cases.push(CaseReport {
            name: case.name.clone(),
            max_abs_diff,
            latency_ms,
            passed: max_abs_diff <= golden.tolerance && !slow,
        });
    }
    Ok(())
}

/// Records golden vectors: runs `inputs` through the model in `dir` and writes
/// `selftest.json` with what came out. `inputs` is a JSON file holding
/// `[{"name", "input"}]` or `{"cases": [...]}` (cases may say `label` instead of `name`).
pub fn record(dir: &Path, inputs: &Path, tolerance: f64, limits: &ModelLimits) -> Result<Golden, String> {
    #[derive(Deserialize)]
    struct In {
        #[serde(alias = "label")]
        name: Option<String>,
        #[serde(default)]
        stage: Option<String>,
        input: Vec<f32>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Inputs {
        List(Vec<In>),
        Cases { cases: Vec<In> },
    }
    let text =
        std::fs::read_to_string(inputs).map_err(|e| format!("cannot read {}: {e}", inputs.display()))?;
    let list = match serde_json::from_str::<Inputs>(edge_infer::pipeline::strip_bom_str(&text))
        .map_err(|e| format!("{}: expected [{{\"name\", \"input\": [...]}}]: {e}", inputs.display()))?
    {
        Inputs::List(l) | Inputs::Cases { cases: l } => l,
    };
    let model = LoadedModel::load_dir(dir, limits).map_err(|e| format!("the model does not load: {e}"))?;
    let runner = Runner::new(model);
    let mut cases = Vec::new();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for (ix, item) in list.into_iter().enumerate() {
        let resp = runner
            .infer(item.stage.as_deref(), &item.input, &format!("record-{ix}"))
            .map_err(|e| format!("input {ix}: {e}"))?;
        let out = resp.post_output().ok_or_else(|| "the model gave no output".to_string())?;
        let base = item.name.unwrap_or_else(|| format!("case-{ix}"));
        let n = seen.entry(base.clone()).or_default();
        *n += 1;
        let case_name = if *n == 1 { base } else { format!("{base}-{n}") };
        cases.push(Case {
            name: case_name,
            stage: item.stage,
            input: item.input,
            output: None,
            expected: out.values.clone(),
        });
    }
    if cases.is_empty() {
        return Err(format!("{}: no inputs", inputs.display()));
    }
    let golden = Golden { tolerance, max_latency_ms: None, cases };
    let text = serde_json::to_string_pretty(&golden).map_err(|e| e.to_string())?;
    let path = dir.join(super::package::SELFTEST_FILE);
    edge_spool::durable::replace(&path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(golden)
}

/// Limits of a self-test child process.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Data segment limit (RLIMIT_DATA): heap and anonymous mappings.
    pub memory_bytes: u64,
    pub timeout: Duration,
    /// The device's limit for one model (`engine.max_model_memory_mb`), which the child
    /// checks the model against before running anything.
    pub model: ModelLimits,
}

/// Runs the self-test of `dir` in a child process (`exe model selftest --json`) under
/// `limits`. A crash, a signal, a timeout or a report that does not parse all come back
/// as a failed report with the reason: verdicts on the version. `Err` means no self-test
/// ran at all (the process could not be started or was lost), which says nothing about
/// the version.
pub fn run_isolated(exe: &Path, dir: &Path, limits: &Limits) -> Result<Report, String> {
    let failed = |error: String| Report::failed(Some(error));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["model", "selftest", "--json", "--max-model-memory-mb"])
        .arg(limits.model.mb().to_string())
        .arg("--model")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // The child's own logging stays quiet; its verdict is the JSON on stdout.
        .env("RUST_LOG", "error")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC");
    let mem = limits.memory_bytes;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent; this
    // runs in the forked child before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: mem as libc::rlim_t, rlim_max: mem as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Err(format!("cannot start the self-test process {}: {e}", exe.display())),
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || read_all(stdout));
    let err_reader = std::thread::spawn(move || read_all(stderr));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() > limits.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("lost the self-test process: {e}")),
        }
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let tail: String =
        err.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
    let Some(status) = status else {
        return Ok(failed(format!("the self-test did not finish within {} s", limits.timeout.as_secs())));
    };
    Ok(match serde_json::from_str::<Report>(out.trim()) {
        Ok(report) => report,
        Err(_) => {
            use std::os::unix::process::ExitStatusExt;
            let how = match status.signal() {
                Some(sig) => format!("was killed by signal {sig}"),
                None => format!("exited with {}", status.code().unwrap_or(-1)),
            };
            let mem_mib = limits.memory_bytes >> 20;
            failed(format!(
                "the self-test process {how} without a verdict (memory limit {mem_mib} MiB){}",
                if tail.is_empty() { String::new() } else { format!(": {tail}") }
            ))
        }
    })
}

fn read_all(pipe: Option<impl std::io::Read>) -> String {
    let mut s = String::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_string(&mut s);
    }
    s
}

/// The path of this executable, for self-tests.
pub fn current_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("edge-agent"))
}
