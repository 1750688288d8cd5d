//! The whole fleet, live: `GET /dedicated/events` (server-sent events), what
//! the dashboard's fleet view shows.
//!
//! **Who may call it:** the operator ([`Operator`]: the API token, a signed
//! OVHcloud request its rules allow, or a dashboard session).
//! **What it reveals:** each server's name, MACs, power driver's kind,
//! state, its newest deployment's stage, progress and message, firmware and
//! disk groups; each discovered machine's MAC, state, address and hardware
//! summary. No URL, header or user data.
//!
//! The stream starts with a `server` event per server and a `discovered`
//! event per discovered machine, then `ready`; afterwards an event for each
//! that changed, and `removed` for each that went. It wakes when this
//! process records a change (at most once a [`MIN_GAP`]) and looks at the
//! database every [`LOOK_EVERY`] for other controllers' changes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use byoi_wire::{BootMode, BootTarget, ErrorCode, Stage, Status};
use futures_util::Stream;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::logs::LOOK_EVERY;
use super::operator::{disk_summary, rfc3339, DeploymentView, Operator};
use super::{or_405, AppError, AppState, ErrorBody};
use crate::db::{DeploymentRow, DiscoveredRow, ServerRow};

/// The least time between two looks a stream makes when woken: a busy
/// fleet reports many times a second.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(or_405(routes!(events)))
}

/// What a server is doing, as the fleet view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FleetState {
    /// Nothing deployed yet (or the last deployment was erased).
    Idle,
    /// A deployment runs.
    Deploying,
    /// Its newest deployment is done.
    Done,
    /// Its newest deployment failed.
    Error,
    /// It boots the rescue agent.
    Rescue,
    /// It boots the agent to report its hardware.
    Inspecting,
}

impl FleetState {
    fn of(s: &ServerRow, latest: Option<&DeploymentRow>) -> FleetState {
        match (s.boot_target, latest.filter(|d| d.current).map(|d| d.status)) {
            (_, Some(Status::Doing)) => FleetState::Deploying,
            (BootTarget::Rescue, _) => FleetState::Rescue,
            (BootTarget::Inspect, _) => FleetState::Inspecting,
            (_, Some(Status::Error)) => FleetState::Error,
            (_, Some(Status::Done)) => FleetState::Done,
            (_, None) => FleetState::Idle,
        }
    }
}

/// A `server` event.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetServer {
    /// Its name.
    pub service_name: String,
    /// Its MACs.
    pub macs: Vec<String>,
    /// Its power driver's kind.
    pub power: &'static str,
    /// What it is doing.
    pub state: FleetState,
    /// Its current deployment's id, stage, progress and message.
    pub deployment_id: Option<i64>,
    /// Where that deployment is.
    pub stage: Option<Stage>,
    /// Percent done, one decimal.
    pub percent: Option<f64>,
    /// Its message: the stage, or what went wrong.
    pub message: Option<String>,
    /// Why it failed.
    pub error_code: Option<ErrorCode>,
    /// Last agent contact.
    #[schema(format = DateTime)]
    pub last_seen: Option<String>,
    /// Its firmware, once an agent reported it.
    pub firmware: Option<BootMode>,
    /// Its disk groups, as OVHcloud describes them (`2 x 480 GB SSD`).
    pub disks: Vec<String>,
}

impl FleetServer {
    fn of(s: &ServerRow, latest: Option<&DeploymentRow>) -> FleetServer {
        let current = latest.filter(|d| d.current).map(DeploymentView::of);
        FleetServer {
            service_name: s.name.clone(),
            macs: s.macs.clone(),
            power: s.power.kind(),
            state: FleetState::of(s, latest),
            deployment_id: current.as_ref().map(|d| d.deployment_id),
            stage: current.as_ref().map(|d| d.stage),
            percent: current.as_ref().and_then(|d| d.percent),
            message: current.as_ref().map(|d| d.message.clone()),
            error_code: current.as_ref().and_then(|d| d.error_code),
            last_seen: s.last_seen.map(rfc3339),
            firmware: s.inventory.as_ref().map(|i| i.firmware),
            disks: disk_summary(s.inventory.as_ref()),
        }
    }
}

