//! Loading a model, step by step: read and parse the file, match its inputs and outputs
//! to the spec by name, check the declared types and shapes, fix the inputs to the spec,
//! analyse, check the working memory against the device's limit, optimise, plan. Each
//! step reports every problem it finds at once, with the file it is in.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tract_nnef::prelude::*;
#[cfg(feature = "onnx")]
use tract_onnx::prelude::{Framework, InferenceFact, InferenceModel, InferenceModelExt, onnx};
#[cfg(feature = "onnx")]
use tract_onnx::tract_hir::infer::Factoid;

use super::budget::{self, MemoryEstimate, ModelLimits};
use super::error::LoadError;
#[cfg(feature = "onnx")]
use super::model::{Feed, datum_type};
use super::model::{LoadInfo, LoadedModel, ModelFormat, TensorInfo};
use super::panic::contain;
use super::plans::{PLAN_CACHE, PlanBudget, Plans, ShapePlans, Source};
use super::prepared::{Files, GraphNames, Prepared, ms};
#[cfg(feature = "onnx")]
use super::prepared::{feed_for, graph_names, match_names};
#[cfg(feature = "onnx")]
use super::spec::{ImageLayout, InputFrom, InputSpec};
use super::spec::{LoadedSpec, ModelSpec, PostKind};
use crate::pipeline::{CtcDecoder, PostProcessor};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl LoadedModel {
    /// Loads `DIR/model.toml` and the model it names, within this device's `limits`.
    pub fn load_dir(dir: &Path, limits: &ModelLimits) -> Result<LoadedModel, LoadError> {
        let spec = ModelSpec::load_dir(dir)?;
        let mut model = Self::load(spec, dir, limits)?;
        model.stages = crate::stages::load_stages(&model, dir, limits)?.into_iter().map(Arc::new).collect();
        Ok(model)
    }

    /// Loads the model a spec names, checks the two agree and that the model fits
    /// `limits`, and optimises it: the NNEF archive beside the ONNX file when there is
    /// one (see [`super::nnef`]), else the ONNX file.
    pub fn load(loaded: LoadedSpec, dir: &Path, limits: &ModelLimits) -> Result<LoadedModel, LoadError> {
        Self::load_as(loaded, dir, limits, Want::Auto)
    }

    /// [`LoadedModel::load`] from the format `want` asks for.
    pub fn load_as(
        loaded: LoadedSpec,
        dir: &Path,
        limits: &ModelLimits,
        want: Want,
    ) -> Result<LoadedModel, LoadError> {
        check_sizes(&loaded, limits)?;
        let LoadedSpec { spec, path: spec_path, model_path } = loaded;
        let nnef_path = super::nnef::nnef_path(&model_path);
        let prepared = match want.resolve(&model_path, &nnef_path)? {
            ModelFormat::Nnef => super::nnef::prepare(&spec, &spec_path, &model_path, &nnef_path, limits)?,
            #[cfg(feature = "onnx")]
            ModelFormat::Onnx => prepare_onnx(&spec, &spec_path, &model_path)?,
            #[cfg(not(feature = "onnx"))]
            ModelFormat::Onnx => unreachable!("resolve refuses ONNX in a build without it"),
        };
        let Prepared {
            typed,
            source,
            graph,
            post_output,
            feeds,
            state_outputs,
            widest,
            file_bytes,
            load_ms,
            path,
            format,
            analyse_ms,
        } = prepared;
        let at = Files { spec: &spec_path, model: &path, bytes: file_bytes };
        let started = Instant::now();
        if spec.post.kind == PostKind::Scores
            && let Some(problem) = labels_problem(&typed, post_output, &graph.outputs, &spec)
        {
            return Err(at.mismatch(vec![problem]));
        }
        if spec.post.kind == PostKind::Multilabel
            && let Some(problem) = multilabel_problem(&typed, post_output, &graph.outputs, &spec)
        {
            return Err(at.mismatch(vec![problem]));
        }
        if spec.post.kind == PostKind::Detection
            && let Some(shape) =
                typed.output_fact(post_output).ok().and_then(|f| f.shape.as_concrete().map(<[usize]>::to_vec))
        {
            let detect = spec.post.detection.clone().unwrap_or_default();
            let classes = detect.classes.unwrap_or(spec.post.labels.len());
            let name = graph.outputs.get(post_output).map(String::as_str).unwrap_or("?");
            if let Some(problem) = detect.output_problem(classes, &shape, name) {
                return Err(at.mismatch(vec![problem]));
            }
        }
        let memory = check_memory(&typed, &widest, limits, &at)?;
        // With a varying dimension the graph is only decluttered here: it is optimised
        // per size, on first use (`plans`).
        let (typed, source) = match source {
            None => (optimise(typed, &at)?, None),
            Some(Source::Typed(_, symbols)) => {
                let typed = declutter(typed, &at)?;
                let source = Source::Typed(Arc::new(typed.clone()), symbols);
                (typed, Some(source))
            }
            #[cfg(feature = "onnx")]
            Some(source) => (typed, Some(source)),
        };
        let optimise_ms = analyse_ms + ms(started);

        let ops = op_counts(&typed);
        let op_count = typed.nodes().len();
        let (inputs, outputs) = tensor_infos(&typed, graph);
        let post = post_processor(&spec, dir, outputs.get(post_output)).map_err(|p| at.mismatch(vec![p]))?;
        let plans = match source {
            None => Plans::Fixed(plan(typed, &at)?),
            Some(source) => {
                let input = spec.data_input().clone();
                let mut widest = input.shape.clone();
                for (axis, r) in &input.ranges {
                    widest[*axis] = r.highest().unwrap_or(r.max);
                }
                let budget = PlanBudget {
                    weights: memory.weights_bytes,
                    peak_at_widest: memory.peak_tensor_bytes,
                    widest_values: budget::elements(&widest).map_or(u64::MAX, |n| n as u64),
                    max_bytes: limits.max_bytes,
                };
                let plans = ShapePlans::new(source, input.clone(), PLAN_CACHE).within(budget);
                // The smallest size is planned now: a model tract cannot plan at all is
                // refused at load, not on its first request.
                let mut shape = input.shape.clone();
                for (axis, r) in &input.ranges {
                    shape[*axis] = r.lowest().unwrap_or(r.max);
                }
                plans.plan_for(&shape).map_err(|e| at.optimise(e))?;
                Plans::Varying(Box::new(plans))
            }
        };

        Ok(LoadedModel {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            post,
            spec,
            dir: dir.to_path_buf(),
            inputs,
            outputs,
            info: LoadInfo {
                format,
                file_bytes,
                load_ms,
                optimise_ms,
                op_count,
                ops,
                memory,
                memory_limit_bytes: limits.max_bytes,
            },
            plans,
            feeds,
            state_outputs,
            post_output,
            stages: Vec::new(),
            run_estimate: Default::default(),
        })
    }
}

