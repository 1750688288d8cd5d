//! Wire types shared by the agent and the controller.
//!
//! Everything here is part of a stable contract: error codes are shown to
//! operators and matched by scripts, stage names appear in the API. Add new
//! variants; never rename or reuse one.

pub mod agent;

use serde::{Deserialize, Serialize};

/// A stable, machine-readable classification of a deployment failure.
///
/// The human message travels next to it; the code is what callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The command line or API request was malformed.
    InvalidRequest,
    /// The image could not be fetched (DNS, TLS, HTTP status, timeouts).
    DownloadFailed,
    /// The connection broke and the download could not be resumed.
    ResumeFailed,
    /// The checksum algorithm is not one of md5, sha1, sha256, sha512.
    BadChecksumType,
    /// The bytes served do not hash to the expected checksum.
    ChecksumMismatch,
    /// The image is in no format we can deploy.
    BadFormat,
    /// The detected format differs from the declared one.
    FormatMismatch,
    /// A raw image with no partition table.
    NoPartitionTable,
    /// The image's metadata is inconsistent or points outside the file.
    CorruptImage,
    /// A valid image using a feature we refuse (backing file, encryption…).
    UnsupportedImage,
    /// The image does not fit on the target.
    ImageTooLarge,
    /// The target is mounted, held, or otherwise unusable.
    TargetUnusable,
    /// Writing to the target failed.
    WriteFailed,
    /// The backup GPT could not be moved to the end of the disk.
    GptRelocationFailed,
    /// The ConfigDrive partition could not be created.
    ConfigDriveFailed,
    /// The firmware boot entry could not be written.
    BootEntryFailed,
    /// A UEFI server's image without an EFI system partition.
    NoEfiPartition,
    /// The deployment was aborted on request.
    Aborted,
    /// A failure that fits no other code (a bug, or an unexpected OS error).
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid-request",
            ErrorCode::DownloadFailed => "download-failed",
            ErrorCode::ResumeFailed => "resume-failed",
            ErrorCode::BadChecksumType => "bad-checksum-type",
            ErrorCode::ChecksumMismatch => "checksum-mismatch",
            ErrorCode::BadFormat => "bad-format",
            ErrorCode::FormatMismatch => "format-mismatch",
            ErrorCode::NoPartitionTable => "no-partition-table",
            ErrorCode::CorruptImage => "corrupt-image",
            ErrorCode::UnsupportedImage => "unsupported-image",
            ErrorCode::ImageTooLarge => "image-too-large",
            ErrorCode::TargetUnusable => "target-unusable",
            ErrorCode::WriteFailed => "write-failed",
            ErrorCode::GptRelocationFailed => "gpt-relocation-failed",
            ErrorCode::ConfigDriveFailed => "configdrive-failed",
            ErrorCode::BootEntryFailed => "boot-entry-failed",
            ErrorCode::NoEfiPartition => "no-efi-partition",
            ErrorCode::Aborted => "aborted",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a deployment is. The agent reports the stages from `Downloading`
/// on; the controller adds the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The server is being (re)booted into the agent.
    WaitingForAgent,
    /// Bytes are being fetched and streamed to the disk.
    Downloading,
    /// The stream has ended; out-of-order pieces are fetched, data is flushed.
    Writing,
    /// Checksum verified; partition table, ConfigDrive and boot entry are
    /// being finished and the first MiB committed.
    Finishing,
    /// The server is rebooting into the deployed OS.
    Rebooting,
}

impl Stage {
    /// The stage as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::WaitingForAgent => "waiting-for-agent",
            Stage::Downloading => "downloading",
            Stage::Writing => "writing",
            Stage::Finishing => "finishing",
            Stage::Rebooting => "rebooting",
        }
    }
}

/// Final status of a deployment, as OVH's API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still running.
    Doing,
    /// Deployed; the disk is bootable.
    Done,
    /// Failed; the disk is not bootable.
    Error,
}

/// One line of `byoi-agent deploy --json` output, also the body of the
/// agent's progress reports.
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
    fn as_str_matches_serde() {
        for code in [ErrorCode::InvalidRequest, ErrorCode::GptRelocationFailed, ErrorCode::Internal] {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{}\"", code.as_str()));
        }
        for stage in [Stage::WaitingForAgent, Stage::Downloading, Stage::Finishing] {
            assert_eq!(serde_json::to_string(&stage).unwrap(), format!("\"{}\"", stage.as_str()));
        }
    }
}
