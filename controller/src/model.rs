//! The BYOI API's request and response bodies, with OVH's field names,
//! and their validation (OVH's messages where OVH has them).

use std::collections::BTreeMap;

use base64::Engine;
use byoi_wire::spec::{Blob, ConfigDriveFormat, ConfigDriveSpec, OvaDisk, SpecError, Urls};
use byoi_wire::{Checksum, DeploySpec, ImageType};
use serde::{Deserialize, Serialize};

/// `configdrive` of a BYOI request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigDriveRequest {
    /// Create the ConfigDrive partition.
    #[serde(default)]
    pub enable: bool,
    /// Host name.
    pub hostname: Option<String>,
    /// SSH public key.
    pub ssh_key: Option<String>,
    /// More SSH public keys, one a line each (our extension; with `sshKey`,
    /// it comes first).
    pub ssh_keys: Option<Vec<String>>,
    /// The network configuration, verbatim (our extension): OpenStack's
    /// `network_data.json` (a JSON object: links, bonds, VLANs, static
    /// networks, DNS), or for `format: nocloud` cloud-init's
    /// `network-config` (version 1 or 2).
    pub network_data: Option<String>,
    /// The ConfigDrive's layout (our extension): `openstack` (OVHcloud's,
    /// label `config-2`, the default) or `nocloud` (label `cidata`).
    #[schema(value_type = Option<String>)]
    pub format: Option<ConfigDriveFormat>,
    /// User data (text).
    pub user_data: Option<String>,
    /// User data (base64, for binary content).
    pub user_data_base64: Option<String>,
    /// Metadata for cloud-init.
    pub user_metadatas: Option<BTreeMap<String, String>>,
}

/// `POST /dedicated/server/{serviceName}/bringYourOwnImage`, with OVH's
/// field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ByoiRequest {
    /// Image URL.
    #[serde(rename = "URL")]
    pub url: String,
    /// Checksum of the image.
    #[serde(rename = "checkSum")]
    pub check_sum: Option<String>,
    /// md5, sha1, sha256, sha512.
    #[serde(rename = "checkSumType")]
    pub check_sum_type: Option<String>,
    /// qcow2, raw or ova (any case).
    #[serde(rename = "type")]
    pub image_type: Option<String>,
    /// Which disk of a multi-disk OVA (our extension).
    #[serde(rename = "ovaDisk")]
    pub ova_disk: Option<OvaDisk>,
    /// Free text.
    pub description: Option<String>,
    /// Disk group to write (default 1).
    #[serde(rename = "diskGroupId")]
    pub disk_group_id: Option<u32>,
    /// Extra HTTP headers (OVH's original name).
    #[serde(rename = "httpHeader")]
    pub http_header: Option<BTreeMap<String, String>>,
    /// Extra HTTP headers (OVH's newer name).
    #[serde(rename = "httpHeaders")]
    pub http_headers: Option<BTreeMap<String, String>>,
    /// UEFI loader on the ESP: the boot entry the agent registers.
    #[serde(rename = "efiBootloaderPath")]
    pub efi_bootloader_path: Option<String>,
    /// The same, by OVH's other name; both given must agree.
    #[serde(rename = "efiBootloader")]
    pub efi_bootloader: Option<String>,
    /// cloud-init ConfigDrive.
    pub configdrive: Option<ConfigDriveRequest>,
    /// The serial number of the disk to write (our extension): the job
    /// names this disk, whatever the agent's inventory groups.
    #[serde(rename = "diskSerial")]
    pub disk_serial: Option<String>,
    /// The WWN of the disk to write (our extension).
    #[serde(rename = "diskWwn")]
    pub disk_wwn: Option<String>,
}

/// Longest `description`, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;

/// A deployment as stored: the spec, and what only the controller uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRequest {
    /// What to deploy.
    pub spec: DeploySpec,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Disk group, from 1.
    pub disk_group_id: u32,
    /// The disk the operator pinned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskPin>,
}

/// A disk pinned at POST by its serial number and/or WWN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskPin {
    /// Serial number ("" for any).
    #[serde(default)]
    pub serial: String,
    /// WWN ("" for any).
    #[serde(default)]
    pub wwn: String,
}

