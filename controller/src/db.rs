//! The controller's state in SQLite, or in a PostgreSQL several
//! controllers share: servers, deployments (with their history), per-boot
//! agent tokens, the agents' forwarded log lines, power jobs and leases.
//!
//! The database runs on threads of its own ([`engine`]): writers that
//! commit queued changes together (group commit, each change in a
//! savepoint) and a few read-only connections, so the async workers never
//! block on it and a thousand agents' reports cost a handful of fsyncs a
//! second; every statement goes through [`sql`]. The SQLite schema
//! is versioned (`PRAGMA user_version`, `rusqlite_migration`), PostgreSQL's
//! by `byoi_schema` ([`POSTGRES_MIGRATIONS`]); the enums are
//! stored by their wire names. This module only persists: what a transition
//! changes is decided by [`lifecycle::on`], and [`Db::apply`] runs it inside
//! one transaction with the state it read.

use std::path::Path;
use std::sync::LazyLock;

use byoi_wire::agent::{Inventory, LogRecord};
use byoi_wire::{BootTarget, ErrorCode, Stage, Status};
use rusqlite_migration::{Migrations, M};
use sql::{params, Conn, Optional, Pg, SqlError};

use crate::lifecycle::{self, Claim, Deployment, Effect, Event, Named, State, Transition, TOKENS_PER_BOOT};
use crate::model::StoredRequest;
use crate::power::Power;

pub mod backup;
mod credentials;
mod discovered;
mod engine;
mod host_keys;
mod sessions;
mod sql;

pub use credentials::{ApplicationRow, CredentialRow, NewApplication, Requested};
pub use discovered::{Adopted, DiscoverBoot, DiscoveredRow, MAX_DISCOVERED, MAX_DISCOVERED_INVENTORY};
pub use sessions::{NewSession, SessionRow, MAX_SESSIONS};

/// Database errors; the API answers them with 500 (they are bugs or a
/// broken disk, never the caller's input), or 503 when they pass
/// ([`DbError::is_transient`]).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A statement failed.
    #[error("database: {0}")]
    Sql(#[from] SqlError),
    /// The schema could not be brought up to date.
    #[error("database schema: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A newer release's schema: this one cannot read it.
    #[error(
        "the database is at schema version {0}, written by a newer byoi release, which this one cannot read: \
         install that release again, or restore the backup taken before the upgrade (byoi db backup)"
    )]
    Newer(i64),
    /// The database threads are gone.
    #[error("database: the connection is closed")]
    Closed,
    /// A batch of changes could not be committed: none of it was kept.
    #[error("database: commit failed: {0}")]
    Commit(String),
    /// A database job panicked (a bug); what it changed was undone.
    #[error("database: a query panicked")]
    Panicked,
    /// Another controller's transaction won a deadlock or a serialization
    /// conflict against this change, which was undone.
    #[error("database: a concurrent change won: {0}")]
    Conflict(String),
}

impl DbError {
    /// Whether trying again later may succeed: the database is unreachable
    /// or restarting, or another controller's change won a race.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Closed | DbError::Commit(_) | DbError::Conflict(_) => true,
            // The next statement makes the connection again.
            DbError::Sql(e) => e.connection_lost(),
            _ => false,
        }
    }
}

/// Result alias.
pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// The schema, one step per release that changed it. Never edit a step
/// that has shipped: add one.
static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::new(vec![
        // 0.1.0, as it shipped (without user_version, hence IF NOT EXISTS).
        M::up(include_str!("migrations/01-initial.sql")),
        // Typed deployment specs, one running deployment per server in the
        // schema, forwarded agent logs.
        M::up_with_hook(include_str!("migrations/02-spec.sql"), crate::model::legacy::migrate_requests),
        // Rescue's SSH host keys.
        M::up(include_str!("migrations/03-host-keys.sql")),
        // Agent trust: expected boots, claims, the job's token, stalls.
        M::up(include_str!("migrations/04-agent-trust.sql")),
        // API credentials as OVHcloud's: applications and consumer keys.
        M::up(include_str!("migrations/05-credentials.sql")),
        // The version each server's agent said hello with.
        M::up(include_str!("migrations/06-agent-version.sql")),
        // Enlistment: machines no server has, discovered by the agent.
        M::up(include_str!("migrations/07-discovered.sql")),
        // The dashboard's sessions.
        M::up(include_str!("migrations/08-sessions.sql")),
        // Power cycles as leased jobs (several controllers).
        M::up(include_str!("migrations/09-power-jobs.sql")),
    ])
});

/// A registered server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerRow {
    /// OVH's serviceName.
    pub name: String,
    /// Its MACs, lowercase with colons.
    pub macs: Vec<String>,
    /// Its power driver.
    pub power: Power,
    /// Extra kernel arguments for the agent.
    pub kernel_args: Vec<String>,
    /// What it netboots into.
    pub boot_target: BootTarget,
    /// The agent's last inventory.
    pub inventory: Option<Inventory>,
    /// Unix time of the last agent contact.
    pub last_seen: Option<i64>,
    /// Unix time of registration.
    pub created_at: i64,
    /// The version its agent last said hello with.
    pub agent_version: Option<String>,
    /// The address the agent holding its boot calls from (read only: the
    /// lifecycle's claim).
    pub agent_address: Option<String>,
}

/// An agent log line, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptLog {
    /// Its id: increasing, a cursor for the next read.
    pub id: i64,
    /// Unix time the controller received it.
    pub at: i64,
    /// The line.
    pub record: LogRecord,
}

/// A deployment, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRow {
    /// Id.
    pub id: i64,
    /// Server name.
    pub server: String,
    /// What was asked.
    pub request: StoredRequest,
    /// `doing`, `done`, `error`.
    pub status: Status,
    /// Where it is.
    pub stage: Stage,
    /// Human message.
    pub message: String,
    /// Why it failed.
    pub error_code: Option<ErrorCode>,
    /// Bytes received by the agent.
    pub bytes_done: u64,
    /// Image size as served.
    pub bytes_total: Option<u64>,
    /// Shown by `GET …/bringYourOwnImage` (a DELETE clears it).
    pub current: bool,
    /// Unix time of the POST.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// Last report from the agent.
    pub last_report: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// The hash of the agent token the job was handed to.
    pub job_token: Option<String>,
}

