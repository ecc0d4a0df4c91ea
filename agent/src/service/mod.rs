//! The daemon: start-up, the data path, reload, shutdown.
//!
//! Read [`run`] first: it loads the models, opens the API, wires sources → router → one
//! task per stream (decode, window, infer, post-process) → the result sink, all joined
//! by bounded channels under one cancellation token, and tells systemd what it does.

pub mod health;
mod pipelined;
mod publish;
mod reload;
mod result;
mod seq;
pub mod status;
mod stream;
pub mod systemd;
#[cfg(test)]
mod tests;
pub mod trim;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiCounters, ApiLimits, ApiState, Listeners};
use crate::config::{Config, Overrides};
use crate::events::{Event, Events, Kind};
use crate::monitor::Monitors;
use crate::sources::{self, SensorMessage};
use crate::usage::{Dest, Usage};
use edge_infer::engine::{Engine, LoadedModel};
use health::Health;
use status::Parts;
use systemd::Notifier;

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
        source: edge_infer::engine::LoadError,
    },
    #[error(transparent)]
    Api(#[from] api::BindError),
    #[error("cannot create the state directory {path}: {source}; create it or set agent.state_dir")]
    StateDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error(transparent)]
    Fallback(#[from] crate::fallback::FallbackError),
    #[error("model updates: {0}")]
    Ota(#[from] crate::ota::OtaError),
    #[error(
        "cannot open the capture store {path}: {source}; check the state directory or turn [capture] off"
    )]
    Capture { path: String, source: std::io::Error },
    #[error("result numbering in {path}: {source}")]
    Seq { path: String, source: std::io::Error },
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
        engine.install(load_model(&m.dir, &config.engine.model_limits)?);
    }
    Ok(Arc::new(engine))
}

fn load_model(
    dir: &std::path::Path,
    limits: &edge_infer::engine::ModelLimits,
) -> Result<LoadedModel, StartError> {
    let loaded = LoadedModel::load_dir(dir, limits)
        .map_err(|source| StartError::Model { dir: dir.display().to_string(), source })?;
    tracing::info!(
        model = %loaded.name(),
        version = %loaded.version(),
        format = loaded.info.format.name(),
        load_ms = format!("{:.1}", loaded.info.load_ms),
        optimise_ms = format!("{:.1}", loaded.info.optimise_ms),
        "model loaded"
    );
    Ok(loaded)
}

