//! `edge-agent logs` and `edge-agent diagnostics bundle`: the agent's own log and a
//! support bundle, on the device itself. Both read the state directory directly, so they
//! work when the daemon is stopped; the bundle asks a running daemon for its status over
//! its socket (and says why there is none otherwise).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::{Config, Overrides};
use crate::diagnostics::bundle::{self, Contents};
use crate::logs::read::{self, Filter};

/// Which log lines: the same selection as the `logs/upload` command's arguments.
#[derive(Debug, Args)]
pub struct Selection {
    /// From: an RFC 3339 time (2026-12-07T10:00:00Z) or a span back from now (2h, 30m).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Until: the same forms.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// This level and more severe: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
}

impl Selection {
    fn filter(&self) -> anyhow::Result<(Filter, Value)> {
        let (filter, shown) = crate::commands::diagnostics_bundle::selection(
            self.since.as_deref(),
            self.until.as_deref(),
            self.level.as_deref(),
        )
        .map_err(|e| {
            super::UsageError(
                e.replace("`args.", "`--")
                    .replace("`--since` is after `--until`", "--since is after --until"),
            )
        })?;
        Ok((filter, shown))
    }
}

/// Arguments of `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The agent's configuration file (to find its state directory).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    #[command(flatten)]
    pub selection: Selection,
    /// Print the lines as stored: one JSON object each (stable, for scripts).
    #[arg(long)]
    pub json: bool,
}

/// `diagnostics` subcommands.
#[derive(Debug, Subcommand)]
pub enum DiagnosticsCommand {
    /// Write a support bundle (tar.gz): recent logs, the configuration with secrets
    /// redacted, status, doctor, spool, update state, versions (docs/diagnostics.md).
    Bundle(BundleArgs),
}

/// Arguments of `diagnostics bundle`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The agent's configuration file.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Where to write the archive.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub selection: Selection,
    /// The daemon's unix socket, for its status (default: from the configuration).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the result as JSON (stable, for scripts).
    #[arg(long)]
    pub json: bool,
}

fn load(config: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(config, &Overrides::default())
        .with_context(|| format!("cannot read the configuration {}", config.display()))
}

/// `edge-agent logs`.
pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Human, "error");
    let (filter, _) = args.selection.filter()?;
    let config = load(&args.config)?;
    let dir = crate::logs::dir(&config.state_dir);
    if crate::logs::files(&dir).is_empty() {
        anyhow::bail!(
            "no log in {}: the agent writes one there when log.file_max_mb is above 0 (under systemd, see journalctl -u edge-agent)",
            dir.display()
        );
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = if args.json {
        read::copy(&dir, &filter, &mut out)
    } else {
        read::copy(&dir, &filter, &mut Human { out: &mut out, partial: Vec::new() })
    };
    result.and_then(|_| std::io::Write::flush(&mut out)).map_err(super::ClosedOutput::from_io)?;
    Ok(ExitCode::SUCCESS)
}

/// Turns the stored JSON lines into `time LEVEL target: message key=value` for a person.
struct Human<'a, W: std::io::Write> {
    out: &'a mut W,
    partial: Vec<u8>,
}

impl<W: std::io::Write> std::io::Write for Human<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            writeln!(self.out, "{}", human_line(&text))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// One stored line for a person; a line that is not the agent's JSON is shown as is.
pub fn human_line(text: &str) -> String {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(text) else { return text.to_string() };
    let mut take = |k: &str| match fields.remove(k) {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let (time, level, target, message) = (take("timestamp"), take("level"), take("target"), take("message"));
    let mut line = format!("{time} {level:>5} {target}: {message}");
    for (k, v) in fields {
        match v {
            Value::String(s) => line.push_str(&format!(" {k}={s}")),
            other => line.push_str(&format!(" {k}={other}")),
        }
    }
    line
}

/// `edge-agent diagnostics bundle`.
pub fn run(cmd: DiagnosticsCommand) -> anyhow::Result<ExitCode> {
    let DiagnosticsCommand::Bundle(args) = cmd;
    super::init_logging(crate::config::LogFormat::Human, "error");
    let (filter, selection) = args.selection.filter()?;
    let config = load(&args.config)?;
    let say = |what: &str| {
        // Progress for a person at a terminal only; a pipe or a script gets the result.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("{what}");
        }
    };
    say("asking the daemon for its status ...");
    let status = daemon_status(args.socket.as_deref(), &args.config);
    say("running the doctor checks ...");
    let doctor = serde_json::to_value(crate::diagnostics::run(&args.config)).unwrap_or(Value::Null);
    let files = bundle::files(&args.config, &config.state_dir, status, doctor);
    let manifest = bundle::manifest("diagnostics", &config.device_id, selection);
    let contents =
        Contents { logs: crate::logs::dir(&config.state_dir), filter, journal: None, files, manifest };
    say("packing ...");
    let limit = config.log.upload_max_mb.saturating_mul(1024 * 1024);
    let packed = bundle::pack(&args.out, &contents, limit)?;
    if args.json {
        outln!(
            "{}",
            json!({"path": args.out, "bytes": packed.bytes, "sha256": packed.sha256, "log_lines": packed.log_lines, "files": packed.names})
        );
    } else {
        outln!(
            "wrote {} ({} bytes, {} log lines, sha256 {})",
            args.out.display(),
            packed.bytes,
            packed.log_lines,
            packed.sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The running daemon's status document, or why there is none.
fn daemon_status(socket: Option<&std::path::Path>, config: &std::path::Path) -> Result<Value, String> {
    let socket = super::status::find_socket(socket, Some(config)).map_err(|e| format!("no status: {e:#}"))?;
    match super::status::get(&socket, "/status") {
        Ok((200, body)) => {
            serde_json::from_str(&body).map_err(|e| format!("the daemon's status is not JSON: {e}"))
        }
        Ok((code, body)) => Err(format!("the daemon answered {code}: {}", crate::mqtt::excerpt(&body, 200))),
        Err(e) => Err(format!("no status: {e}")),
    }
}
