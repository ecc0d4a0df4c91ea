//! Pipelines of models declared in one spec: the model of `model.toml` is the first
//! stage, and each `[[stage]]` is a further ONNX file of the same directory that takes
//! the previous stage's results. Today a stage takes `from = "crops"`: the boxes of a
//! `post.kind = "text_boxes"` stage, each cut out of the original image (see
//! [`crate::pipeline::crop_quad`]) and run through the stage's own `[pre.image]`, model
//! and post-processing (PP-OCR: detector → crops → recogniser). Every stage runs on the
//! same [`Engine`], and the answer carries each stage's latency.
//!
//! A stage may instead take `from = "outputs"`: a sliding window of the stage before it's
//! outputs (`[stage.window]`, see [`outputs`]), kept per stream, as wake-word systems
//! chain a front end, an embedding model and a classifier.
//!
//! The directory, its ONNX files and its one spec are one unit: published, updated and
//! rolled back together.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::DynamicImage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::engine::spec::{
    ImageGeometry, ImageSpec, LimitsSpec, LoadedSpec, ModelSpec, MonitorSpec, PostKind, PostSpec, PreSpec,
};
use crate::engine::{Engine, InferError, LoadError, LoadedModel, ModelLimits, Request};
use crate::pipeline::{self, InputError, TextBox};

pub mod outputs;
pub use outputs::{OutputStages, OutputWindowSpec, takes_outputs};
// The types of `[[stage]]` live with the rest of the spec's (one-way dependencies: the
// spec's types know nothing of running stages).
pub use crate::engine::spec::{StageFrom, StageSpec};

/// Problems of `[post]`'s own tables (`text_boxes`, `ctc`) for its kind.
pub(crate) fn post_problems(post: &PostSpec, at: &dyn Fn(&str) -> String) -> Vec<String> {
    let mut out = Vec::new();
    if post.text_boxes.is_some() && post.kind != PostKind::TextBoxes {
        out.push(format!("{}[post.text_boxes] needs post.kind = \"text_boxes\"", at("post.text_boxes")));
    }
    if post.ctc.is_some() && post.kind != PostKind::Ctc {
        out.push(format!("{}[post.ctc] needs post.kind = \"ctc\"", at("post.ctc")));
    }
    if post.kind == PostKind::Ctc && post.ctc.is_none() {
        out.push(format!(
            "{}post.kind = \"ctc\" needs [post.ctc] with characters = \"<file in the model directory>\"",
            at("post.kind")
        ));
    }
    if let Some(problem) = post.text_boxes.as_ref().and_then(|t| t.problem()) {
        out.push(format!("{}{problem}", at("post.text_boxes")));
    }
    out
}

/// Problems of the `[[stage]]` list: names, files, what each takes, and each stage's own
/// spec by `own` (the spec's checks, which call this one: passing them in keeps this
/// module from depending on them).
pub(crate) fn stage_problems(
    spec: &ModelSpec,
    at: &dyn Fn(&str) -> String,
    own: &dyn Fn(&ModelSpec) -> Option<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut prev = spec.post.kind;
    for (ix, stage) in spec.stages.iter().enumerate() {
        let key = |k: &str| at(&format!("stage.{ix}.{k}"));
        let named = !stage.name.is_empty()
            && stage.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
        if !named {
            out.push(format!(
                "{}stage name `{}` must be non-empty and use only A-Z a-z 0-9 _ -",
                key("name"),
                stage.name
            ));
        }
        if spec.stages[..ix].iter().any(|s| s.name == stage.name) {
            out.push(format!(
                "{}stage name `{}` is used twice; give each stage its own",
                key("name"),
                stage.name
            ));
        }
        if stage.file == spec.file || spec.stages[..ix].iter().any(|s| s.file == stage.file) {
            out.push(format!(
                "{}stage `{}`: file `{}` is another stage's model; each stage has its own ONNX file",
                key("file"),
                stage.name,
                stage.file
            ));
        }
        if stage.from != StageFrom::Outputs && stage.window.is_some() {
            out.push(format!(
                "{}stage `{}`: [stage.window] is for from = \"outputs\"; remove it",
                key("window"),
                stage.name
            ));
        }
        if ix > 0 && stage.from != spec.stages[0].from {
            out.push(format!(
                "{}stage `{}` takes {:?} but the first stage takes {:?}; a pipeline's stages all take crops or all take outputs",
                key("from"),
                stage.name,
                stage.from,
                spec.stages[0].from
            ));
        }
        match stage.from {
            StageFrom::Outputs => match &stage.window {
                None => out.push(format!(
                    "{}stage `{}` takes outputs: give it [stage.window] with size = <outputs per run> (and hop)",
                    key("window"),
                    stage.name
                )),
                Some(w) if w.size == 0 || w.hop == 0 => out.push(format!(
                    "{}stage `{}`: window size ({}) and hop ({}) must be at least 1",
                    key("window"),
                    stage.name,
                    w.size,
                    w.hop
                )),
                Some(_) => {}
            },
            StageFrom::Crops => {
                if prev != PostKind::TextBoxes {
                    out.push(format!(
                        "{}stage `{}` takes crops, so the stage before it needs post.kind = \"text_boxes\"",
                        key("from"),
                        stage.name
                    ));
                }
                if spec.pre.image.is_none() {
                    out.push(format!(
                        "{}stage `{}` takes crops of the image: the first model needs [pre.image]",
                        key("from"),
                        stage.name
                    ));
                }
                if stage.pre.image.is_none() {
                    out.push(format!(
                        "{}stage `{}` takes crops: give it [stage.pre.image] (its height, mean, std, resize)",
                        key("from"),
                        stage.name
                    ));
                }
            }
        }
        // The stage's own spec is checked like a model's (inputs, image, post).
        if let Some(problems) = own(&stage.model_spec(spec)) {
            out.push(format!("{}stage `{}`: {problems}", key("name"), stage.name));
        }
        prev = stage.post.kind;
    }
    out
}

