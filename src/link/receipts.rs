//! Receipts, both ways: signing what this node accepted from a peer, in batches, and checking and
//! keeping the receipts peers send for what this node sent them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Link, LinkFailure, CONNECT_WITHIN};
use crate::peer::Peer;
use crate::receipt::{self, Signer};
use crate::wire::{self, Answer, Leaf, Opening};

/// How long accepted messages gather before one signature covers them all.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// The most leaves one receipt covers.
const MAX_LEAVES: usize = 1024;

/// The signer and one batching queue per peer.
pub(super) struct Receipts {
    signer: Option<Arc<Signer>>,
    queues: std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<Leaf>>>,
}

impl Receipts {
    /// Receipts signed by `signer`; `None` signs none.
    pub fn new(signer: Option<Signer>) -> Receipts {
        Receipts { signer: signer.map(Arc::new), queues: Default::default() }
    }

    /// Ends every peer's queue, so their tasks (which hold the link) finish.
    pub fn close(&self) {
        self.queues.lock().unwrap().clear();
    }
}

impl Link {
    /// Queues a receipt to `peer` for a message this node accepted from it: payload and file
    /// hashes as received, and now.
    pub(super) fn sign_receipt(
        &self,
        peer: &str,
        id: &str,
        seq: u32,
        payload_sha256: [u8; 32],
        file: Option<[u8; 32]>,
    ) {
        let receipts = &self.inner.receipts;
        if receipts.signer.is_none() {
            return;
        }
        let leaf = Leaf { id: id.to_owned(), seq, payload_sha256, file_sha256: file, at_ms: crate::store::now_ms() };
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

    /// Gathers leaves for [`BATCH_WINDOW`], signs their root once, and sends the receipt to `peer`,
    /// until the link closes.
    async fn send_receipts(self, peer_name: String, mut leaves: mpsc::UnboundedReceiver<Leaf>) {
        let Some(signer) = self.inner.receipts.signer.clone() else { return };
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
            let signature = signer.sign(&batch);
            let Some(peer) = self.inner.peers.get(&peer_name) else { continue };
            if self.is_closing() {
                return;
            }
            let count = batch.len();
            let receipt = wire::Receipt { leaves: batch, signature };
            if let Err(e) = self.deliver_receipt(&peer, receipt).await {
                tracing::warn!(peer = %peer_name, leaves = count, error = %e, "a receipt did not reach the peer");
            }
        }
    }

    /// Sends `receipt` to `peer` on a stream of its own; the peer acknowledges it.
    async fn deliver_receipt(&self, peer: &Arc<Peer>, receipt: wire::Receipt) -> Result<(), LinkFailure> {
        let connection = self.connection(peer, tokio::time::Instant::now() + CONNECT_WITHIN).await?;
        let frame = wire::encode(&Opening::Receipt(receipt)).map_err(LinkFailure::encoding)?;
        super::outbound::ask(&connection, &frame, |answer| match answer {
            Answer::Ack(_) => Some(()),
            _ => None,
        })
        .await
    }
}

/// Checks a peer's receipt against its pinned certificate: [`LinkFailure::Noncompliant`] if it
/// does not hold.
pub(super) fn verify(peer: &Peer, receipt: &wire::Receipt) -> Result<(), LinkFailure> {
    if receipt.leaves.is_empty() || receipt.leaves.len() > MAX_LEAVES {
        return Err(LinkFailure::Noncompliant(format!("a receipt must cover 1 to {MAX_LEAVES} messages")));
    }
    receipt::verify_root(&peer.cert, &receipt::root(&receipt.leaves), &receipt.signature)
        .map_err(LinkFailure::Noncompliant)
}
