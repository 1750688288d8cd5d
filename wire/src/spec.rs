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
/// Longest file name in an `efiBootloaderPath`, in characters (FAT long
/// names).
pub const MAX_EFI_NAME: usize = 255;

/// Size of the ConfigDrive partition the agent adds (Ironic's habit).
pub const CONFIGDRIVE_PARTITION_SIZE: u64 = 64 << 20;
/// Most bytes the ConfigDrive's files may take, copies included: the
/// partition less room for the FAT filesystem's own structures (two FATs
/// of at most 128 KiB for FAT16 on 64 MiB, the directories) and for each
/// file's last cluster partly used (at most 64 KiB for each of the ~22
/// files and directories). The agent's tests write a drive of exactly this
/// much with 512- and 4096-byte sectors.
pub const CONFIGDRIVE_CAPACITY: u64 = CONFIGDRIVE_PARTITION_SIZE - (4 << 20);
/// The OpenStack metadata versions the agent writes; cloud-init reads the
/// newest dated one it knows, so every file goes in each. `network_data.json`
/// is only read from 2015-10-15 (Liberty) on; 2018-08-27 (Rocky) is the
/// newest cloud-init 22.4 knows; 2012-08-10 and `latest` are what every
/// reader, old or new, finds.
pub const OPENSTACK_VERSIONS: [&str; 4] = ["2012-08-10", "2015-10-15", "2018-08-27", "latest"];

/// Headers the agent's downloader sets itself: an operator's value would
/// break resuming (`Range`, the `If-*` validators) or framing (`Host`,
/// `Content-Length`, `Transfer-Encoding`, `Connection`).
pub const RESERVED_HEADERS: [http::HeaderName; 9] = [
    http::header::RANGE,
    http::header::IF_RANGE,
    http::header::IF_MATCH,
    http::header::IF_NONE_MATCH,
    http::header::IF_UNMODIFIED_SINCE,
    http::header::HOST,
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
];

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

    /// How many times each file is written: once per
    /// [`OPENSTACK_VERSIONS`] for OpenStack, once for NoCloud.
    pub fn copies(self) -> u64 {
        match self {
            ConfigDriveFormat::OpenStack => OPENSTACK_VERSIONS.len() as u64,
            ConfigDriveFormat::NoCloud => 1,
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
            ssh_key(k)?;
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
        let bad_meta = |(k, v): &(&String, &String)| {
            k.is_empty() || k.len() > MAX_META_ITEM || v.len() > MAX_META_ITEM || k.chars().any(char::is_control)
        };
        if let Some((k, _)) = self.meta.iter().find(bad_meta) {
            return err(format!(
                "Bad userMetadatas entry {:?}: keys non-empty without control characters, keys and values at most 4 KiB.",
                truncated(k)
            ));
        }
        let size = self.size();
        if size.total() > CONFIGDRIVE_CAPACITY {
            return err(format!(
                "The configdrive does not fit in its {} MiB partition: userData ({} bytes), networkData ({} bytes) \
                 and metadata (up to {} bytes) are written {} times, {} bytes in all, at most {CONFIGDRIVE_CAPACITY}.",
                CONFIGDRIVE_PARTITION_SIZE >> 20,
                size.user_data,
                size.network_data,
                size.metadata,
                size.copies,
                size.total(),
            ));
        }
        Ok(())
    }

    /// A bound of what the drive's files take: the data verbatim, and the
    /// metadata file as the agent writes it (pretty JSON) at most, for the
    /// larger of the two layouts' metadata, so the bound holds for both.
    pub fn size(&self) -> ConfigDriveSize {
        /// Braces, fixed keys (`uuid`, `launch_index`, `vendor_data.json`'s
        /// few bytes…) and a generated instance id.
        const FIXED: u64 = 512;
        /// Indentation, quotes, `: `, `,\n` and a `key-NN` name per entry.
        const PER_ENTRY: u64 = 32;
        let len = |b: &Option<Blob>| b.as_ref().map_or(0, |b| b.0.len() as u64);
        let strings = self
            .instance_id
            .iter()
            .chain(&self.ssh_keys)
            .chain(self.meta.iter().flat_map(|(k, v)| [k, v]))
            // OpenStack writes the host name twice (`hostname`, `name`).
            .chain(self.hostname.iter().flat_map(|h| [h, h]));
        let metadata = strings.map(|s| json_len(s) + PER_ENTRY).sum::<u64>() + FIXED;
        ConfigDriveSize {
            user_data: len(&self.user_data),
            network_data: len(&self.network_data),
            metadata,
            copies: self.format.copies(),
        }
    }
}

