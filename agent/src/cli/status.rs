//! `edge-agent status`: asks the running daemon over its unix socket.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::config::{Config, Overrides};
use crate::service::status::Status;

/// Exit code: the daemon is not running (nothing answers on its socket).
pub const EXIT_NOT_RUNNING: u8 = 3;

/// Where the daemon's socket is under systemd (RuntimeDirectory=edge-agent).
pub const DEFAULT_SOCKET: &str = "/run/edge-agent/api.sock";

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's unix socket (default: from --config, else /run/edge-agent/api.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The daemon's configuration file, to find its socket.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the daemon's status document (JSON, stable, for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Why the daemon gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    /// Nothing accepted the connection: no daemon listens on this socket.
    #[error("edge-agent is not running: nothing answers on {} ({source})", socket.display())]
    NotRunning { socket: PathBuf, source: std::io::Error },
    /// The daemon accepted the connection, then it broke before a whole answer came:
    /// the daemon stopped or dropped the request. What was asked may or may not have
    /// been done, so this is not "not running".
    #[error(
        "the agent on {} took the request but the connection broke before its answer ({source}); \
         check whether it stopped or restarted (edge-agent status, journalctl -u edge-agent)",
        socket.display()
    )]
    Broken { socket: PathBuf, source: std::io::Error },
}

impl NoAnswer {
    /// Says why on stderr and returns the exit code for it.
    pub fn report(&self) -> ExitCode {
        eprintln!("{self}");
        self.exit_code()
    }

    /// The exit code for a command that got no answer.
    fn exit_code(&self) -> ExitCode {
        match self {
            NoAnswer::NotRunning { .. } => ExitCode::from(EXIT_NOT_RUNNING),
            NoAnswer::Broken { .. } => ExitCode::from(super::EXIT_FAILED),
        }
    }
}

fn connect(socket: &Path) -> Result<UnixStream, NoAnswer> {
    UnixStream::connect(socket)
        .map_err(|source| NoAnswer::NotRunning { socket: socket.to_path_buf(), source })
}

fn broken(socket: &Path) -> impl FnOnce(std::io::Error) -> NoAnswer + '_ {
    move |source| NoAnswer::Broken { socket: socket.to_path_buf(), source }
}

/// One GET over a unix socket; returns (status code, body).
pub fn get(socket: &Path, path: &str) -> Result<(u16, String), NoAnswer> {
    let s = connect(socket)?;
    let exchange = || {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        request(&s, path)
    };
    exchange().map_err(broken(socket))
}

/// One POST with a JSON body over a unix socket, waiting up to `wait` for the answer;
/// returns (status code, body).
pub fn post(socket: &Path, path: &str, body: &str, wait: Duration) -> Result<(u16, String), NoAnswer> {
    let mut s = connect(socket)?;
    let mut exchange = || {
        s.set_read_timeout(Some(wait))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        // Head and body in one write, so that the daemon reads them together.
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes())?;
        read_answer(&s)
    };
    exchange().map_err(broken(socket))
}

/// One GET over a connected stream (timeouts set by the caller); returns (status code,
/// body).
pub fn request(mut s: impl Read + Write, path: &str) -> std::io::Result<(u16, String)> {
    // HTTP/1.0: the answer ends when the connection closes; no chunked decoding needed.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    read_answer(s)
}

/// Reads the answer until the connection closes, or until its `Content-Length` is in:
/// an answer that arrived whole counts even if the connection is then reset (a unix
/// socket closed with unread bytes resets its peer, which would otherwise turn a
/// complete answer into "the connection broke").
fn read_answer(mut s: impl Read) -> std::io::Result<(u16, String)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if complete(&raw) => {
                tracing::debug!(error = %e, "the connection ended after a whole answer");
                break;
            }
            Err(e) => return Err(e),
        }
        if complete(&raw) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Whether `raw` holds a whole HTTP answer with a `Content-Length` (answers without one
/// end when the connection closes).
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..end]);
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| raw.len() >= end + 4 + n)
}

