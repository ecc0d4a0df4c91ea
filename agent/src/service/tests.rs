//! The coordinating parts of the service, in process with fake sinks: a stream task fed
//! through its channel, its results and events read from the other ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::health::Health;
use super::result::ResultRecord;
use super::stream;
use crate::events::{Event, Events};
use crate::fallback::Fallback;
use crate::sources::{Receipt, SensorMessage, Settled};
use edge_infer::engine::{Engine, EngineConfig, LoadedModel, ModelLimits};
use edge_infer::pipeline::Payload;

/// The demo classifier: JSON samples, windows of 256 every 128.
fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/models/vibration")
}

/// A stream task over the demo model, with its channels' other ends.
struct Harness {
    messages: mpsc::Sender<SensorMessage>,
    results: mpsc::Receiver<ResultRecord>,
    events: mpsc::UnboundedReceiver<Event>,
    settled: mpsc::UnboundedReceiver<(&'static str, Settled)>,
    receipts: mpsc::UnboundedSender<(&'static str, Settled)>,
    task: tokio::task::JoinHandle<()>,
    engine: Arc<Engine>,
}

impl Harness {
    fn start() -> Harness {
        Harness::start_with(None)
    }

    fn start_with(capture: Option<Arc<crate::capture::Capture>>) -> Harness {
        let engine = Arc::new(Engine::start(&EngineConfig::default()));
        engine.install(LoadedModel::load_dir(&demo_dir(), &ModelLimits::default()).unwrap());
        let (fallback, _transitions) = Fallback::new(None).unwrap();
        let (results_tx, results) = mpsc::channel(64);
        let (tap, events) = mpsc::unbounded_channel();
        let deps = stream::Deps {
            engine: engine.clone(),
            health: Arc::new(Health::new("dev-1", Duration::from_secs(10))),
            results: results_tx,
            events: Events::log_only().tap(tap),
            fallback: Arc::new(fallback),
            capture,
            monitors: Arc::new(crate::monitor::Monitors::new()),
            shadows: Default::default(),
        };
        let (messages, rx) = mpsc::channel(8);
        let task = tokio::spawn(stream::run(rx, deps));
        let (receipts, settled) = mpsc::unbounded_channel();
        Harness { messages, results, events, settled, receipts, task, engine }
    }

    /// A receipt that reports how it was settled, under `name`.
    fn receipt(&self, name: &'static str) -> Receipt {
        let tx = self.receipts.clone();
        Receipt::new(move |how| {
            let _ = tx.send((name, how));
        })
    }

    async fn send(&self, payload: Payload, receipt: &'static str) {
        let msg = SensorMessage {
            model: "vibration".into(),
            stream: "s-1".into(),
            source: "test".into(),
            payload,
            reset: false,
            receipt: Some(self.receipt(receipt)),
            input_id: None,
            force_cloud: false,
        };
        self.messages.send(msg).await.unwrap();
    }

    async fn result(&mut self) -> ResultRecord {
        tokio::time::timeout(Duration::from_secs(30), self.results.recv()).await.unwrap().unwrap()
    }

    async fn settled(&mut self) -> (&'static str, Settled) {
        tokio::time::timeout(Duration::from_secs(30), self.settled.recv()).await.unwrap().unwrap()
    }
}

fn samples(n: usize) -> Vec<serde_json::Value> {
    (0..n).map(|i| json!(((i as f32) * 0.3).sin())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_task_windows_infers_and_settles_each_receipt_with_its_last_result() {
    let mut h = Harness::start();

    // Bytes as MQTT delivers them: a JSON object with an id. 384 samples make two
    // windows (0..256 and 128..384); the receipt rides on the second result.
    let body = json!({"id": "m-1", "data": samples(384)}).to_string().into_bytes();
    h.send(Payload::Bytes(body), "first").await;
    let (a, b) = (h.result().await, h.result().await);
    assert_eq!((a.window, a.offset, b.window, b.offset), (0, Some(0), 1, Some(128)));
    for r in [&a, &b] {
        assert_eq!((r.model.as_str(), r.version.as_str(), r.stream.as_str()), ("vibration", "1", "s-1"));
        assert_eq!(r.input_id, Some(json!("m-1")), "the object's id is echoed");
        assert_eq!(r.place, "local");
        assert!(r.outputs.get("label").is_some_and(|l| l.is_string()), "{:?}", r.outputs);
    }
    assert!(a.receipts.is_empty());
    assert_eq!(b.receipts.len(), 1, "the message's receipt goes with its last result");
    assert!(h.settled.try_recv().is_err(), "not settled while the result is not safe");
    drop(b);
    assert_eq!(h.settled().await, ("first", Settled::Handled));

    // Too few samples for another window: no result, and the receipt is settled at once
    // (the samples wait in the window, the message is done with).
    h.send(Payload::Json(json!(samples(64))), "short").await;
    assert_eq!(h.settled().await, ("short", Settled::Handled));
    assert!(h.results.try_recv().is_err());

    // A payload that does not decode: a request-failed event, no result, settled.
    h.send(Payload::Bytes(b"not json".to_vec()), "bad").await;
    assert_eq!(h.settled().await, ("bad", Settled::Handled));
    let event = tokio::time::timeout(Duration::from_secs(5), h.events.recv()).await.unwrap().unwrap();
    assert_eq!(event.kind.as_str(), "request-failed");
    assert_eq!(event.model.as_deref(), Some("vibration"));
    assert!(h.results.try_recv().is_err());

    // The channel closing ends the task.
    drop(h.messages);
    tokio::time::timeout(Duration::from_secs(5), h.task).await.unwrap().unwrap();
    assert_eq!(h.engine.stats()["vibration"].ok, 2);
    h.engine.shutdown();
}

/// The status document reads back into the type it is written from (what `edge-agent
/// status` does), losing nothing: counters, latencies, recent errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_document_reads_back_into_its_type() {
    let mut h = Harness::start();
    h.send(Payload::Json(json!(samples(256))), "one").await;
    h.result().await;
    h.send(Payload::Bytes(b"not json".to_vec()), "bad").await;
    h.events.recv().await.unwrap();
    let (fallback, _transitions) = Fallback::new(None).unwrap();
    let parts = super::status::Parts {
        engine: h.engine.clone(),
        health: Arc::new(Health::new("dev-1", Duration::from_secs(10))),
        mqtt: Some(Arc::default()),
        ota: None,
        fallback: Arc::new(fallback),
        monitors: Arc::new(crate::monitor::Monitors::new()),
        usage: Default::default(),
    };
    let written = serde_json::to_value(parts.gather(None)).unwrap();
    assert_eq!(written["models"]["vibration"]["ok"], 1, "{written:#}");
    assert_eq!(written["last_errors"][0]["kind"], "bad_input", "{written:#}");
    let read: super::status::Status = serde_json::from_value(written.clone()).unwrap();
    assert!(read.models["vibration"].counts.is_some());
    assert_eq!(serde_json::to_value(&read).unwrap(), written);
    h.engine.shutdown();
}

/// With `[capture]` on, a stream task keeps each window the model ran on with the outputs
/// it published, its metadata and the message's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_task_captures_the_window_it_ran_with_its_outputs() {
    let state = tempfile::tempdir().unwrap();
    // Every score is below 1.01: each window is low confidence.
    let cfg = crate::config::CaptureSection {
        enabled: true,
        low_confidence: 1.01,
        min_free_mb: 0,
        ..Default::default()
    };
    let (capture, writer) = crate::capture::Capture::start(&cfg, state.path()).unwrap().unwrap();
    let counters = capture.counters.clone();
    let mut h = Harness::start_with(Some(capture));
    let data = samples(384);
    let body = json!({"id": "m-1", "data": data}).to_string().into_bytes();
    h.send(Payload::Bytes(body), "first").await;
    let (a, b) = (h.result().await, h.result().await);
    drop(h.messages);
    tokio::time::timeout(Duration::from_secs(5), h.task).await.unwrap().unwrap();
    h.engine.shutdown();
    // The task's end dropped the last handle: the writer finishes what it was handed.
    writer.finish(Duration::from_secs(10)).await;
    assert_eq!(counters.kept.load(std::sync::atomic::Ordering::Relaxed), 2);
    let dir = crate::capture::dir(state.path());
    let kept: Vec<_> = crate::capture::store::entries(&dir)
        .unwrap()
        .iter()
        .map(|e| crate::capture::store::read(&e.path).unwrap())
        .collect();
    assert_eq!(kept.len(), 2);
    let values: Vec<f32> = data.iter().map(|v| v.as_f64().unwrap() as f32).collect();
    for (s, (r, start)) in kept.iter().zip([(&a, 0), (&b, 128)]) {
        assert_eq!(s.input, values[start..start + 256], "the window the model ran on");
        assert_eq!(s.meta.shape, [1, 256]);
        // JSON's text may move a float by its last bit: equal within a relative 1e-12.
        let (got, want) = (json!(s.meta.outputs), json!(r.outputs));
        assert!(nearly_equal(&got, &want), "the outputs it published: {got} vs {want}");
        assert_eq!(
            (s.meta.model.as_str(), s.meta.version.as_str(), s.meta.stream.as_str()),
            ("vibration", "1", "s-1")
        );
        assert_eq!(s.meta.reason, crate::capture::Reason::LowConfidence);
        assert_eq!(s.meta.window, r.window);
        assert_eq!(s.meta.input_id, Some(json!("m-1")));
        assert_eq!(s.meta.payload_format.as_deref(), Some("json"));
        let payload: serde_json::Value = serde_json::from_slice(s.payload.as_deref().unwrap()).unwrap();
        assert_eq!(payload["id"], "m-1");
    }
}

/// JSON values equal, numbers within a relative 1e-12.
fn nearly_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| nearly_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| nearly_equal(v, w)))
        }
        _ => a == b,
    }
}
