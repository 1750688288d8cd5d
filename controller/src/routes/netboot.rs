//! The netboot side: the iPXE scripts servers chain into, and the agent's
//! kernel and initramfs.
//!
//! **Who may call it:** anyone on the provisioning network; iPXE sends no
//! credentials. `/boot/{mac}` is rate-limited per MAC and per source
//! address ([`BootLimiter`]). **What it reveals:** whether a MAC is
//! registered and what it boots; while a boot is expected (after a power
//! cycle the controller made, or an operator's deploy or rescue, within the
//! boot timeout) a `deploy` or `rescue` script carries a fresh agent token
//! for that server, at most
//! [`TOKENS_PER_BOOT`](crate::lifecycle::TOKENS_PER_BOOT) per boot; otherwise a
//! server wanted in the agent gets the idle script, which mints nothing.
//! With `--enlist`, an unknown MAC's script carries a discovery token
//! ([`super::discovered`]).
//! The artifacts are public.

use std::net::IpAddr;
use std::num::NonZeroU32;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use byoi_wire::BootTarget;
use tower::ServiceExt;
use tower_http::services::ServeFile;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::discovered::Enlistment;
use super::{or_405, AppError, AppState, ErrorBody, Peer};
use crate::db::{DiscoverBoot, Payload};
use crate::edge::Source;
use crate::ipxe::{self, Script};
use crate::lifecycle::{Event, Reply};
use crate::model;

/// The artifacts served, by name.
pub const ARTIFACTS: [&str; 2] = ["vmlinuz", "initramfs.img"];

/// The netboot routes; artifacts come from `Config::artifacts` (Range and
/// HEAD by tower-http).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(or_405(routes!(boot_ipxe)))
        .routes(or_405(routes!(boot_script)))
        .routes(or_405(routes!(vmlinuz, vmlinuz_head)))
        .routes(or_405(routes!(initramfs, initramfs_head)))
}

/// A plain-text iPXE script.
fn script(body: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body)
}

/// How many boot scripts may be fetched per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootRate {
    /// By one MAC.
    pub per_mac: u32,
    /// From one source address.
    pub per_source: u32,
}

type Keyed<K> = governor::DefaultKeyedRateLimiter<K>;

/// The rate limits of `/boot/{mac}`: a token bucket per MAC and one per
/// source address (governor), each holding a minute's worth. Keys idle
/// long enough to be full again are forgotten ([`BootLimiter::forget_idle`]),
/// so memory stays bounded by the rate, not by what attackers send.
pub struct BootLimiter {
    per_mac: Keyed<String>,
    per_source: Keyed<Source>,
}

impl std::fmt::Debug for BootLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootLimiter")
            .field("macs", &self.per_mac.len())
            .field("sources", &self.per_source.len())
            .finish()
    }
}

impl BootLimiter {
    /// Limits of `rate`.
    pub fn new(rate: BootRate) -> BootLimiter {
        let quota = |n: u32| governor::Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        BootLimiter {
            per_mac: governor::RateLimiter::keyed(quota(rate.per_mac)),
            per_source: governor::RateLimiter::keyed(quota(rate.per_source)),
        }
    }

    /// `Err(message)` when `source`, or `mac` (normalised), asked too
    /// often. The source is checked first: a flood of made-up MACs from one
    /// address stops there.
    pub fn check(&self, source: IpAddr, mac: &str) -> Result<(), String> {
        // A source is what the connection caps count: an IPv4 address or an
        // IPv6 /64, whose addresses a host picks at will.
        let source = Source::of(source);
        if self.per_source.check_key(&source).is_err() {
            return Err(format!("too many boot requests from {source}; try again in a minute"));
        }
        if self.per_mac.check_key(&mac.to_owned()).is_err() {
            return Err(format!("too many boot requests for {mac}; try again in a minute"));
        }
        Ok(())
    }

    /// Forgets the keys whose buckets are full again; run periodically.
    pub fn forget_idle(&self) {
        self.per_mac.retain_recent();
        self.per_source.retain_recent();
        self.per_mac.shrink_to_fit();
        self.per_source.shrink_to_fit();
    }
}

/// The script iPXE chains into first: it fetches `/boot/${mac}`.
#[utoipa::path(get, path = "/boot.ipxe", tag = "netboot",
    responses((status = 200, description = "An iPXE script", content_type = "text/plain", body = String)))]
