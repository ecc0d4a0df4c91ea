//! The operator's connection to the fleet's broker. Its settings are the agent's own
//! `[mqtt]` section (host, port, credentials, TLS, prefix), read from an agent config
//! file with the agent's validation and `EDGE_AGENT_MQTT_*` overrides, and each can be
//! given or overridden by a flag, so an operator without a device config needs only
//! `--host`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::config::{Config, MqttVersion, Overrides};

/// Largest packet accepted from the broker. A larger one ends the connection (the
/// client cannot skip it), so this is generous: a status is ~100 bytes, telemetry ~2 KB.
const MAX_PACKET: usize = 8 << 20;

/// Where the broker is and how to log in.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// An agent configuration file whose `[mqtt]` section says how to reach the broker
    /// (host, port, username, password, TLS, prefix). Flags below override it.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The broker's host (default: from --config, else localhost).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// The broker's port (default: from --config, else 1883).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// The user name to log in with.
    #[arg(long, value_name = "NAME")]
    pub username: Option<String>,
    /// A file holding the password (its first line).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The devices' topic prefix (default: from --config, else edge).
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
}

/// A connection set up, not yet connected (the event loop connects when polled).
pub struct Connection {
    pub client: rumqttc::AsyncClient,
    pub eventloop: rumqttc::EventLoop,
    pub prefix: String,
    pub client_id: String,
    /// `host:port`, for messages.
    pub broker: String,
}

impl BrokerArgs {
    /// Builds the client from the config file and flags. The client id is unique per run
    /// and the session clean: an operator's view keeps nothing at the broker.
    pub fn connect(&self, role: &str) -> anyhow::Result<Connection> {
        let mqtt = match &self.config {
            Some(path) => {
                let config = Config::load(path, &Overrides::default())
                    .with_context(|| format!("reading the broker settings from {}", path.display()))?;
                Some(config.mqtt.with_context(|| {
                    format!("{} has no [mqtt] section; add one or pass --host", path.display())
                })?)
            }
            None => None,
        };
        if mqtt.as_ref().is_some_and(|m| m.version == MqttVersion::V5) {
            tracing::debug!("the operator connection speaks MQTT 3.1.1 whatever the agent's version");
        }
        let host = self
            .host
            .clone()
            .or_else(|| mqtt.as_ref().map(|m| m.host.clone()))
            .unwrap_or_else(|| "localhost".into());
        let port = self.port.or_else(|| mqtt.as_ref().map(|m| m.port)).unwrap_or(1883);
        let prefix = self
            .prefix
            .clone()
            .or_else(|| mqtt.as_ref().map(|m| m.prefix.clone()))
            .unwrap_or_else(|| "edge".into());
        if prefix.is_empty() || prefix.contains(['+', '#']) {
            return Err(super::super::UsageError(format!(
                "--prefix `{prefix}` cannot be a topic prefix: it must be non-empty, without + or #"
            ))
            .into());
        }
        let username = self.username.clone().or_else(|| mqtt.as_ref().and_then(|m| m.username.clone()));
        let password = match &self.password_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading the password from {}", file.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            None => mqtt.as_ref().and_then(|m| m.password.clone()),
        };
        let client_id =
            format!("edge-agent-fleet-{role}-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let mut o = rumqttc::MqttOptions::new(&client_id, host.as_str(), port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(64);
        if let Some(u) = username {
            o.set_credentials(u, password.unwrap_or_default());
        }
        if let Some(tls) = mqtt.as_ref().and_then(|m| m.tls.as_ref()) {
            let config = crate::mqtt::options::tls_config(tls).context("setting up TLS from [mqtt.tls]")?;
            o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                std::sync::Arc::new(config),
            )));
        }
        // The request channel carries only our subscriptions and the probe; what the
        // broker sends comes straight out of the polled event loop.
        let (client, eventloop) = rumqttc::AsyncClient::new(o, 64);
        Ok(Connection { client, eventloop, prefix, client_id, broker: format!("{host}:{port}") })
    }
}
