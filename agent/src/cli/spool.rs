//! `edge-agent spool`: look inside the on-disk spool and decode compact telemetry.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use edge_spool::{Class, Spool};

/// `spool` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Decode a postcard-encoded telemetry report (a file, or standard input) into JSON.
    Decode(DecodeArgs),
    /// List the messages waiting in a spool directory (read-only), one JSON line each.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The payload file; `-` or nothing reads standard input (e.g. `mosquitto_sub -N -C 1 ... |`).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The spool directory (`<state_dir>/spool`).
    pub dir: PathBuf,
    /// Show payloads in full (default: JSON payloads as JSON, others by size).
    #[arg(long)]
    pub payloads: bool,
}

pub fn run(cmd: SpoolCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SpoolCommand::Decode(a) => decode(a),
        SpoolCommand::Inspect(a) => inspect(a),
    }
}

fn decode(args: DecodeArgs) -> anyhow::Result<ExitCode> {
    let mut bytes = Vec::new();
    match args.file.as_deref().filter(|p| p.as_os_str() != "-") {
        Some(p) => bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => {
            std::io::stdin().read_to_end(&mut bytes).context("cannot read standard input")?;
        }
    }
    let report = crate::telemetry::decode_postcard(&bytes).map_err(anyhow::Error::msg)?;
    outln!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    if !args.dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory; give the spool directory (<state_dir>/spool)",
            args.dir.display()
        );
    }
    let (records, report) = Spool::read_all(&args.dir)
        .with_context(|| format!("cannot read the spool in {}", args.dir.display()))?;
    for (id, r) in &records {
        let payload = if r.class == Class::Telemetry && r.payload.first() != Some(&b'{') {
            crate::telemetry::decode_postcard(&r.payload)
                .ok()
                .and_then(|t| serde_json::to_value(t).ok())
                .unwrap_or_else(|| json!({"bytes": r.payload.len()}))
        } else {
            match serde_json::from_slice::<Value>(&r.payload) {
                Ok(v) if args.payloads || v.to_string().len() <= 512 => v,
                _ => json!({"bytes": r.payload.len()}),
            }
        };
        outln!(
            "{}",
            json!({"id": id, "class": r.class.as_str(), "topic": r.topic, "qos": r.qos, "retain": r.retain, "payload": payload})
        );
    }
    eprintln!(
        "{} message(s) waiting; {} torn byte(s) at the tail{}",
        records.len(),
        report.torn_bytes_cut,
        if report.bad_segments.is_empty() {
            String::new()
        } else {
            format!("; damaged: {}", report.bad_segments.join("; "))
        }
    );
    Ok(ExitCode::SUCCESS)
}
