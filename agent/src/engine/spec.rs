//! The model spec: `model.toml` beside `model.onnx`.
//!
//! The spec says what the ONNX file alone does not: the concrete shapes to optimise for,
//! which input carries the request's data, which inputs are recurrent state or constants,
//! and how raw payloads become tensors (pre-processing) and outputs become answers
//! (post-processing). It travels with the model, so a model update brings its own spec.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::budget;
use super::error::SpecError;
use crate::config::locate::line_of;

/// File name of the spec inside a model directory.
pub const SPEC_FILE: &str = "model.toml";

/// Element types the engine feeds to and reads from models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// The name used in specs and CLI output.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
}

/// Where the value of a model input comes from on each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputFrom {
    /// The request's payload, after pre-processing.
    #[default]
    Data,
    /// An output of the previous call on the same stream (zeros on the first call).
    State,
    /// A constant declared in the spec.
    Const,
}

/// One model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The ONNX graph input's name.
    pub name: String,
    pub dtype: DType,
    /// Concrete shape, batch included; `[]` for a scalar.
    pub shape: Vec<usize>,
    #[serde(default)]
    pub from: InputFrom,
    /// With `from = "state"`: the model output that feeds this input on the next call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_output: Option<String>,
    /// With `from = "const"`: the values, flat, in row-major order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Vec<f64>>,
}

impl InputSpec {
    /// Number of elements of the declared shape. Saturates at `usize::MAX` for a shape
    /// whose product does not fit, which validation refuses: in a checked spec it is exact.
    pub fn len(&self) -> usize {
        budget::elements(&self.shape).unwrap_or(usize::MAX)
    }

    /// Bytes of the declared tensor, or `None` if that does not fit a `u64`.
    pub fn bytes(&self) -> Option<u64> {
        budget::tensor_bytes(&self.shape, self.dtype.size())
    }

    /// Whether the declared shape holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How request payloads are encoded when they arrive as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A JSON array of numbers (nested or flat), or an object with a `data` array.
    #[default]
    Json,
    /// Little-endian IEEE 754 single precision floats.
    F32le,
    /// Little-endian signed 16-bit PCM, scaled to [-1, 1).
    I16le,
    /// A PNG or JPEG image (told apart by its magic bytes).
    Image,
}

/// A sliding window over a stream of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// New samples per window.
    pub size: usize,
    /// Samples the window advances by; `hop < size` overlaps windows.
    pub hop: usize,
    /// Samples of the previous window prepended to each window (zeros at the start of a
    /// stream): the model input holds `context + size` samples.
    #[serde(default)]
    pub context: usize,
}

/// Tensor layout of an image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageLayout {
    #[default]
    Nchw,
    Nhwc,
}

/// Image pre-processing: resize, scale, normalise, lay out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub width: u32,
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Multiplier applied to 0..255 pixel values before normalising.
    #[serde(default = "default_pixel_scale")]
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    #[serde(default)]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    #[serde(default)]
    pub std: Vec<f32>,
    #[serde(default)]
    pub layout: ImageLayout,
}

fn default_channels() -> usize {
    3
}

fn default_pixel_scale() -> f32 {
    1.0 / 255.0
}

/// Pre-processing: from payload to the data input's tensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreSpec {
    /// Encoding of payloads that arrive as bytes (sensor messages, API bodies).
    #[serde(default)]
    pub format: PayloadFormat,
    /// Multiplier applied to every decoded sample (after i16 scaling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
}

/// Hysteresis over a score, per stream: turns on at `on`, off below `off`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSpec {
    pub on: f32,
    pub off: f32,
}

/// Post-processing: from the raw output tensor to an answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostSpec {
    /// The output read by the steps below (default: the model's first output that is not
    /// a state output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Apply softmax to the output first (for models that emit logits).
    #[serde(default)]
    pub softmax: bool,
    /// Class names, by index.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Report the k best classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Minimum score: a single score at or above it is `active`; a class below it is not
    /// `confident`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// Hysteresis segments over the score (voice activity, machine running, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<SegmentSpec>,
    /// Also return the raw output tensors with each result.
    #[serde(default)]
    pub raw: bool,
}

/// Limits that protect the device from oversized requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Largest accepted payload, in bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec { max_payload_bytes: default_max_payload() }
    }
}

