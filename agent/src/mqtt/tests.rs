//! The reconnect backoff, and topic matching against a reference written from the MQTT
//! specification (PROPTEST_CASES raises the number of cases for a longer run).

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::backoff::{Backoff, HEALTHY_AFTER, jitter};
use super::excerpt;
use super::topics::matches;

const MS: Duration = Duration::from_millis(1);

#[test]
fn backoff_grows_on_every_kind_of_failure_and_is_capped() {
    let t0 = Instant::now();
    let mut b = Backoff::new(100 * MS, 1000 * MS);
    // Connection attempts that fail.
    assert_eq!(b.failed(t0), 100 * MS);
    assert_eq!(b.failed(t0), 200 * MS);
    // Connections that come up and are lost again at once (what a resent oversized
    // message did, 52 times in 20 s, when a connect reset the backoff).
    let mut t = t0;
    for want in [400, 800, 1000, 1000, 1000] {
        b.connected(t);
        t += 50 * MS;
        assert_eq!(b.failed(t), want * MS, "a connection lost after 50 ms");
    }
}

#[test]
fn backoff_resets_only_after_a_healthy_connection() {
    let t0 = Instant::now();
    let mut b = Backoff::new(100 * MS, 1000 * MS);
    for _ in 0..5 {
        b.failed(t0);
    }
    // Up for just under the healthy period: still backing off.
    b.connected(t0);
    assert!(!b.healthy(t0 + HEALTHY_AFTER - MS));
    assert_eq!(b.failed(t0 + HEALTHY_AFTER - MS), 1000 * MS);
    // Up for the healthy period: the next loss is a first failure again ...
    let t1 = t0 + Duration::from_secs(60);
    b.connected(t1);
    assert!(b.healthy(t1 + HEALTHY_AFTER));
    assert_eq!(b.failed(t1 + HEALTHY_AFTER), 100 * MS);
    // ... and the next failures grow from there.
    assert_eq!(b.failed(t1 + HEALTHY_AFTER), 200 * MS);
    // A failed attempt is not a connection: no reset without one.
    assert!(!b.healthy(t1 + Duration::from_secs(3600)));
}

#[test]
fn backoff_settings_at_the_edges() {
    let t = Instant::now();
    let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
    assert_eq!(b.failed(t), MS, "never a busy loop");
    let mut b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::from_secs(u64::MAX));
    b.failed(t);
    b.failed(t);
    assert_eq!(b.failed(t), Duration::from_secs(u64::MAX), "doubling saturates");
}

proptest! {
    /// Every wait is between half and all of its base (the jitter keeps a fleet from
    /// reconnecting in step), and the bases never exceed the cap.
    #[test]
    fn waits_are_jittered_within_half_and_capped(min_ms in 1u64..5000, extra in 0u64..60_000, n in 1usize..40) {
        let max = Duration::from_millis(min_ms + extra);
        let mut b = Backoff::new(Duration::from_millis(min_ms), max);
        let t = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..n {
            let base = b.failed(t);
            prop_assert!(base <= max && base >= last);
            last = base;
            let wait = jitter(base);
            prop_assert!(wait <= base.max(2 * MS) && wait + MS > base / 2, "{wait:?} for {base:?}");
        }
    }
}

#[test]
fn excerpts_are_bounded_and_cut_at_characters() {
    assert_eq!(excerpt("short", 10), "short");
    let cut = excerpt(&"é".repeat(100), 11);
    assert!(cut.starts_with("ééééé..."), "{cut}");
    assert!(cut.ends_with("(200 bytes)"), "{cut}");
}

/// The reference: MQTT 3.1.1 section 4.7 (and MQTT 5 section 4.7), rule by rule, on
/// the lists of levels. `#` matches the parent level and any number of levels below
/// it; `+` exactly one level, which may be empty; other levels match themselves; a
/// wildcard at the first level does not match a topic starting with `$`.
fn reference(filter: &str, topic: &str) -> bool {
    fn levels(f: &[&str], t: &[&str]) -> bool {
        match (f.first(), t.first()) {
            (Some(&"#"), _) => f.len() == 1,
            (Some(&"+"), Some(_)) => levels(&f[1..], &t[1..]),
            (Some(a), Some(b)) => a == b && levels(&f[1..], &t[1..]),
            (None, None) => true,
            _ => false,
        }
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if t[0].starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    levels(&f, &t)
}

/// A level of a topic: a few names (so that filters and topics meet), the empty level,
/// `$`-names, and anything else without wildcards or separators.
fn topic_level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "sensors", "$SYS", "$x", ""]).prop_map(String::from),
        1 => "[^/+#\u{0}]{0,6}",
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(topic_level(), 1..6).prop_map(|l| l.join("/"))
}

/// A valid filter: levels of topics or `+`, and perhaps `#` as the last level.
fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![3 => topic_level(), 2 => Just("+".to_string())];
    (prop::collection::vec(level, 0..6), any::<bool>()).prop_filter_map(
        "a filter has a level",
        |(mut l, hash)| {
            if hash {
                l.push("#".into());
            }
            (!l.is_empty()).then(|| l.join("/"))
        },
    )
}

/// A filter made from the topic itself, with some levels turned into wildcards, so
/// that matches are common (random pairs rarely match).
fn filter_for_topic() -> impl Strategy<Value = (String, String)> {
    (topic(), prop::collection::vec(0u8..4, 6)).prop_map(|(topic, how)| {
        let mut out = Vec::new();
        for (i, level) in topic.split('/').enumerate() {
            match how[i % how.len()] {
                0 => out.push("+"),
                1 if i > 0 => {
                    out.push("#");
                    break;
                }
                _ => out.push(level),
            }
        }
        (out.join("/"), topic)
    })
}

proptest! {
    #[test]
    fn matching_agrees_with_the_reference(f in filter(), t in topic()) {
        prop_assert_eq!(matches(&f, &t), reference(&f, &t), "filter {:?} topic {:?}", f, t);
    }

    #[test]
    fn matching_agrees_on_near_filters((f, t) in filter_for_topic()) {
        prop_assert_eq!(matches(&f, &t), reference(&f, &t), "filter {:?} topic {:?}", f, t);
        // Without a `$` first level, a filter built from the topic always matches it.
        if !t.starts_with('$') {
            prop_assert!(matches(&f, &t), "filter {:?} topic {:?}", f, t);
        }
    }
}

#[test]
fn matching_examples_from_the_specification() {
    // MQTT 3.1.1 section 4.7.1.2 and 4.7.1.3, and 4.7.2 for `$`.
    for (f, t, want) in [
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
        ("sport/#", "sport", true),
        ("#", "sport/tennis", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("#", "$SYS/x", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
    ] {
        assert_eq!(matches(f, t), want, "{f} {t}");
        assert_eq!(reference(f, t), want, "reference: {f} {t}");
    }
}
