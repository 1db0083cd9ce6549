//! The database schema and its migrations, for each database: SQLite's applied in order and
//! recorded in `user_version`, PostgreSQL's in the table `ferry_schema`.

use super::sql::{Begin, Connection, Location};
use super::StoreError;

/// Each entry moves the schema one version up; never edit one that has shipped, add another.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: requests in both directions, their replies, and callback deliveries of those replies.
    "CREATE TABLE requests (
        seq INTEGER PRIMARY KEY,              -- arrival order
        id TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('outgoing', 'incoming')),
        peer TEXT NOT NULL,
        service TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        wire BLOB NOT NULL,                   -- the wire::Request, postcard
        reply INTEGER NOT NULL,               -- reply mode
        conversation TEXT,
        callback_url TEXT,
        callback_method TEXT,
        callback_id TEXT UNIQUE,              -- incoming reply mode: the id the service answers with
        state TEXT NOT NULL,
        error TEXT,
        created_at INTEGER NOT NULL,          -- ms since the epoch
        updated_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,              -- when the link or the service call is due; NULL: nothing due
        response_status INTEGER,
        response_headers TEXT,                -- JSON object
        response_body BLOB,
        UNIQUE (direction, peer, id)
    );
    CREATE INDEX requests_due ON requests (direction, state, next_attempt_at);
    CREATE INDEX requests_by_id ON requests (id);
    CREATE TABLE replies (
        request INTEGER NOT NULL REFERENCES requests (seq),
        seq INTEGER NOT NULL,                 -- 1, 2, …
        data TEXT,                            -- JSON text
        error TEXT,
        status INTEGER,                       -- the service's status, non-reply mode
        end INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        next_send_at INTEGER,                 -- receiving node: when carrying it back is due; NULL once acknowledged
        send_attempts INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0, -- requesting node: callback answered 2xx
        callback_at INTEGER,                  -- requesting node: when delivery is due; NULL: none due
        callback_attempts INTEGER NOT NULL DEFAULT 0,
        callback_error TEXT,
        PRIMARY KEY (request, seq)
    );
    CREATE INDEX replies_send ON replies (next_send_at);
    CREATE INDEX replies_callback ON replies (callback_at);",
    // 2: files. On the sending node `file_path` is the host's file; on the receiving node it is
    // the received, verified copy. `file_done` counts bytes the receiver holds.
    "ALTER TABLE requests ADD COLUMN file_path TEXT;
    ALTER TABLE requests ADD COLUMN file_name TEXT;
    ALTER TABLE requests ADD COLUMN file_field TEXT;
    ALTER TABLE requests ADD COLUMN file_size INTEGER;
    ALTER TABLE requests ADD COLUMN file_sha256 TEXT;
    ALTER TABLE requests ADD COLUMN file_done INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE replies ADD COLUMN file_path TEXT;
    ALTER TABLE replies ADD COLUMN file_name TEXT;
    ALTER TABLE replies ADD COLUMN file_field TEXT;
    ALTER TABLE replies ADD COLUMN file_size INTEGER;
    ALTER TABLE replies ADD COLUMN file_sha256 TEXT;
    CREATE INDEX requests_expiry ON requests (direction, state, expires_at);
    CREATE TABLE received_files (
        peer TEXT NOT NULL,
        key TEXT NOT NULL,                    -- request id, or id/seq for a reply
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (peer, key)
    );",
    // 3: trust. The evidence log (each record's JSON as exported; `hash` chains it), idempotency
    // keys and duplicate windows of the services of this node, and the key on outgoing requests.
    "CREATE TABLE evidence (
        seq INTEGER PRIMARY KEY,
        peer TEXT NOT NULL,
        id TEXT NOT NULL,
        hash TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE TABLE idempotency (
        peer TEXT NOT NULL,
        service TEXT NOT NULL,
        path TEXT NOT NULL,
        key TEXT NOT NULL,
        id TEXT NOT NULL,                     -- the first request, whose result is kept
        state TEXT NOT NULL CHECK (state IN ('running', 'success')),
        response_status INTEGER,
        response_headers TEXT,
        response_body BLOB,
        ttl_ms INTEGER NOT NULL,              -- the service's idempotency_ttl
        expires_at INTEGER,                   -- success: when the result stops counting
        PRIMARY KEY (peer, service, path, key)
    );
    CREATE INDEX idempotency_by_id ON idempotency (id);
    CREATE TABLE dedupe (
        service TEXT NOT NULL,
        digest TEXT NOT NULL,                 -- SHA-256 of sender, method, path, form, file SHA-256
        id TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (service, digest)
    );
    CREATE INDEX dedupe_age ON dedupe (service, at);
    ALTER TABLE requests ADD COLUMN idempotency_key TEXT;
    ALTER TABLE requests ADD COLUMN replay_of TEXT;
    ALTER TABLE requests ADD COLUMN masked_form TEXT;     -- incoming: the form as views show it
    CREATE INDEX requests_by_key ON requests (peer, service, path, idempotency_key)
        WHERE idempotency_key IS NOT NULL;",
    // 4: the evidence log keeps each record's JSON only: peer, id and hash are in it, and the
    // smaller row makes appending cheaper.
    "CREATE TABLE evidence_records (
        seq INTEGER PRIMARY KEY,
        record TEXT NOT NULL
    );
    INSERT INTO evidence_records (seq, record) SELECT seq, record FROM evidence;
    DROP TABLE evidence;
    ALTER TABLE evidence_records RENAME TO evidence;",
    // 5: the evidence log keeps each transaction's records in one row, as JSON lines, `seq` being
    // the first one's; a version 4 row is a block of one.
    "ALTER TABLE evidence RENAME COLUMN record TO records;",
    // 6: new blocks are stored lz4-compressed (a BLOB); text rows stay readable. Nothing to
    // change in place, but a ferry that cannot unpack them must not open the database.
    "",
    // 7: what a host's file to send was when it was accepted (`dev:ino:size:mtime_ns`), so that a
    // file swapped or changed while its request or reply waits is never sent.
    "ALTER TABLE requests ADD COLUMN file_identity TEXT;
    ALTER TABLE replies ADD COLUMN file_identity TEXT;",
    // 8: `wire` holds the store's own request record (`stored`), of this version; NULL in rows
    // stored before, which hold a postcard `wire::Request` of the layout of record version 1.
    "ALTER TABLE requests ADD COLUMN record_version INTEGER;",
    // 9: peers' certificate rollovers, pinned or held for the admin (`crate::rollover`).
    "CREATE TABLE rollovers (
        peer TEXT NOT NULL,
        new TEXT NOT NULL,                    -- the new certificate's fingerprint
        statement BLOB NOT NULL,              -- the wire::Rollover, postcard
        pinned INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (peer, new)
    );",
    // 10: each delivery attempt of a result to a host's callback, the latest 20 of each request
    // (`callback.history` of its status).
    "CREATE TABLE callback_attempts (
        request INTEGER NOT NULL,             -- requests.seq
        seq INTEGER NOT NULL,                 -- the reply's
        at INTEGER NOT NULL,                  -- ms since the epoch
        status INTEGER,                       -- what the callback answered; NULL: no answer
        error TEXT                            -- NULL: delivered
    );
    CREATE INDEX callback_attempts_by_request ON callback_attempts (request);",
    // 11: which member of the peer sent an incoming request, for a peer whose members have a key
    // each (the fingerprint of the certificate it presented): its results go back to that member.
    "ALTER TABLE requests ADD COLUMN member TEXT;",
    // 12: members sharing one store (PostgreSQL): each keeps its own evidence chain, holds the
    // leases of the work it claimed, and says it is alive. SQLite holds one member's, named "".
    "ALTER TABLE evidence ADD COLUMN member TEXT NOT NULL DEFAULT '';
    ALTER TABLE requests ADD COLUMN lease_holder TEXT;    -- the member that claimed it last
    ALTER TABLE replies ADD COLUMN lease_holder TEXT;
    ALTER TABLE idempotency ADD COLUMN holder TEXT;       -- the member whose request runs under the key
    CREATE TABLE members (
        member TEXT PRIMARY KEY,
        address TEXT NOT NULL,                -- where peers reach it (QUIC)
        started_at INTEGER NOT NULL,
        alive_at INTEGER NOT NULL             -- its last word, every few seconds
    );",
    // 13: the inbox asks, for each file it holds, which reply carries it
    // (`Store::reply_file_state`): an index, so that a file with no reply yet does not read
    // every reply.
    "CREATE INDEX replies_by_file ON replies (file_path) WHERE file_path IS NOT NULL;",
];

