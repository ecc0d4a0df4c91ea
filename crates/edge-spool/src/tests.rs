use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig { dir: dir.to_path_buf(), max_bytes, segment_bytes, fsync: FsyncPolicy::Never }
}

fn record(i: u64, class: Class, size: usize) -> Record {
    Record {
        topic: format!("devices/d1/{}/{i}", class.as_str()),
        qos: (i % 3) as u8,
        retain: i.is_multiple_of(5),
        payload: (0..size).map(|b| (b as u64 * 31 + i) as u8).collect(),
        class,
        correlation: (class == Class::Reply).then(|| i.to_le_bytes().to_vec()),
    }
}

fn mixed(i: u64) -> Record {
    let class = Class::ALL[(i % 4) as usize];
    record(i, class, (i * 37 % 200) as usize)
}

fn open(cfg: &SpoolConfig) -> (Spool, OpenReport) {
    Spool::open(cfg.clone()).unwrap()
}

fn read_rest(spool: &mut Spool) -> Vec<(u64, Record)> {
    spool.next_batch(usize::MAX).unwrap()
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Offsets where each frame of a segment file ends, from the length fields.
fn frame_ends(path: &Path) -> Vec<u64> {
    let bytes = fs::read(path).unwrap();
    let mut ends = Vec::new();
    let mut at = 0usize;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += len + 8;
        assert!(at <= bytes.len(), "test helper reads only intact files");
        ends.push(at as u64);
    }
    ends
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn by_class(records: &[(u64, Record)]) -> [u64; 4] {
    let mut counts = [0; 4];
    for (_, r) in records {
        counts[r.class.index()] += 1;
    }
    counts
}

/// What the spool says about itself matches what is on disk.
fn assert_consistent(spool: &Spool, dir: &Path) {
    let stats = spool.stats();
    let (on_disk, _) = Spool::read_all(dir).unwrap();
    let unacked = on_disk.iter().filter(|(id, _)| *id > stats.acked).count() as u64;
    assert_eq!(stats.records, unacked, "unacked records in stats vs on disk");
    let files = seg_files(dir);
    assert_eq!(stats.segments, files.len());
    let bytes: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(stats.bytes, bytes);
    assert_eq!(spool.is_empty(), unacked == 0);
}

#[test]
fn round_trip_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 30, 2048);
    let (mut spool, report) = open(&cfg);
    assert_eq!(report.records, 0);
    let mut expected = Vec::new();
    let mut i = 0;
    while i < 1000 {
        // Singles and batches both, so both paths number and frame records the same way.
        if i % 3 == 0 {
            let batch: Vec<_> = (i..(i + 7).min(1000)).map(mixed).collect();
            let (ids, dropped) = spool.append_batch(&batch).unwrap();
            assert_eq!(dropped.total(), 0);
            expected.extend(ids.into_iter().zip(batch));
            i = (i + 7).min(1000);
        } else {
            let rec = mixed(i);
            let (id, dropped) = spool.append(&rec).unwrap();
            assert_eq!(dropped, Dropped::default());
            expected.push((id, rec));
            i += 1;
        }
    }
    let ids: Vec<u64> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
    assert!(seg_files(dir.path()).len() > 10, "small segments: many files");
    for seg in seg_files(dir.path()) {
        assert!(fs::metadata(&seg).unwrap().len() <= 2048);
    }
    assert_consistent(&spool, dir.path());
    drop(spool);

    let (mut spool, report) = open(&cfg);
    assert_eq!(report.records, 1000);
    assert_eq!(report.torn_bytes_cut, 0);
    assert!(report.bad_segments.is_empty());
    assert_eq!(report.segments, seg_files(dir.path()).len());
    let mut read = Vec::new();
    loop {
        let batch = spool.next_batch(33).unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 33);
        read.extend(batch);
    }
    assert_eq!(read, expected);
    assert!(!spool.has_unread());
    assert_eq!(Spool::read_all(dir.path()).unwrap().0, expected);
    assert_eq!(spool.stats().next_id, 1001);
}

#[test]
fn reads_keep_up_with_appends_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 700);
    let (mut spool, _) = open(&cfg);
    let mut next_expected = 1;
    for i in 0..300 {
        let (id, _) = spool.append(&mixed(i)).unwrap();
        assert!(spool.has_unread());
        if i % 4 == 3 {
            for (got, rec) in read_rest(&mut spool) {
                assert_eq!(got, next_expected);
                assert_eq!(rec, mixed(got - 1));
                next_expected += 1;
            }
            assert_eq!(next_expected, id + 1);
            assert!(!spool.has_unread());
            spool.ack_through(id);
            assert!(spool.is_empty());
        }
    }
    // Only the last segment stays once everything is acknowledged (it holds the highest id).
    assert_eq!(seg_files(dir.path()).len(), 1);
    assert_consistent(&spool, dir.path());
}

