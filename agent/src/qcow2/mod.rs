//! qcow2 decoded from a stream in one forward pass, never staged.
//!
//! The image arrives as a byte stream from offset 0. The decoder keeps a
//! set of *wants*, byte ranges of the file it knows what to do with: the L1
//! table, L2 tables, data clusters, compressed clusters. As the stream goes
//! by, each block that a want covers is acted on: tables are parsed (adding
//! wants), data is written to its guest offset.
//!
//! `qemu-img convert` writes each L2 table before the data it maps, so one
//! pass is enough. Other layouts (compressed images, resized images with the
//! L1 at the end, hand-made images) may put data before the table that
//! maps it; then, in order of preference:
//! 1. with Range requests available, the L1 and L2 tables are fetched up
//!    front (when they fit [`PREFETCH_BUDGET`]), so every want is known
//!    before the first data block;
//! 2. blocks no want covers yet are kept in a bounded look-back buffer
//!    ([`LOOKBACK_BUDGET`]) until all tables are known;
//! 3. data that fell out of the look-back buffer is fetched again with
//!    Range requests after the pass;
//! 4. without Range requests, that is an error, never an unbounded buffer.
//!
//! Every offset is checked against the file and the other structures, so a
//! corrupt image fails with a message and never writes outside the image's
//! virtual size (the sink refuses anything past the target's end).

pub mod header;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

pub use header::{Cluster, Compression, Header};

use crate::error::{DeployError, Result};
use crate::inflate::{Inflaters, Ordered};
use crate::progress::Progress;
use crate::sink::{is_zero, ImageSink};
use crate::source::RangeFetch;
use crate::util::{be64, read_full};

/// Most bytes of L2 tables fetched up front with Range requests; beyond
/// that the tables are read as the stream passes them. 2 MiB of tables map
/// 256 Ki clusters (16 GiB of data with 64 KiB clusters).
pub const PREFETCH_BUDGET: u64 = 2 << 20;
/// Most bytes kept of blocks nothing wants yet.
pub const LOOKBACK_BUDGET: usize = 16 << 20;

/// Memory bounds of the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`PREFETCH_BUDGET`]; 0 fetches nothing up front, not even L1.
    pub prefetch: u64,
    /// See [`LOOKBACK_BUDGET`].
    pub lookback: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { prefetch: PREFETCH_BUDGET, lookback: LOOKBACK_BUDGET }
    }
}
/// Most data clusters remembered for fetching again after the pass.
const MAX_REFETCH: usize = 1 << 18;
/// What a look-back entry costs besides its bytes (a zero block has none).
const LOOKBACK_ENTRY_COST: usize = 64;
/// Most wants pending at once (about 100 bytes each). `qemu-img convert`
/// layouts need at most one L2 table's worth (256 Ki entries with 2 MiB
/// clusters); prefetching is bounded by [`PREFETCH_BUDGET`].
const MAX_WANTS: usize = 1 << 19;
/// Most bytes held by wants spanning blocks (compressed clusters and L1).
const MAX_PARTIAL_BYTES: usize = 40 << 20;
/// Smallest block read from the stream at a time.
const MIN_BLOCK: u64 = 256 << 10;
/// Largest single Range request when fetching again.
const MAX_RANGE: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    L1,
    L2 { index: u64 },
    Data { guest: u64 },
    Compressed { guest: u64 },
}

impl Kind {
    fn is_meta(self) -> bool {
        matches!(self, Kind::L1 | Kind::L2 { .. })
    }

    fn describe(self) -> String {
        match self {
            Kind::L1 => "the L1 table".into(),
            Kind::L2 { index } => format!("L2 table {index}"),
            Kind::Data { guest } => format!("the data of guest offset {guest:#x}"),
            Kind::Compressed { guest } => format!("the compressed data of guest offset {guest:#x}"),
        }
    }
}

/// A byte range of the file and what it is.
#[derive(Debug, Clone, Copy)]
struct Want {
    start: u64,
    len: u64,
    kind: Kind,
}

/// Counters of one decode, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStats {
    /// L1/L2 tables fetched up front with Range requests.
    pub prefetched_tables: u64,
    /// Bytes fetched again with Range requests after the pass.
    pub refetched_bytes: u64,
    /// Wants served from the look-back buffer.
    pub lookback_hits: u64,
}

