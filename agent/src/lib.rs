//! byoi-agent: streams a disk image from a URL onto a disk.
//!
//! The pipeline is a stack of small adapters (see `ARCHITECTURE.md`):
//! [`source`] (HTTP with resume, or a file) → hashing on its own thread
//! ([`checksum`]) → format sniffing ([`format`]) → decompression and
//! [`qcow2`] decoding → [`sink::DiskWriter`] (zero skipping, held-back first
//! MiB) → [`target`] (block device or file). [`deploy`] wires them;
//! [`plan`] turns a [`byoi_wire::DeploySpec`] into what `deploy` runs.

pub mod bootentry;
pub mod checksum;
pub mod configdrive;
pub mod deploy;
pub mod efi;
pub mod efivars;
pub mod error;
pub mod fatwalk;
pub mod finish;
pub mod format;
pub mod fuzzing;
pub mod inflate;
mod ioctl;
pub mod netboot;
pub mod ova;
pub mod partition;
pub mod plan;
pub mod progress;
pub mod qcow2;
pub mod sink;
pub mod slice;
pub mod source;
pub mod target;
mod util;
pub mod vmdk;

pub use deploy::{deploy, DeployRequest, Deployed};
pub use error::{DeployError, Result};
