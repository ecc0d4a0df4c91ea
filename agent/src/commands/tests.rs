//! Reading command requests: examples of each refusal, and properties over generated
//! input (PROPTEST_CASES raises the number of cases for a longer run). Reading typed
//! arguments. The dispatcher driven in-process: requests in through its channel, the
//! replies it sends collected by a fake sink, no broker.

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

// --- Typed arguments -------------------------------------------------------------------

mod arguments {
    use serde_json::{Map, Value, json};

    use crate::commands::args::{ArgsError, Origin, from_body, keys, parse};
    use crate::commands::config_set::ConfigSetArgs;
    use crate::commands::fallback_force::FallbackForceArgs;
    use crate::commands::ping::PingArgs;
    use crate::commands::rollback::RollbackArgs;
    use crate::commands::update_apply::UpdateApplyArgs;
    use crate::commands::update_shadow::UpdateShadowArgs;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// The keys a refusal lists are the type's own fields, read from the type.
    #[test]
    fn keys_are_the_fields_of_the_type() {
        assert_eq!(keys::<UpdateApplyArgs>(), ["model", "version", "force", "shadow"]);
        assert_eq!(keys::<RollbackArgs>(), ["model"]);
        assert_eq!(keys::<UpdateShadowArgs>(), ["model", "verdict"]);
        assert_eq!(keys::<FallbackForceArgs>(), ["model", "seconds", "on"]);
        assert_eq!(keys::<ConfigSetArgs>(), ["key", "value", "revert_after_s"]);
        assert!(keys::<PingArgs>().is_empty());
    }

    /// An unknown key is refused, named as the sender wrote it, with the accepted ones.
    #[test]
    fn an_unknown_key_is_named_with_the_accepted_ones() {
        let e =
            parse::<UpdateApplyArgs>(map(json!({"model": "m", "forse": true})), Origin::Request).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`args.forse` is not an argument of update/apply; it takes `model`, `version`, `force` and `shadow`"
        );
        let e = parse::<RollbackArgs>(map(json!({"version": "2"})), Origin::Body).unwrap_err();
        assert_eq!(e.to_string(), "`version` is not an argument of rollback; it takes `model`");
        let e = parse::<PingArgs>(map(json!({"verbose": 1})), Origin::Request).unwrap_err();
        assert_eq!(e.to_string(), "`args.verbose` is not an argument of ping; it takes none");
        // A huge key is quoted in part.
        let huge = "k".repeat(10_000);
        let e = parse::<PingArgs>(map(json!({ huge: 1 })), Origin::Request).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    /// A value of the wrong type names its key.
    #[test]
    fn a_wrong_type_names_the_key() {
        let e = parse::<UpdateApplyArgs>(map(json!({"force": 5})), Origin::Request).unwrap_err();
        assert!(matches!(&e, ArgsError::Invalid { name, .. } if name == "args.force"), "{e:?}");
        assert!(e.to_string().starts_with("`args.force`: invalid type"), "{e}");
        let a = parse::<UpdateApplyArgs>(map(json!({"model": "m", "version": "2"})), Origin::Body).unwrap();
        assert_eq!((a.model.as_deref(), a.version.as_deref(), a.force), (Some("m"), Some("2"), false));
        // `null` is a value for config/set (refused later as "cannot be a setting").
        let a = parse::<ConfigSetArgs>(map(json!({"key": "k", "value": null})), Origin::Request).unwrap();
        assert_eq!(a.value, Some(Value::Null));
    }

    /// `update/shadow` takes a verdict by name, and says what it needs.
    #[test]
    fn a_shadow_verdict_is_promote_or_reject() {
        let a = parse::<UpdateShadowArgs>(map(json!({"model": "m", "verdict": "promote"})), Origin::Request)
            .unwrap();
        assert!(a.check(Origin::Request).is_ok());
        let e = parse::<UpdateShadowArgs>(map(json!({"model": "m", "verdict": "keep"})), Origin::Request)
            .unwrap_err();
        assert!(e.to_string().contains("`args.verdict`") && e.to_string().contains("promote"), "{e}");
        let missing = parse::<UpdateShadowArgs>(map(json!({"model": "m"})), Origin::Request).unwrap();
        let e = missing.check(Origin::Request).unwrap_err();
        assert!(e.contains("`args.verdict`") && e.contains("reject"), "{e}");
    }