impl DeploymentRow {
    fn lifecycle(&self) -> Deployment {
        Deployment {
            id: Some(self.id),
            current: self.current,
            status: self.status,
            stage: self.stage,
            message: self.message.clone(),
            code: self.error_code,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            job_to: self.job_token.clone(),
        }
    }
}

/// What `PUT /dedicated/server/{name}` changes (`None`: as it is).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerChange {
    /// Its MACs, all of them.
    pub macs: Option<Vec<String>>,
    /// Its power driver.
    pub power: Option<Power>,
    /// The agent's extra kernel arguments, all of them.
    pub kernel_args: Option<Vec<String>>,
}

/// What [`Db::delete_server`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The server and everything of it are gone.
    Done,
    /// No such server.
    NoServer,
    /// A deployment runs on it: nothing was deleted.
    Running {
        /// The deployment.
        id: i64,
        /// Its stage.
        stage: Stage,
    },
}

/// What the database says of deployments, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentStats {
    /// `(status, error code, count)`.
    pub by_status: Vec<(String, Option<String>, i64)>,
    /// Each successful deployment.
    pub done: Vec<Finished>,
    /// Bytes every deployment's agent received.
    pub bytes_written: u64,
    /// Registered servers.
    pub servers: i64,
    /// Servers whose agent called recently.
    pub agents_online: i64,
    /// Discovered machines (`--enlist`).
    pub discovered: i64,
}

/// A successful deployment's duration (request to end) and size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finished {
    /// Seconds from the request to the end.
    pub seconds: i64,
    /// Bytes written.
    pub bytes: u64,
}

/// What [`Db::apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// The transition the lifecycle chose.
    pub transition: Transition,
    /// The server's newest deployment afterwards.
    pub latest: Option<DeploymentRow>,
    /// The agent token minted for [`Effect::MintToken`].
    pub token: Option<String>,
    /// The power job of [`Effect::PowerCycle`], leased to this controller:
    /// run it with [`Db::finish_power_job`] at the end.
    pub power_job: Option<i64>,
}

/// What an event brings along for the database.
#[derive(Debug, Default)]
pub enum Payload {
    /// Nothing.
    #[default]
    None,
    /// The body of a new deployment, for [`Event::Post`].
    Request(Box<StoredRequest>),
    /// The inventory of a `hello`, kept on [`Effect::KeepInventory`].
    Inventory(Inventory),
    /// The log lines of a report, kept on [`Effect::KeepLogs`].
    Logs(Vec<LogRecord>),
}

/// Agent log lines kept per deployment (the newest).
pub const KEPT_LOGS: usize = 500;

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A fresh secret, two random UUIDs as hex (244 random bits): the API
/// token, agent tokens.
pub fn new_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string()
}

/// Hex SHA-256 of an agent token: only hashes are stored.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn size(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json_err(e: serde_json::Error) -> SqlError {
    SqlError::Encode(e.to_string())
}

fn from_json<T: serde::de::DeserializeOwned>(idx: usize, s: &str) -> sql::Result<T> {
    serde_json::from_str(s).map_err(|e| SqlError::Column(idx, e.to_string()))
}

const SERVER_COLS: &str =
    "name, power, kernel_args, boot_target, inventory, last_seen, created_at, agent_version, claim_addr";

fn server_row(c: &Conn<'_>, r: &sql::Row) -> sql::Result<ServerRow> {
    let name: String = r.get(0)?;
    let macs = c.query_map("SELECT mac FROM macs WHERE server = ?1 ORDER BY mac", [&name], |r| r.get(0))?;
    server_row_with(name, macs, r)
}

/// A server's row from the columns of [`SERVER_COLS`] and its MACs.
fn server_row_with(name: String, macs: Vec<String>, r: &sql::Row) -> sql::Result<ServerRow> {
    Ok(ServerRow {
        name,
        macs,
        power: from_json(1, &r.get::<_, String>(1)?)?,
        kernel_args: from_json(2, &r.get::<_, String>(2)?)?,
        boot_target: r.get(3)?,
        inventory: r.get::<_, Option<String>>(4)?.map(|s| from_json(4, &s)).transpose()?,
        last_seen: r.get(5)?,
        created_at: r.get(6)?,
        agent_version: r.get(7)?,
        agent_address: r.get(8)?,
    })
}

const DEPLOYMENT_COLS: &str = "id, server, request, status, stage, message, error_code, bytes_done, \
     bytes_total, current, created_at, updated_at, last_report, finished_at, job_token";

fn deployment_row(r: &sql::Row) -> sql::Result<DeploymentRow> {
    deployment_row_at(r, 0)
}

/// A deployment from the columns of [`DEPLOYMENT_COLS`], the first at `at`.
fn deployment_row_at(r: &sql::Row, at: usize) -> sql::Result<DeploymentRow> {
    Ok(DeploymentRow {
        id: r.get(at)?,
        server: r.get(at + 1)?,
        request: from_json(at + 2, &r.get::<_, String>(at + 2)?)?,
        status: r.get(at + 3)?,
        stage: r.get(at + 4)?,
        message: r.get(at + 5)?,
        error_code: r.get(at + 6)?,
        bytes_done: r.get::<_, i64>(at + 7)?.max(0) as u64,
        bytes_total: r.get::<_, Option<i64>>(at + 8)?.map(|t| t.max(0) as u64),
        current: r.get(at + 9)?,
        created_at: r.get(at + 10)?,
        updated_at: r.get(at + 11)?,
        last_report: r.get(at + 12)?,
        finished_at: r.get(at + 13)?,
        job_token: r.get(at + 14)?,
    })
}

