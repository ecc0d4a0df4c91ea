//! One loaded model: the ONNX graph checked against its spec, optimised once for the
//! spec's concrete shapes, and runnable from any worker thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::error::LoadError;
use super::panic::contain;
use super::spec::{DType, InputFrom, LoadedSpec, ModelSpec};
use crate::pipeline::PostProcessor;

/// Converts a spec dtype to tract's.
pub fn datum_type(dt: DType) -> DatumType {
    match dt {
        DType::F32 => f32::datum_type(),
        DType::F64 => f64::datum_type(),
        DType::I64 => i64::datum_type(),
        DType::I32 => i32::datum_type(),
        DType::I16 => i16::datum_type(),
        DType::I8 => i8::datum_type(),
        DType::U8 => u8::datum_type(),
        DType::Bool => bool::datum_type(),
    }
}

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
    pub name: String,
    pub dtype: String,
    /// The concrete shape; empty when a dimension is symbolic (see `dims`).
    pub shape: Vec<usize>,
    /// Every dimension as text, when one is symbolic (an input declared with a range,
    /// and what follows from it): `["1", "edge_dim", "3"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dims: Option<Vec<String>>,
}

/// Facts measured while loading, for `model inspect` and status.
#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    pub file_bytes: u64,
    pub load_ms: f64,
    pub optimise_ms: f64,
    pub op_count: usize,
    /// Operator name → number of nodes, after optimisation.
    pub ops: BTreeMap<String, usize>,
}

/// A model ready to run.
pub struct LoadedModel {
    /// Unique per load, so worker threads can cache per-model run state.
    pub id: u64,
    pub spec: ModelSpec,
    pub dir: PathBuf,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub info: LoadInfo,
    plan: Arc<TypedSimplePlan>,
    /// For each graph input, in graph order: what feeds it.
    feeds: Vec<Feed>,
    /// Graph output index feeding each state slot, in state-slot order.
    state_outputs: Vec<usize>,
    /// Index of the output read by post-processing.
    post_output: usize,
    /// The spec's post-processing, built once rather than per request.
    post: PostProcessor,
}

