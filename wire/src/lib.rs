//! Wire types shared by the agent and the controller: the vocabulary of a
//! deployment ([`spec`]), the agent protocol ([`agent`]), and the enums
//! both sides and the API speak.
//!
//! Everything here is part of a stable contract: error codes are shown to
//! operators and matched by scripts, stage names appear in the API. Add new
//! variants; never rename or reuse one. Enums read from the network accept
//! values they do not know as their `Unknown` variant, so a newer peer is
//! understood as well as it can be and never refused.

pub use spec::{Checksum, DeploySpec, ImageType};

use serde::{Deserialize, Serialize};

/// A string enum on the wire: `as_str` and serde agree by construction;
/// with `unknown = V`, a value this build does not know reads as `V`;
/// with the `sqlite` feature it is stored as its name; with the `openapi`
/// feature its schema is a string of one of its names, described by its
/// doc comments (so only doc attributes are taken).
macro_rules! wire_enum {
    (
        $(#[doc = $doc:literal])*
        pub enum $name:ident { $( $(#[doc = $vdoc:literal])* $variant:ident = $text:literal, )* }
        $(unknown = $unknown:ident)?
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[doc = $vdoc])* $variant, )* }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The value as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// The value named `s` exactly, if this build knows it.
            pub fn from_name(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                if let Some(v) = $name::from_name(&s) {
                    return Ok(v);
                }
                $( return Ok($name::$unknown); )?
                #[allow(unreachable_code)]
                Err(serde::de::Error::unknown_variant(&s, &[$($text),*]))
            }
        }

        #[cfg(feature = "sqlite")]
        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        #[cfg(feature = "sqlite")]
        impl rusqlite::types::FromSql for $name {
            // The database holds only what this controller wrote: a name it
            // does not know is an error, not `Unknown`.
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                $name::from_name(s).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(format!("{s:?} is no {}", stringify!($name)).into())
                })
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                // The type's doc, then each name with its variant's doc.
                let lines = |docs: &[&str], sep| docs.iter().map(|l| l.trim()).collect::<Vec<_>>().join(sep);
                let mut description = lines(&[$($doc),*], "\n");
                description.push('\n');
                $( description.push_str(&format!("\n- `{}`: {}", $text, lines(&[$($vdoc),*], " "))); )*
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some(Self::ALL.iter().map(|v| v.as_str())))
                    .description(Some(description))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
        }
    };
}

pub mod agent;
pub mod spec;
pub mod ssh;
#[cfg(feature = "tls")]
pub mod tls;

wire_enum! {
    /// A stable, machine-readable classification of a deployment failure.
    ///
    /// The human message travels next to it; the code is what callers branch on.
    pub enum ErrorCode {
        /// The command line or API request was malformed.
        InvalidRequest = "invalid-request",
        /// The image could not be fetched (DNS, TLS, HTTP status, timeouts).
        DownloadFailed = "download-failed",
        /// The connection broke and the download could not be resumed.
        ResumeFailed = "resume-failed",
        /// The checksum algorithm is not one of md5, sha1, sha256, sha512.
        BadChecksumType = "bad-checksum-type",
        /// The bytes served do not hash to the expected checksum.
        ChecksumMismatch = "checksum-mismatch",
        /// The image is in no format we can deploy.
        BadFormat = "bad-format",
        /// The detected format differs from the declared one.
        FormatMismatch = "format-mismatch",
        /// A raw image with no partition table.
        NoPartitionTable = "no-partition-table",
        /// The image's metadata is inconsistent or points outside the file.
        CorruptImage = "corrupt-image",
        /// A valid image using a feature we refuse (backing file, encryption…).
        UnsupportedImage = "unsupported-image",
        /// The image does not fit on the target.
        ImageTooLarge = "image-too-large",
        /// The target is mounted, held, or otherwise unusable.
        TargetUnusable = "target-unusable",
        /// Writing to the target failed.
        WriteFailed = "write-failed",
        /// The backup GPT could not be moved to the end of the disk.
        GptRelocationFailed = "gpt-relocation-failed",
        /// The ConfigDrive partition could not be created.
        ConfigDriveFailed = "configdrive-failed",
        /// The firmware boot entry could not be written.
        BootEntryFailed = "boot-entry-failed",
        /// A UEFI server's image without an EFI system partition.
        NoEfiPartition = "no-efi-partition",
        /// The deployment was aborted on request.
        Aborted = "aborted",
        /// The agent stopped reporting, or the server never netbooted into it
        /// (set by the controller).
        AgentLost = "agent-lost",
        /// Two agents claimed the same server's boot: the deployment fails
        /// rather than trust either (set by the controller).
        AgentConflict = "agent-conflict",
        /// The agent reported, but the deployment did not move for the
        /// stall timeout (set by the controller).
        Stalled = "stalled",
        /// The server could not be power-cycled (set by the controller).
        PowerFailed = "power-failed",
        /// A failure that fits no other code (a bug, or an unexpected OS error).
        Internal = "internal",
        /// A code this build does not know (a newer agent's); the message
        /// says what happened.
        Unknown = "unknown",
    }
    unknown = Unknown
}

