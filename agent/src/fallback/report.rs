//! The cloud fallback's part of the status document (`/status` and the MQTT `status`
//! command → `fallback`), typed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::breaker::BreakerState;

/// Requests routed by reason, answers, failures, the budget, resource readings and
/// each endpoint's breaker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FallbackReport {
    /// Requests routed to the cloud, by reason.
    pub routed: BTreeMap<String, u64>,
    /// Answers from the cloud.
    pub answered: u64,
    /// Cloud requests that got no answer, by kind.
    pub unavailable: BTreeMap<String, u64>,
    /// Local answers given because the cloud could not answer.
    pub degraded: u64,
    /// Requests neither the cloud nor the device answered.
    pub rejected: u64,
    /// Local answers judged by a cascade.
    pub cascade_judged: u64,
    pub budget: BudgetReport,
    pub resource: ResourceReport,
    /// Model → its cloud endpoint.
    pub endpoints: BTreeMap<String, EndpointReport>,
}

/// Cloud requests counted against the budget, and its limits (`None`: no limit).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BudgetReport {
    pub used_hour: u64,
    pub used_day: u64,
    pub per_hour: Option<u64>,
    pub per_day: Option<u64>,
}

/// The device's resource limits: engaged or not, why, and the last readings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceReport {
    pub engaged: bool,
    pub why: Vec<String>,
    pub memory_available_mb: Option<u64>,
    pub temperature_c: Option<f32>,
    pub load_per_cpu: Option<f64>,
}

/// One model's cloud endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointReport {
    pub url: String,
    pub breaker: BreakerState,
    pub in_flight: usize,
    /// `force = true` in the configuration.
    pub force: bool,
    /// Seconds left of a `fallback/force` command, if one is on.
    pub forced_for_s: Option<u64>,
    pub queue_engaged: bool,
    /// The local run time the queue reason estimates with.
    pub local_run_ms: f64,
}
