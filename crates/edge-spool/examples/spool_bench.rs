//! Spool throughput: appends 200k records of 200-byte payloads, reopens ("open": the
//! recovery scan a restart does) and replays them with acknowledgments, under several
//! fsync policies.
//!
//! `cargo run --release -p edge-spool --example spool_bench [DIR]`: DIR must be on the file system to
//! measure (the default is the system temp dir; on tmpfs fsync costs nothing).

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edge_spool::{Class, FsyncPolicy, Record, Spool, SpoolConfig};

const PAYLOAD: usize = 200;

struct Case {
    name: &'static str,
    fsync: FsyncPolicy,
    records: usize,
    batch: usize,
}

fn main() -> Result<(), Box<dyn Error>> {
    let base = std::env::args().nth(1).map(PathBuf::from);
    let cases = [
        Case { name: "Never, single appends", fsync: FsyncPolicy::Never, records: 200_000, batch: 1 },
        Case { name: "Never, batches of 100", fsync: FsyncPolicy::Never, records: 200_000, batch: 100 },
        Case { name: "Always, batches of 100", fsync: FsyncPolicy::Always, records: 200_000, batch: 100 },
        Case { name: "Always, single appends", fsync: FsyncPolicy::Always, records: 5_000, batch: 1 },
    ];
    for case in cases {
        let tmp = match &base {
            Some(dir) => tempfile::tempdir_in(dir)?,
            None => tempfile::tempdir()?,
        };
        let cfg = SpoolConfig {
            dir: tmp.path().join("spool"),
            max_bytes: 1 << 30,
            segment_bytes: 4 << 20,
            fsync: case.fsync,
        };
        let batch: Vec<Record> = (0..case.batch)
            .map(|i| Record {
                topic: "devices/pump-7/results".to_owned(),
                qos: 1,
                retain: false,
                payload: (0..PAYLOAD).map(|b| (b + i) as u8).collect(),
                class: if i % 10 == 0 { Class::Telemetry } else { Class::Result },
                correlation: None,
            })
            .collect();

        let (mut spool, _) = Spool::open(cfg.clone())?;
        let start = Instant::now();
        for _ in 0..case.records / case.batch {
            if case.batch == 1 {
                spool.append(&batch[0])?;
            } else {
                spool.append_batch(&batch)?;
            }
        }
        spool.sync()?;
        let append = start.elapsed();
        let bytes = spool.stats().bytes;
        drop(spool);

        let start = Instant::now();
        let (mut spool, report) = Spool::open(cfg)?;
        let open = start.elapsed();
        assert_eq!(report.records as usize, case.records);

        let start = Instant::now();
        let mut read = 0;
        loop {
            let records = spool.next_batch(1000)?;
            let Some(&(last, _)) = records.last() else { break };
            read += records.len();
            spool.ack_through(last);
            spool.persist_cursor()?;
        }
        let replay = start.elapsed();
        assert_eq!(read, case.records);
        assert!(spool.is_empty());

        println!(
            "{:<24} {:>7} rec {:>5.1} MB | append {:>8} rec/s | open {:>8} rec/s | replay+ack {:>8} rec/s",
            case.name,
            case.records,
            bytes as f64 / 1e6,
            rate(case.records, append),
            rate(case.records, open),
            rate(case.records, replay),
        );
    }
    Ok(())
}

fn rate(records: usize, took: Duration) -> String {
    format!("{:.0}", records as f64 / took.as_secs_f64())
}
