//! NDJSON on standard input.

use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{SensorMessage, SourceError, ndjson};
use crate::config::StdinSource;

pub(super) async fn run(
    cfg: StdinSource,
    tx: mpsc::Sender<SensorMessage>,
    token: CancellationToken,
) -> Result<(), SourceError> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut number = 0usize;
    loop {
        let line = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            l = lines.next_line() => l,
        };
        let line = match line {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => return Err(SourceError::Read { path: "stdin".into(), reason: e.to_string() }),
        };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        match ndjson::parse_line(&line, &cfg.model, &cfg.stream, "stdin") {
            Ok(msg) => {
                tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    r = tx.send(msg) => if r.is_err() { return Ok(()) },
                }
            }
            Err(reason) => tracing::warn!(line = number, %reason, "stdin: skipping a bad line"),
        }
    }
}
