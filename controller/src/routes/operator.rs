//! The BYOI API, modelled on OVHcloud's (`/dedicated/server/…`).
//!
//! **Who may call it:** the operator, with `Authorization: Bearer
//! API_TOKEN`, or a request signed with an application credential whose
//! rules grant the call ([`super::auth`]); anyone else gets 401 or 403
//! before a byte of the body is read (a signed request's body is read to
//! check its signature).
//! **What it reveals:** servers, their MACs, hardware and deployment
//! history. Never a secret: power drivers show their kind only, image URLs
//! lose their credentials and query, headers and user data are not shown.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use byoi_wire::agent::{Disk, Inventory, LogRecord, Nic};
use byoi_wire::spec::redact_url;
use byoi_wire::{BootMode, BootTarget, ErrorCode, Stage, Status};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use super::auth::Operator;
use super::{or_405, AppError, AppState, ErrorBody, Json, BYOI_BODY};
use crate::db::{self, DeploymentRow, Payload, ServerRow, KEPT_LOGS};
use crate::lifecycle::{Event, Reply};
use crate::model::{self, ByoiRequest, NewServer, ServerUpdate};
use crate::power::Power;

/// The operator's routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(or_405(routes!(list, add)))
        .routes(or_405(routes!(show, update, remove)))
        .routes(or_405(routes!(hardware)))
        .routes(or_405(routes!(byoi_status, byoi_post, byoi_delete)))
        .merge(super::reinstall::routes())
        .merge(super::power::routes())
        .merge(super::logs::routes())
        .merge(super::inspect::routes())
        .merge(super::discovered::routes())
        .merge(super::fleet::routes())
}

/// RFC 3339 UTC from Unix seconds.
pub fn rfc3339(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// What happened to the server's power on a POST or DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerCycle {
    /// The driver power-cycled it.
    Done,
    /// Manual power: the operator must reboot it.
    Manual,
    /// The driver failed (`powerError` says how).
    Failed,
}

/// A deployment's status: OVH's `{checksum, message, servername, status}`
/// and our progress fields.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    /// `doing`, `done`, `error`.
    pub status: Status,
    /// OVH's message: `starting`, the stage, or what went wrong.
    pub message: String,
    /// The expected checksum's hex, as OVH shows it.
    pub checksum: Option<String>,
    /// The server.
    pub servername: String,
    /// The operator's description.
    pub description: Option<String>,
    /// Its id.
    pub deployment_id: i64,
    /// Where it is.
    pub stage: Stage,
    /// Bytes received by the agent.
    pub bytes_done: u64,
    /// Size of the image as served.
    pub bytes_total: Option<u64>,
    /// Percent done, one decimal.
    pub percent: Option<f64>,
    /// Why it failed.
    pub error_code: Option<ErrorCode>,
    /// When it was posted.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Its last change.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When it ended.
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// What the POST or DELETE did to the power (only in their answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_cycle: Option<PowerCycle>,
    /// The WARN and ERROR lines its agent logged, oldest first (only in
    /// `GET …/bringYourOwnImage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_logs: Option<Vec<AgentLog>>,
}

/// A line the agent logged (a console line, a note, a warning, an error),
/// as kept.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentLog {
    /// Its id: increasing within the deployment (`…/logs?after=ID`).
    pub id: i64,
    /// When the controller received it.
    #[schema(format = DateTime)]
    pub at: String,
    /// Its record.
    #[serde(flatten)]
    pub record: LogRecord,
}

impl AgentLog {
    /// The view of a kept line.
    pub fn of(l: &db::KeptLog) -> AgentLog {
        AgentLog { id: l.id, at: rfc3339(l.at), record: l.record.clone() }
    }
}

impl DeploymentView {
    /// The view of a stored deployment.
    pub fn of(d: &DeploymentRow) -> DeploymentView {
        let percent = match (d.bytes_total, d.status) {
            (_, Status::Done) => Some(100.0),
            (Some(t), _) if t > 0 => Some((d.bytes_done as f64 * 100.0 / t as f64 * 10.0).round() / 10.0),
            _ => None,
        };
        DeploymentView {
            status: d.status,
            message: d.message.clone(),
            checksum: d.request.spec.checksum.as_ref().map(|c| c.hex.clone()),
            servername: d.server.clone(),
            description: d.request.description.clone(),
            deployment_id: d.id,
            stage: d.stage,
            bytes_done: d.bytes_done,
            bytes_total: d.bytes_total,
            percent,
            error_code: d.error_code,
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
            finished_at: d.finished_at.map(rfc3339),
            power_cycle: None,
            agent_logs: None,
        }
    }
}

