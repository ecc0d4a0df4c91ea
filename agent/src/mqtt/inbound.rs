//! Messages from the broker: sensor data to the data path, commands to the dispatcher.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ack::Ack;
use super::client::Inbound;
use super::link::Backlog;
use super::topics::{self, Scope, Topics};
use crate::config::SensorSubscription;
use crate::engine::Engine;
use crate::engine::spec::PayloadFormat;
use crate::pipeline::Payload;
use crate::sources::SensorMessage;

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

pub struct InboundRouter {
    pub topics: Topics,
    pub sensors: Vec<SensorSubscription>,
    pub engine: Arc<Engine>,
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
            let msg = self.sensor_message(sub, &m.topic, m.payload, ack);
            // Reserve first: a message dropped inside a cancelled send would be
            // acknowledged without having been handled.
            let permit = tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    if let Some(a) = msg.ack {
                        a.forget();
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
    ) -> SensorMessage {
        let stream = match sub.stream_level {
            Some(i) => topics::level(topic, i).unwrap_or(topic).to_string(),
            None => topic.to_string(),
        };
        // A JSON object may carry an `id`, echoed on the result so that the sender can
        // match results to messages (and drop duplicates after a crash).
        let json = self.engine.model(&sub.model).is_some_and(|m| m.spec.pre.format == PayloadFormat::Json);
        // `"route": "cloud"` asks for the cloud fallback (audits, A/B comparisons).
        let text = crate::pipeline::strip_bom(&payload);
        let (payload, input_id, force_cloud) =
            if json && text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                match serde_json::from_slice::<serde_json::Value>(text) {
                    Ok(v) => {
                        let id = v.get("id").cloned();
                        let cloud = v.get("route").and_then(|r| r.as_str()) == Some("cloud");
                        (Payload::Json(v), id, cloud)
                    }
                    // Let the decoder report it, with its own words.
                    Err(_) => (Payload::Bytes(payload.to_vec()), None, false),
                }
            } else {
                (Payload::Bytes(payload.to_vec()), None, false)
            };
        SensorMessage {
            model: sub.model.clone(),
            stream,
            source: topic.to_string(),
            payload,
            reset: false,
            ack,
            input_id,
            force_cloud,
        }
    }
}
