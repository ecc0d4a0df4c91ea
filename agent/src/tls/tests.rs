use std::path::Path;
use std::process::Command;

use super::*;

/// A self-signed P-256 certificate with its key, and a second key that is not its pair,
/// made with openssl as the end-to-end TLS tests make their PKI.
fn pki(dir: &Path) {
    let openssl = |args: &str| {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("openssl {args}: {e}"));
        assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out cert.key");
    openssl("req -x509 -new -key cert.key -sha256 -days 1 -subj /CN=edge-agent-unit-test -out cert.crt");
    openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key");
}

fn identity<'a>(cert: &'a Path, key: &'a Path) -> ClientIdentity<'a> {
    ClientIdentity { cert, cert_what: "cert_file", key, key_what: "key_file" }
}

#[test]
fn a_ca_file_and_a_matching_pair_make_a_config() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let roots = ca_roots(&[dir.path().join("cert.crt")], "ca_file").unwrap();
    assert_eq!(roots.len(), 1);
    let (cert, key) = (dir.path().join("cert.crt"), dir.path().join("cert.key"));
    let id = identity(&cert, &key);
    let config = client_config(roots, Some(id)).unwrap();
    assert!(config.client_auth_cert_resolver.has_certs());
    assert!(config.alpn_protocols.is_empty(), "ALPN is the caller's");
}

#[test]
fn a_missing_ca_file_names_the_setting_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.crt");
    let err = ca_roots(&[&missing], "ca_file").unwrap_err();
    assert!(matches!(err, TlsError::Certificates { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("cannot load ca_file {}: ", missing.display())), "{text}");
    assert!(text.contains("readable PEM file with BEGIN CERTIFICATE blocks"), "{text}");
}

#[test]
fn a_pem_without_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    // A key is PEM, but not a certificate; plain text is no PEM at all.
    for (name, body) in [("key-only.pem", None), ("text.pem", Some("hello"))] {
        let path = dir.path().join(name);
        match body {
            Some(text) => std::fs::write(&path, text).unwrap(),
            None => std::fs::copy(dir.path().join("cert.key"), &path).map(drop).unwrap(),
        }
        let err = load_certificates(&path, "ca_file").unwrap_err();
        assert!(err.to_string().contains("no certificates found"), "{err}");
        assert!(err.to_string().contains("ca_file"), "{err}");
    }
}

#[test]
fn a_certificate_file_is_no_key() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let cert = dir.path().join("cert.crt");
    let err = client_config(rustls::RootCertStore::empty(), Some(identity(&cert, &cert))).unwrap_err();
    assert!(matches!(err, TlsError::Key { what: "key_file", .. }), "{err:?}");
    assert!(err.to_string().contains("PEM private key (PKCS#8, PKCS#1 or SEC1)"), "{err}");
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let (cert, key) = (dir.path().join("cert.crt"), dir.path().join("other.key"));
    let id = identity(&cert, &key);
    let err = client_config(rustls::RootCertStore::empty(), Some(id)).unwrap_err();
    assert!(matches!(err, TlsError::Mismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("cert_file and key_file do not form a usable pair: "), "{text}");
    assert!(text.contains("check that the key belongs to the certificate"), "{text}");
}

#[test]
fn the_system_store_message_names_the_alternative() {
    let err = TlsError::NoSystemRoots { what: "ca_file" };
    assert!(err.to_string().contains("install ca-certificates or set ca_file"), "{err}");
}

#[test]
fn a_rustls_error_is_found_inside_nested_io_errors() {
    let inner = io::Error::other(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired));
    let outer = io::Error::other(inner);
    let found = find_rustls_error(&outer).expect("rustls error found");
    assert!(matches!(found, rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)));
    assert!(find_rustls_error(&io::Error::other("plain")).is_none());
}

#[test]
fn the_chain_names_each_cause_once() {
    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] io::Error);
    let err = Outer(io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"));
    assert_eq!(error_chain(&err), "error sending request: connection refused");
}
