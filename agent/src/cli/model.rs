//! `edge-agent model ...`: looking at models.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use edge_infer::engine::budget;
use edge_infer::engine::model::{LoadInfo, TensorInfo};
#[cfg(feature = "onnx")]
use edge_infer::engine::onnx_file::{self, OnnxDim, OnnxFile};
use edge_infer::engine::spec::{InputFrom, PostSpec, PreSpec, SPEC_FILE};
use edge_infer::engine::{LoadError, LoadedModel};

/// `model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print a model's inputs, outputs, operators and load time.
    Inspect(InspectArgs),
    /// Run a model directory's golden vectors (selftest.json), as a device does before
    /// activating an update; or record them with --record.
    Selftest(SelftestArgs),
    /// Convert a model directory's ONNX model(s) to NNEF (`model.nnef.tgz` beside each),
    /// checked to give the same outputs; `registry publish` does this itself.
    Convert(super::convert::ConvertArgs),
    /// Run a model over representative inputs and write its drift reference
    /// (profile.json) into its directory; `registry publish` ships it with the model.
    Profile(super::profile::ProfileArgs),
    /// List the running agent's models with their update state (asks the daemon).
    List(super::update::DaemonArgs),
    /// Go back to the previous version of a model on the running agent (asks the daemon);
    /// the version left is marked bad and not installed again.
    Rollback(RollbackArgs),
}

/// Arguments of `model selftest`.
#[derive(Debug, Args)]
pub struct SelftestArgs {
    /// The model directory (model.toml, the model file, selftest.json).
    #[arg(long, short, value_name = "DIR")]
    pub model: PathBuf,
    /// Record selftest.json from the inputs in FILE (`[{"name", "input": [...]}]`) and
    /// the outputs this model gives for them.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// With --record: the largest difference a device accepts.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Print the report as JSON (stable, for scripts; devices read this).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The memory limit of commands that load a model (shared by every such command).
pub use super::LimitArgs;

/// Arguments of `model rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The model (needed when the agent takes several from the registry).
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub daemon: super::update::DaemonArgs,
}

/// Arguments of `model inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The model: a directory (model.toml and the model file), or an ONNX file alone to
    /// learn its inputs and outputs and get a first model.toml.
    #[arg(value_name = "PATH", required_unless_present = "model", conflicts_with = "model")]
    pub path: Option<PathBuf>,
    /// The same as PATH.
    #[arg(long, short, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Print JSON (stable, for scripts).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Serialize)]
struct Inspection<'a> {
    name: &'a str,
    version: &'a str,
    description: Option<&'a str>,
    dir: String,
    inputs: Vec<InputView<'a>>,
    outputs: &'a [TensorInfo],
    stateful: bool,
    #[serde(flatten)]
    info: &'a LoadInfo,
    pre: &'a PreSpec,
    post: &'a PostSpec,
}

#[derive(Serialize)]
struct InputView<'a> {
    #[serde(flatten)]
    tensor: &'a TensorInfo,
    from: InputFrom,
    /// The dimension that varies, when the spec declares one.
    #[serde(skip_serializing_if = "Option::is_none")]
    range: Option<RangeView>,
    #[serde(skip)]
    declared: String,
}

#[derive(Serialize)]
struct RangeView {
    axis: usize,
    #[serde(flatten)]
    range: edge_infer::engine::spec::DimRange,
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Human, "warn");
    match cmd {
        ModelCommand::Inspect(args) => inspect(args),
        ModelCommand::Selftest(args) => selftest(args),
        ModelCommand::Profile(args) => super::profile::run(args),
        ModelCommand::Convert(args) => super::convert::run(args),
        ModelCommand::List(d) => list(d),
        ModelCommand::Rollback(a) => {
            super::update::ask(&a.daemon, "/ota/rollback", serde_json::json!({"model": a.model}))
        }
    }
}

