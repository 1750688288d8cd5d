//! `cargo xtask image tiny|debian`: the OS images deployed by the e2e
//! tests and the demo, built without loop devices or mounts.
//!
//! `tiny` is a test OS that boots in seconds under TCG: the agent's Debian
//! kernel with a small busybox initramfs whose `/init` finds the
//! ConfigDrive (`config-2` or `cidata`), prints its hostname, first SSH
//! key and a SHA-256 of the user data on the serial console, and powers
//! off. It comes as
//! - `tiny-uefi.raw`/`.qcow2`: GPT, one ESP holding a unified kernel image
//!   (systemd's EFI stub + kernel + initramfs + command line, joined with
//!   `objcopy`) at `\EFI\BOOT\BOOTX64.EFI`;
//! - `tiny-uefi.ova`: the same disk as a stream-optimized VMDK in an OVA,
//!   with its OVF descriptor and a SHA-256 manifest
//! - `tiny-bios.raw`: MBR, one active FAT partition booted by syslinux
//!   (`mbr.bin`, `syslinux --offset` through mtools).
//!
//! Images go to `target/byoi/images`.

use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use byoi_initramfs::cpio::{Archive, Entry};
use byoi_initramfs::kmod::ModulesDep;
use sha2::{Digest, Sha256};

use crate::deb::{self, fetch_deb, output, Kernel};
use crate::{root, run};

/// What the test OS needs to find its ConfigDrive and read EFI variables.
const TINY_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "ahci",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "isofs",
    "efivarfs",
];

const TINY_APPLETS: &[&str] = &[
    "sh",
    "mount",
    "insmod",
    "uname",
    "od",
    "tr",
    "findfs",
    "grep",
    "cut",
    "head",
    "sed",
    "sleep",
    "sha256sum",
    "poweroff",
    "cat",
    "ls",
    "dmesg",
];

/// The kernel command line of the test OS.
const TINY_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// The test OS's `/init`. Every line it prints starts with `testos:`; the
/// e2e tests and the demo wait for them.
const TINY_INIT: &str = r#"#!/bin/sh
# byoi test OS: report the ConfigDrive on the console, then power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/lib/modules/$(uname -r)/$m" 2>/dev/null; done < /etc/modules
if [ -d /sys/firmware/efi ]; then
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars
    # efivarfs: 4 bytes of attributes, then the UINT16.
    set -- $(od -An -tx1 /sys/firmware/efi/efivars/BootCurrent-8be4df61-93ca-11d2-aa0d-00e098032b8c | tr a-f A-F)
    echo "testos: booted uefi Boot$6$5"
else
    echo "testos: booted bios"
fi
dev=
i=0
while [ -z "$dev" ] && [ $i -lt 50 ]; do
    for label in config-2 CONFIG-2 cidata CIDATA; do
        [ -n "$dev" ] || dev=$(findfs "LABEL=$label" 2>/dev/null)
    done
    [ -n "$dev" ] || { sleep 0.2; i=$((i + 1)); }
done
if [ -z "$dev" ]; then
    echo "testos: no configdrive"
