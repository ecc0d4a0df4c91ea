//! A real Mosquitto broker for the MQTT end-to-end tests, with the command-line clients
//! (`mosquitto_pub`, `mosquitto_sub`) playing the fleet's side.
//!
//! Each broker gets its own temporary directory (config, password file, ACL, certificates,
//! persistence database, log) and a free loopback port, so tests run in parallel. Every wait
//! is bounded and every failure panics with the broker log and the client's stderr, so a
//! broken test fails with a diagnosis instead of hanging.
//!
//! Needs Mosquitto 2 (`mosquitto`, `mosquitto_pub`, `mosquitto_sub`, `mosquitto_passwd`) and,
//! for TLS, the `openssl` command.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{Guard, free_port, read_into, signal, tempdir, wait_timeout};

/// How long the broker may take to accept connections, or to exit after SIGTERM. Generous:
/// it takes milliseconds, but CI machines stall.
const BROKER_LIMIT: Duration = Duration::from_secs(15);
/// How long one `mosquitto_pub`, `mosquitto_passwd` or `openssl` run may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(15);
/// How long a subscriber may take to connect and have its subscription acknowledged.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(15);
/// Broker log lines quoted in a panic message: `log_type all` is verbose, and the end is
/// where the failure is.
const LOG_TAIL_LINES: usize = 200;
/// Polling interval of the waits.
const POLL: Duration = Duration::from_millis(10);

/// How to configure a [`Broker`].
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// Users and their passwords; `mosquitto_passwd` hashes them into the password file.
    pub users: Vec<(String, String)>,
    /// Text of a Mosquitto ACL file. None: no ACL, every authenticated client may read and
    /// write every topic.
    pub acl: Option<String>,
    /// A TLS-only listener that requires a client certificate signed by the fixture's CA
    /// (and still a password). See [`Broker::ca_file`].
    pub tls: bool,
    /// Sessions, subscriptions, retained and queued messages saved in the broker directory
    /// (autosaved every second and on SIGTERM), so they survive [`Broker::restart`].
    pub persistence: bool,
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// `max_inflight_messages`: QoS 1 and 2 messages the broker sends a client before it
    /// waits for acknowledgements. None: Mosquitto's default (20).
    pub max_inflight: Option<u16>,
    /// `message_size_limit`: larger publishes are dropped (their QoS flow still completes).
    /// None: no limit.
    pub message_size_limit: Option<u32>,
    /// `max_queued_messages`: QoS 1 and 2 messages queued per client beyond those in flight
    /// (for an offline persistent session: all it may miss); more are dropped. Some(0): no
    /// limit. None: Mosquitto's default (1000).
    pub max_queued_messages: Option<u32>,
}

impl Default for BrokerOptions {
    /// Users `agent`/`agent-pass` and `test`/`test-pass`, no ACL, plain TCP, persistence on,
    /// no anonymous clients, Mosquitto's defaults for the limits.
    fn default() -> Self {
        BrokerOptions {
            users: vec![("agent".into(), "agent-pass".into()), ("test".into(), "test-pass".into())],
            acl: None,
            tls: false,
            persistence: true,
            allow_anonymous: false,
            max_inflight: None,
            message_size_limit: None,
            max_queued_messages: None,
        }
    }
}

/// A running Mosquitto broker on `127.0.0.1:port`; killed on drop.
pub struct Broker {
    /// The loopback port the broker listens on; the same across [`Broker::restart`].
    pub port: u16,
    /// The broker's directory: `mosquitto.conf`, `passwd`, `acl`, the TLS files,
    /// `mosquitto.db` and `mosquitto.log`.
    pub dir: TempDir,
    opts: BrokerOptions,
    child: Option<Guard>,
}

/// Who a command-line client connects as. [`Broker::login`] gives a configured user's;
/// change fields to get a client the broker must refuse.
#[derive(Clone, Debug)]
pub struct Login {
    /// `-u`; None: no username (anonymous).
    pub user: Option<String>,
    /// `-P`; None: no password.
    pub password: Option<String>,
    /// Whether the client presents the fixture's client certificate (TLS brokers only; a
    /// TLS client always verifies the broker against the fixture's CA).
    pub client_cert: bool,
}

