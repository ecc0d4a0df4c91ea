//! `ping`: the agent answers, with its uptime and version.

use serde::Deserialize;
use serde_json::json;

use super::args::Args;
use super::{Context, Outcome};

/// `ping` takes no arguments.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingArgs {}

impl Args for PingArgs {
    const COMMAND: &'static str = "ping";
}

/// Answers at once.
pub fn run(ctx: &Context) -> Outcome {
    Outcome::Succeeded(json!({
        "pong": true,
        "ts": crate::mqtt::now(),
        "uptime_s": ctx.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
