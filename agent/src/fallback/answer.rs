//! Answering one pre-processed request where its route says, for the stream tasks and
//! the local API alike: locally, in the cloud, as a cascade, or degraded to local when
//! the cloud cannot answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Fallback, REASON_DEGRADED, REASON_LOW_CONFIDENCE, REASON_QUEUE, Route, Unavailable};
use crate::config::fallback::WhenUnavailable;
use edge_infer::engine::{Engine, InferError, LoadedModel, Output, Request};
use edge_infer::pipeline::{ImageFrame, PostProcessor, SegmentState};

/// One request, pre-processed.
pub struct Job {
    pub model: String,
    pub stream: Option<String>,
    pub data: Vec<f32>,
    pub reset: bool,
    /// How long it may wait for a local worker, counted from when it is queued here (a
    /// local answer after a cloud that timed out gets the whole wait again).
    pub wait: Duration,
    /// The data input's shape when the number of values does not tell it (an image
    /// whose height and width both vary, a request that names its shape); `None` lets
    /// the engine and the cloud client work it out from the length.
    pub shape: Option<Vec<usize>>,
}

/// One request's answer: outputs, version, where and why.
pub struct Answer {
    pub outputs: Vec<Output>,
    /// The output post-processing reads.
    pub post_index: Option<usize>,
    pub version: String,
    pub place: &'static str,
    pub reason: Option<&'static str>,
    /// The local model that answered, or would have.
    pub local: Option<Arc<LoadedModel>>,
    /// A cascade's local answer that was deferred to the cloud: version and score.
    pub deferred: Option<Value>,
}

impl Answer {
    /// The values post-processing reads (empty if the answer has no such output).
    pub fn post_values(&self) -> &[f32] {
        self.post_output().map(|o| o.values.as_slice()).unwrap_or(&[])
    }

    /// The output post-processing reads, with its shape.
    pub fn post_output(&self) -> Option<&Output> {
        self.post_index.and_then(|i| self.outputs.get(i))
    }

    /// The answer's result by `post`: a text detector's map is read at the size it has
    /// (which varies with the image), every other family from the values. `input` is
    /// the model input (anomaly scores), `frame` the image's (boxes in its pixels).
    pub fn post_process(
        &self,
        post: &PostProcessor,
        input: Option<&[f32]>,
        frame: Option<&ImageFrame>,
        window: u64,
        segment: Option<&mut SegmentState>,
    ) -> serde_json::Map<String, Value> {
        post.apply_answer(self.post_output(), input, frame, window, segment)
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// The local model failed (queue full, deadline, bad input, ...).
    Local(InferError),
    /// Sent to the cloud, which could not answer, and the policy (or the lack of a
    /// local model) does not allow a local answer.
    Rejected { reason: &'static str, cause: Unavailable },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Local(e) => e.fmt(f),
            Failure::Rejected { reason, cause } => {
                write!(f, "{cause}; request rejected (routed to the cloud: {reason})")
            }
        }
    }
}

impl std::error::Error for Failure {}

/// Runs `data` on the local model. Also returns the model's run time (not the wait):
/// what each queued request adds to the next one's wait.
async fn run_local(
    engine: &Engine,
    model: &Arc<LoadedModel>,
    job: &Job,
    data: Vec<f32>,
) -> Result<(Answer, std::time::Duration), Failure> {
    let req = Request {
        model: job.model.clone(),
        stream: job.stream.clone(),
        data,
        deadline: Instant::now() + job.wait,
        reset: job.reset,
        shape: job.shape.clone(),
    };
    let resp = engine.infer_to(model.clone(), req).await.map_err(Failure::Local)?;
    let answer = Answer {
        post_index: Some(model.post_output()),
        version: resp.model.version().to_string(),
        outputs: resp.outputs,
        place: "local",
        reason: None,
        local: Some(model.clone()),
        deferred: None,
    };
    Ok((answer, resp.run))
}

