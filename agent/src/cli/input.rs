//! Reading an input file for `infer` and `bench`: by extension or `--format`.

use std::path::Path;

use anyhow::{Context, bail};

use edge_infer::engine::spec::{ModelSpec, PayloadFormat};
use edge_infer::pipeline::dsp::ModelRate;
use edge_infer::pipeline::{self, Payload, Windower};

/// How an input file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// JSON numbers (`.json`).
    Json,
    /// Little-endian f32 (`.f32`, `.raw`).
    F32,
    /// Little-endian i16 PCM (`.i16`, `.pcm`).
    I16,
    /// WAV audio (`.wav`).
    Wav,
    /// PNG or JPEG (`.png`, `.jpg`, `.jpeg`).
    Image,
    /// A model input already pre-processed: a float32 NumPy array (`.npy`, as `samples
    /// export` writes), run as it is (no scale, no windows).
    Npy,
    /// JSON lines (`.jsonl`, `.ndjson`): one payload per line, as a sensor sends them,
    /// cut into windows as one stream.
    Jsonl,
}

impl InputFormat {
    /// Chooses a format from the file's extension.
    pub fn detect(path: &Path) -> anyhow::Result<InputFormat> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
        Ok(match ext.as_str() {
            "json" => InputFormat::Json,
            "f32" | "raw" | "bin" => InputFormat::F32,
            "i16" | "pcm" => InputFormat::I16,
            "wav" => InputFormat::Wav,
            "png" | "jpg" | "jpeg" => InputFormat::Image,
            "npy" => InputFormat::Npy,
            "jsonl" | "ndjson" => InputFormat::Jsonl,
            _ => bail!(
                "cannot tell the format of {} from its extension; pass --format json|f32|i16|wav|image|npy|jsonl",
                path.display()
            ),
        })
    }
}

/// The model inputs cut from one file: one per window, or just one.
pub struct Prepared {
    pub inputs: Vec<Vec<f32>>,
    pub format: InputFormat,
    /// For an image: its size and where it sits in the model input, so that detection
    /// boxes map back to it.
    pub frame: Option<pipeline::ImageFrame>,
    /// The data input's shape an image gives when the model's height and width both
    /// vary (its number of values alone does not tell them apart); `None` otherwise.
    pub shape: Option<Vec<usize>>,
}

