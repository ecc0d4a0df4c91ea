//! `edge-agent fleet rollout`: the I/O around [`core`]. It signs each step with the
//! registry's own code ([`crate::cli::registry::change_rollout`], as `registry promote`),
//! reads the devices' events and retained status from the broker, writes the state file
//! after every change (`edge_spool::durable`), publishes the retained rollout record,
//! and applies the `pause`, `resume` and `abort` commands queued in the control file.
//! The protocol is in docs/protocols.md ("Fleet rollouts"); operation in docs/fleet.md.

pub mod core;

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use self::core::{Action, Input, Plan, State};
use super::broker::BrokerArgs;
use crate::cli::registry::{Change, ExpiryArgs, RepoArgs, change_rollout, expiries, published};

/// Arguments of `fleet rollout`: start one (or `--resume` it), or a subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub action: Option<RolloutAction>,
    #[command(flatten)]
    pub start: StartArgs,
}

/// `fleet rollout` subcommands, for a rollout another controller runs (or ran).
#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Print a rollout's record from its state file.
    Status(ControlArgs),
    /// Stop raising and judging steps (failures past the limit still halt).
    Pause(ControlArgs),
    /// Go on after a pause; the step's bake time starts again.
    Resume(ControlArgs),
    /// Halt now: pull the version; devices that run it go back to their previous one.
    Abort(ControlArgs),
}

/// Which rollout a subcommand is about.
#[derive(Debug, Args)]
pub struct ControlArgs {
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub state: StateDirArg,
    /// Print JSON (stable, for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Where rollouts keep their state.
#[derive(Debug, Args)]
pub struct StateDirArg {
    /// Directory of the rollout state files (`{model}.json`); default
    /// $XDG_STATE_HOME/edge-agent/rollouts (~/.local/state/edge-agent/rollouts).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateDirArg {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.state_dir {
            return Ok(d.clone());
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .context("neither XDG_STATE_HOME nor HOME is set: give --state-dir")?;
        Ok(base.join("edge-agent/rollouts"))
    }
}

/// Arguments of a rollout run.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The registry directory (holding metadata/ and targets/).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Directory of private keys (`*.key`) for targets, snapshot and timestamp.
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    #[arg(long)]
    pub model: Option<String>,
    /// The published version to roll out (published at 0%, or below the first step).
    #[arg(long)]
    pub version: Option<String>,
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// Rollout percentages, strictly increasing.
    #[arg(long, value_delimiter = ',', default_value = "1,5,25,100")]
    pub steps: Vec<u32>,
    /// Seconds each step runs before it is judged.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub bake: u64,
    /// Devices of the cohort that must report (passed probation, or failed) before a
    /// step is judged; a smaller cohort must report whole.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_devices: usize,
    /// Largest share (0 to 1) of the reporting cohort whose update may fail
    /// (model-rolled-back, selftest-failed, update-rejected); more halts the rollout.
    #[arg(long, value_name = "SHARE", default_value_t = 0.1)]
    pub max_failure_share: f64,
    /// Seconds a step waits for its reports after the bake time before the rollout
    /// pauses for the operator (0: forever).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub step_timeout: u64,
    /// The fleet's device ids, one a line (# comments); default: every device with a
    /// retained status on the broker.
    #[arg(long, value_name = "FILE")]
    pub devices: Option<PathBuf>,
    /// Print the steps and the devices each adds, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue the rollout of --model that a controller left (killed, stopped):
    /// never raises a step twice, never forgets a halt.
    #[arg(long)]
    pub resume: bool,
    /// Print the outcome as JSON (stable, for scripts); no progress.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateDirArg,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
}

/// The state file: the controller's state and where it signs.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    repo: PathBuf,
    keys: PathBuf,
    /// The fleet came from `--devices`: retained status adds no devices.
    devices_from_file: bool,
    state: State,
}

/// A queued `pause`, `resume` or `abort`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Control {
    seq: u64,
    command: String,
    at_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn state_file(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.json"))
}

fn control_file(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.control.json"))
}

