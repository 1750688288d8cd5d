//! The controller's state in SQLite: servers, deployments (with their
//! history), per-boot agent tokens. One connection behind a mutex: every
//! query is short, and SQLite serialises writers anyway.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Database errors, as the API reports them (500s are bugs).
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct DbError(#[from] rusqlite::Error);

/// Result alias.
pub type Result<T, E = DbError> = std::result::Result<T, E>;

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS servers (
    name TEXT PRIMARY KEY,
    power TEXT NOT NULL,
    kernel_args TEXT NOT NULL,
    boot_target TEXT NOT NULL,
    inventory TEXT,
    last_seen INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS macs (
    mac TEXT PRIMARY KEY,
    server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    message TEXT NOT NULL,
    error_code TEXT,
    checksum TEXT,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER,
    current INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_report INTEGER,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS deployments_server ON deployments(server, id);
CREATE TABLE IF NOT EXISTS agent_tokens (
    hash TEXT PRIMARY KEY,
    server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
    deployment_id INTEGER,
    mode TEXT NOT NULL DEFAULT 'deploy',
    created_at INTEGER NOT NULL,
    last_used INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
);
";

/// A registered server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRow {
    /// OVH's serviceName.
    pub name: String,
    /// Its MACs, lowercase with colons.
    pub macs: Vec<String>,
    /// Power driver settings (JSON).
    pub power: serde_json::Value,
    /// Extra kernel arguments for the agent.
    pub kernel_args: Vec<String>,
    /// `deploy`, `local` or `rescue`.
    pub boot_target: String,
    /// The agent's last inventory (JSON).
    pub inventory: Option<serde_json::Value>,
    /// Unix time of the last agent contact.
    pub last_seen: Option<i64>,
    /// Unix time of registration.
    pub created_at: i64,
}

/// A deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRow {
    /// Id.
    pub id: i64,
    /// Server name.
    pub server: String,
    /// The validated request (JSON).
    pub request: serde_json::Value,
    /// `doing`, `done`, `error`.
    pub status: String,
    /// Stage name.
    pub stage: String,
    /// Human message.
    pub message: String,
    /// Error code.
    pub error_code: Option<String>,
    /// `ALGO:HEX` asked for.
    pub checksum: Option<String>,
    /// Bytes received by the agent.
    pub bytes_done: i64,
    /// Image size as served.
    pub bytes_total: Option<i64>,
    /// Shown by `GET …/bringYourOwnImage` (a DELETE clears it).
    pub current: bool,
    /// Unix times.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// Last report from the agent.
    pub last_report: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
}

/// The database.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn json_col(s: String) -> serde_json::Value {
    serde_json::from_str(&s).unwrap_or(serde_json::Value::Null)
}

const DEPLOYMENT_COLS: &str = "id, server, request, status, stage, message, error_code, checksum, bytes_done, \
     bytes_total, current, created_at, updated_at, last_report, finished_at";

