//! The BYOI API's request and response bodies, with OVH's field names,
//! and their validation (OVH's messages where OVH has them).

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};

/// Largest user data accepted (decoded).
pub const MAX_USER_DATA: usize = 16 << 20;

/// Longest `ovaDisk` string accepted, in bytes: a file name's limit on
/// most file systems, and far more than any OVF disk id needs.
pub const MAX_OVA_DISK: usize = 255;

/// Image types a request may declare (`type`), lowercase.
const IMAGE_TYPES: [&str; 3] = ["qcow2", "raw", "ova"];

/// `ovaDisk` of a BYOI request (our extension to OVH's API): which disk of
/// a multi-disk OVA to deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OvaDisk {
    /// A JSON number: 1-based index in the order of the OVF's DiskSection.
    Index(u64),
    /// A JSON string: an OVF disk id (`vmdisk2`) or a file name
    /// (`disk2.vmdk`); a string of digits means the index.
    Name(String),
}

impl<'de> Deserialize<'de> for OvaDisk {
    // By hand rather than `#[serde(untagged)]`, whose error ("did not match
    // any variant") would not say what is expected.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = OvaDisk;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a disk number from 1, an OVF disk id or a file name")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<OvaDisk, E> {
                Ok(OvaDisk::Index(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<OvaDisk, E> {
                u64::try_from(v)
                    .map(OvaDisk::Index)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OvaDisk, E> {
                Ok(OvaDisk::Name(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<OvaDisk, E> {
                Ok(OvaDisk::Name(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl OvaDisk {
    /// Validates; returns the disk as the agent gets it: an index as
    /// decimal digits without leading zeros, else the string as given.
    fn validate(self) -> Result<String, String> {
        let from_1 = || "Bad ovaDisk, disks are numbered from 1.".to_owned();
        match self {
            OvaDisk::Index(0) => Err(from_1()),
            OvaDisk::Index(n) => Ok(n.to_string()),
            OvaDisk::Name(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => match s.parse::<u64>() {
                Ok(0) => Err(from_1()),
                Ok(n) => Ok(n.to_string()),
                Err(_) => Err(format!("Bad ovaDisk {s:?}.")),
            },
            OvaDisk::Name(s) => {
                if s.trim().is_empty() || s.len() > MAX_OVA_DISK || s.chars().any(char::is_control) {
                    return Err(format!("Bad ovaDisk {s:?}."));
                }
                Ok(s)
            }
        }
    }
}

/// `configdrive` of a BYOI request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigDriveRequest {
    /// Create the ConfigDrive partition.
    #[serde(default)]
    pub enable: bool,
    /// Host name.
    pub hostname: Option<String>,
    /// SSH public key.
    pub ssh_key: Option<String>,
    /// User data (text).
    pub user_data: Option<String>,
    /// User data (base64, for binary content).
    pub user_data_base64: Option<String>,
    /// Metadata for cloud-init.
    pub user_metadatas: Option<BTreeMap<String, String>>,
}

/// `POST /dedicated/server/{serviceName}/bringYourOwnImage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Which disk of a multi-disk OVA (our extension); only with `type`
    /// ova or no `type`.
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
    /// UEFI loader on the ESP.
    #[serde(rename = "efiBootloaderPath")]
    pub efi_bootloader_path: Option<String>,
    /// cloud-init ConfigDrive.
    pub configdrive: Option<ConfigDriveRequest>,
}

/// A request that passed validation, as stored and turned into jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidRequest {
    /// Image URL.
    pub url: String,
    /// `algo:hex`.
    pub checksum: Option<String>,
    /// `raw` / `qcow2` / `ova`.
    pub image_type: Option<String>,
    /// Which disk of a multi-disk OVA: a 1-based index (decimal digits), an
    /// OVF disk id or a file name. Absent from rows stored before it existed.
    #[serde(default)]
    pub ova_disk: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Disk group, from 1.
    pub disk_group_id: u32,
    /// Headers (both OVH names merged).
    pub headers: BTreeMap<String, String>,
    /// UEFI loader.
    pub efi_loader: Option<String>,
    /// ConfigDrive: hostname, key, user data (base64), metadata.
    pub configdrive: Option<ValidConfigDrive>,
}

/// A validated ConfigDrive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidConfigDrive {
    /// Host name.
    pub hostname: Option<String>,
    /// SSH keys.
    pub ssh_keys: Vec<String>,
    /// User data, base64.
    pub user_data_base64: Option<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
}

const CHECKSUM_TYPES: [(&str, usize); 4] = [("md5", 32), ("sha1", 40), ("sha256", 64), ("sha512", 128)];

impl ByoiRequest {
    /// Validates, with OVH's messages where OVH has them.
    pub fn validate(self) -> Result<ValidRequest, String> {
        let url = self.url.trim().to_owned();
        let bad_url = || format!("Bad URL {url:?}, expected an http:// or https:// URL.");
        let parsed: http::Uri = url.parse().map_err(|_| bad_url())?;
        let scheme_ok = matches!(parsed.scheme_str().map(str::to_ascii_lowercase).as_deref(), Some("http" | "https"));
        let host_ok = parsed.host().is_some_and(|h| !h.is_empty());
        if !scheme_ok || !host_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad_url());
        }
        let checksum = match (self.check_sum, self.check_sum_type) {
            (None, None) => None,
            (Some(sum), Some(kind)) => {
                let kind = kind.to_ascii_lowercase();
                let Some(&(_, len)) = CHECKSUM_TYPES.iter().find(|(k, _)| *k == kind) else {
                    return Err("Bad checkSumType, expected: md5, sha1, sha256, sha512.".into());
                };
                let sum = sum.trim().to_ascii_lowercase();
                if sum.len() != len || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("Bad checkSum, expected {len} hexadecimal digits for {kind}."));
                }
                Some(format!("{kind}:{sum}"))
            }
            _ => return Err("Please provide checkSum AND checkSumType or none of them".into()),
        };
        let image_type = match self.image_type.map(|t| t.to_ascii_lowercase()) {
            None => None,
            Some(t) if IMAGE_TYPES.contains(&t.as_str()) => Some(t),
            Some(_) => return Err("Bad format image, expected: qcow2, raw, ova.".into()),
        };
        // Without `type` the agent sniffs the format, so ovaDisk may come alone.
        let ova_disk = match self.ova_disk {
            Some(_) if image_type.as_deref().is_some_and(|t| t != "ova") => {
                return Err("ovaDisk is only for images of type ova.".into())
            }
            Some(d) => Some(d.validate()?),
            None => None,
        };
        let mut headers = self.http_header.unwrap_or_default();
        headers.extend(self.http_headers.unwrap_or_default());
        for (k, v) in &headers {
            let valid_name =
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name || v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(format!("Bad httpHeader {k:?}."));
            }
        }
        let disk_group_id = self.disk_group_id.unwrap_or(1);
        if disk_group_id == 0 {
            return Err("Bad diskGroupId, groups are numbered from 1.".into());
        }
        // `enable` decides, as on OVH; data sent with enable: false is
        // refused rather than silently dropped.
        let configdrive = match self.configdrive {
            Some(c) if !c.enable => {
                let data = c.hostname.is_some()
                    || c.ssh_key.is_some()
                    || c.user_data.is_some()
                    || c.user_data_base64.is_some()
                    || c.user_metadatas.is_some();
                if data {
                    return Err("configdrive data given with enable: false; set enable: true".into());
                }
                None
            }
            Some(c) => {
                let user_data = match (c.user_data, c.user_data_base64) {
                    (Some(_), Some(_)) => return Err("Please provide userData OR userDataBase64, not both".into()),
                    (Some(text), None) => Some(text.into_bytes()),
                    (None, Some(b64)) => Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(b64.trim())
                            .map_err(|e| format!("Bad userDataBase64: {e}."))?,
                    ),
                    (None, None) => None,
                };
                if user_data.as_ref().is_some_and(|u| u.len() > MAX_USER_DATA) {
                    return Err("userData is larger than 16 MiB.".into());
                }
                if let Some(h) = &c.hostname {
                    let ok = !h.is_empty()
                        && h.len() <= 253
                        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if !ok {
                        return Err(format!("Bad hostname {h:?}."));
                    }
                }
                Some(ValidConfigDrive {
                    hostname: c.hostname,
                    ssh_keys: c.ssh_key.into_iter().filter(|k| !k.trim().is_empty()).collect(),
                    user_data_base64: user_data.map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
                    meta: c.user_metadatas.unwrap_or_default(),
                })
            }
            None => None,
        };
        Ok(ValidRequest {
            url,
            checksum,
            image_type,
            ova_disk,
            description: self.description,
            disk_group_id,
            headers,
            efi_loader: self.efi_bootloader_path,
            configdrive,
        })
    }
}

/// `POST /dedicated/server`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewServer {
    /// Name.
    pub service_name: String,
    /// MAC addresses of its NICs.
    pub macs: Vec<String>,
    /// Power driver: `{"kind": "manual"}`, `{"kind": "command", "argv": […]}`,
    /// `{"kind": "ipmi", "host", "user", "password"}`, `{"kind": "redfish",
    /// "url", "user", "password", "insecure"}`.
    pub power: Option<serde_json::Value>,
    /// Extra kernel arguments for the agent (console=…).
    #[serde(default)]
    pub kernel_args: Vec<String>,
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

/// Removes credentials (userinfo) and the query (presigned URLs carry
/// signatures there) from a URL before it is logged or shown.
pub fn redact_url(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = auth.rsplit('@').next().unwrap_or(auth);
            let suffix = if no_query.len() < url.len() { "?…" } else { "" };
            if path.is_empty() && !rest.contains('/') {
                format!("{scheme}://{host}{suffix}")
            } else {
                format!("{scheme}://{host}/{path}{suffix}")
            }
        }
        None => no_query.to_owned(),
    }
}

