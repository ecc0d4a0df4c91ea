//! The agent's configuration: one TOML file, overridden by `EDGE_AGENT_<SECTION>_<KEY>`
//! environment variables, then by command-line flags; validated once at start.
//!
//! [`RawConfig`] is what the file says; [`Config`] exists only after validation, so the
//! rest of the agent never sees an unchecked value. Every problem is reported at once,
//! each as `file:line: key: what is wrong; how to fix it`.

pub mod capture;
mod error;
pub mod fallback;
pub mod mqtt;
pub mod ota;
pub mod runtime;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use capture::CaptureSection;
pub use error::ConfigError;
pub use fallback::FallbackSection;
pub use mqtt::{
    FsyncMode, MqttConfig, MqttSection, MqttVersion, SensorSubscription, SpoolSection, TelemetryFormat,
    TelemetrySection,
};
pub use ota::OtaSection;

use edge_infer::engine::EngineConfig;
use edge_infer::engine::spec::ModelSpec;
use edge_infer::locate::{line_of, line_of_path};

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "EDGE_AGENT_";

/// `[agent]`: who this device is and where it keeps state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Device id used in topics and results; default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Where the agent keeps state (models, spool, trust); relative to the config file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection { device_id: None, state_dir: default_state_dir() }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/edge-agent")
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines for a terminal or journald.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `edge_agent=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// The agent's own log under `<state_dir>/log/`: megabytes for all its files
    /// together (0: none).
    #[serde(default = "default_log_file_max_mb")]
    pub file_max_mb: u64,
    /// Files of the own log, the active one included (2 to 16).
    #[serde(default = "default_log_files")]
    pub files: u32,
    /// The largest archive `logs/upload` and `diagnostics/bundle` will send, in megabytes.
    #[serde(default = "default_log_upload_max_mb")]
    pub upload_max_mb: u64,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Human,
            level: default_log_level(),
            file_max_mb: default_log_file_max_mb(),
            files: default_log_files(),
            upload_max_mb: default_log_upload_max_mb(),
        }
    }
}

fn default_log_file_max_mb() -> u64 {
    16
}

fn default_log_files() -> u32 {
    4
}

fn default_log_upload_max_mb() -> u64 {
    64
}

fn default_log_level() -> String {
    "info".into()
}

/// `[engine]`: worker pool sizing and request deadlines.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Microseconds an idle worker polls for work before sleeping (0: sleep at once).
    #[serde(default = "default_spin_us")]
    pub spin_us: u64,
    /// The most memory one model may need, in MiB: its weights plus its estimated working
    /// memory. A model past it is refused at load, at update and in the self-test.
    #[serde(default = "default_max_model_memory_mb")]
    pub max_model_memory_mb: u64,
    /// Threads one model run may use for its matrix products (1: none besides the
    /// worker). Speeds up large models' single requests; see docs/configuration.md.
    #[serde(default = "default_intra_threads")]
    pub intra_threads: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            threads: default_threads(),
            queue: default_queue(),
            deadline_ms: default_deadline_ms(),
            max_streams: default_max_streams(),
            spin_us: default_spin_us(),
            max_model_memory_mb: default_max_model_memory_mb(),
            intra_threads: default_intra_threads(),
        }
    }
}

fn default_threads() -> usize {
    1
}
fn default_queue() -> usize {
    64
}
fn default_deadline_ms() -> u64 {
    1000
}
fn default_max_streams() -> usize {
    1024
}
fn default_intra_threads() -> usize {
    1
}
fn default_spin_us() -> u64 {
    50
}
fn default_max_model_memory_mb() -> u64 {
    edge_infer::engine::budget::DEFAULT_MAX_MODEL_MEMORY_MB
}

/// `[[model]]`: a model directory (holding `model.toml` and the model file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Relative to the config file.
    pub path: PathBuf,
    /// Which results go to the broker (docs/data-usage.md); every one by default.
    #[serde(default)]
    pub publish: PublishSection,
}

/// `[model.publish]`: results by exception. In the config, not the model's spec: what a
/// link may carry is the deployment's business, and one model package serves devices on
/// fibre and on cellular alike.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSection {
    #[serde(default)]
    pub mode: PublishMode,
    /// `change`: a score crossing this value (up or down) is a change too.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// `summary`: seconds covered by one summary per stream.
    #[serde(default = "default_summary_interval")]
    pub interval_s: u64,
}

impl Default for PublishSection {
    fn default() -> Self {
        PublishSection { mode: PublishMode::Every, threshold: None, interval_s: default_summary_interval() }
    }
}

fn default_summary_interval() -> u64 {
    60
}

/// Which results of a model are published on MQTT (all are written locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Every result (window), as it comes.
    #[default]
    Every,
    /// A stream's first result, a label change, a segment start or end, a score crossing
    /// `threshold`.
    Change,
    /// One summary per stream every `interval_s`: counts per label, score statistics.
    Summary,
}

/// Encoding of a file replayed by a `file` source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// By extension: `.wav`, `.csv`, anything else NDJSON.
    #[default]
    Auto,
    /// One JSON array of numbers (or object with `data`, optional `stream`) per line.
    Ndjson,
    /// One row of numbers per line; a non-numeric first line is a header.
    Csv,
    /// 16-bit PCM or 32-bit float WAV, mono (multi-channel files are mixed down).
    Wav,
}

/// `[[source]]`: where sensor data comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceEntry {
    /// A vibration-like signal with injected anomalies, for demos and soak tests.
    Simulated(SimulatedSource),
    /// Replays a file (NDJSON, CSV or WAV).
    File(FileSource),
    /// Reads NDJSON lines from standard input.
    Stdin(StdinSource),
}

/// A simulated vibration sensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedSource {
    pub model: String,
    #[serde(default = "default_sim_stream")]
    pub stream: String,
    /// Samples per second of the simulated sensor.
    #[serde(default = "default_sample_rate")]
    pub sample_rate: u32,
    /// Samples are delivered in chunks of this many milliseconds.
    #[serde(default = "default_chunk_ms")]
    pub chunk_ms: u64,
    /// Real-time factor: 1 is real time, 10 ten times faster, 0 as fast as possible.
    #[serde(default = "default_speed")]
    pub speed: f64,
    /// An anomaly starts every this many seconds of signal (0: none).
    #[serde(default = "default_anomaly_every")]
    pub anomaly_every_s: f64,
    /// Length of each anomaly in seconds.
    #[serde(default = "default_anomaly_len")]
    pub anomaly_len_s: f64,
    /// Seconds of signal to produce; 0 runs until stopped.
    #[serde(default)]
    pub duration_s: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The noise and the anomalies' draws come from this seed when set, while the machine
    /// (speed, amplitude, phases) still comes from `seed`: the same machine, another run.
    #[serde(default)]
    pub noise_seed: Option<u64>,
    /// A change of the signal from a given point on, to show drift monitoring.
    #[serde(default)]
    pub drift: Option<SimDrift>,
}

/// `[source.drift]` of a simulated source: from `after_s` seconds of signal (or after
/// `after_messages` messages; neither: from the start), every sample becomes
/// `gain * x + offset + noise * N(0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDrift {
    #[serde(default)]
    pub after_s: Option<f64>,
    #[serde(default)]
    pub after_messages: Option<u64>,
    #[serde(default = "default_gain")]
    pub gain: f64,
    #[serde(default)]
    pub offset: f64,
    /// Standard deviation of the added Gaussian noise.
    #[serde(default)]
    pub noise: f64,
}

fn default_gain() -> f64 {
    1.0
}

fn default_sim_stream() -> String {
    "sim-1".into()
}
fn default_sample_rate() -> u32 {
    1000
}
fn default_chunk_ms() -> u64 {
    100
}
fn default_speed() -> f64 {
    1.0
}
fn default_anomaly_every() -> f64 {
    6.0
}
fn default_anomaly_len() -> f64 {
    2.0
}
fn default_seed() -> u64 {
    7
}

/// A file replayed into a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    pub model: String,
    /// Relative to the config file.
    pub path: PathBuf,
    #[serde(default)]
    pub format: FileFormat,
    /// Stream id; default: the file name. NDJSON lines may name their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Real-time factor for WAV files (needs the sample rate): 0 replays as fast as the
    /// model takes it.
    #[serde(default)]
    pub speed: f64,
}

