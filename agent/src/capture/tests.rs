//! The store's bounds and format, the handle's reasons and hourly budget, exports.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::store::{self, Limits, Meta, Refused, Sample, Store};
use super::{Capture, Flags, Reason, export, npy};
use crate::config::CaptureSection;

fn meta(model: &str, time_ms: u64, shape: Vec<usize>) -> Meta {
    Meta {
        model: model.into(),
        version: "1".into(),
        stream: "s-1".into(),
        time_ms,
        reason: Reason::LowConfidence,
        score: Some(0.4),
        window: 3,
        shape,
        place: "local".into(),
        outputs: json!({"label": "normal", "score": 0.4}).as_object().cloned().unwrap_or_default(),
        input_id: None,
        payload_format: None,
    }
}

fn sample(n: usize, payload: Option<Vec<u8>>) -> Sample {
    Sample {
        meta: meta("vibration", 1_000, vec![1, n]),
        input: (0..n).map(|i| i as f32 * 0.5).collect(),
        payload,
    }
}

const LOTS: u64 = u64::MAX / 4;

fn limits(max_bytes: u64) -> Limits {
    Limits { max_bytes, min_free_bytes: 0 }
}

fn files(dir: &Path) -> Vec<store::Entry> {
    store::entries(dir).unwrap()
}

#[test]
fn a_sample_file_reads_back_as_written() {
    let s = sample(256, Some(b"[1,2,3]".to_vec()));
    let back = Sample::decode(&s.encode()).unwrap();
    assert_eq!(back, s);
    let s = sample(4, None);
    assert_eq!(Sample::decode(&s.encode()).unwrap(), s);
}

#[test]
fn damage_is_reported_not_read() {
    let mut bytes = sample(16, None).encode();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    assert!(Sample::decode(&bytes).is_err());
    let whole = sample(16, None).encode();
    assert!(matches!(Sample::decode(&whole[..n - 1]), Err(store::DecodeError::Short { .. })));
    assert!(matches!(Sample::decode(&[&whole[..], b"x"].concat()), Err(store::DecodeError::Trailing(1))));
    assert_eq!(Sample::decode(b"EDGECAP2xxxxxxxx"), Err(store::DecodeError::Magic));
}

#[test]
fn the_byte_bound_holds_and_the_oldest_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let one = sample(256, None).encode().len() as u64;
    let mut store = Store::open(dir.path(), limits(one * 10 + one / 2)).unwrap().with_free(|_| Ok(LOTS));
    for _ in 0..100 {
        store.put(&sample(256, None)).unwrap();
        assert!(store.bytes() <= one * 10 + one / 2);
    }
    let kept = files(dir.path());
    assert_eq!(kept.len(), 10);
    // The newest ten: numbers 90 to 99.
    assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), (90..100).collect::<Vec<_>>());
    let on_disk: u64 = kept.iter().map(|e| std::fs::metadata(&e.path).unwrap().len()).sum();
    assert!(on_disk <= one * 10 + one / 2);
    // Reopened, the store counts what is there and numbers on.
    let mut again = Store::open(dir.path(), limits(one * 10 + one / 2)).unwrap().with_free(|_| Ok(LOTS));
    assert_eq!((again.len() as u64, again.bytes()), (10, on_disk));
    assert_eq!(again.put(&sample(256, None)).unwrap(), 100);
}

#[test]
fn a_sample_larger_than_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), limits(100)).unwrap().with_free(|_| Ok(LOTS));
    assert!(matches!(store.put(&sample(256, None)), Err(Refused::TooLarge { .. })));
    assert!(files(dir.path()).is_empty());
}

#[test]
fn a_tight_disk_refuses_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let l = Limits { max_bytes: 1 << 20, min_free_bytes: 10_000 };
    let mut store = Store::open(dir.path(), l).unwrap().with_free(|_| Ok(10_500));
    let err = store.put(&sample(256, None)).unwrap_err();
    assert!(matches!(err, Refused::DiskTight { free: 10_500, .. }), "{err}");
    assert!(err.to_string().contains("capture.min_free_mb"), "{err}");
    assert!(files(dir.path()).is_empty());
    assert_eq!(store.bytes(), 0);
}