/// Which file a load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The NNEF archive when the model folder has one, else the ONNX file.
    Auto,
    /// The ONNX file, even when an NNEF archive is there (conversion, comparison).
    Onnx,
    /// The NNEF archive, which must be there.
    Nnef,
}

impl Want {
    fn resolve(self, onnx: &Path, nnef: &Path) -> Result<ModelFormat, LoadError> {
        self.resolve_in(onnx, nnef, cfg!(feature = "onnx"))
    }

    /// [`Want::resolve`] in a build with (`has_onnx`) or without the ONNX loader.
    pub(super) fn resolve_in(
        self,
        onnx: &Path,
        nnef: &Path,
        has_onnx: bool,
    ) -> Result<ModelFormat, LoadError> {
        let format = match self {
            Want::Auto if nnef.is_file() => ModelFormat::Nnef,
            Want::Auto | Want::Onnx => ModelFormat::Onnx,
            Want::Nnef => ModelFormat::Nnef,
        };
        if format == ModelFormat::Onnx && !has_onnx {
            return Err(LoadError::NoOnnx { path: onnx.to_path_buf(), nnef: nnef.to_path_buf() });
        }
        Ok(format)
    }
}

/// The ONNX file, parsed, checked against the spec, fixed to its shapes and typed.
#[cfg(feature = "onnx")]
pub(super) fn prepare_onnx(
    spec: &ModelSpec,
    spec_path: &Path,
    model_path: &Path,
) -> Result<Prepared, LoadError> {
    let parsed = read_onnx(model_path)?;
    let at = Files { spec: spec_path, model: model_path, bytes: parsed.file_bytes };
    let graph = graph_names(&parsed.model).map_err(|e| at.parse(format!("{e:#}")))?;
    let post_output = match_names(spec, &graph).map_err(|problems| at.mismatch(problems))?;
    check_declared(&parsed.model, &graph, spec, &at)?;
    let fixed = fix_inputs(parsed.model, &graph, spec, &at)?;
    let started = Instant::now();
    let (typed, source) = match fixed.symbols.is_empty() {
        true => (analyse(fixed.model, &graph, spec, &at)?, None),
        false => analyse_varying(fixed.model, &fixed.symbols, &graph, spec, &at)?,
    };
    Ok(Prepared {
        typed,
        source,
        graph,
        post_output,
        feeds: fixed.feeds,
        state_outputs: fixed.state_outputs,
        widest: fixed.widest,
        file_bytes: parsed.file_bytes,
        load_ms: parsed.load_ms,
        analyse_ms: ms(started),
        path: model_path.to_path_buf(),
        format: ModelFormat::Onnx,
    })
}

