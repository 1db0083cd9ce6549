//! Key rotation without downtime: a node's new certificate, vouched for by its old key.
//!
//! `ferry cert rotate` ([`rotate`]) makes a new key and certificate, keeps the old pair beside
//! them as `previous.pem` and `previous.key`, and writes a [`wire::Rollover`] statement signed by
//! the old key (`rollover.json`). Until the statement's `until`, the node presents the old
//! certificate to every peer not yet known to pin the new one ([`Keys::for_peer`], and by the TLS
//! server name a peer asks for, [`Keys::for_server_name`]), and sends each connected peer the
//! statement. A peer that pins the old certificate checks the old key's signature and pins the new
//! one beside the old until `until`, or holds it for its admin to approve (`auto_rollover =
//! false`). After `until`, only the new certificate is presented and pinned.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{Fingerprint, Identity, IdentityError};
use crate::receipt::Signer;
use crate::wire;

/// The statement's file in `node.certs_dir`.
pub const STATEMENT_FILE: &str = "rollover.json";
/// The replaced certificate's file in `node.certs_dir`, kept until the statement's `until`.
pub const PREVIOUS_CERT: &str = "previous.pem";
/// The replaced key's file in `node.certs_dir`, kept until the statement's `until`.
pub const PREVIOUS_KEY: &str = "previous.key";
/// The folder in `node.certs_dir` where every replaced certificate is kept for good (public, no
/// key): what checks the node's old signatures in its peers' logs and in bundles.
pub const RETIRED_DIR: &str = "retired";
/// The grace period when `ferry cert rotate` is given none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest grace a node accepts from a peer: an old key stays trusted no longer than this.
pub const MAX_GRACE: Duration = Duration::from_secs(90 * 24 * 3600);

/// The bytes the old key signs: a domain tag, the node's name, the old certificate's SHA-256,
/// the new certificate's SHA-256 and both times, each field length-prefixed or fixed-size.
pub fn signed_bytes(r: &wire::Rollover) -> Vec<u8> {
    let mut bytes = b"ferry-rollover/1\0".to_vec();
    bytes.extend((r.node.len() as u32).to_be_bytes());
    bytes.extend(r.node.as_bytes());
    bytes.extend(r.old);
    bytes.extend(Sha256::digest(&r.new_cert));
    bytes.extend(r.issued_ms.to_be_bytes());
    bytes.extend(r.until_ms.to_be_bytes());
    bytes
}

/// The statement that `node`'s certificate `old` is replaced by `new_cert`, presented and pinned
/// beside it until `until_ms`, signed with `old`'s key.
pub fn sign(
    node: &str,
    old: &Identity,
    new_cert: &CertificateDer<'_>,
    issued_ms: i64,
    until_ms: i64,
) -> Result<wire::Rollover, String> {
    let mut statement = wire::Rollover {
        node: node.to_owned(),
        old: old.fingerprint().0,
        new_cert: new_cert.to_vec(),
        issued_ms,
        until_ms,
        signature: Vec::new(),
    };
    statement.signature = Signer::new(old)?.statement(&signed_bytes(&statement));
    Ok(statement)
}

/// The new certificate's fingerprint.
pub fn new_fingerprint(r: &wire::Rollover) -> Fingerprint {
    Fingerprint::of(&r.new_cert)
}

/// Checks `r` against the certificate it replaces: `old_cert` must be the one it names and its
/// key must have signed it; the new certificate must be readable and another one; its grace must
/// end after it was made and last at most [`MAX_GRACE`].
pub fn verify(r: &wire::Rollover, old_cert: &CertificateDer<'_>) -> Result<(), String> {
    if Fingerprint::of(old_cert).0 != r.old {
        return Err("it replaces another certificate than the one pinned".into());
    }
    if r.new_cert == old_cert.as_ref() {
        return Err("the new certificate is the old one".into());
    }
    webpki::EndEntityCert::try_from(&CertificateDer::from(r.new_cert.as_slice()))
        .map_err(|e| format!("the new certificate is unreadable: {e:?}"))?;
    let grace = r.until_ms.saturating_sub(r.issued_ms);
    if grace <= 0 || grace as u128 > MAX_GRACE.as_millis() {
        return Err(format!("its grace must last between 0 and {} days", MAX_GRACE.as_secs() / 86_400));
    }
    crate::receipt::verify_statement(old_cert, &signed_bytes(r), &r.signature)
        .map_err(|_| "the old key's signature over it does not verify".to_owned())
}

