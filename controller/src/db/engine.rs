//! The threads behind [`super::Db`]: writers that commit whatever changes
//! are queued in one transaction (group commit) — one on SQLite, a few on
//! PostgreSQL — and a few readers, each with its own connection. The async workers only send
//! closures and await the answer. The same for the embedded SQLite (WAL:
//! readers never wait for the writer) and for PostgreSQL.
//!
//! Why not a pool crate: a change must share its transaction with the
//! changes queued beside it, each in its own savepoint, and answer only once
//! the batch is committed; and deadpool-sqlite checks every connection out
//! with a query of its own on a blocking thread, doubling a read's cost.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::sql::{self, Conn, Pg, SqlError};
use super::{DbError, Result};

/// Most changes committed in one transaction.
const MAX_BATCH: usize = 256;

type Out = Box<dyn Any + Send>;
type Reply = oneshot::Sender<Result<Out>>;
type Change = Box<dyn FnOnce(&Conn<'_>) -> sql::Result<Out> + Send>;
/// Work on SQLite's connection; given `None` on PostgreSQL.
type Raw = Box<dyn FnOnce(Option<&mut Connection>) -> rusqlite::Result<Out> + Send>;

/// What the writer does: a change (in a savepoint of the batch's
/// transaction), or work on SQLite's connection outside any transaction
/// (a WAL checkpoint).
enum Work {
    Change(Change),
    Raw(Raw),
}

struct Job {
    work: Work,
    reply: Reply,
}

/// A read; `true` when it found the connection broken.
type Read = Box<dyn FnOnce(&Conn<'_>) -> bool + Send>;

/// One thread's connection.
enum Backend {
    Sqlite(Connection),
    /// A reader's connection is read-only, again after a reconnection.
    Postgres {
        pg: Option<Box<Pg>>,
        url: String,
        read_only: bool,
    },
}

impl Backend {
    /// Runs `f` on the connection; a PostgreSQL connection that broke
    /// (the server restarted, a failover) is made again first.
    fn with<T>(&mut self, f: impl FnOnce(&Conn<'_>) -> sql::Result<T>) -> sql::Result<T> {
        match self {
            Backend::Sqlite(c) => f(&Conn::sqlite(c)),
            Backend::Postgres { pg, url, read_only } => {
                if pg.as_ref().is_none_or(|p| p.is_closed()) {
                    *pg = None;
                    *pg = Some(Box::new(connect(url, *read_only)?));
                }
                let out = f(&Conn::postgres(pg.as_mut().expect("connected above")));
                if out.as_ref().is_err_and(SqlError::connection_lost) {
                    self.disconnect();
                }
                out
            }
        }
    }

    /// Drops a PostgreSQL connection found broken: the next use makes
    /// another.
    fn disconnect(&mut self) {
        if let Backend::Postgres { pg, .. } = self {
            *pg = None;
        }
    }

    fn begin(&self) -> &'static str {
        match self {
            // Take the write lock now, not at the first write: a batch
            // never fails half-way for another writer (`byoi db backup`).
            Backend::Sqlite(_) => "BEGIN IMMEDIATE",
            Backend::Postgres { .. } => "BEGIN",
        }
    }
}

/// The writer's and the readers' queues; the threads end when it is
/// dropped (each finishes what is queued first).
#[derive(Debug, Clone)]
pub struct Engine {
    /// One queue per writer: a server's changes always go to the same one.
    writers: Vec<Sender<Job>>,
    readers: Sender<Read>,
}

/// Sets what every SQLite connection needs: a busy timeout (another
/// process, such as `byoi db backup`, may hold a lock for a while), a
/// statement cache as large as the statements, and foreign keys.
fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.busy_timeout(Duration::from_secs(5))?;
    c.set_prepared_statement_cache_capacity(256);
    c.execute_batch("PRAGMA foreign_keys = ON;")
}

/// Opens (creating) a SQLite file for the writer, in WAL mode.
pub fn open_sqlite(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)?;
    configure(&c)?;
    c.execute_batch("PRAGMA journal_mode = WAL;")?;
    Ok(c)
}

/// A PostgreSQL connection; a reader's refuses changes (one sent to a
/// reader by mistake fails loudly).
fn connect(url: &str, read_only: bool) -> sql::Result<Pg> {
    let mut pg = Pg::connect(url)?;
    if read_only {
        Conn::postgres(&mut pg).execute_batch("SET default_transaction_read_only = on")?;
    }
    Ok(pg)
}

