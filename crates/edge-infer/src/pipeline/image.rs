//! Image pre-processing: decode PNG/JPEG, resize (stretch or letterbox), order the
//! channels, scale, normalise, lay out.

use image::{DynamicImage, ImageReader, Limits, imageops::FilterType};

use super::error::InputError;
use crate::engine::spec::{
    ChannelOrder, ImageGeometry, ImageLayout, ImageSpec, ModelSpec, PadPosition, ResizeFilter, ResizeMode,
};

/// Largest image side we decode: a bound against decompression bombs.
const MAX_SIDE: u32 = 8192;
/// Most memory the decoder may allocate for one image.
const MAX_ALLOC: u64 = 256 * 1024 * 1024;

/// Decodes an image and returns the model's input values in the spec's layout.
pub fn image_to_tensor(bytes: &[u8], spec: &ImageSpec, geo: &ImageGeometry) -> Result<Vec<f32>, InputError> {
    tensor_from_image(&decode_image(bytes)?, spec, geo)
}

/// Decodes a PNG or JPEG within the decoder's limits (the pipeline's crops are cut from
/// the decoded image).
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, InputError> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| InputError::Image { reason: e.to_string() })?;
    if reader.format().is_none() {
        return Err(InputError::Image { reason: "not a PNG or JPEG image (unknown magic bytes)".into() });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(|e| InputError::Image { reason: e.to_string() })
}

/// The frame of an encoded image without decoding its pixels (the header gives its
/// size): what detection needs to map boxes back. `None` if the header is unreadable.
pub fn image_frame(bytes: &[u8], spec: &ImageSpec, geo: &ImageGeometry) -> Option<ImageFrame> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?;
    reader.format()?;
    let (w, h) = reader.into_dimensions().ok()?;
    Some(ImageFrame { original: (w, h), placement: place(w, h, spec, geo) })
}

/// [`image_frame`] for a model's spec: `None` for a model without `[pre.image]` or
/// bytes that are not an image.
pub fn frame_for(spec: &ModelSpec, bytes: &[u8]) -> Option<ImageFrame> {
    image_frame(bytes, spec.pre.image.as_ref()?, &spec.image_geometry()?)
}

/// Where the resized image lands in the model's frame, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The frame: the model input's width and height for this image.
    pub frame: (u32, u32),
    /// The resized image's size inside the frame.
    pub size: (u32, u32),
    /// The resized image's top-left corner inside the frame.
    pub offset: (u32, u32),
}

/// Works out the frame and where an image of `w` x `h` pixels goes in it.
pub fn place(w: u32, h: u32, spec: &ImageSpec, geo: &ImageGeometry) -> Placement {
    let (w, h) = (w.max(1), h.max(1));
    let frame = geo.frame(w, h, spec.resize == ResizeMode::Stretch);
    let frame = (frame.0.max(1), frame.1.max(1));
    if spec.resize == ResizeMode::Stretch {
        return Placement { frame, size: frame, offset: (0, 0) };
    }
    // Letterbox: the largest scale at which the whole image fits, each side rounded and
    // kept within 1..=frame so that rounding never spills over.
    let scale = (f64::from(frame.0) / f64::from(w)).min(f64::from(frame.1) / f64::from(h));
    let side = |n: u32, max: u32| ((f64::from(n) * scale).round() as u32).clamp(1, max);
    let size = (side(w, frame.0), side(h, frame.1));
    let offset = match spec.position.unwrap_or_default() {
        PadPosition::Center => ((frame.0 - size.0) / 2, (frame.1 - size.1) / 2),
        PadPosition::TopLeft => (0, 0),
    };
    Placement { frame, size, offset }
}

/// The model's input values for a decoded image: resized as the spec says, in the
/// spec's channel order, `(pixel * scale - mean) / std`, laid out as `nchw` or `nhwc`.
/// Padding is the `pad` pixel value put through the same arithmetic. An image whose
/// frame (with both sides varying) is outside the input's ranges is refused.
pub fn tensor_from_image(
    img: &DynamicImage,
    spec: &ImageSpec,
    geo: &ImageGeometry,
) -> Result<Vec<f32>, InputError> {
    if let Some(reason) = geo.misfit(img.width(), img.height(), spec.resize == ResizeMode::Stretch) {
        return Err(InputError::ImageSize { reason });
    }
    let p = place(img.width(), img.height(), spec, geo);
    let (fw, fh) = (p.frame.0 as usize, p.frame.1 as usize);
    let c = geo.channels;
    let same = (img.width(), img.height()) == p.size;
    let pixels: Vec<u8> = match spec.filter.unwrap_or_default() {
        _ if same => raw_pixels(img, c),
        ResizeFilter::Triangle => raw_pixels(&img.resize_exact(p.size.0, p.size.1, FilterType::Triangle), c),
        ResizeFilter::Linear => {
            let from = (img.width() as usize, img.height() as usize);
            resize_linear(&raw_pixels(img, c), from, (p.size.0 as usize, p.size.1 as usize), c)
        }
    };
    let norm = |ch: usize, raw: f32| {
        let mean = spec.mean.get(ch).copied().unwrap_or(0.0);
        let std = spec.std.get(ch).copied().unwrap_or(1.0);
        (raw * spec.scale - mean) / std
    };
    let pad = spec.pad.unwrap_or(0.0);
    let (iw, ih) = (p.size.0 as usize, p.size.1 as usize);
    let (ox, oy) = (p.offset.0 as usize, p.offset.1 as usize);
    let mut out = vec![0f32; fw * fh * c];
    for ch in 0..c {
        // The decoded image is RGB; a BGR model's channel 0 is the image's blue.
        let src = if spec.channel_order == ChannelOrder::Bgr && c == 3 { 2 - ch } else { ch };
        let padded = norm(ch, pad);
        for y in 0..fh {
            for x in 0..fw {
                let inside = x >= ox && x < ox + iw && y >= oy && y < oy + ih;
                let value = if inside {
                    norm(ch, f32::from(pixels[((y - oy) * iw + (x - ox)) * c + src]))
                } else {
                    padded
                };
                let ix = match spec.layout {
                    ImageLayout::Nchw => ch * fh * fw + y * fw + x,
                    ImageLayout::Nhwc => (y * fw + x) * c + ch,
                };
                out[ix] = value;
            }
        }
    }
    Ok(out)
}