/// What feeds one graph input on each call.
enum Feed {
    Data {
        dtype: DType,
        shape: Vec<usize>,
        /// A dimension is a range: the call's shape comes from its number of values.
        varies: bool,
    },
    /// Slot in the stream's state vector; `zeros` is the first call's value.
    State {
        slot: usize,
        zeros: Arc<Tensor>,
    },
    Const(Arc<Tensor>),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl LoadedModel {
    /// Loads `DIR/model.toml` and the model it names.
    pub fn load_dir(dir: &Path) -> Result<LoadedModel, LoadError> {
        let spec = ModelSpec::load_dir(dir)?;
        Self::load(spec, dir)
    }

    /// Loads the model a spec names, checks the two agree, and optimises it.
    pub fn load(loaded: LoadedSpec, dir: &Path) -> Result<LoadedModel, LoadError> {
        let LoadedSpec { spec, path: spec_path, model_path } = loaded;
        let bytes = std::fs::read(&model_path)
            .map_err(|source| LoadError::Read { path: model_path.clone(), source })?;
        let parse_err =
            |reason: String| LoadError::Parse { path: model_path.clone(), bytes: bytes.len() as u64, reason };
        if bytes.is_empty() {
            return Err(parse_err("the file is empty".into()));
        }

        let started = Instant::now();
        let mut model = contain(|| onnx().model_for_read(&mut bytes.as_slice()))
            .map_err(|message| LoadError::Panic { path: model_path.clone(), stage: "parsing", message })?
            .map_err(|e| parse_err(format!("{e:#}")))?;
        let load_ms = ms(started);

        // Match graph inputs to spec inputs by name; every mismatch is reported at once.
        let graph_inputs: Vec<String> = model
            .input_outlets()
            .map_err(|e| parse_err(format!("{e:#}")))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let graph_outputs: Vec<String> = model
            .output_outlets()
            .map_err(|e| parse_err(format!("{e:#}")))?
            .iter()
            .enumerate()
            .map(|(ix, o)| {
                model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| format!("output_{ix}"))
            })
            .collect();
        let mismatch = |problems: Vec<String>| LoadError::Mismatch {
            spec: spec_path.clone(),
            path: model_path.clone(),
            problems: problems.join("\n  "),
        };
        let mut problems = Vec::new();
        for name in &graph_inputs {
            if !spec.inputs.iter().any(|i| &i.name == name) {
                problems.push(format!(
                    "model input `{name}` is not declared; add an [[input]] with name = \"{name}\""
                ));
            }
        }
        for input in &spec.inputs {
            if !graph_inputs.contains(&input.name) {
                problems.push(format!(
                    "input `{}` is not an input of the model (its inputs: {})",
                    input.name,
                    graph_inputs.join(", ")
                ));
            }
            if let Some(out) = &input.state_output
                && !graph_outputs.contains(out)
            {
                problems.push(format!(
                    "input `{}`: state_output `{out}` is not an output of the model (its outputs: {})",
                    input.name,
                    graph_outputs.join(", ")
                ));
            }
        }
        let post_output = match &spec.post.output {
            Some(name) => match graph_outputs.iter().position(|o| o == name) {
                Some(ix) => ix,
                None => {
                    problems.push(format!(
                        "post.output `{name}` is not an output of the model (its outputs: {})",
                        graph_outputs.join(", ")
                    ));
                    0
                }
            },
            None => graph_outputs
                .iter()
                .position(|o| !spec.inputs.iter().any(|i| i.state_output.as_deref() == Some(o)))
                .unwrap_or(0),
        };
        if !problems.is_empty() {
            return Err(mismatch(problems));
        }

        // Declared dtypes and shapes against what the model file says about its inputs.
        for (ix, name) in graph_inputs.iter().enumerate() {
            let Some(input) = spec.inputs.iter().find(|i| &i.name == name) else { continue };
            let fact = model.input_fact(ix).map_err(|e| parse_err(format!("{e:#}")))?;
            if let Some(dt) = fact.datum_type.concretize()
                && dt != datum_type(input.dtype)
            {
                problems.push(format!(
                    "input `{name}` is declared {} but the model takes {dt:?}; set dtype accordingly",
                    input.dtype.name()
                ));
            }
            if let Some(dims) = fact.shape.concretize() {
                let rank_ok = dims.len() == input.shape.len();
                let dims_ok = rank_ok
                    && dims.iter().zip(&input.shape).enumerate().all(|(axis, (d, want))| {
                        match (d.to_i64(), input.ranges.iter().any(|(a, _)| *a == axis)) {
                            // A range needs a dimension the model leaves open.
                            (Ok(_), true) => false,
                            (Ok(n), false) => n == *want as i64,
                            (Err(_), _) => true, // symbolic: any concrete size fits
                        }
                    });
                if !dims_ok {
                    let shown: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                    problems.push(format!(
                        "input `{name}` is declared {} but the model takes [{}]",
                        input.shape_text(),
                        shown.join(", ")
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(mismatch(problems));
        }

        // Fix every input's fact to the spec's concrete type and shape, then optimise once.
        let mut feeds = Vec::new();
        let mut state_outputs = Vec::new();
        for (ix, name) in graph_inputs.iter().enumerate() {
            let Some(input) = spec.inputs.iter().find(|i| &i.name == name) else { continue };
            let fact = match input.range() {
                None => InferenceFact::dt_shape(datum_type(input.dtype), input.shape.clone()),
                Some((axis, range)) => {
                    // The varying dimension stays a symbol: the graph is optimised once for
                    // every size, and tract resolves the symbol from each call's input.
                    let sym = model.symbols.new_with_prefix("edge_dim");
                    for bound in [format!("{sym}>={}", range.min), format!("{sym}<={}", range.max)] {
                        // Bounds only help the optimiser; a model runs without them.
                        if let Err(e) = model.symbols.add_assertion(bound) {
                            tracing::debug!(error = %e, "cannot tell tract the range's bounds");
                        }
                    }
                    let dims: TVec<TDim> = input
                        .shape
                        .iter()
                        .enumerate()
                        .map(|(i, n)| if i == axis { TDim::Sym(sym.clone()) } else { TDim::from(*n) })
                        .collect();
                    InferenceFact::dt_shape(datum_type(input.dtype), dims)
                }
            };
            model = model
                .with_input_fact(ix, fact)
                .map_err(|e| mismatch(vec![format!("input `{name}`: {e:#}")]))?;
            let shape = input.shape.clone();
            let feed = match input.from {
                InputFrom::Data => Feed::Data { dtype: input.dtype, shape, varies: !input.ranges.is_empty() },
                InputFrom::State => {
                    let out = input.state_output.as_deref().unwrap_or_default();
                    let out_ix = graph_outputs.iter().position(|o| o == out).unwrap_or(0);
                    state_outputs.push(out_ix);
                    let zeros = tensor_from_f64(input.dtype, &shape, &vec![0.0; input.len().max(1)])
                        .map_err(|e| mismatch(vec![format!("input `{name}`: {e:#}")]))?;
                    Feed::State { slot: state_outputs.len() - 1, zeros: Arc::new(zeros) }
                }
                InputFrom::Const => {
                    let values = input.value.clone().unwrap_or_default();
                    let t = tensor_from_f64(input.dtype, &shape, &values)
                        .map_err(|e| mismatch(vec![format!("input `{name}`: {e:#}")]))?;
                    Feed::Const(Arc::new(t))
                }
            };
            feeds.push(feed);
        }

        let started = Instant::now();
        let path = model_path.clone();
        let typed = contain(move || model.into_optimized())
            .map_err(|message| LoadError::Panic { path: path.clone(), stage: "optimising", message })?
            .map_err(|e| LoadError::Optimise { path: model_path.clone(), reason: format!("{e:#}") })?;
        let optimise_ms = ms(started);

        let describe = |outlet: OutletId, name: String| -> TensorInfo {
            let (dtype, shape, dims) = match typed.outlet_fact(outlet) {
                Ok(f) => (
                    format!("{:?}", f.datum_type).to_lowercase(),
                    f.shape.as_concrete().map(|s| s.to_vec()).unwrap_or_default(),
                    f.shape.as_concrete().is_none().then(|| f.shape.iter().map(|d| d.to_string()).collect()),
                ),
                Err(_) => ("unknown".into(), vec![], None),
            };
            TensorInfo { name, dtype, shape, dims }
        };
        let outlets = |list: TractResult<&[OutletId]>| list.map(|l| l.to_vec()).unwrap_or_default();
        let inputs = outlets(typed.input_outlets())
            .into_iter()
            .zip(graph_inputs)
            .map(|(o, n)| describe(o, n))
            .collect();
        let outputs = outlets(typed.output_outlets())
            .into_iter()
            .zip(graph_outputs)
            .map(|(o, n)| describe(o, n))
            .collect();
        let mut ops = BTreeMap::new();
        for node in typed.nodes() {
            *ops.entry(node.op.name().to_string()).or_insert(0) += 1;
        }
        let op_count = typed.nodes().len();

        let path = model_path.clone();
        let plan = contain(move || typed.into_runnable())
            .map_err(|message| LoadError::Panic { path: path.clone(), stage: "planning", message })?
            .map_err(|e| LoadError::Optimise { path: model_path.clone(), reason: format!("{e:#}") })?;

        Ok(LoadedModel {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            post: PostProcessor::new(&spec.post),
            spec,
            dir: dir.to_path_buf(),
            inputs,
            outputs,
            info: LoadInfo { file_bytes: bytes.len() as u64, load_ms, optimise_ms, op_count, ops },
            plan,
            feeds,
            state_outputs,
            post_output,
        })
    }

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
    pub fn spawn_state(&self) -> TractResult<TypedSimpleState> {
        self.plan.spawn()
    }

    /// Builds the graph inputs for one call: `data` (already checked for length) plus the
    /// stream's state (or zeros) and constants. An f32 input takes `data` without a copy.
    pub fn assemble(&self, data: Vec<f32>, state: Option<&[TValue]>) -> TractResult<TVec<TValue>> {
        let mut inputs = TVec::with_capacity(self.feeds.len());
        let mut data = Some(data);
        for feed in &self.feeds {
            let value: TValue = match feed {
                Feed::Data { dtype, shape, varies } => {
                    let values = data.take().unwrap_or_default();
                    let shape = if *varies {
                        let input = self.spec.data_input();
                        std::borrow::Cow::Owned(input.shape_for(values.len()).ok_or_else(|| {
                            anyhow::anyhow!(
                                "{} values fit no shape of input `{}` {}",
                                values.len(),
                                input.name,
                                input.shape_text()
                            )
                        })?)
                    } else {
                        std::borrow::Cow::Borrowed(shape)
                    };
                    if *dtype == DType::F32 {
                        tract_ndarray::ArrayD::from_shape_vec(shape.as_slice(), values)?.into_tensor().into()
                    } else {
                        tensor_from_f32(*dtype, &shape, &values)?.into()
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

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
