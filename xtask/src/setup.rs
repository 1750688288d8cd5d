//! Host setup for the tasks that run QEMU: Debian packages (QEMU 10 from
//! bookworm-backports, to match the preinstalled qemu-utils; the mirror is
//! the one this machine's apt already uses) and the musl target; the bench
//! adds nginx and qemu-block-extra (backports). Nothing happens when
//! everything is there; installing needs root.

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::deb::output;
use crate::run;
use crate::task_initramfs::MUSL;

/// What the tests, the images and the demo use: the oracles and fixture
/// makers (qemu-img/qemu-io, compressors, openssl, sgdisk, mkfs.vfat,
/// mtools, cloud-init's readers, fsck), the static build (musl-tools),
/// depmod, objcopy for unified kernel images, sfdisk, OVMF, ssh, dropbear's
/// tools (the oracle for the rescue host key's file format).
pub const PACKAGES: &[&str] = &[
    "qemu-utils",
    "cpio",
    "kmod",
    "gzip",
    "xz-utils",
    "zstd",
    "openssl",
    "curl",
    "coreutils",
    "musl-tools",
    "gdisk",
    "dosfstools",
    "mtools",
    "cloud-init",
    "e2fsprogs",
    "util-linux",
    "mount",
    "fdisk",
    "binutils",
    "ovmf",
    "openssh-client",
    "dropbear-bin",
    // The ipmi power driver's tool, and OpenIPMI's simulated BMC that
    // controller/tests/ipmi.rs drives it against.
    "ipmitool",
    "openipmi",
    // The dashboard's tests drive the real page in headless Chromium.
    "chromium",
    "chromium-driver",
    // `--database postgres://`: the controller's tests run against a
    // cluster of their own too (`initdb`, `pg_ctl` from here).
    "postgresql",
];

/// QEMU itself, from bookworm-backports.
const QEMU_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios"];

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

/// Adds a bookworm-backports source using this machine's own mirror.
fn add_backports() -> anyhow::Result<()> {
    let mut sources = String::new();
    for e in std::fs::read_dir("/etc/apt/sources.list.d").into_iter().flatten().flatten() {
        sources.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    if sources.contains("bookworm-backports")
        || std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default().contains("bookworm-backports")
    {
        return Ok(());
    }
    let mirror = crate::deb::apt_mirror()?;
    std::fs::write(
        "/etc/apt/sources.list.d/byoi-backports.sources",
        format!(
            "Types: deb\nURIs: {mirror}\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )?;
    run(Command::new("apt-get").args(["update", "-qq"]))
}

/// Installs what is missing of [`PACKAGES`] plus `extra`, QEMU and
/// `extra_backports` from bookworm-backports, and the musl target.
pub fn host(extra: &[&str], extra_backports: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().chain(extra).copied().filter(|p| !installed(p)).collect();
    let mut backports: Vec<&str> = extra_backports.iter().copied().filter(|p| !installed(p)).collect();
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        backports.extend_from_slice(QEMU_PACKAGES);
    }
    if !missing.is_empty() || !backports.is_empty() {
        if !is_root() {
            bail!(
                "missing Debian packages {} (and from bookworm-backports: {}); run as root to install them",
                missing.join(" "),
                backports.join(" ")
            );
        }
        println!("setup: installing {} (backports: {})", missing.join(" "), backports.join(" "));
        let apt = |args: &[&str]| {
            run(Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        if !backports.is_empty() {
            add_backports()?;
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        if !missing.is_empty() {
            apt(&missing)?;
        }
        if !backports.is_empty() {
            let mut args = vec!["-t", "bookworm-backports"];
            args.extend_from_slice(&backports);
            apt(&args)?;
        }
    }
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !targets.lines().any(|t| t.trim() == MUSL) {
        run(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    Ok(())
}