#[test]
fn power_cut_at_every_byte_of_the_last_segment() {
    let base = tempfile::tempdir().unwrap();
    // Earlier, sealed segments first: recovery must leave them alone.
    let (mut spool, _) = open(&config(base.path(), 1 << 20, 300));
    let mut all: Vec<Record> = (0..6).map(|i| record(i, Class::Result, 90)).collect();
    spool.append_batch(&all).unwrap();
    drop(spool);
    let cfg = config(base.path(), 1 << 20, 1 << 20);
    let (mut spool, _) = open(&cfg);
    // Payload sizes 0..=39 so no two frames share a length.
    let tail: Vec<Record> =
        (0..40).map(|i| record(100 + i, Class::ALL[i as usize % 4], i as usize)).collect();
    for rec in &tail {
        spool.append(rec).unwrap();
    }
    all.extend(tail);
    drop(spool);

    let files = seg_files(base.path());
    let last = files.last().unwrap();
    let last_name = last.file_name().unwrap().to_owned();
    let ends = frame_ends(last);
    let len = fs::metadata(last).unwrap().len();
    let first_in_last = all.len() - ends.len();
    assert!(first_in_last > 0 && ends.len() >= 40);

    for cut in 0..=len {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let torn = dir.path().join(&last_name);
        fs::OpenOptions::new().write(true).open(&torn).unwrap().set_len(cut).unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let boundary = if whole == 0 { 0 } else { ends[whole - 1] };

        let cfg = config(dir.path(), 1 << 20, 1 << 20);
        let (mut spool, report) = open(&cfg);
        assert_eq!(report.torn_bytes_cut, cut - boundary, "cut at {cut}");
        assert!(report.bad_segments.is_empty());
        assert_eq!(fs::metadata(&torn).unwrap().len(), boundary, "file cut to the last whole frame");
        let got = read_rest(&mut spool);
        let survivors = first_in_last + whole;
        assert_eq!(got.len(), survivors, "cut at {cut}");
        for (n, (id, rec)) in got.iter().enumerate() {
            assert_eq!(*id, n as u64 + 1);
            assert_eq!(rec, &all[n]);
        }
        // Appending after recovery continues after the highest id on disk, which includes
        // the file's name (the id of its first record, even when that record was torn off).
        let extra = record(999, Class::Event, 17);
        let (id, _) = spool.append(&extra).unwrap();
        let last_name_id = first_in_last as u64 + 1;
        assert_eq!(id, (survivors as u64).max(last_name_id) + 1, "cut at {cut}");
        assert_eq!(read_rest(&mut spool), vec![(id, extra.clone())]);
        drop(spool);
        let (mut spool, report) = open(&cfg);
        assert_eq!(report.torn_bytes_cut, 0);
        let again = read_rest(&mut spool);
        assert_eq!(again.len(), survivors + 1);
        assert_eq!(again.last(), Some(&(id, extra)));
    }
}

#[test]
fn damage_in_the_last_segment_is_cut_there() {
    let base = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(&config(base.path(), 1 << 20, 1 << 20));
    let recs: Vec<_> = (0..20).map(mixed).collect();
    spool.append_batch(&recs).unwrap();
    drop(spool);
    let seg = seg_files(base.path()).remove(0);
    let ends = frame_ends(&seg);
    let len = fs::metadata(&seg).unwrap().len();
    let k = 7;
    let start = ends[k - 1];
    // In the length field's high byte, in the payload, in the CRC.
    for at in [start + 3, start + 6, ends[k] - 2] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        flip_byte(&dir.path().join(seg.file_name().unwrap()), at);
        let cfg = config(dir.path(), 1 << 20, 1 << 20);
        let (mut spool, report) = open(&cfg);
        assert_eq!(report.torn_bytes_cut, len - start, "flip at {at}");
        assert!(report.bad_segments.is_empty());
        let got = read_rest(&mut spool);
        assert_eq!(got.len(), k);
        assert_eq!(got.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), recs[..k]);
        // Ids continue after the highest id left on disk.
        assert_eq!(spool.append(&mixed(50)).unwrap().0, k as u64 + 1);
    }
}

