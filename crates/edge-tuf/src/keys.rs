//! Ed25519 keys in TUF's key JSON form, backed by `ring`.

use super::canonical;
use super::error::Error;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::Path;

/// The only key type and signature scheme this implementation supports.
pub const ED25519: &str = "ed25519";

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// A public key as TUF metadata writes it:
/// `{"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "<hex>"}}`.
///
/// Unknown fields (such as the legacy `keyid_hash_algorithms`) are accepted
/// and dropped: signatures are verified over the raw received JSON, so they
/// do not need to survive a round trip through this type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// The key type; only `ed25519` is verified.
    pub keytype: String,
    /// The signature scheme; only `ed25519` is verified.
    pub scheme: String,
    /// The key material.
    pub keyval: KeyVal,
}

/// The `keyval` object of a public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// Hex of the 32 raw Ed25519 public key bytes.
    pub public: String,
}

impl PublicKey {
    /// Builds a key object from raw Ed25519 public key bytes.
    pub fn from_ed25519(raw: &[u8]) -> Self {
        PublicKey {
            keytype: ED25519.to_string(),
            scheme: ED25519.to_string(),
            keyval: KeyVal { public: hex::encode(raw) },
        }
    }

    /// The key id: hex SHA-256 of the canonical JSON of
    /// `{"keytype","keyval":{"public"},"scheme"}`, as securesystemslib
    /// computes it, so ids match those python-tuf writes.
    pub fn key_id(&self) -> String {
        let obj = serde_json::json!({
            "keytype": self.keytype,
            "keyval": { "public": self.keyval.public },
            "scheme": self.scheme,
        });
        // The object holds only strings, which always encode; fall back to
        // an empty encoding rather than panic if that ever changed.
        let bytes = canonical::encode(&obj).unwrap_or_default();
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
    }

    /// The raw 32 public key bytes, if this is a well-formed Ed25519 key.
    pub fn ed25519_bytes(&self) -> Result<Vec<u8>, Error> {
        if self.keytype != ED25519 || self.scheme != ED25519 {
            return Err(Error::Key {
                reason: format!("key type `{}` with scheme `{}` is not supported", self.keytype, self.scheme),
                fix: "use ed25519 keys (keytype and scheme `ed25519`)".to_string(),
            });
        }
        let raw = hex::decode(&self.keyval.public).map_err(|e| Error::Key {
            reason: format!("keyval.public is not hex: {e}"),
            fix: "write the public key as 64 lowercase hex characters".to_string(),
        })?;
        if raw.len() != 32 {
            return Err(Error::Key {
                reason: format!("keyval.public holds {} bytes, Ed25519 needs 32", raw.len()),
                fix: "write the public key as 64 lowercase hex characters".to_string(),
            });
        }
        Ok(raw)
    }
}

/// Checks a hex Ed25519 signature over `msg`. Any malformed input (bad hex,
/// unsupported key type) is simply "not a valid signature".
pub fn verify(public: &PublicKey, msg: &[u8], hex_sig: &str) -> bool {
    let Ok(raw) = public.ed25519_bytes() else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    UnparsedPublicKey::new(&ring::signature::ED25519, raw).verify(msg, &sig).is_ok()
}

