//! One way to run SQL on either database the controller keeps its state
//! in: the embedded SQLite, or a PostgreSQL several controllers share.
//!
//! The statements are written once, in the SQL both understand, with
//! SQLite's numbered parameters (`?1`, `?2`; PostgreSQL's `$1` is derived).
//! Values cross as [`Value`] (integers, reals, text, bytes, null), the
//! controller's enums by their wire names; a row is read whole into a
//! [`Row`] before the next statement runs, so a loop over rows may query
//! again. Each connection prepares a statement once and keeps it.
//!
//! Hand-written rather than sqlx's `Any` driver: the SQLite side stays
//! rusqlite (bundled, synchronous, on the controller's own threads, with
//! its savepoints and backups), and what is shared is this small surface.

use std::cell::RefCell;
use std::collections::HashMap;

use byoi_wire::agent::{Action, LogLevel};
use byoi_wire::{BootMode, BootTarget, ErrorCode, Stage, Status};

/// A value as both databases store it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer (SQLite INTEGER, PostgreSQL BIGINT).
    Int(i64),
    /// A real (DOUBLE PRECISION).
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes (BLOB, BYTEA).
    Blob(Vec<u8>),
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// A query that must return a row returned none.
    #[error("no row")]
    NoRows,
    /// A column held something its reader cannot take.
    #[error("column {0}: {1}")]
    Column(usize, String),
    /// A value could not be put in its column.
    #[error("encoding a value: {0}")]
    Encode(String),
    /// SQLite said no.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no.
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
}

/// What statements return.
pub type Result<T, E = SqlError> = std::result::Result<T, E>;

impl SqlError {
    /// Whether the connection to PostgreSQL broke (a restart, a failover,
    /// an administrator's kill): it must be made again.
    pub fn connection_lost(&self) -> bool {
        match self {
            SqlError::Postgres(e) => {
                e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
            }
            _ => false,
        }
    }
}

/// `Ok(None)` for [`SqlError::NoRows`].
pub trait Optional<T> {
    /// The row, if there was one.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> Optional<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(t) => Ok(Some(t)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Something a statement may take as a parameter.
pub trait ToValue {
    /// As stored.
    fn to_value(&self) -> Value;
}

/// Something a column may be read as.
pub trait FromValue: Sized {
    /// From what was stored; `Err` says why not.
    fn from_value(v: &Value) -> Result<Self, String>;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }

        impl FromValue for $t {
            fn from_value(v: &Value) -> Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|_| format!("{i} is out of range")),
                    v => Err(format!("{v:?} is no integer")),
                }
            }
        }
    )*};
}
integers!(i64, i32, u32, u64, usize, u16, u8);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self, String> {
        i64::from_value(v).map(|i| i != 0)
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Real(r) => Ok(*r),
            Value::Int(i) => Ok(*i as f64),
            v => Err(format!("{v:?} is no number")),
        }
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            v => Err(format!("{v:?} is no text")),
        }
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            v => Err(format!("{v:?} is no bytes")),
        }
    }
}

/// The wire's enums, stored by their names; a name this controller does
/// not know is an error (the database holds only what it wrote).
macro_rules! by_name {
    ($($t:ident),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Text(self.as_str().to_owned())
            }
        }

        impl FromValue for $t {
            fn from_value(v: &Value) -> Result<Self, String> {
                let s = String::from_value(v)?;
                $t::from_name(&s).ok_or_else(|| format!("{s:?} is no {}", stringify!($t)))
            }
        }
    )*};
}
by_name!(Action, LogLevel, BootMode, BootTarget, ErrorCode, Stage, Status);

/// A statement's parameters: `()`, or an array of values (`[x]`,
/// [`params!`]).
pub trait Params {
    /// As stored.
    fn values(&self) -> Vec<Value>;
}

impl Params for () {
    fn values(&self) -> Vec<Value> {
        Vec::new()
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

/// Parameters of different types: `params![name, t]`.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        [$(&$p as &dyn $crate::db::sql::ToValue),*]
    };
}
pub(crate) use params;

