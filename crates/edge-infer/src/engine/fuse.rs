//! Graph rewrites the engine applies at load, on the decluttered graph and before tract's
//! optimisation: activation chains that exporters spell out op by op are replaced by the
//! one element-wise op tract has for them.
//!
//! Hard-swish, `x * relu6(x + 3) / 6`, is exported by PaddlePaddle (and by PyTorch for
//! older opsets) as `Add(x, 3) → Clip(0, 6) → Mul(x, ·) → Div(·, 6)`. tract declutters
//! that into five binary operations with constants and runs them as separate passes
//! over the activation map; its own `HardSwish` op does the same in one pass, with an
//! AVX-512 kernel on x86_64 and a NEON one on aarch64. On the PP-OCR classifier these
//! chains were the largest share of tract's time after the matrix products.
//!
//! A chain is recognised by what it computes rather than by the exact sequence of ops:
//! the gate (the operand multiplied with `x`) is any short chain of additions,
//! subtractions, multiplications, divisions, minima and maxima of `x` with scalar
//! constants, and it qualifies when, with the scale applied after the product, it
//! equals `relu6(x + 3) / 6` at a dense set of sample points. So `x * hardsigmoid(x)`
//! with alpha 1/6 and the clip taken in either order are found as well, and a chain
//! that computes anything else is left alone.
//!
//! Hard-sigmoid chains (`Mul(α) → Add(β) → Min(1) → Max(0)`) are deliberately not
//! rewritten: in MobileNetV3-style models they follow the 1x1 convolutions of the
//! squeeze-and-excitation blocks, on one value per channel, and tract's optimiser already
//! folds such scalar operations into the matrix product's output stage; an element-wise
//! op in their place would undo that.

use tract_nnef::prelude::*;
use tract_nnef::tract_core::ops::binary::TypedBinOp;
use tract_nnef::tract_core::ops::math::{Add, Div, Max, Min, Mul, Sub};

/// What the engine's graph rewrites changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuseReport {
    /// Hard-swish chains replaced by tract's `HardSwish` op.
    pub hard_swish: usize,
    /// Per-channel multiplications and additions after grouped (depthwise) convolutions
    /// folded into their weights and bias.
    pub channel_affine: usize,
    /// 2x2 max-pools of stride 2 replaced by the engine's own (`engine/pool.rs`).
    pub max_pool_2x2: usize,
}

/// tract's `into_optimized` with the engine's rewrites between decluttering (which
/// brings exporters' spellings to one form) and code generation (which picks kernels).
pub fn optimise(mut typed: TypedModel) -> TractResult<TypedModel> {
    typed.declutter()?;
    let mut report = fuse_activations(&mut typed)?;
    report.channel_affine = super::fold::fold_channel_affine(&mut typed)?;
    report.max_pool_2x2 = super::pool::replace_max_pools(&mut typed)?;
    if report != FuseReport::default() {
        tracing::debug!(?report, "engine graph rewrites");
    }
    typed.optimize()?;
    Ok(typed)
}

/// The longest gate chain looked at; exporters use three to five ops.
const MAX_GATE: usize = 6;
/// The longest run of scalings after the product looked at.
const MAX_SCALE: usize = 2;

/// Replaces every hard-swish chain of `model` (f32 or f16) by one `HardSwish` op.
/// Only the chains' end outlets are rewired; the nodes left unused are dropped by
/// tract's next pass (or by [`TypedModel::compact`]).
pub fn fuse_activations(model: &mut TypedModel) -> TractResult<FuseReport> {
    let mut report = FuseReport::default();
    for id in model.eval_order()? {
        if let Some((x, end)) = hard_swish_at(model, id)? {
            let mut patch =
                TypedModelPatch::new(format!("edge-agent: hard-swish at {}", model.node(id).name));
            let tap = patch.tap_model(model, x)?;
            let name = format!("{}.hard_swish", model.node(end.node).name);
            let out = patch.wire_node(name, tract_nnef::tract_core::ops::nn::hard_swish(), &[tap])?;
            patch.shunt_outside(model, end, out[0])?;
            patch.apply(model)?;
            report.hard_swish += 1;
        }
    }
    if report.hard_swish > 0 {
        model.compact()?;
    }
    Ok(report)
}

