//! The controller's HTTP surface on axum, split by audience:
//! [`operator`] (the BYOI API, operator token), [`agent`] (the agent
//! protocol, per-boot agent tokens), [`netboot`] (iPXE scripts and the
//! agent's kernel and initramfs, no credentials). [`router`] puts them
//! together with the layers every request goes through: a request id on
//! every log line, tracing, timeouts. Tests drive the router without a
//! socket (`tower::ServiceExt::oneshot`). [`Surface`] says which of them
//! a listener serves: all of them (one listener), or, with a separate
//! netboot listener, the API and agent protocol on one (HTTPS) and the
//! netboot routes on the other (plain HTTP, for iPXE).
//!
//! Bodies: a route that needs no credentials (netboot, `/openapi.json`, the
//! fallback) reads none, and refuses one declared larger than
//! [`UNAUTHENTICATED_BODY`] (or of unknown length) with 413 before its
//! handler runs. The other routes take their credential with an extractor
//! that runs before the body's ([`Json`]), so a missing or wrong token is
//! answered 401 without a byte of the body read (hyper then closes the
//! connection rather than read the rest); their bodies are capped by
//! `Json`'s `MAX`. The body's deadline is the connection's
//! ([`crate::edge::DeadlineBody`], `--body-timeout`).
//!
//! Every handler carries its `#[utoipa::path]` and is registered with
//! utoipa-axum's `routes!`, which adds the route and its documentation
//! together: the OpenAPI document ([`openapi`], served at `/openapi.json`)
//! cannot name a route the router does not answer, nor miss one.

pub mod agent;
pub mod auth;
pub mod discovered;
pub mod error;
pub mod fleet;
pub mod health;
pub mod inspect;
pub mod logs;
pub mod metrics;
pub mod netboot;
pub mod operator;
pub mod power;
pub mod reinstall;
pub mod ui;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::extract::{FromRequest, Request};
use axum::handler::Handler;
use axum::http::{header, uri::Authority, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use serde::de::DeserializeOwned;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

pub use error::{AgentError, AgentErrorBody, AppError, ErrorBody};

use crate::db::{Db, Lease, Payload};
use crate::ipxe;

/// Largest body of any request but a BYOI POST.
pub const SMALL_BODY: usize = 1 << 20;
/// Largest BYOI POST: 16 MiB of user data, base64 encoded, and room.
pub const BYOI_BODY: usize = 24 << 20;
/// Longest a handler may take: a power cycle that fails and is followed by
/// a power-on may take two driver timeouts.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(150);
/// Largest body a route without credentials takes (it reads none; iPXE
/// sends none): an unauthenticated client cannot make the controller read
/// more.
pub const UNAUTHENTICATED_BODY: usize = 4 << 10;

/// How the controller is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The operator's API token.
    pub api_token: String,
    /// Where `vmlinuz` and `initramfs.img` are.
    pub artifacts: PathBuf,
    /// `--public-url`: the URL servers reach the API and the agent
    /// protocol at; else derived from the `Host` of the script request.
    pub public_url: Option<String>,
    /// `--agent-url`: every URL the agent may reach the controller at
    /// (the replicas sharing its database), in order; empty: the agent's
    /// URL as [`Config::script_urls`] derives it.
    pub agent_urls: Vec<String>,
    /// The main listener's scheme, for URLs derived from `Host`.
    pub scheme: &'static str,
    /// Whether netboot has a listener of its own.
    pub listeners: Listeners,
    /// Silence after which a running deployment fails.
    pub agent_timeout: Duration,
    /// Time for a server to netboot into the agent after a POST.
    pub boot_timeout: Duration,
    /// Time a running deployment may go without its bytes or stage moving.
    pub stall_timeout: Duration,
    /// The rate limits of `/boot/{mac}`.
    pub boot_limiter: Arc<netboot::BootLimiter>,
    /// The power commands and the ipmitool the API may refer to.
    pub power: crate::power::PowerConfig,
    /// `--metrics-token`: a token that may read `/metrics` and nothing
    /// else (the API token may too).
    pub metrics_token: Option<String>,
    /// `--enlist`: machines no server has may netboot the agent in
    /// discover mode; `None`: they get the unknown-MAC script.
    pub enlist: Option<discovered::Enlistment>,
}

