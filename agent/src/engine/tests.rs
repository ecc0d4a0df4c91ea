use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/models/vibration")
}

fn vad_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("EDGE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-cache"));
    let dir = cache.join("models/silero-vad");
    dir.join("model.onnx").is_file().then_some(dir)
}

fn request(model: &str, stream: &str, data: Vec<f32>) -> Request {
    Request {
        model: model.into(),
        stream: Some(stream.into()),
        data,
        deadline: Instant::now() + Duration::from_secs(30),
        reset: false,
    }
}

#[test]
fn full_queue_is_an_immediate_counted_rejection() {
    let engine =
        Engine::start(&EngineConfig { threads: 1, queue: 2, max_streams: 8, ..EngineConfig::default() });
    engine.install(LoadedModel::load_dir(&demo_dir()).unwrap());
    let started = Instant::now();
    let tickets: Vec<_> =
        (0..200).map(|_| engine.submit(request("vibration", "s", vec![0.1; 256]))).collect();
    // Submitting never waits for a worker.
    assert!(started.elapsed() < Duration::from_secs(5));
    let rejected = tickets.iter().filter(|t| matches!(t, Err(InferError::QueueFull { capacity: 2 }))).count();
    assert!(rejected > 0, "a queue of 2 cannot take 200 requests at once");
    let accepted: Vec<_> = tickets.into_iter().filter_map(Result::ok).collect();
    let n = accepted.len();
    for t in accepted {
        t.wait_blocking().unwrap();
    }
    let stats = &engine.stats()["vibration"];
    assert_eq!(stats.ok, n as u64);
    assert_eq!(stats.rejected.get("queue_full").copied(), Some(rejected as u64));
}

#[test]
fn expired_deadline_is_rejected_without_running() {
    let engine = Engine::start(&EngineConfig::default());
    engine.install(LoadedModel::load_dir(&demo_dir()).unwrap());
    let mut req = request("vibration", "s", vec![0.1; 256]);
    req.deadline = Instant::now() - Duration::from_millis(1);
    let err = engine.infer_blocking(req).err().expect("deadline passed");
    assert!(matches!(err, InferError::Deadline { .. }), "{err}");
    assert_eq!(engine.stats()["vibration"].rejected.get("deadline"), Some(&1));
}

#[test]
fn unknown_model_and_wrong_length_are_refused_at_submit() {
    let engine = Engine::start(&EngineConfig::default());
    engine.install(LoadedModel::load_dir(&demo_dir()).unwrap());
    let err = engine.submit(request("nope", "s", vec![0.0; 256])).err().unwrap();
    assert!(err.to_string().contains("loaded models: vibration"), "{err}");
    let err = engine.submit(request("vibration", "s", vec![0.0; 255])).err().unwrap();
    assert!(err.to_string().contains("has 255 values"), "{err}");
}

#[test]
fn many_callers_at_once_get_their_own_answers() {
    let engine = Arc::new(Engine::start(&EngineConfig {
        threads: 2,
        queue: 256,
        max_streams: 64,
        ..EngineConfig::default()
    }));
    engine.install(LoadedModel::load_dir(&demo_dir()).unwrap());
    // Two distinct inputs with distinct answers; every caller must get its own.
    let quiet = vec![0.0f32; 256];
    let loud: Vec<f32> = (0..256).map(|i| 3.0 * (i as f32 * 0.31).sin()).collect();
    let want_quiet =
        engine.infer_blocking(request("vibration", "a", quiet.clone())).unwrap().outputs[0].values.clone();
    let want_loud =
        engine.infer_blocking(request("vibration", "a", loud.clone())).unwrap().outputs[0].values.clone();
    assert_ne!(want_quiet, want_loud);
    std::thread::scope(|s| {
        for c in 0..8 {
            let engine = engine.clone();
            let (q, l, wq, wl) = (&quiet, &loud, &want_quiet, &want_loud);
            s.spawn(move || {
                for i in 0..50 {
                    let (data, want) = if (i + c) % 2 == 0 { (q.clone(), wq) } else { (l.clone(), wl) };
                    let got = engine.infer_blocking(request("vibration", &format!("c{c}"), data)).unwrap();
                    assert_eq!(&got.outputs[0].values, want);
                }
            });
        }
    });
    assert_eq!(engine.stats()["vibration"].ok, 402);
}

#[test]
fn stream_state_is_per_stream_resettable_and_bounded() {
    let Some(dir) = vad_dir() else {
        panic!("silero-vad is not in the test cache: run tests/run --prepare-only");
    };
    let engine =
        Engine::start(&EngineConfig { threads: 2, queue: 16, max_streams: 2, ..EngineConfig::default() });
    engine.install(LoadedModel::load_dir(&dir).unwrap());
    let tone: Vec<f32> = (0..576).map(|i| 0.5 * (i as f32 * 0.07).sin()).collect();
    let score = |stream: &str, reset: bool| -> f32 {
        let mut r = request("silero-vad", stream, tone.clone());
        r.reset = reset;
        engine.infer_blocking(r).unwrap().outputs[0].values[0]
    };
    let first = score("a", false);
    let second = score("a", false);
    assert_ne!(first, second, "the second call sees the first call's state");
    assert_eq!(score("b", false), first, "another stream starts from zeros");
    assert_eq!(score("a", true), first, "a reset starts from zeros");
    // A third stream evicts the least recently used one (b), which then starts afresh.
    score("c", false);
    assert_eq!(engine.pool().live_streams, 2);
    assert_eq!(engine.pool().streams_evicted, 1);
    assert_eq!(score("b", false), first);
}

#[test]
fn a_stream_cannot_run_twice_at_once() {
    let table = streams::StreamTable::new(4);
    assert_eq!(table.take(1, "s"), Ok(None));
    assert_eq!(table.take(1, "s"), Err(streams::TakeError::Busy));
    table.put(1, "s", Some(vec![]));
    assert_eq!(table.take(1, "s"), Ok(Some(vec![])));
}

#[test]
fn contained_panic_becomes_an_error() {
    panic::install_hook();
    let r: Result<(), String> = panic::contain(|| panic!("boom {}", 42));
    assert_eq!(r.unwrap_err(), "boom 42");
}
