//! API credentials as OVHcloud's: applications (a public key and a secret)
//! and their consumer keys (access rules, a status, optional source
//! networks). A consumer key and a validation token are stored only as
//! their SHA-256; an application secret is stored as it is, since checking
//! a signature needs it, in the database only its owner may read
//! ([`crate::datadir`]).

use super::sql::{self, params, Conn, Optional};

use super::{from_json, json_err, new_secret, now, token_hash, Db, Result};
use crate::auth::{AccessRule, Cidr, CredentialStatus, MAX_PENDING, VALIDATION_WINDOW};

/// An application: what `X-Ovh-Application` names.
#[derive(Clone, PartialEq, Eq)]
pub struct ApplicationRow {
    /// Id, never reused.
    pub id: i64,
    /// The operator's name for it.
    pub name: String,
    /// Its application key (public: sent with every request).
    pub key: String,
    /// Its application secret.
    pub secret: String,
    /// Unix time of creation.
    pub created_at: i64,
}

impl std::fmt::Debug for ApplicationRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplicationRow").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}

/// A consumer key, without the key (only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRow {
    /// Id, never reused.
    pub id: i64,
    /// Its application's id.
    pub application: i64,
    /// What it may call.
    pub rules: Vec<AccessRule>,
    /// Where it may be used from; `None`: anywhere.
    pub allowed_ips: Option<Vec<Cidr>>,
    /// Where the validation page sends the user once validated.
    pub redirection: Option<String>,
    /// Where it stands (a pending one past its deadline reads as expired).
    pub status: CredentialStatus,
    /// Unix time of creation.
    pub created_at: i64,
    /// Pending: the validation deadline.
    pub expires_at: Option<i64>,
    /// Unix time of its last use (to the minute).
    pub last_use: Option<i64>,
}

/// A new application, with its first consumer key unless it was made
/// without one.
#[derive(Clone)]
pub struct NewApplication {
    /// The application.
    pub application: ApplicationRow,
    /// The consumer key and its credential.
    pub consumer: Option<(String, CredentialRow)>,
}

impl std::fmt::Debug for NewApplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credential = self.consumer.as_ref().map(|(_, c)| c);
        f.debug_struct("NewApplication")
            .field("application", &self.application)
            .field("credential", &credential)
            .finish_non_exhaustive()
    }
}

/// A consumer key just requested: the key, the validation token, the
/// credential.
#[derive(Clone)]
pub struct Requested {
    /// The consumer key, shown once to the requester.
    pub consumer_key: String,
    /// The token of the validation URL.
    pub token: String,
    /// The credential, pending validation.
    pub credential: CredentialRow,
}

impl std::fmt::Debug for Requested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requested").field("credential", &self.credential).finish_non_exhaustive()
    }
}

const APP_COLS: &str = "id, name, key, secret, created_at";
const CRED_COLS: &str = "id, application, rules, allowed_ips, redirection, status, created_at, expires_at, last_use";

fn app_row(r: &sql::Row) -> sql::Result<ApplicationRow> {
    Ok(ApplicationRow { id: r.get(0)?, name: r.get(1)?, key: r.get(2)?, secret: r.get(3)?, created_at: r.get(4)? })
}

fn cred_row(r: &sql::Row) -> sql::Result<CredentialRow> {
    let status: String = r.get(5)?;
    let status = CredentialStatus::from_name(&status)
        .ok_or_else(|| sql::SqlError::Column(5, format!("{status:?} is no credential status")))?;
    let expires_at: Option<i64> = r.get(7)?;
    let expired = status == CredentialStatus::PendingValidation && expires_at.is_some_and(|t| t < now());
    Ok(CredentialRow {
        id: r.get(0)?,
        application: r.get(1)?,
        rules: from_json(2, &r.get::<_, String>(2)?)?,
        allowed_ips: r.get::<_, Option<String>>(3)?.map(|s| from_json(3, &s)).transpose()?,
        redirection: r.get(4)?,
        status: if expired { CredentialStatus::Expired } else { status },
        created_at: r.get(6)?,
        expires_at,
        last_use: r.get(8)?,
    })
}

/// The application `id`, if there is one.
fn app_by_id(c: &Conn<'_>, id: i64) -> sql::Result<Option<ApplicationRow>> {
    c.query_row(&format!("SELECT {APP_COLS} FROM api_applications WHERE id = ?1"), [id], app_row).optional()
}