#[test]
fn damage_in_a_sealed_segment_keeps_what_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 400);
    let (mut spool, _) = open(&cfg);
    let recs: Vec<_> = (0..40).map(|i| record(i, Class::Result, 60)).collect();
    spool.append_batch(&recs).unwrap();
    drop(spool);
    let files = seg_files(dir.path());
    assert!(files.len() >= 4);
    let victim = &files[1];
    let victim_len = fs::metadata(victim).unwrap().len();
    let per_file: Vec<usize> = files.iter().map(|f| frame_ends(f).len()).collect();
    let ends = frame_ends(victim);
    flip_byte(victim, ends[0] + 10); // inside the second frame's payload

    let (mut spool, report) = open(&cfg);
    assert_eq!(report.bad_segments.len(), 1, "{:?}", report.bad_segments);
    let sentence = &report.bad_segments[0];
    let victim_name = victim.file_name().unwrap().to_str().unwrap();
    assert!(sentence.contains(victim_name), "{sentence}");
    assert!(sentence.contains(&format!("at byte {}", ends[0])), "{sentence}");
    assert_eq!(report.torn_bytes_cut, 0);
    assert_eq!(fs::metadata(victim).unwrap().len(), victim_len, "a sealed segment is not cut");
    let lost = per_file[1] - 1;
    assert_eq!(report.records, 40 - lost as u64);
    let got = read_rest(&mut spool);
    let expected: Vec<_> = recs
        .iter()
        .enumerate()
        .filter(|(n, _)| *n < per_file[0] + 1 || *n >= per_file[0] + per_file[1])
        .map(|(n, r)| (n as u64 + 1, r.clone()))
        .collect();
    assert_eq!(got, expected);
    assert_consistent(&spool, dir.path());

    // Appending goes on; acknowledging everything frees the damaged file too.
    let (id, _) = spool.append(&mixed(1)).unwrap();
    assert_eq!(id, 41);
    spool.ack_through(id);
    assert!(spool.is_empty());
    assert!(!victim.exists());
    assert_consistent(&spool, dir.path());
}

#[test]
fn ack_rewind_and_cursor_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 512);
    let (mut spool, _) = open(&cfg);
    let recs: Vec<_> = (0..100).map(mixed).collect();
    spool.append_batch(&recs).unwrap();
    let files = seg_files(dir.path());
    assert!(files.len() >= 5);
    // The first k files hold ids 1..=boundary, with boundary past what is acknowledged below.
    let (mut k, mut boundary) = (0, 0);
    while boundary < 30 {
        boundary += frame_ends(&files[k]).len() as u64;
        k += 1;
    }
    assert!(k + 1 < files.len());
    let ids = |batch: &[(u64, Record)]| batch.iter().map(|(id, _)| *id).collect::<Vec<_>>();

    assert_eq!(ids(&spool.next_batch(10).unwrap()), (1..=10).collect::<Vec<_>>());
    assert_eq!(ids(&spool.next_batch(5).unwrap()), (11..=15).collect::<Vec<_>>());
    spool.rewind();
    let again = spool.next_batch(15).unwrap();
    assert_eq!(ids(&again), (1..=15).collect::<Vec<_>>());
    assert_eq!(again[3].1, recs[3]);
    spool.ack_through(15);
    assert_eq!(spool.stats().records, 85);
    assert_eq!(ids(&spool.next_batch(10).unwrap()), (16..=25).collect::<Vec<_>>());
    spool.rewind();
    assert_eq!(spool.next_batch(1).unwrap()[0].0, 16);

    // Acknowledge through the end of the k-th file: the first k files go.
    read_rest(&mut spool);
    spool.ack_through(boundary);
    for f in &files[..k] {
        assert!(!f.exists(), "{} should be deleted", f.display());
    }
    assert!(files[k].exists());
    assert_eq!(spool.stats().records, 100 - boundary);
    assert_consistent(&spool, dir.path());
    spool.persist_cursor().unwrap();
    let text = fs::read_to_string(dir.path().join("acked")).unwrap();
    assert_eq!(cursor::parse(text.as_bytes()).unwrap(), cursor::Cursor { acked: boundary, next: 101 });
    drop(spool);

    let (mut spool, report) = open(&cfg);
    assert_eq!(report.records, 100 - boundary);
    let rest = read_rest(&mut spool);
    assert_eq!(rest.first().map(|(id, _)| *id), Some(boundary + 1));
    assert_eq!(rest.len() as u64, 100 - boundary);
    assert_eq!(spool.append(&mixed(7)).unwrap().0, 101);

    // Everything acknowledged: only the last file stays; ids still continue after reopen.
    spool.ack_through(101);
    assert!(spool.is_empty());
    assert!(!spool.has_unread());
    spool.persist_cursor().unwrap();
    drop(spool);
    let (mut spool, report) = open(&cfg);
    assert_eq!(report.records, 0);
    assert_eq!(spool.append(&mixed(8)).unwrap().0, 102);
    spool.append_batch(&[mixed(9), mixed(10)]).unwrap();
    spool.ack_through(102);
    spool.persist_cursor().unwrap();
    drop(spool);
    // Even with every segment file gone (103 and 104 lost), the cursor file's `next` keeps
    // ids from going back.
    for f in seg_files(dir.path()) {
        fs::remove_file(f).unwrap();
    }
    let (mut spool, _) = open(&cfg);
    assert_eq!(spool.append(&mixed(11)).unwrap().0, 105);
}

