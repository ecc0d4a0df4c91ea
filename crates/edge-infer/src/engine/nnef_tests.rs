//! NNEF conversion and loading on the test cache's real models, and damaged archives.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::engine::{LoadedModel, ModelFormat, ModelLimits, Want};

fn models() -> PathBuf {
    let cache = std::env::var_os("EDGE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache"));
    cache.join("models")
}

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/vibration")
}

/// A copy of the model folder `src` (its files, not subfolders): conversion writes
/// into the folder.
fn copy(src: &Path) -> (tempfile::TempDir, PathBuf) {
    assert!(
        src.join("model.toml").is_file(),
        "{} is not prepared: run tests/run --prepare-only",
        src.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(src.file_name().unwrap());
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    (tmp, dir)
}

/// Converts a copy of `src`, checks one archive per model file was written with outputs
/// equal to ONNX, and that the folder then loads from NNEF, stages too.
fn converts(src: &Path, files: usize) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = copy(src);
    let done = convert(&dir, &ModelLimits::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.len(), files, "{done:?}");
    for c in &done {
        assert!(c.path.is_file() && c.bytes > 0, "{c:?}");
        assert!(c.compared >= 1 && c.max_diff <= TOLERANCE_ABS.max(1e-3), "{c:?}");
        eprintln!(
            "{}: ONNX parse {:.1} ms + optimise {:.1} ms, NNEF parse {:.1} ms + optimise {:.1} ms, max diff {:e}",
            c.path.display(),
            c.onnx_load_ms,
            c.onnx_optimise_ms,
            c.nnef_load_ms,
            c.nnef_optimise_ms,
            c.max_diff
        );
    }
    let model = LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
    assert_eq!(model.info.format, ModelFormat::Nnef);
    assert!(model.stages.iter().all(|s| s.info.format == ModelFormat::Nnef));
    (tmp, dir)
}

#[test]
fn demo_model_converts_to_nnef_with_equal_outputs() {
    converts(&demo(), 1);
}

#[test]
fn silero_vad_converts_to_nnef_with_equal_outputs() {
    converts(&models().join("silero-vad"), 1);
}

#[test]
fn ppocr_classifier_converts_to_nnef_with_equal_outputs() {
    converts(&models().join("ppocr-cls"), 1);
}

/// A model tract cannot convert stays ONNX: the error names what blocks it, and the
/// folder is left with no archive (the pipeline's models go together).
fn stays_onnx(src: &Path, says: &str) {
    let (_tmp, dir) = copy(src);
    let err = convert(&dir, &ModelLimits::default(), &[]).unwrap_err();
    assert!(err.onnx_only() && err.to_string().contains(says), "{err}");
    let archives: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(".nnef."))
        .collect();
    assert!(archives.is_empty(), "{archives:?}");
    let model = LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
    assert_eq!(model.info.format, ModelFormat::Onnx);
}

#[test]
fn ppocr_pipeline_stays_onnx_because_its_ranges_do_not_type_open() {
    // Its detector (H and W ranges) and recogniser (a width range) are typed anew per
    // size from the ONNX graph: there is no one typed graph to write.
    stays_onnx(&models().join("ppocr"), "range dimension left open");
}

#[test]
fn a_range_that_types_open_stays_symbolic_in_the_archive() {
    let (_tmp, dir) = copy(&models().join("ppocr-cls"));
    let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    let spec = spec
        .replace("[1, 3, 48, 192]", "[1, 3, 48, { min = 64, max = 256, multiple_of = 32 }]")
        .replace("width = 192\n", "");
    std::fs::write(dir.join("model.toml"), spec).unwrap();
    let done = convert(&dir, &ModelLimits::default(), &[]).unwrap();
    assert_eq!(done[0].compared, 2, "two widths compared");
    let model = LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
    assert_eq!(model.info.format, ModelFormat::Nnef);
    for width in [96, 128, 256] {
        model.plan_for(&[1, 3, 48, width]).unwrap();
    }
    assert_eq!(model.plan_cache().unwrap().made, 4, "the smallest width at load, then three");
}

