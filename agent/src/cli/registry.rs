//! `edge-agent registry ...`: the publisher's side of model updates. A registry is a TUF
//! repository of static files (`metadata/`, `targets/`) that any web server, S3 bucket
//! or CDN can host; `registry serve` is a small server for demos and tests.
//!
//! Keys are Ed25519 PKCS#8 PEM files (`keygen`). Commands that sign take `--keys DIR`
//! and use every `*.key` file in it whose key a role names, so the offline root and
//! targets keys can stay on another machine: only the keys of the roles being re-signed
//! need to be present.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::ota::package;
use crate::ota::rollout::{Custom, Mode, ProbationOverride, Rollout};
use edge_tuf::keys::{PrivateKey, PublicKey};
use edge_tuf::repo::{self, Expiries, Repository, RootKeys};

/// `registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Make an Ed25519 signing key: FILE (private, mode 0600) and FILE.pub; prints its id.
    Keygen(KeygenArgs),
    /// Create a registry: root metadata naming each role's keys and threshold, and empty
    /// targets, snapshot and timestamp.
    Init(InitArgs),
    /// Pack a model directory (spec, model, golden vectors) and publish it as
    /// `{channel}/{model}/{version}.tar`, signing new targets, snapshot and timestamp.
    Publish(PublishArgs),
    /// Change a published version's rollout percentage, or pull it.
    Promote(PromoteArgs),
    /// Sign a new root (by the old root keys' threshold and the new ones'), to change or
    /// revoke keys. A role given no keys keeps its current keys and threshold.
    RotateRoot(InitArgs),
    /// Re-sign the timestamp (the online key's regular job: an expired timestamp is how
    /// devices tell a frozen registry).
    Timestamp(TimestampArgs),
    /// Check a registry as a device would: signatures, thresholds, expiry, versions,
    /// every target's length and hash.
    Verify(VerifyArgs),
    /// Serve a registry directory over HTTP (for demos and tests; use any web server in
    /// production).
    Serve(ServeArgs),
}

/// Arguments of `registry keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The private key file to create (refused if it exists).
    pub file: PathBuf,
}

/// Which keys sign each role, as key files (`.pub` or private `.key`).
#[derive(Debug, Args)]
pub struct RoleKeyArgs {
    #[arg(long = "root-key", value_name = "FILE")]
    pub root: Vec<PathBuf>,
    #[arg(long, value_name = "K")]
    pub root_threshold: Option<u64>,
    #[arg(long = "targets-key", value_name = "FILE")]
    pub targets: Vec<PathBuf>,
    #[arg(long, value_name = "K")]
    pub targets_threshold: Option<u64>,
    #[arg(long = "snapshot-key", value_name = "FILE")]
    pub snapshot: Vec<PathBuf>,
    #[arg(long, value_name = "K")]
    pub snapshot_threshold: Option<u64>,
    #[arg(long = "timestamp-key", value_name = "FILE")]
    pub timestamp: Vec<PathBuf>,
    #[arg(long, value_name = "K")]
    pub timestamp_threshold: Option<u64>,
}

/// Where the repository and the signing keys are.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// The registry directory (holding metadata/ and targets/).
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// Directory of private keys (`*.key`); each role is signed by the keys it names.
    #[arg(long, value_name = "DIR")]
    pub keys: PathBuf,
}

/// Arguments of `registry init` and `registry rotate-root`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub roles: RoleKeyArgs,
    /// How long root metadata stays valid (humantime: 365d, 52w).
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub root_expires: Duration,
}

