//! Receipts and checkpoints, both ways: signing what this node accepted from a peer, in batches,
//! and its chain head now and then; checking and keeping what peers sign for this node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Link, LinkFailure, CONNECT_WITHIN};
use crate::peer::Peer;
use crate::receipt;
use crate::wire::{self, Answer, Countersigned, Head, Opening};

/// How long accepted messages gather before one signature covers them all.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// The most leaves one receipt covers.
const MAX_LEAVES: usize = 1024;
/// How long the checkpoints sent when the node stops may take.
const LAST_CHECKPOINT_WITHIN: Duration = Duration::from_secs(2);

/// Whether receipts are signed, and one batching queue per peer.
pub(super) struct Receipts {
    on: bool,
    queues: std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<Countersigned>>>,
}

impl Receipts {
    /// Receipts signed (`on`) or none, each with the key presented to its peer.
    pub fn new(on: bool) -> Receipts {
        Receipts { on, queues: Default::default() }
    }

    /// Ends every peer's queue, so their tasks (which hold the link) finish.
    pub fn close(&self) {
        self.queues.lock().unwrap().clear();
    }
}

/// Whether `connection` speaks `ferry/1+anchored` or later (countersignatures and checkpoints).
pub(super) fn anchored(connection: &quinn::Connection) -> bool {
    wire::Protocol::of(connection) >= wire::Protocol::Anchored
}

impl Link {
    /// Queues a receipt to `peer` for a message this node accepted from it: the `leaf` of what
    /// makes the message as received ([`receipt::Binding::leaf`]), its time set to now.
    pub(super) fn sign_receipt(&self, peer: &str, mut leaf: Countersigned) {
        let receipts = &self.inner.receipts;
        if !receipts.on {
            return;
        }
        leaf.leaf.at_ms = crate::store::now_ms();
        let mut queues = receipts.queues.lock().unwrap();
        // Checked under the lock: once closing, no queue (and no task holding the link) is added.
        if self.is_closing() {
            return;
        }
        if let Some(queue) = queues.get(peer) {
            let _ = queue.send(leaf);
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().send_receipts(peer.to_owned(), rx));
        let _ = tx.send(leaf);
        queues.insert(peer.to_owned(), tx);
    }

    /// Gathers leaves for [`BATCH_WINDOW`], signs them once, and sends the receipt to `peer`,
    /// until the link closes: a countersignature with this node's chain head on a
    /// `ferry/1+anchored` connection, else a `ferry/1` receipt.
    async fn send_receipts(self, peer_name: String, mut leaves: mpsc::UnboundedReceiver<Countersigned>) {
        while let Some(first) = leaves.recv().await {
            if self.is_closing() {
                return;
            }
            tokio::time::sleep(BATCH_WINDOW).await;
            let mut batch = vec![first];
            while batch.len() < MAX_LEAVES {
                match leaves.try_recv() {
                    Ok(leaf) => batch.push(leaf),
                    Err(_) => break,
                }
            }
            let Some(peer) = self.inner.peers.get(&peer_name) else { continue };
            if self.is_closing() {
                return;
            }
            let count = batch.len();
            if let Err(e) = self.deliver_receipt(&peer, batch).await {
                tracing::warn!(peer = %peer_name, leaves = count, error = %e, "a receipt did not reach the peer");
            }
        }
    }

    /// Signs `leaves` as the connection to `peer` speaks, with the key presented to it, and sends
    /// the receipt on a stream of its own; the peer acknowledges it.
    async fn deliver_receipt(&self, peer: &Arc<Peer>, leaves: Vec<Countersigned>) -> Result<(), LinkFailure> {
        let connection = self.connection(peer, tokio::time::Instant::now() + CONNECT_WITHIN).await?;
        let signer = self.presented_to(peer).signer.clone();
        let opening = if anchored(&connection) {
            let head = self.head().await?;
            let signature = signer.countersign(&leaves, &head);
            Opening::Countersign(wire::Countersign { leaves, head, signature })
        } else {
            let leaves: Vec<_> = leaves.into_iter().map(|l| l.leaf).collect();
            let signature = signer.sign(&leaves);
            Opening::Receipt(wire::Receipt { leaves, signature })
        };
        self.acknowledged(&connection, &opening).await
    }

    /// Sends `opening` on a stream of its own and waits for the peer's [`Answer::Ack`].
    pub(super) async fn acknowledged(
        &self,
        connection: &quinn::Connection,
        opening: &Opening,
    ) -> Result<(), LinkFailure> {
        let frame = wire::encode(opening).map_err(LinkFailure::encoding)?;
        super::outbound::ask(connection, &frame, |answer| match answer {
            Answer::Ack(_) => Some(()),
            _ => None,
        })
        .await
    }

    /// This node's chain head once what is queued is committed (seq 0 while the log is empty or
    /// none is kept).
    async fn head(&self) -> Result<Head, LinkFailure> {
        let head = self.inner.store.chain_head().await.map_err(|e| LinkFailure::Local(e.to_string()))?;
        wire_head(head.as_ref()).map_err(LinkFailure::Local)
    }

