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
use crate::wire;

/// A configured peer and its connection.
#[derive(Debug)]
pub struct Peer {
    /// The peer's node name.
    pub name: String,
    /// Where it answers, `host:port`, one or several (its members), resolved at connect time and
    /// dialed in turn ([`Peer::dial_order`]).
    pub addresses: Vec<String>,
    /// The index in `addresses` of the one that answered last, dialed first next time.
    answered: std::sync::atomic::AtomicUsize,
    /// The outcome of the latest dial to each of `addresses`, by index.
    dials: Mutex<Vec<Dialed>>,
    /// The certificates pinned in the config, one per member (usually one); after a rollover,
    /// [`Peer::pins`] says which are pinned.
    pub certs: Vec<CertificateDer<'static>>,
    /// Whether a rollover the peer's pinned key vouches for is pinned without the admin.
    auto_rollover: std::sync::atomic::AtomicBool,
    rolled: Mutex<Rolled>,
    /// The newest of this node's certificates the peer is known to pin, during this node's own
    /// rollover ([`crate::rollover::Keys::for_peer`]).
    pins_ours: Mutex<Option<Fingerprint>>,
    link: Mutex<LinkState>,
    /// Connections to particular members, by fingerprint, for the results of the requests each
    /// sent ([`crate::link`]'s `member_connection`), when the kept connection is with another.
    to_members: Mutex<HashMap<String, quinn::Connection>>,
    /// Held while dialing a particular member, apart from [`Peer::dialing`]: a member away must
    /// not hold up the peer's requests.
    pub dialing_member: tokio::sync::Mutex<()>,
    /// Held while dialing, so that one dial serves every waiting request.
    pub dialing: tokio::sync::Mutex<()>,
    /// Woken when the peer dials this node ([`Peer::dialed_in`]).
    up: tokio::sync::Notify,
    /// Cancelled when a reload removes or replaces this peer.
    retired: tokio_util::sync::CancellationToken,
}

/// The peer's certificate rollovers ([`crate::rollover`]) since the ones in the config.
#[derive(Debug, Default)]
struct Rolled {
    /// Pinned rollovers, oldest first; each replaces the certificate it names (`old`): one in the
    /// config or one an earlier rollover brought, which stays pinned until the rollover's
    /// `until_ms`. With several members, each member's rollovers form a chain of their own.
    chain: Vec<wire::Rollover>,
    /// Rollovers of newest pins held for the admin's approval (`auto_rollover = false`): one
    /// per certificate replaced, so one per member.
    offered: Vec<wire::Rollover>,
}

