//! The status document: one typed [`Status`], built in one place ([`Status::gather`])
//! and served by `GET /status`, the MQTT `status` command and read by `edge-agent
//! status`. Its JSON is stable: fields are only ever added.

use std::collections::BTreeMap;

use serde::Serialize;

use super::health::Health;
use crate::fallback::FallbackReport;
use crate::mqtt::OutboxReport;
use crate::ota::OtaStatus;
use crate::telemetry::Memory;
use edge_infer::engine::stats::ErrorEntry;
use edge_infer::engine::{Engine, ModelReport, PoolReport};

/// The status document.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub device: String,
    pub uptime_s: u64,
    pub ready: bool,
    pub doing: String,
    pub models: BTreeMap<String, ModelStatus>,
    pub engine: PoolReport,
    /// The local API's counters, when it is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiReport>,
    pub connections: BTreeMap<String, String>,
    pub last_errors: Vec<ErrorEntry>,
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
}

/// One model.
#[derive(Debug, Serialize)]
pub struct ModelStatus {
    pub version: String,
    /// `active`, or with model updates: `probation`, `downloading`, `self-testing`, ...
    pub state: String,
    /// Counters and latency percentiles, once the model has served.
    #[serde(flatten)]
    pub counts: Option<ModelReport>,
}

/// The local API's counters.
#[derive(Debug, Clone, Serialize)]
pub struct ApiReport {
    pub in_flight: usize,
    pub max_concurrency: usize,
    pub overloaded: u64,
    /// Connections turned away because every open one was busy with a request.
    pub refused_connections: u64,
    /// Idle connections closed to make room for new ones.
    pub evicted_connections: u64,
}

/// What the status document is made of, each part read by its owner.
pub struct Parts<'a> {
    pub engine: &'a Engine,
    pub health: &'a Health,
    pub api: Option<ApiReport>,
    pub mqtt: Option<OutboxReport>,
    pub ota: Option<OtaStatus>,
    pub fallback: Option<FallbackReport>,
}

impl<'a> Parts<'a> {
    /// The parts the service has registered with `health`, with the API's counters
    /// (which only the API holds).
    pub fn of(engine: &'a Engine, health: &'a Health, api: Option<ApiReport>) -> Parts<'a> {
        Parts {
            engine,
            health,
            api,
            mqtt: health.mqtt(),
            ota: health.ota().map(|o| o.status()),
            fallback: health.fallback().and_then(|f| f.report()),
        }
    }
}

impl Status {
    /// Builds the document.
    pub fn gather(parts: Parts<'_>) -> Status {
        let Parts { engine, health, api, mqtt, ota, fallback } = parts;
        let stats = engine.stats();
        let models = engine
            .models()
            .into_iter()
            .map(|(name, m)| {
                let counts = stats.get(&name).cloned();
                // Models outside updates are simply active.
                let state = ota.as_ref().and_then(|o| o.state_of(&name)).unwrap_or("active").to_string();
                (name, ModelStatus { version: m.version().to_string(), state, counts })
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            device: health.device.clone(),
            uptime_s: health.started.elapsed().as_secs(),
            ready: health.is_ready(),
            doing: health.doing(),
            models,
            engine: engine.pool(),
            api,
            connections: health.connections(),
            last_errors: engine.recent_errors(),
            memory: crate::telemetry::memory(),
            mqtt,
            ota,
            fallback,
        }
    }
}
