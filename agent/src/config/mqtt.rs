//! `[mqtt]`, `[telemetry]` and `[spool]`: the link to the fleet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.
    #[serde(rename = "5")]
    V5,
}

/// `[mqtt.tls]`: TLS with rustls. Present means on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file of the certificate authorities that may sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate (chain), for brokers that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate (PKCS#8, SEC1 or PKCS#1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[[mqtt.sensor]]`: a topic filter whose messages feed a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorSubscription {
    /// Topic filter; `+` and `#` wildcards allowed.
    pub topic: String,
    pub model: String,
    /// 0-based topic level whose value is the stream id (`sensors/+/accel` with 1: the
    /// sensor's name). Default: the whole topic is the stream id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_level: Option<usize>,
    /// 0 (at most once) or 1 (at least once, acknowledged after the result is safe).
    #[serde(default = "one")]
    pub qos: u8,
}

fn one() -> u8 {
    1
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    pub host: String,
    /// Default 1883, or 8883 with TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub version: MqttVersion,
    /// Default: the device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Prefer `password_file`: a config file is often readable by more people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored); relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Start with a fresh session on each connection. The default, a persistent session,
    /// lets the broker keep sensor messages for the agent while it is away.
    #[serde(default)]
    pub clean_session: bool,
    /// First level of every topic the agent owns.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Groups this device belongs to: it obeys commands on `{prefix}/group/{g}/cmd/...`.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Largest MQTT packet accepted from the broker.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Largest command request accepted; larger ones get a `rejected` reply.
    #[serde(default = "default_max_command")]
    pub max_command_bytes: usize,
    /// Bytes a UTC day may carry to and from the broker (TLS included); 0: no cap.
    /// Telemetry gives way first, then results; events and replies always go.
    #[serde(default)]
    pub max_bytes_per_day: u64,
    /// QoS 1 messages the agent publishes before waiting for acknowledgements.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// MQTT 5: QoS 1 messages the broker may send before the agent acknowledges them
    /// (flow control that bounds the agent's memory under a flood).
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
    #[serde(default, rename = "sensor")]
    pub sensors: Vec<SensorSubscription>,
}

fn default_keep_alive() -> u64 {
    30
}
fn default_prefix() -> String {
    "edge".into()
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}
fn default_max_packet() -> usize {
    8 * 1024 * 1024
}
fn default_max_command() -> usize {
    64 * 1024
}
fn default_inflight() -> u16 {
    64
}
fn default_receive_maximum() -> u16 {
    64
}

/// Telemetry payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TelemetryFormat {
    #[default]
    Json,
    /// Compact binary; `edge-agent spool decode` turns it into JSON.
    Postcard,
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// Seconds between reports; 0 turns telemetry off.
    #[serde(default = "default_telemetry_interval")]
    pub interval_s: u64,
    #[serde(default)]
    pub format: TelemetryFormat,
    /// 0 or 1. Reports spooled while offline are always replayed with QoS 1.
    #[serde(default)]
    pub qos: u8,
    /// JSON only: a report holds only the values that changed since the one before
    /// (with `schema`, `ts`, `device` and `"partial": true`); every tenth is whole.
    #[serde(default)]
    pub only_changed: bool,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            interval_s: default_telemetry_interval(),
            format: TelemetryFormat::Json,
            qos: 0,
            only_changed: false,
        }
    }
}

fn default_telemetry_interval() -> u64 {
    60
}

/// When the spool forces its writes to storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// After every batch of appends: a power cut loses nothing acknowledged.
    #[default]
    Always,
    /// Every `fsync_interval_ms`: a power cut may lose that much; a crash loses nothing.
    Interval,
    /// When the kernel decides.
    Never,
}

/// `[spool]`: the on-disk store for messages accepted while the broker is unreachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Bound on the spool's size; beyond it, the oldest telemetry goes first.
    #[serde(default = "default_spool_max")]
    pub max_bytes: u64,
    #[serde(default = "default_segment")]
    pub segment_bytes: u64,
    #[serde(default)]
    pub fsync: FsyncMode,
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: u64,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            max_bytes: default_spool_max(),
            segment_bytes: default_segment(),
            fsync: FsyncMode::Always,
            fsync_interval_ms: default_fsync_interval(),
        }
    }
}

fn default_spool_max() -> u64 {
    64 * 1024 * 1024
}
fn default_segment() -> u64 {
    1024 * 1024
}
fn default_fsync_interval() -> u64 {
    1000
}