/// Which listeners serve which routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listeners {
    /// One listener serves every route ([`Surface::All`]).
    One,
    /// The main listener serves the API and the agent protocol
    /// ([`Surface::Api`]); a plain-HTTP listener of its own serves netboot
    /// ([`Surface::Netboot`]).
    Split {
        /// The main listener's port, for the agent's URL when it is derived
        /// from the `Host` iPXE sent to the netboot listener.
        api_port: u16,
        /// `--netboot-public-url`: the netboot listener's URL; else
        /// `http://` and the `Host` of the script request.
        netboot_public_url: Option<String>,
    },
}

impl Config {
    /// The URLs an iPXE script names, for a script request with `headers`
    /// (received by the listener that serves netboot).
    ///
    /// One listener: both are `--public-url`, else `SCHEME://HOST` from the
    /// request. Split: the netboot URL is `--netboot-public-url`, else
    /// `http://HOST`; the agent's is `--public-url`, else the request's
    /// host name with the main listener's scheme and port. `--agent-url`
    /// replaces the agent's.
    pub fn script_urls(&self, headers: &HeaderMap) -> ipxe::Urls {
        let mut urls = self.derived_urls(headers);
        if !self.agent_urls.is_empty() {
            urls.controllers.clone_from(&self.agent_urls);
        }
        urls
    }