/// An Ed25519 private key, kept with its PKCS#8 DER so it can be written back.
pub struct PrivateKey {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for PrivateKey {
    // Never print the secret, only which key it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Generates a fresh key from the system random source.
    pub fn generate() -> Result<Self, Error> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| Error::Key {
            reason: "the system random source failed while generating an Ed25519 key".into(),
            fix: "check that the OS entropy source (getrandom) is available".into(),
        })?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// Loads PKCS#8 DER, v1 (as OpenSSL writes) or v2 (as ring writes).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        // The "maybe_unchecked" variant accepts v1 documents that lack the
        // public key, which is what `openssl genpkey -algorithm ed25519` makes.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| Error::Key {
            reason: format!("not an Ed25519 PKCS#8 private key ({e})"),
            fix: "create the key with `openssl genpkey -algorithm ed25519` or let edge-agent \
                  generate it"
                .into(),
        })?;
        Ok(PrivateKey { pkcs8: der.to_vec(), pair })
    }

    /// Parses a `-----BEGIN PRIVATE KEY-----` PEM document.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Key {
            reason: reason.to_string(),
            fix: "the file must hold an unencrypted PKCS#8 PEM block \
                  (-----BEGIN PRIVATE KEY-----)"
                .to_string(),
        };
        let start = pem.find(PEM_BEGIN).ok_or_else(|| bad("no `-----BEGIN PRIVATE KEY-----` line"))?;
        let body = &pem[start + PEM_BEGIN.len()..];
        let end = body.find(PEM_END).ok_or_else(|| bad("no `-----END PRIVATE KEY-----` line"))?;
        let b64: String = body[..end].chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(&format!("the PEM body is not base64: {e}")))?;
        Self::from_pkcs8_der(&der)
    }

    /// The PEM text: base64 of the PKCS#8 DER in 64-character lines.
    pub fn to_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let mut pem = String::with_capacity(b64.len() + 80);
        pem.push_str(PEM_BEGIN);
        pem.push('\n');
        // base64 output is ASCII, so splitting bytes keeps valid UTF-8.
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str(PEM_END);
        pem.push('\n');
        pem
    }

    /// Reads a PEM private key file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read private key", path, e))?;
        Self::from_pem(&text).map_err(|e| match e {
            Error::Key { reason, fix } => Error::Key { reason: format!("{}: {reason}", path.display()), fix },
            other => other,
        })
    }

    /// Writes the key as PEM to a new file readable only by its owner.
    ///
    /// Refuses to overwrite an existing file: losing a signing key by
    /// accident is far worse than an error.
    pub fn write_new(&self, path: &Path) -> Result<(), Error> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        // The mode is set at creation so the secret is never readable by
        // others, not even for the moment between create and chmod.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Usage(format!(
                    "refusing to overwrite the existing key file `{}`; move it away or \
                     choose another path",
                    path.display()
                ))
            } else {
                Error::io("create private key file", path, e)
            }
        })?;
        let result = file.write_all(self.to_pem().as_bytes()).and_then(|()| file.sync_all());
        if let Err(e) = result {
            // Do not leave a truncated key behind that a later run would load.
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(Error::io("write private key file", path, e));
        }
        Ok(())
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey::from_ed25519(self.pair.public_key().as_ref())
    }

    /// The key id of the matching public key.
    pub fn key_id(&self) -> String {
        self.public().key_id()
    }

    /// Signs `msg` and returns the signature as hex, as TUF stores it.
    pub fn sign(&self, msg: &[u8]) -> String {
        hex::encode(self.pair.sign(msg).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_matches_securesystemslib() {
        // Key id computed by securesystemslib 1.6.0 compute_default_keyid
        // for this public key.
        let raw: Vec<u8> = (0u8..32).collect();
        let key = PublicKey::from_ed25519(&raw);
        assert_eq!(key.key_id(), "b5b3929e2eb1cd5fb401e8d8dd00a903bfac256d06eae9cc38a51d344e14583f");
    }

    #[test]
    fn key_json_shape_and_unknown_fields() {
        let raw: Vec<u8> = (0u8..32).collect();
        let key = PublicKey::from_ed25519(&raw);
        let v = serde_json::to_value(&key).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"keytype":"ed25519","scheme":"ed25519",
                "keyval":{"public":hex::encode(&raw)}})
        );
        let legacy = serde_json::json!({"keytype":"ed25519","scheme":"ed25519",
            "keyid_hash_algorithms":["sha256","sha512"],
            "keyval":{"public":hex::encode(&raw), "private": ""}});
        let parsed: PublicKey = serde_json::from_value(legacy).unwrap();
        assert_eq!(parsed, key);
    }

    #[test]
    fn sign_and_verify() {
        let k = PrivateKey::generate().unwrap();
        let sig = k.sign(b"hello");
        assert!(verify(&k.public(), b"hello", &sig));
        assert!(!verify(&k.public(), b"hellO", &sig));
        assert!(!verify(&k.public(), b"hello", "zz"));
        let other = PrivateKey::generate().unwrap();
        assert!(!verify(&other.public(), b"hello", &sig));
    }

    #[test]
    fn pem_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let k = PrivateKey::generate().unwrap();
        k.write_new(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(text.lines().all(|l| l.len() <= 64));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = PrivateKey::read(&path).unwrap();
        assert_eq!(back.key_id(), k.key_id());
        // Never overwrite.
        let err = k.write_new(&path).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    }

    #[test]
    fn loads_openssl_v1_pkcs8() {
        // PKCS#8 v1 as `openssl genpkey -algorithm ed25519` writes it: no
        // public key inside, only the 32-byte seed.
        let seed = [7u8; 32];
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&seed);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let k = PrivateKey::from_pem(&pem).unwrap();
        let sig = k.sign(b"m");
        assert!(verify(&k.public(), b"m", &sig));
        assert!(PrivateKey::from_pem("garbage").is_err());
    }
}