/// The daemon's `/status` document, read into the type the daemon writes it from;
/// `Err` when it gives no answer (the caller exits with [`NoAnswer::report`]).
pub fn fetch_status(socket: &Path) -> anyhow::Result<Result<Status, NoAnswer>> {
    let (code, body) = match get(socket, "/status") {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    anyhow::ensure!(code == 200, "the daemon answered {code} on {}: {body}", socket.display());
    serde_json::from_str(&body)
        .map(Ok)
        .map_err(|e| anyhow::anyhow!("the daemon's status is not a status document: {e}"))
}

fn socket_path(args: &StatusArgs) -> anyhow::Result<PathBuf> {
    find_socket(args.socket.as_deref(), args.config.as_deref())
}

/// The daemon's socket: given, from its config file, or the systemd default.
pub fn find_socket(socket: Option<&Path>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    if let Some(c) = config {
        let config = Config::load(c, &Overrides::default())?;
        if let Some(s) = config.api.and_then(|a| a.socket) {
            return Ok(s);
        }
        anyhow::bail!("{} configures no api.socket; pass --socket", c.display());
    }
    Ok(std::env::var_os("RUNTIME_DIRECTORY")
        .map(|d| PathBuf::from(d).join("api.sock"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)))
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let socket = socket_path(&args)?;
    let status = match fetch_status(&socket)? {
        Ok(s) => s,
        Err(e) => return Ok(e.report()),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_human(&status)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(v: &Status) -> anyhow::Result<()> {
    let up = v.uptime_s;
    outln!(
        "edge-agent {} on {}: {}, {} (up {}h {:02}m {:02}s)",
        v.version,
        v.device,
        if v.ready { "ready" } else { "NOT READY" },
        v.doing,
        up / 3600,
        up / 60 % 60,
        up % 60
    );
    outln!("models");
    for (name, m) in &v.models {
        let c = m.counts.as_ref();
        let sum = |map: Option<&BTreeMap<String, u64>>| map.map(|o| o.values().sum()).unwrap_or(0u64);
        outln!(
            "  {name:<16} {:<10} {:<8} ok {:<8} errors {:<6} rejected {:<6} p50 {:.2} ms  p99 {:.2} ms",
            m.version,
            m.state,
            c.map_or(0, |c| c.ok),
            sum(c.map(|c| &c.errors)),
            sum(c.map(|c| &c.rejected)),
            c.map_or(0.0, |c| c.latency.p50_ms),
            c.map_or(0.0, |c| c.latency.p99_ms)
        );
    }
    let e = &v.engine;
    outln!(
        "engine   {} thread(s), queue {}/{}, busy {}, {} done, {} live stream(s)",
        e.threads,
        e.queue_depth,
        e.queue_capacity,
        e.busy,
        e.jobs_done,
        e.live_streams
    );
    if !v.connections.is_empty() {
        outln!("connections");
        for (k, c) in &v.connections {
            outln!("  {k:<16} {c}");
        }
    }
    if let Some(fb) = &v.fallback {
        let routed: Vec<String> = fb.routed.iter().map(|(k, c)| format!("{k} {c}")).collect();
        outln!(
            "fallback cloud answers {}, degraded {}, rejected {}; routed: {}; budget used {} this hour{}",
            fb.answered,
            fb.degraded,
            fb.rejected,
            if routed.is_empty() { "none".to_string() } else { routed.join(", ") },
            fb.budget.used_hour,
            if fb.resource.engaged { "; RESOURCE LIMIT ENGAGED" } else { "" }
        );
        for (name, e) in &fb.endpoints {
            outln!("  {name:<16} breaker {:<9} {}", e.breaker.as_str(), e.url);
        }
    }
    if v.last_errors.is_empty() {
        outln!("last errors: none");
    } else {
        outln!("last errors");
        for e in v.last_errors.iter().rev().take(5) {
            outln!("  {} {} {}: {}", e.ts, e.model, e.kind, e.message);
        }
    }
    outln!(
        "memory   {:.1} MiB (peak {:.1} MiB)",
        v.memory.rss as f64 / 1_048_576.0,
        v.memory.peak_rss as f64 / 1_048_576.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::read_answer;

    /// The daemon answers, then closes with bytes of ours unread: the kernel resets our
    /// end. The answer arrived whole, so it counts.
    #[test]
    fn a_whole_answer_counts_when_the_connection_is_then_reset() {
        let (client, mut server) = UnixStream::pair().unwrap();
        (&client).write_all(b"POST /ota/check HTTP/1.0\r\n\r\n{}").unwrap();
        server.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}").unwrap();
        drop(server); // unread request bytes: a reset, not an end of file
        assert_eq!(read_answer(&client).unwrap(), (200, "{\"ok\":true}".to_string()));
    }

    /// A reset before the answer is whole is still an error.
    #[test]
    fn a_reset_before_the_whole_answer_is_an_error() {
        let (client, mut server) = UnixStream::pair().unwrap();
        (&client).write_all(b"GET /status HTTP/1.0\r\n\r\n").unwrap();
        server.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 50\r\n\r\n{\"partial\":").unwrap();
        drop(server);
        let err = read_answer(&client).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }

    /// Without a length, the answer ends with the connection.
    #[test]
    fn an_answer_without_a_length_ends_at_the_close() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut request = [0u8; 4];
        (&client).write_all(b"ping").unwrap();
        server.read_exact(&mut request).unwrap();
        server.write_all(b"HTTP/1.0 404 Not Found\r\n\r\nno such path").unwrap();
        drop(server);
        assert_eq!(read_answer(&client).unwrap(), (404, "no such path".to_string()));
    }
}
