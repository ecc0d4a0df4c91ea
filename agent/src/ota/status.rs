//! The update task's part of the status document (`/status` and the MQTT `status`
//! command → `ota`): typed, so that readers look fields up by name, not by path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::probation::{Limits, Numbers};
use super::updater::RefreshInfo;

/// Model updates: the registry, the last check, each model's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OtaStatus {
    pub url: String,
    pub channel: String,
    /// What the last refresh of the registry's metadata found, if one succeeded.
    pub registry: Option<RefreshInfo>,
    pub last_check: Option<LastCheck>,
    pub models: BTreeMap<String, OtaModelStatus>,
}

impl OtaStatus {
    /// The update state of `model` (`active`, `probation`, `downloading`, ...), if
    /// updates manage it.
    pub fn state_of(&self, model: &str) -> Option<&str> {
        self.models.get(model).map(|m| m.state.as_str())
    }
}

/// When the registry was last checked, and how it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastCheck {
    pub ts: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One model under updates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtaModelStatus {
    /// `active`, `probation`, `missing`, `rolled-back`, or the first word of `doing`.
    pub state: String,
    /// The version serving.
    pub version: Option<String>,
    /// The version a rollback goes back to.
    pub previous: Option<String>,
    /// The last version that passed probation.
    pub kept: Option<String>,
    /// Versions that failed here, with why.
    pub bad: BTreeMap<String, String>,
    /// What the task is doing for this model now (`downloading 3`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doing: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probation: Option<ProbationStatus>,
    /// A candidate version running in shadow beside the active one: its numbers so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::shadow::ShadowStatus>,
}

/// A probation in progress: the numbers so far against the baseline and the limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbationStatus {
    pub version: String,
    pub elapsed_s: u64,
    pub numbers: Numbers,
    pub baseline: Numbers,
    pub limits: Limits,
    /// The shadow run's numbers, for a version promoted from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::shadow::Numbers>,
}
