//! The deployment's error type: one case per failure a caller or operator
//! can act on, each with a stable [`ErrorCode`] and, where OVHcloud's BYOI
//! has one, OVH's own wording.

use std::io;

use byoi_wire::ErrorCode;

use crate::source::RedactedUrl;

/// Image formats we name in messages.
pub const SUPPORTED_FORMATS: &str = "qcow2, raw, ova";

/// Every way a deployment can fail.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A malformed option or request.
    #[error("{0}")]
    InvalidRequest(String),

    /// The image could not be fetched.
    #[error("Could not download image located: {url} ({reason})")]
    Download {
        /// The URL as given by the operator, redacted.
        url: RedactedUrl,
        /// What went wrong: an HTTP status, a timeout, a TLS error.
        reason: String,
    },

    /// The connection broke and could not be resumed safely.
    #[error("Could not download image located: {url} (connection lost after {offset} bytes and {reason})")]
    Resume {
        /// The URL as given by the operator, redacted.
        url: RedactedUrl,
        /// How many bytes had been received.
        offset: u64,
        /// Why resuming was not possible.
        reason: String,
    },

    /// The checksum type is unknown.
    #[error("Bad checkSumType, expected: md5, sha1, sha256, sha512.")]
    BadChecksumType,

    /// The bytes served do not match the expected checksum.
    #[error("Bad {algo} for downloaded file, got: {actual} while expecting {expected}.")]
    ChecksumMismatch {
        /// Algorithm name, lowercase.
        algo: &'static str,
        /// What the bytes hashed to.
        actual: String,
        /// What the operator said they should hash to.
        expected: String,
    },

    /// A member of an OVA does not match its digest in the OVA's manifest.
    #[error("{member} does not match the OVA's manifest: its {algo} is {actual}, the manifest says {expected}")]
    ManifestMismatch {
        /// The member's name in the archive.
        member: String,
        /// Algorithm name, lowercase.
        algo: &'static str,
        /// What the member's bytes hashed to.
        actual: String,
        /// What the manifest says.
        expected: String,
    },

    /// Not an image format we deploy.
    #[error("Bad format image, expected: {SUPPORTED_FORMATS}.")]
    BadFormat {
        /// What the magic bytes say it is.
        detected: String,
    },

    /// The image is not of the declared type.
    #[error("image provided format is {detected} which does not match expected {declared} format")]
    FormatMismatch {
        /// What the magic bytes say.
        detected: &'static str,
        /// What the operator said.
        declared: &'static str,
    },

    /// A raw image without an MBR or GPT.
    #[error(
        "image provided format is not of type raw because no partition table was found. It seems to contain: {contents}"
    )]
    NoPartitionTable {
        /// A guess at what the bytes are.
        contents: String,
    },

    /// The image is inconsistent: metadata out of range, truncated data,
    /// undecodable compressed data.
    #[error("corrupt {format} image: {detail}")]
    Corrupt {
        /// `qcow2`, `raw (gzip)`, …
        format: &'static str,
        /// Which structure is wrong and how.
        detail: String,
    },

    /// A valid image using a feature we refuse to deploy.
    #[error("unsupported {format} image: {detail}")]
    Unsupported {
        /// The format.
        format: &'static str,
        /// The feature and why.
        detail: String,
    },

    /// A qcow2 whose data comes before its metadata, beyond what we can
    /// buffer, from a source that cannot seek.
    #[error(
        "qcow2 metadata follows its data; serve it uncompressed from a server that supports Range requests ({detail})"
    )]
    Unstreamable {
        /// Where the layout broke the forward pass.
        detail: String,
    },

    /// The image does not fit.
    #[error("image provided has a size of {image}{} bytes which is larger than {device} of {disk} bytes", if *.lower_bound { " or more" } else { "" })]
    ImageTooLarge {
        /// The image's (virtual) size, or the offset it had reached.
        image: u64,
        /// True when `image` is only a lower bound (a compressed stream).
        lower_bound: bool,
        /// The target's path.
        device: String,
        /// The target's size.
        disk: u64,
    },

    /// The target cannot be used.
    #[error("{0}")]
    TargetUnusable(String),

    /// Writing to the target failed.
    #[error("Can't write {format} on disk. ({source})")]
    Write {
        /// `qcow2` or `raw`, as OVH words it.
        format: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The GPT could not be validated or moved.
    #[error("Can not move backup GPT data structures to the end of disk. ({0})")]
    GptRelocation(String),

    /// The ConfigDrive partition could not be made.
    #[error("Could not create configdrive on disk. ({0})")]
    ConfigDrive(String),

    /// A UEFI server needs an EFI system partition to boot from.
    #[error(
        "the image has no EFI system partition, which a UEFI server needs to boot (add one, or deploy with --firmware legacy)"
    )]
    NoEfiPartition,

    /// The UEFI boot entry could not be chosen or written.
    #[error("could not set the UEFI boot entry: {0}")]
    BootEntry(String),

    /// The deployment was aborted on request.
    #[error("deployment aborted")]
    Aborted,

    /// An unexpected failure, e.g. a thread that panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<byoi_wire::spec::SpecError> for DeployError {
    fn from(e: byoi_wire::spec::SpecError) -> Self {
        DeployError::InvalidRequest(e.0)
    }
}

