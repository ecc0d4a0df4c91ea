//! `logs/upload {url, since?, until?, level?}`: the agent's recent log lines, time range
//! and level filtered, as one tar.gz uploaded to `url` by a resumable `PUT`: the log
//! part of `diagnostics/bundle` (which has the details and the argument type), without
//! the rest.

use super::args::Args;
use super::diagnostics_bundle::{self, ArchiveArgs, Checked};
use super::{Context, Outcome, Progress};

/// Arguments of `logs/upload`: `url`, `since`, `until`, `level`, as `diagnostics/bundle`.
pub type LogsUploadArgs = ArchiveArgs<false>;

impl Args for LogsUploadArgs {
    const COMMAND: &'static str = "logs/upload";
}

/// Checks the arguments.
pub fn prepare(args: LogsUploadArgs, ctx: &Context) -> Result<Checked, String> {
    diagnostics_bundle::check(args, ctx.capture.ca_file.as_deref())
}

/// Packs the log, uploads it, reports.
pub async fn run(checked: Checked, ctx: &Context, progress: &Progress<'_>) -> Outcome {
    diagnostics_bundle::run(checked, ctx, progress).await
}
