//! The netbooted agent: what runs as PID 1 in the initramfs. Pure parts
//! (command line, inventory from a sysfs tree) are tested on fakes.

pub mod backoff;
pub mod client;
pub mod cmdline;
pub mod dhcp;
pub mod inventory;
pub mod jobs;
pub mod logs;
pub mod pid1;
pub mod rescue;
