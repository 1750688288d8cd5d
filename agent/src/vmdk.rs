//! VMDK decoded from a stream in one forward pass: hosted sparse extents
//! (`monolithicSparse`, and `streamOptimized` with compressed grains and
//! markers) and text descriptors naming flat, zero and sparse extents.
//!
//! References: VMware's "Virtual Disk Format 5.0" (sparse extent header,
//! grain directory and tables, stream-optimized markers) and QEMU's
//! `block/vmdk.c` (what real tools accept).
//!
//! A sparse extent is a 512-byte header, metadata (descriptor, grain
//! directory and tables) up to `overHead` sectors, then grains:
//! - `streamOptimized`: each grain is a 12-byte marker (LBA, compressed
//!   size) and zlib data, padded to a sector. Metadata markers (grain table,
//!   grain directory, footer, end of stream) may follow; VMware puts the
//!   directory at the end (`gdOffset` = [`GD_AT_END`]) and ends with a
//!   footer and an end-of-stream marker, QEMU keeps it in front and writes
//!   no markers. Grains are written where their marker says; when the
//!   tables are in front, every grain is checked against them and a stream
//!   that stops before its last grain is an error.
//! - `monolithicSparse`: uncompressed grains wherever the tables say; the
//!   tables come before the grains, so one pass reads them first.
//!
//! Nothing is written outside the extent, which must fit the limit the
//! caller gives before any table is read; metadata is read as it arrives,
//! up to [`MAX_METADATA`]; the grain list built from it is bounded by
//! distinct, non-overlapping tables and [`MAX_LISTED_GRAINS`]; every region
//! no grain covers is zeroed.

use std::io::{self, Read};

use crate::error::{DeployError, Result};
use crate::inflate::{Inflaters, Job, Ordered};
use crate::progress::Progress;
use crate::sink::ImageSink;
use crate::util::{le16, le32, le64, read_full};

/// Bytes per VMDK sector; every offset in the format counts these.
pub const SECTOR: u64 = 512;
/// `KDMV`, the sparse extent header's magic.
pub const MAGIC: [u8; 4] = *b"KDMV";
/// The first line of a text descriptor.
pub const DESCRIPTOR_MAGIC: &[u8] = b"# Disk DescriptorFile";
/// `gdOffset` of a stream-optimized extent whose grain directory follows
/// the grains (the footer holds the real offset).
pub const GD_AT_END: u64 = u64::MAX;

/// Header flag: the newline check bytes are valid.
const FLAG_NEWLINE_TEST: u32 = 1 << 0;
/// Header flag: grain table entry 1 means a zero grain.
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Header flag: grains are compressed.
const FLAG_COMPRESSED: u32 = 1 << 16;
/// Header flag: grains and metadata carry markers.
const FLAG_MARKERS: u32 = 1 << 17;
/// Header flags this decoder knows (bit 1: redundant grain tables, which
/// it does not need).
const KNOWN_FLAGS: u32 = FLAG_NEWLINE_TEST | 1 << 1 | FLAG_ZERO_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS;
/// The check bytes at header offset 73: corrupted by a text-mode transfer.
const NEWLINE_CHECK: [u8; 4] = *b"\n \r\n";
/// `compressAlgorithm` 1: deflate with a zlib header (RFC 1950).
const COMPRESS_DEFLATE: u16 = 1;

/// Metadata marker types (stream-optimized).
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;
/// Bytes of a grain marker before its data: LBA (u64) and size (u32).
const GRAIN_MARKER_LEN: usize = 12;

/// Largest grain accepted (VMware uses 64 KiB; QEMU makes up to 1 MiB).
pub const MAX_GRAIN: u64 = 8 << 20;
/// Most bytes of header and metadata before the first grain: the tables
/// of a 640 GiB extent with 64 KiB grains, twice (redundant copy).
pub const MAX_METADATA: u64 = 80 << 20;
/// Most allocated grains listed by tables in front (8 bytes each in
/// memory): 512 GiB of data in 64 KiB grains.
const MAX_LISTED_GRAINS: usize = 8 << 20;
/// Largest text descriptor.
pub const MAX_DESCRIPTOR: u64 = 1 << 20;

fn corrupt(detail: impl Into<String>) -> DeployError {
    DeployError::Corrupt { format: "vmdk", detail: detail.into() }
}

fn unsupported(detail: impl Into<String>) -> DeployError {
    DeployError::Unsupported { format: "vmdk", detail: detail.into() }
}

/// A sparse extent header (`SparseExtentHeader`, 512 bytes little endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// 1, 2 or 3 (3: stream-optimized).
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Extent size in sectors.
    pub capacity: u64,
    /// Grain size in sectors, a power of two.
    pub grain: u64,
    /// Embedded descriptor: offset and size in sectors (0 when none).
    pub desc_offset: u64,
    /// See `desc_offset`.
    pub desc_size: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u32,
    /// Grain directory offset in sectors, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors before the first grain (`overHead`).
    pub grain_offset: u64,
    /// `compressAlgorithm`.
    pub compression: u16,
}

impl SparseHeader {
    /// Bytes of a header.
    pub const LEN: usize = 512;