fn section(low: f64, share: f64, per_hour: u32) -> CaptureSection {
    CaptureSection {
        enabled: true,
        low_confidence: low,
        random_share: share,
        max_per_hour: per_hour,
        ..CaptureSection::default()
    }
}

#[test]
fn reasons_follow_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), limits(1 << 20)).unwrap();
    let c = Capture::with_store(&section(0.6, 0.0, 10), store).unwrap().0;
    assert_eq!(c.reason(Some(0.5), Flags::default()), Some(Reason::LowConfidence));
    assert_eq!(c.reason(Some(0.9), Flags::default()), None);
    assert_eq!(c.reason(None, Flags::default()), None);
    let drift = Flags { drift: true, ..Flags::default() };
    assert_eq!(c.reason(Some(0.9), drift), Some(Reason::Drift));
    let shadow = Flags { shadow_disagreement: true, ..Flags::default() };
    assert_eq!(c.reason(Some(0.9), shadow), Some(Reason::ShadowDisagreement));

    let store = Store::open(dir.path(), limits(1 << 20)).unwrap();
    let all = Capture::with_store(&section(0.0, 1.0, 10), store).unwrap().0;
    assert_eq!(all.reason(Some(0.99), Flags::default()), Some(Reason::Random));
    // A share of 1 in 10: about 1000 of 10000, far from 0 and from all.
    let store = Store::open(dir.path(), limits(1 << 20)).unwrap();
    let tenth = Capture::with_store(&section(0.0, 0.1, 10), store).unwrap().0;
    let n = (0..10_000).filter(|_| tenth.reason(Some(0.99), Flags::default()).is_some()).count();
    assert!((700..1300).contains(&n), "{n}");
}

#[test]
fn a_flood_keeps_the_hourly_count_and_stops_copying() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), limits(1 << 24)).unwrap().with_free(|_| Ok(LOTS));
    let c = Capture::with_store(&section(1.0, 0.0, 25), store).unwrap().0;
    let mut offered = 0;
    for _ in 0..1000 {
        if !c.wanted() {
            continue;
        }
        offered += 1;
        let mut s = sample(64, None);
        s.meta.time_ms = super::now_ms();
        c.offer(s);
        // The writer keeps up in this test: the queue never overflows.
        assert!(c.settle(c.counters.kept.load(Ordering::Relaxed).min(25), Duration::from_secs(10)));
    }
    assert!(c.settle(25, Duration::from_secs(10)));
    assert_eq!(c.counters.kept.load(Ordering::Relaxed), 25);
    assert_eq!(files(dir.path()).len(), 25);
    // Once the budget is spent, `wanted` says no: the stream task copies nothing more.
    assert_eq!(offered, 26, "one offer finds the budget spent, then nothing is offered");
    assert_eq!(c.counters.over_rate.load(Ordering::Relaxed), 1);
}

#[test]
fn a_restart_counts_the_last_hours_samples() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), limits(1 << 24)).unwrap().with_free(|_| Ok(LOTS));
    for _ in 0..5 {
        store.put(&sample(8, None)).unwrap();
    }
    let store = Store::open(dir.path(), limits(1 << 24)).unwrap();
    let c = Capture::with_store(&section(1.0, 0.0, 5), store).unwrap().0;
    let mut s = sample(8, None);
    s.meta.time_ms = super::now_ms();
    c.offer(s);
    assert_eq!(c.counters.over_rate.load(Ordering::Relaxed), 1);
    assert!(!c.wanted());
}

#[test]
fn npy_round_trips_and_matches_numpys_layout() {
    let bytes = npy::write_f32(&[1, 3], &[1.0, -2.5, 3.25]);
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    assert_eq!(bytes[10 + header_len - 1], b'\n');
    assert_eq!(npy::read_f32(&bytes).unwrap(), (vec![1, 3], vec![1.0, -2.5, 3.25]));
    let one = npy::write_f32(&[2], &[0.5, 0.25]);
    assert!(String::from_utf8_lossy(&one).contains("'shape': (2,)"));
    assert_eq!(npy::read_f32(&one).unwrap(), (vec![2], vec![0.5, 0.25]));
    let mut f64_header = one.clone();
    let at = one.windows(3).position(|w| w == b"<f4").unwrap();
    f64_header[at + 2] = b'8';
    assert!(matches!(npy::read_f32(&f64_header), Err(npy::NpyError::Header(_))));
}