impl DeployError {
    /// The stable code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            DeployError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            DeployError::Download { .. } => ErrorCode::DownloadFailed,
            DeployError::Resume { .. } => ErrorCode::ResumeFailed,
            DeployError::BadChecksumType => ErrorCode::BadChecksumType,
            DeployError::ChecksumMismatch { .. } | DeployError::ManifestMismatch { .. } => ErrorCode::ChecksumMismatch,
            DeployError::BadFormat { .. } => ErrorCode::BadFormat,
            DeployError::FormatMismatch { .. } => ErrorCode::FormatMismatch,
            DeployError::NoPartitionTable { .. } => ErrorCode::NoPartitionTable,
            DeployError::Corrupt { .. } | DeployError::Unstreamable { .. } => ErrorCode::CorruptImage,
            DeployError::Unsupported { .. } => ErrorCode::UnsupportedImage,
            DeployError::ImageTooLarge { .. } => ErrorCode::ImageTooLarge,
            DeployError::TargetUnusable(_) => ErrorCode::TargetUnusable,
            DeployError::Write { .. } => ErrorCode::WriteFailed,
            DeployError::GptRelocation(_) => ErrorCode::GptRelocationFailed,
            DeployError::ConfigDrive(_) => ErrorCode::ConfigDriveFailed,
            DeployError::NoEfiPartition => ErrorCode::NoEfiPartition,
            DeployError::BootEntry(_) => ErrorCode::BootEntryFailed,
            DeployError::Aborted => ErrorCode::Aborted,
            DeployError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Shorthand for a qcow2 corruption.
    pub(crate) fn corrupt_qcow2(detail: impl Into<String>) -> Self {
        DeployError::Corrupt { format: "qcow2", detail: detail.into() }
    }

    /// Recovers a `DeployError` that travelled through an `io::Error`
    /// (sources report their failures through `Read`), or classifies a plain
    /// I/O error from reading the image as `context` describes.
    pub(crate) fn from_read(err: io::Error, context: impl FnOnce(io::Error) -> DeployError) -> Self {
        if err.get_ref().is_some_and(|inner| inner.is::<DeployError>()) {
            if let Some(inner) = err.into_inner() {
                if let Ok(e) = inner.downcast::<DeployError>() {
                    return *e;
                }
            }
            return DeployError::Internal("lost error while unwrapping".into());
        }
        context(err)
    }

    /// Wraps the error so it can travel through `Read`.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

/// Result alias for the library.
pub type Result<T, E = DeployError> = std::result::Result<T, E>;
