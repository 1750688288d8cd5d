//! Who may call the operator's API, as OVHcloud's SDKs authenticate:
//! the operator's API token (`Authorization: Bearer`), or a request signed
//! with an application's key and secret and a consumer key ([`authenticate`],
//! the layer before every operator route), restricted by the consumer
//! key's access rules. The `/auth/…` routes are OVHcloud's
//! (`/auth/time`, `/auth/credential`, `/auth/currentCredential`) and the
//! page where the operator validates a requested consumer key; the
//! `/me/api/…` routes manage applications and credentials (API token only,
//! for `byoi credentials`).
//!
//! **Who may call what, and what it reveals:**
//! - `GET /auth/time`: anyone; the controller's clock.
//! - `POST /auth/credential`: anyone with an application key (no secret:
//!   it travels in every request); creates a consumer key that is useless
//!   until the operator validates it, at most [`MAX_PENDING`] waiting per
//!   application; reveals nothing but the new key and its validation URL.
//! - `GET /auth/validate?credentialToken=…`: the holder of a validation
//!   token (random, one use, an hour); the requesting application's name
//!   and the rules it asks for. `POST` validates or refuses, with the API
//!   token in the form.
//! - `GET /auth/currentCredential`: a signed request; its own credential.
//! - `/me/api/…`: the API token only; applications' names and keys,
//!   credentials' rules and use. Secrets are shown once, when made: an
//!   application secret at `POST /me/api/application`, a consumer key at
//!   its creation.
//!
//! A signed request's body must be read to check its signature: it is, up
//! to the largest body an operator route takes, once the application key,
//! the time and the consumer key (its status and source networks) are
//! known to be good; its rules are checked after the signature, so an
//! unsigned request learns nothing of them.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{FromRequestParts, OriginalUri, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::rfc3339;
use super::{
    bearer, or_405, read_body, same, without_ovh_prefix, AppError, AppState, ErrorBody, Json, Peer, BYOI_BODY,
};
use crate::auth::{
    self, check_rules, parse_allowed_ips, signature, timely, AccessRule, AuthError, CredentialStatus, MAX_NAME,
    MAX_REDIRECTION,
};
use crate::db::{now, ApplicationRow, CredentialRow};
use crate::model;

/// Largest `POST /auth/credential` body: 64 rules and 32 networks fit.
pub const CREDENTIAL_BODY: usize = 16 << 10;

/// Who made an authenticated operator request (put in its extensions by
/// [`authenticate`]).
#[derive(Debug, Clone)]
pub enum Caller {
    /// The operator's API token: everything.
    ApiToken,
    /// A signed request: what the credential's rules grant (checked
    /// already).
    Credential(CredentialRow),
}

/// The routes behind [`authenticate`]: the credential a request was signed
/// with, and the management of credentials.
pub fn authenticated_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(or_405(routes!(current_credential)))
        .routes(or_405(routes!(applications, create_application)))
        .routes(or_405(routes!(application, delete_application)))
        .routes(or_405(routes!(credentials)))
        .routes(or_405(routes!(credential, delete_credential)))
        .routes(or_405(routes!(validate_credential)))
}

/// The routes without an operator credential: the clock, requesting a
/// consumer key, the validation page.
pub fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(or_405(routes!(time)))
        .routes(or_405(routes!(validation_page, validation_form)))
        .layer(axum::middleware::from_fn(super::refuse_body))
        .routes(or_405(routes!(request_credential)))
}

