//! Corrupt qcow2 images: hand-broken tables and property tests over
//! mutated real images. A corrupt image must give a clear error — never a
//! panic, a write outside the virtual size, or an unbounded allocation.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::OnceLock;

use byoi_agent::error::Result;
use byoi_agent::qcow2::{Decoder, Header};
use byoi_agent::sink::ImageSink;
use byoi_agent::source::RangeFetch;
use byoi_agent::DeployError;
use proptest::prelude::*;
use support::{disk_image, to_qcow2};

/// A sink that only checks bounds.
struct Bounded {
    size: u64,
    written: u64,
}

impl ImageSink for Bounded {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        assert!(offset + data.len() as u64 <= self.size, "write past the virtual size at {offset:#x}");
        self.written += data.len() as u64;
        Ok(())
    }
    fn zero_at(&mut self, offset: u64, len: u64) -> Result<()> {
        assert!(offset + len <= self.size, "zeroing past the virtual size at {offset:#x}+{len:#x}");
        Ok(())
    }
}

struct Mem(Vec<u8>);

impl RangeFetch for Mem {
    fn fetch(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        assert!(len <= 64 << 20, "unbounded range request of {len} bytes");
        let s = (offset.min(self.0.len() as u64)) as usize;
        let e = (offset.saturating_add(len).min(self.0.len() as u64)) as usize;
        Ok(self.0[s..e].to_vec())
    }
}

fn decode(q: &[u8], ranged: bool) -> Result<u64> {
    let len = Some(q.len() as u64);
    let h = Header::parse(q, len)?;
    let mut sink = Bounded { size: h.size, written: 0 };
    let ranger = Mem(q.to_vec());
    let r: Option<&dyn RangeFetch> = if ranged { Some(&ranger) } else { None };
    Decoder::new(h, &mut sink, r, len, None).run(&mut &q[..])?;
    Ok(sink.written)
}

/// Real images, made once: 64 KiB clusters, and 4 KiB clusters compressed.
fn images() -> &'static (Vec<u8>, Vec<u8>) {
    static IMAGES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("a.raw");
        std::fs::write(&raw, disk_image(3 << 20, 11)).unwrap();
        let (a, b) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
        to_qcow2(&raw, &a, &[]);
        to_qcow2(&raw, &b, &["-c", "-o", "cluster_size=4096"]);
        (std::fs::read(a).unwrap(), std::fs::read(b).unwrap())
    })
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Offsets of the L1 table and of the first L2 table, and the first data
/// cluster's L2 entry offset.
fn layout(q: &[u8]) -> (usize, usize, usize) {
    let l1 = be64(q, 40) as usize;
    let l2 = (be64(q, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let first = (0..8192).map(|i| l2 + 8 * i).find(|&at| be64(q, at) != 0).unwrap();
    (l1, l2, first)
}

/// A change to an image's bytes.
type Mutation = Box<dyn Fn(&mut Vec<u8>)>;

fn expect_corrupt(q: &[u8], want: &str) {
    for ranged in [false, true] {
        let e = decode(q, ranged).unwrap_err();
        assert!(matches!(e, DeployError::Corrupt { .. }), "ranged={ranged}: expected a corruption, got {e}");
        assert!(e.to_string().contains(want), "ranged={ranged}: {e:?} does not mention {want:?}");
    }
}

#[test]
fn the_real_images_decode() {
    let (a, b) = images();
    for q in [a, b] {
        assert!(decode(q, false).unwrap() > 0);
        assert!(decode(q, true).unwrap() > 0);
    }
}

#[test]
fn broken_tables_are_named() {
    let (a, _) = images();
    let (l1, l2, entry) = layout(a);
    let len = a.len() as u64;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(move |q| put64(q, l1, (len + (1 << 20)) & !0xffff)), "L2 table 0 at host offset"),
        (Box::new(move |q| put64(q, l1, 1 << 58)), "reserved bits"),
        (Box::new(move |q| put64(q, l1, l1 as u64)), "inside the header or the L1 table"),
        (Box::new(move |q| put64(q, entry, (len + (1 << 20)) & !0xffff)), "outside the file"),
        (Box::new(move |q| put64(q, entry, l2 as u64)), "inside the header or a table"),
        (Box::new(move |q| put64(q, entry, l1 as u64)), "inside the header or a table"),
        (Box::new(move |q| put64(q, entry, 0x10200)), "unaligned"),
        (Box::new(move |q| put64(q, 40, len + 0x10000)), "outside the file"),
        (Box::new(move |q| q.truncate(q.len() / 2)), "outside the file"),
    ];
    for (mutate, want) in cases {
        let mut q = a.clone();
        mutate(&mut q);
        expect_corrupt(&q, want);
    }
}

#[test]
fn garbage_in_a_compressed_cluster_is_named() {
    let (_, b) = images();
    let mut q = b.clone();
    let (_, l2, entry) = layout(&q);
    let raw = be64(&q, entry);
    assert!(raw & (1 << 62) != 0, "expected a compressed cluster");
    let host = (raw & ((1u64 << 58) - 1)) as usize;
    q[host..host + 32].fill(0xff);
    expect_corrupt(&q, "compressed cluster at");
    let _ = l2;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Random bytes written over the header, the L1 table or an L2 table
    /// of a real image never panic or write out of bounds.
    #[test]
    fn mutated_images_fail_cleanly(
        which in 0usize..2,
        region in 0usize..3,
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..12),
        ranged in any::<bool>(),
    ) {
        let q = if which == 0 { &images().0 } else { &images().1 };
        let (l1, l2, _) = layout(q);
        let (base, span) = match region {
            0 => (0, 112),
            1 => (l1, 64),
            _ => (l2, 4096),
        };
        let mut q = q.clone();
        for (at, byte) in edits {
            let i = base + usize::from(at) % span;
            q[i] = byte;
        }
        let _ = decode(&q, ranged);
    }

    /// Truncating an image anywhere is an error, not a short image.
    #[test]
    fn truncated_images_are_refused(cut in 1usize..100) {
        let q = &images().0;
        let at = q.len() * cut / 100;
        prop_assert!(decode(&q[..at], false).is_err());
    }
}
