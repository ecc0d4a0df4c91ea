//! The post-processing families beyond scores: `kind = "multilabel"`, `"regression"`
//! and `"anomaly"`, each with its own table under `[post]` (checked with the rest of the
//! spec, in `spec_check`).

use serde::{Deserialize, Serialize};

/// `[post.multilabel]`: every label is judged on its own (tags, events that overlap).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiLabelSpec {
    /// Apply the logistic sigmoid to each output first (for models that emit logits).
    #[serde(default)]
    pub sigmoid: bool,
    /// The score at which each label is active, by label (default: `post.threshold`,
    /// or 0.5).
    #[serde(default)]
    pub thresholds: Vec<f32>,
}

/// `[post.regression]`: the outputs are quantities, named and with units.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionSpec {
    /// A name per output value (default `value0`, `value1`, ...).
    #[serde(default)]
    pub names: Vec<String>,
    /// A unit per output value (`"°C"`, `"kg"`, `"rpm"`), reported with it.
    #[serde(default)]
    pub units: Vec<String>,
    /// Per value, multiplied first (models trained on scaled targets) ...
    #[serde(default)]
    pub scale: Vec<f32>,
    /// ... then added.
    #[serde(default)]
    pub offset: Vec<f32>,
}

/// How far a reconstruction is from its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMetric {
    /// Mean squared error.
    #[default]
    Mse,
    /// Mean absolute error.
    Mae,
    /// Largest absolute error.
    Max,
}

/// `[post.anomaly]`: an autoencoder's output is its reconstruction of the input; the
/// error between them is the anomaly score, and `post.threshold` flags an anomaly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalySpec {
    /// The error measure.
    #[serde(default)]
    pub metric: ErrorMetric,
}