    /// Parses and validates a header.
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < Self::LEN {
            return Err(corrupt(format!("the header is cut short ({} of {} bytes)", b.len(), Self::LEN)));
        }
        if b[..4] != MAGIC {
            return Err(corrupt("no sparse extent header (magic KDMV)"));
        }
        let h = SparseHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain: le64(b, 20),
            desc_offset: le64(b, 28),
            desc_size: le64(b, 36),
            gtes_per_gt: le32(b, 44),
            gd_offset: le64(b, 56),
            grain_offset: le64(b, 64),
            compression: le16(b, 77),
        };
        if !(1..=3).contains(&h.version) {
            return Err(unsupported(format!("sparse extent version {}", h.version)));
        }
        if h.flags & FLAG_NEWLINE_TEST != 0 && b[73..77] != NEWLINE_CHECK {
            return Err(corrupt("the header's newline check bytes are altered (transferred in text mode?)"));
        }
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(unsupported(format!("unknown header flags {:#x}", h.flags & !KNOWN_FLAGS)));
        }
        if !h.grain.is_power_of_two() || h.grain > MAX_GRAIN / SECTOR {
            return Err(corrupt(format!("grain size of {} sectors (a power of two up to 16384 expected)", h.grain)));
        }
        if h.capacity.checked_mul(SECTOR).is_none() {
            return Err(corrupt(format!("capacity of {} sectors", h.capacity)));
        }
        if h.gtes_per_gt == 0 || h.gtes_per_gt > 1 << 16 {
            return Err(corrupt(format!("{} entries per grain table", h.gtes_per_gt)));
        }
        match (h.compressed(), h.compression) {
            (false, _) => {}
            (true, COMPRESS_DEFLATE) => {}
            (true, other) => return Err(unsupported(format!("compression algorithm {other}"))),
        }
        if h.flags & FLAG_MARKERS != 0 && !h.compressed() {
            return Err(unsupported("markers without compression"));
        }
        if h.gd_offset == GD_AT_END && !h.has_markers() {
            return Err(corrupt("the grain directory is at the end but the stream has no markers"));
        }
        if h.grain_offset == 0 || h.grain_offset.saturating_mul(SECTOR) > MAX_METADATA {
            return Err(unsupported(format!(
                "the grains start at sector {} (more than {} MiB of metadata)",
                h.grain_offset,
                MAX_METADATA >> 20
            )));
        }
        Ok(h)
    }

    /// Extent size in bytes.
    pub fn size(&self) -> u64 {
        self.capacity * SECTOR
    }

    fn grain_bytes(&self) -> u64 {
        self.grain * SECTOR
    }

    fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    fn grains(&self) -> u64 {
        self.capacity.div_ceil(self.grain)
    }
}

/// How an extent of a descriptor stores its sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentKind {
    /// Raw sectors in `file`, from sector `offset`.
    Flat {
        /// The file, as the descriptor names it.
        file: String,
        /// First sector in the file.
        offset: u64,
    },
    /// A hosted sparse extent in `file`.
    Sparse {
        /// The file, as the descriptor names it.
        file: String,
    },
    /// Sectors that read as zeros, stored nowhere.
    Zero,
}

/// One line of a descriptor's extent description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Size in sectors.
    pub sectors: u64,
    /// Where the sectors are.
    pub kind: ExtentKind,
}

/// A text descriptor: what a disk is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `createType` (`monolithicSparse`, `streamOptimized`, `monolithicFlat`…).
    pub create_type: String,
    /// The extents, in disk order.
    pub extents: Vec<Extent>,
}

impl Descriptor {
    /// Parses a descriptor; refuses disks that need a parent.
    pub fn parse(text: &[u8]) -> Result<Self> {
        let (create_type, extents) = Self::lines(text)?;
        let create_type = create_type.ok_or_else(|| corrupt("the descriptor has no createType"))?;
        Ok(Descriptor { create_type, extents })
    }

    /// The `createType` and the extents of a descriptor, if any.
    fn lines(text: &[u8]) -> Result<(Option<String>, Vec<Extent>)> {
        // A descriptor is a C string, as QEMU and VMware read it: it ends at
        // its first NUL. What may follow is not padding only: QEMU rewrites
        // the CID in place on an image's first write, and a shorter CID
        // leaves the old text's last bytes after the NUL.
        let text = text.split(|&b| b == 0).next().unwrap_or_default();
        // Descriptors may carry other encodings (`encoding="windows-1252"`)
        // in values we do not read; the keys and file names we do are ASCII.
        let text = String::from_utf8_lossy(text);
        let mut create_type = None;
        let mut extents = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                let (key, value) = (key.trim(), value.trim().trim_matches('"'));
                match key {
                    "createType" => create_type = Some(value.to_owned()),
                    "parentCID" if !value.eq_ignore_ascii_case("ffffffff") => {
                        return Err(unsupported("it is a delta disk of a parent (parentCID is set)"));
                    }
                    "parentFileNameHint" => {
                        return Err(unsupported(format!("it is a delta disk of a parent ({value})")));
                    }
                    _ => {}
                }
                continue;
            }
            extents.push(parse_extent(line).map_err(|e| corrupt(format!("descriptor line {}: {e}", n + 1)))?);
        }
        Ok((create_type, extents))
    }
}

