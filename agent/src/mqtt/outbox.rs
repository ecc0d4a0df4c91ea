//! The outbox: everything the agent publishes, in order, exactly where it should go.
//!
//! While connected and caught up, messages go from memory straight to the broker with
//! QoS 1, and the sensor messages they answer are acknowledged when the broker
//! acknowledges them. When the connection drops, whatever was in flight or waiting goes
//! to the on-disk spool (and is then acknowledged upstream: it is safe), as does
//! everything accepted while offline. After reconnecting, the spool is replayed in
//! order before anything newer, and a record leaves the spool only once the broker has
//! acknowledged it: at least once, never out of order.
//!
//! This task is the only owner of the spool and the only publisher, which is what keeps
//! the order. Packet ids are matched to records by order: rumqttc reports each publish
//! it writes in the order it was handed over.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::client::{Client, ReplyTo};
use crate::events::{Event, Kind, Severity};
use crate::sources::Receipt;
use edge_spool::{Class, Dropped, Record, Spool};

/// Messages waiting in memory while connected; beyond this the producers wait.
const MEMORY_QUEUE: usize = 1024;
/// Records moved from the data channel per turn, appended to the spool in one batch.
const BATCH: usize = 256;
/// How often the spool's delivery cursor is written.
const CURSOR_EVERY: Duration = Duration::from_millis(200);
/// How often the online status is rebuilt to see whether it changed: a few small
/// allocations, and a model change reaches the retained status within this.
const STATUS_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Overflow events at most this often (each carries the totals).
const OVERFLOW_EVENT_EVERY: Duration = Duration::from_secs(60);

/// The outbox's window. rumqttc takes no request at all (acknowledgements of received
/// messages included) while its own in-flight window is full, so ours must stay below
/// it: `options` gives rumqttc twice the configured window, and under MQTT 5, where the
/// broker's receive maximum caps rumqttc's window, ours stays one below that.
fn window_for(configured: u16, receive_maximum: Option<u16>) -> usize {
    let cap = receive_maximum.map_or(u16::MAX, |r| r.saturating_sub(1).max(1));
    usize::from(configured.min(cap).max(1))
}

/// Runs spool I/O (which may fsync) without stalling the runtime's other tasks.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// One message to publish, with the sensor messages it answers.
pub struct Outgoing {
    pub record: Record,
    pub reply: Option<ReplyTo>,
    /// Dropped (so settled as handled) once the record is delivered or safe on disk.
    pub receipts: Vec<Receipt>,
}

/// What the connection task tells the outbox.
#[derive(Debug)]
pub enum LinkSignal {
    Up {
        receive_maximum: Option<u16>,
    },
    /// The connection is lost; answer once nothing more will be handed to the client.
    Down(oneshot::Sender<()>),
    Sent {
        pkid: u16,
        waiting: bool,
    },
    PubAck(u16),
    /// An event from the link's side (an oversized message, a refused one), published
    /// like any other: in order, through the spool while offline.
    Event(Record),
}

/// Counters shared with telemetry, status and tests.
#[derive(Debug, Default)]
pub struct OutboxStats {
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub reconnects: AtomicU64,
    pub spool_records: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_errors: AtomicU64,
    pub dropped_result: AtomicU64,
    pub dropped_event: AtomicU64,
    pub dropped_reply: AtomicU64,
    pub dropped_telemetry: AtomicU64,
    pub oversize: AtomicU64,
    pub session_resets: AtomicU64,
    pub bad_stream: AtomicU64,
    /// Classes `spool/flush` asked to drop, not yet taken up by the outbox.
    flush: std::sync::Mutex<Vec<Class>>,
}

/// A snapshot for reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct OutboxReport {
    pub connected: bool,
    pub published: u64,
    pub reconnects: u64,
    pub spool_records: u64,
    pub spool_bytes: u64,
    pub spool_errors: u64,
    pub dropped: DroppedReport,
    /// Messages from the broker over `mqtt.max_packet_bytes`, dropped unread (each cost
    /// the connection it came on).
    pub oversize: u64,
    /// Times the broker's session was discarded, with every message it held for this
    /// device, to get past an oversized message it kept resending.
    pub session_resets: u64,
    /// Sensor messages dropped because the topic level named by `stream_level` is empty
    /// or not an id.
    pub bad_stream: u64,
}

