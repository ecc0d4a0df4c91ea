//! The model spec: `model.toml` beside `model.onnx`.
//!
//! The spec says what the ONNX file alone does not: the concrete shapes to optimise for,
//! which input carries the request's data, which inputs are recurrent state or constants,
//! and how raw payloads become tensors (pre-processing) and outputs become answers
//! (post-processing). It travels with the model, so a model update brings its own spec.
//!
//! This module holds the spec's types, from the tables of the families it includes
//! (`[pre.dsp]`, `[post.*]`, `[[stage]]`) up to [`ModelSpec`]; reading and checking a
//! spec ([`ModelSpec::load_dir`], [`ModelSpec::parse`]) is done by the checks that sit
//! above them all (`spec_check`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::budget;
pub use super::detect_spec::{BoxFormat, DetectLayout, DetectSpec};
pub use super::resize_spec::{LimitType, ResizeFilter, multiple_frame};

/// File name of the spec inside a model directory.
pub const SPEC_FILE: &str = "model.toml";

/// Element types the engine feeds to and reads from models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// 16-bit signed integer.
    I16,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean.
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
#[serde(from = "RawInput", into = "RawInput")]
pub struct InputSpec {
    /// The ONNX graph input's name.
    pub name: String,
    /// Element type the model takes.
    pub dtype: DType,
    /// Concrete shape, batch included; `[]` for a scalar. A dimension declared as a
    /// range holds its largest size here, so the product bounds every accepted input.
    pub shape: Vec<usize>,
    /// Dimensions declared as a range (`{ min, max, multiple_of }`), by axis. Checks allow
    /// one, on the data input: the engine tells its size from the number of values.
    pub ranges: Vec<(usize, DimRange)>,
    /// What feeds the input on each call (default: the request's data).
    pub from: InputFrom,
    /// With `from = "state"`: the model output that feeds this input on the next call.
    pub state_output: Option<String>,
    /// With `from = "const"`: the values, flat, in row-major order.
    pub value: Option<Vec<f64>>,
}

/// A dimension that takes any size from `min` to `max` that is a multiple of
/// `multiple_of` (text recognisers take any width, for instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DimRange {
    /// The smallest size.
    pub min: usize,
    /// The largest size.
    pub max: usize,
    /// Sizes are multiples of this (default 1).
    #[serde(default = "default_multiple")]
    pub multiple_of: usize,
}

fn default_multiple() -> usize {
    1
}

impl DimRange {
    /// Whether `n` is one of the allowed sizes.
    pub fn contains(&self, n: usize) -> bool {
        n >= self.min && n <= self.max && self.multiple_of > 0 && n.is_multiple_of(self.multiple_of)
    }

    /// The smallest allowed size, if any.
    pub fn lowest(&self) -> Option<usize> {
        let m = self.multiple_of.max(1);
        let n = self.min.max(1).div_ceil(m).checked_mul(m)?;
        (n <= self.max).then_some(n)
    }

    /// The largest allowed size, if any.
    pub fn highest(&self) -> Option<usize> {
        let m = self.multiple_of.max(1);
        let n = self.max - self.max % m;
        (n >= self.min.max(1)).then_some(n)
    }

    /// The allowed size for a natural size `n`: `n` rounded up to the next multiple,
    /// then brought within bounds. Falls back to `max` for a range with no allowed size
    /// (the spec checks refuse such a range).
    pub fn fit(&self, n: usize) -> usize {
        let (Some(lo), Some(hi)) = (self.lowest(), self.highest()) else { return self.max };
        let m = self.multiple_of.max(1);
        let up = n.div_ceil(m).saturating_mul(m);
        up.clamp(lo, hi)
    }
}

impl std::fmt::Display for DimRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.min, self.max)?;
        if self.multiple_of > 1 {
            write!(f, " (multiple of {})", self.multiple_of)?;
        }
        Ok(())
    }
}

