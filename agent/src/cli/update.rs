//! `edge-agent update check|apply|shadow` and the daemon side of `model list|rollback`: they ask
//! the running agent over its unix socket, which runs the same code as the MQTT
//! commands `update/check`, `update/apply` and `rollback`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::status::{find_socket, post};

/// How to reach the daemon.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The daemon's unix socket (default: from --config, else /run/edge-agent/api.sock).
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// The daemon's configuration file, to find its socket.
    #[arg(long, short, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Print the daemon's answer as JSON (stable, for scripts).
    #[arg(long, global = true)]
    pub json: bool,
}

/// `update` subcommands.
#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Check the registry now and install what the signed metadata allows this device.
    Check(DaemonArgs),
    /// Install one version the signed metadata lists, whatever the rollout says.
    Apply(ApplyArgs),
    /// End a model's shadow run now: promote its candidate or reject it.
    Shadow(ShadowArgs),
}

/// Arguments of `update shadow`.
#[derive(Debug, Args)]
pub struct ShadowArgs {
    /// The model whose shadow run ends.
    #[arg(long)]
    pub model: String,
    /// `promote` (activate the candidate, then probation) or `reject` (unload it).
    #[arg(long, value_parser = ["promote", "reject"])]
    pub verdict: String,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Arguments of `update apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The model.
    #[arg(long)]
    pub model: String,
    /// The version (as the registry lists it).
    #[arg(long)]
    pub version: String,
    /// Also take a version this device marked bad.
    #[arg(long)]
    pub force: bool,
    /// Run it as a shadow candidate beside the active version (compared, never served)
    /// until its verdict, instead of activating it.
    #[arg(long)]
    pub shadow: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Updates can take minutes (download and self-test): wait that long for the answer.
const UPDATE_WAIT: Duration = Duration::from_secs(3600);

pub fn run(cmd: UpdateCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UpdateCommand::Check(d) => ask(&d, "/ota/check", json!({})),
        UpdateCommand::Apply(a) => ask(
            &a.daemon,
            "/ota/apply",
            json!({"model": a.model, "version": a.version, "force": a.force, "shadow": a.shadow}),
        ),
        UpdateCommand::Shadow(a) => {
            ask(&a.daemon, "/ota/shadow", json!({"model": a.model, "verdict": a.verdict}))
        }
    }
}

/// POSTs to the daemon and prints its answer; exit 1 when it refused, 3 when it is not
/// running.
pub fn ask(d: &DaemonArgs, path: &str, body: Value) -> anyhow::Result<ExitCode> {
    let socket = find_socket(d.socket.as_deref(), d.config.as_deref())?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) && !d.json {
        eprintln!("asking the agent on {} (downloads and self-tests can take a while)...", socket.display());
    }
    let (code, text) = match post(&socket, path, &body.to_string(), UPDATE_WAIT) {
        Ok(r) => r,
        Err(e) => return Ok(e.report()),
    };
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({"error": text.trim()}));
    if d.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else if code == 200 {
        print_human(&v)?;
    } else {
        eprintln!("refused: {}", v["error"].as_str().unwrap_or(&text));
    }
    Ok(if code == 200 { ExitCode::SUCCESS } else { ExitCode::from(super::EXIT_FAILED) })
}

fn print_human(v: &Value) -> anyhow::Result<()> {
    if let Some(reg) = v.get("registry") {
        outln!(
            "registry: root {} timestamp {} snapshot {} targets {}{}",
            reg["root"],
            reg["timestamp"],
            reg["snapshot"],
            reg["targets"],
            if reg["changed"] == json!(false) { " (unchanged)" } else { "" }
        );
    }
    if let Some(models) = v.get("models").and_then(Value::as_object) {
        for (name, m) in models {
            outln!("{name}: active {} → {}", m["active"], m["action"].as_str().unwrap_or("?"));
            for s in m["skipped"].as_array().into_iter().flatten() {
                outln!(
                    "    {} skipped: {}",
                    s["version"].as_str().unwrap_or("?"),
                    s["why"].as_str().unwrap_or("?")
                );
            }
        }
    } else {
        outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
    Ok(())
}
