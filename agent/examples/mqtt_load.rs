//! The native MQTT load driver of the benchmarks (`tests/bench/run`): publishes sensor
//! messages at a paced rate with QoS 1 and times each one until its result comes back
//! on the broker. A Python driver tops out near 6,000 QoS 1 messages/s on these
//! machines, below what the agent reaches, so the driver is Rust on rumqttc.
//!
//! Every timed message is `{"id": N, "data": [...]}`; the agent under test (edge-agent
//! or the Python peer) echoes `N` as `input_id` on the result it completes. Before
//! timing, each stream gets `--prime` messages without an id, so that a windowed model
//! whose hop equals the message length answers every timed message with one result.
//!
//! ```sh
//! cargo run --release --example mqtt_load -- --port 1883 --rate 2000 --count 20000 \
//!     --payload samples.json --json
//! ```
//!
//! `--first-result-since NS` measures start-up instead: it sends one message every 5 ms
//! until the first result arrives and prints the milliseconds since the given Unix time
//! in nanoseconds (taken just before the agent was started).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Paced QoS 1 sensor messages in, results timed on the broker")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    /// Sensor topic; `{}` is replaced by the stream number.
    #[arg(long, default_value = "sensors/s{}/accel")]
    topic: String,
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Topic filter the results arrive on.
    #[arg(long, default_value = "edge/+/results/#")]
    results: String,
    /// Offered messages per second over all streams; 0 sends as fast as the broker takes.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Timed messages to send.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// A JSON array of numbers: the `data` of every message.
    #[arg(long)]
    payload: std::path::PathBuf,
    /// Untimed messages per stream before the timed ones (fills a model's first window).
    #[arg(long, default_value_t = 1)]
    prime: usize,
    /// Stop waiting for results when none came for this long.
    #[arg(long, default_value_t = 5.0)]
    idle_timeout_s: f64,
    /// Start-up mode: milliseconds from this Unix time (ns) to the first result.
    #[arg(long)]
    first_result_since: Option<u128>,
    /// One JSON object on stdout instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Also write each timed message's send time and latency (milliseconds, one
    /// `id sent_ms latency_ms` line each, by id) to this file: when the slow ones were
    /// sent shows whether they come in bursts, and how often.
    #[arg(long)]
    latencies: Option<std::path::PathBuf>,
}

/// Ids of start-up mode's messages: far above any paced run's, so that their late
/// results are not taken for a later run's.
const FIRST_RESULT_IDS: u64 = 1 << 40;

/// What the collector saw: receive time of each timed id's first result.
struct Received {
    at: HashMap<u64, Instant>,
    duplicates: u64,
    last: Option<Instant>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let data = std::fs::read_to_string(&args.payload)
        .with_context(|| format!("reading the payload file {}", args.payload.display()))?;
    let parsed: serde_json::Value =
        serde_json::from_str(&data).with_context(|| format!("{} is not JSON", args.payload.display()))?;
    if !parsed.is_array() {
        bail!("{} must hold a JSON array of numbers", args.payload.display());
    }
    let data = data.trim().to_owned();

    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let collector = connect(&args, "bench-collector", 64).await?;
    collector.0.subscribe(&args.results, QoS::AtLeastOnce).await?;
    let collector_task = tokio::spawn(collect(collector.1, results_tx));
    let (publisher, publisher_loop) = connect(&args, "bench-publisher", 1024).await?;
    let publisher_task = tokio::spawn(drive(publisher_loop));

    let topics: Vec<String> =
        (0..args.streams.max(1)).map(|k| args.topic.replace("{}", &k.to_string())).collect();
    let unnumbered = Arc::new(format!("{{\"data\":{data}}}").into_bytes());
    for topic in &topics {
        for _ in 0..args.prime {
            publisher.publish(topic, QoS::AtLeastOnce, false, unnumbered.to_vec()).await?;
        }
    }

    let outcome = if let Some(since) = args.first_result_since {
        first_result(&args, &publisher, &topics, &data, since, results_rx).await
    } else {
        paced(&args, &publisher, &topics, &data, results_rx).await
    };
    collector_task.abort();
    publisher_task.abort();
    outcome
}

async fn connect(args: &Args, id: &str, cap: usize) -> Result<(AsyncClient, EventLoop)> {
    let mut opts = MqttOptions::new(format!("{id}-{}", std::process::id()), &args.host, args.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(256);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, cap);
    // Wait for the CONNACK so a refused connection is an error, not a silent zero.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok((client, eventloop)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("cannot connect to {}:{}: {e}", args.host, args.port),
            Err(_) => bail!("no CONNACK from {}:{} within 5 s", args.host, args.port),
        }
    }
}

async fn drive(mut eventloop: EventLoop) {
    while eventloop.poll().await.is_ok() {}
}

