//! Sending a host's file ahead of its request or reply, with progress and quick resumption.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Link, LinkFailure};
use crate::store::OutgoingFile;
use crate::transfer::{self, TransferError};
use crate::wire::FileRef;

/// How often a stream that broke mid-file is reopened at once before the caller retries later.
const QUICK_RESUMES: u32 = 3;

impl Link {
    /// Sends `file` to `peer` under `key` (the request id, or `id/seq` for a reply), resuming
    /// from what the peer holds. Progress goes to `/v1/events`, and, for this node's request
    /// `id` when `stored` is set, to its status. A file this node cannot read fails
    /// [`LinkFailure::Local`].
    pub(super) async fn upload(
        &self,
        connection: &quinn::Connection,
        peer: &str,
        key: &str,
        file: &OutgoingFile,
        stored: bool,
    ) -> Result<FileRef, LinkFailure> {
        let store = self.inner.store.clone();
        let id = key.split('/').next().unwrap_or_default().to_owned();
        let done = Arc::new(AtomicU64::new(0));
        let total = file.identity.map_or(0, |i| i.size);
        let reporter = {
            let (store, done, peer, id) = (store.clone(), done.clone(), peer.to_owned(), id.clone());
            tokio::spawn(async move {
                let mut last = u64::MAX;
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let now = done.load(Ordering::Relaxed);
                    if now != last {
                        last = now;
                        report(&store, &peer, &id, now, total, None, stored).await;
                    }
                }
            })
        };
        let mut result = Err(TransferError::Interrupted("not tried".into()));
        for attempt in 1..=QUICK_RESUMES {
            let moved = crate::metrics::Progress::default();
            let progress = |n| {
                done.store(n, Ordering::Relaxed);
                self.inner.metrics.file_bytes(peer, "sent", moved.advance(n));
            };
            // Opened afresh each time, confined, and only while it is the file that was accepted.
            let opened = self.inner.files.reopen(&file.path, file.identity).map_err(|e| match e.may_pass() {
                true => TransferError::Interrupted(e.to_string()),
                false => TransferError::Source {
                    path: file.path.clone().into(),
                    error: std::io::Error::new(std::io::ErrorKind::PermissionDenied, e),
                },
            });
            result = match opened {
                Ok(opened) => transfer::send(connection, key, opened, file.path.as_ref(), &file.name, progress).await,
                Err(e) => Err(e),
            };
            match &result {
                Err(TransferError::Interrupted(why)) if connection.close_reason().is_none() => {
                    tracing::info!(%peer, %key, attempt, %why, "file stream broke; resuming");
                }
                _ => break,
            }
        }
        reporter.abort();
        let (size, sha256) = result?;
        report(&store, peer, &id, size, size, Some(sha256), stored).await;
        let sent = FileRef { field: file.field.clone(), name: file.name.clone(), size, sha256 };
        let member = self.inner.peers.get(peer).and_then(|p| p.member_of(connection));
        if let Err(e) = store.file_sent(peer, member.as_deref(), key, &sent).await {
            tracing::error!(%peer, %key, error = %e, "cannot record a sent file in the evidence log");
        }
        Ok(sent)
    }
}

async fn report(
    store: &crate::store::Store,
    peer: &str,
    id: &str,
    done: u64,
    total: u64,
    sha: Option<[u8; 32]>,
    stored: bool,
) {
    if stored {
        if let Err(e) = store.file_progress(peer, id, done, total, sha).await {
            tracing::warn!(error = %e, "cannot record transfer progress");
        }
    } else {
        store.progress_event(peer, id, done, total);
    }
}
