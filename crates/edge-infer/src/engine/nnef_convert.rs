//! Converting a model folder's ONNX file to NNEF, once, on the publisher's machine, and
//! checking that the archive gives the ONNX model's outputs.

use std::path::{Path, PathBuf};

use tract_nnef::prelude::rctensor0;

use super::super::error::{LoadError, SpecError};
use super::super::load::{Want, check_sizes, prepare_onnx};
use super::super::model::LoadedModel;
use super::super::panic::contain;
use super::super::plans::Source;
use super::super::spec::{LoadedSpec, ModelSpec};
use super::{Conversion, ModelLimits, SOURCE_PROPERTY, fingerprint, framework, nnef_path};

/// Largest absolute difference allowed between an ONNX output value `a` and the NNEF
/// one: `TOLERANCE_ABS + TOLERANCE_REL * |a|`. Both run the same typed graph through the
/// same optimiser, so they agree to the last bits in practice; the slack is for a
/// reordered sum, and is far below any model's own error.
pub const TOLERANCE_ABS: f32 = 1e-5;
/// See [`TOLERANCE_ABS`].
pub const TOLERANCE_REL: f32 = 1e-4;

/// Why a model was not converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The ONNX model itself does not load: nothing to publish.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// tract cannot express the model in NNEF.
    #[error("{path}: tract cannot write this model as NNEF: {reason}")]
    Unsupported {
        /// The ONNX file.
        path: PathBuf,
        /// Why (tract's error, naming the operator).
        reason: String,
    },
    /// The archive loads but answers differently.
    #[error(
        "{path}: the NNEF conversion does not give the ONNX model's outputs: output `{output}` differs by {diff} at value {at} (ONNX {onnx}, NNEF {nnef}; allowed {TOLERANCE_ABS} + {TOLERANCE_REL} x |ONNX|) on input {case}"
    )]
    Differs {
        /// The archive.
        path: PathBuf,
        /// The output that differs.
        output: String,
        /// Which input, from 0.
        case: usize,
        /// Which value of the output, flat.
        at: usize,
        /// The ONNX model's value.
        onnx: f32,
        /// The archive's value.
        nnef: f32,
        /// Their difference.
        diff: f32,
    },
    /// The archive cannot be written.
    #[error("cannot write {path}: {reason}; check that the model folder is writable")]
    Write {
        /// The archive.
        path: PathBuf,
        /// The system's error.
        reason: String,
    },
    /// Running one of the two models failed.
    #[error("{path}: running the {format} model on input {case} failed: {reason}")]
    Run {
        /// The model folder.
        path: PathBuf,
        /// `ONNX` or `NNEF`.
        format: &'static str,
        /// Which input, from 0.
        case: usize,
        /// tract's error.
        reason: String,
    },
}

impl From<SpecError> for ConvertError {
    fn from(e: SpecError) -> Self {
        ConvertError::Load(e.into())
    }
}

impl ConvertError {
    /// Whether the model stays publishable as ONNX alone: tract could not convert it or
    /// the conversion answers differently, but the ONNX model itself loads.
    pub fn onnx_only(&self) -> bool {
        !matches!(self, ConvertError::Load(_))
    }
}

