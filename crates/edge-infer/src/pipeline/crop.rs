//! The crop stage of a pipeline: cut each box a detector found out of the original
//! image, as PP-OCR does: the quadrilateral is warped (a perspective transform) onto an
//! upright rectangle as wide as its longer horizontal side and as high as its longer
//! vertical side, pixels outside the image repeating its edge; a crop at least 1.5 times
//! as high as wide is turned a quarter counter-clockwise (vertical text). The next
//! model's `[pre.image]` then scales it to its height, with the width varying within the
//! input's range, and pads it.
//!
//! Sampling is bilinear (PP-OCR uses OpenCV's bicubic): the recogniser reads the same
//! text, and the difference is at most a grey level or two at edges.

use image::{DynamicImage, Rgb, RgbImage};

/// Largest crop side, in pixels: a bound on the memory a degenerate box can ask for
/// (the original image's sides are bounded by the decoder at 8192).
const MAX_SIDE: u32 = 8192;

/// The crop of `img` under `quad` (top left, top right, bottom right, bottom left, in
/// the image's pixels). `None` when the box has no area (a side under one pixel), its
/// corners are not finite, or the four corners give no invertible transform.
pub fn crop_quad(img: &RgbImage, quad: &[[f32; 2]; 4]) -> Option<RgbImage> {
    if img.width() == 0 || img.height() == 0 || quad.iter().flatten().any(|v| !v.is_finite()) {
        return None;
    }
    let p: Vec<[f64; 2]> = quad.iter().map(|q| [f64::from(q[0]), f64::from(q[1])]).collect();
    let dist = |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    // PP-OCR truncates the sides to whole pixels.
    let w = dist(p[0], p[1]).max(dist(p[2], p[3])).trunc();
    let h = dist(p[0], p[3]).max(dist(p[1], p[2])).trunc();
    if !(1.0..=f64::from(MAX_SIDE)).contains(&w) || !(1.0..=f64::from(MAX_SIDE)).contains(&h) {
        return None;
    }
    let dst = [[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]];
    // The map from the crop's pixels back into the image.
    let m = homography(&dst, &[p[0], p[1], p[2], p[3]])?;
    let (cw, ch) = (w as u32, h as u32);
    let mut out = RgbImage::new(cw, ch);
    for y in 0..ch {
        for x in 0..cw {
            let (fx, fy) = (f64::from(x), f64::from(y));
            let z = m[6] * fx + m[7] * fy + m[8];
            if z.abs() < 1e-12 {
                continue;
            }
            let sx = (m[0] * fx + m[1] * fy + m[2]) / z;
            let sy = (m[3] * fx + m[4] * fy + m[5]) / z;
            out.put_pixel(x, y, bilinear(img, sx, sy));
        }
    }
    if f64::from(ch) / f64::from(cw) >= 1.5 {
        // numpy's rot90: a quarter turn counter-clockwise.
        out = image::imageops::rotate270(&out);
    }
    Some(out)
}

/// The crop as an image for the next stage's pre-processing.
pub fn crop_image(img: &RgbImage, quad: &[[f32; 2]; 4]) -> Option<DynamicImage> {
    crop_quad(img, quad).map(DynamicImage::ImageRgb8)
}

/// Bilinear sample at `(x, y)`, coordinates outside the image clamped to its edge
/// (OpenCV's BORDER_REPLICATE).
fn bilinear(img: &RgbImage, x: f64, y: f64) -> Rgb<u8> {
    let (w, h) = (f64::from(img.width() - 1), f64::from(img.height() - 1));
    let x = if x.is_finite() { x.clamp(0.0, w) } else { 0.0 };
    let y = if y.is_finite() { y.clamp(0.0, h) } else { 0.0 };
    let (x0, y0) = (x.floor(), y.floor());
    let (x1, y1) = ((x0 + 1.0).min(w), (y0 + 1.0).min(h));
    let (ax, ay) = (x - x0, y - y0);
    let px = |xx: f64, yy: f64| img.get_pixel(xx as u32, yy as u32).0;
    let (a, b, c, d) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
    let mut out = [0u8; 3];
    for i in 0..3 {
        let top = f64::from(a[i]) * (1.0 - ax) + f64::from(b[i]) * ax;
        let bottom = f64::from(c[i]) * (1.0 - ax) + f64::from(d[i]) * ax;
        out[i] = (top * (1.0 - ay) + bottom * ay).round().clamp(0.0, 255.0) as u8;
    }
    Rgb(out)
}