else
    mount -o ro "$dev" /mnt
    if [ -d /mnt/openstack ]; then
        kind=config-2 meta=/mnt/openstack/latest/meta_data.json ud=/mnt/openstack/latest/user_data
    else
        kind=cidata meta=/mnt/meta-data ud=/mnt/user-data
    fi
    echo "testos: configdrive $kind on $dev"
    echo "testos: hostname=$(sed -n 's/^ *"\(local-\)\{0,1\}hostname": *"\([^"]*\)".*/\2/p' "$meta" | head -n1)"
    echo "testos: ssh-key=$(sed -n 's/.*"\(ssh-[^"]*\)".*/\1/p' "$meta" | head -n1)"
    if [ -s "$ud" ]; then
        echo "testos: user-data-sha256=$(sha256sum < "$ud" | cut -d' ' -f1)"
    else
        echo "testos: user-data-sha256=none"
    fi
fi
echo "testos: powering off"
poweroff -f
"#;

const SYSLINUX_CFG: &str = "SERIAL 0 115200
DEFAULT testos
PROMPT 0
TIMEOUT 0
LABEL testos
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0 panic=-1 quiet
";

/// Where the images go.
pub fn images_dir() -> PathBuf {
    root().join("target/byoi/images")
}

/// `cargo xtask image` options.
#[derive(Debug, clap::Args)]
pub struct Options {
    #[arg(value_enum, default_value_t = Image::Tiny)]
    pub image: Image,
}

/// The images `cargo xtask image` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Image {
    /// The test OS: UEFI/GPT with a UKI (raw, qcow2, OVA), BIOS/MBR with syslinux
    Tiny,
    /// Debian 12 with cloud-init (debootstrap, UKI, qcow2; cached)
    Debian,
}

pub fn run_task(opts: &Options) -> anyhow::Result<()> {
    match opts.image {
        Image::Tiny => tiny().map(|_| ()),
        Image::Debian => crate::image_debian::debian().map(|_| ()),
    }
}

/// The tiny test OS images.
#[derive(Debug)]
pub struct Tiny {
    pub uefi_raw: PathBuf,
    pub uefi_qcow2: PathBuf,
    pub uefi_ova: PathBuf,
    pub bios_raw: PathBuf,
}

/// Builds the tiny test OS images (a few seconds; always rebuilt).
pub fn tiny() -> anyhow::Result<Tiny> {
    let out = images_dir();
    let work = out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let cache = root().join("target/byoi/cache");
    std::fs::create_dir_all(&cache)?;
    let kernel = deb::kernel("generic", &cache)?;
    let initrd = work.join("initrd.img");
    std::fs::write(&initrd, tiny_initramfs(&kernel, &cache)?)?;

    // UEFI: a unified kernel image on the ESP of a GPT disk.
    let uki = work.join("BOOTX64.EFI");
    unified_kernel_image(&efi_stub(&cache)?, &kernel.vmlinuz, &initrd, TINY_CMDLINE, &uki)?;
    let uefi_raw = out.join("tiny-uefi.raw");
    gpt_esp_disk(&uefi_raw, 40, 32, &[("EFI/BOOT/BOOTX64.EFI", &uki)], &work)?;
    let uefi_qcow2 = out.join("tiny-uefi.qcow2");
    let _ = std::fs::remove_file(&uefi_qcow2);
    run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&uefi_raw).arg(&uefi_qcow2))?;
    let uefi_ova = out.join("tiny-uefi.ova");
    ova(&uefi_raw, &uefi_ova, &work)?;

    // BIOS: syslinux on the active FAT partition of an MBR disk.
    let (sl_dir, _) = fetch_deb("syslinux", &cache)?;
    let (slc_dir, _) = fetch_deb("syslinux-common", &cache)?;
    let cfg = work.join("syslinux.cfg");
    std::fs::write(&cfg, SYSLINUX_CFG)?;
    let bios_raw = out.join("tiny-bios.raw");
    mbr_syslinux_disk(
        &bios_raw,
        40,
        &[
            ("vmlinuz", &kernel.vmlinuz),
            ("initrd.img", &initrd),
            ("syslinux.cfg", &cfg),
            ("ldlinux.c32", &slc_dir.join("usr/lib/syslinux/modules/bios/ldlinux.c32")),
        ],
        &sl_dir.join("usr/bin/syslinux"),
        &slc_dir.join("usr/lib/syslinux/mbr/mbr.bin"),
        &work,
    )?;
    std::fs::remove_dir_all(&work)?;
    let tiny = Tiny { uefi_raw, uefi_qcow2, uefi_ova, bios_raw };
    for p in [&tiny.uefi_raw, &tiny.uefi_qcow2, &tiny.uefi_ova, &tiny.bios_raw] {
        println!("image: {} ({:.1} MB)", p.display(), std::fs::metadata(p)?.len() as f64 / 1e6);
    }
    Ok(tiny)
}

/// An OVF 1.0 descriptor for one disk: the file's name and size, the
/// disk's capacity in bytes.
const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References>
    <File ovf:id="file1" ovf:href="{file}" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="{capacity}" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="byoi-tiny">
    <Info>The byoi test OS</Info>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <Item><rasd:ElementName>disk0</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

/// Packs the raw disk `raw` as an OVA at `out`: a stream-optimized VMDK
/// made by `qemu-img`, with its descriptor and manifest ([`ova_archive`]).
fn ova(raw: &Path, out: &Path, work: &Path) -> anyhow::Result<()> {
    let vmdk = work.join("disk1.vmdk");
    let _ = std::fs::remove_file(&vmdk);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized"])
        .arg(raw)
        .arg(&vmdk))?;
    ova_archive(&vmdk, std::fs::metadata(raw)?.len(), out, true)?;
    Ok(())
}

