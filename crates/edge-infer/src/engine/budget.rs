//! How much memory a model may take on this device, and how much it would take.
//!
//! A spec's shapes come from outside (a model directory, a registry package), and a
//! shape such as `[4294967296, 3, 4294967296, 32]` wraps a 64-bit product while
//! `[1, 3, 65536, 65536]` asks for 48 GiB: either took a device down before these
//! checks. So every element count and byte size of a shape is computed with checked
//! arithmetic (a product that does not fit is refused, never wrapped), and a model is
//! compared with the device's limit before anything of its size is allocated: the
//! declared inputs and the file before the file is read, the estimated working memory
//! (below) before tract optimises the graph or builds its run plan.

use std::collections::HashMap;

use serde::Serialize;
use tract_nnef::prelude::*;

/// Default of `engine.max_model_memory_mb`. The estimate leaves out operators' scratch
/// and the allocator's slack, which measured about as much again (see
/// [`MemoryEstimate`]), so 256 MiB lets one model take about half of a 1 GiB board;
/// the PP-OCR text detector at 960x960 estimates 89 MiB, the test models under 2 MiB.
pub const DEFAULT_MAX_MODEL_MEMORY_MB: u64 = 256;

/// Largest value `engine.max_model_memory_mb` and `--max-model-memory-mb` take (1 TiB):
/// the limit in bytes then always fits a u64.
pub const MAX_MODEL_MEMORY_MB: u64 = 1 << 20;

/// How the limit is named in refusals: every place a reader may raise it.
pub const LIMIT_NAMES: &str =
    "engine.max_model_memory_mb in the agent's config, or --max-model-memory-mb on the command line";

/// The most memory one model may need on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Bytes of weights plus working memory (see [`MemoryEstimate`]).
    pub max_bytes: u64,
}

impl ModelLimits {
    /// A limit of `mb` MiB (at most [`MAX_MODEL_MEMORY_MB`]; larger values are clamped).
    pub fn from_mb(mb: u64) -> ModelLimits {
        ModelLimits { max_bytes: mb.min(MAX_MODEL_MEMORY_MB) << 20 }
    }

    /// The limit in MiB, as configured.
    pub fn mb(&self) -> u64 {
        self.max_bytes >> 20
    }
}

impl Default for ModelLimits {
    fn default() -> Self {
        ModelLimits::from_mb(DEFAULT_MAX_MODEL_MEMORY_MB)
    }
}

/// Number of elements of `shape`, or `None` if the product does not fit a `usize`.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d))
}

/// Bytes of a tensor of `shape` with elements of `elem_size` bytes, or `None` if that
/// does not fit a `u64` (or the element count does not fit a `usize`).
pub fn tensor_bytes(shape: &[usize], elem_size: usize) -> Option<u64> {
    let n = u64::try_from(elements(shape)?).ok()?;
    n.checked_mul(u64::try_from(elem_size).ok()?)
}

/// A size in readable binary units (`1.5 MiB`), for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} bytes") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// What a model needs in memory while it runs, estimated from tract's typed graph at
/// the spec's shapes.
///
/// The estimate is `weights + peak_tensors`: the constants of the graph, which stay in
/// memory for the model's life, plus the largest total of intermediate tensors alive at
/// once when the nodes run in tract's evaluation order, with each tensor freed after its
/// last consumer (as tract's run plan frees them). It is taken before optimisation, so
/// it errs on the high side for activations (optimisation fuses nodes and drops some
/// intermediates) and on the low side for weights and scratch (optimisation may add
/// packed copies of matrix weights, and operators' scratch buffers are not counted).
/// Measured on the PP-OCR text detector (`edge-agent infer`, peak RSS): from 96x96 to
/// 960x960 the estimate grew by 84 MiB and a run's peak by 184 MiB, 21 to 32 MiB of
/// which were the request's own copies of its 10.5 MiB input, so a run needs about twice
/// the estimate. It is a guard against models that cannot fit, not an accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// Bytes of constant tensors (weights, biases, folded constants).
    pub weights_bytes: u64,
    /// Largest total of intermediate tensors (inputs and outputs included) alive at once.
    pub peak_tensor_bytes: u64,
    /// Tensors whose size tract could not tell (data-dependent shapes); not counted.
    pub unsized_tensors: usize,
}

impl MemoryEstimate {
    /// Weights plus peak tensors (saturating: an estimate past `u64` is past any limit).
    pub fn total(&self) -> u64 {
        self.weights_bytes.saturating_add(self.peak_tensor_bytes)
    }

    /// Estimates a typed model whose inputs have concrete shapes.
    pub fn of(model: &TypedModel) -> TractResult<MemoryEstimate> {
        Self::of_with(model, &SymbolValues::default())
    }

    /// Estimates a typed model whose shapes may hold symbols, each sized by `symbols`
    /// (a dimension that varies within bounds is sized at its largest).
    pub fn of_with(model: &TypedModel, symbols: &SymbolValues) -> TractResult<MemoryEstimate> {
        let mut est = MemoryEstimate::default();
        let size = |fact: &TypedFact, est: &mut MemoryEstimate| -> u64 {
            let dims: Option<Vec<usize>> = fact
                .shape
                .iter()
                .map(|d| d.eval_to_i64(symbols).ok().and_then(|n| usize::try_from(n).ok()))
                .collect();
            match dims.map(|s| tensor_bytes(&s, fact.datum_type.size_of())) {
                Some(Some(b)) => b,
                // Past u64: more than any device has.
                Some(None) => u64::MAX,
                None => {
                    est.unsized_tensors += 1;
                    0
                }
            }
        };
        let outputs: Vec<OutletId> = model.output_outlets()?.to_vec();
        // Consumers still to run, per outlet: a tensor is freed when this reaches zero.
        let mut pending: HashMap<OutletId, usize> = HashMap::new();
        for node in model.nodes() {
            for (ix, out) in node.outputs.iter().enumerate() {
                pending.insert(OutletId::new(node.id, ix), out.successors.len());
            }
        }
        let mut live = 0u64;
        for id in model.eval_order()? {
            let node = model.node(id);
            if node.inputs.is_empty() && node.outputs.iter().all(|o| o.fact.konst.is_some()) {
                // A constant: held by the model for its whole life, never freed.
                for o in &node.outputs {
                    est.weights_bytes = est.weights_bytes.saturating_add(size(&o.fact, &mut est));
                }
                continue;
            }
            for o in &node.outputs {
                live = live.saturating_add(size(&o.fact, &mut est));
            }
            est.peak_tensor_bytes = est.peak_tensor_bytes.max(live);
            // Inputs whose last consumer this was, and outputs nobody reads, are freed.
            let mut freed: Vec<OutletId> = Vec::new();
            for input in &node.inputs {
                if let Some(n) = pending.get_mut(input) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        freed.push(*input);
                    }
                }
            }
            for (ix, o) in node.outputs.iter().enumerate() {
                if o.successors.is_empty() {
                    freed.push(OutletId::new(id, ix));
                }
            }
            for outlet in freed {
                let fact = model.outlet_fact(outlet)?;
                let is_const = model.node(outlet.node).inputs.is_empty() && fact.konst.is_some();
                if !outputs.contains(&outlet) && !is_const {
                    // Counted as 0 above if unsized; do not count it twice.
                    let mut scratch = MemoryEstimate::default();
                    live = live.saturating_sub(size(fact, &mut scratch));
                }
            }
        }
        Ok(est)
    }
}
