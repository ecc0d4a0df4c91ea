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

/// A command whose arguments were checked: [`run`] has nothing left to refuse, only to
/// do (and maybe fail). Everything that can be refused is refused by [`prepare`], before
/// the request is `accepted`, as the protocol says (`rejected`: it never started).
pub enum Command {
    Ping,
    Status,
    ModelsList,
    /// The answer, read while checking that the key exists.
    ConfigGet(Value),
    /// The new value, and the whole configuration validated with it.
    ConfigSet {
        key: String,
        value: toml::Value,
        checked: Box<Config>,
    },
    Diagnostics,
    UpdateCheck,
    UpdateApply {
        model: String,
        version: String,
        force: bool,
    },
    Rollback {
        model: Option<String>,
    },
    FallbackForce {
        model: String,
        on: bool,
        seconds: u64,
    },
}

/// Checks a known command's arguments (and that this device can run it).
pub fn prepare(name: &str, ctx: &Context, args: &Map<String, Value>) -> Result<Command, String> {
    Ok(match name {
        "ping" => Command::Ping,
        "status" => Command::Status,
        "models/list" => Command::ModelsList,
        "config/get" => config_get(ctx, args)?,
        "config/set" => config_set(ctx, args)?,
        "diagnostics" => Command::Diagnostics,
        "update/check" | "update/apply" | "rollback" => update(name, ctx, args)?,
        "fallback/force" => fallback_force(ctx, args)?,
        other => return Err(format!("unknown command `{}`", crate::mqtt::excerpt(other, 64))),
    })
}

/// Runs a checked command.
pub async fn run(cmd: Command, ctx: &Context, progress: &Progress<'_>) -> Outcome {
    match cmd {
        Command::Ping => Outcome::Succeeded(json!({
            "pong": true,
            "ts": crate::mqtt::now(),
            "uptime_s": ctx.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
        })),
        Command::Status => Outcome::Succeeded(serde_json::to_value((ctx.status)()).unwrap_or(Value::Null)),
        Command::ModelsList => models(ctx),
        Command::ConfigGet(answer) => Outcome::Succeeded(answer),
        Command::ConfigSet { key, value, checked } => config_apply(ctx, key, value, *checked),
        Command::Diagnostics => diagnostics(ctx, progress).await,
        Command::UpdateCheck | Command::UpdateApply { .. } | Command::Rollback { .. } => {
            // `prepare` made sure the update task exists.
            let Some(ota) = &ctx.ota else {
                return Outcome::Failed("model updates stopped on this device".into());
            };
            progress.report(0.0).await;
            let result = match cmd {
                Command::UpdateApply { model, version, force } => ota.apply(model, version, force).await,
                Command::Rollback { model } => ota.rollback(model).await,
                _ => ota.check().await,
            };
            match result {
                Ok(v) => Outcome::Succeeded(v),
                Err(e) => Outcome::Failed(e),
            }
        }
        Command::FallbackForce { model, on, seconds } => {
            let fallback = &ctx.fallback;
            let duration = on.then(|| std::time::Duration::from_secs(seconds));
            match fallback.force(&model, duration) {
                Ok(()) => Outcome::Succeeded(
                    json!({"model": model, "forced": on, "seconds": on.then_some(seconds)}),
                ),
                // The endpoint was there when checked; a reload removed it since.
                Err(e) => Outcome::Failed(e),
            }
        }
    }
}

/// Update commands go to the update task, which answers when the work is done.
fn update(name: &str, ctx: &Context, args: &Map<String, Value>) -> Result<Command, String> {
    if ctx.ota.is_none() {
        return Err("model updates are off on this device: there is no [ota] section".into());
    }
    let text = |key: &str| match args.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`args.{key}` must be a string, not {}", quote(other))),
    };
    let (model, version) = (text("model")?, text("version")?);
    let force = match args.get("force") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("`args.force` must be true or false, not {}", quote(other))),
    };
    Ok(match name {
        "update/check" => Command::UpdateCheck,
        "update/apply" => {
            let (Some(model), Some(version)) = (model, version) else {
                return Err(
                    "update/apply needs `args.model` and `args.version` (a version the signed targets list)"
                        .into(),
                );
            };
            Command::UpdateApply { model, version, force }
        }
        _ => Command::Rollback { model },
    })
}

/// A JSON value from a request, quoted in a refusal: at most 64 bytes of it.
fn quote(v: &Value) -> String {
    crate::mqtt::excerpt(&v.to_string(), 64)
}

/// Longest a command may force a model to the cloud: a forgotten audit must not run
/// up the bill for ever.
const MAX_FORCE_S: u64 = 7 * 24 * 3600;

