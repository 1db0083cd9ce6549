//! The peers this node knows: their pinned certificates and the live state of their connections.
//!
//! The table is shared: the TLS verifiers look peers up by fingerprint, the link keeps each peer's
//! connection here, and the API reads [`PeerStatus`] snapshots without knowing about QUIC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use serde::Serialize;

use crate::backoff;
use crate::config::PeerConfig;
use crate::identity::{load_cert, Fingerprint, IdentityError};

/// A configured peer and its connection.
#[derive(Debug)]
pub struct Peer {
    /// The peer's node name.
    pub name: String,
    /// `host:port`, resolved at connect time.
    pub address: String,
    /// The pinned certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// Its pinned certificate, which checks its receipts.
    pub cert: CertificateDer<'static>,
    link: Mutex<LinkState>,
    /// Held while dialing, so that one dial serves every waiting request.
    pub dialing: tokio::sync::Mutex<()>,
    /// Woken when the peer dials this node ([`Peer::dialed_in`]).
    up: tokio::sync::Notify,
    /// Cancelled when a reload removes or replaces this peer.
    retired: tokio_util::sync::CancellationToken,
}

#[derive(Debug, Default)]
struct LinkState {
    connection: Option<quinn::Connection>,
    failures: u32,
    /// Until when stored work waits before the peer is dialed again, after a failed dial.
    away_until: Option<std::time::Instant>,
    last_error: Option<String>,
    last_seen: Option<SystemTime>,
}

impl Peer {
    /// A peer with the given pinned certificate, not yet connected.
    pub fn new(name: &str, address: &str, cert: &CertificateDer<'_>) -> Self {
        Peer {
            name: name.to_owned(),
            address: address.to_owned(),
            fingerprint: Fingerprint::of(cert),
            cert: cert.clone().into_owned(),
            link: Mutex::default(),
            dialing: tokio::sync::Mutex::new(()),
            up: tokio::sync::Notify::new(),
            retired: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Marks the peer as no longer configured (or configured anew) and closes its connection.
    pub fn retire(&self) {
        self.retired.cancel();
        self.disconnect(crate::wire::Code::NotPinned, "no longer pinned");
    }

    /// Resolves once the peer has been retired by a reload; connections it opened should close.
    pub async fn retired(&self) {
        self.retired.cancelled().await
    }

    /// The open connection to this peer, if there is one.
    pub fn connection(&self) -> Option<quinn::Connection> {
        let link = self.link.lock().unwrap();
        link.connection.clone().filter(|c| c.close_reason().is_none())
    }

    /// Whether `connection` is the one recorded last (open or not): no other has replaced it.
    pub fn holds(&self, connection: &quinn::Connection) -> bool {
        let link = self.link.lock().unwrap();
        link.connection.as_ref().is_some_and(|c| c.stable_id() == connection.stable_id())
    }

    /// Records a new connection.
    pub fn connected(&self, connection: quinn::Connection) {
        let mut link = self.link.lock().unwrap();
        link.connection = Some(connection);
        link.failures = 0;
        link.away_until = None;
        link.last_error = None;
        link.last_seen = Some(SystemTime::now());
    }

    /// Records that the peer answered on the link.
    pub fn seen(&self) {
        self.link.lock().unwrap().last_seen = Some(SystemTime::now());
    }

    /// Records a failure to reach the peer: stored work for it waits [`backoff::PEER_AWAY`]
    /// before the peer is dialed again ([`Peer::away_for`]).
    pub fn failed(&self, error: String) {
        let mut link = self.link.lock().unwrap();
        link.failures = link.failures.saturating_add(1);
        link.away_until = Some(std::time::Instant::now() + backoff::PEER_AWAY.after(link.failures));
        link.last_error = Some(error);
    }

    /// How long stored work for the peer still waits before it is dialed again, after a failed
    /// dial; `None` once it may be dialed.
    pub fn away_for(&self) -> Option<std::time::Duration> {
        let until = self.link.lock().unwrap().away_until?;
        until.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero())
    }

    /// Records that the peer dialed this node: it is up, so stored work need not wait to dial it,
    /// and a dial still waiting for its answer starts over ([`Peer::up`]).
    pub fn dialed_in(&self) {
        self.link.lock().unwrap().away_until = None;
        self.up.notify_waiters();
    }

    /// Resolves at the next [`Peer::dialed_in`] after this call.
    pub fn up(&self) -> tokio::sync::futures::Notified<'_> {
        self.up.notified()
    }

    /// Closes the connection, if any, with `code`.
    pub fn disconnect(&self, code: crate::wire::Code, reason: &str) {
        if let Some(c) = self.link.lock().unwrap().connection.take() {
            c.close(code.varint(), reason.as_bytes());
        }
    }