/// Messages dropped since start, by class.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Default)]
pub struct DroppedReport {
    pub telemetry: u64,
    pub result: u64,
    pub event: u64,
    pub reply: u64,
}

impl OutboxStats {
    /// Asks the outbox to drop what the spool holds of `classes` now (`spool/flush`).
    pub fn request_flush(&self, classes: &[Class]) {
        if let Ok(mut f) = self.flush.lock() {
            f.extend_from_slice(classes);
        }
    }

    fn take_flush(&self) -> Vec<Class> {
        self.flush.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default()
    }

    pub fn report(&self) -> OutboxReport {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OutboxReport {
            connected: self.connected.load(Ordering::Relaxed),
            published: l(&self.published),
            reconnects: l(&self.reconnects),
            spool_records: l(&self.spool_records),
            spool_bytes: l(&self.spool_bytes),
            spool_errors: l(&self.spool_errors),
            dropped: DroppedReport {
                telemetry: l(&self.dropped_telemetry),
                result: l(&self.dropped_result),
                event: l(&self.dropped_event),
                reply: l(&self.dropped_reply),
            },
            oversize: l(&self.oversize),
            session_resets: l(&self.session_resets),
            bad_stream: l(&self.bad_stream),
        }
    }

    fn add_dropped(&self, d: &Dropped) {
        self.dropped_result.fetch_add(d.result, Ordering::Relaxed);
        self.dropped_event.fetch_add(d.event, Ordering::Relaxed);
        self.dropped_reply.fetch_add(d.reply, Ordering::Relaxed);
        self.dropped_telemetry.fetch_add(d.telemetry, Ordering::Relaxed);
    }
}

/// A message on its way: from memory (`spool_id` None) or replayed from the spool.
struct Entry {
    record: Record,
    reply: Option<ReplyTo>,
    /// Held, never read: dropping the entry acknowledges its sensor messages.
    #[allow(dead_code)]
    receipts: Vec<Receipt>,
    spool_id: Option<u64>,
    /// Status messages are state, not history: never spooled (the next connection
    /// publishes a fresh one).
    spoolable: bool,
}

struct InFlight {
    entry: Entry,
    pkid: Option<u16>,
}

/// What the outbox needs to say who it is when it connects and leaves.
/// The online status's payload, given the connection's `since`.
pub type OnlineFn = Box<dyn Fn(&str) -> Vec<u8> + Send>;

pub struct Presence {
    pub status_topic: String,
    /// The retained online status, given the time the connection came up (its `since`):
    /// built at each connection, and again now and then to see whether it changed.
    pub online: OnlineFn,
    /// The retained offline status published at a clean shutdown.
    pub offline: Box<dyn Fn() -> Vec<u8> + Send>,
    pub events_topic: String,
}

pub struct Outbox {
    client: Client,
    spool: Spool,
    stats: Arc<OutboxStats>,
    presence: Presence,
    /// When this connection came up, and the online status last handed over on it: the
    /// status is published again when what it says changes (a model updated, rolled back
    /// or pulled), so the retained copy that fleet tools read stays current.
    online_since: String,
    last_status: Vec<u8>,
    /// Our QoS 1 publishes in flight at most: the configured `inflight`, lowered to
    /// stay under an MQTT 5 broker's receive maximum.
    window: usize,
    configured_window: u16,
    connected: bool,
    memory: VecDeque<Entry>,
    inflight: VecDeque<InFlight>,
    /// Spool ids handed to the client and not yet acknowledged.
    handed: BTreeSet<u64>,
    last_handed: u64,
    acked: u64,
    /// A packet id rumqttc is holding back (collision); its later `Sent` is not a new record.
    waiting_pkid: Option<u16>,
    last_overflow_event: Option<Instant>,
    /// Dropped messages already reported by an event.
    drops_reported: u64,
    fsync_every: Option<Duration>,
    /// `spool/flush`: records of a class up to an id are dropped unsent when read.
    discard: Vec<(Class, u64)>,
}

