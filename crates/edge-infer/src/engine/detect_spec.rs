//! `[post.detection]`: how a YOLO-style detector's output becomes boxes.
//!
//! Kept beside `spec.rs` so that each post-processing family owns its own types and
//! checks; `spec.rs` only hooks them in.

use serde::{Deserialize, Serialize};

/// How the output tensor holds its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DetectLayout {
    /// `[1, attributes, candidates]`: one row per attribute (YOLOv8, YOLO11).
    #[default]
    AttributesFirst,
    /// `[1, candidates, attributes]`: one row per candidate (YOLOv5, YOLOv7, YOLOX).
    CandidatesFirst,
}

/// How a candidate's first four attributes give its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BoxFormat {
    /// Centre x, centre y, width, height (YOLO).
    #[default]
    Cxcywh,
    /// Left, top, right, bottom.
    Xyxy,
}

/// Object detection post-processing (`kind = "detection"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectSpec {
    /// Where the candidates are in the output's shape.
    #[serde(default)]
    pub layout: DetectLayout,
    /// How the box is written.
    #[serde(default)]
    pub box_format: BoxFormat,
    /// A candidate carries an objectness score after its box, multiplied into its class
    /// scores (YOLOv5, YOLOv7); YOLOv8 and later have none.
    #[serde(default)]
    pub objectness: bool,
    /// Number of classes; default: the number of `post.labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// Candidates scoring below this are dropped before suppression.
    #[serde(default = "default_score")]
    pub score_threshold: f32,
    /// A box overlapping a better one of the same class by more than this
    /// intersection-over-union is suppressed.
    #[serde(default = "default_iou")]
    pub iou_threshold: f32,
    /// Suppress overlapping boxes whatever their classes (one box per object).
    #[serde(default)]
    pub class_agnostic: bool,
    /// Most detections reported, best first.
    #[serde(default = "default_max")]
    pub max_detections: usize,
}

impl Default for DetectSpec {
    fn default() -> Self {
        DetectSpec {
            layout: DetectLayout::default(),
            box_format: BoxFormat::default(),
            objectness: false,
            classes: None,
            score_threshold: default_score(),
            iou_threshold: default_iou(),
            class_agnostic: false,
            max_detections: default_max(),
        }
    }
}

fn default_score() -> f32 {
    0.25
}

fn default_iou() -> f32 {
    0.45
}

fn default_max() -> usize {
    300
}

impl DetectSpec {
    /// Attributes per candidate: the box, the objectness if any, one score per class.
    pub fn attributes(&self, classes: usize) -> usize {
        4 + usize::from(self.objectness) + classes
    }

    /// The problems of `[post.detection]` with `labels` (each with its fix); `at` gives a
    /// key's `file:line` prefix.
    pub fn problems(&self, labels: usize, at: &dyn Fn(&str) -> String) -> Vec<String> {
        let mut out = Vec::new();
        match self.classes {
            None if labels == 0 => out.push(format!(
                "{}post.kind = \"detection\" needs the number of classes: give post.labels (one name per class) or post.detection.classes",
                at("post.detection")
            )),
            Some(0) => out.push(format!(
                "{}post.detection.classes is 0; give the number of classes the detector scores",
                at("post.detection.classes")
            )),
            Some(n) if labels != 0 && labels != n => out.push(format!(
                "{}post.detection.classes is {n} but post.labels names {labels}; give one label per class",
                at("post.detection.classes")
            )),
            _ => {}
        }
        if !(self.score_threshold.is_finite() && (0.0..=1.0).contains(&self.score_threshold)) {
            out.push(format!(
                "{}post.detection.score_threshold is {}; give a score from 0 to 1",
                at("post.detection.score_threshold"),
                self.score_threshold
            ));
        }
        if !(self.iou_threshold.is_finite() && self.iou_threshold > 0.0 && self.iou_threshold <= 1.0) {
            out.push(format!(
                "{}post.detection.iou_threshold is {}; give an overlap above 0 and at most 1 (0.45 is usual)",
                at("post.detection.iou_threshold"),
                self.iou_threshold
            ));
        }
        if self.max_detections == 0 {
            out.push(format!(
                "{}post.detection.max_detections is 0; give at least 1",
                at("post.detection.max_detections")
            ));
        }
        out
    }
}

impl DetectSpec {
    /// Why output `name` of concrete `shape` cannot hold this spec's candidates with
    /// `classes` classes, with the fix; `None` if it can.
    pub fn output_problem(&self, classes: usize, shape: &[usize], name: &str) -> Option<String> {
        let attrs = self.attributes(classes);
        let dims: Vec<usize> = shape.iter().copied().skip_while(|d| *d == 1).collect();
        let rows = match dims.as_slice() {
            [rows, _] => *rows,
            // One candidate, or an output without a candidate axis.
            [a] => return (*a != attrs).then(|| self.count_problem(attrs, classes, shape, name)),
            _ => {
                return Some(format!(
                    "post.kind = \"detection\" reads a [1, attributes, candidates] or [1, candidates, attributes] output, but output `{name}` is {shape:?}; name the right one with post.output"
                ));
            }
        };
        let (axis, other) = match self.layout {
            DetectLayout::AttributesFirst => (rows, dims[1]),
            DetectLayout::CandidatesFirst => (dims[1], rows),
        };
        if axis == attrs {
            return None;
        }
        let mut why = self.count_problem(attrs, classes, shape, name);
        if other == attrs {
            let flip = match self.layout {
                DetectLayout::AttributesFirst => "candidates-first",
                DetectLayout::CandidatesFirst => "attributes-first",
            };
            why.push_str(&format!("; the other axis fits: set post.detection.layout = \"{flip}\""));
        }
        Some(why)
    }

    fn count_problem(&self, attrs: usize, classes: usize, shape: &[usize], name: &str) -> String {
        let obj = if self.objectness { " + 1 objectness" } else { "" };
        format!(
            "post.detection expects {attrs} attributes per candidate (4 box{obj} + {classes} classes) but output `{name}` {shape:?} does not have {attrs} on its attributes axis; give one label per class (or post.detection.classes), and objectness only for YOLOv5-style outputs"
        )
    }
}
