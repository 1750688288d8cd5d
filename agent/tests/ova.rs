//! OVA archives as real tools make them: disks from `qemu-img convert -O
//! vmdk` (stream-optimized, monolithic sparse, flat, split sparse), archived
//! with GNU `tar` next to a hand-written OVF descriptor and manifest, served
//! over HTTP, deployed to a junk-filled file and compared byte for byte with
//! `qemu-img convert -O raw`. Then the same archives broken in every layer:
//! tar, OVF, manifest, VMDK.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use byoi_agent::format::ImageType;
use byoi_agent::progress::Progress;
use byoi_agent::target::DiskTarget;
use byoi_agent::{deploy, DeployError, DeployRequest, Deployed};
use byoi_wire::ErrorCode;
use support::ova::{ovf, tar, Disk, Mf};
use support::{assert_prefix_eq, disk_image, ends_wiped, junk_target, qemu_raw, quick_retries, run, Behaviour, Server};

const IMAGE: usize = 24 << 20;
const DISK: usize = 40 << 20;
const STREAM: &str = "subformat=streamOptimized";

/// A scratch directory with a raw disk image in it.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new(seed: u64) -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("src.raw"), disk_image(IMAGE, seed)).unwrap();
        Work { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `qemu-img convert -O vmdk -o OPTS src.raw NAME`.
    fn vmdk(&self, name: &str, opts: &str) -> PathBuf {
        let out = self.path(name);
        run(Command::new("qemu-img")
            .current_dir(self.dir.path())
            .args(["convert", "-f", "raw", "-O", "vmdk", "-o", opts, "src.raw", name]));
        out
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

/// A single-disk OVA around the VMDK `disk` (file `disk1.vmdk`).
fn single(w: &Work, disk: &Path, mf: Mf) -> Vec<u8> {
    let data = std::fs::read(disk).unwrap();
    let d = [Disk { id: "vmdisk1", file: "disk1.vmdk", capacity: IMAGE as u64 }];
    let descriptor = ovf(&d, &[("disk1.vmdk", data.len() as u64)]);
    tar(w.dir.path(), &[("vm.ovf", descriptor.into_bytes()), ("disk1.vmdk", data)], mf, "ustar")
}

fn deploy_bytes(w: &Work, ova: Vec<u8>, ova_disk: Option<&str>) -> (PathBuf, byoi_agent::Result<Deployed>) {
    let server = Server::start();
    let url = server.serve("/vm.ova", ova, Behaviour::default());
    let target = junk_target(w.dir.path(), DISK);
    let t = DiskTarget::open(&target, false).unwrap();
    let req = DeployRequest {
        url,
        image_type: Some(ImageType::Ova),
        checksum: None,
        source: quick_retries(),
        ova_disk: ova_disk.map(str::to_owned),
    };
    let result = deploy(&req, &t, &Arc::new(Progress::default()), None);
    (target, result)
}

/// Deploys `ova` and compares the target with `qemu-img`'s reading of
/// `oracle`.
fn check(w: &Work, ova: Vec<u8>, ova_disk: Option<&str>, oracle: &Path) -> Deployed {
    let (target, result) = deploy_bytes(w, ova, ova_disk);
    let done = result.unwrap_or_else(|e| panic!("{}: {e}", oracle.display()));
    let want = qemu_raw(oracle, w.dir.path());
    assert_eq!(done.image_size, want.len() as u64);
    assert_prefix_eq(&target, &want, &oracle.display().to_string());
    done
}

fn refused(w: &Work, ova: Vec<u8>, ova_disk: Option<&str>) -> DeployError {
    let (target, result) = deploy_bytes(w, ova, ova_disk);
    let e = result.expect_err("the deployment should fail");
    let got = std::fs::read(&target).unwrap();
    let untouched = got.iter().all(|&b| b == 0xa5);
    assert!(untouched || ends_wiped(&target), "a failed deployment left a bootable disk: {e}");
    e
}

#[test]
fn stream_optimized_with_manifest_first_last_or_none() {
    let w = Work::new(21);
    let disk = w.vmdk("disk1.vmdk", STREAM);
    for mf in [
        Mf::AfterOvf("SHA256"),
        Mf::AtEnd("SHA1"),
        Mf::AtEnd("SHA256"),
        Mf::AfterOvf("SHA512"),
        Mf::VirtualBox,
        Mf::None,
    ] {
        let d = check(&w, single(&w, &disk, mf), None, &disk);
        assert_eq!(d.format, "ova, streamOptimized vmdk");
        let verified = d.ova.unwrap().verified;
        let want: &[&str] = if mf == Mf::None { &[] } else { &["disk1.vmdk", "vm.ovf"] };
        assert_eq!(verified, want);
        assert!(d.writes.zeroed_bytes > 0, "zero grains were written as data");
    }
}

#[test]
fn monolithic_sparse_flat_and_split_disks() {
    let w = Work::new(22);
    let sparse = w.vmdk("disk1.vmdk", "subformat=monolithicSparse");
    let d = check(&w, single(&w, &sparse, Mf::AfterOvf("SHA256")), None, &sparse);
    assert_eq!(d.format, "ova, monolithicSparse vmdk");

    // A descriptor and its extent files, which must follow it.
    for (opts, extents) in [
        ("subformat=monolithicFlat", &["disk1-flat.vmdk"][..]),
        ("subformat=twoGbMaxExtentSparse", &["disk1-s001.vmdk"]),
    ] {
        let descriptor = w.vmdk("disk1.vmdk", opts);
        let d = [Disk { id: "vmdisk1", file: "disk1.vmdk", capacity: IMAGE as u64 }];
        let mut members = vec![("vm.ovf", ovf(&d, &[]).into_bytes()), ("disk1.vmdk", w.read("disk1.vmdk"))];
        for e in extents {
            members.push((e, w.read(e)));
        }
        let ova = tar(w.dir.path(), &members, Mf::AtEnd("SHA256"), "ustar");
        let done = check(&w, ova, None, &descriptor);
        assert_eq!(done.ova.unwrap().verified.len(), 2 + extents.len());

        // Extents before their descriptor cannot be streamed.
        let swapped = vec![members[0].clone(), members[2].clone(), members[1].clone()];
        let e = refused(&w, tar(w.dir.path(), &swapped, Mf::None, "ustar"), None).to_string();
        assert!(e.contains("which the disk's descriptor names") || e.contains("disk order"), "{e}");
    }
}

#[test]
fn pax_and_gnu_archives_and_a_gzip_wrapper() {
    let w = Work::new(23);
    let disk = w.vmdk("disk1.vmdk", STREAM);
    let long = format!("{}.vmdk", "a-very-long-disk-file-name-".repeat(6));
    let d = [Disk { id: "vmdisk1", file: &long, capacity: IMAGE as u64 }];
    let members = [("vm.ovf", ovf(&d, &[]).into_bytes()), (long.as_str(), std::fs::read(&disk).unwrap())];
    for format in ["pax", "gnu"] {
        let ova = tar(w.dir.path(), &members, Mf::AfterOvf("SHA256"), format);
        let done = check(&w, ova, None, &disk);
        assert_eq!(done.ova.unwrap().verified, [long.as_str(), "vm.ovf"], "{format}");
    }
    let ova = single(&w, &disk, Mf::AtEnd("SHA256"));
    let gz = Command::new("gzip").args(["-c", "-1"]).arg(w.dir.path().join("vm.ova")).output().unwrap().stdout;
    assert!(!gz.is_empty() && ova.len() > gz.len());
    let done = check(&w, gz, None, &disk);
    assert_eq!(done.format, "ova, streamOptimized vmdk (gzip)");
}

#[test]
fn multi_disk_ova_needs_a_choice() {
    let w = Work::new(24);
    let one = w.vmdk("one.vmdk", STREAM);
    std::fs::write(w.path("src.raw"), disk_image(IMAGE / 2, 99)).unwrap();
    let two = w.vmdk("two.vmdk", STREAM);
    let disks = [
        Disk { id: "vmdisk1", file: "one.vmdk", capacity: IMAGE as u64 },
        Disk { id: "data", file: "two.vmdk", capacity: IMAGE as u64 / 2 },
    ];
    let members =
        [("vm.ovf", ovf(&disks, &[]).into_bytes()), ("one.vmdk", w.read("one.vmdk")), ("two.vmdk", w.read("two.vmdk"))];
    let ova = tar(w.dir.path(), &members, Mf::AfterOvf("SHA256"), "ustar");

    let e = refused(&w, ova.clone(), None);
    assert_eq!(
        e.to_string(),
        "the OVA holds 2 disks: 1 vmdisk1 (one.vmdk, 24.0 MiB), 2 data (two.vmdk, 12.0 MiB); \
         choose one with --ova-disk N (ovaDisk in the API)"
    );
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    let e = refused(&w, ova.clone(), Some("3")).to_string();
    assert!(e.starts_with("--ova-disk \"3\" names no disk of the OVA, which holds: 1 vmdisk1"), "{e}");

    check(&w, ova.clone(), Some("2"), &two);
    check(&w, ova.clone(), Some("data"), &two);
    let d = check(&w, ova, Some("one.vmdk"), &one);
    assert_eq!(d.ova.unwrap().verified, ["one.vmdk", "two.vmdk", "vm.ovf"]);
}

/// Flips the byte at `at`.
fn flip(mut data: Vec<u8>, at: usize) -> Vec<u8> {
    data[at] ^= 0x40;
    data
}

/// Offset of member `name`'s data in a ustar archive.
fn member_offset(ova: &[u8], name: &str) -> usize {
    let mut at = 0;
    while at + 512 <= ova.len() {
        let header = &ova[at..at + 512];
        let size =
            usize::from_str_radix(std::str::from_utf8(&header[124..135]).unwrap().trim_matches('\0'), 8).unwrap();
        if header.starts_with(name.as_bytes()) && header[name.len()] == 0 {
            return at + 512;
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    panic!("no member {name}");
}

/// Where `qemu-img` puts the redundant grain directory, which decoding
/// does not read: a byte flipped there only the manifest notices.
const REDUNDANT_GD: usize = 21 * 512 + 1;

#[test]
fn corrupt_archives_fail_clearly_and_leave_nothing_bootable() {
    let w = Work::new(25);
    let disk = w.vmdk("disk1.vmdk", STREAM);
    let good = single(&w, &disk, Mf::AfterOvf("SHA256"));
    let late = single(&w, &disk, Mf::AtEnd("SHA1"));
    let vmdk_at = member_offset(&good, "disk1.vmdk");
    let d = [Disk { id: "vmdisk1", file: "disk1.vmdk", capacity: IMAGE as u64 }];
    let disk_bytes = w.read("disk1.vmdk");
    let with = |ovf_text: String| {
        tar(w.dir.path(), &[("vm.ovf", ovf_text.into_bytes()), ("disk1.vmdk", disk_bytes.clone())], Mf::None, "ustar")
    };

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "tar header checksum",
            flip(good.clone(), 20),
            "corrupt ova image: the tar header at byte 0 has a bad checksum",
        ),
        ("cut archive", good[..vmdk_at + 100_000].to_vec(), "corrupt "),
        ("cut inside the OVF", good[..700].to_vec(), "corrupt ova image: the archive ends inside a member"),
        (
            "disk first",
            tar(
                w.dir.path(),
                &[("disk1.vmdk", disk_bytes.clone()), ("vm.ovf", ovf(&d, &[]).into_bytes())],
                Mf::None,
                "ustar",
            ),
            "corrupt ova image: the archive starts with disk1.vmdk; an OVA starts with its .ovf descriptor",
        ),
        (
            "OVF not XML",
            with("<Envelope><References>".into()),
            "corrupt ova image: the OVF descriptor is not valid XML",
        ),
        ("OVF without disk", with(ovf(&[], &[])), "corrupt ova image: the OVF descriptor names no disk with a file"),
        ("OVF size wrong", with(ovf(&d, &[("disk1.vmdk", 12345)])), "corrupt ova image: disk1.vmdk has "),
        (
            "disk missing",
            with(ovf(&[Disk { id: "x", file: "other.vmdk", capacity: IMAGE as u64 }], &[])),
            "corrupt ova image: the archive ends without other.vmdk, the disk the OVF descriptor names",
        ),
        (
            "disk larger than the target",
            with(ovf(&[Disk { id: "x", file: "disk1.vmdk", capacity: 1 << 40 }], &[])),
            "image provided has a size of 1099511627776 bytes which is larger than",
        ),
        ("VMDK header", flip(good.clone(), vmdk_at + 1), "unsupported ova image: the disk disk1.vmdk is unknown data"),
        ("VMDK grain data", flip(good.clone(), vmdk_at + 65536 + 4000), "corrupt vmdk image: the grain at sector 128"),
        (
            "VMDK grain LBA",
            flip(good.clone(), vmdk_at + 65536 + 2),
            "corrupt vmdk image: the grain at sector 128 is for LBA",
        ),
        (
            "manifest digest, manifest first",
            flip(good.clone(), vmdk_at + REDUNDANT_GD),
            "disk1.vmdk does not match the OVA's manifest: its sha256 is",
        ),
        (
            "manifest digest, manifest last",
            flip(late.clone(), member_offset(&late, "disk1.vmdk") + REDUNDANT_GD),
            "disk1.vmdk does not match the OVA's manifest: its sha1 is",
        ),
    ];
    for (what, ova, want) in cases {
        let e = refused(&w, ova, None);
        assert!(e.to_string().starts_with(want), "{what}: {e}");
    }
    // The OVF's bytes changed: the manifest or the parser notices.
    let e = refused(&w, flip(good.clone(), member_offset(&good, "vm.ovf") + 10), None);
    assert!(matches!(e, DeployError::Corrupt { .. } | DeployError::ManifestMismatch { .. }), "{e}");

    // The manifest comes late and uses SHA-512: not computed in time.
    let late512 = single(&w, &disk, Mf::AtEnd("SHA512"));
    let e = refused(&w, late512, None).to_string();
    assert!(e.contains("the manifest comes after disk1.vmdk and uses SHA512"), "{e}");

    // A manifest that leaves the disk out: refused before the disk is
    // written, not accepted unverified.
    let e = refused(&w, single(&w, &disk, Mf::OvfOnly), None).to_string();
    assert!(
        e.starts_with("corrupt ova image: the manifest does not list disk1.vmdk, which would go unverified"),
        "{e}"
    );

    // A raw image declared as an OVA.
    let (_, r) = deploy_bytes(&w, w.read("src.raw"), None);
    let e = r.unwrap_err();
    assert_eq!(e.to_string(), "image provided format is raw which does not match expected ova format");
}

/// A reader that fails for good at byte `at`, like a download whose
/// retries ran out.
struct FailsAt {
    data: Vec<u8>,
    pos: usize,
    at: usize,
}

impl std::io::Read for FailsAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.at {
            return Err(std::io::Error::other("connection reset for good"));
        }
        let n = buf.len().min(self.at - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A read error exactly where a tar header starts — at a 256 KiB
/// boundary, where the reader asks for a fresh chunk — is the error, not
/// the end of the archive.
#[test]
fn a_failed_read_at_a_header_is_not_the_end_of_the_archive() {
    let w = Work::new(26);
    let disk = w.vmdk("disk1.vmdk", STREAM);
    let d = [Disk { id: "vmdisk1", file: "disk1.vmdk", capacity: IMAGE as u64 }];
    // A descriptor padded so that the disk's header starts at 256 KiB.
    let mut descriptor = ovf(&d, &[]);
    let pad = (256 << 10) - 512 - descriptor.len() - "<!--  -->\n".len();
    descriptor += &format!("<!-- {} -->\n", "x".repeat(pad));
    assert_eq!(descriptor.len(), (256 << 10) - 512);
    let ova = tar(
        w.dir.path(),
        &[("vm.ovf", descriptor.into_bytes()), ("disk1.vmdk", std::fs::read(&disk).unwrap())],
        Mf::None,
        "ustar",
    );
    let reader = FailsAt { data: ova, pos: 0, at: 256 << 10 };
    let o = byoi_agent::ova::Ova::open(Box::new(reader), None).unwrap();
    let e = o.decode(&mut Vec::new(), None).unwrap_err().to_string();
    assert!(e.contains("connection reset for good"), "{e}");
}
