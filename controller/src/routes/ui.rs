//! The web dashboard (`/ui`): a page and its script and stylesheet, built
//! into the binary (`controller/ui/`), which read and change everything
//! through the API with a session cookie.
//!
//! **Who may call it:** anyone may fetch the login page and post to it;
//! `POST /ui/login` opens a session for the API token, or for a validated
//! credential (application key, application secret and consumer key, its
//! `allowedIPs` applied), whose access rules then bound the session. The
//! page, its assets and `POST /ui/logout` need the session's cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS); the API takes the
//! cookie too ([`super::auth`]), and a change (any method but GET and HEAD)
//! also needs the session's CSRF token in `X-Byoi-Csrf`.
//! **What it reveals:** without a session, the login page alone (static);
//! with one, what the API reveals to that credential.
//!
//! Every answer carries a strict Content Security Policy (scripts and
//! styles from this origin only; the login page's inline style by its
//! hash), `X-Frame-Options: DENY` and `Cache-Control: no-store`.

use std::net::IpAddr;
use std::sync::LazyLock;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use base64::Engine;
use serde::Deserialize;
use sha2::Digest;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{or_405, same, AppError, AppState, ErrorBody, Peer};

/// The session cookie's name.
pub const COOKIE: &str = "byoi_session";

/// The header a change made with the session's cookie carries its CSRF
/// token in.
pub const CSRF_HEADER: &str = "x-byoi-csrf";

/// How long a session lasts (seconds).
pub const SESSION_TTL: i64 = 12 * 3600;

const INDEX: &str = include_str!("../../ui/index.html");
const LOGIN: &str = include_str!("../../ui/login.html");
const LOGIN_CSS: &str = include_str!("../../ui/login.css");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// The Content Security Policy of every answer under `/ui`: this origin's
/// scripts, styles and connections, and the login page's inline style by
/// its SHA-256.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(LOGIN_CSS.as_bytes()));
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'sha256-{hash}'; connect-src 'self'; \
         img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&policy).expect("a header value")
});

/// The dashboard's routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(or_405(routes!(root)))
        .routes(or_405(routes!(page)))
        .routes(or_405(routes!(login_page, login)))
        .routes(or_405(routes!(logout)))
        .routes(or_405(routes!(script)))
        .routes(or_405(routes!(stylesheet)))
}

/// An answer with the dashboard's security headers.
fn secured(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Text for an HTML page: `<`, `>`, `&` and quotes escaped.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// The cookie `name`'s value in `headers`.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// A browser's live session, from its cookie.
#[derive(Debug)]
pub struct Session {
    /// The cookie's value.
    pub cookie: String,
    /// Its CSRF token.
    pub csrf: String,
    /// The credential it logged in with, if not the API token.
    pub credential: Option<i64>,
}

/// No session: the page redirects to the login page, anything else is 401.
#[derive(Debug)]
pub enum NoSession {
    /// Send the browser to log in.
    Login,
    /// The database failed.
    Db(AppError),
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::Login => Redirect::to("/ui/login").into_response(),
            NoSession::Db(e) => e.into_response(),
        }
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = NoSession;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, NoSession> {
        let cookie = cookie(&parts.headers, COOKIE).ok_or(NoSession::Login)?.to_owned();
        let row = app.db.session(&cookie).await.map_err(|e| NoSession::Db(e.into()))?.ok_or(NoSession::Login)?;
        Ok(Session { cookie, csrf: row.csrf, credential: row.credential })
    }
}

/// `/`: the dashboard.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 303, description = "To the dashboard, `/ui/`")))]
async fn root() -> Redirect {
    Redirect::to("/ui/")
}

/// The dashboard's page: the fleet, a server, the deploy form.
#[utoipa::path(get, path = "/ui/", tag = "dashboard",
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 303, description = "No session: to the login page"),
    ))]
async fn page(session: Session, State(app): State<AppState>) -> Result<Response, AppError> {
    let who = match session.credential {
        None => "API token".to_owned(),
        Some(id) => match app.db.credential(id).await? {
            Some(c) => format!("credential {}", c.id),
            None => "a revoked credential".to_owned(),
        },
    };
    let body = INDEX.replace("{{csrf}}", &escape(&session.csrf)).replace("{{who}}", &escape(&who));
    Ok(secured(StatusCode::OK, "text/html; charset=utf-8", body))
}

/// The login page, with `error` said above the form.
fn login_form(status: StatusCode, error: &str) -> Response {
    let body = LOGIN.replace("{{style}}", LOGIN_CSS).replace("{{error}}", &escape(error));
    secured(status, "text/html; charset=utf-8", body)
}

/// The login page.
#[utoipa::path(get, path = "/ui/login", tag = "dashboard",
    responses((status = 200, description = "The login page", content_type = "text/html")))]
