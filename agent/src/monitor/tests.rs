use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::histogram::*;
use super::profile::*;
use super::*;
use crate::sources::{Drift, VibrationSim};
use edge_infer::engine::{Engine, EngineConfig, LoadedModel, ModelLimits, Request};
use edge_infer::pipeline::{SegmentState, Windower};

// --- the score ---

#[test]
fn identical_histograms_score_zero_and_disjoint_ones_one() {
    let p = [0.1, 0.2, 0.3, 0.4];
    assert_eq!(js_distance(&p, &p), 0.0);
    // Scale does not matter: weights are normalised.
    assert!(js_distance(&p, &[1.0, 2.0, 3.0, 4.0]) < 1e-9);
    assert!((js_distance(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
    // Nothing to compare is no drift, not NaN.
    assert_eq!(js_distance(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    assert_eq!(js_distance(&[], &[]), 0.0);
}

proptest! {
    /// Symmetric, within 0..=1, never NaN, whatever the weights (NaN, infinities,
    /// negatives and mismatched lengths included).
    #[test]
    fn the_score_is_symmetric_bounded_and_never_nan(
        p in prop::collection::vec(prop_oneof![0.0..10.0f64, Just(f64::NAN), Just(f64::INFINITY), -1.0..0.0f64], 0..20),
        q in prop::collection::vec(prop_oneof![0.0..10.0f64, Just(f64::NAN), Just(-0.0)], 0..20),
    ) {
        let a = js_distance(&p, &q);
        let b = js_distance(&q, &p);
        prop_assert!(a.is_finite() && (0.0..=1.0).contains(&a), "{a}");
        prop_assert!((a - b).abs() < 1e-12, "{a} != {b}");
        prop_assert!(js_distance(&p, &p) < 1e-7);
    }

    /// The sliding histograms hold exactly the counts of the last `window` observations
    /// (a naive recount agrees), and their memory does not grow with the observations.
    #[test]
    fn sliding_counts_are_the_last_window_and_memory_is_fixed(
        window in 1usize..50,
        bins in prop::collection::vec(1usize..12, 1..4),
        seq in prop::collection::vec(prop::collection::vec(prop::option::of(0usize..15), 3), 0..400),
    ) {
        let mut s = Sliding::new(&bins, window);
        let before = s.memory_bytes();
        for obs in &seq {
            s.push(obs);
        }
        prop_assert_eq!(s.memory_bytes(), before);
        prop_assert_eq!(s.len(), seq.len().min(window));
        let recent = &seq[seq.len().saturating_sub(window)..];
        for (i, b) in bins.iter().enumerate() {
            let mut want = vec![0u32; *b];
            for obs in recent {
                if let Some(Some(x)) = obs.get(i) {
                    want[(*x).min(b - 1)] += 1;
                }
            }
            prop_assert_eq!(s.counts(i), want.as_slice());
        }
    }

    /// A profile built from any finite values passes its own checks, reads back equal,
    /// and gives its reference values a score near 0.
    #[test]
    fn built_profiles_check_and_round_trip(
        values in prop::collection::vec(-1e6..1e6f64, 1..300),
        labels in prop::collection::vec(0usize..4, 1..300),
    ) {
        let spec = demo_spec();
        let mut b = ProfileBuilder::new(&spec);
        for (i, v) in values.iter().enumerate() {
            let names = ["normal", "imbalance", "impact", "odd"];
            let outputs = json!({"score": v.abs() / 1e6, "label": names[labels[i % labels.len()]]});
            b.add(&Observation::new(vec![*v; 5], outputs.as_object().unwrap()));
        }
        let p = b.build("vibration", "1");
        prop_assert_eq!(p.check(), Ok(()));
        // serde_json may read a float back one unit in the last place off: compare closely.
        let back: Profile = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        prop_assert_eq!(back.summaries.len(), p.summaries.len());
        for (x, y) in back.summaries.iter().zip(&p.summaries) {
            prop_assert_eq!((&x.name, &x.labels, x.count), (&y.name, &y.labels, y.count));
            let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-12 * a.abs().max(1.0));
            prop_assert!(close(&x.edges, &y.edges) && close(&x.freq, &y.freq), "{:?} != {:?}", x, y);
        }
        prop_assert_eq!(back.check(), Ok(()));
        for s in &p.summaries {
            prop_assert!(s.edges.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(s.freq.len() <= MAX_BINS);
        }
    }
}

#[test]
fn quantile_edges_split_values_into_equal_shares() {
    let sorted: Vec<f64> = (0..1000).map(f64::from).collect();
    let edges = quantile_edges(&sorted, 10);
    assert_eq!(edges.len(), 9);
    let b = Binning::Edges(edges);
    let mut counts = vec![0u64; b.bins()];
    for v in &sorted {
        counts[b.index_of(*v)] += 1;
    }
    assert_eq!(counts, vec![100; 10]);
    // A constant summary: one edge, everything in the bin above it.
    assert_eq!(quantile_edges(&[2.0; 50], 10), vec![2.0]);
}

#[test]
fn a_broken_profile_is_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Profile::load_dir(dir.path()).unwrap().is_none(), "no profile is not an error");
    std::fs::write(dir.path().join(PROFILE_FILE), "{not json").unwrap();
    let e = Profile::load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("profile.json") && e.contains("edge-agent model profile"), "{e}");
    let bad = json!({"format": 1, "model": "m", "version": "1", "windows": 3,
        "summaries": [{"name": "input.std", "edges": [1.0, 0.5], "freq": [0.5, 0.25, 0.25], "count": 3}]});
    std::fs::write(dir.path().join(PROFILE_FILE), bad.to_string()).unwrap();
    let e = Profile::load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("input.std") && e.contains("ascending"), "{e}");
    let bad = json!({"format": 1, "model": "m", "version": "1", "windows": 3,
        "summaries": [{"name": "input.std", "edges": [0.5], "freq": [0.5, 0.25], "count": 3}]});
    std::fs::write(dir.path().join(PROFILE_FILE), bad.to_string()).unwrap();
    let e = Profile::load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("sum to 1"), "{e}");
}

