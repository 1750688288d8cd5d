//! The agent protocol (`/agent/v1/…`): what the netbooted agent and the
//! controller say to each other. JSON, camelCase like the BYOI API.

use serde::{Deserialize, Serialize};

use crate::ssh::SshHostKey;
use crate::{BootMode, DeploySpec, ErrorCode, Stage, Status};

wire_enum! {
    /// What the controller wants the agent to do next; in every response.
    pub enum Action {
        /// Carry on with what you are doing.
        Continue = "continue",
        /// Stop the deployment; leave the disk unbootable.
        Abort = "abort",
        /// Reboot now (into the deployed disk, or to netboot again).
        Reboot = "reboot",
        /// Nothing to do: keep heartbeating.
        Wait = "wait",
        /// The agent's work is done (its inventory is in): power the
        /// server off.
        PowerOff = "poweroff",
        /// An action this build does not know (a newer controller's): the
        /// agent carries on as with `wait`, or `continue` mid-deployment.
        Unknown = "unknown",
    }
    unknown = Unknown
}

/// One disk as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Kernel name (`nvme0n1`): for people only, it changes between boots.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Model string.
    #[serde(default)]
    pub model: String,
    /// Serial number.
    #[serde(default)]
    pub serial: String,
    /// World Wide Name, when the disk has one.
    #[serde(default)]
    pub wwn: String,
    /// Spinning disk.
    #[serde(default)]
    pub rotational: bool,
    /// `nvme`, `sata`, `sas`, `virtio`, `usb`…
    #[serde(default)]
    pub transport: String,
    /// Logical sector size in bytes.
    #[serde(default)]
    pub logical_sector_size: u32,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    /// Kernel name.
    pub name: String,
    /// MAC address, lowercase with colons.
    pub mac: String,
    /// Carrier present.
    #[serde(default)]
    pub link: bool,
    /// Speed in Mb/s, when known.
    #[serde(default)]
    pub speed_mbps: Option<u32>,
}

/// What the agent found on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// How the server booted.
    pub firmware: BootMode,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disks.
    pub disks: Vec<Disk>,
    /// NICs.
    pub nics: Vec<Nic>,
}

/// `POST /agent/v1/hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// The inventory.
    pub inventory: Inventory,
    /// Agent version.
    #[serde(default)]
    pub version: String,
}

/// How a job names its disk: never by kernel name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DiskSelector {
    /// Serial number (may be empty for virtual disks).
    pub serial: String,
    /// WWN (may be empty).
    pub wwn: String,
    /// Exact size in bytes.
    pub size_bytes: u64,
}

/// A deployment for the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// The deployment this job belongs to; reports name it.
    pub deployment_id: i64,
    /// What to deploy. Its ConfigDrive carries the instance id.
    pub spec: DeploySpec,
    /// The disk to write.
    pub disk: DiskSelector,
}

/// `POST /agent/v1/heartbeat`: alive, and what it works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The deployment the agent is running, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<i64>,
}

/// Answer to `GET /agent/v1/job`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobResponse {
    /// What to do.
    pub action: Action,
    /// The job, with `continue`.
    pub job: Option<Job>,
}

/// `POST /agent/v1/progress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ProgressReport {
    /// The deployment.
    pub deployment_id: i64,
    /// Where it is.
    pub stage: Stage,
    /// Bytes of the image received.
    pub bytes_done: u64,
    /// Size of the image as served, when known.
    pub bytes_total: Option<u64>,
    /// Console lines, notes, warnings and errors logged since the last
    /// report, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogRecord>,
}

/// Most log records in one report; the agent drops older ones and says how
/// many in the next record.
pub const MAX_LOGS: usize = 32;
/// Longest log message, in bytes; longer ones are cut.
pub const MAX_LOG_MESSAGE: usize = 1024;

wire_enum! {
    /// Severity of a forwarded log record (INFO and above are forwarded,
    /// with the agent's console lines).
    pub enum LogLevel {
        /// What the agent is doing: its console lines (which disk, which
        /// image, which network), and the pipeline's notes.
        Info = "info",
        /// Something went wrong and was worked around (a retry, a fallback).
        Warn = "warn",
        /// Something failed.
        Error = "error",
        /// A level this build does not know.
        Unknown = "unknown",
    }
    unknown = Unknown
}

/// Longest log target, in bytes.
pub const MAX_LOG_TARGET: usize = 128;

/// One `tracing` event of the agent, forwarded to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// The module that logged it (`byoi_agent::source::http`).
    pub target: String,
    /// The message with its fields, at most [`MAX_LOG_MESSAGE`] bytes.
    pub message: String,
}

impl LogRecord {
    /// The record with its message cut to [`MAX_LOG_MESSAGE`] bytes and its
    /// target to [`MAX_LOG_TARGET`], at character boundaries.
    pub fn bounded(mut self) -> LogRecord {
        cut(&mut self.message, MAX_LOG_MESSAGE);
        cut(&mut self.target, MAX_LOG_TARGET);
        self
    }
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// `POST /agent/v1/result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResultReport {
    /// The deployment.
    pub deployment_id: i64,
    /// `done` or `error`.
    pub status: Status,
    /// The error's code.
    pub code: Option<ErrorCode>,
    /// Human message.
    pub message: String,
    /// Console lines, notes, warnings and errors logged since the last
    /// report, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogRecord>,
}

/// The answer to every other agent request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ActionResponse {
    /// What to do.
    pub action: Action,
}

/// Answer to `GET /agent/v1/rescue`: who may log in over SSH, and as
/// whom the server answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RescueResponse {
    /// What to do.
    pub action: Action,
    /// The SSH keys of the server's last deployment that had any.
    pub ssh_keys: Vec<String>,
    /// The server's SSH host key, the same at every rescue boot (its
    /// fingerprint is in the operator's server view). A private key: it is
    /// only as confidential as the agent channel, that is, over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<SshHostKey>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::OvaDisk;
    use crate::ImageType;

    #[test]
    fn a_job_carries_the_spec() {
        let spec = DeploySpec {
            image_type: Some(ImageType::Ova),
            ova_disk: Some(OvaDisk::Name("vmdisk2".into())),
            ..DeploySpec::new("http://x/a.ova")
        };
        let job = Job {
            deployment_id: 7,
            spec,
            disk: DiskSelector { serial: "S1".into(), wwn: String::new(), size_bytes: 1 << 30 },
        };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["spec"]["ovaDisk"], "vmdisk2");
        assert_eq!(v["spec"]["imageType"], "ova");
        assert!(v["spec"].get("checksum").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<Job>(v).unwrap(), job);
    }

    #[test]
    fn unknown_actions_and_levels_are_understood() {
        let r: ActionResponse = serde_json::from_str(r#"{"action":"self-destruct"}"#).unwrap();
        assert_eq!(r.action, Action::Unknown);
        let l: LogRecord = serde_json::from_str(r#"{"level":"fatal","target":"t","message":"m"}"#).unwrap();
        assert_eq!(l.level, LogLevel::Unknown);
        let h: Heartbeat = serde_json::from_str("{}").unwrap();
        assert_eq!(h.deployment_id, None);
    }
}
