//! Run plans per concrete input shape, for a model whose data input has a dimension
//! declared as a range.
//!
//! tract optimises a graph best, and some graphs only (PP-OCR's recogniser), when every
//! shape is known. So a model with a varying dimension keeps its typed, decluttered
//! graph with that dimension as a symbol, and a size seen for the first time is
//! substituted, optimised and planned then. Plans are kept in a small cache bounded by
//! [`PLAN_CACHE`] entries, least recently used evicted first; the spec's `multiple_of`
//! makes the sizes buckets (a text line's width is rounded up to the next multiple and
//! padded), so a handful of plans serve every request. Each plan holds its own copy of
//! the optimised weights (tract packs them for its kernels) and its activations at that
//! size: a plan costs about the model's weights plus its working memory at that size.
//! So the cache is bounded by bytes too: the plans it keeps are estimated, together, to
//! fit the model's memory limit (`engine.max_model_memory_mb`), which the load checked
//! one plan at the widest size against. A detector of large images keeps fewer plans
//! than a text recogniser of small ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tract_nnef::prelude::*;
#[cfg(feature = "onnx")]
use tract_onnx::prelude::{InferenceFact, InferenceModel, InferenceModelExt};

use super::panic::contain;
use super::spec::InputSpec;

/// Plans kept per model with a varying dimension.
pub const PLAN_CACHE: usize = 8;

/// The run plan(s) of one model.
pub(crate) enum Plans {
    /// Every input's shape is fixed: one plan, made at load.
    Fixed(Arc<TypedSimplePlan>),
    /// The data input has a varying dimension: a plan per size, made on first use.
    Varying(Box<ShapePlans>),
}

/// Why a shape has no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The shape is not one the input accepts.
    #[error("input `{input}` takes {accepts}, not {got:?}; resize the data to an accepted size")]
    Outside {
        /// The data input.
        input: String,
        /// What it accepts, as the spec declares it.
        accepts: String,
        /// The shape asked for.
        got: Vec<usize>,
    },
    /// tract could not optimise or plan the graph at that size.
    #[error("cannot plan the model for input shape {shape:?}: {reason}")]
    Tract {
        /// The shape.
        shape: Vec<usize>,
        /// tract's error, or its panic's message.
        reason: String,
    },
}

/// One cached plan.
struct Entry {
    shape: Vec<usize>,
    plan: Arc<TypedSimplePlan>,
    used: u64,
    /// Its estimated memory (see [`PlanBudget::bytes`]).
    bytes: u64,
}

/// How much memory the plans of one model may hold together, and what one costs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanBudget {
    /// The weights every plan holds a copy of.
    pub weights: u64,
    /// Working memory (peak tensors) at the widest size.
    pub peak_at_widest: u64,
    /// Values of the data input at its widest size.
    pub widest_values: u64,
    /// The model's memory limit: all plans together stay within it.
    pub max_bytes: u64,
}

impl PlanBudget {
    /// A plan's estimated memory at `shape`: the weights, plus the working memory at the
    /// widest size scaled by how many values `shape` holds (activations grow with the
    /// input's height and width), rounded up.
    fn bytes(&self, shape: &[usize]) -> u64 {
        let values = super::budget::elements(shape).map_or(u64::MAX, |n| n as u64);
        let scaled = u128::from(self.peak_at_widest) * u128::from(values);
        let peak = scaled.div_ceil(u128::from(self.widest_values.max(1)));
        self.weights.saturating_add(u64::try_from(peak).unwrap_or(u64::MAX))
    }
}

/// What a plan for one size is made from.
pub(crate) enum Source {
    /// The graph typed and decluttered with the dimension a symbol: the size is
    /// substituted, then the graph optimised.
    Typed(Arc<TypedModel>, Vec<(usize, Symbol)>),
    /// The graph as parsed, for a model tract cannot type with a dimension left open
    /// (PP-OCR's recogniser): the data input (graph input `ix`) is fixed to the size,
    /// then the graph typed and optimised. Slower to plan, the same plan.
    #[cfg(feature = "onnx")]
    Inference(Arc<InferenceModel>, usize),
}

/// Plans per size of the data input's varying dimension.
pub struct ShapePlans {
    source: Source,
    input: InputSpec,
    capacity: usize,
    budget: Option<PlanBudget>,
    entries: Mutex<Vec<Entry>>,
    tick: AtomicU64,
    made: AtomicU64,
    plan_us: AtomicU64,
}

/// What the cache holds, for status and reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlanCacheReport {
    /// The first varying dimension's size in each plan, most recently used first (a
    /// text recogniser's widths).
    pub sizes: Vec<usize>,
    /// The input shapes with a plan, most recently used first.
    pub shapes: Vec<Vec<usize>>,
    /// Most plans kept.
    pub capacity: usize,
    /// Estimated memory of the plans kept, in bytes (0 without a budget).
    pub bytes: u64,
    /// The most the plans may hold together, in bytes (the model's memory limit; 0
    /// without one).
    pub max_bytes: u64,
    /// Plans made since load (evicted ones included).
    pub made: u64,
    /// Time spent making them, in milliseconds.
    pub plan_ms: f64,
}