/// `rollover.json`: the statement as an admin can read it.
#[derive(Serialize, Deserialize)]
struct StatementFile {
    node: String,
    old: String,
    new: String,
    new_cert: String,
    issued_ms: i64,
    until_ms: i64,
    until: String,
    signature: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Reads a statement file written by [`rotate`].
pub fn read_statement(path: &Path) -> Result<wire::Rollover, IdentityError> {
    let bad = |what: String| IdentityError::File { path: path.to_owned(), what };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: StatementFile = serde_json::from_str(&text).map_err(|e| bad(format!("not a rollover statement: {e}")))?;
    let mut old = [0u8; 32];
    hex::decode_to_slice(file.old.strip_prefix("sha256:").unwrap_or(&file.old), &mut old)
        .map_err(|e| bad(format!("old: {e}")))?;
    Ok(wire::Rollover {
        node: file.node,
        old,
        new_cert: b64().decode(&file.new_cert).map_err(|e| bad(format!("new_cert: {e}")))?,
        issued_ms: file.issued_ms,
        until_ms: file.until_ms,
        signature: b64().decode(&file.signature).map_err(|e| bad(format!("signature: {e}")))?,
    })
}

fn statement_text(r: &wire::Rollover) -> String {
    let file = StatementFile {
        node: r.node.clone(),
        old: Fingerprint(r.old).to_string(),
        new: new_fingerprint(r).to_string(),
        new_cert: b64().encode(&r.new_cert),
        issued_ms: r.issued_ms,
        until_ms: r.until_ms,
        until: crate::store::rfc3339(r.until_ms),
        signature: b64().encode(&r.signature),
    };
    serde_json::to_string_pretty(&file).expect("a statement serializes") + "\n"
}

/// One certificate and key the node may present, ready for TLS and for signing.
pub struct Presented {
    /// The certificate and key.
    pub identity: Identity,
    /// The certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// For the TLS server side.
    pub certified: Arc<CertifiedKey>,
    /// Signs receipts and checkpoints with the key.
    pub signer: Arc<Signer>,
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Presented({})", self.fingerprint)
    }
}

impl Presented {
    /// Prepares `identity` for TLS and signing.
    pub fn new(identity: Identity) -> Result<Presented, String> {
        let provider = crate::tls::provider();
        let key = provider.key_provider.load_private_key(identity.key.clone_key()).map_err(|e| e.to_string())?;
        Ok(Presented {
            fingerprint: identity.fingerprint(),
            certified: Arc::new(CertifiedKey::new(vec![identity.cert.clone()], key)),
            signer: Arc::new(Signer::new(&identity)?),
            identity,
        })
    }
}

/// The certificates a node presents: its current one and, until a rollover's `until`, the one
/// it replaced with the statement that vouches for the current one.
#[derive(Debug)]
pub struct Keys {
    /// The node's certificate and key (`node.pem`, `node.key`).
    pub current: Arc<Presented>,
    previous: Option<(Arc<Presented>, wire::Rollover)>,
}

/// The node's keys, shared by the link's TLS and signing and replaced on reload.
pub type SharedKeys = Arc<arc_swap::ArcSwap<Keys>>;

/// Where the files of a node's keys are, in `certs_dir`.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// `node.pem`.
    pub cert: PathBuf,
    /// `node.key`.
    pub key: PathBuf,
    /// The folder with `previous.pem`, `previous.key` and `rollover.json`.
    pub dir: PathBuf,
}

impl KeyFiles {
    /// The key files of the config's node.
    pub fn of(config: &crate::config::Config) -> KeyFiles {
        KeyFiles { cert: config.cert_path(), key: config.key_path(), dir: config.node.certs_dir.clone() }
    }

    fn statement(&self) -> PathBuf {
        self.dir.join(STATEMENT_FILE)
    }
}

