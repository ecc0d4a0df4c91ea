//! What loading a model from either file format comes to before the common steps: the
//! typed graph with its inputs fixed to the spec ([`Prepared`]), and the pieces both
//! readers share (matching names to the spec, what feeds each input, where errors
//! point). ONNX (`load.rs`) and NNEF (`nnef.rs`) each make a [`Prepared`]; `load.rs`
//! checks, optimises and plans it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tract_nnef::prelude::*;

use super::error::LoadError;
use super::model::{Feed, ModelFormat, datum_type, tensor_from_f64};
use super::plans::Source;
use super::spec::{InputFrom, InputSpec, ModelSpec};

/// What either format's loading hands to the common checks, optimisation and planning:
/// the typed graph, its inputs fixed to the spec, and what feeds them.
pub(super) struct Prepared {
    pub typed: TypedModel,
    /// Where plans per size come from, when the data input has a range.
    pub source: Option<Source>,
    pub graph: GraphNames,
    pub post_output: usize,
    pub feeds: Vec<Feed>,
    pub state_outputs: Vec<usize>,
    /// Every range symbol at its largest value, for the memory estimate.
    pub widest: SymbolValues,
    pub file_bytes: u64,
    /// Time to read and parse the file.
    pub load_ms: f64,
    /// Time to type the graph (ONNX's analysis; NNEF is typed already).
    pub analyse_ms: f64,
    /// The file read.
    pub path: PathBuf,
    pub format: ModelFormat,
}

/// Milliseconds since `since`.
pub(super) fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Where a load's errors point: the spec, and the model file it names with its size.
pub(super) struct Files<'a> {
    pub spec: &'a Path,
    pub model: &'a Path,
    /// Its size, for parse errors.
    #[cfg_attr(not(feature = "onnx"), allow(dead_code))]
    pub bytes: u64,
}

impl Files<'_> {
    /// The model file is not a usable ONNX model.
    #[cfg(feature = "onnx")]
    pub(super) fn parse(&self, reason: String) -> LoadError {
        LoadError::Parse { path: self.model.to_path_buf(), bytes: self.bytes, reason }
    }

    /// The spec and the model disagree.
    pub(super) fn mismatch(&self, problems: Vec<String>) -> LoadError {
        LoadError::Mismatch {
            spec: self.spec.to_path_buf(),
            path: self.model.to_path_buf(),
            problems: problems.join("\n  "),
        }
    }

    /// tract cannot prepare the model.
    pub(super) fn optimise(&self, e: impl std::fmt::Display) -> LoadError {
        LoadError::Optimise { path: self.model.to_path_buf(), reason: format!("{e:#}") }
    }

    /// tract panicked at `stage`.
    pub(super) fn panic(&self, stage: &'static str) -> impl Fn(String) -> LoadError + '_ {
        move |message| LoadError::Panic { path: self.model.to_path_buf(), stage, message }
    }
}

/// The graph's input and output names, in graph order.
pub(super) struct GraphNames {
    pub inputs: Vec<String>,
    /// An output without a label is `output_N`.
    pub outputs: Vec<String>,
}

/// A graph's input and output names, parsed (ONNX) or typed (NNEF) alike.
pub(super) fn graph_names<F, O>(model: &Graph<F, O>) -> TractResult<GraphNames>
where
    F: Fact + Clone + 'static,
    O: std::fmt::Debug + std::fmt::Display + AsRef<dyn Op> + AsMut<dyn Op> + Clone + 'static,
{
    let inputs = model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
    let outputs = model
        .output_outlets()?
        .iter()
        .enumerate()
        .map(|(ix, o)| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| format!("output_{ix}")))
        .collect();
    Ok(GraphNames { inputs, outputs })
}

/// Matches graph inputs and outputs to the spec's by name, every mismatch at once, and
/// finds the output post-processing reads (its index).
pub(super) fn match_names(spec: &ModelSpec, graph: &GraphNames) -> Result<usize, Vec<String>> {
    let mut problems = Vec::new();
    for name in &graph.inputs {
        if !spec.inputs.iter().any(|i| &i.name == name) {
            problems.push(format!(
                "model input `{name}` is not declared; add an [[input]] with name = \"{name}\""
            ));
        }
    }
    for input in &spec.inputs {
        if !graph.inputs.contains(&input.name) {
            problems.push(format!(
                "input `{}` is not an input of the model (its inputs: {})",
                input.name,
                graph.inputs.join(", ")
            ));
        }
        if let Some(out) = &input.state_output
            && !graph.outputs.contains(out)
        {
            problems.push(format!(
                "input `{}`: state_output `{out}` is not an output of the model (its outputs: {})",
                input.name,
                graph.outputs.join(", ")
            ));
        }
    }
    let post_output = match &spec.post.output {
        Some(name) => match graph.outputs.iter().position(|o| o == name) {
            Some(ix) => ix,
            None => {
                problems.push(format!(
                    "post.output `{name}` is not an output of the model (its outputs: {})",
                    graph.outputs.join(", ")
                ));
                0
            }
        },
        None => graph
            .outputs
            .iter()
            .position(|o| !spec.inputs.iter().any(|i| i.state_output.as_deref() == Some(o)))
            .unwrap_or(0),
    };
    if problems.is_empty() { Ok(post_output) } else { Err(problems) }
}

/// What feeds one graph input: the request's data, a state slot (whose output index
/// is pushed on `state_outputs`) or a constant.
pub(super) fn feed_for(
    input: &InputSpec,
    graph: &GraphNames,
    state_outputs: &mut Vec<usize>,
    at: &Files,
) -> Result<Feed, LoadError> {
    let name = &input.name;
    let shape = input.shape.clone();
    let feed = match input.from {
        InputFrom::Data => Feed::Data { dtype: input.dtype },
        InputFrom::State => {
            let out = input.state_output.as_deref().unwrap_or_default();
            let out_ix = graph.outputs.iter().position(|o| o == out).unwrap_or(0);
            state_outputs.push(out_ix);
            // Built in the input's own type: an f64 buffer to cast from would take up
            // to eight times the bytes the limit was checked for.
            let zeros = Tensor::zero_dt(datum_type(input.dtype), &shape)
                .map_err(|e| at.mismatch(vec![format!("input `{name}`: {e:#}")]))?;
            Feed::State { slot: state_outputs.len() - 1, zeros: Arc::new(zeros) }
        }
        InputFrom::Const => {
            let values = input.value.clone().unwrap_or_default();
            let t = tensor_from_f64(input.dtype, &shape, &values)
                .map_err(|e| at.mismatch(vec![format!("input `{name}`: {e:#}")]))?;
            Feed::Const(Arc::new(t))
        }
    };
    Ok(feed)
}