#[test]
fn image_inputs_are_summarised_per_channel() {
    let mut spec = demo_spec();
    spec.pre.format = edge_infer::engine::spec::PayloadFormat::Image;
    spec.pre.image = Some(toml::from_str("channels = 3\nlayout = \"nhwc\"").expect("an image spec"));
    let s = Summariser::for_spec(&spec);
    assert_eq!(s.names().len(), 15);
    assert_eq!(s.names()[5], "input.c1.mean");
    // Two pixels, interleaved: channel 1 is [2, 4].
    let v = s.summarise(&[1.0, 2.0, 3.0, 1.0, 4.0, 3.0]);
    assert_eq!(&v[5..10], &[3.0, 1.0, 2.0, 4.0, 3.0]);
}

// --- the demo model on the simulated machine ---

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/models/vibration")
}

fn demo_spec() -> edge_infer::engine::spec::ModelSpec {
    edge_infer::engine::spec::ModelSpec::load_dir(&demo_dir()).unwrap().spec
}

/// The demo model, loaded from a copy of its directory (which may get a profile).
struct Rig {
    engine: Engine,
    model: Arc<LoadedModel>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(profile: Option<&Profile>, monitor: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        for f in ["model.toml", "model.onnx"] {
            std::fs::copy(demo_dir().join(f), dir.path().join(f)).unwrap();
        }
        if !monitor.is_empty() {
            let spec = std::fs::read_to_string(dir.path().join("model.toml")).unwrap();
            std::fs::write(dir.path().join("model.toml"), format!("{spec}\n[monitor]\n{monitor}\n")).unwrap();
        }
        if let Some(p) = profile {
            p.write_dir(dir.path()).unwrap();
        }
        let engine = Engine::start(&EngineConfig { threads: 1, queue: 4, ..EngineConfig::default() });
        let model = engine.install(LoadedModel::load_dir(dir.path(), &ModelLimits::default()).unwrap());
        Rig { engine, model, _dir: dir }
    }