/// The layer before every operator route: finds the [`Caller`] or answers
/// why not (OVHcloud's errors). A bearer token is checked from the headers;
/// a signed request from its headers, then its body (read here, bounded by
/// [`BYOI_BODY`], and handed on), then its rules.
pub async fn authenticate(Extension(app): Extension<AppState>, req: Request, next: Next) -> Response {
    match identify(&app, req).await {
        Ok((caller, mut req)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// One header's value, when it is text.
fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn identify(app: &AppState, req: Request) -> Result<(Caller, Request), AppError> {
    if let Some(token) = bearer(req.headers()) {
        return if same(token, &app.cfg.api_token) {
            Ok((Caller::ApiToken, req))
        } else {
            Err(AuthError::BadToken.into())
        };
    }
    let Some(key) = text(req.headers(), "x-ovh-application") else {
        return match super::ui::cookie(req.headers(), super::ui::COOKIE) {
            Some(cookie) => {
                let cookie = cookie.to_owned();
                let (parts, body) = req.into_parts();
                Ok((session_caller(app, &cookie, &parts).await?, Request::from_parts(parts, body)))
            }
            None => Err(AuthError::NoCredential.into()),
        };
    };
    let application = app.db.application_by_key(key).await?.ok_or(AuthError::InvalidKey)?;
    let consumer = text(req.headers(), "x-ovh-consumer").ok_or(AuthError::NoConsumer)?.to_owned();
    let timestamp =
        text(req.headers(), "x-ovh-timestamp").filter(|t| timely(t, now())).ok_or(AuthError::QueryTimeOut)?.to_owned();
    let credential = app
        .db
        .credential_by_consumer(&consumer)
        .await?
        .filter(|c| c.application == application.id)
        .ok_or(AuthError::UnknownCredential)?;
    if !usable(&credential, Peer::of(req.extensions())) {
        return Err(AuthError::CredentialNotValid.into());
    }
    let sent = text(req.headers(), "x-ovh-signature").ok_or(AuthError::InvalidSignature)?.to_owned();
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, BYOI_BODY).await?;
    let url = full_url(app, &parts);
    let expected = signature(&application.secret, &consumer, parts.method.as_str(), &url, &body, &timestamp);
    if !same(&sent, &expected) {
        return Err(AuthError::InvalidSignature.into());
    }
    if !granted(&credential, &parts.method, api_path(&parts)) {
        return Err(AuthError::NotGranted.into());
    }
    if let Err(e) = app.db.touch_credential(credential.id).await {
        tracing::warn!(credential = credential.id, error = %e, "noting a credential's use");
    }
    Ok((Caller::Credential(credential), Request::from_parts(parts, Body::from(body))))
}

/// The caller a dashboard session cookie stands for: the API token, or its
/// credential (still validated, from an address it allows, its rules
/// granting the call). A change (any method but GET and HEAD) must carry
/// the session's CSRF token in `X-Byoi-Csrf`: the cookie alone is what a
/// forged cross-site request would carry.
async fn session_caller(app: &AppState, cookie: &str, parts: &Parts) -> Result<Caller, AppError> {
    let session = app.db.session(cookie).await?.ok_or(AuthError::SessionEnded)?;
    if !matches!(parts.method, Method::GET | Method::HEAD)
        && !text(&parts.headers, super::ui::CSRF_HEADER).is_some_and(|t| same(t, &session.csrf))
    {
        return Err(AuthError::NoCsrf.into());
    }
    let Some(id) = session.credential else { return Ok(Caller::ApiToken) };
    let credential = app.db.credential(id).await?.ok_or(AuthError::SessionEnded)?;
    if !usable(&credential, Peer::of(&parts.extensions)) {
        return Err(AuthError::CredentialNotValid.into());
    }
    if !granted(&credential, &parts.method, api_path(parts)) {
        return Err(AuthError::NotGranted.into());
    }
    Ok(Caller::Credential(credential))
}

/// Whether the credential's rules grant `method` on `path` (the API's
/// path, without `/1.0`); `/auth/…` is every credential's.
fn granted(c: &CredentialRow, method: &Method, path: &str) -> bool {
    path.starts_with("/auth/") || c.rules.iter().any(|r| r.grants(method, path))
}

/// Whether a credential may be used from `peer`: validated, and from an
/// address it allows.
pub(super) fn usable(c: &CredentialRow, peer: Option<IpAddr>) -> bool {
    c.status == CredentialStatus::Validated && from_allowed(c, peer)
}

/// Whether the credential may be used from `peer` (every address when it
/// has no `allowedIPs`; none when the address is unknown).
fn from_allowed(c: &CredentialRow, peer: Option<IpAddr>) -> bool {
    match (&c.allowed_ips, peer) {
        (None, _) => true,
        (Some(nets), Some(ip)) => nets.iter().any(|n| n.contains(ip)),
        (Some(_), None) => false,
    }
}

/// The request's path as the API names it: without `/1.0`.
fn api_path(parts: &Parts) -> &str {
    without_ovh_prefix(parts.extensions.get::<OriginalUri>().map_or(parts.uri.path(), |u| u.0.path()))
}

/// The base URL clients reach the API at: `--public-url`, else the
/// listener's scheme and the request's `Host`.
fn base_url(app: &AppState, headers: &HeaderMap) -> String {
    match &app.cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => format!("{}://{}", app.cfg.scheme, text(headers, header::HOST.as_str()).unwrap_or("127.0.0.1")),
    }
}

/// The URL the client signed: the base URL, and the path and query as
/// sent.
fn full_url(app: &AppState, parts: &Parts) -> String {
    let uri = parts.extensions.get::<OriginalUri>().map_or(&parts.uri, |u| &u.0);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{}{path}", base_url(app, &parts.headers))
}

/// Proof that the request is authenticated (the API token, or a signed
/// request its rules grant). Fails closed when [`authenticate`] did not
/// run.
#[derive(Debug)]
pub struct Operator;

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        parts.extensions.get::<Caller>().map(|_| Operator).ok_or(AuthError::NoCredential.into())
    }
}