/// One deployment in a server's history.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// Its status.
    #[serde(flatten)]
    pub status: DeploymentView,
    /// The image URL without credentials or query.
    pub url: String,
    /// Shown by `GET …/bringYourOwnImage`.
    pub current: bool,
}

/// The power driver, without its settings (they hold credentials).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PowerView {
    /// `manual`, `command`, `ipmi`, `redfish`.
    pub kind: &'static str,
}

/// `GET /dedicated/server/{serviceName}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerView {
    /// Its name.
    pub service_name: String,
    /// Its MACs.
    pub macs: Vec<String>,
    /// Its power driver's kind.
    pub power: PowerView,
    /// Extra kernel arguments for the agent.
    pub kernel_args: Vec<String>,
    /// What it netboots into.
    pub boot_target: BootTarget,
    /// Its firmware, once an agent reported it.
    pub firmware: Option<BootMode>,
    /// Last agent contact.
    #[schema(format = DateTime)]
    pub last_seen: Option<String>,
    /// Registration.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Its deployments, newest first.
    pub deployments: Vec<HistoryEntry>,
    /// The fingerprint (`SHA256:…`, as `ssh` prints it) of the SSH host key
    /// its rescue system presents (made at registration; for a server
    /// registered before byoi had host keys, on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
    /// The version its agent last said hello with.
    pub agent_version: Option<String>,
    /// The address the agent holding its boot calls from: in rescue, where
    /// to `ssh root@`.
    pub agent_address: Option<String>,
    /// Whether that version differs from the controller's: rebuild the
    /// initramfs (`cargo xtask initramfs`) from this release.
    pub version_skew: bool,
    /// OVHcloud's `name`: the serviceName again.
    pub name: String,
    /// OVHcloud's `serverId`: a number naming the server for as long as it
    /// is registered (the rowid of its database row).
    pub server_id: i64,
    /// OVHcloud's `state`.
    pub state: ServerState,
    /// OVHcloud's `bootId`: what it netboots into, as a number (see
    /// [`boot_id`]): 1 its own disk (OVHcloud's hard-disk boot is 1
    /// too), 2 the rescue agent, 3 the deploying agent, 4 the inspecting
    /// agent.
    pub boot_id: u32,
    /// OVHcloud's `os`: `byoi_64` while its newest deployment is done (the
    /// disk holds that image), else null.
    pub os: Option<Os>,
    /// OVHcloud's `efiBootloaderPath`: the UEFI loader that done deployment
    /// registered, if it named one; else null.
    pub efi_bootloader_path: Option<String>,
    /// OVHcloud's `rescueMail`: always null (byoi sends no mail; rescue's
    /// SSH keys are the last deployment's).
    pub rescue_mail: Option<String>,
    /// OVHcloud's `monitoring`: always false (byoi does not ping servers).
    pub monitoring: bool,
    /// OVHcloud's `noIntervention`: always false (byoi sends nobody to a
    /// server).
    pub no_intervention: bool,
}

/// OVHcloud's `state` of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServerState {
    /// Nothing known to be wrong.
    Ok,
    /// Its newest deployment failed: the agent wiped the disk's partition
    /// tables, nothing boots from it until a deployment is done.
    Error,
}

/// The operating systems byoi installs, by OVHcloud's template names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum Os {
    /// An image the operator brings (OVHcloud's BYOI template).
    #[serde(rename = "byoi_64")]
    Byoi64,
}

impl Os {
    /// OVHcloud's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Os::Byoi64 => "byoi_64",
        }
    }
}

/// OVHcloud's `bootId` of a boot target: stable numbers, documented in
/// the API and in `ServerView::boot_id`.
pub fn boot_id(target: BootTarget) -> u32 {
    match target {
        BootTarget::Local => 1,
        BootTarget::Rescue => 2,
        BootTarget::Deploy => 3,
        BootTarget::Inspect => 4,
    }
}