    /// Runs `windows` windows of `sim` through the model as a stream does, handing each
    /// window's input summaries and outputs to `each`; stops early when it returns true.
    fn run(
        &self,
        sim: &mut VibrationSim,
        windows: usize,
        mut each: impl FnMut(usize, Vec<f64>, &Map<String, Value>) -> bool,
    ) {
        let spec = &self.model.spec;
        let mut windower = Windower::new(spec.pre.window.as_ref().unwrap());
        let summariser = Summariser::for_spec(spec);
        let mut segment = SegmentState::default();
        let mut n = 0;
        while n < windows {
            for w in windower.push(&sim.samples(128)) {
                let summaries = summariser.summarise(&w.data);
                let resp = self
                    .engine
                    .infer_blocking(Request {
                        model: "vibration".into(),
                        stream: Some("sim".into()),
                        data: w.data,
                        deadline: Instant::now() + Duration::from_secs(60),
                        reset: false,
                        shape: None,
                    })
                    .unwrap();
                let outputs = self.model.post().apply(resp.post_values(), w.index, Some(&mut segment));
                if each(n, summaries, &outputs) {
                    return;
                }
                n += 1;
            }
        }
    }
}

/// The demo's machine (seed 7, as in configs/agent.toml), normal signal only.
fn machine(noise_seed: u64) -> VibrationSim {
    VibrationSim::new(7, 1000.0, 0.0, 0.0).with_noise_seed(noise_seed)
}

/// The profile of the demo machine's normal signal: 5,000 windows (10.7 minutes).
fn demo_profile() -> Profile {
    let rig = Rig::new(None, "");
    let mut b = ProfileBuilder::new(&rig.model.spec);
    rig.run(&mut machine(1), 5000, |_, s, out| {
        b.add(&Observation::new(s, out));
        false
    });
    b.build("vibration", "1")
}

/// Windows after the change within which a 1.5x gain must be detected: with the
/// defaults (window 1000, every 100, raise 0.3), a summary whose recent values all leave
/// the reference's range scores 0.3 once a third of the window has changed, so about
/// 330 windows plus up to `every`; 600 leaves room for summaries that move less.
const DETECTION_BOUND: usize = 600;

/// The "must show": the demo machine's profile, another run of the same
/// machine (another noise seed) whose gain goes to 1.5x after 1,500 windows: drift is
/// raised within [`DETECTION_BOUND`] windows of the change, naming the amplitude
/// summaries; and 20,000 windows of the unchanged machine from a third seed raise none.
#[test]
fn a_gain_change_is_detected_and_unchanged_signal_raises_nothing() {
    let profile = demo_profile();
    let rig = Rig::new(Some(&profile), "");
    let monitors = Monitors::new();
    let change = 1500usize;
    let from_sample = (change as u64 + 1) * 128;
    let mut sim = machine(2).with_drift(Drift { from_sample, gain: 1.5, offset: 0.0, noise: 0.0 });
    let mut raised = None;
    rig.run(&mut sim, change + 3000, |n, s, out| match monitors.observe(&rig.model, s, out) {
        Some(t) if t.raised => {
            raised = Some((n, t));
            true
        }
        Some(t) => panic!("a clear before any raise: {:?}", t.detail),
        None => false,
    });
    let (at, t) = raised.expect("the gain change was never detected");
    assert!(at >= change, "drift raised at window {at}, before the change at {change}: {}", t.detail);
    let after = at - change;
    assert!(
        after <= DETECTION_BOUND,
        "detected {after} windows after the change; the bound is {DETECTION_BOUND}"
    );
    eprintln!("1.5x gain detected {after} windows after the change: {}", t.detail);
    let moved: Vec<&str> =
        t.detail["summaries"].as_array().unwrap().iter().map(|s| s["summary"].as_str().unwrap()).collect();
    assert!(moved.contains(&"input.std"), "{moved:?}");
    let std = t.detail["summaries"].as_array().unwrap().iter().find(|s| s["summary"] == "input.std").unwrap();
    assert!(std["mean"].as_f64().unwrap() > std["reference_mean"].as_f64().unwrap(), "{std}");
    assert!(monitors.is_drifting("vibration"));
    let event = t.event("vibration");
    assert_eq!(event.kind, crate::events::Kind::ModelDrift);

    // The unchanged machine, another seed: no event in 20,000 windows.
    let monitors = Monitors::new();
    let mut worst = 0.0f64;
    rig.run(&mut machine(3), 20_000, |n, s, out| {
        if let Some(t) = monitors.observe(&rig.model, s, out) {
            panic!("drift raised on unchanged signal at window {n}: {}", t.detail);
        }
        if n % 100 == 99 {
            let r = &monitors.report()["vibration"];
            worst = r.scores.values().copied().fold(worst, f64::max);
        }
        false
    });
    let report = &monitors.report()["vibration"];
    assert_eq!(report.state, "ok", "{report:?}");
    assert_eq!(report.reference, ReferenceKind::Profile);
    assert!(!monitors.is_drifting("vibration"));
    eprintln!("unchanged signal, 20,000 windows: highest score {worst:.3} (raise 0.3)");
}