/// Arguments of `registry publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The model directory (model.toml, model file, selftest.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Release channel (devices follow one, `ota.channel`).
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// Share of devices (0-100) that take this version.
    #[arg(long, default_value_t = 100)]
    pub rollout: u32,
    /// Cohort salt; default: model and version, so each version draws its own cohort.
    #[arg(long)]
    pub salt: Option<String>,
    /// Only devices in one of these groups take it.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Lowest agent version that can run it.
    #[arg(long)]
    pub min_agent: Option<String>,
    /// Probation limits for this version, as JSON of whole numbers (signed metadata has
    /// no fractions): `{"requests":200,"minutes":10,"max_latency_ratio":2}`.
    #[arg(long, value_name = "JSON")]
    pub probation: Option<String>,
    /// Devices of the cohort run this version as a shadow candidate beside their active
    /// version (compared, never served) until its verdict, instead of activating it.
    #[arg(long)]
    pub shadow: bool,
    /// Limits of the shadow run, as JSON with integer values
    /// (`{"requests":500,"min_agreement_pct":95,"max_latency_pct":200,"share_pct":100}`).
    #[arg(long, value_name = "JSON")]
    pub shadow_limits: Option<String>,
    /// Ship the ONNX model alone, without converting it to NNEF (`model.nnef.tgz`):
    /// smaller packages, but devices built without the `onnx` feature cannot load them.
    #[arg(long)]
    pub no_nnef: bool,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
    /// The devices' model memory limit: the package is refused here if its model would
    /// be refused there.
    #[command(flatten)]
    pub limits: super::model::LimitArgs,
}

/// Expiry of what a command signs.
#[derive(Debug, Args)]
pub struct ExpiryArgs {
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub targets_expires: Duration,
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub snapshot_expires: Duration,
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    pub timestamp_expires: Duration,
}

/// Arguments of `registry promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub version: String,
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// The new rollout percentage.
    #[arg(long, conflicts_with = "pull", required_unless_present = "pull")]
    pub rollout: Option<u32>,
    /// Remove the version from the registry (devices no longer take it).
    #[arg(long)]
    pub pull: bool,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
}

/// Arguments of `registry timestamp`.
#[derive(Debug, Args)]
pub struct TimestampArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    pub expires: Duration,
}

/// Arguments of `registry verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The registry directory.
    pub dir: PathBuf,
    /// The root a device trusts; default: the directory's metadata/1.root.json.
    #[arg(long, value_name = "FILE")]
    pub root: Option<PathBuf>,
    /// Print JSON (stable, for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `registry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The registry directory.
    pub dir: PathBuf,
    /// Address to listen on (loopback unless you mean otherwise).
    #[arg(long, default_value = "127.0.0.1:8471")]
    pub listen: String,
}

pub fn run(cmd: RegistryCommand) -> anyhow::Result<ExitCode> {
    super::init_logging(crate::config::LogFormat::Human, "info");
    match cmd {
        RegistryCommand::Keygen(a) => keygen(a),
        RegistryCommand::Init(a) => init(a),
        RegistryCommand::Publish(a) => publish(a),
        RegistryCommand::Promote(a) => promote(a),
        RegistryCommand::RotateRoot(a) => rotate(a),
        RegistryCommand::Timestamp(a) => timestamp(a),
        RegistryCommand::Verify(a) => verify(a),
        RegistryCommand::Serve(a) => serve(a),
    }
}

fn keygen(a: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = PrivateKey::generate()?;
    key.write_new(&a.file)?;
    let public = pub_path(&a.file);
    let text = serde_json::to_string_pretty(&key.public())?;
    std::fs::write(&public, text + "\n").with_context(|| format!("cannot write {}", public.display()))?;
    eprintln!("wrote {} (private, mode 0600) and {}", a.file.display(), public.display());
    outln!("{}", key.key_id());
    Ok(ExitCode::SUCCESS)
}

/// `key.key` → `key.key.pub`; the public half sits beside the private one.
fn pub_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// A public key from a `.pub` (TUF key JSON) or a private key file.
fn read_public(file: &Path) -> anyhow::Result<PublicKey> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read key {}", file.display()))?;
    if text.contains("PRIVATE KEY") {
        return Ok(PrivateKey::from_pem(&text).with_context(|| format!("key {}", file.display()))?.public());
    }
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is neither a private key (PEM) nor a public key (TUF key JSON from `registry keygen`)",
            file.display()
        )
    })
}

/// Every private key in `dir` (`*.key`).
fn read_signers(dir: &Path) -> anyhow::Result<Vec<PrivateKey>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the keys directory {}", dir.display()))?;
    let mut keys = Vec::new();
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "key") {
            keys.push(PrivateKey::read(&path).with_context(|| format!("key {}", path.display()))?);
        }
    }
    Ok(keys)
}

