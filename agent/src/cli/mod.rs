//! The command line: one module per subcommand. This is the binary's edge, so errors are
//! `anyhow` here, each with the context a person needs.

mod bench;
pub mod doctor;
mod infer;
mod input;
mod model;
mod registry;
mod run;
mod spool;
pub mod status;
mod update;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, LogFormat};
use crate::engine::{LoadError, SpecError};

/// Exit code: the command's work failed (bad input, inference error).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command could not start (usage, configuration, model files).
pub const EXIT_SETUP: u8 = 2;

/// edge-agent: local inference on sensor data, for edge devices.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about, long_about = None, propagate_version = true)]
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
    /// Look inside the MQTT spool; decode compact (postcard) telemetry.
    #[command(subcommand)]
    Spool(spool::SpoolCommand),
    /// Check for model updates now, or install a signed version (asks the daemon).
    #[command(subcommand)]
    Update(update::UpdateCommand),
    /// Publish models to a registry (a TUF repository of static files), check and serve it.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::engine::panic::install_hook();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Model(cmd) => model::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => run::daemon(args, true),
        Command::Status(args) => status::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Spool(cmd) => spool::run(cmd),
        Command::Update(cmd) => update::run(cmd),
        Command::Registry(cmd) => registry::run(cmd),
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

/// Sets up logging to standard error. `RUST_LOG`, when set, wins over `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already initialised (tests that call in twice): keep the first.
    let _ = result;
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
