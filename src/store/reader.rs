//! The read-only connections read views run on, so that a read never queues behind the writer.
//!
//! On SQLite, WAL mode lets readers run beside the writer; on PostgreSQL every connection does.
//! Each read is one transaction on a connection of its own and sees everything committed before
//! it began; the writer answers a job only once its transaction is committed, so a read begun
//! after a write was answered sees that write. Reads run on tokio's blocking threads, never on the
//! async runtime's.

use std::sync::{Condvar, Mutex};

use super::sql::{Begin, Connection, Location, Sql};
use super::{schema, Store, StoreError};

/// How many idle read connections are kept open; more are opened while more reads overlap.
const KEEP: usize = 4;
/// The database's read connections: a pool.
pub(super) struct Readers {
    /// The database.
    location: Location,
    /// Connections to use again, and how many are open.
    pool: Mutex<Pool>,
    /// Told when a connection is given back.
    given_back: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Connection>,
    open: usize,
}

impl Readers {
    /// Readers of the database at `location`, which the writer has opened and migrated.
    pub(super) fn new(location: Location) -> Readers {
        Readers { location, pool: Mutex::default(), given_back: Condvar::new() }
    }

    /// An idle connection, or a new one, or on PostgreSQL past `[store] readers` one given back
    /// (so that members do not use up the server's connections). SQLite's are not limited.
    fn take(&self) -> Result<Connection, StoreError> {
        let limit = match self.location {
            Location::Sqlite(_) => usize::MAX,
            Location::Postgres { readers, .. } => readers.max(1),
        };
        let mut pool = self.pool.lock().unwrap();
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(conn);
            }
            if pool.open < limit {
                pool.open += 1;
                drop(pool);
                let opened = self.connect();
                if opened.is_err() {
                    self.pool.lock().unwrap().open -= 1;
                    self.given_back.notify_one();
                }
                return opened;
            }
            pool = self.given_back.wait(pool).unwrap();
        }
    }

    /// Opens a read connection.
    fn connect(&self) -> Result<Connection, StoreError> {
        match &self.location {
            Location::Sqlite(dir) => {
                use rusqlite::OpenFlags;
                let conn = rusqlite::Connection::open_with_flags(
                    dir.join("ferry.db"),
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
                )?;
                schema::cache_statements(&conn)?;
                Ok(Connection::Sqlite(conn))
            }
            Location::Postgres { .. } => schema::open(&self.location),
        }
    }

    /// Runs `f` in a read transaction of an idle connection, or of a new one.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Sql) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.take()?;
        // Dropped, the transaction rolls back: it changed nothing. A read that panics gives its
        // place in the pool back before the panic goes on.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.begin(Begin::Read).and_then(|t| f(&t))));
        let read = match read {
            Ok(read) => read,
            Err(panic) => {
                self.pool.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
                self.given_back.notify_one();
                close(conn);
                std::panic::resume_unwind(panic);
            }
        };
        // A connection that failed (a PostgreSQL server restarted, say) is not kept.
        let broken = matches!(&read, Err(StoreError::Postgres(e)) if e.is_closed());
        let mut pool = self.pool.lock().unwrap();
        if pool.idle.len() < KEEP && !broken {
            pool.idle.push(conn);
        } else {
            pool.open -= 1;
            drop(pool);
            close(conn);
        }
        self.given_back.notify_one();
        read
    }
}

impl Drop for Readers {
    /// PostgreSQL's blocking client may not close a connection on an async runtime's thread,
    /// which the last handle of a store may be dropped on: its connections close on a thread of
    /// their own.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.pool.lock().unwrap_or_else(|e| e.into_inner()).idle);
        idle.into_iter().for_each(close);
    }
}

/// Closes `conn`; PostgreSQL's on a thread of its own (its blocking client may not close one on
/// an async runtime's thread, where a read or the store's last handle may end).
fn close(conn: Connection) {
    if let Connection::Postgres(_) = conn {
        std::thread::spawn(move || drop(conn));
    }
}

impl Store {
    /// Runs `f` in a read transaction of its own, beside the writer, on a blocking thread.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Sql) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = std::sync::Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.read(f))
            .await
            .map_err(|e| StoreError::Io(format!("a read of the store failed: {e}")))?
    }
}