fn role_keys(files: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    files.iter().map(|f| read_public(f)).collect()
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let r = &a.roles;
    for (role, keys) in
        [("root", &r.root), ("targets", &r.targets), ("snapshot", &r.snapshot), ("timestamp", &r.timestamp)]
    {
        anyhow::ensure!(
            !keys.is_empty(),
            "give at least one --{role}-key (make one with `edge-agent registry keygen`)"
        );
    }
    let keys = RootKeys {
        root: role_keys(&r.root)?,
        root_threshold: r.root_threshold.unwrap_or(1),
        targets: role_keys(&r.targets)?,
        targets_threshold: r.targets_threshold.unwrap_or(1),
        snapshot: role_keys(&r.snapshot)?,
        snapshot_threshold: r.snapshot_threshold.unwrap_or(1),
        timestamp: role_keys(&r.timestamp)?,
        timestamp_threshold: r.timestamp_threshold.unwrap_or(1),
    };
    let signers = read_signers(&a.repo.keys)?;
    let expiries = Expiries { root: a.root_expires, ..Expiries::default() };
    let repo = Repository::init(&a.repo.repo, keys, &signers, &expiries, SystemTime::now())?;
    let v = repo.versions();
    eprintln!(
        "created registry {}: root v{}; install {} on devices as their trusted root",
        a.repo.repo.display(),
        v.root,
        a.repo.repo.join("metadata/1.root.json").display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn expiries(e: &ExpiryArgs) -> Expiries {
    Expiries {
        targets: e.targets_expires,
        snapshot: e.snapshot_expires,
        timestamp: e.timestamp_expires,
        ..Expiries::default()
    }
}

fn check_percent(p: u32) -> anyhow::Result<()> {
    anyhow::ensure!(p <= 100, "--rollout {p} is not a percentage from 0 to 100");
    Ok(())
}

fn publish(a: PublishArgs) -> anyhow::Result<ExitCode> {
    check_percent(a.rollout)?;
    anyhow::ensure!(
        crate::config::is_valid_id(&a.channel),
        "--channel `{}` may only use A-Z a-z 0-9 . _ -",
        a.channel
    );
    // Sizes first: packing reads every file of the directory into memory.
    let limits = a.limits.limits();
    edge_infer::engine::check_sizes(&edge_infer::engine::spec::ModelSpec::load_dir(&a.model)?, &limits)?;
    // A drift profile travels in the package, signed with the model: a broken one would
    // only be found on the devices.
    crate::monitor::Profile::load_dir(&a.model)?;
    if a.no_nnef {
        // An archive left from an earlier `model convert` would be packed unchecked,
        // and devices load it before the ONNX file.
        let left = super::convert::archives(&a.model)?;
        anyhow::ensure!(
            left.is_empty(),
            "{} is in the model folder and would be shipped without being checked against the ONNX model: delete it, or publish without --no-nnef (which converts again)",
            left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    } else {
        // Converted before packing, so the package carries the archive devices load. A
        // model tract cannot convert is still published, as ONNX only, and said so: the
        // ONNX model is what the self-test below checks, and a device built without
        // ONNX refuses it in its own self-test rather than serve it.
        let outcome = super::convert::convert_dir(&a.model, &limits, true)?;
        for line in super::convert::describe(&outcome) {
            eprintln!("{line}");
        }
    }
    let (bytes, spec) = package::pack(&a.model)?;
    anyhow::ensure!(
        crate::config::is_valid_id(&spec.version),
        "version `{}` in {} may only use A-Z a-z 0-9 . _ - (it names a file on devices)",
        spec.version,
        a.model.join("model.toml").display()
    );
    // The publisher's own check: a package whose golden vectors fail here would be
    // refused by every device.
    let report = crate::ota::selftest::run_here(&a.model, &limits);
    anyhow::ensure!(
        report.passed,
        "{} does not pass its own self-test ({}); fix the model or re-record selftest.json",
        a.model.display(),
        report.error.unwrap_or_default()
    );
    let probation: Option<ProbationOverride> = match &a.probation {
        Some(text) => {
            Some(serde_json::from_str(text).context("--probation is not the expected JSON object")?)
        }
        None => None,
    };
    let shadow: Option<crate::shadow::Limits> = match &a.shadow_limits {
        Some(text) => {
            let limits: crate::shadow::Limits =
                serde_json::from_str(text).context("--shadow-limits is not the expected JSON object")?;
            limits.check().map_err(|e| anyhow::anyhow!("--shadow-limits: {e}"))?;
            Some(limits)
        }
        None => None,
    };
    let custom = Custom {
        model: spec.name.clone(),
        version: spec.version.clone(),
        rollout: Rollout {
            percent: a.rollout,
            salt: a.salt.clone().unwrap_or_else(|| format!("{}-{}", spec.name, spec.version)),
            mode: if a.shadow { Mode::Shadow } else { Mode::Active },
        },
        groups: (!a.groups.is_empty()).then(|| a.groups.clone()),
        min_agent: a.min_agent.clone(),
        probation,
        shadow,
    };
    let name = format!("{}/{}/{}.tar", a.channel, spec.name, spec.version);
    let mut repo = Repository::open(&a.repo.repo)?;
    anyhow::ensure!(
        !repo.targets_list().iter().any(|(n, _)| n == &name),
        "{name} is already published; versions are immutable: bump `version` in model.toml (or `registry promote` to change its rollout)"
    );
    repo.add_target(&name, &bytes, serde_json::to_value(&custom)?)?;
    let signers = read_signers(&a.repo.keys)?;
    let v = repo.commit(&signers, SystemTime::now(), &expiries(&a.expiry))?;
    eprintln!(
        "published {name} ({} bytes, sha256 {}) at {}%: targets v{}, snapshot v{}, timestamp v{}",
        bytes.len(),
        edge_tuf::metadata::sha256_hex(&bytes),
        a.rollout,
        v.targets,
        v.snapshot,
        v.timestamp
    );
    Ok(ExitCode::SUCCESS)
}

fn promote(a: PromoteArgs) -> anyhow::Result<ExitCode> {
    let change = if a.pull { Change::Pull } else { Change::Percent(a.rollout.unwrap_or(100)) };
    let name = format!("{}/{}/{}.tar", a.channel, a.model, a.version);
    let (what, v) = change_rollout(&a.repo, &name, change, &expiries(&a.expiry))?;
    eprintln!("{name} {what}: targets v{}, snapshot v{}, timestamp v{}", v.targets, v.snapshot, v.timestamp);
    Ok(ExitCode::SUCCESS)
}

/// A change to a published version, for [`change_rollout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// A new rollout percentage.
    Percent(u32),
    /// Unlisted from the targets: devices no longer take it, and those that run it go
    /// back to their previous version.
    Pull,
}

/// The `custom` field of published target `name` (`{channel}/{model}/{version}.tar`),
/// `None` when it is not listed.
pub(crate) fn published(repo: &Path, name: &str) -> anyhow::Result<Option<Custom>> {
    let repo = Repository::open(repo)?;
    let Some((_, target)) = repo.targets_list().into_iter().find(|(n, _)| n == name) else {
        return Ok(None);
    };
    let custom = serde_json::from_value(target.custom.unwrap_or_default())
        .with_context(|| format!("{name} has no readable edge-agent custom field"))?;
    Ok(Some(custom))
}

/// Changes target `name`'s rollout (or pulls it) and re-signs targets, snapshot and
/// timestamp with the keys in `repo.keys`: `registry promote` and `fleet rollout` both
/// sign through here. Returns what was done, in words, and the new versions.
pub(crate) fn change_rollout(
    repo: &RepoArgs,
    name: &str,
    change: Change,
    expiry: &Expiries,
) -> anyhow::Result<(String, repo::Versions)> {
    let mut r = Repository::open(&repo.repo)?;
    let Some((_, target)) = r.targets_list().into_iter().find(|(n, _)| n == name) else {
        anyhow::bail!("{name} is not published in {}", repo.repo.display());
    };
    let what = match change {
        Change::Pull => {
            r.remove_target(name)?;
            "pulled".to_string()
        }
        Change::Percent(pct) => {
            check_percent(pct)?;
            let mut custom: Custom = serde_json::from_value(target.custom.unwrap_or_default())
                .with_context(|| format!("{name} has no readable edge-agent custom field"))?;
            custom.rollout.percent = pct;
            r.set_custom(name, serde_json::to_value(&custom)?)?;
            format!("now at {pct}%")
        }
    };
    let signers = read_signers(&repo.keys)?;
    let v = r.commit(&signers, SystemTime::now(), expiry)?;
    Ok((what, v))
}

fn rotate(a: InitArgs) -> anyhow::Result<ExitCode> {
    let mut repo = Repository::open(&a.repo.repo)?;
    let root = repo.root().clone();
    let current = |role: &str| -> (Vec<PublicKey>, u64) {
        let r = root.roles.get(role);
        let keys = r
            .map(|r| r.keyids.iter().filter_map(|id| root.keys.get(id).cloned()).collect())
            .unwrap_or_default();
        (keys, r.map_or(1, |r| r.threshold))
    };
    let pick =
        |files: &[PathBuf], threshold: Option<u64>, role: &str| -> anyhow::Result<(Vec<PublicKey>, u64)> {
            let (keys, t) = current(role);
            if files.is_empty() {
                Ok((keys, threshold.unwrap_or(t)))
            } else {
                Ok((role_keys(files)?, threshold.unwrap_or(1)))
            }
        };
    let r = &a.roles;
    let (root_keys, root_t) = pick(&r.root, r.root_threshold, "root")?;
    let (targets, targets_t) = pick(&r.targets, r.targets_threshold, "targets")?;
    let (snapshot, snapshot_t) = pick(&r.snapshot, r.snapshot_threshold, "snapshot")?;
    let (timestamp, timestamp_t) = pick(&r.timestamp, r.timestamp_threshold, "timestamp")?;
    let keys = RootKeys {
        root: root_keys,
        root_threshold: root_t,
        targets,
        targets_threshold: targets_t,
        snapshot,
        snapshot_threshold: snapshot_t,
        timestamp,
        timestamp_threshold: timestamp_t,
    };
    let signers = read_signers(&a.repo.keys)?;
    let v = repo.rotate_root(keys, &signers, SystemTime::now(), a.root_expires)?;
    eprintln!(
        "root v{} signed by the old and the new root keys; targets v{}, snapshot v{}, timestamp v{}",
        v.root, v.targets, v.snapshot, v.timestamp
    );
    Ok(ExitCode::SUCCESS)
}

fn timestamp(a: TimestampArgs) -> anyhow::Result<ExitCode> {
    let mut repo = Repository::open(&a.repo.repo)?;
    let signers = read_signers(&a.repo.keys)?;
    let v = repo.refresh_timestamp(&signers, SystemTime::now(), a.expires)?;
    eprintln!("timestamp v{} valid for {}", v.timestamp, humantime::format_duration(a.expires));
    Ok(ExitCode::SUCCESS)
}

fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let root_file = a.root.clone().unwrap_or_else(|| a.dir.join("metadata/1.root.json"));
    let root = std::fs::read(&root_file)
        .with_context(|| format!("cannot read the trusted root {}", root_file.display()))?;
    let report = repo::verify(&a.dir, &root, SystemTime::now())?;
    if a.json {
        let roles: Vec<_> = report
            .roles
            .iter()
            .map(|r| json!({"role": r.role, "version": r.version, "expires": r.expires}))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": report.is_ok(),
                "roles": roles,
                "targets": report.target_count,
                "problems": report.problems,
            }))?
        );
    } else {
        for r in &report.roles {
            outln!("{:<12} v{:<5} expires {}", r.role, r.version, r.expires);
        }
        outln!("{} target(s)", report.target_count);
        for p in &report.problems {
            outln!("PROBLEM: {p}");
        }
        outln!("{}", if report.is_ok() { "OK" } else { "FAILED" });
    }
    Ok(if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(super::EXIT_FAILED) })
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.dir.join("metadata").is_dir(),
        "{} has no metadata/: not a registry (make one with `registry init`)",
        a.dir.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        eprintln!("serving {} on http://{addr}/ (Ctrl-C or SIGTERM stops)", a.dir.display());
        // Scripts read the address from stdout (useful with port 0).
        outln!("http://{addr}/");
        let opts =
            crate::ota::serve::ServeOptions { dir: a.dir.clone(), faults: crate::ota::serve::Faults::none() };
        // Ctrl-C or SIGTERM (a service manager, `kill`) stops it.
        let stop = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        crate::ota::serve::serve(listener, opts, stop).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
