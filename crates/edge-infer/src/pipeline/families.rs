//! Post-processing families other than scores: multi-label sigmoid with per-label
//! thresholds, regression values with units, and an anomaly score from an
//! autoencoder's reconstruction error.

use serde_json::{Map, Value, json};

use crate::engine::post_spec::ErrorMetric;
use crate::engine::spec::PostSpec;

/// The logistic function, written so that neither tail overflows.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `kind = "multilabel"`: `scores` (one per label), `labels` (the active ones, in label
/// order), `active` (a flag per label) and `score` (the highest, for monitors).
pub fn multilabel(spec: &PostSpec, values: &[f32], out: &mut Map<String, Value>) {
    let ml = spec.multilabel.clone().unwrap_or_default();
    let scores: Vec<f32> = values.iter().map(|v| if ml.sigmoid { sigmoid(*v) } else { *v }).collect();
    let default = spec.threshold.unwrap_or(0.5);
    let active: Vec<bool> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| *s >= ml.thresholds.get(i).copied().unwrap_or(default))
        .collect();
    let labels: Vec<Value> = active
        .iter()
        .enumerate()
        .filter(|(_, a)| **a)
        .map(|(i, _)| spec.labels.get(i).map_or_else(|| json!(i), |l| json!(l)))
        .collect();
    if let Some(best) = scores.iter().copied().reduce(f32::max) {
        out.insert("score".into(), json!(best));
    }
    out.insert("labels".into(), Value::Array(labels));
    out.insert("scores".into(), json!(scores));
    out.insert("active".into(), json!(active));
}

/// `kind = "regression"`: `values`, each `{name, value, unit}`; with one output also
/// `value` on its own.
pub fn regression(spec: &PostSpec, values: &[f32], out: &mut Map<String, Value>) {
    let r = spec.regression.clone().unwrap_or_default();
    let items: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v = v * r.scale.get(i).copied().unwrap_or(1.0) + r.offset.get(i).copied().unwrap_or(0.0);
            let mut item = Map::new();
            item.insert("name".into(), json!(r.names.get(i).cloned().unwrap_or_else(|| format!("value{i}"))));
            item.insert("value".into(), json!(v));
            if let Some(u) = r.units.get(i) {
                item.insert("unit".into(), json!(u));
            }
            Value::Object(item)
        })
        .collect();
    if let [one] = items.as_slice() {
        out.insert("value".into(), one["value"].clone());
        if let Some(u) = one.get("unit") {
            out.insert("unit".into(), u.clone());
        }
    }
    out.insert("values".into(), Value::Array(items));
}

/// The distance between an input and its reconstruction; `None` when their lengths
/// differ (the output is not a reconstruction of this input) or they are empty.
pub fn reconstruction_error(metric: ErrorMetric, input: &[f32], output: &[f32]) -> Option<f32> {
    if input.len() != output.len() || input.is_empty() {
        return None;
    }
    let diffs = input.iter().zip(output).map(|(a, b)| f64::from(*a) - f64::from(*b));
    let n = input.len() as f64;
    let e = match metric {
        ErrorMetric::Mse => diffs.map(|d| d * d).sum::<f64>() / n,
        ErrorMetric::Mae => diffs.map(f64::abs).sum::<f64>() / n,
        ErrorMetric::Max => diffs.map(f64::abs).fold(0.0, f64::max),
    };
    Some(e as f32)
}