/// The image's pixels, interleaved: grey for one channel, else RGB.
fn raw_pixels(img: &DynamicImage, channels: usize) -> Vec<u8> {
    if channels == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() }
}

/// For each output index along an axis of `n_in` pixels resized to `n_out`: the two
/// source indices and the weight of the second, as OpenCV's `INTER_LINEAR` takes them
/// (pixel centres aligned, no antialiasing, clamped at the edges).
fn linear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f64 / n_out.max(1) as f64;
    (0..n_out)
        .map(|i| {
            let src = (i as f64 + 0.5) * scale - 0.5;
            let mut i0 = src.floor();
            let mut frac = (src - i0) as f32;
            if i0 < 0.0 {
                (i0, frac) = (0.0, 0.0);
            }
            let last = n_in.saturating_sub(1);
            // `as` saturates; the clamp keeps both taps inside the image.
            let i0 = (i0 as usize).min(last);
            if i0 >= last {
                frac = 0.0;
            }
            (i0, (i0 + 1).min(last), frac)
        })
        .collect()
}

/// Resizes interleaved `channels`-channel pixels from `from` to `to` (width, height)
/// with OpenCV's `INTER_LINEAR`, rounding to the nearest byte as it does.
fn resize_linear(src: &[u8], from: (usize, usize), to: (usize, usize), channels: usize) -> Vec<u8> {
    let (xs, ys) = (linear_taps(from.0, to.0), linear_taps(from.1, to.1));
    let px = |x: usize, y: usize, ch: usize| f32::from(src[(y * from.0 + x) * channels + ch]);
    let mut out = Vec::with_capacity(to.0 * to.1 * channels);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            for ch in 0..channels {
                let top = px(x0, y0, ch) * (1.0 - fx) + px(x1, y0, ch) * fx;
                let bottom = px(x0, y1, ch) * (1.0 - fx) + px(x1, y1, ch) * fx;
                let v = top * (1.0 - fy) + bottom * fy;
                out.push((v + 0.5).floor().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

/// An image's size before pre-processing and where it landed in the model's frame:
/// what it takes to map boxes back to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFrame {
    /// The original image's width and height, in pixels.
    pub original: (u32, u32),
    /// Where the resized image sits in the model input.
    pub placement: Placement,
}

impl ImageFrame {
    /// Maps a box in model-input pixels to original-image pixels, clipped to the image.
    /// Uses the resize's scale, as YOLO's own code does, rather than the rounded size
    /// of the resized image (which would be off by up to half a pixel per side).
    pub fn to_original(&self, b: [f32; 4]) -> [f32; 4] {
        let p = &self.placement;
        let (ow, oh) = (self.original.0.max(1) as f32, self.original.1.max(1) as f32);
        let gain = if p.size == p.frame {
            // Stretched (or letterboxed to fill the frame): each axis has its own scale.
            None
        } else {
            Some((p.frame.0 as f32 / ow).min(p.frame.1 as f32 / oh))
        };
        let (sx, sy) = match gain {
            Some(g) if g > 0.0 => (1.0 / g, 1.0 / g),
            _ => (ow / p.size.0.max(1) as f32, oh / p.size.1.max(1) as f32),
        };
        let (dx, dy) = (p.offset.0 as f32, p.offset.1 as f32);
        [
            ((b[0] - dx) * sx).clamp(0.0, ow),
            ((b[1] - dy) * sy).clamp(0.0, oh),
            ((b[2] - dx) * sx).clamp(0.0, ow),
            ((b[3] - dy) * sy).clamp(0.0, oh),
        ]
    }
}

#[cfg(test)]
mod linear_tests {
    use super::*;

    /// OpenCV's INTER_LINEAR on known values: halving averages pixel pairs (centres
    /// aligned), doubling blends neighbours 3:1 and repeats the edges.
    #[test]
    fn linear_resize_follows_opencv() {
        assert_eq!(resize_linear(&[0, 100, 200, 250], (4, 1), (2, 1), 1), [50, 225]);
        assert_eq!(resize_linear(&[0, 100], (2, 1), (4, 1), 1), [0, 25, 75, 100]);
        // Two channels stay apart, and a 1x1 image fills any size.
        assert_eq!(resize_linear(&[10, 20], (1, 1), (2, 2), 2), [10, 20, 10, 20, 10, 20, 10, 20]);
    }
}
