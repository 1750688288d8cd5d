//! OVHcloud's current installation calls: `POST …/reinstall` with the
//! `byoi_64` template, the tasks it makes (`…/task`, `…/task/{taskId}`)
//! and the progress of the running one (`…/install/status`).
//!
//! **Who may call it:** the operator ([`Operator`]: the API token, or a
//! signed OVHcloud request its access rules allow).
//! **What it reveals:** a server's deployments as OVHcloud tasks (id,
//! status, the deployment's message, dates) and the stage of the running
//! one. Never the image URL, its headers or the ConfigDrive's data.
//!
//! A task is a deployment: `taskId` is its id, whichever route started it
//! (`reinstall` or `bringYourOwnImage`), and its status follows the
//! deployment ([`TaskStatus::of`]). `reinstall` turns its body into the
//! legacy `bringYourOwnImage` body ([`ReinstallRequest::into_byoi`]) so
//! both routes share one validation and OVHcloud's messages, and one
//! deployment path ([`super::operator::deploy`]).

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use base64::Engine;
use byoi_wire::{ErrorCode, Stage, Status};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::operator::{self, rfc3339, Operator, Os, PowerCycle};
use super::{or_405, AppError, AppState, ErrorBody, Json, BYOI_BODY};
use crate::db::{self, DeploymentRow};
use crate::model::{ByoiRequest, ConfigDriveRequest};

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(or_405(routes!(reinstall)))
        .routes(or_405(routes!(tasks)))
        .routes(or_405(routes!(task)))
        .routes(or_405(routes!(install_status)))
}

/// `POST /dedicated/server/{serviceName}/reinstall`, as OVHcloud takes it
/// for its `byoi_64` template.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReinstallRequest {
    /// The template: `byoi_64`, the only one this controller installs.
    pub operating_system: String,
    /// The image and the ConfigDrive (required for `byoi_64`). Read as
    /// [`Customizations`] once the template is known to be `byoi_64`, so
    /// that another template's customizations get the template's refusal.
    #[schema(value_type = Option<Customizations>)]
    pub customizations: Option<serde_json::Value>,
    /// The disk group to write: at most one entry (default: group 1).
    /// Read as [`StorageRequest`]s, as `customizations`.
    #[schema(value_type = Option<Vec<StorageRequest>>)]
    pub storage: Option<serde_json::Value>,
}

/// `customizations` of a `byoi_64` reinstall, with OVHcloud's names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Customizations {
    /// The image's URL (`http://` or `https://`).
    #[serde(rename = "imageURL")]
    pub image_url: String,
    /// `qcow2`, `raw` or `ova` (any case); sniffed when absent.
    #[serde(rename = "imageType")]
    pub image_type: Option<String>,
    /// The image's checksum (hex).
    #[serde(rename = "imageCheckSum")]
    pub image_check_sum: Option<String>,
    /// `md5`, `sha1`, `sha256`, `sha512`.
    #[serde(rename = "imageCheckSumType")]
    pub image_check_sum_type: Option<String>,
    /// HTTP headers sent with the image's download (never shown).
    #[serde(rename = "httpHeaders")]
    pub http_headers: Option<BTreeMap<String, String>>,
    /// cloud-init user data: clear text, or base64 as OVHcloud's guide
    /// recommends (a value that is valid base64 is decoded; a
    /// `#cloud-config` or a `#!` script never is).
    #[serde(rename = "configDriveUserData")]
    pub config_drive_user_data: Option<String>,
    /// cloud-init metadata: the ConfigDrive's `meta_data.json` has them
    /// under `meta`.
    #[serde(rename = "configDriveMetadata")]
    pub config_drive_metadata: Option<BTreeMap<String, String>>,
    /// The UEFI loader the agent registers (`\efi\debian\grubx64.efi`).
    #[serde(rename = "efiBootloaderPath")]
    pub efi_bootloader_path: Option<String>,
    /// The same, by OVHcloud's other name; both given must agree.
    #[serde(rename = "efiBootloader")]
    pub efi_bootloader: Option<String>,
    /// The host name, in the ConfigDrive.
    #[serde(rename = "hostname")]
    pub hostname: Option<String>,
    /// An SSH public key, in the ConfigDrive.
    #[serde(rename = "sshKey")]
    pub ssh_key: Option<String>,
}

