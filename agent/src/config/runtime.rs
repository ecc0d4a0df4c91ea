//! Settings a fleet operator may change at run time (`config/set` over MQTT), and the
//! overlay file in the state directory that keeps them across restarts.
//!
//! Precedence: the config file, then this overlay, then environment variables, then
//! command-line flags. Removing `runtime.toml` returns to the file's values.

use std::path::{Path, PathBuf};

use super::RawConfig;

/// The keys `config/set` accepts, with what they take.
pub const RUNTIME_KEYS: [(&str, &str); 5] = [
    ("telemetry.interval_s", "seconds between telemetry reports, 0 to 86400 (0: off)"),
    ("telemetry.format", "\"json\" or \"postcard\""),
    ("telemetry.qos", "0 or 1"),
    ("engine.deadline_ms", "request deadline in milliseconds, 1 to 3600000"),
    ("log.level", "a log filter such as \"info\", \"debug\" or \"edge_agent=debug,info\""),
];

/// The overlay file in a state directory.
pub fn overlay_path(state_dir: &Path) -> PathBuf {
    state_dir.join("runtime.toml")
}

/// Why a value cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("`{key}` cannot be changed at run time; runtime keys are: {}", RUNTIME_KEYS.map(|k| k.0).join(", "))]
    NotRuntime { key: String },
    #[error("`{key}` takes {what}; got {got}")]
    Type { key: String, what: &'static str, got: String },
}

/// Sets one runtime key on a raw config. Range checks are left to validation, which
/// runs on the result before anything is applied.
pub fn set(raw: &mut RawConfig, key: &str, value: &toml::Value) -> Result<(), SetError> {
    let what = RUNTIME_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, w)| *w)
        .ok_or_else(|| SetError::NotRuntime { key: key.into() })?;
    let bad = || SetError::Type { key: key.into(), what, got: describe(value) };
    let int = || value.as_integer().filter(|v| *v >= 0).map(|v| v as u64).ok_or_else(bad);
    match key {
        "telemetry.interval_s" => raw.telemetry.interval_s = int()?,
        "telemetry.qos" => raw.telemetry.qos = u8::try_from(int()?).map_err(|_| bad())?,
        "engine.deadline_ms" => raw.engine.deadline_ms = int()?,
        "telemetry.format" => {
            raw.telemetry.format = value.clone().try_into().map_err(|_: toml::de::Error| bad())?;
        }
        "log.level" => raw.log.level = value.as_str().ok_or_else(bad)?.to_string(),
        _ => return Err(SetError::NotRuntime { key: key.into() }),
    }
    Ok(())
}

/// The runtime keys' current values.
pub fn get(raw: &RawConfig) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("telemetry.interval_s".into(), toml::Value::Integer(raw.telemetry.interval_s as i64));
    t.insert("telemetry.qos".into(), toml::Value::Integer(i64::from(raw.telemetry.qos)));
    t.insert("engine.deadline_ms".into(), toml::Value::Integer(raw.engine.deadline_ms as i64));
    t.insert("log.level".into(), toml::Value::String(raw.log.level.clone()));
    t.insert(
        "telemetry.format".into(),
        toml::Value::try_from(raw.telemetry.format).unwrap_or(toml::Value::String("json".into())),
    );
    t
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string \"{s}\""),
        toml::Value::Integer(i) => format!("the number {i}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "an object".into(),
        toml::Value::Datetime(d) => format!("the date {d}"),
    }
}

/// Reads the overlay (flat `key = value` lines) and applies it. A key that is not a
/// runtime key or a value of the wrong type is skipped with a warning: an overlay
/// written by an older or newer agent must not stop this one from starting.
pub fn apply_overlay(raw: &mut RawConfig, state_dir: &Path) {
    let path = overlay_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the runtime settings; using the file's");
            return;
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "runtime settings unreadable; using the file's");
            return;
        }
    };
    for (key, value) in &table {
        if let Err(e) = set(raw, key, value) {
            tracing::warn!(path = %path.display(), error = %e, "runtime setting skipped");
        }
    }
}

/// Writes the overlay with `key = value` added or replaced (atomically).
pub fn persist(state_dir: &Path, key: &str, value: &toml::Value) -> std::io::Result<()> {
    let path = overlay_path(state_dir);
    let mut table: toml::Table =
        std::fs::read_to_string(&path).ok().and_then(|t| toml::from_str(&t).ok()).unwrap_or_default();
    table.insert(key.to_string(), value.clone());
    let text = format!(
        "# Written by edge-agent (config/set over MQTT). Overrides the config file; delete to reset.\n{}",
        toml::to_string(&table).map_err(std::io::Error::other)?
    );
    edge_spool::durable::replace(&path, text.as_bytes())
}
