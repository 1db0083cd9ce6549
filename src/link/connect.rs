//! One kept connection per peer: dialed on demand, then kept alive and redialed with backoff.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::{Link, LinkFailure};
use crate::identity::Fingerprint;
use crate::peer::Peer;

/// The first pause before redialing a lost peer; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between redials.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a dial waits for one of a peer's addresses before it tries the next one as well.
const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(500);
/// How often a connection to a peer at several addresses (its members) is kept alive: each
/// keep-alive draws an acknowledgement, so a live member is heard from at least this often.
const MEMBER_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// The idle timeout of a connection to a peer at several addresses: how long it may go unheard
/// before it is given up for another member. A member killed or cut off sends no close, and the
/// usual idle timeout (30 s) is too long to wait with another member at hand.
const MEMBER_SILENT_AFTER: Duration = Duration::from_secs(3);

impl Link {
    /// The connection to `peer`, dialing it if there is none, by `deadline` at the latest.
    pub(super) async fn connection(
        &self,
        peer: &Arc<Peer>,
        deadline: Instant,
    ) -> Result<quinn::Connection, LinkFailure> {
        if let Some(c) = peer.connection() {
            return Ok(c);
        }
        let no_answer = || {
            LinkFailure::Unreachable(format!(
                "no connection to {} at {} within {:?}",
                peer.name,
                peer.addresses.join(", "),
                super::CONNECT_WITHIN
            ))
        };
        let _dialing = tokio::time::timeout_at(deadline, peer.dialing.lock()).await.map_err(|_| no_answer())?;
        if let Some(c) = peer.connection() {
            return Ok(c);
        }
        match tokio::time::timeout_at(deadline, self.dial(peer, None)).await {
            Ok(Ok(connection)) => {
                tracing::info!(peer = %peer.name, address = %peer.address(), rtt_ms = %super::rtt_ms(&connection), "connected to peer");
                peer.connected(connection.clone());
                tokio::spawn(self.clone().keep(peer.clone(), connection.clone()));
                self.inner.announce.notify_one();
                Ok(connection)
            }
            Ok(Err(e)) => {
                peer.failed(e.to_string());
                Err(e)
            }
            Err(_) => {
                peer.failed(no_answer().to_string());
                Err(no_answer())
            }
        }
    }

    /// A connection to `member` of `peer` (the fingerprint of its certificate, for a peer whose
    /// members have a key each), which alone knows the requests it sent: the peer's kept
    /// connection when that is with it, else one to it alone, kept while it lasts and dialed at
    /// each address until that member answers. A member no longer pinned gets the kept
    /// connection.
    pub(super) async fn member_connection(
        &self,
        peer: &Arc<Peer>,
        member: &str,
        deadline: Instant,
    ) -> Result<quinn::Connection, LinkFailure> {
        let kept = peer.connection().filter(|c| peer.member_of(c).as_deref() == Some(member));
        if let Some(c) = kept.or_else(|| peer.connection_to(member)) {
            return Ok(c);
        }
        let Some(wanted) = peer.member_pins(member) else {
            // A member no longer pinned (the config changed since): any member, as for a peer of one.
            return self.connection(peer, deadline).await;
        };
        let _dialing = tokio::time::timeout_at(deadline, peer.dialing_member.lock()).await;
        if let Some(c) = peer.connection_to(member) {
            return Ok(c);
        }
        let dialed = tokio::time::timeout_at(deadline, self.dial(peer, Some(&wanted))).await;
        let connection = dialed.unwrap_or_else(|_| {
            Err(LinkFailure::Unreachable(format!("no answer from {member}, a member of {}, in time", peer.name)))
        })?;
        tracing::info!(peer = %peer.name, %member, rtt_ms = %super::rtt_ms(&connection), "connected to a member for its results");
        peer.connected_to(member, connection.clone());
        Ok(connection)
    }

