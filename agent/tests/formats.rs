//! Every image variant the pipeline accepts, made by the real tools
//! (`qemu-img`, `qemu-io`, `gzip`, `xz`, `zstd`), served over HTTP, deployed
//! to a junk-filled file and compared byte for byte with
//! `qemu-img convert -O raw`.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use byoi_agent::progress::Progress;
use byoi_agent::target::DiskTarget;
use byoi_agent::{deploy, DeployRequest, Deployed};
use support::{assert_prefix_eq, disk_image, junk_target, qemu_raw, quick_retries, run, to_qcow2, Behaviour, Server};

const IMAGE: usize = 24 << 20;
const DISK: usize = 40 << 20;

fn deploy_file(url: &str, target: &Path) -> byoi_agent::Result<Deployed> {
    let t = DiskTarget::open(target, false).unwrap();
    let req =
        DeployRequest { url: url.into(), image_type: None, checksum: None, source: quick_retries(), ova_disk: None };
    deploy(&req, &t, &Arc::new(Progress::default()), None)
}

/// Builds an image with `make` (given the raw source path and the output
/// path; it returns the file `qemu-img` should read as the oracle), serves
/// it with `behaviour`, deploys it, and checks the target against the
/// oracle. Returns the result for further checks.
fn check(name: &str, behaviour: Behaviour, make: impl FnOnce(&Path, &Path) -> PathBuf) -> Deployed {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, disk_image(IMAGE, 7)).unwrap();
    let image = dir.path().join("image");
    let oracle = make(&raw, &image);
    let server = Server::start();
    let url = server.serve("/img", std::fs::read(&image).unwrap(), behaviour);
    let target = junk_target(dir.path(), DISK);
    let done = deploy_file(&url, &target).unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = qemu_raw(&oracle, dir.path());
    assert_eq!(done.image_size, want.len() as u64, "{name}: image size");
    assert_prefix_eq(&target, &want, name);
    done
}

fn ranges() -> Behaviour {
    Behaviour { ranges: true, etag: Some("\"v1\"".into()), ..Default::default() }
}

fn qcow2(extra: &'static [&'static str]) -> impl FnOnce(&Path, &Path) -> PathBuf {
    move |raw, out| {
        to_qcow2(raw, out, extra);
        out.to_owned()
    }
}

fn qemu_io(image: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    run(c.arg(image));
}

#[test]
fn raw_plain() {
    let d = check("raw", ranges(), |raw, out| {
        std::fs::copy(raw, out).unwrap();
        out.to_owned()
    });
    assert_eq!(d.format, "raw");
    assert!(d.writes.zeroed_bytes > 0, "zero blocks were written as data: {:?}", d.writes);
}

#[test]
fn raw_compressed() {
    for tool in ["gzip", "xz", "zstd"] {
        let d = check(tool, Behaviour::default(), |raw, out| {
            let data = Command::new(tool).args(["-c", "-q"]).arg(raw).output().unwrap();
            assert!(data.status.success(), "{tool}");
            std::fs::write(out, &data.stdout).unwrap();
            raw.to_owned()
        });
        assert_eq!(d.format, format!("raw ({tool})"));
    }
}

#[test]
fn qcow2_default_v3() {
    let d = check("qcow2", ranges(), qcow2(&[]));
    assert_eq!(d.format, "qcow2");
    assert!(d.qcow2.unwrap().prefetched_tables >= 2);
}

#[test]
fn qcow2_forward_only_without_range() {
    let d = check("qcow2 no range", Behaviour::default(), qcow2(&[]));
    assert_eq!(d.qcow2.unwrap().prefetched_tables, 0);
}

#[test]
fn qcow2_v2() {
    check("compat=0.10", ranges(), qcow2(&["-o", "compat=0.10"]));
    check("compat=0.10 no range", Behaviour::default(), qcow2(&["-o", "compat=0.10"]));
}

#[test]
fn qcow2_cluster_sizes() {
    for cs in ["512", "4096", "2M"] {
        let opt: &'static str = Box::leak(format!("cluster_size={cs}").into_boxed_str());
        let extra: &'static [&'static str] = Box::leak(vec!["-o", opt].into_boxed_slice());
        check(opt, ranges(), qcow2(extra));
        check(opt, Behaviour::default(), qcow2(extra));
    }
}

#[test]
fn qcow2_compressed_deflate_and_zstd() {
    check("-c", ranges(), qcow2(&["-c"]));
    check("-c zstd", ranges(), qcow2(&["-c", "-o", "compression_type=zstd"]));
    check("-c no range", Behaviour::default(), qcow2(&["-c"]));
}

#[test]
fn qcow2_extended_l2_with_partial_subclusters() {
    check("extended_l2", ranges(), qcow2(&["-o", "extended_l2=on"]));
    check("extended_l2 subclusters", Behaviour::default(), |raw, out| {
        to_qcow2(raw, out, &["-o", "extended_l2=on,cluster_size=64k"]);
        // Partial writes into unallocated clusters allocate single
        // subclusters; a zero write marks subclusters zero.
        qemu_io(out, &["write -z 2M 1M", "write -P 0x5a 2052k 2k", "write -P 0x6b 20484k 6k", "write -z 12k 4k"]);
        out.to_owned()
    });
}

