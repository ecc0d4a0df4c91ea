//! `[pre.dsp]`: the signal processing between raw samples and the model's data input
//! (spectrogram, mel filterbank, log-mel, MFCC for audio; spectral features for
//! accelerometer windows). The spec's checks (`spec_check`) build the front end once at
//! load, so every parameter error names its key; this module only declares the table.

use serde::{Deserialize, Serialize};

/// What the front end computes for each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DspKind {
    /// The power (or magnitude) of each FFT bin, `n_fft / 2 + 1` values a frame.
    Spectrogram,
    /// The spectrogram through a mel filterbank: `mels` values a frame (log with `log`).
    Mel,
    /// Mel-frequency cepstral coefficients: the DCT-II (orthonormal) of the log-mel
    /// frame, `mfcc` values a frame.
    Mfcc,
    /// Per axis: RMS, the `peaks` highest spectral peaks (frequency, height) and the
    /// spectrum's power in `bins` equal bands; for accelerometer and vibration windows.
    Spectral,
}

/// The analysis window applied to each frame (periodic, as `scipy.signal.get_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WindowFn {
    /// Hann: `0.5 - 0.5 cos(2 pi n / N)`.
    #[default]
    Hann,
    /// Hamming: `0.54 - 0.46 cos(2 pi n / N)`.
    Hamming,
    /// No taper (all ones).
    Rect,
}

/// Whether a bin holds `|X|^2` or `|X|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpectrumScale {
    /// `|X|^2` (librosa's `power = 2`).
    #[default]
    Power,
    /// `|X|` (`power = 1`).
    Magnitude,
}

/// The mel scale's formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MelScale {
    /// Slaney's (librosa's default): linear below 1 kHz, logarithmic above.
    #[default]
    Slaney,
    /// HTK's: `2595 log10(1 + f / 700)`.
    Htk,
}

/// How each mel filter is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MelNorm {
    /// Each triangle divided by its width in Hz over 2 (librosa's default).
    #[default]
    Slaney,
    /// Triangles of peak 1.
    None,
}

/// The logarithm applied to each feature (after the filterbank, before the DCT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    /// Natural logarithm.
    Ln,
    /// Base-10 logarithm.
    Log10,
    /// Decibels: `10 log10(x)`.
    Db,
}

/// How a model input lays out its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureLayout {
    /// `[frames, features]`: one frame after the other.
    #[default]
    TimeMajor,
    /// `[features, frames]`: one feature's track after the other.
    FeatureMajor,
}

/// `[pre.dsp]` as written in `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DspSpec {
    /// What each frame becomes.
    pub kind: DspKind,
    /// Samples the window covers (librosa's `win_length`).
    pub frame: usize,
    /// Samples between the starts of consecutive frames.
    pub hop: usize,
    /// FFT size, at least `frame` (default `frame`); the window sits centred in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_fft: Option<usize>,
    /// The analysis window.
    #[serde(default)]
    pub window: WindowFn,
    /// Power or magnitude bins.
    #[serde(default)]
    pub spectrum: SpectrumScale,
    /// Mel bands (`kind = "mel"` and `"mfcc"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mels: Option<usize>,
    /// Lowest frequency of the filterbank, in Hz.
    #[serde(default)]
    pub fmin: f32,
    /// Highest frequency of the filterbank, in Hz (default: half the sample rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmax: Option<f32>,
    /// Mel scale formula.
    #[serde(default)]
    pub mel_scale: MelScale,
    /// Filter normalisation.
    #[serde(default)]
    pub mel_norm: MelNorm,
    /// Logarithm of each feature (required by `kind = "mfcc"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogKind>,
    /// Values below this are raised to it before the logarithm (default 1e-10).
    #[serde(default = "default_floor")]
    pub log_floor: f32,
    /// Added to each value before the logarithm (default 0; `log(x + 1e-6)` models).
    #[serde(default)]
    pub log_offset: f32,
    /// Cepstral coefficients kept (`kind = "mfcc"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfcc: Option<usize>,
    /// Every feature is multiplied by this last ...
    #[serde(default = "default_one")]
    pub scale: f32,
    /// ... and this is added (for models trained on shifted features).
    #[serde(default)]
    pub offset: f32,
    /// Interleaved channels in the samples (`kind = "spectral"`: x, y, z of an
    /// accelerometer is 3); each is analysed on its own.
    #[serde(default = "default_axes")]
    pub axes: usize,
    /// Spectral peaks reported per axis (`kind = "spectral"`).
    #[serde(default)]
    pub peaks: usize,
    /// Equal-width bands of spectral power reported per axis (`kind = "spectral"`).
    #[serde(default)]
    pub bins: usize,
    /// Frames in one model input.
    pub frames: usize,
    /// Frames between consecutive model inputs (default 1: every new frame).
    #[serde(default = "default_one_usize")]
    pub frame_hop: usize,
    /// How the input lays out its frames.
    #[serde(default)]
    pub layout: FeatureLayout,
    /// Resample a WAV file recorded at another rate to `pre.sample_rate` (default true);
    /// false refuses it instead.
    #[serde(default = "default_true")]
    pub resample: bool,
}

fn default_floor() -> f32 {
    1e-10
}

fn default_one() -> f32 {
    1.0
}

fn default_one_usize() -> usize {
    1
}

fn default_axes() -> usize {
    1
}

fn default_true() -> bool {
    true
}

impl DspSpec {
    /// The FFT size.
    pub fn fft_size(&self) -> usize {
        self.n_fft.unwrap_or(self.frame)
    }

    /// Samples one frame reads: the FFT size (`kind = "spectral"`: per axis).
    pub fn frame_samples(&self) -> usize {
        self.fft_size()
    }
}
