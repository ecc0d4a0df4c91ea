//! Sensor DSP before the model, declared in `[pre.dsp]`: spectrogram, mel filterbank,
//! log-mel and MFCC for audio; RMS, spectral peaks and band powers for accelerometer
//! windows; resampling a recording to the model's rate.
//!
//! A [`Dsp`] is built once from the spec (building it is the spec's check); a
//! [`DspStream`] holds one stream's state: the samples of the frame being filled and
//! the features of the last `frames` frames. Each frame is computed once, however many
//! model inputs it appears in, and a stream's memory is bounded by one frame of samples
//! and one model input of features.

mod mel;
mod resample;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use super::window::Window;
use crate::engine::dsp_spec::{DspKind, DspSpec, FeatureLayout, LogKind, SpectrumScale};
pub use mel::{dct_matrix, filterbank, hz_to_mel, mel_to_hz};
pub use resample::{MAX_RATIO, ModelRate, resample};

/// Largest FFT a spec may ask for: 65536 bins is beyond any sensor model, and bounds the
/// memory a spec can make a stream hold.
pub const MAX_FFT: usize = 1 << 16;

/// A `[pre.dsp]` parameter that cannot work, with the key it is about.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("pre.dsp.{key}: {message}")]
pub struct DspError {
    /// The key under `[pre.dsp]` (or `sample_rate` for `pre.sample_rate`).
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> DspError {
    DspError { key, message: message.into() }
}

/// A front end built from its spec: window, FFT plan, filterbank and DCT matrices.
pub struct Dsp {
    spec: DspSpec,
    rate: f64,
    n_fft: usize,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
    bands: Vec<mel::Band>,
    dct: Vec<f32>,
    features: usize,
}

impl std::fmt::Debug for Dsp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dsp").field("spec", &self.spec).field("features", &self.features).finish()
    }
}

