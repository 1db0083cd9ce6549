//! The evidence log's table: one row per commit of the writer, its records as JSON lines,
//! lz4-compressed (`Log`), read a page at a time for the API, export and checks (`LogReader`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::sql::{params, Begin, Connection, Location, OptionalExtension, Sql, ValueRef};
use super::{exec, now_ms, query_row, rfc3339, schema, Store, StoreError, Tx};
use crate::evidence::{
    Broken, Checkpoint, Entry, Intact, MaskedForm, Receipt, Record, Rendered, Summary, TimeStamp, GENESIS,
};
use crate::wire;

/// The evidence log as the writer appends to it. A transaction's records are sealed into one
/// block of JSON lines, inserted as one row (`seq`: its first record's) just before the
/// transaction commits: one insert per commit rather than per record. The block is stored
/// lz4-compressed ([`unpack`]): records repeat their keys and each one's `prev` is the hash before
/// it, so it takes 3–4 times less to write, checkpoint and keep. A row of one line is a record as
/// schema version 4 kept it. Each member of a shared store keeps a chain of its own, under its
/// name (`member`).
pub(super) struct Log {
    /// The member whose chain this is (`""` on SQLite).
    member: String,
    /// The open transaction's records, sealed, one per line; its buffer is kept between them.
    block: String,
    /// The seq of the block's first record.
    first: i64,
    /// The seq of the last record other than a checkpoint appended since the store opened.
    moved: Arc<AtomicI64>,
}

impl Log {
    /// The log of `member`'s chain; it sets `moved` ([`Store::moved`]).
    pub(super) fn new(member: &str, moved: Arc<AtomicI64>) -> Log {
        Log { member: member.to_owned(), block: String::new(), first: 0, moved }
    }

    /// Where the open block ends now, to go [`Log::back_to`] if a job fails.
    pub(super) fn mark(&self) -> (usize, i64) {
        (self.block.len(), self.first)
    }

    /// Drops what was appended to the open block since `mark`.
    pub(super) fn back_to(&mut self, (len, first): (usize, i64)) {
        self.block.truncate(len);
        self.first = first;
    }

    /// Drops the open block: its transaction did not commit.
    pub(super) fn discard(&mut self) {
        self.block.clear();
    }
}

impl Tx<'_> {
    /// Appends `entry` to the evidence log, chained to the last record, in this transaction.
    pub(crate) fn record(&self, entry: impl Into<Rendered>) -> Result<(), StoreError> {
        let Some(log) = self.log else {
            return Ok(());
        };
        let last = self.chain_head()?;
        let (seq, prev) = last.map(|(s, h)| (s + 1, h)).unwrap_or((1, GENESIS.to_owned()));
        let at = self.at.get_or_init(|| rfc3339(now_ms()));
        let entry = entry.into();
        let mut log = log.borrow_mut();
        if log.block.is_empty() {
            log.first = seq;
        } else {
            log.block.push('\n');
        }
        let hash = entry.seal(&mut log.block, seq, at, &prev);
        if !entry.is_checkpoint() {
            log.moved.store(seq, Ordering::Relaxed);
        }
        entry.recycle();
        *self.head.borrow_mut() = Some((seq, hash));
        Ok(())
    }

    /// The evidence log's last record (seq, hash) in this transaction; `None` while it is empty.
    fn chain_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        if let Some(head) = self.head.borrow().clone() {
            return Ok(Some(head));
        }
        let member = self.log.map(|log| log.borrow().member.clone()).unwrap_or_default();
        let last = query_row(
            self,
            "SELECT seq, records FROM evidence WHERE member = ?1 ORDER BY seq DESC LIMIT 1",
            [member],
            |r| {
                let seq = r.get(0)?;
                Ok(last_record(seq, unpack(seq, r.get_ref(1)?)))
            },
        )
        .optional()?;
        self.head.borrow_mut().clone_from(&last);
        Ok(last)
    }

    /// Inserts this transaction's block of records, if it has any; the writer calls it last
    /// before committing.
    pub(super) fn append_block(&self) -> Result<(), StoreError> {
        let Some(log) = self.log else {
            return Ok(());
        };
        let log = &mut *log.borrow_mut();
        if log.block.is_empty() {
            return Ok(());
        }
        let packed = lz4_flex::block::compress_prepend_size(log.block.as_bytes());
        let inserted = exec(
            self,
            "INSERT INTO evidence (member, seq, records) VALUES (?1, ?2, ?3)",
            params![log.member, log.first, packed],
        );
        log.block.clear();
        inserted?;
        Ok(())
    }
}