#[test]
fn an_export_has_one_npy_per_sample_and_an_index() {
    let state = tempfile::tempdir().unwrap();
    let mut store = Store::open(state.path(), limits(1 << 24)).unwrap().with_free(|_| Ok(LOTS));
    store.put(&sample(4, Some(b"[0,0.5,1,1.5]".to_vec()))).unwrap();
    let mut other = sample(2, None);
    other.meta.model = "other".into();
    store.put(&other).unwrap();
    std::fs::write(state.path().join("0000000000000007.cap"), b"damaged").unwrap();

    let out = tempfile::tempdir().unwrap();
    let summary =
        export::to_dir(state.path(), out.path(), &export::Filter::default(), &mut |_, _| {}).unwrap();
    assert_eq!((summary.samples, summary.damaged), (2, 1));
    let index = std::fs::read_to_string(out.path().join("index.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = index.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["input"], "0000000000000000.npy");
    assert_eq!(lines[0]["payload"], "0000000000000000.payload");
    assert_eq!(lines[0]["reason"], "low-confidence");
    assert_eq!(lines[1]["model"], "other");
    let (shape, values) =
        npy::read_f32(&std::fs::read(out.path().join("0000000000000000.npy")).unwrap()).unwrap();
    assert_eq!((shape, values), (vec![1, 4], vec![0.0, 0.5, 1.0, 1.5]));
    assert_eq!(std::fs::read(out.path().join("0000000000000000.payload")).unwrap(), b"[0,0.5,1,1.5]");

    let only = export::Filter { model: Some("other".into()), since_ms: None };
    let (summary, tar) = export::to_tar(state.path(), Vec::new(), &only, &mut |_, _| {}).unwrap();
    assert_eq!(summary.samples, 1);
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["samples/0000000000000001.npy", "samples/index.jsonl"]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::proptest_config as config;

    fn any_sample() -> impl Strategy<Value = Sample> {
        (
            prop::collection::vec(any::<f32>(), 0..64),
            prop::option::of(prop::collection::vec(any::<u8>(), 1..64)),
            any::<u64>(),
            "[a-z]{1,8}",
        )
            .prop_map(|(input, payload, time_ms, model)| {
                let mut m = meta(&model, time_ms, vec![input.len()]);
                m.payload_format = payload.as_ref().map(|_| "json".to_string());
                Sample { meta: m, input, payload }
            })
    }

    proptest! {
        #![proptest_config(config(64))]

        #[test]
        fn samples_round_trip(s in any_sample()) {
            let back = Sample::decode(&s.encode()).unwrap();
            // NaN is not equal to itself: compare the bits.
            prop_assert_eq!(back.input.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                s.input.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            prop_assert_eq!(back.meta, s.meta);
            prop_assert_eq!(back.payload, s.payload);
        }

        #[test]
        fn damaged_sample_files_never_panic(
            s in any_sample(),
            cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            len in any::<prop::sample::Index>(),
        ) {
            let mut bytes = s.encode();
            for (at, v) in &cuts {
                let i = at.index(bytes.len());
                bytes[i] = *v;
            }
            let keep = if cuts.is_empty() { bytes.len() } else { len.index(bytes.len() + 1) };
            let _ = Sample::decode(&bytes[..keep]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), header in any::<bool>()) {
            let mut b = if header { b"EDGECAP1".to_vec() } else { Vec::new() };
            b.extend_from_slice(&bytes);
            prop_assert!(Sample::decode(&b).is_err() || header);
            let mut n = b"\x93NUMPY\x01\x00".to_vec();
            n.extend_from_slice(&bytes);
            let _ = npy::read_f32(&n);
            let _ = npy::read_f32(&bytes);
        }

        #[test]
        fn npy_round_trips(dims in prop::collection::vec(0usize..5, 1..4)) {
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n).map(|i| i as f32 - 3.5).collect();
            prop_assert_eq!(npy::read_f32(&npy::write_f32(&dims, &values)).unwrap(), (dims, values));
        }
    }
}