/// Reads and pre-processes `path` for the model described by `spec`.
pub fn prepare(path: &Path, format: Option<InputFormat>, spec: &ModelSpec) -> anyhow::Result<Prepared> {
    let format = match format {
        Some(f) => f,
        None => InputFormat::detect(path)?,
    };
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read input {}", path.display()))?;
    if format == InputFormat::Npy {
        return Ok(Prepared { inputs: vec![read_npy(path, spec)?], format, frame: None, shape: None });
    }
    let max = spec.limits.max_payload_bytes;
    // WAV and JSON-lines files are streams, cut into windows; every other file is one
    // payload.
    if !matches!(format, InputFormat::Wav | InputFormat::Jsonl) && meta.len() > max as u64 {
        bail!(
            "input {} is {} bytes, over the model's limit of {max} bytes (limits.max_payload_bytes in its model.toml)",
            path.display(),
            meta.len()
        );
    }
    // The shape an image gives (its frame, when the input's height and width both vary).
    let mut shape = None;
    let values = match format {
        InputFormat::Wav => {
            let (rate, mut samples) =
                crate::sources::read_wav(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if let Some(want) = ModelRate::of(spec) {
                samples = want
                    .convert(rate, samples, &spec.name)
                    .map_err(|e| anyhow::anyhow!("input {}: {e}", path.display()))?;
            }
            if let Some(s) = spec.pre.scale {
                samples.iter_mut().for_each(|v| *v *= s);
            }
            pipeline::check_finite(&samples).with_context(|| format!("input {}", path.display()))?;
            samples
        }
        InputFormat::Json => decode_file(path, spec, PayloadFormat::Json)?.values,
        InputFormat::F32 => decode_file(path, spec, PayloadFormat::F32le)?.values,
        InputFormat::I16 => decode_file(path, spec, PayloadFormat::I16le)?.values,
        InputFormat::Image => {
            let decoded = decode_file(path, spec, PayloadFormat::Image)?;
            shape = decoded.shape;
            decoded.values
        }
        InputFormat::Npy => read_npy(path, spec)?,
        InputFormat::Jsonl => {
            return Ok(Prepared { inputs: prepare_lines(path, spec)?, format, frame: None, shape: None });
        }
    };
    let inputs = match Windower::for_spec(spec) {
        Some(mut w) if format != InputFormat::Image => {
            let windows = w.push(&values);
            if windows.is_empty() {
                bail!(
                    "input {} has {} samples, fewer than one {}",
                    path.display(),
                    values.len(),
                    too_short(spec)
                );
            }
            windows.into_iter().map(|w| w.data).collect()
        }
        // An image whose sides both vary has the shape its frame gives (the engine
        // checks it); its number of values alone tells no shape.
        _ if format == InputFormat::Image && spec.image_sides_vary() => vec![values],
        _ => {
            check_whole(&path.display().to_string(), &values, spec)?;
            vec![values]
        }
    };
    let frame = match format {
        InputFormat::Image => std::fs::read(path).ok().and_then(|b| pipeline::frame_for(spec, &b)),
        _ => None,
    };
    Ok(Prepared { inputs, format, frame, shape })
}

/// Checks that one payload's values fill the model's data input.
fn check_whole(what: &str, values: &[f32], spec: &ModelSpec) -> anyhow::Result<()> {
    let want = spec.data_input();
    if want.shape_for(values.len()).is_some() {
        return Ok(());
    }
    if want.ranges.is_empty() {
        bail!(
            "input {what} has {} values but the model input `{}` {:?} takes {}",
            values.len(),
            want.name,
            want.shape,
            want.len()
        );
    }
    bail!(
        "input {what} has {} values, and no shape the model input `{}` takes ({}) holds that many",
        values.len(),
        want.name,
        want.shape_text()
    )
}

/// A JSON-lines file: each non-empty line is one payload (at most the model's payload
/// limit), decoded as a sensor message would be; with windows, the lines are one stream.
fn prepare_lines(path: &Path, spec: &ModelSpec) -> anyhow::Result<Vec<Vec<f32>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read input {}", path.display()))?;
    let max = spec.limits.max_payload_bytes;
    let mut windower = Windower::for_spec(spec);
    let mut inputs = Vec::new();
    let mut samples = 0usize;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        if line.len() > max {
            bail!(
                "input {at}: the line is {} bytes, over the model's limit of {max} bytes (limits.max_payload_bytes in its model.toml)",
                line.len()
            );
        }
        let values = pipeline::decode(spec, Payload::Encoded(PayloadFormat::Json, line.as_bytes().to_vec()))
            .with_context(|| format!("input {at}"))?;
        samples += values.len();
        match windower.as_mut() {
            Some(w) => inputs.extend(w.push(&values).into_iter().map(|w| w.data)),
            None => {
                check_whole(&at, &values, spec)?;
                inputs.push(values);
            }
        }
    }
    if inputs.is_empty() {
        if spec.pre.window.is_some() || spec.pre.dsp.is_some() {
            bail!("input {} has {samples} samples, fewer than one {}", path.display(), too_short(spec));
        }
        bail!("input {} has no lines", path.display());
    }
    Ok(inputs)
}

/// What an input too short for its first model input lacks, for messages.
fn too_short(spec: &ModelSpec) -> String {
    match (&spec.pre.dsp, &spec.pre.window) {
        (Some(d), _) => format!(
            "model input: {} frames of {} samples every {} (pre.dsp.frames, n_fft and hop)",
            d.frames,
            d.fft_size(),
            d.hop
        ),
        (None, Some(w)) => format!("window of {} (pre.window.size)", w.size),
        (None, None) => "input".into(),
    }
}

fn decode_file(
    path: &Path,
    spec: &ModelSpec,
    encoding: PayloadFormat,
) -> anyhow::Result<pipeline::DecodedPayload> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read input {}", path.display()))?;
    pipeline::decode_within(spec, Payload::Encoded(encoding, bytes), spec.limits.max_payload_bytes)
        .with_context(|| format!("input {}", path.display()))
}

/// A pre-processed model input from a `.npy` file: float32, and a size the model's data
/// input takes.
fn read_npy(path: &Path, spec: &ModelSpec) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read input {}", path.display()))?;
    let (shape, values) =
        crate::capture::npy::read_f32(&bytes).with_context(|| format!("input {}", path.display()))?;
    let want = spec.data_input();
    if want.shape_for(values.len()).is_none() {
        bail!(
            "input {} is an array of shape {shape:?}, but the model input `{}` takes {}",
            path.display(),
            want.name,
            want.shape_text()
        );
    }
    pipeline::check_finite(&values).with_context(|| format!("input {}", path.display()))?;
    Ok(values)
}