/// A certificate pinned for a peer.
#[derive(Debug, Clone)]
pub struct Pin {
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
    /// The certificate, which checks the peer's signatures.
    pub cert: CertificateDer<'static>,
    /// When it stops being pinned, for one a rollover replaced (ms since the Unix epoch).
    pub until_ms: Option<i64>,
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
    /// A peer at `addresses` with the given pinned certificates (one per member), not yet
    /// connected, whose rollovers are pinned at once.
    pub fn new(
        name: &str,
        addresses: impl IntoIterator<Item = impl Into<String>>,
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Self {
        let addresses: Vec<String> = addresses.into_iter().map(Into::into).collect();
        Peer {
            name: name.to_owned(),
            dials: Mutex::new(vec![Dialed::default(); addresses.len()]),
            addresses,
            answered: 0.into(),
            to_members: Mutex::default(),
            dialing_member: tokio::sync::Mutex::new(()),
            certs: certs.into_iter().collect(),
            auto_rollover: true.into(),
            rolled: Mutex::default(),
            pins_ours: Mutex::default(),
            link: Mutex::default(),
            dialing: tokio::sync::Mutex::new(()),
            up: tokio::sync::Notify::new(),
            retired: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Which member of the peer `connection` is with, as evidence records name it: the
    /// fingerprint of the certificate it presented, for a peer whose members have a key each;
    /// `None` for a peer with one certificate in the config.
    pub fn member_of(&self, connection: &quinn::Connection) -> Option<String> {
        (self.certs.len() > 1).then(|| crate::tls::presented(connection)).flatten().map(|f| f.to_string())
    }

    /// The certificates that `member` (a fingerprint [`Peer::member_of`] gave) may present now:
    /// it, and the one its rollover brought, as far as pinned; `None` when none is.
    pub fn member_pins(&self, member: &str) -> Option<Vec<Fingerprint>> {
        let named = self.every_cert().iter().map(|c| Fingerprint::of(c)).find(|f| f.to_string() == member)?;
        let newest = self.newest_of(named);
        let wanted: Vec<Fingerprint> =
            [newest, named].into_iter().filter(|f| self.pinned(f)).fold(Vec::new(), |mut wanted, f| {
                if !wanted.contains(&f) {
                    wanted.push(f);
                }
                wanted
            });
        (!wanted.is_empty()).then_some(wanted)
    }

    /// The open connection to `member` alone, if there is one.
    pub fn connection_to(&self, member: &str) -> Option<quinn::Connection> {
        let mut to_members = self.to_members.lock().unwrap();
        to_members.retain(|_, c| c.close_reason().is_none());
        to_members.get(member).cloned()
    }

    /// Records a connection to `member` alone.
    pub fn connected_to(&self, member: &str, connection: quinn::Connection) {
        self.to_members.lock().unwrap().insert(member.to_owned(), connection);
    }

    /// The peer's addresses in the order to dial them: the one that answered last first, then
    /// those after it as configured, wrapping around.
    pub fn dial_order(&self) -> impl Iterator<Item = (usize, &str)> {
        let first = self.answered.load(std::sync::atomic::Ordering::Relaxed);
        let n = self.addresses.len();
        (0..n).map(move |i| (first + i) % n).map(|i| (i, self.addresses[i].as_str()))
    }

    /// The address in use: the one that answered last (the first configured until one has).
    pub fn address(&self) -> &str {
        let i = self.answered.load(std::sync::atomic::Ordering::Relaxed);
        self.addresses.get(i).map_or("", String::as_str)
    }

    /// Records that the address at `index` of `addresses` answered: it is dialed first from now.
    pub fn answered_at(&self, index: usize) {
        self.answered.store(index, std::sync::atomic::Ordering::Relaxed);
        self.dialed(index, Dialed { answered: true, at: Some(SystemTime::now()), error: None });
    }

    /// Records that a dial to the address at `index` of `addresses` failed, and why.
    pub fn not_answered_at(&self, index: usize, error: String) {
        self.dialed(index, Dialed { answered: false, at: Some(SystemTime::now()), error: Some(error) });
    }

    fn dialed(&self, index: usize, outcome: Dialed) {
        if let Some(slot) = self.dials.lock().unwrap().get_mut(index) {
            *slot = outcome;
        }
    }

    /// The certificates pinned for the peer now: first the newest of each member (the config's,
    /// or its newest rollover's; the latest rollover first), then those a rollover replaced whose
    /// grace lasts (`until_ms`).
    pub fn pins(&self) -> Vec<Pin> {
        let now = crate::store::now_ms();
        let rolled = self.rolled.lock().unwrap();
        let mut pins: Vec<Pin> = self
            .certs
            .iter()
            .map(|cert| Pin { fingerprint: Fingerprint::of(cert), cert: cert.clone(), until_ms: None })
            .collect();
        for statement in &rolled.chain {
            // Each replaces a newest pin; one that does not (two raced) brings nothing.
            let Some(old) = pins.iter_mut().find(|p| p.fingerprint.0 == statement.old && p.until_ms.is_none()) else {
                continue;
            };
            old.until_ms = Some(statement.until_ms);
            let cert = CertificateDer::from(statement.new_cert.clone());
            pins.insert(0, Pin { fingerprint: Fingerprint::of(&cert), cert, until_ms: None });
        }
        pins.retain(|p| p.until_ms.is_none_or(|until| until > now));
        pins.sort_by_key(|p| p.until_ms.is_some());
        pins
    }

    /// Whether `fingerprint` is pinned for the peer now.
    pub fn pinned(&self, fingerprint: &Fingerprint) -> bool {
        self.pins().iter().any(|p| p.fingerprint == *fingerprint)
    }

    /// The newest certificate pinned in place of `configured`, one of the config's: itself, or
    /// the one its member's latest rollover brought.
    pub fn newest_of(&self, configured: Fingerprint) -> Fingerprint {
        let rolled = self.rolled.lock().unwrap();
        rolled.chain.iter().fold(configured, |newest, statement| {
            if statement.old == newest.0 {
                crate::rollover::new_fingerprint(statement)
            } else {
                newest
            }
        })
    }

    /// Every certificate ever pinned for the peer, the config's first: what its signatures in
    /// the evidence log were made with.
    pub fn every_cert(&self) -> Vec<CertificateDer<'static>> {
        let rolled = self.rolled.lock().unwrap();
        let newer = rolled.chain.iter().map(|s| CertificateDer::from(s.new_cert.clone()));
        self.certs.iter().cloned().chain(newer).collect()
    }

    /// Whether the peer's rollovers are pinned without the admin.
    pub fn auto_rollover(&self) -> bool {
        self.auto_rollover.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks `statement` against the pin it replaces, which must be the newest of its member:
    /// `Ok(true)` when it verifies and is new, `Ok(false)` when it is pinned already. A
    /// certificate the peer held before, or one another member presents, is refused.
    pub fn check_rollover(&self, statement: &wire::Rollover) -> Result<bool, String> {
        let new = crate::rollover::new_fingerprint(statement);
        if self.newest_of(Fingerprint(statement.old)) == new && self.pinned(&new) {
            return Ok(false);
        }
        if self.every_cert().iter().any(|c| Fingerprint::of(c) == new) {
            return Err(format!("it brings certificate {new}, which {} has held or holds already", self.name));
        }
        let pins = self.pins();
        match pins.iter().find(|p| p.fingerprint.0 == statement.old && p.until_ms.is_none()) {
            Some(replaced) => crate::rollover::verify(statement, &replaced.cert).map(|()| true),
            None => Err(format!(
                "it replaces certificate {}, which is not the newest pinned for {}",
                Fingerprint(statement.old),
                self.name
            )),
        }
    }

    /// `Err` while the grace of the rollover that brought the certificate `statement` replaces
    /// lasts: a node rotates again only after it (`ferry cert rotate` refuses sooner), so a peer
    /// cannot keep piling up pins.
    pub fn may_roll_over(&self, statement: &wire::Rollover) -> Result<(), String> {
        let rolled = self.rolled.lock().unwrap();
        let now = crate::store::now_ms();
        let previous = rolled.chain.iter().rev().find(|s| crate::rollover::new_fingerprint(s).0 == statement.old);
        match previous.filter(|s| s.until_ms > now) {
            Some(previous) => Err(format!(
                "its previous rollover's grace lasts until {}; a node rotates again only after that",
                crate::store::rfc3339(previous.until_ms)
            )),
            None => Ok(()),
        }
    }

    /// Pins the certificate of `statement`, which [`Peer::check_rollover`] found new and valid,
    /// beside the ones pinned now.
    fn roll(&self, statement: wire::Rollover) {
        let mut rolled = self.rolled.lock().unwrap();
        rolled.offered.retain(|o| o.old != statement.old);
        rolled.chain.push(statement);
    }

    /// Holds `statement` for the admin's approval ([`Peers::roll`] pins it then).
    pub fn offer(&self, statement: wire::Rollover) {
        let mut rolled = self.rolled.lock().unwrap();
        rolled.offered.retain(|o| o.old != statement.old);
        rolled.offered.push(statement);
    }

    /// The rollover held for the admin's approval, if any.
    pub fn offered(&self) -> Vec<wire::Rollover> {
        self.rolled.lock().unwrap().offered.clone()
    }

    /// Records that the peer pins `ours`, one of this node's certificates; whether that is news.
    pub fn pins_ours(&self, ours: Fingerprint) -> bool {
        self.pins_ours.lock().unwrap().replace(ours) != Some(ours)
    }

    /// Whether the peer is known to pin `ours`.
    pub fn is_known_to_pin(&self, ours: &Fingerprint) -> bool {
        self.pins_ours.lock().unwrap().as_ref() == Some(ours)
    }

    /// Marks the peer as no longer configured (or configured anew) and closes its connection.
    pub fn retire(&self) {
        self.retired.cancel();
        self.disconnect(crate::wire::Code::NotPinned, "no longer pinned");
        for (_, c) in self.to_members.lock().unwrap().drain() {
            c.close(crate::wire::Code::NotPinned.varint(), b"no longer pinned");
        }
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
        let pins = self.pins();
        PeerStatus {
            name: self.name.clone(),
            address: self.address().to_owned(),
            addresses: self.addresses.clone(),
            fingerprint: pins[0].fingerprint.to_string(),
            fingerprints: pins.iter().filter(|p| p.until_ms.is_none()).map(|p| p.fingerprint.to_string()).collect(),
            dials: {
                let dials = self.dials.lock().unwrap().clone();
                dials.into_iter().zip(&self.addresses).map(|(d, a)| d.status(a)).collect()
            },
            replaced: pins
                .iter()
                .filter(|p| p.until_ms.is_some())
                .map(|p| Replaced {
                    fingerprint: p.fingerprint.to_string(),
                    until: crate::store::rfc3339(p.until_ms.unwrap_or_default()),
                })
                .collect(),
            rollover_offered: self.offered().last().map(|o| crate::rollover::new_fingerprint(o).to_string()),
            rollovers_offered: self.offered().iter().map(|o| crate::rollover::new_fingerprint(o).to_string()).collect(),
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
    /// The address in use, `host:port`: the one that answered last.
    pub address: String,
    /// Every address the peer is dialed at, in the config's order.
    pub addresses: Vec<String>,
    /// The newest pinned certificate's fingerprint (with several members, the one the latest
    /// rollover brought, else the first member's).
    pub fingerprint: String,
    /// The newest pinned certificate of each member: `fingerprint` alone, unless the peer has
    /// several members with a key each.
    pub fingerprints: Vec<String>,
    /// The latest dial to each of `addresses`, in their order: which members answered.
    pub dials: Vec<DialStatus>,
    /// Certificates the peer replaced (a rollover) that stay pinned until their grace ends.
    pub replaced: Vec<Replaced>,
    /// The fingerprint of a new certificate the peer sent, held for the admin's approval
    /// (`ferry peer accept NAME --fingerprint …`).
    pub rollover_offered: Option<String>,
    /// Every new certificate held for approval, one per member at most (`rollover_offered` is
    /// the latest).
    pub rollovers_offered: Vec<String>,
    /// Whether a connection is open now.
    pub connected: bool,
    /// The connection's smoothed round-trip time.
    pub rtt_ms: Option<f64>,
    /// Why the last attempt to reach it failed.
    pub last_error: Option<String>,
    /// When it last answered (RFC 3339).
    pub last_seen: Option<String>,
}

/// The outcome of the latest dial to one of a peer's addresses.
#[derive(Debug, Clone, Default)]
struct Dialed {
    answered: bool,
    at: Option<SystemTime>,
    error: Option<String>,
}

impl Dialed {
    fn status(self, address: &str) -> DialStatus {
        DialStatus {
            address: address.to_owned(),
            answered: self.at.map(|_| self.answered),
            at: self.at.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            error: self.error,
        }
    }
}

/// What the API shows of the latest dial to one of a peer's addresses.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DialStatus {
    /// The address, `host:port`.
    pub address: String,
    /// Whether it answered; `null` when it has not been dialed since the node started.
    pub answered: Option<bool>,
    /// When (RFC 3339).
    pub at: Option<String>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// A peer's certificate that a rollover replaced, pinned until its grace ends.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Replaced {
    /// Its fingerprint.
    pub fingerprint: String,
    /// When it stops being pinned (RFC 3339).
    pub until: String,
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
    /// This node's own certificates, which no rollover of a peer may pin ([`Peers::set_own`]).
    own: Arc<RwLock<Vec<Fingerprint>>>,
}

#[derive(Debug, Default)]
struct Table {
    by_name: HashMap<String, Arc<Peer>>,
    by_fingerprint: HashMap<Fingerprint, Arc<Peer>>,
}

/// Every peer that pins a certificate an earlier one in `pins` pins already, as an
/// [`IdentityError::PinnedTwice`]: a node must tell its peers apart by certificate. (One peer
/// naming one certificate twice, in two files, is harmless.)
pub fn pinned_twice<'a>(pins: impl IntoIterator<Item = (&'a str, Fingerprint)>) -> Vec<IdentityError> {
    let mut first: HashMap<Fingerprint, &str> = HashMap::new();
    let mut twice = Vec::new();
    for (name, fingerprint) in pins {
        match first.get(&fingerprint) {
            Some(earlier) if *earlier == name => {}
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
        let certs = c.certs.iter().map(|path| load_cert(path)).collect::<Result<Vec<_>, _>>()?;
        let peer = Peer::new(&c.name, c.addresses.iter().cloned(), certs);
        peer.auto_rollover.store(c.auto_rollover, std::sync::atomic::Ordering::Relaxed);
        loaded.push(peer);
    }
    let pins = loaded.iter().flat_map(|p| p.certs.iter().map(|c| (p.name.as_str(), Fingerprint::of(c))));
    match pinned_twice(pins).into_iter().next() {
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
                    Some(kept) if kept.addresses == new.addresses && kept.certs == new.certs => {
                        kept.auto_rollover.store(new.auto_rollover(), std::sync::atomic::Ordering::Relaxed);
                        kept
                    }
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
                for pin in peer.pins() {
                    table.by_fingerprint.insert(pin.fingerprint, peer.clone());
                }
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
            table.by_fingerprint.retain(|_, p| !Arc::ptr_eq(p, &old));
        }
        for pin in peer.pins() {
            table.by_fingerprint.insert(pin.fingerprint, peer.clone());
        }
    }

    /// The peer named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Peer>> {
        self.inner.read().unwrap().by_name.get(name).cloned()
    }

    /// The peer that pins the certificate with this fingerprint now.
    pub fn by_fingerprint(&self, fingerprint: &Fingerprint) -> Option<Arc<Peer>> {
        let peer = self.inner.read().unwrap().by_fingerprint.get(fingerprint).cloned()?;
        peer.pinned(fingerprint).then_some(peer)
    }

    /// Sets this node's own certificates (its current one, and the one it replaces during its own
    /// rollover): a peer's rollover to one of them is refused, as a config pinning one is.
    pub fn set_own(&self, own: Vec<Fingerprint>) {
        *self.own.write().unwrap() = own;
    }

    /// Pins again the rollovers `kept` in the store, after a start or a reload: for each peer,
    /// every pinned one that verifies against its newest pin, in turn, then one held for the
    /// admin whose grace lasts. One that does not verify (a row edited in) is ignored.
    pub fn restore(&self, kept: &[crate::store::StoredRollover]) {
        for peer in self.all() {
            let theirs: Vec<_> = kept.iter().filter(|k| k.peer == peer.name).collect();
            while let Some(next) = theirs.iter().find(|k| k.pinned && peer.check_rollover(&k.statement) == Ok(true)) {
                if let Err(e) = self.roll(&peer, next.statement.clone()) {
                    tracing::error!(peer = %peer.name, error = %e, "a rollover kept in the store is not pinned");
                    break;
                }
            }
            // Held ones in the order they came: the latest of each member stays held.
            let now = crate::store::now_ms();
            let held = theirs.iter().filter(|k| !k.pinned && k.statement.until_ms > now);
            for held in held.filter(|k| peer.check_rollover(&k.statement) == Ok(true)) {
                peer.offer(held.statement.clone());
            }
        }
    }

    /// Pins the new certificate of `statement` for `peer` beside its pinned ones, after
    /// [`Peer::check_rollover`]; refused when another peer pins that certificate.
    pub fn roll(&self, peer: &Arc<Peer>, statement: wire::Rollover) -> Result<(), IdentityError> {
        let new = crate::rollover::new_fingerprint(&statement);
        if self.own.read().unwrap().contains(&new) {
            return Err(IdentityError::PinnedOwn(peer.name.clone()));
        }
        let mut table = self.inner.write().unwrap();
        // Checked again under the lock: two statements of one member may arrive at once.
        if peer.check_rollover(&statement) != Ok(true) {
            return Err(IdentityError::RolledOverAlready(peer.name.clone()));
        }
        if let Some(other) = table.by_fingerprint.get(&new).filter(|p| p.name != peer.name && p.pinned(&new)) {
            return Err(IdentityError::PinnedTwice {
                first: other.name.clone(),
                second: peer.name.clone(),
                fingerprint: new,
            });
        }
        peer.roll(statement);
        table.by_fingerprint.insert(new, peer.clone());
        Ok(())
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
        PeerConfig { name: name.into(), addresses: vec![address.into()], certs: vec![cert], auto_rollover: true }
    }

    #[test]
    fn reload_keeps_unchanged_peers_and_retires_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (b, c) = (pinned(dir.path(), "org-b", "127.0.0.1:1"), pinned(dir.path(), "org-c", "127.0.0.1:2"));
        let peers = Peers::load(&[b.clone(), c.clone()]).unwrap();
        let (old_b, old_c) = (peers.get("org-b").unwrap(), peers.get("org-c").unwrap());

        let moved_c = PeerConfig { addresses: vec!["127.0.0.1:3".into()], ..c.clone() };
        let d = pinned(dir.path(), "org-d", "127.0.0.1:4");
        let changes = peers.reload(&[b.clone(), moved_c, d.clone()]).unwrap();
        assert_eq!(changes.added, ["org-d"]);
        assert_eq!(changes.changed, ["org-c"]);
        assert!(changes.removed.is_empty());
        assert!(Arc::ptr_eq(&old_b, &peers.get("org-b").unwrap()), "an unchanged peer keeps its connection");
        assert!(old_c.retired.is_cancelled() && !old_b.retired.is_cancelled());
        assert_eq!(peers.get("org-c").unwrap().addresses, ["127.0.0.1:3"]);
        assert!(peers.by_fingerprint(&Fingerprint::of(&peers.get("org-d").unwrap().certs[0])).is_some());

        let changes = peers.reload(std::slice::from_ref(&d)).unwrap();
        assert_eq!(changes.removed, ["org-b", "org-c"]);
        assert!(old_b.retired.is_cancelled());
        assert!(peers.get("org-b").is_none() && peers.by_fingerprint(&Fingerprint::of(&old_b.certs[0])).is_none());

        // A certificate that cannot be read changes nothing.
        let missing = PeerConfig { certs: vec![dir.path().join("gone.pem")], ..b };
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
        let twin = PeerConfig { name: "org-z".into(), addresses: vec!["127.0.0.1:3".into()], ..b.clone() };
        let err = Peers::load(&[b, c, twin]).unwrap_err().to_string();
        assert!(err.contains("`org-b` and `org-z` pin the same certificate (sha256:"), "{err}");
        assert!(err.contains("ferry peer remove org-z"), "{err}");
    }

