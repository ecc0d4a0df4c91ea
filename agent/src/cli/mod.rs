//! The command line: one module per subcommand. This is the binary's edge, so errors are
//! `anyhow` here, each with the context a person needs.

/// `println!` for a command's output. `println!` panics when standard output is a pipe
/// whose reader has gone (`edge-agent model inspect ... | head -1`); this returns
/// [`ClosedOutput`] instead, which `main` turns into a quiet exit, as other tools of a
/// pipeline do. Only usable where `?` takes an `anyhow::Error`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::ClosedOutput::from_io)?
    }};
}

mod bench;
mod bench_stages;
mod convert;
mod diagnostics;
pub mod doctor;
mod fleet;
mod infer;
mod input;
mod model;
mod profile;
mod registry;
mod run;
mod samples;
mod spool;
pub mod status;
mod update;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, LogFormat};
use edge_infer::engine::{LoadError, SpecError};

/// Exit code: the command's work failed (bad input, inference error).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command could not start (usage, configuration, model files).
pub const EXIT_SETUP: u8 = 2;

/// edge-agent: local inference on sensor data, for edge devices.
#[derive(Debug, Parser)]
#[command(
    name = "edge-agent",
    version,
    long_version = concat!(env!("CARGO_PKG_VERSION"), "\ncargo features: ", env!("BUILT_WITH_FEATURES")),
    about,
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load the configured models and serve the configured sources.
    Run(run::RunArgs),
    /// Run a model on one input file and print what it says.
    Infer(infer::InferArgs),
    /// Look at models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Measure a model's latency, throughput and memory, next to calling tract directly.
    Bench(bench::BenchArgs),
    /// Serve the local API alone (Open Inference Protocol v2), without sensor sources:
    /// the same binary as a cloud inference endpoint.
    Serve(run::RunArgs),
    /// Ask the running daemon how it is doing (exit 3 if it is not running).
    Status(status::StatusArgs),
    /// Check a device's setup without the daemon: config, state dir, models, clock, API.
    Doctor(doctor::DoctorArgs),
    /// Print the agent's own log (time range and level filters), from its state directory.
    Logs(diagnostics::LogsArgs),
    /// Write a support bundle of logs, redacted configuration, status and checks.
    #[command(subcommand)]
    Diagnostics(diagnostics::DiagnosticsCommand),
    /// Look inside the MQTT spool; decode compact (postcard) telemetry.
    #[command(subcommand)]
    Spool(spool::SpoolCommand),
    /// List or export the samples `[capture]` kept for retraining.
    #[command(subcommand)]
    Samples(samples::SamplesCommand),
    /// Check for model updates now, or install a signed version (asks the daemon).
    #[command(subcommand)]
    Update(update::UpdateCommand),
    /// Publish models to a registry (a TUF repository of static files), check and serve it.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Operate the fleet over its broker: the status of every device (`fleet status`) and
    /// staged rollouts that halt by themselves (`fleet rollout`).
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
}

/// The memory limit of commands that load a model, as a device applies it.
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// The most memory the model may need, in MiB: its weights plus its estimated working
    /// memory. A device takes it from engine.max_model_memory_mb; larger models are refused.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = edge_infer::engine::budget::DEFAULT_MAX_MODEL_MEMORY_MB,
        value_parser = clap::value_parser!(u64).range(1..=edge_infer::engine::budget::MAX_MODEL_MEMORY_MB)
    )]
    pub max_model_memory_mb: u64,
}

impl LimitArgs {
    /// The limit to load with.
    pub fn limits(&self) -> edge_infer::engine::ModelLimits {
        edge_infer::engine::ModelLimits::from_mb(self.max_model_memory_mb)
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    edge_infer::engine::panic::install_hook();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Model(cmd) => model::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => run::daemon(args, true),
        Command::Status(args) => status::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Logs(args) => diagnostics::logs(args),
        Command::Diagnostics(cmd) => diagnostics::run(cmd),
        Command::Spool(cmd) => spool::run(cmd),
        Command::Samples(cmd) => samples::run(cmd),
        Command::Update(cmd) => update::run(cmd),
        Command::Registry(cmd) => registry::run(cmd),
        Command::Fleet(cmd) => fleet::run(cmd),
    }
}

