//! `diagnostics/bundle {url, since?, until?, level?}`: the agent's recent log lines and
//! what a support case needs (the configuration with secrets redacted, `status`, the
//! checks of `doctor`, the spool summary, the model update state, the versions) packed
//! as one tar.gz ([`crate::diagnostics::bundle`]) and uploaded to `url` by `PUT`,
//! resuming across lost connections, with `running` replies and the archive's size and
//! SHA-256 at the end. `logs/upload` is the same with the log alone.
//!
//! The archive is written to `<state_dir>/uploads/` first, within `log.upload_max_mb`
//! (past it the command fails saying so), and removed when the command ends.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use super::args::Args;
use super::{Context, Outcome, Progress};
use crate::diagnostics::bundle::{self, Contents};
use crate::logs::read::{self, Filter};
use crate::upload::{self, Uploader};

/// Arguments of `diagnostics/bundle` (`BUNDLE = true`) and `logs/upload` (`false`):
/// the same keys, two command names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveArgs<const BUNDLE: bool> {
    /// Where to `PUT` the archive: an http(s) URL, typically pre-signed by an object store.
    #[serde(default)]
    pub url: Option<String>,
    /// Log lines from: an RFC 3339 time or a span back from now (`2h`); all by default.
    #[serde(default)]
    pub since: Option<String>,
    /// Log lines until: the same forms; now by default.
    #[serde(default)]
    pub until: Option<String>,
    /// Log lines at this level and more severe: error, warn, info, debug, trace.
    #[serde(default)]
    pub level: Option<String>,
}

/// Arguments of `diagnostics/bundle`.
pub type DiagnosticsBundleArgs = ArchiveArgs<true>;

impl Args for DiagnosticsBundleArgs {
    const COMMAND: &'static str = "diagnostics/bundle";
}

/// An archive upload that can start: arguments read, client built.
pub struct Checked {
    /// A whole bundle, or the log alone (`logs/upload`).
    bundle: bool,
    url: Url,
    filter: Filter,
    /// The arguments as given, for the manifest.
    selection: Value,
    uploader: Uploader,
}

/// The log selection of `since`, `until` and `level`, checked.
pub fn selection(
    since: Option<&str>,
    until: Option<&str>,
    level: Option<&str>,
) -> Result<(Filter, Value), String> {
    let now = SystemTime::now();
    let time = |key: &str, v: Option<&str>| {
        v.map(|t| read::parse_time(t, now).map_err(|e| format!("`args.{key}`: {e}"))).transpose()
    };
    let filter = Filter {
        since_ms: time("since", since)?,
        until_ms: time("until", until)?,
        level: level.map(|l| read::parse_level(l).map_err(|e| format!("`args.level`: {e}"))).transpose()?,
    };
    if let (Some(s), Some(u)) = (filter.since_ms, filter.until_ms)
        && s > u
    {
        return Err("`args.since` is after `args.until`: nothing would be selected".into());
    }
    Ok((filter, json!({"since": since, "until": until, "level": level})))
}

/// Checks the arguments of `logs/upload` or `diagnostics/bundle`.
pub fn check<const BUNDLE: bool>(args: ArchiveArgs<BUNDLE>, ca_file: Option<&Path>) -> Result<Checked, String>
where
    ArchiveArgs<BUNDLE>: Args,
{
    let Some(text) = args.url else {
        return Err(format!(
            "{} needs `args.url`, an http(s) URL to PUT the archive to",
            ArchiveArgs::<BUNDLE>::COMMAND
        ));
    };
    let url = upload::parse_url(&text).map_err(|e| format!("`args.url`: {e}"))?;
    let (filter, selection) = selection(args.since.as_deref(), args.until.as_deref(), args.level.as_deref())?;
    let uploader = Uploader::new(&url, ca_file, upload::Limits::default()).map_err(|e| e.to_string())?;
    Ok(Checked { bundle: BUNDLE, url, filter, selection, uploader })
}

/// Checks the arguments.
pub fn prepare(args: DiagnosticsBundleArgs, ctx: &Context) -> Result<Checked, String> {
    check(args, ctx.capture.ca_file.as_deref())
}

