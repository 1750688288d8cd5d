//! The netboot side: the iPXE scripts servers chain into, and the agent's
//! kernel and initramfs.
//!
//! **Who may call it:** anyone on the provisioning network; iPXE sends no
//! credentials. **What it reveals:** whether a MAC is registered and what it
//! boots; a `deploy` or `rescue` script carries a fresh agent token for that
//! server (minting one revokes the server's unused older tokens, never a
//! working agent's). The artifacts are public.

use std::path::Path;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use byoi_wire::BootTarget;
use tower_http::services::ServeFile;

use super::{method_not_allowed, AppError, AppState};
use crate::ipxe::{self, Script};
use crate::lifecycle::{Event, Reply};
use crate::model;

/// The artifacts served, by name.
pub const ARTIFACTS: [&str; 2] = ["vmlinuz", "initramfs.img"];

/// The netboot routes; artifacts come from `artifacts` (Range and HEAD by
/// tower-http).
pub fn routes(artifacts: &Path) -> Router<AppState> {
    let mut r = Router::new()
        .route("/boot.ipxe", get(boot_ipxe).fallback(method_not_allowed))
        .route("/boot/{mac}", get(boot_script).fallback(method_not_allowed));
    for name in ARTIFACTS {
        r = r.route_service(&format!("/artifacts/{name}"), ServeFile::new(artifacts.join(name)));
    }
    r
}

/// A plain-text iPXE script.
fn script(body: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body)
}

/// The URL servers use to reach us: `--public-url`, else the `Host` the
/// server asked for.
fn base_url(app: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &app.cfg.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    format!("{}://{host}", app.cfg.scheme)
}

async fn boot_ipxe(State(app): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    script(ipxe::render(&Script::Boot, &base_url(&app, &headers)))
}

async fn boot_script(
    State(app): State<AppState>,
    UrlPath(mac): UrlPath<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, AppError> {
    let base = base_url(&app, &headers);
    let unknown = || script(ipxe::render(&Script::Unknown { mac: &mac }, &base));
    let Some(mac_norm) = model::normalize_mac(&mac) else { return Ok(unknown()) };
    let Some(name) = app.db.server_by_mac(&mac_norm).await? else { return Ok(unknown()) };
    let Some(server) = app.db.server(&name).await? else { return Ok(unknown()) };
    if server.boot_target != BootTarget::Local {
        let missing = ARTIFACTS.iter().any(|f| !app.cfg.artifacts.join(f).is_file());
        if missing {
            let dir = app.cfg.artifacts.display().to_string();
            tracing::warn!(server = %name, %dir, "no agent kernel or initramfs to serve");
            return Ok(script(ipxe::render(&Script::Missing { dir: &dir }, &base)));
        }
    }
    let applied =
        app.db.apply(&name, Event::BootScript, None).await?.ok_or_else(|| AppError::NotFound(name.clone()))?;
    let body = match (&applied.transition.reply, &applied.token) {
        (Reply::Script(mode @ (BootTarget::Deploy | BootTarget::Rescue)), Some(token)) => ipxe::render(
            &Script::Agent { server: &name, mode: mode.as_str(), token, kernel_args: &server.kernel_args },
            &base,
        ),
        _ => ipxe::render(&Script::Local { server: &name }, &base),
    };
    tracing::info!(server = %name, target = %server.boot_target, "served boot script");
    Ok(script(body))
}