    fn derived_urls(&self, headers: &HeaderMap) -> ipxe::Urls {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
        let given = |u: &Option<String>| u.as_deref().map(|u| u.trim_end_matches('/').to_owned());
        match &self.listeners {
            Listeners::One => {
                let base = given(&self.public_url).unwrap_or_else(|| format!("{}://{host}", self.scheme));
                ipxe::Urls { netboot: base.clone(), controllers: vec![base] }
            }
            Listeners::Split { api_port, netboot_public_url } => {
                let netboot = given(netboot_public_url).unwrap_or_else(|| format!("http://{host}"));
                let controller = given(&self.public_url).unwrap_or_else(|| {
                    // `Authority::host` keeps an IPv6 address's brackets.
                    let name = host.parse::<Authority>().map(|a| a.host().to_owned()).unwrap_or_default();
                    let name = if name.is_empty() { "127.0.0.1" } else { &name };
                    format!("{}://{name}:{api_port}", self.scheme)
                });
                ipxe::Urls { netboot, controllers: vec![controller] }
            }
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The database.
    pub db: Db,
    /// The configuration.
    pub cfg: Config,
    /// What this process counts (`/metrics`).
    pub metrics: crate::metrics::Metrics,
}

impl App {
    /// The state of a controller on `db` set up as `cfg`, its counters at
    /// zero.
    pub fn new(db: Db, cfg: Config) -> App {
        App { db, cfg, metrics: crate::metrics::Metrics::default() }
    }
}

/// The state handlers get.
pub type AppState = Arc<App>;

impl App {
    /// Runs the power jobs whose controller died before running them
    /// (their lease ran out), one at a time, each leased to this one.
    pub async fn take_over_power_jobs(self: &Arc<Self>) {
        loop {
            let (id, server) = match self.db.take_power_job().await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(e) => return tracing::error!(error = %e, "looking for power jobs"),
            };
            tracing::warn!(%server, job = id, "taking over a power cycle its controller did not finish");
            if let Err(e) = power::cycle_into_agent(self, &server, Some(id)).await {
                let message = format!("could not power-cycle {server}: {e}");
                tracing::error!(%server, "{message}");
                if let Err(e) =
                    self.db.apply(&server, crate::lifecycle::Event::PowerFailed { message }, Payload::None).await
                {
                    tracing::error!(%server, error = %e, "recording the power failure");
                }
            }
        }
    }

    /// The watchdog's tick: one controller on a database, the holder of
    /// the `watchdog` lease (`lease` seconds, renewed at each tick), fails
    /// the deployments whose agents fell silent; another takes over within
    /// `lease` of its death. The controller that takes the lease when no
    /// one held it (a start, or every controller was down) first gives
    /// running deployments a full timeout: their agents could not report.
    pub async fn watch(&self, lease: i64) -> Option<Lease> {
        let held = match self.db.lease("watchdog", lease).await {
            Ok(held) => held,
            Err(e) => {
                tracing::error!(error = %e, "taking the watchdog's lease");
                return None;
            }
        };
        if held == Lease::Taken {
            if let Err(e) = self.db.refresh_running().await {
                tracing::error!(error = %e, "giving running deployments a full timeout");
                return Some(held);
            }
        }
        if held != Lease::Elsewhere {
            self.expire_silent_agents().await;
        }
        Some(held)
    }

    /// Fails running deployments whose agent went silent, never booted or
    /// stalled; run periodically.
    pub async fn expire_silent_agents(&self) {
        let secs = |d: Duration| d.as_secs() as i64;
        let (agent, boot, stall) = (self.cfg.agent_timeout, self.cfg.boot_timeout, self.cfg.stall_timeout);
        let silent = self.db.silent(secs(agent), secs(boot), secs(stall)).await;
        let silent = match silent {
            Ok(s) => s,
            Err(e) => return tracing::error!(error = %e, "looking for silent agents"),
        };
        for (server, event) in silent {
            match self.db.apply(&server, event, Payload::None).await {
                Ok(Some(a)) => {
                    if let Some(d) = a.latest.filter(|d| d.status == byoi_wire::Status::Error) {
                        tracing::warn!(%server, deployment = d.id, "the deployment failed: {}", d.message);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(%server, error = %e, "expiring a silent agent"),
            }
        }
    }
}

/// The document's `info.description`.
const DESCRIPTION: &str = "Bring Your Own Image for bare-metal servers, modelled on OVHcloud's BYOI API \
(`/dedicated/server/…`). The operator's routes and `/auth/…` also answer under `/1.0`, so that OVHcloud's SDKs \
(endpoint `https://HOST/1.0`) call them as they call OVHcloud.\n\n\
Who authenticates how: the operator's routes take `Authorization: Bearer API_TOKEN` (`apiToken`), or a request \
signed as OVHcloud's are (`ovhSignature`: `X-Ovh-Application`, `X-Ovh-Consumer`, `X-Ovh-Timestamp`, \
`X-Ovh-Signature`) with a credential whose access rules grant the call; credential management (`/me/api/…`) takes \
the API token only; the agent protocol (`/agent/v1/…`) takes the per-boot agent token minted with the server's \
boot script (`agentToken`), and its errors also carry the `action` the agent must take; the netboot routes \
(iPXE scripts, the agent's kernel and initramfs), `/auth/time`, `/auth/validate`, `/healthz`, `/readyz` and this \
document take none; \
`/auth/credential` takes an application key.\n\n\
Errors are `{\"class\": \"Client::NotFound\", \"message\": …}` with a 4xx or 5xx status, as OVHcloud's; a \
refused credential adds OVHcloud's `errorCode` and `httpCode`. Any route may answer 503 with `Retry-After` while the \
database is unreachable or a change lost a race to another controller's: nothing changed, try again. Every answer \
carries `X-Ovh-QueryId`.";

/// The document's frame: info, security schemes, tags. Paths and schemas
/// come from the routes.
fn frame() -> OpenApi {
    let bearer = |description: &str| {
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build())
    };
    let tag = |name: &str, description: &str| TagBuilder::new().name(name).description(Some(description)).build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("byoi controller")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(DESCRIPTION))
                .license(Some(
                    LicenseBuilder::new()
                        .name(env!("CARGO_PKG_LICENSE"))
                        .identifier(Some(env!("CARGO_PKG_LICENSE")))
                        .build(),
                )),
        )
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    "apiToken",
                    bearer("The operator's API token (`--api-token`, `$BYOI_API_TOKEN` or `DATA_DIR/api-token`)"),
                )
                .security_scheme(
                    "ovhSignature",
                    SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                        utoipa::openapi::security::ApiKeyValue::with_description(
                            "X-Ovh-Signature",
                            "A request signed as OVHcloud's SDKs sign them: X-Ovh-Application (application key), \
                             X-Ovh-Consumer (consumer key), X-Ovh-Timestamp (within 180 s of /auth/time), \
                             X-Ovh-Signature = \"$1$\" + hex(SHA-1(applicationSecret+consumerKey+METHOD+URL+body+timestamp)); \
                             the credential's access rules must grant the call",
                        ),
                    )),
                )
                .security_scheme(
                    "metricsToken",
                    bearer("A token that reads `/metrics` and nothing else (`--metrics-token`, `$BYOI_METRICS_TOKEN`)"),
                )
                .security_scheme(
                    "agentToken",
                    bearer("A per-boot agent token, minted with the boot script `/boot/{mac}` served the server"),
                )
                .build(),
        ))
        .tags(Some([
            tag("operator", "The BYOI API: servers, deployments, hardware. API token or a signed request."),
            tag("auth", "OVHcloud's authentication: the clock, consumer keys and their validation, and managing \
                applications and credentials (API token)."),
            tag("agent", "The agent protocol: what a netbooted agent says to the controller. Agent token."),
            tag("netboot", "iPXE scripts and the agent's kernel and initramfs. No credentials."),
            tag("meta", "This document, health and readiness (no credentials), metrics (metrics or API token)."),
        ]))
        .build()
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Every route: the only listener.
    All,
    /// The operator API, the agent protocol and `/openapi.json`: the main
    /// listener when netboot has its own.
    Api,
    /// The iPXE scripts and the agent's kernel and initramfs: the netboot
    /// listener.
    Netboot,
}

