//! The OIP v2 client on its own, against real HTTP servers on 127.0.0.1: answers,
//! retries only where safe, timeouts, limits, bearer tokens, TLS.

mod server;
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::fallback::client::{CloudClient, CloudError, Endpoint, MAX_RESPONSE_BYTES};
use server::{HUGE, Mode, Raw, RawServer, TestServer, endpoint, fp32_input, refused_port};

fn client(ep: Endpoint) -> CloudClient {
    CloudClient::new(ep).unwrap()
}

async fn infer(c: &CloudClient) -> Result<edge_agent::fallback::client::CloudReply, CloudError> {
    c.infer("req-1", &fp32_input(), &[]).await
}

#[tokio::test]
async fn good_answer_parses_and_request_is_oip_v2() {
    let server = TestServer::start(Mode::Ok).await;
    let c = client(Endpoint { version: Some("7".into()), ..endpoint(&server.url()) });
    let reply = c.infer("req-1", &fp32_input(), &["probs".to_owned()]).await.unwrap();

    assert_eq!(reply.model_version.as_deref(), Some("1"));
    assert_eq!(reply.attempts, 1);
    assert_eq!(reply.outputs.len(), 2);
    assert_eq!(reply.outputs[0].name, "probs");
    assert_eq!(reply.outputs[0].shape, vec![1, 3]);
    assert_eq!(reply.outputs[0].data, vec![0.1, 0.7, 0.2]);
    // INT64 answers are converted to f32 and keep their datatype name.
    assert_eq!(reply.outputs[1].datatype, "INT64");
    assert_eq!(reply.outputs[1].data, vec![1.0]);
    assert!(reply.latency > Duration::ZERO && reply.latency < Duration::from_secs(5));

    server.seen(|seen| {
        assert_eq!(seen.path, "/v2/models/m/versions/7/infer");
        assert_eq!(seen.authorization, None);
        assert_eq!(
            seen.body.as_ref().unwrap(),
            &serde_json::json!({
                "id": "req-1",
                "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.0, 0.25, 0.5, 1.0]}],
                "outputs": [{"name": "probs"}]
            })
        );
    });
}

#[tokio::test]
async fn server_500_is_a_status_error_and_never_retried() {
    let server = TestServer::start(Mode::Fail500).await;
    let c = client(Endpoint { retries: 3, ..endpoint(&server.url()) });
    let err = infer(&c).await.unwrap_err();
    assert_eq!(err.kind(), "status");
    assert_eq!(err.status(), Some(500));
    assert!(err.counts_as_failure());
    assert!(err.to_string().contains("boom"), "{err}");
    assert!(err.to_string().contains("/v2/models/m/infer"), "{err}");
    assert_eq!(server.hits(), 1, "a 500 may have run the inference: it must not be sent again");
}

#[tokio::test]
async fn malformed_json_is_malformed() {
    let server = TestServer::start(Mode::Malformed).await;
    let c = client(Endpoint { retries: 3, ..endpoint(&server.url()) });
    let err = infer(&c).await.unwrap_err();
    assert_eq!(err.kind(), "malformed", "{err}");
    assert!(err.counts_as_failure());
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn wrong_shape_is_a_shape_error() {
    let server = TestServer::start(Mode::WrongShape).await;
    let c = client(endpoint(&server.url()));
    let err = infer(&c).await.unwrap_err();
    assert_eq!(err.kind(), "shape", "{err}");
    assert!(err.to_string().contains("needs 3 values, 2 sent"), "{err}");
    assert!(err.counts_as_failure());
}

#[tokio::test]
async fn slow_server_times_out_at_the_total_timeout_and_is_not_retried() {
    let server = TestServer::start(Mode::Slow(Duration::from_secs(3))).await;
    let timeout = Duration::from_millis(300);
    let c = client(Endpoint { timeout, retries: 3, ..endpoint(&server.url()) });
    let started = Instant::now();
    let err = infer(&c).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), "timeout", "{err}");
    assert!(err.counts_as_failure());
    assert!(elapsed >= timeout && elapsed < timeout + Duration::from_millis(150), "{elapsed:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn connection_dropped_after_the_request_is_interrupted_and_not_retried() {
    for behaviour in [Raw::Drop, Raw::HalfBody] {
        let server = RawServer::start(behaviour).await;
        let c = client(Endpoint { retries: 3, ..endpoint(&server.url()) });
        let err = infer(&c).await.unwrap_err();
        assert_eq!(err.kind(), "interrupted", "{behaviour:?}: {err}");
        assert!(err.counts_as_failure());
        assert_eq!(server.hits(), 1, "{behaviour:?}: the server had the request; it must not be sent again");
    }
}