fn latest(c: &Conn<'_>, server: &str) -> sql::Result<Option<DeploymentRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE server = ?1 ORDER BY id DESC LIMIT 1")
    });
    c.query_row(&SQL, [server], deployment_row).optional()
}

/// Every server with its newest deployment, in two queries whatever the
/// size of the fleet (a dashboard and `byoi servers` read it often).
fn fleet(c: &Conn<'_>) -> sql::Result<Vec<(ServerRow, Option<DeploymentRow>)>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let deployment_cols: Vec<String> = DEPLOYMENT_COLS.split(',').map(|col| format!("d.{}", col.trim())).collect();
        let server_cols: Vec<String> = SERVER_COLS.split(',').map(|col| format!("s.{}", col.trim())).collect();
        format!(
            "SELECT {}, {} FROM servers s LEFT JOIN deployments d \
             ON d.id = (SELECT max(id) FROM deployments WHERE server = s.name) ORDER BY s.name",
            server_cols.join(", "),
            deployment_cols.join(", ")
        )
    });
    let mut macs: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for r in c.rows("SELECT server, mac FROM macs ORDER BY server, mac", ())? {
        macs.entry(r.get(0)?).or_default().push(r.get(1)?);
    }
    let servers = SERVER_COLS.split(',').count();
    let mut out = Vec::new();
    for r in &c.rows(&SQL, ())? {
        let name: String = r.get(0)?;
        let server = server_row_with(name.clone(), macs.remove(&name).unwrap_or_default(), r)?;
        let deployment = match r.get::<_, Option<i64>>(servers)? {
            Some(_) => Some(deployment_row_at(r, servers)?),
            None => None,
        };
        out.push((server, deployment));
    }
    Ok(out)
}

/// Seconds after a deployment ended during which the agent that held its
/// job may repeat its `result` and get the same answer ([`Db::ended_by`]).
pub const REPEAT_WINDOW: i64 = 3600;

/// The database.
#[derive(Debug, Clone)]
pub struct Db {
    sql: engine::Engine,
    /// Seconds a boot stays expected after a power cycle.
    boot_timeout: i64,
    /// Counts this process's changes to deployments and their logs, so
    /// that event streams wake at once rather than at their next look.
    changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// This controller among those sharing the database: the holder of
    /// its leases (random, per process).
    instance: String,
    /// Seconds a power job's lease lasts ([`POWER_LEASE`] unless set).
    power_lease: i64,
}

/// What [`Db::lease`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This controller holds it now, and no one held it a moment ago (it
    /// was free, or its holder stopped renewing it).
    Taken,
    /// This controller held it and still does.
    Renewed,
    /// Another controller holds it.
    Elsewhere,
}

/// How long a controller holds a power job before another may take it
/// over: longer than a power cycle may take (a one-time network boot and
/// the cycle, each bounded by the drivers' 60 s timeout), so a live
/// controller's job is never run twice.
pub const POWER_LEASE: std::time::Duration = std::time::Duration::from_secs(150);

/// Reader connections: reads run beside each other and beside the writer.
const READERS: usize = 3;

/// Writer connections on PostgreSQL (SQLite has one writer).
const POSTGRES_WRITERS: usize = 4;

/// Where the controller keeps its state.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// The embedded SQLite, in this file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database several controllers may share
    /// (`postgres://user:password@host:port/database`).
    Postgres(String),
}

impl Database {
    /// `postgres://…` or `postgresql://…`, else the path of a SQLite file.
    pub fn parse(s: &str) -> Database {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Database::Postgres(s.to_owned())
        } else {
            Database::Sqlite(s.into())
        }
    }
}

/// Shown without the password a PostgreSQL URL may hold.
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            // Rebuilt from its parts: a password may hold any character.
            Database::Postgres(url) => match url.parse::<postgres::Config>() {
                Ok(c) => {
                    let hosts: Vec<String> = c
                        .get_hosts()
                        .iter()
                        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
                        .map(|(h, port)| match h {
                            postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                            postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
                        })
                        .collect();
                    let user = c.get_user().map(|u| format!("{u}@")).unwrap_or_default();
                    write!(f, "postgres://{user}{}/{}", hosts.join(","), c.get_dbname().unwrap_or(""))
                }
                Err(_) => f.write_str("postgres://… (not a valid PostgreSQL URL)"),
            },
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Database({self})")
    }
}

/// PostgreSQL's schema, one step per schema version (the same numbers as
/// [`MIGRATIONS`]: PostgreSQL starts at SQLite's version 8).
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (8, include_str!("migrations/postgres/08-baseline.sql")),
    (9, include_str!("migrations/postgres/09-power-jobs.sql")),
];