/// Writing a command's output failed: standard output was closed (a pipe whose reader
/// exited) or could not be written. A broken pipe is not the command's failure: the
/// reader took what it wanted.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub struct ClosedOutput(std::io::Error);

impl ClosedOutput {
    /// Wraps the error of a write to standard output.
    pub fn from_io(e: std::io::Error) -> anyhow::Error {
        anyhow::Error::new(ClosedOutput(e))
    }

    /// True when `err` is a write to a standard output whose reader has gone.
    pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
        err.chain().any(|e| {
            e.downcast_ref::<ClosedOutput>().is_some_and(|c| c.0.kind() == std::io::ErrorKind::BrokenPipe)
        })
    }
}

/// A command line that names the wrong thing (a file where a directory is expected):
/// exit code 2, as for clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error: usage and setup problems (config, model files) are 2, the
/// rest 1.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    let setup = err.chain().any(|e| {
        e.is::<UsageError>()
            || e.is::<ConfigError>()
            || e.is::<LoadError>()
            || e.is::<SpecError>()
            || e.is::<crate::service::StartError>()
    });
    ExitCode::from(if setup { EXIT_SETUP } else { EXIT_FAILED })
}

/// An error and its causes as one line, `outer: cause: cause`, like anyhow's `{:#}` but
/// without a cause that the message before it already spells out. Many of our error
/// types put their source in their own message (so that a log line with `%e` alone is
/// complete) and also name it as `source`, so `{:#}` said "No such file or directory
/// (os error 2)" twice.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Sets up logging to standard error. `RUST_LOG`, when set, wins over `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    init_logging_to(format, level, None);
}

/// Sets up logging to standard error and, with `file`, to the agent's own log (JSON
/// lines, `crate::logs`), under one level filter that `config/set log.level` can change.
/// `RUST_LOG`, when set, wins over `level`.
pub fn init_logging_to(format: LogFormat, level: &str, file: Option<crate::logs::FileSink>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| crate::logs::parse_filter(v).is_some());
    let text = from_env.unwrap_or_else(|| {
        if crate::logs::parse_filter(level).is_some() { level.to_string() } else { "info".into() }
    });
    let start = crate::logs::parse_filter(&text).unwrap_or_default();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(start);
    // Colour only for a person at a terminal: a journal, a pipe or a file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let stderr = match format {
        LogFormat::Human => stderr.boxed(),
        LogFormat::Json => stderr.json().flatten_event(true).boxed(),
    };
    let own = file.map(|sink| {
        tracing_subscriber::fmt::layer().with_writer(sink).with_ansi(false).json().flatten_event(true).boxed()
    });
    // Already initialised (tests that call in twice): keep the first.
    if tracing_subscriber::registry().with(filter).with(stderr).with(own).try_init().is_ok() {
        crate::logs::keep_handle(handle, &text);
    }
}

/// A model directory argument, checked to be one (a usage error otherwise).
fn model_dir(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    if dir.is_dir() {
        return Ok(dir.to_path_buf());
    }
    let what = if dir.exists() { "is a file, not a model directory" } else { "does not exist" };
    Err(UsageError(format!(
        "{} {what}; pass the directory holding model.toml and the model file",
        dir.display()
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Repeats {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let err = anyhow::Error::new(Repeats { path: "/x", source: io }).context("loading the config");
        let line = error_chain(&err);
        assert_eq!(line.matches(&text).count(), 1, "{line}");
        assert!(line.starts_with("loading the config: cannot read /x: "), "{line}");
    }

    #[test]
    fn distinct_causes_are_all_kept_in_order() {
        let err = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_chain(&err), "outer: middle: inner");
    }
}
