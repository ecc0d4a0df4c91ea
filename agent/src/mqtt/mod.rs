//! The link to the fleet: one MQTT connection (rumqttc, 3.1.1 or 5, TLS on rustls).
//!
//! Four tasks, joined by channels:
//! - [`link`]: drives the connection, reconnects, subscribes;
//! - [`inbound`]: sensor messages to the data path, commands to the dispatcher;
//! - [`outbox`]: every publish, in order, through memory or the on-disk spool;
//! - the producers (result sink, telemetry, events, command replies) hold an
//!   [`Mqtt`] handle and call its methods ([`Mqtt::publish_result`], [`Mqtt::reply`],
//!   [`Mqtt::telemetry`], [`Mqtt::event`]); how a message is queued and spooled stays
//!   here.

mod ack;
pub mod backoff;
pub mod client;
pub mod inbound;
mod link;
pub mod options;
pub mod outbox;
#[cfg(test)]
mod tests;
pub mod topics;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use ack::{Ack, AckBook};
pub use client::ReplyTo;
// Kept here for the command handlers that stamp replies with it.
pub use crate::events::now;
pub use inbound::CommandMsg;
use outbox::Outgoing;
pub use outbox::{OutboxReport, OutboxStats};
pub use topics::Topics;

use crate::config::{FsyncMode, MqttConfig, SpoolSection};
use crate::events::Event;
use crate::service::health::Health;
use crate::sources::{Receipt, SensorMessage};
use edge_spool::{Class, FsyncPolicy, Record, Spool, SpoolConfig};

/// Messages producers may have waiting for the outbox.
const OUTBOX_QUEUE: usize = 1024;
/// How long the outbox may take to deliver what it holds at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why the MQTT link could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("MQTT TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("spool: {0}")]
    Spool(#[from] edge_spool::SpoolError),
    #[error("MQTT: cannot open the link's local socket (in the temporary directory, $TMPDIR): {0}")]
    Relay(std::io::Error),
}

/// What producers use to publish. The outbox runs while any handle lives.
#[derive(Clone)]
pub struct Mqtt {
    outbox: mpsc::Sender<Outgoing>,
    pub stats: Arc<OutboxStats>,
    pub topics: Topics,
}

/// The outbox has closed (shutdown is past the point where it takes messages).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the MQTT outbox is closed")]
pub struct Closed;

impl Mqtt {
    async fn send(
        &self,
        record: Record,
        reply: Option<ReplyTo>,
        receipts: Vec<Receipt>,
    ) -> Result<(), Closed> {
        self.outbox.send(Outgoing { record, reply, receipts }).await.map_err(|_| Closed)
    }

    /// Publishes one result of `model` (QoS 1, spooled when offline); `receipts` are
    /// settled once it is delivered or safe on disk.
    pub async fn publish_result(
        &self,
        model: &str,
        payload: Vec<u8>,
        receipts: Vec<Receipt>,
    ) -> Result<(), Closed> {
        let record = Record {
            topic: self.topics.results(model),
            qos: 1,
            retain: false,
            payload,
            class: Class::Result,
            correlation: None,
        };
        self.send(record, None, receipts).await
    }

    /// Publishes a command reply on `topic`; with `to` (an MQTT 5 request's response
    /// topic), echoing its correlation data.
    pub async fn reply(&self, topic: String, payload: Vec<u8>, to: Option<ReplyTo>) -> Result<(), Closed> {
        let correlation = to.as_ref().and_then(|r| r.correlation.clone());
        let record = Record { topic, qos: 1, retain: false, payload, class: Class::Reply, correlation };
        self.send(record, to, Vec::new()).await
    }

    /// Publishes a telemetry report (already encoded) at `qos`.
    pub async fn telemetry(&self, payload: Vec<u8>, qos: u8) -> Result<(), Closed> {
        let record = Record {
            topic: self.topics.telemetry(),
            qos,
            retain: false,
            payload,
            class: Class::Telemetry,
            correlation: None,
        };
        self.send(record, None, Vec::new()).await
    }

    /// Publishes `event`, stamped now.
    pub async fn event(&self, event: &Event) -> Result<(), Closed> {
        self.send(event_record(self.topics.events(), event), None, Vec::new()).await
    }
}

/// The MQTT side of the event sink ([`crate::events::Events`]).
impl crate::events::Publish for Mqtt {
    fn publish<'a>(
        &'a self,
        event: &'a Event,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let _ = self.event(event).await;
        })
    }
}

/// `event` (`{"ts","kind","severity","model"?,"detail"}`), stamped now, to publish on `topic`.
pub fn event_record(topic: String, event: &Event) -> Record {
    let payload = serde_json::to_vec(&event.to_json(&now())).unwrap_or_default();
    Record { topic, qos: 1, retain: false, payload, class: Class::Event, correlation: None }
}

/// At most `max` bytes of `text` (cut at a character boundary), marked `...` and with
/// the full length when cut: text from outside (topics, ids, command names) quoted in a
/// reply, an event or a log stays bounded however long the original was.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// The running link: the producers' handle, where commands arrive, and how to stop.
pub struct Started {
    pub handle: Mqtt,
    pub commands: mpsc::Receiver<CommandMsg>,
    /// Resolves when the outbox has delivered or spooled everything and disconnected.
    pub closed: tokio::task::JoinHandle<()>,
}

/// Which status document is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// Connected: the models that serve now.
    Online,
    /// A clean stop: the models that served until now.
    Offline,
    /// The last will, registered at connect time and published by the broker whenever
    /// the agent vanishes: without models, because it cannot know what will serve then
    /// (an update may come in between); the previous online status said.
    Will,
}

