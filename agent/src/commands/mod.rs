//! The command dispatcher: requests on the command topics, their life cycle
//! (`accepted`, `running`, then `succeeded` or `failed`; or `rejected` before starting),
//! replies on `.../cmd/{name}/reply` and, for MQTT 5 requests, on their response topic.
//!
//! A request is read ([`parse_request`]), its command and arguments checked
//! (`command::prepare`), and only then `accepted` and run: every refusal comes
//! before `accepted`, so `rejected` always means that nothing was started.
//!
//! One file per command owns its argument type (`#[serde(deny_unknown_fields)]`, read
//! by [`args::parse`]), its checks and its work; the HTTP API's `/ota/*` reads the same
//! types ([`args::from_body`]). Replies go through [`Replies`]: the MQTT outbox, or a
//! channel in tests.

pub mod args;
mod command;
mod config_get;
mod config_set;
mod diagnostics;
pub mod diagnostics_bundle;
mod fallback_force;
mod logs_upload;
mod models_list;
mod ping;
mod reply;
pub mod rollback;
mod samples_upload;
mod seen;
mod spool_flush;
mod status;
#[cfg(test)]
mod tests;
pub mod update_apply;
pub mod update_check;
pub mod update_shadow;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::config::TelemetrySection;
use crate::mqtt::CommandMsg;
use crate::service::health::Health;
pub use command::{NAMES, UPDATES_OFF};
use edge_infer::engine::Engine;
pub use reply::{Recipient, Replies};
use seen::Seen;

/// What commands may read and change.
pub struct Context {
    pub engine: Arc<Engine>,
    pub health: Arc<Health>,
    pub config_file: PathBuf,
    pub state_dir: PathBuf,
    pub started: Instant,
    pub telemetry: watch::Sender<TelemetrySection>,
    /// The model update task, when `[ota]` is configured.
    pub ota: Option<crate::ota::OtaHandle>,
    pub fallback: Arc<crate::fallback::Fallback>,
    /// `[capture]`: where `samples/upload` finds its CA file and disk margin.
    pub capture: crate::config::CaptureSection,
    /// `[log]`: the archive limit of `logs/upload` and `diagnostics/bundle`.
    pub log: crate::config::LogSection,
    /// Where `config/set log.level` reports its change (and its revert).
    pub events: crate::events::Events,
    /// The status document, as `GET /status` serves it.
    pub status: Box<dyn Fn() -> crate::service::status::Status + Send + Sync>,
    /// Bytes per destination: uploads count theirs here.
    pub usage: crate::usage::Usage,
    /// The MQTT outbox's counters and requests (`spool/flush`), when MQTT is on.
    pub outbox: Option<Arc<crate::mqtt::OutboxStats>>,
}

/// A request as sent: `{"id", "args"?, "expires"?}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Map<String, Value>>,
    /// RFC 3339; checked to be one by [`parse_request`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// Why a request was refused, with the id to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The request's id if it was a valid one (a number, as a courtesy, too); else null.
    pub id: Value,
    pub error: String,
}

/// Longest refusal text in a reply: refusals may quote the request (serde names an
/// unknown field, a setting's value), and a reply must stay small whatever was sent.
pub const MAX_ERROR_BYTES: usize = 1024;

/// What a rule-abiding id looks like, for refusals.
const ID_RULE: &str = "1 to 128 characters of A-Z a-z 0-9 . _ -";

/// Reads a request of at most `max_bytes`: valid JSON of the request's shape, an id
/// that follows the rule of every id the agent takes (as stream ids and model names:
/// 1 to 128 characters of A-Z a-z 0-9 . _ -), and `expires` an RFC 3339 time. A
/// refusal echoes the id only when it is valid, so a reply never carries more than
/// [`MAX_ERROR_BYTES`] of what was sent.
pub fn parse_request(payload: &[u8], max_bytes: usize) -> Result<Request, Rejection> {
    if payload.len() > max_bytes {
        let error = format!(
            "the request has {} bytes; commands take at most {max_bytes} (mqtt.max_command_bytes)",
            payload.len()
        );
        return Err(Rejection { id: Value::Null, error });
    }
    let req: Request = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .map_or(Value::Null, |id| echo_id(&id));
            let error = format!(
                "not a command request ({}); send {{\"id\": \"...\", \"args\": {{...}}, \"expires\": \"RFC 3339 time\"}}",
                crate::mqtt::excerpt(&e.to_string(), 200)
            );
            return Err(Rejection { id, error });
        }
    };
    if !crate::config::is_valid_id(&req.id) {
        let error = format!(
            "`id` must be {ID_RULE}, not {}",
            crate::mqtt::excerpt(&Value::String(req.id.clone()).to_string(), 64)
        );
        return Err(Rejection { id: Value::Null, error });
    }
    if let Some(exp) = &req.expires
        && let Err(e) = humantime::parse_rfc3339_weak(exp)
    {
        let error = format!(
            "`expires` is not an RFC 3339 time such as 2026-11-22T10:05:00Z ({e}): {}",
            crate::mqtt::excerpt(exp, 64)
        );
        return Err(Rejection { id: json!(req.id), error });
    }
    Ok(req)
}

