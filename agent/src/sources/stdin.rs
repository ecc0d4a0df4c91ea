//! NDJSON on standard input.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{SensorMessage, SourceError, ndjson, replay_lines};
use crate::config::StdinSource;

pub(super) async fn run(
    cfg: StdinSource,
    tx: mpsc::Sender<SensorMessage>,
    token: CancellationToken,
) -> Result<(), SourceError> {
    replay_lines(tokio::io::stdin(), "stdin", &tx, &token, |line, _| {
        Some(ndjson::parse_line(line, &cfg.model, &cfg.stream, "stdin"))
    })
    .await
}
