//! [`AppError`]: every failure of a handler, rendered as OVHcloud renders
//! its errors, `{"class": "Client::NotFound", "message": …}` with a 4xx or
//! 5xx status, and for a refused credential OVHcloud's `errorCode` and
//! `httpCode` ([`AuthError`]), which its SDKs map to their exception
//! classes. Agent routes add the `action` the agent must take
//! ([`AgentError`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use byoi_wire::agent::Action;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::db::DbError;

/// What went wrong in a handler.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the input is wrong; the message says how (OVH's words).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or a wrong agent token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 400, 401 or 403: an operator's request not authenticated, or not
    /// granted (OVHcloud's `errorCode`).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 403: a valid agent token whose call is not its to make (another
    /// agent claimed the boot, or the job went to another token).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such object.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the object's state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// 408: the client did not send the body within this time.
    #[error("Request body not received within {0:?} (--body-timeout)")]
    BodyTimeout(std::time::Duration),
    /// 413: the body is larger than the route takes (bytes).
    #[error("Request body larger than {}", size(*.0))]
    TooLarge(usize),
    /// 429: too many requests (boot scripts, per MAC or source).
    #[error("{0}")]
    TooManyRequests(String),
    /// 502: a BMC or power command failed.
    #[error("{0}")]
    BadGateway(String),
    /// 500: the database failed (a bug or a broken disk, never the input);
    /// 503 while it is unreachable or lost a race (`Retry-After`).
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AppError {
    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Auth(e) => e.status_and_code().0,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            AppError::Db(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// `n` bytes in MiB or KiB when it is a whole number of them.
fn size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// The body of every error, as OVHcloud's API renders it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The kind of error, from the status: `Client::BadRequest`,
    /// `Client::Forbidden`, `Client::NotFound`, `Client::Conflict`,
    /// `Server::InternalServerError`…
    pub class: String,
    /// What went wrong, for people.
    pub message: String,
    /// For a refused credential, OVHcloud's code: `NOT_CREDENTIAL`,
    /// `INVALID_KEY`, `INVALID_CREDENTIAL`, `INVALID_SIGNATURE`,
    /// `QUERY_TIME_OUT`, `NOT_GRANTED_CALL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// With `errorCode`: the status and its reason (`403 Forbidden`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_code: Option<String>,
}

impl ErrorBody {
    /// The body of an error with `status`.
    pub fn new(status: StatusCode, message: String) -> ErrorBody {
        let side = if status.is_server_error() { "Server" } else { "Client" };
        let reason = status.canonical_reason().unwrap_or("Error").replace([' ', '-'], "");
        ErrorBody { class: format!("{side}::{reason}"), message, error_code: None, http_code: None }
    }
}

/// The body of an error on an agent route.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentErrorBody {
    /// What went wrong, for people.
    pub message: String,
    /// What the agent must do: `reboot` (netboot again) for a refused
    /// token, else `wait`.
    pub action: Action,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Db(e) = &self {
            tracing::error!(error = %e, "database error");
        }
        let status = self.status();
        let mut body = ErrorBody::new(status, self.to_string());
        if let AppError::Auth(e) = &self {
            body.error_code = Some(e.status_and_code().1);
            body.http_code = Some(format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")));
        }
        let mut r = (status, Json(body)).into_response();
        if let AppError::TooManyRequests(_) = &self {
            // The buckets hold a minute's worth.
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("60"));
        }
        retry_soon(&self, &mut r);
        r
    }
}

/// An error on an agent route: the body also says what the agent must do,
/// `reboot` for a refused token or call (netboot again), else `wait`.
#[derive(Debug)]
pub struct AgentError(pub AppError);

impl<E: Into<AppError>> From<E> for AgentError {
    fn from(e: E) -> Self {
        AgentError(e.into())
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        // A refused token or call netboots again: the server ends in the
        // idle script until an operator asks for a new boot.
        let action = if matches!(self.0, AppError::Unauthorized(_) | AppError::Forbidden(_)) {
            Action::Reboot
        } else {
            Action::Wait
        };
        if let AppError::Db(e) = &self.0 {
            tracing::error!(error = %e, "database error");
        }
        let mut r = (self.0.status(), Json(AgentErrorBody { message: self.0.to_string(), action })).into_response();
        retry_soon(&self.0, &mut r);
        r
    }
}

/// A database that is restarting, or a change that lost a race to another
/// controller: try again in a moment (agents jitter around it).
fn retry_soon(e: &AppError, r: &mut Response) {
    if matches!(e, AppError::Db(db) if db.is_transient()) {
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("2"));
    }
}
