//! `logs/upload {url, since?, until?, level?}`: the agent's recent log lines, time range
//! and level filtered, as one tar.gz uploaded to `url` by a resumable `PUT`: the log
//! part of `diagnostics/bundle` (which has the details), without the rest.

use serde::Deserialize;

use super::args::Args;
use super::diagnostics_bundle::{self, Checked, DiagnosticsBundleArgs};
use super::{Context, Outcome, Progress};

/// Arguments of `logs/upload`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsUploadArgs {
    /// Where to `PUT` the archive: an http(s) URL, typically pre-signed.
    #[serde(default)]
    pub url: Option<String>,
    /// From: an RFC 3339 time or a span back from now (`2h`).
    #[serde(default)]
    pub since: Option<String>,
    /// Until: the same forms.
    #[serde(default)]
    pub until: Option<String>,
    /// This level and more severe: error, warn, info, debug, trace.
    #[serde(default)]
    pub level: Option<String>,
}

impl Args for LogsUploadArgs {
    const COMMAND: &'static str = "logs/upload";
}

/// Checks the arguments.
pub fn prepare(args: LogsUploadArgs, ctx: &Context) -> Result<Checked, String> {
    let LogsUploadArgs { url, since, until, level } = args;
    let args = DiagnosticsBundleArgs { url, since, until, level };
    diagnostics_bundle::check(LogsUploadArgs::COMMAND, false, args, ctx.capture.ca_file.as_deref())
}

/// Packs the log, uploads it, reports.
pub async fn run(checked: Checked, ctx: &Context, progress: &Progress<'_>) -> Outcome {
    diagnostics_bundle::run(checked, ctx, progress).await
}
