//! What to deploy: [`DeploySpec`], the one description of a deployment that
//! the controller stores, the job carries and `byoi-agent deploy` builds
//! from its flags, with its one [`DeploySpec::validate`] speaking OVH's
//! words where OVH has them.
//!
//! Bounds: every string and collection a spec holds is limited here, where
//! it enters (an API body, a job, a command line), so nothing downstream
//! allocates from a hostile claim.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::BootMode;

/// Longest image URL accepted, in bytes (presigned S3 URLs run to ~2 KiB).
pub const MAX_URL: usize = 8 << 10;
/// Most extra HTTP headers.
pub const MAX_HEADERS: usize = 64;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE: usize = 8 << 10;
/// Largest user data accepted (decoded).
pub const MAX_USER_DATA: usize = 16 << 20;
/// Largest `network_data.json` accepted.
pub const MAX_NETWORK_DATA: usize = 1 << 20;
/// Most SSH keys.
pub const MAX_SSH_KEYS: usize = 64;
/// Longest SSH key line, in bytes (an RSA-16384 key is ~2.8 KiB).
pub const MAX_SSH_KEY: usize = 16 << 10;
/// Most metadata pairs.
pub const MAX_META: usize = 128;
/// Longest metadata key or value, in bytes.
pub const MAX_META_ITEM: usize = 4 << 10;
/// Longest `ovaDisk` string, in bytes: a file name's limit on most file
/// systems, and far more than any OVF disk id needs.
pub const MAX_OVA_DISK: usize = 255;
/// Longest `efiBootloaderPath`, in bytes.
pub const MAX_EFI_LOADER: usize = 512;
/// Longest instance id, in bytes.
pub const MAX_INSTANCE_ID: usize = 255;

/// A deployment request that failed validation; the message is OVH's
/// where OVH has one, and always names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// A checksum algorithm OVH's API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// MD5.
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// Every algorithm, in the order OVH's error lists them.
    pub const ALL: [Algorithm; 4] = [Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512];

    /// The name as OVH spells it (`checkSumType`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

impl FromStr for Algorithm {
    type Err = SpecError;

    /// Any case, as OVH accepts it.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let lower = s.to_ascii_lowercase();
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == lower)
            .ok_or_else(|| SpecError("Bad checkSumType, expected: md5, sha1, sha256, sha512.".into()))
    }
}

/// An expected checksum of the bytes served.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Checksum {
    /// The algorithm.
    pub algo: Algorithm,
    /// The digest, lowercase hexadecimal.
    pub hex: String,
}

impl Checksum {
    /// From OVH's separate `checkSumType` and `checkSum` (any case,
    /// surrounding blanks ignored).
    pub fn new(algo: &str, hex: &str) -> Result<Checksum, SpecError> {
        let c = Checksum { algo: algo.parse()?, hex: hex.trim().to_ascii_lowercase() };
        c.validate()?;
        Ok(c)
    }

    /// From OVH's pair of optional fields: both or neither.
    pub fn from_pair(sum: Option<&str>, kind: Option<&str>) -> Result<Option<Checksum>, SpecError> {
        match (sum, kind) {
            (None, None) => Ok(None),
            (Some(sum), Some(kind)) => Checksum::new(kind, sum).map(Some),
            _ => err("Please provide checkSum AND checkSumType or none of them"),
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        let len = self.algo.digest_len() * 2;
        if self.hex.len() != len || !self.hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return err(format!("Bad checkSum, expected {len} hexadecimal digits for {}.", self.algo.name()));
        }
        Ok(())
    }
}

impl fmt::Display for Checksum {
    /// `ALGO:HEX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo.name(), self.hex)
    }
}

impl FromStr for Checksum {
    type Err = SpecError;

    /// Parses `ALGO:HEX`, e.g. `sha256:9f86…`.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| SpecError(format!("checksum {s:?} is not of the form ALGO:HEX, e.g. sha256:9f86d0…")))?;
        Checksum::new(algo, hex)
    }
}

/// The format of an image as the API declares it (`type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    /// A disk image byte for byte, possibly gzip/xz/zstd compressed.
    Raw,
    /// QEMU copy-on-write v2 or v3.
    Qcow2,
    /// An OVF package in a tar archive, its disk a VMDK or a qcow2.
    Ova,
}

impl ImageType {
    /// Every type, in the order the format error lists them.
    pub const ALL: [ImageType; 3] = [ImageType::Qcow2, ImageType::Raw, ImageType::Ova];

