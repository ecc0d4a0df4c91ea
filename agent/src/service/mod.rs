//! The daemon: start-up, the data path, shutdown.
//!
//! Read [`run`] first: it wires sources → router → one task per stream (decode,
//! window, infer, post-process) → the result sink, all joined by bounded channels under
//! one cancellation token.

mod result;
mod stream;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::engine::{Engine, LoadedModel};
use crate::sources::{self, SensorMessage};

pub use result::{ResultRecord, ResultSink};
pub use stream::raw_outputs;

/// How long in-flight work may take to finish after shutdown is requested.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Messages a stream may have waiting before its source is slowed down.
const STREAM_QUEUE: usize = 64;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("model {dir}: {source}")]
    Model {
        dir: String,
        #[source]
        source: crate::engine::LoadError,
    },
}

/// What a run did, for the final log line and for tests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub results: u64,
    pub failed: u64,
    pub dropped_streams: u64,
}

/// Loads every configured model into a new engine.
pub fn start_engine(config: &Config) -> Result<Arc<Engine>, StartError> {
    let engine = Engine::start(&config.engine);
    for m in &config.models {
        let loaded = LoadedModel::load_dir(&m.dir)
            .map_err(|source| StartError::Model { dir: m.dir.display().to_string(), source })?;
        tracing::info!(
            model = %loaded.name(),
            version = %loaded.version(),
            load_ms = format!("{:.1}", loaded.info.load_ms),
            optimise_ms = format!("{:.1}", loaded.info.optimise_ms),
            "model loaded"
        );
        engine.install(loaded);
    }
    Ok(Arc::new(engine))
}

/// Runs the daemon until every source has ended or `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    sink: ResultSink,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, StartError> {
    let engine = start_engine(&config)?;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Sources → router.
    let (source_tx, source_rx) = mpsc::channel::<SensorMessage>(256);
    let sources_tracker = TaskTracker::new();
    for entry in config.sources.clone() {
        sources_tracker.spawn(sources::run(entry, source_tx.clone(), token.child_token()));
    }
    sources_tracker.close();
    drop(source_tx);
    if config.sources.is_empty() {
        tracing::warn!("no [[source]] configured: the agent idles until stopped");
    }

    // Results → sink.
    let (result_tx, result_rx) = mpsc::channel::<ResultRecord>(1024);
    let sink_task = tracker.spawn(sink.run(result_rx, config.device_id.clone()));

    // Router → one task per stream.
    let router = tracker.spawn(route(source_rx, engine.clone(), config.clone(), result_tx, tracker.clone()));

    tracing::info!(
        device = %config.device_id,
        models = config.models.len(),
        sources = config.sources.len(),
        threads = config.engine.threads,
        "edge-agent running"
    );

    // Idle forever when nothing is configured, rather than exiting at once.
    let sources_done = async {
        if config.sources.is_empty() {
            std::future::pending::<()>().await
        }
        sources_tracker.wait().await
    };
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested: stopping sources, draining in-flight requests");
            token.cancel();
        }
        _ = sources_done => tracing::info!("all sources finished: draining"),
    }

    tracker.close();
    let dropped = match tokio::time::timeout(DRAIN_GRACE, async {
        let dropped = router.await.unwrap_or_default();
        tracker.wait().await;
        dropped
    })
    .await
    {
        Ok(d) => d,
        Err(_) => {
            tracing::warn!(
                grace_s = DRAIN_GRACE.as_secs(),
                tasks = tracker.len(),
                "drain timed out; stopping anyway"
            );
            token.cancel();
            0
        }
    };
    let written = sink_task.await.unwrap_or_default();
    engine.shutdown();

    let mut summary = RunSummary { results: written, failed: 0, dropped_streams: dropped };
    for (model, r) in engine.stats() {
        let failed: u64 = r.errors.values().sum::<u64>() + r.rejected.values().sum::<u64>();
        summary.failed += failed;
        tracing::info!(
            %model,
            ok = r.ok,
            failed,
            p50_ms = r.latency.p50_ms,
            p99_ms = r.latency.p99_ms,
            "model summary"
        );
    }
    let mem = crate::telemetry::memory();
    tracing::info!(
        results = summary.results,
        failed = summary.failed,
        peak_rss_kib = mem.peak_rss / 1024,
        "edge-agent stopped"
    );
    Ok(summary)
}

/// Hands each message to its stream's task, creating tasks for new streams up to the
/// configured bound. Returns the number of messages dropped because of that bound.
async fn route(
    mut rx: mpsc::Receiver<SensorMessage>,
    engine: Arc<Engine>,
    config: Config,
    results: mpsc::Sender<ResultRecord>,
    tracker: TaskTracker,
) -> u64 {
    let mut streams: HashMap<(String, String), mpsc::Sender<SensorMessage>> = HashMap::new();
    let mut dropped = 0u64;
    while let Some(msg) = rx.recv().await {
        let key = (msg.model.clone(), msg.stream.clone());
        if !streams.contains_key(&key) {
            // Finished stream tasks free their slot.
            streams.retain(|_, tx| !tx.is_closed());
            if streams.len() >= config.engine.max_streams {
                dropped += 1;
                tracing::warn!(model = %msg.model, stream = %msg.stream, limit = config.engine.max_streams,
                    "too many live streams: message dropped; raise engine.max_streams");
                continue;
            }
            let (tx, srx) = mpsc::channel(STREAM_QUEUE);
            tracker.spawn(stream::run(srx, engine.clone(), config.deadline, results.clone()));
            streams.insert(key.clone(), tx);
        }
        if let Some(tx) = streams.get(&key)
            && tx.send(msg).await.is_err()
        {
            streams.remove(&key);
        }
    }
    dropped
}
