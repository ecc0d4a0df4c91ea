//! The cost of a declared DSP front end next to the model behind it, per model input,
//! measured in one run: `tests/bench/dsp.sh` builds and runs it.
//!
//! Usage: dsp_cost MODEL_DIR [SECONDS]
//!
//! Streams SECONDS (default 30) of a deterministic test signal (a chirp over noise) at
//! the spec's rate through the model's `[pre.dsp]`, and runs the model on each input the
//! front end hands out. Prints, as JSON, the mean time per model input of: the
//! streaming front end (each frame computed once), the same inputs recomputed from
//! their samples (what a front end without per-stream state would cost), and the model
//! run; and the front end's share of the whole.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_infer::engine::{Engine, EngineConfig, LoadedModel, Request};
use edge_infer::pipeline::dsp::{Dsp, DspStream};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: dsp_cost MODEL_DIR [SECONDS]")?);
    let seconds: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30.0);
    let config = EngineConfig { threads: 1, queue: 4, max_streams: 4, ..EngineConfig::default() };
    let model = LoadedModel::load_dir(&dir, &config.model_limits)?;
    let spec = model.spec.clone();
    let dsp_spec = spec.pre.dsp.clone().ok_or("the model has no [pre.dsp]")?;
    let rate = spec.pre.sample_rate.unwrap_or(16_000);
    let dsp = Arc::new(Dsp::new(&dsp_spec, spec.pre.sample_rate)?);
    let engine = Engine::start(&config);
    let model = engine.install(model);

    // A chirp from 100 Hz to 4 kHz over low noise (a fixed LCG: the same every run).
    let n = (seconds * f64::from(rate)) as usize;
    let mut seed = 0x2545_f491_u64;
    let signal: Vec<f32> = (0..n)
        .map(|i| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let noise = ((seed >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 0.02;
            let t = i as f64 / f64::from(rate);
            let f = 100.0 + 3900.0 * t / seconds;
            ((0.3 * (std::f64::consts::PI * f * t).sin() + noise) * f64::from(spec.pre.scale.unwrap_or(1.0)))
                as f32
        })
        .collect();

    let chunk = (rate / 10) as usize;
    let mut stream = DspStream::new(dsp.clone());
    let (mut front, mut recompute, mut run) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut inputs = 0u64;
    let span = (dsp_spec.frames - 1) * dsp_spec.hop + dsp_spec.fft_size();
    for piece in signal.chunks(chunk) {
        let started = Instant::now();
        let windows = stream.push(piece);
        front += started.elapsed();
        for w in windows {
            let start = w.offset as usize;
            if let Some(samples) = signal.get(start..start + span) {
                let started = Instant::now();
                let again = dsp.frames_of(samples);
                recompute += started.elapsed();
                assert_eq!(again.len(), w.data.len());
            }
            let response = engine
                .submit_to(
                    model.clone(),
                    Request {
                        model: model.name().to_string(),
                        stream: None,
                        data: w.data,
                        deadline: Instant::now() + Duration::from_secs(30),
                        reset: false,
                        shape: None,
                    },
                )?
                .wait_blocking()?;
            run += response.run;
            inputs += 1;
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / inputs.max(1) as f64;
    let report = serde_json::json!({
        "model": model.name(),
        "seconds": seconds,
        "inputs": inputs,
        "front_end_ms": per(front),
        "front_end_recomputed_ms": per(recompute),
        "model_ms": per(run),
        "front_end_share": front.as_secs_f64() / (front + run).as_secs_f64(),
        "recompute_over_streaming": recompute.as_secs_f64() / front.as_secs_f64(),
        "realtime_factor": (front + run).as_secs_f64() / seconds,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