/// Runs the daemon until `shutdown` completes (or, with no API, every source has ended),
/// then drains. Each message on `reloads` re-reads the configuration file (SIGHUP).
///
/// The steps, each a function below: start the parts (engine, fallback, listeners, the
/// MQTT link, the update task), serve the API and the MQTT commands with the handles
/// of those parts, wire the data path (sources → router → streams → result sink), tell
/// systemd READY, wait for shutdown while handling reloads, drain.
pub async fn run(
    config: Config,
    flags: Overrides,
    sink: ResultSink,
    shutdown: impl Future<Output = ()>,
    reloads: mpsc::Receiver<()>,
) -> Result<RunSummary, StartError> {
    let notifier = Arc::new(Notifier::from_env());
    let health = Arc::new(Health::new(&config.device_id, config.deadline));
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (source_tx, source_rx) = mpsc::channel::<SensorMessage>(256);

    let parts = start_parts(&config, &health, &notifier, source_tx.clone(), &token, &tracker).await?;
    let Running { engine, fallback, events, shadows, mqtt, listeners, status } = parts;
    let monitors = status.monitors.clone();
    // The producers' handle outlives the link's start: the result sink publishes with it.
    let publisher = mqtt.as_ref().map(|link| link.handle.clone());
    let data = wire_data_path(
        &config,
        sink,
        publisher,
        DataDeps {
            engine: &engine,
            health: &health,
            fallback: &fallback,
            events: &events,
            monitors: &monitors,
            shadows: &shadows,
            usage: &status.usage,
        },
        (source_tx, source_rx),
        &token,
        &tracker,
    )?;
    // Served once every part exists, still before READY.
    let api = match (&config.api, listeners) {
        (Some(a), Some(l)) => {
            Some(serve_api(&config, a, l, status.clone(), events.clone(), &token, &tracker))
        }
        _ => None,
    };
    let mqtt_closed = match (&config.mqtt, mqtt) {
        (Some(m), Some(link)) => Some(serve_mqtt(&config, m, link, status, api, &token, &tracker)),
        _ => None,
    };

    tracker.spawn(systemd::watchdog(notifier.clone(), engine.clone(), token.child_token()));
    // Everything is loaded: the code that loading ran once need not stay resident.
    trim::release_and_log("start-up");
    tracker.spawn(trim::every_period(token.child_token()));
    health.set_ready(true);
    let serving = format!("serving {} model(s), {} source(s)", engine.models().len(), config.sources.len());
    health.set_doing(serving.clone());
    notifier.send(&format!("READY=1\nSTATUS={serving}"));
    tracing::info!(
        device = %config.device_id,
        models = config.models.len(),
        sources = config.sources.len(),
        threads = config.engine.threads,
        api = config.api.is_some(),
        "edge-agent running"
    );

    // With the API on, the agent serves until stopped; without it, it ends with its
    // sources (a file replay), and idles forever when it has none.
    let finite = config.api.is_none() && config.mqtt.is_none() && !config.sources.is_empty();
    let reloader = reload::Reloader::new(config.clone(), flags);
    let sources_done = data.sources.clone();
    let sources_done =
        async move { if finite { sources_done.wait().await } else { std::future::pending::<()>().await } };
    serve_until(shutdown, sources_done, reloads, reloader, &engine, &health, &fallback, &notifier, &events)
        .await;

    notifier.send("STOPPING=1\nSTATUS=draining in-flight requests");
    health.set_draining();
    health.set_doing("draining");
    token.cancel();
    // The outbox closes once every producer is gone: ours goes now, the sink's when the
    // data path has drained.
    drop(events);
    let summary = drain(data, tracker, mqtt_closed).await;
    engine.shutdown();
    Ok(summarise(&engine, summary))
}

/// The parts of a running agent, each started once; consumers get their handles from
/// here, not by looking them up later.
struct Running {
    engine: Arc<Engine>,
    fallback: Arc<crate::fallback::Fallback>,
    /// Every event logged; published when MQTT is on.
    events: Events,
    /// Shadow runs of candidate versions: started by the update task, fed by the streams.
    shadows: Arc<crate::shadow::Shadows>,
    mqtt: Option<MqttLink>,
    /// The API's listeners, bound and not yet serving.
    listeners: Option<Listeners>,
    /// What the status document is made of.
    status: Parts,
}

/// The running MQTT link, its commands not yet served.
struct MqttLink {
    handle: crate::mqtt::Mqtt,
    commands: mpsc::Receiver<crate::mqtt::CommandMsg>,
    /// Resolves once the outbox has closed.
    closed: tokio::task::JoinHandle<()>,
}

