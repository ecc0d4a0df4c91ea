//! Property tests of the spool's decoders: frames round-trip; no bytes make a reader
//! panic or allocate beyond what it was given; and after any cut or damage of a segment
//! file, the spool recovers exactly the records written before it, invents none, and
//! takes new records.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;

use super::frame::{self, Frame, MAX_PAYLOAD};
use super::*;

/// `cases` unless PROPTEST_CASES asks for another count.
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { cases };
    ProptestConfig { cases, ..default }
}

fn class() -> impl Strategy<Value = Class> {
    prop::sample::select(Class::ALL.to_vec())
}

fn record() -> impl Strategy<Value = Record> {
    (
        prop_oneof!["[a-z0-9/+#-]{0,40}", any::<String>()],
        0u8..=2,
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..300),
        class(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..24)),
    )
        .prop_map(|(topic, qos, retain, payload, class, correlation)| Record {
            topic,
            qos,
            retain,
            payload,
            class,
            correlation,
        })
}

fn spool_config(dir: &Path, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig { dir: dir.to_path_buf(), max_bytes: 1 << 30, segment_bytes, fsync: FsyncPolicy::Never }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// The frames of an intact segment file: (id, start, end).
fn frames_of(path: &Path) -> Vec<(u64, u64, u64)> {
    let bytes = fs::read(path).expect("read segment");
    let mut r = &bytes[..];
    let mut buf = Vec::new();
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        match frame::read(&mut r, bytes.len() as u64 - at, &mut buf).expect("read frame") {
            Frame::Record { stored, len } => {
                out.push((stored.id, at, at + len));
                at += len;
            }
            Frame::End => return out,
            Frame::Bad(bad) => panic!("an intact segment has a bad frame at {at}: {bad}"),
        }
    }
}

fn read_everything(spool: &mut Spool) -> Vec<(u64, Record)> {
    spool.next_batch(usize::MAX).expect("next_batch")
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn frames_round_trip(records in prop::collection::vec((any::<u64>(), record()), 1..8)) {
        let mut bytes = Vec::new();
        let mut lens = Vec::new();
        for (id, rec) in &records {
            lens.push(frame::encode(*id, rec, &mut bytes).expect("encode"));
        }
        let mut r = &bytes[..];
        let mut remaining = bytes.len() as u64;
        let mut buf = Vec::new();
        for ((id, rec), len) in records.iter().zip(lens) {
            match frame::read(&mut r, remaining, &mut buf).expect("read") {
                Frame::Record { stored, len: got } => {
                    prop_assert_eq!(stored.id, *id);
                    prop_assert_eq!(&stored.record, rec);
                    prop_assert_eq!(got, len);
                    remaining -= len;
                }
                other => prop_assert!(false, "expected a record, got {other:?}"),
            }
        }
        prop_assert!(matches!(frame::read(&mut r, remaining, &mut buf).expect("read"), Frame::End));
    }

    /// Whatever the bytes, a reader returns a verdict, and the buffer it fills never grows
    /// beyond the bytes it was given: a length field of 4 GiB does not allocate 4 GiB.
    #[test]
    fn any_bytes_decode_without_panic_within_their_own_size(
        len_field in prop_oneof![any::<u32>(), Just(u32::MAX), Just(MAX_PAYLOAD as u32), Just(MAX_PAYLOAD as u32 + 1), 0u32..64],
        rest in prop::collection::vec(any::<u8>(), 0..512),
        raw in prop::collection::vec(any::<u8>(), 0..512),
        structured in any::<bool>(),
    ) {
        let bytes = if structured { [&len_field.to_le_bytes()[..], &rest].concat() } else { raw };
        let mut r = &bytes[..];
        let mut remaining = bytes.len() as u64;
        let mut buf = Vec::new();
        while let Frame::Record { len, .. } =
            frame::read(&mut r, remaining, &mut buf).expect("reading a slice cannot fail")
        {
            prop_assert!(len <= remaining);
            remaining -= len;
            prop_assert!(buf.capacity() <= bytes.len(), "{} bytes of buffer for {} bytes of input", buf.capacity(), bytes.len());
        }
        prop_assert!(buf.capacity() <= bytes.len(), "{} bytes of buffer for {} bytes of input", buf.capacity(), bytes.len());
    }
}