impl Broker {
    /// Writes the configuration into a fresh directory and starts Mosquitto on a free
    /// loopback port, returning once the port accepts connections. Panics with the broker
    /// log if it does not within 15 s.
    pub fn start(opts: BrokerOptions) -> Broker {
        let dir = tempdir();
        write_passwords(dir.path(), &opts.users);
        if let Some(acl) = &opts.acl {
            fs::write(dir.path().join("acl"), acl).expect("write the ACL file");
        }
        if opts.tls {
            make_certificates(dir.path());
        }
        let mut broker = Broker { port: 0, dir, opts, child: None };
        // free_port() releases its port before Mosquitto binds it, so another process can
        // take it in between: then try another port rather than fail the test.
        for attempt in 1.. {
            broker.port = free_port();
            broker.write_config();
            match broker.spawn() {
                Ok(()) => break,
                Err(e) if attempt < 3 && e.contains("Address already in use") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        broker
    }

    /// Stops the broker with SIGTERM, so it saves its persistence database, and waits for it
    /// to exit (panics after 15 s). Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(&child.0, "TERM");
        if wait_timeout(&mut child.0, BROKER_LIMIT).is_none() {
            panic!("mosquitto did not exit within {BROKER_LIMIT:?} of SIGTERM\n{}", tail(&self.log()));
        }
    }

    /// Stops the broker (if running) and starts it again on the same port with the same
    /// configuration and persistence database: persistent sessions and their queued QoS 1
    /// messages survive. Open [`Subscription`]s reconnect by themselves within about a
    /// second; a clean one misses what is published before it is back (see
    /// [`Subscription::wait_subscribed`]).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("restart: {e}");
        }
    }

    /// Makes the broker write its persistence database now (SIGUSR1) and waits until it has,
    /// so that a following [`Broker::kill`] keeps everything handled before this call.
    pub fn save(&self) {
        assert!(self.opts.persistence, "the broker runs without persistence: set BrokerOptions::persistence");
        let child = self.child.as_ref().expect("save: the broker is not running");
        let mark = self.log_mark();
        signal(&child.0, "USR1");
        let saving = "Saving in-memory database";
        self.wait_log("the save after SIGUSR1", mark, BROKER_LIMIT, |l| l.contains(saving));
        // The line comes before the write, and the write (to a new file, then renamed) is
        // done in the broker's only thread: a connection it logs after the line proves the
        // database is complete.
        let probe = TcpStream::connect_timeout(&self.addr(), BROKER_LIMIT).expect("connect to the broker");
        let accepted = format!("New connection from {} ", probe.local_addr().expect("local address"));
        self.wait_log("the connection after the save", mark, BROKER_LIMIT, |l| l.contains(&accepted));
    }

    /// Kills the broker with SIGKILL, as a crash or power cut would: the persistence
    /// database keeps what the last save wrote (autosaved every second; see
    /// [`Broker::save`]).
    pub fn kill(&mut self) {
        // Dropping the guard kills and reaps the process.
        drop(self.child.take());
    }

    /// Everything the broker logged so far (`log_type all`, plus its stdout and stderr),
    /// across restarts.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path(), 0)
    }

    /// A mark in the broker log (its length), for [`Broker::wait_log`] to look after.
    pub fn log_mark(&self) -> u64 {
        file_len(&self.log_path())
    }

    /// Waits up to `limit` for a line matching `pred` in the broker log after `since` (a
    /// [`Broker::log_mark`]; 0: the whole log) and returns it; panics with `what` and the log
    /// otherwise. E.g. the agent connecting: `|l| l.contains("as edge-dev-1 (")`.
    pub fn wait_log(&self, what: &str, since: u64, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = read_lossy(&self.log_path(), since).lines().find(|l| pred(l)) {
                return line.to_string();
            }
            if start.elapsed() > limit {
                panic!("{what}: no such broker log line within {limit:?}\n{}", tail(&self.log()));
            }
            sleep(POLL);
        }
    }

    /// PEM certificate of the CA that signed the broker's and the client's certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.tls_file("ca.crt")
    }

    /// PEM client certificate (CN `edge-agent-test-client`, signed by [`Broker::ca_file`]).
    pub fn client_cert(&self) -> PathBuf {
        self.tls_file("client.crt")
    }

    /// PEM PKCS#8 private key (EC P-256) of [`Broker::client_cert`].
    pub fn client_key(&self) -> PathBuf {
        self.tls_file("client.key")
    }

    /// How a configured user connects: its password, and the client certificate on TLS.
    pub fn login(&self, user: &str) -> Login {
        let Some((_, password)) = self.opts.users.iter().find(|(u, _)| u == user) else {
            panic!("no user {user:?} in the broker options")
        };
        Login { user: Some(user.into()), password: Some(password.clone()), client_cert: self.opts.tls }
    }

    /// Publishes `payload` as `user` with `mosquitto_pub` (MQTT 3.1.1) and asserts it
    /// succeeded. With QoS 1 or 2 the broker has handled the message when this returns;
    /// with QoS 0 it may still be on its way. A publish the ACL denies succeeds silently.
    pub fn publish(&self, user: &str, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        let out = self.try_publish(&self.login(user), topic, payload, qos, retain);
        self.assert_success("mosquitto_pub", &out);
    }

    /// Publishes like [`Broker::publish`] as anyone, and returns how `mosquitto_pub` ended
    /// instead of asserting success (it exits non-zero when the broker refuses the client).
    pub fn try_publish(&self, login: &Login, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Output {
        let mut args = self.connect_args(login);
        push(&mut args, &["-t", topic, "-q", &qos.to_string()]);
        if retain {
            push(&mut args, &["-r"]);
        }
        // The payload goes through stdin (-s), which keeps every byte and has no length
        // limit; -s refuses an empty stdin, so an empty payload is a null message (-n).
        push(&mut args, &[if payload.is_empty() { "-n" } else { "-s" }]);
        self.run_client("mosquitto_pub", &args, payload)
    }

    /// Publishes many (topic, text payload) messages fast as `user` and asserts success: one
    /// `mosquitto_pub -l` per topic (a message per stdin line), all topics at once, so each
    /// topic's messages keep their order while topics interleave, as several sensors'
    /// would. Payloads must be single lines. With QoS 1 or 2 the broker has handled them
    /// all when this returns.
    pub fn publish_many(&self, user: &str, messages: &[(String, String)], qos: u8) {
        let mut topics: Vec<(&str, String)> = Vec::new();
        for (topic, payload) in messages {
            assert!(!payload.contains('\n'), "publish_many sends one message per line: {payload:?}");
            let at = match topics.iter().position(|(t, _)| t == topic) {
                Some(at) => at,
                None => {
                    topics.push((topic, String::new()));
                    topics.len() - 1
                }
            };
            topics[at].1 += payload;
            topics[at].1.push('\n');
        }
        // mosquitto_pub sends thousands of messages a second: give big batches time.
        let limit = COMMAND_LIMIT + Duration::from_millis(messages.len() as u64);
        let login = self.login(user);
        let outcomes: Vec<_> = std::thread::scope(|scope| {
            let runs: Vec<_> = topics
                .iter()
                .map(|(topic, lines)| {
                    let mut args = self.connect_args(&login);
                    push(&mut args, &["-t", topic, "-q", &qos.to_string(), "-l"]);
                    let mut cmd = Command::new("mosquitto_pub");
                    cmd.args(args);
                    scope.spawn(move || run_bounded(&mut cmd, lines.as_bytes(), limit))
                })
                .collect();
            runs.into_iter().map(|r| r.join().expect("publisher thread")).collect()
        });
        for ((topic, _), outcome) in topics.iter().zip(outcomes) {
            let out =
                outcome.unwrap_or_else(|e| panic!("mosquitto_pub -l on {topic}: {e}\n{}", tail(&self.log())));
            assert!(
                out.status.success(),
                "mosquitto_pub -l on {topic} failed ({}): {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log())
            );
        }
    }

    /// Publishes at QoS 1 with MQTT 5 request/response properties, as a fleet command would
    /// be sent, and asserts success. `correlation` must not contain NUL bytes (it is passed
    /// as a command-line argument).
    pub fn publish_v5(
        &self,
        user: &str,
        topic: &str,
        payload: &[u8],
        response_topic: &str,
        correlation: &[u8],
    ) {
        assert!(!correlation.contains(&0), "correlation data cannot hold a NUL byte on the command line");
        let mut args = self.connect_args(&self.login(user));
        push(&mut args, &["-V", "mqttv5", "-t", topic, "-q", "1"]);
        push(&mut args, &["-D", "publish", "response-topic", response_topic]);
        push(&mut args, &["-D", "publish", "correlation-data"]);
        args.push(OsStr::from_bytes(correlation).to_os_string());
        push(&mut args, &[if payload.is_empty() { "-n" } else { "-s" }]);
        let out = self.run_client("mosquitto_pub", &args, payload);
        self.assert_success("mosquitto_pub", &out);
    }

    /// Subscribes to `filter` as `user` (clean session, QoS 1), returning once the broker
    /// has acknowledged the subscription: anything published after this returns is
    /// received, as are retained messages.
    pub fn subscribe(&self, user: &str, filter: &str) -> Subscription {
        self.subscribe_with(&self.login(user), filter, None)
    }

    /// Subscribes like [`Broker::subscribe`] with a persistent session under `client_id`
    /// (`mosquitto_sub -c -i ID -q 1`): while no subscriber with that id is connected, the
    /// broker queues QoS 1 messages for it, and a later call with the same id gets them.
    pub fn subscribe_persistent(&self, user: &str, filter: &str, client_id: &str) -> Subscription {
        self.subscribe_with(&self.login(user), filter, Some(client_id))
    }

    /// Subscribes as anyone; `session`: the client id of a persistent session, or None for
    /// a clean session under a unique id. Panics if the subscriber exits (e.g. refused) or
    /// is not acknowledged within 15 s.
    pub fn subscribe_with(&self, login: &Login, filter: &str, session: Option<&str>) -> Subscription {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let client_id = match session {
            Some(id) => id.to_string(),
            None => format!("fixture-sub-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)),
        };
        let mut args = self.connect_args(login);
        // MQTT 5 so that the response topic and correlation data of replies are visible.
        // Each message is one line: the payload in hex (exact bytes, whatever they are),
        // then mosquitto_sub's JSON for the rest (topic, QoS, retain, properties), in which
        // any newline is escaped.
        push(&mut args, &["-V", "mqttv5", "-q", "1", "-t", filter, "-i", &client_id, "-F", "%x %j"]);
        if session.is_some() {
            push(&mut args, &["-c"]);
        }
        let log_path = self.log_path();
        let offset = file_len(&log_path);
        let mut child = Guard(
            Command::new("mosquitto_sub")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run mosquitto_sub (is it installed?): {e}")),
        );
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let stdout = child.0.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(Message::parse(&line));
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        read_into(child.0.stderr.take().expect("stderr"), stderr.clone());
        let sub = Subscription {
            child: Mutex::new(child),
            client_id,
            filter: filter.into(),
            messages,
            stderr,
            log_path,
        };
        sub.wait_subscribed(offset);
        sub
    }

    /// The connection arguments of a command-line client.
    fn connect_args(&self, login: &Login) -> Vec<OsString> {
        // 127.0.0.1, not localhost: the listener is IPv4 only, and the server certificate
        // names the address, so TLS hostname verification still happens.
        let mut args = Vec::new();
        push(&mut args, &["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(user) = &login.user {
            push(&mut args, &["-u", user]);
        }
        if let Some(password) = &login.password {
            push(&mut args, &["-P", password]);
        }
        if self.opts.tls {
            args.extend(["--cafile".into(), self.ca_file().into()]);
            if login.client_cert {
                args.extend(["--cert".into(), self.client_cert().into()]);
                args.extend(["--key".into(), self.client_key().into()]);
            }
        }
        args
    }

    /// Runs a command-line client to completion, feeding `stdin`; panics after 15 s.
    fn run_client(&self, program: &str, args: &[OsString], stdin: &[u8]) -> Output {
        run_bounded(Command::new(program).args(args), stdin, COMMAND_LIMIT)
            .unwrap_or_else(|e| panic!("{program} {args:?}: {e}\n{}", tail(&self.log())))
    }

    fn assert_success(&self, program: &str, out: &Output) {
        assert!(
            out.status.success(),
            "{program} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log())
        );
    }

    fn tls_file(&self, name: &str) -> PathBuf {
        assert!(self.opts.tls, "the broker runs without TLS: set BrokerOptions::tls");
        self.dir.path().join(name)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let o = &self.opts;
        let mut conf = vec![
            "# Written by the edge-agent test fixture (tests/common/broker.rs).".to_string(),
            // Mosquitto started as root switches to the user named here, by default
            // `mosquitto`, who cannot read the temporary directory; as another user it
            // ignores the option.
            "user root".into(),
            // One set of security settings for the whole broker (the listener below).
            "per_listener_settings false".into(),
            format!("listener {} 127.0.0.1", self.port),
            format!("allow_anonymous {}", o.allow_anonymous),
            format!("password_file {d}/passwd"),
            format!("persistence {}", o.persistence),
            format!("persistence_location {d}/"),
            "persistence_file mosquitto.db".into(),
            // Small, so that a kill() loses at most a second of broker state.
            "autosave_interval 1".into(),
            format!("log_dest file {d}/mosquitto.log"),
            "log_type all".into(),
            "log_timestamp true".into(),
            "log_timestamp_format %H:%M:%S".into(),
        ];
        if o.acl.is_some() {
            conf.push(format!("acl_file {d}/acl"));
        }
        if let Some(n) = o.max_inflight {
            conf.push(format!("max_inflight_messages {n}"));
        }
        if let Some(n) = o.message_size_limit {
            conf.push(format!("message_size_limit {n}"));
        }
        if let Some(n) = o.max_queued_messages {
            conf.push(format!("max_queued_messages {n}"));
        }
        if o.tls {
            conf.extend([
                format!("cafile {d}/ca.crt"),
                format!("certfile {d}/server.crt"),
                format!("keyfile {d}/server.key"),
                "require_certificate true".into(),
                // The certificate proves the device, the password the user: keep both.
                "use_identity_as_username false".into(),
            ]);
        }
        let text = conf.join("\n") + "\n";
        fs::write(self.dir.path().join("mosquitto.conf"), text).expect("write mosquitto.conf");
    }

    /// Starts Mosquitto with the written config and waits until it accepts connections.
    /// Err: why not, with the log of this start.
    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let offset = file_len(&log_path);
        // Mosquitto's own stdout and stderr (config errors come before it opens its log) go
        // to the same file; both append, so neither overwrites the other.
        let log = OpenOptions::new().create(true).append(true).open(&log_path).expect("open the broker log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicate the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mosquitto (is it installed?): {e}"));
        let mut child = Guard(child);
        let addr = self.addr();
        let start = Instant::now();
        loop {
            let log = read_lossy(&log_path, offset);
            if let Some(status) = child.0.try_wait().expect("try_wait mosquitto") {
                return Err(format!(
                    "mosquitto exited with {status} while starting on port {}\n{}",
                    self.port,
                    tail(&log)
                ));
            }
            // "running" comes once the listener is open: a connection before it could reach
            // another process holding the port (Mosquitto then exits, caught above).
            let running = log.lines().any(|l| l.contains("mosquitto version") && l.ends_with(" running"));
            if running && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if start.elapsed() > BROKER_LIMIT {
                return Err(format!(
                    "mosquitto not accepting connections on port {} within {BROKER_LIMIT:?}\n{}",
                    self.port,
                    tail(&log)
                ));
            }
            sleep(POLL);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Before the directory goes: a live broker would keep writing into it.
        self.kill();
    }
}

/// A message as a [`Subscription`] received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The topic it was published on.
    pub topic: String,
    /// The exact payload bytes.
    pub payload: Vec<u8>,
    /// QoS of the delivery (at most the subscription's, 1).
    pub qos: u8,
    /// Set on retained messages delivered because of the subscription.
    pub retain: bool,
    /// MQTT 5 response topic, if the publisher set one.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data, if the publisher set some (lossy UTF-8: binary correlation
    /// data does not survive mosquitto_sub's output).
    pub correlation_data: Option<String>,
    /// MQTT 5 user properties (a duplicated key keeps one value).
    pub user_properties: Vec<(String, String)>,
}