impl Keys {
    /// Loads the current key and, when a rollover statement for it is in its grace, the previous
    /// one. A statement that does not verify is an error; one for another certificate than the
    /// current, or past its `until`, is ignored.
    pub fn load(files: &KeyFiles) -> Result<Keys, IdentityError> {
        let current = Identity::load(&files.cert, &files.key)?;
        let ready = |identity, path: &Path| {
            Presented::new(identity)
                .map(Arc::new)
                .map_err(|what| IdentityError::File { path: path.to_owned(), what: format!("unusable key: {what}") })
        };
        let current = ready(current, &files.key)?;
        let previous = match Keys::previous_in(files, &current)? {
            Some((identity, statement)) => Some((ready(identity, &files.dir.join(PREVIOUS_KEY))?, statement)),
            None => None,
        };
        Ok(Keys { current, previous })
    }

    /// These keys, to be shared and replaced on reload.
    pub fn shared(self) -> SharedKeys {
        Arc::new(arc_swap::ArcSwap::from_pointee(self))
    }

    /// Just the current key, with no rollover (tests, benches).
    pub fn single(identity: Identity) -> Result<Keys, String> {
        Ok(Keys { current: Arc::new(Presented::new(identity)?), previous: None })
    }

    fn previous_in(files: &KeyFiles, current: &Presented) -> Result<Option<(Identity, wire::Rollover)>, IdentityError> {
        let path = files.statement();
        if !path.exists() {
            return Ok(None);
        }
        let statement = read_statement(&path)?;
        if new_fingerprint(&statement) != current.fingerprint || statement.until_ms <= crate::store::now_ms() {
            return Ok(None);
        }
        let (cert, key) = (files.dir.join(PREVIOUS_CERT), files.dir.join(PREVIOUS_KEY));
        if !key.exists() {
            tracing::warn!(
                statement = %path.display(),
                "the rollover's previous.key is gone, so the rollover ends now: peers that have not pinned this node's \
                 certificate refuse it"
            );
            return Ok(None);
        }
        let previous = Identity::load(&cert, &key)?;
        verify(&statement, &previous.cert)
            .map_err(|why| IdentityError::File { path, what: format!("does not hold: {why}") })?;
        Ok(Some((previous, statement)))
    }

    /// The fingerprints of the certificates presented now: the current one, and the replaced one
    /// while the grace lasts.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        std::iter::once(self.current.fingerprint).chain(self.previous().map(|(p, _)| p.fingerprint)).collect()
    }

    /// The replaced certificate and the statement, while its grace lasts.
    pub fn previous(&self) -> Option<(&Arc<Presented>, &wire::Rollover)> {
        self.previous.as_ref().filter(|(_, s)| s.until_ms > crate::store::now_ms()).map(|(p, s)| (p, s))
    }

    /// What to present to a peer: the current certificate once the peer is known to pin it
    /// (`pins_current`) or no rollover is under way, else the previous one.
    pub fn for_peer(&self, pins_current: bool) -> &Arc<Presented> {
        match self.previous() {
            Some((previous, _)) if !pins_current => previous,
            _ => &self.current,
        }
    }

    /// What to present as the server of a connection whose client asked for `server_name`
    /// ([`crate::tls::server_name`]): the certificate it names, else the one every peer pins
    /// during a rollover (the previous), else the current one.
    pub fn for_server_name(&self, server_name: Option<&str>) -> &Arc<Presented> {
        let asked = server_name.and_then(crate::tls::pinned_in_server_name);
        if asked == Some(self.current.fingerprint) {
            return &self.current;
        }
        self.for_peer(false)
    }
}