    #[tokio::test]
    async fn a_peer_that_dials_in_is_no_longer_away_and_wakes_a_dial_waiting_for_it() {
        let peer = Peer::new("org-b", ["127.0.0.1:1"], [Identity::generate("org-b").unwrap().cert]);
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

    fn kept(peer: &str, statement: &wire::Rollover, pinned: bool) -> crate::store::StoredRollover {
        crate::store::StoredRollover { peer: peer.into(), statement: statement.clone(), pinned }
    }

    #[test]
    fn kept_rollovers_are_pinned_again_in_turn_and_only_when_they_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (b, c) = (pinned(dir.path(), "org-b", "127.0.0.1:1"), pinned(dir.path(), "org-c", "127.0.0.1:2"));
        let b0 = Identity::load(&b.certs[0], &dir.path().join("org-b.key")).unwrap();
        let (b1, b2, stranger) = (
            Identity::generate("org-b").unwrap(),
            Identity::generate("org-b").unwrap(),
            Identity::generate("x").unwrap(),
        );
        let now = crate::store::now_ms();
        let sign = |old: &Identity, new: &Identity, until: i64| {
            crate::rollover::sign("org-b", old, &new.cert, now - 10_000, until).unwrap()
        };
        // b0 → b1, its grace over; b1 → b2, in its grace; and rows no key of org-b's signed.
        let first = sign(&b0, &b1, now - 1);
        let second = sign(&b1, &b2, now + 60_000);
        let mut forged = sign(&stranger, &stranger, now + 60_000);
        forged.old = b0.fingerprint().0;
        let for_c = sign(&b0, &b1, now + 60_000);
        let peers = Peers::load(&[b.clone(), c.clone()]).unwrap();
        peers.restore(&[
            kept("org-b", &forged, true),
            kept("org-b", &second, true),
            kept("org-b", &first, true),
            kept("org-c", &for_c, true),
        ]);

        let org_b = peers.get("org-b").unwrap();
        let pins: Vec<_> = org_b.pins().iter().map(|p| p.fingerprint).collect();
        assert_eq!(pins, [b2.fingerprint(), b1.fingerprint()], "b0's grace is over; b1's lasts");
        assert!(peers.by_fingerprint(&b2.fingerprint()).is_some() && peers.by_fingerprint(&b0.fingerprint()).is_none());
        assert_eq!(org_b.every_cert().len(), 3, "its past receipts are checked with every key it had");
        assert!(!org_b.pinned(&stranger.fingerprint()), "a row no pinned key signed pins nothing");
        assert_eq!(peers.get("org-c").unwrap().pins().len(), 1, "org-b's rollover does not pin for org-c");

        // A rollover to a certificate another peer pins is refused.
        let c_cert = load_cert(&c.certs[0]).unwrap();
        let onto_c = crate::rollover::sign("org-b", &b2, &c_cert, now, now + 60_000).unwrap();
        assert_eq!(org_b.check_rollover(&onto_c), Ok(true));
        assert!(matches!(peers.roll(&org_b, onto_c), Err(IdentityError::PinnedTwice { .. })));
        assert_eq!(org_b.pins()[0].fingerprint, b2.fingerprint());

        // Nor to this node's own certificate, and not again while the last rollover's grace lasts.
        let ours = Identity::generate("org-a").unwrap();
        peers.set_own(vec![ours.fingerprint()]);
        let onto_ours = crate::rollover::sign("org-b", &b2, &ours.cert, now, now + 60_000).unwrap();
        assert!(matches!(peers.roll(&org_b, onto_ours), Err(IdentityError::PinnedOwn(_))));
        let again = sign(&b2, &Identity::generate("org-b").unwrap(), now + 60_000);
        assert!(org_b.may_roll_over(&again).unwrap_err().contains("grace lasts until"));
    }

