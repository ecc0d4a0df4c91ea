//! A simulated vibration sensor with injected anomalies.
//!
//! The signal is the one `tests/fixtures/train_demo.py` trains the demo model on:
//! a machine turning at `f0` in 45..55 Hz, amplitude `A` in 0.8..1.2, with its second
//! harmonic at 0.3 A and Gaussian noise (σ 0.05). Anomalies alternate between
//! *imbalance* (A in 2..3) and *impact* (decaying 300 Hz bursts of amplitude 2..4,
//! τ = 3 ms, every 20..40 ms, on top of the normal signal). A drift (gain, offset, added
//! noise) may change the signal from a given sample on, to show drift monitoring.

use std::f64::consts::TAU;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::SensorMessage;
use crate::config::SimulatedSource;
use edge_infer::pipeline::Payload;

/// A small deterministic generator (SplitMix64): the simulation must replay identically
/// for a given seed, and needs nothing stronger.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
    }
}

/// What the simulated machine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Normal,
    Imbalance,
    Impact,
}

/// The signal generator.
#[derive(Debug, Clone)]
pub struct VibrationSim {
    rng: Rng,
    rate: f64,
    n: u64,
    f0: f64,
    amp: f64,
    phase1: f64,
    phase2: f64,
    every: f64,
    len: f64,
    condition: Condition,
    anomalies: u64,
    imbalance_amp: f64,
    impact_period: f64,
    next_impact: f64,
    impact_time: f64,
    impact_amp: f64,
    /// Draws of the noise and anomalies, when they come from a seed of their own.
    noise_rng: Option<Rng>,
    drift: Option<Drift>,
}

/// A change of the signal from a sample on: `gain * x + offset + noise * N(0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// The first sample changed.
    pub from_sample: u64,
    pub gain: f64,
    pub offset: f64,
    pub noise: f64,
}

impl VibrationSim {
    /// A machine sampled at `rate` Hz with an anomaly of `len` seconds every `every`
    /// seconds (0: never).
    pub fn new(seed: u64, rate: f64, every: f64, len: f64) -> VibrationSim {
        let mut rng = Rng(seed);
        let f0 = rng.range(45.0, 55.0);
        let amp = rng.range(0.8, 1.2);
        let phase1 = rng.range(0.0, TAU);
        let phase2 = rng.range(0.0, TAU);
        VibrationSim {
            rng,
            rate,
            n: 0,
            f0,
            amp,
            phase1,
            phase2,
            every,
            len,
            condition: Condition::Normal,
            anomalies: 0,
            imbalance_amp: 2.5,
            impact_period: 0.03,
            next_impact: f64::INFINITY,
            impact_time: f64::NEG_INFINITY,
            impact_amp: 0.0,
            noise_rng: None,
            drift: None,
        }
    }

    /// The same machine (from `seed`), with noise and anomalies drawn from `noise_seed`.
    pub fn with_noise_seed(mut self, noise_seed: u64) -> VibrationSim {
        self.noise_rng = Some(Rng(noise_seed));
        self
    }

    /// The signal changes as `drift` says from its sample on.
    pub fn with_drift(mut self, drift: Drift) -> VibrationSim {
        self.drift = Some(drift);
        self
    }

    /// The generator of the noise and anomalies' draws.
    fn draws(&mut self) -> &mut Rng {
        self.noise_rng.as_mut().unwrap_or(&mut self.rng)
    }

    /// Samples produced so far.
    pub fn position(&self) -> u64 {
        self.n
    }

    /// The condition of the most recent sample.
    pub fn condition(&self) -> Condition {
        self.condition
    }

    fn update_condition(&mut self, t: f64) {
        let want = if self.every > 0.0 && t >= self.every && (t % self.every) < self.len {
            if (((t / self.every).floor() as u64) % 2) == 1 {
                Condition::Imbalance
            } else {
                Condition::Impact
            }
        } else {
            Condition::Normal
        };
        if want != self.condition {
            self.condition = want;
            match want {
                Condition::Imbalance => {
                    self.anomalies += 1;
                    self.imbalance_amp = self.draws().range(2.0, 3.0);
                }
                Condition::Impact => {
                    self.anomalies += 1;
                    self.impact_period = self.draws().range(0.020, 0.040);
                    let period = self.impact_period;
                    self.next_impact = t + self.draws().range(0.0, period);
                }
                Condition::Normal => self.next_impact = f64::INFINITY,
            }
        }
    }