impl ShapePlans {
    /// Plans made from `source` for the data input `input`, at most `capacity` of them
    /// at a time.
    pub(crate) fn new(source: Source, input: InputSpec, capacity: usize) -> ShapePlans {
        ShapePlans {
            source,
            input,
            capacity: capacity.max(1),
            budget: None,
            entries: Mutex::new(Vec::new()),
            tick: AtomicU64::new(0),
            made: AtomicU64::new(0),
            plan_us: AtomicU64::new(0),
        }
    }

    /// The same, with the plans kept together within `budget`'s bytes (the least
    /// recently used making room), always at least the one just asked for.
    pub(crate) fn within(mut self, budget: PlanBudget) -> ShapePlans {
        self.budget = Some(budget);
        self
    }

    /// The plan for a concrete `shape` of the data input: the cached one, or one made
    /// now (the cache's least recently used plan makes room for it).
    pub fn plan_for(&self, shape: &[usize]) -> Result<Arc<TypedSimplePlan>, PlanError> {
        if !self.input.accepts(shape) {
            return Err(PlanError::Outside {
                input: self.input.name.clone(),
                accepts: self.input.shape_text(),
                got: shape.to_vec(),
            });
        }
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.lock().iter_mut().find(|e| e.shape == shape) {
            e.used = tick;
            return Ok(e.plan.clone());
        }
        // Planned outside the lock: workers running other sizes are not held up. Two
        // workers asking for the same new size at once both plan it; one plan is kept.
        let started = Instant::now();
        let plan = self.make(shape).map_err(|reason| PlanError::Tract { shape: shape.to_vec(), reason })?;
        self.made.fetch_add(1, Ordering::Relaxed);
        self.plan_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let mut entries = self.lock();
        if let Some(e) = entries.iter_mut().find(|e| e.shape == shape) {
            e.used = tick;
            return Ok(e.plan.clone());
        }
        let bytes = self.budget.map_or(0, |b| b.bytes(shape));
        let max_bytes = self.budget.map_or(u64::MAX, |b| b.max_bytes);
        let over = |entries: &[Entry]| {
            entries.len() >= self.capacity
                || entries.iter().map(|e| e.bytes).fold(bytes, u64::saturating_add) > max_bytes
        };
        while over(&entries)
            && let Some(oldest) = entries.iter().enumerate().min_by_key(|(_, e)| e.used).map(|(ix, _)| ix)
        {
            entries.swap_remove(oldest);
        }
        entries.push(Entry { shape: shape.to_vec(), plan: plan.clone(), used: tick, bytes });
        Ok(plan)
    }

    /// What the cache holds now.
    pub fn report(&self) -> PlanCacheReport {
        let held = self.lock();
        let bytes = held.iter().map(|e| e.bytes).fold(0, u64::saturating_add);
        let mut entries: Vec<(u64, Vec<usize>)> = held.iter().map(|e| (e.used, e.shape.clone())).collect();
        drop(held);
        entries.sort_by(|a, b| b.cmp(a));
        let axis = self.input.range().map_or(0, |(a, _)| a);
        PlanCacheReport {
            sizes: entries.iter().map(|(_, s)| s.get(axis).copied().unwrap_or(0)).collect(),
            shapes: entries.into_iter().map(|(_, s)| s).collect(),
            capacity: self.capacity,
            bytes,
            max_bytes: self.budget.map_or(0, |b| b.max_bytes),
            made: self.made.load(Ordering::Relaxed),
            plan_ms: self.plan_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }

    /// Fixes the dimension to `shape`'s size, optimises and plans.
    fn make(&self, shape: &[usize]) -> Result<Arc<TypedSimplePlan>, String> {
        let made = match &self.source {
            Source::Typed(typed, symbols) => {
                let subs: HashMap<Symbol, TDim> =
                    symbols.iter().map(|(axis, sym)| (sym.clone(), TDim::from(shape[*axis]))).collect();
                contain(move || -> TractResult<Arc<TypedSimplePlan>> {
                    typed.set_symbols(&subs)?.into_optimized()?.into_runnable()
                })
            }
            #[cfg(feature = "onnx")]
            Source::Inference(model, ix) => {
                let fact = InferenceFact::dt_shape(super::dtype::datum_type(self.input.dtype), shape);
                let model = InferenceModel::clone(model);
                contain(move || -> TractResult<Arc<TypedSimplePlan>> {
                    model.with_input_fact(*ix, fact)?.into_typed()?.into_optimized()?.into_runnable()
                })
            }
        };
        made.map_err(|panic| format!("tract panicked: {panic}"))?.map_err(|e| format!("{e:#}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock leaves the list whole (pushes and removes only).
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(all(test, feature = "onnx"))]
impl ShapePlans {
    /// A smaller bound, so tests can watch eviction without planning eight sizes.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }
}

#[cfg(all(test, feature = "onnx"))] // on real ONNX models
#[path = "plans_tests.rs"]
mod tests;