/// One entry of `storage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageRequest {
    /// The disk group to write, from 1 (`specifications/hardware`).
    pub disk_group_id: Option<u32>,
}

impl ReinstallRequest {
    /// The legacy body this request means, for [`ByoiRequest::validate`];
    /// `Err` with the message of a request it cannot mean.
    pub fn into_byoi(self) -> Result<ByoiRequest, String> {
        if self.operating_system != Os::Byoi64.as_str() {
            let shown: String = self.operating_system.chars().take(64).collect();
            return Err(format!(
                "Operating system {shown:?} is not available on this server: this controller installs only {}",
                Os::Byoi64.as_str()
            ));
        }
        let c: Customizations = match self.customizations {
            None | Some(serde_json::Value::Null) => {
                return Err(format!(
                    "Missing parameter customizations.imageURL: {} installs the image at that URL",
                    Os::Byoi64.as_str()
                ))
            }
            Some(v) => serde_json::from_value(v).map_err(|e| format!("Invalid customizations: {e}"))?,
        };
        let storage: Vec<StorageRequest> = match self.storage {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v).map_err(|e| format!("Invalid storage: {e}"))?,
        };
        let disk_group_id = match storage.as_slice() {
            [] => None,
            [s] => s.disk_group_id,
            _ => return Err(format!("{} writes one disk group: give at most one storage entry", Os::Byoi64.as_str())),
        };
        let configdrive = (c.config_drive_user_data.is_some()
            || c.config_drive_metadata.is_some()
            || c.hostname.is_some()
            || c.ssh_key.is_some())
        .then(|| {
            let (user_data, user_data_base64) = match c.config_drive_user_data {
                Some(d) if is_base64(&d) => (None, Some(d)),
                d => (d, None),
            };
            ConfigDriveRequest {
                enable: true,
                hostname: c.hostname,
                ssh_key: c.ssh_key,
                user_data,
                user_data_base64,
                user_metadatas: c.config_drive_metadata,
                ..ConfigDriveRequest::default()
            }
        });
        Ok(ByoiRequest {
            url: c.image_url,
            check_sum: c.image_check_sum,
            check_sum_type: c.image_check_sum_type,
            image_type: c.image_type,
            disk_group_id,
            http_headers: c.http_headers,
            efi_bootloader_path: c.efi_bootloader_path,
            efi_bootloader: c.efi_bootloader,
            configdrive,
            ..ByoiRequest::default()
        })
    }
}

/// Whether `s` is standard base64 (padded), as OVHcloud's guide encodes
/// user data (`base64 -w0`).
fn is_base64(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty() && base64::engine::general_purpose::STANDARD.decode(s).is_ok()
}

/// OVHcloud's task status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum TaskStatus {
    /// OVHcloud's state before a task is scheduled; byoi has none (a
    /// deployment is scheduled when it is created), so no task is `init`.
    Init,
    /// Waiting for the server to netboot into the agent and take the job.
    Todo,
    /// The agent is working (downloading, writing, finishing).
    Doing,
    /// Deployed.
    Done,
    /// Failed because of the request or the image (`comment` says how).
    CustomerError,
    /// Failed because of the platform: the server, its power, its disk,
    /// the agent or the controller (`comment` says how).
    OvhError,
    /// Aborted by `DELETE …/bringYourOwnImage`.
    Cancelled,
}