#[test]
fn acknowledging_records_never_handed_out_keeps_counts_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 600);
    let (mut spool, _) = open(&cfg);
    let recs: Vec<_> = (0..60).map(mixed).collect();
    spool.append_batch(&recs).unwrap();
    spool.next_batch(5).unwrap();
    // Beyond what was read, into the middle of a later segment.
    spool.ack_through(27);
    assert_eq!(spool.stats().records, 33);
    assert_consistent(&spool, dir.path());
    assert_eq!(spool.next_batch(1).unwrap()[0].0, 28);
    spool.rewind();
    assert_eq!(spool.next_batch(1).unwrap()[0].0, 28);
    // An id never assigned is clamped: later records stay unacknowledged.
    spool.ack_through(1_000);
    assert_eq!(spool.stats().acked, 60);
    assert!(spool.is_empty());
    let (id, _) = spool.append(&mixed(1)).unwrap();
    assert_eq!(id, 61);
    assert!(!spool.is_empty());
    assert_eq!(spool.stats().records, 1);
    assert_consistent(&spool, dir.path());
}

/// Appends and checks the bound and drop rules after every append.
struct DropCheck {
    max_bytes: u64,
    dir: PathBuf,
    ids: [Vec<u64>; 4],
    returned: Dropped,
    results_dropped_at: Option<u64>,
}

impl DropCheck {
    fn append(&mut self, spool: &mut Spool, rec: &Record) {
        let (id, dropped) = spool.append(rec).unwrap();
        self.ids[rec.class.index()].push(id);
        self.returned.add_counts(&[dropped.result, dropped.event, dropped.reply, dropped.telemetry]);
        let stats = spool.stats();
        assert!(stats.bytes <= self.max_bytes, "{} bytes after append {id}", stats.bytes);
        assert_eq!(stats.dropped, self.returned, "what appends returned adds up to the stats");
        let (on_disk, _) = Spool::read_all(&self.dir).unwrap();
        assert_eq!(on_disk.last().map(|(last, _)| *last), Some(id), "the new record is never dropped");
        let counts = by_class(&on_disk);
        for c in Class::ALL {
            let all = &self.ids[c.index()];
            assert_eq!(all.len() as u64 - counts[c.index()], stats.dropped_of(c), "{c:?} after append {id}");
            // Oldest first: what survives of each class is its newest records.
            let surviving: Vec<u64> =
                on_disk.iter().filter(|(_, r)| r.class == c).map(|(id, _)| *id).collect();
            assert_eq!(surviving, all[all.len() - surviving.len()..], "{c:?} after append {id}");
        }
        if dropped.result > 0 {
            // Results went only because no telemetry was left (but the record just added).
            let own = u64::from(rec.class == Class::Telemetry);
            assert_eq!(
                counts[Class::Telemetry.index()],
                own,
                "results dropped while telemetry remained ({id})"
            );
            self.results_dropped_at.get_or_insert(id);
        }
        assert_consistent(spool, &self.dir);
    }
}

#[test]
fn full_spool_drops_oldest_telemetry_first_then_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 4096, 512);
    let (mut spool, _) = open(&cfg);
    let mut check = DropCheck {
        max_bytes: cfg.max_bytes,
        dir: cfg.dir.clone(),
        ids: Default::default(),
        returned: Dropped::default(),
        results_dropped_at: None,
    };
    // Phase 1: interleaved, fills the spool several times over.
    for i in 0..300 {
        let class = if i % 2 == 0 { Class::Telemetry } else { Class::Result };
        check.append(&mut spool, &record(i, class, 40));
    }
    assert!(check.returned.telemetry > 100, "telemetry was dropped: {:?}", check.returned);
    // Phase 2: results only; once the telemetry is gone, the oldest results go.
    for i in 0..200 {
        check.append(&mut spool, &record(1000 + i, Class::Result, 40));
    }
    assert!(check.results_dropped_at.is_some());
    assert!(check.returned.result > 100, "{:?}", check.returned);
    let (on_disk, _) = Spool::read_all(dir.path()).unwrap();
    assert_eq!(by_class(&on_disk)[Class::Telemetry.index()], 0);
}

