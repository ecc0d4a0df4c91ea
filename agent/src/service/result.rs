//! Results: numbering, time stamps, and where they are written.

use std::collections::HashMap;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::seq::SeqAllocator;
use crate::mqtt::Mqtt;
use crate::sources::Receipt;

/// A result as computed by a stream task, before the sink numbers it.
#[derive(Debug)]
pub struct ResultRecord {
    pub model: String,
    pub version: String,
    pub stream: String,
    pub source: String,
    /// Window (or message) index within the stream.
    pub window: u64,
    /// Sample offset of the window in the stream, for windowed models.
    pub offset: Option<u64>,
    pub latency_ms: f64,
    pub outputs: Map<String, Value>,
    /// The sender's id of the message that completed this result.
    pub input_id: Option<Value>,
    /// Where it was computed (`local`, `cloud`) and why (a fallback reason, `degraded`).
    pub place: &'static str,
    pub reason: Option<&'static str>,
    /// A cascade's local answer, when the cloud was asked because it was unsure.
    pub deferred: Option<Value>,
    /// Receipts of the sensor messages this result answers, settled once it is safe.
    pub receipts: Vec<Receipt>,
}

/// The result as published (stdout line now; MQTT payload later). Field order is part
/// of the format users parse; add fields at the end.
#[derive(Debug, Serialize)]
struct Published<'a> {
    seq: u64,
    ts: String,
    device: &'a str,
    model: &'a str,
    version: &'a str,
    stream: &'a str,
    source: &'a str,
    place: &'static str,
    reason: Option<&'static str>,
    latency_ms: f64,
    window: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    outputs: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_id: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deferred: Option<&'a Value>,
}

/// Where results go.
#[derive(Default)]
pub struct ResultSink {
    /// Write JSON lines to standard output.
    pub stdout: bool,
    /// Publish on `{prefix}/{device}/results/{model}`.
    pub mqtt: Option<Mqtt>,
    /// Numbering that survives restarts; without it, numbering starts at 0.
    pub seq: Option<SeqAllocator>,
    /// Per model, which results go to MQTT (`[model.publish]`); every one by default.
    pub publish: HashMap<String, crate::config::PublishSection>,
    /// The broker's daily cap: results give way once it is reached.
    pub cap: Option<std::sync::Arc<crate::usage::cap::DailyCap>>,
}

impl ResultSink {
    /// Writes results until the channel closes; returns how many were written.
    pub async fn run(mut self, mut rx: mpsc::Receiver<ResultRecord>, device: String) -> u64 {
        let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
        let mut stdout_ok = self.stdout;
        let mut written = 0u64;
        let mut memory_seq = 0u64;
        let mut last_label: HashMap<(String, String), String> = HashMap::new();
        let mut gate = super::publish::Gate::new(std::mem::take(&mut self.publish));
        loop {
            // Summaries fall due on a timer, whether results come or not.
            let due = gate.next_due();
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.publish_summaries(&mut gate, Some(std::time::Instant::now()), &device).await;
                    continue;
                }
            };
            let Some(mut r) = next else { break };
            let seq = match self.seq.as_mut() {
                Some(s) => s.next(),
                None => {
                    memory_seq += 1;
                    memory_seq - 1
                }
            };
            let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
            let to_mqtt = self.mqtt.is_some()
                && gate.offer(&super::publish::Offered {
                    model: &r.model,
                    version: &r.version,
                    stream: &r.stream,
                    seq,
                    ts: &ts,
                    outputs: &r.outputs,
                });
            let to_mqtt = match (&self.cap, to_mqtt) {
                (Some(cap), true) => cap.allow(crate::usage::cap::Class::Result).await,
                (_, to_mqtt) => to_mqtt,
            };
            let published = Published {
                seq,
                ts,
                device: &device,
                model: &r.model,
                version: &r.version,
                stream: &r.stream,
                source: &r.source,
                place: r.place,
                reason: r.reason,
                latency_ms: (r.latency_ms * 1000.0).round() / 1000.0,
                window: r.window,
                offset: r.offset,
                outputs: &r.outputs,
                input_id: r.input_id.as_ref(),
                deferred: r.deferred.as_ref(),
            };
            written += 1;
            // A person watching the log sees changes, not every window.
            if let Some(Value::String(label)) = r.outputs.get("label") {
                let key = (r.model.clone(), r.stream.clone());
                if last_label.get(&key) != Some(label) {
                    tracing::info!(model = %r.model, stream = %r.stream, %label,
                        score = r.outputs.get("score").and_then(serde_json::Value::as_f64).unwrap_or(0.0), window = r.window, "label");
                    last_label.insert(key, label.clone());
                }
            }
            let mut line = match serde_json::to_vec(&published) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a result");
                    continue;
                }
            };
            if let Some(m) = self.mqtt.as_ref().filter(|_| to_mqtt) {
                // A result held back drops its receipts here: handled, as it was written.
                let receipts = std::mem::take(&mut r.receipts);
                if m.publish_result(&r.model, line.clone(), receipts).await.is_err() {
                    tracing::warn!("the MQTT outbox is closed; results are no longer published");
                    self.mqtt = None;
                }
            }
            if stdout_ok {
                line.push(b'\n');
                let mut io = out.write_all(&line).await;
                // Flush when no more results are waiting: batches writes under load,
                // shows each result at once when idle.
                if io.is_ok() && rx.is_empty() {
                    io = out.flush().await;
                }
                if let Err(e) = io {
                    tracing::warn!(error = %e, "stdout closed: results are no longer written there");
                    stdout_ok = false;
                }
            }
        }
        // What the last interval gathered goes out before the link closes.
        self.publish_summaries(&mut gate, None, &device).await;
        if stdout_ok {
            let _ = out.flush().await;
        }
        written
    }

    /// Publishes the summaries due at `now` (all with `None`).
    async fn publish_summaries(
        &mut self,
        gate: &mut super::publish::Gate,
        now: Option<std::time::Instant>,
        device: &str,
    ) {
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let due = gate.due(now, device, &ts);
        if let Some(m) = &self.mqtt {
            for (model, payload) in due {
                if let Some(cap) = &self.cap
                    && !cap.allow(crate::usage::cap::Class::Result).await
                {
                    continue;
                }
                if m.publish_result(&model, payload, Vec::new()).await.is_err() {
                    tracing::warn!("the MQTT outbox is closed; results are no longer published");
                    self.mqtt = None;
                    break;
                }
            }
        }
    }
}