/// NDJSON on standard input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinSource {
    pub model: String,
    #[serde(default = "default_stdin_stream")]
    pub stream: String,
}

fn default_stdin_stream() -> String {
    "stdin".into()
}

impl SourceEntry {
    /// The model this source feeds.
    pub fn model(&self) -> &str {
        match self {
            SourceEntry::Simulated(s) => &s.model,
            SourceEntry::File(s) => &s.model,
            SourceEntry::Stdin(s) => &s.model,
        }
    }

    /// The source's kind, as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceEntry::Simulated(_) => "simulated",
            SourceEntry::File(_) => "file",
            SourceEntry::Stdin(_) => "stdin",
        }
    }
}

/// `[output]`: where results go (MQTT comes in its own section).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Write each result as a JSON line on standard output.
    #[serde(default = "yes")]
    pub stdout: bool,
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection { stdout: true }
    }
}

fn yes() -> bool {
    true
}

/// `[api]`: the local HTTP API (Open Inference Protocol v2, status, metrics). Present
/// means on; absent means off (`edge-agent serve` turns it on with these defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// TCP address; empty for none. Loopback only, unless `allow_remote`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Unix socket path; default `$RUNTIME_DIRECTORY/api.sock` under systemd, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Inference requests in flight; more get 503 at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Open connections per listener (TCP, unix socket); a new one beyond closes the
    /// oldest idle one, and is refused only when all are busy with a request.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Listen on a non-loopback address (a cloud endpoint in a container).
    #[serde(default)]
    pub allow_remote: bool,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: default_listen(),
            socket: None,
            max_body_bytes: default_max_body(),
            max_concurrency: default_max_concurrency(),
            max_connections: default_max_connections(),
            header_timeout_ms: default_header_timeout(),
            body_timeout_ms: default_body_timeout(),
            allow_remote: false,
        }
    }
}