impl InputSpec {
    /// Number of elements of the declared shape (of the largest shape, with a range).
    /// Saturates at `usize::MAX` for a shape whose product does not fit, which
    /// validation refuses: in a checked spec it is exact.
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

    /// The dimension declared as a range, with its axis.
    pub fn range(&self) -> Option<(usize, DimRange)> {
        self.ranges.first().copied()
    }

    /// The concrete shape that holds `len` values: the declared shape, or with a range
    /// the one size of it that makes `len` values. `None` if no accepted shape does.
    pub fn shape_for(&self, len: usize) -> Option<Vec<usize>> {
        let Some((axis, range)) = self.range() else {
            return (len == self.len()).then(|| self.shape.clone());
        };
        if self.ranges.len() > 1 {
            // Several sizes can make the same number of values: the request says which.
            return None;
        }
        let rest = self
            .shape
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != axis)
            .try_fold(1usize, |acc, (_, d)| acc.checked_mul(*d))?;
        if rest == 0 || !len.is_multiple_of(rest) || !range.contains(len / rest) {
            return None;
        }
        let mut shape = self.shape.clone();
        shape[axis] = len / rest;
        Some(shape)
    }

    /// Whether a concrete shape is one this input takes.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && shape.iter().enumerate().all(|(axis, n)| match self.ranges.iter().find(|(a, _)| *a == axis) {
                Some((_, r)) => r.contains(*n),
                None => *n == self.shape[axis],
            })
    }

    /// The declared shape for messages: `[1, 3, 48, 32..=1024 (multiple of 8)]`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .enumerate()
            .map(|(axis, n)| match self.ranges.iter().find(|(a, _)| *a == axis) {
                Some((_, r)) => r.to_string(),
                None => n.to_string(),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

/// `[[input]]` as written: a dimension is a number or a range table.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    dtype: DType,
    shape: Vec<RawDim>,
    #[serde(default)]
    from: InputFrom,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state_output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Vec<f64>>,
}

impl From<RawInput> for InputSpec {
    fn from(raw: RawInput) -> InputSpec {
        let shape = raw
            .shape
            .iter()
            .map(|d| match d {
                RawDim::Fixed(n) => *n,
                RawDim::Range(r) => r.max,
            })
            .collect();
        let ranges = raw
            .shape
            .iter()
            .enumerate()
            .filter_map(|(axis, d)| match d {
                RawDim::Range(r) => Some((axis, *r)),
                RawDim::Fixed(_) => None,
            })
            .collect();
        InputSpec {
            name: raw.name,
            dtype: raw.dtype,
            shape,
            ranges,
            from: raw.from,
            state_output: raw.state_output,
            value: raw.value,
        }
    }
}

impl From<InputSpec> for RawInput {
    fn from(spec: InputSpec) -> RawInput {
        let shape = spec
            .shape
            .iter()
            .enumerate()
            .map(|(axis, n)| match spec.ranges.iter().find(|(a, _)| *a == axis) {
                Some((_, r)) => RawDim::Range(*r),
                None => RawDim::Fixed(*n),
            })
            .collect();
        RawInput {
            name: spec.name,
            dtype: spec.dtype,
            shape,
            from: spec.from,
            state_output: spec.state_output,
            value: spec.value,
        }
    }
}

/// One dimension as written: `48`, or `{ min = 32, max = 1024, multiple_of = 8 }`.
#[derive(Debug, Clone, Copy)]
enum RawDim {
    Fixed(usize),
    Range(DimRange),
}

impl<'de> Deserialize<'de> for RawDim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawDim, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDim;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a size (a whole number) or a range such as { min = 32, max = 1024, multiple_of = 8 }",
                )
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<RawDim, E> {
                usize::try_from(v)
                    .map(RawDim::Fixed)
                    .map_err(|_| E::custom(format!("dimension {v} does not fit this machine's sizes")))
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<RawDim, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "dimension {v} is negative; write a size, or a range such as {{ min = 32, max = 1024 }} for a dimension that varies"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawDim, A::Error> {
                DimRange::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawDim::Range)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for RawDim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RawDim::Fixed(n) => n.serialize(s),
            RawDim::Range(r) => r.serialize(s),
        }
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
    /// Channels first: `[batch, channels, height, width]` (most ONNX vision models).
    #[default]
    Nchw,
    /// Channels last: `[batch, height, width, channels]`.
    Nhwc,
}

