//! The agent on a real Mosquitto, as the MQTT end-to-end tests set it up: a broker with
//! the agent's users and ACL, the flat demo model, a config for device `dev1`,
//! subscriptions made before the agent starts (so they miss nothing), and the agent seen
//! online.
//!
//! ```ignore
//! let Running { dir: _dir, broker, subs: [results], agent, .. } =
//!     MqttSetup::new().extra("[telemetry]\ninterval_s = 1\n").start(["edge/dev1/results/#"]);
//! ```
//!
//! Destructuring [`Running`] drops the fields left to `..` at the end of the statement:
//! bind `dir` (it holds the config and the state) and `broker` for as long as the agent
//! runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::broker::{Broker, BrokerOptions, Subscription};
use super::{Guard, bin, copy_model, demo_model, secs, signal, spawn_logged, tempdir, wait_timeout};

/// The agent's ACL: its own topics, the sensor topics, the fleet's command topics.
pub const AGENT_ACL: &str = "user agent\ntopic readwrite edge/dev1/#\ntopic read edge/all/#\ntopic read edge/group/#\ntopic read sensors/#\ntopic write replies/#\n\nuser test\ntopic readwrite sensors/#\ntopic read edge/#\ntopic read replies/#\ntopic write edge/dev1/cmd/#\ntopic write edge/all/cmd/#\ntopic write edge/group/#\n\nuser outsider\ntopic read edge/#\n";

/// A broker with the users `agent`, `test` and `outsider` under [`AGENT_ACL`].
pub fn broker_opts() -> BrokerOptions {
    BrokerOptions {
        users: vec![
            ("agent".into(), "agent-pass".into()),
            ("test".into(), "test-pass".into()),
            ("outsider".into(), "outsider-pass".into()),
        ],
        acl: Some(AGENT_ACL.into()),
        ..BrokerOptions::default()
    }
}

/// The demo classifier without windows: each 256-sample message is one request, so every
/// sensor message has exactly one result.
pub fn flat_model(dir: &Path) -> PathBuf {
    let dest = dir.join("flat");
    copy_model(&demo_model(), &dest);
    let spec = std::fs::read_to_string(dest.join("model.toml")).unwrap();
    let spec = spec
        .replacen("name = \"vibration\"", "name = \"flat\"", 1)
        .replace("[pre.window]\nsize = 256\nhop = 128\n", "");
    assert!(!spec.contains("[pre.window]"), "the demo spec changed; update this test");
    std::fs::write(dest.join("model.toml"), spec).unwrap();
    dest
}

