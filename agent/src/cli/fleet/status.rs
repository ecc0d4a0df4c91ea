//! `edge-agent fleet status`: subscribes to every device's status (and, with `--listen`
//! or `--watch`, their telemetry and events), feeds them to the view (`view.rs`) and prints it once, or keeps it up to date
//! (`--watch`).
//!
//! How a one-shot run knows it has seen every retained status: after its subscriptions
//! are acknowledged it publishes a probe to a topic of its own, which it is subscribed
//! to. A broker sends the retained messages of a subscription before it handles the
//! client's next packet (Mosquitto does), so once the probe comes back every retained
//! status has arrived. A broker cluster may deliver them from other nodes later, so the
//! run also waits until no retained message has come for [`QUIET`]. `--wait` bounds the
//! whole wait; a run that ran out of it says so (`"complete": false`, and on stderr).

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use rumqttc::{Event, Packet, QoS};

use super::broker::{BrokerArgs, Connection};
use super::view::{self, Device, Filter, Fleet, SortKey, StateFilter};
use crate::cli::ClosedOutput;

/// How long no retained message must have come, after the probe, before a one-shot run
/// takes the retained set as whole.
const QUIET: Duration = Duration::from_millis(250);
/// How often `--watch` redraws or looks for changes.
const TICK: Duration = Duration::from_millis(500);

/// Arguments of `fleet status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Print JSON (stable, for scripts): one document, or with --watch one line per
    /// device that changed.
    #[arg(long)]
    pub json: bool,
    /// Keep watching: redraw on a terminal, print each change as a line when piped.
    #[arg(long)]
    pub watch: bool,
    /// Order of the rows (ties by device id).
    #[arg(long, value_enum, default_value_t = SortKey::Device)]
    pub sort: SortKey,
    /// Only devices running this model (and only this model in the MODELS column).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Only devices with a model (the --model one, if given) at this version.
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// Only devices in this state: a link state (online, offline, unknown, malformed)
    /// or a model state (active, updating, probation, rolled-back, failed, pulled,
    /// drifting).
    #[arg(long, value_enum)]
    pub state: Option<StateFilter>,
    /// Only devices whose id matches this glob (`*` any run, `?` one character).
    #[arg(long, value_name = "GLOB")]
    pub device: Option<String>,
    /// Show at most this many rows in the table (the summary counts them all).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// The longest wait, in seconds, for the broker's retained statuses.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = seconds)]
    pub wait: f64,
    /// After the retained statuses, keep listening this many seconds for live telemetry
    /// and events (drift, states, last seen) before printing.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = seconds)]
    pub listen: f64,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=86_400.0).contains(&x) => Ok(x),
        _ => Err(format!("`{s}` is not a number of seconds from 0 to 86400")),
    }
}

/// Runs `fleet status`.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(status(args))
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let conn = args.broker.connect("status")?;
    let filter = Filter {
        model: args.model.clone(),
        version: args.version.clone(),
        state: args.state,
        device: args.device.clone(),
    };
    let mut reader = Reader::new(conn, args.watch || args.listen > 0.0);
    let complete =
        reader.initial(Duration::from_secs_f64(args.wait), Duration::from_secs_f64(args.listen)).await?;
    if !complete {
        eprintln!(
            "edge-agent: the broker's retained statuses did not all arrive within --wait {}s ({} devices seen); \
             the view may be incomplete",
            args.wait,
            reader.fleet.len()
        );
    }
    if !args.watch {
        print_once(&reader.fleet, &filter, &args, complete)?;
        return Ok(ExitCode::SUCCESS);
    }
    watch(reader, &filter, &args).await
}

/// The connection and the view it feeds.
struct Reader {
    conn: Connection,
    fleet: Fleet,
    probe: String,
    filters: Vec<String>,
}

/// What one poll brought.
enum Got {
    Nothing,
    Connected,
    Probe,
    Message { retained: bool },
}