/// `RW 20480 FLAT "disk-flat.vmdk" 0`, `RW 20480 SPARSE "disk.vmdk"`,
/// `RW 20480 ZERO`.
fn parse_extent(line: &str) -> std::result::Result<Extent, String> {
    let (head, quoted) = match line.split_once('"') {
        Some((head, rest)) => {
            let (file, tail) = rest.split_once('"').ok_or("unterminated file name")?;
            (head, Some((file.to_owned(), tail.trim())))
        }
        None => (line, None),
    };
    let words: Vec<&str> = head.split_whitespace().collect();
    let [access, sectors, kind] = words[..] else {
        return Err(format!("{line:?} is not an extent (access, sectors, type, \"file\", offset)"));
    };
    if !matches!(access, "RW" | "RDONLY" | "NOACCESS") {
        return Err(format!("unknown access {access:?}"));
    }
    let sectors: u64 = sectors.parse().map_err(|_| format!("bad sector count {sectors:?}"))?;
    if sectors.checked_mul(SECTOR).is_none() {
        return Err(format!("{sectors} sectors is too large"));
    }
    let kind = match (kind, quoted) {
        ("FLAT", Some((file, offset))) => {
            let offset =
                if offset.is_empty() { 0 } else { offset.parse().map_err(|_| format!("bad offset {offset:?}"))? };
            ExtentKind::Flat { file, offset }
        }
        ("SPARSE", Some((file, _))) => ExtentKind::Sparse { file },
        ("ZERO", None) => ExtentKind::Zero,
        (k @ ("FLAT" | "SPARSE"), None) => return Err(format!("{k} extent without a file")),
        (other, _) => return Err(format!("extent type {other} is not supported (FLAT, SPARSE and ZERO are)")),
    };
    Ok(Extent { sectors, kind })
}

/// Zeroes what no write covered, in order: a cursor, since grains come
/// mostly in order; a write behind it lands on bytes already zeroed.
#[derive(Debug)]
struct Fill {
    next: u64,
}

impl Fill {
    /// Zeroes what lies between the cursor and `offset`.
    fn zero_gap(&mut self, sink: &mut dyn ImageSink, offset: u64) -> Result<()> {
        if offset > self.next {
            sink.zero_at(self.next, offset - self.next)?;
        }
        Ok(())
    }

    fn write(&mut self, sink: &mut dyn ImageSink, offset: u64, data: &[u8]) -> Result<()> {
        self.zero_gap(sink, offset)?;
        sink.write_at(offset, data)?;
        self.next = self.next.max(offset + data.len() as u64);
        Ok(())
    }

    /// Like [`Fill::write`] for a compressed grain that inflates on
    /// `sink`'s threads (into at most `grain` bytes) and writes `len`.
    fn inflate(
        &mut self,
        sink: &mut Ordered<'_>,
        offset: u64,
        len: u64,
        grain: u64,
        input: Vec<u8>,
        job: Job,
    ) -> Result<()> {
        self.zero_gap(sink, offset)?;
        sink.inflate(offset, input, grain as usize, job)?;
        self.next = self.next.max(offset + len);
        Ok(())
    }

    fn finish(&mut self, sink: &mut dyn ImageSink, end: u64) -> Result<()> {
        self.zero_gap(sink, end)?;
        self.next = self.next.max(end);
        Ok(())
    }
}

/// A reader that counts bytes, so padding and offsets can be checked.
struct Counted<'r> {
    inner: &'r mut dyn Read,
    pos: u64,
}

impl Counted<'_> {
    /// Reads exactly `buf.len()` bytes; returns how many the stream had.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n =
            read_full(self.inner, buf).map_err(|e| DeployError::from_read(e, |e| corrupt(format!("reading: {e}"))))?;
        self.pos += n as u64;
        Ok(n)
    }

    /// Reads `len` bytes into a vector that grows as they arrive.
    fn take_vec(&mut self, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        (&mut *self.inner)
            .take(len)
            .read_to_end(&mut out)
            .map_err(|e| DeployError::from_read(e, |e| corrupt(format!("reading: {e}"))))?;
        self.pos += out.len() as u64;
        Ok(out)
    }

    /// Skips to `pos`; returns false if the stream ends first.
    fn skip_to(&mut self, pos: u64) -> Result<bool> {
        let len = pos.saturating_sub(self.pos);
        let n = io::copy(&mut (&mut *self.inner).take(len), &mut io::sink())
            .map_err(|e| DeployError::from_read(e, |e| corrupt(format!("reading: {e}"))))?;
        self.pos += n;
        Ok(n == len)
    }
}

