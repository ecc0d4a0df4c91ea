//! `fallback/force {model, seconds?, on?}`: sends every request for `model` to the cloud
//! for `seconds` (default 3600), or stops with `on: false`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::args::Args;
use super::{Context, Outcome};

/// Arguments of `fallback/force`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackForceArgs {
    /// A model with a cloud endpoint.
    #[serde(default)]
    pub model: Option<String>,
    /// How long to force it, from 1 to [`MAX_FORCE_S`]; 3600 by default.
    #[serde(default)]
    pub seconds: Option<u64>,
    /// `false` stops forcing it; `true` by default.
    #[serde(default)]
    pub on: Option<bool>,
}

impl Args for FallbackForceArgs {
    const COMMAND: &'static str = "fallback/force";
}

/// Longest a command may force a model to the cloud: a forgotten audit must not run
/// up the bill for ever.
pub const MAX_FORCE_S: u64 = 7 * 24 * 3600;

/// Forcing this model is possible: it has a cloud endpoint.
pub struct Checked {
    model: String,
    on: bool,
    seconds: u64,
}

/// Checks that this device has a cloud endpoint for the model, and the duration.
pub fn prepare(args: FallbackForceArgs, ctx: &Context) -> Result<Checked, String> {
    let fallback = &ctx.fallback;
    if !fallback.is_configured() {
        return Err("the cloud fallback is off on this device: there is no [[fallback.model]]".into());
    }
    let Some(model) = args.model else {
        return Err("fallback/force needs `args.model`, the name of a model with a cloud endpoint".into());
    };
    if fallback.cloud(&model).is_none() {
        return Err(format!(
            "`{}` has no cloud endpoint; configure one in [[fallback.model]] first",
            crate::mqtt::excerpt(&model, 64)
        ));
    }
    let seconds = args.seconds.unwrap_or(3600);
    if !(1..=MAX_FORCE_S).contains(&seconds) {
        return Err(format!("`args.seconds` must be a whole number from 1 to {MAX_FORCE_S}, not {seconds}"));
    }
    Ok(Checked { model, on: args.on.unwrap_or(true), seconds })
}

/// Forces the model to the cloud, or stops forcing it.
pub fn run(checked: Checked, ctx: &Context) -> Outcome {
    let Checked { model, on, seconds } = checked;
    let fallback = &ctx.fallback;
    let duration = on.then(|| Duration::from_secs(seconds));
    match fallback.force(&model, duration) {
        Ok(()) => Outcome::Succeeded(json!({"model": model, "forced": on, "seconds": on.then_some(seconds)})),
        // The endpoint was there when checked; a reload removed it since.
        Err(e) => Outcome::Failed(e),
    }
}