/// Default TCP address of the API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_max_body() -> usize {
    16 * 1024 * 1024
}
fn default_max_concurrency() -> usize {
    64
}
fn default_max_connections() -> usize {
    256
}
fn default_header_timeout() -> u64 {
    5000
}
fn default_body_timeout() -> u64 {
    10_000
}

/// The configuration file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default, rename = "model")]
    pub models: Vec<ModelEntry>,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceEntry>,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSection>,
    #[serde(default)]
    pub telemetry: TelemetrySection,
    #[serde(default)]
    pub spool: SpoolSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ota: Option<OtaSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSection>,
    #[serde(default)]
    pub capture: CaptureSection,
}

/// Sections that environment variables may set.
const SECTIONS: [&str; 11] =
    ["agent", "log", "engine", "output", "api", "mqtt", "telemetry", "spool", "ota", "fallback", "capture"];

/// Overrides given as command-line flags (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub threads: Option<usize>,
    pub device_id: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// Turn the API on (with its defaults where the file has no `[api]`).
    pub api: bool,
    /// Ignore the configured sources (`edge-agent serve`).
    pub no_sources: bool,
}

/// A model the config names, with its spec already read.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub dir: PathBuf,
    pub publish: PublishSection,
}

/// A validated configuration: paths resolved, values in range, references checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    pub device_id: String,
    pub state_dir: PathBuf,
    pub log: LogSection,
    pub engine: EngineConfig,
    pub deadline: Duration,
    pub models: Vec<ModelConfig>,
    pub sources: Vec<SourceEntry>,
    pub output: OutputSection,
    pub api: Option<ApiConfig>,
    pub mqtt: Option<MqttConfig>,
    pub telemetry: TelemetrySection,
    pub spool: SpoolSection,
    /// Model updates from a registry, paths resolved.
    pub ota: Option<OtaSection>,
    /// Cloud inference, paths resolved.
    pub fallback: Option<FallbackSection>,
    /// Keeping samples for retraining (off by default), paths resolved.
    pub capture: CaptureSection,
}