/// Decodes one hosted sparse extent from `r` (which yields the extent's
/// file from its first byte) into `sink` at `base`; zeroes every sector of
/// the extent no grain covers. The extent must end by byte `limit` (the
/// disk's declared size), which is checked before anything else is read.
/// Reads up to the last grain (or the end-of-stream marker), not
/// necessarily to the end of `r`.
pub fn decode_sparse(
    r: &mut dyn Read,
    sink: &mut dyn ImageSink,
    base: u64,
    limit: u64,
    progress: Option<&Progress>,
) -> Result<SparseHeader> {
    let mut r = Counted { inner: r, pos: 0 };
    let mut head = [0u8; SparseHeader::LEN];
    let n = r.fill(&mut head)?;
    let h = SparseHeader::parse(&head[..n])?;
    let end = base.checked_add(h.size()).filter(|&end| end <= limit).ok_or_else(|| {
        corrupt(format!(
            "an extent of {} bytes at byte {base} goes past the {limit} bytes the disk is declared to have",
            h.size()
        ))
    })?;
    // Everything before the first grain: descriptor, directory, tables.
    let meta_len = h.grain_offset * SECTOR - SparseHeader::LEN as u64;
    let mut meta = head.to_vec();
    meta.extend(r.take_vec(meta_len)?);
    if (meta.len() as u64) < h.grain_offset * SECTOR {
        return Err(corrupt(format!("the file ends inside its metadata, at byte {}", meta.len())));
    }
    if h.desc_offset > 0 && h.desc_size > 0 {
        let range = h
            .desc_offset
            .checked_mul(SECTOR)
            .zip(h.desc_size.checked_mul(SECTOR).filter(|&l| l <= MAX_DESCRIPTOR))
            .and_then(|(s, l)| meta.get(s as usize..s.checked_add(l)? as usize));
        match range {
            // Only to refuse a delta disk: extents of a split disk carry an
            // empty descriptor.
            Some(text) => {
                Descriptor::lines(text)?;
            }
            None => return Err(corrupt("the embedded descriptor lies outside the metadata")),
        }
    }
    // With markers, the grains say where they go: tables after them (the
    // directory at the end, or anywhere past the first grain) are skipped
    // and the end-of-stream marker is required instead.
    let tables_in_front = h.gd_offset != GD_AT_END && !(h.has_markers() && h.gd_offset >= h.grain_offset);
    let layout = if tables_in_front { Some(grain_layout(&h, &meta)?) } else { None };
    drop(meta);
    let mut d = SparseStream { h, sink: Ordered::new(sink), base, end, fill: Fill { next: base }, progress };
    let streamed = if h.compressed() {
        d.stream_compressed(&mut r, layout)
    } else {
        d.stream_plain(&mut r, layout.unwrap_or_default())
    };
    let streamed = streamed.and_then(|()| d.fill.finish(&mut d.sink, end));
    // Grains still inflating lie before whatever stopped the stream: their
    // failure, if any, comes first.
    d.sink.finish().and(streamed)?;
    Ok(h)
}

/// Allocated grains from the directory and tables in `meta` (the file up
/// to the first grain): `(file sector, grain index)`, by file sector.
fn grain_layout(h: &SparseHeader, meta: &[u8]) -> Result<Vec<(u32, u32)>> {
    if h.grains() > u64::from(u32::MAX) {
        return Err(unsupported(format!("{} grains (more than 2^32)", h.grains())));
    }
    let gts = h.grains().div_ceil(u64::from(h.gtes_per_gt));
    let gt_bytes = u64::from(h.gtes_per_gt) * 4;
    let table = |offset: u64, len: u64, what: &str| -> Result<&[u8]> {
        offset.checked_mul(SECTOR).and_then(|s| meta.get(s as usize..(s.checked_add(len)?) as usize)).ok_or_else(|| {
            unsupported(format!(
                "{what} at sector {offset} is not before the first grain (sector {}): it cannot be streamed",
                h.grain_offset
            ))
        })
    };
    let gd = table(h.gd_offset, gts * 4, "the grain directory")?;
    // Every table read must be a distinct stretch of the metadata: the
    // work below is then bounded by the bytes received.
    let mut tables: Vec<(u64, usize)> = gd
        .chunks_exact(4)
        .enumerate()
        .map(|(i, e)| (u64::from(le32(e, 0)), i))
        .filter(|&(sector, _)| sector != 0)
        .collect();
    tables.sort_unstable();
    let gt_sectors = gt_bytes.div_ceil(SECTOR);
    for pair in tables.windows(2) {
        let ((a, ia), (b, ib)) = (pair[0], pair[1]);
        if b < a + gt_sectors {
            return Err(corrupt(format!("grain tables {ia} and {ib} overlap at sectors {a} and {b}")));
        }
    }
    let mut grains: Vec<(u32, u32)> = Vec::new();
    for (gt_sector, i) in tables {
        let gt = table(gt_sector, gt_bytes, &format!("grain table {i}"))?;
        for (j, e) in gt.chunks_exact(4).enumerate() {
            let index = i as u64 * u64::from(h.gtes_per_gt) + j as u64;
            let sector = le32(e, 0);
            if index >= h.grains() || sector == 0 || (sector == 1 && h.flags & FLAG_ZERO_GRAIN != 0) {
                continue;
            }
            if u64::from(sector) < h.grain_offset {
                return Err(corrupt(format!("grain {index} is at sector {sector}, inside the metadata")));
            }
            if grains.len() >= MAX_LISTED_GRAINS {
                return Err(unsupported(format!(
                    "its tables list more than {MAX_LISTED_GRAINS} grains; convert it with fewer, larger grains"
                )));
            }
            // `index` < 2^32, checked above.
            grains.push((sector, index as u32));
        }
    }
    grains.sort_unstable();
    for pair in grains.windows(2) {
        let ((a, ia), (b, ib)) = (pair[0], pair[1]);
        // Compressed grains are at least a sector; plain ones a grain.
        let min_gap = if h.compressed() { 1 } else { h.grain };
        if u64::from(b) < u64::from(a) + min_gap {
            return Err(corrupt(format!("grains {ia} and {ib} overlap at sectors {a} and {b}")));
        }
    }
    Ok(grains)
}

