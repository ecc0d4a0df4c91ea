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
    /// TLS: PEM file of the certificate authorities that may sign the broker's
    /// certificate (only these are trusted; usually with --port 8883). Overrides
    /// `[mqtt.tls]` of --config.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// TLS: a client certificate (PEM), for brokers that require one.
    #[arg(long, value_name = "FILE", requires_all = ["ca_file", "key_file"])]
    pub cert_file: Option<PathBuf>,
    /// TLS: the client certificate's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
}

/// The broker settings from the config file and the flags, resolved.
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    username: Option<String>,
    password: Option<String>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Settings {
    /// `host:port`, for messages.
    pub fn broker(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Client options with these settings (credentials, TLS, packet limits); the caller
    /// sets the session and keep-alive it needs.
    pub fn options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(client_id, self.host.as_str(), self.port);
        o.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(u) = &self.username {
            o.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }
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
    /// The settings from the config file (if any), the flags over it, and defaults.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
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
            None => mqtt
                .as_ref()
                .and_then(|m| m.password.clone())
                .or_else(|| std::env::var("EDGE_FLEET_MQTT_PASSWORD").ok()),
        };
        let section = match &self.ca_file {
            Some(ca_file) => Some(crate::config::mqtt::TlsSection {
                ca_file: ca_file.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
            }),
            None => mqtt.as_ref().and_then(|m| m.tls.clone()),
        };
        let tls = match section {
            // The agent's own TLS setup (rustls on ring, these CAs only).
            Some(section) => Some(std::sync::Arc::new(
                crate::mqtt::options::tls_config(&section).context("setting up TLS to the broker")?,
            )),
            None => None,
        };
        Ok(Settings { host, port, prefix, username, password, tls })
    }

    /// Builds the client from the config file and flags. The client id is unique per run
    /// and the session clean: an operator's view keeps nothing at the broker.
    pub fn connect(&self, role: &str) -> anyhow::Result<Connection> {
        let settings = self.resolve()?;
        let client_id =
            format!("edge-agent-fleet-{role}-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let mut o = settings.options(&client_id);
        o.set_clean_session(true).set_request_channel_capacity(64);
        // The request channel carries only our subscriptions and the probe; what the
        // broker sends comes straight out of the polled event loop.
        let (client, eventloop) = rumqttc::AsyncClient::new(o, 64);
        Ok(Connection {
            client,
            eventloop,
            prefix: settings.prefix.clone(),
            client_id,
            broker: settings.broker(),
        })
    }
}