/// PostgreSQL's migrations: the first is SQLite's schema up to version 12 at once, with
/// PostgreSQL's types; `rowid` is a column of its own where the statements use it.
pub(super) const POSTGRES_MIGRATIONS: &[&str] = &[
    // 1 (SQLite's 12)
    "CREATE TABLE requests (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('outgoing', 'incoming')),
        peer TEXT NOT NULL,
        service TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        wire BYTEA NOT NULL,
        reply BIGINT NOT NULL,
        conversation TEXT,
        callback_url TEXT,
        callback_method TEXT,
        callback_id TEXT UNIQUE,
        state TEXT NOT NULL,
        error TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT,
        response_status BIGINT,
        response_headers TEXT,
        response_body BYTEA,
        file_path TEXT,
        file_name TEXT,
        file_field TEXT,
        file_size BIGINT,
        file_sha256 TEXT,
        file_done BIGINT NOT NULL DEFAULT 0,
        idempotency_key TEXT,
        replay_of TEXT,
        masked_form TEXT,
        file_identity TEXT,
        record_version BIGINT,
        member TEXT,
        lease_holder TEXT,
        UNIQUE (direction, peer, id)
    );
    CREATE INDEX requests_due ON requests (direction, state, next_attempt_at);
    CREATE INDEX requests_by_id ON requests (id);
    CREATE INDEX requests_expiry ON requests (direction, state, expires_at);
    CREATE INDEX requests_by_key ON requests (peer, service, path, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE replies (
        rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        request BIGINT NOT NULL REFERENCES requests (seq),
        seq BIGINT NOT NULL,
        data TEXT,
        error TEXT,
        status BIGINT,
        \"end\" BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        next_send_at BIGINT,
        send_attempts BIGINT NOT NULL DEFAULT 0,
        delivered BIGINT NOT NULL DEFAULT 0,
        callback_at BIGINT,
        callback_attempts BIGINT NOT NULL DEFAULT 0,
        callback_error TEXT,
        file_path TEXT,
        file_name TEXT,
        file_field TEXT,
        file_size BIGINT,
        file_sha256 TEXT,
        file_identity TEXT,
        lease_holder TEXT,
        PRIMARY KEY (request, seq)
    );
    CREATE INDEX replies_send ON replies (next_send_at);
    CREATE INDEX replies_callback ON replies (callback_at);
    CREATE TABLE received_files (
        peer TEXT NOT NULL,
        key TEXT NOT NULL,
        path TEXT NOT NULL,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        PRIMARY KEY (peer, key)
    );
    CREATE TABLE idempotency (
        peer TEXT NOT NULL,
        service TEXT NOT NULL,
        path TEXT NOT NULL,
        key TEXT NOT NULL,
        id TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'success')),
        response_status BIGINT,
        response_headers TEXT,
        response_body BYTEA,
        ttl_ms BIGINT NOT NULL,
        expires_at BIGINT,
        holder TEXT,
        PRIMARY KEY (peer, service, path, key)
    );
    CREATE INDEX idempotency_by_id ON idempotency (id);
    CREATE TABLE dedupe (
        service TEXT NOT NULL,
        digest TEXT NOT NULL,
        id TEXT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (service, digest)
    );
    CREATE INDEX dedupe_age ON dedupe (service, at);
    CREATE TABLE evidence (
        member TEXT NOT NULL,
        seq BIGINT NOT NULL,
        records BYTEA NOT NULL,
        PRIMARY KEY (member, seq)
    );
    CREATE TABLE rollovers (
        rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        peer TEXT NOT NULL,
        new TEXT NOT NULL,
        statement BYTEA NOT NULL,
        pinned BIGINT NOT NULL,
        received_at BIGINT NOT NULL,
        PRIMARY KEY (peer, new)
    );
    CREATE TABLE callback_attempts (
        rowid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        at BIGINT NOT NULL,
        status BIGINT,
        error TEXT
    );
    CREATE INDEX callback_attempts_by_request ON callback_attempts (request);
    CREATE TABLE members (
        member TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        alive_at BIGINT NOT NULL
    );",
    // 2 (SQLite's 13)
    "CREATE INDEX replies_by_file ON replies (file_path, rowid) WHERE file_path IS NOT NULL;",
];

