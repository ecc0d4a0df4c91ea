//! The systemd notification protocol (`sd_notify`), written by hand: one datagram per
//! message to the socket named by `NOTIFY_SOCKET`, which is all the protocol is.
//!
//! - `READY=1` once models are loaded and the API listens;
//! - `STATUS=...` lines saying what the agent is doing;
//! - `WATCHDOG=1` every half `WATCHDOG_USEC`, only while the engine and the event loop
//!   make progress (see [`watchdog`]);
//! - `RELOADING=1` / `READY=1` around a SIGHUP reload, `STOPPING=1` on shutdown.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use edge_infer::engine::Engine;

enum Target {
    Path(PathBuf),
    /// Linux abstract socket (`NOTIFY_SOCKET` starting with `@`).
    Abstract(Vec<u8>),
}

/// Sends notifications to systemd, if it asked for them.
pub struct Notifier {
    target: Option<(UnixDatagram, Target)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|s| {
            let bytes = s.as_encoded_bytes();
            let target = match bytes.first() {
                Some(b'@') => Target::Abstract(bytes[1..].to_vec()),
                Some(b'/') => Target::Path(PathBuf::from(s.clone())),
                _ => {
                    tracing::warn!(socket = ?s, "NOTIFY_SOCKET is neither a path nor an abstract name; ignoring it");
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(sock) => Some((sock, target)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the systemd notification socket");
                    None
                }
            }
        });
        // WATCHDOG_PID, when set, names the process that must ping; a child of ours that
        // inherited the environment must not.
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// Whether systemd listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog period systemd expects pings within, if any.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (several `KEY=value` lines are allowed).
    pub fn send(&self, message: &str) {
        let Some((sock, target)) = &self.target else { return };
        let sent = match target {
            Target::Path(p) => sock.send_to(message.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "systemd notification not delivered");
        }
    }

    /// `STATUS=...`: a one-line description shown by `systemctl status`.
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }
}

/// Whether the engine has made progress since the last check: no worker has been on one
/// job for longer than `stall`, and work that was queued is being taken.
pub struct Progress {
    last_done: u64,
}

impl Progress {
    /// Starts watching.
    pub fn new(engine: &Engine) -> Progress {
        Progress { last_done: engine.pool().jobs_done }
    }

    /// Why the engine looks stuck, if it does.
    pub fn stuck(&mut self, engine: &Engine, stall: Duration) -> Option<String> {
        let pool = engine.pool();
        let done = pool.jobs_done;
        let moved = done != self.last_done;
        self.last_done = done;
        if pool.longest_job_ms > stall.as_millis() as u64 {
            return Some(format!("a worker has been on one request for {} ms", pool.longest_job_ms));
        }
        if pool.queue_depth > 0 && !moved && pool.busy == pool.threads {
            return Some(format!(
                "{} requests queued and none finished since the last check",
                pool.queue_depth
            ));
        }
        None
    }
}

/// Pings the watchdog every half period while the engine makes progress. The pings come
/// from a task on the runtime, so a stalled event loop stops them too; a wedged worker
/// stops them through [`Progress::stuck`]. systemd then restarts the agent.
pub async fn watchdog(notifier: Arc<Notifier>, engine: Arc<Engine>, token: CancellationToken) {
    let Some(period) = notifier.watchdog_period() else { return };
    let every = period / 2;
    let mut progress = Progress::new(&engine);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_stuck = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match progress.stuck(&engine, period) {
            None => {
                if was_stuck {
                    tracing::warn!("engine made progress again; watchdog pings resume");
                    was_stuck = false;
                }
                notifier.send("WATCHDOG=1");
            }
            Some(reason) => {
                if !was_stuck {
                    tracing::error!(%reason, "engine stalled: withholding watchdog pings so systemd restarts the agent");
                    notifier.status(&format!("stalled: {reason}"));
                    was_stuck = true;
                }
            }
        }
    }
}
