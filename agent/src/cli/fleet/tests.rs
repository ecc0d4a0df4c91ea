//! The fleet view fed messages directly: what each message does to a device's row, the
//! summary, filters and sorting, the table's width, and malformed input from devices.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use serde_json::json;

use super::view::*;

const P: &str = "edge";

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn status(f: &mut Fleet, d: &str, state: &str, models: serde_json::Value) {
    let body = json!({"state": state, "version": "0.1.0", "models": models, "since": "2026-12-07T10:00:00Z"});
    f.apply(P, &format!("{P}/{d}/status"), body.to_string().as_bytes(), true, at(2_000_000_000));
}

fn event(f: &mut Fleet, d: &str, kind: &str, model: &str, detail: serde_json::Value) {
    let body = json!({"ts": "2026-12-07T10:00:01Z", "kind": kind, "severity": "info", "model": model, "detail": detail});
    f.apply(P, &format!("{P}/{d}/events"), body.to_string().as_bytes(), false, at(2_000_000_000));
}

/// Ten devices: 0-5 on vibration 1, 6-9 on vibration 2; 8 and 9 offline.
fn fleet() -> Fleet {
    let mut f = Fleet::new();
    for i in 0..10 {
        let v = if i < 6 { "1" } else { "2" };
        let state = if i >= 8 { "offline" } else { "online" };
        status(&mut f, &format!("dev-{i:02}"), state, json!({"vibration": v}));
    }
    f
}

fn ids(rows: &[&Device]) -> Vec<String> {
    rows.iter().map(|d| d.device.clone()).collect()
}

#[test]
fn topics_name_the_device_and_the_kind() {
    assert_eq!(parse_topic("edge", "edge/pump-7/status"), Some(("pump-7", Topic::Status)));
    assert_eq!(parse_topic("edge", "edge/pump-7/telemetry"), Some(("pump-7", Topic::Telemetry)));
    assert_eq!(parse_topic("a/b", "a/b/pump-7/events"), Some(("pump-7", Topic::Events)));
    assert_eq!(parse_topic("edge", "edge/pump-7/results/vibration"), None);
    assert_eq!(parse_topic("edge", "edge//status"), None);
    assert_eq!(parse_topic("edge", "edgex/pump-7/status"), None);
    assert_eq!(parse_topic("edge", "edge/fleet/probe/x"), None);
}

#[test]
fn the_summary_counts_devices_per_version_and_state() {
    let f = fleet();
    let rows = f.rows(&Filter::default(), SortKey::Device);
    let s = summarize(&rows, None);
    assert_eq!((s.devices, s.online, s.offline, s.unknown, s.malformed), (10, 8, 2, 0, 0));
    assert_eq!(s.versions.len(), 2);
    assert_eq!((s.versions[0].version.as_str(), s.versions[0].devices, s.versions[0].online), ("1", 6, 6));
    assert_eq!((s.versions[1].version.as_str(), s.versions[1].devices, s.versions[1].offline), ("2", 4, 2));
    assert_eq!(s.versions[1].states.get("active"), Some(&4));
}

#[test]
fn events_move_a_models_state_and_count_rollbacks() {
    let mut f = fleet();
    event(&mut f, "dev-06", "update-downloading", "vibration", json!({"version": "3"}));
    assert_eq!(f.device("dev-06").unwrap().models["vibration"].state, ModelState::Updating);
    event(
        &mut f,
        "dev-06",
        "model-activated",
        "vibration",
        json!({"version": "3", "previous": "2", "probation": true}),
    );
    let m = &f.device("dev-06").unwrap().models["vibration"];
    assert_eq!((m.state, m.version.as_str()), (ModelState::Probation, "3"));
    event(&mut f, "dev-06", "model-rolled-back", "vibration", json!({"from": "3", "to": "2"}));
    let d = f.device("dev-06").unwrap();
    assert_eq!(
        (d.models["vibration"].state, d.models["vibration"].version.as_str()),
        (ModelState::RolledBack, "2")
    );
    assert_eq!(d.rollbacks, 1);
    event(&mut f, "dev-07", "selftest-failed", "vibration", json!({"version": "3"}));
    event(&mut f, "dev-05", "model-drift", "vibration", json!({}));
    let rows = f.rows(
        &Filter { state: Some(StateFilter::Model(ModelState::RolledBack)), ..Filter::default() },
        SortKey::Device,
    );
    assert_eq!(ids(&rows), ["dev-06"]);
    let rows = f.rows(
        &Filter { state: Some(StateFilter::Model(ModelState::Failed)), ..Filter::default() },
        SortKey::Device,
    );
    assert_eq!(ids(&rows), ["dev-07"]);
    let rows = f.rows(&Filter { state: Some(StateFilter::Drifting), ..Filter::default() }, SortKey::Device);
    assert_eq!(ids(&rows), ["dev-05"]);
    let rows = f.rows(&Filter::default(), SortKey::Rollbacks);
    assert_eq!(rows[0].device, "dev-06");
    // A new version in the status starts the model afresh.
    status(&mut f, "dev-07", "online", json!({"vibration": "4"}));
    assert_eq!(f.device("dev-07").unwrap().models["vibration"].state, ModelState::Active);
}

