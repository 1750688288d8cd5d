//! `POST /dedicated/server/{serviceName}/inspect`: netboot the agent to
//! report the server's hardware, then power it off, so that disk groups
//! (`diskGroupId`) and the hardware view exist before any deployment.
//!
//! **Who may call it:** the operator ([`Operator`]: the API token, or a
//! signed OVHcloud request its access rules allow).
//! **What it reveals:** what the power driver did; the inventory then
//! shows in `GET …/specifications/hardware`.
//!
//! Refused while a deployment runs. The agent says hello with its
//! inventory and is told `poweroff`; the server's boot target becomes
//! `local` (its own disk).

use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::{no_server, Operator, PowerCycle};
use super::{or_405, AppError, AppState, ErrorBody};
use crate::db::Payload;
use crate::lifecycle::{Event, Reply};

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(or_405(routes!(inspect)))
}

/// What `POST …/inspect` did.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    /// What happens next.
    pub message: String,
    /// What was done to the power.
    pub power_cycle: PowerCycle,
}

/// Netboots the agent to report the server's hardware, then powers it off.
#[utoipa::path(post, path = "/dedicated/server/{serviceName}/inspect", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    responses(
        (status = 200, description = "The server netboots into the agent; `powerCycle` says what was done", body = Inspection),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "A deployment is running", body = ErrorBody),
        (status = 502, description = "The power driver failed", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn inspect(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Inspection>, AppError> {
    let applied = app.db.apply(&name, Event::Inspect, Payload::None).await?.ok_or_else(|| no_server(&name))?;
    if let Reply::Conflict(msg) = applied.transition.reply {
        return Err(AppError::Conflict(format!("{msg} on {name}: inspect it once the deployment ends")));
    }
    tracing::info!(server = %name, "inspection requested");
    let power_cycle = super::power::cycle_into_agent(&app, &name, applied.power_job)
        .await
        .map_err(|e| AppError::BadGateway(format!("could not power-cycle {name}: {e}")))?;
    let message = match power_cycle {
        PowerCycle::Manual => {
            format!("{name} has manual power: reboot it by hand now; it must netboot (PXE) to be inspected")
        }
        _ => format!("{name} netboots into the agent, reports its hardware and powers off"),
    };
    Ok(axum::Json(Inspection { message, power_cycle }))
}
