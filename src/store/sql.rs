//! The two databases the store runs on, behind one way of running SQL: the embedded SQLite file in
//! `data_dir` (the default), or a PostgreSQL server that several members of one organization share
//! (`[store] url`).
//!
//! Statements are written once, in the SQL both understand, with SQLite's numbered parameters
//! (`?1`); PostgreSQL gets them as `$1` ([`postgres_text`]). Values cross as [`ValueRef`]s, bound to
//! whatever type the server inferred for a parameter, and rows are read by column index. Each
//! connection prepares a statement once and keeps it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::types::{FromSql, IsNull, ToSql, Type};

use super::StoreError;

/// Where the store is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `ferry.db` in this folder (`node.data_dir`).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by the organization's members.
    Postgres {
        /// `postgres://user@host:port/db` or `host=… user=…`.
        url: String,
        /// This member's name: its evidence chain and its leases are kept under it.
        member: String,
        /// How many connections reads may use at once.
        readers: usize,
        /// The PEM certificates of the CAs that sign the server's certificate: TLS is then
        /// required and the server's certificate checked against the URL's host. `None`: no TLS.
        ca: Option<PathBuf>,
    },
}

impl Location {
    /// The same store, `member`'s part of it (its evidence chain).
    pub fn of_member(&self, member: &str) -> Location {
        match self {
            Location::Sqlite(dir) => Location::Sqlite(dir.clone()),
            Location::Postgres { url, readers, ca, .. } => {
                Location::Postgres { url: url.clone(), member: member.to_owned(), readers: *readers, ca: ca.clone() }
            }
        }
    }

    /// The member whose evidence chain and leases this node keeps (`""` on SQLite, which holds
    /// one member's).
    pub fn member(&self) -> &str {
        match self {
            Location::Sqlite(_) => "",
            Location::Postgres { member, .. } => member,
        }
    }

    /// Where it is, for messages (a URL without its password).
    pub fn shown(&self) -> String {
        match self {
            Location::Sqlite(dir) => dir.join("ferry.db").display().to_string(),
            Location::Postgres { url, .. } => match url::Url::parse(url) {
                Ok(mut u) if u.password().is_some() => {
                    let _ = u.set_password(Some("…"));
                    u.to_string()
                }
                _ => url.clone(),
            },
        }
    }
}

/// A value bound to a statement or read from a row, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ValueRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    /// UTF-8 text (checked when read as a `String`).
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

/// What can be bound to a statement's parameter.
pub(crate) trait Param {
    fn value(&self) -> ValueRef<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> ValueRef<'_> {
                ValueRef::Int(*self as i64)
            }
        }
    )*};
}
int_param!(i64, i32, u32, u16, u8, usize, u64);

impl Param for bool {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Int(*self as i64)
    }
}
impl Param for f64 {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }
}
impl Param for str {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Text(self.as_bytes())
    }
}
impl Param for String {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Text(self.as_bytes())
    }
}
impl Param for [u8] {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}
impl Param for Vec<u8> {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}
impl<const N: usize> Param for [u8; N] {
    fn value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> ValueRef<'_> {
        self.as_ref().map_or(ValueRef::Null, Param::value)
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> ValueRef<'_> {
        (**self).value()
    }
}

/// A statement's parameters: `params![a, b]`, or an array of one type (`[id]`).
pub(crate) trait Params {
    fn with<R>(&self, f: impl FnOnce(&[&dyn Param]) -> R) -> R;
}
impl<T: Param, const N: usize> Params for [T; N] {
    fn with<R>(&self, f: impl FnOnce(&[&dyn Param]) -> R) -> R {
        f(&self.each_ref().map(|p| p as &dyn Param))
    }
}
impl Params for &[&dyn Param] {
    fn with<R>(&self, f: impl FnOnce(&[&dyn Param]) -> R) -> R {
        f(self)
    }
}
impl Params for Vec<&dyn Param> {
    fn with<R>(&self, f: impl FnOnce(&[&dyn Param]) -> R) -> R {
        f(self)
    }
}

/// Parameters of different types: `params![id, now, file]`; `params![]` for none.
macro_rules! params {
    () => { [] as [&dyn $crate::store::sql::Param; 0] };
    ($($p:expr),+ $(,)?) => { [$(&$p as &dyn $crate::store::sql::Param),+] };
}
pub(crate) use params;

