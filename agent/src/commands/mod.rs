//! The command dispatcher: requests on the command topics, their life cycle
//! (`accepted`, `running`, then `succeeded` or `failed`; or `rejected` before starting),
//! replies on `.../cmd/{name}/reply` and, for MQTT 5 requests, on their response topic.
//!
//! Later issues add commands (update, rollback) as more [`handlers`].

mod handlers;
mod seen;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::config::TelemetrySection;
use crate::engine::Engine;
use crate::mqtt::client::ReplyTo;
use crate::mqtt::{CommandMsg, Mqtt, Outgoing};
use crate::service::health::Health;
use crate::spool::{Class, Record};
pub use handlers::NAMES;
use seen::Seen;

/// What commands may read and change.
pub struct Context {
    pub engine: Arc<Engine>,
    pub health: Arc<Health>,
    pub config_file: PathBuf,
    pub state_dir: PathBuf,
    pub started: Instant,
    pub telemetry: watch::Sender<TelemetrySection>,
    /// The `/status`-like document.
    pub status: Box<dyn Fn() -> Value + Send + Sync>,
}

/// A request as sent: `{"id", "args"?, "expires"?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    id: String,
    #[serde(default)]
    args: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    expires: Option<String>,
}

/// How a command ended.
pub enum Outcome {
    Succeeded(Value),
    Failed(String),
    Rejected(String),
}

/// Where the replies of one request go.
struct Replier {
    mqtt: Mqtt,
    topic: String,
    response: Option<(String, ReplyTo)>,
}

impl Replier {
    async fn send(&self, body: &Value) {
        let payload = serde_json::to_vec(body).unwrap_or_default();
        let mut targets = vec![(self.topic.clone(), None)];
        if let Some((topic, reply)) = &self.response {
            targets.push((topic.clone(), Some(reply.clone())));
        }
        for (topic, reply) in targets {
            let record = Record {
                topic,
                qos: 1,
                retain: false,
                payload: payload.clone(),
                class: Class::Reply,
                correlation: reply.as_ref().and_then(|r| r.correlation.clone()),
            };
            let _ = self.mqtt.outbox.send(Outgoing { record, reply, acks: Vec::new() }).await;
        }
    }
}

/// Runs until the command channel closes.
pub async fn run(mut rx: mpsc::Receiver<CommandMsg>, mqtt: Mqtt, ctx: Context, max_bytes: usize) {
    let mut seen = Seen::open(ctx.state_dir.join("commands.json"));
    while let Some(msg) = rx.recv().await {
        let replier = Replier {
            mqtt: mqtt.clone(),
            topic: mqtt.topics.reply(&msg.name),
            response: msg
                .response_topic
                .clone()
                .map(|t| (t, ReplyTo { correlation: msg.correlation.as_ref().map(|c| c.to_vec()) })),
        };
        handle(msg, &replier, &ctx, &mut seen, max_bytes).await;
    }
}

async fn handle(msg: CommandMsg, replier: &Replier, ctx: &Context, seen: &mut Seen, max_bytes: usize) {
    let name = msg.name.clone();
    // A request we cannot read has no usable id: answer with null so the sender's
    // tooling still sees why.
    if msg.payload.len() > max_bytes {
        let error = format!(
            "the request has {} bytes; commands take at most {max_bytes} (mqtt.max_command_bytes)",
            msg.payload.len()
        );
        return reject(replier, &name, Value::Null, error).await;
    }
    let req: Request = match serde_json::from_slice(&msg.payload) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_slice::<Value>(&msg.payload)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(Value::Null);
            let error = format!(
                "not a command request ({e}); send {{\"id\": \"...\", \"args\": {{...}}, \"expires\": \"RFC 3339 time\"}}"
            );
            return reject(replier, &name, id, error).await;
        }
    };
    if req.id.is_empty() || req.id.len() > 128 {
        return reject(replier, &name, json!(req.id), "`id` must have 1 to 128 characters".into()).await;
    }
    if let Some(previous) = seen.get(&req.id) {
        tracing::info!(command = %name, id = %req.id, "repeated command id: sending the recorded reply");
        return replier.send(previous).await;
    }
    if let Some(exp) = &req.expires {
        match humantime::parse_rfc3339_weak(exp) {
            Ok(t) if t < SystemTime::now() => {
                let error = format!("expired at {exp}; not run");
                let reply = json!({"id": req.id, "state": "rejected", "error": error});
                seen.record(&req.id, reply.clone());
                return replier.send(&reply).await;
            }
            Ok(_) => {}
            Err(e) => {
                let error = format!("`expires` is not an RFC 3339 time such as 2026-11-22T10:05:00Z ({e})");
                return reject(replier, &name, json!(req.id), error).await;
            }
        }
    }
    let args = req.args.unwrap_or_default();
    if !NAMES.contains(&name.as_str()) {
        let error = format!("unknown command `{name}`; known: {}", NAMES.join(", "));
        let reply = json!({"id": req.id, "state": "rejected", "error": error});
        seen.record(&req.id, reply.clone());
        return replier.send(&reply).await;
    }
    replier.send(&json!({"id": req.id, "state": "accepted"})).await;
    tracing::info!(command = %name, id = %req.id, scope = ?msg.scope, "command accepted");
    let progress = Progress { replier, id: &req.id };
    let outcome = handlers::run(&name, ctx, &args, &progress).await;
    let reply = match outcome {
        Outcome::Succeeded(result) => json!({"id": req.id, "state": "succeeded", "result": result}),
        Outcome::Failed(error) => json!({"id": req.id, "state": "failed", "error": error}),
        Outcome::Rejected(error) => json!({"id": req.id, "state": "rejected", "error": error}),
    };
    seen.record(&req.id, reply.clone());
    replier.send(&reply).await;
    // The request is answered and recorded: the broker may forget it.
    drop(msg.ack);
}

/// Sends `running` replies with progress for a long command.
pub struct Progress<'a> {
    replier: &'a Replier,
    id: &'a str,
}

impl Progress<'_> {
    pub async fn report(&self, fraction: f64) {
        self.replier.send(&json!({"id": self.id, "state": "running", "progress": fraction})).await;
    }
}

async fn reject(replier: &Replier, name: &str, id: Value, error: String) {
    tracing::warn!(command = %name, %error, "command rejected");
    replier.send(&json!({"id": id, "state": "rejected", "error": error})).await;
}