/// Runs `job` where `route` says.
pub async fn answer(
    engine: &Engine,
    fallback: &Fallback,
    route: &Route,
    mut job: Job,
) -> Result<Answer, Failure> {
    let data = std::mem::take(&mut job.data);
    match route {
        Route::Local { model, cloud, overflow } => {
            let cascade = cloud.as_ref().and_then(|c| c.min_confidence().map(|t| (c, t)));
            // The cloud may get the same input (a cascade, or a missed deadline): keep a
            // copy only then.
            let keep = (cascade.is_some() || *overflow).then(|| data.clone());
            let (local, run) = match run_local(engine, model, &job, data).await {
                Ok(done) => done,
                Err(Failure::Local(e @ (InferError::Deadline { .. } | InferError::QueueFull { .. })))
                    if *overflow =>
                {
                    let (Some(cloud), Some(data)) = (cloud, keep) else { return Err(Failure::Local(e)) };
                    fallback.overflowed(cloud, &e.to_string());
                    return match fallback.infer(cloud, &model.spec, data, job.shape.as_deref()).await {
                        Ok(reply) => {
                            Ok(from_cloud(fallback, &job, &model.spec, reply, REASON_QUEUE, Some(model)))
                        }
                        Err(cause) => degrade_or_reject(fallback, REASON_QUEUE, cause, None),
                    };
                }
                Err(e) => return Err(e),
            };
            if let Some(c) = cloud {
                c.observe_run(run);
            }
            let (Some((cloud, threshold)), Some(data)) = (cascade, keep) else { return Ok(local) };
            let score = model.post().confidence(local.post_values());
            let deferred = score.is_some_and(|s| s < threshold);
            fallback.count_judged(deferred);
            if !deferred {
                return Ok(local);
            }
            let summary = json!({"version": local.version, "score": score, "min_confidence": threshold});
            match fallback.infer(cloud, &model.spec, data, job.shape.as_deref()).await {
                Ok(reply) => {
                    let a =
                        from_cloud(fallback, &job, &model.spec, reply, REASON_LOW_CONFIDENCE, Some(model));
                    Ok(Answer { deferred: Some(summary), ..a })
                }
                Err(cause) => {
                    let fallback_answer =
                        Answer { reason: Some(REASON_DEGRADED), deferred: Some(summary), ..local };
                    degrade_or_reject(fallback, REASON_LOW_CONFIDENCE, cause, Some(fallback_answer))
                }
            }
        }
        Route::Cloud { cloud, reason, local } => {
            let Some(spec) = route.spec() else {
                // `build` and config validation make sure a cloud-only model has a spec.
                return Err(Failure::Rejected {
                    reason,
                    cause: Unavailable { kind: "config", message: format!("no spec for `{}`", cloud.name) },
                });
            };
            let degradable = local.is_some() && fallback.when_unavailable() == WhenUnavailable::Local;
            let keep = degradable.then(|| data.clone());
            match fallback.infer(cloud, spec, data, job.shape.as_deref()).await {
                Ok(reply) => Ok(from_cloud(fallback, &job, spec, reply, reason, local.as_ref())),
                Err(cause) => match (local, keep) {
                    (Some(m), Some(data)) => {
                        fallback.count_degraded();
                        let (mut a, _) = run_local(engine, m, &job, data).await?;
                        a.reason = Some(REASON_DEGRADED);
                        Ok(a)
                    }
                    _ => degrade_or_reject(fallback, reason, cause, None),
                },
            }
        }
    }
}

/// The cloud's answer to `job`, counted for telemetry.
fn from_cloud(
    fallback: &Fallback,
    job: &Job,
    spec: &edge_infer::engine::spec::ModelSpec,
    (outputs, version): (Vec<Output>, Option<String>),
    reason: &'static str,
    local: Option<&Arc<LoadedModel>>,
) -> Answer {
    fallback.count_cloud_answer(&job.model, reason);
    Answer {
        post_index: super::post_output(spec, &outputs),
        version: version.unwrap_or_else(|| "cloud".into()),
        outputs,
        place: "cloud",
        reason: Some(reason),
        local: local.cloned(),
        deferred: None,
    }
}

/// The policy's answer to a cloud that could not answer: the local answer (marked
/// degraded) when there is one and the policy allows it, else a rejection.
fn degrade_or_reject(
    fallback: &Fallback,
    reason: &'static str,
    cause: Unavailable,
    local: Option<Answer>,
) -> Result<Answer, Failure> {
    match local {
        Some(a) if fallback.when_unavailable() == WhenUnavailable::Local => {
            fallback.count_degraded();
            Ok(a)
        }
        _ => {
            fallback.count_rejected();
            Err(Failure::Rejected { reason, cause })
        }
    }
}