/// Pins the new certificate of `statement`, which [`crate::peer::Peer::check_rollover`] found to
/// hold, for `peer` beside its pinned ones, and keeps it in `store` (with its evidence record);
/// `Err` says why it is not pinned.
pub async fn pin(
    peers: &crate::peer::Peers,
    store: &crate::store::Store,
    peer: &Arc<crate::peer::Peer>,
    statement: wire::Rollover,
) -> Result<(), String> {
    let (new, old, until) = (new_fingerprint(&statement), Fingerprint(statement.old), statement.until_ms);
    peer.may_roll_over(&statement)?;
    peers.roll(peer, statement.clone()).map_err(|e| e.to_string())?;
    if let Err(e) = store.rollover(&peer.name, statement, true).await {
        tracing::error!(peer = %peer.name, error = %e, "cannot keep a pinned rollover; it is pinned until the next start");
        return Err(format!("the node cannot keep it now ({e}); it is sent again"));
    }
    tracing::info!(
        peer = %peer.name,
        fingerprint = %new,
        replaced = %old,
        until = %crate::store::rfc3339(until),
        "pinned the peer's new certificate, vouched for by its old key, which stays pinned until then"
    );
    Ok(())
}

/// What [`rotate`] did.
#[derive(Debug)]
pub struct Rotated {
    /// The certificate replaced.
    pub old: Fingerprint,
    /// The new certificate.
    pub new: Fingerprint,
    /// When the old certificate stops being presented and pinned (ms since the Unix epoch).
    pub until_ms: i64,
}

/// Replaces the node's key and certificate with new ones, keeping the old pair as
/// `previous.pem`/`previous.key` and the old key's statement for the new certificate in
/// `rollover.json`, valid for `grace`. Refuses while an earlier rollover's grace lasts.
pub fn rotate(node: &str, files: &KeyFiles, grace: Duration) -> Result<Rotated, IdentityError> {
    let file_error = |path: &Path, what: String| IdentityError::File { path: path.to_owned(), what };
    if grace.is_zero() || grace > MAX_GRACE {
        return Err(file_error(
            &files.statement(),
            format!("the grace must last between 1 s and {} days (--grace)", MAX_GRACE.as_secs() / 86_400),
        ));
    }
    let old = Identity::load(&files.cert, &files.key)?;
    let keys = Keys::load(files)?;
    if let Some((_, under_way)) = keys.previous() {
        return Err(file_error(
            &files.statement(),
            format!(
                "a rollover is under way until {}: peers may still pin {}; rotate again after that",
                crate::store::rfc3339(under_way.until_ms),
                Fingerprint(under_way.old)
            ),
        ));
    }
    let new = Identity::generate(node)?;
    let issued_ms = crate::store::now_ms();
    let until_ms = issued_ms + grace.as_millis() as i64;
    let statement = sign(node, &old, &new.cert, issued_ms, until_ms)
        .map_err(|what| file_error(&files.key, format!("cannot sign with the old key: {what}")))?;
    // The old pair and the statement first: a rotation cut short leaves the node on its old key.
    let retired = files.dir.join(RETIRED_DIR);
    std::fs::create_dir_all(&retired).map_err(|e| file_error(&retired, e.to_string()))?;
    let hex = hex::encode(old.fingerprint().0);
    write_file(&retired.join(format!("{}.pem", &hex[..16])), pem("CERTIFICATE", &old.cert).as_bytes(), false)?;
    write_file(&files.dir.join(PREVIOUS_KEY), pem("PRIVATE KEY", old.key.secret_der()).as_bytes(), true)?;
    write_file(&files.dir.join(PREVIOUS_CERT), pem("CERTIFICATE", &old.cert).as_bytes(), false)?;
    write_file(&files.statement(), statement_text(&statement).as_bytes(), false)?;
    write_file(&files.key, pem("PRIVATE KEY", new.key.secret_der()).as_bytes(), true)?;
    write_file(&files.cert, pem("CERTIFICATE", &new.cert).as_bytes(), false)?;
    Ok(Rotated { old: old.fingerprint(), new: new.fingerprint(), until_ms })
}

/// This node's certificate and every one it replaced (`certs/retired/`): the keys its signatures
/// in peers' logs and in bundles were made with, the current one first.
pub fn own_certs(files: &KeyFiles) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let mut certs = vec![crate::identity::load_cert(&files.cert)?];
    let retired = files.dir.join(RETIRED_DIR);
    let Ok(entries) = std::fs::read_dir(&retired) else { return Ok(certs) };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "pem")) {
        certs.push(crate::identity::load_cert(path)?);
    }
    Ok(certs)
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