/// One sparse extent being decoded.
struct SparseStream<'a, 's> {
    h: SparseHeader,
    /// Compressed grains inflate on its threads.
    sink: Ordered<'s>,
    base: u64,
    end: u64,
    fill: Fill,
    progress: Option<&'a Progress>,
}

impl SparseStream<'_, '_> {
    fn check_abort(&self) -> Result<()> {
        if self.progress.is_some_and(|p| p.abort_requested()) {
            return Err(DeployError::Aborted);
        }
        Ok(())
    }

    /// Writes a grain's bytes at grain `index`, cut at the extent's end.
    fn write_grain(&mut self, index: u64, data: &[u8]) -> Result<()> {
        let at = self.base + index * self.h.grain_bytes();
        let n = (data.len() as u64).min(self.end - at) as usize;
        self.fill.write(&mut self.sink, at, &data[..n])
    }

    /// Queues a compressed grain (zlib, RFC 1950) for grain `index`; it must
    /// inflate completely, to at least what the extent holds from there.
    fn inflate_grain(&mut self, index: u64, sector: u64, input: Vec<u8>) -> Result<()> {
        let grain_bytes = self.h.grain_bytes();
        let lba = index * self.h.grain;
        let at = self.base + index * grain_bytes;
        // The last grain may be cut by the extent's end.
        let need = grain_bytes.min(self.end - at);
        let job: Job = Box::new(move |inflaters: &mut Inflaters, input: &[u8], out: &mut Vec<u8>| {
            let inflate = inflaters.deflate(true);
            out.resize(grain_bytes as usize, 0);
            let status = inflate
                .decompress(input, out, flate2::FlushDecompress::Finish)
                .map_err(|e| corrupt(format!("the grain at sector {sector} (LBA {lba}): {e}")))?;
            let len = inflate.total_out();
            if status != flate2::Status::StreamEnd || len < need {
                return Err(corrupt(format!(
                    "the grain at sector {sector} (LBA {lba}) inflates to {len}{} bytes instead of {need}",
                    if status == flate2::Status::StreamEnd { "" } else { " or more" }
                )));
            }
            out.truncate(need as usize);
            Ok(())
        });
        self.fill.inflate(&mut self.sink, at, need, grain_bytes, input, job)
    }

    /// `monolithicSparse`: grains where the tables say, in file order.
    fn stream_plain(&mut self, r: &mut Counted<'_>, grains: Vec<(u32, u32)>) -> Result<()> {
        let mut buf = vec![0u8; self.h.grain_bytes() as usize];
        for (sector, index) in grains {
            let (sector, index) = (u64::from(sector), u64::from(index));
            self.check_abort()?;
            let cut = |at: u64| corrupt(format!("the file ends at byte {at}, before grain {index} at sector {sector}"));
            if !r.skip_to(sector * SECTOR)? {
                return Err(cut(r.pos));
            }
            if r.fill(&mut buf)? < buf.len() {
                return Err(cut(r.pos));
            }
            self.write_grain(index, &buf)?;
        }
        Ok(())
    }