/// An OVA's text members, as [`ova_archive`] wrote them.
#[derive(Debug)]
pub struct OvaText {
    /// The OVF descriptor (`vm.ovf`).
    pub descriptor: String,
    /// The SHA-256 manifest (`vm.mf`).
    pub manifest: String,
}

/// Archives the VMDK file `vmdk`, the disk of `capacity` bytes, as an OVA
/// at `out` (ustar, reproducible): `vm.ovf` naming it `disk1.vmdk`, then
/// the manifest `vm.mf` (SHA-256 of both) and the disk — or, with
/// `manifest_first` false, the disk before the manifest.
pub fn ova_archive(vmdk: &Path, capacity: u64, out: &Path, manifest_first: bool) -> anyhow::Result<OvaText> {
    let data = std::fs::read(vmdk).with_context(|| format!("reading {}", vmdk.display()))?;
    let descriptor = OVF
        .replace("{file}", "disk1.vmdk")
        .replace("{size}", &data.len().to_string())
        .replace("{capacity}", &capacity.to_string());
    let sha256 = |b: &[u8]| -> String { Sha256::digest(b).iter().map(|b| format!("{b:02x}")).collect() };
    let manifest =
        format!("SHA256(vm.ovf)= {}\nSHA256(disk1.vmdk)= {}\n", sha256(descriptor.as_bytes()), sha256(&data));
    let stage = out.with_extension("stage");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    std::fs::write(stage.join("vm.ovf"), &descriptor)?;
    std::fs::write(stage.join("vm.mf"), &manifest)?;
    std::fs::write(stage.join("disk1.vmdk"), &data)?;
    let order = if manifest_first { ["vm.ovf", "vm.mf", "disk1.vmdk"] } else { ["vm.ovf", "disk1.vmdk", "vm.mf"] };
    let _ = std::fs::remove_file(out);
    run(Command::new("tar")
        .args(["--format=ustar", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(&stage)
        .args(order))?;
    std::fs::remove_dir_all(&stage)?;
    Ok(OvaText { descriptor, manifest })
}

/// The test OS's initramfs: `/init`, busybox, the modules of
/// [`TINY_MODULES`] and their dependencies, listed in load order in
/// `/etc/modules`.
fn tiny_initramfs(kernel: &Kernel, cache: &Path) -> anyhow::Result<Vec<u8>> {
    let deps = ModulesDep::parse(&std::fs::read_to_string(kernel.moddir.join("modules.dep"))?);
    // Modules built into this kernel are simply absent from modules.dep.
    let (paths, _builtin) = deps.closure(TINY_MODULES.iter().copied());
    let mut a = Archive::new();
    a.file("init", 0o755, TINY_INIT.as_bytes().to_vec());
    for d in ["proc", "sys", "dev", "mnt", "etc"] {
        a.dir(d);
    }
    a.add("dev/console", Entry::CharDevice { perm: 0o600, major: 5, minor: 1 });
    let (bb, _) = fetch_deb("busybox-static", cache)?;
    a.file("bin/busybox", 0o755, std::fs::read(bb.join("bin/busybox"))?);
    for applet in TINY_APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox");
    }
    for p in &paths {
        a.file(&format!("lib/modules/{}/{p}", kernel.version), 0o644, std::fs::read(kernel.moddir.join(p))?);
    }
    a.file("etc/modules", 0o644, paths.iter().map(|p| format!("{p}\n")).collect::<String>().into_bytes());
    let mut cpio = Vec::new();
    a.write(&mut cpio)?;
    Ok(zstd::bulk::compress(&cpio, 19)?)
}

/// systemd's EFI stub for x86-64 (package `systemd-boot-efi`, unpacked in
/// `cache`, not installed).
pub fn efi_stub(cache: &Path) -> anyhow::Result<PathBuf> {
    let (dir, _) = fetch_deb("systemd-boot-efi", cache)?;
    Ok(dir.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub"))
}

/// Joins systemd's EFI stub, a kernel, an initramfs and a command line
/// into one PE image: each part becomes a section placed after the stub's
/// own, page-aligned (the layout `ukify` produces).
pub fn unified_kernel_image(
    stub: &Path,
    vmlinuz: &Path,
    initrd: &Path,
    cmdline: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let dir = out.parent().context("output has no parent")?;
    let osrel = dir.join("uki-os-release");
    std::fs::write(&osrel, "ID=byoi-testos\nNAME=\"byoi test OS\"\n")?;
    let cmd = dir.join("uki-cmdline");
    std::fs::write(&cmd, format!("{cmdline}\0"))?;
    // The stub's end: the highest VMA + size in `objdump -h`.
    let table = output(Command::new("objdump").arg("-h").arg(stub))?;
    let end = table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |s: &str| u64::from_str_radix(s, 16).ok();
            (f.len() == 7 && f[1].starts_with('.')).then(|| Some(hex(f[3])? + hex(f[2])?)).flatten()
        })
        .max()
        .context("no sections in the EFI stub")?;
    let align = |v: u64| (v + 0xfff) & !0xfff;
    let mut at = align(end);
    let mut c = Command::new("objcopy");
    for (section, file) in
        [(".osrel", &osrel), (".cmdline", &cmd), (".linux", &vmlinuz.to_owned()), (".initrd", &initrd.to_owned())]
    {
        c.arg("--add-section").arg(format!("{section}={}", file.display()));
        c.arg("--change-section-vma").arg(format!("{section}=0x{at:x}"));
        at = align(at + std::fs::metadata(file)?.len());
    }
    run(c.arg(stub).arg(out))
}