/// Brings a PostgreSQL database's schema up to date, in one transaction
/// that holds an advisory lock (two controllers starting together migrate
/// once); its version is in `byoi_schema`.
fn migrate_postgres(pg: &mut Pg) -> Result<()> {
    let c = Conn::postgres(pg);
    c.execute_batch(
        "BEGIN; SELECT pg_advisory_xact_lock(7307466);
         CREATE TABLE IF NOT EXISTS byoi_schema (version BIGINT NOT NULL);",
    )?;
    let migrated = (|| {
        let found: Option<i64> = c.query_row("SELECT version FROM byoi_schema", (), |r| r.get(0)).optional()?;
        let version = found.unwrap_or(0);
        let latest = POSTGRES_MIGRATIONS.last().map_or(0, |m| m.0);
        if version > latest {
            return Err(DbError::Newer(version));
        }
        for (step, sql) in POSTGRES_MIGRATIONS.iter().filter(|m| m.0 > version) {
            c.execute_batch(sql)?;
            tracing::info!(version = step, "database schema migrated");
        }
        match found {
            None => c.execute("INSERT INTO byoi_schema (version) VALUES (?1)", [latest])?,
            Some(_) => c.execute("UPDATE byoi_schema SET version = ?1", [latest])?,
        };
        Ok(())
    })();
    match migrated {
        Ok(()) => Ok(c.execute_batch("COMMIT")?),
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

impl Db {
    /// Opens (creating) the database at `path` and brings its schema up to
    /// date. `boot_timeout`: how long a boot stays expected after a power
    /// cycle (agent tokens are minted only then).
    pub async fn open(path: &Path, boot_timeout: std::time::Duration) -> Result<Db> {
        let file = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || {
            let mut c = engine::open_sqlite(&file)?;
            match MIGRATIONS.to_latest(&mut c) {
                Err(rusqlite_migration::Error::MigrationDefinition(
                    rusqlite_migration::MigrationDefinitionError::DatabaseTooFarAhead,
                )) => Err(DbError::Newer(c.query_row("PRAGMA user_version", (), |r| r.get(0))?)),
                other => other.map_err(DbError::from),
            }?;
            Ok::<_, DbError>(c)
        })
        .await
        .map_err(|_| DbError::Panicked)??;
        let sql = engine::Engine::sqlite(conn, path, READERS)?;
        Ok(Db::with(sql, boot_timeout))
    }

    /// Connects to the PostgreSQL database at `url` (shared with other
    /// controllers) and brings its schema up to date.
    pub async fn connect(url: &str, boot_timeout: std::time::Duration) -> Result<Db> {
        let url = url.to_owned();
        let sql = tokio::task::spawn_blocking(move || {
            let mut pg = Pg::connect(&url)?;
            migrate_postgres(&mut pg)?;
            engine::Engine::postgres(pg, &url, POSTGRES_WRITERS, READERS)
        })
        .await
        .map_err(|_| DbError::Panicked)??;
        Ok(Db::with(sql, boot_timeout))
    }

    /// Opens `database`: [`Db::open`] or [`Db::connect`].
    pub async fn open_database(database: &Database, boot_timeout: std::time::Duration) -> Result<Db> {
        match database {
            Database::Sqlite(path) => Db::open(path, boot_timeout).await,
            Database::Postgres(url) => Db::connect(url, boot_timeout).await,
        }
    }

    fn with(sql: engine::Engine, boot_timeout: std::time::Duration) -> Db {
        let (changes, _) = tokio::sync::watch::channel(0);
        Db {
            sql,
            boot_timeout: boot_timeout.as_secs() as i64,
            changes: std::sync::Arc::new(changes),
            instance: format!("{}-{}", std::process::id(), &new_secret()[..12]),
            power_lease: POWER_LEASE.as_secs() as i64,
        }
    }

    /// This database with power jobs leased for `lease` (tests, and
    /// `serve --power-lease`).
    pub fn with_power_lease(mut self, lease: std::time::Duration) -> Db {
        self.power_lease = lease.as_secs().max(1) as i64;
        self
    }

    /// Takes or renews the lease `name` for the next `seconds`: taken
    /// when free or run out, renewed when this controller holds it.
    /// Exactly one controller on the database holds it at a time.
    pub async fn lease(&self, name: &str, seconds: i64) -> Result<Lease> {
        let (name, holder) = (name.to_owned(), self.instance.clone());
        self.write(move |c| {
            let t = c.now()?;
            let sql = c.locking("SELECT holder, until FROM leases WHERE name = ?1", false);
            let found: Option<(String, i64)> = c.query_row(&sql, [&name], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            match found {
                Some((h, until)) if h != holder && until >= t => Ok(Lease::Elsewhere),
                Some((h, until)) => {
                    c.execute(
                        "UPDATE leases SET holder = ?2, until = ?3 WHERE name = ?1",
                        params![name, holder, t + seconds],
                    )?;
                    Ok(if h == holder && until >= t { Lease::Renewed } else { Lease::Taken })
                }
                // Two controllers asking at once for a lease no one had:
                // one inserts, the other finds it taken.
                None => {
                    let inserted = c.execute(
                        "INSERT INTO leases (name, holder, until) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
                        params![name, holder, t + seconds],
                    )?;
                    Ok(if inserted == 1 { Lease::Taken } else { Lease::Elsewhere })
                }
            }
        })
        .await
    }

    /// Records how the power job `id` ended (`done`, `manual`, `failed`).
    pub async fn finish_power_job(&self, id: i64, outcome: &str) -> Result<()> {
        let outcome = outcome.to_owned();
        self.write(move |c| {
            let t = c.now()?;
            c.execute("UPDATE power_jobs SET done_at = ?2, outcome = ?3 WHERE id = ?1", params![id, t, outcome])
                .map(drop)
        })
        .await
    }

    /// Takes over the oldest power job whose holder's lease ran out (it
    /// died before the job was done): leased to this controller now, its
    /// id and server. On PostgreSQL, a job another controller is taking
    /// at the same moment is skipped, not waited for.
    pub async fn take_power_job(&self) -> Result<Option<(i64, String)>> {
        let (holder, lease) = (self.instance.clone(), self.power_lease);
        self.write(move |c| {
            let t = c.now()?;
            let sql = c.locking(
                "SELECT id, server FROM power_jobs WHERE done_at IS NULL AND lease_until < ?1 ORDER BY id LIMIT 1",
                true,
            );
            let Some((id, server)) = c.query_row(&sql, [t], |r| Ok((r.get(0)?, r.get(1)?))).optional()? else {
                return Ok(None);
            };
            c.execute(
                "UPDATE power_jobs SET holder = ?2, lease_until = ?3 WHERE id = ?1",
                params![id, holder, t + lease],
            )?;
            Ok(Some((id, server)))
        })
        .await
    }

    /// Runs `f`, a change to servers, deployments, their logs or
    /// discovered machines ([`Db::write`]); then wakes the event streams
    /// ([`Db::changes`]).
    async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<T> + Send + 'static,
    ) -> Result<T> {
        let done = self.write(f).await;
        self.changes.send_modify(|n| *n += 1);
        done
    }

    /// Runs `f` as one change, all of it or nothing: kept when it returns
    /// `Ok`, undone when it fails.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<T> + Send + 'static,
    ) -> Result<T> {
        self.sql.write(f).await
    }

    /// Runs `f`, which only reads, on what is committed.
    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Conn<'_>) -> sql::Result<T> + Send + 'static) -> Result<T> {
        self.sql.read(f).await
    }

    /// What `/metrics` reports of the database: deployments by status and
    /// error code, each successful one's duration and size, bytes written,
    /// servers, and agents that called within `agent_timeout` seconds.
    pub async fn deployment_stats(&self, agent_timeout: i64) -> Result<DeploymentStats> {
        self.read(move |c| {
            let by_status = c.query_map(
                "SELECT status, error_code, count(*) FROM deployments GROUP BY status, error_code",
                (),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let done = c.query_map(
                "SELECT finished_at - created_at, bytes_done FROM deployments
                 WHERE status = 'done' AND finished_at IS NOT NULL",
                (),
                |r| Ok(Finished { seconds: r.get::<_, i64>(0)?.max(0), bytes: r.get::<_, i64>(1)?.max(0) as u64 }),
            )?;
            let bytes_written: i64 =
                c.query_row("SELECT CAST(coalesce(sum(bytes_done), 0) AS BIGINT) FROM deployments", (), |r| r.get(0))?;
            let (servers, agents_online) = c.query_row(
                "SELECT count(*), count(*) FILTER (WHERE last_seen >= ?1) FROM servers",
                [c.now()? - agent_timeout],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let discovered = c.query_row("SELECT count(*) FROM discovered", (), |r| r.get(0))?;
            Ok(DeploymentStats {
                by_status,
                done,
                bytes_written: bytes_written.max(0) as u64,
                servers,
                agents_online,
                discovered,
            })
        })
        .await
    }

    /// Notes the version the server's agent said hello with.
    pub async fn set_agent_version(&self, server: &str, version: &str) -> Result<()> {
        let (server, version) = (server.to_owned(), version.to_owned());
        self.write(move |c| {
            c.execute("UPDATE servers SET agent_version = ?2 WHERE name = ?1", params![server, version]).map(drop)
        })
        .await
    }

    /// Whether the database takes a write: its schema version, rewritten
    /// as it is, committed (a read-only or full disk, a lost file fail it).
    pub async fn check_writable(&self) -> Result<()> {
        self.write(|c| {
            if c.is_postgres() {
                return c.execute("UPDATE byoi_schema SET version = version", ()).map(drop);
            }
            let version: i64 = c.query_row("PRAGMA user_version", (), |r| r.get(0))?;
            c.execute_batch(&format!("PRAGMA user_version = {version};"))
        })
        .await
    }

    /// The schema version (`PRAGMA user_version`).
    pub async fn schema_version(&self) -> Result<i64> {
        self.read(|c| {
            let sql = if c.is_postgres() { "SELECT version FROM byoi_schema" } else { "PRAGMA user_version" };
            c.query_row(sql, (), |r| r.get(0))
        })
        .await
    }

    /// Moves the write-ahead log into the database file (at shutdown: the
    /// data directory is then one file to back up).
    pub async fn checkpoint(&self) -> Result<()> {
        self.sql.raw(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", (), |_| Ok(()))).await.map(drop)
    }

    /// Adds a server; `Err(message)` if the name or a MAC is taken.
    pub async fn add_server(&self, s: ServerRow) -> Result<Result<(), String>> {
        self.change(move |tx| {
            let added = insert_server(tx, &s)?;
            Ok(added)
        })
        .await
    }

    /// Changes a server's MACs, power driver or kernel arguments (each
    /// when given); `Ok(None)` when there is no such server, `Err(message)`
    /// when a MAC belongs to another.
    pub async fn update_server(&self, name: &str, change: ServerChange) -> Result<Result<Option<()>, String>> {
        let name = name.to_owned();
        self.change(move |tx| {
            if tx.query_row("SELECT 1 FROM servers WHERE name = ?1", [&name], |_| Ok(())).optional()?.is_none() {
                return Ok(Ok(None));
            }
            if let Some(macs) = &change.macs {
                for mac in macs {
                    let owner: Option<String> =
                        tx.query_row("SELECT server FROM macs WHERE mac = ?1", [mac], |r| r.get(0)).optional()?;
                    if let Some(o) = owner.filter(|o| *o != name) {
                        return Ok(Err(format!("MAC {mac} already belongs to {o}")));
                    }
                }
                tx.execute("DELETE FROM macs WHERE server = ?1", [&name])?;
                register_macs(tx, &name, macs)?;
            }
            if let Some(power) = &change.power {
                let power = serde_json::to_string(power).map_err(json_err)?;
                tx.execute("UPDATE servers SET power = ?2 WHERE name = ?1", params![name, power])?;
            }
            if let Some(args) = &change.kernel_args {
                let args = serde_json::to_string(args).map_err(json_err)?;
                tx.execute("UPDATE servers SET kernel_args = ?2 WHERE name = ?1", params![name, args])?;
            }
            Ok(Ok(Some(())))
        })
        .await
    }

    /// Deletes a server with its MACs, deployments, tokens, logs and host
    /// key, unless a deployment runs on it and `force` is not given.
    pub async fn delete_server(&self, name: &str, force: bool) -> Result<Deleted> {
        let name = name.to_owned();
        self.change(move |tx| {
            if tx.query_row("SELECT 1 FROM servers WHERE name = ?1", [&name], |_| Ok(())).optional()?.is_none() {
                return Ok(Deleted::NoServer);
            }
            let running = tx
                .query_row(
                    "SELECT id, stage FROM deployments WHERE server = ?1 AND status = 'doing' ORDER BY id DESC LIMIT 1",
                    [&name],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Stage>(1)?)),
                )
                .optional()?;
            if let (Some((id, stage)), false) = (running, force) {
                return Ok(Deleted::Running { id, stage });
            }
            tx.execute("DELETE FROM servers WHERE name = ?1", [&name])?;
            Ok(Deleted::Done)
        })
        .await
    }

    /// A server by name.
    pub async fn server(&self, name: &str) -> Result<Option<ServerRow>> {
        let name = name.to_owned();
        self.read(move |c| {
            let rows = c.rows(&format!("SELECT {SERVER_COLS} FROM servers WHERE name = ?1"), [name])?;
            rows.first().map(|r| server_row(c, r)).transpose()
        })
        .await
    }

    /// A server's number: the rowid of its row, which byoi never
    /// renumbers (servers are not deleted, and nothing runs `VACUUM`).
    pub async fn server_id(&self, name: &str) -> Result<Option<i64>> {
        let name = name.to_owned();
        self.read(move |c| c.query_row("SELECT rowid FROM servers WHERE name = ?1", [name], |r| r.get(0)).optional())
            .await
    }

    /// Every server's name, in order.
    pub async fn server_names(&self) -> Result<Vec<String>> {
        self.read(|c| c.query_map("SELECT name FROM servers ORDER BY name", (), |r| r.get(0))).await
    }

    /// All servers, by name, each with its newest deployment.
    pub async fn fleet(&self) -> Result<Vec<(ServerRow, Option<DeploymentRow>)>> {
        self.read(fleet).await
    }

    /// The server owning a MAC.
    pub async fn server_by_mac(&self, mac: &str) -> Result<Option<String>> {
        let mac = mac.to_owned();
        self.read(move |c| c.query_row("SELECT server FROM macs WHERE mac = ?1", [mac], |r| r.get(0)).optional()).await
    }

    /// The deployment `GET …/bringYourOwnImage` shows.
    pub async fn current_deployment(&self, server: &str) -> Result<Option<DeploymentRow>> {
        let server = server.to_owned();
        self.read(move |c| Ok(latest(c, &server)?.filter(|d| d.current))).await
    }

    /// All deployments of a server, newest first.
    pub async fn history(&self, server: &str) -> Result<Vec<DeploymentRow>> {
        let server = server.to_owned();
        self.read(move |c| {
            c.query_map(
                &format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE server = ?1 ORDER BY id DESC"),
                [server],
                deployment_row,
            )
        })
        .await
    }

    /// A deployment of `server` by id, as the lifecycle needs it.
    pub async fn named(&self, server: &str, id: i64) -> Result<Option<Named>> {
        let server = server.to_owned();
        self.read(move |c| {
            c.query_row("SELECT error_code FROM deployments WHERE id = ?1 AND server = ?2", params![id, server], |r| {
                Ok(Named { id, cancelled: r.get::<_, Option<ErrorCode>>(0)? == Some(ErrorCode::Aborted) })
            })
            .optional()
        })
        .await
    }

    /// Runs `event` on `server`'s state in one transaction: reads the state,
    /// asks [`lifecycle::on`], writes what changed and the effects that are
    /// database work (tokens, inventory, report times). `None` if there is
    /// no such server.
    pub async fn apply(&self, server: &str, event: Event, payload: Payload) -> Result<Option<Applied>> {
        let applied = self.apply_event(server, event, payload).await;
        self.changes.send_modify(|n| *n += 1);
        applied
    }

    /// A receiver that sees a change each time this process applies an
    /// event or keeps agent log lines (another controller's changes are
    /// not seen: readers look at the database now and then too).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn apply_event(&self, server: &str, event: Event, payload: Payload) -> Result<Option<Applied>> {
        let server = server.to_owned();
        let boot_timeout = self.boot_timeout;
        let (holder, power_lease) = (self.instance.clone(), self.power_lease);
        let key = server.clone();
        self.sql.write_for(&key, move |tx| {
            let t = tx.now()?;
            // Another controller may apply an event to the same server at
            // once: its row is locked until the commit, so each transition
            // reads the state the last one wrote.
            let sql = tx.locking(
                "SELECT boot_target, boot_expected_until, boot_tokens_minted, claim_token, claim_addr \
                 FROM servers WHERE name = ?1",
                false,
            );
            let Some((target, expected_until, minted, claim_token, claim_addr)) = tx
                .query_row(
                    &sql,
                    [&server],
                    |r| {
                        Ok((
                            r.get::<_, BootTarget>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, u32>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, Option<String>>(4)?,
                        ))
                    },
                )
                .optional()?
            else {
                return Ok(None);
            };
            let before_row = latest(tx, &server)?;
            let before = State {
                target,
                boot_expected: expected_until.is_some_and(|u| t < u) && minted < TOKENS_PER_BOOT,
                claim: claim_token.map(|token| Claim { token, addr: claim_addr.and_then(|a| a.parse().ok()) }),
                latest: before_row.as_ref().map(DeploymentRow::lifecycle),
            };
            let transition = lifecycle::on(&event, &before);
            if matches!(event, Event::Agent { .. }) && transition.state.claim.is_some() {
                tx.execute("UPDATE servers SET last_seen = ?2 WHERE name = ?1", params![server, t])?;
            }
            let request = match &payload {
                Payload::Request(r) => Some(r.as_ref()),
                _ => None,
            };
            save(tx, &server, &before, &transition.state, request, t)?;
            let mut token = None;
            let mut power_job = None;
            for effect in &transition.effects {
                match *effect {
                    Effect::Reported => {
                        tx.execute(
                            "UPDATE deployments SET last_report = ?2 WHERE id = (SELECT max(id) FROM deployments WHERE server = ?1)",
                            params![server, t],
                        )?;
                    }
                    Effect::RetireTokens => {
                        tx.execute("DELETE FROM agent_tokens WHERE server = ?1", [&server])?;
                        tx.execute("UPDATE servers SET boot_expected_until = NULL WHERE name = ?1", [&server])?;
                    }
                    Effect::ExpectBoot => {
                        tx.execute("DELETE FROM agent_tokens WHERE server = ?1", [&server])?;
                        tx.execute(
                            "UPDATE servers SET boot_expected_until = ?2, boot_tokens_minted = 0 WHERE name = ?1",
                            params![server, t + boot_timeout],
                        )?;
                    }
                    Effect::MintToken(mode) => {
                        token = Some(mint_token(tx, &server, mode, t)?);
                    }
                    Effect::KeepInventory => {
                        if let Payload::Inventory(inv) = &payload {
                            let inv = serde_json::to_string(inv).map_err(json_err)?;
                            tx.execute("UPDATE servers SET inventory = ?2 WHERE name = ?1", params![server, inv])?;
                        }
                    }
                    Effect::KeepLogs => {
                        if let (Payload::Logs(lines), Some(id)) =
                            (&payload, transition.state.latest.as_ref().and_then(|d| d.id))
                        {
                            keep_logs(tx, id, lines, t)?;
                        }
                    }
                    Effect::PowerCycle => {
                        // A newer cycle replaces one not yet done (its
                        // controller died): the server is cycled once, for
                        // what is asked now.
                        tx.execute(
                            "UPDATE power_jobs SET done_at = ?2, outcome = 'superseded' \
                             WHERE server = ?1 AND done_at IS NULL",
                            params![server, t],
                        )?;
                        power_job = Some(tx.query_row(
                            "INSERT INTO power_jobs (server, requested_at, holder, lease_until) \
                             VALUES (?1, ?2, ?3, ?4) RETURNING id",
                            params![server, t, holder, t + power_lease],
                            |r| r.get(0),
                        )?);
                    }
                }
            }
            let latest = latest(tx, &server)?;
            Ok(Some(Applied { transition, latest, token, power_job }))
        })
        .await
    }

    /// The log lines kept for a deployment after the line `after` (0: from
    /// the first), oldest first, at most `limit`; with `notable`, warnings
    /// and errors only.
    pub async fn logs(&self, deployment: i64, after: i64, notable: bool, limit: usize) -> Result<Vec<KeptLog>> {
        self.read(move |c| {
            c.query_map(
                "SELECT id, at, level, target, message FROM agent_logs \
                 WHERE deployment_id = ?1 AND id > ?2 AND (?3 = 0 OR level <> 'info') ORDER BY id LIMIT ?4",
                params![deployment, after, notable, limit as i64],
                |r| {
                    Ok(KeptLog {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        record: LogRecord { level: r.get(2)?, target: r.get(3)?, message: r.get(4)? },
                    })
                },
            )
        })
        .await
    }

    /// Marks every running deployment as just reported: after a controller
    /// restart, agents get a full timeout to report again.
    pub async fn refresh_running(&self) -> Result<()> {
        self.write(|c| {
            c.execute(
                "UPDATE deployments SET last_report = ?1 WHERE status = 'doing' AND last_report IS NOT NULL",
                [c.now()?],
            )
            .map(drop)
        })
        .await
    }

    /// Servers whose running deployment's agent has not reported for
    /// `timeout` seconds, those that never netbooted into the agent within
    /// `boot_timeout`, and those whose deployment has not moved (bytes or
    /// stage) for `stall_timeout`: the events the lifecycle must hear.
    pub async fn silent(&self, timeout: i64, boot_timeout: i64, stall_timeout: i64) -> Result<Vec<(String, Event)>> {
        self.read(move |c| {
            let t = c.now()?;
            c.query_map(
                "SELECT server, last_report IS NULL, last_report < ?1 FROM deployments WHERE status = 'doing' AND \
                 ((last_report IS NOT NULL AND last_report < ?1) OR (last_report IS NULL AND created_at < ?2) \
                  OR (moved_at IS NOT NULL AND moved_at < ?3))",
                params![t - timeout, t - boot_timeout, t - stall_timeout],
                |r| {
                    let (never, silent): (bool, Option<bool>) = (r.get(1)?, r.get(2)?);
                    let event = if never {
                        Event::NeverBooted { boot_timeout: boot_timeout.max(0) as u64 }
                    } else if silent == Some(true) {
                        Event::AgentSilent
                    } else {
                        Event::Stalled { stall_timeout: stall_timeout.max(0) as u64 }
                    };
                    Ok((r.get(0)?, event))
                },
            )
        })
        .await
    }

    /// Whether the token `hash` held the job of deployment `id`, which
    /// ended as `status` no longer than [`REPEAT_WINDOW`] ago: a `result`
    /// repeated because its answer was lost (the token was retired when
    /// the first one was taken).
    pub async fn ended_by(&self, hash: String, id: i64, status: Status) -> Result<bool> {
        self.read(move |c| {
            c.query_row(
                "SELECT 1 FROM deployments WHERE id = ?1 AND job_token = ?2 AND status = ?3 AND status != 'doing' \
                 AND finished_at >= ?4",
                params![id, hash, status, c.now()? - REPEAT_WINDOW],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
        })
        .await
    }

    /// The server and boot mode a live token belongs to. A read only: what
    /// the token may do is the claim's business (`db.apply`).
    pub async fn token_owner(&self, hash: String) -> Result<Option<(String, BootTarget)>> {
        self.read(move |c| {
            c.query_row("SELECT server, mode FROM agent_tokens WHERE hash = ?1", [&hash], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .await
    }
}

/// Inserts a server with its MACs (and the inventory, agent version and
/// last contact it comes with), and forgets the discovered machines that
/// had one of its MACs; `Err(message)` if the name or a MAC is taken
/// (nothing written).
fn insert_server(tx: &Conn<'_>, s: &ServerRow) -> sql::Result<Result<(), String>> {
    if tx.query_row("SELECT 1 FROM servers WHERE name = ?1", [&s.name], |_| Ok(())).optional()?.is_some() {
        return Ok(Err(format!("server {} already exists", s.name)));
    }
    for mac in &s.macs {
        let owner: Option<String> =
            tx.query_row("SELECT server FROM macs WHERE mac = ?1", [mac], |r| r.get(0)).optional()?;
        if let Some(o) = owner {
            return Ok(Err(format!("MAC {mac} already belongs to {o}")));
        }
    }
    let inventory = s.inventory.as_ref().map(serde_json::to_string).transpose().map_err(json_err)?;
    tx.execute(
        "INSERT INTO servers (name, power, kernel_args, boot_target, inventory, last_seen, created_at, agent_version) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            s.name,
            serde_json::to_string(&s.power).map_err(json_err)?,
            serde_json::to_string(&s.kernel_args).map_err(json_err)?,
            s.boot_target,
            inventory,
            s.last_seen,
            s.created_at,
            s.agent_version
        ],
    )?;
    register_macs(tx, &s.name, &s.macs)?;
    Ok(Ok(()))
}

/// Gives `macs` to `server`; a registered MAC is no longer an unknown
/// machine's, so the discovered machines with one are forgotten.
fn register_macs(tx: &Conn<'_>, server: &str, macs: &[String]) -> sql::Result<()> {
    for mac in macs {
        tx.execute("INSERT INTO macs (mac, server) VALUES (?1, ?2)", params![mac, server])?;
        tx.execute("DELETE FROM discovered WHERE mac = ?1", [mac])?;
    }
    Ok(())
}

/// Writes what a transition changed.
fn save(
    tx: &Conn<'_>,
    server: &str,
    before: &State,
    after: &State,
    request: Option<&StoredRequest>,
    t: i64,
) -> sql::Result<()> {
    if after.target != before.target {
        tx.execute("UPDATE servers SET boot_target = ?2 WHERE name = ?1", params![server, after.target])?;
    }
    if after.claim != before.claim {
        let (token, addr) = match &after.claim {
            Some(c) => (Some(c.token.as_str()), c.addr.map(|a| a.to_string())),
            None => (None, None),
        };
        tx.execute(
            "UPDATE servers SET claim_token = ?2, claim_addr = ?3 WHERE name = ?1",
            params![server, token, addr],
        )?;
    }
    let Some(d) = &after.latest else { return Ok(()) };
    if before.latest.as_ref() == Some(d) {
        return Ok(());
    }
    match d.id {
        None => {
            let request = request.ok_or_else(|| SqlError::Encode("a new deployment without its request".into()))?;
            tx.execute("UPDATE deployments SET current = 0 WHERE server = ?1", [server])?;
            tx.execute(
                "INSERT INTO deployments (server, request, status, stage, message, error_code, bytes_done, bytes_total, \
                 current, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                params![
                    server,
                    serde_json::to_string(request).map_err(json_err)?,
                    d.status,
                    d.stage,
                    d.message,
                    d.code,
                    size(d.bytes_done),
                    d.bytes_total.map(size),
                    d.current,
                    t
                ],
            )?;
        }
        Some(id) => {
            // `moved_at` is when the bytes or the stage last changed: the
            // stall timeout counts from it.
            tx.execute(
                "UPDATE deployments SET moved_at = CASE WHEN stage != ?3 OR bytes_done != ?6 THEN ?9 ELSE moved_at END, \
                 status = ?2, stage = ?3, message = ?4, error_code = ?5, bytes_done = ?6, \
                 bytes_total = ?7, current = ?8, updated_at = ?9, job_token = ?10, \
                 finished_at = CASE WHEN ?2 != 'doing' THEN coalesce(finished_at, ?9) ELSE NULL END WHERE id = ?1",
                params![
                    id,
                    d.status,
                    d.stage,
                    d.message,
                    d.code,
                    size(d.bytes_done),
                    d.bytes_total.map(size),
                    d.current,
                    t,
                    d.job_to
                ],
            )?;
        }
    }
    Ok(())
}

/// Keeps an agent's log lines for `deployment`, at most [`KEPT_LOGS`] (the
/// newest).
fn keep_logs(tx: &Conn<'_>, deployment: i64, lines: &[LogRecord], t: i64) -> sql::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    for l in lines {
        tx.execute(
            "INSERT INTO agent_logs (deployment_id, at, level, target, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![deployment, t, l.level, l.target, l.message],
        )?;
    }
    tx.execute(
        "DELETE FROM agent_logs WHERE deployment_id = ?1 AND id NOT IN \
         (SELECT id FROM agent_logs WHERE deployment_id = ?1 ORDER BY id DESC LIMIT ?2)",
        params![deployment, KEPT_LOGS as i64],
    )?;
    Ok(())
}