/// The credential `id`, if there is one.
fn cred_by_id(c: &Conn<'_>, id: i64) -> sql::Result<Option<CredentialRow>> {
    c.query_row(&format!("SELECT {CRED_COLS} FROM api_credentials WHERE id = ?1"), [id], cred_row).optional()
}

/// A row that must be there: just written in the same transaction, or held
/// by a foreign key.
fn present<T>(row: Option<T>) -> sql::Result<T> {
    row.ok_or(sql::SqlError::NoRows)
}

/// Inserts a credential; its row as read back.
fn insert_credential(
    c: &Conn<'_>,
    application: i64,
    consumer_key: &str,
    token: Option<&str>,
    rules: &[AccessRule],
    allowed_ips: Option<&[Cidr]>,
    redirection: Option<&str>,
) -> sql::Result<CredentialRow> {
    let (status, expires_at) = match token {
        Some(_) => (CredentialStatus::PendingValidation, Some(now() + VALIDATION_WINDOW)),
        None => (CredentialStatus::Validated, None),
    };
    let id = c.query_row(
        "INSERT INTO api_credentials (application, consumer_hash, validation_hash, rules, allowed_ips, redirection,
            status, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
        params![
            application,
            token_hash(consumer_key),
            token.map(token_hash),
            serde_json::to_string(rules).map_err(json_err)?,
            allowed_ips.map(serde_json::to_string).transpose().map_err(json_err)?,
            redirection,
            status.as_str(),
            now(),
            expires_at,
        ],
        |r| r.get(0),
    )?;
    present(cred_by_id(c, id)?)
}

impl Db {
    /// Makes an application named `name`, and unless `application_only` a
    /// validated consumer key with `rules`; `Err(message)` when the name is
    /// taken.
    pub async fn create_application(
        &self,
        name: &str,
        rules: Vec<AccessRule>,
        allowed_ips: Option<Vec<Cidr>>,
        application_only: bool,
    ) -> Result<Result<NewApplication, String>> {
        let name = name.to_owned();
        self.write(move |tx| {
            if tx.query_row("SELECT 1 FROM api_applications WHERE name = ?1", [&name], |_| Ok(())).optional()?.is_some()
            {
                return Ok(Err(format!("An application named {name} already exists")));
            }
            let key = uuid::Uuid::new_v4().simple().to_string();
            let id = tx.query_row(
                "INSERT INTO api_applications (name, key, secret, created_at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                params![name, key, new_secret(), now()],
                |r| r.get(0),
            )?;
            let application = present(app_by_id(tx, id)?)?;
            let consumer = if application_only {
                None
            } else {
                let consumer_key = new_secret();
                let row =
                    insert_credential(tx, application.id, &consumer_key, None, &rules, allowed_ips.as_deref(), None)?;
                Some((consumer_key, row))
            };
            Ok(Ok(NewApplication { application, consumer }))
        })
        .await
    }

    /// The application whose key is `key`.
    pub async fn application_by_key(&self, key: &str) -> Result<Option<ApplicationRow>> {
        let key = key.to_owned();
        self.read(move |c| {
            c.query_row(&format!("SELECT {APP_COLS} FROM api_applications WHERE key = ?1"), [key], app_row).optional()
        })
        .await
    }

    /// Every application, by id.
    pub async fn applications(&self) -> Result<Vec<ApplicationRow>> {
        self.read(|c| c.query_map(&format!("SELECT {APP_COLS} FROM api_applications ORDER BY id"), (), app_row)).await
    }

    /// The application `id`.
    pub async fn application(&self, id: i64) -> Result<Option<ApplicationRow>> {
        self.read(move |c| app_by_id(c, id)).await
    }

    /// Deletes the application `id` and its consumer keys; whether it
    /// existed.
    pub async fn delete_application(&self, id: i64) -> Result<bool> {
        self.write(move |c| Ok(c.execute("DELETE FROM api_applications WHERE id = ?1", [id])? == 1)).await
    }