    /// HTTP bodies: empty is `{}`, anything but an object is refused.
    #[test]
    fn bodies_are_objects_or_empty() {
        assert!(from_body::<RollbackArgs>(b" \n").unwrap().model.is_none());
        assert_eq!(from_body::<RollbackArgs>(br#"{"model":"m"}"#).unwrap().model.as_deref(), Some("m"));
        let e = from_body::<RollbackArgs>(b"[1]").unwrap_err();
        assert!(e.to_string().contains("takes a JSON object"), "{e}");
        let e = from_body::<RollbackArgs>(b"{nope").unwrap_err();
        assert!(e.to_string().contains("takes a JSON object"), "{e}");
        let e = from_body::<RollbackArgs>(br#"{"model":"m","force":true}"#).unwrap_err();
        assert_eq!(e.to_string(), "`force` is not an argument of rollback; it takes `model`");
    }
}

// --- The dispatcher, in-process ---------------------------------------------------------

mod dispatcher {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use serde_json::{Value, json};
    use tokio::sync::{mpsc, watch};

    use crate::commands::{Context, Recipient, Replies};
    use crate::config::TelemetrySection;
    use crate::mqtt::CommandMsg;
    use crate::mqtt::topics::Scope;
    use crate::service::health::Health;
    use crate::service::status::Parts;
    use edge_infer::engine::{Engine, EngineConfig};

    /// The fake sink: every reply, with whom it was for.
    struct Collect(mpsc::UnboundedSender<(Recipient, Value)>);

    impl Replies for Collect {
        fn send<'a>(
            &'a self,
            to: &'a Recipient,
            body: &'a Value,
        ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
            let _ = self.0.send((to.clone(), body.clone()));
            Box::pin(async {})
        }
    }

    /// A dispatcher running on its own task, with a state directory of its own.
    struct Harness {
        requests: mpsc::Sender<CommandMsg>,
        replies: mpsc::UnboundedReceiver<(Recipient, Value)>,
        _dir: tempfile::TempDir,
    }

    fn context(dir: &std::path::Path) -> Context {
        let engine =
            Arc::new(Engine::start(&EngineConfig { threads: 1, queue: 2, ..EngineConfig::default() }));
        let health = Arc::new(Health::new("dev1", Duration::from_secs(1)));
        let fallback = Arc::new(crate::fallback::Fallback::new(None).unwrap().0);
        let parts = Parts {
            engine: engine.clone(),
            health: health.clone(),
            mqtt: None,
            ota: None,
            fallback: fallback.clone(),
            monitors: Arc::default(),
            usage: Default::default(),
        };
        Context {
            engine,
            health,
            // Not read by these tests' commands: config/set refuses before it reads.
            config_file: dir.join("agent.toml"),
            state_dir: dir.to_path_buf(),
            started: Instant::now(),
            telemetry: watch::channel(TelemetrySection::default()).0,
            ota: None,
            fallback,
            capture: crate::config::CaptureSection::default(),
            log: crate::config::LogSection::default(),
            events: crate::events::Events::log_only(),
            usage: Default::default(),
            outbox: None,
            status: Box::new(move || parts.gather(None)),
        }
    }

    fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (requests, rx) = mpsc::channel(8);
        let (tx, replies) = mpsc::unbounded_channel();
        tokio::spawn(super::super::run(rx, Collect(tx), context(dir.path()), 4096));
        Harness { requests, replies, _dir: dir }
    }

    impl Harness {
        async fn send(&self, name: &str, payload: &str) {
            let msg = CommandMsg {
                name: name.into(),
                scope: Scope::Device,
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                response_topic: None,
                correlation: None,
                ack: None,
            };
            self.requests.send(msg).await.unwrap();
        }

        /// The next reply, for command `name`.
        async fn reply(&mut self, name: &str) -> Value {
            let (to, body) = tokio::time::timeout(Duration::from_secs(10), self.replies.recv())
                .await
                .expect("a reply within 10 s")
                .expect("the dispatcher runs");
            assert_eq!(to.command, name, "{body}");
            body
        }

        /// No further reply (for now).
        async fn quiet(&mut self) {
            let next = tokio::time::timeout(Duration::from_millis(200), self.replies.recv()).await;
            assert!(next.is_err(), "an unexpected reply: {next:?}");
        }

        /// Sends a request that must be refused before it starts: one `rejected` reply.
        async fn rejected(&mut self, name: &str, payload: &str) -> Value {
            self.send(name, payload).await;
            let r = self.reply(name).await;
            assert_eq!(r["state"], "rejected", "{r}");
            self.quiet().await;
            r
        }
    }

    #[tokio::test]
    async fn a_valid_command_is_accepted_then_succeeds() {
        let mut d = start();
        d.send("ping", r#"{"id":"p-1"}"#).await;
        assert_eq!(d.reply("ping").await, json!({"id": "p-1", "state": "accepted"}));
        let r = d.reply("ping").await;
        assert_eq!(
            (&r["id"], &r["state"], &r["result"]["pong"]),
            (&json!("p-1"), &json!("succeeded"), &json!(true))
        );
        assert_eq!(r["result"]["version"], env!("CARGO_PKG_VERSION"));
        d.quiet().await;
    }

    #[tokio::test]
    async fn an_unknown_command_is_rejected() {
        let mut d = start();
        let r = d.rejected("reboot-now", r#"{"id":"u-1"}"#).await;
        assert_eq!(r["id"], "u-1");
        let error = r["error"].as_str().unwrap();
        assert!(error.starts_with("unknown command `reboot-now`; known: ping, status"), "{error}");
    }

    #[tokio::test]
    async fn a_malformed_body_is_rejected_without_an_id() {
        let mut d = start();
        let r = d.rejected("ping", "{not json").await;
        assert_eq!(r["id"], Value::Null);
        assert!(r["error"].as_str().unwrap().contains("not a command request"), "{r}");
        // The dispatcher goes on.
        d.send("ping", r#"{"id":"p-2"}"#).await;
        assert_eq!(d.reply("ping").await["state"], "accepted");
        assert_eq!(d.reply("ping").await["state"], "succeeded");
    }

    /// An argument the command does not take is refused before `accepted` (it used to be
    /// ignored), naming the key and the accepted ones; so is a missing one.
    #[tokio::test]
    async fn an_unknown_argument_key_is_rejected_before_accepted() {
        let mut d = start();
        let r = d.rejected("ping", r#"{"id":"k-1","args":{"verbose":true}}"#).await;
        assert_eq!(
            r,
            json!({"id": "k-1", "state": "rejected",
                   "error": "`args.verbose` is not an argument of ping; it takes none"})
        );
        let r = d
            .rejected("update/apply", r#"{"id":"k-2","args":{"model":"m","version":"2","forse":true}}"#)
            .await;
        assert_eq!(
            r["error"],
            "`args.forse` is not an argument of update/apply; it takes `model`, `version`, `force` and `shadow`"
        );
        let r = d.rejected("config/set", r#"{"id":"k-3","args":{"key":"telemetry.interval_s"}}"#).await;
        assert_eq!(r["error"], "`args.value` is missing; telemetry.interval_s needs a value");
        let r = d.rejected("update/check", r#"{"id":"k-4"}"#).await;
        assert_eq!(r["error"], crate::commands::UPDATES_OFF);
    }

    /// A repeated id gets the recorded final reply, and the command does not run again;
    /// refusals are recorded too.
    #[tokio::test]
    async fn a_duplicate_id_gets_the_recorded_reply() {
        let mut d = start();
        d.send("ping", r#"{"id":"d-1"}"#).await;
        assert_eq!(d.reply("ping").await["state"], "accepted");
        let first = d.reply("ping").await;
        d.send("ping", r#"{"id":"d-1"}"#).await;
        assert_eq!(d.reply("ping").await, first, "the recorded reply, and no `accepted` before it");
        d.quiet().await;

        let refused = d.rejected("ping", r#"{"id":"d-2","args":{"x":1}}"#).await;
        d.send("ping", r#"{"id":"d-2"}"#).await;
        assert_eq!(d.reply("ping").await, refused, "a refused id stays refused");
        d.quiet().await;
    }

    /// An MQTT 5 request is answered on its response topic as well, with its correlation.
    #[tokio::test]
    async fn replies_go_to_the_requests_recipient() {
        let mut d = start();
        let msg = CommandMsg {
            name: "ping".into(),
            scope: Scope::All,
            payload: Bytes::from_static(br#"{"id":"r-1"}"#),
            response_topic: Some("app/answers".into()),
            correlation: Some(Bytes::from_static(b"c-7")),
            ack: None,
        };
        d.requests.send(msg).await.unwrap();
        let (to, body) = d.replies.recv().await.unwrap();
        assert_eq!(body["state"], "accepted");
        assert_eq!(
            to,
            Recipient {
                command: "ping".into(),
                response_topic: Some("app/answers".into()),
                correlation: Some(Bytes::from_static(b"c-7")),
            }
        );
    }
}
