//! Events: what the agent tells the fleet about itself (`edge/{d}/events`) and writes to
//! its log, one typed [`Event`] for both.
//!
//! Producers (the update task, the stream tasks (failures, drift), the fallback route reporter, the
//! service's start-up and reload, the drift monitor through the stream tasks) hand an [`Event`] to an [`Events`] sink. The service
//! builds that sink once: it always logs (at the level of the event's [`Severity`]) and,
//! when MQTT is on, publishes through a [`Publish`] implementation (the MQTT handle).
//! The MQTT link's own events (`spool-overflow`, `message-oversize`, `session-reset`,
//! a refused sensor message's `request-failed`) are the same type, written by the link
//! into its outbox directly: it cannot send to itself through a handle.
//!
//! Every kind is a [`Kind`]; `docs/mqtt.md` lists them all (a test checks).

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

/// How serious an event is: the `severity` field, and the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    /// The `severity` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Declares [`Kind`] with its wire names in one list, so that [`Kind::ALL`] cannot miss one.
macro_rules! kinds {
    ($($variant:ident => $name:literal, $message:literal;)*) => {
        /// What happened: the `kind` field. Names never change (fleets filter on them).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Kind {
            $($variant,)*
        }

        impl Kind {
            /// Every kind the agent can emit.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The `kind` field's value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name,)*
                }
            }

            /// The log line's message.
            fn message(self) -> &'static str {
                match self {
                    $(Kind::$variant => $message,)*
                }
            }
        }
    };
}

kinds! {
    // The service.
    ModelActivated => "model-activated", "model activated";
    ConfigReloaded => "config-reloaded", "configuration reloaded";
    RequestFailed => "request-failed", "request failed";
    FallbackEngaged => "fallback-engaged", "cloud fallback engaged";
    FallbackCleared => "fallback-cleared", "cloud fallback cleared";
    ModelDrift => "model-drift", "model inputs or outputs drifted from the reference";
    ModelDriftCleared => "model-drift-cleared", "model drift cleared";
    LogLevelChanged => "log-level-changed", "log level changed";
    // The MQTT link.
    SpoolOverflow => "spool-overflow", "spool overflow";
    MessageOversize => "message-oversize", "oversized message";
    SessionReset => "session-reset", "MQTT session reset";
    DataCapReached => "data-cap-reached", "daily data cap reached";
    // Model updates (docs/ota.md).
    UpdateDownloading => "update-downloading", "update event";
    UpdateDownloaded => "update-downloaded", "update event";
    SelftestPassed => "selftest-passed", "update event";
    SelftestFailed => "selftest-failed", "update event";
    ProbationResumed => "probation-resumed", "update event";
    ProbationPassed => "probation-passed", "update event";
    ProbationFailed => "probation-failed", "update event";
    ModelRolledBack => "model-rolled-back", "update event";
    ModelPulled => "model-pulled", "update event";
    UpdateRejected => "update-rejected", "update event";
    UpdateCheckFailed => "update-check-failed", "update event";
    RegistryFrozen => "registry-frozen", "update event";
    RootRotated => "root-rotated", "update event";
    UpdateAbandoned => "update-abandoned", "update event";
    ShadowReport => "shadow-report", "shadow run ended";
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event: `{"ts","kind","severity","model"?,"detail"}` on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: Kind,
    pub severity: Severity,
    /// The model it is about, if any.
    pub model: Option<String>,
    pub detail: Value,
}

impl Event {
    pub fn new(kind: Kind, severity: Severity, detail: Value) -> Event {
        Event { kind, severity, model: None, detail }
    }

    pub fn info(kind: Kind, detail: Value) -> Event {
        Event::new(kind, Severity::Info, detail)
    }

    pub fn warning(kind: Kind, detail: Value) -> Event {
        Event::new(kind, Severity::Warning, detail)
    }

    pub fn error(kind: Kind, detail: Value) -> Event {
        Event::new(kind, Severity::Error, detail)
    }

    /// About `model`.
    pub fn model(mut self, model: impl Into<String>) -> Event {
        self.model = Some(model.into());
        self
    }

    /// The published JSON, stamped `ts`.
    pub fn to_json(&self, ts: &str) -> Value {
        let mut v = serde_json::json!({
            "ts": ts,
            "kind": self.kind.as_str(),
            "severity": self.severity.as_str(),
            "detail": self.detail,
        });
        if let (Some(m), Some(obj)) = (&self.model, v.as_object_mut()) {
            obj.insert("model".into(), Value::String(m.clone()));
        }
        v
    }

    /// One log line, at the severity's level. The detail's common text fields
    /// (`reason`, `version`, `error`) are fields of their own too, so that a JSON log
    /// can be filtered on them.
    pub fn log(&self) {
        let (kind, model, detail) = (self.kind.as_str(), self.model.as_deref(), &self.detail);
        let text = |key: &str| detail.get(key).and_then(Value::as_str);
        let (reason, version, error) = (text("reason"), text("version"), text("error"));
        let message = self.kind.message();
        match self.severity {
            Severity::Error => tracing::error!(kind, model, reason, version, error, %detail, "{message}"),
            Severity::Warning => tracing::warn!(kind, model, reason, version, error, %detail, "{message}"),
            Severity::Info => tracing::info!(kind, model, reason, version, error, %detail, "{message}"),
        }
    }
}

/// Where a sink publishes events (the MQTT handle; a test's fake).
pub trait Publish: Send + Sync {
    /// Queues `event` for delivery; returns once it is queued.
    fn publish<'a>(&'a self, event: &'a Event) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// The one sink for events: logs each, and publishes it when connected.
#[derive(Clone, Default)]
pub struct Events {
    publisher: Option<Arc<dyn Publish>>,
    /// A copy of each event, for tests that drive a producer in-process.
    tap: Option<mpsc::UnboundedSender<Event>>,
}

impl Events {
    /// A sink that only logs.
    pub fn log_only() -> Events {
        Events::default()
    }

    /// Also publishes through `publisher`.
    pub fn publish_to(mut self, publisher: Arc<dyn Publish>) -> Events {
        self.publisher = Some(publisher);
        self
    }

    /// Also copies each event to `tap`.
    pub fn tap(mut self, tap: mpsc::UnboundedSender<Event>) -> Events {
        self.tap = Some(tap);
        self
    }

    /// Logs `event` and publishes it.
    pub async fn emit(&self, event: Event) {
        event.log();
        if let Some(tap) = &self.tap {
            let _ = tap.send(event.clone());
        }
        if let Some(p) = &self.publisher {
            p.publish(&event).await;
        }
    }
}

/// Now, as RFC 3339 with milliseconds: the time stamp of events, replies, reports and
/// the online status.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
