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

/// Parses a spec with one data input `x` of `shape`, plus `extra` TOML; the error text.
fn spec_problems(shape: &str, extra: &str) -> String {
    let text = format!(
        "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = {shape}\n{extra}"
    );
    match spec::ModelSpec::parse(&text, std::path::Path::new("model.toml")) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_range_dimension_gives_the_shape_from_the_length() {
    let text = "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"f32\"\nshape = [1, 3, { min = 4, max = 10, multiple_of = 2 }]\n";
    let s = spec::ModelSpec::parse(text, std::path::Path::new("model.toml")).unwrap();
    let x = s.data_input();
    assert_eq!(x.shape, vec![1, 3, 10], "the largest shape bounds the input");
    assert_eq!(x.shape_text(), "[1, 3, 4..=10 (multiple of 2)]");
    assert_eq!(x.shape_for(12), Some(vec![1, 3, 4]));
    assert_eq!(x.shape_for(30), Some(vec![1, 3, 10]));
    assert_eq!(x.shape_for(15), None, "5 is not a multiple of 2");
    assert_eq!(x.shape_for(6), None, "2 is below min");
    assert_eq!(x.shape_for(13), None, "not a whole number of rows");
    assert!(x.accepts(&[1, 3, 8]) && !x.accepts(&[1, 3, 12]) && !x.accepts(&[1, 8]));
    // It survives a round trip through TOML (registry packages carry specs).
    let again = toml::to_string(&s).unwrap();
    assert!(again.contains("multiple_of = 2"), "{again}");
}

#[test]
fn bad_ranges_are_refused_with_their_line() {
    let err = spec_problems("[1, { min = 0, max = 4 }]", "");
    assert!(err.contains("line 6: input `x` dimension 1") && err.contains("1 <= min <= max"), "{err}");
    let err = spec_problems("[1, { min = 9, max = 4 }]", "");
    assert!(err.contains("1 <= min <= max"), "{err}");
    let err = spec_problems("[1, { min = 5, max = 7, multiple_of = 8 }]", "");
    assert!(err.contains("no multiple of 8 lies between 5 and 7"), "{err}");
    let err = spec_problems("[{ min = 1, max = 4 }, { min = 1, max = 4 }]", "");
    assert!(err.contains("only one dimension may be a range (found 2)"), "{err}");
    let err = spec_problems("[1, { min = 1, max = 4, step = 2 }]", "");
    assert!(err.contains("model.toml:6") && err.contains("step"), "unknown key, with its line: {err}");
    let err = spec_problems("[1, -1]", "");
    assert!(err.contains("negative") && err.contains("min = 32"), "{err}");
    let err = spec_problems(
        "[1, 4]",
        "[[input]]\nname = \"s\"\ndtype = \"f32\"\nshape = [{ min = 1, max = 2 }]\nfrom = \"state\"\nstate_output = \"o\"\n",
    );
    assert!(err.contains("line 10: input `s`: only the data input may have a range"), "{err}");
    let err = spec_problems("[1, { min = 4, max = 8 }]", "[pre.window]\nsize = 8\nhop = 8\n");
    assert!(err.contains("line 7: pre.window cuts windows of one size"), "{err}");
}

#[test]
fn image_keys_are_checked_with_their_line() {
    let img = "[pre]\nformat = \"image\"\n[pre.image]\n";
    let ok = spec_problems(
        "[1, 3, 8, 8]",
        &format!(
            "{img}resize = \"letterbox\"\npad = 114\nposition = \"top-left\"\nchannel_order = \"bgr\"\n"
        ),
    );
    assert_eq!(ok, "");
    let err = spec_problems("[1, 3, 8, 8]", &format!("{img}pad = 114\n"));
    assert!(err.contains("line 10: pre.image.pad applies only to resize = \"letterbox\""), "{err}");
    let err = spec_problems("[1, 3, 8, 8]", &format!("{img}resize = \"letterbox\"\npad = 300\n"));
    assert!(err.contains("line 11: pre.image.pad is 300; give a pixel value from 0 to 255"), "{err}");
    let err = spec_problems("[1, 1, 8, 8]", &format!("{img}channels = 1\nchannel_order = \"bgr\"\n"));
    assert!(err.contains("line 11: pre.image.channel_order = \"bgr\" needs channels = 3"), "{err}");
    let err = spec_problems("[1, 3, 8, 8]", &format!("{img}resize = \"fit\"\n"));
    assert!(err.contains("model.toml:10") && err.contains("letterbox"), "{err}");
    let err = spec_problems("[1, 3, 8, 8]", &format!("{img}width = 16\n"));
    assert!(err.contains("line 10: pre.image.width is 16 but input `x` [1, 3, 8, 8] has width 8"), "{err}");
    let err = spec_problems("[1, 8, 8, 3]", img);
    assert!(
        err.contains("pre.image.channels is 3 but input `x` [1, 8, 8, 3] has 8"),
        "nchw is the default: {err}"
    );
    let err = spec_problems("[1, 3, 8, { min = 8, max = 64 }]", &format!("{img}width = 64\n"));
    assert!(
        err.contains("line 10: pre.image.width: input `x` takes any width in [1, 3, 8, 8..=64]"),
        "{err}"
    );
    let err = spec_problems("[1, 3, { min = 8, max = 64 }, 8]", img);
    assert!(err.contains("only the image's width may vary (axis 3 in nchw"), "{err}");
    // A flat input still works when the spec gives the size.
    assert_eq!(spec_problems("[1, 192]", &format!("{img}width = 8\nheight = 8\nchannels = 3\n")), "");
    let err = spec_problems("[1, 192]", img);
    assert!(err.contains("pre.image needs width and height"), "{err}");
}

#[test]
fn sample_rate_and_post_kind_are_checked_with_their_line() {
    assert_eq!(spec_problems("[1, 4]", "[pre]\nsample_rate = 16000\n"), "");
    let err = spec_problems("[1, 4]", "[pre]\nsample_rate = 0\n");
    assert!(err.contains("line 8: pre.sample_rate is 0; write the rate the model was trained at"), "{err}");
    let err = spec_problems("[1, 3, 2, 2]", "[pre]\nformat = \"image\"\nsample_rate = 8000\n[pre.image]\n");
    assert!(err.contains("line 9: pre.sample_rate is for audio"), "{err}");
    assert_eq!(spec_problems("[1, 4]", "[post]\nkind = \"none\"\nraw = true\n"), "");
    let err = spec_problems("[1, 4]", "[post]\nkind = \"none\"\nlabels = [\"a\"]\ntop_k = 1\n");
    assert!(err.contains("line 9: post.labels does nothing with post.kind = \"none\""), "{err}");
    assert!(err.contains("line 10: post.top_k does nothing"), "{err}");
    let err = spec_problems("[1, 4]", "[post]\nkind = \"boxes\"\n");
    assert!(err.contains("model.toml:8") && err.contains("scores") && err.contains("none"), "{err}");
}