/// `fallback/force {model, seconds?, on?}`: sends every request for `model` to the
/// cloud for `seconds` (default 3600), or stops with `on: false`.
fn fallback_force(ctx: &Context, args: &Map<String, Value>) -> Result<Command, String> {
    let fallback = &ctx.fallback;
    if !fallback.is_configured() {
        return Err("the cloud fallback is off on this device: there is no [[fallback.model]]".into());
    }
    let Some(Value::String(model)) = args.get("model") else {
        return Err("fallback/force needs `args.model`, the name of a model with a cloud endpoint".into());
    };
    if fallback.cloud(model).is_none() {
        return Err(format!(
            "`{}` has no cloud endpoint; configure one in [[fallback.model]] first",
            crate::mqtt::excerpt(model, 64)
        ));
    }
    let on = match args.get("on") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("`args.on` must be true or false, not {}", quote(other))),
    };
    let seconds = match args.get("seconds") {
        None => 3600,
        Some(v) => match v.as_u64() {
            Some(s) if (1..=MAX_FORCE_S).contains(&s) => s,
            _ => {
                return Err(format!(
                    "`args.seconds` must be a whole number from 1 to {MAX_FORCE_S}, not {}",
                    quote(v)
                ));
            }
        },
    };
    Ok(Command::FallbackForce { model: model.clone(), on, seconds })
}

fn models(ctx: &Context) -> Outcome {
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

/// Only string arguments named `key`, with a clear refusal otherwise.
fn key_arg(args: &Map<String, Value>, required: bool) -> Result<Option<String>, String> {
    match args.get("key") {
        None if required => {
            Err("`args.key` is missing; give the dotted key, e.g. \"telemetry.interval_s\"".into())
        }
        None => Ok(None),
        Some(Value::String(k)) if k.len() <= 128 => Ok(Some(k.clone())),
        Some(other) => {
            Err(format!("`args.key` must be a dotted key of at most 128 bytes, not {}", quote(other)))
        }
    }
}

/// Reads the answer: the configuration file is read at once, so checking that the key
/// exists and answering are the same step.
fn config_get(ctx: &Context, args: &Map<String, Value>) -> Result<Command, String> {
    let key = key_arg(args, false)?;
    let (raw, _) = Config::load_raw(&ctx.config_file, &ctx.state_dir)
        .map_err(|e| format!("cannot read the configuration: {e}"))?;
    let runtime = serde_json::to_value(runtime::get(&raw)).unwrap_or(Value::Null);
    let mut full = serde_json::to_value(&raw).unwrap_or(Value::Null);
    // Secrets stay on the device.
    if let Some(p) = full.pointer_mut("/mqtt/password") {
        *p = Value::String("(hidden)".into());
    }
    match key {
        None => Ok(Command::ConfigGet(json!({"runtime": runtime, "config": full}))),
        Some(k) => {
            let value = runtime.get(&k).cloned().or_else(|| {
                let pointer = format!("/{}", k.replace('.', "/"));
                full.pointer(&pointer).cloned()
            });
            match value {
                Some(v) => Ok(Command::ConfigGet(json!({"key": k, "value": v}))),
                None => Err(format!("no key `{k}` in the configuration")),
            }
        }
    }
}

/// Checks the new value against the whole configuration; nothing changes yet.
fn config_set(ctx: &Context, args: &Map<String, Value>) -> Result<Command, String> {
    let Some(key) = key_arg(args, true)? else {
        return Err("`args.key` is missing".into());
    };
    let Some(value) = args.get("value") else {
        return Err(format!("`args.value` is missing; {key} needs a value"));
    };
    let value: toml::Value = toml::Value::try_from(value)
        .map_err(|_| format!("`args.value` ({}) cannot be a setting", quote(value)))?;
    let (mut raw, text) = Config::load_raw(&ctx.config_file, &ctx.state_dir)
        .map_err(|e| format!("cannot read the configuration: {e}"))?;
    runtime::set(&mut raw, &key, &value).map_err(|e| e.to_string())?;
    // The whole configuration must still be valid with the new value.
    let checked = Config::check_raw(raw, &ctx.config_file, &text).map_err(|e| {
        let why = e.to_string().lines().filter(|l| l.contains(&key)).collect::<Vec<_>>().join("; ");
        if why.is_empty() { e.to_string() } else { why }
    })?;
    Ok(Command::ConfigSet { key, value, checked: Box::new(checked) })
}

/// Persists and applies a checked setting.
fn config_apply(ctx: &Context, key: String, value: toml::Value, checked: Config) -> Outcome {
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
