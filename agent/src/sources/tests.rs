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
