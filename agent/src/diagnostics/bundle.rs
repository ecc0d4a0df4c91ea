//! The archives of `logs/upload` and `diagnostics/bundle`: one gzip-compressed tar
//! holding the agent's recent log lines (time range and level filtered) and, for a
//! bundle, the configuration with its secrets redacted, the status, the checks of
//! `doctor`, the spool summary, the model update state and the versions.
//!
//! The archive is written whole to a file first, within a size limit, so that its size
//! and SHA-256 are known before the first byte is uploaded and a resumed upload sends
//! the same bytes.
//!
//! Redaction: in the configuration, a value whose key names a secret (contains
//! `password`, `token`, `secret` or `credential`, or is `key` or ends in `_key`) is
//! replaced by [`REDACTED`]; a key ending in `_file` or `_path` keeps its path (the file
//! itself is never read into the archive); a URL anywhere loses its user name, password
//! and query. A configuration that cannot be read as TOML is left out rather than
//! copied.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::logs::read::{self, Filter};
use crate::upload::Hashing;

/// What replaces a secret.
pub const REDACTED: &str = "(redacted)";

/// The log's name in an archive.
pub const LOG_NAME: &str = "logs/agent.jsonl";

/// Why an archive could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(
        "the archive would be larger than {limit} bytes (log.upload_max_mb); narrow it with `since`, `until` or `level`, or raise log.upload_max_mb"
    )]
    TooLarge { limit: u64 },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read the log in {dir}: {source}")]
    Read { dir: PathBuf, source: std::io::Error },
}

/// A written archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub bytes: u64,
    pub sha256: String,
    pub log_lines: u64,
    /// The names in the archive, in order.
    pub names: Vec<String>,
}

/// What goes into an archive besides the log.
pub struct Contents {
    /// The own log's directory, and which of its lines.
    pub logs: PathBuf,
    pub filter: Filter,
    /// Under systemd, the unit whose journal is the log source instead (the own log
    /// when journalctl cannot be run).
    pub journal: Option<String>,
    /// Other files: name in the archive, bytes.
    pub files: Vec<(String, Vec<u8>)>,
    /// `manifest.json`'s fields; `log_lines` and `files` are added.
    pub manifest: Map<String, Value>,
}

/// Writes the archive to `archive` (at most `limit` bytes; a partial one is removed).
pub fn pack(archive: &Path, contents: &Contents, limit: u64) -> Result<Packed, PackError> {
    let result = write_archive(archive, contents, limit);
    let _ = std::fs::remove_file(staged_log(archive));
    if result.is_err() {
        let _ = std::fs::remove_file(archive);
    }
    result
}

