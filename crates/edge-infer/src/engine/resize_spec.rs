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

/// `pre.image.limit_type`: which side `limit_side` bounds, for an input whose height and
/// width both vary (detectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LimitType {
    /// The longer side is scaled down to `limit_side` if it is longer (PP-OCR's
    /// `limit_type: max`; a YOLO detector's image size). The default.
    #[default]
    Max,
    /// The shorter side is scaled up to `limit_side` if it is shorter (rapidocr's default
    /// detector setting, `limit_type: min`).
    Min,
}

/// The frame an image of `w` x `h` pixels gets when both sides of the input vary: scaled
/// by the limit, then each side brought to a multiple of `multiple` (at least one).
/// `stretch` follows PaddleOCR's detector: sides truncated after scaling, then rounded
/// to the nearest multiple (ties to even, as Python's `round`). A letterbox (`stretch`
/// false) follows YOLO: sides rounded after scaling, then padded up to the next multiple.
/// `None` for a side of zero pixels. The result may exceed the input's range: the caller
/// says so.
pub fn multiple_frame(
    w: u32,
    h: u32,
    limit: Option<(u32, LimitType)>,
    multiple: (u32, u32),
    stretch: bool,
) -> Option<(u32, u32)> {
    if w == 0 || h == 0 {
        return None;
    }
    let (wf, hf) = (f64::from(w), f64::from(h));
    let ratio = match limit {
        Some((side, LimitType::Max)) if wf.max(hf) > f64::from(side) => f64::from(side) / wf.max(hf),
        Some((side, LimitType::Min)) if wf.min(hf) < f64::from(side) => f64::from(side) / wf.min(hf),
        _ => 1.0,
    };
    let side = |n: f64, m: u32| -> u32 {
        let m = f64::from(m.max(1));
        let scaled = n * ratio;
        let k = if stretch {
            // int(n * ratio), then round(x / m) with ties to even.
            let q = scaled.floor() / m;
            let r = q.round();
            if (q - q.trunc() - 0.5).abs() < 1e-12 && r % 2.0 != 0.0 { r - 1.0 } else { r }
        } else {
            (scaled.round() / m).ceil()
        };
        // At least one multiple; `as` saturates, and the range check refuses huge sides.
        (k.max(1.0) * m).min(f64::from(u32::MAX)) as u32
    };
    Some((side(wf, multiple.0), side(hf, multiple.1)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// rapidocr 1.4.4's `DetPreProcess.resize`, written out in f64 as Python runs it.
    fn rapidocr(w: u32, h: u32, limit: u32, min: bool) -> (u32, u32) {
        let (wf, hf, l) = (f64::from(w), f64::from(h), f64::from(limit));
        let ratio = if min {
            if hf.min(wf) < l { if h < w { l / hf } else { l / wf } } else { 1.0 }
        } else if hf.max(wf) > l {
            if h > w { l / hf } else { l / wf }
        } else {
            1.0
        };
        let py_round = |x: f64| {
            let r = x.round();
            if (x - x.trunc() - 0.5).abs() < 1e-12 && r % 2.0 != 0.0 { r - 1.0 } else { r }
        };
        let side = |n: f64| (py_round((n * ratio).floor() / 32.0) * 32.0).max(32.0) as u32;
        (side(wf), side(hf))
    }

    #[test]
    fn known_sizes() {
        // The PP-OCR test images: 800x736 stays, 1100x700 becomes 1152x736.
        let min = Some((736, LimitType::Min));
        assert_eq!(multiple_frame(800, 736, min, (32, 32), true), Some((800, 736)));
        assert_eq!(multiple_frame(1100, 700, min, (32, 32), true), Some((1152, 736)));
        // Ties go to even: 16/32 = 0.5 rounds to 0, then one multiple at least; 48 -> 64.
        assert_eq!(multiple_frame(48, 16, None, (32, 32), true), Some((64, 32)));
        // YOLO: the longer side to 320, the other padded up to a multiple of 32.
        let max = Some((320, LimitType::Max));
        assert_eq!(multiple_frame(640, 400, max, (32, 32), false), Some((320, 224)));
        assert_eq!(multiple_frame(0, 400, max, (32, 32), false), None);
    }

    proptest! {
        /// Agreement with rapidocr's rule, and the frame's invariants: multiples, the
        /// letterbox frame holds the scaled image, and the longer side obeys a max limit.
        #[test]
        fn frames_agree_with_rapidocr_and_hold_the_image(
            w in 1u32..6000, h in 1u32..6000, limit in 32u32..2000, min in any::<bool>()
        ) {
            let kind = if min { LimitType::Min } else { LimitType::Max };
            let got = multiple_frame(w, h, Some((limit, kind)), (32, 32), true).unwrap();
            prop_assert_eq!(got, rapidocr(w, h, limit, min));
            let (fw, fh) = multiple_frame(w, h, Some((limit, kind)), (32, 32), false).unwrap();
            prop_assert!(fw % 32 == 0 && fh % 32 == 0 && fw >= 32 && fh >= 32);
            let (wf, hf, l) = (f64::from(w), f64::from(h), f64::from(limit));
            let r = match kind {
                LimitType::Max if wf.max(hf) > l => l / wf.max(hf),
                LimitType::Min if wf.min(hf) < l => l / wf.min(hf),
                _ => 1.0,
            };
            for (frame, n) in [(fw, wf), (fh, hf)] {
                let scaled = (n * r).round() as u32;
                prop_assert!(frame >= scaled && frame < scaled.max(1) + 32, "{frame} for {scaled}");
            }
        }
    }
}
