use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[tokio::test]
async fn a_counted_stream_counts_what_it_writes_and_reads() {
    let usage = Usage::default();
    let (a, mut b) = tokio::io::duplex(64);
    let mut counted = Counted::new(a, usage.counter(Dest::Broker));
    let mut got = vec![0u8; 250];
    // The duplex holds 64 bytes: the writer finishes only as the reader drains.
    let (w, r) = tokio::join!(counted.write_all(&[1u8; 250]), b.read_exact(&mut got));
    assert!(w.is_ok() && r.is_ok());
    assert!(b.write_all(b"hello").await.is_ok());
    let mut five = [0u8; 5];
    assert!(counted.read_exact(&mut five).await.is_ok());
    let report = usage.report();
    assert_eq!(report.broker, Bytes { sent: 250, received: 5 });
    assert_eq!(report.registry, Bytes::default(), "other destinations untouched");
}

#[test]
fn each_destination_has_its_own_counter() {
    let usage = Usage::default();
    for (i, d) in [Dest::Broker, Dest::Registry, Dest::Cloud, Dest::Uploads].into_iter().enumerate() {
        usage.counter(d).add_sent(i as u64 + 1);
        usage.counter(d).add_received(10 * (i as u64 + 1));
    }
    let r = usage.report();
    let sent: Vec<u64> = r.each().iter().map(|(_, b)| b.sent).collect();
    assert_eq!(sent, [1, 2, 3, 4]);
    assert_eq!(r.uploads.received, 40);
    let clone = usage.clone();
    clone.counter(Dest::Cloud).add_sent(1);
    assert_eq!(usage.report().cloud.sent, 4, "clones share the counters");
    let _ = Arc::strong_count(&usage.counter(Dest::Cloud));
}

#[test]
fn an_http_request_is_counted_with_its_line_headers_and_body() {
    let Ok(url) = reqwest::Url::parse("http://example.invalid:8080/v2/models/m/infer?x=1") else { panic!() };
    let mut req = reqwest::Request::new(reqwest::Method::POST, url);
    req.headers_mut().insert("x-a", reqwest::header::HeaderValue::from_static("b"));
    *req.body_mut() = Some(vec![0u8; 1000].into());
    let n = http::request(&req, 0);
    // "POST /v2/models/m/infer?x=1 HTTP/1.1\r\n" is 38 bytes, the body 1000, and
    // the host, accept, content-length, x-a lines and the blank line about 70 more.
    assert!((1100..1130).contains(&n), "{n}");
}

#[tokio::test]
async fn the_cap_holds_telemetry_first_then_results_and_announces_each_once() {
    let counter = Arc::new(Counter::default());
    let cap = cap::DailyCap::new(1000, counter.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    cap.announce_to(crate::events::Events::log_only().tap(tx));
    use cap::Class::{Result, Telemetry};

    counter.add_sent(700);
    assert!(cap.allow(Telemetry).await && cap.allow(Result).await, "under 80 %: everything goes");
    counter.add_received(100);
    assert!(!cap.allow(Telemetry).await, "from 80 %: telemetry gives way");
    assert!(cap.allow(Result).await, "results still go");
    assert!(!cap.allow(Telemetry).await);
    counter.add_sent(200);
    assert!(!cap.allow(Result).await, "at the cap: results give way too");
    assert!(!cap.allow(Result).await);

    let first = rx.try_recv().map(|e| e.detail["holding"].clone());
    let second = rx.try_recv().map(|e| e.detail["holding"].clone());
    assert_eq!(first.ok(), Some(serde_json::json!("telemetry")));
    assert_eq!(second.ok(), Some(serde_json::json!("telemetry and results")));
    assert!(rx.try_recv().is_err(), "each stage is announced once");
    let r = cap.report();
    assert_eq!((r.bytes_per_day, r.used_today, r.held_telemetry, r.held_results), (1000, 1000, 2, 2));
}

#[tokio::test]
async fn no_cap_holds_nothing() {
    let counter = Arc::new(Counter::default());
    let cap = cap::DailyCap::new(0, counter.clone());
    counter.add_sent(u64::MAX / 2);
    assert!(cap.allow(cap::Class::Telemetry).await && cap.allow(cap::Class::Result).await);
}
