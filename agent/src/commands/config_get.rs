//! `config/get {key?}`: the whole configuration (secrets hidden) with the runtime
//! settings, or the value of one dotted key.

use serde::Deserialize;
use serde_json::{Value, json};

use super::args::Args;
use super::{Context, Outcome};
use crate::config::{Config, runtime};

/// Arguments of `config/get`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigGetArgs {
    /// A dotted key (`telemetry.interval_s`); without it, everything.
    #[serde(default)]
    pub key: Option<String>,
}

impl Args for ConfigGetArgs {
    const COMMAND: &'static str = "config/get";
}

/// Longest dotted key taken.
const MAX_KEY_BYTES: usize = 128;

/// A dotted key of at most [`MAX_KEY_BYTES`], with a clear refusal otherwise.
pub(super) fn dotted_key(key: String) -> Result<String, String> {
    if key.len() <= MAX_KEY_BYTES {
        return Ok(key);
    }
    Err(format!(
        "`args.key` must be a dotted key of at most {MAX_KEY_BYTES} bytes, not {}",
        crate::mqtt::excerpt(&Value::String(key).to_string(), 64)
    ))
}

/// Reads the answer: the configuration file is read at once, so checking that the key
/// exists and answering are the same step. The answer is what [`run`] sends.
pub fn prepare(args: ConfigGetArgs, ctx: &Context) -> Result<Value, String> {
    let key = args.key.map(dotted_key).transpose()?;
    let (raw, _) = Config::load_raw(&ctx.config_file, &ctx.state_dir)
        .map_err(|e| format!("cannot read the configuration: {e}"))?;
    let runtime = serde_json::to_value(runtime::get(&raw)).unwrap_or(Value::Null);
    let mut full = serde_json::to_value(&raw).unwrap_or(Value::Null);
    // Secrets stay on the device.
    if let Some(p) = full.pointer_mut("/mqtt/password") {
        *p = Value::String("(hidden)".into());
    }
    match key {
        None => Ok(json!({"runtime": runtime, "config": full})),
        Some(k) => {
            let value = runtime.get(&k).cloned().or_else(|| {
                let pointer = format!("/{}", k.replace('.', "/"));
                full.pointer(&pointer).cloned()
            });
            match value {
                Some(v) => Ok(json!({"key": k, "value": v})),
                None => Err(format!("no key `{k}` in the configuration")),
            }
        }
    }
}

/// Sends the answer [`prepare`] read.
pub fn run(answer: Value) -> Outcome {
    Outcome::Succeeded(answer)
}
