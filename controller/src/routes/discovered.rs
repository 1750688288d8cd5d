//! Enlistment (`byoi serve --enlist`, off by default): a machine whose MAC
//! no server has netboots the agent in discover mode, which reports its
//! inventory and powers off; the operator then adopts it as a server (or
//! forgets it).
//!
//! **Who may call it:** `/boot/{mac}` and the discovery `hello` are the
//! netboot and agent protocols' (no credential but the discovery token the
//! boot script carries, one per MAC, one hello, within the boot timeout);
//! everything under `/dedicated/discovered` is the operator's
//! ([`Operator`]: the API token, or a signed request its rules allow).
//! **What it reveals:** to the operator, each machine's MAC, the address it
//! last called from, when, its agent's version and the hardware it claimed.
//! An unknown machine learns only that it may enlist. What a discovered
//! machine reports is its own word: nothing is trusted until an operator
//! adopts it, and adopting never takes a MAC a server already has.
//!
//! Unknown machines are anyone on the provisioning network, so enlistment
//! is bounded: `/boot/{mac}`'s rate limits, at most
//! [`Enlistment::max_machines`] machines (those that never
//! said hello within the boot timeout make room), an inventory of at most
//! [`MAX_DISCOVERED_INVENTORY`] bytes, and a reported inventory is kept as
//! first reported until the machine is forgotten.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use byoi_wire::agent::{Action, ActionResponse, Hello};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::agent::agent_version;
use super::operator::{checked_mac, new_server, rfc3339, server_view, version_skew, HardwareView, Operator};
use super::{or_405, AgentError, AppError, AppState, ErrorBody, Json};
use crate::db::{self, Adopted, DiscoveredRow, MAX_DISCOVERED_INVENTORY};
use crate::lifecycle::Caller;

/// How unknown machines enlist, when they may (`--enlist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enlistment {
    /// Extra kernel arguments for the discovering agent
    /// (`--enlist-kernel-args`: a serial console, a driver option).
    pub kernel_args: Vec<String>,
    /// Most machines kept at once (`--enlist-max-machines`).
    pub max_machines: u32,
}

impl Default for Enlistment {
    fn default() -> Self {
        Enlistment { kernel_args: Vec::new(), max_machines: db::MAX_DISCOVERED }
    }
}

/// The operator's routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(or_405(routes!(list)))
        .routes(or_405(routes!(show, forget)))
        .routes(or_405(routes!(adopt)))
}

/// Where a discovered machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveredState {
    /// It fetched the discover script; its agent has not said hello.
    Booting,
    /// Its agent reported the hardware: it may be adopted.
    Reported,
}

/// `GET /dedicated/discovered/{mac}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredView {
    /// The MAC it netbooted with.
    pub mac: String,
    /// Booting or reported.
    pub state: DiscoveredState,
    /// The address it last called from.
    pub address: String,
    /// Its first boot script request.
    #[schema(format = DateTime)]
    pub first_seen: String,
    /// Its last boot script request or hello.
    #[schema(format = DateTime)]
    pub last_seen: String,
    /// The version its agent said hello with.
    pub agent_version: Option<String>,
    /// Whether that version differs from the controller's.
    pub version_skew: bool,
    /// The hardware it reported, as `specifications/hardware` shows a
    /// server's.
    pub hardware: Option<HardwareView>,
}

impl DiscoveredState {
    /// Whether `m` has reported.
    pub fn of(m: &DiscoveredRow) -> DiscoveredState {
        if m.inventory.is_some() {
            DiscoveredState::Reported
        } else {
            DiscoveredState::Booting
        }
    }
}

impl DiscoveredView {
    fn of(m: DiscoveredRow) -> DiscoveredView {
        DiscoveredView {
            state: DiscoveredState::of(&m),
            mac: m.mac,
            address: m.address,
            first_seen: rfc3339(m.first_seen),
            last_seen: rfc3339(m.last_seen),
            version_skew: version_skew(m.agent_version.as_deref()),
            agent_version: m.agent_version,
            hardware: m.inventory.map(HardwareView::of),
        }
    }
}

/// `POST /dedicated/discovered/{mac}/adopt`: the server to make of it. Its
/// MACs are the machine's (the one it netbooted with and its NICs').
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Adoption {
    /// The server's name.
    pub service_name: String,
    /// Its power driver, as at registration (default: manual).
    pub power: Option<serde_json::Value>,
    /// Extra kernel arguments for its agent.
    #[serde(default)]
    pub kernel_args: Vec<String>,
}

fn no_machine(mac: &str) -> AppError {
    AppError::NotFound(format!("No discovered machine has MAC {mac}"))
}