impl Engine {
    /// Starts the writer on SQLite's `conn` (opened, migrated) and
    /// `readers` reader connections to the same file.
    pub fn sqlite(conn: Connection, path: &Path, readers: usize) -> Result<Engine> {
        // WAL without a sync at each commit: a crash of the machine may lose
        // the last commits, never the database (the WAL is synced at each
        // checkpoint). Progress reports are most of the commits.
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        let mut conns = Vec::new();
        for _ in 0..readers.max(1) {
            let c =
                Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
            configure(&c)?;
            // A change sent to a reader by mistake fails loudly.
            c.execute_batch("PRAGMA query_only = ON;")?;
            conns.push(Backend::Sqlite(c));
        }
        Engine::start(vec![Backend::Sqlite(conn)], conns)
    }

    /// Starts `writers` writers on PostgreSQL, the first on `pg`
    /// (connected, migrated), and `readers` more connections to `url`,
    /// read-only. Several writers commit side by side (each statement is a
    /// round trip to the server); a server's changes all go to one of them
    /// ([`Engine::write_for`]), so their batches do not wait on each other
    /// for its rows.
    pub fn postgres(pg: Pg, url: &str, writers: usize, readers: usize) -> Result<Engine> {
        let backend = |pg, read_only| Backend::Postgres { pg: Some(Box::new(pg)), url: url.to_owned(), read_only };
        let mut ws = vec![backend(pg, false)];
        for _ in 1..writers.max(1) {
            ws.push(backend(connect(url, false)?, false));
        }
        let mut conns = Vec::new();
        for _ in 0..readers.max(1) {
            conns.push(backend(connect(url, true)?, true));
        }
        Engine::start(ws, conns)
    }

    fn start(writers: Vec<Backend>, readers: Vec<Backend>) -> Result<Engine> {
        let mut queues = Vec::new();
        for (i, writer) in writers.into_iter().enumerate() {
            let (queue, jobs) = crossbeam_channel::unbounded();
            queues.push(queue);
            std::thread::Builder::new()
                .name(format!("byoi-db-writer-{i}"))
                .spawn(move || write_loop(writer, &jobs))
                .map_err(|_| DbError::Closed)?;
        }
        let (read_tx, reads) = crossbeam_channel::unbounded::<Read>();
        for (i, mut backend) in readers.into_iter().enumerate() {
            let reads = reads.clone();
            std::thread::Builder::new()
                .name(format!("byoi-db-reader-{i}"))
                .spawn(move || {
                    while let Ok(read) = reads.recv() {
                        match backend.with(|c| Ok(read(c))) {
                            Ok(false) => {}
                            Ok(true) => backend.disconnect(),
                            // No connection: the read's reply is dropped
                            // with it, and its caller sees the database
                            // closed.
                            Err(e) => tracing::error!(error = %e, "database connection"),
                        }
                    }
                })
                .map_err(|_| DbError::Closed)?;
        }
        Ok(Engine { writers: queues, readers: read_tx })
    }

    /// Runs `f` on a reader connection (what is committed).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let read: Read = Box::new(move |c| {
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(c)));
            let lost = matches!(&out, Ok(Err(e)) if e.connection_lost());
            let _ = tx.send(out.map_err(|_| DbError::Panicked).and_then(|r| r.map_err(DbError::from)));
            lost
        });
        self.readers.send(read).map_err(|_| DbError::Closed)?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Runs `f` as one change: in its own savepoint of the writer's next
    /// transaction, kept if `f` returns `Ok`, undone if it fails; answers
    /// once that transaction is committed.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<T> + Send + 'static,
    ) -> Result<T> {
        self.change_on(0, f).await
    }

    /// [`Engine::write`] for a change to the server `key`: always on the
    /// same writer, so that two writers' batches never wait for each
    /// other's locks on one server's rows (and never deadlock on them).
    pub async fn write_for<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<T> + Send + 'static,
    ) -> Result<T> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let writer = BuildHasherDefault::<DefaultHasher>::default().hash_one(key) as usize % self.writers.len();
        self.change_on(writer, f).await
    }

    async fn change_on<T: Send + 'static>(
        &self,
        writer: usize,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<T> + Send + 'static,
    ) -> Result<T> {
        self.send(writer, Work::Change(Box::new(move |c| f(c).map(|t| Box::new(t) as Out)))).await
    }

    /// Runs `f` on the writer's SQLite connection outside any transaction;
    /// `None` on PostgreSQL.
    pub async fn raw<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<Option<T>> {
        self.send(
            0,
            Work::Raw(Box::new(move |c| match c {
                Some(c) => f(c).map(|t| Box::new(Some(t)) as Out),
                None => Ok(Box::new(None::<T>) as Out),
            })),
        )
        .await
    }

    async fn send<T: 'static>(&self, writer: usize, work: Work) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.writers[writer].send(Job { work, reply }).map_err(|_| DbError::Closed)?;
        let out = rx.await.map_err(|_| DbError::Closed)??;
        match out.downcast::<T>() {
            Ok(t) => Ok(*t),
            Err(_) => Err(DbError::Closed),
        }
    }
}

