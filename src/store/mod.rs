//! The one place of durable state, where the API's and the peers' requests meet the workers that
//! carry them.
//!
//! A database holds requests, replies and callback deliveries: SQLite in WAL mode under
//! `data_dir`, or PostgreSQL shared by the organization's members (`[store] url`; `sql` runs the
//! same statements on either, `members` shares the work). One writer thread owns the connection
//! that changes it; everyone else holds a cheap,
//! cloneable [`Store`] handle that sends it jobs. The writer runs every job waiting in its queue
//! inside one transaction and commits once (group commit), and only then answers the jobs and
//! publishes their [`Event`]s: an answer from the store means the change is on disk. Changes no
//! one waits for (both nodes' records of a plain synchronous exchange, peers' receipts, peers'
//! acknowledgements of messages) are deferred: they join the next transaction, or one of their
//! own within 20 ms. Read views do not
//! queue behind the writer: they run on read-only connections of their own (`reader`), and see
//! every change answered before they began.
//!
//! The workers that act on this state ([`crate::link`]'s forwarding loop, [`crate::deliver`],
//! [`crate::callbacks`]) ask the store what is due, so every retry is driven from the database and
//! survives a restart. Synchronous requests are the exception: their caller is waiting on an open
//! HTTP connection, so they go straight to the link ([`crate::exchange`]); the store only records
//! them ([`Store::sync_exchanged`]).

mod attempts;
mod callbacks;
mod evidence;
mod files;
mod incoming;
mod members;
mod outgoing;
mod prune;
mod queue;
mod reader;
mod records;
mod replies;
mod rollovers;
mod schema;
pub(crate) mod sql;
mod stored;
mod transfers;
mod trust;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::{broadcast, oneshot, Notify};

use crate::evidence::Rendered;

pub use attempts::CallbackAttempt;
pub use callbacks::CallbackWork;
pub use evidence::{chains_in, read_log, verify_log, LogReader, Verdict};
pub use files::{FormFile, ReceivedFile, ReplyFile};
pub use incoming::{IncomingCall, ServiceOutcome};
pub use members::{Member, TakenOver, SAY_EVERY, SILENT_AFTER_MS};
pub use outgoing::{Callback, NewAsync, OutboundWork, OutgoingFile};
pub use prune::Pruned;
pub use records::{Page, Pending, QueueCount, QueueCounts, RequestFilter, RequestView, Stats};
pub use rollovers::{rollovers_in, StoredRollover};
pub use sql::{store_ca, Location};
pub use transfers::Moving;
pub use trust::Admission;

/// How many jobs one transaction takes at most.
const MAX_BATCH: usize = 1024;
/// How long a deferred job ([`Store::defer`]) may wait for a transaction to join.
const DEFER_WITHIN: Duration = Duration::from_millis(20);

/// A change others may watch (`GET /v1/events`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// A request changed state.
    State {
        /// The request id.
        id: String,
        /// The peer it is exchanged with.
        peer: String,
        /// The new state.
        state: State,
    },
    /// A reply arrived (requesting node) or was sent (receiving node).
    Reply {
        /// The request id.
        id: String,
        /// The peer it is exchanged with.
        peer: String,
        /// 1, 2, …
        seq: u32,
        /// The reply's data.
        data: serde_json::Value,
        /// A received file's local path.
        file: Option<String>,
        /// Whether this is the last reply.
        end: bool,
    },
    /// A file transfer advanced.
    Progress {
        /// The request id.
        id: String,
        /// The peer it is exchanged with.
        peer: String,
        /// Bytes the receiver holds.
        bytes_done: u64,
        /// The file's size.
        bytes_total: u64,
    },
}

impl Event {
    /// The peer the event concerns.
    pub fn peer(&self) -> &str {
        match self {
            Event::State { peer, .. } | Event::Reply { peer, .. } | Event::Progress { peer, .. } => peer,
        }
    }
}

/// A request's state (API.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Stored; not yet accepted by the peer, or not yet handed to the service.
    Waiting,
    /// The peer has it; the service is working or a reply is awaited.
    Doing,
    /// Done.
    Success,
    /// Refused, failed or expired.
    Failed,
}