/// The most a stored block may unpack to: far more than a commit's records, and little enough
/// that a size forged in the file cannot exhaust memory.
const BLOCK_MAX: usize = 1 << 28;

/// The JSON lines of the block stored at `seq`: lz4-compressed with its size first (what
/// [`Tx::append_block`] inserts), or text (rows of schema version 5 and before, and rows edited by
/// hand).
fn unpack(seq: i64, stored: ValueRef<'_>) -> Result<String, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("the evidence block at seq {seq} {why}"));
    let text = match stored {
        ValueRef::Text(text) => text.to_vec(),
        ValueRef::Blob(packed) => {
            let (size, packed) = packed.split_first_chunk::<4>().ok_or_else(|| corrupt("has no size"))?;
            let size = u32::from_le_bytes(*size) as usize;
            if size > BLOCK_MAX {
                return Err(corrupt(&format!("claims {size} bytes, more than a block can hold")));
            }
            lz4_flex::block::decompress(packed, size).map_err(|e| corrupt(&format!("cannot be unpacked: {e}")))?
        }
        _ => return Err(corrupt("is neither text nor a compressed block")),
    };
    String::from_utf8(text).map_err(|_| corrupt("is not UTF-8"))
}

/// The seq and hash of the last record of the block stored at `seq`. A block that cannot be read
/// counts as one unreadable record: the log goes on after it, and `audit verify` names it.
fn last_record(seq: i64, block: Result<String, StoreError>) -> (i64, String) {
    match block {
        Ok(block) => lines(seq, &block).last().map_or((seq, String::new()), |(seq, line)| (seq, hash_of(line))),
        Err(e) => {
            tracing::error!(error = %e, "the evidence log's last block is unreadable; `ferry audit verify` shows where");
            (seq, String::new())
        }
    }
}

/// The hash a sealed record ends with (empty when it is unreadable).
fn hash_of(line: &str) -> String {
    serde_json::from_str::<Record>(line).map(|r| r.hash).unwrap_or_default()
}

/// The records of a block stored at `seq`, each with its seq.
fn lines(seq: i64, block: &str) -> impl Iterator<Item = (i64, &str)> {
    (seq..).zip(block.split('\n'))
}

/// How many blocks a page reads at most: a block holds one commit's records, often one.
const BLOCKS: i64 = 1024;

/// Up to `limit` records of `member`'s chain after `since`, in order, with their seqs.
fn records_after(t: &Sql, member: &str, since: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
    // From the block holding the record after `since`.
    let blocks = t.query(
        "SELECT seq, records FROM evidence WHERE member = ?1 AND seq >=
            (SELECT COALESCE(MAX(seq), 0) FROM evidence WHERE member = ?1 AND seq <= CAST(?2 AS BIGINT) + 1)
         ORDER BY seq LIMIT ?3",
        params![member, since, BLOCKS.min(limit as i64)],
        |r| {
            let seq = r.get(0)?;
            Ok((seq, unpack(seq, r.get_ref(1)?)?))
        },
    )?;
    let mut records = Vec::new();
    for (seq, block) in blocks {
        let after = lines(seq, &block).filter(|(seq, _)| *seq > since);
        records.extend(after.take(limit - records.len()).map(|(seq, line)| (seq, line.to_owned())));
        if records.len() == limit {
            break;
        }
    }
    Ok(records)
}