fn selftest(args: SelftestArgs) -> anyhow::Result<ExitCode> {
    use crate::ota::selftest;
    let dir = super::model_dir(&args.model)?;
    if let Some(inputs) = &args.record {
        let golden = selftest::record(&dir, inputs, args.tolerance, &args.limits.limits())
            .map_err(anyhow::Error::msg)?;
        eprintln!(
            "recorded {} case(s) with tolerance {} in {}",
            golden.cases.len(),
            golden.tolerance,
            dir.join(crate::ota::package::SELFTEST_FILE).display()
        );
    }
    let report = selftest::run_here(&dir, &args.limits.limits());
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!(
            "{} {}: {} (load {:.1} ms, slowest case {:.2} ms, peak RSS {} KiB)",
            report.model,
            report.version,
            if report.passed { "PASSED" } else { "FAILED" },
            report.load_ms,
            report.max_latency_ms,
            report.peak_rss_kib
        );
        for c in &report.cases {
            outln!(
                "  {:<20} {}  max |diff| {:.3e}  {:.2} ms",
                c.name,
                if c.passed { "ok  " } else { "FAIL" },
                c.max_abs_diff,
                c.latency_ms
            );
        }
        if let Some(e) = &report.error {
            outln!("  {e}");
        }
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::from(super::EXIT_FAILED) })
}

