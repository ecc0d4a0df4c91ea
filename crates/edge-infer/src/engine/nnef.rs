//! NNEF, tract's own model format, as the deployment route: `registry publish` converts
//! the ONNX model once ([`convert`]) into `model.nnef.tgz` beside it, checked to give the
//! ONNX model's outputs, and the engine loads that archive when it is there
//! ([`prepare`]). What is stored is the graph tract typed and decluttered at the spec's
//! shapes (a range dimension stays a symbol), so a device skips ONNX parsing and type
//! inference, and a build without the `onnx` feature carries no ONNX loader at all. The
//! engine's own rewrites, optimisation and plan cache run after loading, as for ONNX.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tract_nnef::framework::Nnef;
use tract_nnef::prelude::*;

use super::budget::ModelLimits;
use super::error::LoadError;
use super::model::{ModelFormat, datum_type};
use super::panic::contain;
use super::plans::Source;
use super::prepared::{Files, Prepared, feed_for, graph_names, match_names, ms};
use super::spec::{InputFrom, ModelSpec};

/// The NNEF archive that belongs to a model file: `model.onnx` → `model.nnef.tgz`.
pub fn nnef_path(model_path: &Path) -> PathBuf {
    model_path.with_extension("nnef.tgz")
}

/// tract's NNEF reader and writer with the operators that exist only in ONNX
/// (tract-onnx-opl's extension), and names kept as the ONNX file has them (`/0/Conv`,
/// `input.1`), which the spec refers to. Made once per process: building it parses
/// tract's NNEF standard library, 6.5 ms a time (tract-core at opt-level 2), which
/// every later load (the daemon's models, an update and its self-test) would pay again.
fn framework() -> &'static Nnef {
    static FRAMEWORK: std::sync::OnceLock<Nnef> = std::sync::OnceLock::new();
    FRAMEWORK.get_or_init(|| {
        let mut nnef = tract_nnef::nnef().with_registry(tract_onnx_opl::onnx_opl_registry());
        nnef.allow_extended_identifier_syntax(true);
        nnef
    })
}

/// Reads the archive at `path`, checks it against the spec and fixes what feeds each
/// input: what loading then checks, optimises and plans, as for ONNX.
pub(super) fn prepare(
    spec: &ModelSpec,
    spec_path: &Path,
    onnx: &Path,
    path: &Path,
    limits: &ModelLimits,
) -> Result<Prepared, LoadError> {
    let started = Instant::now();
    let (typed, file_bytes, _) = read(path, limits)?;
    check_source(&typed, onnx, path, file_bytes)?;
    let load_ms = ms(started);
    let at = Files { spec: spec_path, model: path, bytes: file_bytes };
    let graph = graph_names(&typed).map_err(|e| invalid(path, file_bytes, format!("{e:#}")))?;
    let stale = |mut problems: Vec<String>| {
        problems.push(format!(
            "{} was converted for another model.toml: convert it again (`edge-agent model convert --model DIR`), or delete it so that the ONNX file is loaded",
            path.display()
        ));
        at.mismatch(problems)
    };
    let post_output = match_names(spec, &graph).map_err(stale)?;
    let mut problems = Vec::new();
    let mut symbols = Vec::new();
    let mut widest = SymbolValues::default();
    for (ix, name) in graph.inputs.iter().enumerate() {
        let Some(input) = spec.inputs.iter().find(|i| &i.name == name) else { continue };
        let fact = typed.input_fact(ix).map_err(|e| invalid(path, file_bytes, format!("{e:#}")))?;
        if fact.datum_type != datum_type(input.dtype) {
            problems.push(format!(
                "input `{name}` is declared {} but the archive takes {:?}",
                input.dtype.name(),
                fact.datum_type
            ));
        }
        let dims: Vec<TDim> = fact.shape.iter().cloned().collect();
        let fits = dims.len() == input.shape.len()
            && dims.iter().enumerate().all(|(axis, d)| match input.ranges.iter().find(|(a, _)| *a == axis) {
                Some(_) => matches!(d, TDim::Sym(_)),
                None => d.to_i64().ok() == Some(input.shape[axis] as i64),
            });
        if !fits {
            let shown: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            problems.push(format!(
                "input `{name}` is declared {} but the archive takes [{}]",
                input.shape_text(),
                shown.join(", ")
            ));
            continue;
        }
        for (axis, range) in &input.ranges {
            if let TDim::Sym(sym) = &dims[*axis] {
                widest = widest.with(sym, range.max as i64);
                if input.from == InputFrom::Data {
                    symbols.push((*axis, sym.clone()));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(stale(problems));
    }
    let mut feeds = Vec::new();
    let mut state_outputs = Vec::new();
    for name in &graph.inputs {
        let Some(input) = spec.inputs.iter().find(|i| &i.name == name) else { continue };
        feeds.push(feed_for(input, &graph, &mut state_outputs, &at)?);
    }
    // A range: the graph is decluttered once and optimised per size, as for ONNX.
    let source = (!symbols.is_empty()).then(|| Source::Typed(Arc::new(TypedModel::default()), symbols));
    Ok(Prepared {
        typed,
        source,
        graph,
        post_output,
        feeds,
        state_outputs,
        widest,
        file_bytes,
        load_ms,
        analyse_ms: 0.0,
        path: path.to_path_buf(),
        format: ModelFormat::Nnef,
    })
}

/// The model property an archive records its ONNX file's [`fingerprint`] in.
pub(super) const SOURCE_PROPERTY: &str = "edge_agent_onnx_source";

/// The ONNX file's size and CRC-32 (`BYTES-CRC`): what an archive was converted from.
/// The contents count, not only the size: a model retrained with the same architecture
/// has a file of the same size. Read in pieces, so a large model is never held whole.
pub(super) fn fingerprint(onnx: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(onnx)?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(format!("{bytes}-{:08x}", crc.finalize()))
}

/// An archive converted from another version of the ONNX file beside it is refused: it
/// would otherwise be served in the new model's place without a word (a model exported
/// again after `model convert`). Nothing to compare when the ONNX file is not there (a
/// folder shipped as NNEF alone) or the archive records no source (made by other tools).
fn check_source(typed: &TypedModel, onnx: &Path, path: &Path, bytes: u64) -> Result<(), LoadError> {
    let Some(recorded) = typed.properties.get(SOURCE_PROPERTY) else { return Ok(()) };
    if !onnx.is_file() {
        return Ok(());
    }
    let recorded = recorded
        .to_plain_array_view::<String>()
        .ok()
        .and_then(|v| v.iter().next().cloned())
        .ok_or_else(|| invalid(path, bytes, format!("its {SOURCE_PROPERTY} property is not a string")))?;
    let now = fingerprint(onnx).map_err(|source| LoadError::Read { path: onnx.to_path_buf(), source })?;
    if recorded != now {
        return Err(invalid(
            path,
            bytes,
            format!(
                "it was converted from another version of {} (size and CRC-32 {recorded} then, {now} now)",
                onnx.display()
            ),
        ));
    }
    Ok(())
}

fn invalid(path: &Path, bytes: u64, reason: String) -> LoadError {
    LoadError::Nnef { path: path.to_path_buf(), bytes, reason }
}

/// Reads and parses the archive, within `limits`: the compressed file and what it
/// expands to are both bounded, so a damaged or hostile archive cannot take the
/// device's memory.
fn read(path: &Path, limits: &ModelLimits) -> Result<(TypedModel, u64, f64), LoadError> {
    let read_err = |source| LoadError::Read { path: path.to_path_buf(), source };
    // Bounded here too, not only by `check_sizes`: the file may grow in between.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limits.max_bytes.saturating_add(1)).read_to_end(&mut bytes))
        .map_err(read_err)?;
    let size = bytes.len() as u64;
    if size > limits.max_bytes {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            what: "the NNEF archive".into(),
            bytes: size,
            limit: limits.max_bytes,
            instead: "use a smaller model",
        });
    }
    if bytes.is_empty() {
        return Err(invalid(path, size, "the file is empty".into()));
    }
    let started = Instant::now();
    let tar = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .take(limits.max_bytes.saturating_add(1))
            .read_to_end(&mut tar)
            .map_err(|e| invalid(path, size, format!("its gzip stream is damaged: {e}")))?;
        if tar.len() as u64 > limits.max_bytes {
            return Err(LoadError::TooLarge {
                path: path.to_path_buf(),
                what: "the NNEF archive, uncompressed,".into(),
                bytes: tar.len() as u64,
                limit: limits.max_bytes,
                instead: "use a smaller model",
            });
        }
        tar
    } else {
        bytes
    };
    let model = contain(|| framework().model_for_read(&mut tar.as_slice()))
        .map_err(|message| LoadError::Panic { path: path.to_path_buf(), stage: "parsing", message })?
        .map_err(|e| invalid(path, size, format!("{e:#}")))?;
    // tar skips what is not an archive entry: arbitrary bytes can read as an empty
    // archive, which has no graph.
    if model.nodes().is_empty() || model.output_outlets().map(|o| o.is_empty()).unwrap_or(true) {
        return Err(invalid(path, size, "it holds no graph".into()));
    }
    Ok((model, size, ms(started)))
}

