//! `edge-agent status`: asks the running daemon over its unix socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::config::{Config, Overrides};
use crate::daemon_client;
use crate::service::status::Status;

/// Exit code: the daemon is not running (nothing answers on its socket).
pub const EXIT_NOT_RUNNING: u8 = 3;

/// Where the daemon's socket is under systemd (RuntimeDirectory=edge-agent).
pub const DEFAULT_SOCKET: &str = "/run/edge-agent/api.sock";

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's unix socket (default: from --config, else /run/edge-agent/api.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The daemon's configuration file, to find its socket.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the daemon's status document (JSON, stable, for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Why the daemon gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    /// Nothing accepted the connection: no daemon listens on this socket.
    #[error("edge-agent is not running: nothing answers on {} ({source})", socket.display())]
    NotRunning { socket: PathBuf, source: std::io::Error },
    /// The daemon accepted the connection, then it broke before a whole answer came:
    /// the daemon stopped or dropped the request. What was asked may or may not have
    /// been done, so this is not "not running".
    #[error(
        "the agent on {} took the request but the connection broke before its answer ({source}); \
         check whether it stopped or restarted (edge-agent status, journalctl -u edge-agent)",
        socket.display()
    )]
    Broken { socket: PathBuf, source: std::io::Error },
}

impl NoAnswer {
    /// Says why on stderr and returns the exit code for it.
    pub fn report(&self) -> ExitCode {
        eprintln!("{self}");
        self.exit_code()
    }

    /// The exit code for a command that got no answer.
    fn exit_code(&self) -> ExitCode {
        match self {
            NoAnswer::NotRunning { .. } => ExitCode::from(EXIT_NOT_RUNNING),
            NoAnswer::Broken { .. } => ExitCode::from(super::EXIT_FAILED),
        }
    }
}

/// One GET over the daemon's unix socket; returns (status code, body).
pub fn get(socket: &Path, path: &str) -> Result<(u16, String), NoAnswer> {
    daemon_client::get(socket, path).map_err(|e| no_answer(socket, e))
}

/// One POST with a JSON body over the daemon's unix socket, waiting up to `wait` for
/// the answer; returns (status code, body).
pub fn post(socket: &Path, path: &str, body: &str, wait: Duration) -> Result<(u16, String), NoAnswer> {
    daemon_client::post(socket, path, body, wait).map_err(|e| no_answer(socket, e))
}

fn no_answer(socket: &Path, e: daemon_client::Failure) -> NoAnswer {
    let socket = socket.to_path_buf();
    match e {
        daemon_client::Failure::Connect(source) => NoAnswer::NotRunning { socket, source },
        daemon_client::Failure::Exchange(source) => NoAnswer::Broken { socket, source },
    }
}

/// The daemon's `/status` document, read into the type the daemon writes it from;
/// `Err` when it gives no answer (the caller exits with [`NoAnswer::report`]).
pub fn fetch_status(socket: &Path) -> anyhow::Result<Result<Status, NoAnswer>> {
    let (code, body) = match get(socket, "/status") {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    anyhow::ensure!(code == 200, "the daemon answered {code} on {}: {body}", socket.display());
    serde_json::from_str(&body)
        .map(Ok)
        .map_err(|e| anyhow::anyhow!("the daemon's status is not a status document: {e}"))
}

fn socket_path(args: &StatusArgs) -> anyhow::Result<PathBuf> {
    find_socket(args.socket.as_deref(), args.config.as_deref())
}

/// The daemon's socket: given, from its config file, or the systemd default.
pub fn find_socket(socket: Option<&Path>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    if let Some(c) = config {
        let config = Config::load(c, &Overrides::default())?;
        if let Some(s) = config.api.and_then(|a| a.socket) {
            return Ok(s);
        }
        anyhow::bail!("{} configures no api.socket; pass --socket", c.display());
    }
    Ok(std::env::var_os("RUNTIME_DIRECTORY")
        .map(|d| PathBuf::from(d).join("api.sock"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)))
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let socket = socket_path(&args)?;
    let status = match fetch_status(&socket)? {
        Ok(s) => s,
        Err(e) => return Ok(e.report()),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_human(&status)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(v: &Status) -> anyhow::Result<()> {
    let up = v.uptime_s;
    outln!(
        "edge-agent {} on {}: {}, {} (up {}h {:02}m {:02}s)",
        v.version,
        v.device,
        if v.ready { "ready" } else { "NOT READY" },
        v.doing,
        up / 3600,
        up / 60 % 60,
        up % 60
    );
    outln!("models");
    for (name, m) in &v.models {
        let c = m.counts.as_ref();
        let sum = |map: Option<&BTreeMap<String, u64>>| map.map(|o| o.values().sum()).unwrap_or(0u64);
        outln!(
            "  {name:<16} {:<10} {:<8} ok {:<8} errors {:<6} rejected {:<6} p50 {:.2} ms  p99 {:.2} ms",
            m.version,
            m.state,
            c.map_or(0, |c| c.ok),
            sum(c.map(|c| &c.errors)),
            sum(c.map(|c| &c.rejected)),
            c.map_or(0.0, |c| c.latency.p50_ms),
            c.map_or(0.0, |c| c.latency.p99_ms)
        );
        if let Some(d) = &m.drift {
            // The summaries furthest from the reference first.
            let mut scores: Vec<(&String, &f64)> = d.scores.iter().collect();
            scores.sort_by(|a, b| b.1.total_cmp(a.1));
            let top: Vec<String> = scores.iter().take(3).map(|(n, s)| format!("{n} {s:.2}")).collect();
            outln!(
                "  {:<16} drift {}{} (reference: {}){}",
                "",
                if d.drifting { "RAISED" } else { d.state.as_str() },
                d.since.as_deref().map(|s| format!(" since {s}")).unwrap_or_default(),
                d.reference,
                if top.is_empty() { String::new() } else { format!("; {}", top.join(", ")) }
            );
        }
    }
    let e = &v.engine;
    outln!(
        "engine   {} thread(s), queue {}/{}, busy {}, {} done, {} live stream(s)",
        e.threads,
        e.queue_depth,
        e.queue_capacity,
        e.busy,
        e.jobs_done,
        e.live_streams
    );
    if !v.connections.is_empty() {
        outln!("connections");
        for (k, c) in &v.connections {
            outln!("  {k:<16} {c}");
        }
    }
    if let Some(fb) = &v.fallback {
        let routed: Vec<String> = fb.routed.iter().map(|(k, c)| format!("{k} {c}")).collect();
        outln!(
            "fallback cloud answers {}, degraded {}, rejected {}; routed: {}; budget used {} this hour{}",
            fb.answered,
            fb.degraded,
            fb.rejected,
            if routed.is_empty() { "none".to_string() } else { routed.join(", ") },
            fb.budget.used_hour,
            if fb.resource.engaged { "; RESOURCE LIMIT ENGAGED" } else { "" }
        );
        for (name, e) in &fb.endpoints {
            outln!("  {name:<16} breaker {:<9} {}", e.breaker.as_str(), e.url);
        }
    }
    if v.last_errors.is_empty() {
        outln!("last errors: none");
    } else {
        outln!("last errors");
        for e in v.last_errors.iter().rev().take(5) {
            outln!("  {} {} {}: {}", e.ts, e.model, e.kind, e.message);
        }
    }
    outln!(
        "memory   {:.1} MiB (peak {:.1} MiB)",
        v.memory.rss as f64 / 1_048_576.0,
        v.memory.peak_rss as f64 / 1_048_576.0
    );
    Ok(())
}