/// `kind = "anomaly"`: `score` (the reconstruction error) and, with `post.threshold`,
/// `anomaly` (the score reached it); `error` when the input is not at hand or the
/// output is not the input's size.
pub fn anomaly(spec: &PostSpec, input: Option<&[f32]>, values: &[f32], out: &mut Map<String, Value>) {
    let metric = spec.anomaly.clone().unwrap_or_default().metric;
    let Some(input) = input else {
        out.insert(
            "error".into(),
            json!("the anomaly score needs the model's input, which this path does not keep"),
        );
        return;
    };
    match reconstruction_error(metric, input, values) {
        Some(score) => {
            out.insert("score".into(), json!(score));
            if let Some(t) = spec.threshold {
                out.insert("anomaly".into(), json!(score >= t));
            }
        }
        None => {
            out.insert(
                "error".into(),
                json!(format!(
                    "the output has {} values and the input {}: post.kind = \"anomaly\" needs an output that reconstructs the input",
                    values.len(),
                    input.len()
                )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::engine::spec::ModelSpec;
    use crate::pipeline::PostProcessor;

    fn spec(post: &str) -> Result<ModelSpec, String> {
        let text = format!(
            "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 3]\n[post]\n{post}"
        );
        ModelSpec::parse(&text, Path::new("model.toml")).map_err(|e| e.to_string())
    }

    fn post(text: &str) -> PostProcessor {
        PostProcessor::new(&spec(text).unwrap_or_else(|e| panic!("{e}")).post)
    }

    #[test]
    fn multilabel_sigmoid_with_per_label_thresholds() {
        let p = post(
            "kind = \"multilabel\"\nlabels = [\"dog\", \"cat\", \"car\"]\n[post.multilabel]\nsigmoid = true\nthresholds = [0.5, 0.9, 0.2]",
        );
        // sigmoid(0) = 0.5, sigmoid(ln 4) = 0.8, sigmoid(-ln 3) = 0.25.
        let out = p.apply(&[0.0, 4f32.ln(), -(3f32.ln())], 0, None);
        assert_eq!(out["active"], json!([true, false, true]), "0.5 >= 0.5, 0.8 < 0.9, 0.25 >= 0.2");
        assert_eq!(out["labels"], json!(["dog", "car"]));
        let scores: Vec<f64> =
            out["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (got, want) in scores.iter().zip([0.5, 0.8, 0.25]) {
            assert!((got - want).abs() < 1e-6, "{scores:?}");
        }
        assert!((out["score"].as_f64().unwrap() - 0.8).abs() < 1e-6);
        assert!((p.confidence(&[0.0, 4f32.ln(), 0.0]).unwrap() - 0.8).abs() < 1e-6);
        // Without sigmoid, scores are taken as they are, against post.threshold.
        let p = post("kind = \"multilabel\"\nlabels = [\"a\", \"b\", \"c\"]\nthreshold = 0.3");
        assert_eq!(p.apply(&[0.1, 0.3, 0.9], 0, None)["labels"], json!(["b", "c"]));
    }

    #[test]
    fn regression_values_with_names_units_and_scaling() {
        let p = post(
            "kind = \"regression\"\n[post.regression]\nnames = [\"temperature\", \"humidity\"]\nunits = [\"°C\", \"%\"]\nscale = [10.0, 100.0]\noffset = [-5.0, 0.0]",
        );
        let out = p.apply(&[2.5, 0.42], 0, None);
        assert_eq!(
            out["values"],
            json!([{"name": "temperature", "value": 20.0, "unit": "°C"}, {"name": "humidity", "value": 42.0, "unit": "%"}])
        );
        assert!(out.get("value").is_none());
        let one = post("kind = \"regression\"\n[post.regression]\nnames = [\"rpm\"]\nunits = [\"1/min\"]");
        let out = one.apply(&[1450.0], 0, None);
        assert_eq!((out["value"].clone(), out["unit"].clone()), (json!(1450.0), json!("1/min")));
    }

    #[test]
    fn anomaly_score_from_reconstruction_error() {
        let p = post("kind = \"anomaly\"\nthreshold = 0.5\n[post.anomaly]\nmetric = \"mse\"");
        // Differences 1, 0, -1: MSE 2/3 >= 0.5.
        let out = p.apply_to(&[1.0, 2.0, 4.0], Some(&[2.0, 2.0, 3.0]), 0, None);
        assert!((out["score"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(out["anomaly"], true);
        let out = p.apply_to(&[2.0, 2.0, 3.5], Some(&[2.0, 2.0, 3.0]), 0, None);
        assert!((out["score"].as_f64().unwrap() - 0.25 / 3.0).abs() < 1e-6);
        assert_eq!(out["anomaly"], false);
        assert_eq!(reconstruction_error(ErrorMetric::Mae, &[1.0, -1.0], &[0.0, 1.0]), Some(1.5));
        assert_eq!(reconstruction_error(ErrorMetric::Max, &[1.0, -1.0], &[0.0, 1.0]), Some(2.0));
        // A mismatched output, or no input at hand, is said, not scored.
        assert!(
            p.apply_to(&[1.0], Some(&[1.0, 2.0]), 0, None)["error"]
                .as_str()
                .unwrap()
                .contains("reconstructs")
        );
        assert!(p.apply(&[1.0], 0, None).contains_key("error"));
        assert_eq!(p.confidence(&[1.0]), None);
    }

    #[test]
    fn family_tables_are_checked_at_load() {
        let cases = [
            ("kind = \"multilabel\"", "needs labels"),
            (
                "kind = \"multilabel\"\nlabels = [\"a\"]\n[post.multilabel]\nthresholds = [0.1, 0.2]",
                "2 values for 1 labels",
            ),
            ("kind = \"multilabel\"\nlabels = [\"a\"]\nsoftmax = true", "post.softmax does nothing"),
            (
                "kind = \"regression\"\n[post.regression]\nnames = [\"a\"]\nunits = [\"m\", \"s\"]",
                "units has 2 values for 1 names",
            ),
            ("kind = \"regression\"\nthreshold = 1.0", "post.threshold does nothing"),
            ("kind = \"anomaly\"\nthreshold = -1.0", "never negative"),
            ("[post.anomaly]\nmetric = \"mae\"", "applies only to post.kind = \"anomaly\""),
        ];
        for (post, want) in cases {
            let e = spec(post).expect_err(post);
            assert!(e.contains(want), "{post}: {e}");
            assert!(e.contains("line "), "{e}");
        }
    }

    proptest! {
        #[test]
        fn sigmoid_is_bounded_and_symmetric(x in any::<f32>().prop_filter("finite", |v| v.is_finite())) {
            let s = sigmoid(x);
            prop_assert!((0.0..=1.0).contains(&s));
            prop_assert!((s + sigmoid(-x) - 1.0).abs() < 1e-6);
        }

        #[test]
        fn reconstruction_error_is_zero_only_for_a_perfect_copy(
            x in prop::collection::vec(-1e3f32..1e3, 1..32),
            i in any::<prop::sample::Index>(),
        ) {
            for m in [ErrorMetric::Mse, ErrorMetric::Mae, ErrorMetric::Max] {
                prop_assert_eq!(reconstruction_error(m, &x, &x), Some(0.0));
                let mut y = x.clone();
                y[i.index(x.len())] += 1.0;
                prop_assert!(reconstruction_error(m, &x, &y).unwrap() > 0.0);
            }
        }
    }
}
