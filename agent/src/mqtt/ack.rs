//! Acknowledging received QoS 1 messages once the agent no longer needs the broker's copy,
//! in the order they arrived.
//!
//! MQTT requires PUBACKs in the order of the PUBLISHes (3.1.1 and 5, section 4.6), and
//! brokers rely on it: Mosquitto 2.0 was measured here delivering a topic's queued
//! messages out of order when acknowledgements came out of order (the agent's streams
//! finish at different times). So an acknowledgement that is ready waits for the ones
//! before it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::client::Client;
use crate::sources::{Receipt, Settled};

/// The acknowledgements owed on the current connection, in arrival order.
#[derive(Default)]
pub struct AckBook {
    inner: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// Each connection and each loss of one starts a new generation. An acknowledgement
    /// is only valid on the connection its message came on: after a reconnect the broker
    /// resends the message itself, and an old packet id could name a different message.
    generation: u64,
    /// Number of the first entry in `queue`.
    first: u64,
    /// Packet id and state of each message not yet acknowledged, oldest first.
    queue: VecDeque<(u16, Slot)>,
    /// The client's request queue refused the acknowledgement at the front: it stays
    /// there, and [`AckBook::flush`] tries again.
    stalled: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Waiting,
    Ready,
    /// Left for the broker to deliver again.
    Forgotten,
}

impl AckBook {
    /// A new connection (or the loss of one): what is owed on the old one is void.
    pub fn advance(&self) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.generation += 1;
        b.first += b.queue.len() as u64;
        b.queue.clear();
        b.stalled = false;
    }

    /// Sends the acknowledgements at the front that are ready, if one was refused
    /// before (the connection task calls this on every turn; it costs a lock).
    pub fn flush(&self, client: &Client) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if b.stalled {
            b.send_ready(client);
        }
    }

    fn register(&self, pkid: u16) -> (u64, u64) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.queue.push_back((pkid, Slot::Waiting));
        (b.generation, b.first + b.queue.len() as u64 - 1)
    }

    /// Marks one entry and sends every acknowledgement at the front that is ready.
    fn settle(&self, generation: u64, number: u64, slot: Slot, client: &Client) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if b.generation != generation || number < b.first {
            return;
        }
        let index = (number - b.first) as usize;
        if let Some(entry) = b.queue.get_mut(index) {
            entry.1 = slot;
        }
        b.send_ready(client);
    }
}

impl Book {
    fn send_ready(&mut self, client: &Client) {
        self.stalled = false;
        while let Some((pkid, state)) = self.queue.front().copied() {
            match state {
                Slot::Waiting => break,
                Slot::Ready => {
                    // Never dropped while the connection lives: the broker would hold
                    // the message in flight for ever, and once enough are held it stops
                    // sending (measured: a stall after about 107,000 messages of a
                    // flood, when the request queue was full). Kept, it goes out later.
                    if let Err(e) = client.try_ack(pkid) {
                        tracing::debug!(pkid, error = %e, "acknowledgement refused by the request queue; will retry");
                        self.stalled = true;
                        break;
                    }
                }
                Slot::Forgotten => {}
            }
            self.queue.pop_front();
            self.first += 1;
        }
    }
}

/// The broker's copy of one QoS 1 message. Dropping it acknowledges the message (after
/// every earlier one), so every path (a result delivered or spooled, a message that
/// failed to decode, a stream that ended) acknowledges exactly once, and only a crash
/// leaves it unacknowledged (then the broker delivers it again).
pub struct Ack {
    client: Client,
    book: Arc<AckBook>,
    generation: u64,
    number: u64,
    armed: bool,
}

impl Ack {
    pub fn new(client: Client, pkid: u16, book: Arc<AckBook>) -> Ack {
        let (generation, number) = book.register(pkid);
        Ack { client, book, generation, number, armed: true }
    }

    /// Leaves the message unacknowledged: the broker will deliver it again (a message
    /// the agent stopped before handling).
    pub fn forget(mut self) {
        self.armed = false;
        self.book.settle(self.generation, self.number, Slot::Forgotten, &self.client);
    }
}

/// What the data path carries: settled as handled, the message is acknowledged;
/// forgotten, the broker delivers it again.
impl From<Ack> for Receipt {
    fn from(ack: Ack) -> Receipt {
        Receipt::new(move |how| match how {
            Settled::Handled => drop(ack),
            Settled::Forgotten => ack.forget(),
        })
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ack(#{})", self.number)
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if self.armed {
            self.book.settle(self.generation, self.number, Slot::Ready, &self.client);
        }
    }
}