/// Where a segment file is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Cut the file at this offset (a power cut in the last segment; elsewhere, storage
    /// damage).
    Truncate { segment: Index, at: Index },
    /// Change one byte.
    Flip { segment: Index, at: Index, mask: u8 },
    /// Zeros after the last frame, as a file system may leave after a crash.
    ZeroTail { len: usize },
    /// Bytes after the last frame that are not a frame.
    Garbage { bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (any::<Index>(), any::<Index>()).prop_map(|(segment, at)| Damage::Truncate { segment, at }),
        3 => (any::<Index>(), any::<Index>(), 1u8..=255).prop_map(|(segment, at, mask)| Damage::Flip { segment, at, mask }),
        1 => (1usize..600).prop_map(|len| Damage::ZeroTail { len }),
        1 => prop::collection::vec(any::<u8>(), 1..600).prop_map(|bytes| Damage::Garbage { bytes }),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    /// Records appended (singly and in batches, over segments of any size, some of them
    /// acknowledged), then one segment cut or damaged anywhere: reopening recovers every
    /// unacknowledged record whose frame lies wholly before the damage, in order and
    /// unchanged, and nothing else; the spool then takes new records, also across a
    /// reopen.
    #[test]
    fn recovery_after_any_cut_or_damage(
        records in prop::collection::vec(record(), 1..40),
        batches in prop::collection::vec(1usize..6, 1..40),
        segment_bytes in 16u64..3000,
        acked_share in 0.0f64..1.0,
        damage in damage(),
        extra in record(),
    ) {
        // Segments as small as the largest record allows (larger records are refused).
        let mut scratch = Vec::new();
        let largest = records.iter().chain([&extra]).map(|r| {
            scratch.clear();
            frame::encode(u64::MAX, r, &mut scratch).expect("encode")
        }).max().unwrap_or(0);
        let segment_bytes = segment_bytes.max(largest);
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let cfg = spool_config(dir, segment_bytes);
        let (mut spool, _) = Spool::open(cfg.clone()).expect("open");
        let mut written: Vec<(u64, Record)> = Vec::new();
        let mut rest = &records[..];
        for n in batches.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*n).min(rest.len()));
            if now.len() == 1 {
                let (id, _) = spool.append(&now[0]).expect("append");
                written.push((id, now[0].clone()));
            } else {
                let (ids, _) = spool.append_batch(now).expect("append_batch");
                written.extend(ids.into_iter().zip(now.iter().cloned()));
            }
            rest = later;
        }
        let acked = written[((written.len() as f64 * acked_share) as usize).min(written.len() - 1)].0
            * u64::from(acked_share > 0.2);
        spool.ack_through(acked);
        spool.persist_cursor().expect("persist");
        drop(spool);

        // Where every frame is, then the damage and the records it must cost.
        let files = segment_files(dir);
        prop_assert!(!files.is_empty());
        let layout: Vec<Vec<(u64, u64, u64)>> = files.iter().map(|f| frames_of(f)).collect();
        let last = files.len() - 1;
        let mut lost = std::collections::BTreeSet::new();
        let lose_from = |seg: usize, offset: u64, lost: &mut std::collections::BTreeSet<u64>| {
            for &(id, _, end) in &layout[seg] {
                if end > offset {
                    lost.insert(id);
                }
            }
        };
        match &damage {
            Damage::Truncate { segment, at } => {
                let s = segment.index(files.len());
                let len = fs::metadata(&files[s]).expect("metadata").len();
                let at = at.index(len as usize + 1) as u64;
                fs::OpenOptions::new().write(true).open(&files[s]).expect("open").set_len(at).expect("cut");
                lose_from(s, at, &mut lost);
            }
            Damage::Flip { segment, at, mask } => {
                let s = segment.index(files.len());
                let mut bytes = fs::read(&files[s]).expect("read");
                if !bytes.is_empty() {
                    let at = at.index(bytes.len());
                    bytes[at] ^= mask;
                    fs::write(&files[s], &bytes).expect("write");
                    lose_from(s, at as u64, &mut lost);
                }
            }
            Damage::ZeroTail { len } => {
                let mut bytes = fs::read(&files[last]).expect("read");
                bytes.extend(std::iter::repeat_n(0u8, *len));
                fs::write(&files[last], bytes).expect("write");
            }
            Damage::Garbage { bytes: junk } => {
                let mut bytes = fs::read(&files[last]).expect("read");
                bytes.extend_from_slice(junk);
                fs::write(&files[last], bytes).expect("write");
            }
        }
        let expected: Vec<(u64, Record)> =
            written.iter().filter(|(id, _)| *id > acked && !lost.contains(id)).cloned().collect();

        let (mut spool, report) = Spool::open(cfg.clone()).expect("reopen after damage");
        let got = read_everything(&mut spool);
        prop_assert_eq!(&got, &expected, "damage {:?}, report {:?}", damage, report);
        prop_assert_eq!(report.records, expected.len() as u64);
        // A cut tail leaves the last file ending at its last whole frame (`frames_of`
        // refuses a bad frame).
        if let Some(f) = segment_files(dir).last() {
            frames_of(f);
        }

        let highest = written.iter().map(|(id, _)| *id).max().unwrap_or(0);
        let (id, _) = spool.append(&extra).expect("append after recovery");
        let survivors_max = expected.iter().map(|(id, _)| *id).max().unwrap_or(0);
        prop_assert!(id > survivors_max && id > acked, "id {id} after {survivors_max} (acked {acked})");
        prop_assert!(id <= highest + 1, "ids stay dense: {id} after {highest}");
        prop_assert_eq!(read_everything(&mut spool), vec![(id, extra.clone())]);
        spool.persist_cursor().expect("persist");
        drop(spool);
        let (mut spool, report) = Spool::open(cfg).expect("reopen");
        prop_assert_eq!(report.torn_bytes_cut, 0, "recovery left nothing to cut");
        let mut again = expected.clone();
        again.push((id, extra));
        prop_assert_eq!(read_everything(&mut spool), again);
    }

    /// Files in a spool directory holding anything at all (valid frames, garbage, a bad
    /// cursor): opening never panics or fails on the data, only what decodes is handed
    /// out, and the spool takes new records.
    #[test]
    fn any_directory_content_opens(
        files in prop::collection::vec((1u64..200, prop::collection::vec(any::<u8>(), 0..400), prop::collection::vec((1u64..300, record()), 0..4)), 0..4),
        cursor in prop::option::of(prop_oneof![prop::collection::vec(any::<u8>(), 0..100), (0u64..300, 0u64..300).prop_map(|(a, n)| super::cursor::render(super::cursor::Cursor { acked: a, next: n }).into_bytes())]),
        extra in record(),
    ) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let mut known = Vec::new();
        for (name_id, junk, valid) in &files {
            let mut bytes = Vec::new();
            for (id, rec) in valid {
                frame::encode(*id, rec, &mut bytes).expect("encode");
                known.push(rec.clone());
            }
            bytes.extend_from_slice(junk);
            fs::write(dir.join(super::segment::file_name(*name_id)), bytes).expect("write");
        }
        if let Some(c) = &cursor {
            fs::write(dir.join(super::cursor::FILE), c).expect("write cursor");
        }
        let (_, _) = Spool::read_all(dir).expect("read_all reads any content");
        let (mut spool, _) = Spool::open(spool_config(dir, 4096)).expect("open reads any content");
        for (_, rec) in read_everything(&mut spool) {
            prop_assert!(known.contains(&rec), "a record that was never written: {rec:?}");
        }
        let (id, _) = spool.append(&extra).expect("append");
        let (mut spool, _) = {
            drop(spool);
            Spool::open(spool_config(dir, 4096)).expect("reopen")
        };
        let all = read_everything(&mut spool);
        prop_assert_eq!(all.last(), Some(&(id, extra)));
    }
}