/// Opens the store's database at `location` (not yet migrated: [`prepare`]).
pub(super) fn open(location: &Location) -> Result<Connection, StoreError> {
    match location {
        Location::Sqlite(dir) => Ok(Connection::Sqlite(rusqlite::Connection::open(dir.join("ferry.db"))?)),
        Location::Postgres { url, ca, .. } => Connection::postgres(url, ca.as_deref()).map_err(|e| {
            StoreError::Io(format!(
                "cannot reach the PostgreSQL store at {}: {e}; is `[store] url` right{}?",
                location.shown(),
                if ca.is_some() { ", and `[store] ca` the CA that signed the server's certificate" } else { "" }
            ))
        }),
    }
}

/// Opens the store at `location` to read what a node wrote, without changing it: `None` when
/// there is no store there yet. A store a node of an older release wrote must be upgraded by
/// starting the node once.
pub(super) fn open_existing(location: &Location) -> Result<Option<Connection>, StoreError> {
    let version: usize = match location {
        Location::Sqlite(dir) => {
            let path = dir.join("ferry.db");
            if !path.exists() {
                return Ok(None);
            }
            let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let version = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if version == MIGRATIONS.len() {
                return Ok(Some(Connection::Sqlite(conn)));
            }
            version
        }
        Location::Postgres { .. } => {
            let mut conn = open(location)?;
            let t = conn.begin(Begin::Read)?;
            let made: bool =
                t.query_row("SELECT to_regclass('ferry_schema') IS NOT NULL", super::sql::params![], |r| r.get(0))?;
            let version: Option<usize> = match made {
                true => t.query_row("SELECT MAX(version) FROM ferry_schema", super::sql::params![], |r| r.get(0))?,
                false => None,
            };
            drop(t);
            match version {
                None => return Ok(None),
                Some(v) if v == POSTGRES_MIGRATIONS.len() => return Ok(Some(conn)),
                Some(v) => v,
            }
        }
    };
    Err(StoreError::Io(format!(
        "the store at {} is at schema version {version}, and this ferry reads version {}: {}",
        location.shown(),
        match location {
            Location::Sqlite(_) => MIGRATIONS.len(),
            Location::Postgres { .. } => POSTGRES_MIGRATIONS.len(),
        },
        "start the node (`ferry run`) to upgrade it, or run the ferry that wrote it"
    )))
}