/// How an image is brought to the model's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Resize to exactly the model's size, changing the aspect ratio if they differ.
    #[default]
    Stretch,
    /// Scale to fit inside the model's size keeping the aspect ratio, and fill the rest
    /// with `pad` (YOLO-style detectors, OCR).
    Letterbox,
}

/// Where a letterboxed image sits in the model's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PadPosition {
    /// Centred; an odd pixel of padding goes to the right or bottom.
    #[default]
    Center,
    /// Against the top-left corner; all padding on the right and bottom.
    TopLeft,
}

/// Channel order of a colour image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue.
    #[default]
    Rgb,
    /// Blue, green, red (models trained on OpenCV-loaded images).
    Bgr,
}

/// Image pre-processing: resize, scale, normalise, lay out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Target width; default: the data input's width (by `layout`). Left out when the
    /// input's width is a range: the image then keeps its aspect ratio within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Target height; default: the data input's height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// 1 (grey) or 3 (colour).
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Multiplier applied to 0..255 pixel values before normalising.
    #[serde(default = "default_pixel_scale")]
    pub scale: f32,
    /// Per-channel mean subtracted after scaling, in the model's channel order.
    #[serde(default)]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    #[serde(default)]
    pub std: Vec<f32>,
    /// Where the channels are in the input's shape.
    #[serde(default)]
    pub layout: ImageLayout,
    /// How the image is brought to the target size.
    #[serde(default)]
    pub resize: ResizeMode,
    /// With `resize = "letterbox"`: the pixel value (0 to 255, before `scale`, `mean`
    /// and `std`) of the padding, in every channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad: Option<f32>,
    /// With `resize = "letterbox"`: where the image sits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<PadPosition>,
    /// Order of the colour channels.
    #[serde(default)]
    pub channel_order: ChannelOrder,
    /// Interpolation of the resize (default: triangle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<ResizeFilter>,
    /// With an input whose height and width both vary: the side length the image is
    /// scaled to (see `limit_type`) before each side is brought to a multiple of the
    /// input's `multiple_of`. Without it the image keeps its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_side: Option<u32>,
    /// Which side `limit_side` bounds (default `max`: the longer side, scaled down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_type: Option<LimitType>,
}

/// An image input's target size, resolved from `[pre.image]` and the data input's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGeometry {
    /// The width, or with a range the largest.
    pub width: u32,
    /// The height.
    pub height: u32,
    /// 1 (grey) or 3 (colour).
    pub channels: usize,
    /// The widths the input takes, when its width varies.
    pub width_range: Option<DimRange>,
    /// The heights the input takes, when its height varies too (detectors).
    pub height_range: Option<DimRange>,
    /// `pre.image.limit_side` and `limit_type`, for an input whose sides both vary.
    pub limit: Option<(u32, LimitType)>,
}

impl ImageGeometry {
    /// The model's frame for an image of `w` x `h` pixels: with both sides varying, the
    /// image scaled by the limit with each side brought to a multiple (see
    /// [`multiple_frame`]; `stretch` for a stretched resize), kept within the ranges
    /// (see [`ImageGeometry::misfit`] for one that is not); else the fixed height and
    /// [`ImageGeometry::target_width`].
    pub fn frame(&self, w: u32, h: u32, stretch: bool) -> (u32, u32) {
        match self.varying_frame(w, h, stretch) {
            Some((fw, fh, wr, hr)) => (clamp_to(fw, wr), clamp_to(fh, hr)),
            None => (self.target_width(w, h), self.height),
        }
    }