/// Proof that the request carries the API token: managing credentials is
/// the operator's alone.
#[derive(Debug)]
pub struct ApiToken;

impl<S: Send + Sync> FromRequestParts<S> for ApiToken {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        match parts.extensions.get::<Caller>() {
            Some(Caller::ApiToken) => Ok(ApiToken),
            Some(Caller::Credential(_)) => Err(AuthError::TokenOnly.into()),
            None => Err(AuthError::NoCredential.into()),
        }
    }
}

/// The application named by `X-Ovh-Application`, for calls that need only
/// that.
#[derive(Debug)]
pub struct Application(ApplicationRow);

impl FromRequestParts<AppState> for Application {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, AppError> {
        let key = text(&parts.headers, "x-ovh-application").ok_or(AuthError::InvalidKey)?;
        Ok(Application(app.db.application_by_key(key).await?.ok_or(AuthError::InvalidKey)?))
    }
}

/// A credential, as OVHcloud shows one (`/me/api/credential/{id}`,
/// `/auth/currentCredential`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    /// Its id.
    pub credential_id: i64,
    /// Its application's id.
    pub application_id: i64,
    /// What it may call.
    pub rules: Vec<AccessRule>,
    /// Where it stands.
    pub status: CredentialStatus,
    /// When it was made.
    #[schema(format = DateTime)]
    pub creation: String,
    /// Pending: when it expires unless validated.
    #[schema(format = DateTime)]
    pub expiration: Option<String>,
    /// Its last use (to the minute).
    #[schema(format = DateTime)]
    pub last_use: Option<String>,
    /// The networks it may be used from; `null`: any.
    #[serde(rename = "allowedIPs")]
    pub allowed_ips: Option<Vec<String>>,
    /// Always false: no support staff here.
    pub ovh_support: bool,
}

impl CredentialView {
    fn of(c: &CredentialRow) -> CredentialView {
        CredentialView {
            credential_id: c.id,
            application_id: c.application,
            rules: c.rules.clone(),
            status: c.status,
            creation: rfc3339(c.created_at),
            expiration: c.expires_at.map(rfc3339),
            last_use: c.last_use.map(rfc3339),
            allowed_ips: c.allowed_ips.as_ref().map(|n| n.iter().map(ToString::to_string).collect()),
            ovh_support: false,
        }
    }
}

/// The controller's clock.
#[utoipa::path(get, path = "/auth/time", tag = "auth",
    responses((status = 200, description = "Unix time, in seconds", content_type = "application/json", body = i64)))]
async fn time() -> axum::Json<i64> {
    axum::Json(now())
}

/// `POST /auth/credential`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialRequest {
    /// What the consumer key may call.
    pub access_rules: Vec<AccessRule>,
    /// Where to send the user once the operator validated it.
    #[serde(default)]
    pub redirection: Option<String>,
    /// The networks it may be used from.
    #[serde(default, rename = "allowedIPs")]
    pub allowed_ips: Option<Vec<String>>,
}

/// A requested consumer key.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRequested {
    /// The consumer key: sign with it once the operator validated it.
    pub consumer_key: String,
    /// Where the operator validates it.
    pub validation_url: String,
    /// `pendingValidation`.
    pub state: CredentialStatus,
}

