//! One loaded model: the ONNX graph checked against its spec, optimised once for the
//! spec's concrete shapes, and runnable from any worker thread.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tract_nnef::prelude::*;

use super::budget::MemoryEstimate;
use super::plans::{PlanCacheReport, PlanError, Plans};
use super::spec::{DType, ModelSpec};
use crate::pipeline::PostProcessor;

pub use super::dtype::datum_type;

/// Builds a tensor of `dt` and `shape` from f64 values (consts, zeros).
pub fn tensor_from_f64(dt: DType, shape: &[usize], values: &[f64]) -> TractResult<Tensor> {
    let t = Tensor::from_shape(shape, values)?;
    t.cast_to_dt(datum_type(dt)).map(|c| c.into_owned())
}

/// Builds a tensor of `dt` and `shape` from f32 values (request data).
pub fn tensor_from_f32(dt: DType, shape: &[usize], values: &[f32]) -> TractResult<Tensor> {
    let t = Tensor::from_shape(shape, values)?;
    if dt == DType::F32 { Ok(t) } else { t.cast_to_dt(datum_type(dt)).map(|c| c.into_owned()) }
}

/// What one input or output looks like, for `model inspect` and metadata endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    /// The graph input's or output's name.
    pub name: String,
    /// Element type, as tract names it, lower case (`f32`, `i64`, ...).
    pub dtype: String,
    /// The concrete shape; empty when a dimension is symbolic (see `dims`).
    pub shape: Vec<usize>,
    /// Every dimension as text, when one is symbolic (an input declared with a range,
    /// and what follows from it): `["1", "edge_dim", "3"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dims: Option<Vec<String>>,
}

/// The file a model was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// The ONNX file the spec names.
    Onnx,
    /// The NNEF archive converted from it at publishing (`model.nnef.tgz`).
    Nnef,
}

impl ModelFormat {
    /// `onnx` or `nnef`, as status and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "onnx",
            ModelFormat::Nnef => "nnef",
        }
    }
}

/// Facts measured while loading, for `model inspect` and status.
#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    /// Which file was loaded: the ONNX file or its NNEF conversion.
    pub format: ModelFormat,
    /// Size of the file loaded.
    pub file_bytes: u64,
    /// Time to parse the file.
    pub load_ms: f64,
    /// Time to type, check and optimise the graph.
    pub optimise_ms: f64,
    /// Nodes after optimisation.
    pub op_count: usize,
    /// Operator name → number of nodes, after optimisation.
    pub ops: BTreeMap<String, usize>,
    /// What the model needs in memory, estimated before optimisation.
    pub memory: MemoryEstimate,
    /// The device's limit it was checked against.
    pub memory_limit_bytes: u64,
}

/// A model ready to run.
pub struct LoadedModel {
    /// Unique per load, so worker threads can cache per-model run state.
    pub id: u64,
    /// The spec the model was loaded with.
    pub spec: ModelSpec,
    /// The model directory.
    pub dir: PathBuf,
    /// The graph's inputs, in graph order, after optimisation.
    pub inputs: Vec<TensorInfo>,
    /// The graph's outputs, in graph order, after optimisation.
    pub outputs: Vec<TensorInfo>,
    /// What loading measured.
    pub info: LoadInfo,
    /// One plan, or with a varying data dimension one per size (see `plans`).
    pub(super) plans: Plans,
    /// For each graph input, in graph order: what feeds it.
    pub(super) feeds: Vec<Feed>,
    /// Graph output index feeding each state slot, in state-slot order.
    pub(super) state_outputs: Vec<usize>,
    /// Index of the output read by post-processing.
    pub(super) post_output: usize,
    /// The spec's post-processing, built once rather than per request.
    pub(super) post: PostProcessor,
    /// The `[[stage]]` models this one feeds (crate::stages), loaded with it from the
    /// same directory: installing, replacing or rolling back the model does the same to
    /// the whole pipeline at once.
    pub stages: Vec<Arc<LoadedModel>>,
    /// Its typical run time, learnt from its runs: small models run on a blocking
    /// caller's thread ([`super::inline`]).
    pub(super) run_estimate: super::inline::RunEstimate,
}

/// What feeds one graph input on each call.
pub(super) enum Feed {
    /// The request's data; its shape is worked out per call (`data_shape`).
    Data {
        dtype: DType,
    },
    /// Slot in the stream's state vector; `zeros` is the first call's value.
    State {
        slot: usize,
        zeros: Arc<Tensor>,
    },
    Const(Arc<Tensor>),
}

impl LoadedModel {
    /// The model name from the spec.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The model version from the spec.
    pub fn version(&self) -> &str {
        &self.spec.version
    }

