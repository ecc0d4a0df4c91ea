//! The status document: one typed [`Status`], built in one place ([`Status::gather`])
//! and served by `GET /status`, the MQTT `status` command and read by `edge-agent
//! status`. Its JSON is stable: fields are only ever added.
//!
//! The document owns its schema: the engine's parts are copied into types of their own
//! here ([`ModelCounts`], [`EngineStatus`], [`RecentError`]), so that the engine may
//! change its reports without changing what readers parse, and so that the document
//! reads back into [`Status`] (`edge-agent status`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::health::Health;
use crate::fallback::{Fallback, FallbackReport};
use crate::monitor::{DriftReport, Monitors};
use crate::mqtt::{OutboxReport, OutboxStats};
use crate::ota::{OtaHandle, OtaStatus};
use crate::telemetry::Memory;
use edge_infer::engine::stats::{ErrorEntry, Percentiles};
use edge_infer::engine::{Engine, ModelReport, PoolReport};

/// The status document.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub device: String,
    pub uptime_s: u64,
    pub ready: bool,
    pub doing: String,
    pub models: BTreeMap<String, ModelStatus>,
    pub engine: EngineStatus,
    /// The local API's counters, when it is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiReport>,
    pub connections: BTreeMap<String, String>,
    pub last_errors: Vec<RecentError>,
    pub memory: Memory,
    /// The MQTT link (connected, published, spool, dropped), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<OutboxReport>,
    /// Model updates: the registry's versions, the last check, each model's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ota: Option<OtaStatus>,
    /// Cloud fallback: requests routed by reason, answers, failures, breakers, budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackReport>,
    /// The log level in force (and a temporary one's revert), the own log's losses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<crate::logs::LogStatus>,
    /// Bytes sent and received per destination since start (docs/data-usage.md).
    #[serde(default)]
    pub usage: crate::usage::UsageReport,
}

/// One model.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelStatus {
    pub version: String,
    /// `active`, or with model updates: `probation`, `downloading`, `self-testing`, ...
    pub state: String,
    /// Counters and latency percentiles, once the model has served.
    #[serde(flatten)]
    pub counts: Option<ModelCounts>,
    /// Drift against the reference, once the model has served with monitoring on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStatus>,
}

/// One model's drift against its reference (docs/monitoring.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftStatus {
    /// The version the numbers are about.
    pub version: String,
    /// `learning` (the reference is being taken from the first results), `filling` (the
    /// window is not full yet), `ok` or `drift`.
    pub state: String,
    /// `profile` (profile.json) or `first-results`.
    pub reference: String,
    /// Results seen by the monitor.
    pub results: u64,
    pub drifting: bool,
    /// When drift was raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The last Jensen-Shannon distance of each summary (0: same as the reference, 1:
    /// nothing in common).
    pub scores: BTreeMap<String, f64>,
    /// Why profile.json was not used, when it was there but unusable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_error: Option<String>,
    /// Bytes the monitor's histograms hold.
    pub memory_bytes: usize,
}

impl From<DriftReport> for DriftStatus {
    fn from(r: DriftReport) -> DriftStatus {
        DriftStatus {
            version: r.version,
            state: r.state.to_string(),
            reference: r.reference.as_str().to_string(),
            results: r.results,
            drifting: r.drifting,
            since: r.since,
            scores: r.scores,
            profile_error: r.profile_error,
            memory_bytes: r.memory_bytes,
        }
    }
}

/// One model's counters since start, by outcome, and its latency percentiles.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCounts {
    pub ok: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Requests turned away before running, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// From submission to result.
    pub latency: Latency,
    /// The model run alone.
    pub run: Latency,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The engine's worker pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineStatus {
    pub threads: usize,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub busy: usize,
    /// Longest time a worker has been on its current job.
    pub longest_job_ms: u64,
    pub jobs_done: u64,
    pub live_streams: usize,
    pub streams_evicted: u64,
}