/// A server name usable in URLs.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<ValidRequest, String> {
        serde_json::from_str::<ByoiRequest>(json).map_err(|e| e.to_string())?.validate()
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
            (r#"{"URL":"http://x/i","type":"vmdk"}"#, "Bad format image, expected: qcow2, raw, ova."),
            (r#"{"URL":"ftp://x/i"}"#, "Bad URL \"ftp://x/i\", expected an http:// or https:// URL."),
            (r#"{"URL":"http://x\ny/i"}"#, "Bad URL \"http://x\\ny/i\", expected an http:// or https:// URL."),
            (r#"{"URL":"http:///i"}"#, "Bad URL \"http:///i\", expected an http:// or https:// URL."),
            (
                r#"{"URL":"http://x/i","configdrive":{"enable":false,"hostname":"h"}}"#,
                "configdrive data given with enable: false; set enable: true",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(req(json).unwrap_err(), want, "{json}");
        }
    }

    #[test]
    fn merges_header_names_and_decodes_user_data() {
        let v = req(r#"{"URL":"https://x/i.qcow2","checkSum":"D41D8CD98F00B204E9800998ECF8427E","checkSumType":"MD5",
            "httpHeader":{"A":"1"},"httpHeaders":{"B":"2"},"efiBootloaderPath":"\\EFI\\x.efi",
            "configdrive":{"enable":true,"hostname":"h","sshKey":"ssh-ed25519 K","userDataBase64":"AAEC"}}"#)
        .unwrap();
        assert_eq!(v.checksum.as_deref(), Some("md5:d41d8cd98f00b204e9800998ecf8427e"));
        assert_eq!(v.headers.len(), 2);
        assert_eq!(v.configdrive.unwrap().user_data_base64.as_deref(), Some("AAEC"));
        assert_eq!(v.efi_loader.as_deref(), Some("\\EFI\\x.efi"));
        assert!(req(r#"{"URL":"http://x/i","bogus":1}"#).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn image_types() {
        for (ty, want) in [("qcow2", "qcow2"), ("RAW", "raw"), ("ova", "ova"), ("OVA", "ova"), ("Ova", "ova")] {
            let v = req(&format!(r#"{{"URL":"http://x/i","type":"{ty}"}}"#)).unwrap();
            assert_eq!(v.image_type.as_deref(), Some(want), "{ty}");
            assert_eq!(v.ova_disk, None);
        }
        for ty in ["vmdk", "ovf", "", "ova "] {
            let err = req(&format!(r#"{{"URL":"http://x/i","type":"{ty}"}}"#)).unwrap_err();
            assert_eq!(err, "Bad format image, expected: qcow2, raw, ova.", "{ty:?}");
        }
    }

    #[test]
    fn ova_disk() {
        let long = "d".repeat(MAX_OVA_DISK + 1);
        let longest = &long[1..];
        let cases = [
            (r#""type":"ova","ovaDisk":2"#.to_owned(), Ok("2")),
            (r#""type":"OVA","ovaDisk":"2""#.to_owned(), Ok("2")),
            (r#""ovaDisk":"007""#.to_owned(), Ok("7")),
            (r#""type":"ova","ovaDisk":"vmdisk2""#.to_owned(), Ok("vmdisk2")),
            (r#""ovaDisk":"disk 2.vmdk""#.to_owned(), Ok("disk 2.vmdk")),
            (format!(r#""ovaDisk":"{longest}""#), Ok(longest)),
            (r#""type":"ova","ovaDisk":0"#.to_owned(), Err("Bad ovaDisk, disks are numbered from 1.".to_owned())),
            (r#""ovaDisk":"00""#.to_owned(), Err("Bad ovaDisk, disks are numbered from 1.".to_owned())),
            (r#""ovaDisk":"""#.to_owned(), Err(r#"Bad ovaDisk ""."#.to_owned())),
            (r#""ovaDisk":"  ""#.to_owned(), Err(r#"Bad ovaDisk "  "."#.to_owned())),
            (r#""ovaDisk":"a\u0000b""#.to_owned(), Err(r#"Bad ovaDisk "a\0b"."#.to_owned())),
            (r#""ovaDisk":"a\nb""#.to_owned(), Err(r#"Bad ovaDisk "a\nb"."#.to_owned())),
            (format!(r#""ovaDisk":"{long}""#), Err(format!("Bad ovaDisk {long:?}."))),
            (
                r#""ovaDisk":"99999999999999999999""#.to_owned(),
                Err(r#"Bad ovaDisk "99999999999999999999"."#.to_owned()),
            ),
            (r#""type":"raw","ovaDisk":1"#.to_owned(), Err("ovaDisk is only for images of type ova.".to_owned())),
            (r#""type":"qcow2","ovaDisk":"a""#.to_owned(), Err("ovaDisk is only for images of type ova.".to_owned())),
            (r#""type":"vmdk","ovaDisk":1"#.to_owned(), Err("Bad format image, expected: qcow2, raw, ova.".to_owned())),
        ];
        for (fields, want) in cases {
            let got = req(&format!(r#"{{"URL":"http://x/i",{fields}}}"#)).map(|v| v.ova_disk.unwrap());
            assert_eq!(got.as_deref().map_err(String::as_str), want.as_deref().map_err(String::as_str), "{fields}");
        }
        for bad in ["-1", "1.5", "true", "[1]"] {
            let err = req(&format!(r#"{{"URL":"http://x/i","ovaDisk":{bad}}}"#)).unwrap_err();
            assert!(err.contains("expected a disk number from 1, an OVF disk id or a file name"), "{bad}: {err}");
        }
        assert_eq!(req(r#"{"URL":"http://x/i","ovaDisk":null}"#).unwrap().ova_disk, None);
    }

    #[test]
    fn stored_requests_without_ova_disk_still_load() {
        let old = r#"{"url":"http://x/i","checksum":null,"imageType":"raw","description":null,"diskGroupId":1,
            "headers":{},"efiLoader":null,"configdrive":null}"#;
        let v: ValidRequest = serde_json::from_str(old).unwrap();
        assert_eq!((v.image_type.as_deref(), v.ova_disk), (Some("raw"), None));
        let new = req(r#"{"URL":"http://x/i","type":"ova","ovaDisk":3}"#).unwrap();
        let stored = serde_json::to_value(&new).unwrap();
        assert_eq!(stored["ovaDisk"], "3");
        assert_eq!(serde_json::from_value::<ValidRequest>(stored).unwrap(), new);
    }

    #[test]
    fn urls_are_redacted_and_kernel_args_checked() {
        assert_eq!(redact_url("https://u:p@s3.example/b/img.qcow2?X-Sig=abc"), "https://s3.example/b/img.qcow2?…");
        assert_eq!(redact_url("http://x/i"), "http://x/i");
        assert!(valid_kernel_arg("console=ttyS1,115200"));
        assert!(!valid_kernel_arg("evil ${x}") && !valid_kernel_arg("a=\"b c\""));
    }

    #[test]
    fn macs() {
        assert_eq!(normalize_mac("52-54-00-AB-cd-01").as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(normalize_mac("525400abcd01").as_deref(), Some("52:54:00:ab:cd:01"));
        assert!(normalize_mac("52:54:00").is_none());
    }
}