#[cfg(feature = "onnx")]
/// The model file, parsed: tract's graph before analysis.
struct Parsed {
    model: InferenceModel,
    file_bytes: u64,
    load_ms: f64,
}

#[cfg(feature = "onnx")]
/// Reads the model file whole and parses it. The bytes are dropped once parsed.
fn read_onnx(path: &Path) -> Result<Parsed, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
    let parse_err =
        |reason: String| LoadError::Parse { path: path.to_path_buf(), bytes: bytes.len() as u64, reason };
    if bytes.is_empty() {
        return Err(parse_err("the file is empty".into()));
    }
    let started = Instant::now();
    // The file's intermediate shape annotations (value_info) are hints, and exporters
    // write them with their own symbols (`batch`, `height`): once the spec fixes the
    // input's shape tract could not unify those with the sizes it infers (YOLOv8 exports
    // fail this way). tract infers every intermediate shape itself without them.
    let model = contain(|| onnx().with_ignore_value_info(true).model_for_read(&mut bytes.as_slice()))
        .map_err(|message| LoadError::Panic { path: path.to_path_buf(), stage: "parsing", message })?
        .map_err(|e| parse_err(format!("{e:#}")))?;
    Ok(Parsed { model, file_bytes: bytes.len() as u64, load_ms: ms(started) })
}