    /// The type the API names `name` (exactly, lowercase).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The name as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            ImageType::Raw => "raw",
            ImageType::Qcow2 => "qcow2",
            ImageType::Ova => "ova",
        }
    }

    /// OVH's error for a type it does not know.
    pub fn unknown_message() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
        format!("Bad format image, expected: {}.", names.join(", "))
    }
}

impl FromStr for ImageType {
    type Err = SpecError;

    /// Any case, as the API accepts it.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        ImageType::from_name(&s.to_ascii_lowercase()).ok_or_else(|| SpecError(ImageType::unknown_message()))
    }
}

/// Which disk of a multi-disk OVA to deploy (`ovaDisk`, our extension).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OvaDisk {
    /// 1-based index in the order of the OVF's DiskSection.
    Index(u64),
    /// An OVF disk id (`vmdisk2`) or a file name (`disk2.vmdk`).
    Name(String),
}

impl OvaDisk {
    /// A string of digits is the index; anything else a name.
    pub fn parse(s: &str) -> OvaDisk {
        match s.parse::<u64>() {
            Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => OvaDisk::Index(n),
            _ => OvaDisk::Name(s.to_owned()),
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        match self {
            OvaDisk::Index(0) => err("Bad ovaDisk, disks are numbered from 1."),
            OvaDisk::Index(_) => Ok(()),
            // A name of digits only would be taken for an index.
            OvaDisk::Name(s) if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() => {
                err(format!("Bad ovaDisk {s:?}."))
            }
            OvaDisk::Name(s) if s.trim().is_empty() || s.len() > MAX_OVA_DISK || s.chars().any(char::is_control) => {
                err(format!("Bad ovaDisk {s:?}."))
            }
            OvaDisk::Name(_) => Ok(()),
        }
    }
}

impl fmt::Display for OvaDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OvaDisk::Index(n) => write!(f, "{n}"),
            OvaDisk::Name(s) => f.write_str(s),
        }
    }
}

impl Serialize for OvaDisk {
    /// A number for an index, a string for a name.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OvaDisk::Index(n) => s.serialize_u64(*n),
            OvaDisk::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for OvaDisk {
    // By hand rather than `#[serde(untagged)]`, whose error ("did not match
    // any variant") would not say what is expected. A string of digits is
    // an index, as `OvaDisk::parse` reads it; "00" and "99…9" past u64 stay
    // names, which `validate` refuses.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = OvaDisk;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
                Ok(OvaDisk::parse(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for OvaDisk {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let index = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .description(Some("1-based index in the order of the OVF's DiskSection"));
        let name = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_OVA_DISK))
            .description(Some(
                "an OVF disk id (`vmdisk2`) or a file name (`disk2.vmdk`); a string of digits is an index",
            ));
        OneOfBuilder::new()
            .item(index)
            .item(name)
            .description(Some("Which disk of a multi-disk OVA (`ovaDisk`, a byoi extension)"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for OvaDisk {
    fn name() -> std::borrow::Cow<'static, str> {
        "OvaDisk".into()
    }
}

/// Bytes carried as base64 in JSON (user data, network data).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Blob(pub Vec<u8>);

impl fmt::Debug for Blob {
    // User data may hold secrets: never in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s.trim()).map(Blob).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Blob {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_encoding("base64")
            .description(Some("Bytes, base64 encoded (RFC 4648 §4, with padding)"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Blob {
    fn name() -> std::borrow::Cow<'static, str> {
        "Blob".into()
    }
}

/// The layout of a ConfigDrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConfigDriveFormat {
    /// OpenStack ConfigDrive, label `config-2` (OVH's).
    #[default]
    #[serde(rename = "openstack")]
    OpenStack,
    /// cloud-init NoCloud, label `cidata`.
    #[serde(rename = "nocloud")]
    NoCloud,
}

impl ConfigDriveFormat {
    /// The filesystem label cloud-init looks for.
    pub fn label(self) -> &'static str {
        match self {
            ConfigDriveFormat::OpenStack => "config-2",
            ConfigDriveFormat::NoCloud => "cidata",
        }
    }
}

/// What goes into the cloud-init ConfigDrive.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ConfigDriveSpec {
    /// Layout.
    #[serde(default)]
    pub format: ConfigDriveFormat,
    /// cloud-init instance id; the agent makes a fresh one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// SSH public keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// User data, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<Blob>,
    /// Metadata (OpenStack `meta`; OVH's `userMetadatas`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// OpenStack `network_data.json` (NoCloud: `network-config`), verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<Blob>,
}

impl ConfigDriveSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                return err(format!("Bad hostname {h:?}."));
            }
        }
        if let Some(id) = &self.instance_id {
            if id.is_empty() || id.len() > MAX_INSTANCE_ID || id.chars().any(char::is_control) {
                return err(format!("Bad instance id {id:?}."));
            }
        }
        if self.ssh_keys.len() > MAX_SSH_KEYS {
            return err(format!("Too many SSH keys ({}, at most {MAX_SSH_KEYS}).", self.ssh_keys.len()));
        }
        for k in &self.ssh_keys {
            if k.trim().is_empty() || k.len() > MAX_SSH_KEY || k.chars().any(char::is_control) {
                return err("Bad sshKey: one public key on one line, as in authorized_keys.");
            }
        }
        if self.user_data.as_ref().is_some_and(|u| u.0.len() > MAX_USER_DATA) {
            return err("userData is larger than 16 MiB.");
        }
        if self.network_data.as_ref().is_some_and(|u| u.0.len() > MAX_NETWORK_DATA) {
            return err("networkData is larger than 1 MiB.");
        }
        if self.meta.len() > MAX_META {
            return err(format!("Too many userMetadatas ({}, at most {MAX_META}).", self.meta.len()));
        }
        if let Some((k, _)) =
            self.meta.iter().find(|(k, v)| k.is_empty() || k.len() > MAX_META_ITEM || v.len() > MAX_META_ITEM)
        {
            return err(format!(
                "Bad userMetadatas entry {:?}: keys non-empty, keys and values at most 4 KiB.",
                truncated(k)
            ));
        }
        Ok(())
    }
}

