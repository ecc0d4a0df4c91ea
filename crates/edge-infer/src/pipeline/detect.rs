//! Object detection post-processing for YOLO-style outputs: a score threshold,
//! non-maximum suppression (per class or across classes), boxes mapped back to the
//! original image (undoing the letterbox), labels.

use serde_json::{Map, Value, json};

use super::image::ImageFrame;
use crate::engine::spec::{BoxFormat, DetectLayout, DetectSpec};

/// One detected object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Class index.
    pub class: usize,
    /// Class score (times the objectness, for detectors that have one).
    pub score: f32,
    /// Left, top, right, bottom.
    pub bbox: [f32; 4],
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes; 0 for boxes without area
/// or with a coordinate that is not finite.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    if !a.iter().chain(b).all(|v| v.is_finite()) {
        return 0.0;
    }
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 && union.is_finite() { inter / union } else { 0.0 }
}

/// The candidates of a raw output scoring at least the threshold, with finite boxes,
/// in model-input pixels. An output whose length is not a whole number of candidates
/// gives none (the model's output shape is checked against the spec when it loads).
pub fn candidates(values: &[f32], spec: &DetectSpec, classes: usize) -> Vec<Detection> {
    let attrs = spec.attributes(classes);
    if classes == 0 || values.is_empty() || !values.len().is_multiple_of(attrs) {
        return Vec::new();
    }
    let n = values.len() / attrs;
    let at = |cand: usize, attr: usize| match spec.layout {
        DetectLayout::AttributesFirst => values[attr * n + cand],
        DetectLayout::CandidatesFirst => values[cand * attrs + attr],
    };
    let first_class = 4 + usize::from(spec.objectness);
    let mut out = Vec::new();
    for i in 0..n {
        let mut best = 0;
        let mut best_score = f32::NEG_INFINITY;
        for c in 0..classes {
            let s = at(i, first_class + c);
            // `>` skips NaN: a NaN score never wins.
            if s > best_score {
                best = c;
                best_score = s;
            }
        }
        let score = if spec.objectness { best_score * at(i, 4) } else { best_score };
        if !(score.is_finite() && score >= spec.score_threshold) {
            continue;
        }
        let (a, b, c, d) = (at(i, 0), at(i, 1), at(i, 2), at(i, 3));
        let bbox = match spec.box_format {
            BoxFormat::Cxcywh => [a - c / 2.0, b - d / 2.0, a + c / 2.0, b + d / 2.0],
            BoxFormat::Xyxy => [a, b, c, d],
        };
        if bbox.iter().all(|v| v.is_finite()) {
            out.push(Detection { class: best, score, bbox });
        }
    }
    out
}

/// Greedy non-maximum suppression: best score first, a box is kept unless it overlaps
/// a kept box (of the same class, or of any class with `agnostic`) by more than `limit`.
/// Returns at most `max` detections ordered by score, best first (ties by input order).
pub fn nms(mut dets: Vec<Detection>, limit: f32, agnostic: bool, max: usize) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept.len() >= max {
            break;
        }
        let suppressed =
            kept.iter().any(|k| (agnostic || k.class == d.class) && iou(&k.bbox, &d.bbox) > limit);
        if !suppressed {
            kept.push(d);
        }
    }
    kept
}

/// The whole step: candidates, mapped to the original image when its frame is known
/// (before suppression, so that overlaps are judged on the boxes reported), then NMS.
pub fn detect(
    values: &[f32],
    spec: &DetectSpec,
    classes: usize,
    frame: Option<&ImageFrame>,
) -> Vec<Detection> {
    let mut dets = candidates(values, spec, classes);
    if let Some(f) = frame {
        for d in &mut dets {
            d.bbox = f.to_original(d.bbox);
        }
    }
    nms(dets, spec.iou_threshold, spec.class_agnostic, spec.max_detections)
}

/// The `outputs` object of a detection result:
/// `{"detections": [{"label", "class", "score", "box": [x1, y1, x2, y2]}]}`, with `label`
/// null for a class without a name, and the boxes' `frame` (`"image"` or `"input"`).
pub fn to_json(dets: &[Detection], labels: &[String], mapped: bool) -> Map<String, Value> {
    let list: Vec<Value> = dets
        .iter()
        .map(|d| {
            json!({
                "label": labels.get(d.class),
                "class": d.class,
                "score": d.score,
                "box": d.bbox,
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("detections".into(), Value::Array(list));
    out.insert("frame".into(), json!(if mapped { "image" } else { "input" }));
    out
}

#[cfg(test)]
#[path = "detect_tests.rs"]
mod tests;