#[test]
fn nudenet_converts_to_nnef_with_equal_outputs() {
    converts(&models().join("nudenet"), 1);
}

#[test]
fn open_wake_word_embedding_converts_to_nnef_with_equal_outputs() {
    converts(&models().join("oww-embedding"), 1);
}

#[test]
fn open_wake_word_classifier_stays_onnx_for_its_if_operator() {
    // tract has no NNEF form for ONNX's `If` (its IfThenElse op).
    stays_onnx(&models().join("oww-hey-jarvis"), "No serializer found for node #59 \"If\" IfThenElse");
}

#[test]
fn self_test_inputs_are_compared_and_a_failed_conversion_leaves_no_archive() {
    let (_tmp, dir) = copy(&demo());
    // An earlier archive goes when the new conversion fails (here: wrong input length).
    std::fs::write(dir.join("model.nnef.tgz"), b"stale").unwrap();
    let err = convert(&dir, &ModelLimits::default(), &[vec![0.5; 7]]).unwrap_err();
    assert!(err.onnx_only() && err.to_string().contains("input 0"), "{err}");
    assert!(!dir.join("model.nnef.tgz").exists());
    let done = convert(&dir, &ModelLimits::default(), &[vec![0.25; 256], vec![-0.5; 256]]).unwrap();
    assert_eq!(done[0].compared, 2);
}

#[test]
fn an_archive_for_another_spec_is_refused_with_the_fix() {
    let (_tmp, dir) = converts(&models().join("ppocr-cls"), 1);
    let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    std::fs::write(
        dir.join("model.toml"),
        spec.replace("[1, 3, 48, 192]", "[1, 3, 48, 160]").replace("width = 192", "width = 160"),
    )
    .unwrap();
    let err = LoadedModel::load_dir(&dir, &ModelLimits::default()).err().unwrap().to_string();
    assert!(err.contains("[1, 3, 48, 160]") && err.contains("convert it again"), "{err}");
    // Asked for ONNX, the same folder loads at the new shape.
    let spec = crate::engine::spec::ModelSpec::load_dir(&dir).unwrap();
    let model = LoadedModel::load_as(spec, &dir, &ModelLimits::default(), Want::Onnx).unwrap();
    assert_eq!(model.info.format, ModelFormat::Onnx);
}

fn load_archive(dir: &Path, bytes: &[u8]) -> Result<LoadedModel, LoadError> {
    std::fs::write(dir.join("model.nnef.tgz"), bytes).unwrap();
    LoadedModel::load_dir(dir, &ModelLimits::default())
}

#[test]
fn a_bad_archive_is_a_clear_error() {
    let (_tmp, dir) = copy(&demo());
    for (bytes, says) in [
        (&b""[..], "the file is empty"),
        (&b"not an archive at all, just text"[..], "not a usable NNEF archive"),
        (&[0x1f, 0x8b, 0x08, 0x00, 1, 2, 3][..], "gzip stream is damaged"),
    ] {
        let err = load_archive(&dir, bytes).err().unwrap().to_string();
        assert!(
            err.contains(says) && err.contains("model.nnef.tgz") && err.contains("convert the model again"),
            "{err}"
        );
    }
}

#[test]
fn an_archive_expanding_past_the_limit_is_refused() {
    use std::io::Write as _;
    let (_tmp, dir) = copy(&demo());
    // 100 kB of zeros compress to a few hundred bytes; the limit is above the ONNX
    // file's 40 kB, so only the expansion exceeds it.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&[0u8; 100_000]).unwrap();
    std::fs::write(dir.join("model.nnef.tgz"), gz.finish().unwrap()).unwrap();
    let limits = ModelLimits { max_bytes: 50_000 };
    let spec = crate::engine::spec::ModelSpec::load_dir(&dir).unwrap();
    let err = LoadedModel::load_as(spec, &dir, &limits, Want::Nnef).err().unwrap();
    assert!(matches!(err, LoadError::TooLarge { .. }) && err.to_string().contains("uncompressed"), "{err}");
}

