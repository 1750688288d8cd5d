//! Entry points for fuzzers and property tests: each takes arbitrary bytes,
//! runs one parser or decoder over them into an in-memory sink that only
//! checks bounds, and panics if an invariant breaks: a write outside the
//! image's declared size, or a panic inside the decoder. Errors are the
//! expected outcome for garbage; only their absence of panic matters.
//!
//! `agent/fuzz` (cargo-fuzz, `cargo xtask fuzz`) and the proptest twins in
//! `agent/tests/fuzz.rs` call these, so a crash found by one is replayed by
//! the other (`agent/tests/fuzz-regressions/`).

use std::io::Read;

use crate::error::Result;
use crate::ova::{Manifest, Ova, Ovf};
use crate::qcow2::{Decoder, Header};
use crate::sink::ImageSink;
use crate::source::RangeFetch;
use crate::vmdk::{self, Descriptor, SparseHeader};

/// A sink that writes nothing and panics on a write outside
/// `[start, size)`.
#[derive(Debug)]
pub struct CheckedSink {
    /// Where the decoder was told to write from.
    pub start: u64,
    /// The size the image declared.
    pub size: u64,
    /// Bytes written or zeroed, for the caller's curiosity.
    pub touched: u64,
}

impl CheckedSink {
    fn check(&mut self, offset: u64, len: u64) {
        let end = offset.checked_add(len).expect("offset + length overflows");
        assert!(end <= self.size, "write of {len} bytes at {offset:#x}, past the declared size {:#x}", self.size);
        assert!(offset >= self.start, "write of {len} bytes at {offset:#x}, before the start {:#x}", self.start);
        self.touched = self.touched.saturating_add(len);
    }
}

impl ImageSink for CheckedSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len() as u64);
        Ok(())
    }

    fn zero_at(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len);
        Ok(())
    }
}

/// Range requests answered from memory, each bounded as the HTTP source's.
struct MemRanger<'a>(&'a [u8]);

impl RangeFetch for MemRanger<'_> {
    fn fetch(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        assert!(len <= 64 << 20, "a range request of {len} bytes");
        let start = offset.min(self.0.len() as u64) as usize;
        let end = offset.saturating_add(len).min(self.0.len() as u64) as usize;
        Ok(self.0[start..end].to_vec())
    }
}

/// A qcow2 image, decoded forward only and with Range requests.
pub fn qcow2(data: &[u8]) {
    let len = Some(data.len() as u64);
    let Ok(h) = Header::parse(data, len) else { return };
    for ranged in [false, true] {
        let ranger = MemRanger(data);
        let r: Option<&dyn RangeFetch> = if ranged { Some(&ranger) } else { None };
        let mut sink = CheckedSink { start: 0, size: h.size, touched: 0 };
        let _ = Decoder::new(h.clone(), &mut sink, r, len, None).run(&mut &data[..]);
    }
}

/// A VMDK: a sparse extent decoded at an offset, or a descriptor parsed.
pub fn vmdk(data: &[u8]) {
    let _ = Descriptor::parse(data);
    let Ok(h) = SparseHeader::parse(data) else { return };
    let base: u64 = 4096;
    // A capacity near 2^64 bytes: the decoder must refuse the extent
    // before writing, which a saturated bound still checks.
    let size = base.saturating_add(h.size());
    let mut sink = CheckedSink { start: base, size, touched: 0 };
    let _ = vmdk::decode_sparse(&mut &data[..], &mut sink, base, size, None);
}

/// An OVA: tar walk, OVF, manifest and disk, every disk in turn; and the
/// descriptor and manifest parsers on their own.
pub fn ova(data: &[u8]) {
    let _ = Ovf::parse(data);
    let _ = Manifest::parse(data);
    // Disk 1 always exists when the descriptor parses; it says how many
    // there are.
    let disks = match open(data, Some("1")) {
        Ok(ova) => ova.ovf_disks(),
        Err(_) => return,
    };
    for i in 1..=disks.min(4) {
        let choice = i.to_string();
        let Ok(ova) = open(data, Some(&choice)) else { continue };
        let mut sink = CheckedSink { start: 0, size: ova.disk.capacity, touched: 0 };
        let _ = ova.decode(&mut sink, None);
    }
}

fn open<'a>(data: &'a [u8], choice: Option<&str>) -> Result<Ova<'a>> {
    let r: Box<dyn Read + 'a> = Box::new(data);
    Ova::open(r, choice)
}