/// The validated API settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub listen: Option<String>,
    pub socket: Option<PathBuf>,
    pub limits: ApiSection,
}

/// One problem found by validation: the key it concerns and the message.
struct Problem {
    key: String,
    message: String,
}

impl Config {
    /// Reads, overrides and validates a config file, with the process environment.
    pub fn load(path: &Path, flags: &Overrides) -> Result<Config, ConfigError> {
        let env = prefixed_env(std::env::vars_os())?;
        Self::load_with_env(path, flags, &env)
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_with_env(
        path: &Path,
        flags: &Overrides,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let (mut raw, text) = read_file(path)?;
        // The runtime overlay lives in the state directory, which env and flags may move.
        let mut probe = raw.clone();
        if !env.is_empty() {
            probe = apply_env(probe, env)?;
        }
        apply_flags(&mut probe, flags);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let state_dir = if probe.agent.state_dir.is_absolute() {
            probe.agent.state_dir.clone()
        } else {
            base.join(&probe.agent.state_dir)
        };
        runtime::apply_overlay(&mut raw, &state_dir);
        if !env.is_empty() {
            raw = apply_env(raw, env)?;
        }
        apply_flags(&mut raw, flags);
        validate(raw, path, &text)
    }

    /// Reads the file as [`RawConfig`] with the runtime overlay of `state_dir` applied
    /// (what `config/get` shows and `config/set` changes), and its text.
    pub fn load_raw(path: &Path, state_dir: &Path) -> Result<(RawConfig, String), ConfigError> {
        let (mut raw, text) = read_file(path)?;
        runtime::apply_overlay(&mut raw, state_dir);
        Ok((raw, text))
    }

    /// Validates a raw configuration as if read from `path` (whose text gives lines).
    pub fn check_raw(raw: RawConfig, path: &Path, text: &str) -> Result<Config, ConfigError> {
        validate(raw, path, text)
    }
}

/// Reads and parses a config file (syntax only), returning its text for line numbers.
fn read_file(path: &Path) -> Result<(RawConfig, String), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        line: e.span().map(|s| line_of(&text, s.start)).unwrap_or(0),
        message: e.message().trim().to_string(),
    })?;
    Ok((raw, text))
}

