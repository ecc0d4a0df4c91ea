use std::time::Duration;

use proptest::prelude::*;

use super::report::{self, Limits, Numbers, Tally, Top, Verdict, judge, top1};
use edge_infer::engine::spec::PostSpec;

fn top(label: &str, score: f32) -> Top {
    Top { label: label.into(), score }
}

fn labelled(labels: &[&str]) -> PostSpec {
    PostSpec { labels: labels.iter().map(|s| s.to_string()).collect(), ..PostSpec::default() }
}

#[test]
fn top1_reads_labels_softmax_and_single_scores() {
    let post = labelled(&["normal", "imbalance", "bearing"]);
    assert_eq!(top1(&post, &[0.1, 0.7, 0.2]), Some(top("imbalance", 0.7)));
    let swapped = labelled(&["imbalance", "normal", "bearing"]);
    assert_eq!(top1(&swapped, &[0.1, 0.7, 0.2]).unwrap().label, "normal", "labels, not indices");
    let logits = PostSpec { softmax: true, ..labelled(&["a", "b"]) };
    let t = top1(&logits, &[0.0, 0.0]).unwrap();
    assert!((t.score - 0.5).abs() < 1e-6, "{t:?}");
    assert_eq!(top1(&PostSpec::default(), &[0.2, 0.9]).unwrap().label, "1", "no labels: the index");
    assert_eq!(top1(&PostSpec::default(), &[0.7]).unwrap().label, "active");
    let high = PostSpec { threshold: Some(0.8), ..PostSpec::default() };
    assert_eq!(top1(&high, &[0.7]).unwrap().label, "inactive");
    assert_eq!(top1(&post, &[]), None);
    assert_eq!(top1(&post, &[f32::NAN, 0.1, 0.2]), None);
}

#[test]
fn the_report_counts_agreement_confusion_and_differences() {
    let mut t = Tally::default();
    let ms = Duration::from_millis(1);
    t.compare(&top("a", 0.9), &top("a", 0.9), ms);
    t.compare(&top("a", 0.9), &top("b", 0.6), ms);
    t.compare(&top("b", 0.8), &top("b", 0.7), ms);
    t.skip(report::skip::BUSY);
    t.error("boom".into());
    let n = t.numbers(Some(1.0));
    assert_eq!(n.compared, 3);
    assert_eq!(n.agreed, 2);
    assert!((n.agreement.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(n.confusion["a"]["a"], 1);
    assert_eq!(n.confusion["a"]["b"], 1);
    assert_eq!(n.confusion["b"]["b"], 1);
    assert!((n.score_diff_mean - (0.0 + 0.3 + 0.1) / 3.0).abs() < 1e-6, "{}", n.score_diff_mean);
    assert!((n.score_diff_p95 - 0.3).abs() <= 0.0011, "{}", n.score_diff_p95);
    assert_eq!(n.skipped["busy"], 1);
    assert_eq!(n.errors, 1);
    assert_eq!(n.last_error.as_deref(), Some("boom"));
    assert!(n.run_p95_ms.unwrap() > 0.9 && n.latency_ratio.is_some());
}

fn numbers(compared: u64, agreed: u64) -> Numbers {
    let mut t = Tally::default();
    for i in 0..compared {
        let other = if i < agreed { "a" } else { "b" };
        t.compare(&top("a", 0.5), &top(other, 0.5), Duration::from_millis(1));
    }
    t.numbers(Some(1.0))
}

#[test]
fn verdicts_follow_the_limits() {
    let l = Limits { requests: 100, min_requests: 10, minutes: 1, ..Limits::default() };
    let early = Duration::from_secs(1);
    assert_eq!(judge(&numbers(50, 50), &l, early), Verdict::Continue);
    assert!(matches!(judge(&numbers(100, 100), &l, early), Verdict::Promote(_)));
    let Verdict::Reject(why) = judge(&numbers(100, 66), &l, early) else { panic!("a third disagrees") };
    assert!(why.contains("66.0%") && why.contains("95%"), "{why}");
    // Time is up: judged with what there is, but never on fewer than min_requests.
    let late = Duration::from_secs(61);
    assert!(matches!(judge(&numbers(20, 20), &l, late), Verdict::Promote(_)));
    assert_eq!(judge(&numbers(5, 5), &l, late), Verdict::Continue);
    // Errors reject, whatever the agreement.
    let mut n = numbers(100, 100);
    n.errors = 5;
    assert!(matches!(judge(&n, &l, early), Verdict::Reject(why) if why.contains("failed")));
    // Slow by more than the ratio and the floor: rejected; by less than the floor: not.
    let mut slow = numbers(100, 100);
    (slow.run_p95_ms, slow.active_run_p95_ms, slow.latency_ratio) = (Some(30.0), Some(10.0), Some(3.0));
    assert!(matches!(judge(&slow, &l, early), Verdict::Reject(why) if why.contains("3.0x")));
    (slow.run_p95_ms, slow.active_run_p95_ms, slow.latency_ratio) = (Some(0.9), Some(0.3), Some(3.0));
    assert!(matches!(judge(&slow, &l, early), Verdict::Promote(_)));
}

#[test]
fn limits_read_integers_and_refuse_unknown_keys() {
    let l: Limits =
        serde_json::from_value(serde_json::json!({"min_agreement_pct": 90, "requests": 40})).unwrap();
    assert_eq!((l.min_agreement_pct, l.requests, l.share_pct), (90, 40, 100));
    let e = serde_json::from_value::<Limits>(serde_json::json!({"min_agreement": 0.9})).unwrap_err();
    assert!(e.to_string().contains("unknown field `min_agreement`"), "{e}");
    assert!(Limits { share_pct: 0, ..Limits::default() }.check().unwrap_err().contains("share_pct"));
}

#[test]
fn labels_beyond_the_bound_share_one_row_and_column() {
    let mut t = Tally::default();
    for i in 0..(report::MAX_LABELS + 10) {
        let l = format!("c{i}");
        t.compare(&top(&l, 0.5), &top(&l, 0.5), Duration::from_millis(1));
    }
    let n = t.numbers(None);
    assert_eq!(n.confusion.len(), report::MAX_LABELS + 1);
    assert_eq!(n.confusion[report::OTHER_LABEL][report::OTHER_LABEL], 10);
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string()), "[a-z]{1,3}"]
}

