//! Building the agent's initramfs: a deterministic `newc` cpio writer
//! ([`cpio`]) and kernel-module dependency and alias handling ([`kmod`]),
//! used at build time (xtask) and at run time (coldplug in the agent).

pub mod cpio;
pub mod kmod;

/// Where the operator's private CA (PEM) lives in the initramfs, relative
/// to its root: `cargo xtask initramfs --ca-file` puts it there, and the
/// agent trusts the controller's certificate only if that CA signed it.
pub const CA_FILE: &str = "etc/byoi/ca.pem";