impl State {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Doing => "doing",
            State::Success => "success",
            State::Failed => "failed",
        }
    }

    /// Parses a stored or requested state name.
    pub fn parse(s: &str) -> Option<State> {
        [State::Waiting, State::Doing, State::Success, State::Failed].into_iter().find(|st| st.as_str() == s)
    }
}

/// The store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused an operation, or could not be reached.
    #[error("store: {}", postgres_error(.0))]
    Postgres(#[from] postgres::Error),
    /// A query that wants one row found none.
    #[error("store: no such row")]
    NoRow,
    /// The writer thread has stopped.
    #[error("the store has stopped")]
    Stopped,
    /// The store's folder or thread could not be set up.
    #[error("store: {0}")]
    Io(String),
    /// A stored value could not be decoded.
    #[error("store: corrupt record: {0}")]
    Corrupt(String),
    /// The transaction holding this change could not be committed (nothing of it was stored).
    #[error("store: not committed: {}", .0.why)]
    NotCommitted(NotCommitted),
}

/// A PostgreSQL error with the server's own message, which `postgres::Error` shows only as "db
/// error", or with its causes (why a TLS handshake failed, say), which it does not show.
pub(crate) fn postgres_error(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

/// Why a transaction was not committed.
#[derive(Debug, Clone)]
pub struct NotCommitted {
    /// In words.
    pub why: String,
    /// The disk was full.
    pub disk_full: bool,
}

impl NotCommitted {
    fn of(e: &StoreError) -> NotCommitted {
        NotCommitted { why: e.to_string(), disk_full: e.is_disk_full() }
    }
}

impl StoreError {
    /// Whether the store's disk is full (SQLite's `SQLITE_FULL`): the write can succeed once space
    /// is freed, and nothing stored before was harmed (the transaction was rolled back).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            StoreError::NotCommitted(n) => n.disk_full,
            _ => false,
        }
    }
}

/// Who should be woken after a commit.
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    /// The link's forwarding loop: requests or replies became due.
    pub outbound: Notify,
    /// The delivery worker: incoming requests became due.
    pub incoming: Notify,
    /// The callback worker: results to deliver.
    pub callbacks: Notify,
}

/// Told whether the job's transaction committed: `None` if it did, else why not.
type Answer = Box<dyn FnOnce(Option<&NotCommitted>) + Send>;
/// A job of the writer: whether it succeeded (a failed job's changes are rolled back, the other
/// jobs of its transaction keep theirs), and its answer. Given no transaction (none could
/// begin), it does nothing and only answers.
type Job = Box<dyn FnOnce(Option<&Tx>, &mut Vec<Event>) -> (bool, Answer) + Send>;

/// How a job's changes must be on disk when it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// fsynced (`synchronous=FULL`): survives a power loss. Every promise to a host or a peer
    /// ("on disk before the answer") is made with this.
    Full,
    /// Written to the WAL without an fsync (`synchronous=NORMAL`): survives a crash or kill of
    /// the node at once, and a power loss from the next full commit or checkpoint on. Used for
    /// deferred evidence ([`Store::defer`]), which would otherwise wait for an fsync each, for
    /// [`Store::flush`], and for the link's claims and the peers' acknowledgements, whose loss
    /// only means a message is sent again.
    Relaxed,
}

/// The writer's transaction, with the evidence log beside it ([`Tx::record`]).
pub(crate) struct Tx<'t> {
    t: sql::Sql<'t>,
    /// This member's name (`""` on SQLite): the holder of the leases it claims.
    member: &'t str,
    /// The evidence log; `None` when no log is kept.
    log: Option<&'t std::cell::RefCell<evidence::Log>>,
    /// The evidence log's last record (seq, hash), once known: the writer keeps it from one
    /// transaction to the next, and forgets it when a commit fails.
    head: std::cell::RefCell<Option<(i64, String)>>,
    /// When this transaction's records are recorded (RFC 3339), once the first one is.
    at: std::cell::OnceCell<String>,
    /// PostgreSQL aborted the transaction (a statement of a job failed on the server): it cannot
    /// be committed.
    aborted: std::cell::Cell<bool>,
}