/// A `discovered` event.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetMachine {
    /// The MAC it netbooted with.
    pub mac: String,
    /// `booting` or `reported`.
    pub state: super::discovered::DiscoveredState,
    /// Where it last called from.
    pub address: String,
    /// Its last call.
    #[schema(format = DateTime)]
    pub last_seen: String,
    /// Its firmware, once reported.
    pub firmware: Option<BootMode>,
    /// Its disk groups, once reported.
    pub disks: Vec<String>,
}

impl FleetMachine {
    fn of(m: &DiscoveredRow) -> FleetMachine {
        FleetMachine {
            mac: m.mac.clone(),
            state: super::discovered::DiscoveredState::of(m),
            address: m.address.clone(),
            last_seen: rfc3339(m.last_seen),
            firmware: m.inventory.as_ref().map(|i| i.firmware),
            disks: disk_summary(m.inventory.as_ref()),
        }
    }
}

/// The fleet, live: every server and discovered machine, then their changes.
#[utoipa::path(get, path = "/dedicated/events", tag = "operator", security(("apiToken" = [])),
    responses(
        (status = 200, description = "`server` (a `FleetServer`), `discovered` (a `FleetMachine`), `removed` \
            (`{\"serviceName\"}` or `{\"mac\"}`) and, after the first of each, `ready`",
            content_type = "text/event-stream", body = String),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
    ))]
async fn events(
    _: Operator,
    State(app): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let watcher = Watcher { changes: app.db.changes(), app, sent: BTreeMap::new(), pending: Vec::new(), first: true };
    let stream = futures_util::stream::unfold(watcher, |mut w| async move {
        let event = w.next().await?;
        Some((Ok(event), w))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What a stream has sent, by key (`server:NAME`, `mac:MAC`): each one's
/// last JSON.
struct Watcher {
    app: AppState,
    changes: tokio::sync::watch::Receiver<u64>,
    sent: BTreeMap<String, String>,
    /// Events read, not yet sent (popped from the back: kept reversed).
    pending: Vec<Event>,
    first: bool,
}

impl Watcher {
    /// The next event; `None` when the database fails (the stream ends,
    /// and the browser reconnects).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop() {
                return Some(e);
            }
            if !self.first {
                tokio::select! {
                    _ = self.changes.changed() => {}
                    () = tokio::time::sleep(LOOK_EVERY) => {}
                }
                tokio::time::sleep(MIN_GAP).await;
            }
            let first = std::mem::replace(&mut self.first, false);
            match self.look(first).await {
                Ok(events) => self.pending = events.into_iter().rev().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "fleet event stream: reading the database failed");
                    return None;
                }
            }
        }
    }

    /// The events that bring the browser from what it was sent to now.
    async fn look(&mut self, first: bool) -> Result<Vec<Event>, crate::db::DbError> {
        let mut now = BTreeMap::new();
        for (s, latest) in self.app.db.fleet().await? {
            let json = serde_json::to_string(&FleetServer::of(&s, latest.as_ref())).unwrap_or_default();
            now.insert(format!("server:{}", s.name), ("server", json));
        }
        for m in self.app.db.discovered().await? {
            let json = serde_json::to_string(&FleetMachine::of(&m)).unwrap_or_default();
            now.insert(format!("mac:{}", m.mac), ("discovered", json));
        }
        let mut events = Vec::new();
        for key in self.sent.keys().filter(|k| !now.contains_key(*k)) {
            let gone = match key.split_once(':') {
                Some(("server", name)) => serde_json::json!({ "serviceName": name }),
                Some((_, mac)) => serde_json::json!({ "mac": mac }),
                None => continue,
            };
            events.push(Event::default().event("removed").data(gone.to_string()));
        }
        self.sent.retain(|k, _| now.contains_key(k));
        for (key, (kind, json)) in now {
            if self.sent.get(&key) != Some(&json) {
                events.push(Event::default().event(kind).data(&json));
                self.sent.insert(key, json);
            }
        }
        if first {
            events.push(Event::default().event("ready").data("{}"));
        }
        Ok(events)
    }
}