/// Without profile.json the first `reference` results are the reference, and status
/// says so; a later change is still caught and clears again once the signal is back.
#[test]
fn without_a_profile_the_first_results_are_the_reference_and_drift_clears() {
    let rig = Rig::new(None, "window = 200\nevery = 50\nreference = 1000");
    let monitors = Monitors::new();
    let mut sim =
        machine(4).with_drift(Drift { from_sample: 1600 * 128, gain: 2.0, offset: 0.0, noise: 0.0 });
    let mut events = Vec::new();
    rig.run(&mut sim, 1500, |n, s, out| {
        if n == 10 {
            let r = &monitors.report()["vibration"];
            assert_eq!((r.state, r.reference), ("learning", ReferenceKind::FirstResults));
        }
        events.extend(monitors.observe(&rig.model, s, out));
        false
    });
    assert!(events.is_empty(), "{:?}", events.iter().map(|e| &e.detail).collect::<Vec<_>>());
    assert_eq!(monitors.report()["vibration"].state, "ok");
    // The gain comes at window 1600 ...
    rig.run(&mut sim, 400, |_, s, out| {
        events.extend(monitors.observe(&rig.model, s, out));
        false
    });
    assert!(
        events.len() == 1 && events[0].raised,
        "{:?}",
        events.iter().map(|e| &e.detail).collect::<Vec<_>>()
    );
    assert_eq!(events[0].detail["reference"], "first-results");
    // ... and a machine back to normal clears it.
    let mut back = machine(5);
    rig.run(&mut back, 1000, |_, s, out| {
        events.extend(monitors.observe(&rig.model, s, out));
        false
    });
    assert!(
        events.len() == 2 && !events[1].raised,
        "{:?}",
        events.iter().map(|e| &e.detail).collect::<Vec<_>>()
    );
    assert_eq!(events[1].clone().event("vibration").kind, crate::events::Kind::ModelDriftCleared);
    let r = &monitors.report()["vibration"];
    assert!(r.memory_bytes > 0 && r.memory_bytes < 64 * 1024, "{}", r.memory_bytes);
}

/// A profile made for another model is not used: the first results are the reference,
/// and status says why.
#[test]
fn another_models_profile_is_not_used() {
    let mut b = ProfileBuilder::new(&demo_spec());
    b.add(&Observation::new(vec![0.0; 5], &Map::new()));
    let rig = Rig::new(Some(&b.build("other", "1")), "");
    let monitors = Monitors::new();
    monitors.observe(&rig.model, vec![0.0; 5], &Map::new());
    let r = &monitors.report()["vibration"];
    assert_eq!((r.reference, r.state), (ReferenceKind::FirstResults, "learning"));
    assert!(r.profile_error.as_deref().is_some_and(|e| e.contains("`other`")), "{r:?}");
}

