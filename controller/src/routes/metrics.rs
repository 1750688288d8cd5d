//! `GET /metrics`: Prometheus metrics ([`crate::metrics`]), and the layer
//! that counts every request by its route.
//!
//! **Who may call it:** a holder of `--metrics-token` (which may call
//! nothing else) or of the API token, as `Authorization: Bearer`; it is
//! served on the API listener only (never on plain-HTTP netboot).
//! **What it reveals:** counts and timings by route, status, power driver,
//! deployment status and error code; no server name, URL or secret.

use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{bearer, or_405, same, AppError, AppState, ErrorBody};
use crate::auth::AuthError;

/// The metrics route.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(or_405(routes!(metrics))).layer(axum::middleware::from_fn(super::refuse_body))
}

/// Counts each request by the route that answered it (`unmatched` for the
/// fallback), its method and status, and times it.
pub async fn track(Extension(app): Extension<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = req.method().clone();
    let started = Instant::now();
    let r = next.run(req).await;
    app.metrics.request(&route, method.as_str(), r.status().as_u16(), started.elapsed());
    r
}

/// Proof of the metrics token or the API token.
#[derive(Debug)]
pub struct MetricsReader;

impl FromRequestParts<AppState> for MetricsReader {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, AppError> {
        let Some(token) = bearer(&parts.headers) else { return Err(AuthError::NoCredential.into()) };
        let metrics = app.cfg.metrics_token.as_deref().is_some_and(|m| same(token, m));
        if metrics || same(token, &app.cfg.api_token) {
            Ok(MetricsReader)
        } else {
            Err(AuthError::BadToken.into())
        }
    }
}

/// The controller's metrics, in OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "meta", security(("metricsToken" = []), ("apiToken" = [])),
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "No or a wrong token", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn metrics(_: MetricsReader, State(app): State<AppState>) -> Result<Response, AppError> {
    let text = app.metrics.render(&app.db, app.cfg.agent_timeout).await?;
    let kind = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, kind)], text).into_response())
}
