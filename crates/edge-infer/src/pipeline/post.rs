//! Post-processing: from a raw output tensor to an answer.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::ctc::CtcDecoder;
use super::detect;
use super::families;
use super::image::ImageFrame;
use super::textdet::{TextBox, text_boxes};
use crate::engine::Output;
use crate::engine::spec::{PostKind, PostSpec};

/// Per-stream memory of the segment hysteresis.
#[derive(Debug, Default, Clone)]
pub struct SegmentState {
    active: bool,
    /// Window index where the current segment started.
    start: u64,
}

/// Applies a model's post-processing spec.
#[derive(Debug, Clone)]
pub struct PostProcessor {
    spec: PostSpec,
    /// `kind = "ctc"`: the character list, read from the model directory at load.
    ctc: Option<Arc<CtcDecoder>>,
    /// `kind = "text_boxes"`: the map's width and height when the output's shape is
    /// fixed (for [`apply`](Self::apply), which sees only values).
    map: Option<(usize, usize)>,
}

impl PostProcessor {
    /// A processor for `spec`.
    pub fn new(spec: &PostSpec) -> PostProcessor {
        PostProcessor { spec: spec.clone(), ctc: None, map: None }
    }

    /// The post-processing family.
    pub fn kind(&self) -> PostKind {
        self.spec.kind
    }

    /// With the character list a `ctc` spec names.
    pub fn with_ctc(mut self, decoder: CtcDecoder) -> PostProcessor {
        self.ctc = Some(Arc::new(decoder));
        self
    }

    /// With the fixed size of a `text_boxes` model's map.
    pub fn with_map(mut self, width: usize, height: usize) -> PostProcessor {
        self.map = Some((width, height));
        self
    }

    /// The boxes of a text detector's map output (`[1, 1, H, W]` or `[H, W]`), in the
    /// pixels of an original image of `width` x `height`.
    pub fn text_boxes_of(&self, out: &Output, width: u32, height: u32) -> Vec<TextBox> {
        let spec = self.spec.text_boxes.clone().unwrap_or_default();
        match out.shape.as_slice() {
            [.., h, w] => text_boxes(&out.values, *w, *h, width, height, &spec),
            _ => Vec::new(),
        }
    }

    /// [`apply`](Self::apply) with the output's shape at hand: a `text_boxes` map whose
    /// size varies (boxes in the pixels of the image `frame` came from, when known, else
    /// of the map), a CTC output whose class count is its last dimension.
    pub fn apply_output(
        &self,
        out: Option<&Output>,
        frame: Option<&ImageFrame>,
        window: u64,
    ) -> Map<String, Value> {
        let Some(out) = out else { return Map::new() };
        match (self.spec.kind, out.shape.as_slice()) {
            (PostKind::TextBoxes, [.., h, w]) => {
                let (src_w, src_h) = frame.map_or((*w as u32, *h as u32), |f| f.original);
                let boxes = text_boxes(
                    &out.values,
                    *w,
                    *h,
                    src_w,
                    src_h,
                    &self.spec.text_boxes.clone().unwrap_or_default(),
                );
                let mut m = Map::new();
                m.insert("boxes".into(), json!(boxes));
                m
            }
            (PostKind::Ctc, [.., classes]) => self.ctc_answer(&out.values, *classes),
            _ => self.apply_full(&out.values, None, frame, window, None),
        }
    }

    /// The result of one answer's `out`put: a text detector's map read at the size the
    /// output has (it varies with the image), every other family from the values (as
    /// [`apply_full`](Self::apply_full)). The one entry point for callers holding a
    /// whole answer, so that the daemon, the API and the CLI read a map alike.
    pub fn apply_answer(
        &self,
        out: Option<&Output>,
        input: Option<&[f32]>,
        frame: Option<&ImageFrame>,
        window: u64,
        segment: Option<&mut SegmentState>,
    ) -> Map<String, Value> {
        if self.spec.kind == PostKind::TextBoxes {
            return self.apply_output(out, frame, window);
        }
        self.apply_full(out.map_or(&[][..], |o| o.values.as_slice()), input, frame, window, segment)
    }

    /// The score a post-processed answer reports (`score`, or a CTC `confidence`).
    pub fn confidence_of(&self, answer: &Map<String, Value>) -> Option<f32> {
        answer.get("confidence").or_else(|| answer.get("score")).and_then(Value::as_f64).map(|v| v as f32)
    }

