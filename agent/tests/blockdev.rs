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
use support::{disk_image, junk_target, run, to_qcow2, Behaviour, Server};

/// A loop device over a file, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup").args(["-f", "--show", "-P"]).arg(file).output().unwrap();
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
    let req = DeployRequest { url, image_type: None, checksum: None, source: SourceOptions::default() };

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