/// Longest serial number or WWN an operator may pin, in bytes.
pub const MAX_DISK_ID: usize = 128;

impl DiskPin {
    /// The pin of a POST, validated: printable ASCII, bounded, at least one
    /// of the two.
    fn from_request(serial: Option<String>, wwn: Option<String>) -> Result<Option<DiskPin>, SpecError> {
        let check = |name: &str, v: Option<String>| -> Result<String, SpecError> {
            let v = v.unwrap_or_default().trim().to_owned();
            if v.len() > MAX_DISK_ID || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(SpecError(format!(
                    "Bad {name}: printable ASCII of at most {MAX_DISK_ID} bytes, as the agent's inventory shows it."
                )));
            }
            Ok(v)
        };
        let pin = DiskPin { serial: check("diskSerial", serial)?, wwn: check("diskWwn", wwn)? };
        Ok((!pin.serial.is_empty() || !pin.wwn.is_empty()).then_some(pin))
    }

    /// Whether `disk` is the pinned one.
    pub fn matches(&self, disk: &byoi_wire::agent::Disk) -> bool {
        (self.serial.is_empty() || disk.serial == self.serial) && (self.wwn.is_empty() || disk.wwn == self.wwn)
    }
}

impl ByoiRequest {
    /// OVH's body as a spec, validated, with OVH's messages where OVH has
    /// them.
    pub fn validate(self) -> Result<StoredRequest, SpecError> {
        let checksum = Checksum::from_pair(self.check_sum.as_deref(), self.check_sum_type.as_deref())?;
        let image_type = self.image_type.as_deref().map(str::parse::<ImageType>).transpose()?;
        let mut headers = self.http_header.unwrap_or_default();
        headers.extend(self.http_headers.unwrap_or_default());
        let disk_group_id = self.disk_group_id.unwrap_or(1);
        let disk = DiskPin::from_request(self.disk_serial, self.disk_wwn)?;
        let efi_loader = match (self.efi_bootloader_path, self.efi_bootloader) {
            (Some(a), Some(b)) if a != b => {
                return Err(SpecError(
                    "Please provide efiBootloaderPath OR efiBootloader (or the same path in both)".into(),
                ))
            }
            (a, b) => a.or(b),
        };
        if disk_group_id == 0 {
            return Err(SpecError("Bad diskGroupId, groups are numbered from 1.".into()));
        }
        if self.description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION) {
            return Err(SpecError("description is longer than 1024 bytes.".into()));
        }
        // Shown on operators' terminals: no escape sequences.
        if self.description.as_ref().is_some_and(|d| d.chars().any(char::is_control)) {
            return Err(SpecError("Bad description: control characters are not allowed.".into()));
        }
        // `enable` decides, as on OVH; data sent with enable: false is
        // refused rather than silently dropped.
        let configdrive = match self.configdrive {
            Some(c) if !c.enable => {
                let data = c.hostname.is_some()
                    || c.ssh_key.is_some()
                    || c.ssh_keys.is_some()
                    || c.network_data.is_some()
                    || c.format.is_some()
                    || c.user_data.is_some()
                    || c.user_data_base64.is_some()
                    || c.user_metadatas.is_some();
                if data {
                    return Err(SpecError("configdrive data given with enable: false; set enable: true".into()));
                }
                None
            }
            Some(c) => {
                let user_data = match (c.user_data, c.user_data_base64) {
                    (Some(_), Some(_)) => {
                        return Err(SpecError("Please provide userData OR userDataBase64, not both".into()))
                    }
                    (Some(text), None) => Some(Blob(text.into_bytes())),
                    (None, Some(b64)) => Some(Blob(
                        base64::engine::general_purpose::STANDARD
                            .decode(b64.trim())
                            .map_err(|e| SpecError(format!("Bad userDataBase64: {e}.")))?,
                    )),
                    (None, None) => None,
                };
                let format = c.format.unwrap_or_default();
                if let (ConfigDriveFormat::OpenStack, Some(n)) = (format, &c.network_data) {
                    // The agent writes it as it is; cloud-init would fail on
                    // it at the server's first boot, far from this request.
                    match serde_json::from_str::<serde_json::Value>(n) {
                        Ok(serde_json::Value::Object(_)) => {}
                        Ok(_) => return Err(SpecError("Bad networkData: network_data.json is a JSON object.".into())),
                        Err(e) => {
                            return Err(SpecError(format!("Bad networkData: network_data.json is not JSON ({e}).")))
                        }
                    }
                }
                Some(ConfigDriveSpec {
                    format,
                    hostname: c.hostname,
                    ssh_keys: c
                        .ssh_key
                        .into_iter()
                        .chain(c.ssh_keys.into_iter().flatten())
                        .filter(|k| !k.trim().is_empty())
                        .collect(),
                    user_data,
                    meta: c.user_metadatas.unwrap_or_default(),
                    network_data: c.network_data.map(|n| Blob(n.into_bytes())),
                    ..ConfigDriveSpec::default()
                })
            }
            None => None,
        };
        let spec = DeploySpec {
            url: self.url.trim().to_owned(),
            checksum,
            image_type,
            ova_disk: self.ova_disk,
            headers,
            configdrive,
            efi_loader,
            firmware: None,
        };
        spec.validate(Urls::Remote)?;
        Ok(StoredRequest { spec, description: self.description, disk_group_id, disk })
    }
}

