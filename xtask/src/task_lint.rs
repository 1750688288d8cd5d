//! `cargo xtask lint`: formatting and clippy, as CI wants them.

use std::process::Command;

pub fn run() -> anyhow::Result<()> {
    crate::run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    crate::run(Command::new("cargo").args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
}