#[test]
fn drops_keep_the_read_cursor_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 3000, 500);
    let (mut spool, _) = open(&cfg);
    let mut handed = Vec::new();
    for i in 0..400 {
        let class = if i % 3 == 0 { Class::Result } else { Class::Telemetry };
        spool.append(&record(i, class, 30)).unwrap();
        if i % 10 == 0 {
            handed.extend(spool.next_batch(4).unwrap());
        }
        if i % 50 == 0 {
            // Acknowledge part of what was handed out, and reconnect now and then.
            if let Some((id, _)) = handed.get(handed.len() / 2) {
                spool.ack_through(*id);
            }
            if i % 100 == 0 {
                spool.rewind();
                let acked = spool.stats().acked;
                handed.retain(|(id, _)| *id <= acked);
            }
        }
        assert_consistent(&spool, dir.path());
    }
    // Each id is handed out once between rewinds, in order; the rest is what is on disk.
    let acked = spool.stats().acked;
    let last_handed = handed.last().map_or(0, |(id, _)| *id);
    for pair in handed.windows(2) {
        assert!(pair[0].0 < pair[1].0, "ids increase: {} then {}", pair[0].0, pair[1].0);
    }
    let rest = read_rest(&mut spool);
    let (on_disk, _) = Spool::read_all(dir.path()).unwrap();
    let expected: Vec<_> = on_disk.into_iter().filter(|(id, _)| *id > acked.max(last_handed)).collect();
    assert_eq!(rest, expected);
    assert!(spool.stats().dropped.telemetry > 0);
}

#[test]
fn a_record_too_large_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 256);
    let (mut spool, _) = open(&cfg);
    let big = record(1, Class::Result, 300);
    let err = spool.append(&big).unwrap_err();
    assert!(matches!(err, SpoolError::TooLarge { max: 256, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("devices/d1/result/1") && msg.contains("spool.segment_bytes"), "{msg}");
    // In a batch, checked before anything is written.
    let err = spool.append_batch(&[mixed(1), big]).unwrap_err();
    assert!(matches!(err, SpoolError::TooLarge { .. }));
    assert_eq!(spool.stats().next_id, 1);
    assert_eq!(spool.stats().records, 0);
    // Also against max_bytes when it is the smaller limit.
    let dir2 = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(&config(dir2.path(), 200, 4096));
    assert!(matches!(
        spool.append(&record(1, Class::Result, 250)),
        Err(SpoolError::TooLarge { max: 200, .. })
    ));
    assert_eq!(spool.append(&record(1, Class::Result, 10)).unwrap().0, 1);
}

#[test]
fn leftover_tmp_files_are_deleted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 1 << 20);
    let (mut spool, _) = open(&cfg);
    spool.append_batch(&(0..5).map(mixed).collect::<Vec<_>>()).unwrap();
    drop(spool);
    let seg_tmp = dir.path().join("00000000000000000001.seg.tmp");
    let cursor_tmp = dir.path().join("acked.tmp");
    fs::write(&seg_tmp, b"half a rewrite").unwrap();
    fs::write(&cursor_tmp, b"acked=3").unwrap();
    // read_all is read-only: it leaves them.
    Spool::read_all(dir.path()).unwrap();
    assert!(seg_tmp.exists() && cursor_tmp.exists());
    let (mut spool, report) = open(&cfg);
    assert!(!seg_tmp.exists() && !cursor_tmp.exists());
    assert_eq!(report.records, 5);
    assert_eq!(read_rest(&mut spool).len(), 5);
}