/// `POST /dedicated/server`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewServer {
    /// Name.
    pub service_name: String,
    /// MAC addresses of its NICs.
    pub macs: Vec<String>,
    /// Power driver: `{"kind": "manual"}`, `{"kind": "command", "name"}` (a
    /// command of the controller's `--power-commands` file), `{"kind":
    /// "ipmi", "host", "user", "password"}`, `{"kind": "redfish", "url",
    /// "user", "password", "insecure"}`.
    pub power: Option<serde_json::Value>,
    /// Extra kernel arguments for the agent (console=…).
    #[serde(default)]
    pub kernel_args: Vec<String>,
}

/// `PUT /dedicated/server/{serviceName}`: what to change, each as a
/// whole; what is absent stays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerUpdate {
    /// Its MACs, all of them.
    pub macs: Option<Vec<String>>,
    /// Its power driver, as at registration.
    pub power: Option<serde_json::Value>,
    /// The agent's extra kernel arguments, all of them (`[]` for none).
    pub kernel_args: Option<Vec<String>>,
}

/// Normalises a MAC (`:` or `-`, any case) to lowercase with colons.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let hex: String = mac.chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    Some((0..6).map(|i| &hex[2 * i..2 * i + 2]).collect::<Vec<_>>().join(":"))
}

/// Whether a kernel argument is safe to put on the iPXE `kernel` line as
/// it is (no spaces, quotes or iPXE expansions).
pub fn valid_kernel_arg(arg: &str) -> bool {
    !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '$' | '{' | '}' | '\\' | '"' | '\'' | '|' | '&' | '#'))
}

/// Removes credentials and the query from a URL before it is shown.
pub use byoi_wire::spec::redact_url;

/// A server name usable in URLs, file names and argv words: letters,
/// digits, `-`, `_`, `.`, at most 128 bytes; not `.` or `..` (a path
/// segment that means something else), not starting with `-` (an argv
/// word that reads as an option, where a power command puts `{server}`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name != "."
        && name != ".."
        && !name.starts_with('-')
}

/// The refusal of a server name [`valid_name`] refuses.
pub fn bad_name(name: &str) -> String {
    let shown: String = name.chars().take(128).collect();
    format!("Bad serviceName {shown:?}: {NAME_RULE}")
}

/// [`valid_name`]'s rule, in words.
pub const NAME_RULE: &str = "letters, digits, '-', '_' and '.', at most 128, not '.' or '..', not starting with '-'";

/// What the 0.1.0 release stored, and its conversion (schema step 2).
pub(crate) mod legacy {
    use std::collections::BTreeMap;

    use base64::Engine;
    use byoi_wire::spec::{Blob, ConfigDriveSpec, OvaDisk};
    use byoi_wire::{Checksum, DeploySpec, ImageType};
    use serde::Deserialize;

    use super::StoredRequest;