/// Converts `dir`'s ONNX model, and the model of each of its pipeline's stages, to an
/// NNEF archive beside each file (`model.onnx` → `model.nnef.tgz`), and checks that each
/// archive gives its ONNX model's outputs: the model's on `inputs` (the data input's
/// values, flat, as the self-test feeds them; when there are none, on generated inputs:
/// see [`cases`]), each stage's on generated inputs. One conversion per file, the
/// model's first. All or nothing: on any failure no archive is left in the folder, not
/// even one from an earlier conversion, so the folder never pairs a model with a stale
/// archive.
pub fn convert(
    dir: &Path,
    limits: &ModelLimits,
    inputs: &[Vec<f32>],
) -> Result<Vec<Conversion>, ConvertError> {
    let head = ModelSpec::load_dir(dir)?;
    let mut specs = vec![(head.clone(), inputs)];
    for stage in &head.spec.stages {
        let spec = stage.model_spec(&head.spec);
        let model_path = dir.join(&spec.file);
        specs.push((LoadedSpec { spec, path: head.path.clone(), model_path }, &[]));
    }
    for (loaded, _) in &specs {
        remove(&nnef_path(&loaded.model_path))?;
    }
    let mut done = Vec::new();
    for (loaded, inputs) in specs.iter() {
        match convert_one(loaded, dir, limits, inputs) {
            Ok(c) => done.push(c),
            Err(e) => {
                for c in &done {
                    let _ = std::fs::remove_file(&c.path);
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Removes an earlier archive, if any.
fn remove(path: &Path) -> Result<(), ConvertError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ConvertError::Write {
            path: path.to_path_buf(),
            reason: format!("cannot remove the old archive: {e}"),
        }),
        _ => Ok(()),
    }
}

/// One model file: converted, written, checked against the ONNX model.
fn convert_one(
    loaded: &LoadedSpec,
    dir: &Path,
    limits: &ModelLimits,
    inputs: &[Vec<f32>],
) -> Result<Conversion, ConvertError> {
    check_sizes(loaded, limits)?;
    let model_path = loaded.model_path.clone();
    let path = nnef_path(&model_path);
    let prepared = prepare_onnx(&loaded.spec, &loaded.path, &model_path)?;
    if let Some(Source::Inference(..)) = prepared.source {
        return Err(ConvertError::Unsupported {
            path: model_path,
            reason: "tract cannot type the graph with the range dimension left open (it is typed anew for each size from the ONNX graph), so there is no one graph to write".into(),
        });
    }
    let mut typed = prepared.typed;
    // The ONNX file's metadata (producer, an exporter's class-name table) becomes model
    // properties, which tract writes as NNEF strings it cannot read back when they hold
    // quotes (NudeNet's YOLOv8 export); nothing in the engine reads them. In their
    // place, what the archive was converted from, which loading checks.
    typed.properties.clear();
    let source =
        fingerprint(&model_path).map_err(|source| LoadError::Read { path: model_path.clone(), source })?;
    typed.properties.insert(SOURCE_PROPERTY.into(), rctensor0(source));
    let unsupported = |reason: String| ConvertError::Unsupported { path: model_path.clone(), reason };
    let typed = contain(move || typed.into_decluttered())
        .map_err(|m| unsupported(format!("tract panicked decluttering it: {m}")))?
        .map_err(|e| unsupported(format!("{e:#}")))?;
    let mut archive = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut archive, flate2::Compression::default());
        // Deterministic: the same model gives the same bytes, so a republished package
        // has the same hash.
        let written = contain(|| framework().write_to_tar_with_config(&typed, gz, false, true))
            .map_err(|m| unsupported(format!("tract panicked writing it: {m}")))?
            .map_err(|e| unsupported(format!("{e:#}")))?;
        written.finish().map_err(|e| ConvertError::Write { path: path.clone(), reason: e.to_string() })?;
    }
    let tmp = path.with_extension("tgz.partial");
    std::fs::write(&tmp, &archive)
        .map_err(|e| ConvertError::Write { path: tmp.clone(), reason: e.to_string() })?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| ConvertError::Write { path: path.clone(), reason: e.to_string() })?;
    let checked = check(loaded, dir, limits, inputs, &path);
    if checked.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let mut conversion = checked?;
    conversion.bytes = archive.len() as u64;
    Ok(conversion)
}