    /// `streamOptimized`: markers from the first grain on. With `layout`
    /// (tables in front) every grain must be the next one it lists, and
    /// all must come; without, the stream must end with its marker.
    fn stream_compressed(&mut self, r: &mut Counted<'_>, layout: Option<Vec<(u32, u32)>>) -> Result<()> {
        let grain_bytes = self.h.grain_bytes();
        // zlib's worst case for incompressible data is a few bytes per
        // 16 KiB block; anything far above that is corrupt.
        let max_compressed = grain_bytes + grain_bytes / 8 + 4096;
        let mut expected = layout.as_deref().map(|l| l.iter().map(|&(s, i)| (u64::from(s), u64::from(i))));
        let mut saw_footer = false;
        loop {
            self.check_abort()?;
            let at = r.pos;
            let sector = at / SECTOR;
            let mut marker = [0u8; GRAIN_MARKER_LEN];
            let n = r.fill(&mut marker)?;
            if n == 0 {
                break;
            }
            if n < marker.len() {
                return Err(corrupt(format!("the file ends inside the marker at byte {at}")));
            }
            let (value, size) = (le64(&marker, 0), le32(&marker, 8));
            if size == 0 {
                // A metadata marker: the rest of its sector, then `value`
                // sectors of metadata.
                let mut rest = [0u8; SECTOR as usize - GRAIN_MARKER_LEN];
                if r.fill(&mut rest)? < rest.len() {
                    return Err(corrupt(format!("the file ends inside the marker at byte {at}")));
                }
                let kind = le32(&rest, 0);
                let len = value.checked_mul(SECTOR).filter(|&l| l <= MAX_METADATA).ok_or_else(|| {
                    corrupt(format!("the marker at sector {sector} announces {value} sectors of metadata"))
                })?;
                match kind {
                    MARKER_EOS => return self.end_of_stream(expected.map(|mut e| e.next())),
                    MARKER_GT | MARKER_GD => {
                        if !r.skip_to(r.pos + len)? {
                            return Err(corrupt(format!("the file ends inside the table at sector {sector}")));
                        }
                    }
                    MARKER_FOOTER => {
                        let footer = r.take_vec(len)?;
                        let f = SparseHeader::parse(&footer)?;
                        if (f.capacity, f.grain) != (self.h.capacity, self.h.grain) {
                            return Err(corrupt(format!(
                                "the footer says {} sectors in grains of {}, the header {} in grains of {}",
                                f.capacity, f.grain, self.h.capacity, self.h.grain
                            )));
                        }
                        saw_footer = true;
                    }
                    other => return Err(corrupt(format!("unknown marker type {other} at sector {sector}"))),
                }
                continue;
            }
            if saw_footer {
                return Err(corrupt(format!("a grain at sector {sector} follows the footer")));
            }
            let lba = value;
            if lba >= self.h.capacity || lba % self.h.grain != 0 {
                return Err(corrupt(format!(
                    "the grain at sector {sector} is for LBA {lba}, outside the {} sectors or not at a grain boundary",
                    self.h.capacity
                )));
            }
            let index = lba / self.h.grain;
            if let Some(expected) = expected.as_mut() {
                match expected.next() {
                    Some((s, i)) if (s, i) == (sector, index) => {}
                    Some((s, i)) => {
                        return Err(corrupt(format!(
                            "the grain at sector {sector} is for LBA {lba}; the grain tables put grain {i} (LBA {}) at sector {s} next",
                            i * self.h.grain
                        )))
                    }
                    None => {
                        return Err(corrupt(format!(
                            "the grain at sector {sector} (LBA {lba}) is in no grain table"
                        )))
                    }
                }
            }
            if u64::from(size) > max_compressed {
                return Err(corrupt(format!("the grain at sector {sector} claims {size} compressed bytes")));
            }
            let mut data = self.sink.buffer(size as usize);
            data.resize(size as usize, 0);
            if r.fill(&mut data)? < data.len() {
                return Err(corrupt(format!("the file ends inside the grain at sector {sector}")));
            }
            self.inflate_grain(index, sector, data)?;
            // The next marker starts on a sector boundary.
            let next = r.pos.div_ceil(SECTOR) * SECTOR;
            if !r.skip_to(next)? {
                break;
            }
        }
        match expected {
            None => Err(corrupt("the stream ends without its end-of-stream marker")),
            Some(mut e) => self.end_of_stream(Some(e.next())),
        }
    }