impl Reader {
    /// `live`: also telemetry and events (with `--listen` or `--watch`). A one-shot run
    /// reads only the retained statuses: subscribing to a large fleet's telemetry for
    /// the moment it waits would bring thousands of messages it has no use for.
    fn new(conn: Connection, live: bool) -> Reader {
        let p = &conn.prefix;
        // Four levels: no device topic filter (`{p}/+/status`) matches it.
        let probe = format!("{p}/fleet/probe/{}", conn.client_id);
        let mut filters = vec![format!("{p}/+/status"), probe.clone()];
        if live {
            filters.extend([format!("{p}/+/telemetry"), format!("{p}/+/events")]);
        }
        Reader { conn, fleet: Fleet::new(), probe, filters }
    }

    /// Polls the connection once. Subscribes at every connection (the session is
    /// clean) and sends the probe when they are acknowledged. QoS 0 throughout: a
    /// broker queues at most `max_queued_messages` QoS 1 messages per client (1000 by
    /// default in Mosquitto) and drops the rest, which would cut a large retained set.
    async fn poll(&mut self) -> Result<Got, rumqttc::ConnectionError> {
        match self.conn.eventloop.poll().await? {
            Event::Incoming(Packet::ConnAck(_)) => {
                let subs =
                    self.filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtMostOnce));
                // The request queue is empty at this point, so this cannot fail for room.
                let _ = self.conn.client.try_subscribe_many(subs);
                Ok(Got::Connected)
            }
            Event::Incoming(Packet::SubAck(_)) => {
                let _ = self.conn.client.try_publish(&self.probe, QoS::AtMostOnce, false, b"probe".to_vec());
                Ok(Got::Nothing)
            }
            Event::Incoming(Packet::Publish(p)) => {
                if p.topic == self.probe {
                    return Ok(Got::Probe);
                }
                self.fleet.apply(&self.conn.prefix, &p.topic, &p.payload, p.retain, SystemTime::now());
                Ok(Got::Message { retained: p.retain })
            }
            _ => Ok(Got::Nothing),
        }
    }

    /// Reads the retained set (see the module docs), then listens `listen` more.
    /// Returns whether the retained set is known whole.
    async fn initial(&mut self, wait: Duration, listen: Duration) -> anyhow::Result<bool> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + wait;
        let progress = std::io::stderr().is_terminal();
        let mut shown = Instant::now();
        let mut probe_at: Option<Instant> = None;
        let mut last_retained = Instant::now();
        loop {
            let done = probe_at.is_some_and(|p| {
                last_retained.elapsed() >= QUIET && p.elapsed() >= listen && p.elapsed() >= QUIET
            });
            if done {
                break;
            }
            let got = tokio::select! {
                got = self.poll() => got,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(QUIET) => Ok(Got::Nothing),
            };
            match got {
                Ok(Got::Probe) => probe_at = probe_at.or(Some(Instant::now())),
                Ok(Got::Message { retained: true }) => last_retained = Instant::now(),
                Ok(_) => {}
                Err(e) => {
                    clear_progress(progress);
                    return Err(connect_error(e, &self.conn.broker));
                }
            }
            if progress && shown.elapsed() >= Duration::from_millis(200) {
                shown = Instant::now();
                eprint!("\rreading the fleet from {}: {} devices", self.conn.broker, self.fleet.len());
            }
        }
        clear_progress(progress);
        tracing::debug!(elapsed = ?start.elapsed(), devices = self.fleet.len(), "retained set read");
        Ok(probe_at.is_some())
    }
}

fn clear_progress(progress: bool) {
    if progress {
        eprint!("\r\x1b[K");
    }
}

/// A connection error, in a person's words.
fn connect_error(e: rumqttc::ConnectionError, broker: &str) -> anyhow::Error {
    let hint = match &e {
        rumqttc::ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the login ({code:?}); check --username and --password-file")
        }
        _ => "check --host and --port (or the [mqtt] section of --config) and that the broker runs".into(),
    };
    anyhow::anyhow!("cannot read the fleet from the broker at {broker}: {e}; {hint}")
}