/// One recent failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecentError {
    pub ts: String,
    pub model: String,
    pub kind: String,
    pub message: String,
}

impl From<ModelReport> for ModelCounts {
    fn from(r: ModelReport) -> ModelCounts {
        let owned = |m: BTreeMap<&'static str, u64>| m.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
        ModelCounts {
            ok: r.ok,
            errors: owned(r.errors),
            rejected: owned(r.rejected),
            latency: r.latency.into(),
            run: r.run.into(),
        }
    }
}

impl From<Percentiles> for Latency {
    fn from(p: Percentiles) -> Latency {
        Latency { p50_ms: p.p50_ms, p95_ms: p.p95_ms, p99_ms: p.p99_ms, max_ms: p.max_ms }
    }
}

impl From<PoolReport> for EngineStatus {
    fn from(p: PoolReport) -> EngineStatus {
        EngineStatus {
            threads: p.threads,
            queue_depth: p.queue_depth,
            queue_capacity: p.queue_capacity,
            busy: p.busy,
            longest_job_ms: p.longest_job_ms,
            jobs_done: p.jobs_done,
            live_streams: p.live_streams,
            streams_evicted: p.streams_evicted,
        }
    }
}

impl From<ErrorEntry> for RecentError {
    fn from(e: ErrorEntry) -> RecentError {
        RecentError { ts: e.ts, model: e.model, kind: e.kind.to_string(), message: e.message }
    }
}

/// The local API's counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiReport {
    pub in_flight: usize,
    pub max_concurrency: usize,
    pub overloaded: u64,
    /// Connections turned away because every open one was busy with a request.
    pub refused_connections: u64,
    /// Idle connections closed to make room for new ones.
    pub evicted_connections: u64,
}

/// What the status document is made of: each part's handle, given once by the service
/// when it builds the part (the API's counters, which only the API holds, come with
/// each call).
#[derive(Clone)]
pub struct Parts {
    pub engine: Arc<Engine>,
    pub health: Arc<Health>,
    /// The MQTT link's counters, when it is configured.
    pub mqtt: Option<Arc<OutboxStats>>,
    /// The model update task, when `[ota]` is configured.
    pub ota: Option<OtaHandle>,
    pub fallback: Arc<Fallback>,
    /// Drift of each model against its reference.
    pub monitors: Arc<Monitors>,
    /// Bytes per destination.
    pub usage: crate::usage::Usage,
}

impl Parts {
    /// Builds the document, with the API's counters when it runs.
    pub fn gather(&self, api: Option<ApiReport>) -> Status {
        Status::gather(self, api)
    }
}

impl Status {
    /// Builds the document.
    pub fn gather(parts: &Parts, api: Option<ApiReport>) -> Status {
        let Parts { engine, health, .. } = parts;
        let ota = parts.ota.as_ref().map(OtaHandle::status);
        let stats = engine.stats();
        let mut drift = parts.monitors.report();
        let models = engine
            .models()
            .into_iter()
            .map(|(name, m)| {
                let counts = stats.get(&name).cloned().map(ModelCounts::from);
                // Models outside updates are simply active.
                let state = ota.as_ref().and_then(|o| o.state_of(&name)).unwrap_or("active").to_string();
                let drift = drift.remove(&name).map(DriftStatus::from);
                (name, ModelStatus { version: m.version().to_string(), state, counts, drift })
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            device: health.device.clone(),
            uptime_s: health.started.elapsed().as_secs(),
            ready: health.is_ready(),
            doing: health.doing(),
            models,
            engine: engine.pool().into(),
            api,
            connections: health.connections(),
            last_errors: engine.recent_errors().into_iter().map(RecentError::from).collect(),
            memory: crate::telemetry::memory(),
            mqtt: parts.mqtt.as_ref().map(|m| m.report()),
            ota,
            fallback: parts.fallback.report(),
            log: crate::logs::status(),
            usage: parts.usage.report(),
        }
    }
}