    /// The next sample.
    pub fn sample(&mut self) -> f32 {
        let t = self.n as f64 / self.rate;
        self.n += 1;
        self.update_condition(t);
        let amp = if self.condition == Condition::Imbalance { self.imbalance_amp } else { self.amp };
        let mut x = amp * (TAU * self.f0 * t + self.phase1).sin()
            + 0.3 * amp * (TAU * 2.0 * self.f0 * t + self.phase2).sin()
            + 0.05 * self.draws().normal();
        if self.condition == Condition::Impact && t >= self.next_impact {
            self.impact_time = self.next_impact;
            self.impact_amp = self.draws().range(2.0, 4.0);
            self.next_impact += self.impact_period;
        }
        let tau = t - self.impact_time;
        if (0.0..0.05).contains(&tau) {
            x += self.impact_amp * (-tau / 0.003).exp() * (TAU * 300.0 * tau).sin();
        }
        if let Some(d) = self.drift
            && self.n > d.from_sample
        {
            x = d.gain * x + d.offset;
            if d.noise > 0.0 {
                x += d.noise * self.draws().normal();
            }
        }
        x as f32
    }

    /// The next `n` samples.
    pub fn samples(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.sample()).collect()
    }
}

pub(super) async fn run(cfg: SimulatedSource, tx: mpsc::Sender<SensorMessage>, token: CancellationToken) {
    let mut sim =
        VibrationSim::new(cfg.seed, f64::from(cfg.sample_rate), cfg.anomaly_every_s, cfg.anomaly_len_s);
    let chunk = ((u64::from(cfg.sample_rate) * cfg.chunk_ms) / 1000).max(1) as usize;
    if let Some(seed) = cfg.noise_seed {
        sim = sim.with_noise_seed(seed);
    }
    if let Some(d) = cfg.drift {
        let from_sample = match (d.after_s, d.after_messages) {
            (Some(t), _) => (t * f64::from(cfg.sample_rate)) as u64,
            (None, Some(m)) => m.saturating_mul(chunk as u64),
            (None, None) => 0,
        };
        tracing::info!(stream = %cfg.stream, from_sample, gain = d.gain, offset = d.offset, noise = d.noise,
            "simulated drift configured");
        sim = sim.with_drift(Drift { from_sample, gain: d.gain, offset: d.offset, noise: d.noise });
    }
    let total =
        if cfg.duration_s > 0.0 { Some((cfg.duration_s * f64::from(cfg.sample_rate)) as u64) } else { None };
    let period = (cfg.speed > 0.0).then(|| Duration::from_secs_f64(cfg.chunk_ms as f64 / 1000.0 / cfg.speed));
    let mut ticker = period.map(|p| {
        let mut i = tokio::time::interval(p);
        // A late tick (slow machine, suspended VM) is not made up in a burst.
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut sent = 0u64;
    let mut last = Condition::Normal;
    loop {
        if let Some(t) = ticker.as_mut() {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = t.tick() => {}
            }
        }
        let n = match total {
            Some(total) if sent >= total => return,
            Some(total) => chunk.min((total - sent) as usize),
            None => chunk,
        };
        let samples = sim.samples(n);
        sent += n as u64;
        if sim.condition() != last {
            last = sim.condition();
            tracing::info!(stream = %cfg.stream, condition = ?last, "simulated machine condition changed");
        }
        let msg = SensorMessage {
            model: cfg.model.clone(),
            stream: cfg.stream.clone(),
            source: "simulated".into(),
            payload: Payload::Samples(samples),
            reset: false,
            receipt: None,
            input_id: None,
            force_cloud: false,
        };
        tokio::select! {
            _ = token.cancelled() => return,
            r = tx.send(msg) => if r.is_err() { return },
        }
    }
}
