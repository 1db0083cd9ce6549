//! Files received from peers, and transfer progress.

use std::time::Instant;

use super::sql::{params, OptionalExtension};

use super::queue::{state_event, LEASE_MS};
use super::transfers::Whose;
use super::{exec, now_ms, query_row, Event, State, Store, StoreError};
use crate::evidence::{Entry, FileFacts};

/// A received file as a service or callback gets it: the form field it goes in, and its local path.
#[derive(Debug, Clone, PartialEq)]
pub struct FormFile {
    /// The form field.
    pub field: String,
    /// The file's local path.
    pub path: String,
}

/// The log's record of a file moved under `key` (a request id, or `id/seq` for a reply).
fn file_entry(direction: &'static str, peer: &str, member: Option<&str>, key: &str, file: FileFacts) -> Entry {
    let (id, seq) = key.split_once('/').map_or((key, None), |(id, seq)| (id, seq.parse().ok()));
    let mut entry = Entry::new("file", direction, peer, id);
    entry.member = member.map(str::to_owned);
    entry.reply_seq = seq;
    entry.file = Some(file);
    entry
}

/// A file received from a peer and verified.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedFile {
    /// Where it lies.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

impl Store {
    /// The verified file `peer` sent for `key` (a request id, or `id/seq`), if it arrived.
    pub async fn received_file(&self, peer: &str, key: &str) -> Result<Option<ReceivedFile>, StoreError> {
        let (peer, key) = (peer.to_owned(), key.to_owned());
        self.read(move |t| {
            let row: Option<(String, i64, String)> = query_row(
                t,
                "SELECT path, size, sha256 FROM received_files WHERE peer = ?1 AND key = ?2",
                params![peer, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
            row.map(|(path, size, sha)| {
                let mut sha256 = [0u8; 32];
                hex::decode_to_slice(&sha, &mut sha256).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(ReceivedFile { path, size: size as u64, sha256 })
            })
            .transpose()
        })
        .await
    }

    /// Records a file received from `peer` for `key`, verified and in its final place.
    pub async fn file_received(
        &self,
        peer: &str,
        member: Option<&str>,
        key: &str,
        file: ReceivedFile,
    ) -> Result<(), StoreError> {
        self.transfers.end(peer, key.split('/').next().unwrap_or_default());
        let name = std::path::Path::new(&file.path).file_name().map(|n| n.to_string_lossy().into_owned());
        let facts =
            FileFacts { name: Some(name.unwrap_or_default()), size: Some(file.size), sha256: hex::encode(file.sha256) };
        let entry = file_entry("in", peer, member, key, facts);
        let (peer, key) = (peer.to_owned(), key.to_owned());
        self.run(move |t, _| {
            t.record(entry)?;
            exec(
                t,
                "INSERT INTO received_files (peer, key, path, size, sha256, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (peer, key) DO UPDATE SET path = excluded.path, size = excluded.size,
                    sha256 = excluded.sha256, received_at = excluded.received_at",
                params![peer, key, file.path, file.size as i64, hex::encode(file.sha256), now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Records how far the file of this node's request `id` has reached the peer, and tells watchers.
    ///
    /// `sha256` is set once the whole file is through. With its first byte at the peer (or the
    /// whole file, for an empty one or one the peer held already) a `waiting` request becomes
    /// `doing`: the peer has it. Each report also renews the link's lease on the request, so that a
    /// file moving for longer than a lease is not claimed a second time.
    pub async fn file_progress(
        &self,
        peer: &str,
        id: &str,
        done: u64,
        total: u64,
        sha256: Option<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let arrived = done > 0 || sha256.is_some();
        if arrived {
            self.transfers.report(Whose::OwnRequest, peer, id, done, total, Instant::now());
        }
        let (peer, id) = (peer.to_owned(), id.to_owned());
        self.run(move |t, events| {
            let now = now_ms();
            let doing = arrived
                && exec(
                    t,
                    "UPDATE requests SET state = 'doing', updated_at = ?3
                     WHERE direction = 'outgoing' AND peer = ?1 AND id = ?2 AND state = 'waiting'",
                    params![peer, id, now],
                )? > 0;
            exec(
                t,
                "UPDATE requests SET file_done = ?3, file_size = ?4, file_sha256 = COALESCE(?5, file_sha256),
                    next_attempt_at = CASE WHEN next_attempt_at IS NULL THEN NULL WHEN next_attempt_at > ?6 THEN next_attempt_at ELSE ?6 END
                 WHERE direction = 'outgoing' AND peer = ?1 AND id = ?2",
                params![peer, id, done as i64, total as i64, sha256.map(hex::encode), now + LEASE_MS],
            )?;
            if doing {
                state_event(events, &id, &peer, State::Doing);
            }
            events.push(Event::Progress { id, peer, bytes_done: done, bytes_total: total });
            Ok(())
        })
        .await
    }

    /// Records that `peer` verified the whole file sent under `key`.
    pub async fn file_sent(
        &self,
        peer: &str,
        member: Option<&str>,
        key: &str,
        file: &crate::wire::FileRef,
    ) -> Result<(), StoreError> {
        let entry = file_entry("out", peer, member, key, super::evidence::file_facts(file));
        self.run(move |t, _| t.record(entry)).await
    }

    /// Tells watchers how far a file has come, without storing it: a file received, or sent
    /// with a reply or a synchronous request. It counts as moving until its last byte
    /// ([`Store::transfers_moving`]).
    pub fn progress_event(&self, peer: &str, id: &str, done: u64, total: u64) {
        self.transfers.report(Whose::Other, peer, id, done, total, Instant::now());
        let _ = self.events.send(Event::Progress {
            id: id.to_owned(),
            peer: peer.to_owned(),
            bytes_done: done,
            bytes_total: total,
        });
    }
}

/// Where a reply of this node that carries a host's file stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyFile {
    /// On its way to the requesting node.
    Sending,
    /// The requesting node acknowledged the reply: it holds the file verified.
    Delivered,
    /// The reply failed instead (the file changed, or the peer refused it for good), for this reason.
    Failed(String),
}

/// The latest reply carrying a file, found by the file's path (`replies_by_file`).
const REPLY_FILE_STATE: &str =
    "SELECT next_send_at IS NULL, error FROM replies WHERE file_path = ?1 ORDER BY rowid DESC LIMIT 1";

impl Store {
    /// Where the latest reply of this node carrying the file at `path` stands, if one does.
    pub async fn reply_file_state(&self, path: &str) -> Result<Option<ReplyFile>, StoreError> {
        let path = path.to_owned();
        self.read(move |t| {
            query_row(t, REPLY_FILE_STATE, [path], |r| {
                Ok(match (r.get::<bool>(0)?, r.get::<Option<String>>(1)?) {
                    (_, Some(error)) => ReplyFile::Failed(error),
                    (true, None) => ReplyFile::Delivered,
                    (false, None) => ReplyFile::Sending,
                })
            })
            .optional()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inbox asks this for every file it holds at every scan: a file no reply carries yet
    /// must be a lookup in the index, not a read of every reply the node ever sent.
    #[tokio::test]
    async fn a_reply_file_is_looked_up_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        assert_eq!(store.reply_file_state("/inbox/none").await.unwrap(), None);
        if super::super::test_postgres::wanted() {
            return; // PostgreSQL's planner reads a table this small whole, index or not
        }
        let plan = store
            .read(|t| {
                t.query(&format!("EXPLAIN QUERY PLAN {REPLY_FILE_STATE}"), ["/inbox/none"], |r| r.get::<String>(3))
            })
            .await
            .unwrap();
        assert_eq!(plan, ["SEARCH replies USING INDEX replies_by_file (file_path=?)"], "the statement's plan");
    }
}
