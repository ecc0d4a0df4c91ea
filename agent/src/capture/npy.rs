//! NumPy's `.npy` format (version 1.0) for little-endian f32 arrays: written by
//! `samples export`, read by `infer` (a pre-processed input) and by `numpy.load`.
//!
//! The file is the magic `\x93NUMPY`, the version (1, 0), a u16 header length, and a
//! Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (..), }` padded
//! with spaces to a multiple of 64 bytes and ended by a newline; then the values.

/// Why bytes are not an f32 `.npy` array this reader takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyError {
    #[error("not a .npy file (no \\x93NUMPY header)")]
    Magic,
    #[error("a .npy version {0}.{1}; only 1.0 is read")]
    Version(u8, u8),
    #[error("the header is cut short")]
    Short,
    #[error(
        "the header {0:?} is not one this reader takes; write float32, C order ('<f4', fortran_order False)"
    )]
    Header(String),
    #[error("the shape {shape:?} holds {want} values but the file has {bytes} bytes of data")]
    Size { shape: Vec<usize>, want: u64, bytes: usize },
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// An f32 array as `.npy` bytes.
pub fn write_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("{one},"),
        _ => shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + length (2) + header + newline: a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&u16::try_from(header.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Reads an f32, C-order `.npy` array: its shape and values. Never panics; allocates
/// no more than the bytes given.
pub fn read_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(NpyError::Magic);
    }
    if bytes[6..8] != [1, 0] {
        return Err(NpyError::Version(bytes[6], bytes[7]));
    }
    let len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = bytes.get(10..10 + len).ok_or(NpyError::Short)?;
    let header = std::str::from_utf8(header).map_err(|_| NpyError::Header("(not UTF-8)".into()))?;
    let shape =
        parse_header(header).ok_or_else(|| NpyError::Header(header.trim().chars().take(120).collect()))?;
    let data = &bytes[10 + len..];
    let want = shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d as u64)).unwrap_or(u64::MAX);
    if want.checked_mul(4) != Some(data.len() as u64) {
        return Err(NpyError::Size { shape, want, bytes: data.len() });
    }
    let values = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((shape, values))
}

/// The shape of a header that says `'<f4'` and C order; `None` for anything else.
fn parse_header(header: &str) -> Option<Vec<usize>> {
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    let compact = compact.replace('"', "'");
    if !compact.contains("'descr':'<f4'") || !compact.contains("'fortran_order':False") {
        return None;
    }
    let start = compact.find("'shape':(")? + "'shape':(".len();
    let end = start + compact[start..].find(')')?;
    compact[start..end].split(',').filter(|d| !d.is_empty()).map(|d| d.parse::<usize>().ok()).collect()
}