impl Dsp {
    /// Builds the front end of `spec` for samples at `rate` Hz (`pre.sample_rate`),
    /// checking every parameter.
    pub fn new(spec: &DspSpec, rate: Option<u32>) -> Result<Dsp, DspError> {
        let n_fft = spec.fft_size();
        if spec.frame == 0 {
            return Err(err("frame", "is 0; give the samples one frame covers (400 is 25 ms at 16 kHz)"));
        }
        if spec.hop == 0 {
            return Err(err("hop", "is 0; give the samples between frames (160 is 10 ms at 16 kHz)"));
        }
        if n_fft < spec.frame {
            return Err(err(
                "n_fft",
                format!("is {n_fft}, shorter than frame ({}); use n_fft >= frame", spec.frame),
            ));
        }
        if n_fft > MAX_FFT {
            return Err(err("n_fft", format!("{n_fft} is above the largest FFT, {MAX_FFT}")));
        }
        if spec.frames == 0 {
            return Err(err("frames", "is 0; give the frames one model input holds"));
        }
        if spec.frame_hop == 0 {
            return Err(err("frame_hop", "is 0; give the frames between model inputs (1: every frame)"));
        }
        if !(spec.scale.is_finite() && spec.offset.is_finite()) {
            return Err(err(
                "scale",
                format!("scale {} and offset {} must be finite", spec.scale, spec.offset),
            ));
        }
        if !(spec.log_floor.is_finite() && spec.log_floor > 0.0) {
            return Err(err(
                "log_floor",
                format!("is {}; give a small positive number such as 1e-10", spec.log_floor),
            ));
        }
        if !(spec.log_offset.is_finite() && spec.log_offset >= 0.0) {
            return Err(err(
                "log_offset",
                format!("is {}; give 0 or a small positive number", spec.log_offset),
            ));
        }
        let bins = n_fft / 2 + 1;
        let needs_rate = matches!(spec.kind, DspKind::Mel | DspKind::Mfcc) || spec.peaks > 0;
        let rate = match rate {
            Some(r) if r > 0 => f64::from(r),
            Some(_) => return Err(err("sample_rate", "pre.sample_rate is 0; write the model's rate in Hz")),
            None if needs_rate => {
                return Err(err(
                    "sample_rate",
                    "frequencies need the samples' rate: add pre.sample_rate (the rate the model was trained at, in Hz)",
                ));
            }
            None => 1.0,
        };
        if spec.axes == 0 || (spec.axes > 1 && spec.kind != DspKind::Spectral) {
            return Err(err(
                "axes",
                format!(
                    "is {}; use 1, or several only with kind = \"spectral\" (interleaved x, y, z)",
                    spec.axes
                ),
            ));
        }
        let key_only = |key: &'static str, set: bool, kinds: &str| {
            if set { Err(err(key, format!("applies only to kind = {kinds}; remove it"))) } else { Ok(()) }
        };
        let mel_kind = matches!(spec.kind, DspKind::Mel | DspKind::Mfcc);
        key_only("mels", spec.mels.is_some() && !mel_kind, "\"mel\" or \"mfcc\"")?;
        key_only("mfcc", spec.mfcc.is_some() && spec.kind != DspKind::Mfcc, "\"mfcc\"")?;
        key_only("fmax", spec.fmax.is_some() && !mel_kind, "\"mel\" or \"mfcc\"")?;
        key_only("peaks", spec.peaks > 0 && spec.kind != DspKind::Spectral, "\"spectral\"")?;
        key_only("bins", spec.bins > 0 && spec.kind != DspKind::Spectral, "\"spectral\"")?;
        let mut bands = Vec::new();
        let mut dct = Vec::new();
        let features = match spec.kind {
            DspKind::Spectrogram => bins,
            DspKind::Mel | DspKind::Mfcc => {
                let Some(mels) = spec.mels.filter(|m| *m > 0) else {
                    return Err(err(
                        "mels",
                        "is missing or 0; give the number of mel bands (40 or 64 are common)",
                    ));
                };
                let nyquist = rate / 2.0;
                let fmin = f64::from(spec.fmin);
                let fmax = spec.fmax.map_or(nyquist, f64::from);
                if !(fmin >= 0.0 && fmin.is_finite()) {
                    return Err(err("fmin", format!("is {fmin}; give a frequency from 0 Hz")));
                }
                if !(fmax > fmin && fmax <= nyquist) {
                    return Err(err(
                        "fmax",
                        format!(
                            "is {fmax} Hz; it must be above fmin ({fmin} Hz) and at most half the sample rate ({nyquist} Hz)"
                        ),
                    ));
                }
                bands = filterbank(rate, n_fft, mels, fmin, fmax, spec.mel_scale, spec.mel_norm).map_err(|band| {
                    err(
                        "mels",
                        format!(
                            "mel band {band} of {mels} falls between two FFT bins ({:.1} Hz apart) and would always be 0; use fewer mels or a larger n_fft",
                            rate / n_fft as f64
                        ),
                    )
                })?;
                if spec.kind == DspKind::Mfcc {
                    let Some(keep) = spec.mfcc.filter(|k| (1..=mels).contains(k)) else {
                        return Err(err(
                            "mfcc",
                            format!("give 1 to mels ({mels}) cepstral coefficients to keep"),
                        ));
                    };
                    if spec.log.is_none() {
                        return Err(err(
                            "log",
                            "kind = \"mfcc\" takes the DCT of log-mel energies: add log = \"db\" (librosa) or \"ln\"",
                        ));
                    }
                    dct = dct_matrix(mels, keep);
                    keep
                } else {
                    mels
                }
            }
            DspKind::Spectral => {
                if spec.peaks == 0 && spec.bins == 0 {
                    // RMS alone needs no FFT; still allowed, but say so if that was meant.
                }
                if spec.bins > bins - 1 {
                    return Err(err(
                        "bins",
                        format!(
                            "is {}, more than the {} non-DC FFT bins; use at most {}",
                            spec.bins,
                            bins - 1,
                            bins - 1
                        ),
                    ));
                }
                if spec.peaks > bins {
                    return Err(err("peaks", format!("is {}, more than the {bins} FFT bins", spec.peaks)));
                }
                spec.axes * (1 + 2 * spec.peaks + spec.bins)
            }
        };
        if features.checked_mul(spec.frames).is_none_or(|n| n > 1 << 26) {
            return Err(err("frames", format!("{} frames of {features} features is too large", spec.frames)));
        }
        let fft = FftPlanner::new().plan_fft_forward(n_fft);
        Ok(Dsp {
            spec: spec.clone(),
            rate,
            n_fft,
            window: mel::window(spec.window, spec.frame, n_fft),
            fft,
            bands,
            dct,
            features,
        })
    }

    /// Features a frame yields.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Values of one model input: `frames * features`.
    pub fn input_len(&self) -> usize {
        self.features * self.spec.frames
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &DspSpec {
        &self.spec
    }

    /// Interleaved samples one frame reads.
    fn frame_len(&self) -> usize {
        self.n_fft * self.spec.axes
    }

    /// Every frame of a whole signal, concatenated (`frames` and `frame_hop` do not
    /// apply): what a batch reference such as librosa computes with `center=False`.
    pub fn frames_of(&self, samples: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        let mut scratch = Scratch::default();
        let (len, step) = (self.frame_len(), self.spec.hop * self.spec.axes);
        let mut start = 0;
        while start + len <= samples.len() {
            self.frame(&samples[start..start + len], &mut out, &mut scratch);
            start += step;
        }
        out
    }

    /// Appends the features of one frame of `frame_len()` interleaved samples.
    fn frame(&self, samples: &[f32], out: &mut Vec<f32>, s: &mut Scratch) {
        let axes = self.spec.axes;
        for axis in 0..axes {
            let mean = if self.spec.kind == DspKind::Spectral {
                // Vibration features ignore the constant part (gravity, sensor offset).
                samples.iter().skip(axis).step_by(axes).map(|v| f64::from(*v)).sum::<f64>()
                    / self.n_fft as f64
            } else {
                0.0
            };
            s.buf.clear();
            s.buf.extend(
                samples
                    .iter()
                    .skip(axis)
                    .step_by(axes)
                    .zip(&self.window)
                    .map(|(x, w)| Complex::new((f64::from(*x) - mean) as f32 * w, 0.0)),
            );
            s.scratch.resize(self.fft.get_inplace_scratch_len(), Complex::default());
            self.fft.process_with_scratch(&mut s.buf, &mut s.scratch);
            s.power.clear();
            s.power.extend(s.buf[..self.n_fft / 2 + 1].iter().map(|c| match self.spec.spectrum {
                SpectrumScale::Power => c.norm_sqr(),
                SpectrumScale::Magnitude => c.norm(),
            }));
            match self.spec.kind {
                DspKind::Spectrogram => {
                    let start = out.len();
                    out.extend(s.power.iter().map(|p| self.log(*p)));
                    self.affine(&mut out[start..]);
                }
                DspKind::Mel | DspKind::Mfcc => {
                    s.mel.clear();
                    s.mel.extend(self.bands.iter().map(|b| {
                        let e: f32 = b.weights.iter().zip(&s.power[b.start..]).map(|(w, p)| w * p).sum();
                        self.log(e)
                    }));
                    let start = out.len();
                    if self.spec.kind == DspKind::Mfcc {
                        let n = s.mel.len();
                        out.extend(
                            self.dct
                                .chunks_exact(n)
                                .map(|row| row.iter().zip(&s.mel).map(|(a, b)| a * b).sum::<f32>()),
                        );
                    } else {
                        out.extend_from_slice(&s.mel);
                    }
                    self.affine(&mut out[start..]);
                }
                DspKind::Spectral => {
                    let start = out.len();
                    let sq: f64 =
                        samples.iter().skip(axis).step_by(axes).map(|v| (f64::from(*v) - mean).powi(2)).sum();
                    out.push((sq / self.n_fft as f64).sqrt() as f32);
                    self.peaks(&s.power, out);
                    let m = s.power.len() - 1;
                    for j in 0..self.spec.bins {
                        let (a, b) = (1 + j * m / self.spec.bins, 1 + (j + 1) * m / self.spec.bins);
                        out.push(self.log(s.power[a..b].iter().sum()));
                    }
                    self.affine(&mut out[start..]);
                }
            }
        }
    }

    /// The `peaks` highest local maxima of the spectrum above DC, as (frequency in Hz,
    /// height) pairs, highest first; zeros when there are fewer.
    fn peaks(&self, power: &[f32], out: &mut Vec<f32>) {
        if self.spec.peaks == 0 {
            return;
        }
        let last = power.len() - 1;
        let mut found: Vec<(usize, f32)> = (1..=last)
            .filter(|&k| power[k] > power[k - 1] && (k == last || power[k] >= power[k + 1]))
            .map(|k| (k, power[k]))
            .collect();
        found.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for i in 0..self.spec.peaks {
            match found.get(i) {
                Some((k, p)) => {
                    out.push((*k as f64 * self.rate / self.n_fft as f64) as f32);
                    out.push(self.log(*p));
                }
                None => out.extend([0.0, 0.0]),
            }
        }
    }

    fn log(&self, x: f32) -> f32 {
        let Some(kind) = self.spec.log else { return x };
        let x = (x + self.spec.log_offset).max(self.spec.log_floor);
        match kind {
            LogKind::Ln => x.ln(),
            LogKind::Log10 => x.log10(),
            LogKind::Db => 10.0 * x.log10(),
        }
    }

    fn affine(&self, values: &mut [f32]) {
        if self.spec.scale != 1.0 || self.spec.offset != 0.0 {
            values.iter_mut().for_each(|v| *v = *v * self.spec.scale + self.spec.offset);
        }
    }
}