    /// A snapshot for the API.
    pub fn status(&self) -> PeerStatus {
        let link = self.link.lock().unwrap();
        let open = link.connection.as_ref().filter(|c| c.close_reason().is_none());
        PeerStatus {
            name: self.name.clone(),
            address: self.address.clone(),
            fingerprint: self.fingerprint.to_string(),
            connected: open.is_some(),
            rtt_ms: open.map(|c| c.rtt().as_secs_f64() * 1000.0),
            last_error: link.last_error.clone(),
            last_seen: link.last_seen.map(|t| humantime::format_rfc3339_millis(t).to_string()),
        }
    }
}

/// What the API shows of a peer (`GET /v1/peers`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerStatus {
    /// The peer's node name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// The pinned fingerprint.
    pub fingerprint: String,
    /// Whether a connection is open now.
    pub connected: bool,
    /// The connection's smoothed round-trip time.
    pub rtt_ms: Option<f64>,
    /// Why the last attempt to reach it failed.
    pub last_error: Option<String>,
    /// When it last answered (RFC 3339).
    pub last_seen: Option<String>,
}

/// What a [`Peers::reload`] changed, by peer name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PeerChanges {
    /// Peers that were not configured before.
    pub added: Vec<String>,
    /// Peers whose address or certificate changed: their connections were closed.
    pub changed: Vec<String>,
    /// Peers no longer configured: their connections were closed.
    pub removed: Vec<String>,
}

impl PeerChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The shared table of peers, by name and by fingerprint.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    inner: Arc<RwLock<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    by_name: HashMap<String, Arc<Peer>>,
    by_fingerprint: HashMap<Fingerprint, Arc<Peer>>,
}

/// Every peer that pins a certificate an earlier one in `pins` pins already, as an
/// [`IdentityError::PinnedTwice`]: a node must tell its peers apart by certificate.
pub fn pinned_twice<'a>(pins: impl IntoIterator<Item = (&'a str, Fingerprint)>) -> Vec<IdentityError> {
    let mut first: HashMap<Fingerprint, &str> = HashMap::new();
    let mut twice = Vec::new();
    for (name, fingerprint) in pins {
        match first.get(&fingerprint) {
            Some(earlier) => twice.push(IdentityError::PinnedTwice {
                first: (*earlier).to_owned(),
                second: name.to_owned(),
                fingerprint,
            }),
            None => {
                first.insert(fingerprint, name);
            }
        }
    }
    twice
}

/// Loads every configured peer's certificate; refuses a certificate pinned for two peers.
fn load_all(configs: &[PeerConfig]) -> Result<Vec<Peer>, IdentityError> {
    let mut loaded = Vec::with_capacity(configs.len());
    for c in configs {
        loaded.push(Peer::new(&c.name, &c.address, &load_cert(&c.cert)?));
    }
    match pinned_twice(loaded.iter().map(|p| (p.name.as_str(), p.fingerprint))).into_iter().next() {
        Some(twice) => Err(twice),
        None => Ok(loaded),
    }
}

impl Peers {
    /// Loads every configured peer's certificate; a certificate pinned for two peers is refused.
    pub fn load(configs: &[PeerConfig]) -> Result<Peers, IdentityError> {
        let peers = Peers::default();
        for peer in load_all(configs)? {
            peers.insert(peer);
        }
        Ok(peers)
    }

    /// Replaces the table with `configs` (on reload), keeping the live [`Peer`] of every peer whose
    /// address and certificate are unchanged, so its connection stays up. Removed and changed
    /// peers are retired: their connections close. Every certificate is loaded first: if one
    /// cannot be, or one is pinned for two peers, nothing changes.
    pub fn reload(&self, configs: &[PeerConfig]) -> Result<PeerChanges, IdentityError> {
        let loaded = load_all(configs)?;
        let mut changes = PeerChanges::default();
        let mut retired = Vec::new();
        {
            let mut table = self.inner.write().unwrap();
            let mut old = std::mem::take(&mut table.by_name);
            table.by_fingerprint.clear();
            for new in loaded {
                let peer = match old.remove(&new.name) {
                    Some(kept) if kept.address == new.address && kept.fingerprint == new.fingerprint => kept,
                    Some(replaced) => {
                        changes.changed.push(new.name.clone());
                        retired.push(replaced);
                        Arc::new(new)
                    }
                    None => {
                        changes.added.push(new.name.clone());
                        Arc::new(new)
                    }
                };
                table.by_fingerprint.insert(peer.fingerprint, peer.clone());
                table.by_name.insert(peer.name.clone(), peer);
            }
            for (name, gone) in old {
                changes.removed.push(name);
                retired.push(gone);
            }
        }
        for peer in retired {
            peer.retire();
        }
        for list in [&mut changes.added, &mut changes.changed, &mut changes.removed] {
            list.sort();
        }
        Ok(changes)
    }

