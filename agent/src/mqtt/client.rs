//! One face for rumqttc's MQTT 3.1.1 and MQTT 5 clients, so that the rest of the agent
//! is written once. Only what the agent uses is here.

use bytes::Bytes;
use rumqttc::v5;

/// What the link task cares about from the event loop.
#[derive(Debug)]
pub enum LinkEvent {
    /// The broker accepted the connection; an MQTT 5 broker may limit our QoS 1
    /// publishes in flight (`receive_maximum`).
    Connected { session_present: bool, receive_maximum: Option<u16> },
    /// A message from the broker.
    Message(Inbound),
    /// The broker acknowledged our QoS 1 publish with this packet id.
    PubAck(u16),
    /// A publish we handed over was written (packet id, 0 for QoS 0) or is waiting for a
    /// free packet id (`waiting`).
    Sent { pkid: u16, waiting: bool },
    /// Anything else (pings, subscription acks, our own acks).
    Other,
}

/// A message received from the broker.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
    /// MQTT 5 request/response: where to answer, and what to echo.
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
}

/// MQTT 5 properties of a reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplyTo {
    pub correlation: Option<Vec<u8>>,
}

/// The handle that queues requests to the event loop.
#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// Why a request could not be queued (the event loop is gone or its queue is full).
#[derive(Debug, thiserror::Error)]
#[error("the MQTT request queue refused a request: {0}")]
pub struct QueueError(String);

fn qos4(q: u8) -> rumqttc::QoS {
    if q == 0 { rumqttc::QoS::AtMostOnce } else { rumqttc::QoS::AtLeastOnce }
}
fn qos5(q: u8) -> v5::mqttbytes::QoS {
    if q == 0 { v5::mqttbytes::QoS::AtMostOnce } else { v5::mqttbytes::QoS::AtLeastOnce }
}

impl Client {
    pub fn try_publish(
        &self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
        reply: Option<&ReplyTo>,
    ) -> Result<(), QueueError> {
        match self {
            Client::V4(c) => c.try_publish(topic, qos4(qos), retain, payload),
            Client::V5(c) => {
                let r = match reply.and_then(|r| r.correlation.clone()) {
                    Some(data) => {
                        let props = v5::mqttbytes::v5::PublishProperties {
                            correlation_data: Some(Bytes::from(data)),
                            ..Default::default()
                        };
                        c.try_publish_with_properties(topic, qos5(qos), retain, payload, props)
                    }
                    None => c.try_publish(topic, qos5(qos), retain, payload),
                };
                return r.map_err(|e| QueueError(e.to_string()));
            }
        }
        .map_err(|e| QueueError(e.to_string()))
    }

    /// Acknowledges a received QoS 1 message.
    pub fn try_ack(&self, pkid: u16) -> Result<(), QueueError> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| QueueError(e.to_string()))
            }
            Client::V5(c) => {
                let mut p =
                    v5::mqttbytes::v5::Publish::new("", v5::mqttbytes::QoS::AtLeastOnce, Vec::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| QueueError(e.to_string()))
            }
        }
    }

    pub fn try_subscribe(&self, filter: &str, qos: u8) -> Result<(), QueueError> {
        match self {
            Client::V4(c) => c.try_subscribe(filter, qos4(qos)).map_err(|e| QueueError(e.to_string())),
            Client::V5(c) => c.try_subscribe(filter, qos5(qos)).map_err(|e| QueueError(e.to_string())),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), QueueError> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| QueueError(e.to_string())),
            Client::V5(c) => c.try_disconnect().map_err(|e| QueueError(e.to_string())),
        }
    }
}

/// A payload in its own allocation. rumqttc hands out slices of its socket read buffer;
/// each slice keeps the whole buffer alive, so messages waiting in the data path would
/// pin every buffer they came in (measured: 18 MB of pinned buffers in a burst of
/// 12,000 messages). One copy per message frees the buffer for reuse at once.
fn own(payload: &Bytes) -> Bytes {
    Bytes::copy_from_slice(payload)
}

/// Why the connection is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The broker sent a packet of `size` bytes (its remaining length) over the
    /// client's limit (`max_packet_bytes`). The client reads only the packet's header,
    /// so the topic is unknown, and it drops the connection rather than read the rest.
    Oversize { size: usize },
    /// Anything else, as the client describes it.
    Other(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Oversize { size } => {
                write!(f, "the broker sent a packet of {size} bytes, over mqtt.max_packet_bytes")
            }
            LinkError::Other(e) => f.write_str(e),
        }
    }
}

fn link_error_v4(e: rumqttc::ConnectionError) -> LinkError {
    use rumqttc::{ConnectionError, StateError};
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(size),
        )) => LinkError::Oversize { size },
        other => LinkError::Other(other.to_string()),
    }
}