fn staged_log(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

fn write_archive(archive: &Path, contents: &Contents, limit: u64) -> Result<Packed, PackError> {
    let write_error = |source| PackError::Write { path: archive.to_path_buf(), source };
    if let Some(dir) = archive.parent() {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    // The log lines are staged in a file first: a tar entry needs its size up front,
    // and the active log file grows while it is read.
    let staged = staged_log(archive);
    let (copied, source) = stage_log(contents, &staged, limit)?;
    let mut names: Vec<String> = vec![LOG_NAME.to_string()];
    names.extend(contents.files.iter().map(|(n, _)| n.clone()));
    names.push("manifest.json".into());
    let mut manifest = contents.manifest.clone();
    manifest.insert("log_source".into(), json!(source));
    manifest.insert("log_lines".into(), json!(copied.lines));
    manifest.insert("files".into(), json!(names));
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap_or_default();

    let file = std::fs::File::create(archive).map_err(write_error)?;
    let hashing = Hashing::new(std::io::BufWriter::new(file), limit);
    let gz = flate2::write::GzEncoder::new(hashing, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let too_large = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            PackError::TooLarge { limit }
        } else {
            write_error(e)
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let header = |size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(now);
        h
    };
    let log =
        std::fs::File::open(&staged).map_err(|source| PackError::Write { path: staged.clone(), source })?;
    tar.append_data(&mut header(copied.bytes), LOG_NAME, log).map_err(too_large)?;
    for (name, bytes) in &contents.files {
        tar.append_data(&mut header(bytes.len() as u64), name, &bytes[..]).map_err(too_large)?;
    }
    tar.append_data(&mut header(manifest.len() as u64), "manifest.json", &manifest[..]).map_err(too_large)?;
    let gz = tar.into_inner().map_err(too_large)?;
    let mut hashing = gz.finish().map_err(too_large)?;
    hashing.flush().map_err(too_large)?;
    let bytes = hashing.bytes;
    let (out, sha256) = hashing.finish();
    out.get_ref().sync_all().map_err(write_error)?;
    Ok(Packed { bytes, sha256, log_lines: copied.lines, names })
}

/// How many times the archive's limit the selected log lines may be before packing:
/// logs compress about tenfold, and the staged copy must not fill the disk (a journal
/// asked for without `since` can be large).
pub const STAGED_FACTOR: u64 = 16;

/// A writer that refuses to go past `left` bytes ([`std::io::ErrorKind::FileTooLarge`]).
struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "the selected log lines are too many",
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the selected log lines to `staged` (at most [`STAGED_FACTOR`] times `limit`):
/// from the journal when asked and it can be read, else from the own log. Returns what
/// was copied and a word on where from.
fn stage_log(contents: &Contents, staged: &Path, limit: u64) -> Result<(read::Copied, String), PackError> {
    use crate::logs::journal::{self, JournalError};
    let too_large = PackError::TooLarge { limit };
    let create = || {
        std::fs::File::create(staged)
            .map(|f| Capped { inner: std::io::BufWriter::new(f), left: limit.saturating_mul(STAGED_FACTOR) })
            .map_err(|source| PackError::Write { path: staged.to_path_buf(), source })
    };
    let mut fell_back = None;
    if let Some(unit) = &contents.journal {
        let mut out = create()?;
        let result = journal::copy(unit, &contents.filter, &mut out).and_then(|c| {
            out.flush().map_err(JournalError::Write)?;
            Ok(c)
        });
        match result {
            Ok(copied) => return Ok((copied, format!("journal of {unit}"))),
            Err(JournalError::Write(e)) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(too_large);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the journal could not be read; the archive takes the agent's own log");
                fell_back = Some(e.to_string());
            }
        }
    }
    let mut out = create()?;
    let copied = read::copy(&contents.logs, &contents.filter, &mut out).and_then(|c| out.flush().map(|()| c));
    let copied = match copied {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => return Err(too_large),
        Err(source) => return Err(PackError::Read { dir: contents.logs.clone(), source }),
    };
    let source = match fell_back {
        Some(why) => format!("{} (the journal could not be read: {why})", contents.logs.display()),
        None => contents.logs.display().to_string(),
    };
    Ok((copied, source))
}

/// The configuration file's text with its secrets redacted (see the module's rule), or
/// why it was left out.
pub fn redact_config(text: &str) -> Result<String, String> {
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|_| "the configuration file could not be read as TOML; left out".to_string())?;
    redact_table(&mut table);
    let body = toml::to_string(&table).map_err(|e| format!("the configuration could not be written: {e}"))?;
    Ok(format!(
        "# The agent's configuration file, secrets replaced by \"{REDACTED}\" (docs/diagnostics.md).\n{body}"
    ))
}

/// Whether a key names a secret value.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.ends_with("_file") || k.ends_with("_path") || k.ends_with("_dir") {
        return false;
    }
    ["password", "passwd", "token", "secret", "credential"].iter().any(|s| k.contains(s))
        || k == "key"
        || k.ends_with("_key")
}

fn redact_table(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        if is_secret(key) {
            *value = toml::Value::String(REDACTED.into());
        } else {
            redact_value(value);
        }
    }
}

