use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

pub(super) fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/vibration")
}

pub(super) fn vad_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("EDGE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache"));
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
        shape: None,
    }
}

#[test]
fn full_queue_is_an_immediate_counted_rejection() {
    let engine =
        Engine::start(&EngineConfig { threads: 1, queue: 2, max_streams: 8, ..EngineConfig::default() });
    engine.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
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
    engine.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
    let mut req = request("vibration", "s", vec![0.1; 256]);
    req.deadline = Instant::now() - Duration::from_millis(1);
    let err = engine.infer_blocking(req).err().expect("deadline passed");
    assert!(matches!(err, InferError::Deadline { .. }), "{err}");
    assert_eq!(engine.stats()["vibration"].rejected.get("deadline"), Some(&1));
}

#[test]
fn unknown_model_and_wrong_length_are_refused_at_submit() {
    let engine = Engine::start(&EngineConfig::default());
    engine.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
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
    engine.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
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
    engine.install(LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap());
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

// ---- Bounded models: sizes, the device's limit, files, labels ----

use crate::engine::budget::{self, MemoryEstimate};
use crate::engine::spec::{InputSpec, ModelSpec};

/// A copy of the demo model in a fresh directory, with `edit` applied to its spec.
fn demo_copy(edit: impl Fn(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(demo_dir().join(f), dir.join(f)).unwrap();
    }
    let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), edit(spec)).unwrap();
    (tmp, dir)
}

fn load_err(dir: &std::path::Path, limits: &ModelLimits) -> String {
    match LoadedModel::load_dir(dir, limits) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_shape_whose_size_wraps_is_refused_by_the_spec_check() {
    // 2^32 * 3 * 2^32 * 32 elements: the product wraps a u64 (to 0 in this case).
    let (_tmp, dir) = demo_copy(|s| s.replace("shape = [1, 256]", "shape = [4294967296, 3, 4294967296, 32]"));
    let err = load_err(&dir, &ModelLimits::default());
    assert!(err.contains("is too large to count (its size overflows)"), "{err}");
    assert!(err.contains("[4294967296, 3, 4294967296, 32]"), "names the shape: {err}");
}

#[test]
fn an_input_larger_than_the_limit_is_refused_before_the_file_is_read() {
    let (_tmp, dir) = demo_copy(|s| {
        s.replace("shape = [1, 256]", "shape = [1, 3, 65536, 65536]")
            .replace("[pre.window]\nsize = 256\nhop = 128\n", "")
    });
    // The file is never read: a missing file gives the same refusal.
    std::fs::remove_file(dir.join("model.onnx")).unwrap();
    let err = load_err(&dir, &ModelLimits::default());
    assert!(err.contains("input `vibration` [1, 3, 65536, 65536] of f32 needs 48.0 GiB"), "{err}");
    assert!(err.contains("(256.0 MiB)"), "names the limit: {err}");
    assert!(err.contains("engine.max_model_memory_mb") && err.contains("--max-model-memory-mb"), "{err}");
}

#[test]
fn a_model_file_larger_than_the_limit_is_refused_before_it_is_read() {
    let (_tmp, dir) = demo_copy(|s| s);
    let file_bytes = std::fs::metadata(dir.join("model.onnx")).unwrap().len();
    let err = load_err(&dir, &ModelLimits { max_bytes: file_bytes - 1 });
    assert!(err.contains("the model file needs"), "{err}");
    assert!(err.contains(&format!("({file_bytes} bytes)")), "{err}");
}

#[test]
fn working_memory_past_the_limit_is_refused_with_the_estimate() {
    let Some(vad) = vad_dir() else {
        panic!("silero-vad is not in the test cache: run tests/run --prepare-only");
    };
    let model = LoadedModel::load_dir(&vad, &ModelLimits::default()).unwrap();
    let est = model.info.memory;
    assert!(est.weights_bytes > 0 && est.peak_tensor_bytes > 0, "{est:?}");
    assert_eq!(model.info.memory_limit_bytes, 256 << 20);
    // The inputs and the file fit a limit one byte under the estimate; the estimate
    // does not.
    let err = load_err(&vad, &ModelLimits { max_bytes: est.total() - 1 });
    assert!(err.contains("estimated working memory"), "{err}");
    assert!(err.contains(&format!("({} bytes)", est.total())), "{err}");
    LoadedModel::load_dir(&vad, &ModelLimits { max_bytes: est.total() }).unwrap();
}

/// x → exp → a, x → abs → b, a + b → out: three [1, 1000] f32 tensors (4000 bytes each)
/// are alive at once while the sum is computed; x is freed once both branches ran; the
/// constant added to the output is a weight.
#[test]
fn the_estimate_counts_weights_once_and_tensors_at_their_peak() {
    use tract_onnx::tract_core::ops::math;
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact([1, 1000])).unwrap();
    let a = m.wire_node("a", math::exp(), &[x]).unwrap()[0];
    let b = m.wire_node("b", math::abs(), &[x]).unwrap()[0];
    let c = m.wire_node("c", math::add(), &[a, b]).unwrap()[0];
    let k = m.add_const("k", tensor2(&[[1f32; 1000]])).unwrap();
    let out = m.wire_node("out", math::add(), &[c, k]).unwrap()[0];
    m.select_output_outlets(&[out]).unwrap();
    let est = MemoryEstimate::of(&m).unwrap();
    assert_eq!(est, MemoryEstimate { weights_bytes: 4000, peak_tensor_bytes: 12_000, unsized_tensors: 0 });
    assert_eq!(est.total(), 16_000);
}