/// Writes `dir/agent.toml` for device `dev1` against a broker on `port`, serving `model`
/// for the sensors `sensors/+/accel`; `mqtt_extra` goes into `[mqtt]`, `extra` after.
pub fn write_config(dir: &Path, port: u16, model: &Path, mqtt_extra: &str, extra: &str) -> PathBuf {
    let config = dir.join("agent.toml");
    let text = format!(
        "[agent]\ndevice_id = \"dev1\"\nstate_dir = \"{state}\"\n\n[output]\nstdout = false\n\n[[model]]\npath = \"{model}\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"agent\"\npassword = \"agent-pass\"\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 1000\ngroups = [\"line-1\"]\nmax_command_bytes = 2048\n{mqtt_extra}\n\n\
         [[mqtt.sensor]]\ntopic = \"sensors/+/accel\"\nmodel = \"flat\"\nstream_level = 1\n\n{extra}\n",
        state = dir.join("state").display(),
        model = model.display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// A whole config for [`MqttSetup::config`] serving one audio model: device `dev1`, the
/// local API on 127.0.0.1:`api_port` (and its socket), the model at `model` (named
/// `name`) fed by the sensors `sensors/+/mic`, one stream per sensor, over the broker as
/// `agent`. `tables` go before `[[model]]` (an `[engine]` table, say).
pub fn mic_config(
    model: &Path,
    name: &str,
    api_port: u16,
    tables: &str,
) -> impl FnOnce(&Path, u16) -> String + 'static {
    let (model, name, tables) = (model.to_path_buf(), name.to_string(), tables.to_string());
    move |dir: &Path, port: u16| {
        format!(
            "[agent]\ndevice_id = \"dev1\"\nstate_dir = \"{state}\"\n[output]\nstdout = false\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\nsocket = \"{socket}\"\n\
             {tables}\
             [[model]]\npath = \"{model}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"agent\"\npassword = \"agent-pass\"\n\
             [[mqtt.sensor]]\ntopic = \"sensors/+/mic\"\nmodel = \"{name}\"\nstream_level = 1\n",
            state = dir.join("state").display(),
            socket = dir.join("api.sock").display(),
            model = model.display(),
        )
    }
}

/// A running agent whose config and state outlive it (for kill and restart).
pub struct Agent {
    child: Guard,
    log: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts `edge-agent run` on `config`.
    pub fn start(config: &Path) -> Agent {
        Agent::start_with_env(config, &[])
    }

    /// Starts `edge-agent run` on `config` with more environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Agent {
        let mut command = Command::new(bin());
        command
            .args(["run", "--config", config.to_str().unwrap(), "--log-format", "json", "--quiet"])
            .envs(env.iter().copied());
        let (child, log) = spawn_logged(&mut command, "agent");
        Agent { child, log }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the agent has logged `what`; panics with the log after `limit`.
    pub fn wait_log(&self, what: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log().contains(what) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the agent did not log `{what}` within {limit:?}:\n{}", self.log());
    }

    /// SIGKILL, as a crash.
    pub fn kill(mut self) {
        signal(&self.child.0, "KILL");
        let _ = wait_timeout(&mut self.child.0, secs(10));
    }

    /// SIGTERM; asserts a clean exit and returns the log.
    pub fn stop(mut self) -> String {
        signal(&self.child.0, "TERM");
        let status = wait_timeout(&mut self.child.0, secs(30)).expect("agent stops after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
        assert!(status.success(), "agent exit {status:?}:\n{}", self.log());
        self.log()
    }
}

/// Writes a config's text from the test's directory and the broker's port.
type ConfigText = Box<dyn FnOnce(&Path, u16) -> String>;

/// What to set up: the broker's options, the config's additions, the agent's environment.
pub struct MqttSetup {
    dir: TempDir,
    model: PathBuf,
    broker: BrokerOptions,
    tls: bool,
    mqtt_extra: String,
    extra: String,
    config: Option<ConfigText>,
    env: Vec<(String, String)>,
}

impl Default for MqttSetup {
    fn default() -> Self {
        MqttSetup::new()
    }
}

impl MqttSetup {
    /// A fresh directory holding the flat model; the broker of [`broker_opts`].
    pub fn new() -> MqttSetup {
        let dir = tempdir();
        let model = flat_model(dir.path());
        MqttSetup {
            dir,
            model,
            broker: broker_opts(),
            tls: false,
            mqtt_extra: String::new(),
            extra: String::new(),
            config: None,
            env: Vec::new(),
        }
    }

    /// The test's directory, for files the config names.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The flat model's directory.
    pub fn model(&self) -> &Path {
        &self.model
    }

    /// Other broker options (start from [`broker_opts`] to keep the users and ACL).
    pub fn broker(mut self, opts: BrokerOptions) -> MqttSetup {
        self.broker = opts;
        self
    }

    /// TLS with a client certificate: the broker's, and `[mqtt.tls]` naming its files.
    pub fn tls(mut self) -> MqttSetup {
        self.broker.tls = true;
        self.tls = true;
        self
    }

    /// Lines for `[mqtt]`.
    pub fn mqtt(mut self, lines: &str) -> MqttSetup {
        self.mqtt_extra = lines.to_string();
        self
    }

    /// Tables after the sensor's.
    pub fn extra(mut self, tables: &str) -> MqttSetup {
        self.extra = tables.to_string();
        self
    }

    /// A whole config of the test's own instead of [`write_config`]'s, from the test's
    /// directory and the broker's port.
    pub fn config(mut self, text: impl FnOnce(&Path, u16) -> String + 'static) -> MqttSetup {
        self.config = Some(Box::new(text));
        self
    }

    /// An environment variable for the agent.
    pub fn env(mut self, key: &str, value: &str) -> MqttSetup {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the broker and writes the config; the agent is not started yet.
    pub fn prepare(self) -> Prepared {
        let broker = Broker::start(self.broker);
        let config = match self.config {
            Some(text) => {
                let config = self.dir.path().join("agent.toml");
                std::fs::write(&config, text(self.dir.path(), broker.port)).unwrap();
                config
            }
            None => {
                let mut mqtt_extra = self.mqtt_extra;
                if self.tls {
                    // [mqtt.tls] must come after the [mqtt] keys and before [[mqtt.sensor]].
                    mqtt_extra.push_str(&format!(
                        "\n[mqtt.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                        broker.ca_file().display(),
                        broker.client_cert().display(),
                        broker.client_key().display()
                    ));
                }
                write_config(self.dir.path(), broker.port, &self.model, &mqtt_extra, &self.extra)
            }
        };
        Prepared { dir: self.dir, broker, config, env: self.env }
    }

    /// [`MqttSetup::prepare`], then [`Prepared::start`].
    pub fn start<const N: usize>(self, filters: [&str; N]) -> Running<N> {
        self.prepare().start(filters)
    }
}

/// The broker up and the config written.
pub struct Prepared {
    pub dir: TempDir,
    pub broker: Broker,
    pub config: PathBuf,
    env: Vec<(String, String)>,
}

impl Prepared {
    /// Subscribes as `test` to `edge/dev1/status` and to each of `filters`, starts the
    /// agent and waits (30 s at most) for its online status.
    pub fn start<const N: usize>(self, filters: [&str; N]) -> Running<N> {
        let status = self.broker.subscribe("test", "edge/dev1/status");
        let subs = filters.map(|f| self.broker.subscribe("test", f));
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let agent = Agent::start_with_env(&self.config, &env);
        let (_, p) = status
            .wait_for("online status", secs(30), |t, p| t == "edge/dev1/status" && p.contains("\"online\""));
        let online = serde_json::from_str(&p).unwrap_or_else(|e| panic!("not JSON ({e}): {p}"));
        Running { dir: self.dir, broker: self.broker, config: self.config, status, subs, agent, online }
    }
}

/// The agent online.
pub struct Running<const N: usize> {
    pub dir: TempDir,
    pub broker: Broker,
    pub config: PathBuf,
    /// The subscription to `edge/dev1/status`.
    pub status: Subscription,
    /// The subscriptions to the filters given to `start`, in their order.
    pub subs: [Subscription; N],
    pub agent: Agent,
    /// The online status document.
    pub online: Value,
}
