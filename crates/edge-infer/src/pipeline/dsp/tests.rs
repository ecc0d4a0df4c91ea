use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::engine::dsp_spec::{MelNorm, MelScale, WindowFn};
use crate::engine::spec::ModelSpec;

/// A `[pre.dsp]` spec from TOML lines, at 16 kHz unless `rate` is given.
fn dsp(lines: &str) -> DspSpec {
    toml::from_str(lines).unwrap_or_else(|e| panic!("{e}\n{lines}"))
}

fn build(lines: &str, rate: Option<u32>) -> Dsp {
    Dsp::new(&dsp(lines), rate).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn spectrogram_of_an_impulse_and_a_constant_by_hand() {
    // Rectangular window, n = 4: an impulse has a flat spectrum; a constant only DC.
    let d = build("kind = \"spectrogram\"\nframe = 4\nhop = 4\nframes = 1\nwindow = \"rect\"", None);
    assert_eq!(d.features(), 3);
    assert_eq!(d.frames_of(&[1.0, 0.0, 0.0, 0.0]), vec![1.0, 1.0, 1.0]);
    assert_eq!(d.frames_of(&[1.0, 1.0, 1.0, 1.0]), vec![16.0, 0.0, 0.0]);
    // Magnitude, and [0, 1, 0, -1] (a quarter-rate cosine): |X1| = 2.
    let d = build(
        "kind = \"spectrogram\"\nframe = 4\nhop = 4\nframes = 1\nwindow = \"rect\"\nspectrum = \"magnitude\"",
        None,
    );
    let got = d.frames_of(&[0.0, 1.0, 0.0, -1.0]);
    assert!((got[0]).abs() < 1e-6 && (got[1] - 2.0).abs() < 1e-6 && got[2].abs() < 1e-6, "{got:?}");
}

#[test]
fn windows_are_periodic_and_centred_in_the_fft() {
    assert_eq!(mel::window(WindowFn::Hann, 4, 4), vec![0.0, 0.5, 1.0, 0.5]);
    let h = mel::window(WindowFn::Hamming, 4, 4);
    assert!((h[0] - 0.08).abs() < 1e-6 && (h[2] - 1.0).abs() < 1e-6);
    // librosa pads a 2-sample window to n_fft = 6 with 2 zeros on the left.
    assert_eq!(mel::window(WindowFn::Rect, 2, 6), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
}

#[test]
fn mel_scales_by_hand() {
    assert!((hz_to_mel(1000.0, MelScale::Slaney) - 15.0).abs() < 1e-12);
    assert!((hz_to_mel(500.0, MelScale::Slaney) - 7.5).abs() < 1e-12);
    assert!((hz_to_mel(700.0, MelScale::Htk) - 2595.0 * 2f64.log10()).abs() < 1e-9);
    for f in [0.0, 300.0, 1000.0, 4321.0, 8000.0] {
        for s in [MelScale::Slaney, MelScale::Htk] {
            assert!((mel_to_hz(hz_to_mel(f, s), s) - f).abs() < 1e-6);
        }
    }
}

#[test]
fn mel_filters_are_triangles_with_slaney_area() {
    // Below 1 kHz the Slaney scale is linear: one band over 0..800 Hz peaks at 400 Hz;
    // at 1600 Hz with n_fft 16 the bins are 100 Hz apart.
    let bands = filterbank(1600.0, 16, 1, 0.0, 800.0, MelScale::Slaney, MelNorm::None).unwrap();
    assert_eq!(bands[0].start, 1);
    let want = [0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25];
    assert!(bands[0].weights.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{:?}", bands[0].weights);
    assert_eq!(bands[0].weights.len(), 7);
    // Slaney normalisation divides by half the width in Hz: 2 / 800.
    let bands = filterbank(1600.0, 16, 1, 0.0, 800.0, MelScale::Slaney, MelNorm::Slaney).unwrap();
    assert!((bands[0].weights[3] - 0.0025).abs() < 1e-9);
    let bands = filterbank(16000.0, 512, 40, 0.0, 8000.0, MelScale::Slaney, MelNorm::Slaney).unwrap();
    // Slaney normalisation: each triangle's area in Hz is 1 (approximately, sampled).
    for b in &bands {
        let area: f64 = b.weights.iter().map(|w| f64::from(*w) * 16000.0 / 512.0).sum();
        assert!((area - 1.0).abs() < 0.2, "area {area}");
    }
    // Too many mels for the resolution leaves a band empty: refused.
    assert_eq!(filterbank(16000.0, 64, 64, 0.0, 8000.0, MelScale::Slaney, MelNorm::Slaney).unwrap_err(), 0);
}

#[test]
fn dct_ortho_by_hand() {
    // A constant of N values: c0 = sqrt(N) * value, the rest 0.
    let m = dct_matrix(4, 4);
    let x = [2.0f32; 4];
    let c: Vec<f32> = m.chunks_exact(4).map(|r| r.iter().zip(&x).map(|(a, b)| a * b).sum()).collect();
    assert!((c[0] - 4.0).abs() < 1e-6 && c[1..].iter().all(|v| v.abs() < 1e-6), "{c:?}");
    // Orthonormal: rows of unit length, mutually orthogonal.
    for i in 0..4 {
        for j in 0..4 {
            let dot: f32 = m[i * 4..i * 4 + 4].iter().zip(&m[j * 4..j * 4 + 4]).map(|(a, b)| a * b).sum();
            assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6);
        }
    }
}

#[test]
fn log_mel_and_mfcc_of_silence_are_the_floor() {
    let d = build(
        "kind = \"mfcc\"\nframe = 400\nhop = 160\nn_fft = 512\nmels = 40\nmfcc = 13\nlog = \"db\"\nframes = 1",
        Some(16000),
    );
    let got = d.frames_of(&[0.0; 512]);
    assert_eq!(got.len(), 13);
    // log-mel is 10 log10(1e-10) = -100 in every band; its DCT: sqrt(40) * -100, then 0s.
    assert!((got[0] - (-100.0 * 40f32.sqrt())).abs() < 1e-3, "{got:?}");
    assert!(got[1..].iter().all(|v| v.abs() < 1e-3), "{got:?}");
    let d = build(
        "kind = \"mel\"\nframe = 400\nhop = 160\nn_fft = 512\nmels = 40\nlog = \"ln\"\nlog_offset = 1e-6\nscale = 0.5\noffset = 2.0\nframes = 1",
        Some(16000),
    );
    let got = d.frames_of(&[0.0; 512]);
    assert!(got.iter().all(|v| (v - (1e-6f32.ln() * 0.5 + 2.0)).abs() < 1e-5), "{got:?}");
}

#[test]
fn spectral_features_of_a_sine_by_hand() {
    // 64 samples at 64 Hz, a sine of amplitude 2 at 8 Hz (bin 8) on an offset of 9.81,
    // and a zero axis: rectangular window so the peak is exact.
    let n = 64;
    let mut samples = Vec::new();
    for i in 0..n {
        let t = i as f64 / 64.0;
        samples.push((9.81 + 2.0 * (2.0 * std::f64::consts::PI * 8.0 * t).sin()) as f32);
        samples.push(0.0);
    }
    let d = build(
        "kind = \"spectral\"\nframe = 64\nhop = 64\nframes = 1\nwindow = \"rect\"\naxes = 2\npeaks = 1\nbins = 4",
        Some(64),
    );
    assert_eq!(d.features(), 2 * (1 + 2 + 4));
    let f = d.frames_of(&samples);
    // RMS without the offset: 2 / sqrt(2).
    assert!((f[0] - 2f32.sqrt()).abs() < 1e-4, "{f:?}");
    // Peak at 8 Hz with power (A n / 2)^2 = 64^2.
    assert!((f[1] - 8.0).abs() < 1e-6 && (f[2] - 4096.0).abs() < 0.5, "{f:?}");
    // Bands of 8 bins over bins 1..=32: the first (1..9) holds all the power.
    assert!((f[3] - 4096.0).abs() < 0.5 && f[4..7].iter().all(|v| v.abs() < 1e-2), "{f:?}");
    // The silent axis: zeros, and no peak (reported as 0 Hz, 0).
    assert!(f[7..].iter().all(|v| v.abs() < 1e-6), "{f:?}");
}

#[test]
fn stream_reuses_frames_and_matches_the_batch_computation() {
    let d = Arc::new(build(
        "kind = \"mel\"\nframe = 400\nhop = 160\nn_fft = 512\nmels = 40\nlog = \"db\"\nframes = 5\nframe_hop = 2",
        Some(16000),
    ));
    let signal: Vec<f32> =
        (0..16000).map(|i| ((i as f32) * 0.05).sin() * 0.3 + ((i * 7919) % 101) as f32 * 1e-3).collect();
    let batch = d.frames_of(&signal);
    let mut s = DspStream::new(d.clone());
    let mut windows = Vec::new();
    for chunk in signal.chunks(333) {
        windows.extend(s.push(chunk));
    }
    let frames = (16000 - 512) / 160 + 1;
    assert_eq!(s.frames_done(), frames as u64, "each frame computed once");
    assert_eq!(windows.len(), (frames - 5) / 2 + 1);
    for (k, w) in windows.iter().enumerate() {
        let first = 2 * k;
        assert_eq!(w.index, k as u64);
        assert_eq!(w.offset, (first * 160) as u64);
        assert_eq!(w.data, batch[first * 40..(first + 5) * 40].to_vec());
    }
    assert!(s.pending() < 512);
}

#[test]
fn feature_major_layout_transposes() {
    let d = Arc::new(build(
        "kind = \"spectrogram\"\nframe = 4\nhop = 4\nframes = 2\nwindow = \"rect\"\nlayout = \"feature-major\"",
        None,
    ));
    let mut s = DspStream::new(d);
    let w = s.push(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].data, vec![1.0, 16.0, 1.0, 0.0, 1.0, 0.0]);
}

#[test]
fn hop_beyond_the_frame_skips_samples() {
    let d =
        Arc::new(build("kind = \"spectrogram\"\nframe = 2\nhop = 5\nframes = 1\nwindow = \"rect\"", None));
    let mut s = DspStream::new(d);
    let signal: Vec<f32> = (0..20).map(|i| i as f32).collect();
    let mut dc = Vec::new();
    for c in signal.chunks(3) {
        dc.extend(s.push(c).iter().map(|w| (w.data[0], w.offset)));
    }
    // Frames at 0, 5, 10, 15: DC bins 0+1, 5+6, 10+11, 15+16, squared.
    assert_eq!(dc, vec![(1.0, 0), (121.0, 5), (441.0, 10), (961.0, 15)]);
}

#[test]
fn each_bad_parameter_is_named() {
    let cases = [
        ("kind = \"mel\"\nframe = 400\nhop = 160\nframes = 1", Some(16000), "mels"),
        ("kind = \"mel\"\nframe = 400\nhop = 160\nmels = 40\nframes = 1", None, "sample_rate"),
        ("kind = \"mfcc\"\nframe = 400\nhop = 160\nmels = 40\nmfcc = 13\nframes = 1", Some(16000), "log"),
        (
            "kind = \"mfcc\"\nframe = 400\nhop = 160\nmels = 40\nmfcc = 41\nlog = \"db\"\nframes = 1",
            Some(16000),
            "mfcc",
        ),
        ("kind = \"mel\"\nframe = 400\nhop = 160\nmels = 40\nfmax = 9000\nframes = 1", Some(16000), "fmax"),
        ("kind = \"mel\"\nframe = 64\nhop = 160\nmels = 64\nframes = 1", Some(16000), "mels"),
        ("kind = \"spectrogram\"\nframe = 400\nn_fft = 256\nhop = 160\nframes = 1", None, "n_fft"),
        ("kind = \"spectrogram\"\nframe = 0\nhop = 160\nframes = 1", None, "frame"),
        ("kind = \"spectrogram\"\nframe = 4\nhop = 0\nframes = 1", None, "hop"),
        ("kind = \"spectrogram\"\nframe = 4\nhop = 1\nframes = 0", None, "frames"),
        ("kind = \"spectrogram\"\nframe = 4\nhop = 1\nframes = 1\nframe_hop = 0", None, "frame_hop"),
        ("kind = \"spectrogram\"\nframe = 4\nhop = 1\nframes = 1\nmels = 3", None, "mels"),
        ("kind = \"spectrogram\"\nframe = 4\nhop = 1\nframes = 1\naxes = 3", None, "axes"),
        ("kind = \"spectral\"\nframe = 8\nhop = 8\nframes = 1\nbins = 5", None, "bins"),
        ("kind = \"spectral\"\nframe = 8\nhop = 8\nframes = 1\npeaks = 1", None, "sample_rate"),
        (
            "kind = \"spectrogram\"\nframe = 4\nhop = 1\nframes = 1\nlog = \"ln\"\nlog_floor = 0",
            None,
            "log_floor",
        ),
        ("kind = \"spectrogram\"\nframe = 131072\nhop = 1\nframes = 1", None, "n_fft"),
    ];
    for (lines, rate, key) in cases {
        let e = Dsp::new(&dsp(lines), rate).expect_err(lines);
        assert_eq!(e.key, key, "{lines}: {e}");
        assert!(e.to_string().len() > 20, "{e}");
    }
}

fn model(input: &str, pre: &str) -> Result<ModelSpec, String> {
    let text = format!(
        "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = {input}\n[pre]\nsample_rate = 16000\n{pre}"
    );
    ModelSpec::parse(&text, Path::new("model.toml")).map_err(|e| e.to_string())
}

#[test]
fn the_model_spec_checks_the_front_end_against_the_input() {
    let ok = "[pre.dsp]\nkind = \"mfcc\"\nframe = 400\nhop = 160\nn_fft = 512\nmels = 40\nmfcc = 10\nlog = \"db\"\nframes = 49";
    model("[1, 49, 10]", ok).unwrap();
    let e = model("[1, 49, 13]", ok).unwrap_err();
    assert!(e.contains("line 17: pre.dsp makes 49 frames of 10 features = 490 values, but input `x`"), "{e}");
    let e = model(
        "[1, 10]",
        "[pre.dsp]\nkind = \"mfcc\"\nframe = 400\nhop = 160\nmels = 40\nmfcc = 10\nframes = 1",
    )
    .unwrap_err();
    assert!(e.contains("pre.dsp.log: kind = \"mfcc\" takes the DCT"), "{e}");
    let e = model(
        "[1, 4]",
        "[pre.window]\nsize = 4\nhop = 4\n[pre.dsp]\nkind = \"spectral\"\nframe = 8\nhop = 8\nframes = 1\nbins = 3",
    )
    .unwrap_err();
    assert!(e.contains("pre.window and pre.dsp both cut the stream"), "{e}");
}

#[test]
fn resampling_keeps_a_tone_and_refuses_far_rates() {
    let tone = |rate: u32, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(rate)).sin() as f32)
            .collect()
    };
    let src = tone(48000, 48000);
    let out = resample(&src, 48000, 16000).unwrap();
    assert_eq!(out.len(), 16000);
    let want = tone(16000, 16000);
    // Away from the edges (where the filter sees zeros), within 1e-3.
    let worst = out[200..15800].iter().zip(&want[200..15800]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-3, "worst {worst}");
    let up = resample(&tone(8000, 8000), 8000, 16000).unwrap();
    let worst = up[200..15800].iter().zip(&want[200..15800]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-3, "worst {worst}");
    // A 12 kHz tone at 48 kHz is above the 8 kHz band edge of 16 kHz: filtered out, not folded to 4 kHz.
    let high: Vec<f32> = (0..48000)
        .map(|i| (2.0 * std::f64::consts::PI * 12000.0 * i as f64 / 48000.0).sin() as f32)
        .collect();
    let out = resample(&high, 48000, 16000).unwrap();
    assert!(out[200..15800].iter().all(|v| v.abs() < 0.01));
    assert_eq!(resample(&src, 16000, 16000).unwrap(), src);
    let e = resample(&src, 8000, 192000).unwrap_err();
    assert!(e.message.contains("ratio above 16"), "{e}");
    assert!(resample(&src, 0, 16000).is_err());
}

