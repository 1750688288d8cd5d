//! The block-device path on a real loop device: exclusive open, size and
//! sector size ioctls, BLKZEROOUT, and the refusals of a disk in use. Needs root (CI is root);
//! without it the test says so and does nothing else.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use byoi_agent::progress::Progress;
use byoi_agent::sink::Target;
use byoi_agent::source::SourceOptions;
use byoi_agent::target::DiskTarget;
use byoi_agent::{deploy, DeployRequest};
use byoi_wire::ErrorCode;
use support::{disk_image, junk_target, run, sh, to_qcow2, Behaviour, Server};

/// A loop device over a file, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Loop {
        Loop::attach_with_sectors(file, 512)
    }

    fn attach_with_sectors(file: &Path, sector: u32) -> Loop {
        let out =
            Command::new("losetup").args(["-f", "--show", "-P", "-b", &sector.to_string()]).arg(file).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        Loop(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

#[test]
fn loop_device_deploy_and_refusals() {
    if !is_root() {
        eprintln!("blockdev: not root, the loop-device test cannot run here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = junk_target(dir.path(), 48 << 20);
    let dev = Loop::attach(&backing);

    // An MBR image with one partition from 1 MiB on, as qcow2.
    let image = disk_image(16 << 20, 21);
    let raw = dir.path().join("a.raw");
    let q = dir.path().join("a.qcow2");
    std::fs::write(&raw, &image).unwrap();
    to_qcow2(&raw, &q, &[]);
    let server = Server::start();
    let url = server.serve("/q", std::fs::read(&q).unwrap(), Behaviour { ranges: true, ..Default::default() });
    let req = DeployRequest { url, image_type: None, checksum: None, source: SourceOptions::default(), ova_disk: None };

    let target = DiskTarget::open(&dev.0, false).unwrap();
    assert_eq!(target.size(), 48 << 20);
    assert_eq!(target.logical_sector_size(), 512);
    let done = deploy(&req, &target, &Arc::new(Progress::default()), None).unwrap();
    assert!(done.writes.zeroed_bytes > 0, "no zeroing through BLKZEROOUT: {:?}", done.writes);
    drop(target);
    let written = std::fs::read(&backing).unwrap();
    assert!(written[..image.len()] == image[..], "the device does not hold the image");
    // Someone else holds the device exclusively.
    let holder = OpenOptions::new().read(true).custom_flags(nix::libc::O_EXCL).open(&dev.0).unwrap();
    let e = DiskTarget::open(&dev.0, false).unwrap_err();
    assert_eq!(e.code(), ErrorCode::TargetUnusable);
    assert!(e.to_string().contains("pass --force to proceed"), "{e}");
    drop(holder);

    // A mounted filesystem. (On the whole device: the kernels of these
    // machines have no partition-table parsers, so no loop0p1 appears.)
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&dev.0));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount").arg(&dev.0).arg(&mnt));
    let e = DiskTarget::open(&dev.0, false);
    let _ = Command::new("umount").arg(&mnt).status();
    let e = e.unwrap_err().to_string();
    assert!(e.contains("is mounted on") && e.contains("--force"), "{e}");
}

/// 4 KiB logical sectors: a GPT made for them is moved to the end of a
/// larger 4Kn disk (`sgdisk -v` clean) and gets a ConfigDrive with 4 KiB FAT
/// sectors; an image made for 512-byte sectors is refused before writing.
#[test]
fn four_kib_sectors() {
    if !is_root() {
        eprintln!("blockdev: not root, the 4 KiB sector test cannot run here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("4k.img");
    std::fs::write(&image, vec![0u8; 16 << 20]).unwrap();
    {
        let l = Loop::attach_with_sectors(&image, 4096);
        sh(Command::new("sgdisk").args(["-o", "-n", "1:0:+4M", "-t", "1:ef00", "-n", "2:0:0"]).arg(&l.0));
    }
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(&bytes[4096..4104], b"EFI PART", "sgdisk did not write a 4 KiB-sector GPT");

    let backing = junk_target(dir.path(), 128 << 20);
    let dev = Loop::attach_with_sectors(&backing, 4096);
    let url = format!("file://{}", image.display());
    let out = Command::new(env!("CARGO_BIN_EXE_byoi-agent"))
        .args(["deploy", "--url", &url, "--target"])
        .arg(&dev.0)
        .args(["--hostname", "fourk", "--firmware", "legacy"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verify = sh(Command::new("sgdisk").arg("-v").arg(&dev.0));
    assert!(verify.contains("No problems found"), "{verify}");
    let info = sh(Command::new("sgdisk").args(["-i", "3"]).arg(&dev.0));
    let first: u64 = info
        .lines()
        .find(|l| l.starts_with("First sector"))
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let disk = std::fs::read(&backing).unwrap();
    let part = dir.path().join("cd.img");
    std::fs::write(&part, &disk[(first * 4096) as usize..(first * 4096 + (64 << 20)) as usize]).unwrap();
    assert_eq!(u16::from_le_bytes([disk[(first * 4096) as usize + 11], disk[(first * 4096) as usize + 12]]), 4096);
    sh(Command::new("fsck.vfat").arg("-n").arg(&part));

    // A 512-byte-sector image on the 4Kn disk: refused, disk untouched.
    let small = dir.path().join("512.img");
    std::fs::write(&small, vec![0u8; 8 << 20]).unwrap();
    sh(Command::new("sgdisk").args(["-o", "-n", "1:0:0"]).arg(&small));
    std::fs::write(&backing, vec![0xa5u8; 128 << 20]).unwrap();
    let url = format!("file://{}", small.display());
    let out = Command::new(env!("CARGO_BIN_EXE_byoi-agent"))
        .args(["deploy", "--url", &url, "--target"])
        .arg(&dev.0)
        .args(["--firmware", "legacy"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("formatted for 512-byte sectors"), "{err}");
    assert!(std::fs::read(&backing).unwrap().iter().all(|&b| b == 0xa5), "refused image touched the disk");
}
