//! A deployment's agent log and a server's live events:
//! `GET /dedicated/server/{serviceName}/logs` and
//! `GET /dedicated/server/{serviceName}/events` (server-sent events).
//!
//! **Who may call it:** the operator ([`Operator`]: the API token, or a
//! signed OVHcloud request its access rules allow).
//! **What it reveals:** what the agent printed on its console and logged
//! (the image URL without credentials or query, disks, addresses, retries,
//! warnings) and the deployment's status as `GET …/bringYourOwnImage` shows
//! it. Never request headers, user data or network data.
//!
//! The event stream follows the server's current deployment while it runs:
//! a `deployment` event at each change (the view of
//! `GET …/bringYourOwnImage` without its logs), a `log` event per line (its
//! `id` the line's), and it ends after the deployment's last state; when
//! nothing runs it sends the current state, if any, and ends. A stream
//! wakes when this process records a change, and looks at the database
//! every [`LOOK_EVERY`] for what other controllers record.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use byoi_wire::Status;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::{server, AgentLog, DeploymentView, Operator};
use super::{or_405, AppError, AppState, ErrorBody};
use crate::db::KEPT_LOGS;

/// How often a stream looks at the database without being woken.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Most log lines one `log` batch reads.
const BATCH: usize = 100;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(or_405(routes!(logs))).routes(or_405(routes!(events)))
}

/// `GET …/logs`'s query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The deployment (default: the server's newest).
    pub deployment: Option<i64>,
    /// Only the lines after this line id.
    #[serde(default)]
    pub after: i64,
}

/// A deployment's agent log.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsView {
    /// The deployment.
    pub deployment_id: i64,
    /// Its lines, oldest first (the newest 500 are kept).
    pub lines: Vec<AgentLog>,
}

/// A deployment's agent log: its console lines, notes, warnings and
/// errors.
#[utoipa::path(get, path = "/dedicated/server/{serviceName}/logs", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name"), LogsQuery),
    responses(
        (status = 200, description = "The lines", body = LogsView),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server, or no such deployment of it", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn logs(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<axum::Json<LogsView>, AppError> {
    let Query(q) = q.map_err(|e| AppError::BadRequest(format!("Invalid query: {}", e.body_text())))?;
    server(&app, &name).await?;
    let id = match q.deployment {
        Some(id) => app.db.named(&name, id).await?.map(|n| n.id),
        None => app.db.history(&name).await?.first().map(|d| d.id),
    }
    .ok_or_else(|| AppError::NotFound(format!("No deployment on {name}")))?;
    let lines = app.db.logs(id, q.after, false, KEPT_LOGS).await?;
    Ok(axum::Json(LogsView { deployment_id: id, lines: lines.iter().map(AgentLog::of).collect() }))
}

/// A server's deployment as it happens (server-sent events).
///
/// `deployment` events carry the deployment's view at each change, `log`
/// events its agent's lines; the stream ends after the deployment ends.
#[utoipa::path(get, path = "/dedicated/server/{serviceName}/events", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    responses(
        (status = 200, description = "`deployment` and `log` events", content_type = "text/event-stream", body = String),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn events(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    server(&app, &name).await?;
    let follower = Follower {
        changes: app.db.changes(),
        app,
        name,
        shown: None,
        deployment: None,
        after: 0,
        pending: VecDeque::new(),
        first: true,
        ended: false,
    };
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        let event = f.next().await?;
        Some((Ok(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One stream's place.
struct Follower {
    app: AppState,
    name: String,
    changes: tokio::sync::watch::Receiver<u64>,
    /// The last deployment view sent, as JSON.
    shown: Option<String>,
    /// The deployment followed, and its last line sent.
    deployment: Option<i64>,
    after: i64,
    /// Events read, not yet sent.
    pending: VecDeque<Event>,
    first: bool,
    /// Nothing more to send once `pending` is empty.
    ended: bool,
}

impl Follower {
    /// The next event, or `None` at the end.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            if !self.first {
                tokio::select! {
                    _ = self.changes.changed() => {}
                    () = tokio::time::sleep(LOOK_EVERY) => {}
                }
            }
            self.first = false;
            if let Err(e) = self.look().await {
                tracing::warn!(server = %self.name, error = %e, "event stream: reading the database failed");
                self.pending.push_back(Event::default().event("error").data(e.to_string()));
                self.ended = true;
            }
        }
    }

    /// Queues what changed since the last look.
    async fn look(&mut self) -> Result<(), crate::db::DbError> {
        let Some(d) = self.app.db.current_deployment(&self.name).await? else {
            // Nothing runs (or the server is gone): nothing to follow.
            self.ended = true;
            return Ok(());
        };
        if self.deployment != Some(d.id) {
            self.deployment = Some(d.id);
            self.after = 0;
        }
        loop {
            let lines = self.app.db.logs(d.id, self.after, false, BATCH).await?;
            for l in &lines {
                let data = serde_json::to_string(&AgentLog::of(l)).unwrap_or_default();
                self.pending.push_back(Event::default().event("log").id(l.id.to_string()).data(data));
                self.after = l.id;
            }
            if lines.len() < BATCH {
                break;
            }
        }
        let view = serde_json::to_string(&DeploymentView::of(&d)).unwrap_or_default();
        if self.shown.as_ref() != Some(&view) {
            self.pending.push_back(Event::default().event("deployment").data(&view));
            self.shown = Some(view);
        }
        if d.status != Status::Doing {
            self.ended = true;
        }
        Ok(())
    }
}
