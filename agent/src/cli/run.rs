//! `edge-agent run` (the daemon) and `edge-agent serve` (the API alone).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tokio::sync::mpsc;

use crate::config::{Config, LogFormat, Overrides};
use crate::service::{self, ResultSink};

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (TOML).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter such as `info` or `debug` (overrides log.level).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Engine worker threads (overrides engine.threads).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device id (overrides agent.device_id).
    #[arg(long)]
    pub device_id: Option<String>,
    /// Do not write results to standard output (overrides output.stdout).
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    daemon(args, false)
}

/// Runs the daemon; `serve` turns the API on and the sources off.
pub fn daemon(args: RunArgs, serve: bool) -> anyhow::Result<ExitCode> {
    let flags = Overrides {
        log_format: args.log_format,
        log_level: args.log_level.clone(),
        threads: args.threads,
        device_id: args.device_id.clone(),
        state_dir: None,
        api: serve,
        no_sources: serve,
    };
    let config = Config::load(&args.config, &flags)?;
    // The own log is best effort: a state directory that cannot hold it costs the log,
    // not the service (the reason goes to standard error once logging is up).
    let (sink, no_file) = own_log(&config);
    super::init_logging_to(config.log.format, &config.log.level, sink);
    if let Some(e) = no_file {
        tracing::warn!(error = %e, "the agent's own log is off");
    }
    let sink = ResultSink { stdout: config.output.stdout && !args.quiet, ..ResultSink::default() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking work (spool I/O, sysinfo, diagnostics, stdin) is short and rare; a
        // small pool keeps thread stacks and allocator arenas from piling up under a
        // burst (measured: 54 threads and +40 MiB RSS without a cap).
        .max_blocking_threads(4)
        .thread_name("edge-agent-rt")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(async {
        let (reload_tx, reload_rx) = mpsc::channel(4);
        tokio::spawn(forward_sighup(reload_tx));
        service::run(config, flags, sink, shutdown_signal(), reload_rx).await
    });
    // A read of standard input may still block a runtime thread; it must not keep the
    // process alive after the daemon has finished.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    let summary = summary?;
    Ok(if summary.results == 0 && summary.failed > 0 {
        ExitCode::from(super::EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// The own log's writer, when `log.file_max_mb` asks for one.
fn own_log(config: &Config) -> (Option<crate::logs::FileSink>, Option<String>) {
    if config.log.file_max_mb == 0 {
        return (None, None);
    }
    let dir = crate::logs::dir(&config.state_dir);
    let bound =
        crate::logs::Bound { total_bytes: config.log.file_max_mb * 1024 * 1024, files: config.log.files };
    match crate::logs::start(&dir, bound) {
        Ok(sink) => (Some(sink), None),
        Err(e) => (None, Some(format!("cannot write {}: {e}", dir.display()))),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Turns each SIGHUP into a reload request.
async fn forward_sighup(tx: mpsc::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; configuration reload is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        // A reload already waiting covers this one too.
        let _ = tx.try_send(());
    }
}