/// The id a refusal answers with: the request's own if it is valid, else null.
fn echo_id(id: &Value) -> Value {
    match id {
        Value::String(s) if crate::config::is_valid_id(s) => id.clone(),
        // A JSON number is short; a tool numbering its requests still finds the answer.
        Value::Number(_) if id.to_string().len() <= 32 => id.clone(),
        _ => Value::Null,
    }
}

/// How a command ended, once started (refusals come before: [`Rejection`]).
pub enum Outcome {
    Succeeded(Value),
    Failed(String),
}

/// Where the replies of one request go.
struct Replier<'a> {
    sink: &'a dyn Replies,
    to: Recipient,
}

impl Replier<'_> {
    async fn send(&self, body: &Value) {
        self.sink.send(&self.to, body).await;
    }
}

/// Runs until the command channel closes, replying through `replies`.
pub async fn run(mut rx: mpsc::Receiver<CommandMsg>, replies: impl Replies, ctx: Context, max_bytes: usize) {
    let mut seen = Seen::open(ctx.state_dir.join("commands.json"));
    while let Some(msg) = rx.recv().await {
        let to = Recipient {
            command: msg.name.clone(),
            response_topic: msg.response_topic.clone(),
            correlation: msg.correlation.clone(),
        };
        let replier = Replier { sink: &replies, to };
        handle(msg, &replier, &ctx, &mut seen, max_bytes).await;
    }
}

async fn handle(msg: CommandMsg, replier: &Replier<'_>, ctx: &Context, seen: &mut Seen, max_bytes: usize) {
    let name = msg.name.clone();
    let req = match parse_request(&msg.payload, max_bytes) {
        Ok(r) => r,
        Err(r) => return reject(replier, &name, r.id, r.error).await,
    };
    tracing::debug!(command = %crate::mqtt::excerpt(&name, 64), id = %req.id, "command received");
    if let Some(previous) = seen.get(&req.id) {
        tracing::info!(command = %crate::mqtt::excerpt(&name, 64), id = %req.id,
            "repeated command id: sending the recorded reply");
        return replier.send(previous).await;
    }
    if let Some(exp) = &req.expires
        && humantime::parse_rfc3339_weak(exp).is_ok_and(|t| t < SystemTime::now())
    {
        return refuse(replier, seen, &name, &req.id, format!("expired at {exp}; not run")).await;
    }
    if !NAMES.contains(&name.as_str()) {
        let error =
            format!("unknown command `{}`; known: {}", crate::mqtt::excerpt(&name, 64), NAMES.join(", "));
        return refuse(replier, seen, &name, &req.id, error).await;
    }
    let args = req.args.clone().unwrap_or_default();
    let cmd = match command::prepare(&name, ctx, args) {
        Ok(cmd) => cmd,
        Err(error) => return refuse(replier, seen, &name, &req.id, error).await,
    };
    replier.send(&json!({"id": req.id, "state": "accepted"})).await;
    tracing::info!(command = %name, id = %req.id, scope = ?msg.scope, "command accepted");
    let progress = Progress { replier, id: &req.id };
    let outcome = command::run(cmd, ctx, &progress).await;
    let reply = match outcome {
        Outcome::Succeeded(result) => json!({"id": req.id, "state": "succeeded", "result": result}),
        Outcome::Failed(error) => json!({"id": req.id, "state": "failed", "error": bounded(error)}),
    };
    seen.record(&req.id, reply.clone());
    replier.send(&reply).await;
    // The request is answered and recorded: the broker may forget it.
    drop(msg.ack);
}

/// At most [`MAX_ERROR_BYTES`] of an error text.
fn bounded(error: String) -> String {
    if error.len() <= MAX_ERROR_BYTES { error } else { crate::mqtt::excerpt(&error, MAX_ERROR_BYTES - 32) }
}

/// Sends `running` replies with progress for a long command.
pub struct Progress<'a> {
    replier: &'a Replier<'a>,
    id: &'a str,
}

impl Progress<'_> {
    pub async fn report(&self, fraction: f64) {
        self.replier.send(&json!({"id": self.id, "state": "running", "progress": fraction})).await;
    }

    /// The request's id (unique among the device's commands).
    pub fn id(&self) -> &str {
        self.id
    }
}

/// Refuses a readable request, and records the refusal: the same id gets the same answer.
async fn refuse(replier: &Replier<'_>, seen: &mut Seen, name: &str, id: &str, error: String) {
    tracing::warn!(command = %crate::mqtt::excerpt(name, 64), %id, %error, "command rejected");
    let reply = json!({"id": id, "state": "rejected", "error": bounded(error)});
    seen.record(id, reply.clone());
    replier.send(&reply).await;
}

/// Refuses a request that could not be read (not recorded: it has no usable id).
async fn reject(replier: &Replier<'_>, name: &str, id: Value, error: String) {
    tracing::warn!(command = %crate::mqtt::excerpt(name, 64), %error, "command rejected");
    replier.send(&json!({"id": id, "state": "rejected", "error": bounded(error)})).await;
}
