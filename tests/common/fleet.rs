//! A fleet for tests: N agent processes on one broker, following one registry, each with
//! its own state directory, device id and API socket; and the helpers to see what they
//! run and to wait until they agree with an expectation.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// A config body: the demo model as version 1 (configured), a simulated sensor feeding
/// it, MQTT when `broker` is given, and `ota` (an `[ota]` section).
pub fn body(model_dir: &Path, broker: Option<u16>, ota: &str) -> String {
    let mqtt = broker
        .map(|port| {
            format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"agent\"\npassword = \"agent-pass\"\n")
        })
        .unwrap_or_default();
    format!(
        "[[model]]\npath = \"{}\"\n\n[[source]]\nkind = \"simulated\"\nmodel = \"vibration\"\nspeed = 5\n\n[output]\nstdout = false\n\n{mqtt}\n{ota}",
        model_dir.display()
    )
}

/// The `[ota]` section of a fleet: checks every 2 s, and a probation that judges errors
/// only (the agents share two cores with the rest of the suite: their latency says
/// nothing about the model), after `requests` requests.
pub fn fleet_ota(url: &str, root: &Path, requests: u32) -> String {
    let ota = super::registry::ota_section(url, root, "").replace("interval_s = 3600", "interval_s = 2");
    format!(
        "{ota}[ota.probation]\nrequests = {requests}\nmin_requests = {requests}\nlatency_floor_ms = 10000\n"
    )
}

/// One agent of a [`Fleet`].
pub struct Member {
    pub id: String,
    pub socket: PathBuf,
    pub dir: PathBuf,
    pub child: Option<Guard>,
}

/// N agents on one broker.
pub struct Fleet {
    pub members: Vec<Member>,
}

/// Device ids `dev-00`, `dev-01`, ...
pub fn device_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dev-{i:02}")).collect()
}

impl Fleet {
    /// Starts one agent per id in `work/{id}`, on the broker at `port`, with `ota` as
    /// their `[ota]` section; the API is on a unix socket only (fifty TCP ports picked in
    /// advance could collide with the fleet's own outgoing connections).
    pub fn start(work: &Path, ids: &[String], port: u16, ota: &str) -> Fleet {
        let mut members = Vec::new();
        for id in ids {
            let dir = work.join(id);
            std::fs::create_dir_all(&dir).unwrap();
            let socket = dir.join("api.sock");
            let config = dir.join("agent.toml");
            let text = format!(
                "[agent]\ndevice_id = \"{id}\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"\"\nsocket = \"{}\"\n\n[engine]\nspin_us = 0\n\n{}",
                dir.join("state").display(),
                socket.display(),
                body(&demo_model(), Some(port), ota).replace("speed = 5", "speed = 1")
            );
            std::fs::write(&config, text).unwrap();
            let mut m = Member { id: id.clone(), socket, dir, child: None };
            m.spawn();
            members.push(m);
        }
        Fleet { members }
    }

    /// The device ids.
    pub fn ids(&self) -> Vec<String> {
        self.members.iter().map(|m| m.id.clone()).collect()
    }

    /// Each device's `/status` (Null when it does not answer).
    pub fn statuses(&self) -> Vec<(String, Value)> {
        self.members
            .iter()
            .map(|m| {
                let s = edge_agent::cli::status::get(&m.socket, "/status")
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .unwrap_or(Value::Null);
                (m.id.clone(), s)
            })
            .collect()
    }

    /// The version of vibration each device serves ("" when it does not answer).
    pub fn versions(&self) -> Vec<(String, String)> {
        self.statuses()
            .into_iter()
            .map(|(id, s)| (id, s["models"]["vibration"]["version"].as_str().unwrap_or("").to_string()))
            .collect()
    }

