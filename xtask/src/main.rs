//! `cargo xtask`: build and test automation (matklad's cargo-xtask pattern).
//! One module per task; paths come from `CARGO_MANIFEST_DIR`.

mod bench_workload;
mod deb;
mod image_debian;
mod setup;
mod task_bench;
mod task_demo;
mod task_fuzz;
mod task_image;
mod task_initramfs;
mod task_lint;
mod task_test;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  lint        cargo fmt --check and cargo clippy -D warnings over the workspace
  initramfs   [--flavour generic|cloud] [--firmware-dir DIR]: the agent's kernel
              and initramfs in target/byoi (vmlinuz, initramfs.img, manifest.json)
  demo        [--bios] [--image tiny|debian]: netboot a QEMU server from `byoi serve`, deploy the tiny
              test OS with a ConfigDrive, boot it (target/demo keeps the logs)
  qmp         SOCKET on|off|cycle: the demo's power driver (QEMU's QMP)
  image       tiny: the test OS images (UEFI/GPT with a UKI, BIOS/MBR with
              syslinux); debian: Debian 12 with cloud-init (debootstrap, UKI,
              qcow2, cached); in target/byoi/images
  bench       [--runs N] [--only A,C,…] [--device PATH|loop] [--no-micro]: the agent against
              curl, curl|tee|dd, Ironic's stage-and-convert and qemu-img over HTTP on a
              4 GiB workload served by nginx; target/bench/results.json
  fuzz        [--seconds N] [--only qcow2,vmdk,ova]: the agent's parsers under cargo-fuzz
              (libFuzzer, ASan, stable with RUSTC_BOOTSTRAP=1), N s per target (60); a crash is
              kept in agent/tests/fuzz-regressions/ and fails the task; logs in target/fuzz/logs
  test        [--slow]: setup, lint, initramfs, tiny images, then every test with
              the QEMU suites (BYOI_E2E=1); --slow adds the Debian image's suite";

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("lint") => task_lint::run(),
        Some("test") => task_test::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("demo") => task_demo::run_task(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("bench") => task_bench::run_task(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("__measure") => task_bench::measure(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("qmp") => task_demo::qmp(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("fuzz") => task_fuzz::run_task(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("image") => task_image::run_task(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("initramfs") => task_initramfs::run_task(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task {other:?}\n\n{USAGE}"),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Runs a command in the workspace root, failing if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.current_dir(root()).status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
