//! The connection task: drives rumqttc's event loop, reconnects with capped exponential
//! backoff and jitter, subscribes on every connection, and hands what arrives to the
//! outbox (acknowledgements) and the inbound task (messages).
//!
//! It never waits on the data path: a slow model must not stop acknowledgements from
//! flowing, or the broker would stop sending.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::ack::{Ack, AckBook};
use super::client::{Client, EventLoop, Inbound, LinkEvent};
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
}

impl Link {
    /// Runs until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = self.reconnect_min;
        let mut connected = false;
        let mut last_complaint: Option<Instant> = None;
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
                    self.acks.advance();
                    connected = true;
                    backoff = self.reconnect_min;
                    for (filter, qos) in &self.subscriptions {
                        if let Err(e) = self.client.try_subscribe(filter, *qos) {
                            tracing::error!(%filter, error = %e, "cannot subscribe");
                        }
                    }
                    tracing::info!(broker = %self.broker, session_present, "MQTT connected");
                    self.health.set_connection("mqtt", format!("connected to {}", self.broker));
                    let _ = self.to_outbox.send(LinkSignal::Up { receive_maximum });
                }
                Ok(LinkEvent::Message(m)) => {
                    // Registered here, at receipt: acknowledgements go out in this order,
                    // and only on this connection.
                    let ack = (m.qos > 0).then(|| Ack::new(self.client.clone(), m.pkid, self.acks.clone()));
                    self.backlog.add();
                    if self.inbound.send((m, ack)).is_err() {
                        self.backlog.take();
                    }
                }
                Ok(LinkEvent::PubAck(pkid)) => {
                    let _ = self.to_outbox.send(LinkSignal::PubAck(pkid));
                }
                Ok(LinkEvent::Sent { pkid, waiting }) => {
                    let _ = self.to_outbox.send(LinkSignal::Sent { pkid, waiting });
                }
                Ok(LinkEvent::Other) => {}
                Err(error) => {
                    if self.to_outbox.is_closed() {
                        // The outbox said goodbye and disconnected: this is the end.
                        break;
                    }
                    // Acknowledgements of messages from the lost connection must not go
                    // out on the next one.
                    self.acks.advance();
                    if connected {
                        connected = false;
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(broker = %self.broker, %error, "MQTT connection lost; spooling until it is back");
                        let (tx, rx) = oneshot::channel();
                        if self.to_outbox.send(LinkSignal::Down(tx)).is_ok() {
                            tokio::select! {
                                _ = rx => {}
                                _ = stop.cancelled() => break,
                            }
                        }
                    } else if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(broker = %self.broker, %error, retry_ms = backoff.as_millis() as u64,
                            "cannot connect to the MQTT broker; retrying (spooling meanwhile)");
                        last_complaint = Some(Instant::now());
                    }
                    self.health.set_connection("mqtt", format!("disconnected from {}: {error}", self.broker));
                    self.event_loop.forget_pending();
                    let sleep = jitter(backoff);
                    backoff = (backoff * 2).min(self.reconnect_max);
                    tokio::select! {
                        _ = tokio::time::sleep(sleep) => {}
                        _ = stop.cancelled() => break,
                    }
                }
            }
        }
    }
}

/// A delay between half and all of `d`, so that a fleet that lost its broker at once
/// does not come back at once.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}
