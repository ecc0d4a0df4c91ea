//! Text detection maps to boxes, as PP-OCR's DB (differentiable binarisation)
//! post-processing publishes it: binarise the probability map at a threshold (optionally
//! dilated by a 2x2 square), take each 8-connected region, fit its smallest rotated
//! rectangle, drop the thin ones and those whose mean probability is below the box
//! threshold, grow ("unclip") each rectangle by `area * ratio / perimeter` on every side,
//! and map it from the map's pixels to the original image's.
//!
//! Every function here takes any map (any size, NaN, infinities) without panicking, and
//! every box it returns lies inside the original image.

use serde::{Deserialize, Serialize};

/// `[post.text_boxes]`: the parameters of DB post-processing. The defaults are PP-OCR's
/// (rapidocr 1.4.4's `config.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextDetSpec {
    /// A map pixel above this probability is text.
    pub threshold: f32,
    /// A region whose mean probability inside its rectangle is below this is dropped.
    pub box_threshold: f32,
    /// How far a rectangle grows: `area * unclip_ratio / perimeter` on every side.
    pub unclip_ratio: f32,
    /// Rectangles whose shorter side is below this (in map pixels) are dropped; after
    /// unclipping the bound is `min_size + 2`.
    pub min_size: f32,
    /// Dilate the binary map by a 2x2 square before finding regions.
    pub dilate: bool,
    /// At most this many regions are looked at (in scan order), a bound on the work a
    /// noisy map can cause.
    pub max_candidates: usize,
}

impl Default for TextDetSpec {
    fn default() -> Self {
        TextDetSpec {
            threshold: 0.3,
            box_threshold: 0.5,
            unclip_ratio: 1.6,
            min_size: 3.0,
            dilate: true,
            max_candidates: 1000,
        }
    }
}

impl TextDetSpec {
    /// What is wrong with the values, if anything (for the spec's error message).
    pub fn problem(&self) -> Option<String> {
        let finite = [self.threshold, self.box_threshold, self.unclip_ratio, self.min_size];
        if finite.iter().any(|v| !v.is_finite()) {
            return Some("post.text_boxes: every number must be finite".into());
        }
        if !(0.0..=1.0).contains(&self.threshold) || !(0.0..=1.0).contains(&self.box_threshold) {
            return Some("post.text_boxes: threshold and box_threshold are probabilities (0 to 1)".into());
        }
        if self.unclip_ratio < 0.0 || self.min_size < 0.0 {
            return Some("post.text_boxes: unclip_ratio and min_size cannot be negative".into());
        }
        None
    }
}

/// One detected text region: four corners in the original image's pixels, clockwise
/// from the top left (top left, top right, bottom right, bottom left), and the mean map
/// probability inside it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextBox {
    /// The corners, `[x, y]`, whole pixels within `0..=width-1`, `0..=height-1`.
    pub points: [[f32; 2]; 4],
    /// Mean probability of the map inside the box before unclipping.
    pub score: f32,
}

/// A rotated rectangle: four corners, and its shorter side.
#[derive(Debug, Clone, Copy)]
struct Rect {
    corners: [[f64; 2]; 4],
    short: f64,
}

