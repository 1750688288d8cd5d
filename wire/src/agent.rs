//! The agent protocol (`/agent/v1/…`): what the netbooted agent and the
//! controller say to each other. JSON, camelCase like the BYOI API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Stage, Status};

/// What the controller wants the agent to do next; in every response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Carry on with what you are doing.
    Continue,
    /// Stop the deployment; leave the disk unbootable.
    Abort,
    /// Reboot now (into the deployed disk, or to netboot again).
    Reboot,
    /// Nothing to do: keep heartbeating.
    Wait,
}

/// One disk as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// `uefi` or `legacy`.
    pub firmware: String,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Disks.
    pub disks: Vec<Disk>,
    /// NICs.
    pub nics: Vec<Nic>,
}

/// `POST /agent/v1/hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[serde(rename_all = "camelCase")]
pub struct DiskSelector {
    /// Serial number (may be empty for virtual disks).
    pub serial: String,
    /// WWN (may be empty).
    pub wwn: String,
    /// Exact size in bytes.
    pub size_bytes: u64,
}

/// The ConfigDrive part of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDriveJob {
    /// Host name.
    pub hostname: Option<String>,
    /// SSH public keys.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// User data, base64.
    pub user_data_base64: Option<String>,
    /// Metadata pairs.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// cloud-init instance id.
    pub instance_id: String,
}

/// A deployment for the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// The deployment this job belongs to; reports name it.
    pub deployment_id: i64,
    /// Image URL.
    pub url: String,
    /// `ALGO:HEX`, when the operator gave a checksum.
    pub checksum: Option<String>,
    /// `raw`, `qcow2` or `ova`, when declared.
    pub image_type: Option<String>,
    /// Which disk of a multi-disk OVA: a 1-based index, an OVF disk id or a file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ova_disk: Option<String>,
    /// Extra HTTP headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The disk to write.
    pub disk: DiskSelector,
    /// The ConfigDrive, when enabled.
    pub configdrive: Option<ConfigDriveJob>,
    /// UEFI loader path (`efiBootloaderPath`).
    pub efi_loader: Option<String>,
}

/// Answer to `GET /agent/v1/job`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResponse {
    /// What to do.
    pub action: Action,
    /// The job, with `continue`.
    pub job: Option<Job>,
}

/// `POST /agent/v1/progress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// `POST /agent/v1/result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The answer to every other agent request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionResponse {
    /// What to do.
    pub action: Action,
}

/// Answer to `GET /agent/v1/rescue`: who may log in over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RescueResponse {
    /// What to do.
    pub action: Action,
    /// The SSH keys of the server's last deployment that had any.
    pub ssh_keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ova_disk: Option<&str>) -> Job {
        Job {
            deployment_id: 7,
            url: "http://x/a.ova".into(),
            checksum: None,
            image_type: Some("ova".into()),
            ova_disk: ova_disk.map(str::to_owned),
            headers: BTreeMap::new(),
            disk: DiskSelector { serial: "S1".into(), wwn: String::new(), size_bytes: 1 << 30 },
            configdrive: None,
            efi_loader: None,
        }
    }

    #[test]
    fn ova_disk_is_sent_only_when_set() {
        let with = serde_json::to_value(job(Some("vmdisk2"))).unwrap();
        assert_eq!(with["ovaDisk"], "vmdisk2");
        assert_eq!(with["imageType"], "ova");
        let without = serde_json::to_value(job(None)).unwrap();
        assert!(without.get("ovaDisk").is_none(), "{without}");
        // A controller that predates ovaDisk sends none.
        assert_eq!(serde_json::from_value::<Job>(without).unwrap(), job(None));
        assert_eq!(serde_json::from_value::<Job>(with).unwrap(), job(Some("vmdisk2")));
    }
}
