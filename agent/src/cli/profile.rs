//! `edge-agent model profile`: run a model over representative inputs and write its drift
//! reference, `profile.json`, into the model directory (docs/monitoring.md).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::input::{self, InputFormat};
use crate::monitor::{Observation, ProfileBuilder, Summariser};
use edge_infer::engine::{Engine, EngineConfig, LoadedModel, Request};
use edge_infer::pipeline::SegmentState;

/// Arguments of `model profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The model directory (model.toml and the model file); profile.json is written there.
    #[arg(long, short, value_name = "DIR")]
    pub model: PathBuf,
    /// Representative inputs, any format `infer` reads (JSON lines too): each file is a
    /// stream of its own.
    #[arg(long, short, value_name = "FILE", required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// The inputs' format, when their extensions do not tell.
    #[arg(long, value_enum)]
    pub format: Option<InputFormat>,
    /// Print a JSON summary (stable, for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up on a window after this many milliseconds.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    pub deadline_ms: u64,
    #[command(flatten)]
    pub limits: super::LimitArgs,
}

/// The `--json` summary.
#[derive(Serialize)]
struct Written {
    model: String,
    version: String,
    path: String,
    files: usize,
    windows: u64,
    summaries: Vec<SummaryView>,
}

#[derive(Serialize)]
struct SummaryView {
    name: String,
    bins: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean: Option<f64>,
}

pub fn run(args: ProfileArgs) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Human, "warn");
    let dir = super::model_dir(&args.model)?;
    let model = LoadedModel::load_dir(&dir, &args.limits.limits())?;
    let engine =
        Engine::start(&EngineConfig { threads: 1, queue: 4, max_streams: 4, ..EngineConfig::default() });
    let model = engine.install(model);
    let summariser = Summariser::for_spec(&model.spec);
    let mut builder = ProfileBuilder::new(&model.spec);
    let mut progress = Progress::new(!args.json && std::io::stderr().is_terminal());
    let files = args.input.len();
    for (n, path) in args.input.iter().enumerate() {
        let prepared = input::prepare(path, args.format, &model.spec)?;
        let mut segment = SegmentState::default();
        let shape = prepared.shape;
        for (window, data) in prepared.inputs.into_iter().enumerate() {
            let summaries = summariser.summarise(&data);
            // An anomaly score compares the answer with the input it reconstructs.
            let input =
                (model.spec.post.kind == edge_infer::engine::spec::PostKind::Anomaly).then(|| data.clone());
            let started = Instant::now();
            let resp = engine
                .infer_blocking(Request {
                    model: model.name().to_string(),
                    stream: Some("profile".into()),
                    data,
                    deadline: started + Duration::from_millis(args.deadline_ms),
                    // Each file is a stream of its own: recurrent state starts afresh.
                    reset: window == 0,
                    shape: shape.clone(),
                })
                .with_context(|| format!("input {} (window {window})", path.display()))?;
            let outputs = model.post().apply_answer(
                resp.post_output(),
                input.as_deref(),
                prepared.frame.as_ref(),
                window as u64,
                Some(&mut segment),
            );
            builder.add(&Observation::new(summaries, &outputs));
            progress.show(|| {
                format!("profiling {} ({}/{files}): {} windows", path.display(), n + 1, builder.windows())
            });
        }
    }
    progress.clear();
    engine.shutdown();
    let profile = builder.build(model.name(), model.version());
    let path = profile.write_dir(&dir)?;
    let written = Written {
        model: profile.model.clone(),
        version: profile.version.clone(),
        path: path.display().to_string(),
        files,
        windows: profile.windows,
        summaries: profile
            .summaries
            .iter()
            .map(|s| SummaryView { name: s.name.clone(), bins: s.freq.len(), mean: s.mean })
            .collect(),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&written)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "wrote {} from {} windows of {} file(s): {} {}",
        written.path,
        written.windows,
        files,
        written.model,
        written.version
    );
    for s in &written.summaries {
        match s.mean {
            Some(m) => outln!("  {:<22} {:>2} bins  mean {m:.4}", s.name, s.bins),
            None => outln!("  {:<22} {:>2} bins", s.name, s.bins),
        }
    }
    let window = model.spec.monitor.window as u64;
    if profile.windows < window.saturating_mul(5) {
        outln!(
            "note: {} windows is a thin reference for a monitor window of {window} ([monitor] window); give at least {} for steady scores",
            profile.windows,
            window.saturating_mul(5)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One status line on a terminal's standard error, redrawn at most ten times a second;
/// nothing when standard error is not a terminal (piped, logged) or with `--json`.
struct Progress {
    on: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new(on: bool) -> Progress {
        Progress { on, last: None, drawn: false }
    }

    fn show(&mut self, line: impl FnOnce() -> String) {
        if !self.on || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.last = Some(Instant::now());
        self.drawn = true;
        eprint!("\r\x1b[2K{}", line());
    }

    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
        }
    }
}