async fn boot_ipxe(State(app): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    script(ipxe::render(&Script::Boot, &app.cfg.script_urls(&headers)))
}

/// The server's boot script.
///
/// The agent (with a fresh agent token) to deploy or rescue while a boot is
/// expected, the idle script (which asks again in a minute) when none is,
/// else its own disk; an unknown MAC gets a script that says so, or with
/// `--enlist` the agent in discover mode (a discovery token), then, once
/// the machine reported, a script that waits for its adoption.
#[utoipa::path(get, path = "/boot/{mac}", tag = "netboot",
    params(("mac" = String, Path, description = "A MAC address of the server, `:` or `-` separated, any case")),
    responses(
        (status = 200, description = "An iPXE script", content_type = "text/plain", body = String),
        (status = 429, description = "Too many boot requests for this MAC or from this address", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn boot_script(
    State(app): State<AppState>,
    Path(mac): Path<String>,
    Peer(source): Peer,
    headers: HeaderMap,
) -> Result<impl IntoResponse, AppError> {
    let base = app.cfg.script_urls(&headers);
    let unknown = || script(ipxe::render(&Script::Unknown { mac: &mac }, &base));
    let mac_norm = model::normalize_mac(&mac);
    if let Err(message) = app.cfg.boot_limiter.check(source, mac_norm.as_deref().unwrap_or("(not a MAC)")) {
        tracing::warn!(%source, "{message}");
        return Err(AppError::TooManyRequests(message));
    }
    let Some(mac_norm) = mac_norm else { return Ok(unknown()) };
    let Some(name) = app.db.server_by_mac(&mac_norm).await? else {
        let Some(enlist) = &app.cfg.enlist else { return Ok(unknown()) };
        return discover(&app, enlist, &mac_norm, source, &base).await.map(script);
    };
    let Some(server) = app.db.server(&name).await? else { return Ok(unknown()) };
    if server.boot_target != BootTarget::Local {
        if let Some(missing) = missing_artifacts(&app, &base) {
            tracing::warn!(server = %name, "no agent kernel or initramfs to serve");
            return Ok(script(missing));
        }
    }
    let applied =
        app.db.apply(&name, Event::BootScript, Payload::None).await?.ok_or_else(|| AppError::NotFound(name.clone()))?;
    let body = match (&applied.transition.reply, &applied.token) {
        (Reply::Script(mode @ (BootTarget::Deploy | BootTarget::Rescue | BootTarget::Inspect)), Some(token)) => {
            tracing::info!(server = %name, %source, mode = %mode, "served the agent's boot script with a token");
            ipxe::render(
                &Script::Agent { server: &name, mode: mode.as_str(), token, kernel_args: &server.kernel_args },
                &base,
            )
        }
        (Reply::Idle, _) => {
            tracing::info!(server = %name, %source, target = %server.boot_target,
                "no boot expected: served the idle script");
            ipxe::render(&Script::Idle { server: &name, mode: server.boot_target.as_str() }, &base)
        }
        _ => {
            tracing::info!(server = %name, %source, "served the local boot script");
            ipxe::render(&Script::Local { server: &name }, &base)
        }
    };
    Ok(script(body))
}

/// The script that says the agent's kernel or initramfs is missing, if
/// one is.
fn missing_artifacts(app: &AppState, base: &ipxe::Urls) -> Option<String> {
    let missing = ARTIFACTS.iter().any(|f| !app.cfg.artifacts.join(f).is_file());
    missing.then(|| ipxe::render(&Script::Missing { dir: &app.cfg.artifacts.display().to_string() }, base))
}

/// The script of a MAC no server has, while machines may enlist: the agent
/// in discover mode with a fresh discovery token until the machine has
/// reported, then the script that waits for its adoption; the unknown-MAC
/// script when no room is left.
async fn discover(
    app: &AppState,
    enlist: &Enlistment,
    mac: &str,
    source: IpAddr,
    base: &ipxe::Urls,
) -> Result<String, AppError> {
    if let Some(missing) = missing_artifacts(app, base) {
        tracing::warn!(%mac, "no agent kernel or initramfs to serve");
        return Ok(missing);
    }
    Ok(match app.db.discover_boot(mac, source, enlist.max_machines).await? {
        DiscoverBoot::Token(token) => {
            tracing::info!(%mac, %source, "a machine no server has netboots the agent in discover mode");
            let agent =
                Script::Agent { server: mac, mode: "discover", token: &token, kernel_args: &enlist.kernel_args };
            ipxe::render(&agent, base)
        }
        DiscoverBoot::Reported => ipxe::render(&Script::Discovered { mac }, base),
        DiscoverBoot::Full => {
            tracing::warn!(%mac, %source, max = enlist.max_machines,
                "too many discovered machines: adopt or forget some (byoi servers --discovered)");
            ipxe::render(&Script::Unknown { mac }, base)
        }
    })
}

/// Serves the artifact `name`, with Range and HEAD.
async fn artifact(app: &AppState, name: &str, req: Request) -> Response {
    let Ok(r) = ServeFile::new(app.cfg.artifacts.join(name)).oneshot(req).await;
    r.into_response()
}

/// Bytes, as the schema of a binary body (OpenAPI 3.1 §4.3.2).
struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_media_type("application/octet-stream")
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// The agent's kernel.
#[utoipa::path(get, path = "/artifacts/vmlinuz", tag = "netboot",
    params(("Range" = Option<String>, Header, nullable = false, description = "A byte range (RFC 9110 §14.2)")),
    responses(
        (status = 200, description = "The kernel", content_type = "application/octet-stream", body = inline(Binary)),
        (status = 206, description = "The range asked for",
            content_type = "application/octet-stream", body = inline(Binary)),
        (status = 404, description = "No `vmlinuz` in the artifacts directory"),
        (status = 416, description = "The range is past the end"),
    ))]