fn link_error_v5(e: v5::ConnectionError) -> LinkError {
    use v5::{ConnectionError, StateError};
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            v5::mqttbytes::Error::PayloadSizeLimitExceeded { pkt_size, .. },
        )) => LinkError::Oversize { size: pkt_size },
        ConnectionError::MqttState(StateError::IncomingPacketTooLarge { pkt_size, .. }) => {
            LinkError::Oversize { size: pkt_size }
        }
        other => LinkError::Other(other.to_string()),
    }
}

/// The event loop: owns the connection.
pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl EventLoop {
    /// The next event; an error means the connection is down (the next call reconnects).
    pub async fn poll(&mut self) -> Result<LinkEvent, LinkError> {
        match self {
            EventLoop::V4(l) => {
                use rumqttc::{Event, Outgoing, Packet};
                match l.poll().await.map_err(link_error_v4)? {
                    Event::Incoming(Packet::ConnAck(c)) => {
                        Ok(LinkEvent::Connected { session_present: c.session_present, receive_maximum: None })
                    }
                    Event::Incoming(Packet::Publish(p)) => Ok(LinkEvent::Message(Inbound {
                        topic: p.topic,
                        payload: own(&p.payload),
                        qos: p.qos as u8,
                        pkid: p.pkid,
                        retain: p.retain,
                        response_topic: None,
                        correlation: None,
                    })),
                    Event::Incoming(Packet::PubAck(a)) => Ok(LinkEvent::PubAck(a.pkid)),
                    Event::Outgoing(Outgoing::Publish(pkid)) => Ok(LinkEvent::Sent { pkid, waiting: false }),
                    Event::Outgoing(Outgoing::AwaitAck(pkid)) => Ok(LinkEvent::Sent { pkid, waiting: true }),
                    _ => Ok(LinkEvent::Other),
                }
            }
            EventLoop::V5(l) => {
                use rumqttc::Outgoing;
                use v5::Event;
                use v5::mqttbytes::v5::Packet;
                match l.poll().await.map_err(link_error_v5)? {
                    Event::Incoming(Packet::ConnAck(c)) => Ok(LinkEvent::Connected {
                        session_present: c.session_present,
                        receive_maximum: c.properties.and_then(|p| p.receive_max),
                    }),
                    Event::Incoming(Packet::Publish(p)) => {
                        let (response_topic, correlation) = match p.properties {
                            Some(props) => (props.response_topic, props.correlation_data),
                            None => (None, None),
                        };
                        Ok(LinkEvent::Message(Inbound {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: own(&p.payload),
                            qos: p.qos as u8,
                            pkid: p.pkid,
                            retain: p.retain,
                            response_topic,
                            correlation,
                        }))
                    }
                    Event::Incoming(Packet::PubAck(a)) => Ok(LinkEvent::PubAck(a.pkid)),
                    Event::Outgoing(Outgoing::Publish(pkid)) => Ok(LinkEvent::Sent { pkid, waiting: false }),
                    Event::Outgoing(Outgoing::AwaitAck(pkid)) => Ok(LinkEvent::Sent { pkid, waiting: true }),
                    _ => Ok(LinkEvent::Other),
                }
            }
        }
    }

    /// Forgets everything rumqttc would resend or send on the next connection: the
    /// outbox owns retransmission (from memory or the spool), so that a message is never
    /// resent twice or lost with a fresh session.
    pub fn forget_pending(&mut self) {
        // `clean` keeps the events the client had read but not yet handed out; they
        // belong to the lost connection (an acknowledgement of one of its messages would
        // go out on the next connection, under a packet id that may name another message).
        match self {
            EventLoop::V4(l) => {
                l.clean();
                l.pending.clear();
                l.state.events.clear();
            }
            EventLoop::V5(l) => {
                l.clean();
                l.pending.clear();
                l.state.events.clear();
            }
        }
    }

    /// Whether the next connection asks the broker for a fresh session (MQTT 3.1.1
    /// clean session, MQTT 5 clean start), discarding the one it keeps for us.
    pub fn set_fresh_session(&mut self, fresh: bool) {
        match self {
            EventLoop::V4(l) => {
                l.mqtt_options.set_clean_session(fresh);
            }
            EventLoop::V5(l) => {
                l.options.set_clean_start(fresh);
            }
        }
    }

    /// Whether a fresh session (see [`EventLoop::set_fresh_session`]) is itself kept by
    /// the broker after the connection: MQTT 5 keeps it for its expiry interval, while an
    /// MQTT 3.1.1 clean session ends with its connection.
    pub fn fresh_session_persists(&self) -> bool {
        matches!(self, EventLoop::V5(_))
    }
}
