//! Sensor sources: each turns some input into [`SensorMessage`]s on a bounded channel.
//!
//! A source task ends when its input ends (file, stdin, a simulated duration) or when
//! the shutdown token fires; it sends with backpressure, so a slow engine slows a file
//! replay down instead of dropping samples.

mod file;
mod ndjson;
mod receipt;
mod simulated;
mod stdin;

#[cfg(test)]
mod tests;

use tokio::io::{AsyncBufReadExt, AsyncRead};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::SourceEntry;
use edge_infer::pipeline::Payload;

pub use file::read_wav;
pub use receipt::{Receipt, Settled};
pub use simulated::{Drift, VibrationSim};

/// One message from a sensor.
#[derive(Debug)]
pub struct SensorMessage {
    /// The model it is for.
    pub model: String,
    /// The stream it belongs to (a sensor): windows and recurrent state are per stream.
    pub stream: String,
    /// Where it came from, for results (`simulated`, a file path, `stdin`, a topic).
    pub source: String,
    pub payload: Payload,
    /// Start the stream afresh (windows and state) with this message.
    pub reset: bool,
    /// Settled once the message's results are safe (the MQTT broker's copy of a QoS 1
    /// message is acknowledged then); `None` for sources that need no word back.
    pub receipt: Option<Receipt>,
    /// The sender's id for the message, echoed on its results.
    pub input_id: Option<serde_json::Value>,
    /// The sender asks for the cloud (`"route": "cloud"`), for audits and comparisons.
    pub force_cloud: bool,
}

/// A source that could not be read; reported once, the agent goes on without it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Runs one configured source until it ends or `token` fires. `sample_rate` is the rate
/// the source's model takes (its spec's `pre.sample_rate`): a WAV file at another rate
/// is resampled when the spec's front end allows it (`pre.dsp.resample`), else refused.
pub async fn run(
    entry: SourceEntry,
    sample_rate: Option<edge_infer::pipeline::dsp::ModelRate>,
    tx: mpsc::Sender<SensorMessage>,
    token: CancellationToken,
) {
    let kind = entry.kind();
    let result = match entry {
        SourceEntry::Simulated(s) => {
            simulated::run(s, tx, token).await;
            Ok(())
        }
        SourceEntry::File(f) => file::run(f, sample_rate, tx, token).await,
        SourceEntry::Stdin(s) => stdin::run(s, tx, token).await,
    };
    match result {
        Ok(()) => tracing::info!(source = kind, "source finished"),
        Err(e) => tracing::error!(source = kind, error = %e, "source stopped"),
    }
}

/// Reads `reader` line by line until it ends or `token` fires. `parse` turns a non-empty
/// line (and its 1-based number) into a message, `None` to skip it quietly (a header);
/// a line it rejects is logged with its number and skipped. Messages are sent with
/// backpressure.
async fn replay_lines<R: AsyncRead + Unpin>(
    reader: R,
    what: &str,
    tx: &mpsc::Sender<SensorMessage>,
    token: &CancellationToken,
    mut parse: impl FnMut(&str, usize) -> Option<Result<SensorMessage, String>>,
) -> Result<(), SourceError> {
    let mut lines = tokio::io::BufReader::new(reader).lines();
    let mut number = 0usize;
    loop {
        let line = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            l = lines.next_line() => l,
        };
        let line = match line {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(SourceError::Read {
                    path: what.into(),
                    reason: format!("line {}: {e}", number + 1),
                });
            }
        };
        number += 1;
        // A file saved with a byte-order mark (common on Windows) carries it before the
        // first line; left there, the line would not parse as JSON or numbers.
        let line = if number == 1 { edge_infer::pipeline::strip_bom_str(&line) } else { line.as_str() };
        if line.trim().is_empty() {
            continue;
        }
        match parse(line, number) {
            None => {}
            Some(Ok(msg)) => {
                tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    r = tx.send(msg) => if r.is_err() { return Ok(()) },
                }
            }
            Some(Err(reason)) => {
                tracing::warn!(source = %what, line = number, %reason, "skipping a bad line")
            }
        }
    }
}
