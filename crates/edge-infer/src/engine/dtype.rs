//! The spec's element types in tract's terms: one place that both a loaded model and its
//! per-size plans use.

use tract_nnef::prelude::*;

use super::spec::DType;

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