#[test]
fn the_test_models_fit_the_default_limit() {
    let mut dirs = vec![demo_dir()];
    dirs.extend(vad_dir());
    dirs.extend(cls_dir());
    assert_eq!(dirs.len(), 3, "the test cache has silero-vad and ppocr-cls");
    for dir in dirs {
        let m = LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
        assert!(m.info.memory.total() < 16 << 20, "{}: {:?}", dir.display(), m.info.memory);
    }
}

pub(super) fn cls_dir() -> Option<PathBuf> {
    vad_dir().map(|vad| vad.with_file_name("ppocr-cls")).filter(|d| d.join("model.onnx").is_file())
}

#[test]
fn labels_must_name_each_class_of_the_output() {
    let (_tmp, dir) = demo_copy(|s| {
        s.replace("labels = [\"normal\", \"imbalance\", \"impact\"]", "labels = [\"normal\", \"imbalance\"]")
    });
    let err = load_err(&dir, &ModelLimits::default());
    assert!(err.contains("post.labels has 2 name(s) but output `probs` [1, 3] holds 3 classes"), "{err}");

    // A single score takes two labels (below and at or above the threshold).
    let Some(vad) = vad_dir() else { panic!("silero-vad is not in the test cache") };
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(vad.join(f), tmp.path().join(f)).unwrap();
    }
    let spec = std::fs::read_to_string(tmp.path().join("model.toml")).unwrap();
    assert!(spec.contains("labels = [\"silence\", \"speech\"]"), "{spec}");
    let spec =
        spec.replace("labels = [\"silence\", \"speech\"]", "labels = [\"silence\", \"speech\", \"music\"]");
    std::fs::write(tmp.path().join("model.toml"), spec).unwrap();
    let err = load_err(tmp.path(), &ModelLimits::default());
    assert!(err.contains("post.labels has 3 name(s) but output `output` [1, 1] is a single score"), "{err}");
}