#[cfg(feature = "onnx")]
/// The declared dtypes and shapes against what the model file says about its inputs,
/// every mismatch at once.
fn check_declared(
    model: &InferenceModel,
    graph: &GraphNames,
    spec: &ModelSpec,
    at: &Files,
) -> Result<(), LoadError> {
    let mut problems = Vec::new();
    for (ix, name) in graph.inputs.iter().enumerate() {
        let Some(input) = spec.inputs.iter().find(|i| &i.name == name) else { continue };
        let fact = model.input_fact(ix).map_err(|e| at.parse(format!("{e:#}")))?;
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
    if problems.is_empty() { Ok(()) } else { Err(at.mismatch(problems)) }
}

#[cfg(feature = "onnx")]
/// The graph with every input fixed to the spec's type and shape, and what feeds it.
struct Fixed {
    model: InferenceModel,
    feeds: Vec<Feed>,
    state_outputs: Vec<usize>,
    /// A range dimension's symbol and the largest size it takes: memory is reckoned there.
    widest: SymbolValues,
    /// The data input's range dimensions' symbols, by axis.
    symbols: Vec<(usize, Symbol)>,
}

#[cfg(feature = "onnx")]
/// Fixes every input's fact to the spec's concrete type and shape (a range dimension
/// stays a symbol), and builds each input's feed: data, state slot or constant.
fn fix_inputs(
    mut model: InferenceModel,
    graph: &GraphNames,
    spec: &ModelSpec,
    at: &Files,
) -> Result<Fixed, LoadError> {
    let mut feeds = Vec::new();
    let mut state_outputs = Vec::new();
    let mut widest = SymbolValues::default();
    let mut symbols = Vec::new();
    for (ix, name) in graph.inputs.iter().enumerate() {
        let Some(input) = spec.inputs.iter().find(|i| &i.name == name) else { continue };
        let fact = match input.range() {
            None => InferenceFact::dt_shape(datum_type(input.dtype), input.shape.clone()),
            Some(_) => {
                // The varying dimensions stay symbols: the graph is typed once for every
                // size, and planned per size (`plans`).
                let mut dims: TVec<TDim> = input.shape.iter().map(|n| TDim::from(*n)).collect();
                for (axis, range) in &input.ranges {
                    let sym = model.symbols.new_with_prefix("edge_dim");
                    widest = widest.with(&sym, range.max as i64);
                    for bound in [format!("{sym}>={}", range.min), format!("{sym}<={}", range.max)] {
                        // Bounds only help the optimiser; a model runs without them.
                        if let Err(e) = model.symbols.add_assertion(bound) {
                            tracing::debug!(error = %e, "cannot tell tract the range's bounds");
                        }
                    }
                    dims[*axis] = TDim::Sym(sym.clone());
                    if input.from == InputFrom::Data {
                        symbols.push((*axis, sym));
                    }
                }
                InferenceFact::dt_shape(datum_type(input.dtype), dims)
            }
        };
        model = model
            .with_input_fact(ix, fact)
            .map_err(|e| at.mismatch(vec![format!("input `{name}`: {e:#}")]))?;
        feeds.push(feed_for(input, graph, &mut state_outputs, at)?);
    }
    Ok(Fixed { model, feeds, state_outputs, widest, symbols })
}

#[cfg(feature = "onnx")]
/// Types the graph at the spec's shapes (tract's analysis), first, so that the model's
/// working memory is known before optimisation and the run plan allocate for it. A
/// failure that the data input's strides explain is reported as such.
fn analyse(
    model: InferenceModel,
    graph: &GraphNames,
    spec: &ModelSpec,
    at: &Files,
) -> Result<TypedModel, LoadError> {
    let analysed = model.clone();
    match contain(move || analysed.into_typed()).map_err(at.panic("analysing"))? {
        Ok(typed) => Ok(typed),
        Err(e) => match stride_problem(&model, &graph.inputs, spec) {
            Some(problem) => Err(at.mismatch(vec![problem])),
            None => Err(at.optimise(e)),
        },
    }
}

#[cfg(feature = "onnx")]
/// [`analyse`] for a model whose data input has range dimensions, `symbols`: typed with
/// the dimensions open if tract can (plans then substitute the size), else typed at the
/// range's largest size for the checks, and plans are made from the parsed graph.
fn analyse_varying(
    model: InferenceModel,
    symbols: &[(usize, Symbol)],
    graph: &GraphNames,
    spec: &ModelSpec,
    at: &Files,
) -> Result<(TypedModel, Option<Source>), LoadError> {
    let open = model.clone();
    if let Ok(Ok(typed)) = contain(move || open.into_typed()) {
        return Ok((typed, Some(Source::Typed(Arc::new(TypedModel::default()), symbols.to_vec()))));
    }
    let input = spec.data_input();
    let ix = graph.inputs.iter().position(|n| *n == input.name).unwrap_or(0);
    let widest = model
        .clone()
        .with_input_fact(ix, InferenceFact::dt_shape(datum_type(input.dtype), input.shape.clone()))
        .map_err(|e| at.mismatch(vec![format!("input `{}`: {e:#}", input.name)]))?;
    let typed = analyse(widest, graph, spec, at)?;
    Ok((typed, Some(Source::Inference(Arc::new(model), ix))))
}

/// The typed model's estimated working memory, against `limits`.
fn check_memory(
    typed: &TypedModel,
    widest: &SymbolValues,
    limits: &ModelLimits,
    at: &Files,
) -> Result<MemoryEstimate, LoadError> {
    let memory = MemoryEstimate::of_with(typed, widest).map_err(|e| at.optimise(e))?;
    if memory.total() > limits.max_bytes {
        let what = format!(
            "the model's estimated working memory ({} of weights, {} of tensors at its peak, at the spec's shapes)",
            budget::human(memory.weights_bytes),
            budget::human(memory.peak_tensor_bytes)
        );
        return Err(LoadError::TooLarge {
            path: at.model.to_path_buf(),
            what,
            bytes: memory.total(),
            limit: limits.max_bytes,
            instead: "declare a smaller shape",
        });
    }
    Ok(memory)
}

/// tract's optimisation of the typed graph, with the engine's own rewrites between its
/// decluttering and its code generation (see [`super::fuse`]).
fn optimise(typed: TypedModel, at: &Files) -> Result<TypedModel, LoadError> {
    contain(move || super::fuse::optimise(typed)).map_err(at.panic("optimising"))?.map_err(|e| at.optimise(e))
}

/// tract's decluttering of the typed graph: what is done once for every size of a
/// varying dimension.
fn declutter(typed: TypedModel, at: &Files) -> Result<TypedModel, LoadError> {
    contain(move || typed.into_decluttered()).map_err(at.panic("optimising"))?.map_err(|e| at.optimise(e))
}

/// The run plan worker threads spawn their run state from.
fn plan(typed: TypedModel, at: &Files) -> Result<Arc<TypedSimplePlan>, LoadError> {
    contain(move || typed.into_runnable()).map_err(at.panic("planning"))?.map_err(|e| at.optimise(e))
}

/// What the optimised graph's inputs and outputs look like, named as in the file.
fn tensor_infos(typed: &TypedModel, graph: GraphNames) -> (Vec<TensorInfo>, Vec<TensorInfo>) {
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
    let inputs =
        outlets(typed.input_outlets()).into_iter().zip(graph.inputs).map(|(o, n)| describe(o, n)).collect();
    let outputs =
        outlets(typed.output_outlets()).into_iter().zip(graph.outputs).map(|(o, n)| describe(o, n)).collect();
    (inputs, outputs)
}

/// Operator name → number of nodes.
fn op_counts(typed: &TypedModel) -> BTreeMap<String, usize> {
    let mut ops = BTreeMap::new();
    for node in typed.nodes() {
        *ops.entry(node.op.name().to_string()).or_insert(0) += 1;
    }
    ops
}

/// The sizes a spec and its model file declare, against `limits`, before anything of
/// that size is allocated: each declared input, the inputs together, then the file
/// (which a load reads whole). The first part of every load; `registry publish` runs it
/// before it packs the directory.
pub fn check_sizes(loaded: &LoadedSpec, limits: &ModelLimits) -> Result<(), LoadError> {
    let too_large = |path: &Path, what: String, bytes: u64, instead: &'static str| LoadError::TooLarge {
        path: path.to_path_buf(),
        what,
        bytes,
        limit: limits.max_bytes,
        instead,
    };
    let smaller_shape = "declare a smaller shape";
    let mut inputs_bytes = 0u64;
    for input in &loaded.spec.inputs {
        // A checked spec has no shape past u64; saturate rather than trust that here.
        let bytes = input.bytes().unwrap_or(u64::MAX);
        if bytes > limits.max_bytes {
            let what = format!("input `{}` {:?} of {}", input.name, input.shape, input.dtype.name());
            return Err(too_large(&loaded.path, what, bytes, smaller_shape));
        }
        inputs_bytes = inputs_bytes.saturating_add(bytes);
    }
    if inputs_bytes > limits.max_bytes {
        let what = "the declared inputs together".to_string();
        return Err(too_large(&loaded.path, what, inputs_bytes, smaller_shape));
    }
    // The ONNX file and its NNEF archive, whichever are there: a folder may hold the
    // archive alone (loaded without the ONNX file), and it is refused as not found only
    // when it holds neither.
    let archive = super::nnef::nnef_path(&loaded.model_path);
    let mut found = false;
    for (path, what) in [(&loaded.model_path, "the model file"), (&archive, "the NNEF archive")] {
        let Ok(meta) = std::fs::metadata(path) else { continue };
        found = true;
        if meta.len() > limits.max_bytes {
            return Err(too_large(path, what.to_string(), meta.len(), "use a smaller model"));
        }
    }
    if !found {
        let source = std::fs::metadata(&loaded.model_path)
            .err()
            .unwrap_or_else(|| std::io::ErrorKind::NotFound.into());
        return Err(LoadError::Read { path: loaded.model_path.clone(), source });
    }
    Ok(())
}

