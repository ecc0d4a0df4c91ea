//! The telemetry report: what it holds, its two encodings, and the task that sends it.
//!
//! Counters are totals since start, so a consumer takes differences and a lost report
//! loses nothing. The struct is the schema of both encodings: JSON (field names) and
//! postcard (field order; no field may be skipped or reordered, only appended, and the
//! `schema` number goes up when anything changes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::system::{SystemReading, SystemSampler};
use crate::config::{TelemetryFormat, TelemetrySection};
use crate::mqtt::{Mqtt, OutboxReport, OutboxStats};
use edge_infer::engine::Engine;

/// Version of the report layout. 2: `agent.mqtt` gained `oversize`, `session_resets`
/// and `bad_stream`. 3: each model gained `drifting` and `drift` (scores by summary), and
/// the report `usage`, bytes per destination.
pub const SCHEMA: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub ts: String,
    pub device: String,
    pub version: String,
    pub uptime_s: u64,
    pub models: BTreeMap<String, ModelCounts>,
    pub engine: EngineCounts,
    pub system: SystemReading,
    pub agent: AgentReading,
    /// Bytes sent and received per destination since start.
    #[serde(default)]
    pub usage: crate::usage::UsageReport,
}

/// One model's totals since start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCounts {
    pub version: String,
    pub ok: u64,
    pub err: u64,
    pub rejected: u64,
    /// Computed on this device.
    pub local: u64,
    /// Computed in the cloud, by fallback reason (cloud fallback fills this).
    pub cloud: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Requests waiting in the engine's queue (one queue, shared by all models).
    pub queue: u64,
    /// Whether drift against the model's reference is raised (docs/monitoring.md).
    pub drifting: bool,
    /// The last drift score (Jensen-Shannon distance) of each summary; empty until the
    /// monitor has scored.
    pub drift: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineCounts {
    pub threads: u64,
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub busy: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReading {
    pub rss: u64,
    pub peak_rss: u64,
    pub cpu_s: f64,
    pub mqtt: OutboxReport,
}

impl Report {
    pub fn encode(&self, format: TelemetryFormat) -> Vec<u8> {
        match format {
            TelemetryFormat::Json => serde_json::to_vec(self).unwrap_or_default(),
            TelemetryFormat::Postcard => postcard::to_allocvec(self).unwrap_or_default(),
        }
    }
}

/// Reads a postcard-encoded report (for `edge-agent spool decode`).
pub fn decode_postcard(bytes: &[u8]) -> Result<Report, String> {
    postcard::from_bytes::<Report>(bytes).map_err(|e| {
        format!("not a postcard telemetry report of schema {SCHEMA} ({e}); JSON reports need no decoding")
    })
}

/// What the telemetry task reads from.
pub struct Sources {
    pub device: String,
    pub engine: Arc<Engine>,
    pub outbox: Arc<OutboxStats>,
    pub started: Instant,
    /// Answers computed in the cloud, per model and reason.
    pub fallback: Option<Arc<crate::fallback::Fallback>>,
    /// Drift of each model.
    pub monitors: Option<Arc<crate::monitor::Monitors>>,
    pub usage: crate::usage::Usage,
}

/// Builds a report now.
pub fn build(src: &Sources, system: SystemReading) -> Report {
    let stats = src.engine.stats();
    let pool = src.engine.pool();
    let mut cloud = src.fallback.as_ref().map(|f| f.cloud_answers()).unwrap_or_default();
    let mut drift = src.monitors.as_ref().map(|m| m.report()).unwrap_or_default();
    let mut models: BTreeMap<String, ModelCounts> = src
        .engine
        .models()
        .into_iter()
        .map(|(name, m)| {
            let s = stats.get(&name);
            let ok = s.map_or(0, |s| s.ok);
            let d = drift.remove(&name);
            let counts = ModelCounts {
                version: m.version().to_string(),
                ok,
                err: s.map_or(0, |s| s.errors.values().sum()),
                rejected: s.map_or(0, |s| s.rejected.values().sum()),
                local: ok,
                cloud: cloud.remove(&name).unwrap_or_default(),
                p50_ms: s.map_or(0.0, |s| s.latency.p50_ms),
                p95_ms: s.map_or(0.0, |s| s.latency.p95_ms),
                p99_ms: s.map_or(0.0, |s| s.latency.p99_ms),
                queue: pool.queue_depth as u64,
                drifting: d.as_ref().is_some_and(|d| d.drifting),
                drift: d.map(|d| d.scores).unwrap_or_default(),
            };
            (name, counts)
        })
        .collect();
    // Models served only by the cloud (not installed here).
    for (name, by_reason) in cloud {
        models.insert(
            name,
            ModelCounts {
                version: "cloud".into(),
                ok: by_reason.values().sum(),
                err: 0,
                rejected: 0,
                local: 0,
                cloud: by_reason,
                p50_ms: 0.0,
                p95_ms: 0.0,
                p99_ms: 0.0,
                queue: 0,
                drifting: false,
                drift: BTreeMap::new(),
            },
        );
    }
    let mem = super::memory();
    Report {
        schema: SCHEMA,
        ts: crate::events::now(),
        device: src.device.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: src.started.elapsed().as_secs(),
        models,
        engine: EngineCounts {
            threads: pool.threads as u64,
            queue_depth: pool.queue_depth as u64,
            queue_capacity: pool.queue_capacity as u64,
            busy: pool.busy as u64,
        },
        system,
        agent: AgentReading {
            rss: mem.rss,
            peak_rss: mem.peak_rss,
            cpu_s: super::cpu_seconds(),
            mqtt: src.outbox.report(),
        },
        usage: src.usage.report(),
    }
}

/// Publishes a report every `interval_s` (read from `settings`, so a `config/set`
/// applies at the next tick) until `stop` fires.
pub async fn run(
    src: Sources,
    mut sampler: SystemSampler,
    mqtt: Mqtt,
    mut settings: watch::Receiver<TelemetrySection>,
    stop: CancellationToken,
) {
    let mut partial = Partial::default();
    loop {
        let current = settings.borrow_and_update().clone();
        let wait = if current.interval_s == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(current.interval_s)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = settings.changed() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        if current.interval_s == 0 {
            continue;
        }
        // Over the broker's daily cap, telemetry is the first to give way.
        if let Some(cap) = src.usage.cap()
            && !cap.allow(crate::usage::cap::Class::Telemetry).await
        {
            continue;
        }
        // sysinfo reads /proc and /sys: small, but blocking.
        let (s, reading) = match tokio::task::spawn_blocking(move || {
            let r = sampler.sample();
            (sampler, r)
        })
        .await
        {
            Ok(v) => v,
            Err(_) => return,
        };
        sampler = s;
        let report = build(&src, reading);
        let payload = match (current.only_changed, current.format) {
            (true, TelemetryFormat::Json) => partial.next(&report),
            _ => report.encode(current.format),
        };
        if mqtt.telemetry(payload, current.qos).await.is_err() {
            return;
        }
    }
}

/// How often a report is whole when only changes are sent: a consumer that starts or
/// missed reports has the whole state again within this many intervals.
const WHOLE_EVERY: u64 = 10;

/// The reports sent with `only_changed`: the last whole state, and how many went out.
#[derive(Default)]
pub struct Partial {
    last: Option<serde_json::Value>,
    sent: u64,
}

impl Partial {
    /// The JSON payload of `report`: whole on the first and every [`WHOLE_EVERY`]th,
    /// otherwise only what changed since the report before, marked `"partial": true`.
    pub fn next(&mut self, report: &Report) -> Vec<u8> {
        let now = serde_json::to_value(report).unwrap_or_default();
        let whole = self.sent.is_multiple_of(WHOLE_EVERY);
        let out = match (&self.last, whole) {
            (Some(before), false) => {
                let mut d = changed(before, &now).unwrap_or_else(|| serde_json::json!({}));
                if let Some(o) = d.as_object_mut() {
                    for key in ["schema", "ts", "device"] {
                        o.insert(key.into(), now[key].clone());
                    }
                    o.insert("partial".into(), serde_json::Value::Bool(true));
                }
                d
            }
            _ => now.clone(),
        };
        self.last = Some(now);
        self.sent += 1;
        serde_json::to_vec(&out).unwrap_or_default()
    }
}

/// What of `now` differs from `before`: objects key by key (a key gone is `null`), any
/// other value whole. `None` when nothing changed.
pub fn changed(before: &serde_json::Value, now: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match (before, now) {
        (Value::Object(b), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, v) in n {
                match b.get(k) {
                    Some(old) => {
                        if let Some(d) = changed(old, v) {
                            out.insert(k.clone(), d);
                        }
                    }
                    None => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in b.keys().filter(|k| !n.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        _ => (before != now).then(|| now.clone()),
    }
}

#[cfg(test)]
mod tests;
