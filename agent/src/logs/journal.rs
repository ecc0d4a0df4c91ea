//! The journal as the log source when the agent runs under systemd: `journalctl -u UNIT
//! -o json` for the time range, each entry turned into a line of the own log's shape
//! (`timestamp`, `level`, `message`, ...) so that the level filter and the archive are
//! the same whichever source they come from.
//!
//! journalctl's output is outside input: an entry that cannot be read is skipped, never
//! an error; a `MESSAGE` that is itself one of the agent's JSON lines (`log.format =
//! "json"`) is kept as it is, and a text one gets its level from the text
//! (`... INFO ...`), else from the entry's `PRIORITY`.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

use serde_json::{Map, Value, json};

use super::read::{Copied, Filter};

/// Whether the agent's standard error goes to the journal (systemd sets
/// `JOURNAL_STREAM` for a service whose output it collects).
pub fn in_use() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() && std::env::var_os("INVOCATION_ID").is_some()
}

/// The systemd unit this process runs in (from its cgroup), else `edge-agent.service`.
pub fn unit() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| unit_of_cgroup(&t))
        .unwrap_or_else(|| "edge-agent.service".to_string())
}

/// The `.service` a cgroup line names (`0::/system.slice/edge-agent.service`).
pub fn unit_of_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.rsplit('/').next())
        .find(|name| name.ends_with(".service") && name.len() > ".service".len())
        .map(str::to_string)
}

/// Why the journal could not be read (the caller falls back to the own log).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot run journalctl: {0}")]
    Spawn(std::io::Error),
    #[error("journalctl failed ({status}): {stderr}")]
    Failed { status: std::process::ExitStatus, stderr: String },
    #[error("writing the journal's lines: {0}")]
    Write(std::io::Error),
}

/// Copies the journal's entries of `unit` that pass `filter` to `out`, as own-log lines.
pub fn copy(unit: &str, filter: &Filter, out: &mut dyn Write) -> Result<Copied, JournalError> {
    let mut cmd = Command::new("journalctl");
    cmd.args(["-u", unit, "-o", "json", "--no-pager", "-q"]);
    if let Some(s) = filter.since_ms {
        cmd.arg(format!("--since=@{}", s / 1000));
    }
    if let Some(u) = filter.until_ms {
        cmd.arg(format!("--until=@{}", u.div_ceil(1000)));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(JournalError::Spawn)?;
    let mut copied = Copied::default();
    let mut failed = None;
    if let Some(stdout) = child.stdout.take() {
        let mut reader = std::io::BufReader::new(stdout);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failed = Some(JournalError::Write(e));
                    break;
                }
            }
            let Some(line) = entry_line(&String::from_utf8_lossy(&raw)) else { continue };
            if !filter.keeps(&line) {
                continue;
            }
            if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n")) {
                failed = Some(JournalError::Write(e));
                break;
            }
            copied.lines += 1;
            copied.bytes += line.len() as u64 + 1;
        }
    }
    if let Some(e) = failed {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let output = child.wait_with_output().map_err(JournalError::Spawn)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(JournalError::Failed {
            status: output.status,
            stderr: crate::mqtt::excerpt(stderr.trim(), 300),
        });
    }
    Ok(copied)
}

/// One journal entry (a JSON object of `journalctl -o json`) as an own-log line.
pub fn entry_line(entry: &str) -> Option<String> {
    let fields: Map<String, Value> = serde_json::from_str(entry.trim()).ok()?;
    let message = match fields.get("MESSAGE")? {
        Value::String(s) => s.clone(),
        // journalctl writes a message that is not valid UTF-8 as an array of bytes.
        Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => return None,
    };
    if super::read::parse_line(&message).is_some() {
        return Some(message);
    }
    let micros: u64 = fields.get("__REALTIME_TIMESTAMP")?.as_str()?.parse().ok()?;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
    let level = level_in_text(&message).or_else(|| {
        let priority: u8 = fields.get("PRIORITY")?.as_str()?.parse().ok()?;
        Some(match priority {
            0..=3 => "ERROR",
            4 => "WARN",
            5 | 6 => "INFO",
            _ => "DEBUG",
        })
    })?;
    Some(
        json!({
            "timestamp": humantime::format_rfc3339_micros(time).to_string(),
            "level": level,
            "message": message,
            "source": "journal",
        })
        .to_string(),
    )
}

/// The level word of a human-format line (`2026-12-07T10:00:00Z  WARN edge_agent: ...`).
fn level_in_text(text: &str) -> Option<&'static str> {
    let head: String = text.chars().take(64).collect();
    ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].into_iter().find(|l| head.split_whitespace().any(|w| w == *l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entries_become_own_log_lines() {
        let own =
            r#"{"timestamp":"2026-12-07T10:00:00.5Z","level":"WARN","message":"x","target":"edge_agent"}"#;
        let entry = json!({"MESSAGE": own, "__REALTIME_TIMESTAMP": "1", "PRIORITY": "6"}).to_string();
        assert_eq!(entry_line(&entry).as_deref(), Some(own));
        let text = json!({"MESSAGE": "2026-12-07T10:00:00Z ERROR edge_agent: broke", "__REALTIME_TIMESTAMP": "1765101600000000", "PRIORITY": "6"});
        let line = entry_line(&text.to_string()).unwrap();
        assert_eq!(super::super::read::parse_line(&line), Some((1_765_101_600_000, tracing::Level::ERROR)));
        let bytes = json!({"MESSAGE": [104, 105, 255], "__REALTIME_TIMESTAMP": "1000", "PRIORITY": "4"});
        let line = entry_line(&bytes.to_string()).unwrap();
        assert!(line.contains("\"level\":\"WARN\"") && line.contains("hi"), "{line}");
        assert_eq!(entry_line("{\"PRIORITY\": \"3\"}"), None, "no message");
        assert_eq!(
            unit_of_cgroup("0::/system.slice/edge-agent.service\n"),
            Some("edge-agent.service".into())
        );
        assert_eq!(unit_of_cgroup("0::/\n"), None);
    }

    proptest! {
        /// Any journal output, JSON or not, is read without a panic; an entry with a
        /// text message and a time comes back at that time.
        #[test]
        fn any_entry_is_read_without_panic(junk in ".{0,300}", msg in "[a-z ]{0,40}", micros in 0u64..4_000_000_000_000_000, p in 0u8..8) {
            let _ = entry_line(&junk);
            let _ = unit_of_cgroup(&junk);
            let entry = json!({"MESSAGE": msg, "__REALTIME_TIMESTAMP": micros.to_string(), "PRIORITY": p.to_string()});
            let line = entry_line(&entry.to_string()).unwrap();
            let (ms, _) = super::super::read::parse_line(&line).unwrap();
            prop_assert_eq!(ms, micros / 1000);
        }
    }
}