/// A binary op with a scalar constant on one side, as a function of the other side.
#[derive(Debug, Clone, Copy)]
enum Step {
    Add(f32),
    /// `x - c`
    Sub(f32),
    /// `c - x`
    SubFrom(f32),
    Mul(f32),
    /// `x / c`
    Div(f32),
    /// `c / x`
    DivInto(f32),
    Min(f32),
    Max(f32),
}

impl Step {
    fn apply(self, v: f32) -> f32 {
        match self {
            Step::Add(c) => v + c,
            Step::Sub(c) => v - c,
            Step::SubFrom(c) => c - v,
            Step::Mul(c) => v * c,
            Step::Div(c) => v / c,
            Step::DivInto(c) => c / v,
            Step::Min(c) => v.min(c),
            Step::Max(c) => v.max(c),
        }
    }

    /// A pure scaling (what may follow the product).
    fn scale(self) -> Option<f32> {
        match self {
            Step::Mul(c) => Some(c),
            Step::Div(c) if c != 0.0 => Some(1.0 / c),
            _ => None,
        }
    }
}

/// The scalar value of a constant outlet whose elements are all equal.
fn scalar(model: &TypedModel, outlet: OutletId) -> Option<f32> {
    let fact = model.outlet_fact(outlet).ok()?;
    let t = fact.uniform.as_ref().or(fact.konst.as_ref())?;
    if t.len() == 0 {
        return None;
    }
    let cast = t.cast_to::<f32>().ok()?;
    let values = cast.to_plain_array_view::<f32>().ok()?;
    let first = *values.iter().next()?;
    values.iter().all(|v| v.to_bits() == first.to_bits()).then_some(first)
}

/// Node `id` as one step on its non-constant input: the step and that input.
fn step_of(model: &TypedModel, id: usize) -> Option<(Step, OutletId)> {
    let node = model.node(id);
    let op = node.op_as::<TypedBinOp>()?;
    if node.inputs.len() != 2 || node.outputs.len() != 1 {
        return None;
    }
    let (a, b) = (node.inputs[0], node.inputs[1]);
    let (var, c, const_first) = match (scalar(model, a), scalar(model, b)) {
        (None, Some(c)) => (a, c, false),
        (Some(c), None) => (b, c, true),
        _ => return None,
    };
    // The constant must not widen the other operand by broadcasting.
    let out = &node.outputs[0].fact;
    if model.outlet_fact(var).ok()?.shape != out.shape {
        return None;
    }
    let m = &op.0;
    let step = if m.is::<Add>() {
        Step::Add(c)
    } else if m.is::<Mul>() {
        Step::Mul(c)
    } else if m.is::<Min>() {
        Step::Min(c)
    } else if m.is::<Max>() {
        Step::Max(c)
    } else if m.is::<Sub>() {
        if const_first { Step::SubFrom(c) } else { Step::Sub(c) }
    } else if m.is::<Div>() {
        if const_first { Step::DivInto(c) } else { Step::Div(c) }
    } else {
        return None;
    };
    Some((step, var))
}

/// The single consumer of `outlet`, if it has exactly one and is not a model output.
fn only_successor(model: &TypedModel, outlet: OutletId) -> Option<usize> {
    let node = model.node(outlet.node);
    let succ = &node.outputs.get(outlet.slot)?.successors;
    let outputs = model.output_outlets().ok()?;
    (succ.len() == 1 && !outputs.contains(&outlet)).then(|| succ[0].node)
}

/// Points where a candidate chain must agree with hard-swish's gate: dense over the
/// interesting range (the kinks at -3 and 3 included) and a few far away.
fn samples() -> impl Iterator<Item = f32> {
    (-640..=640).map(|i| i as f32 / 64.0).chain([-1e4, -100.0, -7.5, 7.5, 100.0, 1e4])
}

