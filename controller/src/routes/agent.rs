//! The agent protocol (`/agent/v1/…`): what a netbooted agent says to the
//! controller, and the [`Action`] it gets back in every answer.
//!
//! **Who may call it:** an agent holding a token minted with the boot script
//! its server fetched while a boot was expected; tokens are bound to one
//! server and one boot mode, and stored only as SHA-256 hashes. The first
//! agent to say `hello` claims the boot with its token and source address;
//! every other call needs that claim (403 otherwise, and nothing changes),
//! and a second `hello` from elsewhere fails the deployment ("two agents
//! claimed …"). A missing or stale token gets 401 with `action: reboot`
//! (netboot again) before the body is read.
//! **What it reveals:** to the claimant only, the running job (the image
//! URL, headers and user data it needs), once; in rescue, the SSH keys of
//! the server's last deployment and the server's SSH host key.
//!
//! With `--enlist`, a machine no server has says `hello` with the
//! discovery token its boot script carried ([`super::discovered`]): its
//! inventory is kept, the token retired, and it is told `poweroff`.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use byoi_wire::agent::{
    Action, ActionResponse, DiskSelector, Heartbeat, Hello, Job, JobResponse, LogLevel, LogRecord, ProgressReport,
    RescueResponse, ResultReport, MAX_LOGS,
};
use byoi_wire::{BootTarget, Status};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::{disk_groups, version_skew};
use super::{bearer, or_405, AgentError, AgentErrorBody, AppError, AppState};
use crate::db::{token_hash, Applied, DeploymentRow, Payload};
use crate::lifecycle::{AgentCall, Caller, Effect, Event, Reply};

/// The agent's routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(or_405(routes!(hello)))
        .routes(or_405(routes!(heartbeat)))
        .routes(or_405(routes!(job)))
        .routes(or_405(routes!(progress)))
        .routes(or_405(routes!(result)))
        .routes(or_405(routes!(rescue)))
}

/// The server and boot mode an agent's token belongs to, and who called.
#[derive(Debug)]
pub struct Agent {
    /// The server.
    pub server: String,
    /// `deploy` or `rescue`.
    pub mode: BootTarget,
    /// The token's hash and the source address.
    pub caller: Caller,
}

/// The token's hash and the source address of an agent's call.
async fn caller(parts: &mut Parts, app: &AppState) -> Result<Caller, AgentError> {
    let token = token_hash(bearer(&parts.headers).ok_or_else(refused)?);
    let Ok(super::Peer(addr)) = super::Peer::from_request_parts(parts, app).await;
    Ok(Caller { token, addr })
}

/// A missing, wrong or stale token's refusal.
fn refused() -> AgentError {
    AgentError(AppError::Unauthorized("Missing, wrong or stale agent token"))
}

/// The agent whose live token the request bears, or else the caller
/// (a token the database does not hold, or no longer does).
async fn agent_or_caller(parts: &mut Parts, app: &AppState) -> Result<Result<Agent, Caller>, AgentError> {
    let caller = caller(parts, app).await?;
    Ok(match app.db.token_owner(caller.token.clone()).await? {
        Some((server, mode)) => Ok(Agent { server, mode, caller }),
        None => Err(caller),
    })
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, AgentError> {
        agent_or_caller(parts, app).await?.map_err(|_| refused())
    }
}

/// Who reports a result: a server's agent, or one whose token was retired
/// (it may be repeating a result whose answer it did not get).
#[derive(Debug)]
pub enum Reporter {
    /// A server's agent.
    Agent(Agent),
    /// A token no longer live.
    Retired(Caller),
}

impl FromRequestParts<AppState> for Reporter {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, AgentError> {
        Ok(agent_or_caller(parts, app).await?.map_or_else(Reporter::Retired, Reporter::Agent))
    }
}

/// Who says hello: a server's agent, or, while unknown machines may enlist
/// (`--enlist`), one holding a discovery token (checked by its hello).
#[derive(Debug)]
pub enum Greeter {
    /// A server's agent.
    Server(Agent),
    /// A machine no server has, in discover mode.
    Machine(Caller),
}

