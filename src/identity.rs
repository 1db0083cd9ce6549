//! A node's identity: its key and self-signed certificate, and the fingerprints peers pin.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// `sha256:` + 64 lowercase hex digits of SHA-256 over a certificate's DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

/// This node's certificate and private key, loaded for TLS.
#[derive(Debug)]
pub struct Identity {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The private key, DER.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

/// What can go wrong with certificate and key files.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// A file could not be read or parsed.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The key file exists already; `init` never overwrites it.
    #[error("{0} exists already; ferry never overwrites a key (remove it yourself if you mean to)")]
    KeyExists(PathBuf),
    /// Two peers pin the same certificate: the node could not tell them apart when one dials in.
    #[error(
        "peers `{first}` and `{second}` pin the same certificate ({fingerprint}); a certificate identifies one \
         peer: remove the wrong one (`ferry peer remove {second}`) or pin each peer's own certificate"
    )]
    PinnedTwice {
        /// The peer that pins it first in the config.
        first: String,
        /// The peer that pins it again.
        second: String,
        /// The certificate's fingerprint.
        fingerprint: Fingerprint,
    },
    /// A peer pins this node's own certificate: a copy of this node's file was pinned for it.
    #[error(
        "peer `{0}` pins this node's own certificate; ask its admin for theirs, then `ferry peer remove {0}` and \
         `ferry peer add` it"
    )]
    PinnedOwn(String),
    /// A rollover of a peer no longer holds when it is pinned: another of the same certificate
    /// was pinned meanwhile.
    #[error("peer `{0}`'s rollover was overtaken by another of the same certificate; the newest stands")]
    RolledOverAlready(String),
    /// rcgen failed to generate a key or certificate.
    #[error("cannot generate a key: {0}")]
    Generate(#[from] rcgen::Error),
}

impl Identity {
    /// Generates a fresh P-256 key and a self-signed certificate naming `name`.
    pub fn generate(name: &str) -> Result<Identity, IdentityError> {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()])?;
        Ok(Identity {
            cert: certified.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        })
    }

    /// Loads `cert` and `key` (PEM) and checks that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, IdentityError> {
        let identity = Identity { cert: load_cert(cert)?, key: load_key(key)? };
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(identity.key.clone_key())
            .map_err(|e| IdentityError::File { path: key.to_owned(), what: format!("unusable private key: {e}") })?;
        let certified = rustls::sign::CertifiedKey::new(vec![identity.cert.clone()], signing);
        if certified.keys_match().is_err() {
            return Err(IdentityError::File {
                path: key.to_owned(),
                what: format!("this key does not belong to {}", cert.display()),
            });
        }
        Ok(identity)
    }

    /// This node's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// Writes the certificate (PEM) and the key (PEM, mode 0600). Refuses to overwrite a key.
    pub fn save(&self, cert: &Path, key: &Path) -> Result<(), IdentityError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |e: std::io::Error| IdentityError::File { path, what: e.to_string() }
        };
        if key.exists() {
            return Err(IdentityError::KeyExists(key.to_owned()));
        }
        let key_pem = pem("PRIVATE KEY", self.key.secret_der());
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(key).map_err(io(key))?;
        file.write_all(key_pem.as_bytes()).and_then(|_| file.sync_all()).map_err(io(key))?;
        std::fs::write(cert, pem("CERTIFICATE", &self.cert)).map_err(io(cert))?;
        Ok(())
    }
}

/// Loads the first certificate of a PEM file.
pub fn load_cert(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::from_pem_file(path).map_err(|e| IdentityError::File {
        path: path.to_owned(),
        what: format!("not a readable PEM certificate ({e})"),
    })
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| IdentityError::File {
        path: path.to_owned(),
        what: format!("not a readable PEM private key ({e})"),
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_identities_load_back_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("node.pem"), dir.path().join("node.key"));
        let id = Identity::generate("org-a").unwrap();
        id.save(&cert, &key).unwrap();
        let loaded = Identity::load(&cert, &key).unwrap();
        assert_eq!(loaded.fingerprint(), id.fingerprint());
        let fp = id.fingerprint().to_string();
        assert!(fp.starts_with("sha256:") && fp.len() == 71 && fp[7..].chars().all(|c| c.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(id.save(&cert, &key), Err(IdentityError::KeyExists(_))));
    }

    #[test]
    fn a_key_from_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::generate("org-a").unwrap();
        let b = Identity::generate("org-b").unwrap();
        a.save(&dir.path().join("a.pem"), &dir.path().join("a.key")).unwrap();
        b.save(&dir.path().join("b.pem"), &dir.path().join("b.key")).unwrap();
        let err = Identity::load(&dir.path().join("a.pem"), &dir.path().join("b.key")).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
