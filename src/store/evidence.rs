//! The evidence log's table: appended inside the writer's transactions, read for export.

use std::path::Path;

use rusqlite::{params, OptionalExtension};

use super::{now_ms, query_row, rfc3339, Store, StoreError, Tx};
use crate::evidence::{Entry, MaskedForm, Receipt, Record, Rendered, Summary, GENESIS};
use crate::wire;

/// Appends one record; the writer prepares it once ([`Tx::record`]).
pub(super) const INSERT: &str = "INSERT INTO evidence (seq, record) VALUES (?1, ?2)";

impl Tx<'_, '_> {
    /// Appends `entry` to the evidence log, chained to the last record, in this transaction.
    pub(crate) fn record(&self, entry: impl Into<Rendered>) -> Result<(), StoreError> {
        let Some(log) = self.log else {
            return Ok(());
        };
        let known = self.head.borrow_mut().take();
        let last: Option<(i64, String)> = match known {
            Some(head) => Some(head),
            None => query_row(self, "SELECT seq, record FROM evidence ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?
            .map(|(seq, text)| {
                let hash = serde_json::from_str::<Record>(&text).map(|r| r.hash).unwrap_or_default();
                (seq, hash)
            }),
        };
        let (seq, prev) = last.map(|(s, h)| (s + 1, h)).unwrap_or((1, GENESIS.to_owned()));
        let at = self.at.get_or_init(|| rfc3339(now_ms()));
        let (hash, text) = entry.into().seal(seq, at, &prev);
        log.borrow_mut().execute(params![seq, text])?;
        *self.head.borrow_mut() = Some((seq, hash));
        Ok(())
    }
}

impl Store {
    /// Up to `limit` evidence records after `since`, in order, as JSON text.
    pub async fn audit(&self, since: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.run_relaxed(move |t, _| {
            let mut rows = t.prepare_cached("SELECT record FROM evidence WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let records = rows.query_map(params![since, limit as i64], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(records)
        })
        .await
    }

    /// `record()`, rendered outside the writer for a job to record; nothing is built when no log
    /// is kept.
    pub(super) fn rendered(&self, record: impl FnOnce() -> Rendered) -> Rendered {
        if self.evidence {
            record()
        } else {
            Rendered::default()
        }
    }

    /// Records a peer's verified receipt, which covers what this node sent it, as one record.
    /// Deferred: it joins the writer's next commit, or one of its own within 20 ms.
    pub fn receipt(&self, peer: &str, receipt: wire::Receipt) {
        if !self.evidence {
            return;
        }
        let mut entry = Entry::new("receipt", "in", peer, "");
        entry.receipt = Some(Receipt::kept(receipt));
        let rendered = entry.render();
        self.defer("a peer's receipt", move |t| t.record(rendered))
    }
}

impl Store {
    /// The whole evidence log as (seq, record JSON), read on a separate read-only connection so
    /// that the writer is not held up; what was committed before the read began is read.
    pub async fn evidence_log(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let data_dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || read_log(&data_dir, 0))
            .await
            .map_err(|e| StoreError::Io(format!("the log reader failed: {e}")))?
    }
}

/// Reads the whole evidence log of the database under `data_dir`, read-only (a running node may
/// keep writing; what was committed before the read began is read), as (seq, record JSON).
pub fn read_log(data_dir: &Path, since: i64) -> Result<Vec<(i64, String)>, StoreError> {
    let path = data_dir.join("ferry.db");
    if !path.exists() {
        return Err(StoreError::Io(format!("no store at {}; is `node.data_dir` right?", path.display())));
    }
    let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let has_log: bool = conn
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'evidence'", [], |_| Ok(true))
        .optional()?
        .unwrap_or(false);
    if !has_log {
        return Ok(Vec::new());
    }
    let mut rows = conn.prepare("SELECT seq, record FROM evidence WHERE seq > ?1 ORDER BY seq")?;
    let log = rows.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    Ok(log)
}

/// The record of a request for the log, from its wire form and the SHA-256 of its payload
/// ([`crate::wire::payload_sha256`]): `form` masked by `mask`.
pub(crate) fn request_record(
    direction: &'static str,
    peer: &str,
    request: &crate::wire::Request,
    payload_sha256: [u8; 32],
    mask: &[String],
) -> Rendered {
    let body_sha256 = hex::encode(payload_sha256);
    Summary {
        event: "request",
        direction,
        peer,
        id: &request.id,
        method: Some(&request.method),
        path: Some(&request.path),
        form: Some(MaskedForm { form: &request.form, mask }),
        body_sha256: Some(&body_sha256),
        file: request.file.as_ref().map(file_facts),
        receipt: None,
    }
    .render()
}

/// The log's view of a file reference.
pub(crate) fn file_facts(f: &crate::wire::FileRef) -> crate::evidence::FileFacts {
    crate::evidence::FileFacts { name: Some(f.name.clone()), size: Some(f.size), sha256: hex::encode(f.sha256) }
}