#[tokio::test]
async fn refused_port_is_retried_exactly_retries_times() {
    let addr = refused_port().await;
    let c = client(Endpoint {
        retries: 3,
        backoff: Duration::from_millis(20),
        ..endpoint(&format!("http://{addr}"))
    });
    let started = Instant::now();
    let err = infer(&c).await.unwrap_err();
    assert_eq!(err.kind(), "connect", "{err}");
    assert!(err.counts_as_failure());
    let CloudError::Connect { attempts, .. } = err else { unreachable!() };
    assert_eq!(attempts, 4);
    // Pauses of at least half of 20, 40, 80 ms: the backoff really ran.
    assert!(started.elapsed() >= Duration::from_millis(70), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connect_retry_reaches_a_server_that_comes_up() {
    let addr = refused_port().await;
    let c = client(Endpoint {
        retries: 8,
        backoff: Duration::from_millis(50),
        ..endpoint(&format!("http://{addr}"))
    });
    let bring_up = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        TestServer::serve(listener, Mode::Ok)
    });
    let reply = infer(&c).await.unwrap();
    let server = bring_up.await.unwrap();
    assert!(reply.attempts >= 2, "{}", reply.attempts);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn retries_stop_before_the_total_timeout() {
    let addr = refused_port().await;
    let timeout = Duration::from_millis(400);
    let c = client(Endpoint {
        retries: 100,
        backoff: Duration::from_millis(100),
        timeout,
        ..endpoint(&format!("http://{addr}"))
    });
    let started = Instant::now();
    let err = infer(&c).await.unwrap_err();
    // The real cause is reported, not a timeout, and the deadline holds.
    assert_eq!(err.kind(), "connect", "{err}");
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
}

#[tokio::test]
async fn unavailable_with_retry_after_is_retried_without_it_is_not() {
    let server = TestServer::start(Mode::Unavailable { n: 1, retry_after: true }).await;
    let c = client(Endpoint { retries: 2, ..endpoint(&server.url()) });
    let reply = infer(&c).await.unwrap();
    assert_eq!(reply.attempts, 2);
    assert_eq!(server.hits(), 2);

    let server = TestServer::start(Mode::Unavailable { n: 1, retry_after: false }).await;
    let c = client(Endpoint { retries: 2, ..endpoint(&server.url()) });
    let err = infer(&c).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert!(err.to_string().contains("model not ready"), "{err}");
    assert_eq!(server.hits(), 1);

    // Still 503 after all retries: the error says how many attempts were made.
    let server = TestServer::start(Mode::Unavailable { n: 10, retry_after: true }).await;
    let c = client(Endpoint { retries: 2, ..endpoint(&server.url()) });
    let err = infer(&c).await.unwrap_err();
    assert!(matches!(err, CloudError::Status { status: 503, attempts: 3, .. }), "{err:?}");
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn bearer_token_is_read_trimmed_and_sent() {
    let server = TestServer::start(Mode::RequireToken("s3cret".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "  s3cret \n").unwrap();

    let c = client(Endpoint { bearer_token_file: Some(token_file.clone()), ..endpoint(&server.url()) });
    infer(&c).await.unwrap();
    assert_eq!(server.seen(|s| s.authorization.clone()).as_deref(), Some("Bearer s3cret"));
    // The token is read once, at build: changing the file does not affect this client.
    std::fs::write(&token_file, "other").unwrap();
    infer(&c).await.unwrap();
    assert!(!format!("{c:?}").contains("s3cret"));

    let c = client(endpoint(&server.url()));
    let err = infer(&c).await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(!err.counts_as_failure(), "a rejected token says nothing about the server's health");
    assert!(err.to_string().contains("bearer token"), "{err}");
}

#[tokio::test]
async fn concurrency_limit_rejects_at_once_without_queueing() {
    let server = TestServer::start(Mode::Slow(Duration::from_millis(700))).await;
    let c = Arc::new(client(Endpoint { max_concurrency: 2, ..endpoint(&server.url()) }));
    let running: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { infer(&c).await })
        })
        .collect();
    while server.hits() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.in_flight(), 2);

    let started = Instant::now();
    let err = infer(&c).await.unwrap_err();
    assert_eq!(err.kind(), "busy", "{err}");
    assert!(!err.counts_as_failure());
    assert!(started.elapsed() < Duration::from_millis(50), "{:?}", started.elapsed());
    assert_eq!(server.hits(), 2, "a rejected request must not reach the server");

    for r in running {
        r.await.unwrap().unwrap();
    }
    assert_eq!(c.in_flight(), 0);
    infer(&c).await.unwrap();
}