wire_enum! {
    /// Where a deployment is. The agent reports the stages from `Downloading`
    /// on; the controller adds the others.
    pub enum Stage {
        /// The server is being (re)booted into the agent.
        WaitingForAgent = "waiting-for-agent",
        /// Bytes are being fetched and streamed to the disk.
        Downloading = "downloading",
        /// The stream has ended; out-of-order pieces are fetched, data is flushed.
        Writing = "writing",
        /// Checksum verified; partition table, ConfigDrive and boot entry are
        /// being finished and the first MiB committed.
        Finishing = "finishing",
        /// The server is rebooting into the deployed OS.
        Rebooting = "rebooting",
        /// A stage this build does not know (a newer agent's).
        Unknown = "unknown",
    }
    unknown = Unknown
}

wire_enum! {
    /// Status of a deployment, as OVH's API spells it.
    pub enum Status {
        /// Still running.
        Doing = "doing",
        /// Deployed; the disk is bootable.
        Done = "done",
        /// Failed; the disk is not bootable.
        Error = "error",
    }
}

wire_enum! {
    /// What a server netboots into: what `/boot/{mac}` serves it.
    pub enum BootTarget {
        /// The in-memory agent, to deploy.
        Deploy = "deploy",
        /// Its own disk.
        Local = "local",
        /// The in-memory agent with SSH, no deployment.
        Rescue = "rescue",
        /// The in-memory agent, to report the hardware and power off.
        Inspect = "inspect",
    }
}

wire_enum! {
    /// The firmware a server boots with.
    pub enum BootMode {
        /// UEFI: the agent writes a boot entry.
        Uefi = "uefi",
        /// BIOS (legacy): the disk's MBR boots.
        Legacy = "legacy",
    }
}

/// One line of `byoi-agent deploy --json` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// Periodic progress.
    Progress {
        /// Current stage.
        stage: Stage,
        /// Bytes of the image processed so far, as served.
        #[serde(rename = "bytesDone")]
        bytes_done: u64,
        /// Total bytes of the image as served, when known.
        #[serde(rename = "bytesTotal")]
        bytes_total: Option<u64>,
    },
    /// The last line: how the deployment ended.
    Result {
        /// `done` or `error`.
        status: Status,
        /// The error's code; absent on success.
        code: Option<ErrorCode>,
        /// A human message; on error, the OVH wording where one exists.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_use_the_documented_field_names() {
        let p = Event::Progress { stage: Stage::Downloading, bytes_done: 5, bytes_total: Some(9) };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"event":"progress","stage":"downloading","bytesDone":5,"bytesTotal":9}"#
        );
        let r = Event::Result { status: Status::Error, code: Some(ErrorCode::ChecksumMismatch), message: "bad".into() };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"event":"result","status":"error","code":"checksum-mismatch","message":"bad"}"#
        );
    }

    #[test]
    fn as_str_matches_serde_and_names_are_distinct() {
        fn check<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug + Copy>(
            all: &[T],
            name: impl Fn(T) -> &'static str,
        ) {
            let mut seen = std::collections::BTreeSet::new();
            for &v in all {
                assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{}\"", name(v)));
                assert_eq!(serde_json::from_str::<T>(&format!("\"{}\"", name(v))).unwrap(), v);
                assert!(seen.insert(name(v)), "{} twice", name(v));
            }
        }
        check(ErrorCode::ALL, ErrorCode::as_str);
        check(Stage::ALL, Stage::as_str);
        check(Status::ALL, Status::as_str);
        check(BootTarget::ALL, BootTarget::as_str);
        check(BootMode::ALL, BootMode::as_str);
    }

    #[test]
    fn a_newer_peers_values_are_understood_or_refused_clearly() {
        assert_eq!(serde_json::from_str::<ErrorCode>("\"disk-on-fire\"").unwrap(), ErrorCode::Unknown);
        assert_eq!(serde_json::from_str::<Stage>("\"defragmenting\"").unwrap(), Stage::Unknown);
        let e = serde_json::from_str::<Status>("\"maybe\"").unwrap_err().to_string();
        assert!(e.contains("unknown variant `maybe`, expected one of `doing`, `done`, `error`"), "{e}");
    }
}