proptest! {
    /// Agreement is a share, the confusion matrix holds every compared request once and
    /// its diagonal is the agreements, and the score differences agree with a sorted
    /// reference.
    #[test]
    fn the_report_agrees_with_a_reference(
        pairs in proptest::collection::vec((label(), label(), 0f32..1.0, 0f32..1.0), 0..300),
        skips in 0u64..20,
    ) {
        let mut t = Tally::default();
        for (a, c, sa, sc) in &pairs {
            t.compare(&top(a, *sa), &top(c, *sc), Duration::from_micros(100));
        }
        for _ in 0..skips {
            t.skip(report::skip::DEADLINE);
        }
        let n = t.numbers(None);
        prop_assert_eq!(n.compared, pairs.len() as u64);
        let total: u64 = n.confusion.values().flat_map(|row| row.values()).sum();
        prop_assert_eq!(total, n.compared);
        // Past the label bound, `(other)` × `(other)` mixes agreements and disagreements.
        let diagonal: u64 = n.confusion.iter()
            .filter(|(r, _)| r.as_str() != report::OTHER_LABEL)
            .map(|(r, row)| row.get(r).copied().unwrap_or(0)).sum();
        let distinct = |f: fn(&(String, String, f32, f32)) -> &String| {
            pairs.iter().map(f).collect::<std::collections::BTreeSet<_>>().len()
        };
        if distinct(|p| &p.0) <= report::MAX_LABELS && distinct(|p| &p.1) <= report::MAX_LABELS {
            prop_assert_eq!(diagonal, n.agreed);
        } else {
            prop_assert!(diagonal <= n.agreed);
        }
        let agreed = pairs.iter().filter(|(a, c, _, _)| a == c).count() as u64;
        prop_assert_eq!(n.agreed, agreed);
        match n.agreement {
            None => prop_assert!(pairs.is_empty()),
            Some(x) => prop_assert!((0.0..=1.0).contains(&x)),
        }
        prop_assert_eq!(n.skipped.get("deadline").copied().unwrap_or(0), skips);
        let mut diffs: Vec<f64> = pairs.iter().map(|(_, _, a, c)| f64::from((a - c).abs())).collect();
        diffs.sort_by(f64::total_cmp);
        if !diffs.is_empty() {
            let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
            prop_assert!((n.score_diff_mean - mean).abs() < 1e-6);
            let rank = (diffs.len() as f64 * 0.95).ceil() as usize;
            let p95 = diffs[rank - 1];
            prop_assert!(n.score_diff_p95 >= p95 - 1e-9 && n.score_diff_p95 <= p95 + 0.001 + 1e-9,
                "p95 {} against {}", n.score_diff_p95, p95);
        }
    }
}