    /// Why an image of `w` x `h` pixels fits no frame the input takes, if it does not:
    /// its frame by the spec's rule lies outside the input's ranges.
    pub fn misfit(&self, w: u32, h: u32, stretch: bool) -> Option<String> {
        let (fw, fh, wr, hr) = self.varying_frame(w, h, stretch)?;
        if wr.contains(fw as usize) && hr.contains(fh as usize) {
            return None;
        }
        Some(format!(
            "a {w}x{h} image resizes to {fw}x{fh} (width x height), outside what the input takes: width {wr}, height {hr}; send a smaller image, or set pre.image.limit_side (limit_type = \"max\") to scale it down"
        ))
    }

    /// The unclamped frame and both ranges, when height and width both vary.
    fn varying_frame(&self, w: u32, h: u32, stretch: bool) -> Option<(u32, u32, DimRange, DimRange)> {
        let (wr, hr) = (self.width_range?, self.height_range?);
        let m = |r: DimRange| u32::try_from(r.multiple_of).unwrap_or(1);
        let (fw, fh) = multiple_frame(w.max(1), h.max(1), self.limit, (m(wr), m(hr)), stretch)?;
        Some((fw, fh, wr, hr))
    }

    /// The width an image of `w` x `h` pixels is resized to: the fixed width, or its
    /// width at the target height (aspect ratio kept) brought into the range.
    pub fn target_width(&self, w: u32, h: u32) -> u32 {
        match self.width_range {
            None => self.width,
            Some(r) => {
                let natural = (f64::from(w) * f64::from(self.height) / f64::from(h.max(1))).round().max(1.0);
                // `as` saturates; the range bounds the result anyway.
                let fitted = r.fit(natural as usize);
                u32::try_from(fitted).unwrap_or(self.width)
            }
        }
    }
}

/// `n` brought within the range's allowed sizes.
fn clamp_to(n: u32, r: DimRange) -> u32 {
    let (lo, hi) = (r.lowest().unwrap_or(r.min), r.highest().unwrap_or(r.max));
    u32::try_from((n as usize).clamp(lo, hi)).unwrap_or(u32::MAX)
}

/// Axes of channels, height and width in an image input: its last three dimensions in
/// `layout`'s order, after leading 1s (the batch). `None` for a flat or batched input.
pub(super) fn image_axes(layout: ImageLayout, input: &InputSpec) -> Option<(usize, usize, usize)> {
    let r = input.shape.len().checked_sub(3)?;
    if !input.shape[..r].iter().all(|n| *n == 1) {
        return None;
    }
    Some(match layout {
        ImageLayout::Nchw => (r, r + 1, r + 2),
        ImageLayout::Nhwc => (r + 2, r, r + 1),
    })
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
    /// Cut a stream of samples into overlapping windows; without, each payload is one input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// Decode image payloads (`format = "image"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// Sample rate of audio inputs, in Hz: a WAV file at another rate is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// Signal processing between the samples and the model (`[pre.dsp]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsp: Option<super::dsp_spec::DspSpec>,
}

/// Hysteresis over a score, per stream: turns on at `on`, off below `off`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSpec {
    /// The score at which a segment starts.
    pub on: f32,
    /// The score below which it ends.
    pub off: f32,
}

/// What post-processing makes of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PostKind {
    /// Read the output as scores: argmax, top-k, threshold, segments, labels.
    #[default]
    Scores,
    /// No post-processing: the result holds the raw output tensors (detectors,
    /// embeddings, anything whose decoding happens elsewhere).
    None,
    /// Each output value is one label's score, judged on its own (`[post.multilabel]`).
    Multilabel,
    /// The outputs are quantities with names and units (`[post.regression]`).
    Regression,
    /// The output reconstructs the input; their distance is the score (`[post.anomaly]`).
    Anomaly,
    /// Boxes from a YOLO-style detector: `[post.detection]`.
    Detection,
    /// A text detector's probability map to boxes (`[post.text_boxes]`).
    #[serde(rename = "text_boxes")]
    TextBoxes,
    /// Greedy CTC decoding with a character list (`[post.ctc]`): text recognisers,
    /// keyword spotters.
    Ctc,
}