impl Outbox {
    pub fn new(
        client: Client,
        spool: Spool,
        stats: Arc<OutboxStats>,
        presence: Presence,
        window: u16,
        fsync_every: Option<Duration>,
    ) -> Outbox {
        let acked = spool.stats().acked;
        let outbox = Outbox {
            client,
            spool,
            stats,
            presence,
            online_since: String::new(),
            last_status: Vec::new(),
            window: usize::from(window.max(1)),
            configured_window: window.max(1),
            connected: false,
            memory: VecDeque::new(),
            inflight: VecDeque::new(),
            handed: BTreeSet::new(),
            last_handed: acked,
            acked,
            waiting_pkid: None,
            last_overflow_event: None,
            drops_reported: 0,
            fsync_every,
            discard: Vec::new(),
        };
        outbox.update_stats();
        outbox
    }

    /// Runs until `data` closes (every producer is gone) and what it held is delivered
    /// (or `grace` passes), then says goodbye and disconnects.
    pub async fn run(
        mut self,
        mut data: mpsc::Receiver<Outgoing>,
        mut link: mpsc::UnboundedReceiver<LinkSignal>,
        grace: Duration,
    ) {
        let mut cursor = tokio::time::interval(CURSOR_EVERY);
        cursor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fsync = tokio::time::interval(self.fsync_every.unwrap_or(Duration::from_secs(3600)));
        fsync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_check = tokio::time::interval(STATUS_CHECK_EVERY);
        status_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        let mut closing_since: Option<Instant> = None;
        loop {
            // Always taking messages: a full memory queue overflows to the spool, so
            // producers never wait on the broker (and the connection task may pause
            // reading without anything waiting on it in a circle).
            let accepting = open;
            tokio::select! {
                biased;
                sig = link.recv() => match sig {
                    Some(sig) => self.on_link(sig),
                    None => break,
                },
                msg = data.recv(), if accepting => match msg {
                    Some(first) => {
                        let mut batch = vec![first];
                        while batch.len() < BATCH {
                            match data.try_recv() {
                                Ok(m) => batch.push(m),
                                Err(_) => break,
                            }
                        }
                        self.accept(batch);
                    }
                    None => {
                        open = false;
                        closing_since = Some(Instant::now());
                    }
                },
                _ = cursor.tick() => self.persist_cursor(),
                _ = status_check.tick(), if open => self.refresh_status(),
                _ = fsync.tick(), if self.fsync_every.is_some() => self.sync(),
            }
            self.pump();
            if let Some(since) = closing_since {
                let drained = self.memory.is_empty() && self.inflight.is_empty() && self.spool.is_empty();
                if drained || !self.connected || since.elapsed() > grace {
                    break;
                }
            }
        }
        self.finish(&mut link).await;
    }

    /// Takes a batch of new messages: to memory when the way to the broker is clear,
    /// otherwise to the spool (and then their sensor messages are acknowledged).
    fn accept(&mut self, batch: Vec<Outgoing>) {
        let mut to_spool = Vec::new();
        for out in batch {
            let entry = Entry {
                record: out.record,
                reply: out.reply,
                receipts: out.receipts,
                spool_id: None,
                spoolable: true,
            };
            // Memory only while nothing older waits on disk: the spool is replayed
            // first, so anything newer must queue behind it.
            if self.connected && self.spool.is_empty() && self.memory.len() >= MEMORY_QUEUE {
                self.overflow_to_spool();
            }
            if self.connected && self.spool.is_empty() {
                self.memory.push_back(entry);
            } else {
                to_spool.push(entry);
            }
        }
        self.spill(to_spool);
    }

    /// The broker takes messages more slowly than they come: everything not yet
    /// acknowledged moves to the spool, in order, the messages already in flight first
    /// (they are older). Those stay in flight and are marked as read from the spool, so
    /// that a lost connection replays them from there, before everything newer.
    fn overflow_to_spool(&mut self) {
        let in_flight: Vec<usize> = (0..self.inflight.len())
            .filter(|&i| self.inflight[i].entry.spool_id.is_none() && self.inflight[i].entry.spoolable)
            .collect();
        let mut records: Vec<Record> =
            in_flight.iter().map(|&i| self.inflight[i].entry.record.clone()).collect();
        records.extend(self.memory.iter().map(|e| e.record.clone()));
        let ids = match blocking(|| self.spool.append_batch(&records)) {
            Ok((ids, dropped)) => {
                self.note_dropped(dropped);
                ids
            }
            Err(e) => {
                self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot spool the backlog; it stays in memory");
                return;
            }
        };
        // The in-flight copies come first: read them past, they are already handed over.
        match blocking(|| self.spool.next_batch(in_flight.len())) {
            Ok(read) if read.len() == in_flight.len() => {
                for (&i, (id, _)) in in_flight.iter().zip(read) {
                    self.inflight[i].entry.spool_id = Some(id);
                    self.handed.insert(id);
                    self.last_handed = self.last_handed.max(id);
                }
            }
            other => {
                // Cannot happen with a spool that was empty; if it does, the in-flight
                // messages are sent once more after the spool (at least once).
                tracing::warn!(read = ?other.map(|r| r.len()), expected = in_flight.len(), ids = ids.len(),
                    "spool overflow: in-flight messages not matched; they may be sent twice");
                self.spool.rewind();
            }
        }
        // The queue is on disk now: its sensor messages may be acknowledged.
        self.memory.clear();
        self.update_stats();
        tracing::debug!(
            count = records.len(),
            "broker slower than the data path: backlog moved to the spool"
        );
    }