/// The writer: takes the next job, and with it every change queued behind
/// it (up to [`MAX_BATCH`]) into one transaction.
fn write_loop(mut backend: Backend, jobs: &Receiver<Job>) {
    let mut next = None;
    loop {
        let Some(job) = next.take().or_else(|| jobs.recv().ok()) else { return };
        let f = match job.work {
            Work::Raw(f) => {
                let c = match &mut backend {
                    Backend::Sqlite(c) => Some(c),
                    Backend::Postgres { .. } => None,
                };
                let out = match std::panic::catch_unwind(AssertUnwindSafe(|| f(c))) {
                    Err(_) => Err(DbError::Panicked),
                    Ok(r) => r.map_err(DbError::from),
                };
                let _ = job.reply.send(out);
                continue;
            }
            Work::Change(f) => f,
        };
        let mut batch = vec![(f, job.reply)];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(Job { work: Work::Change(f), reply }) => batch.push((f, reply)),
                Ok(raw) => {
                    next = Some(raw);
                    break;
                }
                Err(_) => break,
            }
        }
        commit(&mut backend, batch);
    }
}

/// Whether another transaction won against this one (PostgreSQL's
/// deadlock and serialization failures): worth trying again.
fn lost_a_race(e: &SqlError) -> bool {
    matches!(e, SqlError::Postgres(p) if p.code().is_some_and(|c| c.code() == "40P01" || c.code() == "40001"))
}

/// Runs each change in its own savepoint of one transaction, commits, and
/// only then answers each (a failed commit fails them all).
fn commit(backend: &mut Backend, batch: Vec<(Change, Reply)>) {
    let begin = backend.begin();
    let mut pending = Some(batch);
    let result = backend.with(|c| {
        c.execute_batch(begin)?;
        let batch = pending.take().expect("once");
        let mut done = Vec::with_capacity(batch.len());
        let mut broken = None;
        for (f, reply) in batch {
            match broken {
                // The transaction itself failed: nothing more runs in it.
                Some(_) => done.push((reply, Err(DbError::Closed))),
                None => match run_change(c, f) {
                    Ok(out) => done.push((reply, out)),
                    Err(e) => {
                        done.push((reply, Err(DbError::Closed)));
                        broken = Some(e);
                    }
                },
            }
        }
        // A savepoint that could not be made, released or rolled back
        // leaves the transaction in doubt (PostgreSQL would even answer
        // COMMIT of an aborted one with a silent rollback): all of it goes.
        let ended = match broken {
            Some(e) => Err(e),
            None => c.execute_batch("COMMIT"),
        };
        match ended {
            Ok(()) => Ok(done),
            Err(e) => {
                let _ = c.execute_batch("ROLLBACK");
                let message = e.to_string();
                for (reply, _) in done {
                    let _ = reply.send(Err(DbError::Commit(message.clone())));
                }
                Err(e)
            }
        }
    });
    match result {
        Ok(done) => {
            for (reply, out) in done {
                let _ = reply.send(out);
            }
        }
        // The replies of a batch that never began (no connection, or BEGIN
        // failed) are still here: each is told why.
        Err(e) => {
            for (_, reply) in pending.into_iter().flatten() {
                let _ = reply.send(Err(DbError::Commit(e.to_string())));
            }
        }
    }
}

/// One change in a savepoint: released when it succeeds, rolled back when
/// it fails or panics (its outcome, `Ok` either way). A change that lost a
/// race to another controller's transaction is [`DbError::Conflict`]: its
/// caller is told to try again. `Err`: the savepoint itself failed, and
/// with it the batch's transaction.
fn run_change(c: &Conn<'_>, f: Change) -> sql::Result<Result<Out>> {
    c.execute_batch("SAVEPOINT change")?;
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(c))) {
        Ok(Ok(out)) => {
            c.execute_batch("RELEASE SAVEPOINT change")?;
            Ok(Ok(out))
        }
        Ok(Err(e)) => {
            c.execute_batch("ROLLBACK TO SAVEPOINT change; RELEASE SAVEPOINT change")?;
            Ok(Err(if lost_a_race(&e) { DbError::Conflict(e.to_string()) } else { e.into() }))
        }
        Err(_) => {
            c.execute_batch("ROLLBACK TO SAVEPOINT change; RELEASE SAVEPOINT change")?;
            Ok(Err(DbError::Panicked))
        }
    }
}
