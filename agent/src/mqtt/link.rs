//! The connection task: drives rumqttc's event loop, reconnects with capped exponential
//! backoff and jitter ([`super::backoff`]), subscribes on every connection, and hands what
//! arrives to the outbox (acknowledgements) and the inbound task (messages).
//!
//! A message larger than `max_packet_bytes` makes the client drop the connection (it
//! refuses the packet from its header, without reading it, which is what keeps memory
//! bounded). Under MQTT 3.1.1 the broker cannot be told the limit, and with a persistent
//! session it resends that message right after every reconnect, so no connection would
//! ever last. This task counts the message and reports it once; when the same size comes
//! back on the next connection, it connects once with a fresh session, which makes the
//! broker forget the message (and whatever else it held for us), then returns to a
//! persistent session. MQTT 5 brokers are told the limit and drop such messages
//! themselves.
//!
//! It never waits on the data path: a slow model must not stop acknowledgements from
//! flowing, or the broker would stop sending.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Kind};

use super::ack::{Ack, AckBook};
use super::backoff::{Backoff, jitter};
use super::client::{Client, EventLoop, Inbound, LinkError, LinkEvent};
use super::outbox::{LinkSignal, OutboxStats};
use crate::service::health::Health;

/// Messages waiting for the inbound task beyond which the connection stops reading.
const INBOUND_PAUSE: usize = 256;
/// ... and the backlog at which it reads again. The gap keeps the connection from
/// stopping and starting for every message: each stop also holds up the broker's
/// acknowledgements of our results, which arrive on the same socket.
const INBOUND_RESUME: usize = INBOUND_PAUSE / 2;

/// Messages the connection task handed to the inbound task and it has not taken yet,
/// with the wake-up that ends a pause.
#[derive(Default)]
pub struct Backlog {
    count: AtomicUsize,
    resume: Notify,
}

impl Backlog {
    /// The connection task handed one over.
    fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// One was taken (or given up); wakes the connection task when the backlog falls
    /// to [`INBOUND_RESUME`].
    pub fn take(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == INBOUND_RESUME + 1 {
            self.resume.notify_one();
        }
    }