/// Requests a consumer key for the application of `X-Ovh-Application`;
/// it works once the operator validates it at `validationUrl` (or with
/// `byoi credentials validate`).
#[utoipa::path(post, path = "/auth/credential", tag = "auth",
    params(("X-Ovh-Application" = String, Header, description = "The application key")),
    request_body = CredentialRequest,
    responses(
        (status = 200, description = "Requested, pending validation", body = CredentialRequested),
        (status = 400, description = "Bad rules, networks or redirection, or bad JSON", body = ErrorBody),
        (status = 403, description = "No or an unknown application key (INVALID_KEY)", body = ErrorBody),
        (status = 409, description = "Too many consumer keys of this application wait for validation", body = ErrorBody),
        (status = 413, description = "The body is larger than 16 KiB", body = ErrorBody),
    ))]
async fn request_credential(
    Application(application): Application,
    State(app): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<CredentialRequest, CREDENTIAL_BODY>,
) -> Result<axum::Json<CredentialRequested>, AppError> {
    check_rules(&req.access_rules).map_err(AppError::BadRequest)?;
    let allowed_ips = parse_allowed_ips(req.allowed_ips.as_deref()).map_err(AppError::BadRequest)?;
    let redirection = req.redirection.filter(|r| !r.is_empty());
    if let Some(r) = &redirection {
        let ok = r.len() <= MAX_REDIRECTION
            && (r.starts_with("https://") || r.starts_with("http://"))
            && r.parse::<axum::http::Uri>().is_ok();
        if !ok {
            return Err(AppError::BadRequest(format!(
                "Bad redirection: an http(s) URL of at most {MAX_REDIRECTION} bytes"
            )));
        }
    }
    let requested = app
        .db
        .request_credential(application.id, req.access_rules, allowed_ips, redirection)
        .await?
        .map_err(AppError::Conflict)?;
    tracing::info!(application = %application.name, credential = requested.credential.id, "consumer key requested");
    Ok(axum::Json(CredentialRequested {
        consumer_key: requested.consumer_key,
        validation_url: format!("{}/auth/validate?credentialToken={}", base_url(&app, &headers), requested.token),
        state: CredentialStatus::PendingValidation,
    }))
}

/// The credential this request was signed with.
#[utoipa::path(get, path = "/auth/currentCredential", tag = "auth",
    security(("ovhSignature" = [])),
    responses(
        (status = 200, description = "The credential", body = CredentialView),
        (status = 400, description = "Not a signed request (the API token is no credential)", body = ErrorBody),
        (status = 401, description = "No credential", body = ErrorBody),
        (status = 403, description = "A refused credential (see errorCode)", body = ErrorBody),
    ))]
async fn current_credential(caller: Extension<Caller>) -> Result<axum::Json<CredentialView>, AppError> {
    match &caller.0 {
        Caller::Credential(c) => Ok(axum::Json(CredentialView::of(c))),
        Caller::ApiToken => Err(AppError::BadRequest(
            "The API token is not an application credential: sign the request with an application key and a \
             consumer key to see its credential"
                .into(),
        )),
    }
}

/// The validation page's query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct ValidationQuery {
    /// The token of the validation URL.
    pub credential_token: String,
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.chars().fold(String::with_capacity(s.len()), |mut out, c| {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
        out
    })
}

/// A small page, with headers that keep it out of frames and caches.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#111}}\
         code{{background:#eee;padding:0 .2em}}label{{display:block;margin:.5rem 0}}button{{margin-right:.5rem}}</style>\
         </head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        // No form-action: browsers apply it to the redirect that follows a
        // validation, which goes to the requester's own `redirection`.
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

fn unknown_token() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Unknown validation link",
        "<p>This validation link is unknown, expired (an hour), or already used. Ask the application to request a \
         new consumer key.</p>",
    )
}

/// The page where the operator validates a requested consumer key: the
/// application's name, the rules it asks for, a form for the API token.
#[utoipa::path(get, path = "/auth/validate", tag = "auth", params(ValidationQuery),
    responses(
        (status = 200, description = "The page (HTML)", content_type = "text/html", body = String),
        (status = 400, description = "No credentialToken", body = ErrorBody),
        (status = 404, description = "No consumer key waits under this token (HTML)", content_type = "text/html",
            body = String),
    ))]