#[test]
fn a_damaged_or_missing_cursor_file_means_zero() {
    for garbage in [
        Some(&b"hello"[..]),
        Some(b"\xff\x00\x13"),
        Some(b"acked=3 next=9 crc32c=00000000\n"),
        Some(b""),
        None,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 1 << 20);
        let (mut spool, _) = open(&cfg);
        spool.append_batch(&(0..5).map(mixed).collect::<Vec<_>>()).unwrap();
        spool.ack_through(3);
        spool.persist_cursor().unwrap();
        drop(spool);
        let path = dir.path().join("acked");
        match garbage {
            Some(bytes) => fs::write(&path, bytes).unwrap(),
            None => fs::remove_file(&path).unwrap(),
        }
        let ((mut spool, report), warnings) = warnings_during(|| open(&cfg));
        assert_eq!(warnings, 1, "{garbage:?}");
        assert_eq!(spool.stats().acked, 0);
        assert_eq!(report.records, 5, "everything is replayed");
        assert_eq!(read_rest(&mut spool).len(), 5);
        // Replaced by a valid one, so the next start does not warn again; ids still continue.
        let text = fs::read(&path).unwrap();
        assert_eq!(cursor::parse(&text), Some(cursor::Cursor { acked: 0, next: 6 }));
        drop(spool);
        assert_eq!(warnings_during(|| open(&cfg)).1, 0);
    }
    // A new spool is not a missing cursor.
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(warnings_during(|| open(&config(dir.path(), 1 << 20, 1 << 20))).1, 0);
}

/// Counts `warn!` events, standing in for the agent's subscriber.
struct CountWarnings(Arc<AtomicUsize>);

impl tracing::Subscriber for CountWarnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn warnings_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let count = Arc::new(AtomicUsize::new(0));
    let out = tracing::subscriber::with_default(CountWarnings(count.clone()), f);
    (out, count.load(Ordering::Relaxed))
}

#[test]
fn cursor_text_round_trips_and_checks_itself() {
    let c = cursor::Cursor { acked: 18_231, next: 18_400 };
    let text = cursor::render(c);
    assert_eq!(cursor::parse(text.as_bytes()), Some(c));
    assert!(text.starts_with("acked=18231 next=18400 crc32c="));
    let tampered = text.replace("18231", "18232");
    assert_eq!(cursor::parse(tampered.as_bytes()), None);
}

#[test]
fn read_all_never_modifies_a_torn_spool() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 1 << 20);
    let (mut spool, _) = open(&cfg);
    spool.append_batch(&(0..10).map(mixed).collect::<Vec<_>>()).unwrap();
    drop(spool);
    let seg = seg_files(dir.path()).remove(0);
    let len = fs::metadata(&seg).unwrap().len();
    fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
    let (records, report) = Spool::read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 9);
    assert!(report.torn_bytes_cut > 0);
    assert_eq!(fs::metadata(&seg).unwrap().len(), len - 3);
    let (_, report2) = Spool::read_all(dir.path()).unwrap();
    assert_eq!(report2.torn_bytes_cut, report.torn_bytes_cut);
}

#[test]
fn read_all_skips_a_segment_a_live_agent_dropped_after_the_listing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 1024);
    let (mut spool, _) = open(&cfg);
    spool.append_batch(&(0..50).map(mixed).collect::<Vec<_>>()).unwrap();
    drop(spool);
    let listing = segment::list(dir.path()).unwrap();
    assert!(listing.segments.len() >= 3, "{:?}", listing.segments);
    let (all, _) = Spool::read_segments(&listing.segments, 0).unwrap();
    // The oldest segment goes between the listing and its reading.
    fs::remove_file(&listing.segments[0].1).unwrap();
    let (rest, report) = Spool::read_segments(&listing.segments, 0).unwrap();
    assert_eq!(report.segments, listing.segments.len() - 1);
    assert!(!rest.is_empty() && rest.len() < all.len());
    assert_eq!(rest.last().map(|r| r.0), all.last().map(|r| r.0), "the newer records are all there");
    assert!(report.bad_segments.is_empty(), "{:?}", report.bad_segments);
}

#[test]
fn every_fsync_policy_stores_the_same_records() {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Interval(Duration::from_millis(1)), FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig { fsync, ..config(dir.path(), 1 << 20, 1024) };
        let (mut spool, _) = open(&cfg);
        let recs: Vec<_> = (0..50).map(mixed).collect();
        spool.append_batch(&recs[..25]).unwrap();
        for r in &recs[25..] {
            spool.append(r).unwrap();
        }
        spool.sync().unwrap();
        spool.ack_through(10);
        spool.persist_cursor().unwrap();
        drop(spool);
        let (mut spool, report) = open(&cfg);
        assert_eq!(report.records, 40, "{fsync:?}");
        let got: Vec<_> = read_rest(&mut spool).into_iter().map(|(_, r)| r).collect();
        assert_eq!(got, recs[10..], "{fsync:?}");
    }
}

#[test]
fn invalid_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Spool::open(config(dir.path(), 0, 100)).err().unwrap();
    assert!(err.to_string().contains("spool.max_bytes"), "{err}");
    let err = Spool::open(config(dir.path(), 100, 0)).err().unwrap();
    assert!(err.to_string().contains("spool.segment_bytes"), "{err}");
}