/// What a column can be read as.
pub(crate) trait FromValue: Sized {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String>;
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
                match v {
                    ValueRef::Int(i) => <$t>::try_from(i).map_err(|_| format!("{i} is out of range")),
                    other => Err(format!("want an integer, found {other:?}")),
                }
            }
        }
    )*};
}
int_value!(i64, i32, u32, u16, u8, usize, u64);

impl FromValue for bool {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Int(i) => Ok(i as f64),
            other => Err(format!("want a number, found {other:?}")),
        }
    }
}
impl FromValue for String {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|_| "text is not UTF-8".to_owned()),
            other => Err(format!("want text, found {other:?}")),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b.to_vec()),
            other => Err(format!("want bytes, found {other:?}")),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, String> {
        match v {
            ValueRef::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A row of a result, read by column index.
pub(crate) enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `i` as it is stored.
    pub(crate) fn get_ref(&self, i: usize) -> Result<ValueRef<'_>, StoreError> {
        match self {
            Row::Sqlite(r) => Ok(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => ValueRef::Null,
                rusqlite::types::ValueRef::Integer(n) => ValueRef::Int(n),
                rusqlite::types::ValueRef::Real(f) => ValueRef::Real(f),
                rusqlite::types::ValueRef::Text(t) => ValueRef::Text(t),
                rusqlite::types::ValueRef::Blob(b) => ValueRef::Blob(b),
            }),
            Row::Postgres(r) => r.try_get::<usize, PgValue>(i).map(|v| v.0).map_err(StoreError::from),
        }
    }

    /// Column `i`, read as `T`.
    pub(crate) fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        T::from_value(self.get_ref(i)?).map_err(|why| StoreError::Corrupt(format!("column {i}: {why}")))
    }
}

/// `Ok(None)` for a query that found no row.
pub(crate) trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>, StoreError>;
}
impl<T> OptionalExtension<T> for Result<T, StoreError> {
    fn optional(self) -> Result<Option<T>, StoreError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NoRow) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The CA certificates in the PEM file `ca` (`[store] ca`), which sign the PostgreSQL server's.
pub fn store_ca(ca: &Path) -> Result<rustls::RootCertStore, StoreError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let unusable = |why: &dyn std::fmt::Display| {
        StoreError::Io(format!(
            "store.ca {}: {why}; give the PEM certificate of the CA that signed the PostgreSQL server's",
            ca.display()
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| unusable(&e))? {
        roots.add(cert.map_err(|e| unusable(&e))?).map_err(|e| unusable(&e))?;
    }
    if roots.is_empty() {
        return Err(unusable(&"holds no certificate"));
    }
    Ok(roots)
}

/// TLS to PostgreSQL whose server certificate a CA in the PEM file `ca` signed.
fn tls_checked_by(ca: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Io(format!("TLS to the store: {e}")))?
        .with_root_certificates(store_ca(ca)?)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// An open connection of either database.
pub(super) enum Connection {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConnection>),
}

/// A PostgreSQL connection, the statements it has prepared, and where it connects again when
/// the server drops it.
pub(super) struct PgConnection {
    client: postgres::Client,
    prepared: HashMap<String, postgres::Statement>,
    url: String,
    ca: Option<PathBuf>,
}

/// How long a connection to PostgreSQL may take to be made, unless the URL says
/// (`connect_timeout`): a database host that is gone makes the store fail, not wait for minutes.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// How long what was sent to PostgreSQL may go unacknowledged before the connection is given up
/// (`TCP_USER_TIMEOUT`), unless the URL says (`tcp_user_timeout`): a network that went silent
/// fails the transaction, and the next one connects again.
const SILENT_FOR: Duration = Duration::from_secs(30);