/// A column's place in a row (only `usize`, so that `r.get(0)` needs no
/// suffix).
pub trait Column {
    /// Its index.
    fn index(self) -> usize;
}

impl Column for usize {
    fn index(self) -> usize {
        self
    }
}

/// One row, read whole.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `i` as a `T`. (The first type parameter keeps rusqlite's
    /// `get::<_, T>` spelling.)
    pub fn get<I: Column, T: FromValue>(&self, i: I) -> Result<T> {
        let i = i.index();
        let v = self.0.get(i).ok_or_else(|| SqlError::Column(i, "no such column".into()))?;
        T::from_value(v).map_err(|e| SqlError::Column(i, e))
    }
}

/// A connection, or the transaction a change runs in.
pub struct Conn<'a> {
    inner: RefCell<Inner<'a>>,
    /// PostgreSQL's time, asked once per connection handle (a batch, a
    /// read).
    now: std::cell::Cell<Option<i64>>,
}

enum Inner<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(&'a mut Pg),
}

/// PostgreSQL's error with its detail (the server's message, not only
/// "db error").
fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// A PostgreSQL connection and the statements it prepared, by their text
/// as written (with `?N`).
pub struct Pg {
    client: postgres::Client,
    prepared: HashMap<String, postgres::Statement>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("prepared", &self.prepared.len()).finish()
    }
}

impl Pg {
    /// Connects to `url` (`postgres://user:password@host:port/database`,
    /// or key=value settings).
    pub fn connect(url: &str) -> Result<Pg> {
        let mut config: postgres::Config = url.parse()?;
        // A server that vanished without closing its sockets (a failover,
        // a cut cable) is noticed within a minute rather than never: the
        // connection then counts as lost and is made again.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        config
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(15))
            .keepalives_interval(std::time::Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(std::time::Duration::from_secs(60));
        let client = config.connect(postgres::NoTls)?;
        Ok(Pg { client, prepared: HashMap::new() })
    }

    /// Whether the connection broke (the server restarted or failed
    /// over): a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&dollars(sql))?;
        self.prepared.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// SQLite's `?N` parameters as PostgreSQL's `$N`, outside quoted text.
fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

impl<'a> Conn<'a> {
    /// Statements on SQLite's connection `c`.
    pub fn sqlite(c: &'a rusqlite::Connection) -> Conn<'a> {
        Conn { inner: RefCell::new(Inner::Sqlite(c)), now: std::cell::Cell::new(None) }
    }

    /// Statements on the PostgreSQL connection `c`.
    pub fn postgres(c: &'a mut Pg) -> Conn<'a> {
        Conn { inner: RefCell::new(Inner::Postgres(c)), now: std::cell::Cell::new(None) }
    }

    /// Whether this is PostgreSQL (for the few statements that differ).
    pub fn is_postgres(&self) -> bool {
        matches!(*self.inner.borrow(), Inner::Postgres(_))
    }

    /// `select` with the rows it finds locked until the transaction ends
    /// (`FOR UPDATE`; with `skip_locked`, rows another transaction holds
    /// are passed over rather than waited for): on PostgreSQL, where other
    /// controllers write too. SQLite has one writer, whose transaction
    /// already excludes every other: `select` as it is.
    pub fn locking(&self, select: &str, skip_locked: bool) -> String {
        match (self.is_postgres(), skip_locked) {
            (false, _) => select.to_owned(),
            (true, false) => format!("{select} FOR UPDATE"),
            (true, true) => format!("{select} FOR UPDATE SKIP LOCKED"),
        }
    }

    /// The time, in Unix seconds: the database server's on PostgreSQL
    /// (controllers on several machines agree on deadlines whatever their
    /// clocks; a batch's changes share its start), this machine's on
    /// SQLite (one controller).
    pub fn now(&self) -> Result<i64> {
        if !self.is_postgres() {
            return Ok(super::now());
        }
        if let Some(t) = self.now.get() {
            return Ok(t);
        }
        let t = self.query_row("SELECT CAST(floor(extract(epoch FROM now())) AS BIGINT)", (), |r| r.get(0))?;
        self.now.set(Some(t));
        Ok(t)
    }

    /// Runs a statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        let values = params.values();
        match &mut *self.inner.borrow_mut() {
            Inner::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(values.iter()))?),
            Inner::Postgres(pg) => {
                let stmt = pg.statement(sql)?;
                let n = pg.client.execute(&stmt, &pg_params(&values))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Every row of a query.
    pub fn rows(&self, sql: &str, params: impl Params) -> Result<Vec<Row>> {
        let values = params.values();
        match &mut *self.inner.borrow_mut() {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let width = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(Row((0..width).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<_>>()?));
                }
                Ok(out)
            }
            Inner::Postgres(pg) => {
                let stmt = pg.statement(sql)?;
                let rows = pg.client.query(&stmt, &pg_params(&values))?;
                rows.iter()
                    .map(|r| Ok(Row((0..r.len()).map(|i| r.try_get::<_, Value>(i)).collect::<Result<_, _>>()?)))
                    .collect()
            }
        }
    }

