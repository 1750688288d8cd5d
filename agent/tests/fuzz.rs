//! The fuzz targets' property-test twins: the same entry points
//! (`byoi_agent::fuzzing`) over real images made by `qemu-img` and `tar`,
//! with bytes overwritten, cut or shifted, and over random bytes behind
//! each format's magic. The entry points panic when a decoder panics or
//! writes outside the image's declared size; an error is fine.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use byoi_agent::fuzzing;
use proptest::prelude::*;
use support::ova::{ovf, tar, Disk, Mf};
use support::{disk_image, run};

/// Small real inputs, made once.
struct Seeds {
    qcow2: Vec<u8>,
    qcow2_compressed: Vec<u8>,
    stream: Vec<u8>,
    sparse: Vec<u8>,
    ova: Vec<u8>,
}

fn qemu_img(dir: &Path, args: &[&str]) {
    run(Command::new("qemu-img").current_dir(dir).args(args));
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.raw"), disk_image(1 << 20, 5)).unwrap();
        qemu_img(d, &["convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", "a.raw", "a.qcow2"]);
        qemu_img(d, &["convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "cluster_size=4096", "a.raw", "c.qcow2"]);
        qemu_img(d, &["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", "a.raw", "disk.vmdk"]);
        qemu_img(d, &["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", "a.raw", "m.vmdk"]);
        let stream = std::fs::read(d.join("disk.vmdk")).unwrap();
        let d1 = [Disk { id: "d1", file: "disk.vmdk", capacity: 1 << 20 }];
        let descriptor = ovf(&d1, &[("disk.vmdk", stream.len() as u64)]).into_bytes();
        let ova = tar(d, &[("vm.ovf", descriptor), ("disk.vmdk", stream.clone())], Mf::AfterOvf("SHA256"), "ustar");
        let read = |name: &str| std::fs::read(d.join(name)).unwrap();
        Seeds { qcow2: read("a.qcow2"), qcow2_compressed: read("c.qcow2"), stream, sparse: read("m.vmdk"), ova }
    })
}

/// How a seed is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Bytes overwritten at offsets within the first `span` bytes.
    Overwrite(Vec<(u32, u8)>),
    /// Cut at a fraction (per mille) of the length.
    Cut(u16),
    /// `n` bytes removed at a fraction of the length: everything after
    /// shifts.
    Shift(u16, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => proptest::collection::vec((any::<u32>(), any::<u8>()), 1..16).prop_map(Damage::Overwrite),
        1 => (0u16..1000).prop_map(Damage::Cut),
        1 => (0u16..1000, 1u8..=255).prop_map(|(at, n)| Damage::Shift(at, n)),
    ]
}

/// Applies `d` to `seed`; overwrites land in the first `span` bytes (the
/// metadata, where damage matters most) or anywhere.
fn apply(seed: &[u8], d: &Damage, span: usize) -> Vec<u8> {
    let mut out = seed.to_vec();
    let at = |per_mille: u16| seed.len() * usize::from(per_mille) / 1000;
    match d {
        Damage::Overwrite(edits) => {
            for (i, &(pos, byte)) in edits.iter().enumerate() {
                // Half the edits in the metadata, half anywhere.
                let range = if i % 2 == 0 { span.min(out.len()) } else { out.len() };
                out[pos as usize % range] = byte;
            }
        }
        Damage::Cut(per_mille) => out.truncate(at(*per_mille)),
        Damage::Shift(per_mille, n) => {
            let from = at(*per_mille);
            let to = (from + usize::from(*n)).min(out.len());
            out.drain(from..to);
        }
    }
    out
}

/// One ustar member: header (with its checksum), data, padding.
fn tar_member(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

#[test]
fn the_seeds_decode() {
    let s = seeds();
    // The entry points swallow errors; decode the seeds for real here, so
    // that the damaged copies below start from images that work.
    for q in [&s.qcow2, &s.qcow2_compressed] {
        let h = byoi_agent::qcow2::Header::parse(q, Some(q.len() as u64)).unwrap();
        let mut sink = fuzzing::CheckedSink { start: 0, size: h.size, touched: 0 };
        byoi_agent::qcow2::Decoder::new(h, &mut sink, None, Some(q.len() as u64), None).run(&mut &q[..]).unwrap();
        assert_eq!(sink.touched, 1 << 20);
    }
    for v in [&s.stream, &s.sparse] {
        let mut sink = fuzzing::CheckedSink { start: 0, size: 1 << 20, touched: 0 };
        byoi_agent::vmdk::decode_sparse(&mut &v[..], &mut sink, 0, 1 << 20, None).unwrap();
        assert_eq!(sink.touched, 1 << 20);
    }
    let ova = byoi_agent::ova::Ova::open(Box::new(&s.ova[..]), None).unwrap();
    let mut sink = fuzzing::CheckedSink { start: 0, size: 1 << 20, touched: 0 };
    let done = ova.decode(&mut sink, None).unwrap();
    assert_eq!(done.verified, ["disk.vmdk", "vm.ovf"]);

    // The hand-made tar members the random cases use make a valid archive.
    let d1 = [Disk { id: "d1", file: "disk.vmdk", capacity: 1 << 20 }];
    let archive = [tar_member("vm.ovf", ovf(&d1, &[]).as_bytes()), tar_member("disk.vmdk", &s.stream)].concat();
    let ova = byoi_agent::ova::Ova::open(Box::new(&archive[..]), None).unwrap();
    let mut sink = fuzzing::CheckedSink { start: 0, size: 1 << 20, touched: 0 };
    assert_eq!(ova.decode(&mut sink, None).unwrap().size, 1 << 20);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn damaged_qcow2(d in damage(), compressed in any::<bool>()) {
        let s = seeds();
        let seed = if compressed { &s.qcow2_compressed } else { &s.qcow2 };
        fuzzing::qcow2(&apply(seed, &d, 64 << 10));
    }

    #[test]
    fn damaged_vmdk(d in damage(), sparse in any::<bool>()) {
        let s = seeds();
        let seed = if sparse { &s.sparse } else { &s.stream };
        fuzzing::vmdk(&apply(seed, &d, 64 << 10));
    }

    #[test]
    fn damaged_ova(d in damage()) {
        // The tar headers, OVF, manifest and VMDK metadata sit in the
        // first ~70 KiB.
        fuzzing::ova(&apply(&seeds().ova, &d, 72 << 10));
    }

    /// Random bytes behind each format's magic; for OVAs, a valid archive
    /// whose descriptor or disk is random.
    #[test]
    fn random_bytes_behind_the_magic(body in proptest::collection::vec(any::<u8>(), 0..4096), which in 0usize..4) {
        let with_magic = |magic: &[u8]| [magic, &body].concat();
        match which {
            0 => fuzzing::qcow2(&with_magic(b"QFI\xfb")),
            1 => fuzzing::vmdk(&with_magic(b"KDMV")),
            2 => fuzzing::ova(&[tar_member("vm.ovf", &with_magic(b"<Envelope>")), vec![0; 1024]].concat()),
            _ => {
                let d1 = [Disk { id: "d1", file: "disk.vmdk", capacity: 1 << 20 }];
                let descriptor = ovf(&d1, &[]);
                let disk = with_magic(b"KDMV");
                let archive = [tar_member("vm.ovf", descriptor.as_bytes()), tar_member("disk.vmdk", &disk)].concat();
                fuzzing::ova(&archive);
            }
        }
    }
}