/// The validated MQTT settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub version: MqttVersion,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub prefix: String,
    pub groups: Vec<String>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_packet_bytes: usize,
    pub max_command_bytes: usize,
    pub max_bytes_per_day: u64,
    pub inflight: u16,
    pub receive_maximum: u16,
    pub tls: Option<TlsSection>,
    pub sensors: Vec<SensorSubscription>,
}

/// Checks `[mqtt]`, calling `problem(key, message)` for each fault; `resolve` makes a
/// path relative to the config file absolute.
pub(super) fn validate(
    m: &MqttSection,
    device_id: &str,
    models: &[&str],
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) -> MqttConfig {
    let client_id = check_session(m, device_id, problem);
    let password = read_password(m, resolve, problem);
    let tls = m.tls.as_ref().map(|t| check_tls(t, resolve, problem));
    check_sensors(m, models, problem);
    MqttConfig {
        host: m.host.clone(),
        port: m.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
        version: m.version,
        client_id,
        username: m.username.clone(),
        password,
        keep_alive: Duration::from_secs(m.keep_alive_s),
        clean_session: m.clean_session,
        prefix: m.prefix.clone(),
        groups: m.groups.clone(),
        reconnect_min: Duration::from_millis(m.reconnect_min_ms),
        reconnect_max: Duration::from_millis(m.reconnect_max_ms),
        max_packet_bytes: m.max_packet_bytes,
        max_command_bytes: m.max_command_bytes,
        max_bytes_per_day: m.max_bytes_per_day,
        inflight: m.inflight,
        receive_maximum: m.receive_maximum,
        tls,
        sensors: m.sensors.clone(),
    }
}

/// Checks the session's settings: host, client id (the device id unless set), topic
/// prefix and groups, keep-alive, reconnect waits, packet sizes and flow control.
/// Returns the client id.
fn check_session(m: &MqttSection, device_id: &str, problem: &mut dyn FnMut(&str, String)) -> String {
    if m.host.trim().is_empty() {
        problem("mqtt.host", "empty; set the broker's host name or address".into());
    }
    let client_id = m.client_id.clone().unwrap_or_else(|| device_id.to_string());
    if client_id.is_empty() || client_id.len() > 256 {
        problem("mqtt.client_id", "must have 1 to 256 characters".into());
    }
    if !super::is_valid_id(&m.prefix) {
        problem("mqtt.prefix", format!("`{}` may only use A-Z a-z 0-9 . _ -", m.prefix));
    }
    for g in &m.groups {
        if !super::is_valid_id(g) || g == "all" {
            problem(
                "mqtt.groups",
                format!("`{g}` is not a group name: use A-Z a-z 0-9 . _ - (and not `all`, the fleet topic)"),
            );
        }
    }
    if !(5..=65_535).contains(&m.keep_alive_s) {
        problem("mqtt.keep_alive_s", format!("{} is out of range; use 5 to 65535", m.keep_alive_s));
    }
    if m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms {
        problem(
            "mqtt.reconnect_min_ms",
            format!(
                "{} must be at least 1 and at most reconnect_max_ms ({})",
                m.reconnect_min_ms, m.reconnect_max_ms
            ),
        );
    }
    if !(1024..=256 * 1024 * 1024).contains(&m.max_packet_bytes) {
        problem(
            "mqtt.max_packet_bytes",
            format!("{} is out of range; use 1024 to 268435456", m.max_packet_bytes),
        );
    }
    if !(256..=m.max_packet_bytes.max(256)).contains(&m.max_command_bytes) {
        problem("mqtt.max_command_bytes", "use 256 up to max_packet_bytes".into());
    }
    if !(1..=10_000).contains(&m.inflight) {
        problem("mqtt.inflight", format!("{} is out of range; use 1 to 10000", m.inflight));
    }
    if m.receive_maximum == 0 {
        problem("mqtt.receive_maximum", "0 is not allowed by MQTT 5; use 1 to 65535".into());
    }
    client_id
}