impl TaskStatus {
    /// The status of the task that is deployment `d`.
    pub fn of(d: &DeploymentRow) -> TaskStatus {
        match (d.status, d.stage) {
            (Status::Doing, Stage::WaitingForAgent) => TaskStatus::Todo,
            (Status::Doing, _) => TaskStatus::Doing,
            (Status::Done, _) => TaskStatus::Done,
            (Status::Error, _) => TaskStatus::failed(d.error_code),
        }
    }

    /// Whose fault a failure is: the one table of error codes to task
    /// statuses. A failure without a code, or with one this build does not
    /// know, is the platform's.
    pub fn failed(code: Option<ErrorCode>) -> TaskStatus {
        let Some(code) = code else { return TaskStatus::OvhError };
        match code {
            ErrorCode::InvalidRequest
            | ErrorCode::DownloadFailed
            | ErrorCode::ResumeFailed
            | ErrorCode::BadChecksumType
            | ErrorCode::ChecksumMismatch
            | ErrorCode::BadFormat
            | ErrorCode::FormatMismatch
            | ErrorCode::NoPartitionTable
            | ErrorCode::CorruptImage
            | ErrorCode::UnsupportedImage
            | ErrorCode::ImageTooLarge
            | ErrorCode::NoEfiPartition => TaskStatus::CustomerError,
            ErrorCode::TargetUnusable
            | ErrorCode::WriteFailed
            | ErrorCode::GptRelocationFailed
            | ErrorCode::ConfigDriveFailed
            | ErrorCode::BootEntryFailed
            | ErrorCode::AgentLost
            | ErrorCode::AgentConflict
            | ErrorCode::Stalled
            | ErrorCode::PowerFailed
            | ErrorCode::Internal
            | ErrorCode::Unknown => TaskStatus::OvhError,
            ErrorCode::Aborted => TaskStatus::Cancelled,
        }
    }
}

/// OVHcloud's task function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum TaskFunction {
    /// An installation: every deployment, by `reinstall` or
    /// `bringYourOwnImage`.
    ReinstallServer,
}

impl TaskFunction {
    /// Its name, as OVHcloud spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskFunction::ReinstallServer => "reinstallServer",
        }
    }
}

/// An OVHcloud task: one deployment.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// The deployment's id.
    pub task_id: i64,
    /// `reinstallServer`.
    pub function: TaskFunction,
    /// Where it is (see [`TaskStatus`]).
    pub status: TaskStatus,
    /// The deployment's message: `starting`, the stage, or what went wrong.
    pub comment: String,
    /// When it was posted.
    #[schema(format = DateTime)]
    pub start_date: String,
    /// When it ended, or null.
    #[schema(format = DateTime)]
    pub done_date: Option<String>,
    /// Its last change.
    #[schema(format = DateTime)]
    pub last_update: String,
    /// What the POST did to the power (only in the answer of `reinstall`;
    /// our extension: with `manual`, the operator must reboot the server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_cycle: Option<PowerCycle>,
}

impl Task {
    /// The task that is deployment `d`.
    pub fn of(d: &DeploymentRow) -> Task {
        Task {
            task_id: d.id,
            function: TaskFunction::ReinstallServer,
            status: TaskStatus::of(d),
            comment: d.message.clone(),
            start_date: rfc3339(d.created_at),
            done_date: d.finished_at.map(rfc3339),
            last_update: rfc3339(d.updated_at),
            power_cycle: None,
        }
    }
}