impl StageSpec {
    /// The stage as a model spec of its own: `<model>.<stage>`, the pipeline's version.
    pub fn model_spec(&self, head: &ModelSpec) -> ModelSpec {
        ModelSpec {
            name: format!("{}.{}", head.name, self.name),
            version: head.version.clone(),
            description: None,
            file: self.file.clone(),
            inputs: self.inputs.clone(),
            // Crops arrive as images; a window of outputs as a flat array of numbers.
            pre: PreSpec {
                format: match self.from {
                    StageFrom::Crops => crate::engine::spec::PayloadFormat::Image,
                    StageFrom::Outputs => crate::engine::spec::PayloadFormat::Json,
                },
                ..self.pre.clone()
            },
            post: self.post.clone(),
            limits: LimitsSpec::default(),
            monitor: MonitorSpec::default(),
            stages: Vec::new(),
        }
    }
}

/// Loads every `[[stage]]` model of `head`'s spec from `dir`
/// ([`LoadedModel::load_dir`] does, and keeps them in the head's `stages`).
pub fn load_stages(
    head: &LoadedModel,
    dir: &Path,
    limits: &ModelLimits,
) -> Result<Vec<LoadedModel>, LoadError> {
    let spec_path = dir.join("model.toml");
    head.spec
        .stages
        .iter()
        .map(|stage| {
            let spec = stage.model_spec(&head.spec);
            let model_path = dir.join(&spec.file);
            LoadedModel::load(LoadedSpec { spec, path: spec_path.clone(), model_path }, dir, limits)
        })
        .collect()
}

/// One stage's time for one payload, in milliseconds: pre-processing (decoding or
/// cropping and resizing), the model (summed over its runs), post-processing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageLatency {
    /// The stage (the first is the model's own name).
    pub stage: String,
    /// Runs of its model (one per crop for a crops stage).
    pub runs: usize,
    /// Pre-processing.
    pub pre_ms: f64,
    /// The model, including waiting for a worker.
    pub model_ms: f64,
    /// Post-processing.
    pub post_ms: f64,
}

/// A model's `[pre.image]` and the size it resizes to.
fn image_input(model: &LoadedModel) -> Result<(&ImageSpec, ImageGeometry), InferError> {
    match (model.spec.pre.image.as_ref(), model.spec.image_geometry()) {
        (Some(s), Some(g)) => Ok((s, g)),
        _ => Err(InferError::Input { model: model.name().to_string(), source: InputError::NoImageSpec }),
    }
}

/// One run of `model` on `data` (no stream state: a pipeline's models have none).
/// The data input's shape for `img`: its frame put into the declared shape, which the
/// engine needs when the image's height and width both vary.
fn image_shape(
    model: &LoadedModel,
    img: &DynamicImage,
    spec: &crate::engine::spec::ImageSpec,
    geo: &crate::engine::spec::ImageGeometry,
) -> Option<Vec<usize>> {
    model.spec.image_input_shape(pipeline::place(img.width(), img.height(), spec, geo).frame)
}