/// The discovered machines' MACs.
#[utoipa::path(get, path = "/dedicated/discovered", tag = "operator", security(("apiToken" = [])),
    responses(
        (status = 200, description = "Their MACs, sorted", body = Vec<String>),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn list(_: Operator, State(app): State<AppState>) -> Result<axum::Json<Vec<String>>, AppError> {
    Ok(axum::Json(app.db.discovered().await?.into_iter().map(|m| m.mac).collect()))
}

/// A discovered machine, with the hardware it reported.
#[utoipa::path(get, path = "/dedicated/discovered/{mac}", tag = "operator", security(("apiToken" = [])),
    params(("mac" = String, Path, description = "The MAC it netbooted with, `:` or `-` separated, any case")),
    responses(
        (status = 200, description = "The machine", body = DiscoveredView),
        (status = 400, description = "Not a MAC", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No discovered machine has this MAC", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn show(
    _: Operator,
    State(app): State<AppState>,
    Path(given): Path<String>,
) -> Result<axum::Json<DiscoveredView>, AppError> {
    let mac = checked_mac(&given)?;
    let m = app.db.discovered_machine(&mac).await?.ok_or_else(|| no_machine(&mac))?;
    Ok(axum::Json(DiscoveredView::of(m)))
}

/// What `DELETE /dedicated/discovered/{mac}` did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Forgotten {
    /// What happened.
    pub message: String,
}

/// Forgets a discovered machine: its next netboot discovers it again.
#[utoipa::path(delete, path = "/dedicated/discovered/{mac}", tag = "operator", security(("apiToken" = [])),
    params(("mac" = String, Path, description = "The MAC it netbooted with, `:` or `-` separated, any case")),
    responses(
        (status = 200, description = "Forgotten", body = Forgotten),
        (status = 400, description = "Not a MAC", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No discovered machine has this MAC", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn forget(
    _: Operator,
    State(app): State<AppState>,
    Path(given): Path<String>,
) -> Result<axum::Json<Forgotten>, AppError> {
    let mac = checked_mac(&given)?;
    if !app.db.forget_discovered(&mac).await? {
        return Err(no_machine(&mac));
    }
    tracing::info!(%mac, "discovered machine forgotten");
    Ok(axum::Json(Forgotten { message: format!("{mac} forgotten: its next netboot discovers it again") }))
}

/// Makes a reported machine a server, with its MACs and hardware; it
/// boots its own disk until a deployment.
#[utoipa::path(post, path = "/dedicated/discovered/{mac}/adopt", tag = "operator", security(("apiToken" = [])),
    params(("mac" = String, Path, description = "The MAC it netbooted with, `:` or `-` separated, any case")),
    request_body = Adoption,
    responses(
        (status = 201, description = "The server it became", body = super::operator::ServerView),
        (status = 400, description = "Not a MAC; a bad name, kernel argument or power driver; bad JSON", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No discovered machine has this MAC", body = ErrorBody),
        (status = 409, description = "It has not reported its hardware yet, or the name or one of its MACs is taken",
            body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn adopt(
    _: Operator,
    State(app): State<AppState>,
    Path(given): Path<String>,
    Json(a): Json<Adoption>,
) -> Result<(StatusCode, axum::Json<super::operator::ServerView>), AppError> {
    let mac = checked_mac(&given)?;
    let server = new_server(&app, &a.service_name, None, a.power.as_ref(), a.kernel_args)?;
    match app.db.adopt(&mac, server).await? {
        Adopted::Done { macs } => {
            tracing::info!(%mac, server = %a.service_name, ?macs, "discovered machine adopted");
            Ok((StatusCode::CREATED, axum::Json(server_view(&app, &a.service_name).await?)))
        }
        Adopted::NoMachine => Err(no_machine(&mac)),
        Adopted::NotReported => Err(AppError::Conflict(format!(
            "{mac} has not reported its hardware yet: adopt it once its agent said hello"
        ))),
        Adopted::Conflict(conflict) => Err(AppError::Conflict(format!("{conflict}: {mac} was not adopted"))),
    }
}

/// A discovery token's hello: keeps the machine's inventory, retires the
/// token, and tells the agent to power off.
pub(super) async fn hello(app: &AppState, caller: Caller, hello: Hello) -> Result<ActionResponse, AgentError> {
    let size = serde_json::to_vec(&hello.inventory).map_or(usize::MAX, |v| v.len());
    if size > MAX_DISCOVERED_INVENTORY {
        tracing::warn!(source = %caller.addr, size, "a discovered machine's inventory is too large: not kept");
        return Err(AgentError(AppError::BadRequest(format!(
            "The inventory is {size} bytes: a discovered machine's may be {MAX_DISCOVERED_INVENTORY}"
        ))));
    }
    let version = agent_version(hello.version);
    let Some(mac) = app.db.discovered_hello(caller.token, caller.addr, &hello.inventory, &version).await? else {
        return Err(AgentError(AppError::Unauthorized("Missing, wrong or stale agent token")));
    };
    let inv = &hello.inventory;
    tracing::info!(%mac, source = %caller.addr, %version, disks = inv.disks.len(), nics = inv.nics.len(),
        "a machine no server has reported its hardware: adopt it with byoi server adopt");
    Ok(ActionResponse { action: Action::PowerOff })
}
