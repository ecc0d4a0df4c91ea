//! `pre.image.filter`: how pixels are interpolated when an image is resized. Beside
//! `spec.rs` so that the image pre-processing additions stay in files of their own.

use serde::{Deserialize, Serialize};

/// The interpolation of a resize. Models score best on inputs resized the way their
/// training data was: detectors trained with OpenCV want `linear`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// A triangle filter that widens when shrinking, so every source pixel counts
    /// (Pillow's `BILINEAR`, torchvision's antialiased resize). The default.
    #[default]
    Triangle,
    /// OpenCV's `INTER_LINEAR`: each output pixel blends the four source pixels nearest
    /// its centre, without antialiasing (YOLO's letterbox, `cv2.dnn.blobFromImage`).
    Linear,
}