impl<'t> std::ops::Deref for Tx<'t> {
    type Target = sql::Sql<'t>;

    fn deref(&self) -> &Self::Target {
        &self.t
    }
}

/// The cheap, cloneable handle to the store.
#[derive(Clone)]
pub struct Store {
    evidence: bool,
    location: Arc<Location>,
    data_dir: Arc<std::path::PathBuf>,
    jobs: std::sync::mpsc::Sender<Message>,
    /// Jobs no one waits for, committed with the writer's next transaction ([`Store::defer`]).
    deferred: Arc<std::sync::Mutex<Vec<Job>>>,
    events: broadcast::Sender<Event>,
    pub(crate) wake: Arc<Wakers>,
    /// The read-only connections of read views.
    readers: Arc<reader::Readers>,
    /// [`Store::moved`].
    moved: Arc<std::sync::atomic::AtomicI64>,
    /// The files moving now ([`Store::transfers_moving`]).
    transfers: Arc<transfers::Transfers>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (creating or migrating) the database `data_dir/ferry.db` and starts its writer.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(data_dir, true)
    }

    /// Like [`Store::open`]; `evidence: false` keeps no evidence log (for measuring its cost).
    pub fn open_with(data_dir: &Path, evidence: bool) -> Result<Store, StoreError> {
        Store::open_at(&Location::Sqlite(data_dir.to_path_buf()), data_dir, evidence)
    }

    /// Opens (creating or migrating) the store at `location` and starts its writer; received
    /// files are kept under `data_dir`. `evidence: false` keeps no evidence log.
    pub fn open_at(location: &Location, data_dir: &Path, evidence: bool) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", data_dir.display())))?;
        let (jobs, rx) = std::sync::mpsc::channel();
        let deferred = Arc::default();
        let (events, _) = broadcast::channel(4096);
        let (publish, waiting) = (events.clone(), Arc::clone(&deferred));
        let moved = Arc::<std::sync::atomic::AtomicI64>::default();
        let log = evidence.then(|| evidence::Log::new(location.member(), moved.clone()));
        // The writer's thread opens the database: PostgreSQL's client may not block a thread of
        // the async runtime this may be called on.
        let (opened, open) = std::sync::mpsc::sync_channel(1);
        let (at, member) = (location.clone(), location.member().to_owned());
        std::thread::Builder::new()
            .name("ferry-store".into())
            .spawn(move || {
                let conn = schema::open(&at).and_then(|mut conn| schema::prepare(&mut conn).map(|()| conn));
                match conn {
                    Ok(conn) => {
                        let _ = opened.send(Ok(()));
                        writer(Writer::new(conn, member, log), rx, waiting, publish)
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                    }
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the store thread: {e}")))?;
        open.recv().map_err(|_| StoreError::Stopped)??;
        let readers = Arc::new(reader::Readers::new(location.clone()));
        Ok(Store {
            evidence,
            location: Arc::new(location.clone()),
            data_dir: Arc::new(data_dir.to_path_buf()),
            jobs,
            deferred,
            events,
            wake: Arc::default(),
            readers,
            moved,
            transfers: Arc::default(),
        })
    }

    /// Where the store is kept.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The folder of the database (`node.data_dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether this store keeps the evidence log.
    pub fn keeps_evidence(&self) -> bool {
        self.evidence
    }

    /// Watches every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs `f` in the writer's next transaction and returns its result once committed and
    /// fsynced.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx, &mut Vec<Event>) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_with(Durability::Full, f).await
    }

    /// Like [`Store::run`], answered once committed but without waiting for an fsync
    /// ([`Durability::Relaxed`]).
    async fn run_relaxed<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx, &mut Vec<Event>) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_with(Durability::Relaxed, f).await
    }

    async fn run_with<T, F>(&self, durability: Durability, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx, &mut Vec<Event>) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |t, events| {
            let result = match t {
                Some(t) => f(t, events),
                // Never sent: the answer says why no transaction began.
                None => Err(StoreError::Stopped),
            };
            let ok = result.is_ok();
            let answer = Box::new(move |failed: Option<&NotCommitted>| {
                let _ = tx.send(match failed {
                    None => result,
                    Some(why) => Err(StoreError::NotCommitted(why.clone())),
                });
            });
            (ok, answer as Answer)
        });
        self.jobs.send(Some((durability, job))).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Appends `record` in a transaction of the writer within [`DEFER_WITHIN`], without an
    /// fsync of its own and without anyone waiting: for evidence that must not hold up an
    /// exchange (the records of a plain synchronous exchange, peers' receipts). A failure is
    /// logged as `what`. Many exchanges' records share one commit, and the writer is woken once
    /// for them.
    fn defer(&self, what: &'static str, record: Rendered) {
        self.defer_change(what, Arc::new(move |t, _| t.record(record.clone())));
    }

    /// Makes `change` in a transaction of the writer within [`DEFER_WITHIN`], like
    /// [`Store::defer`]: for a change no one waits for (a peer's acknowledgement and its
    /// evidence record), so that none needs a commit of its own or holds up its task. It may be
    /// made twice, if the first transaction fails after it.
    fn defer_change(&self, what: &'static str, change: Deferred) {
        let mut deferred = self.deferred.lock().unwrap();
        deferred.push(deferred_job(self.deferred.clone(), what, change, 0));
        if deferred.len() == 1 {
            let _ = self.jobs.send(None);
        }
    }

    /// Returns once everything queued so far, deferred jobs included, is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.run_relaxed(|_, _| Ok(())).await
    }
}

