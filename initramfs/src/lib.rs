//! Building the agent's initramfs: a deterministic `newc` cpio writer
//! ([`cpio`]). Kernel-module selection joins it with the netbooted agent.

pub mod cpio;