fn redact_value(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => redact_table(t),
        toml::Value::Array(a) => a.iter_mut().for_each(redact_value),
        toml::Value::String(s) => {
            if let Some(clean) = without_credentials(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// A URL without its user name, password and query, if it had any.
fn without_credentials(text: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(text).ok()?;
    if url.username().is_empty() && url.password().is_none() && url.query().is_none() {
        return None;
    }
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    Some(url.to_string())
}

/// The files of a bundle besides the log: the configuration file (redacted) and the
/// runtime overlay, `status` (or why there is none), the `doctor` report, the spool
/// summary and the model update state (parts of the status), the versions.
pub fn files(
    config_file: &Path,
    state_dir: &Path,
    status: Result<Value, String>,
    doctor: Value,
) -> Vec<(String, Vec<u8>)> {
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut files = Vec::new();
    match std::fs::read_to_string(config_file) {
        Ok(text) => match redact_config(&text) {
            Ok(redacted) => files.push(("config.toml".to_string(), redacted.into_bytes())),
            Err(why) => files.push(("config.toml.missing".to_string(), why.into_bytes())),
        },
        Err(e) => {
            files.push(("config.toml.missing".to_string(), format!("cannot read it: {e}").into_bytes()))
        }
    }
    let overlay = crate::config::runtime::overlay_path(state_dir);
    if let Ok(text) = std::fs::read_to_string(&overlay) {
        // Only runtime keys (levels, intervals) go there, never secrets; redacted anyway.
        let text = redact_config(&text).unwrap_or_default();
        files.push(("runtime.toml".to_string(), text.into_bytes()));
    }
    let status = status.unwrap_or_else(|why| json!({"error": why}));
    files.push(("status.json".to_string(), pretty(&status)));
    files.push(("doctor.json".to_string(), pretty(&doctor)));
    files.push(("spool.json".to_string(), pretty(&status["mqtt"])));
    files.push(("ota.json".to_string(), pretty(&status["ota"])));
    let models: Map<String, Value> = status["models"]
        .as_object()
        .map(|m| m.iter().map(|(name, s)| (name.clone(), s["version"].clone())).collect())
        .unwrap_or_default();
    files.push(("versions.json".to_string(), pretty(&versions(&models))));
    files
}

/// The manifest's first fields: what the archive is, when, of which device, which log
/// lines were asked for.
pub fn manifest(kind: &str, device: &str, selection: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("kind".into(), json!(kind));
    m.insert(
        "created".into(),
        json!(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()),
    );
    m.insert("device".into(), json!(device));
    m.insert("selection".into(), selection);
    m
}

/// The versions of what runs: the agent, the models, the system.
pub fn versions(models: &Map<String, Value>) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|t| t.trim().to_string());
    let os = read("/etc/os-release").and_then(|t| {
        t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string())
    });
    json!({
        "agent": env!("CARGO_PKG_VERSION"),
        "arch": std::env::consts::ARCH,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "os": os,
        "models": models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secrets_are_replaced_and_paths_and_other_values_kept() {
        let text = r#"
[agent]
device_id = "dev1"
[mqtt]
url = "mqtts://user:hunter2@127.0.0.1:8883/?sig=abc"
password = "hunter2"
password_file = "/etc/edge/pw"
[fallback]
token_file = "/etc/edge/token"
api_key = "k-123"
[[fallback.endpoint]]
bearer_token = "t-456"
"#;
        let out = redact_config(text).unwrap();
        for secret in ["hunter2", "k-123", "t-456", "abc", "user"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(
            out.contains("/etc/edge/pw") && out.contains("/etc/edge/token") && out.contains("dev1"),
            "{out}"
        );
        assert!(out.contains("127.0.0.1:8883"), "{out}");
        assert!(redact_config("not = [toml").unwrap_err().contains("left out"));
    }

    #[test]
    fn a_selection_past_the_staging_bound_is_refused_as_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("log");
        std::fs::create_dir_all(&logs).unwrap();
        let line = "{\"timestamp\":\"2026-12-07T10:00:00Z\",\"level\":\"INFO\",\"message\":\"m\"}\n";
        std::fs::write(logs.join(crate::logs::ACTIVE), line.repeat(1000)).unwrap();
        let contents = Contents {
            logs,
            filter: Filter::default(),
            journal: None,
            files: Vec::new(),
            manifest: Map::new(),
        };
        let archive = dir.path().join("a.tar.gz");
        // Under 1/16 of the log's size: refused while staging, nothing left behind.
        let small = (line.len() as u64 * 1000) / STAGED_FACTOR / 2;
        assert!(matches!(pack(&archive, &contents, small), Err(PackError::TooLarge { .. })));
        assert!(!archive.exists() && !staged_log(&archive).exists());
        let packed = pack(&archive, &contents, 1 << 20).unwrap();
        assert_eq!(packed.log_lines, 1000);
        assert_eq!(packed.bytes, std::fs::metadata(&archive).unwrap().len());
    }

    proptest! {
        /// A secret under any secret-named key, at any depth, or in a URL's user info
        /// or query, never survives; a config that is not TOML never panics.
        #[test]
        fn no_secret_survives(
            secret in "[A-Za-z0-9]{12,24}",
            key in prop::sample::select(vec!["password", "token", "api_key", "client_secret", "key", "Password"]),
            table in "[a-z]{1,8}",
            junk in ".{0,100}",
        ) {
            let text = format!(
                "[{table}]\n{key} = \"{secret}\"\nurl = \"https://u:{secret}@127.0.0.1/x?q={secret}\"\n[{table}.inner]\n{key} = [\"{secret}\"]\n"
            );
            let out = redact_config(&text).unwrap();
            prop_assert!(!out.contains(&secret), "{}", out);
            let _ = redact_config(&junk);
        }
    }
}