#[test]
fn monitoring_can_be_turned_off() {
    let rig = Rig::new(None, "enabled = false");
    let monitors = Monitors::new();
    assert!(monitors.summarise(&rig.model, &[0.0; 256]).is_none());
    assert!(monitors.report().is_empty());
}

#[test]
fn bad_monitor_settings_are_refused_with_the_rule() {
    let spec = std::fs::read_to_string(demo_dir().join("model.toml")).unwrap();
    let text = format!("{spec}\n[monitor]\nraise = 0.1\nclear = 0.2\n");
    let e = edge_infer::engine::spec::ModelSpec::parse(&text, std::path::Path::new("model.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("monitor") && e.contains("clear"), "{e}");
    let text = format!("{spec}\n[monitor]\nwindow = 50\n");
    let e = edge_infer::engine::spec::ModelSpec::parse(&text, std::path::Path::new("model.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("window = 50") && e.contains("100 <= window"), "{e}");
    let text = format!("{spec}\n[monitor]\nwindo = 500\n");
    assert!(edge_infer::engine::spec::ModelSpec::parse(&text, std::path::Path::new("model.toml")).is_err());
}

/// `registry publish` packs every file of the model directory: the profile travels in
/// the signed package.
#[test]
fn the_package_carries_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.toml", "model.onnx", "selftest.json"] {
        std::fs::copy(demo_dir().join(f), dir.path().join(f)).unwrap();
    }
    let mut b = ProfileBuilder::new(&demo_spec());
    b.add(&Observation::new(vec![0.0; 5], &Map::new()));
    let profile = b.build("vibration", "1");
    profile.write_dir(dir.path()).unwrap();
    let (bytes, _) = crate::ota::package::pack(dir.path()).unwrap();
    let tar_path = dir.path().join("p.tar");
    std::fs::write(&tar_path, bytes).unwrap();
    let out = dir.path().join("out");
    crate::ota::package::unpack(&tar_path, &out).unwrap();
    assert_eq!(Profile::load_dir(&out).unwrap(), Some(profile));
}

/// A result of the version just replaced, still in flight on another stream, does not
/// start the new version's monitor over; a newer load does.
#[test]
fn a_stale_version_does_not_reset_the_monitor() {
    let old = Rig::new(None, "");
    let new = Rig::new(None, "");
    assert!(new.model.id > old.model.id);
    let monitors = Monitors::new();
    let outputs = json!({"label": "normal", "score": 0.9});
    let outputs = outputs.as_object().unwrap();
    for _ in 0..3 {
        monitors.observe(&new.model, vec![0.0; 5], outputs);
    }
    assert!(monitors.observe(&old.model, vec![0.0; 5], outputs).is_none());
    assert_eq!(monitors.report()["vibration"].results, 3, "the stale result is not counted");
    let newer = Rig::new(None, "");
    monitors.observe(&newer.model, vec![0.0; 5], outputs);
    assert_eq!(monitors.report()["vibration"].results, 1, "a newer load starts afresh");
}

#[test]
fn label_counts_hold_the_last_window_and_everything_since_activation() {
    let mut t = super::LabelTally::new(3);
    for l in ["a", "a", "b", "c", "c"] {
        t.push(l);
    }
    let c = t.counts("2");
    assert_eq!(c.version, "2");
    // The last three: b, c, c.
    assert_eq!(c.recent, [("b".to_string(), 1), ("c".to_string(), 2)].into());
    assert_eq!(c.total, [("a".to_string(), 2), ("b".to_string(), 1), ("c".to_string(), 2)].into());
    // Past the bound on distinct labels, the rest count under one name.
    let mut many = super::LabelTally::new(10);
    for i in 0..(super::MAX_LABELS + 5) {
        many.push(&i.to_string());
    }
    let c = many.counts("1");
    assert_eq!(c.total.len(), super::MAX_LABELS);
    assert_eq!(c.total.get(super::OTHER_LABEL), Some(&6));
}