/// Post-processing: from the raw output tensor to an answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostSpec {
    /// Scores or none (raw outputs).
    #[serde(default)]
    pub kind: PostKind,
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
    /// Per-label thresholds and sigmoid (`kind = "multilabel"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multilabel: Option<super::post_spec::MultiLabelSpec>,
    /// Names, units and scaling (`kind = "regression"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regression: Option<super::post_spec::RegressionSpec>,
    /// The error metric (`kind = "anomaly"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<super::post_spec::AnomalySpec>,
    /// With `kind = "detection"`: how the output becomes boxes (defaults if left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<DetectSpec>,
    /// With `kind = "text_boxes"`: DB post-processing's parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_boxes: Option<crate::pipeline::TextDetSpec>,
    /// With `kind = "ctc"`: the character list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctc: Option<crate::pipeline::CtcSpec>,
}

impl PostSpec {
    /// Whether results carry the raw output tensors (`raw = true`, or `kind = "none"`
    /// where they are the whole answer).
    pub fn wants_raw(&self) -> bool {
        self.raw || self.kind == PostKind::None
    }
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
    /// The model's name: what requests and sources address.
    pub name: String,
    /// Its version, free text; reported with every result.
    pub version: String,
    /// A line about what the model does, for status and `model inspect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The ONNX file, relative to the spec.
    #[serde(default = "default_model_file")]
    pub file: String,
    /// The graph inputs, each declared (`[[input]]` in the file).
    #[serde(rename = "input")]
    pub inputs: Vec<InputSpec>,
    /// Pre-processing (`[pre]`).
    #[serde(default)]
    pub pre: PreSpec,
    /// Post-processing (`[post]`).
    #[serde(default)]
    pub post: PostSpec,
    /// Limits on what requests may send (`[limits]`).
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Drift monitoring (`[monitor]`, read by the agent's monitor; docs/monitoring.md).
    #[serde(default)]
    pub monitor: MonitorSpec,
    /// Further models this one's results feed (`[[stage]]`, docs/model-spec.md,
    /// "Pipelines"), in order, each an ONNX file of the same directory.
    #[serde(default, rename = "stage", skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSpec>,
}

/// `[[stage]]`: one further model of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// The stage's name, unique in the spec (`rec`); the model runs on the engine as
    /// `<model>.<stage>`.
    pub name: String,
    /// Its ONNX file, in the model directory.
    pub file: String,
    /// What it takes from the stage before.
    pub from: StageFrom,
    /// Its inputs, as a model's `[[input]]`.
    #[serde(rename = "input")]
    pub inputs: Vec<InputSpec>,
    /// `from = "outputs"`: how many outputs one run takes and how it advances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<OutputWindowSpec>,
    /// Its pre-processing (`[stage.pre.image]` for crops).
    #[serde(default)]
    pub pre: PreSpec,
    /// Its post-processing.
    #[serde(default)]
    pub post: PostSpec,
}

/// What a stage takes from the stage before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageFrom {
    /// Each box of a `text_boxes` stage, cut out of the original image.
    Crops,
    /// A sliding window of the stage before it's outputs (`[stage.window]`).
    Outputs,
}

/// `[stage.window]`: how many of the previous stage's outputs one run takes, and by how
/// many outputs the window advances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputWindowSpec {
    /// Outputs per run (16 embeddings for openWakeWord's classifiers).
    pub size: usize,
    /// Outputs between runs (1: a run for every new output).
    #[serde(default = "default_hop")]
    pub hop: usize,
}

fn default_hop() -> usize {
    1
}

