//! TLS client setup shared by the MQTT link, the registry fetcher and the cloud fallback:
//! trusted roots (given CA files or the system store), a client certificate and its key,
//! a rustls `ClientConfig` on the ring provider, and reading rustls errors out of the
//! error chains reqwest and hyper wrap them in.
//!
//! Callers name the configuration key a file came from (`what`), so that every message
//! says which setting to fix.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS setting could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file is unreadable, not PEM, or holds no certificate.
    #[error(
        "cannot load {what} {}: {reason}; it must be a readable PEM file with BEGIN CERTIFICATE blocks",
        path.display()
    )]
    Certificates { what: &'static str, path: PathBuf, reason: String },
    /// A CA certificate that rustls will not use as a trust anchor.
    #[error("{what} {}: certificate rejected: {reason}", path.display())]
    Rejected { what: &'static str, path: PathBuf, reason: rustls::Error },
    /// A private key file is unreadable or holds no PEM private key.
    #[error(
        "cannot load {what} {}: {reason}; it must be a readable PEM private key (PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    Key { what: &'static str, path: PathBuf, reason: String },
    /// The client certificate and key were each readable but are no pair.
    #[error(
        "{cert} and {key} do not form a usable pair: {reason}; check that the key belongs to the certificate"
    )]
    Mismatch { cert: &'static str, key: &'static str, reason: rustls::Error },
    /// No CA file was given and the system store is empty or missing.
    #[error(
        "no trusted CA certificates found in the system store (SSL_CERT_FILE, SSL_CERT_DIR, /etc/ssl/certs); install ca-certificates or set {what}"
    )]
    NoSystemRoots { what: &'static str },
    /// rustls refused the protocol setup itself.
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
}

/// The certificate chain of a PEM file (leaf first for a client chain). At least one
/// certificate, or an error naming `what` and the file.
pub fn load_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Certificates { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificates found".to_owned()));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A root store holding exactly the certificates of `files`: a device that names its
/// CAs trusts its fleet's servers, not every public CA.
pub fn ca_roots<P: AsRef<Path>>(files: &[P], what: &'static str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for path in files {
        let path = path.as_ref();
        for cert in load_certificates(path, what)? {
            roots.add(cert).map_err(|reason| TlsError::Rejected {
                what,
                path: path.to_path_buf(),
                reason,
            })?;
        }
    }
    Ok(roots)
}

/// The system's trusted roots (rustls-native-certs: SSL_CERT_FILE, SSL_CERT_DIR, the
/// distribution's store). Unreadable or unparsable entries are logged and skipped; an
/// empty result is `NoSystemRoots`, whose fix names `what`, the caller's CA setting.
pub fn system_roots(what: &'static str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "skipping unreadable system CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "ignored unparsable system CA certificates");
    }
    if added == 0 {
        return Err(TlsError::NoSystemRoots { what });
    }
    Ok(roots)
}

/// A client certificate chain and its key, each with the configuration key it came from.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    /// PEM certificate chain, leaf first.
    pub cert: &'a Path,
    /// The setting that named `cert` (`cert_file`, `client_cert`), for messages.
    pub cert_what: &'static str,
    /// PEM private key of the leaf certificate.
    pub key: &'a Path,
    /// The setting that named `key`, for messages.
    pub key_what: &'static str,
}

/// A rustls client configuration on the ring provider, trusting `roots`, presenting
/// `identity` when given. No ALPN: that belongs to the protocol on top.
pub fn client_config(
    roots: rustls::RootCertStore,
    identity: Option<ClientIdentity<'_>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    // reqwest is built without a crypto provider of its own, and rumqttc without one
    // either: installing ring as the process default helps any rustls user that asks
    // for it. An error only means a provider is already installed, and this config
    // names ring anyway.
    let _ = provider.clone().install_default();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots);
    Ok(match identity {
        Some(id) => {
            let chain = load_certificates(id.cert, id.cert_what)?;
            let key = load_key(id.key, id.key_what)?;
            builder.with_client_auth_cert(chain, key).map_err(|reason| TlsError::Mismatch {
                cert: id.cert_what,
                key: id.key_what,
                reason,
            })?
        }
        None => builder.with_no_client_auth(),
    })
}

/// The error and all its causes on one line, each cause once: reqwest's and hyper's
/// own messages ("error sending request") never say why.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

/// The rustls error somewhere in `err`'s chain, if any. rustls errors arrive wrapped in
/// io::Errors (sometimes one inside another) inside hyper and reqwest errors, and
/// io::Error::source() skips the error it wraps, so step into get_ref() for those.
pub fn find_rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests;