    /// 0.1.0's `ValidRequest`.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ValidRequest {
        url: String,
        checksum: Option<String>,
        image_type: Option<String>,
        #[serde(default)]
        ova_disk: Option<String>,
        description: Option<String>,
        disk_group_id: u32,
        headers: BTreeMap<String, String>,
        efi_loader: Option<String>,
        configdrive: Option<ValidConfigDrive>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ValidConfigDrive {
        hostname: Option<String>,
        ssh_keys: Vec<String>,
        user_data_base64: Option<String>,
        meta: BTreeMap<String, String>,
    }

    /// One stored 0.1.0 request in today's form. 0.1.0 validated what it
    /// stored, so every field converts; a row that does not is reported.
    pub(crate) fn convert(json: &str) -> Result<StoredRequest, String> {
        let v: ValidRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let user_data = |b: &str| base64::engine::general_purpose::STANDARD.decode(b).map(Blob);
        Ok(StoredRequest {
            spec: DeploySpec {
                url: v.url,
                checksum: v.checksum.as_deref().map(str::parse::<Checksum>).transpose().map_err(|e| e.0)?,
                image_type: v.image_type.as_deref().and_then(ImageType::from_name),
                ova_disk: v.ova_disk.as_deref().map(OvaDisk::parse),
                headers: v.headers,
                configdrive: v
                    .configdrive
                    .map(|c| -> Result<_, String> {
                        Ok(ConfigDriveSpec {
                            hostname: c.hostname,
                            ssh_keys: c.ssh_keys,
                            user_data: c
                                .user_data_base64
                                .as_deref()
                                .map(user_data)
                                .transpose()
                                .map_err(|e| e.to_string())?,
                            meta: c.meta,
                            ..ConfigDriveSpec::default()
                        })
                    })
                    .transpose()?,
                efi_loader: v.efi_loader,
                firmware: None,
            },
            description: v.description,
            disk_group_id: v.disk_group_id,
            disk: None,
        })
    }

