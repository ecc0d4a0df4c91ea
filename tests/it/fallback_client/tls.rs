//! HTTPS: private CA, mutual TLS, ALPN and TLS failures, against a small
//! rustls server on 127.0.0.1 using a test PKI made at run time.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::server::{endpoint, fp32_input};
use edge_agent::fallback::client::{CloudClient, Endpoint};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A test PKI made once per run with openssl (CA, server for 127.0.0.1, client).
pub(super) fn fixture(name: &str) -> PathBuf {
    static PKI: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = PKI.get_or_init(|| {
        let dir = crate::common::tempdir();
        crate::common::broker::make_certificates(dir.path());
        dir
    });
    dir.path().join(name.replace(".pem", ".crt"))
}

/// Serves the server certificate and records the ALPN protocols each client offered.
#[derive(Debug)]
struct RecordAlpn {
    key: Arc<CertifiedKey>,
    offered: Mutex<Vec<Vec<Vec<u8>>>>,
}

impl ResolvesServerCert for RecordAlpn {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let alpn = hello.alpn().map(|protocols| protocols.map(<[u8]>::to_vec).collect()).unwrap_or_default();
        self.offered.lock().unwrap().push(alpn);
        Some(self.key.clone())
    }
}

struct TlsServer {
    addr: SocketAddr,
    /// TCP connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Requests answered (handshake done and request read).
    answered: Arc<AtomicUsize>,
    resolver: Arc<RecordAlpn>,
}

impl TlsServer {
    fn start(require_client_cert: bool) -> TlsServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fixture("server.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        let signing = provider.key_provider.load_private_key(key).unwrap();
        let resolver = Arc::new(RecordAlpn {
            key: Arc::new(CertifiedKey::new(chain, signing)),
            offered: Mutex::new(Vec::new()),
        });

        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        // This server only speaks HTTP/1.1; the client offers h2 as well.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (acc, ans) = (accepted.clone(), answered.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                acc.fetch_add(1, Ordering::SeqCst);
                let (config, ans) = (config.clone(), ans.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    if crate::common::read_http_request(&mut tls).is_none() {
                        return; // handshake or read failed
                    }
                    ans.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"model_name":"m","outputs":[{"name":"probs","shape":[1,3],"datatype":"FP32","data":[0.1,0.7,0.2]}]}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes());
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        TlsServer { addr, accepted, answered, resolver }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

fn https(server: &TlsServer) -> Endpoint {
    Endpoint { ca_file: Some(fixture("ca.pem")), retries: 3, ..endpoint(&server.url()) }
}

#[tokio::test]
async fn private_ca_works_and_alpn_offers_h2_and_http1() {
    let server = TlsServer::start(false);
    let c = CloudClient::new(https(&server)).unwrap();
    let reply = c.infer("", &fp32_input(), &[]).await.unwrap();
    assert_eq!(reply.outputs[0].data, vec![0.1, 0.7, 0.2]);
    let offered = server.resolver.offered.lock().unwrap().clone();
    assert_eq!(offered, vec![vec![b"h2".to_vec(), b"http/1.1".to_vec()]]);
}

#[tokio::test]
async fn mutual_tls_with_client_certificate() {
    let server = TlsServer::start(true);
    let ep = Endpoint {
        client_cert: Some(fixture("client.pem")),
        client_key: Some(fixture("client.key")),
        ..https(&server)
    };
    let c = CloudClient::new(ep).unwrap();
    c.infer("", &fp32_input(), &[]).await.unwrap();
    assert_eq!(server.answered.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn missing_client_certificate_is_a_tls_error_not_retried() {
    let server = TlsServer::start(true);
    let c = CloudClient::new(https(&server)).unwrap();
    let err = c.infer("", &fp32_input(), &[]).await.unwrap_err();
    assert_eq!(err.kind(), "tls", "{err}");
    assert!(err.counts_as_failure());
    assert_eq!(server.answered.load(Ordering::SeqCst), 0);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn untrusted_server_certificate_is_a_tls_error_not_retried() {
    let server = TlsServer::start(false);
    // System roots only: they do not contain the test CA.
    let ep = Endpoint { ca_file: None, ..https(&server) };
    let c = match CloudClient::new(ep) {
        Ok(c) => c,
        Err(err) => {
            // A machine without a system CA store: the build says so instead.
            assert_eq!(err.kind(), "config");
            assert!(err.to_string().contains("ca_file"), "{err}");
            return;
        }
    };
    let err = c.infer("", &fp32_input(), &[]).await.unwrap_err();
    assert_eq!(err.kind(), "tls", "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "a certificate error does not fix itself on retry");
    assert_eq!(server.answered.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn wrong_ca_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let ep = Endpoint { ca_file: Some(not_pem), ..endpoint("https://127.0.0.1:1") };
    let err = CloudClient::new(ep).unwrap_err();
    assert_eq!(err.kind(), "config");
    assert!(err.to_string().contains("ca_file"), "{err}");
}
