//! Reading command requests: examples of each refusal, and properties over generated
//! input (PROPTEST_CASES raises the number of cases for a longer run).

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::{MAX_ERROR_BYTES, Rejection, Request, parse_request};

const MAX: usize = 64 * 1024;

fn rejected(payload: &[u8]) -> Rejection {
    match parse_request(payload, MAX) {
        Ok(r) => panic!("accepted {r:?}"),
        Err(r) => r,
    }
}

#[test]
fn requests_are_read_and_refusals_say_why() {
    let r =
        parse_request(br#"{"id":"c-1","args":{"key":"x"},"expires":"2030-01-01T00:00:00Z"}"#, MAX).unwrap();
    assert_eq!(r.id, "c-1");
    assert_eq!(r.args.unwrap()["key"], "x");

    let r = rejected(b"{not json");
    assert_eq!(r.id, Value::Null);
    assert!(r.error.contains("not a command request"), "{}", r.error);

    // A number id is echoed (short), a valid string id too; anything else is not.
    assert_eq!(rejected(br#"{"id":7}"#).id, json!(7));
    assert_eq!(rejected(br#"{"id":"ok-1","extra":1}"#).id, json!("ok-1"));
    assert_eq!(rejected(br#"{"id":{"deep":[1,2,3]},"x":1}"#).id, Value::Null);

    // An id that breaks the rule: refused, and never echoed (a 60 KB one came back once).
    let long = format!(r#"{{"id":"{}"}}"#, "a".repeat(60_000));
    let r = rejected(long.as_bytes());
    assert_eq!(r.id, Value::Null);
    assert!(r.error.contains("1 to 128 characters"), "{}", r.error);
    assert!(r.error.len() < 300, "{}", r.error.len());
    for bad in [r#"{"id":""}"#, r#"{"id":"a b"}"#, r#"{"id":"pompe-é"}"#, r#"{"id":"x\ny"}"#] {
        let r = rejected(bad.as_bytes());
        assert_eq!(r.id, Value::Null, "{bad}");
        assert!(r.error.starts_with("`id` must be"), "{bad}: {}", r.error);
    }
    assert!(parse_request(format!(r#"{{"id":"{}"}}"#, "a".repeat(128)).as_bytes(), MAX).is_ok());

    // An unknown field with a huge name: the refusal quotes a bounded part of it.
    let wide = format!(r#"{{"id":"w-1","{}":1}}"#, "f".repeat(50_000));
    let r = rejected(wide.as_bytes());
    assert_eq!(r.id, json!("w-1"));
    assert!(r.error.len() < 500, "{}", r.error.len());

    let r = rejected(br#"{"id":"e-1","expires":"tomorrow"}"#);
    assert_eq!(r.id, json!("e-1"));
    assert!(r.error.contains("RFC 3339"), "{}", r.error);

    let deep = "[".repeat(60_000);
    assert_eq!(rejected(deep.as_bytes()).id, Value::Null);

    let r = parse_request(&[b' '; 300], 256).unwrap_err();
    assert!(r.error.contains("mqtt.max_command_bytes"), "{}", r.error);
}

/// Ids that follow the rule.
fn valid_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,128}"
}

/// Small JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        // Eighths have short exact decimals, which serde_json reads back exactly
        // (without its float_roundtrip feature, longer ones may come back 1 ulp off).
        (-100_000i32..100_000).prop_map(|n| json!(f64::from(n) / 8.0)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn rfc3339() -> impl Strategy<Value = String> {
    (2000u32..2100, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60, 0u32..60)
        .prop_map(|(y, mo, d, h, mi, s)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"))
}

fn request() -> impl Strategy<Value = Request> {
    (
        valid_id(),
        proptest::option::of(prop::collection::btree_map(".{0,12}", json_value(), 0..5)),
        proptest::option::of(rfc3339()),
    )
        .prop_map(|(id, args, expires)| Request {
            id,
            args: args.map(|m| m.into_iter().collect()),
            expires,
        })
}

/// Bytes that are often almost a request: JSON texts of requests with bytes changed,
/// cut or inserted, as well as plain noise.
fn near_request() -> impl Strategy<Value = Vec<u8>> {
    let mangled =
        (request(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6))
            .prop_map(|(req, edits)| {
                let mut bytes = serde_json::to_vec(&req).unwrap();
                for (at, byte, how) in edits {
                    if bytes.is_empty() {
                        break;
                    }
                    let i = at.index(bytes.len());
                    match how {
                        0 => bytes[i] = byte,
                        1 => bytes.truncate(i),
                        _ => bytes.insert(i, byte),
                    }
                }
                bytes
            });
    // Deep nesting: serde_json's recursion limit must refuse it, not the stack.
    let deep = (1usize..MAX / 2, any::<bool>())
        .prop_map(|(n, object)| if object { r#"{"a":"#.repeat(n / 5).into_bytes() } else { vec![b'['; n] });
    prop_oneof![4 => mangled, 2 => prop::collection::vec(any::<u8>(), 0..512), 1 => deep]
}

proptest! {
    /// Valid requests are read back exactly as they were written.
    #[test]
    fn valid_requests_round_trip(req in request()) {
        let bytes = serde_json::to_vec(&req).unwrap();
        prop_assert_eq!(parse_request(&bytes, MAX), Ok(req));
    }

    /// Whatever arrives: no panic, and a refusal's size is bounded whatever the input's
    /// (the reply carries at most a valid id and MAX_ERROR_BYTES of text), so the
    /// reply costs no more memory than a fixed amount per request.
    #[test]
    fn any_bytes_give_a_request_or_a_bounded_refusal(bytes in near_request()) {
        match parse_request(&bytes, MAX) {
            Ok(req) => {
                prop_assert!(crate::config::is_valid_id(&req.id));
                if let Some(exp) = &req.expires {
                    prop_assert!(humantime::parse_rfc3339_weak(exp).is_ok());
                }
            }
            Err(r) => {
                prop_assert!(r.error.len() <= MAX_ERROR_BYTES, "{} bytes", r.error.len());
                prop_assert!(r.id.to_string().len() <= 130, "{}", r.id);
            }
        }
    }

    /// Long ids and long unknown keys are the inputs that used to come back in full.
    #[test]
    fn long_fields_are_never_echoed(id_len in 129usize..70_000, key_len in 0usize..70_000) {
        let text = format!(r#"{{"id":"{}","{}":1}}"#, "i".repeat(id_len), "k".repeat(key_len));
        let r = parse_request(text.as_bytes(), 256 * 1024).unwrap_err();
        prop_assert_eq!(r.id, Value::Null);
        prop_assert!(r.error.len() <= MAX_ERROR_BYTES);
    }
}