/// Sets the connection up and migrates the schema: SQLite's with WAL, full sync and foreign keys;
/// PostgreSQL's under a lock, so that members starting together migrate it once.
pub(super) fn prepare(conn: &mut Connection) -> Result<(), StoreError> {
    let (version, migrations) = match conn {
        Connection::Sqlite(conn) => {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            cache_statements(conn)?;
            (conn.pragma_query_value(None, "user_version", |r| r.get::<_, usize>(0))?, MIGRATIONS)
        }
        Connection::Postgres(_) => (0, POSTGRES_MIGRATIONS),
    };
    let newer = |version: usize| {
        StoreError::Corrupt(format!(
            "the database is at schema version {version}, newer than this ferry knows ({}); run the newer ferry",
            migrations.len()
        ))
    };
    if version > migrations.len() {
        return Err(newer(version));
    }
    if let Connection::Postgres(_) = conn {
        let t = conn.begin(Begin::Write { durable: true })?;
        // Any number: the lock of ferry's migrations, held until this transaction ends.
        t.batch(
            "SELECT pg_advisory_xact_lock(7265727279);
                 CREATE TABLE IF NOT EXISTS ferry_schema (version BIGINT NOT NULL);",
        )?;
        let version: usize =
            t.query_row("SELECT COALESCE(MAX(version), 0) FROM ferry_schema", super::sql::params![], |r| r.get(0))?;
        if version > migrations.len() {
            return Err(newer(version));
        }
        for (i, sql) in migrations.iter().enumerate().skip(version) {
            t.batch(sql)?;
            t.exec("INSERT INTO ferry_schema (version) VALUES (?1)", [i + 1])?;
        }
        return t.commit();
    }
    for (i, sql) in migrations.iter().enumerate().skip(version) {
        let t = conn.begin(Begin::Write { durable: true })?;
        t.batch(sql)?;
        t.batch(&format!("PRAGMA user_version = {}", i + 1))?;
        t.commit()?;
    }
    Ok(())
}

/// Sets a connection up for the store's statements: waits up to 5 s for a lock, and prepares
/// every statement once and caches it.
pub(super) fn cache_statements(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Keep plans stable so a bound LIMIT does not force a fresh prepare.
    conn.set_prepared_statement_cache_capacity(128);
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_apply_once_and_refuse_a_newer_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = super::Connection::Sqlite(rusqlite::Connection::open(&path).unwrap());
        super::prepare(&mut conn).unwrap();
        super::prepare(&mut conn).unwrap();
        rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(super::prepare(&mut conn).unwrap_err().to_string().contains("newer"));
    }

    #[test]
    fn a_version_3_evidence_log_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        for (i, sql) in super::MIGRATIONS[..3].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", i + 1).unwrap();
        }
        conn.execute(
            "INSERT INTO evidence (seq, peer, id, hash, record) VALUES (1, 'org-b', 'r1', 'h', '{\"seq\":1}')",
            [],
        )
        .unwrap();
        super::prepare(&mut super::Connection::Sqlite(rusqlite::Connection::open(dir.path().join("t.db")).unwrap()))
            .unwrap();
        let kept: (i64, String) =
            conn.query_row("SELECT seq, records FROM evidence", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(kept, (1, "{\"seq\":1}".to_owned()));
    }
}
