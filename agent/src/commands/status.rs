//! `status`: the status document, as `GET /status` serves it.

use serde::Deserialize;
use serde_json::Value;

use super::args::Args;
use super::{Context, Outcome};

/// `status` takes no arguments.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusArgs {}

impl Args for StatusArgs {
    const COMMAND: &'static str = "status";
}

/// Gathers the status document now.
pub fn run(ctx: &Context) -> Outcome {
    Outcome::Succeeded(serde_json::to_value((ctx.status)()).unwrap_or(Value::Null))
}