impl StatusKind {
    /// The `state` field.
    pub fn state(self) -> &'static str {
        match self {
            StatusKind::Online => "online",
            StatusKind::Offline | StatusKind::Will => "offline",
        }
    }
}

/// What the status says: `(kind, since)` to the payload; read at each connection and
/// now and then while connected (it is published again when it changes).
pub type StatusFn = Box<dyn Fn(StatusKind, &str) -> Vec<u8> + Send + Sync>;

/// Opens the spool and starts the link's tasks. The outbox runs until every [`Mqtt`]
/// handle is dropped; the connection stays up until then, so that the last results and
/// the offline status go out.
#[allow(clippy::too_many_arguments)]
pub fn start(
    cfg: &MqttConfig,
    spool_cfg: &SpoolSection,
    state_dir: &std::path::Path,
    device: &str,
    status: StatusFn,
    health: Arc<Health>,
    to_streams: mpsc::Sender<SensorMessage>,
    stop: CancellationToken,
    tracker: &TaskTracker,
    bytes: Arc<crate::usage::Counter>,
) -> Result<Started, MqttError> {
    let topics =
        Topics { prefix: cfg.prefix.clone(), device: device.to_string(), groups: cfg.groups.clone() };
    let (spool, fsync_every) = open_spool(spool_cfg, state_dir)?;

    let will = options::Will { topic: topics.status(), payload: status(StatusKind::Will, &now()) };
    let link_stop = CancellationToken::new();
    let tls = options::tls(cfg)?;
    let wire = crate::usage::relay::start(cfg.host.clone(), cfg.port, tls, bytes, link_stop.clone(), tracker)
        .map_err(MqttError::Relay)?;
    let (client, event_loop) = options::build(cfg, will, &wire.path)?;
    let stats = Arc::new(OutboxStats::default());
    let acks = Arc::new(AckBook::default());
    let backlog = Arc::new(link::Backlog::default());
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    // The inbound task reports refused messages through the same channel. It never keeps
    // the outbox open: the outbox ends when its producers are gone, whatever this holds.
    let link_tx_router = link_tx.clone();
    let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(OUTBOX_QUEUE);
    let (cmd_tx, cmd_rx) = mpsc::channel(64);

    let status = Arc::new(status);
    let (on, off) = (status.clone(), status);
    let presence = outbox::Presence {
        status_topic: topics.status(),
        online: Box::new(move |since: &str| on(StatusKind::Online, since)),
        offline: Box::new(move || off(StatusKind::Offline, &now())),
        events_topic: topics.events(),
    };
    let outbox =
        outbox::Outbox::new(client.clone(), spool, stats.clone(), presence, cfg.inflight, fsync_every);

    let mut subscriptions: Vec<(String, u8)> = cfg.sensors.iter().map(|s| (s.topic.clone(), s.qos)).collect();
    subscriptions.extend(topics.command_filters().into_iter().map(|f| (f, 1)));
    let link = link::Link {
        wire,
        client: client.clone(),
        event_loop,
        subscriptions,
        acks: acks.clone(),
        to_outbox: link_tx,
        inbound: inbound_tx,
        backlog: backlog.clone(),
        stats: stats.clone(),
        health,
        broker: format!("{}:{}", cfg.host, cfg.port),
        reconnect_min: cfg.reconnect_min,
        reconnect_max: cfg.reconnect_max,
        max_packet_bytes: cfg.max_packet_bytes,
        persistent: !cfg.clean_session,
        events_topic: topics.events(),
    };
    tracker.spawn(link.run(link_stop.clone()));
    let router = inbound::InboundRouter {
        topics: topics.clone(),
        stats: stats.clone(),
        events: link_tx_router,
        sensors: cfg.sensors.clone(),
        backlog,
        to_streams,
        to_commands: cmd_tx,
        stop,
    };
    tracker.spawn(router.run(inbound_rx));
    let closed = tracker.spawn(async move {
        outbox.run(out_rx, link_rx, CLOSE_GRACE).await;
        // Nothing acknowledged after this point would be backed by a delivered result.
        acks.advance();
        // Let the disconnect go out before the connection task stops.
        tokio::time::sleep(Duration::from_millis(100)).await;
        link_stop.cancel();
    });
    Ok(Started { handle: Mqtt { outbox: out_tx, stats, topics }, commands: cmd_rx, closed })
}

/// Opens the spool of undelivered messages under `state_dir` and reports what an earlier
/// run left in it. Returns it with the interval of its periodic fsync, if it has one.
fn open_spool(
    spool_cfg: &SpoolSection,
    state_dir: &std::path::Path,
) -> Result<(Spool, Option<Duration>), MqttError> {
    let fsync = match spool_cfg.fsync {
        FsyncMode::Always => FsyncPolicy::Always,
        FsyncMode::Interval => FsyncPolicy::Interval(Duration::from_millis(spool_cfg.fsync_interval_ms)),
        FsyncMode::Never => FsyncPolicy::Never,
    };
    let fsync_every = match fsync {
        FsyncPolicy::Interval(d) => Some(d),
        _ => None,
    };
    let (spool, report) = Spool::open(SpoolConfig {
        dir: state_dir.join("spool"),
        max_bytes: spool_cfg.max_bytes,
        segment_bytes: spool_cfg.segment_bytes,
        fsync,
    })?;
    if report.records > 0 || report.torn_bytes_cut > 0 || !report.bad_segments.is_empty() {
        tracing::info!(
            records = report.records,
            torn_bytes_cut = report.torn_bytes_cut,
            bad_segments = report.bad_segments.len(),
            "spool opened with undelivered messages; they go out first"
        );
    }
    for bad in &report.bad_segments {
        tracing::error!(problem = %bad, "spool segment damaged; its readable part is kept");
    }
    Ok((spool, fsync_every))
}