/// Which URLs a spec may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urls {
    /// `http://` and `https://`: what a server can fetch (the API).
    Remote,
    /// Also `file://`: the agent's command line on a host.
    RemoteOrFile,
}

/// A deployment: what to fetch, how to check it, what to add to the disk.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeploySpec {
    /// Image URL.
    pub url: String,
    /// Expected checksum of the bytes served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    /// Declared type; the agent sniffs it when absent and checks it when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<ImageType>,
    /// Which disk of a multi-disk OVA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ova_disk: Option<OvaDisk>,
    /// Extra HTTP headers for the image's server (may carry credentials).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The ConfigDrive, when one is wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configdrive: Option<ConfigDriveSpec>,
    /// UEFI loader on the EFI system partition (`efiBootloaderPath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi_loader: Option<String>,
    /// The server's firmware; detected when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<BootMode>,
}

impl DeploySpec {
    /// A spec for `url` and nothing else.
    pub fn new(url: impl Into<String>) -> DeploySpec {
        DeploySpec { url: url.into(), ..DeploySpec::default() }
    }

    /// Checks every field against its bounds, with OVH's messages where
    /// OVH has them.
    pub fn validate(&self, urls: Urls) -> Result<(), SpecError> {
        self.validate_url(urls)?;
        if let Some(c) = &self.checksum {
            c.validate()?;
        }
        if let Some(d) = &self.ova_disk {
            if self.image_type.is_some_and(|t| t != ImageType::Ova) {
                return err("ovaDisk is only for images of type ova.");
            }
            d.validate()?;
        }
        if self.headers.len() > MAX_HEADERS {
            return err(format!("Too many httpHeaders ({}, at most {MAX_HEADERS}).", self.headers.len()));
        }
        for (k, v) in &self.headers {
            let valid_name =
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name || v.len() > MAX_HEADER_VALUE || v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return err(format!("Bad httpHeader {:?}.", truncated(k)));
            }
        }
        if let Some(c) = &self.configdrive {
            c.validate()?;
        }
        if let Some(l) = &self.efi_loader {
            if l.trim().is_empty() || l.len() > MAX_EFI_LOADER || l.chars().any(char::is_control) {
                return err(format!(
                    "Bad efiBootloaderPath {:?}, expected a path on the EFI system partition such as \\efi\\debian\\grubx64.efi.",
                    truncated(l)
                ));
            }
        }
        Ok(())
    }

    fn validate_url(&self, urls: Urls) -> Result<(), SpecError> {
        let url = &self.url;
        let bad = || {
            let expected = match urls {
                Urls::Remote => "an http:// or https:// URL",
                Urls::RemoteOrFile => "an http://, https:// or file:// URL",
            };
            SpecError(format!("Bad URL {:?}, expected {expected}.", truncated(url)))
        };
        if url.len() > MAX_URL || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        if urls == Urls::RemoteOrFile {
            if let Some(path) = url.strip_prefix("file://") {
                return if path.starts_with('/') { Ok(()) } else { Err(bad()) };
            }
        }
        let parsed: http::Uri = url.parse().map_err(|_| bad())?;
        let scheme_ok = matches!(parsed.scheme_str().map(str::to_ascii_lowercase).as_deref(), Some("http" | "https"));
        if !scheme_ok || parsed.host().is_none_or(str::is_empty) {
            return Err(bad());
        }
        Ok(())
    }
}