/// When post-processing names classes, their number must be what the post output holds:
/// otherwise some classes are reported without a name (or names never appear).
/// The spec's post-processing with what it needs from the model directory and the
/// output (a CTC character list, checked against the output's classes; a text map's
/// fixed size).
fn post_processor(spec: &ModelSpec, dir: &Path, out: Option<&TensorInfo>) -> Result<PostProcessor, String> {
    let mut post = PostProcessor::new(&spec.post);
    // The output's last dimensions, also when another one is symbolic.
    let dims: Vec<Option<usize>> = match out {
        Some(o) if !o.shape.is_empty() => o.shape.iter().map(|n| Some(*n)).collect(),
        Some(o) => o.dims.iter().flatten().map(|d| d.parse().ok()).collect(),
        None => Vec::new(),
    };
    if let Some(ctc) = &spec.post.ctc {
        let decoder = CtcDecoder::load(ctc, dir).map_err(|e| e.to_string())?;
        if let Some(Some(classes)) = dims.last() {
            decoder.check(*classes).map_err(|e| e.to_string())?;
        }
        post = post.with_ctc(decoder);
    }
    // A map's size is fixed only when the input's is: with a varying input the output's
    // shape here is the one typed at the widest size (for the memory check), and each
    // answer's map has its own size.
    if spec.post.kind == PostKind::TextBoxes
        && spec.data_input().ranges.is_empty()
        && let [.., Some(h), Some(w)] = dims.as_slice()
    {
        post = post.with_map(*w, *h);
    }
    Ok(post)
}

