//! Reading the own log back with a time range and a level filter.
//!
//! Each line is a JSON object as the log's fmt layer writes it (`timestamp` in RFC 3339,
//! `level` such as `INFO`). The files are outside input (they may be cut by a crash or
//! edited by hand): a line that cannot be read is kept when no filter asks about it and
//! left out when one does, never an error.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which lines to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    /// Milliseconds since the Unix epoch, inclusive.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// This level and the more severe ones (`warn` keeps warnings and errors).
    pub level: Option<tracing::Level>,
}

impl Filter {
    fn is_open(&self) -> bool {
        self.since_ms.is_none() && self.until_ms.is_none() && self.level.is_none()
    }

    /// Whether `line` passes.
    pub fn keeps(&self, line: &str) -> bool {
        if self.is_open() {
            return true;
        }
        let Some((time_ms, level)) = parse_line(line) else { return false };
        self.since_ms.is_none_or(|s| time_ms >= s)
            && self.until_ms.is_none_or(|u| time_ms <= u)
            && self.level.is_none_or(|l| level <= l)
    }
}

/// A line's time (ms since the epoch) and level, if it has both.
pub fn parse_line(line: &str) -> Option<(u64, tracing::Level)> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        timestamp: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        level: std::borrow::Cow<'a, str>,
    }
    let head: Head = serde_json::from_str(line).ok()?;
    let time = humantime::parse_rfc3339_weak(&head.timestamp).ok()?;
    let ms = time.duration_since(UNIX_EPOCH).ok()?.as_millis();
    let level = head.level.parse().ok()?;
    Some((u64::try_from(ms).ok()?, level))
}

/// Reads a level argument: error, warn, info, debug or trace.
pub fn parse_level(text: &str) -> Result<tracing::Level, String> {
    match text.to_ascii_lowercase().as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => Ok(text.parse().map_err(|_| String::new())?),
        _ => Err(format!(
            "`{}` is not a level; use error, warn, info, debug or trace",
            crate::mqtt::excerpt(text, 32)
        )),
    }
}

/// Reads a time argument: an RFC 3339 time (`2026-12-07T10:00:00Z`) or a span back from
/// `now` (`90m`, `2h`, `1d`). Milliseconds since the epoch.
pub fn parse_time(text: &str, now: SystemTime) -> Result<u64, String> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(t) => t,
        Err(_) => match humantime::parse_duration(text) {
            Ok(back) => now.checked_sub(back).unwrap_or(UNIX_EPOCH),
            Err(_) => {
                return Err(format!(
                    "`{}` is neither an RFC 3339 time (2026-12-07T10:00:00Z) nor a span back from now (90m, 2h, 1d)",
                    crate::mqtt::excerpt(text, 64)
                ));
            }
        },
    };
    Ok(at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis().min(u128::from(u64::MAX)) as u64)
}

/// What [`copy`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub lines: u64,
    pub bytes: u64,
}

/// Copies the lines of the log in `dir` (oldest first, the active file last) that pass
/// `filter` to `out`. A line with invalid UTF-8 is read lossily.
pub fn copy(dir: &Path, filter: &Filter, out: &mut dyn Write) -> std::io::Result<Copied> {
    let mut copied = Copied::default();
    let mut line = Vec::new();
    for path in super::files(dir) {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Rotated away between listing and opening: its lines are in the next file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut reader = std::io::BufReader::new(file);
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() || !filter.keeps(text) {
                continue;
            }
            out.write_all(text.as_bytes())?;
            out.write_all(b"\n")?;
            copied.lines += 1;
            copied.bytes += text.len() as u64 + 1;
        }
    }
    Ok(copied)
}