/// `--state` takes every model state by the name the table and `--json` write for it (the
/// filter's list comes from the states' own), with the link states before and
/// `drifting` after, as the CLI always listed them.
#[test]
fn state_filter_accepts_every_state_name() {
    use clap::ValueEnum;
    for s in ModelState::value_variants() {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str(), "--json name of {s:?}");
        assert_eq!(StateFilter::from_str(s.as_str(), false), Ok(StateFilter::Model(*s)));
    }
    let names: Vec<String> = StateFilter::value_variants()
        .iter()
        .map(|f| f.to_possible_value().unwrap().get_name().to_string())
        .collect();
    let want = [
        "online",
        "offline",
        "unknown",
        "malformed",
        "active",
        "updating",
        "probation",
        "rolled-back",
        "failed",
        "pulled",
        "drifting",
    ];
    assert_eq!(names, want);
    for name in want {
        let f = StateFilter::from_str(name, false).unwrap();
        assert_eq!(f.to_possible_value().unwrap().get_name(), name);
    }
    assert!(StateFilter::from_str("rolled_back", false).is_err());
}

#[test]
fn telemetry_gives_drift_and_last_seen_and_an_empty_status_removes_the_device() {
    let mut f = fleet();
    let t = json!({"schema": 3, "version": "0.2.0", "models": {"vibration": {"version": "1", "drifting": true,
        "drift": {"input.std": 0.7, "output.label": 0.1}}}});
    f.apply(P, "edge/dev-01/telemetry", t.to_string().as_bytes(), false, at(2_000_000_100));
    let d = f.device("dev-01").unwrap();
    assert_eq!(d.models["vibration"].drift, Some(0.7));
    assert_eq!(d.models["vibration"].drifting, Some(true));
    assert_eq!(d.agent_version.as_deref(), Some("0.2.0"));
    assert_eq!(d.last_seen, Some(2_000_000_100));
    // A report of only what changed keeps the rest.
    f.apply(P, "edge/dev-01/telemetry", br#"{"schema":3}"#, false, at(2_000_000_200));
    assert_eq!(f.device("dev-01").unwrap().models["vibration"].drift, Some(0.7));
    assert_eq!(f.rows(&Filter::default(), SortKey::Drift)[0].device, "dev-01");
    f.apply(P, "edge/dev-01/status", b"", true, at(2_000_000_300));
    assert!(f.device("dev-01").is_none());
    assert_eq!(f.len(), 9);
}

#[test]
fn filters_combine_and_sorting_is_stable() {
    let f = fleet();
    let by = |filter: Filter, sort| ids(&f.rows(&filter, sort));
    let v2 = Filter { version: Some("2".into()), ..Filter::default() };
    assert_eq!(by(v2.clone(), SortKey::Device), ["dev-06", "dev-07", "dev-08", "dev-09"]);
    let v2_off = Filter { state: Some(StateFilter::Offline), ..v2 };
    assert_eq!(by(v2_off, SortKey::Device), ["dev-08", "dev-09"]);
    assert!(by(Filter { model: Some("other".into()), ..Filter::default() }, SortKey::Device).is_empty());
    assert_eq!(by(Filter { device: Some("dev-0[1]".into()), ..Filter::default() }, SortKey::Device).len(), 0);
    assert_eq!(by(Filter { device: Some("*-0?".into()), ..Filter::default() }, SortKey::Device).len(), 10);
    assert_eq!(by(Filter { device: Some("*9".into()), ..Filter::default() }, SortKey::Device), ["dev-09"]);
    let online_sort = by(Filter::default(), SortKey::Online);
    assert_eq!(&online_sort[..3], ["dev-08", "dev-09", "dev-00"]);
    let version_sort = by(Filter::default(), SortKey::Version);
    assert_eq!(version_sort.first().map(String::as_str), Some("dev-00"));
    assert_eq!(version_sort.last().map(String::as_str), Some("dev-09"));
}

#[test]
fn versions_sort_naturally() {
    use std::cmp::Ordering::*;
    assert_eq!(natural("2", "10"), Less);
    assert_eq!(natural("1.9", "1.10"), Less);
    assert_eq!(natural("1.10", "1.10"), Equal);
    assert_eq!(natural("b", "a"), Greater);
    assert_eq!(natural("", "1"), Less);
    assert_eq!(natural("007", "7"), Greater, "equal numbers: the longer text last");
}

#[test]
fn globs_match_as_documented() {
    assert!(glob("*", ""));
    assert!(glob("dev-*", "dev-12"));
    assert!(glob("d?v-*2", "dev-12"));
    assert!(!glob("dev-?", "dev-12"));
    assert!(glob("*a*b*c", "xxaxxbxxc"));
    assert!(!glob("*a*b*c", "xxaxxbxx"));
}

#[test]
fn malformed_messages_are_shown_on_their_device_and_break_nothing() {
    let mut f = fleet();
    let now = at(2_000_000_000);
    f.apply(P, "edge/bad-1/status", b"\xff\xfe not json", true, now);
    f.apply(P, "edge/bad-2/status", br#"{"state":"sideways","models":{}}"#, true, now);
    f.apply(P, "edge/bad-3/status", br#"{"state":"online","models":{"m":5}}"#, true, now);
    f.apply(P, "edge/dev-00/telemetry", br#"{"models":[1,2]}"#, false, now);
    f.apply(P, "edge/dev-01/events", br#"{"kind":"model-rolled-back"}"#, false, now);
    f.apply(P, "edge/bad\x1b[2J/status", br#"[]"#, true, now);
    let rows = f.rows(&Filter { state: Some(StateFilter::Malformed), ..Filter::default() }, SortKey::Device);
    assert_eq!(rows.len(), 6, "{:?}", ids(&rows));
    let bad1 = f.device("bad-1").unwrap();
    assert_eq!(bad1.online, None);
    assert!(bad1.problem.as_deref().unwrap().starts_with("status: not JSON"), "{:?}", bad1.problem);
    assert!(f.device("bad-2").unwrap().problem.as_deref().unwrap().contains("`state`"));
    assert_eq!(f.device("bad-3").unwrap().online, Some(true), "what could be read is kept");
    // The good devices are still counted right, and the table has no escape sequence.
    let all = f.rows(&Filter::default(), SortKey::Device);
    let s = summarize(&all, None);
    assert_eq!((s.devices, s.malformed, s.unknown), (14, 6, 3));
    let text = table(&all, &s, None, 2_000_000_000, 120, usize::MAX);
    assert!(!text.contains('\x1b'), "{text}");
    assert!(text.contains("malformed"), "{text}");
}

#[test]
fn the_table_fits_its_width_and_says_how_many_rows_it_left_out() {
    let f = fleet();
    let rows = f.rows(&Filter::default(), SortKey::Device);
    let s = summarize(&rows, None);
    let text = table(&rows, &s, None, 2_000_000_000, 50, 4);
    for line in text.lines() {
        assert!(line.chars().count() <= 50, "{line:?}");
    }
    assert!(text.starts_with("DEVICE"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("dev-")).count(), 4, "{text}");
    assert!(text.contains("… 6 more"), "{text}");
    assert!(text.contains("10 devices: 8 online, 2 offline"), "{text}");
}

#[test]
fn the_json_document_keeps_its_field_names() {
    let f = fleet();
    let rows = f.rows(&Filter { device: Some("dev-08".into()), ..Filter::default() }, SortKey::Device);
    let summary = summarize(&rows, None);
    let doc = Document { schema: 1, complete: true, generated: "t".into(), summary, devices: rows };
    let v = serde_json::to_value(&doc).unwrap();
    assert_eq!(v["devices"][0]["device"], "dev-08");
    assert_eq!(v["devices"][0]["online"], false);
    assert_eq!(v["devices"][0]["models"]["vibration"]["version"], "2");
    assert_eq!(v["devices"][0]["models"]["vibration"]["state"], "active");
    assert_eq!(v["summary"]["versions"][0]["states"]["active"], 1);
    // The names scripts read (serde_json's map lists them sorted).
    let keys: Vec<&String> = v["devices"][0].as_object().unwrap().keys().collect();
    let want = [
        "agent_version",
        "device",
        "last_seen",
        "malformed",
        "models",
        "online",
        "problem",
        "recent_events",
        "rollbacks",
    ];
    assert_eq!(keys, want);
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,8}".prop_map(|d| format!("edge/{d}/status")),
        "[a-z0-9-]{1,8}".prop_map(|d| format!("edge/{d}/telemetry")),
        "[a-z0-9-]{1,8}".prop_map(|d| format!("edge/{d}/events")),
        ".{0,40}",
    ]
}

/// Payloads near the real ones (JSON of the right shape with wrong types, values and
/// sizes) and plain bytes.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<f64>().prop_map(|x| json!(x)),
        ".{0,300}".prop_map(|s| json!(s)),
        Just(json!([1, "2"])),
        Just(json!({"vibration": "1"})),
        Just(json!({"vibration": {"version": 2, "drift": {"a": 1e308}}})),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        (
            prop_oneof![Just("online"), Just("offline"), Just("x"), Just("model-rolled-back"), Just("model-activated")],
            value.clone(),
            value.clone(),
            value,
        )
            .prop_map(|(s, a, b, c)| {
                json!({"state": s, "kind": s, "version": a, "models": b, "model": c.clone(), "detail": c, "since": "2026-12-07T10:00:00Z"})
                    .to_string()
                    .into_bytes()
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever devices send, the view never panics, keeps its bounds, and its counts
    /// agree with the rows.
    #[test]
    fn any_messages_leave_a_consistent_bounded_view(
        msgs in proptest::collection::vec((topic(), payload(), any::<bool>()), 0..40),
    ) {
        let mut f = Fleet::new();
        for (t, p, retained) in &msgs {
            f.apply(P, t, p, *retained, at(2_000_000_000));
        }
        let rows = f.rows(&Filter::default(), SortKey::Drift);
        let s = summarize(&rows, None);
        prop_assert_eq!(s.devices as usize, f.len());
        prop_assert_eq!(s.online + s.offline + s.unknown, s.devices);
        let per_model: u64 = s.versions.iter().map(|v| v.devices).sum();
        prop_assert_eq!(per_model as usize, rows.iter().map(|d| d.models.len()).sum::<usize>());
        for d in &rows {
            prop_assert!(d.models.len() <= 32);
            prop_assert!(d.recent_events.len() <= 3);
            prop_assert!(d.problem.as_ref().is_none_or(|p| p.len() <= 170));
            prop_assert!(d.models.iter().all(|(n, m)| n.len() <= 70 && m.version.len() <= 70));
        }
        let text = table(&rows, &s, None, 2_000_000_000, 80, 10);
        prop_assert!(text.lines().all(|l| l.chars().count() <= 80));
        prop_assert!(!text.contains('\x1b'));
    }

    /// A message that is not a JSON object marks its device malformed, with the topic
    /// kind named, and leaves the other devices as they were.
    #[test]
    fn a_message_that_does_not_read_is_shown_as_malformed(
        kind in prop_oneof![Just("status"), Just("telemetry"), Just("events")],
        bytes in proptest::collection::vec(any::<u8>(), 1..300),
    ) {
        prop_assume!(!matches!(serde_json::from_slice::<serde_json::Value>(&bytes), Ok(serde_json::Value::Object(_))));
        // Postcard telemetry is binary: bytes that happen to decode as a report are fine.
        prop_assume!(kind != "telemetry" || crate::telemetry::report::decode_postcard(&bytes).is_err());
        let mut f = fleet();
        let before = summarize(&f.rows(&Filter::default(), SortKey::Device), None);
        f.apply(P, &format!("edge/dev-03/{kind}"), &bytes, kind == "status", at(2_000_000_000));
        let d = f.device("dev-03").unwrap();
        prop_assert_eq!(d.malformed, 1);
        let what = if kind == "events" { "event" } else { kind };
        prop_assert!(d.problem.as_deref().unwrap().starts_with(what), "{:?}", d.problem);
        let after = summarize(&f.rows(&Filter::default(), SortKey::Device), None);
        prop_assert_eq!(after.versions, before.versions);
    }

    /// The glob agrees with a plain recursive reference (every split point for `*`).
    #[test]
    fn glob_agrees_with_a_recursive_reference(p in "[ab*?]{0,6}", t in "[ab]{0,8}") {
        fn reference(p: &[char], t: &[char]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some(('*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
                Some(('?', rest)) => !t.is_empty() && reference(rest, &t[1..]),
                Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
            }
        }
        let (pc, tc): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
        prop_assert_eq!(glob(&p, &t), reference(&pc, &tc));
    }

    /// Natural order is a total order that agrees with numbers on numbers.
    #[test]
    fn natural_order_agrees_with_numbers(a in 0u64..100_000, b in 0u64..100_000) {
        prop_assert_eq!(natural(&a.to_string(), &b.to_string()), a.cmp(&b));
        prop_assert_eq!(natural(&format!("1.{a}"), &format!("1.{b}")), a.cmp(&b));
    }
}