/// An extra HTTP header as the agent sends it, surrounding blanks removed:
/// a valid name that is not one of [`RESERVED_HEADERS`], and a value of at
/// most [`MAX_HEADER_VALUE`] bytes without control characters (tab aside).
/// The one rule for the API, `byoi-agent deploy --header` and the agent's
/// downloader. Messages name the header, never its value (it may be a
/// credential).
pub fn header(name: &str, value: &str) -> Result<(http::HeaderName, http::HeaderValue), SpecError> {
    let shown = truncated(name);
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| SpecError(format!("Bad httpHeader {shown:?}: not a valid header name.")))?;
    if RESERVED_HEADERS.contains(&name) {
        return err(format!("Bad httpHeader {shown:?}: the image download sets it itself."));
    }
    let value = value.trim();
    if value.len() > MAX_HEADER_VALUE {
        return err(format!("Bad httpHeader {shown:?}: its value is longer than 8 KiB."));
    }
    let value = http::HeaderValue::from_str(value)
        .map_err(|_| SpecError(format!("Bad httpHeader {shown:?}: its value holds a control character.")))?;
    Ok((name, value))
}

/// Checks one SSH public key: one `authorized_keys` line, so no control
/// character (line feed, carriage return, NUL…) nor Unicode line or
/// paragraph separator (YAML 1.1 readers, cloud-init's, break lines there).
pub fn ssh_key(key: &str) -> Result<(), SpecError> {
    // The rule the rescue agent applies, in OVH-style words.
    crate::ssh::check_authorized_key(key)
        .map_err(|_| SpecError("Bad sshKey: one public key on one line, as in authorized_keys.".into()))
}

/// `efiBootloaderPath` as the firmware's file path: `\`-separated (a `/`
/// is taken for one), from the root of the EFI system partition. Every
/// name is a FAT long name of printable ASCII (firmware compares UCS-2
/// paths, and not every one handles more) without `"*:<>?|`, not `.` or
/// `..`, nor ending in a dot or a space (FAT drops them).
pub fn efi_loader_path(path: &str) -> Result<String, SpecError> {
    let bad = |why: &str| {
        SpecError(format!(
            "Bad efiBootloaderPath {:?}: {why}; expected a path on the EFI system partition such as \\efi\\debian\\grubx64.efi.",
            truncated(path)
        ))
    };
    if path.len() > MAX_EFI_LOADER {
        return Err(bad("longer than 512 bytes"));
    }
    let normalized = path.replace('/', "\\");
    let rest = normalized.strip_prefix('\\').unwrap_or(&normalized);
    if rest.is_empty() {
        return Err(bad("no file name"));
    }
    for name in rest.split('\\') {
        if name.is_empty() {
            return Err(bad("an empty name between separators"));
        }
        if name == "." || name == ".." {
            return Err(bad("'.' and '..' are not file names"));
        }
        if name.len() > MAX_EFI_NAME {
            return Err(bad("a name longer than 255 characters"));
        }
        if !name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            || name.contains(['"', '*', ':', '<', '>', '?', '|'])
        {
            return Err(bad("a name may hold printable ASCII but not \" * : < > ? |"));
        }
        if name.ends_with(['.', ' ']) {
            return Err(bad("a name ending in a dot or a space"));
        }
    }
    Ok(format!("\\{rest}"))
}

/// Bytes a string takes in JSON (serde_json's escapes: `\"`, `\\`, the
/// short forms of `\n` and friends, `\u00XX` for the other controls).
fn json_len(s: &str) -> u64 {
    let escaped = |c: char| match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    };
    s.chars().map(|c| escaped(c) as u64).sum::<u64>() + 2
}

/// What the files of a ConfigDrive take, at most, by what holds the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDriveSize {
    /// `userData`.
    pub user_data: u64,
    /// `networkData`.
    pub network_data: u64,
    /// The metadata file (host name, keys, `userMetadatas`), a bound of its
    /// JSON.
    pub metadata: u64,
    /// How many times each is written (one per OpenStack version).
    pub copies: u64,
}