/// Connects to PostgreSQL at `url`: over TLS, the server's certificate checked against the CAs
/// in the PEM file `ca`, when given.
fn connect(url: &str, ca: Option<&Path>) -> Result<postgres::Client, StoreError> {
    let mut config: postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_WITHIN);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(SILENT_FOR);
    }
    let mut client = match ca {
        Some(ca) => {
            // Never `prefer`: a server (or someone between) refusing TLS must not get plain text.
            config.ssl_mode(postgres::config::SslMode::Require);
            config.connect(tls_checked_by(ca)?)?
        }
        None => config.connect(postgres::NoTls)?,
    };
    // A member frozen inside a transaction lets go of its locks, and no member waits on a lock
    // for ever: the job fails, and its work is tried again.
    client.batch_execute("SET idle_in_transaction_session_timeout = '60s'; SET lock_timeout = '10s'")?;
    Ok(client)
}

impl Connection {
    /// Connects to PostgreSQL at `url`: over TLS, the server's certificate checked against the
    /// CAs in the PEM file `ca`, when given.
    pub(super) fn postgres(url: &str, ca: Option<&Path>) -> Result<Connection, StoreError> {
        Ok(Connection::Postgres(Box::new(PgConnection {
            client: connect(url, ca)?,
            prepared: HashMap::new(),
            url: url.to_owned(),
            ca: ca.map(Path::to_owned),
        })))
    }

    /// Begins a transaction: a read-write one of the writer (`durable`: its commit waits for the
    /// disk), or a read-only one that sees one moment's committed state.
    ///
    /// On PostgreSQL, a connection the server dropped (it restarted, failed over, or ended it) is
    /// made again, once, and the transaction begun on it: nothing had begun, so nothing is lost.
    pub(super) fn begin(&mut self, kind: Begin) -> Result<Sql<'_>, StoreError> {
        match self {
            Connection::Sqlite(c) => {
                let behavior = match kind {
                    Begin::Read => rusqlite::TransactionBehavior::Deferred,
                    Begin::Write { .. } => rusqlite::TransactionBehavior::Immediate,
                };
                Ok(Sql::Sqlite(rusqlite::Transaction::new_unchecked(c, behavior)?))
            }
            Connection::Postgres(pg) => {
                // One round trip; a write learns its transaction's id, to ask after a commit in doubt.
                let start = match kind {
                    Begin::Read => "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                    Begin::Write { durable: false } => {
                        "BEGIN; SET LOCAL synchronous_commit TO OFF; SELECT txid_current()::text"
                    }
                    Begin::Write { durable: true } => "BEGIN; SELECT txid_current()::text",
                };
                let mut reconnected = false;
                let xid = match begun(&mut pg.client, start) {
                    Ok(xid) => xid,
                    Err(e) if !pg.client.is_closed() => {
                        // `BEGIN` may have run before what followed it failed.
                        let _ = pg.client.batch_execute("ROLLBACK");
                        return Err(e.into());
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = super::postgres_error(&e),
                            "the store's connection was lost; connecting again"
                        );
                        pg.client = connect(&pg.url, pg.ca.as_deref())?;
                        pg.prepared.clear();
                        reconnected = true;
                        let xid = begun(&mut pg.client, start)?;
                        tracing::info!("connected to the store again");
                        xid
                    }
                };
                let PgConnection { client, prepared, url, ca } = &mut **pg;
                let t = PgTx { client, open: true, reconnected, xid, url, ca: ca.as_deref() };
                Ok(Sql::Postgres { t: RefCell::new(t), prepared: RefCell::new(prepared) })
            }
        }
    }
}

/// Runs `start`, which begins a transaction: the transaction's id if it selects one.
fn begun(client: &mut postgres::Client, start: &str) -> Result<Option<i64>, postgres::Error> {
    let xid = client.simple_query(start)?.into_iter().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|x| x.parse().ok()),
        _ => None,
    });
    Ok(xid)
}

/// Whether transaction `xid`, whose `COMMIT` lost its connection before the answer came, was
/// committed: asked on a new connection, once the server has finished it.
fn committed_in_doubt(url: &str, ca: Option<&Path>, xid: i64) -> Result<bool, StoreError> {
    let mut client = connect(url, ca)?;
    let began = std::time::Instant::now();
    loop {
        let status: Option<String> = client.query_one("SELECT txid_status($1)", &[&xid])?.get(0);
        match status.as_deref() {
            Some("in progress") if began.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            status => return Ok(status == Some("committed")),
        }
    }
}

