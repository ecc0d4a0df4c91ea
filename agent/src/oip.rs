//! The Open Inference Protocol v2 wire vocabulary shared by the local API (which serves
//! the protocol) and the cloud fallback (which speaks it to a server). It depends on
//! neither, so both can depend on it.

/// OIP datatype name of an engine dtype name (`f32` → `FP32`); anything without a
/// numeric or boolean OIP type travels as `BYTES`.
pub fn datatype(dtype: &str) -> &'static str {
    match dtype {
        "f32" => "FP32",
        "f64" => "FP64",
        "f16" => "FP16",
        "i64" => "INT64",
        "i32" => "INT32",
        "i16" => "INT16",
        "i8" => "INT8",
        "u8" => "UINT8",
        "u16" => "UINT16",
        "u32" => "UINT32",
        "u64" => "UINT64",
        "bool" => "BOOL",
        _ => "BYTES",
    }
}

#[cfg(test)]
mod tests {
    use super::datatype;

    #[test]
    fn engine_dtypes_map_to_oip_names() {
        assert_eq!(datatype("f32"), "FP32");
        assert_eq!(datatype("u8"), "UINT8");
        assert_eq!(datatype("bool"), "BOOL");
        assert_eq!(datatype("string"), "BYTES");
    }
}