/// The demo model's archive, converted once for every case.
fn demo_archive() -> &'static Vec<u8> {
    static ARCHIVE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let (_tmp, dir) = copy(&demo());
        let done = convert(&dir, &ModelLimits::default(), &[]).unwrap();
        std::fs::read(&done[0].path).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
    ))]

    /// A real archive cut short or with bytes changed: a load error naming the archive,
    /// or a model (a changed weight still loads), never a panic.
    #[test]
    fn a_damaged_archive_never_panics(cut in 0.0f64..1.0, flips in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 0..4)) {
        let (_tmp, dir) = copy(&demo());
        let mut bytes = demo_archive().clone();
        for (at, b) in flips {
            let ix = ((bytes.len() as f64 * at) as usize).min(bytes.len() - 1);
            bytes[ix] ^= b;
        }
        bytes.truncate(((bytes.len() as f64) * cut) as usize + 1);
        if let Err(e) = load_archive(&dir, &bytes) {
            prop_assert!(e.to_string().contains("model.nnef.tgz"), "{}", e);
        }
    }
}

/// Which file a load reads: the archive when it is there, and a build without ONNX
/// refuses a folder without one, naming both files and the commands that fix it.
#[test]
fn the_archive_is_preferred_and_a_build_without_onnx_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("model.onnx");
    let nnef = nnef_path(&onnx);
    std::fs::write(&onnx, b"x").unwrap();
    assert_eq!(Want::Auto.resolve_in(&onnx, &nnef, true).unwrap(), ModelFormat::Onnx);
    let err = Want::Auto.resolve_in(&onnx, &nnef, false).err().unwrap().to_string();
    assert!(
        err.contains("model.onnx")
            && err.contains("model.nnef.tgz")
            && err.contains("without ONNX support")
            && err.contains("registry publish")
            && err.contains("model convert"),
        "{err}"
    );
    assert!(Want::Onnx.resolve_in(&onnx, &nnef, false).is_err());
    std::fs::write(&nnef, b"y").unwrap();
    for has_onnx in [true, false] {
        assert_eq!(Want::Auto.resolve_in(&onnx, &nnef, has_onnx).unwrap(), ModelFormat::Nnef);
    }
    assert_eq!(Want::Onnx.resolve_in(&onnx, &nnef, true).unwrap(), ModelFormat::Onnx);
}

/// A folder shipped with the archive alone loads without the ONNX file (nothing to
/// compare the recorded source with); a folder with neither names the missing ONNX file.
#[test]
fn an_archive_alone_loads_and_a_folder_with_neither_file_says_what_is_missing() {
    let (_tmp, dir) = copy(&demo());
    std::fs::write(dir.join("model.nnef.tgz"), demo_archive()).unwrap();
    std::fs::remove_file(dir.join("model.onnx")).unwrap();
    let model = LoadedModel::load_dir(&dir, &ModelLimits::default()).unwrap();
    assert_eq!(model.info.format, ModelFormat::Nnef);
    std::fs::remove_file(dir.join("model.nnef.tgz")).unwrap();
    let err = LoadedModel::load_dir(&dir, &ModelLimits::default()).err().unwrap();
    assert!(matches!(err, LoadError::Read { .. }) && err.to_string().contains("model.onnx"), "{err}");
}

/// An archive file larger than the model limit is refused by its size, before it is
/// read whole.
#[test]
fn an_archive_file_past_the_limit_is_refused_by_its_size() {
    let (_tmp, dir) = copy(&demo());
    std::fs::write(dir.join("model.nnef.tgz"), vec![7u8; 60_000]).unwrap();
    let limits = ModelLimits { max_bytes: 50_000 };
    let err = LoadedModel::load_dir(&dir, &limits).err().unwrap();
    assert!(matches!(err, LoadError::TooLarge { .. }) && err.to_string().contains("NNEF archive"), "{err}");
}