/// What making and sending an archive needs of the running agent: the same for the MQTT
/// commands and the local API.
pub struct Setup<'a> {
    pub config_file: &'a Path,
    pub state_dir: &'a Path,
    pub upload_max_mb: u64,
    pub status: &'a (dyn Fn() -> crate::service::status::Status + Send + Sync),
}

/// One archive at a time, whoever asks (MQTT commands run one at a time, the API's
/// requests do not): each run clears the leftovers of crashed ones.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The files of a bundle besides the log, gathered from the running agent.
async fn gather(setup: &Setup<'_>) -> Vec<(String, Vec<u8>)> {
    let status = serde_json::to_value((setup.status)()).map_err(|e| e.to_string());
    let file = setup.config_file.to_path_buf();
    // The checks load every model again and probe the network: blocking work.
    let doctor = match tokio::task::spawn_blocking(move || crate::diagnostics::run(&file)).await {
        Ok(report) => serde_json::to_value(report).unwrap_or(Value::Null),
        Err(e) => json!({"error": format!("the checks stopped: {e}")}),
    };
    bundle::files(setup.config_file, setup.state_dir, status, doctor)
}

/// Packs, uploads, reports (through `progress`).
pub async fn run(checked: Checked, ctx: &Context, progress: &Progress<'_>) -> Outcome {
    progress.report(0.0).await;
    let setup = Setup {
        config_file: &ctx.config_file,
        state_dir: &ctx.state_dir,
        upload_max_mb: ctx.log.upload_max_mb,
        status: &*ctx.status,
    };
    match send(checked, &setup, progress.id(), Some(progress)).await {
        Ok(result) => Outcome::Succeeded(result),
        Err(e) => Outcome::Failed(e),
    }
}

/// Packs the archive (named after `id`), uploads it with `running` replies to
/// `progress` if any, and returns the result.
pub async fn send(
    checked: Checked,
    setup: &Setup<'_>,
    id: &str,
    progress: Option<&Progress<'_>>,
) -> Result<Value, String> {
    let _one = ONE_AT_A_TIME.lock().await;
    let Checked { bundle, url, filter, selection, uploader } = checked;
    let kind = if bundle { "diagnostics" } else { "logs" };
    let work = setup.state_dir.join("uploads");
    clear_leftovers(&work);
    let archive: PathBuf = work.join(format!("{kind}-{id}.tar.gz"));
    let files = if bundle { gather(setup).await } else { Vec::new() };
    let device = (setup.status)().device;
    let mut manifest = bundle::manifest(kind, &device, selection);
    manifest.insert("log_lines_dropped_since_start".into(), json!(crate::logs::dropped()));
    // Under systemd the journal has every line, the ones from before the own log too.
    let journal = crate::logs::journal::in_use().then(crate::logs::journal::unit);
    let contents = Contents { logs: crate::logs::dir(setup.state_dir), filter, journal, files, manifest };
    let limit = setup.upload_max_mb.saturating_mul(1024 * 1024);
    let path = archive.clone();
    let packed = match tokio::task::spawn_blocking(move || bundle::pack(&path, &contents, limit)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => {
            let _ = std::fs::remove_file(&archive);
            return Err(format!("packing the archive stopped: {e}"));
        }
    };
    let shown = upload::redacted(&url);
    tracing::info!(url = %shown, bytes = packed.bytes, lines = packed.log_lines, kind, "uploading a diagnostics archive");
    let result =
        super::samples_upload::put_with_progress(&uploader, &url, &archive, packed.bytes, progress).await;
    let _ = std::fs::remove_file(&archive);
    let done = result.map_err(|e| e.to_string())?;
    Ok(json!({
        "url": shown,
        "bytes": packed.bytes,
        "sha256": packed.sha256,
        "log_lines": packed.log_lines,
        "files": packed.names,
        "resumed": done.resumed,
    }))
}

/// Commands run one at a time, so an archive already here is a crashed run's leftover.
fn clear_leftovers(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("logs-") || name.starts_with("diagnostics-")) && name.contains(".tar.gz") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
