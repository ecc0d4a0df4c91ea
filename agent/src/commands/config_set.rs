//! `config/set {key, value}`: changes a runtime setting, checked against the whole
//! configuration, persisted in the state directory's overlay and applied at once.

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::args::Args;
use super::config_get::dotted_key;
use super::{Context, Outcome};
use crate::config::{Config, runtime};

/// Arguments of `config/set`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSetArgs {
    /// The dotted key of a runtime setting (`telemetry.interval_s`).
    #[serde(default)]
    pub key: Option<String>,
    /// Its new value; `null` is a value (which no setting takes), not a missing one.
    #[serde(default, deserialize_with = "present")]
    pub value: Option<Value>,
}

impl Args for ConfigSetArgs {
    const COMMAND: &'static str = "config/set";
}

/// A key that is there, even with `null`: `Option<Value>` alone reads `null` as absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A setting checked against the whole configuration: [`run`] only writes and applies it.
pub struct Checked {
    key: String,
    value: toml::Value,
    config: Box<Config>,
}

/// Checks the new value against the whole configuration; nothing changes yet.
pub fn prepare(args: ConfigSetArgs, ctx: &Context) -> Result<Checked, String> {
    let Some(key) = args.key else {
        return Err("`args.key` is missing; give the dotted key, e.g. \"telemetry.interval_s\"".into());
    };
    let key = dotted_key(key)?;
    let Some(value) = args.value else {
        return Err(format!("`args.value` is missing; {key} needs a value"));
    };
    let value: toml::Value = toml::Value::try_from(&value).map_err(|_| {
        format!("`args.value` ({}) cannot be a setting", crate::mqtt::excerpt(&value.to_string(), 64))
    })?;
    let (mut raw, text) = Config::load_raw(&ctx.config_file, &ctx.state_dir)
        .map_err(|e| format!("cannot read the configuration: {e}"))?;
    runtime::set(&mut raw, &key, &value).map_err(|e| e.to_string())?;
    // The whole configuration must still be valid with the new value.
    let config = Config::check_raw(raw, &ctx.config_file, &text).map_err(|e| {
        let why = e.to_string().lines().filter(|l| l.contains(&key)).collect::<Vec<_>>().join("; ");
        if why.is_empty() { e.to_string() } else { why }
    })?;
    Ok(Checked { key, value, config: Box::new(config) })
}

/// Persists and applies a checked setting.
pub fn run(checked: Checked, ctx: &Context) -> Outcome {
    let Checked { key, value, config } = checked;
    if let Err(e) = runtime::persist(&ctx.state_dir, &key, &value) {
        return Outcome::Failed(format!(
            "cannot write {}: {e}; nothing changed",
            runtime::overlay_path(&ctx.state_dir).display()
        ));
    }
    ctx.telemetry.send_replace(config.telemetry.clone());
    ctx.health.set_deadline(config.deadline);
    tracing::info!(%key, %value, "runtime setting changed");
    Outcome::Succeeded(json!({
        "key": key,
        "value": serde_json::to_value(&value).unwrap_or(Value::Null),
        "persisted": runtime::overlay_path(&ctx.state_dir),
    }))
}
