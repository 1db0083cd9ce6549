//! The read-only connections read views run on, so that a read never queues behind the writer.
//!
//! On SQLite, WAL mode lets readers run beside the writer; on PostgreSQL every connection does.
//! Each read is one transaction on a connection of its own and sees everything committed before
//! it began; the writer answers a job only once its transaction is committed, so a read begun
//! after a write was answered sees that write. Reads run on tokio's blocking threads, never on the
//! async runtime's.

use std::sync::Mutex;

use super::sql::{Begin, Connection, Location, Sql};
use super::{schema, Store, StoreError};

/// How many idle read connections are kept open; more are opened while more reads overlap.
const KEEP: usize = 4;

/// The database's read connections not in use: a pool.
pub(super) struct Readers {
    /// The database.
    location: Location,
    /// Connections to use again.
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Readers of the database at `location`, which the writer has opened and migrated.
    pub(super) fn new(location: Location) -> Readers {
        Readers { location, idle: Mutex::new(Vec::new()) }
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
        let idle = self.idle.lock().unwrap().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => self.connect()?,
        };
        // Dropped, the transaction rolls back: it changed nothing.
        let read = conn.begin(Begin::Read).and_then(|t| f(&t));
        // A connection that failed (a PostgreSQL server restarted, say) is not kept.
        let broken = matches!(&read, Err(StoreError::Postgres(e)) if e.is_closed());
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < KEEP && !broken {
            idle.push(conn);
        }
        read
    }
}

impl Drop for Readers {
    /// PostgreSQL's blocking client may not close a connection on an async runtime's thread,
    /// which the last handle of a store may be dropped on: its connections close on a thread of
    /// their own.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        if idle.iter().any(|c| matches!(c, Connection::Postgres(_))) {
            std::thread::spawn(move || drop(idle));
        }
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
