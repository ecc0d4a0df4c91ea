//! Resampling a recording to the model's rate: band-limited (windowed-sinc)
//! interpolation, so that downsampling does not fold high frequencies into the band the
//! model hears.

use super::{DspError, err};

/// The largest ratio between the two rates, either way: beyond it the filter would be
/// hundreds of taps long, and a recording that far from the model's rate is more likely
/// the wrong file than one worth converting.
pub const MAX_RATIO: u32 = 16;

/// Zero crossings of the sinc on each side of a sample, at the output's band edge.
const ZEROS: f64 = 16.0;

/// `samples` at `from` Hz brought to `to` Hz: `floor(len * to / from)` samples.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, DspError> {
    if from == 0 || to == 0 {
        return Err(err(
            "resample",
            format!("cannot resample from {from} Hz to {to} Hz: a rate must be above 0"),
        ));
    }
    if from == to {
        return Ok(samples.to_vec());
    }
    let (hi, lo) = (from.max(to), from.min(to));
    if hi > lo.saturating_mul(MAX_RATIO) {
        return Err(err(
            "resample",
            format!(
                "the recording is at {from} Hz and the model takes {to} Hz, a ratio above {MAX_RATIO}; record at a rate nearer {to} Hz or convert the file first (sox in.wav -r {to} out.wav)"
            ),
        ));
    }
    let step = f64::from(from) / f64::from(to);
    // Downsampling lowers the cut-off to the new Nyquist frequency.
    let cutoff = (f64::from(to) / f64::from(from)).min(1.0);
    let half = ZEROS / cutoff;
    let out_len = (samples.len() as u128 * u128::from(to) / u128::from(from)) as usize;
    let mut out = Vec::with_capacity(out_len);
    for i in 0..out_len {
        let t = i as f64 * step;
        let first = (t - half).ceil().max(0.0) as usize;
        let last = ((t + half).floor() as usize).min(samples.len().saturating_sub(1));
        let mut acc = 0.0f64;
        for (j, x) in samples.iter().enumerate().take(last + 1).skip(first) {
            let d = t - j as f64;
            let x_c = d * cutoff;
            let sinc = if x_c.abs() < 1e-12 {
                1.0
            } else {
                (std::f64::consts::PI * x_c).sin() / (std::f64::consts::PI * x_c)
            };
            // Hann taper over the filter's span.
            let w = 0.5 + 0.5 * (std::f64::consts::PI * d / half).cos();
            acc += f64::from(*x) * cutoff * sinc * w;
        }
        out.push(acc as f32);
    }
    Ok(out)
}

/// The rate a model takes its samples at (`pre.sample_rate`), and whether a recording
/// at another rate is converted (`pre.dsp.resample`, on by default with a front end) or
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRate {
    /// The model's rate, in Hz.
    pub hz: u32,
    /// Convert other rates rather than refuse them.
    pub resample: bool,
}

impl ModelRate {
    /// The rate rule of a spec; `None` when it names no rate.
    pub fn of(spec: &crate::engine::spec::ModelSpec) -> Option<ModelRate> {
        let hz = spec.pre.sample_rate?;
        Some(ModelRate { hz, resample: spec.pre.dsp.as_ref().is_some_and(|d| d.resample) })
    }

    /// `samples` recorded at `rate` Hz, at the model's rate; the reason when they cannot
    /// be (`model` names the model in it).
    pub fn convert(&self, rate: u32, samples: Vec<f32>, model: &str) -> Result<Vec<f32>, String> {
        if rate == self.hz {
            return Ok(samples);
        }
        if !self.resample {
            return Err(format!(
                "it is sampled at {rate} Hz but model `{model}` takes {} Hz (pre.sample_rate in its model.toml); \
                 resample it first, for example `sox IN.wav -r {} OUT.wav`",
                self.hz, self.hz
            ));
        }
        resample(&samples, rate, self.hz).map_err(|e| format!("model `{model}`: {}", e.message))
    }
}