impl SpoolStats {
    fn dropped_of(&self, class: Class) -> u64 {
        match class {
            Class::Result => self.dropped.result,
            Class::Event => self.dropped.event,
            Class::Reply => self.dropped.reply,
            Class::Telemetry => self.dropped.telemetry,
        }
    }
}

#[test]
fn damage_found_while_replaying_loses_only_what_is_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 400);
    let (mut spool, _) = open(&cfg);
    let recs: Vec<_> = (0..40).map(|i| record(i, Class::ALL[i as usize % 3], 60)).collect();
    spool.append_batch(&recs).unwrap();
    let files = seg_files(dir.path());
    let per_file: Vec<usize> = files.iter().map(|f| frame_ends(f).len()).collect();
    // Bit rot under a running spool, in the second frame of the second file.
    flip_byte(&files[1], frame_ends(&files[1])[0] + 10);
    let got = read_rest(&mut spool);
    let lost = per_file[1] - 1;
    assert_eq!(got.len(), 40 - lost);
    assert_eq!(got[per_file[0]].0, per_file[0] as u64 + 1, "the frame before the damage");
    assert_eq!(got[per_file[0] + 1].0, (per_file[0] + per_file[1]) as u64 + 1, "the next file");
    assert_eq!(spool.stats().dropped.total(), lost as u64);
    assert_consistent(&spool, dir.path());
    // The damaged file takes no more appends, and goes once acknowledged.
    spool.ack_through(40);
    assert!(!files[1].exists());
    assert_eq!(spool.append(&mixed(1)).unwrap().0, 41);
    assert_consistent(&spool, dir.path());
}

#[test]
fn damage_found_while_dropping_telemetry_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2000, 500);
    let (mut spool, _) = open(&cfg);
    let mut appended = 0;
    while spool.stats().bytes + 100 < 2000 {
        let class = if appended % 2 == 0 { Class::Telemetry } else { Class::Result };
        spool.append(&record(appended, class, 40)).unwrap();
        appended += 1;
    }
    let first = seg_files(dir.path()).remove(0);
    let ends = frame_ends(&first);
    let in_first = ends.len() as u64;
    flip_byte(&first, ends[1] + 10); // third frame
    // Fill up: the first rewrite meets the damage.
    while spool.stats().dropped.total() == 0 {
        spool.append(&record(appended, Class::Result, 40)).unwrap();
        appended += 1;
    }
    let dropped = spool.stats().dropped;
    // Frames 2.. are behind the damage: lost, and counted by class.
    let lost_results = (2..in_first).filter(|i| i % 2 == 1).count() as u64;
    assert_eq!(dropped.result, lost_results, "{dropped:?}");
    // All of the file's telemetry: frame 0 dropped, the rest lost (later files may add more).
    let telemetry_in_first = (0..in_first).filter(|i| i.is_multiple_of(2)).count() as u64;
    assert!(dropped.telemetry >= telemetry_in_first, "{dropped:?}");
    let (on_disk, report) = Spool::read_all(dir.path()).unwrap();
    assert!(report.bad_segments.is_empty(), "the rewrite left a clean file");
    assert_eq!(on_disk[0].0, 2, "the record before the damage is kept");
    assert_consistent(&spool, dir.path());
}

#[test]
fn the_spool_can_move_to_another_thread() {
    fn is_send<T: Send>() {}
    is_send::<Spool>();
}