/// A FAT filesystem image of `size_mib`, with `files` copied in
/// (`dest` paths are relative to its root; directories are created).
pub fn fat_image(
    path: &Path,
    size_mib: u64,
    label: &str,
    hidden_sectors: u64,
    files: &[(&str, &Path)],
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    output(
        Command::new("mkfs.vfat")
            .args(["-C", "-n", label, "-h", &hidden_sectors.to_string()])
            .arg(path)
            .arg((size_mib * 1024).to_string()),
    )?;
    let image = path.display().to_string();
    let mut made = std::collections::BTreeSet::new();
    for (dest, src) in files {
        let mut dir = String::new();
        for part in dest.split('/').collect::<Vec<_>>().split_last().map(|(_, d)| d.to_vec()).unwrap_or_default() {
            dir = format!("{dir}/{part}");
            if made.insert(dir.clone()) {
                run(Command::new("mmd").args(["-i", &image, &format!("::{dir}")]))?;
            }
        }
        run(Command::new("mcopy").args(["-i", &image]).arg(src).arg(format!("::/{dest}")))?;
    }
    Ok(())
}

/// Copies the file `part` into `disk` at byte `offset`, streaming.
pub fn splice(disk: &Path, offset: u64, part: &Path) -> anyhow::Result<()> {
    let mut out = std::fs::OpenOptions::new().write(true).open(disk)?;
    out.seek(SeekFrom::Start(offset))?;
    let mut src = std::fs::File::open(part)?;
    std::io::copy(&mut src, &mut out).with_context(|| format!("writing {} into {}", part.display(), disk.display()))?;
    Ok(())
}

