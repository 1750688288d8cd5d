//! Building the agent's initramfs: a deterministic `newc` cpio writer
//! ([`cpio`]) and kernel-module dependency and alias handling ([`kmod`]),
//! used at build time (xtask) and at run time (coldplug in the agent).

pub mod cpio;
pub mod kmod;