    /// Adds or replaces a peer.
    pub fn insert(&self, peer: Peer) {
        let peer = Arc::new(peer);
        let mut table = self.inner.write().unwrap();
        if let Some(old) = table.by_name.insert(peer.name.clone(), peer.clone()) {
            table.by_fingerprint.remove(&old.fingerprint);
        }
        table.by_fingerprint.insert(peer.fingerprint, peer);
    }

    /// The peer named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Peer>> {
        self.inner.read().unwrap().by_name.get(name).cloned()
    }

    /// The peer whose pinned certificate has this fingerprint.
    pub fn by_fingerprint(&self, fingerprint: &Fingerprint) -> Option<Arc<Peer>> {
        self.inner.read().unwrap().by_fingerprint.get(fingerprint).cloned()
    }

    /// Every peer, by name.
    pub fn all(&self) -> Vec<Arc<Peer>> {
        let mut all: Vec<_> = self.inner.read().unwrap().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn pinned(dir: &std::path::Path, name: &str, address: &str) -> PeerConfig {
        let cert = dir.join(format!("{name}.pem"));
        if !cert.exists() {
            Identity::generate(name).unwrap().save(&cert, &dir.join(format!("{name}.key"))).unwrap();
        }
        PeerConfig { name: name.into(), address: address.into(), cert }
    }

    #[test]
    fn reload_keeps_unchanged_peers_and_retires_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (b, c) = (pinned(dir.path(), "org-b", "127.0.0.1:1"), pinned(dir.path(), "org-c", "127.0.0.1:2"));
        let peers = Peers::load(&[b.clone(), c.clone()]).unwrap();
        let (old_b, old_c) = (peers.get("org-b").unwrap(), peers.get("org-c").unwrap());

        let moved_c = PeerConfig { address: "127.0.0.1:3".into(), ..c.clone() };
        let d = pinned(dir.path(), "org-d", "127.0.0.1:4");
        let changes = peers.reload(&[b.clone(), moved_c, d.clone()]).unwrap();
        assert_eq!(changes.added, ["org-d"]);
        assert_eq!(changes.changed, ["org-c"]);
        assert!(changes.removed.is_empty());
        assert!(Arc::ptr_eq(&old_b, &peers.get("org-b").unwrap()), "an unchanged peer keeps its connection");
        assert!(old_c.retired.is_cancelled() && !old_b.retired.is_cancelled());
        assert_eq!(peers.get("org-c").unwrap().address, "127.0.0.1:3");
        assert!(peers.by_fingerprint(&peers.get("org-d").unwrap().fingerprint).is_some());

        let changes = peers.reload(std::slice::from_ref(&d)).unwrap();
        assert_eq!(changes.removed, ["org-b", "org-c"]);
        assert!(old_b.retired.is_cancelled());
        assert!(peers.get("org-b").is_none() && peers.by_fingerprint(&old_b.fingerprint).is_none());

        // A certificate that cannot be read changes nothing.
        let missing = PeerConfig { cert: dir.path().join("gone.pem"), ..b };
        assert!(peers.reload(&[missing, d.clone()]).is_err());
        assert_eq!(peers.all().iter().map(|p| p.name.clone()).collect::<Vec<_>>(), ["org-d"]);

        // Nor does a certificate pinned for two peers.
        let twin = PeerConfig { name: "org-e".into(), ..d.clone() };
        let err = peers.reload(&[d, twin]).unwrap_err();
        assert!(
            matches!(&err, IdentityError::PinnedTwice { first, second, .. } if first == "org-d" && second == "org-e")
        );
        assert_eq!(peers.all().iter().map(|p| p.name.clone()).collect::<Vec<_>>(), ["org-d"]);
    }

    #[test]
    fn a_certificate_pinned_for_two_peers_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (b, c) = (pinned(dir.path(), "org-b", "127.0.0.1:1"), pinned(dir.path(), "org-c", "127.0.0.1:2"));
        let twin = PeerConfig { name: "org-z".into(), address: "127.0.0.1:3".into(), cert: b.cert.clone() };
        let err = Peers::load(&[b, c, twin]).unwrap_err().to_string();
        assert!(err.contains("`org-b` and `org-z` pin the same certificate (sha256:"), "{err}");
        assert!(err.contains("ferry peer remove org-z"), "{err}");
    }

    #[tokio::test]
    async fn a_peer_that_dials_in_is_no_longer_away_and_wakes_a_dial_waiting_for_it() {
        let peer = Peer::new("org-b", "127.0.0.1:1", &Identity::generate("org-b").unwrap().cert);
        assert_eq!(peer.away_for(), None, "a peer never dialed may be dialed");
        peer.failed("no answer".into());
        let away = peer.away_for().expect("a failed dial makes stored work wait");
        assert!(away <= backoff::PEER_AWAY.max.mul_f64(1.25), "{away:?}");

        let waiting_dial = peer.up();
        peer.dialed_in();
        assert_eq!(peer.away_for(), None, "a peer that dialed in is up");
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting_dial)
            .await
            .expect("a dial begun before the peer dialed in is woken, to start over");
    }
}