impl ServerView {
    /// The view of `s`, numbered `server_id`, with its deployments
    /// (newest first).
    fn of(s: &ServerRow, server_id: i64, history: &[DeploymentRow]) -> ServerView {
        let newest = history.first();
        let installed = newest.filter(|d| d.status == Status::Done);
        ServerView {
            name: s.name.clone(),
            server_id,
            state: match newest.map(|d| d.status) {
                Some(Status::Error) => ServerState::Error,
                _ => ServerState::Ok,
            },
            boot_id: boot_id(s.boot_target),
            os: installed.map(|_| Os::Byoi64),
            efi_bootloader_path: installed.and_then(|d| d.request.spec.efi_loader.clone()),
            rescue_mail: None,
            monitoring: false,
            no_intervention: false,
            service_name: s.name.clone(),
            macs: s.macs.clone(),
            power: PowerView { kind: s.power.kind() },
            kernel_args: s.kernel_args.clone(),
            boot_target: s.boot_target,
            firmware: s.inventory.as_ref().map(|i| i.firmware),
            last_seen: s.last_seen.map(rfc3339),
            created_at: rfc3339(s.created_at),
            deployments: history
                .iter()
                .map(|d| HistoryEntry {
                    status: DeploymentView::of(d),
                    url: redact_url(&d.request.spec.url),
                    current: d.current,
                })
                .collect(),
            ssh_host_key: None,
            agent_version: s.agent_version.clone(),
            agent_address: s.agent_address.clone(),
            version_skew: version_skew(s.agent_version.as_deref()),
        }
    }
}

/// Whether an agent's version is not this controller's.
pub fn version_skew(agent: Option<&str>) -> bool {
    agent.is_some_and(|v| v != env!("CARGO_PKG_VERSION"))
}

/// A group of identical disks, as `specifications/hardware` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskGroup {
    /// From 1.
    pub disk_group_id: u32,
    /// `SSD`, `HDD`, `NVMe`.
    pub disk_type: String,
    /// Disks in the group.
    pub number_of_disks: usize,
    /// Size of each, in decimal GB, rounded, as OVHcloud shows it.
    pub disk_size: Size,
    /// OVHcloud's summary: `2 x 480 GB SSD`.
    pub description: String,
    /// OVHcloud's `raidController`: always null (the agent sees the disks
    /// the operating system sees, not a controller behind them).
    pub raid_controller: Option<String>,
    /// Size of each, in bytes (our extension).
    pub disk_size_bytes: u64,
    /// The disks, by serial (our extension).
    pub disks: Vec<Disk>,
}

/// A size as OVHcloud writes one: `{"unit": "GB", "value": 480}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Size {
    /// Its unit.
    pub unit: SizeUnit,
    /// The size in that unit, rounded.
    pub value: u64,
}

/// The units of [`Size`], as OVHcloud spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum SizeUnit {
    /// Decimal gigabytes (10^9 bytes), as disks are sold.
    #[serde(rename = "GB")]
    Gb,
    /// Mebibytes (2^20 bytes), which OVHcloud writes `MB` for memory.
    #[serde(rename = "MB")]
    Mb,
}

impl Size {
    /// `bytes` in decimal GB, rounded.
    pub fn gb(bytes: u64) -> Size {
        Size { unit: SizeUnit::Gb, value: bytes.saturating_add(500_000_000) / 1_000_000_000 }
    }

    /// `bytes` in mebibytes (OVHcloud's memory `MB`), rounded.
    pub fn mb(bytes: u64) -> Size {
        Size { unit: SizeUnit::Mb, value: bytes.saturating_add(1 << 19) >> 20 }
    }
}

