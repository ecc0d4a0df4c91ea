use super::*;
use crate::engine::spec::{ModelSpec, PostSpec, SegmentSpec, WindowSpec};
use std::path::Path;

fn spec(extra: &str) -> ModelSpec {
    let text = format!(
        "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 4]\n{extra}"
    );
    ModelSpec::parse(&text, Path::new("model.toml")).expect("valid spec")
}

#[test]
fn windows_carry_context_from_the_previous_window() {
    let mut w = Windower::new(&WindowSpec { size: 4, hop: 4, context: 2 });
    let out = w.push(&[1.0, 2.0, 3.0]);
    assert!(out.is_empty());
    let out = w.push(&[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].data, vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0], "zeros before the stream");
    assert_eq!(out[1].data, vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0], "last 2 of the previous window");
    assert_eq!((out[1].index, out[1].offset), (1, 4));
    assert_eq!(w.pending(), 1);
}

#[test]
fn windows_overlap_and_skip_by_hop() {
    let mut w = Windower::new(&WindowSpec { size: 4, hop: 2, context: 0 });
    let data: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let out = w.push(&data);
    let starts: Vec<f32> = out.iter().map(|w| w.data[0]).collect();
    assert_eq!(starts, vec![0.0, 2.0, 4.0]);
    // A hop larger than the window leaves gaps, even across pushes.
    let mut w = Windower::new(&WindowSpec { size: 2, hop: 5, context: 0 });
    let mut starts = Vec::new();
    for chunk in (0..20).map(|i| i as f32).collect::<Vec<_>>().chunks(3) {
        starts.extend(w.push(chunk).iter().map(|w| (w.data[0], w.offset)));
    }
    assert_eq!(starts, vec![(0.0, 0), (5.0, 5), (10.0, 10), (15.0, 15)]);
}

#[test]
fn json_payloads_flat_nested_and_object() {
    let s = spec("");
    assert_eq!(decode(&s, Payload::Bytes(b"[1,2,3,4]".to_vec())).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(decode(&s, Payload::Bytes(b"[[1,2,3,4]]".to_vec())).unwrap().len(), 4);
    assert_eq!(decode(&s, Payload::Bytes(br#"{"data":[1,2,3,4]}"#.to_vec())).unwrap().len(), 4);
    assert!(matches!(decode(&s, Payload::Bytes(b"[[1,2],[3,4]]".to_vec())), Err(InputError::Shape { .. })));
    assert!(matches!(
        decode(&s, Payload::Bytes(br#"{"values":[1]}"#.to_vec())),
        Err(InputError::Json { .. })
    ));
    assert!(matches!(decode(&s, Payload::Bytes(b"[[1],2]".to_vec())), Err(InputError::Json { .. })));
    assert!(matches!(decode(&s, Payload::Bytes(Vec::new())), Err(InputError::Empty)));
}

#[test]
fn raw_samples_are_scaled_and_checked() {
    let s = spec("[pre]\nformat = \"i16le\"\nscale = 2.0\n");
    let bytes: Vec<u8> = [16384i16, -32768].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(decode(&s, Payload::Bytes(bytes)).unwrap(), vec![1.0, -2.0]);
    assert!(matches!(decode(&s, Payload::Bytes(vec![1, 2, 3])), Err(InputError::Alignment { width: 2, .. })));
    let s = spec("[pre]\nformat = \"f32le\"\n");
    let bytes: Vec<u8> = [1.0f32, f32::INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(matches!(decode(&s, Payload::Bytes(bytes)), Err(InputError::NotFinite { index: 1, .. })));
    let s = spec("[limits]\nmax_payload_bytes = 8\n");
    assert!(matches!(
        decode(&s, Payload::Samples(vec![0.0; 3])),
        Err(InputError::TooLarge { bytes: 12, max: 8 })
    ));
}

#[test]
fn classifier_post_processing() {
    let post = PostProcessor::new(&PostSpec {
        softmax: true,
        labels: vec!["a".into(), "b".into(), "c".into()],
        top_k: Some(2),
        threshold: Some(0.9),
        ..PostSpec::default()
    });
    let out = post.apply(&[1.0, 3.0, 2.0], 0, None);
    assert_eq!(out["label"], "b");
    assert_eq!(out["class"], 1);
    let score = out["score"].as_f64().unwrap();
    assert!((score - 0.665_240_9).abs() < 1e-5, "{score}");
    assert_eq!(out["confident"], false);
    assert_eq!(out["top"][1]["label"], "c");
    assert_eq!(out["top"].as_array().unwrap().len(), 2);
    let probs: f64 = out["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
    assert!((probs - 1.0).abs() < 1e-6);
}

#[test]
fn segments_follow_hysteresis() {
    let post = PostProcessor::new(&PostSpec {
        threshold: Some(0.5),
        labels: vec!["off".into(), "on".into()],
        segments: Some(SegmentSpec { on: 0.5, off: 0.35 }),
        ..PostSpec::default()
    });
    let mut state = SegmentState::default();
    let scores = [0.1, 0.6, 0.4, 0.45, 0.3, 0.2, 0.5];
    let events: Vec<Option<String>> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let out = post.apply(&[*s], i as u64, Some(&mut state));
            out.get("segment").map(|seg| format!("{}@{}", seg["event"].as_str().unwrap(), i))
        })
        .collect();
    // 0.4 and 0.45 stay inside the segment (above `off`), 0.3 ends it.
    assert_eq!(
        events.into_iter().flatten().collect::<Vec<_>>(),
        vec!["start@1".to_string(), "end@4".to_string(), "start@6".to_string()]
    );
}