/// The operator's API: its routes behind [`auth::authenticate`], and the
/// `/auth` routes that take no operator credential. It also answers under
/// `/1.0`, where OVHcloud's SDKs call it.
fn api() -> OpenApiRouter<AppState> {
    operator::routes()
        .merge(auth::authenticated_routes())
        .layer(axum::middleware::from_fn(auth::authenticate))
        .merge(auth::open_routes())
}

/// The prefix OVHcloud's SDKs call the API under (their endpoint is
/// `https://HOST/1.0`).
pub const OVH_PREFIX: &str = "/1.0";

/// The routes of `surface` with their documentation, without state or
/// layers (but [`api`]'s).
fn surface(surface: Surface) -> OpenApiRouter<AppState> {
    let doc = OpenApiRouter::with_openapi(frame());
    // The routes without credentials read no body: one declared larger than
    // a few KiB is refused from its headers.
    let refuse = || axum::middleware::from_fn(refuse_body);
    let meta = || OpenApiRouter::new().routes(or_405(routes!(openapi_json))).merge(health::routes()).layer(refuse());
    let netboot = || netboot::routes().layer(refuse());
    // The main listener's routes: everything but netboot.
    let main = |doc: OpenApiRouter<AppState>| {
        doc.merge(api())
            .merge(agent::routes())
            .merge(meta())
            .merge(metrics::routes())
            .merge(ui::routes().layer(refuse()))
    };
    match surface {
        Surface::All => main(doc).merge(netboot()),
        Surface::Api => main(doc),
        Surface::Netboot => doc.merge(netboot()).merge(health::routes().layer(refuse())),
    }
}