    /// Every `every`, and once more when `stop` is cancelled (bounded by `LAST_CHECKPOINT_WITHIN`),
    /// sends each peer connected on `ferry/1+anchored` this node's signed chain head, when it
    /// moved since the last one that peer acknowledged.
    pub async fn send_checkpoints(self, every: Duration, stop: CancellationToken) {
        if !self.inner.receipts.on || !self.inner.store.keeps_evidence() {
            return;
        }
        let mut held: HashMap<String, Head> = HashMap::new();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = tick.tick() => self.checkpoint_round(&mut held).await,
                () = stop.cancelled() => {
                    let last = self.checkpoint_round(&mut held);
                    let _ = tokio::time::timeout(LAST_CHECKPOINT_WITHIN, last).await;
                    return;
                }
            }
        }
    }

    /// Sends this node's chain head to each peer connected on `ferry/1+anchored` whose last
    /// acknowledged head (`held`) is older than the last record other than a checkpoint
    /// ([`Store::moved`](crate::store::Store::moved)), and records that the peer keeps it.
    async fn checkpoint_round(&self, held: &mut HashMap<String, Head>) {
        let head = match self.head().await {
            Ok(head) if head.seq > 0 => head,
            Ok(_) => return,
            Err(e) => return tracing::warn!(error = %e, "cannot read the chain head for checkpoints"),
        };
        let moved = self.inner.store.moved() as u64;
        for peer in self.inner.peers.all() {
            let Some(connection) = peer.connection().filter(anchored) else { continue };
            if held.get(&peer.name).is_some_and(|held| held.seq >= moved) {
                continue;
            }
            let at_ms = crate::store::now_ms();
            let signature = self.presented_to(&peer).signer.checkpoint(&head, at_ms);
            let checkpoint = wire::Checkpoint { head, at_ms, signature };
            if let Err(e) = self.acknowledged(&connection, &Opening::Checkpoint(checkpoint.clone())).await {
                tracing::warn!(peer = %peer.name, error = %e, "a checkpoint did not reach the peer");
                continue;
            }
            held.insert(peer.name.clone(), head);
            let member = peer.member_of(&connection);
            if let Err(e) = self.inner.store.checkpoint("out", &peer.name, member.as_deref(), checkpoint).await {
                tracing::error!(peer = %peer.name, error = %e, "cannot record a checkpoint a peer keeps");
            }
        }
    }
}

/// A chain head as the wire carries it (seq 0 and zeros for an empty log).
fn wire_head(head: Option<&(i64, String)>) -> Result<Head, String> {
    let Some((seq, hash)) = head else { return Ok(Head { seq: 0, hash: [0; 32] }) };
    Ok(Head { seq: *seq as u64, hash: crate::evidence::sha256_bytes(hash)? })
}

/// Checks a peer's `ferry/1` receipt against its pinned certificate: [`LinkFailure::Noncompliant`]
/// if it does not hold.
pub(super) fn verify(peer: &Peer, receipt: &wire::Receipt) -> Result<(), LinkFailure> {
    covers(receipt.leaves.len())?;
    let statement = receipt::statement(&receipt::root(&receipt.leaves));
    verify_with_pins(peer, &statement, &receipt.signature)
}

/// Checks a peer's countersignature against its pinned certificate.
pub(super) fn verify_countersign(peer: &Peer, receipt: &wire::Countersign) -> Result<(), LinkFailure> {
    covers(receipt.leaves.len())?;
    let statement = receipt::countersign_statement(&receipt.leaves, &receipt.head);
    verify_with_pins(peer, &statement, &receipt.signature)
}

/// Checks a peer's checkpoint against its pinned certificate.
pub(super) fn verify_checkpoint(peer: &Peer, checkpoint: &wire::Checkpoint) -> Result<(), LinkFailure> {
    let statement = receipt::checkpoint_statement(&checkpoint.head, checkpoint.at_ms);
    verify_with_pins(peer, &statement, &checkpoint.signature)
}

/// Checks `signature` over `statement` against each certificate pinned for `peer` now.
fn verify_with_pins(peer: &Peer, statement: &[u8], signature: &[u8]) -> Result<(), LinkFailure> {
    let mut why = String::new();
    for pin in peer.pins() {
        match receipt::verify_statement(&pin.cert, statement, signature) {
            Ok(()) => return Ok(()),
            Err(e) => why = e,
        }
    }
    Err(LinkFailure::Noncompliant(why))
}

/// A receipt must cover 1 to [`MAX_LEAVES`] messages.
fn covers(leaves: usize) -> Result<(), LinkFailure> {
    if leaves == 0 || leaves > MAX_LEAVES {
        return Err(LinkFailure::Noncompliant(format!("a receipt must cover 1 to {MAX_LEAVES} messages")));
    }
    Ok(())
}
