use super::read::{self, Filter};
use super::*;
use proptest::prelude::*;

fn line(ts: &str, level: &str, msg: &str) -> Vec<u8> {
    format!("{{\"timestamp\":\"{ts}\",\"level\":\"{level}\",\"message\":\"{msg}\"}}\n").into_bytes()
}

/// Waits until the writer has written out `text` (it flushes when its queue runs dry).
fn wait_for(dir: &Path, text: &str) {
    for _ in 0..500 {
        let mut all = Vec::new();
        read::copy(dir, &Filter::default(), &mut all).unwrap();
        if String::from_utf8_lossy(&all).contains(text) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{text} never reached the log");
}

#[test]
fn the_log_rotates_within_its_bound_and_reads_back_oldest_first_with_the_active_file() {
    let dir = tempfile::tempdir().unwrap();
    // Left by a run with more files: removed at start, the bound holds.
    std::fs::write(dir.path().join("agent.log.7"), "old\n").unwrap();
    let bound = Bound { total_bytes: 4000, files: 4 };
    let sink = start(dir.path(), bound).unwrap();
    assert!(!dir.path().join("agent.log.7").exists());
    use tracing_subscriber::fmt::MakeWriter;
    for i in 0..200 {
        sink.make_writer()
            .write_all(&line("2026-12-07T10:00:00Z", "INFO", &format!("event {i:03}")))
            .unwrap();
    }
    wait_for(dir.path(), "event 199");
    let names = files(dir.path());
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.last().unwrap().ends_with(ACTIVE));
    let total: u64 = names.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(total <= bound.total_bytes, "{total} bytes");
    let mut all = Vec::new();
    read::copy(dir.path(), &Filter::default(), &mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    let numbers: Vec<u32> =
        text.lines().map(|l| l.split("event ").nth(1).unwrap()[..3].parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order: {numbers:?}");
    assert_eq!(numbers.last(), Some(&199), "the active file is read too");
    assert!(numbers[0] > 0, "the oldest lines fell off");
}

#[test]
fn the_filter_keeps_the_time_range_and_the_levels_at_or_above() {
    let ms = |t: &str| read::parse_time(t, std::time::SystemTime::now()).unwrap();
    let f = Filter {
        since_ms: Some(ms("2026-12-07T10:00:00Z")),
        until_ms: Some(ms("2026-12-07T11:00:00Z")),
        level: Some(tracing::Level::WARN),
    };
    let l = |ts, lv| String::from_utf8(line(ts, lv, "x")).unwrap();
    assert!(f.keeps(l("2026-12-07T10:30:00Z", "WARN").trim()));
    assert!(f.keeps(l("2026-12-07T10:30:00.5Z", "ERROR").trim()));
    assert!(!f.keeps(l("2026-12-07T10:30:00Z", "INFO").trim()));
    assert!(!f.keeps(l("2026-12-07T09:59:59Z", "ERROR").trim()));
    assert!(!f.keeps(l("2026-12-07T11:00:01Z", "ERROR").trim()));
    assert!(!f.keeps("not json"), "an unreadable line is left out when a filter asks");
    assert!(Filter::default().keeps("not json"), "and kept when none does");
}

#[test]
fn time_and_level_arguments_are_read_or_refused_plainly() {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(10_000);
    assert_eq!(read::parse_time("2h", now), Ok(10_000_000 - 7_200_000));
    assert_eq!(read::parse_time("1970-01-01T00:00:01Z", now), Ok(1000));
    assert!(read::parse_time("yesterday", now).unwrap_err().contains("RFC 3339"));
    assert_eq!(read::parse_level("WARN"), Ok(tracing::Level::WARN));
    assert!(read::parse_level("loud").unwrap_err().contains("error, warn, info, debug or trace"));
}

proptest! {
    /// Any line, JSON or not, is read without a panic, and a line the agent writes is
    /// read back to its time and level.
    #[test]
    fn any_line_is_read_without_panic(text in ".{0,200}", secs in 0u64..4_000_000_000, lv in 0usize..5) {
        let f = Filter { since_ms: Some(0), until_ms: None, level: Some(tracing::Level::TRACE) };
        let _ = f.keeps(&text);
        let _ = read::parse_line(&text);
        let _ = read::parse_time(&text, std::time::SystemTime::now());
        let _ = read::parse_level(&text);
        let levels = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"];
        let ts = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        let l = String::from_utf8(line(&ts.to_string(), levels[lv], "m")).unwrap();
        prop_assert_eq!(read::parse_line(l.trim()), Some((secs * 1000, levels[lv].parse().unwrap())));
    }
}

proptest! {
    /// A time given as RFC 3339 reads back to its millisecond, and a span back from now
    /// to now minus the span.
    #[test]
    fn times_read_back(ms in 0u64..4_000_000_000_000, back_s in 0u64..1_000_000) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let text = humantime::format_rfc3339_millis(t).to_string();
        prop_assert_eq!(read::parse_time(&text, std::time::SystemTime::now()), Ok(ms));
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000);
        prop_assert_eq!(read::parse_time(&format!("{back_s}s"), now), Ok((2_000_000 - back_s) * 1000));
    }
}

#[test]
fn filters_are_levels_and_targets_and_a_misspelt_level_is_refused() {
    for good in ["info", "DEBUG", "off", "edge_agent::mqtt=debug,info", " warn , rumqttc=error "] {
        assert!(super::parse_filter(good).is_some(), "{good}");
    }
    // The filter itself would read `verbose` as a target name and enable it at trace.
    for bad in ["verbose", "", "info,", "edge_agent=loud", "=debug", "[span{x=1}]=debug", "a b=info"] {
        assert!(super::parse_filter(bad).is_none(), "{bad}");
    }
}