/// `relu6(v + 3) / 6`, the gate hard-swish multiplies `v` with.
fn hard_sigmoid_gate(v: f32) -> f32 {
    ((v + 3.0).clamp(0.0, 6.0)) / 6.0
}

/// Whether `scale * gate(v)` is hard-swish's gate, within a few ulps of float rounding.
fn is_hard_swish_gate(gate: &[Step], scale: f32) -> bool {
    samples().all(|v| {
        let got = gate.iter().fold(v, |acc, s| s.apply(acc)) * scale;
        (got - hard_sigmoid_gate(v)).abs() <= 1e-6 * (1.0 + hard_sigmoid_gate(v).abs())
    })
}

/// If node `id` is the product `x * gate(x)` of a hard-swish chain: `x`, and the outlet
/// the whole chain (the product and any scaling after it) ends at.
fn hard_swish_at(model: &TypedModel, id: usize) -> TractResult<Option<(OutletId, OutletId)>> {
    let node = model.node(id);
    let Some(op) = node.op_as::<TypedBinOp>() else { return Ok(None) };
    if !op.0.is::<Mul>() || node.inputs.len() != 2 || node.outputs.len() != 1 {
        return Ok(None);
    }
    let fact = &node.outputs[0].fact;
    if !matches!(fact.datum_type, DatumType::F32 | DatumType::F16) {
        return Ok(None);
    }
    for (x, gate_end) in [(node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])] {
        if model.outlet_fact(x)?.shape != fact.shape || model.outlet_fact(x)?.datum_type != fact.datum_type {
            continue;
        }
        let Some(gate) = gate_chain(model, x, gate_end, id) else { continue };
        // Scalings after the product, longest match first (a gate that already divides
        // by 6 must not swallow an unrelated scaling that follows).
        let mut tail = vec![(1.0f32, OutletId::new(id, 0))];
        let mut at = OutletId::new(id, 0);
        while tail.len() <= MAX_SCALE {
            let Some(next) = only_successor(model, at) else { break };
            let Some((step, input)) = step_of(model, next) else { break };
            let Some(s) = step.scale() else { break };
            if input != at {
                break;
            }
            at = OutletId::new(next, 0);
            let scale = tail.last().map(|t| t.0).unwrap_or(1.0) * s;
            tail.push((scale, at));
        }
        for (scale, end) in tail.into_iter().rev() {
            if is_hard_swish_gate(&gate, scale) {
                return Ok(Some((x, end)));
            }
        }
    }
    Ok(None)
}

/// The steps from `x` to `end` (in order), if `end` is reached from `x` through steps
/// alone, each used only by the next (and the last only by the product `product`).
fn gate_chain(model: &TypedModel, x: OutletId, end: OutletId, product: usize) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut at = end;
    let mut consumer = product;
    while at != x {
        if steps.len() == MAX_GATE || at.slot != 0 {
            return None;
        }
        if only_successor(model, at) != Some(consumer) {
            return None;
        }
        let (step, input) = step_of(model, at.node)?;
        steps.push(step);
        consumer = at.node;
        at = input;
    }
    if steps.is_empty() {
        return None;
    }
    steps.reverse();
    Some(steps)
}

// Built from ONNX graphs and real ONNX models: only with the `onnx` feature.
#[cfg(all(test, feature = "onnx"))]
mod tests {
    use super::*;
    use tract_nnef::tract_core::ops::math;
    use tract_onnx::prelude::{InferenceFact, InferenceModelExt};