#[test]
fn the_model_file_must_stay_inside_the_model_directory() {
    let (tmp, dir) = demo_copy(|s| s);
    // A real model outside the directory, where each spec below points.
    let outside = tmp.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    std::fs::rename(dir.join("model.onnx"), outside.join("model.onnx")).unwrap();
    let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    let with_file = |file: &str| {
        let s = spec.replace("file = \"model.onnx\"", &format!("file = \"{file}\""));
        std::fs::write(dir.join("model.toml"), s).unwrap();
    };

    with_file("../elsewhere/model.onnx");
    let err = load_err(&dir, &ModelLimits::default());
    assert!(err.contains("file `../elsewhere/model.onnx` leaves the model directory with `..`"), "{err}");

    let absolute = outside.join("model.onnx");
    with_file(absolute.to_str().unwrap());
    let err = load_err(&dir, &ModelLimits::default());
    assert!(err.contains("is an absolute path"), "{err}");

    // A link inside the directory that leads out of it.
    std::os::unix::fs::symlink(&absolute, dir.join("link.onnx")).unwrap();
    with_file("link.onnx");
    let err = load_err(&dir, &ModelLimits::default());
    assert!(
        err.contains("file `link.onnx` leads to") && err.contains("outside the model directory"),
        "{err}"
    );
    // A link to a directory outside, with the file named through it.
    std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();
    with_file("sub/model.onnx");
    let err = load_err(&dir, &ModelLimits::default());
    assert!(err.contains("outside the model directory"), "{err}");
    // A dangling link that points out is refused too: its target may appear later.
    std::os::unix::fs::symlink("/nonexistent/model.onnx", dir.join("dangling.onnx")).unwrap();
    with_file("dangling.onnx");
    let err = load_err(&dir, &ModelLimits::default());
    assert!(err.contains("outside the model directory"), "{err}");

    // A plain nested file, and a link that stays inside, still load.
    std::fs::remove_file(dir.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("nested/deeper")).unwrap();
    std::fs::rename(&absolute, dir.join("nested/deeper/model.onnx")).unwrap();
    with_file("nested/deeper/model.onnx");
    LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
    with_file("./nested/deeper/model.onnx");
    LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
    std::os::unix::fs::symlink("nested/deeper/model.onnx", dir.join("inside.onnx")).unwrap();
    with_file("inside.onnx");
    LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
}

#[test]
fn a_spec_that_is_not_utf8_is_reported_as_such_with_the_offset() {
    let (_tmp, dir) = demo_copy(|s| s);
    let mut bytes = std::fs::read(dir.join("model.toml")).unwrap();
    let at = bytes.iter().position(|b| *b == b'\n').unwrap() + 3;
    bytes[at] = 0xff;
    std::fs::write(dir.join("model.toml"), &bytes).unwrap();
    let err = ModelSpec::load_dir(&dir).unwrap_err().to_string();
    assert!(err.contains(&format!("model.toml:2: not UTF-8 text: byte {at} (0xff)")), "{err}");
    assert!(!err.contains("needs a model.toml"), "not reported as missing: {err}");
    std::fs::remove_file(dir.join("model.toml")).unwrap();
    let err = ModelSpec::load_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("no model spec at") && err.contains("needs a model.toml"), "{err}");
}

// ---- Property tests: model.toml and shape arithmetic ----

use proptest::prelude::*;

/// The demo's spec, as a seed for edits.
fn demo_spec_text() -> String {
    std::fs::read_to_string(demo_dir().join("model.toml")).unwrap()
}

/// Dimensions from the ranges where arithmetic goes wrong: small, around 2^16 and 2^32,
/// and up to what TOML integers hold.
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=8, Just(65_536usize), (1usize << 31)..=(1usize << 33), 1usize..=(i64::MAX as usize),]
}

