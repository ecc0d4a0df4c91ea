//! Errors of pre-processing: what was wrong with the input and how to send it right.

/// An input the model cannot take.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("payload of {bytes} bytes exceeds the limit of {max} bytes (limits.max_payload_bytes)")]
    TooLarge { bytes: usize, max: usize },
    #[error("payload is empty")]
    Empty,
    #[error("payload is not a JSON array of numbers: {reason}")]
    Json { reason: String },
    #[error("input has shape {got:?} but `{input}` expects {want:?}")]
    Shape { input: String, got: Vec<usize>, want: Vec<usize> },
    #[error("input has shape {got:?} but `{input}` takes {want}")]
    ShapeRange { input: String, got: Vec<usize>, want: String },
    #[error("input has {got} values but `{input}` {shape:?} takes {want}")]
    Length { input: String, got: usize, want: usize, shape: Vec<usize> },
    #[error("input has {got} values, and no shape `{input}` takes ({shape}) holds that many")]
    LengthRange { input: String, got: usize, shape: String },
    #[error("value {index} is {value}; the model needs finite numbers (no NaN or infinity)")]
    NotFinite { index: usize, value: f32 },
    #[error("{bytes} bytes is not a whole number of {width}-byte samples")]
    Alignment { bytes: usize, width: usize },
    #[error("cannot read the image: {reason}")]
    Image { reason: String },
    #[error("this model takes no images: add a [pre.image] table to its spec")]
    NoImageSpec,
}