async fn validation_page(
    State(app): State<AppState>,
    q: Result<Query<ValidationQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = q.map_err(|e| AppError::BadRequest(format!("Bad query: {}", e.body_text())))?;
    let Some((cred, application)) = app.db.pending_credential(&q.credential_token).await? else {
        return Ok(unknown_token());
    };
    let rules: String =
        cred.rules.iter().map(|r| format!("<li><code>{} {}</code></li>", r.method.as_str(), escape(&r.path))).collect();
    let nets = match &cred.allowed_ips {
        Some(n) => format!(
            "<p>Only from: {}</p>",
            n.iter().map(|n| format!("<code>{n}</code>")).collect::<Vec<_>>().join(", ")
        ),
        None => String::new(),
    };
    let body = format!(
        "<p>The application <strong>{name}</strong> asks for a consumer key that may call:</p><ul>{rules}</ul>{nets}\
         <form method=\"post\" action=\"validate\"><input type=\"hidden\" name=\"credentialToken\" value=\"{token}\">\
         <label>API token <input type=\"password\" name=\"apiToken\" autocomplete=\"current-password\" required></label>\
         <button name=\"action\" value=\"validate\">Validate</button><button name=\"action\" value=\"refuse\">Refuse</button>\
         </form><p>Or on the controller's host: <code>byoi credentials validate TOKEN</code>.</p>",
        name = escape(&application.name),
        token = escape(&q.credential_token),
    );
    Ok(page(StatusCode::OK, "Validate a consumer key", &body))
}

/// What the validation page's form sends.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationForm {
    /// The token of the validation URL.
    pub credential_token: String,
    /// The operator's API token.
    pub api_token: String,
    /// What to do.
    pub action: Decision,
}

/// The operator's decision on a requested consumer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// It may be used.
    Validate,
    /// It may never be used.
    Refuse,
}

/// Validates or refuses a requested consumer key, with the API token;
/// then, when validated and the request named one, on to its
/// `redirection`.
#[utoipa::path(post, path = "/auth/validate", tag = "auth",
    request_body(content = ValidationForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Done (HTML)", content_type = "text/html", body = String),
        (status = 303, description = "Validated: on to the requester's redirection"),
        (status = 400, description = "Not the page's form", body = ErrorBody),
        (status = 403, description = "A wrong API token (HTML); nothing changed", content_type = "text/html",
            body = String),
        (status = 404, description = "No consumer key waits under this token (HTML)", content_type = "text/html",
            body = String),
    ))]
async fn validation_form(
    State(app): State<AppState>,
    f: Result<Form<ValidationForm>, FormRejection>,
) -> Result<Response, AppError> {
    let Form(f) = f.map_err(|e| AppError::BadRequest(format!("Bad form: {}", e.body_text())))?;
    if !same(&f.api_token, &app.cfg.api_token) {
        return Ok(page(
            StatusCode::FORBIDDEN,
            "Wrong API token",
            "<p>That is not the controller's API token: nothing was changed. Go back and try again.</p>",
        ));
    }
    let Some(cred) = app.db.decide_credential(&f.credential_token, f.action == Decision::Validate).await? else {
        return Ok(unknown_token());
    };
    tracing::info!(credential = cred.id, status = cred.status.as_str(), "consumer key decided (validation page)");
    Ok(match (f.action, &cred.redirection) {
        (Decision::Validate, Some(to)) => Redirect::to(to).into_response(),
        (Decision::Validate, None) => {
            page(StatusCode::OK, "Validated", "<p>The consumer key is validated: the application may use it now.</p>")
        }
        (Decision::Refuse, _) => page(StatusCode::OK, "Refused", "<p>The consumer key is refused.</p>"),
    })
}

/// `POST /me/api/credential/validate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidateRequest {
    /// The token of the validation URL.
    pub credential_token: String,
    /// What to do (default: validate).
    #[serde(default = "validate")]
    pub action: Decision,
}

fn validate() -> Decision {
    Decision::Validate
}

/// Validates or refuses a requested consumer key by the token of its
/// validation URL (`byoi credentials validate`).
#[utoipa::path(post, path = "/me/api/credential/validate", tag = "auth", security(("apiToken" = [])),
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "The credential, decided", body = CredentialView),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 403, description = "Not the API token (NOT_GRANTED_CALL)", body = ErrorBody),
        (status = 404, description = "No consumer key waits under this token", body = ErrorBody),
    ))]