/// Exact byte count of a shape in u128, or `None` past u128 (so past u64 too).
fn reference_bytes(shape: &[usize], elem: usize) -> Option<u128> {
    shape.iter().try_fold(elem as u128, |n, d| n.checked_mul(*d as u128))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    /// Any text: a spec or an error, never a panic.
    #[test]
    fn spec_parsing_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let _ = ModelSpec::parse(&text, std::path::Path::new("model.toml"));
    }

    /// Edits of a valid spec reach the checks behind the syntax: still never a panic.
    #[test]
    fn spec_parsing_never_panics_on_edited_specs(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..4, "[\\[\\]=\"0-9a-z_., \n-]{0,12}"), 1..6)
    ) {
        let mut text = demo_spec_text();
        for (at, cut, insert) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) { i -= 1; }
            let mut end = (i + cut).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(i..end.max(i), &insert);
        }
        let _ = ModelSpec::parse(&text, std::path::Path::new("model.toml"));
    }

    /// Any bytes: not UTF-8 is reported at the offset the standard library finds.
    #[test]
    fn spec_bytes_are_refused_at_the_first_invalid_byte(
        prefix in "\\PC{0,100}", tail in proptest::collection::vec(any::<u8>(), 0..64)
    ) {
        let mut bytes = prefix.into_bytes();
        bytes.extend(tail);
        match (ModelSpec::parse_bytes(&bytes, std::path::Path::new("m.toml")), std::str::from_utf8(&bytes)) {
            (Err(crate::engine::SpecError::NotUtf8 { offset, byte, .. }), Err(e)) => {
                prop_assert_eq!(offset, e.valid_up_to());
                prop_assert_eq!(byte, bytes[offset]);
            }
            (Err(crate::engine::SpecError::NotUtf8 { .. }), Ok(_)) => prop_assert!(false, "valid UTF-8 refused"),
            (_, Err(_)) => prop_assert!(false, "invalid UTF-8 accepted"),
            _ => {}
        }
    }

    /// Shape arithmetic never wraps: a byte count is exact or the shape is refused.
    #[test]
    fn shape_sizes_are_exact_or_refused(shape in proptest::collection::vec(dim(), 0..6), dt in 0usize..8) {
        use crate::engine::spec::DType;
        let dtype = [DType::F32, DType::F64, DType::I64, DType::I32, DType::I16, DType::I8, DType::U8, DType::Bool][dt];
        let want = reference_bytes(&shape, dtype.size()).filter(|b| *b <= u64::MAX as u128);
        let elements_fit = reference_bytes(&shape, 1).is_some_and(|n| n <= usize::MAX as u128);
        let got = budget::tensor_bytes(&shape, dtype.size());
        prop_assert_eq!(got.map(u128::from), want.filter(|_| elements_fit));
        // The spec check agrees: accepted means an exact size.
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let text = format!(
            "name = \"m\"\nversion = \"1\"\n[[input]]\nname = \"x\"\ndtype = \"{}\"\nshape = [{}]\n",
            dtype.name(), dims.join(", ")
        );
        match ModelSpec::parse(&text, std::path::Path::new("model.toml")) {
            Ok(spec) => {
                let input: &InputSpec = &spec.inputs[0];
                prop_assert_eq!(input.bytes().map(u128::from), want);
                prop_assert_eq!(input.len() as u128, reference_bytes(&shape, 1).unwrap());
            }
            Err(e) => prop_assert!(got.is_none(), "refused a shape of {:?} bytes: {}", got, e),
        }
    }

    /// A valid spec written out as TOML reads back as the same spec.
    #[test]
    fn valid_specs_round_trip_through_toml(spec in valid_spec()) {
        let text = toml::to_string(&spec).unwrap();
        let back = ModelSpec::parse(&text, std::path::Path::new("model.toml"));
        prop_assert!(back.is_ok(), "{}\n{}", text, back.unwrap_err());
        prop_assert_eq!(back.unwrap(), spec);
    }
}

fn finite_f32() -> impl Strategy<Value = f32> {
    proptest::num::f32::NORMAL | proptest::num::f32::SUBNORMAL | proptest::num::f32::ZERO
}

fn dtype() -> impl Strategy<Value = crate::engine::spec::DType> {
    use crate::engine::spec::DType;
    prop::sample::select(vec![
        DType::F32,
        DType::F64,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::Bool,
    ])
}