    /// The migration hook: rewrites every deployment's request.
    pub(crate) fn migrate_requests(tx: &rusqlite::Transaction<'_>) -> rusqlite_migration::HookResult {
        let rows: Vec<(i64, String)> = {
            let mut stmt = tx.prepare("SELECT id, request FROM deployments")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            rows
        };
        for (id, json) in rows {
            let new =
                convert(&json).map_err(|e| rusqlite_migration::HookError::Hook(format!("deployment {id}: {e}")))?;
            let new = serde_json::to_string(&new)
                .map_err(|e| rusqlite_migration::HookError::Hook(format!("deployment {id}: {e}")))?;
            tx.execute("UPDATE deployments SET request = ?2 WHERE id = ?1", rusqlite::params![id, new])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<StoredRequest, String> {
        serde_json::from_str::<ByoiRequest>(json).map_err(|e| e.to_string())?.validate().map_err(|e| e.0)
    }

    #[test]
    fn ovh_messages() {
        let cases = [
            (
                r#"{"URL":"http://x/i","checkSum":"ab","checkSumType":"crc32"}"#,
                "Bad checkSumType, expected: md5, sha1, sha256, sha512.",
            ),
            (r#"{"URL":"http://x/i","checkSum":"ab"}"#, "Please provide checkSum AND checkSumType or none of them"),
            (
                r#"{"URL":"http://x/i","checkSumType":"md5"}"#,
                "Please provide checkSum AND checkSumType or none of them",
            ),
            (
                r#"{"URL":"http://x/i","checkSum":"ab","checkSumType":"md5"}"#,
                "Bad checkSum, expected 32 hexadecimal digits for md5.",
            ),
            (r#"{"URL":"http://x/i","type":"vmdk"}"#, "Bad format image, expected: qcow2, raw, ova."),
            (r#"{"URL":"ftp://x/i"}"#, "Bad URL \"ftp://x/i\", expected an http:// or https:// URL."),
            (r#"{"URL":"http://x\ny/i"}"#, "Bad URL \"http://x\\ny/i\", expected an http:// or https:// URL."),
            (r#"{"URL":"http://x/i","type":"raw","ovaDisk":1}"#, "ovaDisk is only for images of type ova."),
            (r#"{"URL":"http://x/i","diskGroupId":0}"#, "Bad diskGroupId, groups are numbered from 1."),
            (
                r#"{"URL":"http://x/i","description":"a\u001b[2Jb"}"#,
                "Bad description: control characters are not allowed.",
            ),
            (
                r#"{"URL":"http://x/i","configdrive":{"enable":false,"hostname":"h"}}"#,
                "configdrive data given with enable: false; set enable: true",
            ),
            (
                r#"{"URL":"http://x/i","configdrive":{"enable":true,"userData":"a","userDataBase64":"YQ=="}}"#,
                "Please provide userData OR userDataBase64, not both",
            ),
            (
                r#"{"URL":"http://x/i","efiBootloaderPath":"\\EFI\\a.efi","efiBootloader":"\\EFI\\b.efi"}"#,
                "Please provide efiBootloaderPath OR efiBootloader (or the same path in both)",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(req(json).unwrap_err(), want, "{json}");
        }
        assert!(req(r#"{"URL":"http://x/i","bogus":1}"#).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn merges_header_names_and_decodes_user_data() {
        let v =
            req(r#"{"URL":" https://x/i.qcow2 ","checkSum":"D41D8CD98F00B204E9800998ECF8427E","checkSumType":"MD5",
            "type":"QCOW2","httpHeader":{"A":"1"},"httpHeaders":{"B":"2"},"efiBootloaderPath":"\\EFI\\x.efi",
            "configdrive":{"enable":true,"hostname":"h","sshKey":"ssh-ed25519 K","userDataBase64":"AAEC"}}"#)
            .unwrap();
        assert_eq!(v.spec.url, "https://x/i.qcow2");
        assert_eq!(v.spec.checksum.unwrap().to_string(), "md5:d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(v.spec.image_type, Some(ImageType::Qcow2));
        assert_eq!(v.spec.headers.len(), 2);
        let cd = v.spec.configdrive.unwrap();
        assert_eq!((cd.user_data, cd.ssh_keys), (Some(Blob(vec![0, 1, 2])), vec!["ssh-ed25519 K".to_owned()]));
        assert_eq!(v.spec.efi_loader.as_deref(), Some("\\EFI\\x.efi"));
        assert_eq!(v.disk_group_id, 1);
    }

    #[test]
    fn several_ssh_keys_network_data_and_nocloud() {
        let v = req(r#"{"URL":"http://x/i","configdrive":{"enable":true,"sshKey":"ssh-ed25519 A",
            "sshKeys":["ssh-ed25519 B","ssh-rsa C"],"networkData":"{\"links\":[],\"networks\":[]}"}}"#)
        .unwrap();
        let cd = v.spec.configdrive.unwrap();
        assert_eq!(cd.ssh_keys, ["ssh-ed25519 A", "ssh-ed25519 B", "ssh-rsa C"]);
        assert_eq!(cd.format, ConfigDriveFormat::OpenStack);
        assert_eq!(cd.network_data, Some(Blob(br#"{"links":[],"networks":[]}"#.to_vec())));
        // NoCloud's network-config is YAML: taken as it is.
        let v = req(r#"{"URL":"http://x/i","configdrive":{"enable":true,"format":"nocloud",
            "networkData":"version: 2\nethernets: {}\n"}}"#)
        .unwrap();
        let cd = v.spec.configdrive.unwrap();
        assert_eq!(
            (cd.format, cd.network_data),
            (ConfigDriveFormat::NoCloud, Some(Blob(b"version: 2\nethernets: {}\n".to_vec())))
        );
        let cases = [
            (r#"{"enable":true,"networkData":"version: 2"}"#, "Bad networkData: network_data.json is not JSON ("),
            (r#"{"enable":true,"networkData":"[1]"}"#, "Bad networkData: network_data.json is a JSON object."),
            (r#"{"enable":true,"sshKeys":["ssh-ed25519 A\nssh-ed25519 B"]}"#, "Bad sshKey"),
            (r#"{"enable":false,"sshKeys":["ssh-ed25519 A"]}"#, "configdrive data given with enable: false"),
            (r#"{"enable":false,"format":"nocloud"}"#, "configdrive data given with enable: false"),
            (r#"{"enable":true,"format":"iso"}"#, "unknown variant `iso`"),
        ];
        for (cd, want) in cases {
            let e = req(&format!(r#"{{"URL":"http://x/i","configdrive":{cd}}}"#)).unwrap_err();
            assert!(e.contains(want), "{cd}: {e}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("ssh-ed25519 K{i}")).collect();
        let e = req(
            &serde_json::json!({"URL": "http://x/i", "configdrive": {"enable": true, "sshKeys": many}}).to_string()
        )
        .unwrap_err();
        assert!(e.starts_with("Too many SSH keys (65"), "{e}");
    }

    #[test]
    fn efi_bootloader_is_an_alias_of_efi_bootloader_path() {
        for json in [
            r#"{"URL":"http://x/i","efiBootloader":"\\EFI\\x.efi"}"#,
            r#"{"URL":"http://x/i","efiBootloaderPath":"\\EFI\\x.efi"}"#,
            r#"{"URL":"http://x/i","efiBootloaderPath":"\\EFI\\x.efi","efiBootloader":"\\EFI\\x.efi"}"#,
        ] {
            assert_eq!(req(json).unwrap().spec.efi_loader.as_deref(), Some("\\EFI\\x.efi"), "{json}");
        }
    }

    #[test]
    fn ova_disk_from_json() {
        for (json, want) in
            [("2", OvaDisk::Index(2)), ("\"007\"", OvaDisk::Index(7)), ("\"vmdisk2\"", OvaDisk::Name("vmdisk2".into()))]
        {
            let v = req(&format!(r#"{{"URL":"http://x/i","type":"ova","ovaDisk":{json}}}"#)).unwrap();
            assert_eq!(v.spec.ova_disk, Some(want), "{json}");
        }
        for bad in ["-1", "1.5", "true", "[1]"] {
            let err = req(&format!(r#"{{"URL":"http://x/i","ovaDisk":{bad}}}"#)).unwrap_err();
            assert!(err.contains("expected a disk number from 1, an OVF disk id or a file name"), "{bad}: {err}");
        }
    }

    #[test]
    fn legacy_rows_convert() {
        let old = r#"{"checksum":"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "configdrive":{"hostname":"web1","meta":{"role":"web"},"sshKeys":["ssh-ed25519 K"],"userDataBase64":"AAEC"},
            "description":"d","diskGroupId":2,"efiLoader":"\\efi\\x.efi","headers":{"X":"1"},"imageType":"ova",
            "ovaDisk":"2","url":"https://x/i"}"#;
        let v = legacy::convert(old).unwrap();
        assert_eq!(v.spec.checksum.unwrap().hex, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        assert_eq!((v.spec.image_type, v.spec.ova_disk), (Some(ImageType::Ova), Some(OvaDisk::Index(2))));
        assert_eq!(v.spec.configdrive.unwrap().user_data, Some(Blob(vec![0, 1, 2])));
        assert_eq!((v.description.as_deref(), v.disk_group_id), (Some("d"), 2));
        let minimal = r#"{"url":"http://x/i","checksum":null,"imageType":null,"description":null,"diskGroupId":1,
            "headers":{},"efiLoader":null,"configdrive":null}"#;
        assert_eq!(legacy::convert(minimal).unwrap().spec, DeploySpec::new("http://x/i"));
    }

    #[test]
    fn server_names() {
        for ok in ["web1", "ns1234.ip-1-2-3.eu", "a_b", "...", ".hidden"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "-rf", "a/b", "a b", "a\nb", "\u{1b}[2J", "é", &"a".repeat(129)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(
            bad_name(".."),
            "Bad serviceName \"..\": letters, digits, '-', '_' and '.', at most 128, not '.' or '..', not starting with '-'"
        );
        assert!(bad_name(&"a".repeat(4096)).len() < 300);
    }

    #[test]
    fn kernel_args_and_macs() {
        assert!(valid_kernel_arg("console=ttyS1,115200"));
        assert!(!valid_kernel_arg("evil ${x}") && !valid_kernel_arg("a=\"b c\""));
        assert_eq!(normalize_mac("52-54-00-AB-cd-01").as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(normalize_mac("525400abcd01").as_deref(), Some("52:54:00:ab:cd:01"));
        assert!(normalize_mac("52:54:00").is_none());
    }
}