/// Stores a new agent token (its hash) for a server booting in `mode`,
/// counted against the expected boot.
fn mint_token(tx: &Conn<'_>, server: &str, mode: BootTarget, t: i64) -> sql::Result<String> {
    let token = new_secret();
    tx.execute("UPDATE servers SET boot_tokens_minted = boot_tokens_minted + 1 WHERE name = ?1", [server])?;
    // The token is the boot's, not a deployment's: the claim and the job's
    // token (`deployments.job_token`) say what it may do.
    tx.execute(
        "INSERT INTO agent_tokens (hash, server, mode, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![token_hash(&token), server, mode, t],
    )?;
    Ok(token)
}

#[cfg(test)]
mod database_tests {
    use super::Database;

    #[test]
    fn a_database_is_shown_without_its_password() {
        let shown = Database::parse("postgres://byoi:s3cr%2Ft%40x@db.lab:5433/byoi?sslmode=disable").to_string();
        assert_eq!(shown, "postgres://byoi@db.lab:5433/byoi");
        // An unescaped `/` in the password: whatever PostgreSQL makes of
        // it, the password is not shown.
        let shown = Database::parse("postgres://byoi:xyzzy/plugh@db.lab/byoi").to_string();
        assert!(!shown.contains("xyzzy") && !shown.contains("plugh"), "{shown}");
        assert_eq!(Database::parse("postgresql://db.lab/byoi").to_string(), "postgres://db.lab:5432/byoi");
        assert_eq!(Database::parse("/var/lib/byoi/byoi.sqlite").to_string(), "/var/lib/byoi/byoi.sqlite");
    }
}