    /// Every row of a query, each through `f`.
    pub fn query_map<T>(&self, sql: &str, params: impl Params, f: impl FnMut(&Row) -> Result<T>) -> Result<Vec<T>> {
        self.rows(sql, params)?.iter().map(f).collect()
    }

    /// The first row of a query through `f`; [`SqlError::NoRows`] if
    /// there is none.
    pub fn query_row<T>(&self, sql: &str, params: impl Params, f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        f(self.rows(sql, params)?.first().ok_or(SqlError::NoRows)?)
    }

    /// Statements without parameters or results, `;`-separated.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &mut *self.inner.borrow_mut() {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(pg) => Ok(pg.client.batch_execute(sql)?),
        }
    }
}

fn pg_params(values: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn postgres::types::ToSql + Sync)).collect()
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, BoxError> {
        use postgres::types::Type;
        match self {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                _ => Err(format!("an integer for a parameter of type {ty}").into()),
            },
            Value::Real(r) => match *ty {
                Type::FLOAT8 => r.to_sql(ty, out),
                Type::FLOAT4 => (*r as f32).to_sql(ty, out),
                _ => Err(format!("a real for a parameter of type {ty}").into()),
            },
            Value::Text(t) => t.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl<'a> postgres::types::FromSql<'a> for Value {
    fn from_sql(ty: &postgres::types::Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        use postgres::types::Type;
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Value::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &postgres::types::Type) -> Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl rusqlite::types::FromSql for Value {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        use rusqlite::types::ValueRef;
        Ok(match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_the_postgres_way_outside_quotes() {
        assert_eq!(
            dollars("SELECT '?1', ?1 FROM t WHERE a = ?12 AND b <> 'it''s ?2' AND c IS ?"),
            "SELECT '?1', $1 FROM t WHERE a = $12 AND b <> 'it''s ?2' AND c IS ?"
        );
    }

    #[test]
    fn values_round_trip_through_sqlite() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let c = Conn::sqlite(&c);
        c.execute_batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, r REAL, n TEXT)").unwrap();
        let n: Option<String> = None;
        c.execute("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)", params![7i64, Status::Done, vec![1u8, 2], 0.5, n])
            .unwrap();
        let row = c.query_row("SELECT i, s, b, r, n FROM t WHERE s = ?1", ["done"], |r| Ok(r.clone())).unwrap();
        assert_eq!(row.get::<_, u32>(0).unwrap(), 7);
        assert_eq!(row.get::<_, Status>(1).unwrap(), Status::Done);
        assert_eq!(row.get::<_, Vec<u8>>(2).unwrap(), [1, 2]);
        assert_eq!(row.get::<_, f64>(3).unwrap(), 0.5);
        assert_eq!(row.get::<_, Option<String>>(4).unwrap(), None);
        let e = row.get::<_, Stage>(1).unwrap_err();
        assert_eq!(e.to_string(), "column 1: \"done\" is no Stage");
        assert!(c.query_row("SELECT i FROM t WHERE i = 8", (), |r| r.get::<_, i64>(0)).optional().unwrap().is_none());
    }
}