/// A change of [`Store::defer_change`]; it may be made again, in another transaction.
type Deferred = Arc<dyn Fn(&Tx, &mut Vec<Event>) -> Result<(), StoreError> + Send + Sync>;

/// The job of [`Store::defer_change`]: `change` made in the transaction it is given. When that
/// transaction does not commit, or none could begin (the database cannot be reached, or restarted
/// under it), the change is queued again for the next one: it is not lost to a database that
/// restarts. At most [`MAX_KEPT`] wait so; past that, a change is dropped, and the log says so. A
/// change whose own statement failed is dropped once its transaction committed without it (SQLite
/// goes on past a failed statement), or after [`OWN_FAILURES`] transactions that it aborted.
fn deferred_job(
    queue: Arc<std::sync::Mutex<Vec<Job>>>,
    what: &'static str,
    change: Deferred,
    own_failures: u32,
) -> Job {
    let again = move |queue: Arc<std::sync::Mutex<Vec<Job>>>, change: Deferred, own_failures: u32| {
        let mut waiting = queue.lock().unwrap();
        if waiting.len() < MAX_KEPT {
            waiting.push(deferred_job(queue.clone(), what, change, own_failures));
        } else {
            tracing::error!("{what} is not recorded: {MAX_KEPT} changes already wait for the store");
        }
    };
    Box::new(move |t, events| {
        let Some(t) = t else {
            again(queue, change, own_failures);
            return (false, Box::new(|_| {}));
        };
        let done = change(t, events);
        let own_failures = own_failures + u32::from(done.is_err());
        if let Err(e) = &done {
            tracing::error!(error = %e, "cannot record {what}");
        }
        let answer = move |failed: Option<&NotCommitted>| {
            if failed.is_some() && own_failures < OWN_FAILURES {
                again(queue, change, own_failures);
            }
        };
        (done.is_ok(), Box::new(answer) as Answer)
    })
}

/// How many transactions a deferred change whose own statement fails may abort before it is
/// dropped: a connection lost in the middle fails a statement too, and is worth another try.
const OWN_FAILURES: u32 = 3;

/// The most deferred changes kept in memory while the store cannot commit them.
const MAX_KEPT: usize = 100_000;
/// How soon deferred changes that could not be committed are tried again, with no other job.
const RETRY_KEPT: Duration = Duration::from_secs(1);

/// What the writer's queue carries: a job, or word that deferred jobs are waiting.
type Message = Option<(Durability, Job)>;