fn print_once(fleet: &Fleet, filter: &Filter, args: &StatusArgs, complete: bool) -> anyhow::Result<()> {
    let rows = fleet.rows(filter, args.sort);
    let summary = view::summarize(&rows, filter.model.as_deref());
    if args.json {
        let doc =
            view::Document { schema: 1, complete, generated: crate::events::now(), summary, devices: rows };
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let width =
        if std::io::stdout().is_terminal() { terminal_size().map_or(100, |s| s.0) } else { usize::MAX };
    let now = view::epoch_secs(SystemTime::now());
    let limit = args.limit.unwrap_or(usize::MAX);
    let text = view::table(&rows, &summary, filter.model.as_deref(), now, width, limit);
    outln!("{}", text.trim_end());
    Ok(())
}

/// `--watch`: redraws on a terminal, prints a line per changed device otherwise; until
/// Ctrl-C or the reader of a pipe goes. Connection failures are retried with backoff.
async fn watch(mut reader: Reader, filter: &Filter, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let redraw = std::io::stdout().is_terminal() && !args.json;
    let mut shown: HashMap<String, String> = HashMap::new();
    let mut dirty = true;
    let mut tick = tokio::time::interval(TICK);
    let mut backoff = crate::mqtt::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            got = reader.poll() => match got {
                Ok(Got::Message { .. }) => dirty = true,
                Ok(Got::Connected) => backoff.connected(Instant::now()),
                Ok(_) => {}
                Err(e) => {
                    let wait = backoff.failed(Instant::now());
                    eprintln!("edge-agent: {}; retrying in {:.1}s", connect_error(e, &reader.conn.broker), wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                }
            },
            _ = tick.tick() => {
                if !dirty {
                    continue;
                }
                dirty = false;
                if redraw {
                    draw(&reader, filter, args)?;
                } else {
                    print_changes(&reader.fleet, filter, args, &mut shown)?;
                }
            }
        }
    }
}

/// Clears the terminal and draws the table, cut to the terminal's height.
fn draw(reader: &Reader, filter: &Filter, args: &StatusArgs) -> anyhow::Result<()> {
    let (width, height) = terminal_size().unwrap_or((100, 40));
    let rows = reader.fleet.rows(filter, args.sort);
    let summary = view::summarize(&rows, filter.model.as_deref());
    // Room for the title, header, the "more" line, a blank and the summary.
    let room = height.saturating_sub(6 + summary.versions.len()).max(1);
    let limit = args.limit.unwrap_or(usize::MAX).min(room);
    let now = view::epoch_secs(SystemTime::now());
    let title = view::fit(
        &format!(
            "edge-agent fleet status: {} at {} (Ctrl-C to stop)",
            reader.conn.broker,
            crate::events::now()
        ),
        width,
    );
    let text = view::table(&rows, &summary, filter.model.as_deref(), now, width, limit);
    let mut out = std::io::stdout().lock();
    write!(out, "\x1b[H\x1b[2J{title}\n{text}").and_then(|_| out.flush()).map_err(ClosedOutput::from_io)?;
    Ok(())
}

/// Prints the devices whose row changed since the last call, and those no longer shown.
fn print_changes(
    fleet: &Fleet,
    filter: &Filter,
    args: &StatusArgs,
    shown: &mut HashMap<String, String>,
) -> anyhow::Result<()> {
    let rows = fleet.rows(filter, args.sort);
    let now = view::epoch_secs(SystemTime::now());
    let ts = crate::events::now();
    let mut still: HashMap<String, String> = HashMap::with_capacity(rows.len());
    for d in &rows {
        let key = view::change_key(d);
        if shown.get(&d.device) != Some(&key) {
            change(d, now, &ts, args.json)?;
        }
        still.insert(d.device.clone(), key);
    }
    let mut gone: Vec<&String> = shown.keys().filter(|id| !still.contains_key(*id)).collect();
    gone.sort();
    for id in gone {
        if args.json {
            outln!("{}", serde_json::json!({"ts": ts, "device": id, "removed": true}));
        } else {
            outln!("{ts} {id} removed");
        }
    }
    *shown = still;
    Ok(())
}

fn change(d: &Device, now: u64, ts: &str, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::json!({"ts": ts, "device": d}));
    } else {
        outln!("{ts} {}", view::change_line(d, now));
    }
    Ok(())
}

/// The terminal's width and height, when standard output is one.
fn terminal_size() -> Option<(usize, usize)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer given, which points at one.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some((usize::from(ws.ws_col), usize::from(ws.ws_row)))
}