/// Streams one qcow2 image into a sink.
pub struct Decoder<'a> {
    h: Header,
    /// Every write goes through it; compressed clusters inflate on its
    /// threads.
    sink: Ordered<'a>,
    ranger: Option<&'a dyn RangeFetch>,
    file_len: Option<u64>,
    progress: Option<&'a Progress>,
    limits: Limits,
    /// Wants at or after the stream position, by (start, sequence).
    wants: BTreeMap<(u64, u64), Want>,
    seq: u64,
    /// Wants that started in an earlier block and continue.
    partials: Vec<(Want, Vec<u8>)>,
    l1_done: bool,
    l2_pending: u64,
    l2_offsets: BTreeSet<u64>,
    /// Blocks nobody wanted yet, by start offset (`None`: all zeros).
    lookback: BTreeMap<u64, Option<Vec<u8>>>,
    lookback_bytes: usize,
    refetch: Vec<Want>,
    block_start: u64,
    block: Vec<u8>,
    /// Bytes of the current block consumed by data wants.
    block_claimed: u64,
    stats: DecodeStats,
}

impl std::fmt::Debug for Decoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("header", &self.h).field("stats", &self.stats).finish()
    }
}

impl<'a> Decoder<'a> {
    /// A decoder for the image whose header is `h`. `ranger`, when given,
    /// reads ranges of the same file; `file_len` is its size when known.
    pub fn new(
        h: Header,
        sink: &'a mut dyn ImageSink,
        ranger: Option<&'a dyn RangeFetch>,
        file_len: Option<u64>,
        progress: Option<&'a Progress>,
    ) -> Self {
        Decoder {
            h,
            sink: Ordered::new(sink),
            ranger,
            file_len,
            progress,
            limits: Limits::default(),
            wants: BTreeMap::new(),
            seq: 0,
            partials: Vec::new(),
            l1_done: false,
            l2_pending: 0,
            l2_offsets: BTreeSet::new(),
            lookback: BTreeMap::new(),
            lookback_bytes: 0,
            refetch: Vec::new(),
            block_start: 0,
            block: Vec::new(),
            block_claimed: 0,
            stats: DecodeStats::default(),
        }
    }

    /// Replaces the default memory bounds.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Inflates compressed clusters on `threads` threads instead of one per
    /// core (1: on the decoding thread).
    pub fn with_inflate_threads(mut self, threads: usize) -> Self {
        self.sink.set_threads(threads);
        self
    }

    /// Decodes the whole image from `reader`, which yields the file from
    /// offset 0. Reads it to the end.
    pub fn run(mut self, reader: &mut dyn Read) -> Result<DecodeStats> {
        let decoded = self.decode(reader);
        // Clusters still inflating lie before whatever stopped the decoder:
        // their failure, if any, comes first in the stream.
        let written = self.sink.finish();
        written.and(decoded)
    }

    fn decode(&mut self, reader: &mut dyn Read) -> Result<DecodeStats> {
        let l1 = Want { start: self.h.l1_offset, len: self.h.l1_bytes(), kind: Kind::L1 };
        if self.h.l1_size == 0 {
            self.l1_done = true;
            self.sink.zero_at(0, self.h.size)?;
        } else if self.ranger.is_some() && self.limits.prefetch > 0 {
            self.prefetch()?;
        } else {
            self.add(l1)?;
        }
        self.stream(reader)?;
        self.finish_stream()?;
        self.fetch_again()?;
        Ok(self.stats)
    }

    fn metadata_complete(&self) -> bool {
        self.l1_done && self.l2_pending == 0
    }

    /// The offset of the next byte the stream will deliver.
    fn stream_pos(&self) -> u64 {
        self.block_start + self.block.len() as u64
    }

    /// Fetches the L1 table, then all L2 tables if they fit the budget.
    fn prefetch(&mut self) -> Result<()> {
        let Some(ranger) = self.ranger else { return Ok(()) };
        let l1 = Want { start: self.h.l1_offset, len: self.h.l1_bytes(), kind: Kind::L1 };
        let bytes = ranger.fetch(l1.start, l1.len)?;
        if (bytes.len() as u64) < l1.len {
            return Err(DeployError::corrupt_qcow2("the L1 table runs past the end of the file"));
        }
        self.stats.prefetched_tables += 1;
        self.process_meta(l1, &bytes)?;
        if self.l2_pending * self.h.cluster_size() > self.limits.prefetch {
            tracing::debug!(tables = self.l2_pending, "L2 tables exceed the prefetch budget; reading them in stream");
            return Ok(());
        }
        let tables: Vec<Want> = self.wants.values().copied().filter(|w| w.kind.is_meta()).collect();
        self.wants.retain(|_, w| !w.kind.is_meta());
        for (start, len, group) in coalesce(&tables, 0, MAX_RANGE) {
            let bytes = ranger.fetch(start, len)?;
            for w in group {
                let off = (w.start - start) as usize;
                let piece = bytes.get(off..off + w.len as usize).ok_or_else(|| {
                    DeployError::corrupt_qcow2(format!("{} runs past the end of the file", w.kind.describe()))
                })?;
                self.stats.prefetched_tables += 1;
                self.process_meta(w, piece)?;
            }
        }
        Ok(())
    }

