//! A 2x2 max-pool with stride 2, the downsampling step of MobileNet-style backbones
//! (PP-OCR's classifier and recogniser end their feature extractor with one).
//!
//! tract 0.23 has a vectorised path for 2x2 pools of stride 1 only; at stride 2 every
//! output goes through its generic per-element loop with a bounds check per tap, which a
//! profile of the PP-OCR classifier put at about an eighth of the model's time. This op
//! computes the same values row by row: each output row is the larger of two input rows
//! taken element by element, then of neighbouring pairs, loops the compiler vectorises.
//! It replaces tract's `MaxPool` at load, after decluttering, only where the pool is
//! exactly that: f32, channels before the spatial axes, a 2x2 window, stride 2, no
//! dilation, no padding, no index output.

use tract_nnef::tract_core::internal::*;
use tract_nnef::tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec};
use tract_nnef::tract_core::ops::nn::DataFormat;

/// tract's `MaxPool` restricted to the case above; the pool spec is kept so the output
/// shape is computed by tract's own rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MaxPool2x2 {
    spec: PoolSpec,
}

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        "EdgeMaxPool2x2".into()
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        let rank = shape.len();
        let out_shape = self.spec.output_shape(shape)?;
        let (h, w) = (shape[rank - 2], shape[rank - 1]);
        let (oh, ow) = (out_shape.hw_dims()[0], out_shape.hw_dims()[1]);
        // Valid padding, stride 2: every window lies inside the plane.
        ensure!(2 * oh <= h && 2 * ow <= w, "2x2 max-pool of {h}x{w} into {oh}x{ow}");
        let mut output = unsafe { Tensor::uninitialized_dt(DatumType::F32, &out_shape.shape)? };
        {
            let plain = input.try_as_plain_ram()?;
            let src = plain.as_slice::<f32>()?;
            let mut out_plain = output.try_as_plain_ram_mut()?;
            let dst = out_plain.as_slice_mut::<f32>()?;
            if oh * ow > 0 {
                for (plane, out) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(oh * ow)) {
                    pool_plane(plane, w, out, ow);
                }
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MaxPool2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.spec.output_facts(inputs)
    }

    as_op!();
}

/// The larger of two values as tract's generic pool compares them (`acc < v`), which
/// compiles to one vector max.
#[inline(always)]
fn larger(acc: f32, v: f32) -> f32 {
    if acc < v { v } else { acc }
}

/// One channel plane of width `w` into `out` (rows of width `ow`, as many as fit).
fn pool_plane(plane: &[f32], w: usize, out: &mut [f32], ow: usize) {
    for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
        let top = &plane[2 * oy * w..][..2 * ow];
        let bottom = &plane[(2 * oy + 1) * w..][..2 * ow];
        for ((o, t), b) in row.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
            *o = larger(larger(t[0], t[1]), larger(b[0], b[1]));
        }
    }
}

/// Whether tract's `MaxPool` on an input of this fact is the case this op computes.
fn qualifies(pool: &MaxPool, input: &TypedFact) -> bool {
    let spec = &pool.pool_spec;
    let no_padding = match &spec.padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(before, after) => before.iter().chain(after).all(|p| *p == 0),
        PaddingSpec::ExplicitOnnxPool(before, after, ceil) => {
            !ceil && before.iter().chain(after).all(|p| *p == 0)
        }
        PaddingSpec::SameUpper | PaddingSpec::SameLower => false,
    };
    pool.with_index_outputs.is_none()
        && input.datum_type == DatumType::F32
        && matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        && spec.kernel_shape[..] == [2, 2]
        && spec.strides()[..] == [2, 2]
        && spec.dilations()[..] == [1, 1]
        && spec.input_channels == spec.output_channels
        && no_padding
}

/// Replaces every qualifying `MaxPool` of `model` by [`MaxPool2x2`]; returns how many.
pub(super) fn replace_max_pools(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(pool) = node.op_as::<MaxPool>() else { continue };
        if node.inputs.len() != 1 || !qualifies(pool, model.outlet_fact(node.inputs[0])?) {
            continue;
        }
        let op = MaxPool2x2 { spec: pool.pool_spec.clone() };
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_nnef::tract_core::ops::cnn::MaxPool;

    fn pool_model(shape: &[usize], format: DataFormat, padding: PaddingSpec, stride: usize) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let c = if format == DataFormat::NHWC { shape[shape.len() - 1] } else { shape[shape.len() - 3] };
        let spec = PoolSpec::new(format, tvec![2, 2], padding, None, Some(tvec![stride, stride]), c, c);
        let y = m.wire_node("pool", MaxPool::new(spec, None), &[x]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    fn run(m: &TypedModel, input: &Tensor) -> Tensor {
        let plan = m.clone().into_optimized().unwrap().into_runnable().unwrap();
        plan.run(tvec!(input.clone().into_tvalue())).unwrap().remove(0).into_tensor()
    }

    /// Values with ties, negatives and both orders inside a window.
    fn input(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 61) as f32 - 30.0).collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    #[test]
    fn gives_tracts_values_on_even_odd_and_batched_planes() {
        for shape in [vec![1, 3, 4, 6], vec![2, 5, 7, 9], vec![1, 1, 2, 2], vec![1, 8, 3, 3]] {
            for padding in [PaddingSpec::Valid, PaddingSpec::Explicit(tvec![0, 0], tvec![0, 0])] {
                let plain = pool_model(&shape, DataFormat::NCHW, padding, 2);
                let mut ours = plain.clone();
                assert_eq!(replace_max_pools(&mut ours).unwrap(), 1, "{shape:?}");
                assert!(ours.nodes().iter().any(|n| n.op.name() == "EdgeMaxPool2x2"));
                let x = input(&shape);
                assert_eq!(run(&ours, &x), run(&plain, &x), "{shape:?}");
            }
        }
        // A plane one column wide pools to nothing (tract 0.23.9's own 2x2 path divides
        // by zero on it).
        let mut ours = pool_model(&[1, 8, 3, 1], DataFormat::NCHW, PaddingSpec::Valid, 2);
        assert_eq!(replace_max_pools(&mut ours).unwrap(), 1);
        assert_eq!(run(&ours, &input(&[1, 8, 3, 1])).shape(), &[1, 8, 1, 0]);
        // Channels first without a batch axis.
        let plain = pool_model(&[4, 6, 10], DataFormat::CHW, PaddingSpec::Valid, 2);
        let mut ours = plain.clone();
        assert_eq!(replace_max_pools(&mut ours).unwrap(), 1);
        let x = input(&[4, 6, 10]);
        assert_eq!(run(&ours, &x), run(&plain, &x));
    }

    #[test]
    fn other_pools_are_left_to_tract() {
        let cases = [
            pool_model(&[1, 3, 4, 6], DataFormat::NCHW, PaddingSpec::Valid, 1),
            pool_model(&[1, 3, 4, 6], DataFormat::NCHW, PaddingSpec::SameUpper, 2),
            pool_model(
                &[1, 3, 5, 5],
                DataFormat::NCHW,
                PaddingSpec::ExplicitOnnxPool(tvec![0, 0], tvec![0, 0], true),
                2,
            ),
            pool_model(&[1, 3, 4, 6], DataFormat::NCHW, PaddingSpec::Explicit(tvec![1, 0], tvec![0, 0]), 2),
            pool_model(&[1, 4, 6, 3], DataFormat::NHWC, PaddingSpec::Valid, 2),
        ];
        for mut m in cases {
            assert_eq!(replace_max_pools(&mut m).unwrap(), 0);
        }
    }
}
