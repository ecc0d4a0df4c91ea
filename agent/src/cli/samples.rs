//! `edge-agent samples`: the samples `[capture]` kept, read straight from the state
//! directory (the daemon may be running: the store's files are written whole, and a
//! file evicted while it is read is skipped).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::capture::{export, store};
use crate::config::{Config, Overrides};

/// `samples` subcommands.
#[derive(Debug, Subcommand)]
pub enum SamplesCommand {
    /// List the kept samples, oldest first.
    List(ListArgs),
    /// Write the kept samples to a directory: one .npy per sample and index.jsonl.
    Export(ExportArgs),
}

/// Where the store is: the configuration's state directory, or the directory given.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Where {
    /// The agent's configuration file (the store is `<state_dir>/capture`).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's state directory, instead of the configuration.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub at: Where,
    /// Only this model's samples.
    #[arg(long)]
    pub model: Option<String>,
    /// One JSON object per line (stable, for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub at: Where,
    /// The directory to write (created; must be empty if it exists).
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// Only this model's samples.
    #[arg(long)]
    pub model: Option<String>,
}

pub fn run(cmd: SamplesCommand) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Human, "warn");
    match cmd {
        SamplesCommand::List(a) => list(a),
        SamplesCommand::Export(a) => export_dir(a),
    }
}

/// The store's directory.
fn store_dir(at: &Where) -> anyhow::Result<PathBuf> {
    let state = match (&at.config, &at.state_dir) {
        (_, Some(dir)) => dir.clone(),
        (Some(file), None) => Config::load(file, &Overrides::default())?.state_dir,
        (None, None) => return Err(super::UsageError("give --config FILE or --state-dir DIR".into()).into()),
    };
    if !state.is_dir() {
        return Err(super::UsageError(format!(
            "the state directory {} does not exist; check agent.state_dir or --state-dir",
            state.display()
        ))
        .into());
    }
    Ok(crate::capture::dir(&state))
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let dir = store_dir(&args.at)?;
    let entries = store::entries(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let (mut shown, mut bytes, mut damaged) = (0u64, 0u64, 0u64);
    if !args.json {
        outln!(
            "{:>6}  {:<24} {:<16} {:<8} {:<14} {:<20} {:>7}  {:>8}",
            "id",
            "time",
            "model",
            "version",
            "stream",
            "reason",
            "score",
            "bytes"
        );
    }
    for e in &entries {
        let sample = match store::read(&e.path) {
            Ok(s) => s,
            Err(_) if !e.path.exists() => continue,
            Err(reason) => {
                eprintln!("damaged: {reason}");
                damaged += 1;
                continue;
            }
        };
        let m = &sample.meta;
        if args.model.as_ref().is_some_and(|want| *want != m.model) {
            continue;
        }
        shown += 1;
        bytes += e.bytes;
        let time = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.time_ms),
        );
        if args.json {
            outln!(
                "{}",
                json!({"id": e.seq, "time": time.to_string(), "time_ms": m.time_ms, "model": m.model,
                    "version": m.version, "stream": m.stream, "window": m.window, "reason": m.reason,
                    "score": m.score, "shape": m.shape, "payload_bytes": sample.payload.as_ref().map(Vec::len),
                    "bytes": e.bytes, "outputs": m.outputs})
            );
        } else {
            let score = m.score.map_or_else(|| "-".to_string(), |s| format!("{s:.4}"));
            outln!(
                "{:>6}  {:<24} {:<16} {:<8} {:<14} {:<20} {:>7}  {:>8}",
                e.seq,
                time.to_string(),
                m.model,
                m.version,
                m.stream,
                m.reason.as_str(),
                score,
                e.bytes
            );
        }
    }
    eprintln!(
        "{shown} sample(s), {bytes} bytes in {}{}",
        dir.display(),
        if damaged > 0 { format!("; {damaged} damaged") } else { String::new() }
    );
    Ok(ExitCode::SUCCESS)
}

fn export_dir(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let dir = store_dir(&args.at)?;
    if args.out.exists() && std::fs::read_dir(&args.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(super::UsageError(format!(
            "{} exists and is not an empty directory; give a new one to --out",
            args.out.display()
        ))
        .into());
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix("export");
    let filter = export::Filter { model: args.model.clone(), since_ms: None };
    let summary = export::to_dir(&dir, &args.out, &filter, &mut |done, all| {
        bar.set_length(all as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("exporting {} to {}", dir.display(), args.out.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "{} sample(s), {} bytes written to {}{}",
        summary.samples,
        summary.bytes,
        args.out.display(),
        if summary.damaged > 0 {
            format!("; {} damaged file(s) left out", summary.damaged)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
