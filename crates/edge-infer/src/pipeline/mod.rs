//! Declarative pre- and post-processing, driven by a model's spec.
//!
//! Pre-processing turns a payload (bytes in the spec's format, or samples from a
//! source) into the flat `f32` data of the model's data input; windows cut a stream of
//! samples into overlapping model inputs. Post-processing turns the raw output into an
//! answer (softmax, argmax, top-k, threshold, labels, segments).

mod decode;
pub mod detect;
pub mod dsp;
mod error;
mod families;
mod image;
mod nesting;
mod post;
mod window;

#[cfg(test)]
mod tests;

pub use decode::{Payload, check_finite, decode, decode_within, strip_bom, strip_bom_str};
pub use detect::ImageFrame;
pub use error::InputError;
pub use families::{reconstruction_error, sigmoid};
pub use image::{Placement, frame_for, image_frame, place};
pub use nesting::{Nesting, nesting_matches};
pub use post::{PostProcessor, SegmentState};
pub use window::{Window, Windower};