fn default_max_payload() -> usize {
    8 * 1024 * 1024
}

/// The whole spec, as written in `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The ONNX file, relative to the spec.
    #[serde(default = "default_model_file")]
    pub file: String,
    #[serde(rename = "input")]
    pub inputs: Vec<InputSpec>,
    #[serde(default)]
    pub pre: PreSpec,
    #[serde(default)]
    pub post: PostSpec,
    #[serde(default)]
    pub limits: LimitsSpec,
}

fn default_model_file() -> String {
    "model.onnx".to_string()
}

/// A spec read from a model directory, with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec: ModelSpec,
    /// The spec file, for error messages.
    pub path: PathBuf,
    /// The ONNX file the spec points at.
    pub model_path: PathBuf,
}

impl ModelSpec {
    /// Reads and checks `DIR/model.toml`. Checks against the ONNX graph itself happen
    /// when the model is loaded.
    pub fn load_dir(dir: &Path) -> Result<LoadedSpec, SpecError> {
        let path = dir.join(SPEC_FILE);
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SpecError::Missing { path: path.clone() },
            _ => SpecError::Read { path: path.clone(), source },
        })?;
        let spec = Self::parse_bytes(&bytes, &path)?;
        let model_path = contained_file(dir, &spec.file, &path)?;
        Ok(LoadedSpec { spec, path, model_path })
    }

    /// Parses and checks a spec file's bytes, which must be UTF-8; `path` is only used
    /// in messages.
    pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<ModelSpec, SpecError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let offset = e.valid_up_to();
            SpecError::NotUtf8 {
                path: path.to_path_buf(),
                offset,
                byte: bytes.get(offset).copied().unwrap_or_default(),
                line: 1 + bytes[..offset].iter().filter(|b| **b == b'\n').count(),
            }
        })?;
        Self::parse(text, path)
    }

    /// Parses and checks a spec; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<ModelSpec, SpecError> {
        let spec: ModelSpec = toml::from_str(text).map_err(|e| SpecError::Syntax {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
            message: e.message().trim().to_string(),
        })?;
        let problems = spec.problems();
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(SpecError::Invalid { path: path.to_path_buf(), problems: problems.join("\n  ") })
        }
    }

    /// Every inconsistency of the spec on its own, each with its fix.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            out.push(format!(
                "name `{}` must be non-empty and use only A-Z a-z 0-9 . _ - (it appears in topics and paths)",
                self.name
            ));
        }
        if self.version.is_empty() {
            out.push("version must not be empty".into());
        }
        let data: Vec<_> = self.inputs.iter().filter(|i| i.from == InputFrom::Data).collect();
        if data.len() != 1 {
            out.push(format!(
                "exactly one input must have from = \"data\" (found {}); mark the others \"state\" or \"const\"",
                data.len()
            ));
        }
        for input in &self.inputs {
            match input.from {
                InputFrom::State if input.state_output.is_none() => out.push(format!(
                    "input `{}` has from = \"state\" but no state_output; name the output that feeds it",
                    input.name
                )),
                InputFrom::Const => match &input.value {
                    None => out.push(format!(
                        "input `{}` has from = \"const\" but no value; add value = [...]",
                        input.name
                    )),
                    Some(v) if v.len() != input.len().max(1) => out.push(format!(
                        "input `{}`: value has {} numbers but shape {:?} holds {}",
                        input.name,
                        v.len(),
                        input.shape,
                        input.len().max(1)
                    )),
                    _ => {}
                },
                _ => {}
            }
            if input.shape.contains(&0) {
                out.push(format!("input `{}`: shape {:?} has a zero dimension", input.name, input.shape));
            } else if input.bytes().is_none() {
                // A wrapped product would let a huge shape pass as a small one.
                out.push(format!(
                    "input `{}`: shape {:?} of {} is too large to count (its size overflows); no device can hold it: declare the shape the model runs at",
                    input.name,
                    input.shape,
                    input.dtype.name()
                ));
            }
        }
        if let Some(why) = outside_reason(&self.file) {
            out.push(format!(
                "file `{}` {why}: a model may only read files that travel with it in its directory; put the model file there and name it relative to model.toml (file = \"model.onnx\")",
                self.file
            ));
        }
        if let (Some(w), Some(d)) = (&self.pre.window, data.first()) {
            if w.size == 0 || w.hop == 0 {
                out.push("pre.window: size and hop must be at least 1".into());
            } else if w.context.checked_add(w.size) != Some(d.len()) {
                let hint = if d.len() > w.size {
                    format!("set pre.window.context = {}", d.len() - w.size)
                } else {
                    format!("set pre.window.size = {} and context = 0", d.len())
                };
                out.push(format!(
                    "pre.window: context {} + size {} = {} samples, but input `{}` {:?} holds {}; {hint}",
                    w.context,
                    w.size,
                    w.context.saturating_add(w.size),
                    d.name,
                    d.shape,
                    d.len()
                ));
            }
        }
        if let Some(img) = &self.pre.image {
            if img.channels != 1 && img.channels != 3 {
                out.push(format!("pre.image.channels is {}; use 1 (grey) or 3 (RGB)", img.channels));
            }
            for (key, v) in [("mean", &img.mean), ("std", &img.std)] {
                if !v.is_empty() && v.len() != img.channels {
                    out.push(format!(
                        "pre.image.{key} has {} values; give one per channel ({})",
                        v.len(),
                        img.channels
                    ));
                }
            }
            if img.std.contains(&0.0) {
                out.push("pre.image.std contains 0; a standard deviation must not be zero".into());
            }
            if let Some(d) = data.first() {
                let want = budget::elements(&[img.channels, img.width as usize, img.height as usize]);
                if want != Some(d.len()) {
                    let want = want.map_or_else(|| "too many".to_string(), |n| n.to_string());
                    out.push(format!(
                        "pre.image gives {}x{}x{} = {want} values but input `{}` {:?} holds {}",
                        img.channels,
                        img.height,
                        img.width,
                        d.name,
                        d.shape,
                        d.len()
                    ));
                }
            }
        }
        if self.pre.format == PayloadFormat::Image && self.pre.image.is_none() {
            out.push("pre.format = \"image\" needs a [pre.image] table (width, height, ...)".into());
        }
        if let Some(s) = &self.post.segments
            && s.off > s.on
        {
            out.push(format!(
                "post.segments: off ({}) is above on ({}); hysteresis needs off <= on",
                s.off, s.on
            ));
        }
        if self.post.top_k == Some(0) {
            out.push("post.top_k must be at least 1".into());
        }
        if self.limits.max_payload_bytes == 0 {
            out.push("limits.max_payload_bytes must be at least 1".into());
        }
        out
    }

    /// The input that carries the request's data.
    pub fn data_input(&self) -> &InputSpec {
        // `problems()` guarantees exactly one; a spec that skipped it is a programming error.
        #[allow(clippy::expect_used)]
        self.inputs.iter().find(|i| i.from == InputFrom::Data).expect("validated spec has one data input")
    }
}