    /// Appends entries to the spool in order; their acknowledgements go once they are
    /// there. If the disk refuses, they stay in memory (unacknowledged) to go out later.
    fn spill(&mut self, entries: Vec<Entry>) {
        let entries: Vec<Entry> = entries.into_iter().filter(|e| e.spoolable).collect();
        if entries.is_empty() {
            return;
        }
        let records: Vec<Record> = entries.iter().map(|e| e.record.clone()).collect();
        match blocking(|| self.spool.append_batch(&records)) {
            Ok((_, dropped)) => {
                drop(entries);
                self.note_dropped(dropped);
            }
            Err(e) => {
                self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, count = entries.len(), "cannot spool messages; keeping them in memory");
                // Newest last, behind whatever already waits.
                self.memory.extend(entries);
            }
        }
        self.update_stats();
    }

    fn note_dropped(&mut self, dropped: Dropped) {
        if dropped.total() == 0 {
            return;
        }
        self.stats.add_dropped(&dropped);
        let totals = self.stats.report().dropped;
        tracing::warn!(
            telemetry = dropped.telemetry,
            results = dropped.result,
            events = dropped.event,
            replies = dropped.reply,
            "spool full: oldest messages dropped; raise spool.max_bytes or restore the broker link"
        );
        if self.last_overflow_event.is_some_and(|t| t.elapsed() < OVERFLOW_EVENT_EVERY) {
            return;
        }
        self.last_overflow_event = Some(Instant::now());
        self.drops_reported = totals.telemetry + totals.result + totals.event + totals.reply;
        let severity = if dropped.total() == dropped.telemetry { Severity::Warning } else { Severity::Error };
        let event = Event::new(
            Kind::SpoolOverflow,
            severity,
            serde_json::json!({"dropped_now": dropped, "dropped_total": totals}),
        );
        let record = super::event_record(self.presence.events_topic.clone(), &event);
        // Straight into the spool (we are offline or behind): one record, so it cannot
        // itself need much room.
        match self.spool.append(&record) {
            Ok((_, more)) => self.stats.add_dropped(&more),
            Err(e) => tracing::error!(error = %e, "cannot spool the overflow event"),
        }
    }

    /// Back online after losing messages: one event with the totals, queued behind the
    /// spool (an event written at the moment of overflow may itself have been dropped
    /// since, as the oldest record).
    fn report_drops_since_last(&mut self) {
        let totals = self.stats.report().dropped;
        let total = totals.telemetry + totals.result + totals.event + totals.reply;
        if total == self.drops_reported {
            return;
        }
        self.drops_reported = total;
        let severity = if total == totals.telemetry { Severity::Warning } else { Severity::Error };
        let event = Event::new(
            Kind::SpoolOverflow,
            severity,
            serde_json::json!({"dropped_total": totals, "while": "offline"}),
        );
        let record = super::event_record(self.presence.events_topic.clone(), &event);
        self.accept(vec![Outgoing { record, reply: None, receipts: Vec::new() }]);
    }

    /// Hands over the retained online status if it differs from the last one handed
    /// over on this connection.
    fn refresh_status(&mut self) {
        if !self.connected {
            return;
        }
        let online = (self.presence.online)(&self.online_since);
        if online == self.last_status {
            return;
        }
        self.last_status = online.clone();
        let status = Entry {
            record: Record {
                topic: self.presence.status_topic.clone(),
                qos: 1,
                retain: true,
                payload: online,
                class: Class::Event,
                correlation: None,
            },
            reply: None,
            receipts: Vec::new(),
            spool_id: None,
            spoolable: false,
        };
        // A refused status is not retried: the next connection sends a fresh one.
        let _ = self.hand_over(status);
    }

    fn on_link(&mut self, sig: LinkSignal) {
        match sig {
            LinkSignal::Up { receive_maximum } => {
                self.window = window_for(self.configured_window, receive_maximum);
                self.connected = true;
                self.stats.connected.store(true, Ordering::Relaxed);
                self.report_drops_since_last();
                self.online_since = super::now();
                self.last_status.clear();
                self.refresh_status();
            }
            LinkSignal::Down(done) => {
                self.connected = false;
                self.stats.connected.store(false, Ordering::Relaxed);
                // Spool records in flight are still in the spool: read them again later.
                self.spool.rewind();
                self.handed.clear();
                self.last_handed = self.acked;
                self.waiting_pkid = None;
                let back = self.take_unsent();
                self.spill(back);
                let _ = done.send(());
            }
            LinkSignal::Sent { pkid, waiting } => {
                if !waiting && self.waiting_pkid == Some(pkid) {
                    // The held-back publish went out now; it was matched when held back.
                    self.waiting_pkid = None;
                    return;
                }
                if waiting {
                    self.waiting_pkid = Some(pkid);
                }
                let Some(pos) = self.inflight.iter().position(|f| f.pkid.is_none()) else {
                    tracing::debug!(pkid, "a publish the outbox did not hand over");
                    return;
                };
                if pkid == 0 {
                    // QoS 0: written is all that will ever happen to it.
                    if let Some(f) = self.inflight.remove(pos) {
                        self.complete(f.entry);
                    }
                } else if let Some(f) = self.inflight.get_mut(pos) {
                    f.pkid = Some(pkid);
                }
            }
            LinkSignal::Event(record) => {
                self.accept(vec![Outgoing { record, reply: None, receipts: Vec::new() }]);
            }
            LinkSignal::PubAck(pkid) => {
                let Some(pos) = self.inflight.iter().position(|f| f.pkid == Some(pkid)) else {
                    tracing::debug!(pkid, "acknowledgement for a publish not in flight");
                    return;
                };
                if let Some(f) = self.inflight.remove(pos) {
                    self.complete(f.entry);
                }
            }
        }
    }

    /// A record is delivered: release its spool space and its sensor messages.
    fn complete(&mut self, entry: Entry) {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = entry.spool_id {
            self.release(id);
        }
        drop(entry);
    }

    /// A spool record is done with (delivered or flushed): acknowledges the spool up to
    /// the oldest record still handed out.
    fn release(&mut self, id: u64) {
        self.handed.remove(&id);
        let through = match self.handed.first() {
            Some(first) => first - 1,
            None => self.last_handed,
        };
        if through > self.acked {
            self.acked = through;
            self.spool.ack_through(through);
            self.update_stats();
        }
    }

    /// A spool record dropped unsent by `spool/flush`: released like a delivered one,
    /// counted as dropped.
    fn flushed(&mut self, id: u64, class: Class) {
        self.release(id);
        let counter = match class {
            Class::Telemetry => &self.stats.dropped_telemetry,
            Class::Result => &self.stats.dropped_result,
            Class::Event => &self.stats.dropped_event,
            Class::Reply => &self.stats.dropped_reply,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands records to the client while the in-flight window has room: the spool's
    /// first (it is older), then memory.
    fn pump(&mut self) {
        let flush = self.stats.take_flush();
        if !flush.is_empty() {
            // What the spool holds now: everything before the next id.
            let through = self.spool.stats().next_id.saturating_sub(1);
            for class in flush {
                self.discard.retain(|(c, _)| *c != class);
                self.discard.push((class, through));
            }
        }
        while self.connected && self.inflight.len() < self.window {
            if self.spool.has_unread() {
                let room = self.window - self.inflight.len();
                match blocking(|| self.spool.next_batch(room)) {
                    Ok(batch) if !batch.is_empty() => {
                        for (id, record) in batch {
                            self.handed.insert(id);
                            self.last_handed = self.last_handed.max(id);
                            if self.discard.iter().any(|(c, through)| *c == record.class && id <= *through) {
                                self.flushed(id, record.class);
                                continue;
                            }
                            let reply = record.correlation.clone().map(|c| ReplyTo { correlation: Some(c) });
                            // Replayed history always goes with QoS 1.
                            let record = Record { qos: 1, ..record };
                            let entry = Entry {
                                record,
                                reply,
                                receipts: Vec::new(),
                                spool_id: Some(id),
                                spoolable: true,
                            };
                            if !self.hand_over(entry) {
                                return;
                            }
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "cannot read the spool; will retry");
                        break;
                    }
                }
            } else if let Some(entry) = self.memory.pop_front() {
                if !self.hand_over(entry) {
                    return;
                }
            } else {
                break;
            }
        }
    }

    /// Hands one message to the client; false if the client's queue refused it (the
    /// message is kept: in memory, or in the spool to be read again).
    fn hand_over(&mut self, entry: Entry) -> bool {
        let r = &entry.record;
        match self.client.try_publish(&r.topic, r.qos, r.retain, r.payload.clone(), entry.reply.as_ref()) {
            Ok(()) => {
                self.inflight.push_back(InFlight { entry, pkid: None });
                true
            }
            Err(e) => {
                // The request queue is sized far above the window; this means the event
                // loop is gone or stalled. Try again later.
                tracing::warn!(error = %e, "cannot hand a message to the MQTT client; will retry");
                match entry.spool_id {
                    None => self.memory.push_front(entry),
                    Some(id) => {
                        // Not handed after all: read it (and what follows) again later.
                        self.handed.remove(&id);
                        self.spool.rewind();
                        self.last_handed = self.handed.last().copied().unwrap_or(self.acked);
                    }
                }
                false
            }
        }
    }

    /// Everything handed to the client or waiting in memory that is not in the spool,
    /// oldest first (in flight before waiting); spool records are read again from there.
    fn take_unsent(&mut self) -> Vec<Entry> {
        let mut unsent: Vec<Entry> =
            self.inflight.drain(..).map(|f| f.entry).filter(|e| e.spool_id.is_none()).collect();
        unsent.extend(self.memory.drain(..));
        unsent
    }

    fn persist_cursor(&mut self) {
        if let Err(e) = blocking(|| self.spool.persist_cursor()) {
            self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot record spool progress; some messages may be sent twice");
        }
    }

    fn sync(&mut self) {
        if let Err(e) = blocking(|| self.spool.sync()) {
            self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot sync the spool");
        }
    }

    fn update_stats(&self) {
        let s = self.spool.stats();
        self.stats.spool_records.store(s.records, Ordering::Relaxed);
        self.stats.spool_bytes.store(s.bytes, Ordering::Relaxed);
    }

    /// Shutdown: what is still in memory goes to the spool; connected, the agent says
    /// it is going offline (a clean disconnect does not trigger the last will).
    async fn finish(mut self, link: &mut mpsc::UnboundedReceiver<LinkSignal>) {
        let leftover = self.take_unsent();
        if !leftover.is_empty() {
            tracing::info!(count = leftover.len(), "spooling undelivered messages for the next start");
        }
        self.spill(leftover);
        if self.connected {
            let offline = (self.presence.offline)();
            let topic = self.presence.status_topic.clone();
            if self.client.try_publish(&topic, 1, true, offline, None).is_ok() {
                // Wait briefly for the broker to take it, then leave.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(sig) = link.recv().await {
                        if matches!(sig, LinkSignal::PubAck(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
            let _ = self.client.try_disconnect();
        }
        self.sync();
        self.persist_cursor();
        let s = self.spool.stats();
        tracing::info!(spooled = s.records, bytes = s.bytes, "outbox closed");
    }
}

#[cfg(test)]
mod tests {
    use super::window_for;

    #[test]
    fn the_window_stays_below_an_mqtt5_brokers_receive_maximum() {
        assert_eq!(window_for(64, None), 64);
        // Mosquitto announces 20: rumqttc may have 20 in flight, the outbox 19.
        assert_eq!(window_for(64, Some(20)), 19);
        assert_eq!(window_for(8, Some(20)), 8);
        assert_eq!(window_for(64, Some(1)), 1);
        assert_eq!(window_for(0, Some(0)), 1);
    }
}