/// Replaces `path` with `bytes` through a synced temporary file beside it (mode 0600 when
/// `private`), so that a reader sees the old file or the new one, never a part.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), IdentityError> {
    use std::io::Write;
    let io = |e: std::io::Error| IdentityError::File { path: path.to_owned(), what: e.to_string() };
    let temporary = path.with_extension("new");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    let mut file = options.open(&temporary).map_err(io)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(old: &Identity, new: &Identity) -> wire::Rollover {
        let now = crate::store::now_ms();
        sign("org-a", old, &new.cert, now, now + 60_000).unwrap()
    }

    #[test]
    fn a_statement_verifies_only_against_the_old_certificate_and_unaltered() {
        let (old, new, other) =
            (Identity::generate("a").unwrap(), Identity::generate("a").unwrap(), Identity::generate("x").unwrap());
        let s = statement(&old, &new);
        verify(&s, &old.cert).unwrap();
        assert!(verify(&s, &other.cert).unwrap_err().contains("another certificate"));
        assert!(verify(&s, &new.cert).is_err());
        let altered = |f: fn(&mut wire::Rollover)| {
            let mut s = s.clone();
            f(&mut s);
            verify(&s, &old.cert).unwrap_err()
        };
        assert!(altered(|s| s.until_ms += 1).contains("signature"));
        assert!(altered(|s| s.node = "org-b".into()).contains("signature"));
        assert!(!altered(|s| s.new_cert[40] ^= 1).is_empty(), "another certificate, unreadable or unsigned");
        assert!(altered(|s| s.until_ms = s.issued_ms).contains("grace"));
        assert!(altered(|s| s.until_ms = s.issued_ms + MAX_GRACE.as_millis() as i64 + 1).contains("grace"));
        let signed_by_other = sign("org-a", &other, &new.cert, s.issued_ms, s.until_ms).unwrap();
        let forged = wire::Rollover { old: s.old, ..signed_by_other };
        assert!(verify(&forged, &old.cert).unwrap_err().contains("signature"));
    }

    #[test]
    fn rotate_keeps_the_old_pair_presented_until_the_grace_ends() {
        let dir = tempfile::tempdir().unwrap();
        let files =
            KeyFiles { cert: dir.path().join("node.pem"), key: dir.path().join("node.key"), dir: dir.path().into() };
        let first = Identity::generate("org-a").unwrap();
        first.save(&files.cert, &files.key).unwrap();
        let rotated = rotate("org-a", &files, Duration::from_secs(60)).unwrap();
        assert_eq!(rotated.old, first.fingerprint());

        let keys = Keys::load(&files).unwrap();
        assert_eq!(keys.current.fingerprint, rotated.new);
        let (previous, statement) = keys.previous().expect("the old pair is kept during the grace");
        assert_eq!(previous.fingerprint, first.fingerprint());
        verify(statement, &first.cert).unwrap();
        assert_eq!(keys.for_peer(false).fingerprint, first.fingerprint(), "a peer not known to pin the new one");
        assert_eq!(keys.for_peer(true).fingerprint, rotated.new);
        let asking_new = crate::tls::server_name(rotated.new);
        assert_eq!(keys.for_server_name(Some(&asking_new)).fingerprint, rotated.new);
        assert_eq!(keys.for_server_name(Some(crate::tls::SERVER_NAME)).fingerprint, first.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&files.key, &dir.path().join(PREVIOUS_KEY)] {
                assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600, "{key:?}");
            }
        }

        let own = own_certs(&files).unwrap();
        let own: Vec<_> = own.iter().map(|c| Fingerprint::of(c)).collect();
        assert_eq!(own, [rotated.new, first.fingerprint()], "the replaced certificate is kept for good");

        let again = rotate("org-a", &files, Duration::from_secs(60)).unwrap_err().to_string();
        assert!(again.contains("a rollover is under way until"), "{again}");

        // A tampered statement stops the node rather than present a key it does not vouch for.
        let text = std::fs::read_to_string(files.statement()).unwrap();
        let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
        file["until_ms"] = (rotated.until_ms + 1000).into();
        std::fs::write(files.statement(), file.to_string()).unwrap();
        let err = Keys::load(&files).unwrap_err().to_string();
        assert!(err.contains("does not hold"), "{err}");
    }
}
