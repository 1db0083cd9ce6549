//! Key rollovers on the link: telling peers of this node's new certificate, and pinning a peer's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{inbound::Inbound, Link, LinkFailure, CONNECT_WITHIN};
use crate::peer::Peer;
use crate::wire::{self, Answer, Opening, Refusal, RefusalKind};

/// How often a peer that has not pinned this node's new certificate hears of it again.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(30);
/// How often while a peer holds it for its admin (`auto_rollover = false`): the admin's accept
/// is heard within this, since the peer has no word of its own to say so.
const ASK_AGAIN_EVERY: Duration = Duration::from_secs(2);

impl Link {
    /// Until `stop`, while this node's own rollover lasts, sends its statement to every peer not
    /// yet known to pin the new certificate: at once after a reload or a new connection, and
    /// every 30 s (every 2 s to a peer holding it for its admin). A peer that pins it is presented
    /// the new certificate from then on.
    pub async fn announce_rollover(self, stop: CancellationToken) {
        // What each peer answered last, so that a peer holding it for its admin is logged once.
        let mut answered: HashMap<String, String> = HashMap::new();
        loop {
            let every = if answered.is_empty() { ANNOUNCE_EVERY } else { ASK_AGAIN_EVERY };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.inner.announce.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
            let keys = self.inner.keys.load_full();
            let Some((_, statement)) = keys.previous() else { continue };
            let current = keys.current.fingerprint;
            for peer in self.inner.peers.all() {
                if peer.is_known_to_pin(&current) || peer.away_for().is_some() {
                    continue;
                }
                let answer = match self.tell_rollover(&peer, statement).await {
                    Ok(()) => {
                        answered.remove(&peer.name);
                        peer.pins_ours(current);
                        tracing::info!(
                            peer = %peer.name,
                            fingerprint = %current,
                            "the peer pins this node's new certificate; it is presented to it from now on"
                        );
                        continue;
                    }
                    Err(LinkFailure::Refused(refusal)) => refusal.message,
                    Err(e) => {
                        tracing::debug!(peer = %peer.name, error = %e, "the rollover did not reach the peer");
                        continue;
                    }
                };
                if answered.get(&peer.name) != Some(&answer) {
                    tracing::warn!(
                        peer = %peer.name,
                        until = %crate::store::rfc3339(statement.until_ms),
                        "the peer has not pinned this node's new certificate: {answer}; it is presented the old one \
                         until then"
                    );
                    answered.insert(peer.name.clone(), answer);
                }
            }
        }
    }

    /// Has the link tell peers of this node's rollover at once (after a reload).
    pub fn announce_now(&self) {
        self.inner.announce.notify_one();
    }

    async fn tell_rollover(&self, peer: &Arc<Peer>, statement: &wire::Rollover) -> Result<(), LinkFailure> {
        let connection = self.connection(peer, tokio::time::Instant::now() + CONNECT_WITHIN).await?;
        self.acknowledged(&connection, &Opening::Rollover(statement.clone())).await
    }
}

impl Inbound {
    /// A peer's rollover: pinned at once when it verifies against the peer's newest pin and the
    /// peer's rollovers are pinned without the admin (acknowledged), else held for the admin or
    /// refused, with the reason.
    pub(super) async fn rollover(&self, peer: &Arc<Peer>, statement: wire::Rollover) -> Answer {
        let ack = Answer::Ack(wire::Ack { id: String::new(), seq: 0 });
        let refused = |message: String| Answer::Refused(Refusal::new(RefusalKind::Forbidden, message));
        let new = crate::rollover::new_fingerprint(&statement);
        match peer.check_rollover(&statement) {
            Ok(false) => return ack,
            Ok(true) if statement.until_ms <= crate::store::now_ms() => {
                return refused("the rollover's grace is over".into());
            }
            Ok(true) => {
                if let Err(why) = peer.may_roll_over(&statement) {
                    return refused(why);
                }
            }
            Err(why) => {
                tracing::warn!(peer = %peer.name, fingerprint = %new, %why, "refused a rollover that does not hold");
                return refused(format!("the rollover does not hold: {why}"));
            }
        }
        if !peer.auto_rollover() {
            if !peer.offered().contains(&statement) {
                if let Err(e) = self.store.rollover(&peer.name, statement.clone(), false).await {
                    tracing::error!(peer = %peer.name, error = %e, "cannot keep a rollover for approval");
                    return refused("the node cannot keep it now; it is sent again".into());
                }
                peer.offer(statement);
                tracing::warn!(
                    peer = %peer.name,
                    fingerprint = %new,
                    "the peer has a new certificate, vouched for by its pinned key; compare the fingerprint with its \
                     admin, then `ferry peer accept {} --fingerprint {new}`",
                    peer.name
                );
            }
            return refused("held for this node's admin to approve (auto_rollover = false)".into());
        }
        match crate::rollover::pin(&self.link.inner.peers, &self.store, peer, statement).await {
            Ok(()) => ack,
            Err(why) => refused(why),
        }
    }
}