/// Why `file` cannot name a file inside the model directory, if it cannot. Links are
/// followed later, by [`contained_file`], when the directory is at hand.
fn outside_reason(file: &str) -> Option<&'static str> {
    let path = Path::new(file);
    let mut named = false;
    for c in path.components() {
        match c {
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::ParentDir => return Some("leaves the model directory with `..`"),
            Component::RootDir | Component::Prefix(_) => return Some("is an absolute path"),
        }
    }
    (!named).then_some("names no file")
}

/// `dir/file`, after checking that it does not lead out of `dir` through a link (the
/// spec's own text was checked by [`outside_reason`]). A model directory, and above all
/// a package from a registry, must not make the agent read files elsewhere on the
/// device. A file that does not exist is left for the load to report.
fn contained_file(dir: &Path, file: &str, spec: &Path) -> Result<PathBuf, SpecError> {
    let joined = dir.join(file);
    let outside =
        |target: PathBuf| SpecError::Outside { path: spec.to_path_buf(), file: file.into(), target };
    let Ok(root) = dir.canonicalize() else { return Ok(joined) };
    match joined.canonicalize() {
        Ok(real) if real.starts_with(&root) => Ok(joined),
        Ok(real) => Err(outside(real)),
        // A link to nowhere: what it names may be created later, so judge the link's own
        // target (a relative name without `..` stays inside; the load reports it missing).
        Err(_) => match std::fs::read_link(&joined) {
            Ok(target) if outside_reason(&target.to_string_lossy()).is_some() => Err(outside(target)),
            _ => Ok(joined),
        },
    }
}