/// At most 100 characters of `s`, for messages about oversized input.
fn truncated(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Removes credentials (userinfo) and the query (presigned URLs carry
/// signatures there) from a URL before it is logged or shown.
pub fn redact_url(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let suffix = if no_query.len() < url.len() { "?…" } else { "" };
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
            let host = auth.rsplit('@').next().unwrap_or(auth);
            match path {
                Some(p) => format!("{scheme}://{host}/{p}{suffix}"),
                None => format!("{scheme}://{host}{suffix}"),
            }
        }
        None => format!("{no_query}{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<DeploySpec, String> {
        let s: DeploySpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        s.validate(Urls::Remote).map_err(|e| e.0)?;
        Ok(s)
    }

    #[test]
    fn checksums() {
        let c = Checksum::new("SHA256", &"AB".repeat(32)).unwrap();
        assert_eq!(c.to_string(), format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(c.to_string().parse::<Checksum>().unwrap(), c);
        assert_eq!(serde_json::to_value(&c).unwrap(), serde_json::json!({"algo": "sha256", "hex": "ab".repeat(32)}));
        assert_eq!(
            Checksum::new("crc32", "00").unwrap_err().0,
            "Bad checkSumType, expected: md5, sha1, sha256, sha512."
        );
        assert_eq!(Checksum::new("md5", "abc").unwrap_err().0, "Bad checkSum, expected 32 hexadecimal digits for md5.");
        assert_eq!(
            Checksum::from_pair(Some("ab"), None).unwrap_err().0,
            "Please provide checkSum AND checkSumType or none of them"
        );
        assert_eq!(Checksum::from_pair(None, None).unwrap(), None);
        // Deserialized from a job or a row: checked by validate.
        let bad: Checksum = serde_json::from_str(r#"{"algo":"md5","hex":"xyz"}"#).unwrap();
        assert!(DeploySpec { checksum: Some(bad), ..DeploySpec::new("http://x/i") }.validate(Urls::Remote).is_err());
        assert!("sha256".parse::<Checksum>().unwrap_err().0.contains("ALGO:HEX"));
    }

    #[test]
    fn image_types() {
        for (name, t) in [("qcow2", ImageType::Qcow2), ("RAW", ImageType::Raw), ("Ova", ImageType::Ova)] {
            assert_eq!(name.parse::<ImageType>().unwrap(), t);
        }
        for bad in ["vmdk", "", "ova "] {
            assert_eq!(bad.parse::<ImageType>().unwrap_err().0, "Bad format image, expected: qcow2, raw, ova.");
        }
    }

    #[test]
    fn validation_messages() {
        let long = "d".repeat(MAX_OVA_DISK + 1);
        let cases = [
            (r#"{"url":"ftp://x/i"}"#.to_owned(), "Bad URL \"ftp://x/i\", expected an http:// or https:// URL."),
            (r#"{"url":"http:///i"}"#.to_owned(), "Bad URL \"http:///i\", expected an http:// or https:// URL."),
            (r#"{"url":"file:///i"}"#.to_owned(), "Bad URL \"file:///i\", expected an http:// or https:// URL."),
            (r#"{"url":"http://x/i","imageType":"raw","ovaDisk":1}"#.to_owned(), "ovaDisk is only for images of type ova."),
            (r#"{"url":"http://x/i","ovaDisk":0}"#.to_owned(), "Bad ovaDisk, disks are numbered from 1."),
            (r#"{"url":"http://x/i","ovaDisk":"00"}"#.to_owned(), "Bad ovaDisk, disks are numbered from 1."),
            (r#"{"url":"http://x/i","ovaDisk":" "}"#.to_owned(), "Bad ovaDisk \" \"."),
            (format!(r#"{{"url":"http://x/i","ovaDisk":"{long}"}}"#), &*format!("Bad ovaDisk {long:?}.").leak()),
            (
                r#"{"url":"http://x/i","ovaDisk":"99999999999999999999"}"#.to_owned(),
                "Bad ovaDisk \"99999999999999999999\".",
            ),
            (r#"{"url":"http://x/i","headers":{"a b":"1"}}"#.to_owned(), "Bad httpHeader \"a b\"."),
            (r#"{"url":"http://x/i","headers":{"A":"1\r\nB: 2"}}"#.to_owned(), "Bad httpHeader \"A\"."),
            (r#"{"url":"http://x/i","configdrive":{"hostname":"a b"}}"#.to_owned(), "Bad hostname \"a b\"."),
            (
                r#"{"url":"http://x/i","configdrive":{"sshKeys":["a\nb"]}}"#.to_owned(),
                "Bad sshKey: one public key on one line, as in authorized_keys.",
            ),
            (
                r#"{"url":"http://x/i","efiLoader":""}"#.to_owned(),
                "Bad efiBootloaderPath \"\", expected a path on the EFI system partition such as \\efi\\debian\\grubx64.efi.",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(spec(&json).unwrap_err(), want, "{json}");
        }
        let many: BTreeMap<String, String> = (0..=MAX_HEADERS).map(|i| (format!("h{i}"), "v".into())).collect();
        let s = DeploySpec { headers: many, ..DeploySpec::new("http://x/i") };
        assert_eq!(s.validate(Urls::Remote).unwrap_err().0, "Too many httpHeaders (65, at most 64).");
        let big = ConfigDriveSpec { user_data: Some(Blob(vec![0; MAX_USER_DATA + 1])), ..Default::default() };
        let s = DeploySpec { configdrive: Some(big), ..DeploySpec::new("http://x/i") };
        assert_eq!(s.validate(Urls::Remote).unwrap_err().0, "userData is larger than 16 MiB.");
        assert!(DeploySpec::new("file:///tmp/i.qcow2").validate(Urls::RemoteOrFile).is_ok());
        assert!(DeploySpec::new("file://relative").validate(Urls::RemoteOrFile).is_err());
        assert!(DeploySpec::new(format!("http://x/{}", "a".repeat(MAX_URL))).validate(Urls::Remote).is_err());
    }

    #[test]
    fn round_trips_with_camel_case_and_base64() {
        let s = DeploySpec {
            checksum: Some(Checksum::new("md5", "d41d8cd98f00b204e9800998ecf8427e").unwrap()),
            image_type: Some(ImageType::Ova),
            ova_disk: Some(OvaDisk::Name("vmdisk2".into())),
            headers: [("Authorization".to_owned(), "Bearer x".to_owned())].into(),
            configdrive: Some(ConfigDriveSpec {
                hostname: Some("h".into()),
                ssh_keys: vec!["ssh-ed25519 K".into()],
                user_data: Some(Blob(vec![0, 1, 2])),
                ..Default::default()
            }),
            efi_loader: Some("\\EFI\\x.efi".into()),
            firmware: Some(BootMode::Uefi),
            ..DeploySpec::new("https://x/i.ova")
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["imageType"], "ova");
        assert_eq!(v["ovaDisk"], "vmdisk2");
        assert_eq!(v["configdrive"]["userData"], "AAEC");
        assert_eq!(v["configdrive"]["format"], "openstack");
        assert_eq!(v["efiLoader"], "\\EFI\\x.efi");
        assert_eq!(serde_json::from_value::<DeploySpec>(v).unwrap(), s);
        assert_eq!(serde_json::to_value(OvaDisk::Index(3)).unwrap(), 3);
        assert_eq!(serde_json::from_str::<OvaDisk>("\"007\"").unwrap(), OvaDisk::Index(7));
        assert_eq!(format!("{:?}", Blob(vec![1; 9])), "Blob(9 bytes)");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("https://u:p@s3.example/b/img.qcow2?X-Sig=abc"), "https://s3.example/b/img.qcow2?…");
        assert_eq!(redact_url("http://x/i"), "http://x/i");
        assert_eq!(redact_url("http://u:p@x?a=1"), "http://x?…");
    }
}
