//! The commands themselves.

use serde_json::{Map, Value, json};

use super::{Context, Outcome, Progress};
use crate::config::{Config, runtime};

/// Every command this agent knows.
pub const NAMES: [&str; 10] = [
    "ping",
    "status",
    "models/list",
    "config/get",
    "config/set",
    "diagnostics",
    "update/check",
    "update/apply",
    "rollback",
    "fallback/force",
];

/// Runs a known command.
pub async fn run(name: &str, ctx: &Context, args: &Map<String, Value>, progress: &Progress<'_>) -> Outcome {
    match name {
        "ping" => Outcome::Succeeded(json!({
            "pong": true,
            "ts": crate::mqtt::now(),
            "uptime_s": ctx.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
        })),
        "status" => Outcome::Succeeded((ctx.status)()),
        "models/list" => models(ctx),
        "config/get" => config_get(ctx, args),
        "config/set" => config_set(ctx, args),
        "diagnostics" => diagnostics(ctx, progress).await,
        "update/check" | "update/apply" | "rollback" => update(name, ctx, args, progress).await,
        "fallback/force" => fallback_force(ctx, args),
        other => Outcome::Rejected(format!("unknown command `{other}`")),
    }
}

/// Update commands go to the update task, which answers when the work is done.
async fn update(name: &str, ctx: &Context, args: &Map<String, Value>, progress: &Progress<'_>) -> Outcome {
    let Some(ota) = ctx.health.ota() else {
        return Outcome::Rejected("model updates are off on this device: there is no [ota] section".into());
    };
    let text = |key: &str| match args.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`args.{key}` must be a string, not {other}")),
    };
    let (model, version) = match (text("model"), text("version")) {
        (Ok(m), Ok(v)) => (m, v),
        (Err(e), _) | (_, Err(e)) => return Outcome::Rejected(e),
    };
    let force = match args.get("force") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Outcome::Rejected(format!("`args.force` must be true or false, not {other}")),
    };
    progress.report(0.0).await;
    let result = match name {
        "update/check" => ota.check().await,
        "update/apply" => {
            let (Some(model), Some(version)) = (model, version) else {
                return Outcome::Rejected(
                    "update/apply needs `args.model` and `args.version` (a version the signed targets list)"
                        .into(),
                );
            };
            ota.apply(model, version, force).await
        }
        _ => ota.rollback(model).await,
    };
    match result {
        Ok(v) => Outcome::Succeeded(v),
        Err(e) => Outcome::Failed(e),
    }
}

/// Longest a command may force a model to the cloud: a forgotten audit must not run
/// up the bill for ever.
const MAX_FORCE_S: u64 = 7 * 24 * 3600;

/// `fallback/force {model, seconds?, on?}`: sends every request for `model` to the
/// cloud for `seconds` (default 3600), or stops with `on: false`.
fn fallback_force(ctx: &Context, args: &Map<String, Value>) -> Outcome {
    let Some(fallback) = ctx.health.fallback().filter(|f| f.is_configured()) else {
        return Outcome::Rejected(
            "the cloud fallback is off on this device: there is no [[fallback.model]]".into(),
        );
    };
    let Some(Value::String(model)) = args.get("model") else {
        return Outcome::Rejected(
            "fallback/force needs `args.model`, the name of a model with a cloud endpoint".into(),
        );
    };
    let on = match args.get("on") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Outcome::Rejected(format!("`args.on` must be true or false, not {other}")),
    };
    let seconds = match args.get("seconds") {
        None => 3600,
        Some(v) => match v.as_u64() {
            Some(s) if (1..=MAX_FORCE_S).contains(&s) => s,
            _ => {
                return Outcome::Rejected(format!(
                    "`args.seconds` must be a whole number from 1 to {MAX_FORCE_S}, not {v}"
                ));
            }
        },
    };
    let duration = on.then(|| std::time::Duration::from_secs(seconds));
    match fallback.force(model, duration) {
        Ok(()) => Outcome::Succeeded(json!({"model": model, "forced": on, "seconds": on.then_some(seconds)})),
        Err(e) => Outcome::Rejected(e),
    }
}

fn models(ctx: &Context) -> Outcome {
    let ota = ctx.health.ota().map(|o| o.status());
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
                "update": ota.as_ref().and_then(|o| o.pointer(&format!("/models/{name}"))).cloned(),
            })
        })
        .collect();
    Outcome::Succeeded(json!({ "models": list }))
}