/// Buffers reused from frame to frame.
#[derive(Default)]
struct Scratch {
    buf: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    power: Vec<f32>,
    mel: Vec<f32>,
}

impl std::fmt::Debug for DspStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DspStream")
            .field("frames_done", &self.frames_done)
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// One stream's front end: cuts its samples into frames, computes each frame once, and
/// hands out a model input every `frame_hop` frames once `frames` are there.
pub struct DspStream {
    dsp: Arc<Dsp>,
    /// Samples of the frame being filled (at most one frame's worth).
    pending: VecDeque<f32>,
    /// Samples to drop before the next frame starts (when `hop` exceeds the frame).
    skip: usize,
    /// Features of the last `frames` frames, oldest first.
    recent: VecDeque<Vec<f32>>,
    frames_done: u64,
    next_index: u64,
    scratch: Scratch,
}

impl DspStream {
    /// A stream at its start.
    pub fn new(dsp: Arc<Dsp>) -> DspStream {
        let frames = dsp.spec.frames;
        DspStream {
            pending: VecDeque::with_capacity(dsp.frame_len()),
            dsp,
            skip: 0,
            recent: VecDeque::with_capacity(frames),
            frames_done: 0,
            next_index: 0,
            scratch: Scratch::default(),
        }
    }

    /// Feeds interleaved samples; returns the model inputs they complete, in order.
    /// `offset` of each is the per-axis sample index where its first frame starts.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Window> {
        let dsp = self.dsp.clone();
        let (len, step) = (dsp.frame_len(), dsp.spec.hop * dsp.spec.axes);
        let mut out = Vec::new();
        let mut rest = samples;
        while !rest.is_empty() {
            let skip = self.skip.min(rest.len());
            rest = &rest[skip..];
            self.skip -= skip;
            let take = (len - self.pending.len()).min(rest.len());
            self.pending.extend(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() < len {
                break;
            }
            let mut features = if self.recent.len() == dsp.spec.frames {
                // Reuse the oldest frame's allocation.
                let mut v = self.recent.pop_front().unwrap_or_default();
                v.clear();
                v
            } else {
                Vec::with_capacity(dsp.features)
            };
            // One frame's samples in one slice (rotated in place when the ring wrapped).
            dsp.frame(self.pending.make_contiguous(), &mut features, &mut self.scratch);
            self.recent.push_back(features);
            self.frames_done += 1;
            if step <= len {
                self.pending.drain(..step);
            } else {
                self.pending.clear();
                self.skip = step - len;
            }
            let frames = dsp.spec.frames as u64;
            if self.frames_done >= frames
                && (self.frames_done - frames).is_multiple_of(dsp.spec.frame_hop as u64)
            {
                let first = self.frames_done - frames;
                out.push(Window {
                    data: self.input(),
                    index: self.next_index,
                    offset: first * dsp.spec.hop as u64,
                });
                self.next_index += 1;
            }
        }
        out
    }

    /// The model input of the last `frames` frames, in the spec's layout.
    fn input(&self) -> Vec<f32> {
        match self.dsp.spec.layout {
            FeatureLayout::TimeMajor => self.recent.iter().flatten().copied().collect(),
            FeatureLayout::FeatureMajor => {
                let f = self.dsp.features;
                (0..f).flat_map(|i| self.recent.iter().map(move |frame| frame[i])).collect()
            }
        }
    }

    /// Samples held for the frame being filled.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Frames computed since the stream started.
    pub fn frames_done(&self) -> u64 {
        self.frames_done
    }
}