/// A transaction begun on a PostgreSQL connection: rolled back unless committed.
pub(crate) struct PgTx<'c> {
    client: &'c mut postgres::Client,
    open: bool,
    /// Begun on a connection made again: the server may be another (a failover).
    reconnected: bool,
    /// The transaction's id (writes), and where to ask whether it committed when its `COMMIT`
    /// lost the connection.
    xid: Option<i64>,
    url: &'c str,
    ca: Option<&'c Path>,
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if self.open && !self.client.is_closed() {
            if let Err(e) = self.client.batch_execute("ROLLBACK") {
                tracing::warn!(error = super::postgres_error(&e), "the store could not roll a transaction back");
            }
        }
    }
}

/// What kind of transaction [`Connection::begin`] opens.
#[derive(Debug, Clone, Copy)]
pub(super) enum Begin {
    Read,
    Write { durable: bool },
}

/// An open transaction, on either database: what every statement of the store runs in.
pub(crate) enum Sql<'c> {
    Sqlite(rusqlite::Transaction<'c>),
    Postgres { t: RefCell<PgTx<'c>>, prepared: RefCell<&'c mut HashMap<String, postgres::Statement>> },
}

impl Sql<'_> {
    /// Whether this is PostgreSQL, whose few statements that differ are chosen by it.
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Sql::Postgres { .. })
    }

    /// Whether the connection was made again to begin this transaction (PostgreSQL's server
    /// dropped it): what was read before may be gone, if a replica took over.
    pub(crate) fn reconnected(&self) -> bool {
        matches!(self, Sql::Postgres { t, .. } if t.borrow().reconnected)
    }

    /// What a claim's inner `SELECT` ends with: on PostgreSQL, where members claim work side by
    /// side, `FOR UPDATE OF table SKIP LOCKED` (rows another member is claiming are passed over,
    /// not waited for); nothing on SQLite, whose one writer claims alone.
    pub(crate) fn skip_locked(&self, table: &str) -> String {
        match self {
            Sql::Sqlite(_) => String::new(),
            Sql::Postgres { .. } => format!(" FOR UPDATE OF {table} SKIP LOCKED"),
        }
    }

    /// Holds the lock named `what` (no NUL in it) until this transaction ends, on PostgreSQL, where another
    /// member's transaction may be deciding the same thing (whether a request is known, a key
    /// taken): it waits for that one to commit, and then sees what it decided. Nothing on SQLite,
    /// whose one writer decides alone.
    pub(crate) fn lock(&self, what: &str) -> Result<(), StoreError> {
        if self.is_postgres() {
            self.query_row("SELECT pg_advisory_xact_lock(hashtextextended(?1, 0))", [what], |_| Ok(()))?;
        }
        Ok(())
    }

    /// The prepared statement of `sql` on this PostgreSQL connection.
    fn pg_statement(
        t: &mut postgres::Client,
        prepared: &mut HashMap<String, postgres::Statement>,
        sql: &str,
    ) -> Result<postgres::Statement, StoreError> {
        if let Some(s) = prepared.get(sql) {
            return Ok(s.clone());
        }
        let statement = t.prepare(&postgres_text(sql)).inspect_err(
            |e| tracing::error!(error = super::postgres_error(e), %sql, "PostgreSQL refused a statement of the store"),
        )?;
        prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Runs a statement; returns how many rows it changed.
    pub(crate) fn exec(&self, sql: &str, params: impl Params) -> Result<usize, StoreError> {
        params.with(|p| match self {
            Sql::Sqlite(t) => {
                Ok(t.prepare_cached(sql)?.execute(rusqlite::params_from_iter(p.iter().map(|v| Bind(*v))))?)
            }
            Sql::Postgres { t, prepared } => {
                let t = &mut *t.borrow_mut().client;
                let statement = Self::pg_statement(t, &mut prepared.borrow_mut(), sql)?;
                let binds: Vec<PgBind> = p.iter().map(|v| PgBind(v.value())).collect();
                let refs: Vec<&(dyn ToSql + Sync)> = binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
                Ok(t.execute(&statement, &refs)? as usize)
            }
        })
    }

    /// Each row of a query, read by `f`.
    pub(crate) fn query<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        params.with(|p| match self {
            Sql::Sqlite(t) => {
                let mut statement = t.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(p.iter().map(|v| Bind(*v))))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(f(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Sql::Postgres { t, prepared } => {
                let t = &mut *t.borrow_mut().client;
                let statement = Self::pg_statement(t, &mut prepared.borrow_mut(), sql)?;
                let binds: Vec<PgBind> = p.iter().map(|v| PgBind(v.value())).collect();
                let refs: Vec<&(dyn ToSql + Sync)> = binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
                t.query(&statement, &refs)?.iter().map(|r| f(&Row::Postgres(r))).collect()
            }
        })
    }

    /// The first row of a query, read by `f`; [`StoreError::NoRow`] when there is none
    /// ([`OptionalExtension::optional`]).
    pub(crate) fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut f = Some(f);
        let first = self.query(sql, params, |r| f.take().map(|f| f(r)).transpose())?;
        first.into_iter().flatten().next().ok_or(StoreError::NoRow)
    }

    /// Runs statements of no parameters and no result, separated by `;` (a migration).
    pub(crate) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Sql::Sqlite(t) => Ok(t.execute_batch(sql)?),
            Sql::Postgres { t, .. } => Ok(t.borrow_mut().client.batch_execute(sql)?),
        }
    }

    /// Commits.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        match self {
            Sql::Sqlite(t) => Ok(t.commit()?),
            Sql::Postgres { t, .. } => {
                let mut t = t.into_inner();
                let done = t.client.batch_execute("COMMIT");
                t.open = false;
                match (done, t.xid) {
                    (Ok(()), _) => Ok(()),
                    // The server may have committed before the connection went: a write told
                    // "not stored" that was stored would be sent again by its host.
                    (Err(e), Some(xid)) if t.client.is_closed() => match committed_in_doubt(t.url, t.ca, xid) {
                        Ok(true) => {
                            tracing::warn!(xid, "the store's connection went during a commit, which took effect");
                            Ok(())
                        }
                        Ok(false) => Err(e.into()),
                        Err(asked) => Err(StoreError::Io(format!(
                            "the connection went during a commit, and whether it took effect is unknown ({asked}): {}",
                            super::postgres_error(&e)
                        ))),
                    },
                    (Err(e), _) => Err(e.into()),
                }
            }
        }
    }
}