/// Only string arguments named `key`, with a clear refusal otherwise.
fn key_arg(args: &Map<String, Value>, required: bool) -> Result<Option<String>, String> {
    match args.get("key") {
        None if required => {
            Err("`args.key` is missing; give the dotted key, e.g. \"telemetry.interval_s\"".into())
        }
        None => Ok(None),
        Some(Value::String(k)) => Ok(Some(k.clone())),
        Some(other) => Err(format!("`args.key` must be a string, not {other}")),
    }
}

fn config_get(ctx: &Context, args: &Map<String, Value>) -> Outcome {
    let key = match key_arg(args, false) {
        Ok(k) => k,
        Err(e) => return Outcome::Rejected(e),
    };
    let (raw, _) = match Config::load_raw(&ctx.config_file, &ctx.state_dir) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("cannot read the configuration: {e}")),
    };
    let runtime = serde_json::to_value(runtime::get(&raw)).unwrap_or(Value::Null);
    let mut full = serde_json::to_value(&raw).unwrap_or(Value::Null);
    // Secrets stay on the device.
    if let Some(p) = full.pointer_mut("/mqtt/password") {
        *p = Value::String("(hidden)".into());
    }
    match key {
        None => Outcome::Succeeded(json!({"runtime": runtime, "config": full})),
        Some(k) => {
            let value = runtime.get(&k).cloned().or_else(|| {
                let pointer = format!("/{}", k.replace('.', "/"));
                full.pointer(&pointer).cloned()
            });
            match value {
                Some(v) => Outcome::Succeeded(json!({"key": k, "value": v})),
                None => Outcome::Rejected(format!("no key `{k}` in the configuration")),
            }
        }
    }
}

fn config_set(ctx: &Context, args: &Map<String, Value>) -> Outcome {
    let key = match key_arg(args, true) {
        Ok(Some(k)) => k,
        Ok(None) => return Outcome::Rejected("`args.key` is missing".into()),
        Err(e) => return Outcome::Rejected(e),
    };
    let Some(value) = args.get("value") else {
        return Outcome::Rejected(format!("`args.value` is missing; {key} needs a value"));
    };
    let value: toml::Value = match toml::Value::try_from(value) {
        Ok(v) => v,
        Err(_) => return Outcome::Rejected(format!("`args.value` ({value}) cannot be a setting")),
    };
    let (mut raw, text) = match Config::load_raw(&ctx.config_file, &ctx.state_dir) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("cannot read the configuration: {e}")),
    };
    if let Err(e) = runtime::set(&mut raw, &key, &value) {
        return Outcome::Rejected(e.to_string());
    }
    // The whole configuration must still be valid with the new value.
    let checked = match Config::check_raw(raw, &ctx.config_file, &text) {
        Ok(c) => c,
        Err(e) => {
            let why = e.to_string().lines().filter(|l| l.contains(&key)).collect::<Vec<_>>().join("; ");
            return Outcome::Rejected(if why.is_empty() { e.to_string() } else { why });
        }
    };
    if let Err(e) = runtime::persist(&ctx.state_dir, &key, &value) {
        return Outcome::Failed(format!(
            "cannot write {}: {e}; nothing changed",
            runtime::overlay_path(&ctx.state_dir).display()
        ));
    }
    ctx.telemetry.send_replace(checked.telemetry.clone());
    ctx.health.set_deadline(checked.deadline);
    tracing::info!(%key, %value, "runtime setting changed");
    Outcome::Succeeded(json!({
        "key": key,
        "value": serde_json::to_value(&value).unwrap_or(Value::Null),
        "persisted": runtime::overlay_path(&ctx.state_dir),
    }))
}

async fn diagnostics(ctx: &Context, progress: &Progress<'_>) -> Outcome {
    progress.report(0.0).await;
    let file = ctx.config_file.clone();
    // The checks load every model again and probe the network: blocking work.
    match tokio::task::spawn_blocking(move || crate::cli::doctor::checks(&file)).await {
        Ok(checks) => {
            progress.report(1.0).await;
            let worst = checks.iter().map(|c| c.level).max();
            Outcome::Succeeded(json!({"checks": checks, "result": worst}))
        }
        Err(e) => Outcome::Failed(format!("the checks stopped: {e}")),
    }
}