async fn validate_credential(
    _: ApiToken,
    State(app): State<AppState>,
    Json(v): Json<ValidateRequest>,
) -> Result<axum::Json<CredentialView>, AppError> {
    let cred =
        app.db.decide_credential(&v.credential_token, v.action == Decision::Validate).await?.ok_or_else(|| {
            AppError::NotFound(
                "No consumer key waits for validation under this token (unknown, expired or used)".into(),
            )
        })?;
    tracing::info!(credential = cred.id, status = cred.status.as_str(), "consumer key decided");
    Ok(axum::Json(CredentialView::of(&cred)))
}

/// `POST /me/api/application`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewApplicationRequest {
    /// A name for it (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// The first consumer key's rules (default: every method on `/*`).
    #[serde(default)]
    pub rules: Option<Vec<AccessRule>>,
    /// The networks the first consumer key may be used from.
    #[serde(default, rename = "allowedIPs")]
    pub allowed_ips: Option<Vec<String>>,
    /// Make no consumer key: the application requests its own
    /// (`POST /auth/credential`).
    #[serde(default)]
    pub application_only: bool,
}

/// A new application, with its secrets (shown this once).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationCreated {
    /// Its id.
    pub application_id: i64,
    /// Its name.
    pub name: String,
    /// The application key.
    pub application_key: String,
    /// The application secret.
    pub application_secret: String,
    /// The first consumer key, validated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_key: Option<String>,
    /// Its credential's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<i64>,
}

/// An application, as OVHcloud shows one (without its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationView {
    /// Its id.
    pub application_id: i64,
    /// Its name.
    pub name: String,
    /// Its application key.
    pub application_key: String,
    /// Always `active`: a revoked application is deleted.
    pub status: &'static str,
    /// When it was made.
    #[schema(format = DateTime)]
    pub creation: String,
}

/// Makes an application, and unless `applicationOnly` a validated consumer
/// key (`byoi credentials add`).
#[utoipa::path(post, path = "/me/api/application", tag = "auth", security(("apiToken" = [])),
    request_body = NewApplicationRequest,
    responses(
        (status = 201, description = "Made; its secrets are shown this once", body = ApplicationCreated),
        (status = 400, description = "A bad name, rule or network, or bad JSON", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 403, description = "Not the API token (NOT_GRANTED_CALL)", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
async fn create_application(
    _: ApiToken,
    State(app): State<AppState>,
    Json(n): Json<NewApplicationRequest>,
) -> Result<(StatusCode, axum::Json<ApplicationCreated>), AppError> {
    if !model::valid_name(&n.name) || n.name.len() > MAX_NAME {
        return Err(AppError::BadRequest(format!(
            "Bad application name {:?}: {}, at most {MAX_NAME} bytes",
            n.name.chars().take(MAX_NAME).collect::<String>(),
            model::NAME_RULE
        )));
    }
    let rules = n.rules.unwrap_or_else(auth::all_rules);
    check_rules(&rules).map_err(AppError::BadRequest)?;
    let allowed_ips = parse_allowed_ips(n.allowed_ips.as_deref()).map_err(AppError::BadRequest)?;
    let made = app
        .db
        .create_application(&n.name, rules, allowed_ips, n.application_only)
        .await?
        .map_err(AppError::Conflict)?;
    tracing::info!(application = %made.application.name, "application created");
    let (consumer_key, credential_id) = match made.consumer {
        Some((key, c)) => (Some(key), Some(c.id)),
        None => (None, None),
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(ApplicationCreated {
            application_id: made.application.id,
            name: made.application.name,
            application_key: made.application.key,
            application_secret: made.application.secret,
            consumer_key,
            credential_id,
        }),
    ))
}

/// The applications' ids.
#[utoipa::path(get, path = "/me/api/application", tag = "auth", security(("apiToken" = [])),
    responses(
        (status = 200, description = "Their ids", body = Vec<i64>),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 403, description = "Not the API token (NOT_GRANTED_CALL)", body = ErrorBody),
    ))]
async fn applications(_: ApiToken, State(app): State<AppState>) -> Result<axum::Json<Vec<i64>>, AppError> {
    Ok(axum::Json(app.db.applications().await?.iter().map(|a| a.id).collect()))
}

fn no_object(what: &str, id: &str) -> AppError {
    AppError::NotFound(format!("The requested object ({what} = {id}) does not exist"))
}

/// The id of a path, or 404 as OVHcloud answers an unknown one.
fn object_id(what: &str, id: &str) -> Result<i64, AppError> {
    id.parse().map_err(|_| no_object(what, &id.chars().take(32).collect::<String>()))
}

