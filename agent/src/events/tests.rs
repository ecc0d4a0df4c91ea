use super::*;
use serde_json::json;

/// docs/mqtt.md is where a fleet operator looks a kind up: every kind is there.
#[test]
fn every_kind_is_documented() {
    let doc = include_str!("../../../docs/mqtt.md");
    let start = doc.find("\n## Events\n").expect("docs/mqtt.md has an Events section") + 1;
    let events = &doc[start..];
    let events = &events[..events[3..].find("\n## ").map_or(events.len(), |end| end + 3)];
    for kind in Kind::ALL {
        assert!(
            events.contains(&format!("`{kind}`")),
            "docs/mqtt.md's Events section does not list `{kind}`"
        );
    }
}

#[test]
fn kinds_are_distinct() {
    let mut names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Kind::ALL.len());
}

#[test]
fn json_has_the_published_fields() {
    let e = Event::warning(Kind::RequestFailed, json!({"stream": "s"})).model("m");
    let v = e.to_json("2026-01-01T00:00:00.000Z");
    assert_eq!(
        v,
        json!({"ts": "2026-01-01T00:00:00.000Z", "kind": "request-failed", "severity": "warning", "model": "m", "detail": {"stream": "s"}})
    );
    let v = Event::error(Kind::SessionReset, json!({})).to_json("t");
    assert_eq!(v["severity"], "error");
    assert!(v.get("model").is_none(), "no model, no field: {v}");
    assert_eq!(Event::info(Kind::RootRotated, json!(null)).to_json("t")["severity"], "info");
}

struct Fake(std::sync::Mutex<Vec<Event>>);

impl Publish for Fake {
    fn publish<'a>(&'a self, event: &'a Event) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        self.0.lock().unwrap().push(event.clone());
        Box::pin(async {})
    }
}

#[tokio::test]
async fn the_sink_publishes_and_taps() {
    let fake = Arc::new(Fake(Default::default()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = Events::log_only().publish_to(fake.clone()).tap(tx);
    let e = Event::info(Kind::ConfigReloaded, json!({"changes": "none"}));
    sink.emit(e.clone()).await;
    assert_eq!(*fake.0.lock().unwrap(), vec![e.clone()]);
    assert_eq!(rx.try_recv().unwrap(), e);
    Events::log_only().emit(e).await;
}