/// The 3x3 perspective transform (row-major, `m[8] = 1`) taking the four `from` points
/// to the four `to` points; `None` when they are degenerate.
fn homography(from: &[[f64; 2]; 4], to: &[[f64; 2]; 4]) -> Option<[f64; 9]> {
    // Eight equations in the eight unknowns a..h:
    // u = (a x + b y + c) / (g x + h y + 1), v = (d x + e y + f) / (g x + h y + 1).
    let mut a = [[0.0f64; 9]; 8];
    for i in 0..4 {
        let ([x, y], [u, v]) = (from[i], to[i]);
        a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
        a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..8 {
        let pivot = (col..8).max_by(|r, s| a[*r][col].abs().total_cmp(&a[*s][col].abs()))?;
        if a[pivot][col].abs() < 1e-9 {
            return None;
        }
        a.swap(col, pivot);
        for row in 0..8 {
            if row != col {
                let f = a[row][col] / a[col][col];
                let pivot_row = a[col];
                for (v, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    let mut m = [0.0; 9];
    for i in 0..8 {
        m[i] = a[i][8] / a[i][i];
    }
    m[8] = 1.0;
    m.iter().all(|v| v.is_finite()).then_some(m)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A 40 x 30 image whose pixel (x, y) is (x, y, 7).
    fn ramp() -> RgbImage {
        RgbImage::from_fn(40, 30, |x, y| Rgb([x as u8, y as u8, 7]))
    }

    #[test]
    fn an_axis_aligned_box_is_a_plain_cut() {
        let img = ramp();
        let c = crop_quad(&img, &[[5.0, 4.0], [25.0, 4.0], [25.0, 14.0], [5.0, 14.0]]).unwrap();
        assert_eq!(c.dimensions(), (20, 10));
        for (x, y, p) in c.enumerate_pixels() {
            assert_eq!(p.0, [5 + x as u8, 4 + y as u8, 7], "at {x},{y}");
        }
    }

    #[test]
    fn a_tall_box_is_turned_a_quarter_counter_clockwise() {
        let img = ramp();
        let c = crop_quad(&img, &[[10.0, 2.0], [14.0, 2.0], [14.0, 22.0], [10.0, 22.0]]).unwrap();
        assert_eq!(c.dimensions(), (20, 4), "20 high, 4 wide becomes 20 wide");
        // numpy's rot90: the box's top-right corner becomes the crop's top left, its
        // bottom right the top right, its top left the bottom left.
        assert_eq!(c.get_pixel(0, 0).0, [13, 2, 7]);
        assert_eq!(c.get_pixel(19, 0).0, [13, 21, 7]);
        assert_eq!(c.get_pixel(0, 3).0, [10, 2, 7]);
    }

    #[test]
    fn a_rotated_box_reads_along_its_edge() {
        let img = ramp();
        // A box tilted by 45 degrees: its top edge runs from (10, 10) to (20, 20).
        let q = [[10.0, 10.0], [20.0, 20.0], [15.0, 25.0], [5.0, 15.0]];
        let c = crop_quad(&img, &q).unwrap();
        assert_eq!(c.dimensions(), (14, 7));
        // Along the top edge x and y grow together.
        let first = c.get_pixel(0, 0).0;
        let later = c.get_pixel(10, 0).0;
        assert_eq!(first[..2], [10, 10]);
        assert!(
            later[0] > 15 && later[1] > 15 && (i32::from(later[0]) - i32::from(later[1])).abs() <= 1,
            "{later:?}"
        );
    }

    #[test]
    fn degenerate_boxes_give_no_crop() {
        let img = ramp();
        assert!(crop_quad(&img, &[[5.0, 5.0]; 4]).is_none());
        assert!(crop_quad(&img, &[[0.0, 0.0], [f32::NAN, 0.0], [3.0, 3.0], [0.0, 3.0]]).is_none());
        assert!(crop_quad(&img, &[[0.0, 0.0], [1e9, 0.0], [1e9, 3.0], [0.0, 3.0]]).is_none(), "too large");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any four corners, inside the image or not: no panic, and a crop no larger
        /// than the box's longer sides.
        #[test]
        fn any_quad_crops_without_panic(q in proptest::array::uniform4(proptest::array::uniform2(-100.0f32..200.0))) {
            let img = ramp();
            if let Some(c) = crop_quad(&img, &q) {
                prop_assert!(c.width() >= 1 && c.height() >= 1);
                prop_assert!(c.width() <= 500 && c.height() <= 500);
            }
        }
    }
}