impl Store {
    /// Up to `limit` evidence records after `since`, in order, as JSON text: records deferred
    /// until now are committed first, and the log is read on a connection of its own, so that
    /// the writer is not held up.
    pub async fn audit(&self, since: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.flush().await?;
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || {
            read_log_in_pages(&location, since, limit)?.take(limit).map(|read| read.map(|(_, text)| text)).collect()
        })
        .await
        .map_err(|e| StoreError::Io(format!("the log reader failed: {e}")))?
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
    pub fn receipt(&self, peer: &str, member: Option<&str>, receipt: impl Into<Receipt>) {
        if !self.evidence {
            return;
        }
        let mut entry = Entry::new("receipt", "in", peer, "");
        entry.member = member.map(str::to_owned);
        entry.receipt = Some(receipt.into());
        let rendered = entry.render();
        self.defer("a peer's receipt", rendered)
    }

    /// Records a checkpoint of a chain head (`event: "checkpoint"`): a peer's, verified, that this
    /// node keeps (`direction: "in"`), or this node's own that `peer` acknowledged keeping
    /// (`"out"`). On disk when this returns.
    pub async fn checkpoint(
        &self,
        direction: &'static str,
        peer: &str,
        member: Option<&str>,
        checkpoint: wire::Checkpoint,
    ) -> Result<(), StoreError> {
        if !self.evidence {
            return Ok(());
        }
        let mut entry = Entry::new("checkpoint", direction, peer, "");
        entry.member = member.map(str::to_owned);
        entry.checkpoint = Some(Checkpoint::kept(checkpoint));
        let rendered = entry.render();
        self.run(move |t, _| t.record(rendered)).await
    }
}

impl Store {
    /// The seq of the last record other than a checkpoint appended since the store opened (0:
    /// none yet): checkpoints are sent when it moves, so that two nodes' checkpoints of each
    /// other do not move each other's heads forever.
    pub fn moved(&self) -> i64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// The evidence log's last record (seq, hash) once everything queued so far is committed;
    /// `None` while the log is empty or none is kept.
    pub async fn chain_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        if !self.evidence {
            return Ok(None);
        }
        self.run_relaxed(|t, _| t.chain_head()).await
    }

    /// Records a TSA's time-stamp of an earlier chain head as a record of its own (`event:
    /// "timestamp"`), on disk when this returns; returns that record's seq.
    pub async fn time_stamped(&self, stamp: TimeStamp) -> Result<i64, StoreError> {
        let mut entry = Entry::new("timestamp", "out", "", "");
        entry.timestamp = Some(stamp);
        let rendered = entry.render();
        self.run(move |t, _| {
            t.record(rendered)?;
            Ok(t.chain_head()?.map_or(0, |(seq, _)| seq))
        })
        .await
    }

    /// Checks the whole evidence log ([`verify_log`]) on a connection of its own, so that the
    /// writer is not held up.
    pub async fn verify_log(
        &self,
        certs: crate::evidence::PeerCerts,
        tsa_cert: Option<Vec<u8>>,
    ) -> Result<Verdict, StoreError> {
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || verify_log(&location, &certs, tsa_cert.as_deref()))
            .await
            .map_err(|e| StoreError::Io(format!("the log check failed: {e}")))?
    }
}

/// What checking a log found: intact, or where it is broken.
pub type Verdict = Result<Intact, Broken>;

/// Checks this member's evidence log of the store at `location` against the peers' pinned `certs`
/// and its time-stamps against `tsa_cert` (DER) ([`crate::evidence::verify`]), reading it a page at
/// a time ([`read_log`]).
pub fn verify_log(
    location: &Location,
    certs: &crate::evidence::PeerCerts,
    tsa_cert: Option<&[u8]>,
) -> Result<Verdict, StoreError> {
    let mut failed = None;
    let records = read_log(location, 0)?.map_while(|read| read.map_err(|e| failed = Some(e)).ok());
    let verdict = crate::evidence::verify(records, certs, tsa_cert);
    failed.map_or(Ok(verdict), Err)
}

/// The members whose evidence chains the store at `location` holds, by name: on a shared
/// PostgreSQL store each member keeps one; SQLite holds one, `""`.
pub fn chains_in(location: &Location) -> Result<Vec<String>, StoreError> {
    match schema::open_existing(location)? {
        Some(mut conn) => {
            conn.begin(Begin::Read)?
                .query("SELECT DISTINCT member FROM evidence ORDER BY member", params![], |r| r.get(0))
        }
        None => Ok(Vec::new()),
    }
}