    /// Registers a want: for later in the stream, or acted on now when its
    /// bytes have already gone by.
    fn add(&mut self, mut w: Want) -> Result<()> {
        let end = w.start.checked_add(w.len).ok_or_else(|| {
            DeployError::corrupt_qcow2(format!("{} has an impossible offset {:#x}", w.kind.describe(), w.start))
        })?;
        if let Some(file_len) = self.file_len {
            if w.start >= file_len || (end > file_len && !matches!(w.kind, Kind::Compressed { .. })) {
                return Err(DeployError::corrupt_qcow2(format!(
                    "{} at host offset {:#x} lies outside the file ({file_len} bytes)",
                    w.kind.describe(),
                    w.start
                )));
            }
            // A compressed length is an upper bound; the file may end first.
            w.len = w.len.min(file_len - w.start);
        }
        let pos = self.stream_pos();
        if w.start >= pos {
            if self.wants.len() >= MAX_WANTS {
                return Err(DeployError::Unstreamable {
                    detail: format!("more than {MAX_WANTS} clusters are mapped ahead of the stream"),
                });
            }
            self.seq += 1;
            self.wants.insert((w.start, self.seq), w);
            return Ok(());
        }
        if end <= pos {
            if let Some(bytes) = self.gather(w.start, w.len) {
                self.stats.lookback_hits += 1;
                return self.process(w, &bytes);
            }
        } else if let Some(prefix) = self.gather(w.start, pos - w.start) {
            // Started behind us, ends ahead: complete it from the stream.
            self.push_partial(w, prefix)?;
            return Ok(());
        }
        // Gone by and no longer buffered.
        match (self.ranger, w.kind.is_meta()) {
            (Some(r), true) => {
                let bytes = r.fetch(w.start, w.len)?;
                if (bytes.len() as u64) < w.len {
                    return Err(DeployError::corrupt_qcow2(format!(
                        "{} runs past the end of the file",
                        w.kind.describe()
                    )));
                }
                self.process_meta(w, &bytes)
            }
            (Some(_), false) if self.refetch.len() < MAX_REFETCH => {
                self.refetch.push(w);
                Ok(())
            }
            _ => Err(DeployError::Unstreamable {
                detail: format!(
                    "{} at offset {:#x} came {} bytes before the table that maps it",
                    w.kind.describe(),
                    w.start,
                    pos - w.start
                ),
            }),
        }
    }

