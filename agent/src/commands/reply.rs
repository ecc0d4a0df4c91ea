//! Where the dispatcher's replies go: the MQTT outbox in the daemon, a channel in tests
//! (so the dispatcher is tested without a broker).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde_json::Value;

use crate::mqtt::{Mqtt, ReplyTo};

/// Whom one request's replies go to.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    /// The command's name: replies go to `.../cmd/{command}/reply`.
    pub command: String,
    /// MQTT 5: answer here too, echoing `correlation`.
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
}

/// Sends the replies of commands.
pub trait Replies: Send + Sync {
    /// Sends one reply (`accepted`, `running`, `succeeded`, `failed`, `rejected`) to `to`.
    fn send<'a>(
        &'a self,
        to: &'a Recipient,
        body: &'a Value,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// Replies are QoS 1 records through the outbox: on the reply topic, and on the response
/// topic if the request gave one.
impl Replies for Mqtt {
    fn send<'a>(
        &'a self,
        to: &'a Recipient,
        body: &'a Value,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let payload = serde_json::to_vec(body).unwrap_or_default();
            let mut targets = vec![(self.topics.reply(&to.command), None)];
            if let Some(topic) = &to.response_topic {
                let reply = ReplyTo { correlation: to.correlation.as_ref().map(|c| c.to_vec()) };
                targets.push((topic.clone(), Some(reply)));
            }
            for (topic, reply) in targets {
                let _ = self.reply(topic, payload.clone(), reply).await;
            }
        })
    }
}