/// Loads the models, starts the cloud fallback, binds the API's listeners (so that a
/// port in use fails the start), starts the MQTT link (its sensor messages join
/// `to_streams`) and the update task.
async fn start_parts(
    config: &Config,
    health: &Arc<Health>,
    notifier: &Notifier,
    to_streams: mpsc::Sender<SensorMessage>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Running, StartError> {
    notifier.status("loading models");
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|source| StartError::StateDir { path: config.state_dir.display().to_string(), source })?;
    let engine = start_engine(config)?;
    // Bytes per destination: each client gets its destination's counter when built.
    let usage = Usage::default();
    // Cloud endpoints: token and certificate files are read now.
    let (fallback, transitions) =
        crate::fallback::Fallback::counting_in(config.fallback.as_ref(), usage.counter(Dest::Cloud))?;
    let fallback = Arc::new(fallback);
    // Versions installed from the registry replace the configured ones.
    let prepared = crate::ota::prepare(config, &engine);

    let listeners = match &config.api {
        Some(api) => Some(bind_api(api, health).await?),
        None => None,
    };

    let mqtt = match &config.mqtt {
        Some(m) => Some(start_mqtt_link(config, m, &engine, health, to_streams, token, tracker, &usage)?),
        None => None,
    };
    let events = match &mqtt {
        Some(link) => Events::log_only().publish_to(Arc::new(link.handle.clone())),
        None => Events::log_only(),
    };
    if let Some(m) = &config.mqtt {
        let cap =
            Arc::new(crate::usage::cap::DailyCap::new(m.max_bytes_per_day, usage.counter(Dest::Broker)));
        cap.announce_to(events.clone());
        usage.set_cap(cap);
    }

    // Model updates from the registry.
    let shadows = Arc::new(crate::shadow::Shadows::default());
    // The drift monitors: the stream tasks feed them; probations read their label counts.
    let monitors = Arc::new(Monitors::new());
    let ota = match config.ota {
        Some(_) => {
            let links = crate::ota::Links {
                events: events.clone(),
                shadows: shadows.clone(),
                monitors: monitors.clone(),
                registry_bytes: usage.counter(Dest::Registry),
            };
            Some(crate::ota::start(config, engine.clone(), links, prepared, token.child_token(), tracker)?)
        }
        None => None,
    };

    // Cloud fallback: device pressure sampled on a timer; routes engaged or cleared
    // become events.
    tracker.spawn(fallback.clone().watch_resources(config.state_dir.clone(), token.child_token()));
    tracker.spawn(report_transitions(transitions, events.clone(), token.child_token()));

    let status = Parts {
        engine: engine.clone(),
        health: health.clone(),
        mqtt: mqtt.as_ref().map(|link| link.handle.stats.clone()),
        ota,
        fallback: fallback.clone(),
        monitors,
        usage,
    };
    Ok(Running { engine, fallback, events, shadows, mqtt, listeners, status })
}

/// Binds the API's listeners. They serve once the parts exist ([`serve_api`]), still
/// before READY, so that READY means "answers requests".
async fn bind_api(api: &crate::config::ApiConfig, health: &Health) -> Result<Listeners, StartError> {
    let listeners = Listeners::bind(api.listen.as_deref(), api.socket.as_deref()).await?;
    if let Some(addr) = listeners.tcp_addr() {
        tracing::info!(%addr, "API listening");
        health.set_connection("api_tcp", format!("listening {addr}"));
    }
    if let Some(path) = listeners.unix_path() {
        tracing::info!(path = %path.display(), "API listening on unix socket");
        health.set_connection("api_unix", format!("listening {}", path.display()));
    }
    Ok(listeners)
}

/// Serves the API on `listeners` with the parts' handles. Returns its state: the MQTT
/// `status` command reports the API's counters too.
fn serve_api(
    config: &Config,
    api: &crate::config::ApiConfig,
    listeners: Listeners,
    parts: Parts,
    events: Events,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> ApiState {
    let Parts { engine, health, mqtt, ota, fallback, monitors, usage } = parts;
    let l = &api.limits;
    let state = ApiState {
        engine,
        health,
        ota,
        fallback,
        mqtt,
        monitors,
        events,
        usage,
        limits: Arc::new(ApiLimits {
            max_body_bytes: l.max_body_bytes,
            max_concurrency: l.max_concurrency,
            max_connections: l.max_connections,
            header_timeout: Duration::from_millis(l.header_timeout_ms),
            body_timeout: Duration::from_millis(l.body_timeout_ms),
        }),
        inflight: Arc::new(tokio::sync::Semaphore::new(l.max_concurrency)),
        counters: Arc::new(ApiCounters::default()),
        diagnostics: Arc::new(api::diagnostics::DiagnosticsSetup {
            config_file: config.file.clone(),
            state_dir: config.state_dir.clone(),
            upload_max_mb: config.log.upload_max_mb,
            ca_file: config.capture.ca_file.clone(),
        }),
    };
    listeners.serve(state.clone(), token.child_token(), tracker);
    state
}

/// The data path's running tasks.
struct DataPath {
    /// The sources, closed: done once every source has ended.
    sources: TaskTracker,
    /// Returns the messages dropped for lack of a stream slot.
    router: tokio::task::JoinHandle<u64>,
    /// Returns the results written.
    sink: tokio::task::JoinHandle<u64>,
    /// The capture store's writer, when `[capture]` is on.
    capture: Option<crate::capture::Writer>,
}

/// What the stream tasks share, borrowed from the running parts.
struct DataDeps<'a> {
    engine: &'a Arc<Engine>,
    health: &'a Arc<Health>,
    fallback: &'a Arc<crate::fallback::Fallback>,
    events: &'a Events,
    monitors: &'a Arc<Monitors>,
    shadows: &'a Arc<crate::shadow::Shadows>,
    usage: &'a Usage,
}