fn run_model(
    engine: &Engine,
    model: &Arc<LoadedModel>,
    data: Vec<f32>,
    shape: Option<Vec<usize>>,
    deadline: Duration,
) -> Result<crate::engine::Response, InferError> {
    let request = Request {
        model: model.name().to_string(),
        stream: None,
        data,
        deadline: Instant::now() + deadline,
        reset: false,
        shape,
    };
    engine.infer_blocking_to(model.clone(), request)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs an image payload through `head` and every stage it feeds, blocking; the answer
/// holds `lines` (one per box: `box`, `box_score`, and the last stage's answer, e.g.
/// `text` and `confidence`) and `stages` (each stage's latency). With a stage's
/// `post.threshold`, boxes whose answer scores below it are left out (PP-OCR's
/// `text_score`). `deadline` bounds each model run's wait for a worker.
pub fn run(
    engine: &Engine,
    head: &Arc<LoadedModel>,
    bytes: &[u8],
    deadline: Duration,
) -> Result<Map<String, Value>, InferError> {
    let name = head.name().to_string();
    let input_err = |source: InputError| InferError::Input { model: name.clone(), source };
    if takes_outputs(head) {
        return Err(input_err(InputError::Image {
            reason: "this pipeline's stages take windows of outputs: run it as a stream".into(),
        }));
    }
    let mut lat = vec![StageLatency { stage: name.clone(), runs: 1, ..Default::default() }];

    let started = Instant::now();
    let img = pipeline::decode_image(bytes).map_err(input_err)?;
    let (spec, geo) = image_input(head)?;
    let data = pipeline::tensor_from_image(&img, spec, &geo).map_err(input_err)?;
    let shape = image_shape(head, &img, spec, &geo);
    lat[0].pre_ms = ms(started.elapsed());

    let started = Instant::now();
    let response = run_model(engine, head, data, shape, deadline)?;
    lat[0].model_ms = ms(started.elapsed());

    let started = Instant::now();
    let map = response.post_output().cloned();
    let boxes: Vec<TextBox> = match map {
        Some(out) => head.post().text_boxes_of(&out, img.width(), img.height()),
        None => Vec::new(),
    };
    lat[0].post_ms = ms(started.elapsed());

    let rgb = img.to_rgb8();
    let mut lines: Vec<Map<String, Value>> = boxes
        .iter()
        .map(|b| {
            let mut m = Map::new();
            m.insert("box".into(), json!(b.points));
            m.insert("box_score".into(), json!(b.score));
            m
        })
        .collect();
    let mut crops: Vec<Option<DynamicImage>> = Vec::new();
    // Lines kept: a crop that cannot be cut, or an answer under the threshold, drops.
    let mut keep = vec![true; lines.len()];
    for stage in &head.stages {
        let sname = stage.name().to_string();
        let mut l = StageLatency { stage: sname.clone(), ..Default::default() };
        let started = Instant::now();
        if crops.is_empty() {
            crops = boxes.iter().map(|b| pipeline::crop_image(&rgb, &b.points)).collect();
        }
        l.pre_ms += ms(started.elapsed());
        let (sspec, sgeo) = image_input(stage)?;
        for (ix, crop) in crops.iter().enumerate() {
            let Some(crop) = crop else {
                keep[ix] = false;
                continue;
            };
            let started = Instant::now();
            let data = pipeline::tensor_from_image(crop, sspec, &sgeo)
                .map_err(|source| InferError::Input { model: sname.clone(), source })?;
            let shape = image_shape(stage, crop, sspec, &sgeo);
            l.pre_ms += ms(started.elapsed());
            let started = Instant::now();
            let response = run_model(engine, stage, data, shape, deadline)?;
            l.model_ms += ms(started.elapsed());
            l.runs += 1;
            let started = Instant::now();
            let answer = stage.post().apply_output(response.post_output(), None, 0);
            let score = stage.post().confidence_of(&answer);
            if let (Some(th), Some(score)) = (stage.spec.post.threshold, score)
                && score < th
            {
                keep[ix] = false;
            }
            lines[ix].extend(answer);
            l.post_ms += ms(started.elapsed());
        }
        lat.push(l);
    }
    let mut k = keep.into_iter();
    lines.retain(|_| k.next().unwrap_or(false));
    let mut out = Map::new();
    out.insert("lines".into(), Value::Array(lines.into_iter().map(Value::Object).collect()));
    out.insert("stages".into(), json!(lat));
    Ok(out)
}

#[cfg(all(test, feature = "onnx"))] // on real ONNX models
mod tests;
