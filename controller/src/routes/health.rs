//! `/healthz` and `/readyz`, for load balancers, systemd and monitoring.
//!
//! **Who may call them:** anyone, on either listener; they take no
//! credentials and read no body. **What they reveal:** that the process
//! answers; whether the database takes a write and the agent's kernel and
//! initramfs are in place — the names of the checks that failed, never a
//! path or an error (those go to the log).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{or_405, AppState};

/// The health routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(or_405(routes!(healthz))).routes(or_405(routes!(readyz)))
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// The outcome of one readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// It passed.
    Ok,
    /// It failed (the log says why).
    Failed,
}

/// `GET /readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` when every check passed, else `not ready`.
    pub status: &'static str,
    /// The database took a write (its schema version, rewritten).
    pub database: Check,
    /// `vmlinuz` and `initramfs.img` are non-empty files in the artifacts
    /// directory.
    pub artifacts: Check,
}

/// Whether the process answers.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The process answers", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Whether the controller can serve: its database takes a write, and the
/// agent's kernel and initramfs are in place.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: the failed checks say why (the log says more)", body = Readiness),
    ))]
async fn readyz(State(app): State<AppState>) -> (StatusCode, axum::Json<Readiness>) {
    let database = match app.db.check_writable().await {
        Ok(()) => Check::Ok,
        Err(e) => {
            tracing::error!(error = %e, "readiness: the database does not take a write");
            Check::Failed
        }
    };
    let missing: Vec<&str> = ["vmlinuz", "initramfs.img"]
        .into_iter()
        .filter(|f| !std::fs::metadata(app.cfg.artifacts.join(f)).is_ok_and(|m| m.is_file() && m.len() > 0))
        .collect();
    let artifacts = if missing.is_empty() {
        Check::Ok
    } else {
        tracing::warn!(dir = %app.cfg.artifacts.display(), ?missing, "readiness: the agent's artifacts are missing");
        Check::Failed
    };
    let ready = database == Check::Ok && artifacts == Check::Ok;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(Readiness { status: if ready { "ready" } else { "not ready" }, database, artifacts }))
}
