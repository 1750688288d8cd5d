//! `cargo xtask test`: everything CI checks, in order: the host's packages
//! (installed when missing), formatting and clippy, the agent's kernel and
//! initramfs, the test OS images, then every test with the QEMU suites
//! enabled (`BYOI_E2E=1`). `--slow` adds the real Debian image and the
//! suite that boots it (`BYOI_E2E_SLOW=1`).

use std::process::Command;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let slow = match args {
        [] => false,
        [a] if a == "--slow" => true,
        _ => anyhow::bail!("usage: cargo xtask test [--slow]"),
    };
    crate::setup::host(&[], &[])?;
    crate::task_lint::run()?;
    crate::task_initramfs::run_task(&[])?;
    crate::task_image::tiny()?;
    let mut test = Command::new("cargo");
    test.args(["test", "--workspace"]).env("BYOI_E2E", "1");
    if slow {
        crate::image_debian::debian()?;
        test.env("BYOI_E2E_SLOW", "1");
    }
    crate::run(&mut test)
}
