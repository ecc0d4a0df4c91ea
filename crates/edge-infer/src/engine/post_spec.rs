//! The post-processing families beyond scores: `kind = "multilabel"`, `"regression"`
//! and `"anomaly"`, each with its own table under `[post]`, checked here.

use serde::{Deserialize, Serialize};

use super::spec::{PostKind, PostSpec};

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

/// Checks the families' tables against `post.kind` and each other.
pub(super) fn problems(post: &PostSpec, at: &dyn Fn(&str) -> String, out: &mut Vec<String>) {
    let kind = match post.kind {
        PostKind::Multilabel => "multilabel",
        PostKind::Regression => "regression",
        PostKind::Anomaly => "anomaly",
        PostKind::Scores | PostKind::None | PostKind::Detection | PostKind::TextBoxes | PostKind::Ctc => "",
    };
    for (table, set) in [
        ("multilabel", post.multilabel.is_some()),
        ("regression", post.regression.is_some()),
        ("anomaly", post.anomaly.is_some()),
    ] {
        if set && table != kind {
            out.push(format!(
                "{}[post.{table}] applies only to post.kind = \"{table}\"; set kind = \"{table}\" or remove the table",
                at(&format!("post.{table}"))
            ));
        }
    }
    if kind.is_empty() {
        return;
    }
    // Keys of the scores family that mean nothing here.
    let unused: &[(&str, bool)] = &[
        ("softmax", post.softmax),
        ("top_k", post.top_k.is_some()),
        ("segments", post.segments.is_some()),
        ("labels", !post.labels.is_empty() && post.kind != PostKind::Multilabel),
        ("threshold", post.threshold.is_some() && post.kind == PostKind::Regression),
    ];
    for (key, set) in unused {
        if *set {
            out.push(format!(
                "{}post.{key} does nothing with post.kind = \"{kind}\"; remove it",
                at(&format!("post.{key}"))
            ));
        }
    }
    if let Some(t) = post.threshold
        && !t.is_finite()
    {
        out.push(format!("{}post.threshold is {t}; give a finite number", at("post.threshold")));
    }
    match post.kind {
        PostKind::Multilabel => {
            if post.labels.is_empty() {
                out.push(format!(
                    "{}post.kind = \"multilabel\" needs labels = [...], one per output value",
                    at("post.kind")
                ));
            }
            let ml = post.multilabel.clone().unwrap_or_default();
            if !ml.thresholds.is_empty() && ml.thresholds.len() != post.labels.len() {
                out.push(format!(
                    "{}post.multilabel.thresholds has {} values for {} labels; give one per label",
                    at("post.multilabel.thresholds"),
                    ml.thresholds.len(),
                    post.labels.len()
                ));
            }
            if let Some(t) = ml.thresholds.iter().find(|t| !t.is_finite()) {
                out.push(format!(
                    "{}post.multilabel.thresholds holds {t}; give finite numbers",
                    at("post.multilabel.thresholds")
                ));
            }
        }
        PostKind::Regression => {
            let r = post.regression.clone().unwrap_or_default();
            for (key, n) in [("units", r.units.len()), ("scale", r.scale.len()), ("offset", r.offset.len())] {
                if n > 0 && !r.names.is_empty() && n != r.names.len() {
                    out.push(format!(
                        "{}post.regression.{key} has {n} values for {} names; give one per name",
                        at(&format!("post.regression.{key}")),
                        r.names.len()
                    ));
                }
            }
            if r.scale.iter().chain(&r.offset).any(|v| !v.is_finite()) {
                out.push(format!(
                    "{}post.regression.scale and offset must be finite numbers",
                    at("post.regression")
                ));
            }
        }
        PostKind::Anomaly => {
            if let Some(t) = post.threshold
                && t < 0.0
            {
                out.push(format!(
                    "{}post.threshold is {t}; a reconstruction error is never negative, give 0 or more",
                    at("post.threshold")
                ));
            }
        }
        PostKind::Scores | PostKind::None | PostKind::Detection | PostKind::TextBoxes | PostKind::Ctc => {}
    }
}
