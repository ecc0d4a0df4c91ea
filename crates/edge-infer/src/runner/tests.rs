use std::path::PathBuf;

use super::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `run_dir` example's demo, as the README shows it: the payloads of
/// `examples/vibration.jsonl` (the demo model's golden cases, one per line, 256 samples
/// each) through the spec's 256/128 windows. Every other window is exactly one golden
/// case and must get its label; the windows between straddle two cases.
#[test]
fn the_example_payloads_get_the_golden_labels_on_the_demo_model() {
    let golden: Value =
        serde_json::from_slice(&std::fs::read(root().join("configs/models/vibration/golden.json")).unwrap())
            .unwrap();
    let labels: Vec<&str> =
        golden["cases"].as_array().unwrap().iter().map(|c| c["label"].as_str().unwrap()).collect();
    let payloads =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/vibration.jsonl"))
            .unwrap();
    let mut runner =
        Runner::open(&root().join("configs/models/vibration"), &EngineConfig::default()).unwrap();
    assert_eq!(runner.model().name(), "vibration");
    let mut answers = Vec::new();
    for line in payloads.lines() {
        answers.extend(runner.push(Payload::Bytes(line.as_bytes().to_vec())).unwrap());
    }
    assert_eq!(labels.len(), 6);
    assert_eq!(answers.len(), 2 * labels.len() - 1, "windows every 128 of 6 x 256 samples");
    for (ix, a) in answers.iter().enumerate() {
        assert_eq!((a.window, a.offset), (ix as u64, Some(128 * ix as u64)));
        assert_eq!(a.raw.len(), 1, "the demo model has one output");
    }
    for (case, label) in labels.iter().enumerate() {
        let a = &answers[2 * case];
        assert_eq!(a.outputs["label"], *label, "window {} is golden case {case}: {:?}", a.window, a.outputs);
        assert_eq!(a.outputs["confident"], true, "{:?}", a.outputs);
    }
}

#[test]
fn a_payload_the_spec_cannot_decode_is_a_bad_input_and_the_stream_goes_on() {
    let mut runner =
        Runner::open(&root().join("configs/models/vibration"), &EngineConfig::default()).unwrap();
    let err = runner.push(Payload::Bytes(b"not json".to_vec())).unwrap_err();
    assert_eq!(err.kind(), "bad_input", "{err}");
    assert!(runner.push(Payload::Samples(vec![0.0; 200])).unwrap().is_empty(), "no window filled yet");
    assert_eq!(runner.push(Payload::Samples(vec![0.0; 56])).unwrap().len(), 1);
}