#[tokio::test]
async fn a_64_mib_answer_is_cut() {
    // Announced with Content-Length: refused before reading the body.
    let server = RawServer::start(Raw::Huge { content_length: true }).await;
    let c = client(endpoint(&server.url()));
    let err = infer(&c).await.unwrap_err();
    assert_eq!(err.kind(), "too_large", "{err}");
    assert!(err.counts_as_failure());

    // Streamed without a length: cut once the limit is passed.
    let server = RawServer::start(Raw::Huge { content_length: false }).await;
    let c = client(endpoint(&server.url()));
    let started = Instant::now();
    let err = infer(&c).await.unwrap_err();
    assert_eq!(err.kind(), "too_large", "{err}");
    assert!(err.to_string().contains(&MAX_RESPONSE_BYTES.to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = server.written.load(std::sync::atomic::Ordering::SeqCst);
    // The server could write the limit plus what the socket buffers held, not all 64 MiB.
    assert!(written < HUGE / 2, "server wrote {written} bytes: the client kept reading");
}

#[tokio::test]
async fn bad_inputs_are_refused_before_sending() {
    let server = TestServer::start(Mode::Ok).await;
    let c = client(endpoint(&server.url()));
    let bad = [edge_agent::fallback::client::Tensor::fp32("x", vec![2, 2], vec![1.0])];
    let err = c.infer("", &bad, &[]).await.unwrap_err();
    assert_eq!(err.kind(), "input", "{err}");
    assert!(!err.counts_as_failure());
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn configuration_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "  \n").unwrap();
    let missing = dir.path().join("missing-token");
    let cert = tls::fixture("client.pem");

    let cases: Vec<(Endpoint, &str)> = vec![
        (endpoint("ftp://host"), "http:// or https://"),
        (endpoint("not a url"), "invalid url"),
        (Endpoint { model: String::new(), ..endpoint("http://h") }, "model name is empty"),
        (Endpoint { max_concurrency: 0, ..endpoint("http://h") }, "max_concurrency"),
        (Endpoint { timeout: Duration::ZERO, ..endpoint("http://h") }, "timeout"),
        (Endpoint { timeout: Duration::MAX, ..endpoint("http://h") }, "at most"),
        (Endpoint { max_concurrency: usize::MAX, ..endpoint("http://h") }, "between 1 and"),
        (Endpoint { bearer_token_file: Some(missing), ..endpoint("http://h") }, "missing-token"),
        (Endpoint { bearer_token_file: Some(empty), ..endpoint("http://h") }, "is empty"),
        (Endpoint { ca_file: Some(cert.clone()), ..endpoint("http://h") }, "plain http"),
        (
            Endpoint { client_cert: Some(cert.clone()), ..endpoint("https://h") },
            "both client_cert and client_key",
        ),
        (
            Endpoint { client_cert: Some(cert.clone()), client_key: Some(cert), ..endpoint("https://h") },
            "client_key",
        ),
    ];
    for (ep, needle) in cases {
        let err = CloudClient::new(ep.clone()).unwrap_err();
        assert_eq!(err.kind(), "config", "{ep:?}");
        assert!(!err.counts_as_failure());
        assert!(err.to_string().contains(needle), "{err} should mention {needle}");
    }
}