/// Groups disks of equal model, size and transport, numbered from 1 in an
/// order that does not depend on kernel names: USB disks (virtual media,
/// sticks) last, then smallest first, then model, then transport; disks in
/// a group by serial, then WWN.
pub fn disk_groups(inv: &Inventory) -> Vec<DiskGroup> {
    let mut groups: BTreeMap<(bool, u64, String, String), Vec<Disk>> = BTreeMap::new();
    for d in &inv.disks {
        let key = (d.transport == "usb", d.size_bytes, d.model.clone(), d.transport.clone());
        groups.entry(key).or_default().push(d.clone());
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((_, size, _, transport), mut disks))| {
            disks.sort_by(|a, b| (&a.serial, &a.wwn).cmp(&(&b.serial, &b.wwn)));
            let disk_type = if transport == "nvme" {
                "NVMe"
            } else if disks[0].rotational {
                "HDD"
            } else {
                "SSD"
            };
            let disk_size = Size::gb(size);
            DiskGroup {
                disk_group_id: i as u32 + 1,
                disk_type: disk_type.into(),
                number_of_disks: disks.len(),
                disk_size,
                description: format!("{} x {} GB {disk_type}", disks.len(), disk_size.value),
                raid_controller: None,
                disk_size_bytes: size,
                disks,
            }
        })
        .collect()
}

/// The descriptions of an inventory's disk groups (`2 x 480 GB SSD`); none
/// without an inventory.
pub fn disk_summary(inv: Option<&Inventory>) -> Vec<String> {
    inv.map(|i| disk_groups(i).into_iter().map(|g| g.description).collect()).unwrap_or_default()
}

/// `GET …/specifications/hardware`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareView {
    /// How it booted.
    pub boot_mode: BootMode,
    /// Memory, in OVHcloud's `MB` (mebibytes), rounded.
    pub memory_size: Size,
    /// Memory in bytes, as the agent found it (our extension).
    pub memory_size_bytes: u64,
    /// Its disks, grouped.
    pub disk_groups: Vec<DiskGroup>,
    /// Its NICs (our extension).
    pub nics: Vec<Nic>,
}

impl HardwareView {
    /// The view of an agent's inventory.
    pub fn of(inv: Inventory) -> HardwareView {
        HardwareView {
            boot_mode: inv.firmware,
            memory_size: Size::mb(inv.memory_bytes),
            memory_size_bytes: inv.memory_bytes,
            disk_groups: disk_groups(&inv),
            nics: inv.nics,
        }
    }
}

/// `DELETE …/bringYourOwnImage`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Erased {
    /// What happened.
    pub message: String,
    /// The erased deployment.
    pub deployment_id: i64,
    /// What was done to the power.
    pub power_cycle: PowerCycle,
    /// Why the power cycle failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_error: Option<String>,
}

pub(super) fn no_server(name: &str) -> AppError {
    AppError::NotFound(format!("The requested object (serviceName = {name}) does not exist"))
}

pub(super) async fn server(app: &AppState, name: &str) -> Result<ServerRow, AppError> {
    app.db.server(name).await?.ok_or_else(|| no_server(name))
}