/// A parameter bound for SQLite.
struct Bind<'a>(&'a dyn Param);

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ValueRef as V;
        Ok(rusqlite::types::ToSqlOutput::Borrowed(match self.0.value() {
            ValueRef::Null => V::Null,
            ValueRef::Int(i) => V::Integer(i),
            ValueRef::Real(f) => V::Real(f),
            ValueRef::Text(t) => V::Text(t),
            ValueRef::Blob(b) => V::Blob(b),
        }))
    }
}

/// A parameter bound for PostgreSQL, as the type the server inferred for it.
#[derive(Debug)]
struct PgBind<'a>(ValueRef<'a>);

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for PgBind<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        let wrong = || -> BoxError { format!("cannot bind {:?} as {ty}", self.0).into() };
        match self.0 {
            ValueRef::Null => Ok(IsNull::Yes),
            ValueRef::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i).map_err(|_| wrong())?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i).map_err(|_| wrong())?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => Err(wrong()),
            },
            ValueRef::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (f as f32).to_sql(ty, out),
                _ => Err(wrong()),
            },
            ValueRef::Text(t) if t.contains(&0) => Err("PostgreSQL's text cannot hold a NUL byte".into()),
            ValueRef::Text(t) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    std::str::from_utf8(t)?.to_sql(&Type::TEXT, out)
                }
                Type::BYTEA => t.to_sql(ty, out),
                _ => Err(wrong()),
            },
            ValueRef::Blob(b) => match *ty {
                Type::BYTEA => b.to_sql(ty, out),
                _ => Err(wrong()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A column read from PostgreSQL.
struct PgValue<'a>(ValueRef<'a>);

impl<'a> FromSql<'a> for PgValue<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(PgValue(match *ty {
            Type::INT8 => ValueRef::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => ValueRef::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => ValueRef::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => ValueRef::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => ValueRef::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => ValueRef::Real(f32::from_sql(ty, raw)?.into()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ValueRef::Text(raw),
            Type::BYTEA => ValueRef::Blob(raw),
            _ => return Err(format!("the store does not read columns of type {ty}").into()),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(PgValue(ValueRef::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A statement's text for PostgreSQL: SQLite's `?1` parameters become `$1` (outside quotes).
pub(crate) fn postgres_text(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '?') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;
    use crate::store::test_postgres;

    /// Whether the connection is encrypted, as its server sees it.
    fn encrypted(connection: &mut Connection) -> bool {
        let Connection::Postgres(pg) = connection else { panic!("not PostgreSQL") };
        pg.client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap().get(0)
    }

    #[test]
    fn the_store_over_tls_takes_only_a_server_certificate_of_its_ca_for_its_host() {
        let Some(url) = test_postgres::database_or_skip("tls to the store") else { return };
        let ca = test_postgres::ca_file();
        assert!(encrypted(&mut Connection::postgres(&url, Some(&ca)).unwrap()));
        assert!(!encrypted(&mut Connection::postgres(&url, None).unwrap()), "no TLS without store.ca");

        // Another CA's name on the server: refused.
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other-ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();
        let err = Connection::postgres(&url, Some(&other)).err().expect("a server certificate of another CA");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");

        // The right CA, but the certificate is for 127.0.0.1, not the host the URL names.
        let elsewhere = format!("{}?hostaddr=127.0.0.1", url.replace("@127.0.0.1:", "@localhost:"));
        let err = Connection::postgres(&elsewhere, Some(&ca)).err().expect("a certificate for another host");
        assert!(err.to_string().contains("not valid for name \"localhost\""), "{err}");

        // A file that holds no certificate says what to give.
        std::fs::write(&other, "not a certificate").unwrap();
        let err = Connection::postgres(&url, Some(&other)).err().unwrap().to_string();
        assert!(err.contains("holds no certificate") && err.contains("the CA that signed"), "{err}");
    }

    /// A transaction whose `COMMIT` lost its connection is asked after by its id: committed, or
    /// not (rolled back, or never committed).
    #[test]
    fn a_commit_in_doubt_is_asked_after_by_its_transaction_id() {
        let Some(url) = test_postgres::database_or_skip("a commit in doubt") else { return };
        let mut conn = Connection::postgres(&url, None).unwrap();
        let xid = |t: &Sql<'_>| match t {
            Sql::Postgres { t, .. } => t.borrow().xid.expect("a write knows its transaction id"),
            Sql::Sqlite(_) => unreachable!(),
        };
        let t = conn.begin(Begin::Write { durable: true }).unwrap();
        let kept = xid(&t);
        t.commit().unwrap();
        let t = conn.begin(Begin::Write { durable: false }).unwrap();
        let dropped = xid(&t);
        drop(t);
        assert!(committed_in_doubt(&url, None, kept).unwrap());
        assert!(!committed_in_doubt(&url, None, dropped).unwrap());
    }

    /// Someone between the member and its database answers "no TLS here": the member says
    /// nothing more, in particular not its user name and database in plain text.
    #[test]
    fn a_store_refusing_tls_hears_nothing_but_the_request_for_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("postgres://ferry:secret@127.0.0.1:{}/ferry", listener.local_addr().unwrap().port());
        let impostor = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut asked = [0u8; 8];
            peer.read_exact(&mut asked).unwrap();
            peer.write_all(b"N").unwrap();
            let mut rest = Vec::new();
            let _ = peer.read_to_end(&mut rest);
            (asked, rest)
        });
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let err = Connection::postgres(&url, Some(&ca)).err().expect("a server without TLS");
        let (asked, rest) = impostor.join().unwrap();
        // SSLRequest: length 8, code 80877103.
        assert_eq!(asked, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        assert!(rest.is_empty(), "sent in plain text after TLS was refused: {:?}", String::from_utf8_lossy(&rest));
        assert!(err.to_string().to_lowercase().contains("tls"), "{err}");
    }

    #[test]
    fn parameters_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            super::postgres_text("SELECT '?1', \"a?2\" FROM t WHERE a = ?1 AND b IN (?2, ?10)"),
            "SELECT '?1', \"a?2\" FROM t WHERE a = $1 AND b IN ($2, $10)"
        );
    }
}