/// Sources → router → one task per stream → the result sink (which publishes on MQTT
/// when it is on). `channel` is the router's; the MQTT link holds a sender of its own.
fn wire_data_path(
    config: &Config,
    mut sink: ResultSink,
    mqtt: Option<crate::mqtt::Mqtt>,
    deps: DataDeps<'_>,
    channel: (mpsc::Sender<SensorMessage>, mpsc::Receiver<SensorMessage>),
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<DataPath, StartError> {
    let (source_tx, source_rx) = channel;
    let sources = TaskTracker::new();
    for entry in config.sources.clone() {
        let rate =
            deps.engine.model(entry.model()).and_then(|m| edge_infer::pipeline::dsp::ModelRate::of(&m.spec));
        sources.spawn(sources::run(entry, rate, source_tx.clone(), token.child_token()));
    }
    sources.close();
    drop(source_tx);

    if let Some(handle) = mqtt {
        sink.mqtt = Some(handle);
        sink.publish = config.models.iter().map(|m| (m.name.clone(), m.publish)).collect();
        sink.cap = deps.usage.cap();
        sink.seq =
            Some(seq::SeqAllocator::open(&config.state_dir).map_err(|source| StartError::Seq {
                path: config.state_dir.display().to_string(),
                source,
            })?);
    }
    let (result_tx, result_rx) = mpsc::channel::<ResultRecord>(1024);
    let sink = tracker.spawn(sink.run(result_rx, config.device_id.clone()));

    let capture = crate::capture::Capture::start(&config.capture, &config.state_dir).map_err(|source| {
        StartError::Capture { path: crate::capture::dir(&config.state_dir).display().to_string(), source }
    })?;
    let deps = stream::Deps {
        engine: deps.engine.clone(),
        health: deps.health.clone(),
        results: result_tx,
        events: deps.events.clone(),
        fallback: deps.fallback.clone(),
        capture: capture.as_ref().map(|(c, _)| c.clone()),
        monitors: deps.monitors.clone(),
        shadows: deps.shadows.clone(),
    };
    let router = tracker.spawn(route(source_rx, deps, config.engine.max_streams, tracker.clone()));
    Ok(DataPath { sources, router, sink, capture: capture.map(|(_, writer)| writer) })
}

/// Waits for `shutdown` (or the end of the sources), re-reading the configuration on
/// each message on `reloads`.
#[allow(clippy::too_many_arguments)]
async fn serve_until(
    shutdown: impl Future<Output = ()>,
    sources_done: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<()>,
    mut reloader: reload::Reloader,
    engine: &Engine,
    health: &Health,
    fallback: &crate::fallback::Fallback,
    notifier: &Notifier,
    events: &Events,
) {
    tokio::pin!(shutdown);
    tokio::pin!(sources_done);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutdown requested: stopping sources, draining in-flight requests");
                break;
            }
            _ = &mut sources_done => {
                tracing::info!("all sources finished: draining");
                break;
            }
            Some(()) = reloads.recv() => {
                let line = reloader.reload(engine, health, fallback, notifier);
                events.emit(Event::info(Kind::ConfigReloaded, serde_json::json!({"changes": line}))).await;
            }
        }
    }
}