/// The servers' names.
#[utoipa::path(get, path = "/dedicated/server", tag = "operator", security(("apiToken" = [])),
    responses(
        (status = 200, description = "Their names, sorted", body = Vec<String>),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn list(_: Operator, State(app): State<AppState>) -> Result<axum::Json<Vec<String>>, AppError> {
    Ok(axum::Json(app.db.server_names().await?))
}

/// Registers a server.
#[utoipa::path(post, path = "/dedicated/server", tag = "operator", security(("apiToken" = [])),
    request_body = NewServer,
    responses(
        (status = 201, description = "Registered; it netboots into its own disk until a deployment", body = ServerView),
        (status = 400, description = "A bad name, MAC, kernel argument or power driver, or bad JSON", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 409, description = "The name or a MAC is taken", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn add(
    _: Operator,
    State(app): State<AppState>,
    Json(n): Json<NewServer>,
) -> Result<(StatusCode, axum::Json<ServerView>), AppError> {
    let row = new_server(&app, &n.service_name, Some(&n.macs), n.power.as_ref(), n.kernel_args)?;
    match app.db.add_server(row.clone()).await? {
        Ok(()) => {
            // The rescue host key is made now, so its fingerprint is known
            // before the first rescue boot.
            let ssh_host_key = app.db.ssh_host_key(&row.name).await?.map(|k| k.fingerprint());
            let id = app.db.server_id(&row.name).await?.ok_or_else(|| no_server(&row.name))?;
            Ok((StatusCode::CREATED, axum::Json(ServerView { ssh_host_key, ..ServerView::of(&row, id, &[]) })))
        }
        Err(conflict) => Err(AppError::Conflict(conflict)),
    }
}

/// A new server's row from what the API was given, each part checked in
/// turn (name, MACs, kernel arguments, power driver): it boots its own
/// disk. Without `macs` (an adoption) the database gives it the machine's.
pub(super) fn new_server(
    app: &AppState,
    name: &str,
    macs: Option<&[String]>,
    power: Option<&serde_json::Value>,
    kernel_args: Vec<String>,
) -> Result<ServerRow, AppError> {
    if !model::valid_name(name) {
        return Err(AppError::BadRequest(model::bad_name(name)));
    }
    let macs = macs.map(checked_macs).transpose()?.unwrap_or_default();
    checked_kernel_args(&kernel_args)?;
    let power = match power {
        Some(p) => checked_power(app, p)?,
        None => Power::Manual,
    };
    Ok(ServerRow {
        name: name.to_owned(),
        macs,
        power,
        kernel_args,
        boot_target: BootTarget::Local,
        inventory: None,
        last_seen: None,
        created_at: db::now(),
        agent_version: None,
        agent_address: None,
    })
}

/// A server, with its deployments.
#[utoipa::path(get, path = "/dedicated/server/{serviceName}", tag = "operator", security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    responses(
        (status = 200, description = "The server", body = ServerView),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn show(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<ServerView>, AppError> {
    server_view(&app, &name).await.map(axum::Json)
}

/// The view of the server `name`, history and host key included.
pub(super) async fn server_view(app: &AppState, name: &str) -> Result<ServerView, AppError> {
    let s = server(app, name).await?;
    let id = app.db.server_id(name).await?.ok_or_else(|| no_server(name))?;
    let history = app.db.history(name).await?;
    let ssh_host_key = app.db.ssh_host_key(name).await?.map(|k| k.fingerprint());
    Ok(ServerView { ssh_host_key, ..ServerView::of(&s, id, &history) })
}

/// MACs as they enter: each one valid, lowercase with colons, once, at
/// least one.
pub(super) fn checked_macs(given: &[String]) -> Result<Vec<String>, AppError> {
    let mut macs = Vec::new();
    for m in given {
        macs.push(checked_mac(m)?);
    }
    macs.sort();
    macs.dedup();
    if macs.is_empty() {
        return Err(AppError::BadRequest("A server needs at least one MAC address".into()));
    }
    Ok(macs)
}

/// A MAC as it enters, normalised; 400 when it is none.
pub(super) fn checked_mac(given: &str) -> Result<String, AppError> {
    model::normalize_mac(given).ok_or_else(|| AppError::BadRequest(format!("Bad MAC address {given:?}")))
}

/// The agent's kernel arguments as they enter: words the boot script can
/// carry.
fn checked_kernel_args(args: &[String]) -> Result<(), AppError> {
    match args.iter().find(|a| !model::valid_kernel_arg(a)) {
        Some(bad) => {
            Err(AppError::BadRequest(format!("Bad kernelArgs entry {bad:?}: one word, no quotes, no $ {{ }} \\ | & #")))
        }
        None => Ok(()),
    }
}

/// A power driver as it enters, against the controller's configuration.
fn checked_power(app: &AppState, p: &serde_json::Value) -> Result<Power, AppError> {
    Power::from_json(p, &app.cfg.power).map_err(AppError::BadRequest)
}

/// Changes a server: its MACs, power driver or the agent's kernel
/// arguments, each when given (as a whole).
#[utoipa::path(put, path = "/dedicated/server/{serviceName}", tag = "operator", security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    request_body = ServerUpdate,
    responses(
        (status = 200, description = "Changed: the server", body = ServerView),
        (status = 400, description = "A bad MAC, kernel argument or power driver, or bad JSON", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "A MAC belongs to another server", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn update(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
    Json(u): Json<ServerUpdate>,
) -> Result<axum::Json<ServerView>, AppError> {
    let change = db::ServerChange {
        macs: u.macs.as_deref().map(checked_macs).transpose()?,
        power: u.power.as_ref().map(|p| checked_power(&app, p)).transpose()?,
        kernel_args: u.kernel_args.map(|a| checked_kernel_args(&a).map(|()| a)).transpose()?,
    };
    match app.db.update_server(&name, change).await? {
        Err(conflict) => Err(AppError::Conflict(conflict)),
        Ok(None) => Err(no_server(&name)),
        Ok(Some(())) => {
            tracing::info!(server = %name, "server changed");
            server_view(&app, &name).await.map(axum::Json)
        }
    }
}

/// `DELETE /dedicated/server/{serviceName}`'s query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete it even while a deployment runs on it (the deployment is
    /// dropped; its agent is refused at its next call).
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /dedicated/server/{serviceName}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServerDeleted {
    /// What happened.
    pub message: String,
}

/// Deletes a server, with its MACs, deployments, agent tokens, logs and
/// rescue host key; refused while a deployment runs on it, unless
/// `force=true`.
#[utoipa::path(delete, path = "/dedicated/server/{serviceName}", tag = "operator", security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted", body = ServerDeleted),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "A deployment runs on it (the message names force)", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn remove(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<axum::Json<ServerDeleted>, AppError> {
    let Query(q) = q.map_err(|e| AppError::BadRequest(format!("Invalid query: {}", e.body_text())))?;
    match app.db.delete_server(&name, q.force).await? {
        db::Deleted::NoServer => Err(no_server(&name)),
        db::Deleted::Running { id, stage } => Err(AppError::Conflict(format!(
            "A deployment is running on {name} (id {id}, {stage}): cancel it first (byoi cancel {name}), or delete \
             the server anyway with force=true (byoi server delete {name} --force)"
        ))),
        db::Deleted::Done => {
            tracing::info!(server = %name, force = q.force, "server deleted");
            Ok(axum::Json(ServerDeleted { message: format!("server {name} deleted") }))
        }
    }
}

/// What the server's agent found: firmware, memory, disk groups, NICs.
#[utoipa::path(get, path = "/dedicated/server/{serviceName}/specifications/hardware", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    responses(
        (status = 200, description = "Its hardware", body = HardwareView),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server, or no agent reported its hardware yet", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn hardware(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<HardwareView>, AppError> {
    let inv = server(&app, &name).await?.inventory.ok_or_else(|| {
        AppError::NotFound(format!(
            "No hardware inventory for {name} yet: the agent reports it when the server netboots"
        ))
    })?;
    Ok(axum::Json(HardwareView::of(inv)))
}

/// The server's current deployment, with the warnings its agent logged.
#[utoipa::path(get, path = "/dedicated/server/{serviceName}/bringYourOwnImage", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    responses(
        (status = 200, description = "Its status", body = DeploymentView),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server, or no deployment", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn byoi_status(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<DeploymentView>, AppError> {
    server(&app, &name).await?;
    let d = app
        .db
        .current_deployment(&name)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("No deployment on {name}")))?;
    // Warnings and errors: the whole log is `…/logs`.
    let logs = app.db.logs(d.id, 0, true, KEPT_LOGS).await?;
    let mut view = DeploymentView::of(&d);
    view.agent_logs = Some(logs.iter().map(AgentLog::of).collect());
    Ok(axum::Json(view))
}

/// Deploys an image.
///
/// The server is power-cycled into the agent, unless its agent is up and
/// waiting.
#[utoipa::path(post, path = "/dedicated/server/{serviceName}/bringYourOwnImage", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    request_body = ByoiRequest,
    responses(
        (status = 200, description = "Started; `powerCycle` says what was done to the power", body = DeploymentView),
        (status = 400, description = "The request is invalid (OVH's messages), or bad JSON", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "A deployment is running", body = ErrorBody),
        (status = 413, description = "The body is larger than 24 MiB", body = ErrorBody),
        (status = 502, description = "The power driver failed; the deployment failed", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn byoi_post(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<ByoiRequest, BYOI_BODY>,
) -> Result<axum::Json<DeploymentView>, AppError> {
    let (d, power) = deploy(&app, &name, body).await?;
    let mut view = DeploymentView::of(&d);
    view.power_cycle = Some(power);
    Ok(axum::Json(view))
}

/// Starts a deployment of `body` on `name`, for both POST routes
/// (`bringYourOwnImage` and `reinstall`): validates it (OVH's messages),
/// applies [`Event::Post`] and power-cycles the server. Returns the new
/// deployment and what was done to the power.
pub(super) async fn deploy(
    app: &AppState,
    name: &str,
    body: ByoiRequest,
) -> Result<(DeploymentRow, PowerCycle), AppError> {
    let request = body.validate().map_err(|e| AppError::BadRequest(e.0))?;
    let url = redact_url(&request.spec.url);
    let applied =
        app.db.apply(name, Event::Post, Payload::Request(Box::new(request))).await?.ok_or_else(|| no_server(name))?;
    let d = applied.latest.ok_or_else(|| no_server(name))?;
    if let Reply::Conflict(msg) = applied.transition.reply {
        return Err(AppError::Conflict(format!("{msg} on {name} (id {}, {})", d.id, d.stage)));
    }
    tracing::info!(server = %name, deployment = d.id, %url, "deployment requested");
    // Every deployment starts with a fresh boot: the agent's token is
    // minted for it, and only for it.
    let power = match super::power::cycle_into_agent(app, name, applied.power_job).await {
        Ok(p) => p,
        Err(e) => {
            let message = format!("could not power-cycle {name}: {e}");
            app.db.apply(name, Event::PowerFailed { message: message.clone() }, Payload::None).await?;
            return Err(AppError::BadGateway(message));
        }
    };
    Ok((d, power))
}

/// Erases the current deployment.
///
/// A running one is aborted; the server netboots into rescue.
#[utoipa::path(delete, path = "/dedicated/server/{serviceName}/bringYourOwnImage", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    responses(
        (status = 200, description = "Erased; `powerCycle` says what was done to the power", body = Erased),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server, or no deployment", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn byoi_delete(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Erased>, AppError> {
    let applied = app.db.apply(&name, Event::Delete, Payload::None).await?.ok_or_else(|| no_server(&name))?;
    let d = match applied.transition.reply {
        Reply::NotFound(_) => return Err(AppError::NotFound(format!("No deployment on {name}"))),
        _ => applied.latest.ok_or_else(|| no_server(&name))?,
    };
    tracing::info!(server = %name, deployment = d.id, "deployment erased");
    let (power_cycle, power_error) = match super::power::cycle_into_agent(&app, &name, applied.power_job).await {
        Ok(p) => (p, None),
        Err(e) => (PowerCycle::Failed, Some(e)),
    };
    Ok(axum::Json(Erased {
        message: "deployment erased; the server boots into rescue".into(),
        deployment_id: d.id,
        power_cycle,
        power_error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn disk_groups_ignore_kernel_names() {
        let d = |name: &str, size: u64, serial: &str| Disk {
            name: name.into(),
            size_bytes: size,
            model: "M".into(),
            serial: serial.into(),
            transport: "sata".into(),
            ..Default::default()
        };
        let inv = |disks| Inventory { firmware: BootMode::Uefi, memory_bytes: 0, disks, nics: vec![] };
        let a = inv(vec![d("sdb", 2000, "B"), d("sda", 1000, "Z"), d("sdc", 1000, "A")]);
        let b = inv(vec![d("sda", 1000, "A"), d("sdc", 2000, "B"), d("sdb", 1000, "Z")]);
        let serials = |i: &Inventory| -> Vec<Vec<String>> {
            disk_groups(i).iter().map(|g| g.disks.iter().map(|d| d.serial.clone()).collect()).collect()
        };
        assert_eq!(serials(&a), serials(&b));
        let g = disk_groups(&a);
        assert_eq!(g[0].disk_size_bytes, 1000);
        assert_eq!(g[0].disks[0].serial, "A");
        assert_eq!(g[1].number_of_disks, 1);
        assert_eq!(g[0].description, "2 x 0 GB SSD");
    }

    #[test]
    fn sizes_in_ovhcloud_units() {
        assert_eq!(Size::gb(480_103_981_056), Size { unit: SizeUnit::Gb, value: 480 });
        assert_eq!(Size::gb(1_999_999_999).value, 2);
        assert_eq!(Size::gb(1_499_999_999).value, 1);
        assert_eq!(Size::gb(u64::MAX).value, u64::MAX / 1_000_000_000);
        assert_eq!(Size::mb(64 << 30), Size { unit: SizeUnit::Mb, value: 65_536 });
        assert_eq!(Size::mb((1 << 20) - 1).value, 1);
        assert_eq!(
            serde_json::to_value(Size::gb(2_000_000_000_000)).unwrap(),
            serde_json::json!({"unit": "GB", "value": 2000})
        );
    }
}
