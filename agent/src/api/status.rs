//! `GET /status` (JSON for people and `edge-agent status`) and `GET /metrics`
//! (Prometheus text exposition format).

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;
use crate::monitor::DriftReport;
use crate::mqtt::OutboxReport;
use crate::service::status::{ApiReport, Parts, Status};
use edge_infer::engine::Engine;

impl ApiState {
    /// The API's counters for the status document.
    pub fn report(&self) -> ApiReport {
        ApiReport {
            in_flight: self.limits.max_concurrency - self.inflight.available_permits(),
            max_concurrency: self.limits.max_concurrency,
            overloaded: self.counters.overloaded.load(Ordering::Relaxed),
            refused_connections: self.counters.refused_connections.load(Ordering::Relaxed),
            evicted_connections: self.counters.evicted_connections.load(Ordering::Relaxed),
        }
    }

    /// The parts the status document is made of.
    pub fn parts(&self) -> Parts {
        Parts {
            engine: self.engine.clone(),
            health: self.health.clone(),
            mqtt: self.mqtt.clone(),
            ota: self.ota.clone(),
            fallback: self.fallback.clone(),
            monitors: self.monitors.clone(),
            usage: self.usage.clone(),
        }
    }
}

/// `GET /status`.
pub async fn status(State(st): State<ApiState>) -> Json<Status> {
    Json(st.parts().gather(Some(st.report())))
}

/// Histogram bucket bounds of `edge_agent_request_duration_seconds`.
const BUCKETS_S: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// `GET /metrics`: the families of each part, in a fixed order.
pub async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    let mut out = Exposition::default();
    request_metrics(&mut out, &st.engine);
    pool_metrics(&mut out, &st.engine);
    out.single(
        "edge_agent_api_overloaded_total",
        "counter",
        "API inference requests answered 503 because too many were in flight.",
        st.counters.overloaded.load(Ordering::Relaxed),
    );
    if st.fallback.is_configured() {
        for m in st.fallback.metrics() {
            let lines = m.samples.into_iter().map(|(labels, v)| format!("{labels} {v}"));
            out.family(m.name, m.kind, m.help, lines);
        }
    }
    drift_metrics(&mut out, &st.monitors.report());
    process_metrics(&mut out, st.health.started, st.health.is_ready());
    if let Some(m) = st.mqtt.as_ref().map(|m| m.report()) {
        mqtt_metrics(&mut out, &m);
    }
    usage_metrics(&mut out, &st.usage.report());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out.0)
}

/// Prometheus text exposition, written one metric family at a time.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// A family: its HELP and TYPE lines, then one line per sample, each the family's
    /// name followed by the sample (labels and value, or a suffix such as `_bucket{..} n`).
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: impl IntoIterator<Item = String>) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in samples {
            let _ = writeln!(self.0, "{name}{s}");
        }
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help, [format!(" {value}")]);
    }
}

/// Requests by model: outcomes, rejections, and the latency histogram of successes.
fn request_metrics(out: &mut Exposition, engine: &Engine) {
    let stats = engine.stats();
    let mut requests = Vec::new();
    for (model, r) in &stats {
        requests.push(format!("{{model=\"{}\",outcome=\"ok\",place=\"local\"}} {}", esc(model), r.ok));
        for (kind, n) in &r.errors {
            requests.push(format!(
                "{{model=\"{}\",outcome=\"error\",kind=\"{kind}\",place=\"local\"}} {n}",
                esc(model)
            ));
        }
        for (kind, n) in &r.rejected {
            requests.push(format!(
                "{{model=\"{}\",outcome=\"rejected\",kind=\"{kind}\",place=\"local\"}} {n}",
                esc(model)
            ));
        }
    }
    out.family(
        "edge_agent_requests_total",
        "counter",
        "Inference requests by model, outcome and place.",
        requests,
    );
    let rejections = stats.iter().flat_map(|(model, r)| {
        r.rejected.iter().map(move |(k, n)| format!("{{model=\"{}\",reason=\"{k}\"}} {n}", esc(model)))
    });
    out.family("edge_agent_rejections_total", "counter", "Requests turned away before running.", rejections);
    let mut hist = Vec::new();
    for (model, lat) in engine.latencies() {
        let m = esc(&model);
        for b in BUCKETS_S {
            hist.push(format!(
                "_bucket{{model=\"{m}\",le=\"{b}\"}} {}",
                lat.count_at_or_below((b * 1e6) as u64)
            ));
        }
        hist.push(format!("_bucket{{model=\"{m}\",le=\"+Inf\"}} {}", lat.count()));
        hist.push(format!("_sum{{model=\"{m}\"}} {}", lat.sum_seconds()));
        hist.push(format!("_count{{model=\"{m}\"}} {}", lat.count()));
    }
    out.family(
        "edge_agent_request_duration_seconds",
        "histogram",
        "Time from submission to result of successful requests.",
        hist,
    );
}