impl ConfigDriveSize {
    /// Every copy of every file.
    pub fn total(&self) -> u64 {
        (self.user_data + self.network_data + self.metadata).saturating_mul(self.copies)
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
            header(k, v)?;
        }
        if let Some(c) = &self.configdrive {
            c.validate()?;
        }
        if let Some(l) = &self.efi_loader {
            efi_loader_path(l)?;
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
            (r#"{"url":"http://x/i","headers":{"a b":"1"}}"#.to_owned(), "Bad httpHeader \"a b\": not a valid header name."),
            (
                r#"{"url":"http://x/i","headers":{"A":"1\r\nB: 2"}}"#.to_owned(),
                "Bad httpHeader \"A\": its value holds a control character.",
            ),
            (r#"{"url":"http://x/i","configdrive":{"hostname":"a b"}}"#.to_owned(), "Bad hostname \"a b\"."),
            (
                r#"{"url":"http://x/i","configdrive":{"sshKeys":["a\nb"]}}"#.to_owned(),
                "Bad sshKey: one public key on one line, as in authorized_keys.",
            ),
            (
                r#"{"url":"http://x/i","efiLoader":""}"#.to_owned(),
                "Bad efiBootloaderPath \"\": no file name; expected a path on the EFI system partition such as \\efi\\debian\\grubx64.efi.",
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

    /// Every header the agent's downloader would refuse is refused here,
    /// naming the header and never showing its value.
    #[test]
    fn headers_the_agent_refuses() {
        let secret = "s3cret";
        for name in ["Host", "range", "Content-Length", "If-Range", "transfer-encoding", "Connection"] {
            let e = header(name, secret).unwrap_err().0;
            assert_eq!(e, format!("Bad httpHeader {name:?}: the image download sets it itself."));
        }
        for value in ["a\nb", "a\rb", "a\0b", "a\u{1b}[2Jb", "a\u{7f}b"] {
            let e = header("Authorization", &format!("{secret}{value}")).unwrap_err().0;
            assert_eq!(e, "Bad httpHeader \"Authorization\": its value holds a control character.");
        }
        for name in ["", "a b", "a:b", "é", "a\nb"] {
            assert!(header(name, "v").unwrap_err().0.ends_with(": not a valid header name."), "{name:?}");
        }
        let long = "v".repeat(MAX_HEADER_VALUE + 1);
        assert_eq!(header("X", &long).unwrap_err().0, "Bad httpHeader \"X\": its value is longer than 8 KiB.");
        // Blanks around are the agent's to trim; a tab inside, UTF-8 and
        // obs-text are what HTTP allows.
        let (n, v) = header(" X-Token ", " a\tb ").unwrap();
        assert_eq!((n.as_str(), v.as_bytes()), ("x-token", &b"a\tb"[..]));
        assert!(header("X", "caf\u{e9}").is_ok());
        let s = DeploySpec {
            headers: [("Range".to_owned(), "bytes=0-".to_owned())].into(),
            ..DeploySpec::new("http://x/i")
        };
        assert_eq!(
            s.validate(Urls::Remote).unwrap_err().0,
            "Bad httpHeader \"Range\": the image download sets it itself."
        );
    }

    #[test]
    fn ssh_keys_are_single_lines() {
        assert!(ssh_key("ssh-ed25519 AAAAC3Nza user@h\u{e9}").is_ok());
        for bad in ["", "  ", "ssh-ed25519 A\nssh-rsa B", "ssh-ed25519 A\r", "a\u{2028}b", "a\u{85}b", "a\0"] {
            assert_eq!(ssh_key(bad).unwrap_err().0, "Bad sshKey: one public key on one line, as in authorized_keys.");
        }
        assert!(ssh_key(&"a".repeat(MAX_SSH_KEY + 1)).is_err());
        let cd = ConfigDriveSpec { ssh_keys: vec!["a\nb".into()], ..Default::default() };
        assert!(DeploySpec { configdrive: Some(cd), ..DeploySpec::new("http://x/i") }.validate(Urls::Remote).is_err());
    }

    #[test]
    fn efi_loader_paths() {
        for (path, want) in [
            ("\\EFI\\debian\\shimx64.efi", "\\EFI\\debian\\shimx64.efi"),
            ("efi/boot/bootx64.efi", "\\efi\\boot\\bootx64.efi"),
            ("/EFI/my distro/grub x64.efi", "\\EFI\\my distro\\grub x64.efi"),
        ] {
            assert_eq!(efi_loader_path(path).unwrap(), want, "{path}");
        }
        let long = format!("\\{}", "a".repeat(MAX_EFI_NAME + 1));
        for (path, why) in [
            ("", "no file name"),
            ("\\", "no file name"),
            ("\\EFI\\\\x.efi", "an empty name between separators"),
            ("\\EFI\\", "an empty name between separators"),
            ("\\EFI\\..\\..\\x.efi", "'.' and '..' are not file names"),
            ("./x.efi", "'.' and '..' are not file names"),
            ("\\EFI\\x?.efi", "a name may hold printable ASCII but not \" * : < > ? |"),
            ("\\EFI\\x\n.efi", "a name may hold printable ASCII but not \" * : < > ? |"),
            ("\\EFI\\d\u{e9}bian\\x.efi", "a name may hold printable ASCII but not \" * : < > ? |"),
            ("C:\\x.efi", "a name may hold printable ASCII but not \" * : < > ? |"),
            ("\\EFI\\x.efi.", "a name ending in a dot or a space"),
            (&long, "a name longer than 255 characters"),
        ] {
            let e = efi_loader_path(path).unwrap_err().0;
            assert!(
                e.starts_with("Bad efiBootloaderPath ") && e.contains(&format!(": {why}; expected")),
                "{path:?}: {e}"
            );
        }
        assert!(efi_loader_path(&format!("\\{}", "a/".repeat(MAX_EFI_LOADER)))
            .unwrap_err()
            .0
            .contains("longer than 512 bytes"));
    }

    /// User data that fits once may not fit four times: OpenStack writes
    /// every file once per metadata version.
    #[test]
    fn the_configdrive_must_fit_its_partition() {
        let with = |format, user_data: usize| ConfigDriveSpec {
            format,
            hostname: Some("web1".into()),
            ssh_keys: vec!["ssh-ed25519 K".into()],
            user_data: Some(Blob(vec![b'x'; user_data])),
            ..Default::default()
        };
        let fits = |cd: ConfigDriveSpec| {
            DeploySpec { configdrive: Some(cd), ..DeploySpec::new("http://x/i") }.validate(Urls::Remote)
        };
        let openstack = with(ConfigDriveFormat::OpenStack, 0).size();
        assert_eq!(openstack.copies, 4);
        let most = (CONFIGDRIVE_CAPACITY / 4 - openstack.metadata) as usize;
        assert!(fits(with(ConfigDriveFormat::OpenStack, most)).is_ok());
        let e = fits(with(ConfigDriveFormat::OpenStack, most + 1)).unwrap_err().0;
        assert_eq!(
            e,
            format!(
                "The configdrive does not fit in its 64 MiB partition: userData ({} bytes), networkData (0 bytes) \
                 and metadata (up to {} bytes) are written 4 times, {} bytes in all, at most {CONFIGDRIVE_CAPACITY}.",
                most + 1,
                openstack.metadata,
                CONFIGDRIVE_CAPACITY + 4
            )
        );
        // NoCloud writes it once: 16 MiB fit.
        assert!(fits(with(ConfigDriveFormat::NoCloud, MAX_USER_DATA)).is_ok());
        // Metadata counts as JSON: a quote takes two bytes.
        let meta = ConfigDriveSpec { meta: [("k".into(), "\"".repeat(10))].into(), ..Default::default() };
        let plain = ConfigDriveSpec { meta: [("k".into(), "a".repeat(10))].into(), ..Default::default() };
        assert_eq!(meta.size().metadata - plain.size().metadata, 10);
        assert_eq!(json_len("a\u{1}\n\u{e9}"), 2 + 1 + 6 + 2 + 2);
        let ctl = ConfigDriveSpec { meta: [("a\nb".into(), "v".into())].into(), ..Default::default() };
        assert!(fits(ctl)
            .unwrap_err()
            .0
            .starts_with("Bad userMetadatas entry \"a\\nb\": keys non-empty without control"));
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