/// An application.
#[utoipa::path(get, path = "/me/api/application/{applicationId}", tag = "auth", security(("apiToken" = [])),
    params(("applicationId" = i64, Path, description = "Its id")),
    responses(
        (status = 200, description = "The application", body = ApplicationView),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 403, description = "Not the API token (NOT_GRANTED_CALL)", body = ErrorBody),
        (status = 404, description = "No such application", body = ErrorBody),
    ))]
async fn application(
    _: ApiToken,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<ApplicationView>, AppError> {
    let a =
        app.db.application(object_id("applicationId", &id)?).await?.ok_or_else(|| no_object("applicationId", &id))?;
    Ok(axum::Json(ApplicationView {
        application_id: a.id,
        name: a.name,
        application_key: a.key,
        status: "active",
        creation: rfc3339(a.created_at),
    }))
}

/// Revokes an application: it and all its consumer keys stop working.
#[utoipa::path(delete, path = "/me/api/application/{applicationId}", tag = "auth", security(("apiToken" = [])),
    params(("applicationId" = i64, Path, description = "Its id")),
    responses(
        (status = 200, description = "Revoked (null)", body = ()),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 403, description = "Not the API token (NOT_GRANTED_CALL)", body = ErrorBody),
        (status = 404, description = "No such application", body = ErrorBody),
    ))]
async fn delete_application(
    _: ApiToken,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<()>, AppError> {
    if !app.db.delete_application(object_id("applicationId", &id)?).await? {
        return Err(no_object("applicationId", &id));
    }
    tracing::info!(application = id, "application revoked");
    Ok(axum::Json(()))
}

/// `GET /me/api/credential`'s filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct CredentialFilter {
    /// Only this application's.
    pub application_id: Option<i64>,
    /// Only those in this status.
    pub status: Option<CredentialStatus>,
}

/// The credentials' ids.
#[utoipa::path(get, path = "/me/api/credential", tag = "auth", security(("apiToken" = [])),
    params(CredentialFilter),
    responses(
        (status = 200, description = "Their ids", body = Vec<i64>),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 403, description = "Not the API token (NOT_GRANTED_CALL)", body = ErrorBody),
    ))]
async fn credentials(
    _: ApiToken,
    State(app): State<AppState>,
    filter: Result<Query<CredentialFilter>, QueryRejection>,
) -> Result<axum::Json<Vec<i64>>, AppError> {
    let Query(f) = filter.map_err(|e| AppError::BadRequest(format!("Bad filter: {}", e.body_text())))?;
    let all = app.db.credentials().await?;
    Ok(axum::Json(
        all.iter()
            .filter(|c| f.application_id.is_none_or(|a| c.application == a) && f.status.is_none_or(|s| c.status == s))
            .map(|c| c.id)
            .collect(),
    ))
}

/// A credential.
#[utoipa::path(get, path = "/me/api/credential/{credentialId}", tag = "auth", security(("apiToken" = [])),
    params(("credentialId" = i64, Path, description = "Its id")),
    responses(
        (status = 200, description = "The credential", body = CredentialView),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 403, description = "Not the API token (NOT_GRANTED_CALL)", body = ErrorBody),
        (status = 404, description = "No such credential", body = ErrorBody),
    ))]
async fn credential(
    _: ApiToken,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<CredentialView>, AppError> {
    let c = app.db.credential(object_id("credentialId", &id)?).await?.ok_or_else(|| no_object("credentialId", &id))?;
    Ok(axum::Json(CredentialView::of(&c)))
}

/// Revokes a consumer key.
#[utoipa::path(delete, path = "/me/api/credential/{credentialId}", tag = "auth", security(("apiToken" = [])),
    params(("credentialId" = i64, Path, description = "Its id")),
    responses(
        (status = 200, description = "Revoked (null)", body = ()),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 403, description = "Not the API token (NOT_GRANTED_CALL)", body = ErrorBody),
        (status = 404, description = "No such credential", body = ErrorBody),
    ))]
async fn delete_credential(
    _: ApiToken,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<()>, AppError> {
    if !app.db.delete_credential(object_id("credentialId", &id)?).await? {
        return Err(no_object("credentialId", &id));
    }
    tracing::info!(credential = id, "credential revoked");
    Ok(axum::Json(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
