//! `edge-agent bench`'s cost of each model of a pipeline (`[[stage]]`): pre-processing,
//! the model and post-processing of every stage, as the engine runs them. A model
//! without stages is one entry, its own.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use edge_infer::engine::{Engine, LoadedModel, Request};
use edge_infer::stages::{OutputStages, StageLatency};

/// One stage's mean cost, in milliseconds per request that reaches it.
#[derive(Debug, Clone, Serialize)]
pub struct StageCost {
    /// The stage: the model's own name first, then `<model>.<stage>`.
    pub stage: String,
    /// Requests measured that ran this stage.
    pub requests: usize,
    /// Mean model runs per request (a crops stage runs once per box).
    pub runs: f64,
    pub pre_ms: f64,
    pub model_ms: f64,
    pub post_ms: f64,
}

/// Sums of the latencies of one stage.
#[derive(Default)]
struct Sum {
    stage: String,
    requests: usize,
    runs: usize,
    pre: f64,
    model: f64,
    post: f64,
}

impl Sum {
    fn add(&mut self, l: &StageLatency) {
        self.stage.clone_from(&l.stage);
        self.requests += 1;
        self.runs += l.runs;
        (self.pre, self.model, self.post) =
            (self.pre + l.pre_ms, self.model + l.model_ms, self.post + l.post_ms);
    }

    fn cost(&self) -> StageCost {
        let n = self.requests.max(1) as f64;
        StageCost {
            stage: self.stage.clone(),
            requests: self.requests,
            runs: self.runs as f64 / n,
            pre_ms: self.pre / n,
            model_ms: self.model / n,
            post_ms: self.post / n,
        }
    }
}

fn add_all(sums: &mut Vec<Sum>, lat: &[StageLatency]) {
    for (ix, l) in lat.iter().enumerate() {
        if sums.len() <= ix {
            sums.push(Sum::default());
        }
        sums[ix].add(l);
    }
}

/// Each stage's cost over `n` requests. `head` is the model's own stage as the caller
/// measured it (pre per model input, model, post). A pipeline of crops runs the
/// `--input` image through every stage (without an image only the model's own entry is
/// given); a pipeline of windows of outputs runs the model inputs `inputs` in order,
/// round and round, through the stages' windows as one stream.
pub(super) fn per_stage(
    engine: &Engine,
    model: &Arc<LoadedModel>,
    head: StageCost,
    inputs: &[Vec<f32>],
    path: Option<&Path>,
    n: usize,
) -> anyhow::Result<Vec<StageCost>> {
    if model.stages.is_empty() {
        return Ok(vec![head]);
    }
    let deadline = Duration::from_secs(60);
    let mut sums: Vec<Sum> = Vec::new();
    if edge_infer::stages::takes_outputs(model) {
        let mut chain = OutputStages::new(model);
        // The windows fill first: as many requests again as the longest window, unmeasured.
        let fill = model.spec.stages.iter().filter_map(|s| s.window.as_ref()).map(|w| w.size).sum::<usize>();
        for (i, data) in inputs.iter().cycle().take(fill + n).enumerate() {
            let resp = infer_once(engine, model, data, None)?;
            let own = StageLatency {
                stage: model.name().to_string(),
                runs: 1,
                pre_ms: head.pre_ms,
                model_ms: resp.run.as_secs_f64() * 1000.0,
                post_ms: head.post_ms,
            };
            let fed = chain.feed(engine, model, resp.post_values().to_vec(), own, deadline)?;
            if i >= fill {
                add_all(&mut sums, &fed.stages);
            }
        }
    } else {
        let Some(path) = path else { return Ok(vec![head]) };
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        for _ in 0..n {
            let out = edge_infer::stages::run(engine, model, &bytes, deadline)?;
            let lat: Vec<StageLatency> =
                out.get("stages").cloned().map(serde_json::from_value).transpose()?.unwrap_or_default();
            add_all(&mut sums, &lat);
        }
    }
    Ok(sums.iter().map(Sum::cost).collect())
}

/// One request through the engine outside any stream, with a deadline far enough away
/// that a slow debug build never misses it.
pub(super) fn infer_once(
    engine: &Engine,
    model: &LoadedModel,
    data: &[f32],
    shape: Option<&[usize]>,
) -> anyhow::Result<edge_infer::engine::Response> {
    Ok(engine.infer_blocking(Request {
        model: model.name().to_string(),
        stream: None,
        data: data.to_vec(),
        deadline: Instant::now() + Duration::from_secs(60),
        reset: false,
        shape: shape.map(<[usize]>::to_vec),
    })?)
}
