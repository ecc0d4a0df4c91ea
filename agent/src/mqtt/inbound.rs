//! Messages from the broker: sensor data to the data path, commands to the dispatcher.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Kind};

use super::ack::Ack;
use super::client::Inbound;
use super::link::Backlog;
use super::outbox::{LinkSignal, OutboxStats};
use super::topics::{self, Scope, Topics};
use crate::config::SensorSubscription;
use crate::sources::{Receipt, SensorMessage};
use edge_infer::pipeline::Payload;

/// A command request as received.
#[derive(Debug)]
pub struct CommandMsg {
    pub name: String,
    pub scope: Scope,
    pub payload: Bytes,
    /// MQTT 5: answer here too, echoing `correlation`.
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
    /// Dropped once the command's outcome is recorded.
    pub ack: Option<Ack>,
}

/// Refused sensor messages are reported at most this often (each report counts the
/// ones left out), so a sender publishing garbage fast does not flood the events.
const REFUSAL_EVENT_EVERY: Duration = Duration::from_secs(5);

pub struct InboundRouter {
    pub topics: Topics,
    pub stats: Arc<OutboxStats>,
    /// Where refused messages are reported, as events through the outbox.
    pub events: mpsc::UnboundedSender<LinkSignal>,
    pub sensors: Vec<SensorSubscription>,
    pub backlog: Arc<Backlog>,
    pub to_streams: mpsc::Sender<SensorMessage>,
    pub to_commands: mpsc::Sender<CommandMsg>,
    /// Shutdown: stop handing messages on, leave the rest to the broker.
    pub stop: CancellationToken,
}

impl InboundRouter {
    /// Runs until the connection task is gone. Sending on waits: backpressure reaches
    /// the broker through the acknowledgements it is not getting.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<(Inbound, Option<Ack>)>) {
        let mut refusals = Refusals { last: None, suppressed: 0 };
        loop {
            let m = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            let (m, ack) = m;
            self.backlog.take();
            if let Some((name, scope)) = self.topics.parse_command(&m.topic) {
                // The broker replays a retained message at every subscription, so at every
                // reconnect, flagged as retained; a command published while we are
                // subscribed comes without the flag (MQTT 3.1.1 section 3.3.1.3, MQTT 5
                // without retain-as-published). So a retained command is run once, when
                // it is published, and its replays are ignored, as is the empty message
                // that clears it. Acknowledged (the ack is dropped): done with.
                if m.retain || m.payload.is_empty() {
                    tracing::info!(command = %super::excerpt(&name, 64), retained = m.retain,
                        bytes = m.payload.len(), "command message ignored: a retained copy or an empty message");
                    continue;
                }
                let cmd = CommandMsg {
                    name,
                    scope,
                    payload: m.payload,
                    response_topic: m.response_topic,
                    correlation: m.correlation,
                    ack,
                };
                if self.to_commands.send(cmd).await.is_err() {
                    return;
                }
                continue;
            }
            let Some(sub) = self.sensors.iter().find(|s| topics::matches(&s.topic, &m.topic)) else {
                // Our own replies (brought back by `cmd/#`) and anything else: done with.
                continue;
            };
            let msg = match self.sensor_message(sub, &m.topic, m.payload, ack) {
                Ok(msg) => msg,
                Err(error) => {
                    // Dropping the message acknowledges it: it must not come back for ever.
                    self.stats.bad_stream.fetch_add(1, Ordering::Relaxed);
                    refusals.report(&self.events, &self.topics, &sub.model, &m.topic, &error);
                    continue;
                }
            };
            // Reserve first: a message dropped inside a cancelled send would be
            // acknowledged without having been handled.
            let permit = tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    if let Some(r) = msg.receipt {
                        r.forget();
                    }
                    break;
                }
                p = self.to_streams.reserve() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            permit.send(msg);
        }
        // Not handled: the broker keeps them for the next session.
        drop(self.to_streams);
        rx.close();
        while let Some((_, ack)) = rx.recv().await {
            self.backlog.take();
            if let Some(a) = ack {
                a.forget();
            }
        }
    }

    fn sensor_message(
        &self,
        sub: &SensorSubscription,
        topic: &str,
        payload: Bytes,
        ack: Option<Ack>,
    ) -> Result<SensorMessage, String> {
        let stream = match sub.stream_level {
            // The rule of every stream id the agent takes from outside (the HTTP API's
            // `parameters.stream`, NDJSON's `stream`): stream ids name tasks, appear in
            // results and logs, and must be short and plain.
            Some(i) => match topics::level(topic, i) {
                Some(level) if crate::config::is_valid_id(level) => level.to_string(),
                Some(level) => {
                    return Err(format!(
                        "topic level {i} (stream_level) is `{}`, not a stream id: use 1 to 128 characters \
                         of A-Z a-z 0-9 . _ -",
                        super::excerpt(level, 64)
                    ));
                }
                None => {
                    return Err(format!(
                        "topic level {i} (stream_level) is empty or missing, so there is no stream id"
                    ));
                }
            },
            None => topic.to_string(),
        };
        // Read as the model's spec says by the stream task, which has the spec (a JSON
        // object's `id` and `route` included).
        Ok(SensorMessage {
            model: sub.model.clone(),
            stream,
            source: topic.to_string(),
            payload: Payload::Bytes(payload.to_vec()),
            reset: false,
            receipt: ack.map(Receipt::from),
            input_id: None,
            force_cloud: false,
        })
    }
}

/// Reports refused sensor messages: a warning and a `request-failed` event at most once
/// per [`REFUSAL_EVENT_EVERY`], with how many were left out.
struct Refusals {
    last: Option<Instant>,
    suppressed: u64,
}

impl Refusals {
    fn report(
        &mut self,
        events: &mpsc::UnboundedSender<LinkSignal>,
        topics: &Topics,
        model: &str,
        topic: &str,
        error: &str,
    ) {
        if self.last.is_some_and(|t| t.elapsed() < REFUSAL_EVENT_EVERY) {
            self.suppressed += 1;
            return;
        }
        let topic = super::excerpt(topic, 200);
        tracing::warn!(%model, %topic, %error, suppressed = self.suppressed, "sensor message refused");
        let detail = serde_json::json!({"topic": topic, "error": error, "suppressed": self.suppressed});
        let record =
            super::event_record(topics.events(), &Event::warning(Kind::RequestFailed, detail).model(model));
        let _ = events.send(LinkSignal::Event(record));
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}