/// Specs that pass validation by construction: one data input whose shape fits the
/// pre-processing chosen (plain, a window or an image), optional state and constant
/// inputs, and any post-processing.
fn valid_spec() -> impl Strategy<Value = ModelSpec> {
    use crate::engine::spec::*;
    let image = (
        prop::sample::select(vec![1usize, 3]),
        1u32..=16,
        1u32..=16,
        finite_f32(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        (any::<bool>(), any::<bool>(), 0u8..=255),
    )
        .prop_flat_map(
            |(channels, width, height, scale, nhwc, with_mean, with_std, (letterbox, bgr, pad))| {
                let n = if with_mean { channels } else { 0 };
                let m = if with_std { channels } else { 0 };
                (
                    proptest::collection::vec(finite_f32(), n..=n),
                    proptest::collection::vec(0.01f32..10.0, m..=m),
                )
                    .prop_map(move |(mean, std)| ImageSpec {
                        width: Some(width),
                        height: Some(height),
                        channels,
                        scale,
                        mean,
                        std,
                        layout: if nhwc { ImageLayout::Nhwc } else { ImageLayout::Nchw },
                        resize: if letterbox { ResizeMode::Letterbox } else { ResizeMode::Stretch },
                        pad: letterbox.then_some(f32::from(pad)),
                        position: letterbox.then_some(PadPosition::TopLeft),
                        channel_order: if bgr && channels == 3 {
                            ChannelOrder::Bgr
                        } else {
                            ChannelOrder::Rgb
                        },
                        filter: letterbox.then_some(crate::engine::spec::ResizeFilter::Linear),
                        limit_side: None,
                        limit_type: None,
                    })
            },
        );
    let window = (1usize..=64, 1usize..=64, 0usize..=16).prop_map(|(size, hop, context)| WindowSpec {
        size,
        hop,
        context,
    });
    // 0: plain, 1: a window, 2: an image.
    let pre = (
        0u8..3,
        window,
        image,
        proptest::option::of(finite_f32()),
        prop::sample::select(vec![PayloadFormat::Json, PayloadFormat::F32le, PayloadFormat::I16le]),
        proptest::collection::vec(1usize..=8, 0..=4),
    )
        .prop_map(|(kind, window, image, scale, format, plain)| match kind {
            1 => {
                let shape = vec![1, window.context + window.size];
                (
                    PreSpec {
                        format,
                        scale,
                        window: Some(window),
                        image: None,
                        sample_rate: Some(16_000),
                        dsp: None,
                    },
                    shape,
                )
            }
            2 => {
                let (c, h, w) =
                    (image.channels, image.height.unwrap() as usize, image.width.unwrap() as usize);
                let shape =
                    if image.layout == ImageLayout::Nhwc { vec![1, h, w, c] } else { vec![1, c, h, w] };
                (
                    PreSpec {
                        format: PayloadFormat::Image,
                        scale,
                        window: None,
                        image: Some(image),
                        sample_rate: None,
                        dsp: None,
                    },
                    shape,
                )
            }
            _ => (PreSpec { format, scale, window: None, image: None, sample_rate: None, dsp: None }, plain),
        });
    let state = proptest::option::of((
        "[a-z_]{1,8}",
        "[a-z_]{1,8}",
        dtype(),
        proptest::collection::vec(1usize..=4, 0..=3),
    ))
    .prop_map(|s| {
        s.map(|(name, output, dtype, shape)| InputSpec {
            name: format!("s_{name}"),
            dtype,
            shape,
            from: InputFrom::State,
            state_output: Some(output),
            value: None,
            ranges: vec![],
        })
    });
    let konst = proptest::option::of(("[a-z_]{1,8}", dtype(), proptest::collection::vec(1usize..=3, 0..=2)))
        .prop_flat_map(|c| match c {
            None => Just(None).boxed(),
            Some((name, dtype, shape)) => {
                let n = shape.iter().product::<usize>().max(1);
                proptest::collection::vec(proptest::num::f64::NORMAL | proptest::num::f64::ZERO, n..=n)
                    .prop_map(move |value| {
                        Some(InputSpec {
                            name: format!("c_{name}"),
                            dtype,
                            shape: shape.clone(),
                            from: InputFrom::Const,
                            state_output: None,
                            value: Some(value),
                            ranges: vec![],
                        })
                    })
                    .boxed()
            }
        });
    let post = (
        proptest::option::of("[a-z_]{1,8}"),
        any::<bool>(),
        proptest::collection::vec("\\PC{0,8}", 0..4),
        proptest::option::of(1usize..10),
        proptest::option::of(finite_f32()),
        proptest::option::of((finite_f32(), finite_f32())),
        any::<bool>(),
    )
        .prop_map(|(output, softmax, labels, top_k, threshold, segments, raw)| PostSpec {
            kind: PostKind::Scores,
            output,
            softmax,
            labels,
            top_k,
            threshold,
            segments: segments.map(|(a, b)| SegmentSpec { on: a.max(b), off: a.min(b) }),
            raw,
            multilabel: None,
            regression: None,
            anomaly: None,
            detection: None,
            text_boxes: None,
            ctc: None,
        });
    (
        "[A-Za-z0-9._-]{1,16}",
        "\\PC{1,12}",
        proptest::option::of("\\PC{0,30}"),
        "[a-z0-9_]{1,8}(/[a-z0-9_]{1,8}){0,2}\\.onnx",
        ("[a-z_]{1,8}", dtype(), pre),
        state,
        konst,
        post,
        1usize..=(u32::MAX as usize),
    )
        .prop_map(
            |(name, version, description, file, (data, dtype, (pre, shape)), state, konst, post, max)| {
                let data = InputSpec {
                    name: data,
                    dtype,
                    shape,
                    from: InputFrom::Data,
                    state_output: None,
                    value: None,
                    ranges: vec![],
                };
                ModelSpec {
                    name,
                    version,
                    description,
                    file,
                    inputs: std::iter::once(data).chain(state).chain(konst).collect(),
                    pre,
                    post,
                    limits: LimitsSpec { max_payload_bytes: max },
                    monitor: Default::default(),
                    stages: Vec::new(),
                }
            },
        )
}

/// A dimension left symbolic (a size that varies) is sized by the values given for its
/// symbol, and counted as unsized without one.
#[test]
fn the_estimate_sizes_symbolic_dimensions_by_their_given_values() {
    use tract_onnx::tract_core::ops::math;
    let mut m = TypedModel::default();
    let w = m.symbols.sym("w");
    let x = m.add_source("x", f32::fact(&[TDim::from(1), TDim::Sym(w.clone())])).unwrap();
    let y = m.wire_node("y", math::exp(), &[x]).unwrap()[0];
    m.select_output_outlets(&[y]).unwrap();
    let est = MemoryEstimate::of_with(&m, &SymbolValues::default().with(&w, 1000)).unwrap();
    assert_eq!(est, MemoryEstimate { weights_bytes: 0, peak_tensor_bytes: 8000, unsized_tensors: 0 });
    let est = MemoryEstimate::of(&m).unwrap();
    assert_eq!(est.unsized_tensors, 2, "{est:?}");
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
    assert!(err.contains("the height may vary only with the width"), "{err}");
    // Height and width both varying (a detector), with a limit on the longer side.
    let both = "[1, 3, { min = 32, max = 640, multiple_of = 32 }, { min = 32, max = 640, multiple_of = 32 }]";
    assert_eq!(
        spec_problems(
            both,
            &format!(
                "{img}limit_side = 640
"
            )
        ),
        ""
    );
    let err = spec_problems(
        both,
        &format!(
            "{img}limit_side = 0
"
        ),
    );
    assert!(err.contains("line 10: pre.image.limit_side is 0"), "{err}");
    let err = spec_problems(
        "[1, 3, 8, 8]",
        &format!(
            "{img}limit_side = 640
limit_type = \"min\"
"
        ),
    );
    assert!(err.contains("apply when the input's height and width both vary"), "{err}");
    let err = spec_problems("[1, { min = 1, max = 3 }, 8, { min = 8, max = 64 }]", img);
    assert!(err.contains("only the image's width and height may vary (axes 3 and 2 in nchw"), "{err}");
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

/// A `[post]` key the kind does not read is refused, with that kind's fix, whole.
#[test]
fn post_keys_a_kind_does_not_read_are_refused_with_its_fix() {
    for (kind, key, want) in [
        (
            "none",
            "softmax = true",
            "line 9: post.softmax does nothing with post.kind = \"none\" (results hold the raw outputs); remove it, or remove kind = \"none\" to read the output as scores",
        ),
        (
            "detection",
            "top_k = 2",
            "line 9: post.top_k does nothing with post.kind = \"detection\"; remove it (post.detection.score_threshold sets the lowest score)",
        ),
        (
            "text_boxes",
            "top_k = 2",
            "line 9: post.top_k does nothing with post.kind = \"text_boxes\"; remove it",
        ),
        (
            "regression",
            "threshold = 0.5",
            "line 9: post.threshold does nothing with post.kind = \"regression\"; remove it",
        ),
    ] {
        let err = spec_problems("[1, 4]", &format!("[post]\nkind = \"{kind}\"\n{key}\n"));
        assert!(err.lines().any(|l| l.trim_start() == want), "{kind}: want the line\n{want}\nin\n{err}");
    }
}

#[test]
fn a_shadow_runs_on_idle_capacity_only_and_is_not_counted_as_the_model() {
    let engine =
        Engine::start(&EngineConfig { threads: 1, queue: 64, max_streams: 8, ..EngineConfig::default() });
    engine.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
    let candidate =
        engine.install_shadow(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
    assert!(engine.shadow("vibration").is_some());
    let active = engine.model("vibration").unwrap();
    assert_ne!(active.id, candidate.id, "two loads, two stream keys");
    // Idle: the shadow run is taken and answers like the serving version.
    let data = vec![0.3; 256];
    let served = engine.infer_blocking(request("vibration", "s", data.clone())).unwrap();
    let shadowed =
        engine.submit_idle(candidate.clone(), request("vibration", "s", data)).unwrap().expect("idle");
    let shadowed = shadowed.wait_blocking().unwrap();
    assert_eq!(served.post_values(), shadowed.post_values());
    assert!(Arc::ptr_eq(&shadowed.model, &candidate));
    // Busy: with requests waiting, no shadow run is queued.
    let waiting: Vec<_> =
        (0..32).filter_map(|_| engine.submit(request("vibration", "t", vec![0.1; 256])).ok()).collect();
    let busy = engine.submit_idle(candidate.clone(), request("vibration", "u", vec![0.1; 256])).unwrap();
    assert!(busy.is_none() || engine.queue_depth() == 0, "a shadow run was queued behind requests");
    for t in waiting {
        t.wait_blocking().unwrap();
    }
    if let Some(t) = busy {
        t.wait_blocking().unwrap();
    }
    // A shadow run past its deadline is dropped unrun and not counted against the model.
    let mut late = request("vibration", "s", vec![0.1; 256]);
    late.deadline = Instant::now() - Duration::from_millis(1);
    let err = engine.submit_idle(candidate, late).unwrap().expect("idle").wait_blocking().err().unwrap();
    assert!(matches!(err, InferError::Deadline { .. }), "{err}");
    let stats = &engine.stats()["vibration"];
    assert_eq!(stats.ok, 1 + 32 - stats.rejected.values().sum::<u64>());
    assert!(!stats.rejected.contains_key("deadline"), "the shadow's deadline was counted: {stats:?}");
    assert!(engine.remove_shadow("vibration").is_some());
    assert!(engine.shadow("vibration").is_none());
}

#[test]
fn a_recurrent_candidate_keeps_its_own_state_per_stream() {
    let Some(dir) = vad_dir() else {
        panic!("silero-vad is not in the test cache: run tests/run --prepare-only");
    };
    let engine =
        Engine::start(&EngineConfig { threads: 1, queue: 16, max_streams: 8, ..EngineConfig::default() });
    engine.install(LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap());
    let candidate = engine.install_shadow(LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap());
    // Each step runs on the active version, then on the candidate, on the same stream id:
    // with state of its own, the identical candidate follows the same trajectory; were
    // the state shared, each would see the other's step and the scores would part.
    for step in 0..6 {
        let window: Vec<f32> = (0..576).map(|i| 0.5 * ((i + step * 576) as f32 * 0.07).sin()).collect();
        let active = engine.infer_blocking(request("silero-vad", "mic", window.clone())).unwrap();
        let shadow = engine
            .submit_idle(candidate.clone(), request("silero-vad", "mic", window))
            .unwrap()
            .expect("idle")
            .wait_blocking()
            .unwrap();
        assert_eq!(active.outputs[0].values, shadow.outputs[0].values, "step {step}");
    }
    assert_eq!(engine.pool().live_streams, 2, "the stream once per version");
}