/// Installs an image, as OVHcloud's `reinstall` with `byoi_64`.
///
/// The body becomes a `bringYourOwnImage` body (same validation, same
/// messages); the server is power-cycled into the agent. Answers the task.
#[utoipa::path(post, path = "/dedicated/server/{serviceName}/reinstall", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    request_body = ReinstallRequest,
    responses(
        (status = 200, description = "Started: its task; `powerCycle` says what was done to the power", body = Task),
        (status = 400, description = "Another operating system than byoi_64, an invalid request (OVH's messages), or bad JSON", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "A deployment is running", body = ErrorBody),
        (status = 413, description = "The body is larger than 24 MiB", body = ErrorBody),
        (status = 502, description = "The power driver failed; the deployment failed", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn reinstall(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<ReinstallRequest, BYOI_BODY>,
) -> Result<axum::Json<Task>, AppError> {
    let body = body.into_byoi().map_err(AppError::BadRequest)?;
    let (d, power) = operator::deploy(&app, &name, body).await?;
    Ok(axum::Json(Task { power_cycle: Some(power), ..Task::of(&d) }))
}

/// `?function=…&status=…` of `GET …/task`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskFilter {
    /// Only tasks of this function: `reinstallServer`, or another of
    /// OVHcloud's function names (`hardReboot`, …), of which this
    /// controller has no tasks.
    pub function: Option<String>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
}

/// The server's tasks: its deployments' ids, oldest first.
#[utoipa::path(get, path = "/dedicated/server/{serviceName}/task", tag = "operator", security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name"), TaskFilter),
    responses(
        (status = 200, description = "The ids of its tasks, ascending", body = Vec<i64>),
        (status = 400, description = "An unknown filter or value (the message names the allowed ones)", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn tasks(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
    filter: Result<Query<TaskFilter>, QueryRejection>,
) -> Result<axum::Json<Vec<i64>>, AppError> {
    let Query(filter) = filter.map_err(|e| AppError::BadRequest(format!("Invalid query: {}", e.body_text())))?;
    // OVHcloud names its functions in camelCase: a value that cannot be one
    // is a mistake; one of its other functions has no tasks here.
    let function = filter.function.as_deref();
    if function.is_some_and(|f| f.is_empty() || f.len() > 64 || !f.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return Err(AppError::BadRequest(
            "Invalid query: function is one of OVHcloud's task functions (`reinstallServer`, `hardReboot`, …)".into(),
        ));
    }
    operator::server(&app, &name).await?;
    let mut ids: Vec<i64> = app
        .db
        .history(&name)
        .await?
        .iter()
        .map(Task::of)
        .filter(|t| function.is_none_or(|f| f == t.function.as_str()) && filter.status.is_none_or(|s| s == t.status))
        .map(|t| t.task_id)
        .collect();
    ids.sort_unstable();
    Ok(axum::Json(ids))
}

/// One of the server's tasks.
#[utoipa::path(get, path = "/dedicated/server/{serviceName}/task/{taskId}", tag = "operator",
    security(("apiToken" = [])),
    params(
        ("serviceName" = String, Path, description = "The server's name"),
        ("taskId" = i64, Path, description = "The task's id (its deployment's)"),
    ),
    responses(
        (status = 200, description = "The task", body = Task),
        (status = 400, description = "The taskId is not an integer", body = ErrorBody),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server, or no such task of this server", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn task(
    _: Operator,
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<axum::Json<Task>, AppError> {
    let id: i64 = id.parse().map_err(|_| {
        let shown: String = id.chars().take(64).collect();
        AppError::BadRequest(format!("[taskId] Given data ({shown}) is not valid for type long"))
    })?;
    operator::server(&app, &name).await?;
    let history = app.db.history(&name).await?;
    let d = history
        .iter()
        .find(|d| d.id == id)
        .ok_or_else(|| AppError::NotFound(format!("The requested object (taskId = {id}) does not exist")))?;
    Ok(axum::Json(Task::of(d)))
}

/// The progress of an installation, as OVHcloud's `install/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstallStatus {
    /// Seconds since the deployment was posted.
    pub elapsed_time: i64,
    /// One step per stage, in order.
    pub progress: Vec<Step>,
}

/// One step of [`InstallStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Step {
    /// What the step does.
    pub comment: String,
    /// Where it is.
    pub status: StepStatus,
    /// What went wrong in it: always "" here, since a deployment that fails
    /// ends at once and `install/status` then answers 404 (its task says
    /// why).
    pub error: String,
}

/// Where a step is. OVHcloud also has `error`; byoi never shows it (see
/// [`Step::error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum StepStatus {
    /// Behind.
    Done,
    /// Under way.
    Doing,
    /// Ahead.
    Todo,
}

/// The steps of an installation: a stage each, in order.
const STEPS: [(Stage, &str); 5] = [
    (Stage::WaitingForAgent, "Booting the deployment agent"),
    (Stage::Downloading, "Downloading the image and writing it to disk"),
    (Stage::Writing, "Completing the write and verifying the checksum"),
    (Stage::Finishing, "Relocating the GPT, writing the ConfigDrive and boot entry"),
    (Stage::Rebooting, "Rebooting into the installed system"),
];

/// The steps of a running deployment at `stage`. A stage this build does
/// not know (a newer agent's) comes after the agent booted: the first step
/// is done, the others are shown `todo`.
pub fn steps(stage: Stage) -> Vec<Step> {
    let at = STEPS.iter().position(|(s, _)| *s == stage);
    STEPS
        .iter()
        .enumerate()
        .map(|(i, (_, comment))| {
            let status = match at {
                Some(at) if i < at => StepStatus::Done,
                Some(at) if i == at => StepStatus::Doing,
                None if i == 0 => StepStatus::Done,
                _ => StepStatus::Todo,
            };
            Step { comment: (*comment).to_owned(), status, error: String::new() }
        })
        .collect()
}

/// The message of `install/status` when no deployment runs (OVHcloud's).
pub const NOT_INSTALLING: &str = "Server is not being installed or reinstalled at the moment";

/// The progress of the server's running deployment.
#[utoipa::path(get, path = "/dedicated/server/{serviceName}/install/status", tag = "operator",
    security(("apiToken" = [])),
    params(("serviceName" = String, Path, description = "The server's name")),
    responses(
        (status = 200, description = "A deployment is running: its steps", body = InstallStatus),
        (status = 401, description = "No or a wrong API token", body = ErrorBody),
        (status = 404, description = "No such server, or no deployment is running", body = ErrorBody),
        (status = 500, description = "The database failed", body = ErrorBody),
    ))]