    fn ctc_answer(&self, values: &[f32], classes: usize) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(d) = &self.ctc {
            let out = d.decode(values, classes);
            m.insert("text".into(), json!(out.text));
            m.insert("confidence".into(), json!(out.confidence));
            if let Some(th) = self.spec.threshold {
                m.insert("confident".into(), json!(out.confidence >= th));
            }
        }
        m
    }

    /// The `score` that [`apply`](Self::apply) would report (the top probability, or the
    /// single score), without building the result: the confidence a cascade judges.
    pub fn confidence(&self, values: &[f32]) -> Option<f32> {
        match self.spec.kind {
            PostKind::None
            | PostKind::Regression
            | PostKind::Anomaly
            | PostKind::Detection
            | PostKind::TextBoxes => return None,
            PostKind::Multilabel => {
                let sig = self.spec.multilabel.as_ref().is_some_and(|m| m.sigmoid);
                return values.iter().map(|v| if sig { families::sigmoid(*v) } else { *v }).reduce(f32::max);
            }
            PostKind::Ctc => {
                let d = self.ctc.as_ref()?;
                return Some(d.decode(values, d.classes()).confidence);
            }
            PostKind::Scores => {}
        }
        let probs: Vec<f32> = if self.spec.softmax { softmax(values) } else { values.to_vec() };
        match probs.len() {
            0 => None,
            1 => Some(probs[0]),
            _ => Some(probs[argmax(&probs)]),
        }
    }

    /// Turns the post output's values into the `outputs` object of a result (empty with
    /// `kind = "none"`: see [`PostSpec::wants_raw`]). `window` is
    /// the stream's window index, used by segments; `segment` is the stream's hysteresis
    /// state (segments need one per stream).
    pub fn apply(
        &self,
        values: &[f32],
        window: u64,
        segment: Option<&mut SegmentState>,
    ) -> Map<String, Value> {
        self.apply_full(values, None, None, window, segment)
    }

    /// As [`apply`](Self::apply), with the model input the values answer: the anomaly
    /// family compares the two.
    pub fn apply_to(
        &self,
        values: &[f32],
        input: Option<&[f32]>,
        window: u64,
        segment: Option<&mut SegmentState>,
    ) -> Map<String, Value> {
        self.apply_full(values, input, None, window, segment)
    }

    /// As [`apply`](Self::apply), with everything a family may need: the model `input`
    /// (anomaly scores) and the image `frame` (detection boxes in the original pixels).
    pub fn apply_full(
        &self,
        values: &[f32],
        input: Option<&[f32]>,
        frame: Option<&ImageFrame>,
        window: u64,
        segment: Option<&mut SegmentState>,
    ) -> Map<String, Value> {
        if self.spec.kind == PostKind::Detection {
            let spec = self.spec.detection.clone().unwrap_or_default();
            let classes = spec.classes.unwrap_or(self.spec.labels.len());
            let dets = detect::detect(values, &spec, classes, frame);
            return detect::to_json(&dets, &self.spec.labels, frame.is_some());
        }
        let mut out = Map::new();
        match self.spec.kind {
            // The caller adds the raw outputs, which are the whole answer.
            PostKind::None => return out,
            PostKind::Multilabel => {
                families::multilabel(&self.spec, values, &mut out);
                return out;
            }
            PostKind::Regression => {
                families::regression(&self.spec, values, &mut out);
                return out;
            }
            PostKind::Anomaly => {
                families::anomaly(&self.spec, input, values, &mut out);
                return out;
            }
            PostKind::Ctc => {
                let classes = self.ctc.as_ref().map(|d| d.classes()).unwrap_or(0);
                return self.ctc_answer(values, classes);
            }
            PostKind::TextBoxes => {
                // The map's size: fixed by the model, or the image's frame (a DB map is
                // as large as its input). Boxes are in the original image's pixels when
                // the image is known, else in the map's.
                let map = self
                    .map
                    .or_else(|| frame.map(|f| (f.placement.frame.0 as usize, f.placement.frame.1 as usize)));
                if let Some((w, h)) = map {
                    let spec = self.spec.text_boxes.clone().unwrap_or_default();
                    let (src_w, src_h) = frame.map_or((w as u32, h as u32), |f| f.original);
                    out.insert("boxes".into(), json!(text_boxes(values, w, h, src_w, src_h, &spec)));
                }
                return out;
            }
            PostKind::Detection | PostKind::Scores => {}
        }
        let probs: Vec<f32> = if self.spec.softmax { softmax(values) } else { values.to_vec() };
        if probs.is_empty() {
            return out;
        }
        let score;
        if probs.len() == 1 {
            score = probs[0];
            out.insert("score".into(), json!(score));
            if let Some(th) = self.spec.threshold {
                let active = score >= th;
                out.insert("active".into(), json!(active));
                if self.spec.labels.len() == 2 {
                    out.insert("label".into(), json!(self.spec.labels[usize::from(active)]));
                }
            }
        } else {
            let best = argmax(&probs);
            score = probs[best];
            out.insert("class".into(), json!(best));
            if let Some(label) = self.spec.labels.get(best) {
                out.insert("label".into(), json!(label));
            }
            out.insert("score".into(), json!(score));
            if let Some(th) = self.spec.threshold {
                out.insert("confident".into(), json!(score >= th));
            }
            if let Some(k) = self.spec.top_k {
                let mut order: Vec<usize> = (0..probs.len()).collect();
                order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
                let top: Vec<Value> = order
                    .into_iter()
                    .take(k)
                    .map(|i| match self.spec.labels.get(i) {
                        Some(l) => json!({"class": i, "label": l, "score": probs[i]}),
                        None => json!({"class": i, "score": probs[i]}),
                    })
                    .collect();
                out.insert("top".into(), Value::Array(top));
            }
            if self.spec.softmax {
                out.insert("probs".into(), json!(probs));
            }
        }
        if let (Some(seg), Some(state)) = (&self.spec.segments, segment) {
            // Hysteresis: on at `on`, off below `off`, so a score hovering near one
            // threshold does not toggle the segment on every window.
            let was = state.active;
            if !was && score >= seg.on {
                state.active = true;
                state.start = window;
                out.insert("segment".into(), json!({"event": "start", "start": window}));
            } else if was && score < seg.off {
                state.active = false;
                out.insert("segment".into(), json!({"event": "end", "start": state.start, "end": window}));
            }
            out.insert("active".into(), json!(state.active));
        }
        out
    }
}

/// Numerically stable softmax.
pub fn softmax(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = values.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if v.total_cmp(&values[best]).is_gt() {
            best = i;
        }
    }
    best
}