/// The DFT straight from its definition, in f64.
fn direct_power(x: &[f32]) -> Vec<f64> {
    let n = x.len();
    (0..=n / 2)
        .map(|k| {
            let (mut re, mut im) = (0.0, 0.0);
            for (i, v) in x.iter().enumerate() {
                let a = -2.0 * std::f64::consts::PI * (k * i) as f64 / n as f64;
                re += f64::from(*v) * a.cos();
                im += f64::from(*v) * a.sin();
            }
            re * re + im * im
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn spectrogram_agrees_with_a_direct_dft(x in prop::collection::vec(-1.0f32..1.0, 1..48)) {
        let n = x.len();
        let d = build(&format!("kind = \"spectrogram\"\nframe = {n}\nhop = 1\nframes = 1\nwindow = \"rect\""), None);
        let got = d.frames_of(&x);
        let want = direct_power(&x);
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert!((f64::from(*g) - w).abs() < 1e-4 * (1.0 + w), "{} vs {}", g, w);
        }
    }

    #[test]
    fn streams_never_panic_and_stay_bounded(
        kind in 0usize..4,
        frame in 1usize..40,
        extra in 0usize..8,
        hop in 1usize..50,
        frames in 1usize..5,
        frame_hop in 1usize..4,
        mels in 1usize..6,
        axes in 1usize..4,
        samples in prop::collection::vec(prop_oneof![any::<f32>(), -1.0f32..1.0], 0..400),
        chunk in 1usize..64,
    ) {
        let kinds = ["spectrogram", "mel", "mfcc", "spectral"];
        let n_fft = frame + extra;
        let mut lines = format!("kind = \"{}\"\nframe = {frame}\nn_fft = {n_fft}\nhop = {hop}\nframes = {frames}\nframe_hop = {frame_hop}\nlog = \"db\"\n", kinds[kind]);
        match kind {
            1 => lines.push_str(&format!("mels = {mels}\n")),
            2 => lines.push_str(&format!("mels = {mels}\nmfcc = 1\n")),
            3 => lines.push_str(&format!("axes = {axes}\npeaks = 1\nbins = 1\n")),
            _ => {}
        }
        // Any parameters either build or are refused with a message; never a panic.
        let Ok(d) = Dsp::new(&dsp(&lines), Some(16000)) else { return Ok(()) };
        let d = Arc::new(d);
        let mut s = DspStream::new(d.clone());
        for c in samples.chunks(chunk) {
            for w in s.push(c) {
                prop_assert_eq!(w.data.len(), d.input_len());
            }
            prop_assert!(s.pending() <= n_fft * d.spec().axes);
            prop_assert!(s.recent.len() <= frames);
        }
    }

    #[test]
    fn resampling_never_panics_and_has_the_promised_length(
        x in prop::collection::vec(any::<f32>(), 0..200),
        from in 1u32..100_000,
        to in 1u32..100_000,
    ) {
        match resample(&x, from, to) {
            Ok(out) => prop_assert_eq!(out.len() as u64, x.len() as u64 * u64::from(to) / u64::from(from)),
            Err(e) => prop_assert!(from.max(to) > from.min(to) * MAX_RATIO, "{}", e),
        }
    }
}

/// Every example in docs/model-spec.md with a `[pre.dsp]` or a post family is a spec the
/// checks accept (a name and version are added to the fragments).
#[test]
fn the_documented_examples_are_valid_specs() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/model-spec.md")).unwrap();
    let mut checked = 0;
    for block in doc.split("```toml\n").skip(1).filter_map(|b| b.split("```").next()) {
        let family = ["multilabel", "regression", "anomaly"]
            .iter()
            .any(|f| block.contains(&format!("kind = \"{f}\"")));
        if !block.contains("[pre.dsp]") && !family {
            continue;
        }
        let mut text = String::new();
        if !block.starts_with("name = ") {
            text.push_str("name = \"m\"\nversion = \"1\"\n");
        }
        if !block.contains("[[input]]") {
            // A post-processing fragment: any input will do.
            text.push_str("[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 4]\n");
        }
        text.push_str(block);
        ModelSpec::parse(&text, Path::new("model.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
        checked += 1;
    }
    assert!(checked >= 6, "found {checked} examples");
}

#[test]
fn the_model_rate_converts_or_refuses_by_the_spec() {
    let with_dsp = "[pre.dsp]\nkind = \"spectrogram\"\nframe = 4\nhop = 4\nframes = 1";
    let spec = model("[1, 3]", with_dsp).unwrap();
    let rate = ModelRate::of(&spec).unwrap();
    assert_eq!(rate, ModelRate { hz: 16000, resample: true });
    assert_eq!(rate.convert(48000, vec![0.0; 480], "m").unwrap().len(), 160);
    assert_eq!(rate.convert(16000, vec![1.0; 5], "m").unwrap(), vec![1.0; 5]);
    let far = rate.convert(999, vec![0.0; 10], "m").unwrap_err();
    assert!(far.contains("model `m`") && far.contains("ratio above 16"), "{far}");
    let strict = model("[1, 3]", &format!("{with_dsp}\nresample = false")).unwrap();
    let e = ModelRate::of(&strict).unwrap().convert(48000, vec![0.0; 48], "m").unwrap_err();
    assert!(e.contains("sampled at 48000 Hz but model `m` takes 16000 Hz"), "{e}");
    // Without a front end the rate is checked, never converted, as before.
    let plain = ModelSpec::parse(
        "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 3]\n[pre]\nsample_rate = 8000",
        Path::new("model.toml"),
    )
    .unwrap();
    assert_eq!(ModelRate::of(&plain), Some(ModelRate { hz: 8000, resample: false }));
}