impl Message {
    /// The payload as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload parsed as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("payload on {} is not JSON ({e}): {}", self.topic, self.text()))
    }

    /// Parses one line of `mosquitto_sub -F '%x %j'`. A line that does not parse becomes a
    /// message on topic `<unparsed>` holding the line, so that it shows in panic messages.
    fn parse(line: &[u8]) -> Message {
        let unparsed = || Message {
            topic: "<unparsed>".into(),
            payload: line.to_vec(),
            qos: 0,
            retain: false,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        };
        let Some(space) = line.iter().position(|&b| b == b' ') else { return unparsed() };
        let (Some(payload), Ok(meta)) = (
            from_hex(&line[..space]),
            serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(&line[space + 1..])),
        ) else {
            return unparsed();
        };
        let Some(topic) = meta["topic"].as_str() else { return unparsed() };
        let props = &meta["properties"];
        let string = |v: &serde_json::Value| v.as_str().map(str::to_string);
        Message {
            topic: topic.to_string(),
            payload,
            qos: meta["qos"].as_u64().unwrap_or(0) as u8,
            retain: meta["retain"].as_u64().unwrap_or(0) != 0,
            response_topic: string(&props["response-topic"]),
            correlation_data: string(&props["correlation-data"]),
            user_properties: props["user-properties"]
                .as_object()
                .map(|m| {
                    m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A `mosquitto_sub` client collecting what it receives; killed on drop (a persistent
/// session then stays on the broker, queueing messages).
pub struct Subscription {
    child: Mutex<Guard>,
    client_id: String,
    filter: String,
    messages: Arc<Mutex<Vec<Message>>>,
    stderr: Arc<Mutex<String>>,
    log_path: PathBuf,
}

impl Subscription {
    /// The MQTT client id of the subscriber.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Waits until the broker has acknowledged a SUBSCRIBE of this subscriber logged after
    /// `since` (a [`Broker::log_mark`]); panics if the subscriber exits or 15 s pass. After
    /// a [`Broker::restart`], with the mark taken before it: the subscriber is back.
    pub fn wait_subscribed(&self, since: u64) {
        // The broker logs the SUBACK after it has added the subscription, and it handles
        // packets one at a time: from this line on, every publish reaches the subscriber.
        // Reading the log works whatever the ACL allows, and sends no message of our own.
        let ack = format!("Sending SUBACK to {}", self.client_id);
        let start = Instant::now();
        while !read_lossy(&self.log_path, since).lines().any(|l| l.ends_with(&ack)) {
            if let Some(status) = self.child.lock().unwrap().0.try_wait().expect("try_wait mosquitto_sub") {
                panic!("mosquitto_sub exited with {status} before subscribing\n{}", self.report());
            }
            if start.elapsed() > SUBSCRIBE_LIMIT {
                panic!("mosquitto_sub not subscribed within {SUBSCRIBE_LIMIT:?}\n{}", self.report());
            }
            sleep(POLL);
        }
    }

    /// (topic, payload as text) of every message received so far, in order.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.received().iter().map(|m| (m.topic.clone(), m.text())).collect()
    }

    /// Every message received so far, in order, with its properties.
    pub fn received(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits up to `limit` for a message `pred(topic, payload)` accepts and returns the first
    /// one; panics with `what` and everything received otherwise.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&str, &str) -> bool,
    ) -> (String, String) {
        let m = self.wait_for_message(what, limit, |m| pred(&m.topic, &m.text()));
        (m.topic.clone(), m.text())
    }

    /// Like [`Subscription::wait_for`], among the messages after the first `after` only
    /// (`after`: `messages().len()` taken before the action whose effect is awaited), so
    /// that an earlier message that also matches does not count.
    pub fn wait_for_after(
        &self,
        what: &str,
        after: usize,
        limit: Duration,
        pred: impl Fn(&str, &str) -> bool,
    ) -> (String, String) {
        let m = self.wait_until(what, limit, |all| {
            all.iter().skip(after).find(|m| pred(&m.topic, &m.text())).cloned()
        });
        (m.topic.clone(), m.text())
    }

    /// Like [`Subscription::wait_for`], with the whole message (properties, exact bytes).
    pub fn wait_for_message(&self, what: &str, limit: Duration, pred: impl Fn(&Message) -> bool) -> Message {
        self.wait_until(what, limit, |all| all.iter().find(|m| pred(m)).cloned())
    }

    /// Waits up to `limit` until `n` received messages match `pred(topic, payload)` and
    /// returns the first `n`; panics with `what` and everything received otherwise.
    pub fn wait_count(
        &self,
        n: usize,
        limit: Duration,
        pred: impl Fn(&str, &str) -> bool,
    ) -> Vec<(String, String)> {
        let what = format!("{n} matching messages");
        self.wait_until(&what, limit, |all| {
            let hits: Vec<_> =
                all.iter().map(|m| (m.topic.clone(), m.text())).filter(|(t, p)| pred(t, p)).take(n).collect();
            (hits.len() == n).then_some(hits)
        })
    }

    /// Watches for `window` that no received message matches `pred(topic, payload)`; panics
    /// with `what` and everything received if one does. Pair it with a message that must
    /// arrive after the forbidden one would have.
    pub fn assert_none(&self, what: &str, window: Duration, pred: impl Fn(&str, &str) -> bool) {
        let start = Instant::now();
        loop {
            if let Some((t, p)) = self.messages().into_iter().find(|(t, p)| pred(t, p)) {
                panic!("{what}: unexpected message on {t}: {p}\n{}", self.report());
            }
            if start.elapsed() > window {
                return;
            }
            sleep(POLL);
        }
    }

    fn wait_until<T>(&self, what: &str, limit: Duration, found: impl Fn(&[Message]) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(hit) = found(&self.messages.lock().unwrap()) {
                return hit;
            }
            if start.elapsed() > limit {
                panic!("{what}: not received within {limit:?}\n{}", self.report());
            }
            sleep(POLL);
        }
    }

    /// What a panic message needs: the messages, the subscriber's state and stderr, the log.
    fn report(&self) -> String {
        let state = match self.child.lock().unwrap().0.try_wait() {
            Ok(Some(status)) => format!("exited with {status}"),
            _ => "running".into(),
        };
        let mut text = format!("subscriber {} on {:?} ({state}) received:\n", self.client_id, self.filter);
        for m in self.received() {
            let mut payload = m.text();
            if payload.len() > 500 {
                let mut end = 500;
                while !payload.is_char_boundary(end) {
                    end -= 1;
                }
                payload.truncate(end);
                payload.push_str("...");
            }
            text += &format!("  {} {payload}\n", m.topic);
        }
        text += &format!("its stderr: {}\n", self.stderr.lock().unwrap());
        text + &tail(&read_lossy(&self.log_path, 0))
    }
}

/// Hashes `users` into `dir/passwd` (`mosquitto_passwd -U` turns a `user:password` file into
/// a hashed one in one run).
fn write_passwords(dir: &Path, users: &[(String, String)]) {
    let path = dir.join("passwd");
    let mut text = String::new();
    for (user, password) in users {
        assert!(
            !user.contains(':') && !user.contains('\n'),
            "user names cannot hold ':' or newlines: {user:?}"
        );
        assert!(!password.contains('\n'), "passwords cannot hold newlines");
        text += &format!("{user}:{password}\n");
    }
    fs::write(&path, text).expect("write the password file");
    if users.is_empty() {
        return;
    }
    let out = run_bounded(Command::new("mosquitto_passwd").arg("-U").arg(&path), b"", COMMAND_LIMIT)
        .unwrap_or_else(|e| panic!("mosquitto_passwd: {e}"));
    assert!(out.status.success(), "mosquitto_passwd -U failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// OpenSSL extensions of the three certificates. webpki (rustls) insists on a CA with
/// CA:TRUE and a server certificate naming the host in subjectAltName.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Writes into `dir` a CA (`ca.crt`, `ca.key`), a server certificate for localhost and
/// 127.0.0.1 (`server.crt`, `server.key`) and a client certificate (`client.crt`,
/// `client.key`), all EC P-256 with PKCS#8 PEM keys (`genpkey` writes PKCS#8).
pub fn make_certificates(dir: &Path) {
    fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).expect("write openssl.cnf");
    // Run in `dir` with relative file names, so that arguments never hold spaces and can be
    // written as one string each.
    let openssl = |command: &str| {
        let args: Vec<&str> = command.split_whitespace().collect();
        let out = run_bounded(Command::new("openssl").args(&args).current_dir(dir), b"", COMMAND_LIMIT)
            .unwrap_or_else(|e| panic!("openssl {command}: {e}"));
        assert!(out.status.success(), "openssl {command} failed: {}", String::from_utf8_lossy(&out.stderr));
    };
    let key =
        |name: &str| openssl(&format!("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}"));
    key("ca.key");
    openssl(
        "req -x509 -new -key ca.key -sha256 -days 3650 -subj /CN=edge-agent-test-ca \
         -config openssl.cnf -extensions ca -out ca.crt",
    );
    for (name, cn, serial) in [("server", "localhost", 2), ("client", "edge-agent-test-client", 3)] {
        key(&format!("{name}.key"));
        openssl(&format!("req -new -key {name}.key -subj /CN={cn} -config openssl.cnf -out {name}.csr"));
        openssl(&format!(
            "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -set_serial {serial} -days 3650 -sha256 \
             -extfile openssl.cnf -extensions {name} -out {name}.crt"
        ));
    }
}

/// Runs a command to completion, feeding it `stdin`, killing it after `limit`. Err on
/// timeout, with what it wrote to stderr.
fn run_bounded(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().map_err(|e| format!("cannot run it: {e}"))?);
    // Writing on a thread: a child that does not read all its input must not block us.
    let mut pipe = child.0.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let stdout = read_all(Box::new(child.0.stdout.take().expect("stdout")));
    let stderr = read_all(Box::new(child.0.stderr.take().expect("stderr")));
    let status = wait_timeout(&mut child.0, limit);
    // The child is gone (exited or killed), so its pipes are closed and the readers end.
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    match status {
        Some(status) => Ok(Output { status, stdout, stderr }),
        None => Err(format!("did not finish within {limit:?}; stderr: {}", String::from_utf8_lossy(&stderr))),
    }
}

fn push(args: &mut Vec<OsString>, more: &[&str]) {
    args.extend(more.iter().map(OsString::from));
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The text of a file from byte `offset` on; empty if it does not exist (yet).
fn read_lossy(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default()).into_owned()
}

/// The last lines of a broker log, labelled, for panic messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
    let note = if skip > 0 { format!(" ({skip} earlier lines left out)") } else { String::new() };
    format!("--- broker log{note} ---\n{}\n--- end of broker log ---", lines[skip..].join("\n"))
}

fn from_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    hex.chunks(2).map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8)).collect()
}
