//! The read-only connections read views run on, so that a read never queues behind the writer.
//!
//! WAL mode lets readers run beside the writer. Each read is one transaction on a read-only
//! connection and sees everything committed before it began; the writer answers a job only once
//! its transaction is committed, so a read begun after a write was answered sees that write.
//! Reads run on tokio's blocking threads, never on the async runtime's.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, Transaction};

use super::{schema, Store, StoreError};

/// How many idle read connections are kept open; more are opened while more reads overlap.
const KEEP: usize = 4;

/// The database's read-only connections not in use.
pub(super) struct Readers {
    /// The database.
    path: PathBuf,
    /// Connections to use again.
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Readers of the database at `path`, which the writer has opened and migrated.
    pub(super) fn new(path: PathBuf) -> Readers {
        Readers { path, idle: Mutex::new(Vec::new()) }
    }

    /// Runs `f` in a read transaction of an idle connection, or of a new one.
    fn read<T>(&self, f: impl FnOnce(&Transaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
                )?;
                schema::cache_statements(&conn)?;
                conn
            }
        };
        // Dropped, the transaction rolls back: it changed nothing.
        let read = conn.transaction().map_err(StoreError::from).and_then(|t| f(&t));
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < KEEP {
            idle.push(conn);
        }
        read
    }
}

impl Store {
    /// Runs `f` in a read transaction of its own, beside the writer, on a blocking thread.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = std::sync::Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.read(f))
            .await
            .map_err(|e| StoreError::Io(format!("a read of the store failed: {e}")))?
    }
}
