//! `config/set {key, value}`: changes a runtime setting, checked against the whole
//! configuration, persisted in the state directory's overlay and applied at once.

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::args::Args;
use super::config_get::dotted_key;
use super::{Context, Outcome};
use crate::config::{Config, runtime};
use crate::events::{Event, Kind};

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
    /// `log.level` only: go back to the level before after this many seconds (1 to
    /// 604800), and leave the configured level as it is (nothing is persisted).
    #[serde(default)]
    pub revert_after_s: Option<u64>,
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
    revert_after: Option<std::time::Duration>,
}

/// The longest a temporary log level may last: a week.
const MAX_REVERT_S: u64 = 7 * 24 * 3600;

/// Checks the new value against the whole configuration; nothing changes yet.
pub fn prepare(args: ConfigSetArgs, ctx: &Context) -> Result<Checked, String> {
    let Some(key) = args.key else {
        return Err("`args.key` is missing; give the dotted key, e.g. \"telemetry.interval_s\"".into());
    };
    let key = dotted_key(key)?;
    let revert_after = match args.revert_after_s {
        None => None,
        Some(_) if key != "log.level" => {
            return Err(format!("`args.revert_after_s` applies to log.level only, not {key}"));
        }
        Some(s) if !(1..=MAX_REVERT_S).contains(&s) => {
            return Err(format!("`args.revert_after_s` is {s}; use 1 to {MAX_REVERT_S} seconds"));
        }
        Some(s) => Some(std::time::Duration::from_secs(s)),
    };
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
    Ok(Checked { key, value, config: Box::new(config), revert_after })
}

/// Persists and applies a checked setting.
pub async fn run(checked: Checked, ctx: &Context) -> Outcome {
    let Checked { key, value, config, revert_after } = checked;
    if key == "log.level" {
        return set_log_level(&config.log.level, revert_after, ctx).await;
    }
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

/// Changes the log level now: for good (persisted like any runtime setting), or for
/// `revert_after` (not persisted: a restart is back at the configured level anyway).
async fn set_log_level(level: &str, revert_after: Option<std::time::Duration>, ctx: &Context) -> Outcome {
    let key = "log.level";
    let value = toml::Value::String(level.to_string());
    if revert_after.is_none()
        && let Err(e) = runtime::persist(&ctx.state_dir, key, &value)
    {
        return Outcome::Failed(format!(
            "cannot write {}: {e}; nothing changed",
            runtime::overlay_path(&ctx.state_dir).display()
        ));
    }
    let revert_at = revert_after.map(|d| std::time::SystemTime::now() + d);
    let changed = match crate::logs::set_level(level, revert_at) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let mut detail = json!({"level": level, "previous": changed.previous});
    if let (Some(d), Some(to)) = (revert_after, &changed.revert_to) {
        detail["revert_after_s"] = json!(d.as_secs());
        detail["revert_to"] = json!(to);
        let (events, generation) = (ctx.events.clone(), changed.generation);
        // Detached: a later change makes it a no-op, and shutdown simply drops it.
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            if let Some(back) = crate::logs::revert(generation) {
                let detail = json!({"level": back, "reverted": true});
                events.emit(Event::info(Kind::LogLevelChanged, detail)).await;
            }
        });
    }
    ctx.events.emit(Event::info(Kind::LogLevelChanged, detail.clone())).await;
    detail["key"] = json!(key);
    if revert_after.is_none() {
        detail["persisted"] = json!(runtime::overlay_path(&ctx.state_dir));
    }
    Outcome::Succeeded(detail)
}
