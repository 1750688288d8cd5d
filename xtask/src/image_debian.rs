//! `cargo xtask image debian`: a real Debian 12 (bookworm) image with
//! cloud-init, booted by UEFI through a unified kernel image.
//!
//! The recipe:
//! 1. `debootstrap --variant=minbase` with systemd, the cloud kernel,
//!    cloud-init, ifupdown (cloud-init's ENI renderer) and openssh-server,
//!    from the mirror the machine's apt already uses. The tree is cached in
//!    `target/byoi/cache/debian-rootfs` (keyed by the debootstrap line).
//! 2. Configuration by file edits plus two `chroot` calls (`passwd -l`,
//!    `update-initramfs`): fstab and kernel command line by PARTUUID, cloud-init
//!    limited to ConfigDrive/NoCloud, and `byoi-report.service`, which prints
//!    `debian: ...` lines on ttyS0 once cloud-init is done, then powers off.
//! 3. The disk: GPT made by `sgdisk` on a sparse raw file; the ESP is a FAT
//!    image (`mkfs.vfat -C` + mtools) holding the UKI at
//!    `\EFI\BOOT\BOOTX64.EFI`, the root an ext4 image made by `mkfs.ext4 -d`;
//!    both are written into the raw file at their partition offsets. The end of
//!    the disk stays free for the agent's `config-2` partition. Then
//!    `qemu-img convert` to `debian.qcow2`.
//!
//! No loop devices or mounts: they need privileges and host state (free loop
//! nodes, udev) that containers and CI runners often lack, and a failed build
//! would leave them behind. Filesystems built from a directory need neither.
//!
//! The image is cached: `debian.stamp` holds a hash of this file and the
//! mirror; while it matches, the existing qcow2 is returned.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::deb::{apt_mirror, output};
use crate::task_image::{efi_stub, fat_image, images_dir, new_disk, splice, unified_kernel_image};
use crate::{root, run};

const SUITE: &str = "bookworm";

/// Packages on top of minbase; debootstrap adds their Depends, not their
/// Recommends, and cannot resolve virtual packages: python3-cffi-backend
/// provides python3-cryptography's `python3-cffi-backend-api-*`.
const INCLUDE: &[&str] = &[
    "systemd-sysv",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "cloud-init",
    "ifupdown",
    "openssh-server",
    "sudo",
    "python3-cffi-backend",
];

/// Sizes in MiB: the disk, the ESP at 1 MiB, and the free tail left for
/// the ConfigDrive.
const DISK_MIB: u64 = 2048;
const ESP_MIB: u64 = 64;
const FREE_TAIL_MIB: u64 = 64;

/// Fixed GUID of the root partition and UUID of its filesystem, so the
/// kernel command line and fstab need no per-build edits.
const ROOT_PARTUUID: &str = "6a3c1b0e-5d2f-4e8a-9b7c-1d0e2f3a4b5c";
const ROOT_FS_UUID: &str = "0b7e6d5c-4a3b-4c2d-8e1f-9a8b7c6d5e4f";

/// Drivers the initramfs must carry to find the root on virtio or NVMe.
const INITRAMFS_MODULES: &str = "virtio_pci\nvirtio_blk\nvirtio_scsi\nsd_mod\nnvme\nahci\next4\n";

const CLOUD_CFG: &str = "# byoi: only the datasources our agent writes.
datasource_list: [ ConfigDrive, NoCloud, None ]
# C.UTF-8 needs no locale-gen on first boot.
locale: C.UTF-8
# No DSA host key (sshd ignores it; generating it costs seconds under TCG).
ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
";

const INTERFACES: &str = "auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
";

const REPORT_SCRIPT: &str = r#"#!/bin/sh
# byoi: report what cloud-init applied on the serial console, then power off.
key=$(cat /home/debian/.ssh/authorized_keys /root/.ssh/authorized_keys 2>/dev/null \
    | grep -oE '(ssh|ecdsa|sk)-[^ ]+ [A-Za-z0-9+/=]+( .*)?$' | head -n1)
status=$(cloud-init status 2>&1 | sed -n 's/^status: //p')
{
    echo "debian: hostname=$(hostname)"
    echo "debian: cloud-init status=${status:-unknown}"
    echo "debian: authorized_keys=${key:-none}"
    echo "debian: runcmd=$(cat /run/byoi-userdata 2>/dev/null || echo none)"
    echo "debian: powering off"
} > /dev/ttyS0
systemctl --no-block poweroff
"#;

