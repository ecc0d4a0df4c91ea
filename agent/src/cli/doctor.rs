//! `edge-agent doctor`: checks a device's setup without the daemon. One line per check,
//! `ok`, `warn` or `fail` with the reason and the fix; exit 0 (all ok), 1 (warnings),
//! 2 (failures). The checks are [`crate::diagnostics`], which the `diagnostics` command
//! runs too; this only prints them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::diagnostics::Level;

/// Arguments of `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The configuration file to check.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Print JSON (stable, for scripts).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Human, "error");
    let report = crate::diagnostics::run(&args.config);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for c in &report.checks {
            let level = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            match &c.fix {
                Some(fix) => outln!("{level}  {:<10} {}; fix: {fix}", c.check, c.message),
                None => outln!("{level}  {:<10} {}", c.check, c.message),
            }
        }
    }
    Ok(ExitCode::from(match report.result {
        Level::Ok => 0,
        Level::Warn => 1,
        Level::Fail => 2,
    }))
}