    /// One attempt to connect to `peer`, accepting only its pinned certificate (only those of
    /// `member`, when given: a member's certificates, [`Peer::member_pins`]): its addresses are
    /// dialed in [`Peer::dial_order`], the next one started when the last failed or has not
    /// answered within [`NEXT_ADDRESS_AFTER`], and the first to complete the handshake wins (the
    /// others are dropped). Fails [`LinkFailure::Unreachable`] when none answers, or
    /// [`LinkFailure::Local`] when this node's own TLS configuration cannot be made. Which address
    /// answered is recorded for a dial of the whole peer only.
    async fn dial(&self, peer: &Peer, member: Option<&[Fingerprint]>) -> Result<quinn::Connection, LinkFailure> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let whole = member.is_none();
        let mut order = peer.dial_order();
        let mut attempts = FuturesUnordered::new();
        let (mut failures, mut waiting) = (Vec::new(), Vec::new());
        let started = std::time::Instant::now();
        loop {
            let more = match order.next() {
                Some((index, address)) => {
                    attempts.push(async move { (index, self.dial_at(peer, address, member).await) });
                    waiting.push(index);
                    true
                }
                None => false,
            };
            tokio::select! {
                Some((index, dialed)) = attempts.next() => match dialed {
                    Ok(connection) if !whole => return Ok(connection),
                    Ok(connection) => {
                        peer.answered_at(index);
                        for other in waiting.into_iter().filter(|i| *i != index) {
                            let why = format!("no answer within {:?}; {} answered", started.elapsed(), peer.address());
                            peer.not_answered_at(other, why);
                        }
                        return Ok(connection);
                    }
                    Err(e @ LinkFailure::Local(_)) => return Err(e),
                    Err(e) => {
                        waiting.retain(|i| *i != index);
                        if whole {
                            peer.not_answered_at(index, e.to_string());
                        }
                        failures.push(e.to_string());
                    }
                },
                () = tokio::time::sleep(NEXT_ADDRESS_AFTER), if more => {}
                else => break,
            }
        }
        Err(LinkFailure::Unreachable(failures.join("; ")))
    }

    /// One attempt to connect to `peer` at `address`, one of its addresses, accepting its pinned
    /// certificates (only `member`'s, when given).
    async fn dial_at(
        &self,
        peer: &Peer,
        address: &str,
        member: Option<&[Fingerprint]>,
    ) -> Result<quinn::Connection, LinkFailure> {
        use LinkFailure::{Local, Unreachable};
        let addr = tokio::net::lookup_host(address)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| Unreachable(format!("cannot resolve {address} ({})", peer.name)))?;
        let expected: Vec<Fingerprint> = match member {
            Some(member) => member.to_vec(),
            None => peer.pins().into_iter().map(|p| p.fingerprint).collect(),
        };
        let server_name = crate::tls::server_name(expected[0]);
        let presented = self.presented_to(peer);
        let tls = crate::tls::dial_config(&presented.identity, expected, addr, &self.inner.refusals)
            .map_err(|e| Local(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| Local(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let transport = match peer.addresses.len() {
            1 => self.inner.transport.config(),
            _ => super::Transport {
                keep_alive: MEMBER_KEEP_ALIVE,
                idle_timeout: MEMBER_SILENT_AFTER,
                ..self.inner.transport.clone()
            }
            .config(),
        };
        config.transport_config(transport);
        let connection = loop {
            let up = peer.up();
            let connecting = self
                .inner
                .endpoint
                .connect_with(config.clone(), addr, &server_name)
                .map_err(|e| Unreachable(format!("cannot dial {}: {e}", peer.name)))?;
            tokio::select! {
                connected = connecting => break connected
                    .map_err(|e| Unreachable(format!("{} at {addr} refused the connection: {e}", peer.name)))?,
                // The peer dialed this node meanwhile: it is up, and a new handshake reaches it at
                // once, where this one (begun while it was down) would wait for its next resend.
                () = up => tracing::debug!(peer = %peer.name, "the peer dialed in; dialing it anew"),
            }
        };
        accepted(&connection).await.map_err(|reason| {
            Unreachable(format!(
                "{} at {addr} refused this node's certificate ({reason}); it has probably not pinned it: compare \
                 `ferry cert fingerprint` here with its `certs/peers/` file",
                peer.name
            ))
        })?;
        Ok(connection)
    }

    /// Watches a peer's connection and, when it is lost, redials with backoff and jitter until
    /// the link closes or the peer is connected again.
    async fn keep(self, peer: Arc<Peer>, mut connection: quinn::Connection) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let reason = connection.closed().await;
            if self.is_closing() || self.inner.peers.get(&peer.name).is_none_or(|p| !Arc::ptr_eq(&p, &peer)) {
                return;
            }
            tracing::info!(peer = %peer.name, address = %peer.address(), %reason, "lost the connection; redialing");
            loop {
                let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 4);
                tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                let _dialing = peer.dialing.lock().await;
                if peer.connection().is_some() || !peer.holds(&connection) {
                    return; // a request dialed since; the keeper of its connection watches it
                }
                let dialed = tokio::time::timeout(super::CONNECT_WITHIN, self.dial(&peer, None)).await;
                match dialed.unwrap_or_else(|_| {
                    Err(LinkFailure::Unreachable(format!(
                        "no answer from {} within {:?}",
                        peer.addresses.join(", "),
                        super::CONNECT_WITHIN
                    )))
                }) {
                    Ok(c) => {
                        tracing::info!(peer = %peer.name, address = %peer.address(), rtt_ms = %super::rtt_ms(&c), "connected again");
                        peer.connected(c.clone());
                        self.inner.announce.notify_one();
                        let _ = self.inner.store.peer_is_back(&peer.name).await;
                        connection = c;
                        backoff = FIRST_BACKOFF;
                        break;
                    }
                    Err(_) if self.is_closing() => return,
                    Err(e) => peer.failed(e.to_string()),
                }
            }
        }
    }
}

/// Waits until the peer has accepted this node's certificate: a client's handshake is complete
/// before the server has checked the client's certificate, and a server that does not pin it
/// closes the connection instead of confirming the handshake (`HANDSHAKE_DONE`, one round trip
/// later). Counting such a connection as connected made a refused node redial at once, forever.
pub(crate) async fn accepted(connection: &quinn::Connection) -> Result<(), quinn::ConnectionError> {
    // quinn reports no event for the confirmation; its frame count shows it.
    let confirmed = async {
        while connection.stats().frame_rx.handshake_done == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        reason = connection.closed() => Err(reason),
        () = confirmed => Ok(()),
    }
}
