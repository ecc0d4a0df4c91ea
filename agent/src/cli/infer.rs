//! `edge-agent infer`: one model, one input file, printed results.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use serde_json::{Map, Value};

use super::input::{self, InputFormat};
use crate::service::raw_outputs;
use edge_infer::engine::{Engine, EngineConfig, LoadedModel, Request};
use edge_infer::pipeline::SegmentState;
use edge_infer::stages::StageLatency;

/// Arguments of `infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// The model directory (model.toml and the model file).
    #[arg(long, short, value_name = "DIR")]
    pub model: PathBuf,
    /// The input: JSON numbers, JSON lines (one payload each), raw f32/i16, a WAV file,
    /// or a PNG/JPEG image.
    #[arg(long, short, value_name = "FILE")]
    pub input: PathBuf,
    /// The input's format, when its extension does not tell.
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,
    /// Print JSON (stable, for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Include the raw output tensors.
    #[arg(long)]
    pub raw: bool,
    /// Give up on a window after this many milliseconds.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    pub deadline_ms: u64,
    #[command(flatten)]
    pub limits: super::model::LimitArgs,
}

#[derive(Serialize)]
struct Report<'a> {
    model: &'a str,
    version: &'a str,
    input: String,
    results: Vec<WindowResult>,
}

#[derive(Serialize)]
struct WindowResult {
    window: usize,
    latency_ms: f64,
    outputs: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<Value>,
}

pub fn run(args: InferArgs) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Human, "warn");
    let dir = super::model_dir(&args.model)?;
    let model = LoadedModel::load_dir(&dir, &args.limits.limits())?;
    let chained = edge_infer::stages::takes_outputs(&model);
    if !model.stages.is_empty() && !chained {
        return run_pipeline(&args, model);
    }
    let preparing = Instant::now();
    let prepared = input::prepare(&args.input, args.format, &model.spec)?;
    // Decoding and the DSP front end, shared among the windows (a pipeline's first stage).
    let pre_ms = preparing.elapsed().as_secs_f64() * 1000.0 / prepared.inputs.len().max(1) as f64;
    let engine =
        Engine::start(&EngineConfig { threads: 1, queue: 4, max_streams: 4, ..EngineConfig::default() });
    let model = engine.install(model);

    let mut segment = SegmentState::default();
    let mut chain = edge_infer::stages::OutputStages::new(&model);
    let mut results = Vec::with_capacity(prepared.inputs.len());
    let shape = prepared.shape.clone();
    for (window, data) in prepared.inputs.into_iter().enumerate() {
        let started = Instant::now();
        // Anomaly scores compare the output with the input it reconstructs.
        let input =
            (model.spec.post.kind == edge_infer::engine::spec::PostKind::Anomaly).then(|| data.clone());
        let resp = engine
            .infer_blocking(Request {
                model: model.name().to_string(),
                stream: Some("cli".into()),
                data,
                deadline: started + Duration::from_millis(args.deadline_ms),
                reset: false,
                shape: shape.clone(),
            })
            .with_context(|| format!("input {} (window {window})", args.input.display()))?;
        let outputs = model.post().apply_answer(
            resp.post_output(),
            input.as_deref(),
            prepared.frame.as_ref(),
            window as u64,
            Some(&mut segment),
        );
        if chained {
            // The first model's output joins the stages' windows; a result per last-stage run.
            let head = StageLatency {
                stage: model.name().to_string(),
                runs: 1,
                pre_ms,
                model_ms: started.elapsed().as_secs_f64() * 1000.0,
                post_ms: 0.0,
            };
            let deadline = Duration::from_millis(args.deadline_ms);
            let fed = chain.feed(&engine, &model, resp.post_values().to_vec(), head, deadline).with_context(
                || format!("input {} (window {window}): the pipeline's stages", args.input.display()),
            )?;
            if let Some((index, outputs)) = fed.into_outputs() {
                let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
                results.push(WindowResult { window: index as usize, latency_ms, outputs, raw: None });
            }
            continue;
        }
        let raw = (args.raw || model.spec.post.wants_raw()).then(|| raw_outputs(&resp.outputs));
        results.push(WindowResult {
            window,
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            outputs,
            raw,
        });
    }

    let report = Report {
        model: model.name(),
        version: model.version(),
        input: args.input.display().to_string(),
        results,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report, prepared.format)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A model that declares a pipeline (`[[stage]]`): the input file is one image, run
/// through every stage; one result with each box's answer and each stage's latency.
fn run_pipeline(args: &InferArgs, model: LoadedModel) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    let engine =
        Engine::start(&EngineConfig { threads: 1, queue: 4, max_streams: 4, ..EngineConfig::default() });
    let model = engine.install(model);
    let started = Instant::now();
    let outputs = edge_infer::stages::run(&engine, &model, &bytes, Duration::from_millis(args.deadline_ms))
        .with_context(|| format!("input {}", args.input.display()))?;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if args.json {
        let report = Report {
            model: model.name(),
            version: model.version(),
            input: args.input.display().to_string(),
            results: vec![WindowResult { window: 0, latency_ms, outputs, raw: None }],
        };
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "model {} {}  input {} (pipeline, {latency_ms:.2} ms)",
        model.name(),
        model.version(),
        args.input.display()
    );
    for line in outputs.get("lines").and_then(Value::as_array).into_iter().flatten() {
        let text = line.get("text").and_then(Value::as_str).unwrap_or("");
        let conf = line.get("confidence").and_then(Value::as_f64).unwrap_or(0.0);
        outln!("  {text:?}  confidence {conf:.4}  box {}", line.get("box").cloned().unwrap_or_default());
    }
    for stage in outputs.get("stages").and_then(Value::as_array).into_iter().flatten() {
        let ms = |k: &str| stage.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        outln!(
            "  stage {}: {} run(s), pre {:.2} ms, model {:.2} ms, post {:.2} ms",
            stage.get("stage").and_then(Value::as_str).unwrap_or("?"),
            stage.get("runs").and_then(Value::as_u64).unwrap_or(0),
            ms("pre_ms"),
            ms("model_ms"),
            ms("post_ms")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(r: &Report, format: InputFormat) -> anyhow::Result<()> {
    outln!("model {} {}  input {} ({format:?})", r.model, r.version, r.input);
    for w in &r.results {
        let mut parts = Vec::new();
        if let Some(Value::String(l)) = w.outputs.get("label") {
            parts.push(format!("label {l}"));
        }
        if let Some(s) = w.outputs.get("score").and_then(Value::as_f64) {
            parts.push(format!("score {s:.4}"));
        }
        if let Some(Value::Array(top)) = w.outputs.get("top") {
            let shown: Vec<String> = top
                .iter()
                .map(|t| {
                    let name = t
                        .get("label")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| t.get("class").map(|c| c.to_string()).unwrap_or_default());
                    format!("{name} {:.4}", t.get("score").and_then(Value::as_f64).unwrap_or(0.0))
                })
                .collect();
            parts.push(format!("top [{}]", shown.join(", ")));
        }
        if let Some(Value::Object(seg)) = w.outputs.get("segment") {
            parts.push(format!("segment {}", seg.get("event").and_then(Value::as_str).unwrap_or("")));
        }
        outln!("  #{:<4} {}  ({:.2} ms)", w.window, parts.join("  "), w.latency_ms);
        if let Some(Value::Object(raw)) = &w.raw {
            for (name, t) in raw {
                outln!("        {name} {}: {}", t["shape"], t["data"]);
            }
        }
    }
    Ok(())
}