/// Loads the model from both files and runs both on every input.
fn check(
    loaded: &LoadedSpec,
    dir: &Path,
    limits: &ModelLimits,
    inputs: &[Vec<f32>],
    path: &Path,
) -> Result<Conversion, ConvertError> {
    let onnx = LoadedModel::load_as(loaded.clone(), dir, limits, Want::Onnx)?;
    let nnef = LoadedModel::load_as(loaded.clone(), dir, limits, Want::Nnef)?;
    let cases = cases(&onnx, inputs)?;
    let mut max_diff = 0f32;
    for (case, (data, shape)) in cases.iter().enumerate() {
        let a = run(&onnx, data, shape, case, "ONNX")?;
        let b = run(&nnef, data, shape, case, "NNEF")?;
        for (ix, (ta, tb)) in a.iter().zip(&b).enumerate() {
            let output =
                onnx.outputs.get(ix).map(|o| o.name.clone()).unwrap_or_else(|| format!("output_{ix}"));
            let differs = |at: usize, onnx: f32, nnef: f32| ConvertError::Differs {
                path: path.to_path_buf(),
                output: output.clone(),
                case,
                at,
                onnx,
                nnef,
                diff: (onnx - nnef).abs(),
            };
            if ta.len() != tb.len() {
                return Err(differs(ta.len().min(tb.len()), ta.len() as f32, tb.len() as f32));
            }
            for (at, (x, y)) in ta.iter().zip(tb).enumerate() {
                let diff = (x - y).abs();
                // NaN on one side only, or past the tolerance.
                let same =
                    (x.is_nan() && y.is_nan()) || x == y || diff <= TOLERANCE_ABS + TOLERANCE_REL * x.abs();
                if !same {
                    return Err(differs(at, *x, *y));
                }
                if diff.is_finite() {
                    max_diff = max_diff.max(diff);
                }
            }
        }
    }
    Ok(Conversion {
        path: path.to_path_buf(),
        bytes: 0,
        compared: cases.len(),
        max_diff,
        onnx_load_ms: onnx.info.load_ms,
        onnx_optimise_ms: onnx.info.optimise_ms,
        nnef_load_ms: nnef.info.load_ms,
        nnef_optimise_ms: nnef.info.optimise_ms,
    })
}

/// The inputs compared, with their shapes: `inputs` (the self-test's), or generated
/// ones: at the declared shape, and for a range at its smallest size and at the next
/// size up (two sizes through the same symbolic graph).
fn cases(model: &LoadedModel, inputs: &[Vec<f32>]) -> Result<Vec<Case>, ConvertError> {
    if !inputs.is_empty() {
        return inputs
            .iter()
            .enumerate()
            .map(|(case, data)| {
                let shape = model.data_shape(data.len(), None).map_err(|reason| ConvertError::Run {
                    path: model.dir.clone(),
                    format: "ONNX",
                    case,
                    reason,
                })?;
                Ok((data.clone(), shape))
            })
            .collect();
    }
    let input = model.spec.data_input();
    let mut shapes = Vec::new();
    if input.ranges.is_empty() {
        shapes.push(input.shape.clone());
    } else {
        for step in 0..2 {
            let mut shape = input.shape.clone();
            for (axis, r) in &input.ranges {
                let low = r.lowest().unwrap_or(r.max);
                shape[*axis] = (low + step * r.multiple_of.max(1)).min(r.max);
            }
            shapes.push(shape);
        }
    }
    Ok(shapes
        .into_iter()
        .enumerate()
        .map(|(seed, shape)| (pseudo_random(shape.iter().product(), seed as u32), shape))
        .collect())
}

/// One input compared: the data input's values and shape.
type Case = (Vec<f32>, Vec<usize>);

/// Every output of one run from a fresh state, as f32 values.
fn run(
    model: &LoadedModel,
    data: &[f32],
    shape: &[usize],
    case: usize,
    format: &'static str,
) -> Result<Vec<Vec<f32>>, ConvertError> {
    let failed = |reason: String| ConvertError::Run { path: model.dir.clone(), format, case, reason };
    let plan = model.plan_for(shape).map_err(|e| failed(e.to_string()))?;
    let inputs = model.assemble_shaped(data.to_vec(), shape, None).map_err(|e| failed(format!("{e:#}")))?;
    let outputs = contain(move || plan.run(inputs))
        .map_err(|m| failed(format!("tract panicked: {m}")))?
        .map_err(|e| failed(format!("{e:#}")))?;
    outputs
        .iter()
        .map(|t| {
            let t = t.cast_to::<f32>().map_err(|e| failed(format!("{e:#}")))?;
            Ok(t.to_plain_array_view::<f32>()
                .map_err(|e| failed(format!("{e:#}")))?
                .iter()
                .copied()
                .collect())
        })
        .collect()
}

/// `n` values in [-1, 1) from a fixed linear congruential sequence: the same inputs on
/// every machine, without a random number crate.
fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut x = 0x9e37_79b9u32.wrapping_mul(seed + 1);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}