    /// Whether the model carries recurrent state between calls of a stream.
    pub fn is_stateful(&self) -> bool {
        !self.state_outputs.is_empty()
    }

    /// Index of the output read by post-processing.
    pub fn post_output(&self) -> usize {
        self.post_output
    }

    /// The model's post-processing.
    pub fn post(&self) -> &PostProcessor {
        &self.post
    }

    /// Whether the output `name` is recurrent state (fed back, not an answer).
    pub fn is_state_output(&self, name: &str) -> bool {
        self.spec.inputs.iter().any(|i| i.state_output.as_deref() == Some(name))
    }

    /// A fresh run state; worker threads keep one per model to avoid re-allocating the
    /// plan's buffers on every call.
    /// With a varying dimension, the state is for the declared (largest) shape.
    pub fn spawn_state(&self) -> TractResult<TypedSimpleState> {
        self.plan_for(&self.spec.data_input().shape).map_err(TractError::from)?.spawn()
    }

    /// The run plan for one call whose data input has `shape`: the model's plan, or with
    /// a varying dimension the plan for that size (made on first use, then cached).
    pub fn plan_for(&self, shape: &[usize]) -> Result<Arc<TypedSimplePlan>, PlanError> {
        match &self.plans {
            Plans::Fixed(plan) => {
                let input = self.spec.data_input();
                if shape != input.shape.as_slice() {
                    return Err(PlanError::Outside {
                        input: input.name.clone(),
                        accepts: input.shape_text(),
                        got: shape.to_vec(),
                    });
                }
                Ok(plan.clone())
            }
            Plans::Varying(plans) => plans.plan_for(shape),
        }
    }

    /// The plans made per size, for a model with a varying dimension.
    pub fn plan_cache(&self) -> Option<PlanCacheReport> {
        match &self.plans {
            Plans::Fixed(_) => None,
            Plans::Varying(plans) => Some(plans.report()),
        }
    }

    /// The data input's shape for one call: `shape` when the request gives one (checked
    /// against the values and the spec), else the one shape `len` values fit.
    pub fn data_shape(&self, len: usize, shape: Option<&[usize]>) -> Result<Vec<usize>, String> {
        let input = self.spec.data_input();
        match shape {
            Some(s) if !input.accepts(s) => {
                Err(format!("shape {s:?} is not one input `{}` takes: {}", input.name, input.shape_text()))
            }
            Some(s) if super::budget::elements(s) != Some(len) => Err(format!(
                "shape {s:?} holds {} values but the request has {len}",
                super::budget::elements(s).map_or_else(|| "too many".into(), |n| n.to_string())
            )),
            Some(s) => Ok(s.to_vec()),
            None => input.shape_for(len).ok_or_else(|| {
                format!("{len} values fit no shape of input `{}` {}", input.name, input.shape_text())
            }),
        }
    }

    /// Builds the graph inputs for one call: `data` (already checked for length) plus the
    /// stream's state (or zeros) and constants. An f32 input takes `data` without a copy.
    pub fn assemble(&self, data: Vec<f32>, state: Option<&[TValue]>) -> TractResult<TVec<TValue>> {
        let shape = self.data_shape(data.len(), None).map_err(TractError::msg)?;
        self.assemble_shaped(data, &shape, state)
    }

    /// [`LoadedModel::assemble`] with the data input's shape already worked out (by
    /// [`LoadedModel::data_shape`]).
    pub fn assemble_shaped(
        &self,
        data: Vec<f32>,
        shape: &[usize],
        state: Option<&[TValue]>,
    ) -> TractResult<TVec<TValue>> {
        let mut inputs = TVec::with_capacity(self.feeds.len());
        let mut data = Some(data);
        for feed in &self.feeds {
            let value: TValue = match feed {
                Feed::Data { dtype } => {
                    let values = data.take().unwrap_or_default();
                    if *dtype == DType::F32 {
                        tract_ndarray::ArrayD::from_shape_vec(shape, values)?.into_tensor().into()
                    } else {
                        tensor_from_f32(*dtype, shape, &values)?.into()
                    }
                }
                Feed::State { slot, zeros } => match state.and_then(|s| s.get(*slot)) {
                    Some(v) => v.clone(),
                    None => TValue::from_const(zeros.clone()),
                },
                Feed::Const(t) => TValue::from_const(t.clone()),
            };
            inputs.push(value);
        }
        Ok(inputs)
    }

    /// Picks the stream's next state out of one call's outputs.
    pub fn next_state(&self, outputs: &TVec<TValue>) -> Vec<TValue> {
        self.state_outputs.iter().filter_map(|ix| outputs.get(*ix).cloned()).collect()
    }
}
