//! Fetcher against the fault-injecting registry server, on 127.0.0.1 only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_agent::ota::fetch::{Conditional, FetchError, Fetcher, Limits};
use edge_agent::ota::serve::{Fault, Faults, ServeOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

struct Registry {
    addr: SocketAddr,
    faults: Arc<Faults>,
    tmp: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Registry {
    /// Serves `<tmp>/repo`; `<tmp>` itself holds a secret the server must never show.
    async fn start() -> Registry {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("repo/targets")).unwrap();
        std::fs::write(tmp.path().join("secret.txt"), b"outside the registry").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Faults::none();
        let opts = ServeOptions { dir: tmp.path().join("repo"), faults: faults.clone() };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, opts, async {
            let _ = stopped.await;
        }));
        Registry { addr, faults, tmp, stop: Some(stop), task: Some(task) }
    }

    fn repo(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    fn write(&self, rel: &str, data: &[u8]) {
        std::fs::write(self.repo().join(rel), data).unwrap();
    }

    fn fetcher(&self, limits: Limits) -> Fetcher {
        // No trailing slash on purpose: the base must still be a directory.
        Fetcher::new(&format!("http://{}", self.addr), &[], limits).unwrap()
    }

    fn staging(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join("staging");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server shuts down promptly")
                .unwrap()
                .unwrap();
        }
    }
}

