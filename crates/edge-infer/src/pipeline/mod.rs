//! Declarative pre- and post-processing, driven by a model's spec.
//!
//! Pre-processing turns a payload (bytes in the spec's format, or samples from a
//! source) into the flat `f32` data of the model's data input; windows cut a stream of
//! samples into overlapping model inputs. Post-processing turns the raw output into an
//! answer (softmax, argmax, top-k, threshold, labels, segments; a text detector's map
//! into boxes; CTC decoding with a character list). Crops cut a box out of an image for
//! the next model of a pipeline.

mod crop;
mod ctc;
mod decode;
pub mod detect;
pub mod dsp;
mod error;
mod families;
mod image;
mod nesting;
mod post;
mod textdet;
mod window;

#[cfg(test)]
mod shape_tests;
#[cfg(test)]
mod tests;

pub use crop::{crop_image, crop_quad};
pub use ctc::{BlankAt, CtcDecoder, CtcError, CtcSpec, Decoded};
pub use decode::{DecodedPayload, Payload, check_finite, decode, decode_within, strip_bom, strip_bom_str};
pub use error::InputError;
pub use families::{reconstruction_error, sigmoid};
pub use image::{ImageFrame, Placement, decode_image, frame_for, image_frame, place, tensor_from_image};
pub use nesting::{Nesting, nesting_matches};
pub use post::{PostProcessor, SegmentState};
pub use textdet::{TextBox, TextDetSpec, text_boxes};
pub use window::{Window, Windower};