impl FromRequestParts<AppState> for Greeter {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, AgentError> {
        match agent_or_caller(parts, app).await? {
            Ok(agent) => Ok(Greeter::Server(agent)),
            Err(caller) if app.cfg.enlist.is_some() => Ok(Greeter::Machine(caller)),
            Err(_) => Err(refused()),
        }
    }
}

/// The version an agent said hello with, as kept: a short printable word,
/// else `unknown`.
pub(super) fn agent_version(said: String) -> String {
    Some(said)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "unknown".into())
}

type Answer<T = ActionResponse> = Result<axum::Json<T>, AgentError>;

/// A JSON body as [`super::Json`] reads it, refused with an [`AgentError`]
/// so the agent is told what to do about a bad body too.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = AgentError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, AgentError> {
        let super::Json(body) = super::Json::<T>::from_request(req, app).await?;
        Ok(Json(body))
    }
}

/// Runs the agent's call through the lifecycle; a refusal is a 403 (and
/// logged: it is either a bug or someone else's agent).
async fn apply(app: &AppState, agent: &Agent, call: AgentCall, payload: Payload) -> Result<Applied, AgentError> {
    let event = Event::Agent { mode: agent.mode, caller: agent.caller.clone(), call };
    let applied = app
        .db
        .apply(&agent.server, event, payload)
        .await?
        .ok_or_else(|| AgentError(AppError::NotFound("server gone".into())))?;
    if let Reply::Refused(message) = &applied.transition.reply {
        tracing::warn!(server = %agent.server, source = %agent.caller.addr, "agent call refused: {message}");
        return Err(AgentError(AppError::Forbidden(message.clone())));
    }
    Ok(applied)
}

fn action(applied: &Applied) -> Answer {
    let action = match &applied.transition.reply {
        Reply::Action(a) => *a,
        Reply::Job => Action::Continue,
        _ => Action::Wait,
    };
    Ok(axum::Json(ActionResponse { action }))
}

/// The agent is up: its inventory, and what to do next. A discovered
/// machine's agent (`--enlist`) is told `poweroff`.
#[utoipa::path(post, path = "/agent/v1/hello", tag = "agent", security(("agentToken" = [])),
    request_body = Hello,
    responses(
        (status = 200, description = "What to do next", body = ActionResponse),
        (status = 400, description = "Bad JSON, or a discovered machine's inventory larger than 32 KiB",
            body = AgentErrorBody),
        (status = 401, description = "No, a wrong or a stale token: `action` is `reboot`", body = AgentErrorBody),
        (status = 403, description = "Another agent claimed this boot: the deployment fails, `action` is `reboot`",
            body = AgentErrorBody),
        (status = 404, description = "The server is gone", body = AgentErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = AgentErrorBody),
        (status = 500, description = "The database failed", body = AgentErrorBody),
    ))]
async fn hello(State(app): State<AppState>, greeter: Greeter, Json(hello): Json<Hello>) -> Answer {
    let agent = match greeter {
        Greeter::Server(agent) => agent,
        Greeter::Machine(caller) => return super::discovered::hello(&app, caller, hello).await.map(axum::Json),
    };
    let (version, disks) = (agent_version(hello.version), hello.inventory.disks.len());
    let applied = apply(&app, &agent, AgentCall::Hello, Payload::Inventory(hello.inventory)).await?;
    app.db.set_agent_version(&agent.server, &version).await?;
    tracing::info!(server = %agent.server, mode = %agent.mode, source = %agent.caller.addr, %version, disks,
        "agent said hello and holds the boot");
    if version_skew(Some(&version)) {
        tracing::warn!(server = %agent.server, agent = %version, controller = env!("CARGO_PKG_VERSION"),
            "version skew: the agent is not this release's; rebuild the initramfs (cargo xtask initramfs)");
    }
    action(&applied)
}

