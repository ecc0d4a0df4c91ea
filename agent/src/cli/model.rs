//! `edge-agent model ...`: looking at models.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::engine::LoadedModel;
use crate::engine::model::{LoadInfo, TensorInfo};
use crate::engine::spec::{InputFrom, PostSpec, PreSpec};

/// `model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print a model's inputs, outputs, operators and load time.
    Inspect(InspectArgs),
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
    }
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let dir = super::model_dir(&args.model)?;
    let model = LoadedModel::load_dir(&dir)?;
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
