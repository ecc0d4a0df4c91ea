//! Errors of pre-processing: what was wrong with the input and how to send it right.

/// An input the model cannot take.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The payload is larger than the limit it is decoded within.
    #[error("payload of {bytes} bytes exceeds the limit of {max} bytes (limits.max_payload_bytes)")]
    TooLarge {
        /// Its size (decoded samples count 4 bytes each).
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The payload has no bytes.
    #[error("payload is empty")]
    Empty,
    /// A JSON payload that is not an array of numbers (flat, or nested like the input).
    #[error("payload is not a JSON array of numbers: {reason}")]
    Json {
        /// The parser's complaint.
        reason: String,
    },
    /// A nested JSON array whose shape is not the input's.
    #[error("input has shape {got:?} but `{input}` expects {want:?}")]
    Shape {
        /// The model input.
        input: String,
        /// The payload's shape.
        got: Vec<usize>,
        /// The input's shape.
        want: Vec<usize>,
    },
    /// A nested JSON array whose shape is none of those an input with a range takes.
    #[error("input has shape {got:?} but `{input}` takes {want}")]
    ShapeRange {
        /// The model input.
        input: String,
        /// The payload's shape.
        got: Vec<usize>,
        /// The shapes the input takes, as text (`[1, 16..=512]`).
        want: String,
    },
    /// A flat payload with the wrong number of values.
    #[error("input has {got} values but `{input}` {shape:?} takes {want}")]
    Length {
        /// The model input.
        input: String,
        /// Values given.
        got: usize,
        /// Values the input takes.
        want: usize,
        /// The input's shape.
        shape: Vec<usize>,
    },
    /// A flat payload whose number of values fits no shape an input with a range takes.
    #[error("input has {got} values, and no shape `{input}` takes ({shape}) holds that many")]
    LengthRange {
        /// The model input.
        input: String,
        /// Values given.
        got: usize,
        /// The shapes the input takes, as text.
        shape: String,
    },
    /// A NaN or infinite value.
    #[error("value {index} is {value}; the model needs finite numbers (no NaN or infinity)")]
    NotFinite {
        /// Its position among the decoded values.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Raw samples whose byte count is not a multiple of the sample width.
    #[error("{bytes} bytes is not a whole number of {width}-byte samples")]
    Alignment {
        /// The payload's size.
        bytes: usize,
        /// Bytes per sample.
        width: usize,
    },
    /// An image payload that cannot be decoded.
    #[error("cannot read the image: {reason}")]
    Image {
        /// The decoder's complaint.
        reason: String,
    },
    /// An image whose size the model's input cannot take.
    #[error("the image does not fit the model: {reason}")]
    ImageSize {
        /// The image's size, its frame and the input's ranges.
        reason: String,
    },
    /// An image payload for a model whose spec has no `[pre.image]`.
    #[error("this model takes no images: add a [pre.image] table to its spec")]
    NoImageSpec,
}