/// The agent is alive, and says which deployment it runs.
#[utoipa::path(post, path = "/agent/v1/heartbeat", tag = "agent", security(("agentToken" = [])),
    request_body = Option<Heartbeat>,
    responses(
        (status = 200, description = "What to do next", body = ActionResponse),
        (status = 400, description = "Bad JSON", body = AgentErrorBody),
        (status = 401, description = "No, a wrong or a stale token: `action` is `reboot`", body = AgentErrorBody),
        (status = 403, description = "Not the agent that claimed this boot: nothing changes", body = AgentErrorBody),
        (status = 404, description = "The server is gone", body = AgentErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = AgentErrorBody),
        (status = 500, description = "The database failed", body = AgentErrorBody),
    ))]
async fn heartbeat(State(app): State<AppState>, agent: Agent, Json(beat): Json<Option<Heartbeat>>) -> Answer {
    let working_on = match beat.and_then(|b| b.deployment_id) {
        Some(id) => app.db.named(&agent.server, id).await?,
        None => None,
    };
    action(&apply(&app, &agent, AgentCall::Heartbeat { working_on }, Payload::None).await?)
}

/// The job: what to deploy on which disk, with `continue`.
#[utoipa::path(get, path = "/agent/v1/job", tag = "agent", security(("agentToken" = [])),
    responses(
        (status = 200, description = "The job, or what to do instead", body = JobResponse),
        (status = 401, description = "No, a wrong or a stale token: `action` is `reboot`", body = AgentErrorBody),
        (status = 403, description = "Not the agent that claimed this boot: nothing changes", body = AgentErrorBody),
        (status = 404, description = "The server is gone", body = AgentErrorBody),
        (status = 500, description = "The database failed", body = AgentErrorBody),
    ))]
async fn job(State(app): State<AppState>, agent: Agent) -> Answer<JobResponse> {
    // Whether a job can be made is decided before the transition, from the
    // deployment the transition would hand out.
    let current = app.db.current_deployment(&agent.server).await?;
    let built = match &current {
        Some(d) => job_for(&app, &agent.server, d).await?,
        None => Err("no deployment".into()),
    };
    let buildable = match (&current, &built) {
        (Some(_), Err(e)) => Err(e.clone()),
        _ => Ok(()),
    };
    let applied = apply(&app, &agent, AgentCall::Job { buildable }, Payload::None).await?;
    match (&applied.transition.reply, built) {
        (Reply::Job, Ok(job)) => {
            tracing::info!(server = %agent.server, deployment = job.deployment_id, "job handed out");
            Ok(axum::Json(JobResponse { action: Action::Continue, job: Some(job) }))
        }
        (Reply::Action(a), _) => Ok(axum::Json(JobResponse { action: *a, job: None })),
        _ => Ok(axum::Json(JobResponse { action: Action::Wait, job: None })),
    }
}

/// The job for a deployment, with the disk chosen from the inventory;
/// `Err` says why none can be made.
async fn job_for(app: &AppState, server: &str, d: &DeploymentRow) -> Result<Result<Job, String>, AppError> {
    let Some(inv) = app.db.server(server).await?.and_then(|s| s.inventory) else {
        return Ok(Err("the agent has not sent its inventory".into()));
    };
    // The inventory is the claimant's own: only its hello is kept.
    let (serial, wwn, size_bytes) = match &d.request.disk {
        Some(pin) => {
            let found: Vec<_> = inv.disks.iter().filter(|disk| pin.matches(disk)).collect();
            match found.as_slice() {
                [disk] => (pin.serial.clone(), pin.wwn.clone(), disk.size_bytes),
                [] => {
                    return Ok(Err(format!(
                        "no disk with serial {:?} and WWN {:?} on {server} ({} disks reported)",
                        pin.serial,
                        pin.wwn,
                        inv.disks.len()
                    )))
                }
                many => {
                    return Ok(Err(format!(
                        "{} disks on {server} match serial {:?} and WWN {:?}; pin both",
                        many.len(),
                        pin.serial,
                        pin.wwn
                    )))
                }
            }
        }
        None => {
            let groups = disk_groups(&inv);
            let id = d.request.disk_group_id;
            let Some(disk) = groups.iter().find(|g| g.disk_group_id == id).map(|g| &g.disks[0]) else {
                return Ok(Err(format!("diskGroupId {id} does not exist on {server} ({} disk groups)", groups.len())));
            };
            (disk.serial.clone(), disk.wwn.clone(), disk.size_bytes)
        }
    };
    let mut spec = d.request.spec.clone();
    if let Some(c) = spec.configdrive.as_mut() {
        c.instance_id.get_or_insert_with(|| format!("byoi-{server}-{}", d.id));
    }
    Ok(Ok(Job { deployment_id: d.id, spec, disk: DiskSelector { serial, wwn, size_bytes } }))
}