    /// `x → [gate steps] → Mul(x, ·) → [scales]` on a 1x4x8x8 f32 input.
    fn chain(gate: &[(&str, f32)], scales: &[(&str, f32)]) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 4, 8, 8])).unwrap();
        let mut wire = x;
        let mut n = 0;
        let mut step = |m: &mut TypedModel, wire: OutletId, (op, c): (&str, f32)| {
            n += 1;
            let k = m.add_const(format!("c{n}"), tensor4(&[[[[c]]]])).unwrap();
            let op = match op {
                "add" => math::add(),
                "sub" => math::sub(),
                "mul" => math::mul(),
                "div" => math::div(),
                "min" => math::min(),
                _ => math::max(),
            };
            m.wire_node(format!("n{n}"), op, &[wire, k]).unwrap()[0]
        };
        for s in gate {
            wire = step(&mut m, wire, *s);
        }
        wire = m.wire_node("product", math::mul(), &[x, wire]).unwrap()[0];
        for s in scales {
            wire = step(&mut m, wire, *s);
        }
        m.select_output_outlets(&[wire]).unwrap();
        m
    }

    fn run(m: &TypedModel, input: &Tensor) -> Vec<f32> {
        let plan = m.clone().into_optimized().unwrap().into_runnable().unwrap();
        let out = plan.run(tvec!(input.clone().into_tvalue())).unwrap();
        out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    fn ramp() -> Tensor {
        let values: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) / 16.0).collect();
        Tensor::from_shape(&[1, 4, 8, 8], &values).unwrap()
    }

    /// Fuses `m` and checks the count, that the result still computes the same values,
    /// and that no multiplication is left when every chain was fused.
    fn fused(m: TypedModel, want: usize) -> TypedModel {
        let before = run(&m, &ramp());
        let mut after = m.clone();
        let report = fuse_activations(&mut after).unwrap();
        assert_eq!(report.hard_swish, want);
        let got = run(&after, &ramp());
        for (a, b) in before.iter().zip(&got) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "{a} against {b}");
        }
        after
    }

    #[test]
    fn the_paddle_hard_swish_chain_becomes_one_op() {
        // Add(3) → Clip(0, 6) (a max then a min) → Mul(x, ·) → Div(6)
        let m = fused(chain(&[("add", 3.0), ("max", 0.0), ("min", 6.0)], &[("div", 6.0)]), 1);
        let ops: Vec<String> = m.nodes().iter().map(|n| n.op.name().to_string()).collect();
        assert!(ops.iter().any(|o| o == "HardSwish"), "{ops:?}");
        assert!(!ops.iter().any(|o| o == "Mul" || o == "Div" || o == "Min"), "{ops:?}");
    }

    #[test]
    fn other_spellings_of_hard_swish_are_found() {
        // The clip the other way round, the scaling as a multiplication.
        fused(chain(&[("add", 3.0), ("min", 6.0), ("max", 0.0)], &[("mul", 1.0 / 6.0)]), 1);
        // x * hardsigmoid(x) with alpha 1/6, beta 0.5: no scaling after the product.
        fused(chain(&[("mul", 1.0 / 6.0), ("add", 0.5), ("min", 1.0), ("max", 0.0)], &[]), 1);
        // Divided inside the gate, then an unrelated scaling that must stay.
        let m = fused(chain(&[("add", 3.0), ("max", 0.0), ("min", 6.0), ("div", 6.0)], &[("mul", 2.0)]), 1);
        assert!(m.nodes().iter().any(|n| n.op.name() == "Mul"));
    }

    #[test]
    fn chains_that_compute_something_else_are_left_alone() {
        // relu6 without the shift, a clip at 5, a missing division, hard-sigmoid's own
        // alpha 0.2 (PaddlePaddle's), and a gate of two ops that happens to be linear.
        fused(chain(&[("max", 0.0), ("min", 6.0)], &[("div", 6.0)]), 0);
        fused(chain(&[("add", 3.0), ("max", 0.0), ("min", 5.0)], &[("div", 6.0)]), 0);
        fused(chain(&[("add", 3.0), ("max", 0.0), ("min", 6.0)], &[]), 0);
        fused(chain(&[("mul", 0.2), ("add", 0.5), ("min", 1.0), ("max", 0.0)], &[]), 0);
        fused(chain(&[("add", 3.0), ("div", 6.0)], &[]), 0);
    }

    #[test]
    fn a_gate_used_elsewhere_is_not_rewritten() {
        // The clipped value is also a model output: removing it would change the graph's
        // outputs, and keeping it would save nothing.
        let mut m = chain(&[("add", 3.0), ("max", 0.0), ("min", 6.0)], &[("div", 6.0)]);
        let clip = m.node_by_name("n3").unwrap().id;
        let mut outputs = m.output_outlets().unwrap().to_vec();
        outputs.push(OutletId::new(clip, 0));
        m.select_output_outlets(&outputs).unwrap();
        assert_eq!(fuse_activations(&mut m).unwrap().hard_swish, 0);
    }

    /// The test models loaded as the engine loads them, against the same files optimised
    /// by tract alone, on the same inputs: the outputs agree within `TOLERANCE`.
    #[test]
    fn real_models_give_the_same_outputs_fused_and_unfused() {
        use crate::engine::tests::{cls_dir, demo_dir, vad_dir};
        use crate::engine::{LoadedModel, ModelLimits};
        // HardSwish computes x * clamp(x + 3, 0, 6) * (1/6) where the chain divided by 6
        // last: a few ulps per activation, carried through the layers.
        const TOLERANCE: f32 = 1e-4;
        // (model, hard-swish chains, per-channel steps after grouped convolutions, 2x2
        // max-pools of stride 2)
        let mut dirs = vec![(demo_dir(), 0, 0, 0)];
        dirs.extend(vad_dir().map(|d| (d, 0, 0, 0)));
        // PP-OCR's classifier has 18 hard-swish chains (one per Clip of the file) and 11
        // depthwise convolutions, each followed by a batch normalisation (a Mul and an Add),
        // and one 2x2 max-pool of stride 2 at the end of its backbone.
        dirs.extend(cls_dir().map(|d| (d, 18, 22, 1)));
        assert_eq!(dirs.len(), 3, "the test cache has silero-vad and ppocr-cls");
        for (dir, chains, affine, pools) in dirs {
            let model = LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
            let n = model.spec.data_input().len();
            let data: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
            let inputs = model.assemble(data, None).unwrap();
            let fused = model.spawn_state().unwrap().run(inputs.clone()).unwrap();

            let mut reference = tract_onnx::onnx().model_for_path(dir.join("model.onnx")).unwrap();
            for (ix, t) in inputs.iter().enumerate() {
                reference = reference
                    .with_input_fact(ix, InferenceFact::dt_shape(t.datum_type(), t.shape()))
                    .unwrap();
            }
            let typed = reference.into_typed().unwrap();
            let mut decluttered = typed.clone().into_decluttered().unwrap();
            assert_eq!(fuse_activations(&mut decluttered).unwrap().hard_swish, chains, "{}", dir.display());
            let folded = crate::engine::fold::fold_channel_affine(&mut decluttered).unwrap();
            assert_eq!(folded, affine, "{}", dir.display());
            let plain = typed.into_optimized().unwrap().into_runnable().unwrap().run(inputs).unwrap();

            assert_eq!(fused.len(), plain.len());
            for (a, b) in fused.iter().zip(&plain) {
                assert_eq!(a.shape(), b.shape());
                let (a, b) = (a.cast_to::<f32>().unwrap(), b.cast_to::<f32>().unwrap());
                let worst = a
                    .to_plain_array_view::<f32>()
                    .unwrap()
                    .iter()
                    .zip(b.to_plain_array_view::<f32>().unwrap().iter())
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst <= TOLERANCE, "{}: outputs differ by {worst}", dir.display());
            }
            let hard_swish = model.info.ops.get("HardSwish").copied().unwrap_or(0);
            assert_eq!(hard_swish, chains, "{}: {:?}", dir.display(), model.info.ops);
            let max_pools = model.info.ops.get("EdgeMaxPool2x2").copied().unwrap_or(0);
            assert_eq!(max_pools, pools, "{}: {:?}", dir.display(), model.info.ops);
            // No per-channel pass is left after a depthwise convolution.
            let chains_left =
                model.info.ops.keys().filter(|op| op.as_str() == "OptBinChain(Mul+Add)").count();
            assert!(affine == 0 || chains_left == 0, "{}: {:?}", dir.display(), model.info.ops);
        }
    }
}