/// `[monitor]`: how a device watches this model's inputs and outputs for drift against
/// its reference (`profile.json`, or its first results). The monitor reads it; the
/// engine only carries it with the spec, so that a model update brings its own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSpec {
    /// Whether the device watches this model at all (on by default: it costs a few
    /// microseconds and tens of KiB per model).
    pub enabled: bool,
    /// Recent results the histograms cover (a sliding window).
    pub window: usize,
    /// Scores are computed every this many results.
    pub every: usize,
    /// Drift is raised when a summary's score reaches this (Jensen-Shannon distance, 0..1).
    pub raise: f64,
    /// ... and cleared once every score is below this.
    pub clear: f64,
    /// Without profile.json: results after activation taken as the reference.
    pub reference: usize,
}

impl Default for MonitorSpec {
    fn default() -> Self {
        MonitorSpec { enabled: true, window: 1000, every: 100, raise: 0.3, clear: 0.2, reference: 2000 }
    }
}

fn default_model_file() -> String {
    "model.onnx".to_string()
}

/// A spec read from a model directory, with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    /// The spec.
    pub spec: ModelSpec,
    /// The spec file, for error messages.
    pub path: PathBuf,
    /// The ONNX file the spec points at.
    pub model_path: PathBuf,
}

impl ModelSpec {
    /// The size images are resized to, from `[pre.image]` and the data input's shape.
    /// `None` without `[pre.image]` (or for a spec the checks refuse).
    pub fn image_geometry(&self) -> Option<ImageGeometry> {
        let img = self.pre.image.as_ref()?;
        let d = self.inputs.iter().find(|i| i.from == InputFrom::Data)?;
        let axes = image_axes(img.layout, d);
        let dim = |axis: usize| d.shape.get(axis).and_then(|n| u32::try_from(*n).ok());
        let range = |axis: usize| d.ranges.iter().find(|(a, _)| *a == axis).map(|(_, r)| *r);
        let width_range = axes.and_then(|(_, _, w)| range(w));
        let height_range = axes.and_then(|(_, h, _)| range(h));
        let width = img.width.or_else(|| axes.and_then(|(_, _, w)| dim(w)))?;
        let height = img.height.or_else(|| axes.and_then(|(_, h, _)| dim(h)))?;
        let limit = img.limit_side.map(|side| (side, img.limit_type.unwrap_or_default()));
        Some(ImageGeometry { width, height, channels: img.channels, width_range, height_range, limit })
    }

    /// The data input's shape for an image model's frame (width, height): the declared
    /// shape with the image's sides put in. `None` for an input that is not
    /// image-shaped (a flat one).
    pub fn image_input_shape(&self, frame: (u32, u32)) -> Option<Vec<usize>> {
        let img = self.pre.image.as_ref()?;
        let d = self.inputs.iter().find(|i| i.from == InputFrom::Data)?;
        let (_, h, w) = image_axes(img.layout, d)?;
        let mut shape = d.shape.clone();
        shape[w] = frame.0 as usize;
        shape[h] = frame.1 as usize;
        Some(shape)
    }

    /// Whether the data input is an image whose height and width are its two ranges
    /// (a detector's input): requests then carry their shape, which the number of values
    /// does not tell.
    pub fn image_sides_vary(&self) -> bool {
        let Some(img) = self.pre.image.as_ref() else { return false };
        let Some(d) = self.inputs.iter().find(|i| i.from == InputFrom::Data) else { return false };
        let Some((_, h, w)) = image_axes(img.layout, d) else { return false };
        d.ranges.len() == 2 && d.ranges.iter().all(|(a, _)| *a == h || *a == w)
    }

    /// The input that carries the request's data.
    pub fn data_input(&self) -> &InputSpec {
        // `problems()` guarantees exactly one; a spec that skipped it is a programming error.
        #[allow(clippy::expect_used)]
        self.inputs.iter().find(|i| i.from == InputFrom::Data).expect("validated spec has one data input")
    }
}