/// The password, given or read from `password_file` (not both); it needs a username.
fn read_password(
    m: &MqttSection,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) -> Option<String> {
    let password = match (&m.password, &m.password_file) {
        (Some(_), Some(_)) => {
            problem("mqtt.password", "set password or password_file, not both".into());
            None
        }
        (Some(p), None) => Some(p.clone()),
        (None, Some(f)) => match std::fs::read_to_string(resolve(f)) {
            Ok(p) => Some(p.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => {
                problem("mqtt.password_file", format!("cannot read {}: {e}", resolve(f).display()));
                None
            }
        },
        (None, None) => None,
    };
    if password.is_some() && m.username.is_none() {
        problem("mqtt.username", "a password needs a username".into());
    }
    password
}

/// `[mqtt.tls]` with its paths resolved: each file readable, and a client certificate
/// only with its key.
fn check_tls(
    t: &TlsSection,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) -> TlsSection {
    let t = TlsSection {
        ca_file: resolve(&t.ca_file),
        cert_file: t.cert_file.as_deref().map(resolve),
        key_file: t.key_file.as_deref().map(resolve),
    };
    for (key, path) in [
        ("mqtt.tls.ca_file", Some(&t.ca_file)),
        ("mqtt.tls.cert_file", t.cert_file.as_ref()),
        ("mqtt.tls.key_file", t.key_file.as_ref()),
    ] {
        if let Some(p) = path
            && !p.is_file()
        {
            problem(key, format!("{} is not a readable file", p.display()));
        }
    }
    if t.cert_file.is_some() != t.key_file.is_some() {
        problem("mqtt.tls.cert_file", "a client certificate needs its key: set both or neither".into());
    }
    t
}

/// Checks each `[[mqtt.sensor]]`: a topic filter outside the agent's prefix, a configured
/// model, a stream level the filter has, QoS 0 or 1.
fn check_sensors(m: &MqttSection, models: &[&str], problem: &mut dyn FnMut(&str, String)) {
    for (i, s) in m.sensors.iter().enumerate() {
        let key = format!("mqtt.sensor.{i}");
        if let Err(why) = check_filter(&s.topic) {
            problem(&format!("{key}.topic"), format!("`{}` is not a topic filter: {why}", s.topic));
        }
        if s.topic.starts_with(&format!("{}/", m.prefix)) {
            problem(
                &format!("{key}.topic"),
                format!(
                    "`{}` is under the agent's own prefix `{}`; use another first level",
                    s.topic, m.prefix
                ),
            );
        }
        if !models.contains(&s.model.as_str()) {
            problem(
                &format!("{key}.model"),
                format!("no model named `{}` is configured; add a [[model]] or fix the name", s.model),
            );
        }
        if let Some(level) = s.stream_level {
            let levels: Vec<&str> = s.topic.split('/').collect();
            if level >= levels.len() && levels.last() != Some(&"#") {
                problem(
                    &format!("{key}.stream_level"),
                    format!(
                        "`{}` has {} levels (0 to {}); no level {level}",
                        s.topic,
                        levels.len(),
                        levels.len() - 1
                    ),
                );
            }
        }
        if s.qos > 1 {
            problem(&format!("{key}.qos"), format!("{} is not supported; use 0 or 1", s.qos));
        }
    }
}

/// Checks a topic filter as MQTT defines it: `#` only last and alone in its level, `+`
/// alone in its level, no empty filter, no NUL.
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("empty");
    }
    if filter.contains('\0') {
        return Err("contains NUL");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return Err("`#` must be a whole level and the last one");
        }
        if l.contains('+') && *l != "+" {
            return Err("`+` must be a whole level");
        }
    }
    Ok(())
}

/// Checks `[telemetry]` and `[spool]`.
pub(super) fn validate_rest(t: &TelemetrySection, s: &SpoolSection, problem: &mut dyn FnMut(&str, String)) {
    if t.interval_s > 86_400 {
        problem("telemetry.interval_s", format!("{} is out of range; use 0 (off) to 86400", t.interval_s));
    }
    if t.qos > 1 {
        problem("telemetry.qos", format!("{} is not supported; use 0 or 1", t.qos));
    }
    if s.segment_bytes < 4096 || s.segment_bytes > s.max_bytes {
        problem(
            "spool.segment_bytes",
            format!(
                "{} must be at least 4096 and at most spool.max_bytes ({})",
                s.segment_bytes, s.max_bytes
            ),
        );
    }
    if s.max_bytes < 64 * 1024 {
        problem("spool.max_bytes", format!("{} is too small; use at least 65536", s.max_bytes));
    }
    if s.fsync == FsyncMode::Interval && !(10..=600_000).contains(&s.fsync_interval_ms) {
        problem(
            "spool.fsync_interval_ms",
            format!("{} is out of range; use 10 to 600000", s.fsync_interval_ms),
        );
    }
}