/// `model list`: the daemon's models with their update state.
fn list(d: super::update::DaemonArgs) -> anyhow::Result<ExitCode> {
    let socket = super::status::find_socket(d.socket.as_deref(), d.config.as_deref())?;
    let status = match super::status::fetch_status(&socket)? {
        Ok(s) => s,
        Err(e) => return Ok(e.report()),
    };
    let ota = status.ota.map(|o| o.models).unwrap_or_default();
    let mut rows = Vec::new();
    for (name, m) in &status.models {
        let u = ota.get(name);
        rows.push(serde_json::json!({
            "name": name,
            "version": m.version,
            "state": m.state,
            "previous": u.and_then(|u| u.previous.as_ref()),
            "bad": u.map(|u| &u.bad),
            "probation": u.and_then(|u| u.probation.as_ref()),
            "shadow": u.and_then(|u| u.shadow.as_ref()),
        }));
    }
    // Registry models not installed yet.
    for (name, u) in &ota {
        if !status.models.contains_key(name) {
            rows.push(serde_json::json!({"name": name, "version": null, "state": u.state, "previous": u.previous, "bad": u.bad, "probation": null}));
        }
    }
    if d.json {
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({"models": rows}))?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<20} {:<10} {:<12} {:<10} bad", "model", "version", "state", "previous");
    for r in &rows {
        let s = |k: &str| r[k].as_str().map(str::to_string).unwrap_or_else(|| "-".into());
        let bad: Vec<String> = r["bad"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        outln!(
            "{:<20} {:<10} {:<12} {:<10} {}",
            s("name"),
            s("version"),
            s("state"),
            s("previous"),
            bad.join(",")
        );
        if let Some(v) = r["shadow"]["version"].as_str() {
            let n = &r["shadow"]["numbers"];
            let agreement =
                n["agreement"].as_f64().map(|a| format!("{:.1}%", a * 100.0)).unwrap_or_else(|| "-".into());
            outln!("  shadow: version {v}, {} compared, agreement {agreement}", n["compared"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let Some(path) = args.path.as_ref().or(args.model.as_ref()) else {
        anyhow::bail!("pass a model directory or an ONNX file");
    };
    if path.is_file() {
        return inspect_onnx(path, args.json, None);
    }
    if !path.is_dir() {
        // A missing model is a setup error (exit 2), like a model that does not load.
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory");
        return Err(anyhow::Error::new(LoadError::Read { path: path.clone(), source })
            .context("pass a model directory (model.toml and the model file) or an ONNX file"));
    }
    let bare = path.join("model.onnx");
    if !path.join(SPEC_FILE).exists() && bare.is_file() {
        return inspect_onnx(&bare, args.json, Some(path));
    }
    let dir = path.clone();
    let model = LoadedModel::load_dir(&dir, &args.limits.limits())?;
    let inputs = model
        .inputs
        .iter()
        .map(|t| {
            let spec = model.spec.inputs.iter().find(|i| i.name == t.name);
            InputView {
                tensor: t,
                from: spec.map(|i| i.from).unwrap_or_default(),
                range: spec.and_then(|i| i.range()).map(|(axis, r)| RangeView { axis, range: r }),
                declared: spec.map(|i| i.shape_text()).unwrap_or_default(),
            }
        })
        .collect();
    let view = Inspection {
        name: model.name(),
        version: model.version(),
        description: model.spec.description.as_deref(),
        dir: dir.display().to_string(),
        inputs,
        outputs: &model.outputs,
        stateful: model.is_stateful(),
        info: &model.info,
        pre: &model.spec.pre,
        post: &model.spec.post,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{} {}", view.name, view.version);
    if let Some(d) = view.description {
        outln!("  {d}");
    }
    outln!("  directory  {}", view.dir);
    outln!("  file       {} bytes ({})", model.info.file_bytes, model.info.format.name());
    outln!("  load       {:.1} ms, optimise {:.1} ms", model.info.load_ms, model.info.optimise_ms);
    let mem = &model.info.memory;
    outln!(
        "  memory     about {} ({} weights, {} tensors at peak; limit {})",
        budget::human(mem.total()),
        budget::human(mem.weights_bytes),
        budget::human(mem.peak_tensor_bytes),
        budget::human(model.info.memory_limit_bytes)
    );
    outln!("  inputs");
    for i in &view.inputs {
        outln!("    {:<24} {:<5} {}  ({:?})", i.tensor.name, i.tensor.dtype, i.declared, i.from);
    }
    outln!("  outputs");
    for o in view.outputs {
        let shape = match &o.dims {
            Some(d) => format!("[{}]", d.join(", ")),
            None => format!("{:?}", o.shape),
        };
        outln!("    {:<24} {:<5} {shape}", o.name, o.dtype);
    }
    let ops: Vec<String> = model.info.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    outln!("  ops        {} nodes: {}", model.info.op_count, ops.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// `model inspect FILE.onnx` in a build without ONNX: refused with what to do.
#[cfg(not(feature = "onnx"))]
fn inspect_onnx(
    path: &std::path::Path,
    _json: bool,
    _dir: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "{}: this edge-agent is built without ONNX support (the `onnx` feature): inspect ONNX files with the default build",
        path.display()
    )
}

/// `model inspect FILE.onnx`: the file's signature and a first spec. `dir` is the model
/// directory it was found in when that has no model.toml yet.
#[cfg(feature = "onnx")]
fn inspect_onnx(
    path: &std::path::Path,
    json: bool,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let file = onnx_file::read(path)?;
    let spec = file.suggest_spec();
    let unsupported = file.unsupported_ops.clone();
    if json {
        #[derive(Serialize)]
        struct View<'a> {
            #[serde(flatten)]
            file: &'a OnnxFile,
            suggested_spec: &'a str,
        }
        outln!("{}", serde_json::to_string_pretty(&View { file: &file, suggested_spec: &spec })?);
    } else {
        print_onnx(&file, &spec, dir)?;
    }
    if !unsupported.is_empty() {
        // The signature is shown, but such a model cannot run here: a setup error.
        return Err(anyhow::Error::new(LoadError::Parse {
            path: path.to_path_buf(),
            bytes: file.bytes,
            reason: format!("tract does not implement {}", unsupported.join(", ")),
        }));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "onnx")]
fn print_onnx(f: &OnnxFile, spec: &str, dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(d) = dir {
        outln!("{} has no {SPEC_FILE}: the ONNX file alone", d.display());
    }
    outln!("{}", f.file.display());
    outln!("  file       {} bytes, ONNX IR {}", f.bytes, f.ir_version);
    if !f.producer.is_empty() {
        outln!("  producer   {}", f.producer);
    }
    let opsets: Vec<String> = f.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    outln!("  opsets     {}", opsets.join(", "));
    let shape = |s: &Option<Vec<OnnxDim>>| match s {
        None => "(no shape)".to_string(),
        Some(dims) => {
            let d: Vec<String> = dims
                .iter()
                .map(|d| match d {
                    OnnxDim::Size(n) => n.to_string(),
                    OnnxDim::Symbol(s) => s.clone(),
                })
                .collect();
            format!("[{}]", d.join(", "))
        }
    };
    outln!("  inputs");
    for t in &f.inputs {
        outln!("    {:<24} {:<5} {}", t.name, t.dtype, shape(&t.shape));
    }
    outln!("  outputs");
    for t in &f.outputs {
        outln!("    {:<24} {:<5} {}", t.name, t.dtype, shape(&t.shape));
    }
    let ops: Vec<String> = f.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    outln!("  ops        {} nodes: {}", f.op_count, ops.join(", "));
    if !f.unsupported_ops.is_empty() {
        outln!("  not in tract: {}", f.unsupported_ops.join(", "));
    }
    outln!("\nA first model.toml (put it beside the ONNX file and edit it):\n");
    print!("{spec}");
    Ok(())
}