    /// Waits until `pred` holds on every device's `/status`; panics after `limit` with
    /// the log tail of each device it does not hold for.
    pub fn wait_until(&self, what: &str, limit: Duration, pred: impl Fn(&str, &Value) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let now = self.statuses();
            let lagging: Vec<&(String, Value)> = now.iter().filter(|(id, s)| !pred(id, s)).collect();
            if lagging.is_empty() {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                for (id, s) in &lagging {
                    eprintln!(
                        "--- {id} on {}:\n{}",
                        s["models"]["vibration"]["version"],
                        self.log_tail(id, 15)
                    );
                }
                let ids: Vec<&String> = lagging.iter().map(|(id, _)| id).collect();
                panic!("{what}: not within {limit:?} on {ids:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last `n` lines of a device's log about updates, warnings and errors.
    pub fn log_tail(&self, id: &str, n: usize) -> String {
        let log = std::fs::read_to_string(self.member(id).dir.join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ota") || l.contains("WARN") || l.contains("ERROR") || !l.starts_with('{'))
            .rev()
            .take(n)
            .collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn member(&self, id: &str) -> &Member {
        self.members.iter().find(|m| m.id == id).unwrap_or_else(|| panic!("no device {id}"))
    }

    /// Kills one device's agent (SIGKILL).
    pub fn kill(&mut self, id: &str) {
        let m = self.members.iter_mut().find(|m| m.id == id).unwrap();
        drop(m.child.take());
    }
}

impl Member {
    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).unwrap();
        let config = self.dir.join("agent.toml");
        self.child = Some(Guard(
            std::process::Command::new(bin())
                .args(["run", "--config", config.to_str().unwrap(), "--log-format", "json"])
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
    }
}

/// Those of `versions` on version `v`.
pub fn on(versions: &[(String, String)], v: &str) -> Vec<String> {
    versions.iter().filter(|(_, x)| x == v).map(|(id, _)| id.clone()).collect()
}

/// The cohort of vibration at `percent` with `salt` among `devices`.
pub fn cohort(devices: &[String], percent: u32, salt: &str) -> Vec<String> {
    let r = edge_agent::ota::rollout::Rollout { percent, salt: salt.to_string(), mode: Default::default() };
    devices.iter().filter(|d| edge_agent::ota::rollout::in_cohort(d, "vibration", &r)).cloned().collect()
}

/// A salt whose cohort at `percent` among `devices` has between `lo` and `hi` devices,
/// so the test sees a real cohort; the count is checked against the hash either way.
pub fn salt_for(devices: &[String], percent: u32, lo: usize, hi: usize) -> (String, Vec<String>) {
    for i in 0..1000 {
        let salt = format!("fleet-{i}");
        let c = cohort(devices, percent, &salt);
        if (lo..=hi).contains(&c.len()) {
            return (salt, c);
        }
    }
    panic!("no salt gives a cohort of {lo} to {hi}");
}

/// A fleet with everything around it: a registry (nothing published: the agents serve
/// their configured version 1), a broker, the agents, a subscription to their events,
/// and a state directory for `edge-agent fleet rollout`.
pub struct FleetRig {
    pub publisher: super::registry::Publisher,
    pub reg: super::registry::Served,
    pub broker: super::broker::Broker,
    pub events: super::broker::Subscription,
    pub fleet: Fleet,
    pub state_dir: PathBuf,
    pub work: tempfile::TempDir,
}

impl FleetRig {
    /// `n` agents whose probation judges after `requests` requests.
    pub fn start(n: usize, requests: u32) -> FleetRig {
        let publisher = super::registry::Publisher::new(1);
        let work = tempdir();
        let reg = super::registry::Served::start(&publisher.repo());
        let broker = super::broker::Broker::start(super::broker::BrokerOptions::default());
        let events = broker.subscribe("test", "edge/+/events");
        let ota = fleet_ota(&reg.url, &publisher.root_v1(), requests);
        let fleet = Fleet::start(work.path(), &device_ids(n), broker.port, &ota);
        let state_dir = work.path().join("rollouts");
        FleetRig { publisher, reg, broker, events, fleet, state_dir, work }
    }

    /// Publishes vibration `version` at 0% with `salt`; `bad`: its spec lost the window,
    /// so it passes its self-test but every request fails (probation rolls it back).
    pub fn publish(&self, version: &str, salt: &str, bad: bool) {
        let dir = super::registry::model_version(self.work.path(), version, |dir| {
            if bad {
                let spec = std::fs::read_to_string(dir.join("model.toml")).unwrap();
                std::fs::write(
                    dir.join("model.toml"),
                    spec.replace("[pre.window]\nsize = 256\nhop = 128\n", ""),
                )
                .unwrap();
            }
        });
        self.publisher.publish(&dir, 0, &["--salt", salt]);
    }

    /// `edge-agent fleet rollout ARGS` as the operator `test`, on this rig's broker,
    /// registry and state directory.
    pub fn rollout_command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(bin());
        c.args(["fleet", "rollout"]).args(args);
        if !args.iter().any(|a| ["status", "pause", "resume", "abort"].contains(a)) {
            let port = self.broker.port.to_string();
            c.args(["--port", &port, "--username", "test"]);
            if !args.contains(&"--resume") {
                let (repo, keys) = (self.publisher.repo(), self.publisher.keys());
                c.args(["--repo", repo.to_str().unwrap(), "--keys", keys.to_str().unwrap()]);
            }
        }
        c.args(["--state-dir", self.state_dir.to_str().unwrap()])
            .env("EDGE_FLEET_MQTT_PASSWORD", "test-pass");
        c
    }

    /// Runs a rollout to its end (within `limit`): its exit status and `--json` outcome.
    /// Its standard error, a pipe here, must stay quiet: progress is for terminals.
    pub fn rollout(&self, args: &[&str], limit: Duration) -> (std::process::ExitStatus, Value) {
        let out = run_with(&mut self.rollout_command(args), None, limit);
        let record = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("fleet rollout {args:?}: no JSON outcome ({e}):\n{}", stderr(&out)));
        assert_eq!(stderr(&out), "", "fleet rollout {args:?} wrote to a pipe");
        (out.status, record)
    }

    /// The rollout state file of vibration (Null before there is one).
    pub fn state(&self) -> Value {
        std::fs::read(self.state_dir.join("vibration.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until `pred` holds on the state file.
    pub fn wait_state(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let s = self.state();
            if pred(&s) {
                return s;
            }
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}; state: {s:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The registry's targets metadata version: one more for each signing.
    pub fn targets_version(&self) -> u64 {
        edge_tuf::repo::Repository::open(&self.publisher.repo()).unwrap().versions().targets
    }

    /// Whether the signed targets list vibration `version`.
    pub fn listed(&self, version: &str) -> bool {
        let name = format!("stable/vibration/{version}.tar");
        edge_tuf::repo::Repository::open(&self.publisher.repo())
            .unwrap()
            .targets_list()
            .iter()
            .any(|(n, _)| n == &name)
    }

    /// Devices that started to download vibration `version` (their `update-downloading`
    /// events so far).
    pub fn downloaders(&self, version: &str) -> Vec<String> {
        let mut who: Vec<String> = self
            .events
            .messages()
            .iter()
            .filter_map(|(t, p)| {
                let e: Value = serde_json::from_str(p).ok()?;
                (e["kind"] == "update-downloading" && e["detail"]["version"] == version)
                    .then(|| t.split('/').nth(1).unwrap_or("").to_string())
            })
            .collect();
        who.sort();
        who.dedup();
        who
    }
}