/// Hands `(input_id, receive time)` of every result to the caller.
async fn collect(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<(u64, Instant)>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let at = Instant::now();
                if let Some(id) = input_id(&p.payload) {
                    let _ = tx.send((id, at));
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The numeric `input_id` of a result, found without parsing the whole document (the
/// collector must keep up with the agent).
fn input_id(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"input_id\":";
    let start = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: &[u8] = &payload[start..];
    let digits = &digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()];
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn message(id: u64, data: &str) -> Vec<u8> {
    format!("{{\"id\":{id},\"data\":{data}}}").into_bytes()
}

async fn paced(
    args: &Args,
    publisher: &AsyncClient,
    topics: &[String],
    data: &str,
    mut results: mpsc::UnboundedReceiver<(u64, Instant)>,
) -> Result<()> {
    let n = args.count;
    let mut sent_at: Vec<Instant> = Vec::with_capacity(n as usize);
    let mut received = Received { at: HashMap::with_capacity(n as usize), duplicates: 0, last: None };
    let note = |(id, at): (u64, Instant), received: &mut Received| {
        // Late results of an earlier run (start-up mode numbers from FIRST_RESULT_IDS).
        if id >= n {
            return;
        }
        if received.at.insert(id, at).is_some() {
            received.duplicates += 1;
        }
        received.last = Some(at);
    };
    let start = Instant::now();
    for i in 0..n {
        if args.rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let payload = message(i, data);
        sent_at.push(Instant::now());
        publisher.publish(&topics[i as usize % topics.len()], QoS::AtLeastOnce, false, payload).await?;
        while let Ok(r) = results.try_recv() {
            note(r, &mut received);
        }
    }
    let sent_s = start.elapsed().as_secs_f64();
    let idle = Duration::from_secs_f64(args.idle_timeout_s);
    while (received.at.len() as u64) < n {
        match tokio::time::timeout(idle, results.recv()).await {
            Ok(Some(r)) => note(r, &mut received),
            _ => break,
        }
    }

    let mut latencies: Vec<f64> = received
        .at
        .iter()
        .filter(|(id, _)| (**id as usize) < sent_at.len())
        .map(|(id, at)| at.duration_since(sent_at[*id as usize]).as_secs_f64() * 1000.0)
        .collect();
    if let Some(path) = &args.latencies {
        use std::fmt::Write as _;
        let mut text = String::new();
        for (id, sent) in sent_at.iter().enumerate() {
            if let Some(at) = received.at.get(&(id as u64)) {
                let sent_ms = sent.duration_since(start).as_secs_f64() * 1000.0;
                let latency_ms = at.duration_since(*sent).as_secs_f64() * 1000.0;
                let _ = writeln!(text, "{id} {sent_ms:.3} {latency_ms:.3}");
            }
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    latencies.sort_by(f64::total_cmp);
    let got = latencies.len() as u64;
    let span_s = received.last.map(|last| last.duration_since(start).as_secs_f64()).unwrap_or(sent_s);
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((q / 100.0) * (latencies.len() - 1) as f64).round() as usize;
        latencies[rank]
    };
    let report = serde_json::json!({
        "offered_rate": args.rate,
        "sent": n,
        "sent_rate": n as f64 / sent_s,
        "results": got,
        "lost": n - got,
        "duplicates": received.duplicates,
        "results_rate": got as f64 / span_s,
        "p50_ms": pct(50.0),
        "p90_ms": pct(90.0),
        "p99_ms": pct(99.0),
        "max_ms": latencies.last().copied().unwrap_or(f64::NAN),
        "seconds": span_s,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "offered {:.0}/s: sent {n} at {:.0}/s, {got} results at {:.0}/s, lost {}, p50 {:.2} ms, p99 {:.2} ms",
            args.rate,
            n as f64 / sent_s,
            got as f64 / span_s,
            n - got,
            pct(50.0),
            pct(99.0)
        );
    }
    Ok(())
}

async fn first_result(
    args: &Args,
    publisher: &AsyncClient,
    topics: &[String],
    data: &str,
    since_ns: u128,
    mut results: mpsc::UnboundedReceiver<(u64, Instant)>,
) -> Result<()> {
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut id = FIRST_RESULT_IDS;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() > give_up {
                    bail!("no result within 60 s");
                }
                publisher.publish(&topics[0], QoS::AtLeastOnce, false, message(id, data)).await?;
                id += 1;
            }
            Some(_) = results.recv() => break,
        }
    }
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let ms = now_ns.saturating_sub(since_ns) as f64 / 1e6;
    if args.json {
        let sent = id - FIRST_RESULT_IDS;
        println!("{}", serde_json::json!({ "first_result_ms": ms, "messages": sent }));
    } else {
        println!("first result {ms:.1} ms after the start ({} messages sent)", id - FIRST_RESULT_IDS);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::input_id;

    #[test]
    fn finds_the_input_id_anywhere() {
        assert_eq!(input_id(br#"{"seq":1,"input_id":42,"x":1}"#), Some(42));
        assert_eq!(input_id(br#"{"outputs":{},"input_id":7}"#), Some(7));
        assert_eq!(input_id(br#"{"seq":1}"#), None);
        assert_eq!(input_id(br#"{"input_id":"a"}"#), None);
    }
}