pub fn new_disk(path: &Path, size_mib: u64) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)?.set_len(size_mib << 20)?;
    Ok(())
}

/// A GPT disk of `disk_mib` with one EFI system partition of `esp_mib`
/// at 1 MiB holding `files`; the rest is free for the ConfigDrive.
fn gpt_esp_disk(path: &Path, disk_mib: u64, esp_mib: u64, files: &[(&str, &Path)], work: &Path) -> anyhow::Result<()> {
    new_disk(path, disk_mib)?;
    output(
        Command::new("sgdisk")
            .args(["-o", "-n", &format!("1:2048:+{esp_mib}M"), "-t", "1:ef00", "-c", "1:ESP"])
            .arg(path),
    )?;
    let esp = work.join("esp.fat");
    fat_image(&esp, esp_mib, "ESP", 2048, files)?;
    splice(path, 1 << 20, &esp)
}

/// An MBR disk of `disk_mib` whose one active FAT partition (1 MiB to
/// three quarters of the disk) boots syslinux with `files`.
fn mbr_syslinux_disk(
    path: &Path,
    disk_mib: u64,
    files: &[(&str, &Path)],
    syslinux: &Path,
    mbr_bin: &Path,
    work: &Path,
) -> anyhow::Result<()> {
    new_disk(path, disk_mib)?;
    let part_mib = disk_mib * 3 / 4;
    let mut sfdisk = Command::new("sfdisk")
        .arg("--quiet")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("sfdisk (fdisk package)")?;
    std::io::Write::write_all(
        sfdisk.stdin.as_mut().context("sfdisk stdin")?,
        format!("label: dos\nstart=2048, size={}, type=e, bootable\n", part_mib << 11).as_bytes(),
    )?;
    if !sfdisk.wait()?.success() {
        bail!("sfdisk failed on {}", path.display());
    }
    // The boot sector finds ldlinux.sys through the hidden-sector count:
    // the partition's first LBA.
    let fat = work.join("boot.fat");
    fat_image(&fat, part_mib, "TESTOS", 2048, files)?;
    splice(path, 1 << 20, &fat)?;
    run(Command::new(syslinux).args(["--install", "--offset", &(1u64 << 20).to_string()]).arg(path))?;
    let mbr = std::fs::read(mbr_bin)?;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&mbr[..mbr.len().min(440)], 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ova_archive_orders_and_hashes_its_members() {
        let dir = std::env::temp_dir().join(format!("byoi-xtask-ova-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vmdk = dir.join("d.vmdk");
        std::fs::write(&vmdk, b"KDMV").unwrap();
        for (first, order) in [(true, "vm.ovf\nvm.mf\ndisk1.vmdk\n"), (false, "vm.ovf\ndisk1.vmdk\nvm.mf\n")] {
            let out = dir.join("vm.ova");
            let text = ova_archive(&vmdk, 1 << 20, &out, first).unwrap();
            let listing = Command::new("tar").arg("tf").arg(&out).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&listing.stdout), order);
            assert!(text.descriptor.contains(r#"ovf:href="disk1.vmdk" ovf:size="4""#), "{}", text.descriptor);
            assert!(text.descriptor.contains(r#"ovf:capacity="1048576""#));
            // sha256("KDMV")
            let want = "SHA256(disk1.vmdk)= 0a3192b98521517e83e64e03375b8d2f8bdbc70b1011520dd4c37509623aef6f\n";
            assert!(
                text.manifest.starts_with("SHA256(vm.ovf)= ") && text.manifest.ends_with(want),
                "{}",
                text.manifest
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