/// The `EDGE_AGENT_*` variables of an environment. Any other variable is none of our
/// business, whatever bytes it holds (`std::env::vars` would panic on one that is not
/// UTF-8); one of ours that is not UTF-8 is an error that names it.
fn prefixed_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in vars {
        if !name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => out.push((name, value)),
            (name, _) => {
                let var = name.unwrap_or_else(|n| n.to_string_lossy().into_owned());
                return Err(ConfigError::Env {
                    var,
                    message: "its name or value is not valid UTF-8; set it in UTF-8 or unset it".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Applies `EDGE_AGENT_<SECTION>_<KEY>` variables: `EDGE_AGENT_ENGINE_THREADS=4` sets
/// `engine.threads`. A value is read as TOML (numbers, booleans, arrays, a quoted
/// string) when the key takes that type, and otherwise as the string it is, so that
/// `EDGE_AGENT_AGENT_DEVICE_ID=1234` or a password `true` stay strings. Arrays of tables
/// (`[[model]]`, `[[source]]`) cannot be set this way. Variables without the prefix are
/// ignored.
fn apply_env(raw: RawConfig, env: &[(String, String)]) -> Result<RawConfig, ConfigError> {
    let mut table = toml::Table::try_from(&raw)
        .map_err(|e| ConfigError::Env { var: "(all)".into(), message: e.to_string() })?;
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
        let rest = rest.to_ascii_lowercase();
        let bad = |message: String| ConfigError::Env { var: var.clone(), message };
        let Some((section, key)) = rest.split_once('_').filter(|(_, key)| !key.is_empty()) else {
            return Err(bad("expected EDGE_AGENT_<SECTION>_<KEY>, e.g. EDGE_AGENT_ENGINE_THREADS".into()));
        };
        if !SECTIONS.contains(&section) {
            return Err(bad(format!("no section [{section}]; sections are {}", SECTIONS.join(", "))));
        }
        if !matches!(table.get(section), None | Some(toml::Value::Table(_))) {
            return Err(bad(format!("[{section}] is not a table")));
        }
        // The typed reading first, then the text as it is: whichever the key takes. Each
        // is tried on the whole configuration, so the error is this variable's own.
        let typed = value.trim().parse::<toml::Value>().ok();
        let verbatim = toml::Value::String(value.clone());
        let mut first_error = None;
        let mut applied = None;
        for candidate in typed.into_iter().chain([verbatim]) {
            let mut trial = table.clone();
            if let toml::Value::Table(sec) =
                trial.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                sec.insert(key.to_string(), candidate);
            }
            match toml::Value::Table(trial.clone()).try_into::<RawConfig>() {
                Ok(_) => {
                    applied = Some(trial);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match applied {
            Some(trial) => table = trial,
            None => {
                let message = first_error.map(|e| e.message().trim().to_string()).unwrap_or_default();
                return Err(bad(message));
            }
        }
    }
    toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
        let var = env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ");
        ConfigError::Env { var, message: e.message().trim().to_string() }
    })
}

fn apply_flags(raw: &mut RawConfig, f: &Overrides) {
    if let Some(v) = f.log_format {
        raw.log.format = v;
    }
    if let Some(v) = &f.log_level {
        raw.log.level = v.clone();
    }
    if let Some(v) = f.threads {
        raw.engine.threads = v;
    }
    if let Some(v) = &f.device_id {
        raw.agent.device_id = Some(v.clone());
    }
    if let Some(v) = &f.state_dir {
        raw.agent.state_dir = v.clone();
    }
    if f.api && raw.api.is_none() {
        raw.api = Some(ApiSection::default());
    }
    if f.no_sources {
        raw.sources.clear();
    }
}

/// Whether `s` may be used as an id in topics and paths.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Checks every section, collecting all problems before reporting any, then builds the
/// [`Config`]: each step below checks one part and returns what it validated.
fn validate(raw: RawConfig, path: &Path, text: &str) -> Result<Config, ConfigError> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| problems.push(Problem { key: key.into(), message });

    let device_id = check_device_id(&raw.agent, &mut problem);
    check_engine(&raw.engine, &mut problem);
    check_log(&raw.log, &mut problem);
    let models = load_models(&raw.models, &resolve, &mut problem);
    let absent = AbsentModels::of(&raw);
    check_sources(&raw.sources, &models, &absent, &resolve, &mut problem);
    let api = raw.api.as_ref().map(|a| check_api(a, &resolve, &mut problem));
    let mut model_names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    for m in &absent.all {
        if !model_names.contains(&m.as_str()) {
            model_names.push(m);
        }
    }
    let mqtt = raw.mqtt.as_ref().map(|m| mqtt::validate(m, &device_id, &model_names, &resolve, &mut problem));
    mqtt::validate_rest(&raw.telemetry, &raw.spool, &mut problem);
    let groups = raw.mqtt.as_ref().map(|m| m.groups.clone()).unwrap_or_default();
    let ota = raw.ota.as_ref().map(|o| ota::validate(o, &resolve, &groups, &mut problem));
    let fallback =
        raw.fallback.as_ref().map(|f| check_fallback(f, &models, &absent.registry, &resolve, &mut problem));
    let capture = capture::validate(&raw.capture, &resolve, &mut problem);

    if !problems.is_empty() {
        return Err(report(&problems, path, text));
    }
    Ok(Config {
        file: path.to_path_buf(),
        device_id,
        state_dir: resolve(&raw.agent.state_dir),
        log: raw.log,
        engine: EngineConfig {
            threads: raw.engine.threads,
            queue: raw.engine.queue,
            max_streams: raw.engine.max_streams,
            spin: Duration::from_micros(raw.engine.spin_us),
            model_limits: edge_infer::engine::ModelLimits::from_mb(raw.engine.max_model_memory_mb),
            intra_threads: raw.engine.intra_threads,
            ..EngineConfig::default()
        },
        deadline: Duration::from_millis(raw.engine.deadline_ms),
        models,
        sources: resolve_sources(raw.sources, &resolve),
        output: raw.output,
        api,
        mqtt,
        telemetry: raw.telemetry,
        spool: raw.spool,
        ota,
        fallback,
        capture,
    })
}

/// `agent.device_id`, or the host name when it is not set; checked either way, since it
/// goes into topics and paths.
fn check_device_id(agent: &AgentSection, problem: &mut dyn FnMut(&str, String)) -> String {
    let device_id = match agent.device_id.clone() {
        Some(id) => id,
        None => hostname(),
    };
    if !is_valid_id(&device_id) {
        problem(
            "agent.device_id",
            format!(
                "`{device_id}` may only use A-Z a-z 0-9 . _ - (1 to 128 characters); set agent.device_id"
            ),
        );
    }
    device_id
}

/// Checks the ranges of `[engine]`.
fn check_engine(e: &EngineSection, problem: &mut dyn FnMut(&str, String)) {
    if !(1..=256).contains(&e.threads) {
        problem(
            "engine.threads",
            format!("{} is out of range; use 1 to 256 (about one per core)", e.threads),
        );
    }
    if !(1..=1_000_000).contains(&e.queue) {
        problem("engine.queue", format!("{} is out of range; use 1 to 1000000", e.queue));
    }
    if !(1..=3_600_000).contains(&e.deadline_ms) {
        problem(
            "engine.deadline_ms",
            format!("{} is out of range; use 1 to 3600000 (one hour)", e.deadline_ms),
        );
    }
    if e.spin_us > 10_000 {
        problem("engine.spin_us", format!("{} µs would burn a core while idle; use 0 to 10000", e.spin_us));
    }
    if !(1..=edge_infer::engine::budget::MAX_MODEL_MEMORY_MB).contains(&e.max_model_memory_mb) {
        problem(
            "engine.max_model_memory_mb",
            format!(
                "{} is out of range; use 1 to {} (MiB a model may need: weights and working memory)",
                e.max_model_memory_mb,
                edge_infer::engine::budget::MAX_MODEL_MEMORY_MB
            ),
        );
    }
    let max_intra = edge_infer::engine::intra::MAX_INTRA_THREADS;
    if !(1..=max_intra).contains(&e.intra_threads) {
        problem(
            "engine.intra_threads",
            format!(
                "{} is out of range; use 1 (no threads inside a run) to {max_intra}, at most the device's cores",
                e.intra_threads
            ),
        );
    }
    if e.max_streams == 0 {
        problem("engine.max_streams", "0 streams would serve nothing; use at least 1".into());
    }
}

/// Checks that `log.level` is a filter the log can use.
fn check_log(log: &LogSection, problem: &mut dyn FnMut(&str, String)) {
    if crate::logs::parse_filter(&log.level).is_none() {
        problem(
            "log.level",
            format!("`{}` is not a log filter; use error, warn, info, debug or trace", log.level),
        );
    }
    if !(2..=16).contains(&log.files) {
        problem("log.files", format!("{} files: use 2 to 16 (the active one and older ones)", log.files));
    }
    if log.file_max_mb > 1 << 20 {
        problem(
            "log.file_max_mb",
            format!("{} MB is more than a device's log needs; use at most 1048576", log.file_max_mb),
        );
    }
    if log.upload_max_mb == 0 || log.upload_max_mb > 1 << 20 {
        problem("log.upload_max_mb", format!("{} MB: use 1 to 1048576", log.upload_max_mb));
    }
}

/// Checks `[model.publish]`.
fn check_publish(i: usize, p: &PublishSection, problem: &mut dyn FnMut(&str, String)) {
    if p.interval_s == 0 || p.interval_s > 86_400 {
        problem(
            &format!("model.{i}.publish.interval_s"),
            format!("{} is out of range; use 1 to 86400 seconds", p.interval_s),
        );
    }
    if p.threshold.is_some_and(|t| !t.is_finite()) {
        problem(&format!("model.{i}.publish.threshold"), "must be a finite number, such as 0.8".into());
    }
}

/// Reads the spec of each `[[model]]` directory; a name may appear once.
fn load_models(
    entries: &[ModelEntry],
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) -> Vec<ModelConfig> {
    let mut models = Vec::new();
    for (i, m) in entries.iter().enumerate() {
        let key = format!("model.{i}.path");
        let dir = resolve(&m.path);
        match ModelSpec::load_dir(&dir) {
            Ok(spec) => {
                if models.iter().any(|x: &ModelConfig| x.name == spec.spec.name) {
                    problem(
                        &key,
                        format!("a second model named `{}`; each model name may appear once", spec.spec.name),
                    );
                }
                check_publish(i, &m.publish, problem);
                models.push(ModelConfig { name: spec.spec.name, dir, publish: m.publish });
            }
            Err(err) => problem(&key, err.to_string()),
        }
    }
    models
}

/// Models that may be named without a `[[model]]`: the ones the registry provides may be
/// missing until the first update arrives, and models with a cloud endpoint may never be
/// installed here.
struct AbsentModels {
    /// `ota.models`.
    registry: Vec<String>,
    /// `ota.models`, then the fallback's models not among them.
    all: Vec<String>,
}

impl AbsentModels {
    fn of(raw: &RawConfig) -> AbsentModels {
        let registry: Vec<String> = raw.ota.as_ref().map(|o| o.models.clone()).unwrap_or_default();
        let cloud: Vec<String> = raw
            .fallback
            .as_ref()
            .map(|f| f.models.iter().map(|m| m.model.clone()).collect())
            .unwrap_or_default();
        let mut all = registry.clone();
        all.extend(cloud.iter().filter(|m| !registry.contains(m)).cloned());
        AbsentModels { registry, all }
    }
}

/// Checks each `[[source]]`: its model exists, and its kind's own settings.
fn check_sources(
    sources: &[SourceEntry],
    models: &[ModelConfig],
    absent: &AbsentModels,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) {
    for (i, s) in sources.iter().enumerate() {
        let key = format!("source.{i}");
        if !models.iter().any(|m| m.name == s.model()) && !absent.all.iter().any(|m| m == s.model()) {
            let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
            problem(
                &format!("{key}.model"),
                format!(
                    "no model named `{}` is configured (configured: {}); add a [[model]] or fix the name",
                    s.model(),
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                ),
            );
        }
        match s {
            SourceEntry::Simulated(sim) => check_simulated(&key, sim, problem),
            SourceEntry::File(f) => {
                let p = resolve(&f.path);
                if !p.is_file() {
                    problem(&format!("{key}.path"), format!("{} is not a readable file", p.display()));
                }
                if !(f.speed >= 0.0 && f.speed.is_finite()) {
                    problem(&format!("{key}.speed"), format!("{} is not valid; use 0 or more", f.speed));
                }
            }
            SourceEntry::Stdin(_) => {}
        }
    }
    if sources.iter().filter(|s| matches!(s, SourceEntry::Stdin(_))).count() > 1 {
        problem("source", "only one stdin source can exist".into());
    }
}

/// Checks a simulated source's rate, chunk, speed and stream id; `key` is `source.N`.
fn check_simulated(key: &str, sim: &SimulatedSource, problem: &mut dyn FnMut(&str, String)) {
    if !(1..=1_000_000).contains(&sim.sample_rate) {
        problem(
            &format!("{key}.sample_rate"),
            format!("{} is out of range; use 1 to 1000000", sim.sample_rate),
        );
    }
    if sim.chunk_ms == 0 {
        problem(&format!("{key}.chunk_ms"), "must be at least 1".into());
    }
    if !(sim.speed >= 0.0 && sim.speed.is_finite()) {
        problem(
            &format!("{key}.speed"),
            format!("{} is not valid; use 0 (as fast as possible) or more", sim.speed),
        );
    }
    if !is_valid_id(&sim.stream) {
        problem(&format!("{key}.stream"), format!("`{}` may only use A-Z a-z 0-9 . _ -", sim.stream));
    }
    if let Some(d) = &sim.drift {
        if d.after_s.is_some() && d.after_messages.is_some() {
            problem(&format!("{key}.drift"), "give after_s or after_messages, not both".into());
        }
        if d.after_s.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
            problem(&format!("{key}.drift.after_s"), "must be 0 or more seconds of signal".into());
        }
        if !(d.gain.is_finite() && d.offset.is_finite() && d.noise >= 0.0 && d.noise.is_finite()) {
            problem(
                &format!("{key}.drift"),
                format!(
                    "gain ({}), offset ({}) must be finite numbers and noise ({}) 0 or more",
                    d.gain, d.offset, d.noise
                ),
            );
        }
    }
}

/// Checks `[api]`: where it listens (loopback unless allowed otherwise) and its limits.
fn check_api(
    a: &ApiSection,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) -> ApiConfig {
    let listen = (!a.listen.is_empty()).then(|| a.listen.clone());
    if let Some(l) = &listen {
        match l.parse::<std::net::SocketAddr>() {
            Ok(addr) if !addr.ip().is_loopback() && !a.allow_remote => problem(
                "api.listen",
                format!(
                    "{l} is not a loopback address; the local API serves this device only: use 127.0.0.1:PORT, or set api.allow_remote = true (a cloud endpoint in a container)"
                ),
            ),
            Ok(_) => {}
            Err(_) => problem("api.listen", format!("`{l}` is not an address such as 127.0.0.1:8470")),
        }
    }
    let socket = a
        .socket
        .as_ref()
        .map(|p| resolve(p))
        .or_else(|| std::env::var_os("RUNTIME_DIRECTORY").map(|d| PathBuf::from(d).join("api.sock")));
    if listen.is_none() && socket.is_none() {
        problem("api.listen", "neither a TCP address nor a unix socket: set api.listen or api.socket".into());
    }
    for (key, v, lo, hi) in [
        ("api.max_body_bytes", a.max_body_bytes as u64, 1024, 1 << 30),
        ("api.max_concurrency", a.max_concurrency as u64, 1, 100_000),
        ("api.max_connections", a.max_connections as u64, 1, 100_000),
        ("api.header_timeout_ms", a.header_timeout_ms, 100, 600_000),
        ("api.body_timeout_ms", a.body_timeout_ms, 100, 600_000),
    ] {
        if !(lo..=hi).contains(&v) {
            problem(key, format!("{v} is out of range; use {lo} to {hi}"));
        }
    }
    ApiConfig { listen, socket, limits: a.clone() }
}

/// Checks `[fallback]`, and that a cloud model not installed here (nor provided by the
/// registry) names a spec for its pre- and post-processing.
fn check_fallback(
    f: &FallbackSection,
    models: &[ModelConfig],
    registry: &[String],
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) -> FallbackSection {
    let checked = fallback::validate(f, resolve, problem);
    for (i, m) in checked.models.iter().enumerate() {
        let here = models.iter().any(|x| x.name == m.model) || registry.contains(&m.model);
        if !here && m.spec.is_none() {
            problem(
                &format!("fallback.model.{i}.spec"),
                format!(
                    "`{}` is not installed here, so its pre- and post-processing must come from somewhere: set spec to a directory holding its model.toml",
                    m.model
                ),
            );
        }
    }
    checked
}

/// Every problem, one line each as `file:line: key: message`.
fn report(problems: &[Problem], path: &Path, text: &str) -> ConfigError {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| {
            let line = line_of_path(text, &p.key).unwrap_or(0);
            format!("{}:{}: {}: {}", path.display(), line, p.key, p.message)
        })
        .collect();
    ConfigError::Invalid { count: lines.len(), problems: lines.join("\n") }
}

/// The sources with file paths made absolute.
fn resolve_sources(sources: Vec<SourceEntry>, resolve: &dyn Fn(&Path) -> PathBuf) -> Vec<SourceEntry> {
    sources
        .into_iter()
        .map(|s| match s {
            SourceEntry::File(mut f) => {
                f.path = resolve(&f.path);
                SourceEntry::File(f)
            }
            other => other,
        })
        .collect()
}

/// The host name, reduced to the characters allowed in a device id.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let id: String = raw.trim().chars().map(|c| if is_valid_id(&c.to_string()) { c } else { '-' }).collect();
    if id.is_empty() { "edge-device".into() } else { id }
}