    /// A peer whose two members have a key each: both certificates are pinned, either answers,
    /// and one member's rollover replaces its own certificate only.
    #[test]
    fn each_member_of_a_peer_has_its_pin_and_rolls_over_alone() {
        let dir = tempfile::tempdir().unwrap();
        let b = pinned(dir.path(), "org-b", "127.0.0.1:1");
        let m2 = Identity::generate("org-b").unwrap();
        let m2_file = dir.path().join("org-b-2.pem");
        m2.save(&m2_file, &dir.path().join("org-b-2.key")).unwrap();
        let config = PeerConfig { certs: vec![b.certs[0].clone(), m2_file], ..b.clone() };
        let peers = Peers::load(std::slice::from_ref(&config)).unwrap();
        let org_b = peers.get("org-b").unwrap();
        let m1 = Identity::load(&b.certs[0], &dir.path().join("org-b.key")).unwrap();
        for member in [&m1, &m2] {
            assert!(peers.by_fingerprint(&member.fingerprint()).is_some_and(|p| p.name == "org-b"));
        }
        assert_eq!(org_b.status().fingerprints, [m1.fingerprint().to_string(), m2.fingerprint().to_string()]);

        // Member 2 rotates: its new certificate replaces its own; member 1's stays as it was.
        let (m2_new, now) = (Identity::generate("org-b").unwrap(), crate::store::now_ms());
        let statement = crate::rollover::sign("org-b", &m2, &m2_new.cert, now, now + 60_000).unwrap();
        assert_eq!(org_b.check_rollover(&statement), Ok(true));
        peers.roll(&org_b, statement.clone()).unwrap();
        let pins: Vec<_> = org_b.pins().iter().map(|p| (p.fingerprint, p.until_ms)).collect();
        let expected = [(m2_new.fingerprint(), None), (m1.fingerprint(), None), (m2.fingerprint(), Some(now + 60_000))];
        assert_eq!(pins, expected);
        assert_eq!(org_b.newest_of(m2.fingerprint()), m2_new.fingerprint());
        assert_eq!(org_b.newest_of(m1.fingerprint()), m1.fingerprint());
        assert_eq!(org_b.check_rollover(&statement), Ok(false), "sent again, it is pinned already");

        // Member 1 may rotate at once; member 2 not within its grace, nor from its replaced key.
        let m1_new = Identity::generate("org-b").unwrap();
        let of_m1 = crate::rollover::sign("org-b", &m1, &m1_new.cert, now, now + 60_000).unwrap();
        assert_eq!((org_b.check_rollover(&of_m1), org_b.may_roll_over(&of_m1)), (Ok(true), Ok(())));
        let again = crate::rollover::sign("org-b", &m2_new, &m1_new.cert, now, now + 60_000).unwrap();
        assert!(org_b.may_roll_over(&again).is_err());
        let from_replaced = crate::rollover::sign("org-b", &m2, &m1_new.cert, now, now + 60_000).unwrap();
        assert!(org_b.check_rollover(&from_replaced).unwrap_err().contains("not the newest pinned"));

        // Held for the admin (auto_rollover = false): one per member, a later one replacing it.
        let of_m2 =
            crate::rollover::sign("org-b", &m2_new, &Identity::generate("x").unwrap().cert, now, now + 1).unwrap();
        let of_m1_later =
            crate::rollover::sign("org-b", &m1, &Identity::generate("y").unwrap().cert, now, now + 1).unwrap();
        for held in [of_m1.clone(), of_m2.clone(), of_m1_later.clone()] {
            org_b.offer(held);
        }
        assert_eq!(org_b.offered(), [of_m2, of_m1_later.clone()]);
        assert_eq!(org_b.status().rollovers_offered.len(), 2);
        peers.roll(&org_b, of_m1_later).unwrap();
        assert_eq!(org_b.offered().len(), 1, "the pinned one is no longer held");
    }
}