    /// Checks the stream ended after every grain its tables list.
    fn end_of_stream(&self, next_expected: Option<Option<(u64, u64)>>) -> Result<()> {
        match next_expected {
            Some(Some((sector, index))) => Err(corrupt(format!(
                "the stream ends before grain {index} (LBA {}), which the grain tables put at sector {sector}",
                index * self.h.grain
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_descriptors() {
        let d = Descriptor::parse(
            b"# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\n\
              # Extent description\nRW 4096 FLAT \"a-f001.vmdk\" 0\nRDONLY 2048 FLAT \"a f002.vmdk\" 16\nRW 100 ZERO\n\
              RW 8 SPARSE \"s.vmdk\"\nddb.adapterType = \"ide\"\n",
        )
        .unwrap();
        assert_eq!(d.create_type, "twoGbMaxExtentFlat");
        assert_eq!(
            d.extents,
            [
                Extent { sectors: 4096, kind: ExtentKind::Flat { file: "a-f001.vmdk".into(), offset: 0 } },
                Extent { sectors: 2048, kind: ExtentKind::Flat { file: "a f002.vmdk".into(), offset: 16 } },
                Extent { sectors: 100, kind: ExtentKind::Zero },
                Extent { sectors: 8, kind: ExtentKind::Sparse { file: "s.vmdk".into() } },
            ]
        );
    }

    #[test]
    fn refuses_bad_descriptors() {
        let cases: [(&[u8], &str); 5] = [
            (b"createType=\"x\"\nparentCID=12345678\n", "unsupported vmdk image: it is a delta disk"),
            (b"createType=\"x\"\nRW 10 VMFS \"a\"\n", "corrupt vmdk image: descriptor line 2: extent type VMFS"),
            (b"createType=\"x\"\nRW ten FLAT \"a\" 0\n", "corrupt vmdk image: descriptor line 2: bad sector count"),
            (b"RW 10 FLAT \"a\" 0\n", "corrupt vmdk image: the descriptor has no createType"),
            (b"createType=\"x\"\nRW 10 FLAT \"a\n", "corrupt vmdk image: descriptor line 2: unterminated"),
        ];
        for (text, want) in cases {
            let e = Descriptor::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    /// What QEMU's `vmdk_write_cid` does to an embedded descriptor on the
    /// first write to an image: `snprintf` of the new CID over the old one,
    /// the rest of the text appended, the whole area written back. A CID two
    /// or more hex digits shorter than the old one (one image in a few
    /// hundred) leaves the old text's tail after the terminating NUL.
    fn qemu_write_cid(desc: &mut [u8], cid: u32) {
        let end = desc.iter().position(|&b| b == 0).unwrap();
        let find = |pat: &[u8]| desc[..end].windows(pat.len()).position(|w| w == pat).unwrap();
        let parent = desc[find(b"parentCID")..end].to_vec();
        let at = find(b"CID") + b"CID=".len();
        let new = [format!("{cid:x}\n").as_bytes(), &parent, b"\0"].concat();
        desc[at..at + new.len()].copy_from_slice(&new);
    }

    /// A descriptor is a C string, as QEMU and VMware read it: what follows
    /// its first NUL is not part of it.
    #[test]
    fn a_descriptor_ends_at_its_first_nul() {
        let text = b"# Disk DescriptorFile\nversion=1\nCID=89abcdef\nparentCID=ffffffff\n\
                     createType=\"streamOptimized\"\n\n# Extent description\nRW 49152 SPARSE \"disk1.vmdk\"\n\n\
                     ddb.toolsVersion = \"2147483647\"\n";
        let want = Descriptor::parse(text).unwrap();
        for (cid, tail) in [(0x0fff_ffff, &b""[..]), (0x00ff_ffff, b"\n"), (0x000f_ffff, b"\"\n"), (0x1ab, b"47\"\n")] {
            let mut desc = text.to_vec();
            desc.resize(20 * 512, 0);
            qemu_write_cid(&mut desc, cid);
            let after_nul = desc.split(|&b| b == 0).nth(1).unwrap();
            assert_eq!(after_nul, tail, "CID {cid:x}: the setup leaves what QEMU leaves");
            let d = Descriptor::parse(&desc).unwrap_or_else(|e| panic!("CID {cid:x}: {e}"));
            assert_eq!(d, want, "CID {cid:x}");
        }
    }

    fn header() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_le_bytes());
        b[8..12].copy_from_slice(&(FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS).to_le_bytes());
        b[12..20].copy_from_slice(&2048u64.to_le_bytes());
        b[20..28].copy_from_slice(&128u64.to_le_bytes());
        b[44..48].copy_from_slice(&512u32.to_le_bytes());
        b[56..64].copy_from_slice(&GD_AT_END.to_le_bytes());
        b[64..72].copy_from_slice(&1u64.to_le_bytes());
        b[73..77].copy_from_slice(&NEWLINE_CHECK);
        b[77..79].copy_from_slice(&COMPRESS_DEFLATE.to_le_bytes());
        b
    }

    #[test]
    fn header_checks() {
        let h = SparseHeader::parse(&header()).unwrap();
        assert_eq!((h.size(), h.grain_bytes(), h.grains()), (1 << 20, 64 << 10, 16));
        let mutate = |at: usize, bytes: &[u8]| {
            let mut b = header();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            SparseHeader::parse(&b).unwrap_err().to_string()
        };
        assert!(mutate(74, b"\n").contains("newline check"));
        assert!(mutate(20, &100u64.to_le_bytes()).contains("grain size of 100 sectors"));
        assert!(mutate(4, &7u32.to_le_bytes()).contains("version 7"));
        assert!(mutate(77, &2u16.to_le_bytes()).contains("compression algorithm 2"));
        assert!(mutate(64, &u64::MAX.to_le_bytes()).contains("metadata"));
        assert!(SparseHeader::parse(&header()[..100]).unwrap_err().to_string().contains("cut short"));
    }

    /// Tables shared by two directory entries would let a small file list
    /// billions of grains; an extent larger than the caller's limit is
    /// refused before its tables are read.
    #[test]
    fn shared_tables_and_oversized_extents_are_refused() {
        let mut file = header();
        // Monolithic sparse: 2 grain tables of 512 entries (64 MiB of
        // 64 KiB grains), the directory at sector 1, tables (4 sectors each)
        // at sectors 2 and 6.
        file[8..12].copy_from_slice(&FLAG_NEWLINE_TEST.to_le_bytes());
        file[4..8].copy_from_slice(&1u32.to_le_bytes());
        file[12..20].copy_from_slice(&(2 * 512 * 128u64).to_le_bytes());
        file[56..64].copy_from_slice(&1u64.to_le_bytes());
        file[64..72].copy_from_slice(&16u64.to_le_bytes());
        file.resize(16 * 512, 0);
        file[512..516].copy_from_slice(&2u32.to_le_bytes());
        file[516..520].copy_from_slice(&6u32.to_le_bytes());
        let mut disk = Vec::new();
        decode_sparse(&mut &file[..], &mut disk, 0, 64 << 20, None).unwrap();
        assert_eq!(disk.len(), 64 << 20, "no grain: all zeros");

        file[516..520].copy_from_slice(&3u32.to_le_bytes());
        let e = decode_sparse(&mut &file[..], &mut Vec::new(), 0, 64 << 20, None).unwrap_err().to_string();
        assert!(e.contains("grain tables 0 and 1 overlap"), "{e}");

        let e = decode_sparse(&mut &file[..], &mut Vec::new(), 4096, 64 << 20, None).unwrap_err().to_string();
        assert!(e.contains("goes past the 67108864 bytes the disk is declared to have"), "{e}");
    }

    /// A stream with markers, made by hand: grains out of order, a grain
    /// table, a footer and the end marker; the gaps read as zeros.
    #[test]
    fn decodes_a_stream_with_markers() {
        let zlib = |data: &[u8]| {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, data).unwrap();
            e.finish().unwrap()
        };
        let mut file = header();
        let pad = |f: &mut Vec<u8>| f.resize(f.len().div_ceil(512) * 512, 0);
        let grain = |f: &mut Vec<u8>, lba: u64, fill: u8| {
            let z = zlib(&vec![fill; 64 << 10]);
            f.extend(lba.to_le_bytes());
            f.extend((z.len() as u32).to_le_bytes());
            f.extend(z);
            pad(f);
        };
        let marker = |f: &mut Vec<u8>, sectors: u64, kind: u32| {
            let mut m = vec![0u8; 512];
            m[..8].copy_from_slice(&sectors.to_le_bytes());
            m[12..16].copy_from_slice(&kind.to_le_bytes());
            f.extend(m);
        };
        grain(&mut file, 1024, 0xaa);
        grain(&mut file, 256, 0xbb);
        marker(&mut file, 4, MARKER_GT);
        file.extend([0u8; 2048]);
        marker(&mut file, 1, MARKER_FOOTER);
        file.extend(header());
        marker(&mut file, 0, MARKER_EOS);
        let mut disk = vec![0x11u8; 2 << 20];
        let h = decode_sparse(&mut &file[..], &mut disk, 1 << 20, 2 << 20, None).unwrap();
        assert_eq!(h.size(), 1 << 20);
        let mut want = vec![0x11u8; 1 << 20];
        want.resize(2 << 20, 0);
        want[(1 << 20) + (256 << 9)..][..64 << 10].fill(0xbb);
        want[(1 << 20) + (1024 << 9)..][..64 << 10].fill(0xaa);
        assert!(disk == want);

        // A directory offset past the first grain (some writers fill it
        // in): the markers still rule.
        let mut later = file.clone();
        later[56..64].copy_from_slice(&200u64.to_le_bytes());
        let mut again = vec![0x11u8; 2 << 20];
        decode_sparse(&mut &later[..], &mut again, 1 << 20, 2 << 20, None).unwrap();
        assert!(again == want);

        // Without the end marker: refused.
        let cut = &file[..file.len() - 512];
        let e = decode_sparse(&mut &cut[..], &mut Vec::new(), 0, 1 << 20, None).unwrap_err();
        assert!(e.to_string().contains("without its end-of-stream marker"), "{e}");
    }

    /// What `qemu-img` makes, decoded and compared with its own raw
    /// conversion: stream-optimized, monolithic sparse with and without
    /// zeroed grains; then cut short, which the grain tables reveal.
    #[test]
    fn decodes_what_qemu_img_makes() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut raw = vec![0u8; 12 << 20];
        for (i, b) in raw.iter_mut().enumerate().take(3 << 20) {
            *b = (i * 7 / 4096) as u8 | 1;
        }
        raw[(9 << 20)..(9 << 20) + 100_000].fill(0x5a);
        raw.truncate((12 << 20) - 4096 * 3); // not a whole number of grains
        std::fs::write(d.join("a.raw"), &raw).unwrap();
        for (name, opts) in [
            ("stream", "subformat=streamOptimized"),
            ("sparse", "subformat=monolithicSparse"),
            ("zeroed", "subformat=monolithicSparse,zeroed_grain=on"),
        ] {
            let file = d.join(format!("{name}.vmdk"));
            let out = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "vmdk", "-o", opts])
                .arg(d.join("a.raw"))
                .arg(&file)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let vmdk = std::fs::read(&file).unwrap();
            let mut disk = vec![0xa5u8; raw.len() + 4096];
            let h = decode_sparse(&mut &vmdk[..], &mut disk, 0, raw.len() as u64, None)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(h.size(), raw.len() as u64, "{name}");
            assert!(disk[..raw.len()] == raw[..], "{name}: decoded image differs");
            assert!(disk[raw.len()..].iter().all(|&b| b == 0xa5), "{name}: wrote past the extent");

            // The CID rewritten in place by a later open and write, as
            // QEMU does: first a long one, then one 5 digits shorter, whose
            // old tail stays after the NUL.
            let mut stale = vmdk.clone();
            let desc = (h.desc_offset * SECTOR) as usize..((h.desc_offset + h.desc_size) * SECTOR) as usize;
            qemu_write_cid(&mut stale[desc.clone()], 0x89ab_cdef);
            qemu_write_cid(&mut stale[desc.clone()], 0x1ab);
            assert!(stale[desc].split(|&b| b == 0).nth(1).is_some_and(|t| !t.is_empty()), "{name}: no stale tail");
            let mut again = vec![0xa5u8; raw.len()];
            decode_sparse(&mut &stale[..], &mut again, 0, raw.len() as u64, None)
                .unwrap_or_else(|e| panic!("{name}, CID rewritten shorter: {e}"));
            assert!(again == raw, "{name}, CID rewritten shorter: decoded image differs");

            let cut = &vmdk[..vmdk.len() - 70_000];
            let e = decode_sparse(&mut &cut[..], &mut Vec::new(), 0, raw.len() as u64, None).unwrap_err().to_string();
            assert!(e.starts_with("corrupt vmdk image:") && e.contains("ends"), "{name}: {e}");
        }
    }
}