/// The writer: takes every waiting job, runs them in one transaction, commits (with an fsync
/// when any job needs [`Durability::Full`]), then answers the jobs and publishes their events.
/// Deferred jobs join the next transaction, or one of their own [`DEFER_WITHIN`] after the first
/// of them was queued.
fn writer(
    mut state: Writer,
    jobs: std::sync::mpsc::Receiver<Message>,
    deferred: Arc<std::sync::Mutex<Vec<Job>>>,
    publish: broadcast::Sender<Event>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    // When the deferred jobs waiting must be committed.
    let mut due: Option<std::time::Instant> = None;
    let mut emptied: Vec<Job> = Vec::new();
    loop {
        let first = match due {
            None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => jobs.recv_timeout(at.saturating_duration_since(std::time::Instant::now())),
        };
        let (stopping, mut waiting) = match first {
            Ok(None) if due.is_none() => {
                due = Some(std::time::Instant::now() + DEFER_WITHIN);
                continue;
            }
            Ok(message) => (false, message),
            Err(RecvTimeoutError::Timeout) => (false, None),
            Err(RecvTimeoutError::Disconnected) => (true, None),
        };
        let mut batch = Vec::new();
        let mut needed = Durability::Relaxed;
        loop {
            if let Some((durability, job)) = waiting {
                if durability == Durability::Full {
                    needed = Durability::Full;
                }
                batch.push(job);
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            match jobs.try_recv() {
                Ok(message) => waiting = message,
                Err(_) => break,
            }
        }
        // Deferred jobs were queued before these ones were taken: they go first. Their queue is
        // swapped for the last one, emptied: its memory stays with the queue.
        let mut all = std::mem::replace(&mut *deferred.lock().unwrap(), std::mem::take(&mut emptied));
        due = None;
        all.append(&mut batch);
        if !all.is_empty() {
            state.commit(&mut all, needed, &publish);
        }
        emptied = all;
        let kept = deferred.lock().unwrap().len();
        if stopping {
            if kept > 0 {
                tracing::error!("{kept} deferred change(s) (evidence records, peers' acknowledgements) could not be stored before the store stopped");
            }
            return;
        }
        if kept > 0 && due.is_none() {
            due = Some(std::time::Instant::now() + RETRY_KEPT);
        }
    }
}

/// What the writer keeps between transactions.
struct Writer {
    /// The store's connection; the writer is its only user.
    conn: sql::Connection,
    /// This member's name ([`Tx::member`]).
    member: String,
    /// SQLite's `synchronous` setting of the connection.
    synchronous: Durability,
    /// The evidence log's last record, once known.
    head: Option<(i64, String)>,
    /// The evidence log ([`Tx::log`]).
    log: Option<std::cell::RefCell<evidence::Log>>,
}

impl Writer {
    fn new(conn: sql::Connection, member: String, log: Option<evidence::Log>) -> Writer {
        let log = log.map(std::cell::RefCell::new);
        Writer { conn, member, synchronous: Durability::Full, head: None, log }
    }

    /// Runs `jobs` in one transaction and commits it with `needed` durability, then answers them
    /// and publishes their events; `jobs` is left empty. A job that fails drops its events and
    /// evidence records ([`Tx::isolated`]), and the others go on.
    fn commit(&mut self, jobs: &mut Vec<Job>, needed: Durability, publish: &broadcast::Sender<Event>) {
        if let sql::Connection::Sqlite(conn) = &self.conn {
            if needed != self.synchronous {
                let mode = if needed == Durability::Full { "FULL" } else { "NORMAL" };
                match conn.pragma_update(None, "synchronous", mode) {
                    Ok(()) => self.synchronous = needed,
                    Err(e) => tracing::error!(error = %e, "the store cannot set synchronous={mode}"),
                }
            }
        }
        let mut events = Vec::new();
        let t = match self.conn.begin(sql::Begin::Write { durable: needed == Durability::Full }) {
            Ok(t) => {
                // A cached head may be gone on another server (a failover): it is read again.
                let head = if t.reconnected() { None } else { self.head.take() };
                Tx {
                    t,
                    member: &self.member,
                    log: self.log.as_ref(),
                    head: std::cell::RefCell::new(head),
                    at: std::cell::OnceCell::new(),
                    aborted: std::cell::Cell::new(false),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the store cannot begin a transaction");
                let why = NotCommitted { why: format!("no transaction could begin: {e}"), disk_full: e.is_disk_full() };
                for job in jobs.drain(..) {
                    job(None, &mut Vec::new()).1(Some(&why));
                }
                return;
            }
        };
        let answers: Vec<Answer> = jobs.drain(..).map(|job| t.isolated(job, &mut events)).collect();
        let appended = if t.aborted.get() { Ok(()) } else { t.append_block() }.map_err(|e| {
            tracing::error!(error = %e, "the store cannot append to the evidence log");
            NotCommitted::of(&e)
        });
        let Tx { t, head: chain_head, aborted, .. } = t;
        let aborted = match aborted.get() {
            true => Err(NotCommitted {
                why: "another change in the same transaction failed in PostgreSQL, so nothing of it was stored; \
                      try again"
                    .into(),
                disk_full: false,
            }),
            false => Ok(()),
        };
        // Without its records, the transaction rolls back.
        let failed = aborted
            .and(appended)
            .and_then(|()| {
                t.commit().map_err(|e| {
                    tracing::error!(error = %e, "the store could not commit");
                    NotCommitted::of(&e)
                })
            })
            .err();
        let committed = failed.is_none();
        self.head = if committed { chain_head.into_inner() } else { None };
        if let (false, Some(log)) = (committed, &self.log) {
            // Records of a transaction that aborted before its block was appended; their
            // chain is read again from the store.
            log.borrow_mut().discard();
        }
        for answer in answers {
            answer(failed.as_ref());
        }
        if committed {
            for e in events {
                let _ = publish.send(e);
            }
        }
    }
}

impl Tx<'_> {
    /// This member's name (`""` on SQLite): the holder of the leases it claims.
    pub(crate) fn member(&self) -> &str {
        self.member
    }

    /// Runs `job`; if it fails, the events and evidence records it made are dropped. No savepoint
    /// is set: on SQLite one cost the async path 16% of its CPU (two statements a job), on
    /// PostgreSQL two round trips a job, for failures that do not happen in practice. So what a
    /// failed job wrote before it failed stays, as it always did on SQLite; and on PostgreSQL, if
    /// the server refused its statement (which aborts the transaction), nothing of the transaction
    /// is committed and every job of it is told so ([`Tx::aborted`]).
    fn isolated(&self, job: Job, events: &mut Vec<Event>) -> Answer {
        let (events_before, head_before) = (events.len(), self.head.borrow().clone());
        let block_before = self.log.map(|log| log.borrow().mark());
        let (ok, answer) = job(Some(self), events);
        if !ok {
            events.truncate(events_before);
            *self.head.borrow_mut() = head_before;
            if let (Some(log), Some(mark)) = (self.log, block_before) {
                log.borrow_mut().back_to(mark);
            }
            // Whether PostgreSQL aborted the transaction: then even this fails.
            if self.is_postgres() && self.exec("SELECT 1", sql::params![]).is_err() {
                self.aborted.set(true);
            }
        }
        answer
    }
}

/// Runs a statement, prepared once per connection and cached.
pub(crate) fn exec(t: &sql::Sql, sql: &str, params: impl sql::Params) -> Result<usize, StoreError> {
    t.exec(sql, params)
}

/// Reads one row with a statement prepared once per connection and cached.
pub(crate) fn query_row<T>(
    t: &sql::Sql,
    sql: &str,
    params: impl sql::Params,
    f: impl FnOnce(&sql::Row<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    t.query_row(sql, params, f)
}

/// Requests, replies and services the tests share.
#[cfg(test)]
pub(crate) use queue::fixtures;

/// The tests' PostgreSQL server.
#[cfg(test)]
#[path = "../../tests/support/postgres.rs"]
#[allow(dead_code)] // shared with the integration tests, which use all of it
pub(crate) mod test_postgres;

#[cfg(test)]
impl Store {
    /// The store of a unit test in `dir`: SQLite there, or with `FERRY_TEST_STORE=postgres` a
    /// database of its own on the tests' PostgreSQL server (the same one each time for `dir`).
    pub(crate) fn open_for_test(dir: &Path) -> Store {
        if !test_postgres::wanted() {
            return Store::open(dir).unwrap();
        }
        let kept = dir.join("postgres-url");
        let url = std::fs::read_to_string(&kept).unwrap_or_else(|_| {
            let url = test_postgres::database();
            std::fs::write(&kept, &url).unwrap();
            url
        });
        Store::open_at(&Location::Postgres { url, member: "test".into(), readers: 8, ca: None }, dir, true).unwrap()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// RFC 3339 text for a stored time.
pub fn rfc3339(ms: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use serde_json::Value;

    use crate::evidence::{verify, Entry, Intact};

    /// The whole evidence log of `store` (read on a thread of its own: PostgreSQL's blocking
    /// client may not run on the test's runtime).
    fn log(store: &Store) -> Vec<(i64, String)> {
        let location = store.location().clone();
        std::thread::spawn(move || read_log(&location, 0).unwrap().collect::<Result<_, _>>().unwrap()).join().unwrap()
    }

    /// A deferred record is committed on its own, with no other job to join, and
    /// [`Store::flush`] commits everything deferred before it returns, in order.
    #[tokio::test]
    async fn deferred_records_are_committed_on_their_own_and_by_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_for_test(dir.path());
        let record = |id: String| Entry::new("request", "out", "org-b", &id).render();
        store.defer("a test record", record("r1".into()));
        let started = std::time::Instant::now();
        while log(&store).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5), "the deferred record was never committed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for i in 2..=50 {
            store.defer("a test record", record(format!("r{i}")));
        }
        store.flush().await.unwrap();
        let records = log(&store);
        assert_eq!(verify(records.clone(), &HashMap::new(), None), Ok(Intact { records: 50, ..Intact::default() }));
        let ids: Vec<String> =
            records.iter().map(|(_, text)| serde_json::from_str::<Value>(text).unwrap()["id"].to_string()).collect();
        assert_eq!(ids, (1..=50).map(|i| format!("\"r{i}\"")).collect::<Vec<_>>());
    }

    /// A store of member `m` on the PostgreSQL database at `url`, and its folder.
    fn store_at(url: &str) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Postgres { url: url.to_owned(), member: "m".into(), readers: 8, ca: None };
        let store = Store::open_at(&location, dir.path(), true).unwrap();
        (dir, store)
    }

    /// The log holds the record `kept`, and only it, in an intact chain.
    fn only_kept_in_chain(store: &Store) {
        let records = log(store);
        assert!(records.len() == 1 && records[0].1.contains("\"kept\""), "{records:?}");
        assert_eq!(verify(records, &HashMap::new(), None), Ok(Intact { records: 1, ..Intact::default() }));
    }

    /// A deferred record (a synchronous exchange's, a peer's receipt) and a peer's
    /// acknowledgement wait while no transaction can begin, the database refusing connections,
    /// and are committed once one can.
    #[tokio::test]
    async fn a_deferred_record_waits_out_a_database_that_cannot_be_reached() {
        let Some(url) = test_postgres::database_or_skip("a_deferred_record_waits_out…") else { return };
        let (_dir, store) = store_at(&url);
        let mut request = queue::fixtures::new_async("r1");
        request.callback = None;
        store.insert_outgoing(request).await.unwrap();
        let [sent] = store.claim_outbound(10).await.unwrap().try_into().unwrap();
        let name = url.rsplit('/').next().unwrap().to_owned();
        let admin = |sql: String| {
            let url = url.replace(&format!("/{name}"), "/postgres");
            std::thread::spawn(move || {
                postgres::Client::connect(&url, postgres::NoTls).unwrap().batch_execute(&sql).unwrap()
            })
            .join()
            .unwrap()
        };
        admin(format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = '{name}'"
        ));
        store.defer("a test record", Entry::new("request", "out", "org-b", "kept").render());
        store.acknowledged("org-b", None, crate::wire::Ack { id: "r1".into(), seq: 0 }, &sent);
        let refused = store.flush().await.expect_err("no transaction can begin");
        assert!(refused.to_string().contains("no transaction could begin"), "{refused}");
        admin(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
        store.flush().await.unwrap();
        assert_eq!(store.get("r1").await.unwrap().unwrap().state, "doing", "the acknowledgement was kept");
        let records = log(&store);
        assert_eq!(records.len(), 2, "{records:?}");
        assert!(records[0].1.contains("\"kept\"") && records[1].1.contains("\"r1\""), "{records:?}");
        assert_eq!(verify(records, &HashMap::new(), None), Ok(Intact { records: 2, ..Intact::default() }));
    }

    /// A deferred record whose transaction does not commit (PostgreSQL aborted it: another job's
    /// statement was refused) is kept for the next one.
    #[tokio::test]
    async fn a_deferred_record_outlives_a_transaction_that_did_not_commit() {
        let Some(url) = test_postgres::database_or_skip("a_deferred_record_outlives…") else { return };
        let (_dir, store) = store_at(&url);
        store.defer("a test record", Entry::new("request", "out", "org-b", "kept").render());
        // Taken with the record, in one transaction, which the server's refusal aborts.
        let refused = store.run(|t, _| t.exec("SELECT 1/0", sql::params![])).await;
        assert!(refused.is_err());
        store.flush().await.unwrap();
        only_kept_in_chain(&store);
    }

    /// A log kept one record per row (schema 4) goes on in rows of a commit each, one chain.
    #[tokio::test]
    async fn a_log_of_one_record_per_row_goes_on_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
            for (i, sql) in schema::MIGRATIONS[..4].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", i + 1).unwrap();
            }
            let mut prev = crate::evidence::GENESIS.to_owned();
            for seq in 1..=2 {
                let mut text = String::new();
                prev = Entry::new("request", "out", "org-b", &format!("r{seq}")).render().seal(
                    &mut text,
                    seq,
                    "2026-11-30T00:00:00.000Z",
                    &prev,
                );
                conn.execute("INSERT INTO evidence (seq, record) VALUES (?1, ?2)", rusqlite::params![seq, text])
                    .unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        store.run(|t, _| t.record(Entry::new("request", "out", "org-b", "r3"))).await.unwrap();
        assert_eq!(
            verify_log(store.location(), &HashMap::new(), None).unwrap(),
            Ok(Intact { records: 3, ..Intact::default() })
        );
    }

    /// A commit's records share one row, and one removed from its middle breaks the chain there.
    #[tokio::test]
    async fn a_record_removed_from_a_commits_row_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .run(|t, _| {
                for id in ["r1", "r2", "r3"] {
                    t.record(Entry::new("request", "out", "org-b", id))?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let db = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
        let (rows, stored): (i64, String) =
            db.query_row("SELECT COUNT(*), typeof(records) FROM evidence", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((rows, stored.as_str()), (1, "blob"), "one row, compressed");
        let lines: Vec<String> = read_log(store.location(), 0).unwrap().map(|r| r.unwrap().1).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            verify_log(store.location(), &HashMap::new(), None).unwrap(),
            Ok(Intact { records: 3, ..Intact::default() })
        );
        // Rewritten by hand as text, the middle record left out.
        db.execute("UPDATE evidence SET records = ?1", [format!("{}\n{}", lines[0], lines[2])]).unwrap();
        let broken = verify_log(store.location(), &HashMap::new(), None).unwrap().unwrap_err();
        assert_eq!(broken.seq, 2, "{broken:?}");
    }

    /// A compressed block damaged in the file is reported with its seq, not read as records.
    #[tokio::test]
    async fn a_damaged_block_names_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for id in ["r1", "r2"] {
            store.run(move |t, _| t.record(Entry::new("request", "out", "org-b", id))).await.unwrap();
        }
        let db = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
        let packed: Vec<u8> = db.query_row("SELECT records FROM evidence WHERE seq = 2", [], |r| r.get(0)).unwrap();
        for damaged in [packed[..packed.len() / 2].to_vec(), vec![0xff; 4], vec![]] {
            db.execute("UPDATE evidence SET records = ?1 WHERE seq = 2", [&damaged]).unwrap();
            let error = verify_log(store.location(), &HashMap::new(), None).unwrap_err().to_string();
            assert!(error.contains("seq 2"), "{error}");
        }
        // A node started on it still records, after the damaged block.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        store.run(|t, _| t.record(Entry::new("request", "out", "org-b", "r3"))).await.unwrap();
        let seqs: Vec<i64> = db
            .prepare("SELECT seq FROM evidence")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }
}
