//! The embedded SQLite behind [`super::Db`]: one writer thread that commits
//! whatever changes are queued in one transaction (group commit), and a few
//! reader threads, each with its own connection (WAL: readers never wait for
//! the writer). The async workers only send closures and await the answer.
//!
//! Why not a pool crate: a change must share its transaction with the
//! changes queued beside it, each in its own savepoint, and answer only once
//! the batch is committed; and deadpool-sqlite checks every connection out
//! with a query of its own on a blocking thread, doubling a read's cost.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::oneshot;

use super::sql::{self, Conn};
use super::{DbError, Result};

/// Most changes committed in one transaction.
const MAX_BATCH: usize = 256;

type Out = Box<dyn Any + Send>;
type Reply = oneshot::Sender<Result<Out>>;
type Change = Box<dyn FnOnce(&Conn<'_>) -> sql::Result<Out> + Send>;
type Raw = Box<dyn FnOnce(&mut Connection) -> rusqlite::Result<Out> + Send>;

/// What the writer does: a change (in a savepoint of the batch's
/// transaction), or work outside any transaction (a WAL checkpoint).
enum Work {
    Change(Change),
    Raw(Raw),
}

struct Job {
    work: Work,
    reply: Reply,
}

type Read = Box<dyn FnOnce(&Conn<'_>) + Send>;

/// The writer's and the readers' queues; the threads end when it is
/// dropped (each finishes what is queued first).
#[derive(Debug, Clone)]
pub struct Sqlite {
    writer: Sender<Job>,
    readers: Sender<Read>,
}

/// Sets what every connection needs: a busy timeout (another process, such
/// as `byoi db backup`, may hold a lock for a while) and foreign keys.
fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    // Every statement is prepared once per connection (`db::exec`,
    // `db::one`): there are fewer than this many.
    c.set_prepared_statement_cache_capacity(256);
    c.execute_batch("PRAGMA foreign_keys = ON;")
}

impl Sqlite {
    /// Starts the writer on `conn` (opened, migrated) and `readers` reader
    /// connections to the same file.
    pub fn start(conn: Connection, path: &Path, readers: usize) -> Result<Sqlite> {
        // WAL without a sync at each commit: a crash of the machine may lose
        // the last commits, never the database (the WAL is synced at each
        // checkpoint). Progress reports are most of the commits.
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        let (writer, jobs) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("byoi-db-writer".into())
            .spawn(move || write_loop(conn, &jobs))
            .map_err(|_| DbError::Closed)?;
        let (read_tx, reads) = crossbeam_channel::unbounded::<Read>();
        for i in 0..readers.max(1) {
            let c =
                Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
            configure(&c)?;
            // A change sent to a reader by mistake fails loudly.
            c.execute_batch("PRAGMA query_only = ON;")?;
            let reads = reads.clone();
            std::thread::Builder::new()
                .name(format!("byoi-db-reader-{i}"))
                .spawn(move || {
                    let c = Conn::sqlite(&c);
                    while let Ok(read) = reads.recv() {
                        read(&c);
                    }
                })
                .map_err(|_| DbError::Closed)?;
        }
        Ok(Sqlite { writer, readers: read_tx })
    }

    /// Opens (creating) the database file for the writer.
    pub fn open_writer(path: &Path) -> Result<Connection> {
        let c = Connection::open(path)?;
        configure(&c)?;
        c.execute_batch("PRAGMA journal_mode = WAL;")?;
        Ok(c)
    }

    /// Runs `f` on a reader connection (a snapshot of what is committed).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let read: Read = Box::new(move |c| {
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(c)));
            let _ = tx.send(out.map_err(|_| DbError::Panicked).and_then(|r| r.map_err(DbError::from)));
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
        self.send(Work::Change(Box::new(move |c| f(c).map(|t| Box::new(t) as Out)))).await
    }

    /// Runs `f` on the writer's connection outside any transaction.
    pub async fn raw<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        self.send(Work::Raw(Box::new(move |c| f(c).map(|t| Box::new(t) as Out)))).await
    }

    async fn send<T: 'static>(&self, work: Work) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(Job { work, reply }).map_err(|_| DbError::Closed)?;
        let out = rx.await.map_err(|_| DbError::Closed)??;
        out.downcast::<T>().map(|t| *t).map_err(|_| DbError::Closed)
    }
}

/// The writer: takes the next job, and with it every change queued behind
/// it (up to [`MAX_BATCH`]) into one transaction.
fn write_loop(mut conn: Connection, jobs: &Receiver<Job>) {
    let mut next = None;
    loop {
        let Some(job) = next.take().or_else(|| jobs.recv().ok()) else { return };
        let f = match job.work {
            Work::Raw(f) => {
                let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut conn)));
                let _ = job.reply.send(out.map_err(|_| DbError::Panicked).and_then(|r| r.map_err(DbError::from)));
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
        commit(&mut conn, batch);
    }
}

/// Runs each change in its own savepoint of one transaction, commits, and
/// only then answers each (a failed commit fails them all).
fn commit(conn: &mut Connection, batch: Vec<(Change, Reply)>) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let message = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(DbError::Commit(message.clone())));
            }
            return;
        }
    };
    let mut done = Vec::with_capacity(batch.len());
    for (f, reply) in batch {
        let out = match tx.savepoint() {
            Ok(sp) => match std::panic::catch_unwind(AssertUnwindSafe(|| f(&Conn::sqlite(&sp)))) {
                // Dropped without a commit, a savepoint rolls back.
                Err(_) => Err(DbError::Panicked),
                Ok(Err(e)) => Err(DbError::from(e)),
                Ok(Ok(out)) => sp.commit().map(|()| out).map_err(DbError::from),
            },
            Err(e) => Err(DbError::from(e)),
        };
        done.push((reply, out));
    }
    match tx.commit() {
        Ok(()) => {
            for (reply, out) in done {
                let _ = reply.send(out);
            }
        }
        Err(e) => {
            let message = e.to_string();
            for (reply, _) in done {
                let _ = reply.send(Err(DbError::Commit(message.clone())));
            }
        }
    }
}