async fn login_page() -> Response {
    login_form(StatusCode::OK, "")
}

/// `POST /ui/login`: the API token, or a credential's three keys.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Login {
    /// The API token.
    #[serde(default)]
    pub token: String,
    /// A credential's application key.
    #[serde(default)]
    pub application_key: String,
    /// Its application secret.
    #[serde(default)]
    pub application_secret: String,
    /// Its consumer key.
    #[serde(default)]
    pub consumer_key: String,
}

/// Whom a login names: the API token, or a credential; `None` when it
/// names nobody (which part was wrong is not said).
async fn who_logs_in(app: &AppState, login: &Login, peer: IpAddr) -> Result<Option<Option<i64>>, AppError> {
    if !login.token.is_empty() {
        return Ok(same(&login.token, &app.cfg.api_token).then_some(None));
    }
    if login.application_key.is_empty() || login.consumer_key.is_empty() {
        return Ok(None);
    }
    let Some(application) = app.db.application_by_key(&login.application_key).await? else { return Ok(None) };
    if !same(&login.application_secret, &application.secret) {
        return Ok(None);
    }
    let credential = app.db.credential_by_consumer(&login.consumer_key).await?;
    Ok(credential.filter(|c| c.application == application.id && super::auth::usable(c, Some(peer))).map(|c| Some(c.id)))
}

/// Opens a session: its cookie, and to the dashboard.
#[utoipa::path(post, path = "/ui/login", tag = "dashboard",
    request_body(content = Login, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Logged in: the session cookie, and to the dashboard"),
        (status = 401, description = "Wrong token or credential: the login page again, saying so",
            content_type = "text/html"),
        (status = 403, description = "Posted from another site's page (`Sec-Fetch-Site`): the login page again",
            content_type = "text/html"),
        (status = 413, description = "The body is larger than 4 KiB", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn login(
    State(app): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(login): Form<Login>,
) -> Result<Response, AppError> {
    // Another site's form must not log a browser in to a session of its
    // choosing (login CSRF): browsers say where a form came from.
    if headers.get("sec-fetch-site").is_some_and(|v| v != "same-origin" && v != "none") {
        return Ok(login_form(StatusCode::FORBIDDEN, "Log in from this page."));
    }
    let Some(credential) = who_logs_in(&app, &login, peer).await? else {
        tracing::warn!(source = %peer, "dashboard login refused");
        return Ok(login_form(StatusCode::UNAUTHORIZED, "Wrong token or credential."));
    };
    let session = app.db.open_session(credential, peer, SESSION_TTL).await?;
    tracing::info!(source = %peer, credential = ?credential, "dashboard login");
    Ok(with_cookie(&app, Redirect::to("/ui/"), &session.cookie, SESSION_TTL))
}

/// `POST /ui/logout`'s form.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct Logout {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

/// Ends the session.
#[utoipa::path(post, path = "/ui/logout", tag = "dashboard",
    request_body(content = Logout, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Logged out: the cookie cleared, and to the login page"),
        (status = 403, description = "Not the session's CSRF token", body = ErrorBody),
        (status = 413, description = "The body is larger than 4 KiB", body = ErrorBody),
    ))]
async fn logout(session: Session, State(app): State<AppState>, Form(form): Form<Logout>) -> Result<Response, AppError> {
    if !same(&form.csrf, &session.csrf) {
        return Err(AppError::Forbidden("Not this session's CSRF token".into()));
    }
    app.db.close_session(&session.cookie).await?;
    Ok(with_cookie(&app, Redirect::to("/ui/login"), "", 0))
}

/// `r` setting the session cookie to `value` for `max_age` seconds (0:
/// clearing it): `HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS.
fn with_cookie(app: &AppState, r: Redirect, value: &str, max_age: i64) -> Response {
    let secure = if app.cfg.scheme == "https" { "; Secure" } else { "" };
    let set = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut r = r.into_response();
    // The value is a hex secret: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&set) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The dashboard's script.
#[utoipa::path(get, path = "/ui/app.js", tag = "dashboard",
    responses(
        (status = 200, description = "The script", content_type = "text/javascript"),
        (status = 303, description = "No session: to the login page"),
    ))]
async fn script(_: Session) -> Response {
    secured(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS.to_owned())
}

/// The dashboard's stylesheet.
#[utoipa::path(get, path = "/ui/app.css", tag = "dashboard",
    responses(
        (status = 200, description = "The stylesheet", content_type = "text/css"),
        (status = 303, description = "No session: to the login page"),
    ))]
async fn stylesheet(_: Session) -> Response {
    secured(StatusCode::OK, "text/css; charset=utf-8", APP_CSS.to_owned())
}