/// Deterministic xorshift, so a failing sequence can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn random_operations_keep_every_invariant() {
    for seed in [1u64, 7, 42, 1234, 99_999] {
        let dir = tempfile::tempdir().unwrap();
        // Tight for some seeds, so drops interleave with everything else.
        let cfg = config(dir.path(), if seed % 2 == 0 { 2500 } else { 6000 }, 700);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let (mut spool, _) = open(&cfg);
        let mut appended = std::collections::HashMap::new();
        let mut last_handed = 0;
        let mut persisted_acked = 0;
        for step in 0..1500 {
            let ctx = format!("seed {seed} step {step}");
            match rng.below(100) {
                0..=39 => {
                    let i = rng.below(1000);
                    let rec = record(i, Class::ALL[rng.below(4) as usize], rng.below(120) as usize);
                    let (id, _) = spool.append(&rec).unwrap();
                    appended.insert(id, rec);
                }
                40..=49 => {
                    let recs: Vec<_> = (0..rng.below(6)).map(|i| mixed(i + step)).collect();
                    let (ids, _) = spool.append_batch(&recs).unwrap();
                    appended.extend(ids.into_iter().zip(recs));
                }
                50..=69 => {
                    for (id, rec) in spool.next_batch(rng.below(8) as usize).unwrap() {
                        assert!(
                            id > last_handed && id > spool.stats().acked,
                            "{ctx}: {id} after {last_handed}"
                        );
                        assert_eq!(appended.get(&id), Some(&rec), "{ctx}");
                        last_handed = id;
                    }
                }
                70..=84 => {
                    // PUBACKs arrive for what was handed out, possibly all of it.
                    let acked = spool.stats().acked;
                    if last_handed > acked {
                        spool.ack_through(acked + 1 + rng.below(last_handed - acked));
                    }
                }
                85..=89 => {
                    spool.rewind();
                    last_handed = spool.stats().acked;
                }
                90..=94 => {
                    spool.persist_cursor().unwrap();
                    persisted_acked = spool.stats().acked;
                }
                95..=96 => spool.sync().unwrap(),
                _ => {
                    drop(spool);
                    let (reopened, report) = open(&cfg);
                    spool = reopened;
                    assert_eq!(report.torn_bytes_cut, 0, "{ctx}");
                    assert!(report.bad_segments.is_empty(), "{ctx}");
                    assert_eq!(spool.stats().acked, persisted_acked, "{ctx}");
                    last_handed = persisted_acked;
                }
            }
            assert!(spool.stats().bytes <= cfg.max_bytes, "{ctx}");
            assert_consistent(&spool, dir.path());
        }
        // Whatever was not dropped or acknowledged is handed out, in order, after a rewind.
        spool.rewind();
        let acked = spool.stats().acked;
        let rest = read_rest(&mut spool);
        let (on_disk, _) = Spool::read_all(dir.path()).unwrap();
        let expected: Vec<_> = on_disk.into_iter().filter(|(id, _)| *id > acked).collect();
        assert_eq!(rest, expected, "seed {seed}");
        for (id, rec) in &rest {
            assert_eq!(appended.get(id), Some(rec));
        }
    }
}

const CHILD_DIR_VAR: &str = "EDGE_AGENT_SPOOL_TEST_CHILD_DIR";

fn killed_content(id: u64) -> Record {
    record(id, Class::ALL[(id % 4) as usize], (id * 13 % 300) as usize)
}

/// `kill -9` at a random moment of a busy appender: the spool opens, every record reads
/// back as written, and appends continue. The test binary re-runs itself as the appender.
#[test]
fn kill_9_while_appending_leaves_a_readable_spool() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_VAR) {
        let (mut spool, _) = open(&config(Path::new(&dir), 1 << 30, 64 << 10));
        // Bounded, so a child whose parent died does not run on.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let id = spool.stats().next_id;
            spool.append(&killed_content(id)).unwrap();
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut previous: Vec<u64> = Vec::new();
    for round in 1..=3u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "tests::kill_9_while_appending_leaves_a_readable_spool", "--test-threads=1"])
            .env(CHILD_DIR_VAR, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for it to have appended a while, into a segment past the first.
        let want = round * 300_000;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let bytes: u64 =
                seg_files(dir.path()).iter().filter_map(|f| fs::metadata(f).ok()).map(|m| m.len()).sum();
            if bytes >= want {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "the appender exited early");
            assert!(std::time::Instant::now() < deadline, "the appender is too slow");
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let (mut spool, report) = open(&config(dir.path(), 1 << 30, 64 << 10));
        assert!(report.bad_segments.is_empty(), "{report:?}");
        let got = read_rest(&mut spool);
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert!(ids.len() > previous.len(), "round {round}: the appender made progress");
        assert_eq!(
            ids[..previous.len()],
            previous[..],
            "round {round}: every record of the rounds before is kept"
        );
        // Within one appender's run ids have no gap. Between runs there may be one: a kill
        // after a new segment file was created, before its first record was written,
        // leaves an empty segment named by that record's id, and ids are never reused.
        let new = &ids[previous.len()..];
        let next = previous.last().map_or(1, |last| last + 1);
        assert!(new[0] == next || new[0] == next + 1, "round {round}: resumes at {} after {next}", new[0]);
        assert!(new.windows(2).all(|w| w[1] == w[0] + 1), "round {round}: ids without gaps within a run");
        for (id, rec) in &got {
            assert_eq!(rec, &killed_content(*id), "round {round}: record {id} as written");
        }
        previous = ids;
    }
}