async fn vmlinuz(State(app): State<AppState>, req: Request) -> Response {
    artifact(&app, "vmlinuz", req).await
}

/// The agent's kernel's length, without the body.
#[utoipa::path(head, path = "/artifacts/vmlinuz", tag = "netboot",
    responses(
        (status = 200, description = "`Content-Length`, `Accept-Ranges: bytes`, `Last-Modified`"),
        (status = 404, description = "No `vmlinuz` in the artifacts directory"),
    ))]
async fn vmlinuz_head(State(app): State<AppState>, req: Request) -> Response {
    artifact(&app, "vmlinuz", req).await
}

/// The agent's initramfs.
#[utoipa::path(get, path = "/artifacts/initramfs.img", tag = "netboot",
    params(("Range" = Option<String>, Header, nullable = false, description = "A byte range (RFC 9110 §14.2)")),
    responses(
        (status = 200, description = "The initramfs", content_type = "application/octet-stream", body = inline(Binary)),
        (status = 206, description = "The range asked for",
            content_type = "application/octet-stream", body = inline(Binary)),
        (status = 404, description = "No `initramfs.img` in the artifacts directory"),
        (status = 416, description = "The range is past the end"),
    ))]
async fn initramfs(State(app): State<AppState>, req: Request) -> Response {
    artifact(&app, "initramfs.img", req).await
}

/// The agent's initramfs's length, without the body.
#[utoipa::path(head, path = "/artifacts/initramfs.img", tag = "netboot",
    responses(
        (status = 200, description = "`Content-Length`, `Accept-Ranges: bytes`, `Last-Modified`"),
        (status = 404, description = "No `initramfs.img` in the artifacts directory"),
    ))]
async fn initramfs_head(State(app): State<AppState>, req: Request) -> Response {
    artifact(&app, "initramfs.img", req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 host cannot get round the per-source rate by hopping
    /// addresses within its /64; another /64 is another source.
    #[test]
    fn an_ipv6_source_is_its_64() {
        let limiter = BootLimiter::new(BootRate { per_mac: 100, per_source: 2 });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(limiter.check(ip("2001:db8:0:1::a"), "52:54:00:00:00:01").is_ok());
        assert!(limiter.check(ip("2001:db8:0:1::b"), "52:54:00:00:00:02").is_ok());
        let refused = limiter.check(ip("2001:db8:0:1:ffff::c"), "52:54:00:00:00:03").unwrap_err();
        assert_eq!(refused, "too many boot requests from 2001:db8:0:1::/64; try again in a minute");
        assert!(limiter.check(ip("2001:db8:0:2::a"), "52:54:00:00:00:04").is_ok());
    }
}
