//! Images that once broke the decoder, kept as fixtures (zstd compressed):
//! each found by review, each now decoded like `qemu-img` does or refused.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use byoi_agent::progress::Progress;
use byoi_agent::source::SourceOptions;
use byoi_agent::target::DiskTarget;
use byoi_agent::{deploy, DeployError, DeployRequest};

/// Unpacks `tests/fixtures/NAME.zst` into `dir`.
fn fixture(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.zst"));
    let data = zstd::stream::decode_all(std::fs::File::open(src).unwrap()).unwrap();
    let out = dir.join(name);
    std::fs::write(&out, data).unwrap();
    out
}

/// Deploys an image onto a sparse file of its virtual size, streamed from
/// an HTTP server without Range support (the forward-only decoder).
fn deploy_local(image: &Path, dir: &Path, virtual_size: u64) -> (PathBuf, Result<byoi_agent::Deployed, DeployError>) {
    let target = dir.join("target.raw");
    std::fs::File::create(&target).unwrap().set_len(virtual_size).unwrap();
    let t = DiskTarget::open(&target, false).unwrap();
    let server = support::Server::start();
    let url = server.serve("/img", std::fs::read(image).unwrap(), support::Behaviour::default());
    let req = DeployRequest { url, image_type: None, checksum: None, source: SourceOptions::default(), ova_disk: None };
    let r = deploy(&req, &t, &Arc::new(Progress::default()), None);
    (target, r)
}

fn same_as_qemu(target: &Path, image: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
        .arg(target)
        .arg(image)
        .status()
        .unwrap()
        .success()
}

/// A valid 160 GiB image (compressed 4 KiB clusters, resized, written
/// again) whose L1 table spans two stream blocks and maps, through an L2
/// table already gone by, a compressed cluster spanning the next block:
/// its bytes were once appended twice and the disk silently differed.
#[test]
fn compressed_cluster_behind_a_spanning_l1_is_decoded_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture(dir.path(), "repro1-silent.qcow2");
    let (target, r) = deploy_local(&img, dir.path(), 160 << 30);
    r.unwrap();
    assert!(same_as_qemu(&target, &img), "the deployed disk differs from qemu-img's reading");
}

/// A zstd cluster stored as two frames: QEMU reads it, so do we.
#[test]
fn zstd_cluster_of_two_frames() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture(dir.path(), "z1.qcow2");
    let (target, r) = deploy_local(&img, dir.path(), 1 << 20);
    r.unwrap();
    assert!(same_as_qemu(&target, &img));
}

/// A zstd frame inflating past its cluster: QEMU refuses it, so do we.
#[test]
fn zstd_frame_longer_than_its_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture(dir.path(), "z2.qcow2");
    let (_, r) = deploy_local(&img, dir.path(), 1 << 20);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("goes on past the end of the cluster"), "{e}");
}

/// 8192 compressed entries pointing at one spot across a block boundary
/// once made the decoder copy 1 GiB; now bounded and refused.
#[test]
fn overlapping_compressed_clusters_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture(dir.path(), "p1.qcow2");
    let (_, r) = deploy_local(&img, dir.path(), 512 << 20);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("too many compressed clusters overlap"), "{e}");
}
