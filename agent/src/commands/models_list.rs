//! `models/list`: the loaded models, their inputs, and their update state.

use serde::Deserialize;
use serde_json::{Value, json};

use super::args::Args;
use super::{Context, Outcome};

/// `models/list` takes no arguments.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsListArgs {}

impl Args for ModelsListArgs {
    const COMMAND: &'static str = "models/list";
}

/// Lists the models the engine serves now.
pub fn run(ctx: &Context) -> Outcome {
    let ota = ctx.ota.as_ref().map(|o| o.status());
    let list: Vec<Value> = ctx
        .engine
        .models()
        .into_iter()
        .map(|(name, m)| {
            json!({
                "name": name,
                "version": m.version(),
                "inputs": m.spec.inputs.iter().map(|i| json!({"name": i.name, "shape": i.shape})).collect::<Vec<_>>(),
                "description": m.spec.description,
                "update": ota.as_ref().and_then(|o| o.models.get(&name)),
            })
        })
        .collect();
    Outcome::Succeeded(json!({ "models": list }))
}