/// Deterministic incompressible-looking bytes.
fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().unwrap()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// One raw HTTP/1.1 request: reqwest would normalise `..` away before sending.
async fn raw(addr: SocketAddr, method: &str, target: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(buf[..split].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), buf[split + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| line.strip_prefix(&format!("{name}: "))).map(str::trim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_body_none_for_missing_and_status_errors() {
    let reg = Registry::start().await;
    reg.write("1.root.json", b"{\"signed\":{}}");
    let f = reg.fetcher(Limits::default());

    assert_eq!(f.get("1.root.json", 1024).await.unwrap().unwrap(), b"{\"signed\":{}}");
    assert_eq!(f.bytes_received(), 13);
    assert_eq!(f.get("2.root.json", 1024).await.unwrap(), None);

    reg.faults.set("s3-missing.json", Fault::Status(403));
    assert_eq!(f.get("s3-missing.json", 1024).await.unwrap(), None);

    reg.faults.set("1.root.json", Fault::Status(503));
    let err = f.get("1.root.json", 1024).await.unwrap_err();
    assert!(matches!(err, FetchError::Status { status: 503, .. }), "{err}");
    assert_eq!(err.kind(), "status");
    assert!(err.to_string().contains(&format!("http://{}/1.root.json", reg.addr)), "{err}");
    assert_eq!(reg.faults.requests_for("1.root.json"), 2);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_max_len_is_too_large_with_or_without_content_length() {
    let reg = Registry::start().await;
    reg.write("snapshot.json", &[b'x'; 2000]);
    let f = reg.fetcher(Limits::default());

    let err = f.get("snapshot.json", 1000).await.unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { max: 1000, .. }), "{err}");
    assert_eq!(err.kind(), "too_large");

    // Without Content-Length the limit must hold while streaming.
    reg.write("timestamp.json", &[b'x'; 500]);
    reg.faults.set("timestamp.json", Fault::Extra(1 << 20));
    let err = f.get("timestamp.json", 1000).await.unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    assert!(f.bytes_received() < 1 << 20, "stopped reading early");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_get_sees_rewrite_within_the_same_second() {
    let reg = Registry::start().await;
    let f = reg.fetcher(Limits::default());
    let path = reg.repo().join("timestamp.json");

    // Start early in a second so both writes most likely share it.
    while SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_millis() > 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&path, b"{\"version\":1}").unwrap();
    let Conditional::Fresh { body, validator } =
        f.get_conditional("timestamp.json", 1024, None).await.unwrap()
    else {
        panic!("first poll must be fresh");
    };
    assert_eq!(body, b"{\"version\":1}");
    assert!(validator.etag.is_some() && validator.last_modified.is_some());

    let again = f.get_conditional("timestamp.json", 1024, Some(&validator)).await.unwrap();
    assert_eq!(again, Conditional::NotModified);

    // Same length, same inode, rewritten in place: only the mtime nanoseconds differ.
    let mtime1 = std::fs::metadata(&path).unwrap().modified().unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    std::fs::write(&path, b"{\"version\":2}").unwrap();
    let mtime2 = std::fs::metadata(&path).unwrap().modified().unwrap();

    let Conditional::Fresh { body, validator: v2 } =
        f.get_conditional("timestamp.json", 1024, Some(&validator)).await.unwrap()
    else {
        panic!("a rewritten timestamp must be fresh");
    };
    assert_eq!(body, b"{\"version\":2}");
    assert_ne!(v2.etag, validator.etag);
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    if secs(mtime1) == secs(mtime2) {
        // Proves the ETag, not Last-Modified, detected the change.
        assert_eq!(v2.last_modified, validator.last_modified);
    }
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_full_then_complete_partial_is_not_refetched() {
    let reg = Registry::start().await;
    let content = data(300_000, 1);
    reg.write("targets/model.bin", &content);
    let f = reg.fetcher(Limits::default());
    let partial = reg.staging("model.bin.partial");

    let mut calls = Vec::new();
    let got = f
        .download("targets/model.bin", &partial, 300_000, &sha256(&content), &mut |done, total| {
            calls.push((done, total))
        })
        .await
        .unwrap();
    assert_eq!((got.bytes, got.resumed_from), (300_000, 0));
    assert_eq!(std::fs::read(&partial).unwrap(), content);
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "progress grows");
    assert_eq!(calls.last(), Some(&(300_000, 300_000)));
    assert_eq!(f.bytes_received(), 300_000);

    let again =
        f.download("targets/model.bin", &partial, 300_000, &sha256(&content), &mut |_, _| {}).await.unwrap();
    assert_eq!(again.resumed_from, 300_000);
    assert_eq!(reg.faults.requests_for("model.bin"), 1, "verified partial needs no request");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_resumes_after_connection_drop() {
    let reg = Registry::start().await;
    let content = data(1_000_000, 2);
    reg.write("targets/model.bin", &content);
    let f = reg.fetcher(Limits::default());
    let partial = reg.staging("model.bin.partial");

    reg.faults.set("model.bin", Fault::CloseAfter(400_000));
    let err = f
        .download("targets/model.bin", &partial, 1_000_000, &sha256(&content), &mut |_, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "interrupted", "{err}");
    let kept = file_len(&partial);
    assert!(kept > 0 && kept <= 400_000, "kept {kept}");

    reg.faults.clear();
    let got = f
        .download("targets/model.bin", &partial, 1_000_000, &sha256(&content), &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(got.resumed_from, kept);
    assert_eq!(sha256(&std::fs::read(&partial).unwrap()), sha256(&content));
    assert!(reg.faults.bytes_served() < 1_000_000 + 400_000 + 1, "second request sent only the rest");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_200_answer_to_range_request_restarts_from_zero() {
    let reg = Registry::start().await;
    let content = data(50_000, 3);
    reg.write("targets/model.bin", &content);
    // Replace always answers a full 200: a server that ignores Range.
    reg.faults.set("model.bin", Fault::Replace(content.clone()));
    let f = reg.fetcher(Limits::default());
    let partial = reg.staging("model.bin.partial");
    std::fs::write(&partial, vec![0xAA; 1000]).unwrap(); // garbage that must not survive

    let got =
        f.download("targets/model.bin", &partial, 50_000, &sha256(&content), &mut |_, _| {}).await.unwrap();
    assert_eq!(got.resumed_from, 0);
    assert_eq!(std::fs::read(&partial).unwrap(), content);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_data_is_cut_at_expected_len() {
    let reg = Registry::start().await;
    let content = data(100_000, 4);
    reg.write("targets/model.bin", &content);
    let f = reg.fetcher(Limits::default());
    let partial = reg.staging("model.bin.partial");

    reg.faults.set("model.bin", Fault::Extra(50 << 20));
    let err = f
        .download("targets/model.bin", &partial, 100_000, &sha256(&content), &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::EndlessData { expected: 100_000, .. }), "{err}");
    assert!(file_len(&partial) <= 100_000);
    assert!(f.bytes_received() < 10 << 20, "stopped reading early: {}", f.bytes_received());

    // A declared length over the signed one is refused before writing anything.
    std::fs::remove_file(&partial).unwrap();
    reg.faults.set("model.bin", Fault::Replace(data(200_000, 4)));
    let err = f
        .download("targets/model.bin", &partial, 100_000, &sha256(&content), &mut |_, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "endless_data");
    assert_eq!(file_len(&partial), 0);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_is_cut_as_slow_retrieval() {
    let reg = Registry::start().await;
    let content = data(100_000, 5);
    reg.write("targets/model.bin", &content);
    reg.faults.set("model.bin", Fault::Trickle { bytes_per_s: 200 });
    let limits = Limits { min_rate: 1024, rate_window: Duration::from_secs(1), ..Limits::default() };
    let f = reg.fetcher(limits);
    let partial = reg.staging("model.bin.partial");

    let started = Instant::now();
    let err = f
        .download("targets/model.bin", &partial, 100_000, &sha256(&content), &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::SlowRetrieval { min: 1024, rate, .. } if rate < 1024), "{err}");
    assert!(started.elapsed() < Duration::from_millis(2500), "cut after {:?}", started.elapsed());
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_past_deadline_times_out() {
    let reg = Registry::start().await;
    let content = data(100_000, 6);
    reg.write("targets/model.bin", &content);
    // Fast enough for the rate check, too slow for the deadline.
    reg.faults.set("model.bin", Fault::Trickle { bytes_per_s: 20_000 });
    let limits = Limits { download_timeout: Duration::from_secs(1), ..Limits::default() };
    let f = reg.fetcher(limits);
    let partial = reg.staging("model.bin.partial");
    let err = f
        .download("targets/model.bin", &partial, 100_000, &sha256(&content), &mut |_, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "timed_out", "{err}");
    assert!(file_len(&partial) > 0, "partial kept for resume");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_are_a_hash_mismatch_and_the_partial_is_deleted() {
    let reg = Registry::start().await;
    let content = data(20_000, 7);
    reg.write("targets/model.bin", &content);
    reg.faults.set("model.bin", Fault::Replace(data(20_000, 8)));
    let f = reg.fetcher(Limits::default());
    let partial = reg.staging("model.bin.partial");

    let err = f
        .download("targets/model.bin", &partial, 20_000, &sha256(&content), &mut |_, _| {})
        .await
        .unwrap_err();
    let FetchError::HashMismatch { expected, got, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(expected, &hex::encode(sha256(&content)));
    assert_eq!(got, &hex::encode(sha256(&data(20_000, 8))));
    assert!(!partial.exists());
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_download_that_does_not_hash_starts_over_in_the_same_call() {
    let reg = Registry::start().await;
    let content = data(60_000, 9);
    reg.write("targets/model.bin", &content);
    let f = reg.fetcher(Limits::default());
    let partial = reg.staging("model.bin.partial");
    // What a misbehaving server (or a cache) left behind: a prefix of other bytes.
    std::fs::write(&partial, data(20_000, 10)).unwrap();
    let got =
        f.download("targets/model.bin", &partial, 60_000, &sha256(&content), &mut |_, _| {}).await.unwrap();
    assert_eq!(got.resumed_from, 0, "the wrong prefix was thrown away");
    assert_eq!(std::fs::read(&partial).unwrap(), content);
    assert_eq!(reg.faults.requests_for("model.bin"), 2, "the rest, then the whole file");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_length_is_no_space_before_any_request() {
    let reg = Registry::start().await;
    let f = reg.fetcher(Limits::default());
    let partial = reg.staging("huge.partial");
    let err = f.download("targets/huge.bin", &partial, 1 << 60, &[0; 32], &mut |_, _| {}).await.unwrap_err();
    let FetchError::NoSpace { need, dir, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(*need, (1 << 60) + (1 << 20));
    assert_eq!(dir, partial.parent().unwrap());
    assert_eq!(reg.faults.requests(), 0);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_escaping_the_directory_are_404() {
    let reg = Registry::start().await;
    reg.write("root.json", b"{}");
    std::os::unix::fs::symlink(reg.tmp.path().join("secret.txt"), reg.repo().join("link.txt")).unwrap();
    std::os::unix::fs::symlink("root.json", reg.repo().join("inside-link.json")).unwrap();

    for target in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/targets/../../secret.txt",
        "//etc/passwd",
        "/link.txt",
        "/targets",
        "/targets/",
        "/",
        "/%zz",
    ] {
        let (status, _, body) = raw(reg.addr, "GET", target, "").await;
        assert_eq!(status, 404, "{target}");
        assert!(!String::from_utf8_lossy(&body).contains("outside"), "{target}");
    }
    // A symlink that stays inside is fine.
    assert_eq!(raw(reg.addr, "GET", "/inside-link.json", "").await.0, 200);

    // The client refuses such paths before sending anything.
    let f = reg.fetcher(Limits::default());
    let err = f.get("../secret.txt", 1024).await.unwrap_err();
    assert_eq!(err.kind(), "url", "{err}");
    assert!(f.get("/etc/passwd", 1024).await.is_err());
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_ranges_validators_and_cache_headers() {
    let reg = Registry::start().await;
    let content = data(1000, 9);
    reg.write("targets/abc.model.bin", &content);
    reg.write("timestamp.json", b"{\"v\":1}");
    reg.write("7.snapshot.json", b"{\"v\":7}");

    let (status, head, body) =
        raw(reg.addr, "GET", "/targets/abc.model.bin", "Range: bytes=100-199\r\n").await;
    assert_eq!(status, 206);
    assert_eq!(header(&head, "content-range"), Some("bytes 100-199/1000"));
    assert_eq!(body, &content[100..200]);
    assert_eq!(header(&head, "cache-control"), Some("max-age=31536000, immutable"));

    let (status, head, body) = raw(reg.addr, "GET", "/targets/abc.model.bin", "Range: bytes=900-\r\n").await;
    assert_eq!((status, header(&head, "content-length")), (206, Some("100")));
    assert_eq!(body, &content[900..]);

    let (status, head, _) = raw(reg.addr, "GET", "/targets/abc.model.bin", "Range: bytes=1000-\r\n").await;
    assert_eq!((status, header(&head, "content-range")), (416, Some("bytes */1000")));

    let (status, head, body) = raw(reg.addr, "HEAD", "/timestamp.json", "").await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(header(&head, "content-length"), Some("7"));
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    let etag = header(&head, "etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "strong ETag: {etag}");
    assert!(header(&head, "last-modified").unwrap().ends_with("gmt"));

    let (status, _, body) =
        raw(reg.addr, "GET", "/timestamp.json", &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!((status, body.len()), (304, 0));
    // Weakly, and beside a tag holding obs-text (bytes 0x80-0xFF, which RFC 9110 allows).
    let (status, _, _) =
        raw(reg.addr, "GET", "/timestamp.json", &format!("If-None-Match: \"caf\u{e9}\", W/{etag}\r\n")).await;
    assert_eq!(status, 304);
    // A date far beyond IMF-fixdate's four-digit years is ignored: a full answer.
    let far = "If-Modified-Since: Sun, 01 Jan 584554051224 00:00:00 GMT\r\n";
    assert_eq!(raw(reg.addr, "GET", "/timestamp.json", far).await.0, 200);

    // The range unit in any case; positions beyond 64 bits are still positions.
    let (status, head, _) = raw(reg.addr, "GET", "/targets/abc.model.bin", "Range: Bytes=100-199\r\n").await;
    assert_eq!((status, header(&head, "content-range")), (206, Some("bytes 100-199/1000")));
    let huge = "Range: bytes=0-99999999999999999999999\r\n";
    let (status, head, _) = raw(reg.addr, "GET", "/targets/abc.model.bin", huge).await;
    assert_eq!((status, header(&head, "content-range")), (206, Some("bytes 0-999/1000")));
    let huge = "Range: bytes=99999999999999999999999-\r\n";
    assert_eq!(raw(reg.addr, "GET", "/targets/abc.model.bin", huge).await.0, 416);

    let (_, head, _) = raw(reg.addr, "GET", "/7.snapshot.json", "").await;
    assert_eq!(header(&head, "cache-control"), Some("max-age=31536000, immutable"));

    assert_eq!(raw(reg.addr, "POST", "/timestamp.json", "Content-Length: 0\r\n").await.0, 405);
    assert!(reg.faults.requests() >= 7);
    reg.stop().await;
}

mod https {
    use super::*;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use std::process::Command;

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A CA (`{name}.pem`) and, signed by it, a server cert for 127.0.0.1.
    fn make_pki(dir: &Path, name: &str) {
        // Distinct subjects: with equal names webpki reports BadSignature, not UnknownIssuer.
        std::fs::write(
            dir.join("ca.cnf"),
            "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n\
             [dn]\nCN = edge-agent test NAME\n\
             [v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n"
                .replace("NAME", name),
        )
        .unwrap();
        std::fs::write(
            dir.join("server.cnf"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        let mut ca = vec!["req", "-x509", "-config", "ca.cnf", "-days", "2", "-keyout", &key, "-out", &pem];
        ca.extend(ec);
        openssl(dir, &ca);
        if name == "ca" {
            let mut csr =
                vec!["req", "-new", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"];
            csr.extend(ec);
            openssl(dir, &csr);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "server.cnf",
                    "-out",
                    "server.pem",
                ],
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ring_only_tls_trusts_private_ca_and_refuses_unknown_ca() {
        let reg = Registry::start().await;
        reg.write("1.root.json", b"{\"tls\":true}");
        let pki = reg.tmp.path().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        make_pki(&pki, "ca");
        make_pki(&pki, "other-ca");

        let certs = CertificateDer::pem_file_iter(pki.join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.join("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let app =
            edge_agent::ota::serve::router(ServeOptions { dir: reg.repo(), faults: reg.faults.clone() })
                .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                            .await;
                    }
                });
            }
        });

        let base = format!("https://{addr}/");
        let trusted = Fetcher::new(&base, &[pki.join("ca.pem")], Limits::default()).unwrap();
        assert_eq!(trusted.get("1.root.json", 1024).await.unwrap().unwrap(), b"{\"tls\":true}");

        let untrusted = Fetcher::new(&base, &[pki.join("other-ca.pem")], Limits::default()).unwrap();
        let err = untrusted.get("1.root.json", 1024).await.unwrap_err();
        assert_eq!(err.kind(), "tls", "{err}");
        let msg = err.to_string();
        assert!(msg.contains("UnknownIssuer") && msg.contains(&base) && msg.contains("CA file"), "{msg}");

        let err = Fetcher::new(&base, &[pki.join("missing.pem")], Limits::default()).unwrap_err();
        assert_eq!(err.kind(), "ca_file", "{err}");
        let err = Fetcher::new(&base, &[pki.join("server.cnf")], Limits::default()).unwrap_err();
        assert!(err.to_string().contains("no certificates"), "{err}");

        server.abort();
        reg.stop().await;
    }
}

#[test]
fn base_url_validation() {
    for bad in ["ftp://example.com/repo", "not a url", "http://example.com/repo?x=1"] {
        let err = Fetcher::new(bad, &[], Limits::default()).unwrap_err();
        assert_eq!(err.kind(), "url", "{bad}: {err}");
    }
}