/// Lets in-flight work finish (bounded by [`DRAIN_GRACE`]), then waits for the result
/// sink and the MQTT outbox. Returns the run's counts so far.
async fn drain(
    data: DataPath,
    tracker: TaskTracker,
    mqtt_closed: Option<tokio::task::JoinHandle<()>>,
) -> RunSummary {
    tracker.close();
    let DataPath { router, sink, capture, .. } = data;
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
            0
        }
    };
    // The tracker reports a task done a moment before its handle holds the output, so
    // wait on the handle itself; bounded, in case the drain above timed out.
    let written = match tokio::time::timeout(Duration::from_secs(2), sink).await {
        Ok(Ok(n)) => n,
        _ => {
            tracing::warn!("the result sink did not finish; some results may not have been written");
            0
        }
    };
    // The stream tasks are gone, and with them every capture handle.
    if let Some(writer) = capture {
        writer.finish(Duration::from_secs(10)).await;
    }
    if let Some(closed) = mqtt_closed
        && tokio::time::timeout(Duration::from_secs(10), closed).await.is_err()
    {
        tracing::warn!("the MQTT outbox did not close in time; undelivered messages stay in the spool");
    }
    RunSummary { results: written, failed: 0, dropped_streams: dropped }
}

/// Adds the engine's failures to `summary` and logs the last lines.
fn summarise(engine: &Engine, mut summary: RunSummary) -> RunSummary {
    for (model, r) in engine.stats() {
        let failed: u64 = r.errors.values().sum::<u64>() + r.rejected.values().sum::<u64>();
        summary.failed += failed;
        tracing::info!(%model, ok = r.ok, failed, p50_ms = r.latency.p50_ms, p99_ms = r.latency.p99_ms, "model summary");
    }
    let mem = crate::telemetry::memory();
    tracing::info!(
        results = summary.results,
        failed = summary.failed,
        peak_rss_kib = mem.peak_rss / 1024,
        "edge-agent stopped"
    );
    summary
}

/// Starts the MQTT link: the connection, the outbox over the spool, and the inbound
/// router that hands sensor messages to `to_streams`.
#[allow(clippy::too_many_arguments)]
fn start_mqtt_link(
    config: &Config,
    m: &crate::config::MqttConfig,
    engine: &Arc<Engine>,
    health: &Arc<Health>,
    to_streams: mpsc::Sender<SensorMessage>,
    token: &CancellationToken,
    tracker: &TaskTracker,
    usage: &Usage,
) -> Result<MqttLink, StartError> {
    let status_engine = engine.clone();
    let status = Box::new(move |kind: crate::mqtt::StatusKind, since: &str| {
        let mut doc = serde_json::json!({
            "state": kind.state(),
            "version": env!("CARGO_PKG_VERSION"),
            "since": since,
        });
        if kind != crate::mqtt::StatusKind::Will {
            let models: std::collections::BTreeMap<String, String> =
                status_engine.models().into_iter().map(|(n, m)| (n, m.version().to_string())).collect();
            doc["models"] = serde_json::json!(models);
        }
        serde_json::to_vec(&doc).unwrap_or_default()
    });
    let crate::mqtt::Started { handle, commands, closed } = crate::mqtt::start(
        m,
        &config.spool,
        &config.state_dir,
        &config.device_id,
        status,
        health.clone(),
        to_streams,
        token.child_token(),
        tracker,
        usage.counter(Dest::Broker),
    )?;
    Ok(MqttLink { handle, commands, closed })
}

