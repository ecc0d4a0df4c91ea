//! Folding a per-channel affine step into the grouped convolution before it.
//!
//! A batch normalisation after a convolution is, at inference, `y * scale[c] + shift[c]`.
//! tract folds that into an ordinary convolution's weights and bias while decluttering,
//! but not into a grouped one (its rule asks for one group), so after each depthwise
//! convolution of a MobileNet the scale and the shift stay as a separate pass over the
//! whole activation map: on the PP-OCR classifier, 11 such passes. This does the fold for
//! convolutions with more than one group, whose output channel `o` is computed by filter
//! `o` alone just the same: `kernel[o] *= scale[o]`, `bias[o] = bias[o] * scale[o] +
//! shift[o]`. The weights are constants, so the new ones are computed here once.

use tract_nnef::prelude::*;
use tract_nnef::tract_core::ops::binary::TypedBinOp;
use tract_nnef::tract_core::ops::cnn::Conv;
use tract_nnef::tract_core::ops::math::{Add, Mul};

/// Folds every per-channel multiplication or addition by a constant that directly
/// follows a grouped f32 convolution into it; returns how many were folded.
pub(super) fn fold_channel_affine(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    // A fold makes the convolution's next step the candidate: repeat until none is left
    // (bounded: each fold removes one node).
    loop {
        let mut changed = false;
        for id in model.eval_order()? {
            if let Some(patch) = fold_at(model, id)? {
                patch.apply(model)?;
                folded += 1;
                changed = true;
                break;
            }
        }
        if !changed {
            break;
        }
    }
    if folded > 0 {
        model.compact()?;
    }
    Ok(folded)
}

/// The values of a constant f32 outlet.
fn f32_const(model: &TypedModel, outlet: OutletId) -> Option<(Vec<usize>, Vec<f32>)> {
    let fact = model.outlet_fact(outlet).ok()?;
    let t = fact.konst.as_ref()?;
    if t.datum_type() != DatumType::F32 {
        return None;
    }
    let values = t.to_plain_array_view::<f32>().ok()?.iter().copied().collect();
    Some((t.shape().to_vec(), values))
}

/// The patch folding the successor of convolution `id` into it, if it qualifies.
fn fold_at(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    if conv.group <= 1 || conv.q_params.is_some() || node.inputs.len() != 3 {
        return Ok(None);
    }
    let out = OutletId::new(id, 0);
    let out_fact = model.outlet_fact(out)?;
    let Some(out_shape) = out_fact.shape.as_concrete() else { return Ok(None) };
    if out_fact.datum_type != DatumType::F32 || model.output_outlets()?.contains(&out) {
        return Ok(None);
    }
    let &[succ] = &*node.outputs[0].successors else { return Ok(None) };
    let next = model.node(succ.node);
    let Some(bin) = next.op_as::<TypedBinOp>() else { return Ok(None) };
    let is_mul = bin.0.is::<Mul>();
    if !(is_mul || bin.0.is::<Add>()) || next.inputs.len() != 2 {
        return Ok(None);
    }
    let channels = conv.output_channels();
    let c_axis = conv.pool_spec.data_format.shape(out_shape.to_vec())?.c_axis();
    // The other operand: one value per output channel, on the channel axis only.
    let Some((shape, operand)) = f32_const(model, next.inputs[1 - succ.slot]) else { return Ok(None) };
    let per_channel = shape.len() == out_shape.len()
        && shape.iter().enumerate().all(|(a, d)| if a == c_axis { *d == channels } else { *d == 1 });
    if !per_channel || model.outlet_fact(OutletId::new(next.id, 0))?.shape != out_fact.shape {
        return Ok(None);
    }
    let (Some((k_shape, mut kernel)), Some((b_shape, bias))) =
        (f32_const(model, node.inputs[1]), f32_const(model, node.inputs[2]))
    else {
        return Ok(None);
    };
    let o_axis = conv.kernel_fmt.o_axis(&k_shape);
    if k_shape.get(o_axis) != Some(&channels) {
        return Ok(None);
    }
    let mut bias: Vec<f32> = match b_shape.as_slice() {
        [] => vec![bias[0]; channels],
        [n] if *n == channels => bias,
        _ => return Ok(None),
    };
    if is_mul {
        // Element `i` of the kernel belongs to output channel (i / inner) % channels.
        let inner: usize = k_shape[o_axis + 1..].iter().product();
        for (i, k) in kernel.iter_mut().enumerate() {
            *k *= operand[(i / inner.max(1)) % channels];
        }
        bias.iter_mut().zip(&operand).for_each(|(b, s)| *b *= s);
    } else {
        bias.iter_mut().zip(&operand).for_each(|(b, t)| *b += t);
    }

    let mut patch = TypedModelPatch::new(format!("edge-agent: fold {} into {}", next.name, node.name));
    let x = patch.tap_model(model, node.inputs[0])?;
    let kernel =
        patch.add_const(format!("{}.folded_kernel", node.name), Tensor::from_shape(&k_shape, &kernel)?)?;
    let bias =
        patch.add_const(format!("{}.folded_bias", node.name), Tensor::from_shape(&[channels], &bias)?)?;
    let wire = patch.wire_node(&node.name, conv.clone(), &[x, kernel, bias])?[0];
    patch.shunt_outside(model, OutletId::new(next.id, 0), wire)?;
    Ok(Some(patch))
}
