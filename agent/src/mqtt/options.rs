//! Connection options for rumqttc from the validated config: identity, credentials, TLS
//! (rustls on ring), the last will, flow control.

use std::sync::Arc;

use super::client::{Client, EventLoop};
use crate::config::mqtt::TlsSection;
use crate::config::{MqttConfig, MqttVersion};
use crate::tls::{self, TlsError};
use rumqttc::v5;

/// Room in the request queue: the outbox's in-flight window, subscriptions, and the
/// acknowledgements of received messages, of which a 3.1.1 broker may send thousands in
/// one read of the socket. A refused acknowledgement would only come back after a
/// reconnect, so this is generous; the queue allocates as it fills.
const REQUEST_QUEUE: usize = 65_536;

/// The request queue's capacity. `EDGE_TEST_MQTT_REQUEST_QUEUE` overrides it, for tests
/// only: a small queue makes refusals happen under a flood a test can afford. (Not
/// `EDGE_AGENT_...`: those variables override configuration keys.)
fn request_queue() -> usize {
    std::env::var("EDGE_TEST_MQTT_REQUEST_QUEUE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(REQUEST_QUEUE)
}

/// Builds a rustls client configuration: the given CAs only (a device trusts its fleet's
/// broker, not the web), and a client certificate when configured.
pub fn tls_config(t: &TlsSection) -> Result<rustls::ClientConfig, TlsError> {
    let roots = tls::ca_roots(std::slice::from_ref(&t.ca_file), "ca_file")?;
    let identity = match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            Some(tls::ClientIdentity { cert, cert_what: "cert_file", key, key_what: "key_file" })
        }
        _ => None,
    };
    tls::client_config(roots, identity)
}

/// The last will: the broker publishes it (retained) when the agent vanishes.
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The TLS configuration of the broker connection, when `[mqtt.tls]` is set.
pub fn tls(c: &MqttConfig) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    Ok(c.tls.as_ref().map(tls_config).transpose()?.map(Arc::new))
}

/// Creates the client and its event loop (not yet connected). The client speaks plain
/// MQTT to the Unix socket `wire`, the relay that makes the broker connection (TCP and
/// TLS) and counts its bytes (usage::relay).
pub fn build(c: &MqttConfig, will: Will, wire: &std::path::Path) -> Result<(Client, EventLoop), TlsError> {
    let wire = wire.to_string_lossy().into_owned();
    Ok(match c.version {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(&c.client_id, wire.as_str(), c.port);
            o.set_keep_alive(c.keep_alive)
                .set_clean_session(c.clean_session)
                .set_manual_acks(true)
                // Twice the outbox's window, so that rumqttc's window never fills and
                // acknowledgements never queue behind our publishes (see outbox::window_for).
                .set_inflight(c.inflight.saturating_mul(2))
                .set_max_packet_size(c.max_packet_bytes, c.max_packet_bytes)
                .set_request_channel_capacity(request_queue())
                .set_last_will(rumqttc::LastWill::new(
                    will.topic,
                    will.payload,
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            if let Some(u) = &c.username {
                o.set_credentials(u, c.password.clone().unwrap_or_default());
            }
            o.set_transport(rumqttc::Transport::Unix);
            let (client, lp) = rumqttc::AsyncClient::new(o, request_queue());
            (Client::V4(client), EventLoop::V4(Box::new(lp)))
        }
        MqttVersion::V5 => {
            let mut o = v5::MqttOptions::new(&c.client_id, wire.as_str(), c.port);
            o.set_keep_alive(c.keep_alive)
                .set_clean_start(c.clean_session)
                .set_manual_acks(true)
                .set_outgoing_inflight_upper_limit(c.inflight.saturating_mul(2))
                .set_max_packet_size(Some(c.max_packet_bytes as u32))
                .set_receive_maximum(Some(c.receive_maximum))
                .set_request_channel_capacity(request_queue())
                .set_last_will(v5::mqttbytes::v5::LastWill::new(
                    will.topic,
                    will.payload,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            // A persistent session must outlive the connection (MQTT 5 ends it at
            // disconnect unless told otherwise): keep it a week.
            if !c.clean_session {
                o.set_session_expiry_interval(Some(7 * 24 * 3600));
            }
            if let Some(u) = &c.username {
                o.set_credentials(u, c.password.clone().unwrap_or_default());
            }
            o.set_transport(rumqttc::Transport::Unix);
            let (client, lp) = v5::AsyncClient::new(o, request_queue());
            (Client::V5(client), EventLoop::V5(Box::new(lp)))
        }
    })
}