/// Serves over MQTT: the command dispatcher (with the parts' handles), telemetry, and
/// the announcement of the models.
fn serve_mqtt(
    config: &Config,
    m: &crate::config::MqttConfig,
    link: MqttLink,
    parts: Parts,
    api: Option<ApiState>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> tokio::task::JoinHandle<()> {
    let MqttLink { handle, commands, closed } = link;
    let (telemetry_tx, telemetry_rx) = tokio::sync::watch::channel(config.telemetry.clone());
    let (engine, health) = (parts.engine.clone(), parts.health.clone());
    let sources = crate::telemetry::report::Sources {
        device: config.device_id.clone(),
        engine: engine.clone(),
        outbox: handle.stats.clone(),
        started: health.started,
        fallback: Some(parts.fallback.clone()),
        monitors: Some(parts.monitors.clone()),
        usage: parts.usage.clone(),
    };
    let ctx = crate::commands::Context {
        engine: engine.clone(),
        health: health.clone(),
        config_file: config.file.clone(),
        state_dir: config.state_dir.clone(),
        started: health.started,
        telemetry: telemetry_tx,
        ota: parts.ota.clone(),
        fallback: parts.fallback.clone(),
        capture: config.capture.clone(),
        log: config.log.clone(),
        events: Events::log_only().publish_to(Arc::new(handle.clone())),
        usage: parts.usage.clone(),
        outbox: Some(handle.stats.clone()),
        status: Box::new(move || parts.gather(api.as_ref().map(ApiState::report))),
    };
    tracker.spawn(crate::commands::run(commands, handle.clone(), ctx, m.max_command_bytes));
    tracker.spawn(crate::telemetry::report::run(
        sources,
        crate::telemetry::SystemSampler::new(&config.state_dir),
        handle.clone(),
        telemetry_rx,
        token.child_token(),
    ));
    let announcer = Events::log_only().publish_to(Arc::new(handle.clone()));
    let models: Vec<(String, String)> =
        engine.models().into_iter().map(|(n, m)| (n, m.version().to_string())).collect();
    tracker.spawn(async move {
        for (name, version) in models {
            announcer
                .emit(Event::info(Kind::ModelActivated, serde_json::json!({"version": version})).model(name))
                .await;
        }
    });
    closed
}

/// Logs each fallback route engaged or cleared and publishes it as an event.
async fn report_transitions(
    mut rx: mpsc::Receiver<crate::fallback::Transition>,
    events: Events,
    token: CancellationToken,
) {
    loop {
        let t = tokio::select! {
            _ = token.cancelled() => return,
            t = rx.recv() => match t { Some(t) => t, None => return },
        };
        let detail = serde_json::json!({"reason": t.reason, "detail": t.detail});
        let event = if t.engaged {
            Event::warning(Kind::FallbackEngaged, detail)
        } else {
            Event::info(Kind::FallbackCleared, detail)
        };
        events.emit(Event { model: t.model, ..event }).await;
    }
}

/// Hands each message to its stream's task, creating tasks for new streams up to the
/// configured bound. Returns the number of messages dropped because of that bound.
async fn route(
    mut rx: mpsc::Receiver<SensorMessage>,
    deps: stream::Deps,
    max_streams: usize,
    tracker: TaskTracker,
) -> u64 {
    let mut streams: HashMap<(String, String), mpsc::Sender<SensorMessage>> = HashMap::new();
    let mut dropped = 0u64;
    while let Some(msg) = rx.recv().await {
        let key = (msg.model.clone(), msg.stream.clone());
        if !streams.contains_key(&key) {
            // Finished stream tasks free their slot.
            streams.retain(|_, tx| !tx.is_closed());
            if streams.len() >= max_streams {
                dropped += 1;
                tracing::warn!(model = %msg.model, stream = %msg.stream, limit = max_streams,
                    "too many live streams: message dropped; raise engine.max_streams");
                continue;
            }
            let (tx, srx) = mpsc::channel(STREAM_QUEUE);
            tracker.spawn(stream::run(srx, deps.clone()));
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