/// Ordered after multi-user.target explicitly, like cloud-final.service:
/// without that, being wanted by the target orders it before the target,
/// a cycle with cloud-final's `After=multi-user.target`.
const REPORT_UNIT: &str = "[Unit]
Description=byoi: report cloud-init results on the serial console and power off
After=multi-user.target cloud-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/byoi-report

[Install]
WantedBy=multi-user.target
";

/// Builds (or returns the cached) `target/byoi/images/debian.qcow2`.
pub fn debian() -> anyhow::Result<PathBuf> {
    let out = images_dir();
    let qcow2 = out.join("debian.qcow2");
    let stamp = out.join("debian.stamp");
    let mirror = apt_mirror()?;
    let recipe = recipe_hash(&mirror);
    if qcow2.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(recipe.as_str()) {
        return Ok(qcow2);
    }
    let _ = std::fs::remove_file(&stamp);
    let cache = root().join("target/byoi/cache");
    std::fs::create_dir_all(&cache)?;
    let rootfs = debootstrap(&mirror, &cache)?;
    configure(&rootfs)?;

    let work = out.join("debian-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let uki = work.join("BOOTX64.EFI");
    build_uki(&rootfs, &cache, &uki)?;
    let raw = work.join("debian.raw");
    build_disk(&raw, &uki, &rootfs, &work)?;
    let _ = std::fs::remove_file(&qcow2);
    run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow2))?;
    std::fs::remove_dir_all(&work)?;
    std::fs::write(&stamp, &recipe)?;
    println!("image: {} ({:.1} MB)", qcow2.display(), std::fs::metadata(&qcow2)?.len() as f64 / 1e6);
    Ok(qcow2)
}

/// The recipe version: this file's source plus the mirror.
fn recipe_hash(mirror: &str) -> String {
    let mut h = Sha256::new();
    h.update(include_str!("image_debian.rs"));
    h.update(mirror);
    format!("{:x}\n", h.finalize())
}

/// Installs debootstrap from the machine's apt if it is missing.
fn ensure_debootstrap() -> anyhow::Result<()> {
    if Path::new("/usr/sbin/debootstrap").exists() {
        return Ok(());
    }
    let install =
        || run(Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends", "debootstrap"]));
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        install().context("installing debootstrap")?;
    }
    Ok(())
}

/// The debootstrapped tree in `cache/debian-rootfs`, built once per
/// debootstrap line (recorded in `debian-rootfs.stamp`).
fn debootstrap(mirror: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join("debian-rootfs");
    let stamp = cache.join("debian-rootfs.stamp");
    let args = vec![
        "--variant=minbase".to_owned(),
        format!("--include={}", INCLUDE.join(",")),
        "--components=main".to_owned(),
        SUITE.to_owned(),
    ];
    let key = format!("{} {mirror}\n", args.join(" "));
    if dir.is_dir() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) {
        return Ok(dir);
    }
    ensure_debootstrap()?;
    let tmp = cache.join("debian-rootfs.tmp");
    for d in [&tmp, &dir] {
        remove_tree(d)?;
    }
    println!("debootstrap {key}");
    run(Command::new("debootstrap").args(&args).arg(&tmp).arg(mirror)).context("debootstrap")?;
    std::fs::rename(&tmp, &dir)?;
    std::fs::write(&stamp, key)?;
    Ok(dir)
}