async fn install_status(
    _: Operator,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<InstallStatus>, AppError> {
    operator::server(&app, &name).await?;
    let d = app
        .db
        .current_deployment(&name)
        .await?
        .filter(|d| d.status == Status::Doing)
        .ok_or_else(|| AppError::NotFound(NOT_INSTALLING.into()))?;
    Ok(axum::Json(InstallStatus { elapsed_time: (db::now() - d.created_at).max(0), progress: steps(d.stage) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reinstall(json: serde_json::Value) -> Result<ByoiRequest, String> {
        serde_json::from_value::<ReinstallRequest>(json).map_err(|e| e.to_string())?.into_byoi()
    }

    #[test]
    fn reinstall_means_a_legacy_body() {
        let b = reinstall(serde_json::json!({"operatingSystem": "byoi_64", "customizations": {
            "imageURL": "https://x/i.qcow2", "imageType": "qcow2", "imageCheckSum": "ab", "imageCheckSumType": "md5",
            "httpHeaders": {"A": "1"}, "configDriveUserData": "#cloud-config\n", "configDriveMetadata": {"k": "v"},
            "efiBootloaderPath": "\\efi\\x.efi", "hostname": "h", "sshKey": "ssh-ed25519 K"},
            "storage": [{"diskGroupId": 2}]}))
        .unwrap();
        assert_eq!(b.url, "https://x/i.qcow2");
        assert_eq!((b.check_sum.as_deref(), b.check_sum_type.as_deref()), (Some("ab"), Some("md5")));
        assert_eq!((b.image_type.as_deref(), b.disk_group_id), (Some("qcow2"), Some(2)));
        assert_eq!(b.efi_bootloader_path.as_deref(), Some("\\efi\\x.efi"));
        let cd = b.configdrive.unwrap();
        assert!(cd.enable);
        assert_eq!((cd.user_data.as_deref(), cd.user_data_base64), (Some("#cloud-config\n"), None));
        assert_eq!(cd.user_metadatas.unwrap()["k"], "v");
        assert_eq!((cd.hostname.as_deref(), cd.ssh_key.as_deref()), (Some("h"), Some("ssh-ed25519 K")));
        // Without ConfigDrive data, no ConfigDrive; base64 user data is
        // decoded by the legacy validation.
        let bare =
            reinstall(serde_json::json!({"operatingSystem": "byoi_64", "customizations": {"imageURL": "http://x/i"}}));
        assert_eq!(bare.unwrap().configdrive, None);
        let b64 = reinstall(serde_json::json!({"operatingSystem": "byoi_64",
            "customizations": {"imageURL": "http://x/i", "configDriveUserData": "I2Nsb3VkLWNvbmZpZwo="}}))
        .unwrap();
        let spec = b64.validate().unwrap().spec;
        assert_eq!(spec.configdrive.unwrap().user_data.unwrap().0, b"#cloud-config\n");
    }

    #[test]
    fn reinstall_refusals() {
        let cases = [
            (
                serde_json::json!({"operatingSystem": "debian12_64"}),
                "Operating system \"debian12_64\" is not available on this server: this controller installs only byoi_64",
            ),
            (
                serde_json::json!({"operatingSystem": "win2022-std_64", "customizations": {"language": "fr-fr"},
                    "storage": [{"partitioning": {}}]}),
                "Operating system \"win2022-std_64\" is not available on this server: this controller installs only byoi_64",
            ),
            (
                serde_json::json!({"operatingSystem": "byoi_64"}),
                "Missing parameter customizations.imageURL: byoi_64 installs the image at that URL",
            ),
            (
                serde_json::json!({"operatingSystem": "byoi_64", "customizations": {"imageURL": "http://x/i"},
                    "storage": [{"diskGroupId": 1}, {"diskGroupId": 2}]}),
                "byoi_64 writes one disk group: give at most one storage entry",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(reinstall(json.clone()).unwrap_err(), want, "{json}");
        }
        let e = reinstall(
            serde_json::json!({"operatingSystem": "byoi_64", "customizations": {"imageURL": "x", "language": "fr"}}),
        )
        .unwrap_err();
        assert!(e.contains("unknown field `language`"), "{e}");
        let e = reinstall(serde_json::json!({"operatingSystem": "byoi_64", "properties": {}})).unwrap_err();
        assert!(e.contains("unknown field `properties`"), "{e}");
    }

    #[test]
    fn failures_are_the_customers_or_the_platforms() {
        assert_eq!(TaskStatus::failed(Some(ErrorCode::ChecksumMismatch)), TaskStatus::CustomerError);
        assert_eq!(TaskStatus::failed(Some(ErrorCode::NoEfiPartition)), TaskStatus::CustomerError);
        assert_eq!(TaskStatus::failed(Some(ErrorCode::PowerFailed)), TaskStatus::OvhError);
        assert_eq!(TaskStatus::failed(Some(ErrorCode::Aborted)), TaskStatus::Cancelled);
        assert_eq!(TaskStatus::failed(None), TaskStatus::OvhError);
    }

    #[test]
    fn steps_follow_the_stage() {
        let shown = |stage| steps(stage).iter().map(|s| s.status).collect::<Vec<_>>();
        use StepStatus::{Doing, Done, Todo};
        assert_eq!(shown(Stage::WaitingForAgent), [Doing, Todo, Todo, Todo, Todo]);
        assert_eq!(shown(Stage::Writing), [Done, Done, Doing, Todo, Todo]);
        assert_eq!(shown(Stage::Finishing), [Done, Done, Done, Doing, Todo]);
        assert_eq!(shown(Stage::Unknown), [Done, Todo, Todo, Todo, Todo]);
        assert_eq!(serde_json::to_value(StepStatus::Doing).unwrap(), "doing");
        assert_eq!(serde_json::to_value(TaskStatus::CustomerError).unwrap(), "customerError");
    }
}
