//! End-to-end tests: the real `edge-agent` binary on real models and files.
//! Run them with `tests/run`, which prepares the models and reference outputs first.

#[path = "../common/mod.rs"]
mod common;

/// Local inference on the real models, compared with onnxruntime.
mod accuracy;
/// The local API: Open Inference Protocol v2, status, metrics, limits; status and doctor.
mod api;
/// Audio models behind a declared DSP front end: openWakeWord against its own pipeline.
mod audio;
/// Malformed models, specs and inputs: clear errors, right exit codes, no panics.
mod bad_input;
/// The benchmark's tools: the native MQTT load driver and the Python peer agent.
mod bench;
/// Capture: the store's bounds, exports read by numpy and re-run, resumable uploads.
mod capture;
/// The command line: inspect, infer, bench output formats.
mod cli;
/// Configuration errors and overrides.
mod config;
/// The cloud image (firmware-images/cloud): built, then its entrypoint run from its root fs.
mod container;
/// The aarch64 build under qemu-user: same outputs as x86_64, the demo, MQTT.
mod cross;
/// The daemon: demo, sources, streaming state through `edge-agent run`.
mod daemon;
/// A real YOLO-style detector: image files, MQTT, the API and OTA, against Python.
mod detect;
/// Remote diagnostics: the own log, `logs/upload`, `diagnostics/bundle`, the log level.
mod diagnostics;
/// Cloud fallback over OIP v2: each routing reason, faults, breaker, budget, memory.
mod fallback;
/// The cloud fallback's OIP v2 client alone: retries, timeouts, limits, tokens, TLS.
mod fallback_client;
/// `fleet rollout` against a fleet of agents: steps, halts, pulls, kills, restarts.
mod fleet_rollout;
/// `fleet status` against a fleet of real agents on one broker: versions, states, offline,
/// filters, watch, malformed devices.
mod fleet_status;
/// The device images booted under systemd-nspawn: READY, MQTT, SIGKILL, shutdown.
mod images;
/// Memory of a serving daemon: start-up pages of the executable given back.
mod memory;
/// Bounded models: the device's memory limit, wrapping shapes, strides, spec files.
mod models;
/// Drift monitoring: `model profile`, and `model-drift` on MQTT from a drifting machine.
mod monitor;
/// The MQTT link against a real Mosquitto: results, status, commands, spool, TLS.
mod mqtt;
/// NNEF: `model convert` and `registry publish` write model.nnef.tgz, the agent loads
/// it with ONNX's outputs, a damaged archive is a clear error.
mod nnef;
/// A text detector alone, its input's height and width both varying: images and
/// tensors of any size over MQTT and the API, against rapidocr; sizes out of bounds.
mod ocr_det;
/// Signed model updates: registry, refusals, probation, rollback, crash safety.
mod ota;
/// Every way an update can end (done, cut, refused, failed, rolled back, stalled,
/// abandoned) leaves the next check free to run and succeed.
mod ota_endings;
/// The registry's HTTP client and server: limits, resume, conditional requests, TLS.
mod ota_net;
/// Packaging: the systemd unit and the Debian package.
mod packaging;
/// Pipelines of models in one spec: PP-OCR detector -> recogniser over MQTT, the API, publish.
mod pipeline;
/// The registry against python-tuf, the reference implementation, both ways.
mod registry;
/// The daemon under systemd: notify, watchdog, reload.
mod service;
/// Shadow runs of a candidate version: promoted on agreement, rejected with its
/// confusion matrix, never delaying the active version.
mod shadow;
/// Model specs: a bare ONNX file inspected, BOMs, sample rates, no post-processing,
/// letterbox and BGR, a dimension that varies.
mod spec;
/// Bytes per destination against a counting proxy.
mod usage;
/// openWakeWord's wake word as one pipeline: front end, embeddings, a window of them.
mod wake;