/// How far the deployment is, and the warnings logged since the last report.
#[utoipa::path(post, path = "/agent/v1/progress", tag = "agent", security(("agentToken" = [])),
    request_body = ProgressReport,
    responses(
        (status = 200, description = "What to do next: `abort` if the deployment was erased", body = ActionResponse),
        (status = 400, description = "Bad JSON", body = AgentErrorBody),
        (status = 401, description = "No, a wrong or a stale token: `action` is `reboot`", body = AgentErrorBody),
        (status = 403, description = "Not the agent that claimed this boot: nothing changes", body = AgentErrorBody),
        (status = 404, description = "The server is gone", body = AgentErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = AgentErrorBody),
        (status = 500, description = "The database failed", body = AgentErrorBody),
    ))]
async fn progress(State(app): State<AppState>, agent: Agent, Json(p): Json<ProgressReport>) -> Answer {
    let call = AgentCall::Progress {
        id: p.deployment_id,
        stage: p.stage,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
    };
    let logs = bounded(p.logs);
    let applied = apply(&app, &agent, call, Payload::Logs(logs.clone())).await?;
    if applied.transition.effects.contains(&Effect::KeepLogs) {
        trace_logs(&agent, p.deployment_id, &logs);
    }
    action(&applied)
}

/// The agent's log lines as kept: the newest [`MAX_LOGS`], each bounded.
fn bounded(mut logs: Vec<LogRecord>) -> Vec<LogRecord> {
    let drop = logs.len().saturating_sub(MAX_LOGS);
    logs.drain(..drop);
    logs.into_iter().map(LogRecord::bounded).collect()
}

/// How the deployment ended.
#[utoipa::path(post, path = "/agent/v1/result", tag = "agent", security(("agentToken" = [])),
    request_body = ResultReport,
    responses(
        (status = 200, description = "What to do next: `reboot` into the disk on success; the same for a result repeated within an hour by the agent that held the job", body = ActionResponse),
        (status = 400, description = "Bad JSON", body = AgentErrorBody),
        (status = 401, description = "No, a wrong or a stale token: `action` is `reboot`", body = AgentErrorBody),
        (status = 403, description = "Not the agent that claimed this boot: nothing changes", body = AgentErrorBody),
        (status = 404, description = "The server is gone", body = AgentErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = AgentErrorBody),
        (status = 500, description = "The database failed", body = AgentErrorBody),
    ))]
async fn result(State(app): State<AppState>, reporter: Reporter, Json(r): Json<ResultReport>) -> Answer {
    let agent = match reporter {
        Reporter::Agent(agent) => agent,
        // The answer to an accepted result was lost and the agent sends it
        // again: the same answer, nothing changes (its lines are kept).
        Reporter::Retired(caller) => return repeated(&app, caller.token, r.deployment_id, r.status, refused()).await,
    };
    let call = AgentCall::Result { id: r.deployment_id, status: r.status, code: r.code, message: r.message };
    let logs = bounded(r.logs);
    let applied = match apply(&app, &agent, call, Payload::Logs(logs.clone())).await {
        // The same result, sent again while the first was being taken (its
        // answer was slow): the boot ended under it, and it gets the
        // first's answer rather than a refusal that would make it wipe the
        // disk.
        Err(refusal @ AgentError(AppError::Forbidden(_))) => {
            return repeated(&app, agent.caller.token.clone(), r.deployment_id, r.status, refusal).await;
        }
        applied => applied?,
    };
    let counted = applied.transition.effects.contains(&Effect::KeepLogs);
    if let Some(d) = applied.latest.as_ref().filter(|d| counted && d.id == r.deployment_id) {
        tracing::info!(server = %agent.server, deployment = d.id, status = %d.status, message = %d.message,
            "deployment ended");
        trace_logs(&agent, d.id, &logs);
    }
    action(&applied)
}

