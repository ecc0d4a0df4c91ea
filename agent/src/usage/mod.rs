//! Bytes per destination: what the agent sent to and received from the MQTT broker, the
//! model registry, the cloud inference endpoints and upload targets.
//!
//! One [`Usage`] is built in `service::run` and a [`Counter`] of it is handed to each
//! client when it is built. How close to the wire each count is depends on what the
//! client library lets us see (docs/data-usage.md):
//! - MQTT: exact TCP payload bytes, TLS included. rumqttc cannot be handed a socket, so
//!   the link runs it over a private Unix socket to [`relay`], which makes the TCP (and
//!   TLS) connection itself and counts every byte through a [`Counted`] stream.
//! - HTTP (registry, cloud, uploads): reqwest hides its sockets, so [`http`] counts the
//!   HTTP/1.1 message (request line, headers, body; status line, headers, body) as sent
//!   and received. TLS adds its handshake (some 4-6 KB per new connection) and about
//!   0.2 % on bulk data (22 bytes per 16 KB record), which are not in the count.

pub mod cap;
pub mod http;
mod quickack;
pub mod relay;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Broker,
    Registry,
    Cloud,
    Uploads,
}

/// Bytes sent and received, one destination's running totals.
#[derive(Debug, Default)]
pub struct Counter {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Counter {
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    pub fn totals(&self) -> Bytes {
        Bytes { sent: self.sent.load(Ordering::Relaxed), received: self.received.load(Ordering::Relaxed) }
    }
}

/// One destination's totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    pub sent: u64,
    pub received: u64,
}

/// The totals of every destination since start: in telemetry, `/status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub broker: Bytes,
    pub registry: Bytes,
    pub cloud: Bytes,
    pub uploads: Bytes,
    /// The broker's daily cap (zeros without one).
    #[serde(default)]
    pub broker_cap: cap::CapReport,
}

impl UsageReport {
    /// `(destination name, totals)`, in a fixed order (for `/metrics` labels).
    pub fn each(&self) -> [(&'static str, Bytes); 4] {
        [
            ("broker", self.broker),
            ("registry", self.registry),
            ("cloud", self.cloud),
            ("uploads", self.uploads),
        ]
    }
}

/// The registry of counters, one per destination; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    broker: Arc<Counter>,
    registry: Arc<Counter>,
    cloud: Arc<Counter>,
    uploads: Arc<Counter>,
    /// The broker's daily cap, once the MQTT link has one.
    cap: Arc<OnceLock<Arc<cap::DailyCap>>>,
}

impl Usage {
    /// Sets the broker's daily cap (once).
    pub fn set_cap(&self, cap: Arc<cap::DailyCap>) {
        let _ = self.cap.set(cap);
    }

    pub fn cap(&self) -> Option<Arc<cap::DailyCap>> {
        self.cap.get().cloned()
    }

    /// The counter of `dest`, to hand to the client that talks to it.
    pub fn counter(&self, dest: Dest) -> Arc<Counter> {
        match dest {
            Dest::Broker => self.broker.clone(),
            Dest::Registry => self.registry.clone(),
            Dest::Cloud => self.cloud.clone(),
            Dest::Uploads => self.uploads.clone(),
        }
    }

    pub fn report(&self) -> UsageReport {
        UsageReport {
            broker: self.broker.totals(),
            registry: self.registry.totals(),
            cloud: self.cloud.totals(),
            uploads: self.uploads.totals(),
            broker_cap: self.cap.get().map(|c| c.report()).unwrap_or_default(),
        }
    }
}

/// A byte stream whose reads and writes are counted as received and sent.
pub struct Counted<S> {
    inner: S,
    counter: Arc<Counter>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counter: Arc<Counter>) -> Counted<S> {
        Counted { inner, counter }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (r, n) = poll_read_len(&mut self.inner, cx, buf);
        if n > 0 {
            self.counter.add_received(n as u64);
        }
        r
    }
}

/// Polls one read of `inner` into `buf`: its result, and the bytes it brought (0 unless
/// it completed with data). What the stream wrappers of the broker connection act on.
fn poll_read_len<S: AsyncRead + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> (Poll<io::Result<()>>, usize) {
    let before = buf.filled().len();
    let r = Pin::new(inner).poll_read(cx, buf);
    let n = if matches!(r, Poll::Ready(Ok(()))) { buf.filled().len() - before } else { 0 };
    (r, n)
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            self.counter.add_sent(n as u64);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