/// The boxes of a `map_w` x `map_h` probability map (row-major), mapped to an original
/// image of `src_w` x `src_h` pixels, sorted top to bottom and then left to right as
/// PP-OCR reads them. A map whose length is not `map_w * map_h` gives no boxes.
pub fn text_boxes(
    map: &[f32],
    map_w: usize,
    map_h: usize,
    src_w: u32,
    src_h: u32,
    spec: &TextDetSpec,
) -> Vec<TextBox> {
    if map_w == 0 || map_h == 0 || map.len() != map_w.saturating_mul(map_h) || src_w == 0 || src_h == 0 {
        return Vec::new();
    }
    // NaN compares false: never text.
    let mut bitmap: Vec<bool> = map.iter().map(|v| *v > spec.threshold).collect();
    if spec.dilate {
        bitmap = dilate_2x2(&bitmap, map_w, map_h);
    }
    let mut boxes = Vec::new();
    for region in regions(&bitmap, map_w, map_h).into_iter().take(spec.max_candidates) {
        let hull = convex_hull(&region);
        let Some(rect) = min_area_rect(&hull) else { continue };
        if rect.short < f64::from(spec.min_size) {
            continue;
        }
        let corners = order_corners(rect.corners);
        let score = box_score(map, map_w, map_h, &corners);
        // A NaN score (never: non-finite values are skipped) would be dropped too.
        if score.is_nan() || score < f64::from(spec.box_threshold) {
            continue;
        }
        let grown = unclip(&corners, f64::from(spec.unclip_ratio));
        let Some(rect) = min_area_rect(&convex_hull_f(&grown)) else { continue };
        if rect.short < f64::from(spec.min_size) + 2.0 {
            continue;
        }
        let corners = order_corners(rect.corners);
        // To the original image: round, then keep within it (PP-OCR clips to the
        // image's size, then to its last pixel).
        let (sx, sy) = (f64::from(src_w) / map_w as f64, f64::from(src_h) / map_h as f64);
        let mut pts = corners.map(|[x, y]| {
            let x = (x * sx).round().clamp(0.0, f64::from(src_w));
            let y = (y * sy).round().clamp(0.0, f64::from(src_h));
            [x, y]
        });
        pts = clockwise(pts);
        let pts = pts.map(|[x, y]| {
            [
                x.clamp(0.0, f64::from(src_w - 1)).trunc() as f32,
                y.clamp(0.0, f64::from(src_h - 1)).trunc() as f32,
            ]
        });
        let dist = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        if dist(pts[0], pts[1]).trunc() <= 3.0 || dist(pts[0], pts[3]).trunc() <= 3.0 {
            continue;
        }
        boxes.push(TextBox { points: pts, score: score as f32 });
    }
    sort_reading_order(&mut boxes);
    boxes
}

