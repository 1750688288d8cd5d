//! A server's power: `GET` and `POST /dedicated/server/{serviceName}/power`,
//! and the power cycle into the agent that every deployment and every erase
//! starts with ([`cycle_into_agent`]).
//!
//! **Who may call it:** the operator ([`Operator`]: the API token, or a
//! signed OVHcloud request its access rules allow).
//! **What it reveals:** the power driver's kind and the power state its BMC
//! reports; a failed action's error (the BMC's or the command's words,
//! never its password, which goes to ipmitool through its environment and
//! to Redfish in a header). Never the driver's settings.
//!
//! Powering off or cycling a server while a deployment runs on it would cut
//! the agent off mid-write: refused with 409 unless `force` is set (the
//! deployment then fails when its agent falls silent, and the half-written
//! disk never boots: the agent commits the boot entry last).

use axum::extract::{Path, State};
use byoi_wire::Status;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::{server, Operator, PowerCycle};
use super::{or_405, AppError, AppState, ErrorBody, Json};
use crate::power::{Power, PowerAction, PowerState};

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(or_405(routes!(status, act)))
}

/// A server's power.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PowerStatus {
    /// The driver: `manual`, `command`, `ipmi`, `redfish`.
    pub kind: &'static str,
    /// What the driver reports; `unknown` for manual power.
    pub state: PowerState,
}

/// `POST …/power`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    /// `on`, `off` or `cycle` (a cycle of a server that is off powers it on).
    pub action: PowerAction,
    /// Power off or cycle even while a deployment runs (it then fails).
    #[serde(default)]
    pub force: bool,
}

/// What `POST …/power` did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PowerDone {
    /// The driver that did it.
    pub kind: &'static str,
    /// The action.
    pub action: PowerAction,
    /// What happened, for people.
    pub message: String,
}

/// The power state, as the server's power driver reports it.
#[utoipa::path(get, path = "/dedicated/server/{serviceName}/power", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    responses(
        (status = 200, description = "The power state (`unknown` for manual power)", body = PowerStatus),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 502, description = "The power driver failed", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn status(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<PowerStatus>, AppError> {
    let s = server(&app, &name).await?;
    let state = s.power.status(&name, &app.cfg.power).await;
    app.metrics.power(s.power.kind(), "status", state.is_ok());
    let state = state.map_err(|e| AppError::BadGateway(format!("could not read the power of {name}: {e}")))?;
    Ok(axum::Json(PowerStatus { kind: s.power.kind(), state }))
}

/// Powers a server on, off, or cycles it.
///
/// Off and cycle are refused while a deployment runs, unless `force`.
#[utoipa::path(post, path = "/dedicated/server/{serviceName}/power", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    request_body = PowerRequest,
    responses(
        (status = 200, description = "Done", body = PowerDone),
        (status = 400, description = "Bad JSON or an unknown action", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "Manual power, or a deployment runs (the message names force)", body = ErrorBody),
        (status = 502, description = "The power driver failed", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn act(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<PowerRequest>,
) -> Result<axum::Json<PowerDone>, AppError> {
    let s = server(&app, &name).await?;
    let action = req.action;
    if s.power == Power::Manual {
        return Err(AppError::Conflict(format!(
            "{name} has manual power: byoi cannot power it {}; do it by hand, or give it a power driver \
             (byoi server set {name} --power …)",
            action.as_str()
        )));
    }
    if action != PowerAction::On {
        if let Some(d) = app.db.current_deployment(&name).await?.filter(|d| d.status == Status::Doing) {
            if !req.force {
                return Err(AppError::Conflict(format!(
                    "A deployment is running on {name} (id {}, {}): powering it {} would cut its agent off; \
                     cancel it first (byoi cancel {name}), or add force=true (byoi power {} {name} --force)",
                    d.id,
                    d.stage,
                    action.as_str(),
                    action.as_str()
                )));
            }
            tracing::warn!(server = %name, deployment = d.id, action = action.as_str(), "forced power action during a deployment");
        }
    }
    let ran = s.power.run(action, &name, &app.cfg.power).await;
    app.metrics.power(s.power.kind(), action.as_str(), ran.is_ok());
    ran.map_err(|e| AppError::BadGateway(format!("could not power {} {name}: {e}", action.as_str())))?;
    tracing::info!(server = %name, action = action.as_str(), "power action done");
    let message = match action {
        PowerAction::On => format!("{name} powered on"),
        PowerAction::Off => format!("{name} powered off"),
        PowerAction::Cycle => format!("{name} power-cycled"),
    };
    Ok(axum::Json(PowerDone { kind: s.power.kind(), action, message }))
}

/// Power-cycles `name` into the agent, for a deployment or an erase: a
/// one-time network boot first where the driver can set one (a failure
/// there is logged and counted, and the cycle goes on: the boot order may
/// well start with the network already), then the cycle. `job`, the power
/// job this controller leased for it, is then recorded as done (a job is
/// never left for another controller to run again).
pub(crate) async fn cycle_into_agent(app: &AppState, name: &str, job: Option<i64>) -> Result<PowerCycle, String> {
    // On a task of its own: a request dropped mid-way (its client went
    // away) must not leave a cycle done but not recorded, which another
    // controller would run again once the lease ran out.
    let (app, name) = (app.clone(), name.to_owned());
    tokio::spawn(async move {
        let cycled = cycle(&app, &name).await;
        if let Some(id) = job {
            record(&app, &name, id, &cycled).await;
        }
        cycled
    })
    .await
    .unwrap_or_else(|e| Err(format!("the power cycle's task failed: {e}")))
}

/// Records how the power job `id` ended, trying again for a while if the
/// database is away (a failover): the lease outlasts these tries.
async fn record(app: &AppState, name: &str, id: i64, cycled: &Result<PowerCycle, String>) {
    let outcome = match cycled {
        Ok(PowerCycle::Manual) => "manual",
        Ok(_) => "done",
        Err(_) => "failed",
    };
    let mut wait = std::time::Duration::from_secs(1);
    for attempt in 1..=5 {
        match app.db.finish_power_job(id, outcome).await {
            Ok(()) => return,
            Err(e) if attempt < 5 => {
                tracing::warn!(server = name, job = id, error = %e, "recording the power job; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => tracing::error!(server = name, job = id, error = %e, "recording the power job"),
        }
    }
}

async fn cycle(app: &AppState, name: &str) -> Result<PowerCycle, String> {
    let s = app.db.server(name).await.map_err(|e| e.to_string())?.ok_or("the server is gone")?;
    let firmware = s.inventory.as_ref().map(|i| i.firmware);
    match s.power.netboot_once(name, firmware, &app.cfg.power).await {
        Ok(false) => {}
        Ok(true) => {
            app.metrics.power(s.power.kind(), "netboot", true);
            tracing::info!(server = name, "one-time network boot set");
        }
        Err(e) => {
            app.metrics.power(s.power.kind(), "netboot", false);
            tracing::warn!(server = name, error = %e, "could not set a one-time network boot; power-cycling anyway");
        }
    }
    let ran = s.power.run(PowerAction::Cycle, name, &app.cfg.power).await;
    app.metrics.power(s.power.kind(), "cycle", ran.is_ok());
    match ran? {
        true => {
            tracing::info!(server = name, "power-cycled");
            Ok(PowerCycle::Done)
        }
        false => {
            tracing::info!(server = name, "manual power: reboot the server by hand");
            Ok(PowerCycle::Manual)
        }
    }
}