/// Removes a (root file system) tree, refusing if something is mounted in
/// it, as a failed debootstrap can leave `proc` and `sys` behind.
fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let prefix = format!("{}/", dir.canonicalize()?.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if let Some(m) = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).find(|m| m.starts_with(&prefix)) {
        bail!("{m} is mounted inside {}; unmount it first", dir.display());
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Writes `contents` to `rel` (relative to the root) with `mode`.
fn put(rootfs: &Path, rel: &str, mode: u32, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = rootfs.join(rel);
    std::fs::create_dir_all(path.parent().context("no parent")?)?;
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Turns the debootstrapped tree into the image's root (idempotent).
fn configure(rootfs: &Path) -> anyhow::Result<()> {
    put(rootfs, "etc/fstab", 0o644, &format!("PARTUUID={ROOT_PARTUUID} / ext4 errors=remount-ro 0 1\n"))?;
    put(rootfs, "etc/hostname", 0o644, "debian\n")?;
    put(
        rootfs,
        "etc/hosts",
        0o644,
        "127.0.0.1 localhost\n127.0.1.1 debian\n::1 localhost ip6-localhost ip6-loopback\n",
    )?;
    put(rootfs, "etc/network/interfaces", 0o644, INTERFACES)?;
    put(rootfs, "etc/cloud/cloud.cfg.d/90-byoi.cfg", 0o644, CLOUD_CFG)?;
    put(rootfs, "usr/local/sbin/byoi-report", 0o755, REPORT_SCRIPT)?;
    put(rootfs, "etc/systemd/system/byoi-report.service", 0o644, REPORT_UNIT)?;
    let wants = rootfs.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    let link = wants.join("byoi-report.service");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/systemd/system/byoi-report.service", &link)?;
    put(rootfs, "etc/initramfs-tools/modules", 0o644, INITRAMFS_MODULES)?;
    run(Command::new("chroot").arg(rootfs).args(["passwd", "-l", "root"]))?;
    run(Command::new("chroot").arg(rootfs).args(["update-initramfs", "-u", "-k", "all"]))?;
    clean(rootfs)
}

/// Whether a file name in a directory is to be removed.
type IsJunk = fn(&str) -> bool;

/// Per-machine state and caches out of the image: machine-id, SSH host
/// keys (cloud-init makes new ones), apt lists and packages, logs.
fn clean(rootfs: &Path) -> anyhow::Result<()> {
    put(rootfs, "etc/machine-id", 0o444, "")?;
    let _ = std::fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
    let junk: &[(&str, IsJunk)] = &[
        ("etc/ssh", |f| f.starts_with("ssh_host_")),
        ("var/lib/apt/lists", |f| f != "lock" && f != "partial"),
        ("var/cache/apt", |f| f.ends_with(".bin")),
        ("var/cache/apt/archives", |f| f.ends_with(".deb")),
        ("var/log", |f| f.ends_with(".log")),
    ];
    for (dir, is_junk) in junk {
        let Ok(entries) = std::fs::read_dir(rootfs.join(dir)) else { continue };
        for entry in entries {
            let path = entry?.path();
            if path.is_file() && path.file_name().and_then(|n| n.to_str()).is_some_and(is_junk) {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// The one file matching `/boot/{prefix}*` in the tree.
fn boot_file(rootfs: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(rootfs.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!("{n} files /boot/{prefix}* in {}, expected one", rootfs.display()),
    }
}

/// The UKI: systemd's EFI stub with the tree's kernel and initrd, booting
/// the root partition by PARTUUID.
fn build_uki(rootfs: &Path, cache: &Path, uki: &Path) -> anyhow::Result<()> {
    let cmdline = format!("root=PARTUUID={ROOT_PARTUUID} ro console=ttyS0 systemd.show_status=1");
    let (vmlinuz, initrd) = (boot_file(rootfs, "vmlinuz-")?, boot_file(rootfs, "initrd.img-")?);
    unified_kernel_image(&efi_stub(cache)?, &vmlinuz, &initrd, &cmdline, uki)
}

/// The raw GPT disk: the ESP with the UKI, the ext4 root, free space at
/// the end.
fn build_disk(raw: &Path, uki: &Path, rootfs: &Path, work: &Path) -> anyhow::Result<()> {
    let root_start_mib = 1 + ESP_MIB;
    let root_mib = DISK_MIB - root_start_mib - FREE_TAIL_MIB;
    new_disk(raw, DISK_MIB)?;
    output(
        Command::new("sgdisk")
            .args(["-o", "-n", &format!("1:1M:+{ESP_MIB}M"), "-t", "1:ef00", "-c", "1:ESP"])
            .args(["-n", &format!("2:{root_start_mib}M:+{root_mib}M"), "-t", "2:8300", "-c", "2:root"])
            .args(["-u", &format!("2:{ROOT_PARTUUID}")])
            .arg(raw),
    )?;

    let esp = work.join("esp.fat");
    fat_image(&esp, ESP_MIB, "ESP", 2048, &[("EFI/BOOT/BOOTX64.EFI", uki)])?;
    splice(raw, 1 << 20, &esp)?;

    let ext4 = work.join("root.ext4");
    std::fs::File::create(&ext4)?.set_len(root_mib << 20)?;
    output(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "debian-root", "-U", ROOT_FS_UUID, "-d"])
            .arg(rootfs)
            .arg(&ext4),
    )?;
    splice(raw, root_start_mib << 20, &ext4)
}