/// PP-OCR's reading order: by the top-left corner's y then x, then boxes on about the
/// same line (top-left y within 10 pixels) left to right.
fn sort_reading_order(boxes: &mut [TextBox]) {
    boxes.sort_by(|a, b| {
        (a.points[0][1], a.points[0][0])
            .partial_cmp(&(b.points[0][1], b.points[0][0]))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    for i in 0..boxes.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            if (boxes[j + 1].points[0][1] - boxes[j].points[0][1]).abs() < 10.0
                && boxes[j + 1].points[0][0] < boxes[j].points[0][0]
            {
                boxes.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

/// A pixel is set when it or its left, upper or upper-left neighbour is (OpenCV's
/// dilation by a 2x2 kernel anchored at its centre).
fn dilate_2x2(bitmap: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut out = bitmap.to_vec();
    for y in 0..h {
        for x in 0..w {
            let at = |xx: usize, yy: usize| bitmap[yy * w + xx];
            let v = at(x, y)
                || (x > 0 && at(x - 1, y))
                || (y > 0 && at(x, y - 1))
                || (x > 0 && y > 0 && at(x - 1, y - 1));
            out[y * w + x] = v;
        }
    }
    out
}

/// The 8-connected regions of set pixels, each as its pixels' `(x, y)`, in the order
/// their first pixel is met scanning rows.
fn regions(bitmap: &[bool], w: usize, h: usize) -> Vec<Vec<(i64, i64)>> {
    let mut seen = vec![false; bitmap.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..bitmap.len() {
        if !bitmap[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut pixels = Vec::new();
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            pixels.push((x as i64, y as i64));
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if bitmap[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        out.push(pixels);
    }
    out
}

/// Andrew's monotone chain: the hull's vertices counter-clockwise (in y-up terms),
/// without collinear points.
fn convex_hull(points: &[(i64, i64)]) -> Vec<[f64; 2]> {
    let mut pts: Vec<(i64, i64)> = points.to_vec();
    pts.sort_unstable();
    pts.dedup();
    if pts.len() < 3 {
        return pts.into_iter().map(|(x, y)| [x as f64, y as f64]).collect();
    }
    let cross =
        |o: (i64, i64), a: (i64, i64), b: (i64, i64)| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(2 * pts.len());
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &(i64, i64)>> =
            if pass == 0 { Box::new(pts.iter()) } else { Box::new(pts.iter().rev()) };
        for &p in iter {
            while hull.len() >= start + 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull.into_iter().map(|(x, y)| [x as f64, y as f64]).collect()
}

/// The convex hull of float points (the grown rectangle's corners).
fn convex_hull_f(points: &[[f64; 2]]) -> Vec<[f64; 2]> {
    // The corners are rounded to whole pixels already (as the polygon offsetting PP-OCR
    // uses gives them), so the integer hull is exact.
    let ints: Vec<(i64, i64)> = points.iter().map(|p| (p[0] as i64, p[1] as i64)).collect();
    convex_hull(&ints)
}

/// The smallest-area rectangle around a convex polygon (rotating calipers: one side of
/// it lies on an edge of the hull). `None` for no points. A single point or a line gives
/// a rectangle with a zero side.
fn min_area_rect(hull: &[[f64; 2]]) -> Option<Rect> {
    match hull.len() {
        0 => return None,
        1 => return Some(Rect { corners: [hull[0]; 4], short: 0.0 }),
        _ => {}
    }
    let mut best: Option<(f64, Rect)> = None;
    for i in 0..hull.len() {
        let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
        let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
        let len = (ex * ex + ey * ey).sqrt();
        if len == 0.0 {
            continue;
        }
        let (ux, uy) = (ex / len, ey / len);
        let (mut lo_u, mut hi_u, mut lo_v, mut hi_v) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in hull {
            let u = p[0] * ux + p[1] * uy;
            let v = -p[0] * uy + p[1] * ux;
            lo_u = lo_u.min(u);
            hi_u = hi_u.max(u);
            lo_v = lo_v.min(v);
            hi_v = hi_v.max(v);
        }
        let area = (hi_u - lo_u) * (hi_v - lo_v);
        // Prefer the first of equal areas: an axis-aligned edge comes first for the
        // rectangles text usually makes.
        if best.as_ref().is_some_and(|(a, _)| area >= *a - 1e-9) {
            continue;
        }
        let at = |u: f64, v: f64| [u * ux - v * uy, u * uy + v * ux];
        let corners = [at(lo_u, lo_v), at(hi_u, lo_v), at(hi_u, hi_v), at(lo_u, hi_v)];
        let short = (hi_u - lo_u).min(hi_v - lo_v);
        best = Some((area, Rect { corners, short }));
    }
    best.map(|(_, r)| r)
}

/// PP-OCR's `get_mini_boxes` order: of the two leftmost corners the upper is first and
/// the lower last; of the two rightmost the upper is second and the lower third.
fn order_corners(corners: [[f64; 2]; 4]) -> [[f64; 2]; 4] {
    let mut p = corners.to_vec();
    p.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (i1, i4) = if p[1][1] > p[0][1] { (0, 1) } else { (1, 0) };
    let (i2, i3) = if p[3][1] > p[2][1] { (2, 3) } else { (3, 2) };
    [p[i1], p[i2], p[i3], p[i4]]
}

/// The same four points as top left, top right, bottom right, bottom left: the two
/// leftmost (by x) ordered by y, then the two rightmost.
fn clockwise(pts: [[f64; 2]; 4]) -> [[f64; 2]; 4] {
    let mut p = pts.to_vec();
    p.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mut left = [p[0], p[1]];
    let mut right = [p[2], p[3]];
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

/// Mean of the map over the pixels inside the quadrilateral, within its bounding box
/// clipped to the map (PP-OCR's "fast" score). 0 when no pixel is inside.
fn box_score(map: &[f32], w: usize, h: usize, quad: &[[f64; 2]; 4]) -> f64 {
    let min_x =
        quad.iter().map(|p| p[0]).fold(f64::MAX, f64::min).floor().clamp(0.0, (w - 1) as f64) as usize;
    let max_x = quad.iter().map(|p| p[0]).fold(f64::MIN, f64::max).ceil().clamp(0.0, (w - 1) as f64) as usize;
    let min_y =
        quad.iter().map(|p| p[1]).fold(f64::MAX, f64::min).floor().clamp(0.0, (h - 1) as f64) as usize;
    let max_y = quad.iter().map(|p| p[1]).fold(f64::MIN, f64::max).ceil().clamp(0.0, (h - 1) as f64) as usize;
    // PP-OCR fills the polygon with its corners truncated to whole pixels.
    let q: Vec<[f64; 2]> = quad.iter().map(|p| [p[0].trunc(), p[1].trunc()]).collect();
    let (mut sum, mut n) = (0.0f64, 0usize);
    for y in min_y..=max_y {
        for x in min_x..=max_x {
            if inside_convex(&q, x as f64, y as f64) {
                let v = map[y * w + x];
                if v.is_finite() {
                    sum += f64::from(v);
                }
                n += 1;
            }
        }
    }
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Whether a point is inside or on a convex polygon (either winding).
fn inside_convex(poly: &[[f64; 2]], x: f64, y: f64) -> bool {
    let (mut pos, mut neg) = (false, false);
    for i in 0..poly.len() {
        let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
        let c = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]);
        pos |= c > 1e-9;
        neg |= c < -1e-9;
    }
    !(pos && neg)
}

/// Grows a rectangle by `area * ratio / perimeter` on every side, as PP-OCR's polygon
/// offsetting (Clipper, round joins) does: corners truncated to whole pixels first, each
/// side moved outward along its normal, each corner rounded by an arc of points at most
/// 0.25 pixel from the true circle, every point rounded to whole pixels. The rectangle
/// fitted around it afterwards follows the rounded sides, so this matters for its angle.
fn unclip(quad: &[[f64; 2]; 4], ratio: f64) -> Vec<[f64; 2]> {
    let area = polygon_area(quad).abs();
    let perimeter: f64 = (0..4)
        .map(|i| {
            let (a, b) = (quad[i], quad[(i + 1) % 4]);
            ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt()
        })
        .sum();
    let d = area * ratio / perimeter;
    if !d.is_finite() || d <= 0.0 {
        return quad.to_vec();
    }
    let q: Vec<[f64; 2]> = quad.iter().map(|p| [p[0].trunc(), p[1].trunc()]).collect();
    let centre = [q.iter().map(|p| p[0]).sum::<f64>() / 4.0, q.iter().map(|p| p[1]).sum::<f64>() / 4.0];
    // Arc points per radian for a chord error of at most 0.25 pixel.
    let per_full =
        (std::f64::consts::PI / (1.0 - 0.25 / d).clamp(-1.0, 1.0).acos()).min(d * std::f64::consts::PI);
    let per_rad = if per_full.is_finite() { per_full / (2.0 * std::f64::consts::PI) } else { 1.0 };
    let mut out = Vec::new();
    for i in 0..4 {
        let (prev, here, next) = (q[(i + 3) % 4], q[i], q[(i + 1) % 4]);
        let n1 = outward(prev, here, centre);
        let n2 = outward(here, next, centre);
        let (a1, a2) = (n1[1].atan2(n1[0]), n2[1].atan2(n2[0]));
        let mut turn = a2 - a1;
        while turn > std::f64::consts::PI {
            turn -= 2.0 * std::f64::consts::PI;
        }
        while turn < -std::f64::consts::PI {
            turn += 2.0 * std::f64::consts::PI;
        }
        let steps = ((per_rad * turn.abs()).round() as usize).clamp(1, 64);
        for k in 0..=steps {
            let a = a1 + turn * k as f64 / steps as f64;
            out.push([(here[0] + d * a.cos()).round(), (here[1] + d * a.sin()).round()]);
        }
    }
    out
}

/// The unit normal of edge a→b pointing away from `centre` (zero for a zero edge).
fn outward(a: [f64; 2], b: [f64; 2], centre: [f64; 2]) -> [f64; 2] {
    let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
    let len = (ex * ex + ey * ey).sqrt();
    if len == 0.0 {
        return [0.0, 0.0];
    }
    let n = [ey / len, -ex / len];
    let mid = [(a[0] + b[0]) / 2.0 - centre[0], (a[1] + b[1]) / 2.0 - centre[1]];
    if n[0] * mid[0] + n[1] * mid[1] < 0.0 { [-n[0], -n[1]] } else { n }
}

/// The shoelace area (signed).
fn polygon_area(p: &[[f64; 2]]) -> f64 {
    let mut s = 0.0;
    for i in 0..p.len() {
        let (a, b) = (p[i], p[(i + 1) % p.len()]);
        s += a[0] * b[1] - b[0] * a[1];
    }
    s / 2.0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A map of zeros with `value` in the given rectangles (x0, y0, x1, y1 inclusive).
    fn map_with(w: usize, h: usize, rects: &[(usize, usize, usize, usize)], value: f32) -> Vec<f32> {
        let mut m = vec![0.0; w * h];
        for &(x0, y0, x1, y1) in rects {
            for y in y0..=y1 {
                for x in x0..=x1 {
                    m[y * w + x] = value;
                }
            }
        }
        m
    }

    #[test]
    fn one_bar_becomes_one_box_grown_by_the_unclip_distance() {
        // A 41 x 11 bar; dilation adds a column on the right and a row below: 41 x 11
        // between pixel centres, corners (20, 10) and (61, 21). d = 451*1.6/104 = 6.94.
        // (OpenCV's float32 rectangle fit returns 19.999996 for 20 on such an exactly
        // axis-aligned bar, which PP-OCR then truncates to 19: one pixel left and up of
        // this. On real maps the rectangles are not whole numbers and the two agree, as
        // the PP-OCR end-to-end test shows.)
        let m = map_with(100, 50, &[(20, 10, 60, 20)], 0.9);
        let boxes = text_boxes(&m, 100, 50, 100, 50, &TextDetSpec::default());
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let b = &boxes[0];
        // The score is read on the undilated map over the dilated rectangle's 42 x 12
        // pixels: 451 of them at 0.9.
        assert!((b.score - 0.9 * 451.0 / 504.0).abs() < 1e-4, "{b:?}");
        assert_eq!(b.points, [[13.0, 3.0], [68.0, 3.0], [68.0, 28.0], [13.0, 28.0]], "{b:?}");
    }

    #[test]
    fn thin_regions_and_weak_regions_are_dropped() {
        let thin = map_with(100, 50, &[(10, 10, 80, 10)], 0.9);
        assert!(
            text_boxes(&thin, 100, 50, 100, 50, &TextDetSpec { dilate: false, ..Default::default() })
                .is_empty()
        );
        // Above the threshold but below the box threshold on average.
        let weak = map_with(100, 50, &[(10, 10, 80, 30)], 0.4);
        assert!(text_boxes(&weak, 100, 50, 100, 50, &TextDetSpec::default()).is_empty());
    }

    #[test]
    fn boxes_come_in_reading_order_and_scale_to_the_original_image() {
        let m = map_with(100, 60, &[(60, 5, 90, 15), (5, 7, 40, 17), (5, 40, 50, 50)], 1.0);
        let boxes = text_boxes(&m, 100, 60, 200, 120, &TextDetSpec::default());
        assert_eq!(boxes.len(), 3, "{boxes:?}");
        // Same line first (left, then right), then the next line.
        assert!(boxes[0].points[0][0] < boxes[1].points[0][0], "{boxes:?}");
        assert!(boxes[2].points[0][1] > boxes[1].points[3][1], "{boxes:?}");
        // Twice the map's size.
        assert!(boxes[2].points[2][0] > 100.0, "{boxes:?}");
    }

    #[test]
    fn a_rotated_bar_gives_a_rotated_box() {
        let (w, h) = (120, 120);
        let mut m = vec![0.0; w * h];
        for t in 0..70 {
            for s in 0..8 {
                let (x, y) = (20 + t + s, 28 + t - s);
                m[y * w + x] = 1.0;
                m[y * w + x + 1] = 1.0;
            }
        }
        let boxes = text_boxes(&m, w, h, w as u32, h as u32, &TextDetSpec::default());
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let p = boxes[0].points;
        // Not axis-aligned: the top-left and top-right differ in y by about the width.
        assert!((p[1][1] - p[0][1]).abs() > 30.0, "{p:?}");
    }

    #[test]
    fn maps_of_the_wrong_size_or_empty_give_no_boxes() {
        let spec = TextDetSpec::default();
        assert!(text_boxes(&[1.0; 10], 4, 4, 10, 10, &spec).is_empty());
        assert!(text_boxes(&[], 0, 0, 10, 10, &spec).is_empty());
        assert!(text_boxes(&[1.0; 16], 4, 4, 0, 10, &spec).is_empty());
    }

    #[test]
    fn spec_problems_are_named() {
        assert!(TextDetSpec::default().problem().is_none());
        assert!(
            TextDetSpec { threshold: 2.0, ..Default::default() }.problem().unwrap().contains("threshold")
        );
        assert!(TextDetSpec { unclip_ratio: f32::NAN, ..Default::default() }.problem().is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any map, with any values (NaN and infinities too), any original size: no
        /// panic, and every corner inside the original image.
        #[test]
        fn any_map_gives_boxes_inside_the_image(
            (w, h, map) in (1usize..40, 1usize..40).prop_flat_map(|(w, h)| {
                let v = prop_oneof![4 => 0.0f32..1.0, 1 => Just(f32::NAN), 1 => Just(f32::INFINITY), 2 => Just(0.95f32)];
                (Just(w), Just(h), proptest::collection::vec(v, w * h))
            }),
            src_w in 1u32..2000, src_h in 1u32..2000,
            dilate in any::<bool>(),
            ratio in 0.0f32..4.0,
        ) {
            let spec = TextDetSpec { dilate, unclip_ratio: ratio, ..Default::default() };
            for b in text_boxes(&map, w, h, src_w, src_h, &spec) {
                for [x, y] in b.points {
                    prop_assert!(x >= 0.0 && x <= (src_w - 1) as f32 && y >= 0.0 && y <= (src_h - 1) as f32, "{:?}", b);
                }
                prop_assert!(b.score >= spec.box_threshold);
            }
        }

        /// The smallest rectangle holds every point of the hull.
        #[test]
        fn the_rectangle_holds_its_points(pts in proptest::collection::vec((0i64..50, 0i64..50), 1..30)) {
            let hull = convex_hull(&pts);
            let r = min_area_rect(&hull).unwrap();
            for (x, y) in pts {
                let c = r.corners;
                let poly = [c[0], c[1], c[2], c[3]];
                // On a zero-width rectangle every point lies on the segment.
                if r.short > 1e-6 {
                    prop_assert!(inside_convex(&poly, x as f64, y as f64) || near_edge(&poly, x as f64, y as f64), "{:?} {:?}", (x, y), c);
                }
            }
        }
    }

    fn near_edge(poly: &[[f64; 2]], x: f64, y: f64) -> bool {
        poly.iter().any(|p| (p[0] - x).abs() < 1e-6 && (p[1] - y).abs() < 1e-6)
            || (0..poly.len()).any(|i| {
                let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
                let len = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
                len > 0.0 && (((b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])) / len).abs() < 1e-6
            })
    }
}
