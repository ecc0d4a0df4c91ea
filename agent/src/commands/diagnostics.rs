//! `diagnostics`: the checks of `edge-agent doctor` ([`crate::diagnostics`]), run on the
//! device by the daemon.

use serde::Deserialize;
use serde_json::Value;

use super::args::Args;
use super::{Context, Outcome, Progress};

/// `diagnostics` takes no arguments.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosticsArgs {}

impl Args for DiagnosticsArgs {
    const COMMAND: &'static str = "diagnostics";
}

/// Runs the checks off the executor, reporting progress before and after.
pub async fn run(ctx: &Context, progress: &Progress<'_>) -> Outcome {
    progress.report(0.0).await;
    let file = ctx.config_file.clone();
    // The checks load every model again and probe the network: blocking work.
    match tokio::task::spawn_blocking(move || crate::diagnostics::run(&file)).await {
        Ok(report) => {
            progress.report(1.0).await;
            Outcome::Succeeded(serde_json::to_value(report).unwrap_or(Value::Null))
        }
        Err(e) => Outcome::Failed(format!("the checks stopped: {e}")),
    }
}