    /// Returns at once below [`INBOUND_PAUSE`]; otherwise once the backlog is down to
    /// [`INBOUND_RESUME`].
    async fn room(&self) {
        if self.count.load(Ordering::Acquire) < INBOUND_PAUSE {
            return;
        }
        while self.count.load(Ordering::Acquire) > INBOUND_RESUME {
            tokio::select! {
                _ = self.resume.notified() => {}
                // A wake-up is never lost (Notify keeps one), but re-check anyway.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

/// Everything the connection task needs.
pub struct Link {
    pub client: Client,
    pub event_loop: EventLoop,
    /// The relay rumqttc connects through; it lives as long as the link.
    pub wire: crate::usage::relay::Relay,
    pub subscriptions: Vec<(String, u8)>,
    pub acks: Arc<AckBook>,
    pub to_outbox: mpsc::UnboundedSender<LinkSignal>,
    pub inbound: mpsc::UnboundedSender<(Inbound, Option<Ack>)>,
    pub backlog: Arc<Backlog>,
    pub stats: Arc<OutboxStats>,
    pub health: Arc<Health>,
    pub broker: String,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// `mqtt.max_packet_bytes`, for the oversize event.
    pub max_packet_bytes: usize,
    /// Whether the broker keeps a session for us across connections (`clean_session =
    /// false`): then it resends an unacknowledged message after every reconnect.
    pub persistent: bool,
    pub events_topic: String,
}

/// Where the connection task stands with a fresh session it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    /// Nothing under way.
    None,
    /// The next connection asks for a fresh session.
    Asked,
    /// MQTT 3.1.1: connected with a clean session, which the broker ends with the
    /// connection; leaving it so that the next connection opens a persistent one.
    Leaving,
}

/// What the connection task keeps from one event to the next.
struct Conn {
    backoff: Backoff,
    connected: bool,
    last_complaint: Option<Instant>,
    /// The size of the oversized packet that ended the last connection soon after it
    /// came up. The same size again on the next one is the broker resending it.
    oversize_streak: Option<usize>,
    reset: Reset,
}

impl Link {
    /// Runs until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut conn = Conn {
            backoff: Backoff::new(self.reconnect_min, self.reconnect_max),
            connected: false,
            last_complaint: None,
            oversize_streak: None,
            reset: Reset::None,
        };
        self.health.set_connection("mqtt", format!("connecting to {}", self.broker));
        loop {
            // A broker may send far more than the data path takes (Mosquitto does not
            // bound what it sends an MQTT 3.1.1 client): past this backlog, stop reading
            // until it drains, so the socket pushes back instead of memory growing. The
            // outbox never waits on this task, so pausing cannot close a circle.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.backlog.room() => {}
            }
            self.acks.flush(&self.client);
            let event = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                e = self.event_loop.poll() => e,
            };
            match event {
                Ok(LinkEvent::Connected { session_present, receive_maximum }) => {
                    self.connected(&mut conn, session_present, receive_maximum);
                }
                Ok(LinkEvent::Message(m)) => self.hand_inbound(m),
                Ok(LinkEvent::PubAck(pkid)) => {
                    let _ = self.to_outbox.send(LinkSignal::PubAck(pkid));
                }
                Ok(LinkEvent::Sent { pkid, waiting }) => {
                    let _ = self.to_outbox.send(LinkSignal::Sent { pkid, waiting });
                }
                Ok(LinkEvent::Other) => {}
                Err(_) if conn.reset == Reset::Leaving => {
                    // The broker closed the clean session we left: the persistent one now.
                    conn.reset = Reset::None;
                    self.event_loop.forget_pending();
                }
                Err(error) => {
                    if self.failed(&mut conn, error, &stop).await.is_break() {
                        break;
                    }
                }
            }
        }
    }

    /// A connection came up: finishes a session reset under way, then subscribes and
    /// tells the outbox.
    fn connected(&mut self, conn: &mut Conn, session_present: bool, receive_maximum: Option<u16>) {
        self.acks.advance();
        if conn.reset == Reset::Asked {
            conn.oversize_streak = None;
            self.event_loop.set_fresh_session(false);
            self.stats.session_resets.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(broker = %self.broker, session_present,
                "MQTT session discarded at the broker, with the messages it held");
            if !self.event_loop.fresh_session_persists() {
                // A 3.1.1 clean session would lose whatever arrives while we are
                // away: leave at once (a clean disconnect, so no last will) and
                // come back with a persistent one. Nothing is subscribed yet.
                conn.reset = Reset::Leaving;
                if self.client.try_disconnect().is_err() {
                    // No room to say goodbye: drop the connection (the broker
                    // then publishes the last will, and the next online status
                    // replaces it); the next poll connects again.
                    self.event_loop.forget_pending();
                    conn.reset = Reset::None;
                }
                return;
            }
            conn.reset = Reset::None;
        }
        conn.connected = true;
        conn.backoff.connected(Instant::now());
        for (filter, qos) in &self.subscriptions {
            if let Err(e) = self.client.try_subscribe(filter, *qos) {
                tracing::error!(%filter, error = %e, "cannot subscribe");
            }
        }
        tracing::info!(broker = %self.broker, session_present, "MQTT connected");
        self.health.set_connection("mqtt", format!("connected to {}", self.broker));
        let _ = self.to_outbox.send(LinkSignal::Up { receive_maximum });
    }

    /// A message arrived: registers its acknowledgement and hands it to the inbound task.
    fn hand_inbound(&self, m: Inbound) {
        // Registered here, at receipt: acknowledgements go out in this order,
        // and only on this connection.
        let ack = (m.qos > 0).then(|| Ack::new(self.client.clone(), m.pkid, self.acks.clone()));
        self.backlog.add();
        if self.inbound.send((m, ack)).is_err() {
            self.backlog.take();
        }
    }

    /// The connection failed or could not be made: settles what the old connection
    /// held, decides on a session reset, then waits out the backoff. Breaks when the
    /// task is to end.
    async fn failed(
        &mut self,
        conn: &mut Conn,
        error: LinkError,
        stop: &CancellationToken,
    ) -> ControlFlow<()> {
        if self.to_outbox.is_closed() {
            // The outbox said goodbye and disconnected: this is the end.
            return ControlFlow::Break(());
        }
        // rumqttc only saw its local socket close when the relay could not reach the
        // broker: the relay's reason is the one to report.
        let error = match (error, self.wire.last_error().take()) {
            (LinkError::Other(_), Some(reason)) => LinkError::Other(reason),
            (error, _) => error,
        };
        let now = Instant::now();
        let was_healthy = conn.backoff.healthy(now);
        let base = conn.backoff.failed(now);
        let was_connected = conn.connected;
        // Acknowledgements of messages from the lost connection must not go
        // out on the next one.
        self.acks.advance();
        if conn.connected {
            conn.connected = false;
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(broker = %self.broker, %error, "MQTT connection lost; spooling until it is back");
            outbox_down(&self.to_outbox, stop).await?;
        } else if conn.last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            tracing::warn!(broker = %self.broker, %error, retry_ms = base.as_millis() as u64,
                "cannot connect to the MQTT broker; retrying (spooling meanwhile)");
            conn.last_complaint = Some(Instant::now());
        }
        let asked = self.reset_after(conn, &error, was_healthy, was_connected);
        self.health.set_connection("mqtt", format!("disconnected from {}: {error}", self.broker));
        self.event_loop.forget_pending();
        if asked {
            // The cause is known and the fresh session removes it: no wait. This
            // happens once per oversized message, so it cannot become a loop.
            return ControlFlow::Continue(());
        }
        tracing::debug!(retry_ms = base.as_millis() as u64, "MQTT reconnect backoff");
        tokio::select! {
            _ = tokio::time::sleep(jitter(base)) => ControlFlow::Continue(()),
            _ = stop.cancelled() => ControlFlow::Break(()),
        }
    }

    /// Keeps track of oversized packets across connections and returns whether the next
    /// connection asks for a fresh session.
    fn reset_after(
        &mut self,
        conn: &mut Conn,
        error: &LinkError,
        was_healthy: bool,
        was_connected: bool,
    ) -> bool {
        match error {
            LinkError::Oversize { size } => {
                // Only a persistent session brings a message back; a message of
                // the same size long after the connect is a new one.
                let resent = self.persistent && conn.oversize_streak == Some(*size) && !was_healthy;
                conn.oversize_streak = Some(*size);
                let asked = self.oversize(*size, resent);
                if asked {
                    conn.reset = Reset::Asked;
                }
                asked
            }
            // A connection attempt that failed says nothing about the message
            // that ended the connection before.
            LinkError::Other(_) if !was_connected => false,
            LinkError::Other(_) => {
                conn.oversize_streak = None;
                false
            }
        }
    }

    /// An oversized packet ended the connection. A new message is counted and reported
    /// once (with its size and the limit; the client never read its topic). The same
    /// message resent by the broker (`resent`) would end every connection from now on:
    /// the next connection asks for a fresh session, so that the broker forgets it,
    /// along with everything else it held for us. Returns whether to do that.
    fn oversize(&mut self, size: usize, resent: bool) -> bool {
        let limit = self.max_packet_bytes;
        if !resent {
            self.stats.oversize.fetch_add(1, Ordering::Relaxed);
            tracing::error!(size, limit, broker = %self.broker,
                "the broker sent a message larger than mqtt.max_packet_bytes; it is dropped and the \
                 connection with it (set the broker's message_size_limit at or below the limit, or \
                 use MQTT 5, which tells the broker the limit)");
            self.event(
                Kind::MessageOversize,
                serde_json::json!({
                    "size": size,
                    "limit": limit,
                    "error": format!("a message of {size} bytes from the broker is over mqtt.max_packet_bytes ({limit}); \
                        it was dropped unread, and the connection with it"),
                }),
            );
            return false;
        }
        self.event_loop.set_fresh_session(true);
        tracing::error!(size, limit, broker = %self.broker,
            "the broker resends the oversized message after every reconnect; discarding the MQTT \
             session (the messages the broker holds for this device are lost)");
        self.event(
            Kind::SessionReset,
            serde_json::json!({
                "size": size,
                "limit": limit,
                "error": format!("the broker resent the message of {size} bytes (over mqtt.max_packet_bytes, {limit}) \
                    after the reconnect; the session was discarded to get past it, and with it every \
                    message the broker held for this device"),
            }),
        );
        true
    }

    /// Queues an event (through the outbox, which spools it while offline).
    fn event(&self, kind: Kind, detail: serde_json::Value) {
        let record = super::event_record(self.events_topic.clone(), &Event::error(kind, detail));
        let _ = self.to_outbox.send(LinkSignal::Event(record));
    }
}

/// Tells the outbox the connection is down and waits until it has taken back what was
/// in flight. Breaks if `stop` fires meanwhile. (A free function: `Link` holds the event
/// loop, which is not `Sync`, so a `&Link` cannot live across this await.)
async fn outbox_down(
    to_outbox: &mpsc::UnboundedSender<LinkSignal>,
    stop: &CancellationToken,
) -> ControlFlow<()> {
    let (tx, rx) = oneshot::channel();
    if to_outbox.send(LinkSignal::Down(tx)).is_ok() {
        tokio::select! {
            _ = rx => {}
            _ = stop.cancelled() => return ControlFlow::Break(()),
        }
    }
    ControlFlow::Continue(())
}