    /// Copies `[start, start + len)` from the current block and the
    /// look-back buffer, if all of it is there.
    fn gather(&self, start: u64, len: u64) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len as usize);
        let end = start + len;
        let mut off = start;
        while off < end {
            if off >= self.block_start && off < self.stream_pos() {
                let from = (off - self.block_start) as usize;
                let n = ((end - off) as usize).min(self.block.len() - from);
                out.extend_from_slice(&self.block[from..from + n]);
                off += n as u64;
                continue;
            }
            let (&bstart, block) = self.lookback.range(..=off).next_back()?;
            let blen = block.as_ref().map_or(self.block_len(), |b| b.len() as u64);
            if off >= bstart + blen {
                return None;
            }
            let from = (off - bstart) as usize;
            let n = ((end - off).min(blen - from as u64)) as usize;
            match block {
                Some(b) => out.extend_from_slice(&b[from..from + n]),
                None => out.resize(out.len() + n, 0),
            }
            off += n as u64;
        }
        Some(out)
    }

    fn block_len(&self) -> u64 {
        self.h.cluster_size().max(MIN_BLOCK)
    }

    fn stream(&mut self, reader: &mut dyn Read) -> Result<()> {
        let block_len = self.block_len() as usize;
        let mut buf = vec![0u8; block_len];
        loop {
            if self.progress.is_some_and(|p| p.abort_requested()) {
                return Err(DeployError::Aborted);
            }
            // Stream offsets stay block aligned so look-back blocks are too.
            let n = read_full(reader, &mut buf)
                .map_err(|e| DeployError::from_read(e, |e| DeployError::corrupt_qcow2(format!("reading: {e}"))))?;
            if n == 0 {
                return Ok(());
            }
            self.block_start += self.block.len() as u64;
            std::mem::swap(&mut self.block, &mut buf);
            self.block.truncate(n);
            buf.resize(block_len, 0);
            self.block_claimed = 0;
            let keep_for_later = self.consume_block()?;
            if keep_for_later && !self.metadata_complete() {
                self.keep_block();
            }
            if self.metadata_complete() && !self.lookback.is_empty() {
                self.lookback.clear();
                self.lookback_bytes = 0;
            }
        }
    }

    /// Acts on every want the current block completes. Returns whether the
    /// block may still hold something not yet known to be wanted.
    fn consume_block(&mut self) -> Result<bool> {
        let (bstart, bend) = (self.block_start, self.stream_pos());
        let mut touched_other = false;
        // Wants that began in earlier blocks.
        let mut i = 0;
        while i < self.partials.len() {
            let (w, buf) = &mut self.partials[i];
            // A partial added while this block is processed already holds
            // its bytes up to the block's end: copy from where it stops.
            let from = (w.start + buf.len() as u64).saturating_sub(bstart).min(bend - bstart) as usize;
            let take = ((w.len - buf.len() as u64) as usize).min(self.block.len() - from);
            buf.extend_from_slice(&self.block[from..from + take]);
            touched_other = true;
            if buf.len() as u64 == w.len {
                let (w, buf) = self.partials.swap_remove(i);
                self.process(w, &buf)?;
            } else {
                i += 1;
            }
        }
        // Wants that begin in this block.
        while let Some(entry) = self.wants.first_entry() {
            if entry.key().0 >= bend {
                break;
            }
            let w = entry.remove();
            let from = (w.start - bstart) as usize;
            if w.start + w.len > bend {
                touched_other = true;
                let prefix = self.block[from..].to_vec();
                self.push_partial(w, prefix)?;
                continue;
            }
            if let Kind::Data { guest } = w.kind {
                self.block_claimed += w.len;
                write_data(&self.h, &mut self.sink, guest, &self.block[from..from + w.len as usize])?;
            } else {
                touched_other = true;
                let bytes = self.block[from..from + w.len as usize].to_vec();
                self.process(w, &bytes)?;
            }
        }
        Ok(touched_other || self.block_claimed < bend - bstart)
    }

    /// Keeps a want that continues in the next blocks, within bounds.
    fn push_partial(&mut self, w: Want, prefix: Vec<u8>) -> Result<()> {
        let held: usize = self.partials.iter().map(|(w, _)| w.len as usize).sum();
        if held + w.len as usize > MAX_PARTIAL_BYTES {
            return Err(DeployError::corrupt_qcow2(format!(
                "too many compressed clusters overlap at {:#x} (more than {} MiB in flight)",
                w.start,
                MAX_PARTIAL_BYTES >> 20
            )));
        }
        self.partials.push((w, prefix));
        Ok(())
    }

    fn keep_block(&mut self) {
        // Zero blocks are kept as `None`, full-size only (the last block
        // of the file may be short and is kept as bytes).
        let full = self.block.len() as u64 == self.block_len();
        let data = if full && is_zero(&self.block) { None } else { Some(self.block.clone()) };
        self.lookback_bytes += LOOKBACK_ENTRY_COST + data.as_ref().map_or(0, Vec::len);
        self.lookback.insert(self.block_start, data);
        while self.lookback_bytes > self.limits.lookback {
            let Some((_, dropped)) = self.lookback.pop_first() else { break };
            self.lookback_bytes -= LOOKBACK_ENTRY_COST + dropped.as_ref().map_or(0, Vec::len);
        }
    }

    /// After the last byte: whatever is still wanted lies past the end.
    fn finish_stream(&mut self) -> Result<()> {
        let eof = self.stream_pos();
        for (w, buf) in std::mem::take(&mut self.partials) {
            if matches!(w.kind, Kind::Compressed { .. }) {
                // The compressed length is an upper bound: try what there is.
                self.process(w, &buf)?;
            } else {
                return Err(DeployError::corrupt_qcow2(format!(
                    "{} at {:#x} is cut by the end of the file ({eof} bytes)",
                    w.kind.describe(),
                    w.start
                )));
            }
        }
        if let Some(w) = self.wants.values().next() {
            return Err(DeployError::corrupt_qcow2(format!(
                "{} at host offset {:#x} lies outside the file ({eof} bytes)",
                w.kind.describe(),
                w.start
            )));
        }
        if !self.metadata_complete() {
            return Err(DeployError::corrupt_qcow2("the image ended before all of its tables"));
        }
        Ok(())
    }

    /// Fetches, with Range requests, data that went by before its table.
    fn fetch_again(&mut self) -> Result<()> {
        if self.refetch.is_empty() {
            return Ok(());
        }
        let Some(ranger) = self.ranger else {
            return Err(DeployError::Internal("data to fetch again without Range support".into()));
        };
        let mut wants = std::mem::take(&mut self.refetch);
        wants.sort_by_key(|w| w.start);
        tracing::info!(clusters = wants.len(), "fetching data that preceded its L2 table");
        for (start, len, group) in coalesce(&wants, 64 << 10, MAX_RANGE) {
            let bytes = ranger.fetch(start, len)?;
            self.stats.refetched_bytes += bytes.len() as u64;
            for w in group {
                let off = (w.start - start) as usize;
                let end = (off + w.len as usize).min(bytes.len());
                let short = end < off + w.len as usize && !matches!(w.kind, Kind::Compressed { .. });
                if off >= end || short {
                    return Err(DeployError::corrupt_qcow2(format!(
                        "{} lies past the end of the file",
                        w.kind.describe()
                    )));
                }
                self.process(w, &bytes[off..end])?;
            }
        }
        Ok(())
    }

    fn process(&mut self, w: Want, bytes: &[u8]) -> Result<()> {
        match w.kind {
            Kind::L1 | Kind::L2 { .. } => self.process_meta(w, bytes),
            Kind::Data { guest } => write_data(&self.h, &mut self.sink, guest, bytes),
            Kind::Compressed { guest } => {
                let (compression, cs, host) = (self.h.compression, self.h.cluster_size() as usize, w.start);
                // Cut at the virtual size, as `write_data` does.
                let keep = (cs as u64).min(self.h.size.saturating_sub(guest)) as usize;
                let mut input = self.sink.buffer(bytes.len());
                input.extend_from_slice(bytes);
                self.sink.inflate(
                    guest,
                    input,
                    cs,
                    Box::new(move |inflaters, input, out| {
                        out.resize(cs, 0);
                        decompress(compression, inflaters, input, out)
                            .map_err(|e| DeployError::corrupt_qcow2(format!("compressed cluster at {host:#x}: {e}")))?;
                        out.truncate(keep);
                        Ok(())
                    }),
                )
            }
        }
    }

    fn process_meta(&mut self, w: Want, bytes: &[u8]) -> Result<()> {
        match w.kind {
            Kind::L1 => self.parse_l1(bytes),
            Kind::L2 { index } => {
                self.l2_pending -= 1;
                self.parse_l2(index, bytes)
            }
            _ => Ok(()),
        }
    }

    fn overlaps_l1(&self, start: u64, len: u64) -> bool {
        start < self.h.l1_offset + self.h.l1_bytes() && self.h.l1_offset < start + len
    }

    fn parse_l1(&mut self, bytes: &[u8]) -> Result<()> {
        self.l1_done = true;
        let (cs, per_l2, size) = (self.h.cluster_size(), self.h.bytes_per_l2(), self.h.size);
        for (i, raw) in bytes.chunks_exact(8).enumerate() {
            let index = i as u64;
            let guest = index * per_l2;
            if guest >= size {
                break;
            }
            let raw = be64(raw, 0);
            match self.h.l1_entry(raw, index)? {
                None => self.sink.zero_at(guest, per_l2.min(size - guest))?,
                Some(l2) => {
                    if l2 < cs || self.overlaps_l1(l2, cs) {
                        return Err(DeployError::corrupt_qcow2(format!(
                            "L1 entry {index} points to {l2:#x}, inside the header or the L1 table"
                        )));
                    }
                    if !self.l2_offsets.insert(l2) {
                        return Err(DeployError::corrupt_qcow2(format!(
                            "L1 entry {index} points to L2 table {l2:#x}, which another entry uses too"
                        )));
                    }
                    self.l2_pending += 1;
                    self.add(Want { start: l2, len: cs, kind: Kind::L2 { index } })?;
                }
            }
        }
        Ok(())
    }

    fn check_data(&self, host: u64, len: u64, guest: u64) -> Result<()> {
        let cs = self.h.cluster_size();
        let cluster = host / cs * cs;
        if host < cs || self.overlaps_l1(host, len) || self.l2_offsets.contains(&cluster) {
            return Err(DeployError::corrupt_qcow2(format!(
                "the data of guest offset {guest:#x} is at {host:#x}, inside the header or a table"
            )));
        }
        Ok(())
    }

    fn parse_l2(&mut self, index: u64, bytes: &[u8]) -> Result<()> {
        let (cs, size) = (self.h.cluster_size(), self.h.size);
        let entry_len = self.h.l2_entry_len() as usize;
        let base = index * self.h.bytes_per_l2();
        for (j, e) in bytes.chunks_exact(entry_len).enumerate() {
            let guest = base + j as u64 * cs;
            if guest >= size {
                break;
            }
            let raw = be64(e, 0);
            let bitmap = if entry_len == 16 { be64(e, 8) } else { 0 };
            let span = cs.min(size - guest);
            match self.h.l2_entry(raw, bitmap, guest)? {
                Cluster::Zero => self.sink.zero_at(guest, span)?,
                Cluster::Data { host } => {
                    self.check_data(host, cs, guest)?;
                    self.add(Want { start: host, len: cs, kind: Kind::Data { guest } })?;
                }
                Cluster::Compressed { host, len } => {
                    if host < cs {
                        return Err(DeployError::corrupt_qcow2(format!(
                            "compressed data of guest offset {guest:#x} is inside the header"
                        )));
                    }
                    self.add(Want { start: host, len, kind: Kind::Compressed { guest } })?;
                }
                Cluster::Subclusters { host, alloc } => {
                    self.check_data(host, cs, guest)?;
                    let sc = cs / 32;
                    let mut i = 0u64;
                    while i < 32 {
                        let allocated = alloc & (1 << i) != 0;
                        let mut j = i + 1;
                        while j < 32 && (alloc & (1 << j) != 0) == allocated {
                            j += 1;
                        }
                        let g = guest + i * sc;
                        if g < size {
                            if allocated {
                                let kind = Kind::Data { guest: g };
                                self.add(Want { start: host + i * sc, len: (j - i) * sc, kind })?;
                            } else {
                                self.sink.zero_at(g, ((j - i) * sc).min(size - g))?;
                            }
                        }
                        i = j;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes a cluster (or subcluster run) at `guest`, cut at the virtual size.
fn write_data(h: &Header, sink: &mut dyn ImageSink, guest: u64, bytes: &[u8]) -> Result<()> {
    let n = (bytes.len() as u64).min(h.size.saturating_sub(guest)) as usize;
    sink.write_at(guest, &bytes[..n])
}

/// Decompresses one cluster; it must fill `out` exactly.
fn decompress(
    compression: Compression,
    inflaters: &mut Inflaters,
    input: &[u8],
    out: &mut [u8],
) -> std::result::Result<(), String> {
    match compression {
        Compression::Deflate => {
            let inflate = inflaters.deflate(false);
            inflate.decompress(input, out, flate2::FlushDecompress::Finish).map_err(|e| e.to_string())?;
            if inflate.total_out() != out.len() as u64 {
                return Err(format!("inflates to {} bytes instead of {}", inflate.total_out(), out.len()));
            }
            Ok(())
        }
        // As QEMU's qcow2_zstd_decompress: stream (the cluster may hold
        // several frames) until the output is full; a frame that goes on
        // past the cluster is an error.
        Compression::Zstd => {
            use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
            let mut d = Decoder::new().map_err(|e| e.to_string())?;
            let mut src = InBuffer::around(input);
            let mut dst = OutBuffer::around(out);
            let mut hint = 0;
            while dst.pos() < dst.capacity() {
                hint = d.run(&mut src, &mut dst).map_err(|e| e.to_string())?;
                if dst.pos() < dst.capacity() && src.pos() == input.len() {
                    return Err(format!("ends after {} of {} bytes", dst.pos(), dst.capacity()));
                }
            }
            if hint > 0 {
                return Err("a frame goes on past the end of the cluster".into());
            }
            Ok(())
        }
    }
}

/// Groups sorted wants into ranges of at most `max` bytes, merging wants
/// separated by at most `gap` bytes.
fn coalesce(wants: &[Want], gap: u64, max: u64) -> Vec<(u64, u64, Vec<Want>)> {
    let mut sorted = wants.to_vec();
    sorted.sort_by_key(|w| w.start);
    let mut out: Vec<(u64, u64, Vec<Want>)> = Vec::new();
    for w in sorted {
        if let Some((start, len, group)) = out.last_mut() {
            let end = *start + *len;
            let new_end = (w.start + w.len).max(end);
            if w.start <= end + gap && new_end - *start <= max {
                *len = new_end - *start;
                group.push(w);
                continue;
            }
        }
        out.push((w.start, w.len, vec![w]));
    }
    out
}

/// Reads the image's first `len` guest bytes with Range requests (its
/// partition tables, for checks made before anything is written).
pub fn read_guest_prefix(h: &Header, ranger: &dyn RangeFetch, len: u64) -> Result<Vec<u8>> {
    let len = len.min(h.size);
    let cs = h.cluster_size();
    let mut out = vec![0u8; len as usize];
    let mut inflaters = Inflaters::default();
    let mut cluster = vec![0u8; cs as usize];
    let mut l2_cache: Option<(u64, Vec<u8>)> = None;
    let mut guest = 0u64;
    while guest < len {
        let l1_index = guest / h.bytes_per_l2();
        let raw = ranger.fetch(h.l1_offset + 8 * l1_index, 8)?;
        let raw =
            u64::from_be_bytes(raw.as_slice().try_into().map_err(|_| DeployError::corrupt_qcow2("short L1 table"))?);
        let span = cs.min(len - guest) as usize;
        let Some(l2) = h.l1_entry(raw, l1_index)? else {
            guest += cs;
            continue;
        };
        if l2_cache.as_ref().is_none_or(|(o, _)| *o != l2) {
            l2_cache = Some((l2, ranger.fetch(l2, cs)?));
        }
        let table = l2_cache.as_ref().map(|(_, t)| t.as_slice()).unwrap_or_default();
        let at = ((guest % h.bytes_per_l2()) / cs * h.l2_entry_len()) as usize;
        let entry = table
            .get(at..at + h.l2_entry_len() as usize)
            .ok_or_else(|| DeployError::corrupt_qcow2("short L2 table"))?;
        let raw = be64(entry, 0);
        let bitmap = if entry.len() == 16 { be64(entry, 8) } else { 0 };
        let dst = &mut out[guest as usize..guest as usize + span];
        match h.l2_entry(raw, bitmap, guest)? {
            Cluster::Zero => {}
            Cluster::Data { host } => {
                let data = ranger.fetch(host, span as u64)?;
                dst[..data.len().min(span)].copy_from_slice(&data[..data.len().min(span)]);
            }
            Cluster::Subclusters { host, alloc } => {
                let data = ranger.fetch(host, span as u64)?;
                let sc = (cs / 32) as usize;
                for (i, piece) in dst.chunks_mut(sc).enumerate() {
                    if alloc & (1 << i) != 0 {
                        let from = (i * sc).min(data.len());
                        let n = piece.len().min(data.len() - from);
                        piece[..n].copy_from_slice(&data[from..from + n]);
                    }
                }
            }
            Cluster::Compressed { host, len: clen } => {
                let data = ranger.fetch(host, clen)?;
                decompress(h.compression, &mut inflaters, &data, &mut cluster)
                    .map_err(|e| DeployError::corrupt_qcow2(format!("compressed cluster at {host:#x}: {e}")))?;
                dst.copy_from_slice(&cluster[..span]);
            }
        }
        guest += cs;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    struct MemRanger(Vec<u8>);

    impl RangeFetch for MemRanger {
        fn fetch(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
            let start = (offset as usize).min(self.0.len());
            let end = (offset + len).min(self.0.len() as u64) as usize;
            Ok(self.0[start..end].to_vec())
        }
    }

    fn qemu_img(args: &[&str], dir: &Path) {
        let out = Command::new("qemu-img").args(args).current_dir(dir).output().expect("qemu-img");
        assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A qcow2 with 4 KiB clusters resized so that its L1 table moved to
    /// the end of the file: every table comes after data it maps.
    fn l1_at_end(dir: &Path) -> (Vec<u8>, Vec<u8>) {
        let mut raw = vec![0u8; 8 << 20];
        for (i, b) in raw.iter_mut().enumerate().step_by(3) {
            *b = (i / 4096 % 251) as u8 + 1;
        }
        std::fs::write(dir.join("a.raw"), &raw).unwrap();
        qemu_img(&["convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", "a.raw", "a.qcow2"], dir);
        qemu_img(&["resize", "a.qcow2", "64M"], dir);
        qemu_img(&["convert", "-O", "raw", "a.qcow2", "want.raw"], dir);
        let q = std::fs::read(dir.join("a.qcow2")).unwrap();
        let h = Header::parse(&q, Some(q.len() as u64)).unwrap();
        assert!(h.l1_offset > (8 << 20), "the resize did not move the L1 table ({:#x})", h.l1_offset);
        (q, std::fs::read(dir.join("want.raw")).unwrap())
    }

    fn decode(q: &[u8], ranger: Option<&dyn RangeFetch>, limits: Limits) -> Result<(Vec<u8>, DecodeStats)> {
        let h = Header::parse(q, Some(q.len() as u64))?;
        let mut out = vec![0xa5u8; h.size as usize];
        let stats =
            Decoder::new(h, &mut out, ranger, Some(q.len() as u64), None).with_limits(limits).run(&mut &q[..])?;
        Ok((out, stats))
    }

    #[test]
    fn tables_after_data_use_the_lookback_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let (q, want) = l1_at_end(dir.path());
        let (got, stats) = decode(&q, None, Limits::default()).unwrap();
        assert!(got == want, "decoded image differs from qemu-img's");
        assert!(stats.lookback_hits > 0);
    }

    #[test]
    fn tables_after_data_beyond_the_buffer_are_refetched_with_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (q, want) = l1_at_end(dir.path());
        let ranger = MemRanger(q.clone());
        let limits = Limits { prefetch: 0, lookback: 64 << 10 };
        let (got, stats) = decode(&q, Some(&ranger), limits).unwrap();
        assert!(got == want, "decoded image differs from qemu-img's");
        assert!(stats.refetched_bytes >= 7 << 20, "{stats:?}");
    }

    #[test]
    fn tables_after_data_without_ranges_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = l1_at_end(dir.path());
        let e = decode(&q, None, Limits { prefetch: 0, lookback: 64 << 10 }).unwrap_err();
        assert!(matches!(e, DeployError::Unstreamable { .. }), "{e}");
        assert!(e.to_string().starts_with("qcow2 metadata follows its data"), "{e}");
    }

    /// Compressed clusters decode alike inline and on several threads, and
    /// a corrupt one stops the writes at the same place with the same
    /// message: the order of writes does not depend on the threads.
    #[test]
    fn compressed_clusters_inflate_alike_on_one_and_many_threads() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = vec![0u8; 6 << 20];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for (i, chunk) in raw.chunks_mut(4096).enumerate() {
            match i % 5 {
                // Random: stored uncompressed by qemu-img, between the
                // compressed clusters.
                0 => chunk.iter_mut().for_each(|b| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }),
                1 | 2 => chunk.iter_mut().enumerate().for_each(|(j, b)| *b = b"byoi inflates "[(i + j) % 14]),
                _ => {}
            }
        }
        std::fs::write(dir.path().join("a.raw"), &raw).unwrap();
        qemu_img(
            &["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", "a.raw", "a.qcow2"],
            dir.path(),
        );
        let q = std::fs::read(dir.path().join("a.qcow2")).unwrap();
        let run = |q: &[u8], threads: usize| {
            let h = Header::parse(q, Some(q.len() as u64)).unwrap();
            let mut out = vec![0xa5u8; h.size as usize];
            let r = Decoder::new(h, &mut out, None, Some(q.len() as u64), None)
                .with_inflate_threads(threads)
                .run(&mut &q[..])
                .map(|_| ());
            (r, out)
        };
        for threads in [1, 4] {
            let (r, out) = run(&q, threads);
            r.unwrap();
            assert!(out == raw, "{threads} threads: decoded image differs");
        }
        // Garbage in the middle of a compressed cluster near the middle.
        let h = Header::parse(&q, Some(q.len() as u64)).unwrap();
        let (mut bad, mut found) = (q.clone(), None);
        for guest in (3 << 20..).step_by(4096) {
            let l1 = (h.l1_offset + guest / h.bytes_per_l2() * 8) as usize;
            let l2 = be64(&q, l1) & 0x00ff_ffff_ffff_fe00;
            let entry = be64(&q, (l2 + guest % h.bytes_per_l2() / 4096 * 8) as usize);
            if let Cluster::Compressed { host, .. } = h.l2_entry(entry, 0, guest).unwrap() {
                found = Some(host);
                break;
            }
        }
        let host = found.expect("a compressed cluster past 3 MiB") as usize;
        bad[host..host + 64].fill(0xff);
        let (r1, out1) = run(&bad, 1);
        let (r4, out4) = run(&bad, 4);
        let (e1, e4) = (r1.unwrap_err().to_string(), r4.unwrap_err().to_string());
        assert!(e1.starts_with(&format!("corrupt qcow2 image: compressed cluster at {host:#x}")), "{e1}");
        assert_eq!(e1, e4);
        assert!(out1 == out4, "the writes before the corrupt cluster differ");
        assert!(out1[..1 << 20] == raw[..1 << 20] && out1[(5 << 20)..].iter().all(|&b| b == 0xa5));
    }
}