/// Refuses, for a route without credentials, a body larger than
/// [`UNAUTHENTICATED_BODY`] or of unknown length (chunked), from its
/// headers alone.
async fn refuse_body(req: Request, next: Next) -> Response {
    if fits_unauthenticated(&req) {
        next.run(req).await
    } else {
        AppError::TooLarge(UNAUTHENTICATED_BODY).into_response()
    }
}

/// Whether `req`'s body is known, from its headers, to be at most
/// [`UNAUTHENTICATED_BODY`].
fn fits_unauthenticated(req: &Request) -> bool {
    req.body().size_hint().upper().is_some_and(|n| n <= UNAUTHENTICATED_BODY as u64)
}

/// The OpenAPI 3.1 document of [`router`]'s routes, generated from the
/// handlers' `#[utoipa::path]` and the types' `ToSchema`.
pub fn openapi() -> OpenApi {
    let mut doc = surface(Surface::All).into_openapi();
    let api: Vec<String> = api().into_openapi().paths.paths.into_keys().collect();
    let servers = || {
        Some(vec![
            utoipa::openapi::Server::new("/"),
            utoipa::openapi::ServerBuilder::new()
                .url(OVH_PREFIX)
                .description(Some("The same, where OVHcloud's SDKs call it (endpoint `https://HOST/1.0`)"))
                .build(),
        ])
    };
    for (path, item) in doc.paths.paths.iter_mut().filter(|(p, _)| api.contains(p)) {
        item.servers = servers();
        // An operator route takes a signed request as well as the API
        // token; credential management takes the token only.
        if path.starts_with("/me/") {
            continue;
        }
        for op in operations(item) {
            let Some(security) = op.security.as_mut() else { continue };
            let token = utoipa::openapi::security::SecurityRequirement::new("apiToken", Vec::<String>::new());
            if security.contains(&token) {
                security
                    .push(utoipa::openapi::security::SecurityRequirement::new("ovhSignature", Vec::<String>::new()));
                signed_refusals(&mut op.responses);
            }
        }
    }
    doc
}

/// Adds to an operator operation's answers how a signed request is
/// refused (`errorCode`): 400 for the signature or the time, 403 for the
/// keys and the rules; a status it documents already gets the words
/// appended. (Every operator operation documents its 401.)
fn signed_refusals(responses: &mut utoipa::openapi::Responses) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let refusals = [
        (
            "400",
            "A signed request with a wrong signature (INVALID_SIGNATURE) or a timestamp out of the window \
             (QUERY_TIME_OUT)",
        ),
        (
            "403",
            "A signed request refused: unknown application key (INVALID_KEY), no consumer key (NOT_CREDENTIAL), a \
             consumer key unknown, pending, refused or from outside its networks (INVALID_CREDENTIAL), or rules that \
             do not grant the call (NOT_GRANTED_CALL)",
        ),
    ];
    for (status, words) in refusals {
        match responses.responses.get_mut(status) {
            Some(RefOr::T(r)) => r.description = format!("{}; or: {words}", r.description),
            Some(RefOr::Ref(_)) => {}
            None => {
                let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
                let r = ResponseBuilder::new().description(words).content("application/json", body).build();
                responses.responses.insert(status.to_owned(), RefOr::T(r));
            }
        }
    }
}

/// A path's operations.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.options, &mut item.head, &mut item.patch]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// The address a request came from (`ConnectInfo`, set by the server for
/// every connection); unspecified when the router is driven without a
/// socket (tests).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

impl Peer {
    /// The address of the request with `extensions`, when the server
    /// recorded one.
    pub fn of(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
        extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(Peer::of(&parts.extensions).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))))
    }
}

/// A path as the API names it, without [`OVH_PREFIX`].
pub fn without_ovh_prefix(path: &str) -> &str {
    path.strip_prefix(OVH_PREFIX).filter(|p| p.starts_with('/')).unwrap_or(path)
}

/// The document as served, rendered once.
#[derive(Debug, Clone)]
struct Document(Bytes);

