use proptest::prelude::*;
use serde_json::{Value, json};

use super::changed;

/// Applies a change set as a JSON merge patch (RFC 7386: `null` removes the key).
fn apply(before: &Value, patch: &Value) -> Value {
    match (before, patch) {
        (Value::Object(b), Value::Object(p)) => {
            let mut out = b.clone();
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = apply(b.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        _ => patch.clone(),
    }
}

#[test]
fn only_what_changed_is_kept() {
    let before =
        json!({"uptime_s": 10, "system": {"mem_total": 4, "cpu_pct": 1.5}, "models": {"a": {"ok": 1}}});
    let now = json!({"uptime_s": 20, "system": {"mem_total": 4, "cpu_pct": 1.5}, "models": {"b": {"ok": 0}}});
    assert_eq!(changed(&before, &now), Some(json!({"uptime_s": 20, "models": {"a": null, "b": {"ok": 0}}})));
    assert_eq!(changed(&now, &now), None);
}

fn json_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<u8>().prop_map(|n| json!(n)),
        "[a-c]{0,2}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool)
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::btree_map("[a-d]", inner.clone(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            proptest::collection::vec(inner, 0..3).prop_map(Value::Array),
        ]
    })
}

fn object() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map("[a-d]", json_tree(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    /// The change set applied to the report before gives the report now (a round trip).
    #[test]
    fn the_changes_rebuild_the_report(before in object(), now in object()) {
        let rebuilt = match changed(&before, &now) {
            Some(patch) => apply(&before, &patch),
            None => before.clone(),
        };
        prop_assert_eq!(rebuilt, now);
    }
}
