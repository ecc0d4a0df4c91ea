//! `GET /status` (JSON for people and `edge-agent status`) and `GET /metrics`
//! (Prometheus text exposition format).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;
use crate::service::status::{ApiReport, Parts, Status};

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

/// `GET /metrics`.
pub async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    let mut out = String::new();
    let stats = st.engine.stats();
    let pool = st.engine.pool();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in lines {
            let _ = writeln!(out, "{name}{l}");
        }
    };
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
    metric(
        "edge_agent_requests_total",
        "counter",
        "Inference requests by model, outcome and place.",
        requests,
    );
    let rejections = stats
        .iter()
        .flat_map(|(model, r)| {
            r.rejected.iter().map(move |(k, n)| format!("{{model=\"{}\",reason=\"{k}\"}} {n}", esc(model)))
        })
        .collect();
    metric("edge_agent_rejections_total", "counter", "Requests turned away before running.", rejections);
    let mut hist = Vec::new();
    for (model, lat) in st.engine.latencies() {
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
    metric(
        "edge_agent_request_duration_seconds",
        "histogram",
        "Time from submission to result of successful requests.",
        hist,
    );
    metric(
        "edge_agent_queue_depth",
        "gauge",
        "Requests waiting for an engine worker.",
        vec![format!(" {}", pool.queue_depth)],
    );
    metric(
        "edge_agent_queue_capacity",
        "gauge",
        "Size of the engine queue.",
        vec![format!(" {}", pool.queue_capacity)],
    );
    metric(
        "edge_agent_workers_busy",
        "gauge",
        "Engine workers running a request.",
        vec![format!(" {}", pool.busy)],
    );
    metric(
        "edge_agent_streams_live",
        "gauge",
        "Streams with recurrent state.",
        vec![format!(" {}", pool.live_streams)],
    );
    metric(
        "edge_agent_api_overloaded_total",
        "counter",
        "API inference requests answered 503 because too many were in flight.",
        vec![format!(" {}", st.counters.overloaded.load(Ordering::Relaxed))],
    );
    if st.fallback.is_configured() {
        for m in st.fallback.metrics() {
            let lines = m.samples.into_iter().map(|(labels, v)| format!("{labels} {v}")).collect();
            metric(m.name, m.kind, m.help, lines);
        }
    }
    let mem = crate::telemetry::memory();
    metric(
        "edge_agent_resident_memory_bytes",
        "gauge",
        "Resident memory of the agent.",
        vec![format!(" {}", mem.rss)],
    );
    metric(
        "edge_agent_peak_resident_memory_bytes",
        "gauge",
        "Peak resident memory of the agent.",
        vec![format!(" {}", mem.peak_rss)],
    );
    metric(
        "edge_agent_cpu_seconds_total",
        "counter",
        "CPU time used by the agent (user and system).",
        vec![format!(" {}", crate::telemetry::cpu_seconds())],
    );
    metric(
        "edge_agent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        vec![format!(" {}", st.health.started.elapsed().as_secs())],
    );
    metric(
        "edge_agent_ready",
        "gauge",
        "1 when models are loaded and the agent serves.",
        vec![format!(" {}", u8::from(st.health.is_ready()))],
    );
    if let Some(m) = st.mqtt.as_ref().map(|m| m.report()) {
        metric(
            "edge_agent_mqtt_connected",
            "gauge",
            "1 while connected to the MQTT broker.",
            vec![format!(" {}", u8::from(m.connected))],
        );
        metric(
            "edge_agent_mqtt_published_total",
            "counter",
            "Messages the broker acknowledged.",
            vec![format!(" {}", m.published)],
        );
        metric(
            "edge_agent_mqtt_reconnects_total",
            "counter",
            "Lost MQTT connections.",
            vec![format!(" {}", m.reconnects)],
        );
        metric(
            "edge_agent_mqtt_oversize_total",
            "counter",
            "Messages from the broker over mqtt.max_packet_bytes, dropped unread.",
            vec![format!(" {}", m.oversize)],
        );
        metric(
            "edge_agent_mqtt_session_resets_total",
            "counter",
            "Broker sessions discarded (with the messages they held) to get past a resent oversized message.",
            vec![format!(" {}", m.session_resets)],
        );
        metric(
            "edge_agent_mqtt_bad_stream_total",
            "counter",
            "Sensor messages dropped because their stream_level topic level is empty or not an id.",
            vec![format!(" {}", m.bad_stream)],
        );
        metric(
            "edge_agent_spool_records",
            "gauge",
            "Messages waiting in the spool for the broker.",
            vec![format!(" {}", m.spool_records)],
        );
        metric(
            "edge_agent_spool_bytes",
            "gauge",
            "Size of the spool's files.",
            vec![format!(" {}", m.spool_bytes)],
        );
        let d = &m.dropped;
        metric(
            "edge_agent_spool_dropped_total",
            "counter",
            "Messages dropped from the full spool, by class.",
            [("telemetry", d.telemetry), ("result", d.result), ("event", d.event), ("reply", d.reply)]
                .iter()
                .map(|(c, n)| format!("{{class=\"{c}\"}} {n}"))
                .collect(),
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
