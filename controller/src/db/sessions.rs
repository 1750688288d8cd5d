//! The dashboard's sessions: a browser that logged in holds a random
//! cookie, stored here as its SHA-256 only, with the CSRF token its page
//! sends back on every change and the credential it logged in with
//! (`None`: the API token). Sessions end at their expiry, at logout, or
//! with their credential; at most [`MAX_SESSIONS`] live at once (a new one
//! ends the oldest).

use std::net::IpAddr;

use super::sql::{params, Optional};

use super::{new_secret, token_hash, Db, Result};

/// Most sessions at once.
pub const MAX_SESSIONS: i64 = 256;

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// What the page sends in `X-Byoi-Csrf`.
    pub csrf: String,
    /// The credential it logged in with; `None`: the API token.
    pub credential: Option<i64>,
}

/// A new session's secrets, to hand to the browser once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The cookie's value.
    pub cookie: String,
    /// The CSRF token.
    pub csrf: String,
}

impl Db {
    /// Opens a session for `credential` (`None`: the API token) from
    /// `addr`, for `ttl` seconds; expired ones are dropped, and the oldest
    /// when [`MAX_SESSIONS`] are live.
    pub async fn open_session(&self, credential: Option<i64>, addr: IpAddr, ttl: i64) -> Result<NewSession> {
        let fresh = NewSession { cookie: new_secret(), csrf: new_secret() };
        let (hash, csrf) = (token_hash(&fresh.cookie), fresh.csrf.clone());
        self.write(move |tx| {
            let t = tx.now()?;
            tx.execute("DELETE FROM ui_sessions WHERE expires_at <= ?1", [t])?;
            tx.execute(
                "DELETE FROM ui_sessions WHERE hash NOT IN \
                 (SELECT hash FROM ui_sessions ORDER BY created_at DESC, rowid DESC LIMIT ?1)",
                [MAX_SESSIONS - 1],
            )?;
            tx.execute(
                "INSERT INTO ui_sessions (hash, csrf, credential_id, created_at, expires_at, address) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![hash, csrf, credential, t, t + ttl, addr.to_string()],
            )?;
            Ok(())
        })
        .await?;
        Ok(fresh)
    }

    /// The live session whose cookie is `cookie`.
    pub async fn session(&self, cookie: &str) -> Result<Option<SessionRow>> {
        let hash = token_hash(cookie);
        self.read(move |c| {
            c.query_row(
                "SELECT csrf, credential_id FROM ui_sessions WHERE hash = ?1 AND expires_at > ?2",
                params![hash, c.now()?],
                |r| Ok(SessionRow { csrf: r.get(0)?, credential: r.get(1)? }),
            )
            .optional()
        })
        .await
    }

    /// Ends the session whose cookie is `cookie`.
    pub async fn close_session(&self, cookie: &str) -> Result<()> {
        let hash = token_hash(cookie);
        self.write(move |c| c.execute("DELETE FROM ui_sessions WHERE hash = ?1", [hash]).map(drop)).await
    }
}