fn deployment(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentRow> {
    Ok(DeploymentRow {
        id: r.get(0)?,
        server: r.get(1)?,
        request: json_col(r.get(2)?),
        status: r.get(3)?,
        stage: r.get(4)?,
        message: r.get(5)?,
        error_code: r.get(6)?,
        checksum: r.get(7)?,
        bytes_done: r.get(8)?,
        bytes_total: r.get(9)?,
        current: r.get::<_, i64>(10)? != 0,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        last_report: r.get(13)?,
        finished_at: r.get(14)?,
    })
}

impl Db {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Db> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Db { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut c)?)
    }

    /// Adds a server; false if the name or a MAC is taken.
    pub fn add_server(&self, s: &ServerRow) -> Result<Result<(), String>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let exists: bool =
                tx.query_row("SELECT 1 FROM servers WHERE name = ?1", [&s.name], |_| Ok(())).optional()?.is_some();
            if exists {
                return Ok(Err(format!("server {} already exists", s.name)));
            }
            for mac in &s.macs {
                let owner: Option<String> =
                    tx.query_row("SELECT server FROM macs WHERE mac = ?1", [mac], |r| r.get(0)).optional()?;
                if let Some(o) = owner {
                    return Ok(Err(format!("MAC {mac} already belongs to {o}")));
                }
            }
            tx.execute(
                "INSERT INTO servers (name, power, kernel_args, boot_target, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    s.name,
                    s.power.to_string(),
                    serde_json::to_string(&s.kernel_args).unwrap_or_default(),
                    s.boot_target,
                    s.created_at
                ],
            )?;
            for mac in &s.macs {
                tx.execute("INSERT INTO macs (mac, server) VALUES (?1, ?2)", params![mac, s.name])?;
            }
            tx.commit()?;
            Ok(Ok(()))
        })
    }

    fn server_row(c: &Connection, r: &rusqlite::Row<'_>) -> rusqlite::Result<ServerRow> {
        let name: String = r.get(0)?;
        let mut stmt = c.prepare_cached("SELECT mac FROM macs WHERE server = ?1 ORDER BY mac")?;
        let macs = stmt.query_map([&name], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ServerRow {
            name,
            macs,
            power: json_col(r.get(1)?),
            kernel_args: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
            boot_target: r.get(3)?,
            inventory: r.get::<_, Option<String>>(4)?.map(json_col),
            last_seen: r.get(5)?,
            created_at: r.get(6)?,
        })
    }

    /// A server by name.
    pub fn server(&self, name: &str) -> Result<Option<ServerRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, power, kernel_args, boot_target, inventory, last_seen, created_at FROM servers WHERE name = ?1",
            )?;
            let mut rows = stmt.query([name])?;
            match rows.next()? {
                Some(r) => Ok(Some(Self::server_row(c, r)?)),
                None => Ok(None),
            }
        })
    }

    /// All servers, by name.
    pub fn servers(&self) -> Result<Vec<ServerRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, power, kernel_args, boot_target, inventory, last_seen, created_at FROM servers ORDER BY name",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(Self::server_row(c, r)?);
            }
            Ok(out)
        })
    }

    /// The server owning a MAC.
    pub fn server_by_mac(&self, mac: &str) -> Result<Option<String>> {
        self.with(|c| c.query_row("SELECT server FROM macs WHERE mac = ?1", [mac], |r| r.get(0)).optional())
    }

    /// Sets a server's boot target.
    pub fn set_boot_target(&self, name: &str, target: &str) -> Result<()> {
        self.with(|c| {
            c.execute("UPDATE servers SET boot_target = ?2 WHERE name = ?1", params![name, target]).map(|_| ())
        })
    }

    /// Records an agent contact (and its inventory, on hello).
    pub fn touch_server(&self, name: &str, inventory: Option<&serde_json::Value>) -> Result<()> {
        self.with(|c| {
            match inventory {
                Some(inv) => c.execute(
                    "UPDATE servers SET last_seen = ?2, inventory = ?3 WHERE name = ?1",
                    params![name, now(), inv.to_string()],
                )?,
                None => c.execute("UPDATE servers SET last_seen = ?2 WHERE name = ?1", params![name, now()])?,
            };
            Ok(())
        })
    }

    /// Starts a deployment unless one is running; returns it, or the
    /// running one as `Err`.
    pub fn start_deployment(
        &self,
        server: &str,
        request: &serde_json::Value,
        checksum: Option<&str>,
    ) -> Result<Result<DeploymentRow, DeploymentRow>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let running = tx
                .query_row(
                    &format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE server = ?1 AND current = 1 AND status = 'doing'"),
                    [server],
                    deployment,
                )
                .optional()?;
            if let Some(d) = running {
                return Ok(Err(d));
            }
            let t = now();
            tx.execute("UPDATE deployments SET current = 0 WHERE server = ?1", [server])?;
            tx.execute(
                "INSERT INTO deployments (server, request, status, stage, message, checksum, created_at, updated_at) \
                 VALUES (?1, ?2, 'doing', 'waiting-for-agent', 'starting', ?3, ?4, ?4)",
                params![server, request.to_string(), checksum, t],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute("UPDATE servers SET boot_target = 'deploy' WHERE name = ?1", [server])?;
            let d = tx.query_row(&format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE id = ?1"), [id], deployment)?;
            tx.commit()?;
            Ok(Ok(d))
        })
    }

    /// The deployment `GET …/bringYourOwnImage` shows.
    pub fn current_deployment(&self, server: &str) -> Result<Option<DeploymentRow>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE server = ?1 AND current = 1 ORDER BY id DESC LIMIT 1"),
                [server],
                deployment,
            )
            .optional()
        })
    }

    /// A deployment by id.
    pub fn deployment(&self, id: i64) -> Result<Option<DeploymentRow>> {
        self.with(|c| {
            c.query_row(&format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE id = ?1"), [id], deployment)
                .optional()
        })
    }

    /// All deployments of a server, newest first.
    pub fn history(&self, server: &str) -> Result<Vec<DeploymentRow>> {
        self.with(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE server = ?1 ORDER BY id DESC"))?;
            let rows = stmt.query_map([server], deployment)?.collect();
            rows
        })
    }

    /// Records progress of a running deployment; false if it no longer
    /// runs (cancelled meanwhile).
    pub fn progress(&self, id: i64, stage: &str, done: i64, total: Option<i64>) -> Result<bool> {
        self.with(|c| {
            let t = now();
            c.execute(
                "UPDATE deployments SET stage = ?2, bytes_done = ?3, bytes_total = ?4, message = ?5, updated_at = ?6, \
                 last_report = ?6 WHERE id = ?1 AND status = 'doing'",
                params![id, stage, done, total, stage, t],
            )
            .map(|n| n > 0)
        })
    }

    /// Marks an agent report without progress (heartbeat, job fetch).
    pub fn reported(&self, id: i64) -> Result<()> {
        self.with(|c| {
            c.execute("UPDATE deployments SET last_report = ?2 WHERE id = ?1", params![id, now()]).map(|_| ())
        })
    }

    /// Ends a deployment: `done` flips the boot target to local and retires
    /// the server's agent tokens. False if it had already ended (cancelled).
    pub fn finish(&self, id: i64, status: &str, code: Option<&str>, message: &str) -> Result<bool> {
        self.with(|c| {
            let tx = c.transaction()?;
            let t = now();
            let stage = if status == "done" { "rebooting" } else { "finishing" };
            let changed = tx.execute(
                "UPDATE deployments SET status = ?2, error_code = ?3, message = ?4, updated_at = ?5, finished_at = ?5, \
                 stage = CASE WHEN ?2 = 'done' THEN ?6 ELSE stage END WHERE id = ?1 AND status = 'doing'",
                params![id, status, code, message, t, stage],
            )?;
            if changed > 0 && status == "done" {
                tx.execute(
                    "UPDATE servers SET boot_target = 'local' WHERE name = (SELECT server FROM deployments WHERE id = ?1)",
                    [id],
                )?;
                tx.execute(
                    "UPDATE agent_tokens SET revoked = 1 WHERE server = (SELECT server FROM deployments WHERE id = ?1)",
                    [id],
                )?;
            }
            tx.commit()?;
            Ok(changed > 0)
        })
    }

    /// Marks every running deployment as just reported: after a controller
    /// restart, agents get a full timeout to report again.
    pub fn refresh_running(&self) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE deployments SET last_report = ?1 WHERE status = 'doing' AND last_report IS NOT NULL",
                [now()],
            )
            .map(|_| ())
        })
    }

    /// Marks the server's running deployment as reported (hello, heartbeat).
    pub fn reported_server(&self, server: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE deployments SET last_report = ?2 WHERE server = ?1 AND current = 1 AND status = 'doing'",
                params![server, now()],
            )
            .map(|_| ())
        })
    }

    /// Erases the current status (DELETE): running ones end as `error`
    /// (`aborted`), all stay in the history.
    pub fn cancel(&self, server: &str) -> Result<Option<DeploymentRow>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let cur = tx
                .query_row(
                    &format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE server = ?1 AND current = 1"),
                    [server],
                    deployment,
                )
                .optional()?;
            let t = now();
            tx.execute(
                "UPDATE deployments SET status = 'error', error_code = 'aborted', message = 'deployment cancelled', \
                 updated_at = ?2, finished_at = ?2 WHERE server = ?1 AND status = 'doing'",
                params![server, t],
            )?;
            tx.execute("UPDATE deployments SET current = 0 WHERE server = ?1", [server])?;
            // The running agent keeps its token to be told `abort`.
            tx.execute("UPDATE servers SET boot_target = 'rescue' WHERE name = ?1", [server])?;
            tx.commit()?;
            Ok(cur)
        })
    }

    /// Running deployments whose agent has not reported for `timeout`
    /// seconds, or whose server never netbooted into the agent within
    /// `boot_timeout`, become errors; returns how many.
    pub fn expire_silent(&self, timeout: i64, boot_timeout: i64) -> Result<usize> {
        self.with(|c| {
            let t = now();
            let lost = c.execute(
                "UPDATE deployments SET status = 'error', error_code = 'agent-lost', message = 'agent stopped reporting', \
                 updated_at = ?1, finished_at = ?1 WHERE status = 'doing' AND last_report IS NOT NULL AND last_report < ?2",
                params![t, t - timeout],
            )?;
            let never = c.execute(
                "UPDATE deployments SET status = 'error', error_code = 'agent-lost', \
                 message = 'the server did not netboot into the agent within ' || ?3 || ' s', \
                 updated_at = ?1, finished_at = ?1 WHERE status = 'doing' AND last_report IS NULL AND created_at < ?2",
                params![t, t - boot_timeout, boot_timeout],
            )?;
            Ok(lost + never)
        })
    }

    /// Stores a new agent token (its hash) for a server booting in `mode`.
    /// Older tokens of the server are revoked unless used in the last
    /// `keep_live` seconds: fetching a boot script (which needs no
    /// credentials) must not log out a working agent.
    pub fn store_token(
        &self,
        hash: &str,
        server: &str,
        deployment: Option<i64>,
        mode: &str,
        keep_live: i64,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let t = now();
            tx.execute(
                "UPDATE agent_tokens SET revoked = 1 WHERE server = ?1 AND (last_used IS NULL OR last_used < ?2)",
                params![server, t - keep_live],
            )?;
            tx.execute(
                "DELETE FROM agent_tokens WHERE server = ?1 AND revoked = 1 AND created_at < ?2",
                params![server, t - 86_400],
            )?;
            tx.execute(
                "INSERT INTO agent_tokens (hash, server, deployment_id, mode, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash, server, deployment, mode, t],
            )?;
            tx.commit()
        })
    }

    /// The server and boot mode a live token belongs to; marks it used.
    pub fn use_token(&self, hash: &str) -> Result<Option<(String, String)>> {
        self.with(|c| {
            let found = c
                .query_row("SELECT server, mode FROM agent_tokens WHERE hash = ?1 AND revoked = 0", [hash], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if found.is_some() {
                c.execute("UPDATE agent_tokens SET last_used = ?2 WHERE hash = ?1", params![hash, now()])?;
            }
            Ok(found)
        })
    }
}