#[test]
fn qcow2_preallocation() {
    check("preallocation=metadata", Behaviour::default(), qcow2(&["-o", "preallocation=metadata"]));
    check("preallocation=full", ranges(), qcow2(&["-o", "preallocation=full"]));
}

#[test]
fn qcow2_internal_snapshots_deploy_the_active_state() {
    check("snapshots", ranges(), |raw, out| {
        to_qcow2(raw, out, &[]);
        run(Command::new("qemu-img").args(["snapshot", "-c", "before"]).arg(out));
        qemu_io(out, &["write -P 0x77 1M 256k", "write -z 4M 1M", "discard 8M 1M"]);
        run(Command::new("qemu-img").args(["snapshot", "-c", "after"]).arg(out));
        qemu_io(out, &["write -P 0x78 2M 64k"]);
        out.to_owned()
    });
}

#[test]
fn qcow2_resized_with_l1_at_the_end() {
    let make = |raw: &Path, out: &Path| {
        to_qcow2(raw, out, &["-o", "cluster_size=4096"]);
        run(Command::new("qemu-img").args(["resize"]).arg(out).arg("32M"));
        qemu_io(out, &["write -P 0x99 25M 1M", "write -P 0x98 31M 1M"]);
        out.to_owned()
    };
    check("resized", ranges(), make);
    check("resized no range", Behaviour::default(), make);
}

#[test]
fn qcow2_inside_gzip_xz_and_zstd() {
    for tool in ["gzip", "xz", "zstd"] {
        let d = check(&format!("qcow2.{tool}"), Behaviour::default(), |raw, out| {
            let q = out.with_extension("q");
            to_qcow2(raw, &q, &[]);
            let data = Command::new(tool).args(["-c", "-q", "-1"]).arg(&q).output().unwrap();
            assert!(data.status.success(), "{tool}");
            std::fs::write(out, data.stdout).unwrap();
            q
        });
        assert_eq!(d.format, format!("qcow2 ({tool})"));
    }
}

/// Valid qcow2 images made by qemu-img that we refuse, with the reason.
#[test]
fn qcow2_features_we_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = |args: &[&str]| run(Command::new("qemu-img").current_dir(d).args(args));
    img(&["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
    img(&["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "overlay.qcow2"]);
    img(&[
        "create",
        "-q",
        "--object",
        "secret,id=s0,data=hunter2",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0",
        "luks.qcow2",
        "4M",
    ]);
    img(&["create", "-q", "-f", "qcow2", "-o", "data_file=data.raw", "external.qcow2", "4M"]);
    let server = Server::start();
    let target = junk_target(d, DISK);
    for (file, want) in [
        ("overlay.qcow2", "unsupported qcow2 image: it has a backing file (base.qcow2)"),
        ("luks.qcow2", "unsupported qcow2 image: it is encrypted (LUKS)"),
        ("external.qcow2", "unsupported qcow2 image: its data is in an external data file"),
    ] {
        let url = server.serve(&format!("/{file}"), std::fs::read(d.join(file)).unwrap(), ranges());
        let e = deploy_file(&url, &target).unwrap_err();
        assert!(e.to_string().starts_with(want), "{file}: {e}");
        assert_eq!(e.code(), byoi_wire::ErrorCode::UnsupportedImage);
    }
    assert!(std::fs::read(&target).unwrap().iter().all(|&b| b == 0xa5), "a refused image touched the disk");
}

/// A compressed wrapper allows no Range requests: a qcow2 whose tables
/// come after more data than the look-back buffer holds is refused with
/// the fix, before the first MiB is ever written. The same image served
/// plain from a server with Range support deploys.
#[test]
fn wrapped_qcow2_with_tables_after_its_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut raw = vec![0u8; IMAGE];
    support::Rng::new(3).fill(&mut raw);
    raw[510] = 0x55;
    raw[511] = 0xaa;
    std::fs::write(d.join("src.raw"), &raw).unwrap();
    let q = d.join("late.qcow2");
    to_qcow2(&d.join("src.raw"), &q, &["-o", "cluster_size=4096"]);
    // Growing the image moves its L1 table to the end of the file.
    run(Command::new("qemu-img").args(["resize"]).arg(&q).arg("32M"));
    let server = Server::start();
    let target = junk_target(d, DISK);
    for tool in ["gzip", "zstd"] {
        let data = Command::new(tool).args(["-c", "-q"]).arg(&q).output().unwrap();
        assert!(data.status.success(), "{tool}");
        let url = server.serve(&format!("/late.qcow2.{tool}"), data.stdout, ranges());
        let e = deploy_file(&url, &target).unwrap_err();
        assert!(e.to_string().starts_with("qcow2 metadata follows its data; serve it uncompressed"), "{tool}: {e}");
        assert_eq!(e.code(), byoi_wire::ErrorCode::CorruptImage);
        assert!(support::ends_wiped(&target), "{tool}: the disk's ends were not wiped");
    }
    let url = server.serve("/late.qcow2", std::fs::read(&q).unwrap(), ranges());
    let done = deploy_file(&url, &target).unwrap();
    assert_eq!(done.image_size, 32 << 20);
    assert_prefix_eq(&target, &raw, "plain with ranges");
}
