use std::sync::{Arc, Mutex};

use super::ndjson::parse_line;
use super::simulated::Condition;
use super::{Receipt, Settled, VibrationSim};

#[test]
fn simulation_is_deterministic_and_follows_its_schedule() {
    let mut a = VibrationSim::new(3, 1000.0, 6.0, 2.0);
    let mut b = VibrationSim::new(3, 1000.0, 6.0, 2.0);
    assert_eq!(a.samples(5000), b.samples(5000));
    let mut sim = VibrationSim::new(3, 1000.0, 6.0, 2.0);
    let mut at = |t: f64| {
        let n = (t * 1000.0) as usize;
        sim.samples(n - sim.position() as usize);
        sim.condition()
    };
    assert_eq!(at(1.0), Condition::Normal);
    assert_eq!(at(6.5), Condition::Imbalance);
    assert_eq!(at(9.0), Condition::Normal);
    assert_eq!(at(12.5), Condition::Impact);
}

#[test]
fn ndjson_lines() {
    let m = parse_line("[1, 2]", "m", "d", "src").unwrap();
    assert_eq!((m.stream.as_str(), m.reset), ("d", false));
    let m = parse_line(r#"{"stream": "s-1", "reset": true, "data": [1]}"#, "m", "d", "src").unwrap();
    assert_eq!((m.stream.as_str(), m.reset), ("s-1", true));
    assert!(parse_line(r#"{"stream": "a b", "data": [1]}"#, "m", "d", "src").is_err());
    assert!(parse_line(r#"{"stream": "a"}"#, "m", "d", "src").unwrap_err().contains("data"));
    assert!(parse_line("[1,", "m", "d", "src").unwrap_err().contains("not JSON"));
}

#[test]
fn a_receipt_is_settled_once_as_handled_when_dropped_or_as_forgotten() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let probe = || {
        let seen = seen.clone();
        Receipt::new(move |how| seen.lock().unwrap().push(how))
    };
    drop(probe());
    probe().forget();
    assert_eq!(*seen.lock().unwrap(), vec![Settled::Handled, Settled::Forgotten]);
}

/// A drift changes the signal from its sample on and nothing before it; without a
/// noise seed of its own the machine's stream is the one it always was.
#[test]
fn drift_scales_and_shifts_the_signal_from_its_sample_on() {
    use super::Drift;
    let plain = VibrationSim::new(3, 1000.0, 6.0, 2.0).samples(3000);
    let drifted = VibrationSim::new(3, 1000.0, 6.0, 2.0)
        .with_drift(Drift { from_sample: 1000, gain: 1.5, offset: 0.25, noise: 0.0 })
        .samples(3000);
    assert_eq!(plain[..1000], drifted[..1000]);
    for (a, b) in plain[1000..].iter().zip(&drifted[1000..]) {
        assert!((f64::from(*b) - (1.5 * f64::from(*a) + 0.25)).abs() < 1e-5, "{a} -> {b}");
    }
    // Another noise seed: the same machine (the noise is small), not the same samples.
    let other = VibrationSim::new(3, 1000.0, 0.0, 0.0).with_noise_seed(9).samples(1000);
    let same = VibrationSim::new(3, 1000.0, 0.0, 0.0).samples(1000);
    assert_ne!(other, same);
    assert!(other.iter().zip(&same).all(|(a, b)| (a - b).abs() < 0.5));
    // Added noise widens the signal.
    let noisy = VibrationSim::new(3, 1000.0, 0.0, 0.0)
        .with_drift(Drift { from_sample: 0, gain: 1.0, offset: 0.0, noise: 1.0 })
        .samples(1000);
    let spread = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64;
    assert!(spread(&noisy) > spread(&same) + 0.5);
}
