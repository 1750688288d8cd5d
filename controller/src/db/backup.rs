//! `byoi db backup`: a consistent copy of the database while a controller
//! writes it, by SQLite's `VACUUM INTO` (one read transaction: the copy is
//! the database as of one instant, compacted, without its WAL), checked
//! before it is reported made. No migration runs: the copy has the schema
//! of the database, whatever this build's.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

/// The database's file in the data directory.
pub const FILE_NAME: &str = "byoi.sqlite";

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// Its schema version (`PRAGMA user_version`).
    pub schema: i64,
    /// Registered servers.
    pub servers: i64,
    /// Deployments, history included.
    pub deployments: i64,
}

/// Why a backup was not made.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No database where it was looked for.
    #[error("no database at {0}: is --data-dir the controller's?")]
    NoDatabase(PathBuf),
    /// The target exists: a backup never overwrites.
    #[error("{0} exists: a backup goes to a new file")]
    Exists(PathBuf),
    /// SQLite failed.
    #[error("backing up {from} to {to}")]
    Sqlite {
        /// The database.
        from: PathBuf,
        /// The target.
        to: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The copy does not pass SQLite's integrity check.
    #[error("the copy at {to} fails SQLite's integrity check: {report}; it was removed")]
    Corrupt {
        /// The target.
        to: PathBuf,
        /// What `PRAGMA integrity_check` said.
        report: String,
    },
}

/// Copies the database at `from` into the new file `to` (created with the
/// process's umask) and checks the copy.
pub fn backup(from: &Path, to: &Path) -> Result<Backup, BackupError> {
    if !from.is_file() {
        return Err(BackupError::NoDatabase(from.to_owned()));
    }
    if to.exists() {
        return Err(BackupError::Exists(to.to_owned()));
    }
    let sqlite = |source| BackupError::Sqlite { from: from.to_owned(), to: to.to_owned(), source };
    // Read-write without create: a WAL database is read with its -shm, and
    // a missing file is not made.
    let c = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sqlite)?;
    c.busy_timeout(std::time::Duration::from_secs(10)).map_err(sqlite)?;
    let target = to.to_str().ok_or_else(|| BackupError::Exists(to.to_owned()))?;
    c.execute("VACUUM INTO ?1", [target]).map_err(sqlite)?;
    drop(c);
    let copy = Connection::open_with_flags(to, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlite)?;
    let report: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(sqlite)?;
    if report != "ok" {
        drop(copy);
        let _ = std::fs::remove_file(to);
        return Err(BackupError::Corrupt { to: to.to_owned(), report });
    }
    let count = |table: &str| copy.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0));
    Ok(Backup {
        schema: copy.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sqlite)?,
        servers: count("servers").map_err(sqlite)?,
        deployments: count("deployments").map_err(sqlite)?,
    })
}
