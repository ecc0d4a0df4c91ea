//! `edge-agent model ...`: looking at models.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::engine::budget::{self, DEFAULT_MAX_MODEL_MEMORY_MB, MAX_MODEL_MEMORY_MB};
use crate::engine::model::{LoadInfo, TensorInfo};
use crate::engine::spec::{InputFrom, PostSpec, PreSpec};
use crate::engine::{LoadedModel, ModelLimits};

/// `model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print a model's inputs, outputs, operators and load time.
    Inspect(InspectArgs),
    /// Run a model directory's golden vectors (selftest.json), as a device does before
    /// activating an update; or record them with --record.
    Selftest(SelftestArgs),
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

/// The memory limit of commands that load a model, as a device applies it.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// The most memory the model may need, in MiB: its weights plus its estimated working
    /// memory. A device takes it from engine.max_model_memory_mb; larger models are refused.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = DEFAULT_MAX_MODEL_MEMORY_MB,
        value_parser = clap::value_parser!(u64).range(1..=MAX_MODEL_MEMORY_MB)
    )]
    pub max_model_memory_mb: u64,
}

impl LimitArgs {
    /// The limit to load with.
    pub fn limits(&self) -> ModelLimits {
        ModelLimits::from_mb(self.max_model_memory_mb)
    }
}

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
    /// The model directory (model.toml and the model file).
    #[arg(long, short, value_name = "DIR")]
    pub model: PathBuf,
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
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Human, "warn");
    match cmd {
        ModelCommand::Inspect(args) => inspect(args),
        ModelCommand::Selftest(args) => selftest(args),
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
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} {}: {} (load {:.1} ms, slowest case {:.2} ms, peak RSS {} KiB)",
            report.model,
            report.version,
            if report.passed { "PASSED" } else { "FAILED" },
            report.load_ms,
            report.max_latency_ms,
            report.peak_rss_kib
        );
        for c in &report.cases {
            println!(
                "  {:<20} {}  max |diff| {:.3e}  {:.2} ms",
                c.name,
                if c.passed { "ok  " } else { "FAIL" },
                c.max_abs_diff,
                c.latency_ms
            );
        }
        if let Some(e) = &report.error {
            println!("  {e}");
        }
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::from(super::EXIT_FAILED) })
}

/// `model list`: the daemon's models with their update state.
fn list(d: super::update::DaemonArgs) -> anyhow::Result<ExitCode> {
    let socket = super::status::find_socket(d.socket.as_deref(), d.config.as_deref())?;
    let v = match super::status::fetch_status(&socket)? {
        Ok(v) => v,
        Err(e) => return Ok(e.report()),
    };
    let ota = &v["ota"]["models"];
    let mut rows = Vec::new();
    if let Some(models) = v["models"].as_object() {
        for (name, m) in models {
            let u = &ota[name];
            rows.push(serde_json::json!({
                "name": name,
                "version": m["version"],
                "state": m["state"],
                "previous": u["previous"],
                "bad": u["bad"],
                "probation": u["probation"],
            }));
        }
    }
    // Registry models not installed yet.
    if let Some(o) = ota.as_object() {
        for (name, u) in o {
            if !rows.iter().any(|r| r["name"] == serde_json::json!(name)) {
                rows.push(serde_json::json!({"name": name, "version": null, "state": u["state"], "previous": u["previous"], "bad": u["bad"], "probation": null}));
            }
        }
    }
    if d.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"models": rows}))?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<10} {:<12} {:<10} bad", "model", "version", "state", "previous");
    for r in &rows {
        let s = |k: &str| r[k].as_str().map(str::to_string).unwrap_or_else(|| "-".into());
        let bad: Vec<String> = r["bad"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        println!(
            "{:<20} {:<10} {:<12} {:<10} {}",
            s("name"),
            s("version"),
            s("state"),
            s("previous"),
            bad.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let dir = super::model_dir(&args.model)?;
    let model = LoadedModel::load_dir(&dir, &args.limits.limits())?;
    let inputs = model
        .inputs
        .iter()
        .map(|t| InputView {
            tensor: t,
            from: model.spec.inputs.iter().find(|i| i.name == t.name).map(|i| i.from).unwrap_or_default(),
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
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} {}", view.name, view.version);
    if let Some(d) = view.description {
        println!("  {d}");
    }
    println!("  directory  {}", view.dir);
    println!("  file       {} bytes", model.info.file_bytes);
    println!("  load       {:.1} ms, optimise {:.1} ms", model.info.load_ms, model.info.optimise_ms);
    let mem = &model.info.memory;
    println!(
        "  memory     about {} ({} weights, {} tensors at peak; limit {})",
        budget::human(mem.total()),
        budget::human(mem.weights_bytes),
        budget::human(mem.peak_tensor_bytes),
        budget::human(model.info.memory_limit_bytes)
    );
    println!("  inputs");
    for i in &view.inputs {
        println!("    {:<24} {:<5} {:?}  ({:?})", i.tensor.name, i.tensor.dtype, i.tensor.shape, i.from);
    }
    println!("  outputs");
    for o in view.outputs {
        println!("    {:<24} {:<5} {:?}", o.name, o.dtype, o.shape);
    }
    let ops: Vec<String> = model.info.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  ops        {} nodes: {}", model.info.op_count, ops.join(", "));
    Ok(ExitCode::SUCCESS)
}