fn read_saved(path: &Path) -> anyhow::Result<Option<Saved>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not a rollout state file (damaged? restore it or move it away)", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_saved(path: &Path, saved: &Saved) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(saved)?;
    edge_spool::durable::replace(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn read_controls(path: &Path) -> Vec<Control> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// One controller per model and state directory: an exclusive lock on
/// `{model}.lock`, released by the kernel however the process ends.
fn lock(dir: &Path, model: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(format!("{model}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    anyhow::ensure!(
        r == 0,
        "another controller runs the rollout of `{model}` ({} is locked); use `fleet rollout status|pause|resume|abort --model {model}`",
        path.display()
    );
    Ok(file)
}

pub fn run(a: RolloutArgs) -> anyhow::Result<ExitCode> {
    match a.action {
        Some(RolloutAction::Status(c)) => status(c),
        Some(RolloutAction::Pause(c)) => queue(c, "pause"),
        Some(RolloutAction::Resume(c)) => queue(c, "resume"),
        Some(RolloutAction::Abort(c)) => queue(c, "abort"),
        None => start(a.start),
    }
}

fn status(c: ControlArgs) -> anyhow::Result<ExitCode> {
    let dir = c.state.dir()?;
    let path = state_file(&dir, &c.model);
    let Some(saved) = read_saved(&path)? else {
        anyhow::bail!("no rollout of `{}` in {} (start one with `fleet rollout`)", c.model, dir.display());
    };
    let pending: Vec<String> = read_controls(&control_file(&dir, &c.model))
        .into_iter()
        .filter(|x| x.seq > saved.state.controls_applied)
        .map(|x| x.command)
        .collect();
    let mut record = saved.state.record();
    record["pending"] = json!(pending);
    if c.json {
        outln!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        outln!("{}", summary(&record));
        for line in &saved.state.log {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(line["at_ms"].as_u64().unwrap_or(0));
            outln!("  {} {}", humantime::format_rfc3339_seconds(at), line["what"].as_str().unwrap_or(""));
        }
        if !pending.is_empty() {
            outln!("queued, not applied yet: {}", pending.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A record's cohort and what it reported, in words.
fn counts(r: &Value) -> String {
    format!(
        "cohort {}, {} healthy, {} failed, {} updating",
        r["cohort"], r["healthy"], r["failed"], r["took"]
    )
}

/// One line about a record, for people.
fn summary(r: &Value) -> String {
    let mut s = format!(
        "{} {} → {}: {} at {}% ({}; {} devices known)",
        r["model"].as_str().unwrap_or(""),
        r["channel"].as_str().unwrap_or(""),
        r["version"].as_str().unwrap_or(""),
        r["state"].as_str().unwrap_or(""),
        r["percent"],
        counts(r),
        r["devices"],
    );
    if let Some(why) = r["reason"].as_str() {
        s.push_str(&format!(": {why}"));
    }
    s
}

fn queue(c: ControlArgs, command: &str) -> anyhow::Result<ExitCode> {
    let dir = c.state.dir()?;
    let Some(saved) = read_saved(&state_file(&dir, &c.model))? else {
        anyhow::bail!("no rollout of `{}` in {} (start one with `fleet rollout`)", c.model, dir.display());
    };
    anyhow::ensure!(
        !saved.state.finished(),
        "the rollout of `{}` version {} has ended ({}); nothing to {command}",
        c.model,
        saved.state.plan.version,
        saved.state.phase_name()
    );
    let path = control_file(&dir, &c.model);
    let mut controls = read_controls(&path);
    let seq = controls.iter().map(|x| x.seq).max().unwrap_or(0).max(saved.state.controls_applied) + 1;
    controls.push(Control { seq, command: command.to_string(), at_ms: now_ms() });
    edge_spool::durable::replace(&path, &serde_json::to_vec_pretty(&controls)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let running = lock(&dir, &c.model).is_err();
    if c.json {
        outln!("{}", json!({"queued": command, "seq": seq, "controller_running": running}));
    } else if running {
        outln!("{command} queued; the running controller applies it within a second");
    } else {
        outln!(
            "{command} queued; no controller runs: it applies at `fleet rollout --resume --model {}`",
            c.model
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_devices(file: &Path) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the device list {}", file.display()))?;
    let mut out = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.split('#').next().unwrap_or("").trim();
        if id.is_empty() {
            continue;
        }
        anyhow::ensure!(
            crate::config::is_valid_id(id),
            "{}:{}: `{id}` is not a device id (A-Z a-z 0-9 . _ -)",
            file.display(),
            n + 1
        );
        out.insert(id.to_string());
    }
    Ok(out)
}

/// `--max-failure-share` in basis points, refused outside 0 to 1.
fn share_bp(share: f64) -> anyhow::Result<u32> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&share),
        "--max-failure-share {share} is not a share from 0 to 1 (0.2 is 20%)"
    );
    Ok((share * 10_000.0).round() as u32)
}

fn start(a: StartArgs) -> anyhow::Result<ExitCode> {
    let model = a.model.clone().context("give --model (and --repo, --keys, --version to start a rollout)")?;
    let dir = a.state.dir()?;
    let path = state_file(&dir, &model);
    let saved = if a.resume {
        let saved = read_saved(&path)?.with_context(|| {
            format!("no rollout of `{model}` to resume in {} (start one without --resume)", dir.display())
        })?;
        if let Some(v) = &a.version {
            anyhow::ensure!(
                v == &saved.state.plan.version,
                "the rollout of `{model}` in {} is of version {}, not {v}",
                dir.display(),
                saved.state.plan.version
            );
        }
        saved
    } else {
        let (Some(repo), Some(keys), Some(version)) = (a.repo.clone(), a.keys.clone(), a.version.clone())
        else {
            anyhow::bail!("give --repo, --keys, --model and --version (or --resume --model M to continue)");
        };
        let name = format!("{}/{model}/{version}.tar", a.channel);
        let custom = published(&repo, &name)?.with_context(|| {
            format!(
                "{name} is not published in {}; publish it first at 0% (`registry publish --rollout 0`)",
                repo.display()
            )
        })?;
        let plan = Plan {
            model: model.clone(),
            version: version.clone(),
            channel: a.channel.clone(),
            steps: a.steps.clone(),
            bake_s: a.bake,
            min_devices: a.min_devices,
            max_failure_bp: share_bp(a.max_failure_share)?,
            step_timeout_s: a.step_timeout,
            salt: custom.rollout.salt.clone(),
        };
        plan.check().map_err(|e| anyhow::anyhow!(e))?;
        anyhow::ensure!(
            custom.rollout.percent < plan.steps[0],
            "{name} is already at {}%, not below the first step ({}%): publish the version at 0% and let the rollout raise it",
            custom.rollout.percent,
            plan.steps[0]
        );
        let devices = match &a.devices {
            Some(f) => read_devices(f)?,
            None => BTreeSet::new(),
        };
        Saved {
            repo,
            keys,
            devices_from_file: a.devices.is_some(),
            state: State::new(plan, devices, now_ms()),
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if a.dry_run {
        return rt.block_on(dry_run(saved, &a));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _lock = lock(&dir, &model)?;
    if !a.resume
        && let Some(old) = read_saved(&path)?
    {
        anyhow::ensure!(
            old.state.finished(),
            "a rollout of `{model}` version {} is {} ({}); continue it with --resume or end it with `fleet rollout abort --model {model}`",
            old.state.plan.version,
            old.state.phase_name(),
            path.display()
        );
        // The ended rollout's file stays beside, by version.
        let done = dir.join(format!("{model}-{}.json", old.state.plan.version));
        std::fs::rename(&path, &done).with_context(|| format!("cannot move {} aside", path.display()))?;
        let _ = std::fs::remove_file(control_file(&dir, &model));
    }
    write_saved(&path, &saved)?;
    rt.block_on(controller(saved, &a, &dir, &path))
}

/// The broker side: subscriptions, and every message handed to the controller.
enum Msg {
    Connected,
    Publish(rumqttc::Publish),
    PubAck,
    Down(String),
}

struct Broker {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    prefix: String,
    /// `host:port`, for messages.
    broker: String,
    sync_topic: String,
    /// QoS 1 publishes handed to the client, and the acknowledgements the broker sent:
    /// the final record is delivered once every publish up to it is acknowledged (an
    /// earlier record's late acknowledgement must not stand for it).
    requested: u64,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn connect(b: &BrokerArgs, model: &str, purpose: &str, persistent: bool) -> anyhow::Result<Broker> {
    let settings = b.resolve()?;
    let id = format!("edge-fleet-{purpose}-{model}");
    let mut opts = settings.options(&id);
    opts.set_keep_alive(Duration::from_secs(10));
    // A persistent session: the broker keeps the devices' events (QoS 1) while the
    // controller is away (killed, restarting), and messages are acknowledged only once
    // the state they changed is on disk.
    opts.set_clean_session(!persistent);
    opts.set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let (tx, rx) = mpsc::unbounded_channel();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acks = acked.clone();
    tokio::spawn(async move {
        loop {
            let msg = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Msg::Connected,
                Ok(Event::Incoming(Packet::Publish(p))) => Msg::Publish(p),
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Msg::PubAck
                }
                Ok(_) => continue,
                Err(e) => {
                    let _ = tx.send(Msg::Down(e.to_string()));
                    // The next poll reconnects; this pause keeps a dead broker from
                    // being hammered.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if tx.send(msg).is_err() {
                break;
            }
        }
    });
    let sync_topic = format!("{}/fleet/rollouts/{model}/sync/{}", settings.prefix, std::process::id());
    Ok(Broker {
        client,
        rx,
        broker: settings.broker(),
        prefix: settings.prefix,
        sync_topic,
        requested: 0,
        acked,
    })
}

impl Broker {
    async fn subscribe(&mut self) -> anyhow::Result<()> {
        for filter in [format!("{}/+/status", self.prefix), format!("{}/+/events", self.prefix)] {
            self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        }
        // Retained status comes before anything published after the subscriptions: the
        // controller's own message on this topic marks the end of it.
        self.client.subscribe(self.sync_topic.clone(), QoS::AtLeastOnce).await?;
        self.client.publish(self.sync_topic.clone(), QoS::AtLeastOnce, false, "sync").await?;
        self.requested += 1;
        Ok(())
    }

    fn record_topic(&self, model: &str) -> String {
        format!("{}/fleet/rollouts/{model}", self.prefix)
    }

    /// A message as controller input: `None` for one it does not use.
    fn input(&self, p: &rumqttc::Publish, from_status: bool) -> Option<Input> {
        input_of(&self.prefix, &p.topic, &p.payload, from_status)
    }
}

/// A message on `topic` as controller input: `{prefix}/{device}/status` names a device
/// (when the fleet comes from retained status), `{prefix}/{device}/events` carries an
/// event; anything else, or a payload that is not an event, is `None`.
fn input_of(prefix: &str, topic: &str, payload: &[u8], from_status: bool) -> Option<Input> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (device, leaf) = rest.split_once('/')?;
    if ["fleet", "group", "all"].contains(&device) || !crate::config::is_valid_id(device) {
        return None;
    }
    match leaf {
        "status" if from_status => Some(Input::Device(device.to_string())),
        "events" => {
            let v: Value = serde_json::from_slice(payload).ok()?;
            Some(Input::Event {
                device: device.to_string(),
                kind: v.get("kind")?.as_str()?.to_string(),
                model: v.get("model").and_then(Value::as_str).map(str::to_string),
                detail: v.get("detail").cloned().unwrap_or(Value::Null),
            })
        }
        _ => None,
    }
}

async fn dry_run(mut saved: Saved, a: &StartArgs) -> anyhow::Result<ExitCode> {
    if !saved.devices_from_file {
        let model = saved.state.plan.model.clone();
        let mut broker = connect(&a.broker, &model, "dry-run", false)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let msg = tokio::time::timeout_at(deadline, broker.rx.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no answer from the broker {} within 30 s (or give --devices FILE)",
                        broker.broker
                    )
                })?
                .context("the broker connection ended")?;
            match msg {
                Msg::Connected => broker.subscribe().await?,
                Msg::Publish(p) => {
                    let _ = broker.client.ack(&p).await;
                    if p.topic == broker.sync_topic {
                        break;
                    }
                    if let Some(i) = broker.input(&p, true) {
                        saved.state.handle(i, now_ms());
                    }
                }
                Msg::PubAck | Msg::Down(_) => {}
            }
        }
        let _ = broker.client.disconnect().await;
    }
    let s = &saved.state;
    let adds = s.plan.adds(&s.devices);
    if a.json {
        let steps: Vec<Value> = adds.iter().map(|(p, d)| json!({"percent": p, "adds": d})).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": s.plan.model, "version": s.plan.version, "salt": s.plan.salt,
                "devices": s.devices.len(), "steps": steps,
            }))?
        );
    } else {
        outln!(
            "rollout of {} version {} over {} devices (salt {}); nothing is changed:",
            s.plan.model,
            s.plan.version,
            s.devices.len(),
            s.plan.salt
        );
        let mut total = 0;
        for (p, d) in &adds {
            total += d.len();
            outln!("  {p:>3}%: adds {} (cohort {total}): {}", d.len(), d.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Progress for a person, on a terminal only: each decision as a line, and below them
/// one line of the step's numbers, rewritten as they change.
struct Progress {
    on: bool,
    shown: usize,
    line: String,
}

impl Progress {
    fn show(&mut self, state: &State) {
        if !self.on {
            self.shown = state.log.len();
            return;
        }
        for line in &state.log[self.shown.min(state.log.len())..] {
            // Over the numbers line, which is written again below.
            eprintln!("\r\x1b[2K{} {}", state.plan.model, line["what"].as_str().unwrap_or(""));
            self.line.clear();
        }
        self.shown = state.log.len();
        let r = state.record();
        let line = format!(
            "{} {}: {} at {}%: {} (need {})",
            state.plan.model,
            state.plan.version,
            r["state"].as_str().unwrap_or(""),
            r["percent"],
            counts(&r),
            r["needed"]
        );
        if line != self.line {
            eprint!("\r\x1b[2K{line}");
            self.line = line;
        }
    }

    /// Ends the numbers line before the outcome is printed.
    fn end(&self) {
        if self.on && !self.line.is_empty() {
            eprintln!();
        }
    }
}

async fn controller(mut saved: Saved, a: &StartArgs, dir: &Path, path: &Path) -> anyhow::Result<ExitCode> {
    let model = saved.state.plan.model.clone();
    let repo = RepoArgs { repo: saved.repo.clone(), keys: saved.keys.clone() };
    let name = format!("{}/{model}/{}.tar", saved.state.plan.channel, saved.state.plan.version);
    let expiry = expiries(&a.expiry);
    let mut broker = connect(&a.broker, &model, "rollout", true)?;
    let record_topic = broker.record_topic(&model);
    let controls = control_file(dir, &model);
    let mut progress =
        Progress { on: !a.json && std::io::stderr().is_terminal(), shown: 0, line: String::new() };
    let mut synced = false;
    let mut published_record = Value::Null;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        // Queued commands first: an abort must win over a raise.
        let mut changed = false;
        let applied = saved.state.controls_applied;
        for c in read_controls(&controls).into_iter().filter(|c| c.seq > applied) {
            let input = match c.command.as_str() {
                "pause" => Input::Pause,
                "resume" => Input::Resume,
                _ => Input::Abort,
            };
            saved.state.handle(input, now_ms());
            saved.state.controls_applied = c.seq;
            changed = true;
        }
        if changed {
            write_saved(path, &saved)?;
        }
        // Decide only once the fleet's retained status is in (the cohorts need it).
        loop {
            if !synced {
                break;
            }
            let before = saved.state.clone();
            let action = saved.state.decide(now_ms());
            if saved.state != before {
                write_saved(path, &saved)?;
            }
            match action {
                Action::Raise { step, percent } => {
                    // Signed already (by this controller before it was killed)? Then the
                    // step is only confirmed: it is never signed twice.
                    let current = published(&repo.repo, &name)?.map(|c| c.rollout.percent);
                    match current {
                        Some(p) if p >= percent => {
                            tracing::info!(percent, "step already signed; confirming it");
                        }
                        Some(_) => {
                            change_rollout(&repo, &name, Change::Percent(percent), &expiry)?;
                        }
                        None => {
                            // Someone pulled it: this rollout is over.
                            saved.state.handle(Input::Abort, now_ms());
                            write_saved(path, &saved)?;
                            continue;
                        }
                    }
                    saved.state.handle(Input::Raised { step }, now_ms());
                    write_saved(path, &saved)?;
                }
                Action::Pull => {
                    if published(&repo.repo, &name)?.is_some() {
                        change_rollout(&repo, &name, Change::Pull, &expiry)?;
                    }
                    saved.state.handle(Input::Pulled, now_ms());
                    write_saved(path, &saved)?;
                }
                Action::Stop => break,
                Action::Wait => break,
            }
        }
        progress.show(&saved.state);
        let record = saved.state.record();
        if synced && record != published_record {
            if broker
                .client
                .try_publish(record_topic.clone(), QoS::AtLeastOnce, true, record.to_string())
                .is_ok()
            {
                broker.requested += 1;
            }
            published_record = record;
        }
        if saved.state.finished() && synced {
            progress.end();
            return finish(&mut broker, &saved, a, &record_topic).await;
        }
        tokio::select! {
            _ = tick.tick() => {}
            msg = broker.rx.recv() => match msg {
                Some(Msg::Connected) => broker.subscribe().await?,
                Some(Msg::Publish(p)) => {
                    if p.topic == broker.sync_topic {
                        synced = true;
                    } else if let Some(i) = broker.input(&p, !saved.devices_from_file)
                        && saved.state.handle(i, now_ms())
                    {
                        write_saved(path, &saved)?;
                    }
                    // Acknowledged once its effect is on disk: a controller killed
                    // before gets it again from its session.
                    let _ = broker.client.ack(&p).await;
                }
                Some(Msg::PubAck) => {}
                Some(Msg::Down(e)) => {
                    tracing::warn!(error = %e, "broker connection lost; reconnecting");
                    if progress.on {
                        eprintln!("\r\x1b[2Kbroker {}: {e}; reconnecting", broker.broker);
                        progress.line.clear();
                    }
                }
                None => anyhow::bail!("the broker connection task ended"),
            },
        }
    }
}

/// The outcome: the final record on the broker (acknowledged), then on stdout.
async fn finish(broker: &mut Broker, saved: &Saved, a: &StartArgs, topic: &str) -> anyhow::Result<ExitCode> {
    let record = saved.state.record();
    broker.client.publish(topic.to_string(), QoS::AtLeastOnce, true, record.to_string()).await?;
    broker.requested += 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if broker.acked.load(std::sync::atomic::Ordering::SeqCst) >= broker.requested {
            break;
        }
        match tokio::time::timeout_at(deadline, broker.rx.recv()).await {
            Ok(Some(Msg::Publish(p))) => {
                let _ = broker.client.ack(&p).await;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                eprintln!("warning: the broker did not acknowledge the final rollout record on {topic}");
                break;
            }
        }
    }
    let _ = broker.client.disconnect().await;
    // The rollout is over: its session would only pile up the fleet's events on the
    // broker. A clean connection with the same client id discards it.
    if let Ok(mut clean) = connect(&a.broker, &saved.state.plan.model, "rollout", false) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, clean.rx.recv()).await {
            if matches!(msg, Msg::Connected) {
                break;
            }
        }
        let _ = clean.client.disconnect().await;
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        outln!("{}", summary(&record));
    }
    Ok(if record["state"] == "done" { ExitCode::SUCCESS } else { ExitCode::from(crate::cli::EXIT_FAILED) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_become_inputs_only_from_device_topics() {
        let event = br#"{"kind":"model-rolled-back","model":"m","detail":{"from":"3"}}"#;
        let got = input_of("edge", "edge/pump-7/events", event, false).unwrap();
        assert_eq!(
            got,
            Input::Event {
                device: "pump-7".into(),
                kind: "model-rolled-back".into(),
                model: Some("m".into()),
                detail: json!({"from": "3"})
            }
        );
        assert_eq!(input_of("edge", "edge/pump-7/status", b"{}", true), Some(Input::Device("pump-7".into())));
        assert_eq!(input_of("edge", "edge/pump-7/status", b"{}", false), None, "the fleet came from a file");
        for (topic, payload) in [
            ("edge/fleet/rollouts/m", &event[..]),
            ("edge/group/events", event),
            ("edge/all/events", event),
            ("other/pump-7/events", event),
            ("edge/pump 7/events", event),
            ("edge/pump-7/events", b"not json"),
            ("edge/pump-7/events", br#"{"model":"m"}"#),
            ("edge/pump-7/telemetry", event),
        ] {
            assert_eq!(input_of("edge", topic, payload, true), None, "{topic}");
        }
    }

    #[test]
    fn a_device_list_names_the_line_of_a_bad_id() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("devices");
        std::fs::write(&f, "# fleet\ndev-1\n  dev-2  # spare\n\n").unwrap();
        assert_eq!(read_devices(&f).unwrap(), BTreeSet::from(["dev-1".to_string(), "dev-2".to_string()]));
        std::fs::write(&f, "dev-1\ndev 2\n").unwrap();
        let e = read_devices(&f).unwrap_err().to_string();
        assert!(e.contains(":2: `dev 2` is not a device id"), "{e}");
        assert!(share_bp(0.05).unwrap() == 500 && share_bp(1.5).is_err() && share_bp(f64::NAN).is_err());
    }
}