/// The engine's worker pool: its queue, busy workers and live streams.
fn pool_metrics(out: &mut Exposition, engine: &Engine) {
    let pool = engine.pool();
    out.single("edge_agent_queue_depth", "gauge", "Requests waiting for an engine worker.", pool.queue_depth);
    out.single("edge_agent_queue_capacity", "gauge", "Size of the engine queue.", pool.queue_capacity);
    out.single("edge_agent_workers_busy", "gauge", "Engine workers running a request.", pool.busy);
    out.single("edge_agent_streams_live", "gauge", "Streams with recurrent state.", pool.live_streams);
}

/// Drift of each watched model: whether it is raised and each summary's last score.
fn drift_metrics(out: &mut Exposition, drift: &std::collections::BTreeMap<String, DriftReport>) {
    if drift.is_empty() {
        return;
    }
    out.family(
        "edge_agent_model_drift_active",
        "gauge",
        "1 while drift against the model's reference is raised.",
        drift
            .iter()
            .map(|(m, d)| format!("{{model=\"{m}\",version=\"{}\"}} {}", d.version, u8::from(d.drifting))),
    );
    out.family(
        "edge_agent_model_drift_score",
        "gauge",
        "Last Jensen-Shannon distance (0..1) of a summary's recent histogram from the reference.",
        drift.iter().flat_map(|(m, d)| {
            d.scores
                .iter()
                .map(move |(s, v)| format!("{{model=\"{m}\",version=\"{}\",summary=\"{s}\"}} {v}", d.version))
        }),
    );
}

/// The agent's process: memory, CPU time, uptime and readiness.
fn process_metrics(out: &mut Exposition, started: Instant, ready: bool) {
    let mem = crate::telemetry::memory();
    out.single("edge_agent_resident_memory_bytes", "gauge", "Resident memory of the agent.", mem.rss);
    out.single(
        "edge_agent_peak_resident_memory_bytes",
        "gauge",
        "Peak resident memory of the agent.",
        mem.peak_rss,
    );
    out.single(
        "edge_agent_cpu_seconds_total",
        "counter",
        "CPU time used by the agent (user and system).",
        crate::telemetry::cpu_seconds(),
    );
    out.single(
        "edge_agent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        started.elapsed().as_secs(),
    );
    out.single(
        "edge_agent_ready",
        "gauge",
        "1 when models are loaded and the agent serves.",
        u8::from(ready),
    );
}

/// Bytes per destination (crate::usage; docs/data-usage.md says how close to the wire).
fn usage_metrics(out: &mut Exposition, u: &crate::usage::UsageReport) {
    for (name, help, pick) in [
        (
            "edge_agent_bytes_sent_total",
            "Bytes sent, by destination.",
            (|b: crate::usage::Bytes| b.sent) as fn(_) -> u64,
        ),
        ("edge_agent_bytes_received_total", "Bytes received, by destination.", |b: crate::usage::Bytes| {
            b.received
        }),
    ] {
        let lines = u.each().into_iter().map(|(dest, b)| format!("{{destination=\"{dest}\"}} {}", pick(b)));
        out.family(name, "counter", help, lines);
    }
}

/// The MQTT link and its spool.
fn mqtt_metrics(out: &mut Exposition, m: &OutboxReport) {
    out.single(
        "edge_agent_mqtt_connected",
        "gauge",
        "1 while connected to the MQTT broker.",
        u8::from(m.connected),
    );
    out.single(
        "edge_agent_mqtt_published_total",
        "counter",
        "Messages the broker acknowledged.",
        m.published,
    );
    out.single("edge_agent_mqtt_reconnects_total", "counter", "Lost MQTT connections.", m.reconnects);
    out.single(
        "edge_agent_mqtt_oversize_total",
        "counter",
        "Messages from the broker over mqtt.max_packet_bytes, dropped unread.",
        m.oversize,
    );
    out.single(
        "edge_agent_mqtt_session_resets_total",
        "counter",
        "Broker sessions discarded (with the messages they held) to get past a resent oversized message.",
        m.session_resets,
    );
    out.single(
        "edge_agent_mqtt_bad_stream_total",
        "counter",
        "Sensor messages dropped because their stream_level topic level is empty or not an id.",
        m.bad_stream,
    );
    out.single(
        "edge_agent_spool_records",
        "gauge",
        "Messages waiting in the spool for the broker.",
        m.spool_records,
    );
    out.single("edge_agent_spool_bytes", "gauge", "Size of the spool's files.", m.spool_bytes);
    let d = &m.dropped;
    out.family(
        "edge_agent_spool_dropped_total",
        "counter",
        "Messages dropped from the full spool, by class.",
        [("telemetry", d.telemetry), ("result", d.result), ("event", d.event), ("reply", d.reply)]
            .iter()
            .map(|(c, n)| format!("{{class=\"{c}\"}} {n}")),
    );
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
