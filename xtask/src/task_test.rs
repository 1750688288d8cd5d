//! `cargo xtask test`: everything CI checks, in order: the host's packages
//! (installed when missing), formatting and clippy, the agent's kernel and
//! initramfs, the test OS images, then every test with the QEMU suites
//! enabled (`BYOI_E2E=1`).

use std::process::Command;

pub fn run() -> anyhow::Result<()> {
    crate::setup::host(&[])?;
    crate::task_lint::run()?;
    crate::task_initramfs::run_task(&[])?;
    crate::task_image::tiny()?;
    crate::run(Command::new("cargo").args(["test", "--workspace"]).env("BYOI_E2E", "1"))
}
