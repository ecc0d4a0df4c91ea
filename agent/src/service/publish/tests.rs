use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

fn gate(mode: PublishMode, threshold: Option<f64>) -> Gate {
    Gate::new(HashMap::from([("m".to_string(), PublishSection { mode, threshold, interval_s: 1 })]))
}

fn outputs(label: &str, score: f64, segment: bool) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("label".into(), json!(label));
    o.insert("score".into(), json!(score));
    if segment {
        o.insert("segment".into(), json!({"event": "start", "start": 0}));
    }
    o
}

fn offer(g: &mut Gate, stream: &str, seq: u64, o: &Map<String, Value>) -> bool {
    g.offer(&Offered { model: "m", version: "1", stream, seq, ts: "t", outputs: o })
}

#[test]
fn change_publishes_the_first_a_new_label_a_segment_and_a_threshold_crossing() {
    let mut g = gate(PublishMode::Change, Some(0.5));
    let steps = [
        (outputs("normal", 0.1, false), true, "first of the stream"),
        (outputs("normal", 0.2, false), false, "same label, below the threshold"),
        (outputs("normal", 0.6, false), true, "crossed 0.5 upwards"),
        (outputs("normal", 0.7, false), false, "still above"),
        (outputs("anomaly", 0.7, false), true, "label changed"),
        (outputs("anomaly", 0.7, true), true, "a segment event"),
        (outputs("anomaly", 0.4, false), true, "crossed 0.5 downwards"),
        (outputs("anomaly", 0.3, false), false, "nothing new"),
    ];
    for (i, (o, want, why)) in steps.iter().enumerate() {
        assert_eq!(offer(&mut g, "s1", i as u64, o), *want, "step {i}: {why}");
    }
    assert!(offer(&mut g, "s2", 99, &outputs("anomaly", 0.3, false)), "another stream has its own first");
    assert_eq!(g.held["m"], 3);
}

#[test]
fn every_publishes_each_result_and_unknown_models_are_every() {
    let mut g = gate(PublishMode::Every, None);
    for i in 0..5 {
        assert!(offer(&mut g, "s", i, &outputs("normal", 0.1, false)));
    }
    let o = outputs("x", 0.0, false);
    assert!(g.offer(&Offered { model: "other", version: "1", stream: "s", seq: 0, ts: "t", outputs: &o }));
    assert!(g.held.is_empty());
}

#[test]
fn summary_counts_labels_and_score_statistics_per_stream() {
    let mut g = gate(PublishMode::Summary, None);
    for (i, (l, s)) in
        [("normal", 0.1), ("normal", 0.3), ("anomaly", 0.8), ("normal", 0.2)].iter().enumerate()
    {
        assert!(!offer(&mut g, "s1", 10 + i as u64, &outputs(l, *s, false)));
    }
    assert!(g.due(Some(Instant::now()), "dev", "now").is_empty(), "not due before its interval");
    let due = g.next_due().expect("a summary under way");
    let out = g.due(Some(due), "dev", "now");
    assert_eq!(out.len(), 1);
    let v: Value = serde_json::from_slice(&out[0].1).unwrap_or_default();
    assert_eq!(v["summary"], true, "{v}");
    assert_eq!(
        (v["from_seq"].as_u64(), v["to_seq"].as_u64(), v["results"].as_u64()),
        (Some(10), Some(13), Some(4))
    );
    assert_eq!(v["labels"], json!({"normal": 3, "anomaly": 1}));
    assert_eq!((v["score"]["min"].as_f64(), v["score"]["max"].as_f64()), (Some(0.1), Some(0.8)));
    assert!((v["score"]["mean"].as_f64().unwrap_or(0.0) - 0.35).abs() < 1e-9, "{v}");
    assert!(g.next_due().is_none(), "the next summary starts with the next result");
    assert!(g.due(None, "dev", "now").is_empty());
}

proptest! {
    /// `change` without a threshold publishes exactly where a reference says: the first
    /// result of a stream and each label unlike the one before.
    #[test]
    fn change_agrees_with_a_reference(labels in proptest::collection::vec(0u8..3, 0..200)) {
        let mut g = gate(PublishMode::Change, None);
        let mut before: Option<u8> = None;
        for (i, l) in labels.iter().enumerate() {
            let want = before != Some(*l);
            let got = offer(&mut g, "s", i as u64, &outputs(&l.to_string(), 0.5, false));
            prop_assert_eq!(got, want, "at {}", i);
            before = Some(*l);
        }
        let published = labels.len() as u64 - g.held.get("m").copied().unwrap_or(0);
        let changes = labels.windows(2).filter(|w| w[0] != w[1]).count() as u64 + u64::from(!labels.is_empty());
        prop_assert_eq!(published, changes);
    }
}