/// The OpenAPI document of this controller.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object),
    ))]
async fn openapi_json(Extension(doc): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}

/// A route's methods, with 405 for the others.
fn or_405(route: UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, methods) = route;
    (schemas, paths, methods.fallback(method_not_allowed))
}

/// The whole router, with its layers.
pub fn router(app: AppState) -> Router {
    router_for(app, Surface::All)
}

/// The router of one listener's routes, with the layers. `/openapi.json`,
/// where served, documents every route, whichever listener answers it.
pub fn router_for(app: AppState, which: Surface) -> Router {
    let (mut routes, _) = surface(which).split_for_parts();
    if which != Surface::Netboot {
        routes = routes.nest(OVH_PREFIX, api().split_for_parts().0);
    }
    // `/openapi.json` documents every route, whichever listener serves it
    // (the netboot listener serves none).
    let doc = openapi();
    // Plain data with string keys: serialising it cannot fail.
    let doc = Document(Bytes::from(serde_json::to_vec_pretty(&doc).expect("the OpenAPI document serialises")));
    let no_route =
        |req: Request| async move { AppError::NotFound(format!("No route for {} {}", req.method(), req.uri().path())) };
    routes
        .fallback(no_route.layer(axum::middleware::from_fn(refuse_body)))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(app.clone())
        .layer(Extension(app))
        .layer(Extension(doc))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(axum::middleware::from_fn(query_id))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("-");
            // The path only: queries are not ours to log.
            tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Answers every request's id as OVHcloud does, in `X-Ovh-QueryId` (the
/// same id as `X-Request-Id`).
async fn query_id(req: Request, next: Next) -> Response {
    let id = req.extensions().get::<RequestId>().map(|id| id.header_value().clone());
    let mut r = next.run(req).await;
    if let Some(id) = id {
        r.headers_mut().insert("x-ovh-queryid", id);
    }
    r
}

/// Reads a body of at most `max` bytes, refused before it is read when its
/// `Content-Length` (in `headers`) says more, and within the connection's
/// body deadline.
pub async fn read_body(headers: &HeaderMap, body: axum::body::Body, max: usize) -> Result<Bytes, AppError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(AppError::TooLarge(max));
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let mut causes = std::iter::successors(std::error::Error::source(&e), |s| s.source());
        match causes.find_map(|s| {
            s.downcast_ref::<crate::edge::BodyTimedOut>()
                .map(|t| AppError::BodyTimeout(t.0))
                .or_else(|| s.is::<http_body_util::LengthLimitError>().then_some(AppError::TooLarge(max)))
        }) {
            Some(refusal) => refusal,
            None => AppError::BadRequest(format!("Could not read the request body: {e}")),
        }
    })
}

/// A JSON body of at most `MAX` bytes, refused before it is read when its
/// `Content-Length` says more; errors in `{"message"}` form. An empty body
/// reads as JSON `null` (an `Option` gets `None`).
#[derive(Debug)]
pub struct Json<T, const MAX: usize = SMALL_BODY>(pub T);

impl<S: Send + Sync, T: DeserializeOwned, const MAX: usize> FromRequest<S> for Json<T, MAX> {
    type Rejection = AppError;

    async fn from_request(req: Request, _: &S) -> Result<Self, AppError> {
        let (parts, body) = req.into_parts();
        let body = read_body(&parts.headers, body, MAX).await?;
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"null" } else { &body };
        serde_json::from_slice(body).map(Json).map_err(|e| AppError::BadRequest(format!("Invalid JSON body: {e}")))
    }
}

/// The token of `Authorization: Bearer TOKEN` (the scheme is
/// case-insensitive, RFC 7235 §2.1).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Constant-time comparison of tokens.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 405 for a known path with another method.
pub async fn method_not_allowed(req: Request) -> impl IntoResponse {
    AppError::MethodNotAllowed(format!("{} is not allowed here", req.method()))
}
