//! Mel filterbank and DCT matrices, built once when a front end is made.

use crate::engine::dsp_spec::{MelNorm, MelScale};

/// Hz to mel.
pub fn hz_to_mel(f: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + f / 700.0).log10(),
        MelScale::Slaney => {
            // Linear (200/3 Hz a mel) below 1 kHz, logarithmic above: 27 mels an
            // octave-and-a-bit (a factor 6.4).
            let f_sp = 200.0 / 3.0;
            if f < 1000.0 { f / f_sp } else { 15.0 + (f / 1000.0).ln() / (6.4f64.ln() / 27.0) }
        }
    }
}

/// Mel to Hz (the inverse of [`hz_to_mel`]).
pub fn mel_to_hz(m: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(m / 2595.0) - 1.0),
        MelScale::Slaney => {
            let f_sp = 200.0 / 3.0;
            if m < 15.0 { m * f_sp } else { 1000.0 * ((m - 15.0) * (6.4f64.ln() / 27.0)).exp() }
        }
    }
}

/// One triangular filter, stored sparsely: the weights of the bins from `start`.
#[derive(Debug, Clone)]
pub struct Band {
    /// First FFT bin with a weight.
    pub start: usize,
    /// Weights of bins `start..start + weights.len()`.
    pub weights: Vec<f32>,
}

/// The triangular filters over `n_fft / 2 + 1` bins, as librosa's `filters.mel` builds
/// them. Returns the index of the first empty band on failure (too many bands for the
/// FFT's resolution).
#[allow(clippy::too_many_arguments)]
pub fn filterbank(
    rate: f64,
    n_fft: usize,
    mels: usize,
    fmin: f64,
    fmax: f64,
    scale: MelScale,
    norm: MelNorm,
) -> Result<Vec<Band>, usize> {
    let bins = n_fft / 2 + 1;
    let freqs: Vec<f64> = (0..bins).map(|k| k as f64 * rate / n_fft as f64).collect();
    let (lo, hi) = (hz_to_mel(fmin, scale), hz_to_mel(fmax, scale));
    let points: Vec<f64> =
        (0..mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (mels + 1) as f64, scale)).collect();
    let mut out = Vec::with_capacity(mels);
    for m in 0..mels {
        let (left, centre, right) = (points[m], points[m + 1], points[m + 2]);
        let gain = match norm {
            MelNorm::Slaney => 2.0 / (right - left),
            MelNorm::None => 1.0,
        };
        let mut start = None;
        let mut weights = Vec::new();
        for (k, f) in freqs.iter().enumerate() {
            let rise = (f - left) / (centre - left);
            let fall = (right - f) / (right - centre);
            let w = rise.min(fall).max(0.0) * gain;
            if w > 0.0 {
                let s = *start.get_or_insert(k);
                weights.resize(k - s, 0.0);
                weights.push(w as f32);
            }
        }
        match start {
            Some(start) => out.push(Band { start, weights }),
            None => return Err(m),
        }
    }
    Ok(out)
}

/// The orthonormal DCT-II matrix keeping `keep` of `n` coefficients, row-major
/// (`keep` rows of `n`): what `scipy.fft.dct(x, type=2, norm="ortho")[:keep]` computes.
pub fn dct_matrix(n: usize, keep: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * keep);
    for k in 0..keep {
        let s = if k == 0 { (1.0 / n as f64).sqrt() } else { (2.0 / n as f64).sqrt() };
        for i in 0..n {
            let angle = std::f64::consts::PI * k as f64 * (2 * i + 1) as f64 / (2 * n) as f64;
            out.push((s * angle.cos()) as f32);
        }
    }
    out
}

/// The periodic window of `len` samples centred in `n_fft` (zeros around it), as
/// librosa pads a `win_length` window to `n_fft`.
pub fn window(kind: crate::engine::dsp_spec::WindowFn, len: usize, n_fft: usize) -> Vec<f32> {
    use crate::engine::dsp_spec::WindowFn;
    let mut out = vec![0.0; n_fft];
    let pad = (n_fft - len) / 2;
    for i in 0..len {
        let phase = 2.0 * std::f64::consts::PI * i as f64 / len as f64;
        out[pad + i] = match kind {
            WindowFn::Hann => 0.5 - 0.5 * phase.cos(),
            WindowFn::Hamming => 0.54 - 0.46 * phase.cos(),
            WindowFn::Rect => 1.0,
        } as f32;
    }
    out
}
