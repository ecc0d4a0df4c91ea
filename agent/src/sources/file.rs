//! Replays a file: NDJSON lines, CSV rows, or WAV samples.

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{SensorMessage, SourceError, ndjson, replay_lines};
use crate::config::{FileFormat, FileSource};
use edge_infer::pipeline::Payload;
use edge_infer::pipeline::dsp::ModelRate;

/// WAV samples are sent in chunks of this many frames.
const WAV_CHUNK: usize = 4096;

pub(super) async fn run(
    cfg: FileSource,
    sample_rate: Option<ModelRate>,
    tx: mpsc::Sender<SensorMessage>,
    token: CancellationToken,
) -> Result<(), SourceError> {
    let path_str = cfg.path.display().to_string();
    let stream = cfg.stream.clone().unwrap_or_else(|| file_stream_id(&cfg.path));
    let format = match cfg.format {
        FileFormat::Auto => {
            match cfg.path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase) {
                Some(e) if e == "wav" => FileFormat::Wav,
                Some(e) if e == "csv" => FileFormat::Csv,
                _ => FileFormat::Ndjson,
            }
        }
        f => f,
    };
    let message = |payload, stream| SensorMessage {
        model: cfg.model.clone(),
        stream,
        source: path_str.clone(),
        payload,
        reset: false,
        receipt: None,
        input_id: None,
        force_cloud: false,
    };

    if format == FileFormat::Wav {
        let (mut rate, mut samples) =
            read_wav(&cfg.path).map_err(|reason| SourceError::Read { path: path_str.clone(), reason })?;
        if let Some(want) = sample_rate {
            samples = want
                .convert(rate, samples, &cfg.model)
                .map_err(|reason| SourceError::Read { path: path_str.clone(), reason })?;
            rate = want.hz;
        }
        let pause = (cfg.speed > 0.0)
            .then(|| Duration::from_secs_f64(WAV_CHUNK as f64 / f64::from(rate) / cfg.speed));
        for chunk in samples.chunks(WAV_CHUNK) {
            let msg = message(Payload::Samples(chunk.to_vec()), stream.clone());
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                r = tx.send(msg) => if r.is_err() { return Ok(()) },
            }
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
        }
        return Ok(());
    }

    let file = tokio::fs::File::open(&cfg.path)
        .await
        .map_err(|e| SourceError::Read { path: path_str.clone(), reason: e.to_string() })?;
    replay_lines(file, &path_str, &tx, &token, |line, number| match format {
        FileFormat::Csv => match csv_row(line) {
            Some(row) => Some(Ok(message(Payload::Samples(row), stream.clone()))),
            None if number == 1 => None, // a header
            None => Some(Err("not a row of numbers".to_string())),
        },
        _ => Some(ndjson::parse_line(line, &cfg.model, &stream, &path_str)),
    })
    .await
}

/// A stream id from a file name: its stem, with characters not allowed in ids replaced.
fn file_stream_id(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("file");
    stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect()
}

/// Parses a CSV row of numbers; `None` if any field is not a number.
fn csv_row(line: &str) -> Option<Vec<f32>> {
    line.split(',').map(|f| f.trim().parse::<f32>().ok()).collect()
}

/// Reads a WAV file as mono f32 in [-1, 1): integer PCM is scaled by its bit depth,
/// several channels are averaged.
pub fn read_wav(path: &Path) -> Result<(u32, Vec<f32>), String> {
    let mut reader = hound::WavReader::open(path).map_err(|e| format!("not a readable WAV file: {e}"))?;
    let spec = reader.spec();
    if spec.sample_rate == 0 {
        // hound takes any rate; 0 Hz is a damaged header and would stall a timed replay.
        return Err("its header gives a sample rate of 0 Hz; the file is damaged, write it again".into());
    }
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|v| v as f32 * scale)).collect::<Result<_, _>>()
        }
    }
    .map_err(|e| format!("damaged WAV data: {e}"))?;
    let mono = if channels == 1 {
        interleaved
    } else {
        interleaved.chunks(channels).map(|c| c.iter().sum::<f32>() / channels as f32).collect()
    };
    Ok((spec.sample_rate, mono))
}