/// The answer to a result for `deployment` with `status` from the token
/// `token` when it repeats one that was taken (`reboot`: the token held the
/// job of that deployment, which ended with that status within
/// [`crate::db::REPEAT_WINDOW`]), else `refusal`.
async fn repeated(app: &AppState, token: String, deployment: i64, status: Status, refusal: AgentError) -> Answer {
    if app.db.ended_by(token, deployment, status).await? {
        Ok(axum::Json(ActionResponse { action: Action::Reboot }))
    } else {
        Err(refusal)
    }
}

/// Logs the lines an agent forwarded about its own running deployment (its
/// console lines at info, its warnings at warn); the database kept them
/// with the report.
fn trace_logs(agent: &Agent, deployment: i64, logs: &[LogRecord]) {
    for l in logs {
        if l.level == LogLevel::Info {
            tracing::info!(server = %agent.server, deployment, target = %l.target, "agent: {}", l.message);
        } else {
            tracing::warn!(server = %agent.server, deployment, level = %l.level, target = %l.target, "agent: {}", l.message);
        }
    }
}

/// Who may log in to the rescue agent over SSH.
#[utoipa::path(get, path = "/agent/v1/rescue", tag = "agent", security(("agentToken" = [])),
    responses(
        (status = 200, description = "The SSH keys of the last deployment that had any, and the server's SSH host key (confidential only over HTTPS)", body = RescueResponse),
        (status = 401, description = "No, a wrong or a stale token: `action` is `reboot`", body = AgentErrorBody),
        (status = 403, description = "Not the agent that claimed this boot: nothing changes", body = AgentErrorBody),
        (status = 404, description = "The server is gone", body = AgentErrorBody),
        (status = 500, description = "The database failed", body = AgentErrorBody),
    ))]
async fn rescue(State(app): State<AppState>, agent: Agent) -> Answer<RescueResponse> {
    let applied = apply(&app, &agent, AgentCall::Rescue, Payload::None).await?;
    let history = app.db.history(&agent.server).await?;
    let ssh_keys = history
        .iter()
        .filter_map(|d| d.request.spec.configdrive.as_ref())
        .map(|c| c.ssh_keys.clone())
        .find(|k| !k.is_empty())
        .unwrap_or_default();
    let action = match applied.transition.reply {
        Reply::Action(a) => a,
        _ => Action::Wait,
    };
    let host_key = app.db.ssh_host_key(&agent.server).await?;
    Ok(axum::Json(RescueResponse { action, ssh_keys, host_key }))
}

#[cfg(test)]
mod tests {
    use byoi_wire::agent::{LogLevel, MAX_LOG_MESSAGE, MAX_LOG_TARGET};

    use super::*;

    #[test]
    fn forwarded_logs_are_bounded() {
        let rec = |m: String| LogRecord { level: LogLevel::Warn, target: "t".repeat(300), message: m };
        let logs: Vec<_> = (0..MAX_LOGS + 5).map(|i| rec(format!("{i}{}", "é".repeat(MAX_LOG_MESSAGE)))).collect();
        let kept = bounded(logs);
        assert_eq!(kept.len(), MAX_LOGS);
        assert!(kept[0].message.starts_with('5'), "the oldest are dropped");
        assert!(kept.iter().all(|l| l.message.len() <= MAX_LOG_MESSAGE && l.target.len() == MAX_LOG_TARGET));
    }
}
