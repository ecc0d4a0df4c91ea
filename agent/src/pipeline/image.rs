//! Image pre-processing: decode PNG/JPEG, resize, scale, normalise, lay out.

use image::{ImageReader, Limits, imageops::FilterType};

use super::error::InputError;
use crate::engine::spec::{ImageLayout, ImageSpec};

/// Largest image side we decode: a bound against decompression bombs.
const MAX_SIDE: u32 = 8192;
/// Most memory the decoder may allocate for one image.
const MAX_ALLOC: u64 = 256 * 1024 * 1024;

/// Decodes an image and returns the model's input values in the spec's layout.
pub fn image_to_tensor(bytes: &[u8], spec: &ImageSpec) -> Result<Vec<f32>, InputError> {
    let err = |e: image::ImageError| InputError::Image { reason: e.to_string() };
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
    let mut img = reader.decode().map_err(err)?;
    if img.width() != spec.width || img.height() != spec.height {
        img = img.resize_exact(spec.width, spec.height, FilterType::Triangle);
    }
    let (w, h, c) = (spec.width as usize, spec.height as usize, spec.channels);
    let pixels: Vec<u8> = if c == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() };
    let mut out = vec![0f32; w * h * c];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let raw = f32::from(pixels[(y * w + x) * c + ch]) * spec.scale;
                let mean = spec.mean.get(ch).copied().unwrap_or(0.0);
                let std = spec.std.get(ch).copied().unwrap_or(1.0);
                let ix = match spec.layout {
                    ImageLayout::Nchw => ch * h * w + y * w + x,
                    ImageLayout::Nhwc => (y * w + x) * c + ch,
                };
                out[ix] = (raw - mean) / std;
            }
        }
    }
    Ok(out)
}