/// How many records [`LogReader`] reads at a time.
const PAGE: usize = 4096;

/// Reads this member's evidence log of the store at `location` after `since`, read-only (a
/// running node may keep writing; each page reads what was committed before it began).
pub fn read_log(location: &Location, since: i64) -> Result<LogReader, StoreError> {
    read_log_in_pages(location, since, PAGE)
}

fn read_log_in_pages(location: &Location, since: i64, page: usize) -> Result<LogReader, StoreError> {
    let Some(conn) = schema::open_existing(location)? else {
        return Err(StoreError::Io(format!("no store at {}; is `node.data_dir` right?", location.shown())));
    };
    let conn = Some(conn);
    Ok(LogReader { conn, member: location.member().to_owned(), after: since, page, read: Vec::new().into_iter() })
}

/// The records of an evidence log in order, as (seq, record JSON), read a page at a time so that a
/// log of any length takes little memory ([`read_log`]).
pub struct LogReader {
    /// `None` once the log is read to its end, or has failed, or when there is none.
    conn: Option<Connection>,
    /// The member whose chain is read.
    member: String,
    /// The seq of the last record given.
    after: i64,
    /// How many records a page holds.
    page: usize,
    /// The rest of the page read last.
    read: std::vec::IntoIter<(i64, String)>,
}

impl Iterator for LogReader {
    type Item = Result<(i64, String), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.read.next() {
                self.after = record.0;
                return Some(Ok(record));
            }
            let (member, after, page) = (&self.member, self.after, self.page);
            let read = self.conn.as_mut()?.begin(Begin::Read).and_then(|t| records_after(&t, member, after, page));
            match read {
                Ok(page) if !page.is_empty() => self.read = page.into_iter(),
                Ok(_) => {
                    self.conn = None;
                    return None;
                }
                Err(e) => {
                    self.conn = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The record of a request for the log, from its wire form and the SHA-256 of its payload
/// ([`crate::wire::payload_sha256`]): `form` masked by `mask`.
pub(crate) fn request_record(
    direction: &'static str,
    peer: &str,
    member: Option<&str>,
    request: &crate::wire::Request,
    payload_sha256: [u8; 32],
    mask: &[String],
) -> Rendered {
    exchange_record(direction, peer, member, request, payload_sha256, mask, None)
}

/// The record of a request with its `answer` (event and body SHA-256), as [`request_record`]: the
/// one record of a synchronous exchange.
pub(crate) fn exchange_record(
    direction: &'static str,
    peer: &str,
    member: Option<&str>,
    request: &crate::wire::Request,
    payload_sha256: [u8; 32],
    mask: &[String],
    answer: Option<(&'static str, &str)>,
) -> Rendered {
    let body_sha256 = hex::encode(payload_sha256);
    Summary {
        event: "request",
        direction,
        peer,
        member,
        id: &request.id,
        method: Some(&request.method),
        path: Some(&request.path),
        form: Some(MaskedForm { form: &request.form, mask }),
        body_sha256: Some(&body_sha256),
        file: request.file.as_ref().map(file_facts),
        answer,
    }
    .render()
}

/// The log's view of a file reference.
pub(crate) fn file_facts(f: &crate::wire::FileRef) -> crate::evidence::FileFacts {
    crate::evidence::FileFacts { name: Some(f.name.clone()), size: Some(f.size), sha256: hex::encode(f.sha256) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of any size give every record after `since` once and in order, across rows.
    #[tokio::test]
    async fn the_log_reads_in_pages_across_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        for commit in 0..3 {
            store
                .run(move |t, _| {
                    for i in 0..3 {
                        t.record(Entry::new("request", "out", "org-b", &format!("r{commit}{i}")))?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
        }
        for (since, page) in [(0, 1), (0, 2), (2, 4), (4, 100), (9, 2)] {
            let location = store.location().clone();
            let read = move || read_log_in_pages(&location, since, page).unwrap().map(|r| r.unwrap().0).collect();
            let seqs: Vec<i64> = std::thread::spawn(read).join().unwrap();
            assert_eq!(seqs, ((since + 1)..=9).collect::<Vec<_>>(), "after {since}, pages of {page}");
        }
    }
}
