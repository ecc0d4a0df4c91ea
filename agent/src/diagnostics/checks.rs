//! The checks themselves, each with the reason and the fix it reports.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{Check, Level};
use crate::config::{Config, Overrides};
use edge_infer::engine::LoadedModel;

fn check(name: &str, level: Level, message: impl Into<String>, fix: Option<&str>) -> Check {
    Check { check: name.into(), level, message: message.into(), fix: fix.map(str::to_string) }
}

/// Free-space thresholds of the state directory.
const WARN_FREE: u64 = 100 * 1024 * 1024;
const FAIL_FREE: u64 = 10 * 1024 * 1024;

/// Runs every check, in the order they are reported.
pub fn all(file: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let config = match Config::load(file, &Overrides::default()) {
        Ok(c) => {
            out.push(check(
                "config",
                Level::Ok,
                format!(
                    "{} is valid: {} model(s), {} source(s)",
                    file.display(),
                    c.models.len(),
                    c.sources.len()
                ),
                None,
            ));
            c
        }
        Err(e) => {
            out.push(check(
                "config",
                Level::Fail,
                e.to_string().replace('\n', " | "),
                Some("correct the lines named"),
            ));
            return out;
        }
    };
    out.push(state_dir(&config.state_dir));
    for m in &config.models {
        let started = Instant::now();
        out.push(match LoadedModel::load_dir(&m.dir, &config.engine.model_limits) {
            Ok(model) => check(
                "model",
                Level::Ok,
                format!(
                    "{} {} loads from {} ({:.0} ms)",
                    model.name(),
                    model.version(),
                    m.dir.display(),
                    started.elapsed().as_secs_f64() * 1000.0
                ),
                None,
            ),
            Err(e) => check(
                "model",
                Level::Fail,
                format!("{}: {e}", m.name),
                Some("restore or replace the model files"),
            ),
        });
    }
    out.push(clock());
    if let Some(m) = &config.mqtt {
        out.push(broker(m));
    }
    if let Some(api) = &config.api {
        if let Some(addr) = &api.listen {
            out.push(listen(addr));
        }
        if let Some(sock) = &api.socket {
            let dir = sock.parent().unwrap_or(Path::new("."));
            out.push(if crate::daemon_client::get(sock, "/v2/health/live").is_ok() {
                check("socket", Level::Ok, format!("{}: a running edge-agent answers", sock.display()), None)
            } else if writable(dir).is_ok() {
                check("socket", Level::Ok, format!("{} can be created", sock.display()), None)
            } else {
                check(
                    "socket",
                    Level::Fail,
                    format!("cannot create {} (its directory is not writable)", sock.display()),
                    Some("create the directory (systemd: RuntimeDirectory=) or set api.socket"),
                )
            });
        }
    }
    out
}

/// The broker: TLS files usable, address reachable. Unreachable is a warning: the agent
/// spools until the broker is back.
fn broker(m: &crate::config::MqttConfig) -> Check {
    use std::net::ToSocketAddrs;
    if let Some(t) = &m.tls
        && let Err(e) = crate::mqtt::options::tls_config(t)
    {
        return check("broker", Level::Fail, format!("TLS: {e}"), Some("fix the files under [mqtt.tls]"));
    }
    let target = format!("{}:{}", m.host, m.port);
    let addrs: Vec<std::net::SocketAddr> = match target.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return check(
                "broker",
                Level::Warn,
                format!("cannot resolve {target}: {e}"),
                Some("check mqtt.host and the device's DNS"),
            );
        }
    };
    let reachable = addrs
        .iter()
        .any(|a| std::net::TcpStream::connect_timeout(a, std::time::Duration::from_secs(2)).is_ok());
    if reachable {
        check("broker", Level::Ok, format!("{target} accepts connections"), None)
    } else {
        check(
            "broker",
            Level::Warn,
            format!("{target} does not accept connections; the agent spools until it does"),
            Some("start the broker or fix mqtt.host / mqtt.port"),
        )
    }
}

fn writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}

fn state_dir(dir: &Path) -> Check {
    if !dir.exists() {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        return if writable(parent).is_ok() {
            check(
                "state",
                Level::Warn,
                format!("{} does not exist yet; the agent creates it", dir.display()),
                None,
            )
        } else {
            check(
                "state",
                Level::Fail,
                format!("{} does not exist and {} is not writable", dir.display(), parent.display()),
                Some("create the directory for the agent's user (systemd: StateDirectory=)"),
            )
        };
    }
    if !dir.is_dir() {
        return check(
            "state",
            Level::Fail,
            format!("{} is not a directory", dir.display()),
            Some("set agent.state_dir"),
        );
    }
    if let Err(e) = writable(dir) {
        return check(
            "state",
            Level::Fail,
            format!("{} is not writable: {e}", dir.display()),
            Some("give the agent's user write access"),
        );
    }
    match crate::telemetry::disk_free(dir) {
        Some(free) if free < FAIL_FREE => check(
            "disk",
            Level::Fail,
            format!("{} MiB free under {}", free / 1_048_576, dir.display()),
            Some("free space: model updates and the spool need room"),
        ),
        Some(free) if free < WARN_FREE => check(
            "disk",
            Level::Warn,
            format!("only {} MiB free under {}", free / 1_048_576, dir.display()),
            Some("free space before the next model update"),
        ),
        Some(free) => check(
            "state",
            Level::Ok,
            format!("{} writable, {} MiB free", dir.display(), free / 1_048_576),
            None,
        ),
        None => check("state", Level::Warn, format!("{} writable; free space unknown", dir.display()), None),
    }
}

fn clock() -> Check {
    // Signed metadata and TLS certificates are checked against the clock; a board that
    // booted without a real-time clock often starts in 1970.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    const JAN_2025: u64 = 1_735_689_600;
    if now < JAN_2025 {
        check(
            "clock",
            Level::Fail,
            format!("the clock says {} (before 2025)", humantime::format_rfc3339_seconds(SystemTime::now())),
            Some("set the time (NTP, systemd-timesyncd, or an RTC): signatures and TLS need it"),
        )
    } else {
        check("clock", Level::Ok, humantime::format_rfc3339_seconds(SystemTime::now()).to_string(), None)
    }
}

fn listen(addr: &str) -> Check {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => check("api", Level::Ok, format!("{addr} is free"), None),
        Err(e) => {
            let ours = std::net::TcpStream::connect_timeout(
                &match addr.parse() {
                    Ok(a) => a,
                    Err(_) => {
                        return check("api", Level::Fail, format!("{addr}: {e}"), Some("set api.listen"));
                    }
                },
                std::time::Duration::from_secs(2),
            )
            .ok()
            .and_then(|s| {
                s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
                let (_, body) = crate::daemon_client::request(s, "/v2").ok()?;
                Some(body.contains("edge-agent"))
            })
            .unwrap_or(false);
            if ours {
                check("api", Level::Ok, format!("{addr} is served by a running edge-agent"), None)
            } else {
                check(
                    "api",
                    Level::Fail,
                    format!("{addr} is taken by another process ({e})"),
                    Some("stop that process or change api.listen"),
                )
            }
        }
    }
}