/// What a conversion wrote and measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Conversion {
    /// The archive written.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// The inputs both models ran.
    pub compared: usize,
    /// Largest absolute difference seen over every output value.
    pub max_diff: f32,
    /// Parsing the ONNX file.
    pub onnx_load_ms: f64,
    /// Typing and optimising the ONNX graph.
    pub onnx_optimise_ms: f64,
    /// Parsing the archive.
    pub nnef_load_ms: f64,
    /// Optimising the archive's graph.
    pub nnef_optimise_ms: f64,
}

#[cfg(feature = "onnx")]
pub use convert::{ConvertError, TOLERANCE_ABS, TOLERANCE_REL, convert};

#[cfg(not(feature = "onnx"))]
pub use no_onnx::{ConvertError, convert};

#[cfg(feature = "onnx")]
#[path = "nnef_convert.rs"]
mod convert;

/// Without the ONNX loader there is nothing to convert from: [`convert`] refuses with
/// what to do instead, so the publisher's code compiles in every build.
#[cfg(not(feature = "onnx"))]
mod no_onnx {
    use std::path::{Path, PathBuf};

    use super::{Conversion, ModelLimits};

    /// Why a model was not converted.
    #[derive(Debug, thiserror::Error)]
    pub enum ConvertError {
        /// This build cannot read ONNX.
        #[error(
            "{dir}: converting a model to NNEF needs the ONNX loader, and this edge-agent is built without the `onnx` feature; convert or publish on a build with it (the default build)"
        )]
        NoOnnx {
            /// The model folder.
            dir: PathBuf,
        },
    }

    impl ConvertError {
        /// Never: without ONNX there is nothing to publish.
        pub fn onnx_only(&self) -> bool {
            false
        }
    }

    /// Always refuses: see [`ConvertError::NoOnnx`].
    pub fn convert(
        dir: &Path,
        _limits: &ModelLimits,
        _inputs: &[Vec<f32>],
    ) -> Result<Vec<Conversion>, ConvertError> {
        Err(ConvertError::NoOnnx { dir: dir.to_path_buf() })
    }
}

#[cfg(all(test, feature = "onnx"))]
#[path = "nnef_tests.rs"]
mod tests;
