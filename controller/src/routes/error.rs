//! [`AppError`]: every failure of a handler, rendered as OVH renders its
//! errors, `{"message": …}` with a 4xx or 5xx status. Agent routes add the
//! `action` the agent must take ([`AgentError`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use byoi_wire::agent::Action;
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;

/// What went wrong in a handler.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the input is wrong; the message says how (OVH's words).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or a wrong credential.
    #[error("{0}")]
    Unauthorized(&'static str),
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
    /// 500: the database failed (a bug or a broken disk, never the input).
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AppError {
    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::BadGateway(_) => StatusCode::BAD_GATEWAY,
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

/// The body of every error, as OVH's API renders it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub message: String,
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
        let mut r = (self.status(), Json(ErrorBody { message: self.to_string() })).into_response();
        if let AppError::TooManyRequests(_) = &self {
            // The buckets hold a minute's worth.
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("60"));
        }
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
        (self.0.status(), Json(AgentErrorBody { message: self.0.to_string(), action })).into_response()
    }
}