fn labels_problem(typed: &TypedModel, output: usize, names: &[String], spec: &ModelSpec) -> Option<String> {
    let labels = spec.post.labels.len();
    if labels == 0 {
        return None;
    }
    let shape = typed.output_fact(output).ok()?.shape.as_concrete()?.to_vec();
    let name = names.get(output).map(String::as_str).unwrap_or("?");
    let values = budget::elements(&shape)?;
    if values == 1 && labels != 2 {
        Some(format!(
            "post.labels has {labels} name(s) but output `{name}` {shape:?} is a single score: give two labels (below post.threshold, and at or above it) or none"
        ))
    } else if values > 1 && labels != values {
        Some(format!(
            "post.labels has {labels} name(s) but output `{name}` {shape:?} holds {values} classes: give one label per class, in class order"
        ))
    } else {
        None
    }
}

/// Why a multi-label output does not hold one score per label.
fn multilabel_problem(
    typed: &TypedModel,
    output: usize,
    names: &[String],
    spec: &ModelSpec,
) -> Option<String> {
    let labels = spec.post.labels.len();
    let shape = typed.output_fact(output).ok()?.shape.as_concrete()?.to_vec();
    let values = budget::elements(&shape)?;
    let name = names.get(output).map(String::as_str).unwrap_or("?");
    (values != labels).then(|| {
        format!(
            "post.labels has {labels} name(s) but output `{name}` {shape:?} holds {values} scores: post.kind = \"multilabel\" needs one label per score, in order"
        )
    })
}

#[cfg(feature = "onnx")]
/// Why a graph does not type at the spec's shape, when the reason is that the data
/// input's spatial dimensions must be multiples of something: detection and
/// segmentation models downsample by their strides and merge the scales back, which
/// only lines up when each side is a multiple of the total stride. tract reports this as
/// a failed unification deep in the graph; this finds the multiple by typing the model
/// again at rounded-up shapes (a few analyses, on the failure path only).
fn stride_problem(model: &InferenceModel, graph_inputs: &[String], spec: &ModelSpec) -> Option<String> {
    let input = spec.inputs.iter().find(|i| i.from == InputFrom::Data)?;
    let ix = graph_inputs.iter().position(|n| *n == input.name)?;
    let rank = input.shape.len();
    // ONNX convolutions take channels first; an NHWC image input is transposed inside.
    let axes: Vec<usize> = match &spec.pre.image {
        Some(img) if img.layout == ImageLayout::Nhwc && rank == 4 => vec![1, 2],
        _ if rank >= 3 => (2..rank).collect(),
        _ => return None,
    };
    let axes: Vec<usize> = axes.into_iter().filter(|a| input.shape[*a] > 1).collect();
    for multiple in [2usize, 4, 8, 16, 32, 64, 128, 256] {
        if axes.iter().all(|a| input.shape[*a] % multiple == 0) {
            continue;
        }
        let up = rounded(input, &axes, |d| d.div_ceil(multiple).saturating_mul(multiple));
        let fact = InferenceFact::dt_shape(datum_type(input.dtype), up.clone());
        let Ok(trial) = model.clone().with_input_fact(ix, fact) else { return None };
        if !matches!(contain(move || trial.into_typed()), Ok(Ok(_))) {
            continue;
        }
        let off: Vec<String> =
            axes.iter().filter(|a| input.shape[**a] % multiple != 0).map(|a| a.to_string()).collect();
        let down = rounded(input, &axes, |d| (d / multiple).max(1) * multiple);
        let choice = if down == up { format!("{up:?}") } else { format!("{down:?} or {up:?}") };
        return Some(format!(
            "input `{}` is declared {:?}, but the model needs dimension{} {} to be a multiple of {multiple} (its layers downsample by {multiple} and merge the scales back): declare {choice}",
            input.name,
            input.shape,
            if off.len() == 1 { "" } else { "s" },
            off.join(" and "),
        ));
    }
    None
}

#[cfg(feature = "onnx")]
/// The input's shape with `f` applied to the dimensions at `axes`.
fn rounded(input: &InputSpec, axes: &[usize], f: impl Fn(usize) -> usize) -> Vec<usize> {
    input.shape.iter().enumerate().map(|(a, d)| if axes.contains(&a) { f(*d) } else { *d }).collect()
}