    /// Requests a consumer key for `application`, pending the operator's
    /// validation; `Err(message)` when the application has
    /// [`MAX_PENDING`] waiting already. Expired requests are dropped first.
    pub async fn request_credential(
        &self,
        application: i64,
        rules: Vec<AccessRule>,
        allowed_ips: Option<Vec<Cidr>>,
        redirection: Option<String>,
    ) -> Result<Result<Requested, String>> {
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM api_credentials WHERE application = ?1 AND status = ?2 AND expires_at < ?3",
                params![application, CredentialStatus::PendingValidation.as_str(), now()],
            )?;
            let pending: i64 = tx.query_row(
                "SELECT count(*) FROM api_credentials WHERE application = ?1 AND status = ?2",
                params![application, CredentialStatus::PendingValidation.as_str()],
                |r| r.get(0),
            )?;
            if pending >= MAX_PENDING as i64 {
                return Ok(Err(format!(
                    "This application has {MAX_PENDING} credentials waiting for validation: validate them, or wait \
                     for them to expire ({} min)",
                    VALIDATION_WINDOW / 60
                )));
            }
            let (consumer_key, token) = (new_secret(), new_secret());
            let credential = insert_credential(
                tx,
                application,
                &consumer_key,
                Some(&token),
                &rules,
                allowed_ips.as_deref(),
                redirection.as_deref(),
            )?;
            Ok(Ok(Requested { consumer_key, token, credential }))
        })
        .await
    }

    /// The credential of consumer key `consumer_key`.
    pub async fn credential_by_consumer(&self, consumer_key: &str) -> Result<Option<CredentialRow>> {
        let hash = token_hash(consumer_key);
        self.read(move |c| {
            c.query_row(&format!("SELECT {CRED_COLS} FROM api_credentials WHERE consumer_hash = ?1"), [hash], cred_row)
                .optional()
        })
        .await
    }

    /// The credential waiting for validation under `token`, with its
    /// application; `None` when there is none or it expired.
    pub async fn pending_credential(&self, token: &str) -> Result<Option<(CredentialRow, ApplicationRow)>> {
        let hash = token_hash(token);
        self.read(move |c| {
            let Some(cred) = c
                .query_row(
                    &format!("SELECT {CRED_COLS} FROM api_credentials WHERE validation_hash = ?1"),
                    [hash],
                    cred_row,
                )
                .optional()?
                .filter(|r| r.status == CredentialStatus::PendingValidation)
            else {
                return Ok(None);
            };
            let app = present(app_by_id(c, cred.application)?)?;
            Ok(Some((cred, app)))
        })
        .await
    }

    /// Validates (or refuses) the credential waiting under `token`; its row
    /// after, `None` when none waits (unknown, expired, decided already).
    /// The token is spent either way.
    pub async fn decide_credential(&self, token: &str, validate: bool) -> Result<Option<CredentialRow>> {
        let hash = token_hash(token);
        let status = if validate { CredentialStatus::Validated } else { CredentialStatus::Refused };
        self.write(move |tx| {
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM api_credentials WHERE validation_hash = ?1 AND status = ?2 AND expires_at >= ?3",
                    params![hash, CredentialStatus::PendingValidation.as_str(), now()],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            tx.execute(
                "UPDATE api_credentials SET status = ?1, validation_hash = NULL, expires_at = NULL WHERE id = ?2",
                params![status.as_str(), id],
            )?;
            let row = present(cred_by_id(tx, id)?)?;
            Ok(Some(row))
        })
        .await
    }

    /// Every credential, by id.
    pub async fn credentials(&self) -> Result<Vec<CredentialRow>> {
        self.read(|c| c.query_map(&format!("SELECT {CRED_COLS} FROM api_credentials ORDER BY id"), (), cred_row)).await
    }

    /// The credential `id`.
    pub async fn credential(&self, id: i64) -> Result<Option<CredentialRow>> {
        self.read(move |c| cred_by_id(c, id)).await
    }

    /// Deletes the credential `id`; whether it existed.
    pub async fn delete_credential(&self, id: i64) -> Result<bool> {
        self.write(move |c| Ok(c.execute("DELETE FROM api_credentials WHERE id = ?1", [id])? == 1)).await
    }

    /// Notes a use of the credential `id`, at most once a minute.
    pub async fn touch_credential(&self, id: i64) -> Result<()> {
        let t = now();
        self.write(move |c| {
            c.execute(
                "UPDATE api_credentials SET last_use = ?1 WHERE id = ?2 AND (last_use IS NULL OR last_use < ?1 - 60)",
                params![t, id],
            )
            .map(drop)
        })
        .await
    }
}
