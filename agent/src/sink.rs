//! The disk side of the pipeline: [`ImageSink`], what decoders write guest
//! bytes to, and [`DiskWriter`], the sink that turns those writes into large
//! writes and zeroing on a [`Target`], holding back the first and last MiB,
//! and [`Overlay`], the `Read + Write + Seek` view the finishing steps patch
//! the disk through.
//!
//! Nothing here opens a device; [`crate::target`] does.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::error::{DeployError, Result};
use crate::util::{read_full, GPT_SIGNATURE};

/// Bytes at the start and at the end of the disk that are kept in memory
/// until the very end, so that the partition tables (primary and backup
/// GPT) and boot code only land once everything else is on disk and
/// verified.
pub const HOLD_BACK: u64 = 1 << 20;

/// Zero detection granularity: a block this size (aligned on the disk) that
/// is all zeros is zeroed (hole punched, BLKZEROOUT) instead of written.
pub const ZERO_GRAIN: u64 = 64 << 10;

/// Largest single write: big enough for the device to stream, small enough
/// to keep memory flat.
const MAX_RUN: usize = 4 << 20;

/// Where decoders put the image's bytes, addressed by offset in the image.
pub trait ImageSink {
    /// Writes `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// Makes `[offset, offset + len)` read as zeros.
    fn zero_at(&mut self, offset: u64, len: u64) -> Result<()>;
}

/// An in-memory sink, for tests and for decoding small images.
impl ImageSink for Vec<u8> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| DeployError::Internal("offset overflow".into()))?;
        let end = start + data.len();
        if self.len() < end {
            self.resize(end, 0);
        }
        self[start..end].copy_from_slice(data);
        Ok(())
    }

    fn zero_at(&mut self, offset: u64, len: u64) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| DeployError::Internal("offset overflow".into()))?;
        let end = start + usize::try_from(len).map_err(|_| DeployError::Internal("length overflow".into()))?;
        if self.len() < end {
            self.resize(end, 0);
        }
        self[start..end].fill(0);
        Ok(())
    }
}

/// Alignment of memory, offset and length for `O_DIRECT` writes: a page,
/// which covers every logical block size up to 4Kn. The writer's runs start
/// on it, so that a [`Target`] can write them without a copy.
pub const DIRECT_ALIGN: usize = 4096;

/// A disk (block device or regular file) as the writer needs it.
pub trait Target: Send + Sync {
    /// Path, for messages.
    fn path(&self) -> &str;
    /// Size in bytes; never changes.
    fn size(&self) -> u64;
    /// Logical sector size in bytes.
    fn logical_sector_size(&self) -> u32;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Makes a range read as zeros, as cheaply as the target allows.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Flushes everything to stable storage.
    fn sync(&self) -> io::Result<()>;
    /// Tells the kernel the partition table changed (block devices only).
    fn reread_partitions(&self) -> io::Result<()>;
    /// Another handle on the same disk (duplicated descriptors), for the
    /// [`DiskWriter`]'s write-behind thread; `None` keeps its writes on the
    /// caller's thread.
    fn write_behind(&self) -> Option<Box<dyn Target>> {
        None
    }
}

/// Bytes a plain copy ([`copy_at`]) moves per read and write.
const COPY_CHUNK: usize = 1 << 20;

/// Copies `r` to `sink` from offset `base`, up to `len` bytes or the end of
/// `r`, whichever comes first; returns the bytes copied. Stops when
/// `progress` asks for an abort; read errors become `read_err`'s.
pub fn copy_at(
    r: &mut dyn Read,
    sink: &mut dyn ImageSink,
    base: u64,
    len: u64,
    progress: Option<&crate::progress::Progress>,
    read_err: impl Fn(io::Error) -> DeployError,
) -> Result<u64> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut done = 0u64;
    while done < len {
        if progress.is_some_and(|p| p.abort_requested()) {
            return Err(DeployError::Aborted);
        }
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = read_full(r, &mut buf[..want]).map_err(&read_err)?;
        if n == 0 {
            break;
        }
        sink.write_at(base + done, &buf[..n])?;
        done += n as u64;
    }
    Ok(done)
}

/// Returns true if every byte of `buf` is zero. Checks a short prefix first
/// (data blocks rarely start with zeros), then vectorisable chunks.
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, rest) = buf.split_at(buf.len().min(16));
    if head.iter().any(|&b| b != 0) {
        return false;
    }
    rest.chunks(512).all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// A byte buffer of fixed capacity whose start is [`DIRECT_ALIGN`]-aligned,
/// so that runs of page-aligned data can be written with `O_DIRECT`.
#[derive(Debug, Default)]
struct AlignedBuf {
    raw: Vec<u8>,
    /// Where the aligned part of `raw` starts.
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn with_capacity(capacity: usize) -> Self {
        let raw = vec![0u8; capacity + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.raw.len().saturating_sub(DIRECT_ALIGN)
    }

    fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `data`; the caller keeps within the capacity.
    fn extend_from_slice(&mut self, data: &[u8]) {
        let at = self.start + self.len;
        self.raw[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }
}

#[derive(Debug, Default)]
struct Run {
    start: u64,
    data: AlignedBuf,
    zero_len: u64,
}

/// Statistics of a finished write.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Bytes written as data.
    pub data_bytes: u64,
    /// Bytes zeroed without writing data.
    pub zeroed_bytes: u64,
}

/// A run handed to the write-behind thread, or zeroing.
enum Behind {
    Data { start: u64, buf: AlignedBuf },
    Zero { start: u64, len: u64 },
}

/// The write-behind thread: runs are written on it, in order, while the
/// decoder fills the next one, so that a decoder is never blocked on the
/// disk unless the disk is the slower. One data run in flight at a time:
/// two run buffers in all.
struct WriteBehind {
    ops: Option<std::sync::mpsc::SyncSender<Behind>>,
    /// Each op's outcome, with its buffer back for data.
    done: std::sync::mpsc::Receiver<(Option<AlignedBuf>, io::Result<()>)>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// Ops sent and not yet answered.
    pending: usize,
    /// Whether a data run is in flight.
    data_in_flight: bool,
}

/// Zero ops queued ahead of the write-behind thread before the writer waits.
const BEHIND_QUEUE: usize = 64;

impl WriteBehind {
    fn start(target: Box<dyn Target>) -> io::Result<WriteBehind> {
        let (ops, rx) = std::sync::mpsc::sync_channel::<Behind>(BEHIND_QUEUE);
        let (done_tx, done) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new().name("byoi-write".into()).spawn(move || {
            for op in rx {
                let outcome = match op {
                    Behind::Data { start, buf } => {
                        let r = target.write_all_at(buf.as_slice(), start);
                        (Some(buf), r)
                    }
                    Behind::Zero { start, len } => (None, target.zero_range(start, len)),
                };
                if done_tx.send(outcome).is_err() {
                    return;
                }
            }
        })?;
        Ok(WriteBehind { ops: Some(ops), done, handle: Some(handle), pending: 0, data_in_flight: false })
    }

    fn send(&mut self, op: Behind) -> io::Result<()> {
        let gone = || io::Error::other("the write-behind thread is gone");
        let is_data = matches!(op, Behind::Data { .. });
        self.ops.as_ref().ok_or_else(gone)?.send(op).map_err(|_| gone())?;
        self.pending += 1;
        self.data_in_flight |= is_data;
        Ok(())
    }

    /// Takes one answer: the buffer of a data run, if it was one.
    fn answer(&mut self) -> io::Result<Option<AlignedBuf>> {
        let (buf, r) = self.done.recv().map_err(|_| io::Error::other("the write-behind thread is gone"))?;
        self.pending -= 1;
        if buf.is_some() {
            self.data_in_flight = false;
        }
        r.map(|()| buf)
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.ops = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Writes an image onto a [`Target`]: coalesces writes, zeroes zero blocks
/// instead of writing them, keeps the first and last [`HOLD_BACK`] bytes in
/// memory until [`DiskWriter::commit`], and refuses to write past the end.
/// When the target offers [`Target::write_behind`], runs are written on a
/// thread of their own; a failed write is reported by a later call, and
/// everything is on the target before [`DiskWriter::overlay`] and
/// [`DiskWriter::commit`] go on.
pub struct DiskWriter<'t> {
    target: &'t dyn Target,
    /// `qcow2` or `raw`: how OVH names the failing write.
    format: &'static str,
    /// The disk's first bytes.
    hold: Vec<u8>,
    /// The disk's last bytes, from `tail_start` to the end.
    tail: Vec<u8>,
    tail_start: u64,
    run: Run,
    stats: WriteStats,
    /// Started at the first flush; `None` after, when the target has no
    /// second handle.
    behind: Option<WriteBehind>,
    tried_behind: bool,
    /// A run buffer back from the write-behind thread.
    spare: Option<AlignedBuf>,
}

/// Where a byte of the disk lives until commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Head,
    Middle,
    Tail,
}

impl std::fmt::Debug for DiskWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWriter").field("target", &self.target.path()).field("stats", &self.stats).finish()
    }
}

impl<'t> DiskWriter<'t> {
    /// A writer for `target`; `format` names the image type in errors.
    pub fn new(target: &'t dyn Target, format: &'static str) -> Self {
        let size = target.size();
        let hold_len = HOLD_BACK.min(size);
        let tail_start = size.saturating_sub(HOLD_BACK).max(hold_len);
        DiskWriter {
            target,
            format,
            hold: vec![0; hold_len as usize],
            tail: vec![0; (size - tail_start) as usize],
            tail_start,
            run: Run::default(),
            stats: WriteStats::default(),
            behind: None,
            tried_behind: false,
            spare: None,
        }
    }

    /// The region `offset` is in, and how many bytes from it (at most
    /// `len`) stay in that region.
    fn region(&self, offset: u64, len: u64) -> (Region, u64) {
        let head_end = self.hold.len() as u64;
        if offset < head_end {
            (Region::Head, len.min(head_end - offset))
        } else if offset >= self.tail_start {
            (Region::Tail, len)
        } else {
            (Region::Middle, len.min(self.tail_start - offset))
        }
    }

    /// The target being written.
    pub fn target(&self) -> &'t dyn Target {
        self.target
    }

    /// A `Read + Write + Seek` view of the whole disk as it will be after
    /// commit: held-back bytes come from memory, the rest from the target.
    /// Pending writes are flushed first.
    pub fn overlay(&mut self) -> Result<Overlay<'_, 't>> {
        self.flush()?;
        self.drain()?;
        Ok(Overlay { w: self, pos: 0 })
    }

    fn write_err(&self, source: io::Error) -> DeployError {
        DeployError::Write { format: self.format, source }
    }

    fn check_bounds(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.target.size() => Ok(()),
            end => Err(DeployError::ImageTooLarge {
                image: end.unwrap_or(u64::MAX),
                lower_bound: true,
                device: self.target.path().to_owned(),
                disk: self.target.size(),
            }),
        }
    }

    /// Zeroes the first and last [`HOLD_BACK`] bytes of the target and
    /// syncs, so that nothing on it can boot while the image is written
    /// (not even an old backup GPT).
    pub fn wipe_ends(&self) -> Result<()> {
        wipe_ends(self.target).map_err(|e| self.write_err(e))
    }

    /// The held-back first bytes, for finishing steps that patch the
    /// partition table.
    pub fn held(&mut self) -> &mut [u8] {
        &mut self.hold
    }

    /// Flushes pending writes (not the held-back bytes): hands them to the
    /// write-behind thread, or writes them.
    pub fn flush(&mut self) -> Result<()> {
        if !self.tried_behind && (!self.run.data.is_empty() || self.run.zero_len > 0) {
            self.tried_behind = true;
            self.behind = self.target.write_behind().and_then(|t| WriteBehind::start(t).ok());
        }
        if !self.run.data.is_empty() {
            let len = self.run.data.len as u64;
            if self.behind.is_some() {
                let next = self.free_run_buffer()?;
                let buf = std::mem::replace(&mut self.run.data, next);
                let op = Behind::Data { start: self.run.start, buf };
                self.send_behind(op)?;
            } else {
                let r = self.target.write_all_at(self.run.data.as_slice(), self.run.start);
                r.map_err(|e| self.write_err(e))?;
                self.run.data.clear();
            }
            self.stats.data_bytes += len;
        }
        if self.run.zero_len > 0 {
            let (start, len) = (self.run.start, self.run.zero_len);
            if self.behind.is_some() {
                self.send_behind(Behind::Zero { start, len })?;
            } else {
                self.target.zero_range(start, len).map_err(|e| self.write_err(e))?;
            }
            self.stats.zeroed_bytes += len;
            self.run.zero_len = 0;
        }
        Ok(())
    }

    fn send_behind(&mut self, op: Behind) -> Result<()> {
        let Some(b) = self.behind.as_mut() else { return Ok(()) };
        let r = b.send(op);
        r.map_err(|e| self.write_err(e))
    }

    /// An empty run buffer: the spare one, or the one in flight once it is
    /// written (answers of zeroing on the way), or a new one.
    fn free_run_buffer(&mut self) -> Result<AlignedBuf> {
        loop {
            if let Some(mut b) = self.spare.take() {
                b.clear();
                return Ok(b);
            }
            let Some(behind) = self.behind.as_mut() else { break };
            if !behind.data_in_flight {
                break;
            }
            let r = behind.answer();
            self.spare = r.map_err(|e| self.write_err(e))?;
        }
        Ok(AlignedBuf::with_capacity(MAX_RUN))
    }

    /// Waits until the write-behind thread has done everything sent to it.
    fn drain(&mut self) -> Result<()> {
        while let Some(behind) = self.behind.as_mut().filter(|b| b.pending > 0) {
            let r = behind.answer();
            if let Some(buf) = r.map_err(|e| self.write_err(e))? {
                self.spare = Some(buf);
            }
        }
        Ok(())
    }

    fn push_data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let contiguous = !self.run.data.is_empty() && self.run.start + self.run.data.len as u64 == offset;
        if self.run.zero_len > 0 || !contiguous || self.run.data.len + data.len() > MAX_RUN {
            self.flush()?;
            self.run.start = offset;
        }
        if self.run.data.capacity() == 0 {
            self.run.data = AlignedBuf::with_capacity(MAX_RUN);
        }
        self.run.data.extend_from_slice(data);
        Ok(())
    }

    fn push_zero(&mut self, offset: u64, len: u64) -> Result<()> {
        let contiguous = self.run.zero_len > 0 && self.run.start + self.run.zero_len == offset;
        if !self.run.data.is_empty() || !contiguous {
            self.flush()?;
            self.run.start = offset;
        }
        self.run.zero_len += len;
        Ok(())
    }

    /// Finishes the image: flushes, syncs, checks the partition table fits
    /// the target's sector size, writes the held-back last MiB and then the
    /// first MiB (without which nothing on the disk counts as partitioned),
    /// syncs again and has the kernel re-read the partition table.
    pub fn commit(&mut self) -> Result<WriteStats> {
        self.flush()?;
        self.drain()?;
        check_sector_size(&self.hold, self.target)?;
        self.target.sync().map_err(|e| self.write_err(e))?;
        self.target.write_all_at(&self.tail, self.tail_start).map_err(|e| self.write_err(e))?;
        self.target.write_all_at(&self.hold, 0).map_err(|e| self.write_err(e))?;
        self.target.sync().map_err(|e| self.write_err(e))?;
        if let Err(e) = self.target.reread_partitions() {
            // A busy disk keeps its old view until the next boot; the data
            // is on disk either way.
            tracing::warn!(target = self.target.path(), error = %e, "re-reading the partition table failed");
        }
        self.stats.data_bytes += (self.hold.len() + self.tail.len()) as u64;
        Ok(self.stats)
    }
}

impl DiskWriter<'_> {
    fn write_middle(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let mut off = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let grain_end = (off / ZERO_GRAIN + 1) * ZERO_GRAIN;
            let n = ((grain_end - off) as usize).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            if is_zero(piece) {
                self.push_zero(off, n as u64)?;
            } else {
                self.push_data(off, piece)?;
            }
            off += n as u64;
            rest = tail;
        }
        Ok(())
    }
}

impl ImageSink for DiskWriter<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_bounds(offset, data.len() as u64)?;
        let mut off = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let (region, n) = self.region(off, rest.len() as u64);
            let (piece, tail) = rest.split_at(n as usize);
            match region {
                Region::Head => self.hold[off as usize..off as usize + piece.len()].copy_from_slice(piece),
                Region::Tail => {
                    let at = (off - self.tail_start) as usize;
                    self.tail[at..at + piece.len()].copy_from_slice(piece);
                }
                Region::Middle => self.write_middle(off, piece)?,
            }
            off += n;
            rest = tail;
        }
        Ok(())
    }

    fn zero_at(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_bounds(offset, len)?;
        let (mut off, end) = (offset, offset + len);
        while off < end {
            let (region, n) = self.region(off, end - off);
            match region {
                Region::Head => self.hold[off as usize..(off + n) as usize].fill(0),
                Region::Tail => {
                    let at = (off - self.tail_start) as usize;
                    self.tail[at..at + n as usize].fill(0);
                }
                Region::Middle => self.push_zero(off, n)?,
            }
            off += n;
        }
        Ok(())
    }
}

/// The disk as the finishing steps see it: `Read + Write + Seek` over the
/// whole target, the held-back regions in memory. Writes to the middle go
/// straight to the target.
pub struct Overlay<'w, 't> {
    w: &'w mut DiskWriter<'t>,
    pos: u64,
}

impl std::fmt::Debug for Overlay<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("target", &self.w.target.path()).field("pos", &self.pos).finish()
    }
}

impl Overlay<'_, '_> {
    /// Size of the disk.
    pub fn size(&self) -> u64 {
        self.w.target.size()
    }

    /// Logical sector size of the disk.
    pub fn sector_size(&self) -> u32 {
        self.w.target.logical_sector_size()
    }
}

impl Overlay<'_, '_> {
    /// Reads up to `buf.len()` bytes from one region.
    fn read_region(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.size();
        if self.pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(size - self.pos);
        let (region, n) = self.w.region(self.pos, want);
        let out = &mut buf[..n as usize];
        match region {
            Region::Head => out.copy_from_slice(&self.w.hold[self.pos as usize..(self.pos + n) as usize]),
            Region::Tail => {
                let at = (self.pos - self.w.tail_start) as usize;
                out.copy_from_slice(&self.w.tail[at..at + n as usize]);
            }
            Region::Middle => self.w.target.read_exact_at(out, self.pos)?,
        }
        self.pos += n;
        Ok(n as usize)
    }

    /// Writes up to `buf.len()` bytes into one region.
    fn write_region(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (region, n) = self.w.region(self.pos, buf.len() as u64);
        let piece = &buf[..n as usize];
        match region {
            Region::Head => self.w.hold[self.pos as usize..(self.pos + n) as usize].copy_from_slice(piece),
            Region::Tail => {
                let at = (self.pos - self.w.tail_start) as usize;
                self.w.tail[at..at + n as usize].copy_from_slice(piece);
            }
            Region::Middle => {
                self.w.target.write_all_at(piece, self.pos)?;
                self.w.stats.data_bytes += n;
            }
        }
        self.pos += n;
        Ok(n as usize)
    }
}

// Reads and writes are never short inside the disk, even across the
// held-back boundaries: filesystem code (fatfs) is not always written for
// short transfers.
impl Read for Overlay<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_region(&mut buf[done..])? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }
}

impl Write for Overlay<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.size() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past the end of the disk"));
        }
        let mut done = 0;
        while done < buf.len() {
            done += self.write_region(&buf[done..])?;
        }
        Ok(done)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Overlay<'_, '_> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let new = match from {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Zeroes the first and last [`HOLD_BACK`] bytes of `target` with real
/// writes, then syncs. Used before streaming and after any failure.
pub fn wipe_ends(target: &dyn Target) -> io::Result<()> {
    let size = target.size();
    let zeros = vec![0u8; HOLD_BACK.min(size) as usize];
    target.write_all_at(&zeros, 0)?;
    let tail = size.saturating_sub(HOLD_BACK).max(zeros.len() as u64);
    if tail < size {
        target.write_all_at(&zeros[..(size - tail) as usize], tail)?;
    }
    target.sync()
}

/// Refuses an image whose GPT was made for another logical sector size than
/// the target's: the firmware would not find it (coreos-installer's
/// `detect_formatted_sector_size`).
pub fn check_sector_size(first: &[u8], target: &dyn Target) -> Result<()> {
    let formatted = [512u32, 4096]
        .into_iter()
        .find(|&s| first.get(s as usize..s as usize + 8).is_some_and(|sig| sig == GPT_SIGNATURE));
    let disk = target.logical_sector_size();
    match formatted {
        Some(s) if s != disk => Err(DeployError::TargetUnusable(format!(
            "the image's GPT is formatted for {s}-byte sectors but {} has {disk}-byte logical sectors",
            target.path()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::sync::{Arc, Mutex};

    /// A target in memory that records the operations it gets; clones
    /// share the disk.
    #[derive(Clone)]
    struct MemTarget {
        data: Arc<Mutex<Vec<u8>>>,
        ops: Arc<Mutex<Vec<(char, u64, u64)>>>,
        /// Whether each write's buffer started on a page, in order.
        page_aligned: Arc<Mutex<Vec<bool>>>,
        sector: u32,
        /// Offers a write-behind handle.
        behind: bool,
        /// A data write covering this offset fails.
        fail_at: Option<u64>,
    }

    impl MemTarget {
        fn new(size: usize) -> Self {
            MemTarget {
                data: Arc::new(Mutex::new(vec![0xee; size])),
                ops: Arc::default(),
                page_aligned: Arc::default(),
                sector: 512,
                behind: false,
                fail_at: None,
            }
        }
    }

    impl Target for MemTarget {
        fn path(&self) -> &str {
            "mem"
        }
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn logical_sector_size(&self) -> u32 {
            self.sector
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if self.fail_at.is_some_and(|f| (offset..offset + buf.len() as u64).contains(&f)) {
                return Err(io::Error::other("injected write failure"));
            }
            self.ops.lock().unwrap().push(('w', offset, buf.len() as u64));
            self.page_aligned.lock().unwrap().push((buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN));
            self.data.lock().unwrap()[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            buf.copy_from_slice(&self.data.lock().unwrap()[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
            self.ops.lock().unwrap().push(('z', offset, len));
            self.data.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
        fn sync(&self) -> io::Result<()> {
            self.ops.lock().unwrap().push(('s', 0, 0));
            Ok(())
        }
        fn reread_partitions(&self) -> io::Result<()> {
            Ok(())
        }
        fn write_behind(&self) -> Option<Box<dyn Target>> {
            self.behind.then(|| Box::new(self.clone()) as Box<dyn Target>)
        }
    }

    /// Data runs, zero gaps and ragged pieces over 14 MiB of a 16 MiB disk.
    fn write_pattern(w: &mut DiskWriter<'_>) -> Result<()> {
        let mut at = HOLD_BACK;
        for i in 0..200u64 {
            let len = 4096 * (1 + i * 37 % 23) as usize + (i as usize % 3) * 100;
            if i % 4 == 3 {
                w.zero_at(at, len as u64)?;
            } else {
                let data: Vec<u8> = (0..len).map(|j| (j as u64 * 7 + i) as u8 | 1).collect();
                w.write_at(at, &data)?;
            }
            at += len as u64;
        }
        assert!(at < (15 << 20), "{at}");
        w.commit().map(|_| ())
    }

    #[test]
    fn writing_behind_does_what_writing_in_place_does() {
        let (inline, behind) = (MemTarget::new(16 << 20), MemTarget { behind: true, ..MemTarget::new(16 << 20) });
        write_pattern(&mut DiskWriter::new(&inline, "raw")).unwrap();
        let mut w = DiskWriter::new(&behind, "raw");
        write_pattern(&mut w).unwrap();
        assert!(w.behind.is_some(), "no write-behind thread");
        assert_eq!(*inline.ops.lock().unwrap(), *behind.ops.lock().unwrap());
        assert!(*inline.data.lock().unwrap() == *behind.data.lock().unwrap());
        assert!(inline.ops.lock().unwrap().len() > 100);
    }

    #[test]
    fn a_write_failing_behind_is_reported() {
        for behind in [false, true] {
            let t = MemTarget { behind, fail_at: Some(HOLD_BACK + 10), ..MemTarget::new(16 << 20) };
            let e = write_pattern(&mut DiskWriter::new(&t, "raw")).unwrap_err();
            assert!(matches!(e, DeployError::Write { .. }), "{e:?}");
            assert!(e.to_string().contains("injected write failure"), "{e}");
            // The head is only written by a commit that succeeded.
            assert!(t.data.lock().unwrap()[..1 << 20].iter().all(|&b| b == 0xee));
        }
    }

    #[test]
    fn is_zero_finds_late_nonzero_bytes() {
        let mut b = vec![0u8; 70_000];
        assert!(is_zero(&b));
        b[69_999] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&[]));
    }

    #[test]
    fn middle_runs_come_from_page_aligned_memory() {
        // What lets DiskTarget write them with O_DIRECT.
        let t = MemTarget::new(16 << 20);
        let mut w = DiskWriter::new(&t, "raw");
        let data: Vec<u8> = (0..(9 << 20) + 3 * ZERO_GRAIN as usize).map(|i| (i % 251) as u8 | 1).collect();
        // Odd-sized pieces, as decoders hand them over.
        for (i, piece) in data.chunks(100_003).enumerate() {
            w.write_at((1 << 20) + (i * 100_003) as u64, piece).unwrap();
        }
        w.flush().unwrap();
        let aligned = t.page_aligned.lock().unwrap().clone();
        assert!(aligned.len() >= 3, "{aligned:?}");
        assert!(aligned.iter().all(|&a| a), "{aligned:?}");
        assert_eq!(t.data.lock().unwrap()[1 << 20..(1 << 20) + data.len()], data[..]);
    }

    #[test]
    fn holds_back_first_mib_until_commit_and_coalesces() {
        let t = MemTarget::new(4 << 20);
        let mut w = DiskWriter::new(&t, "raw");
        let data = vec![7u8; 2 << 20];
        w.write_at(0, &data).unwrap();
        w.zero_at(2 << 20, 1 << 20).unwrap();
        w.flush().unwrap();
        {
            let d = t.data.lock().unwrap();
            assert!(d[..1 << 20].iter().all(|&b| b == 0xee), "first MiB written before commit");
            assert!(d[1 << 20..2 << 20].iter().all(|&b| b == 7));
            assert!(d[2 << 20..3 << 20].iter().all(|&b| b == 0));
        }
        // One data write for the second MiB, one zero op.
        assert_eq!(*t.ops.lock().unwrap(), vec![('w', 1 << 20, 1 << 20), ('z', 2 << 20, 1 << 20)]);
        w.commit().unwrap();
        let ops = t.ops.lock().unwrap();
        assert_eq!(ops[ops.len() - 4..], [('s', 0, 0), ('w', 3 << 20, 1 << 20), ('w', 0, 1 << 20), ('s', 0, 0)]);
        assert!(t.data.lock().unwrap()[..1 << 20].iter().all(|&b| b == 7));
    }

    #[test]
    fn holds_back_the_last_mib_too_and_overlays_everything() {
        let t = MemTarget::new(4 << 20);
        let mut w = DiskWriter::new(&t, "raw");
        w.write_at((3 << 20) + 10, b"tail").unwrap();
        w.write_at((2 << 20) - 2, b"midd").unwrap();
        w.flush().unwrap();
        assert_eq!(&t.data.lock().unwrap()[(3 << 20) + 10..(3 << 20) + 14], &[0xee; 4], "tail written early");
        {
            let mut o = w.overlay().unwrap();
            let mut buf = [0u8; 4];
            o.seek(SeekFrom::Start((3 << 20) + 10)).unwrap();
            o.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"tail");
            // A read spanning the middle and the tail.
            o.seek(SeekFrom::Start((3 << 20) - 2)).unwrap();
            o.write_all(b"ABCD").unwrap();
            o.seek(SeekFrom::End(-2)).unwrap();
            o.write_all(b"ZZ").unwrap();
            assert!(o.write_all(b"!").is_err(), "wrote past the end");
            o.seek(SeekFrom::Start(5)).unwrap();
            o.write_all(b"head").unwrap();
        }
        assert_eq!(&t.data.lock().unwrap()[(3 << 20) - 2..3 << 20], b"AB", "middle goes straight to the disk");
        w.commit().unwrap();
        let d = t.data.lock().unwrap();
        assert_eq!(&d[(3 << 20)..(3 << 20) + 2], b"CD");
        assert_eq!(&d[(3 << 20) + 10..(3 << 20) + 14], b"tail");
        assert_eq!(&d[(4 << 20) - 2..], b"ZZ");
        assert_eq!(&d[5..9], b"head");
        assert_eq!(&d[(2 << 20) - 2..(2 << 20) + 2], b"midd");
    }

    #[test]
    fn zero_grains_in_data_become_zero_ops() {
        let t = MemTarget::new(4 << 20);
        let mut w = DiskWriter::new(&t, "raw");
        let mut data = vec![0u8; 3 * ZERO_GRAIN as usize];
        data[0] = 1;
        data[2 * ZERO_GRAIN as usize + 5] = 1;
        w.write_at(HOLD_BACK, &data).unwrap();
        w.flush().unwrap();
        assert_eq!(
            *t.ops.lock().unwrap(),
            vec![
                ('w', HOLD_BACK, ZERO_GRAIN),
                ('z', HOLD_BACK + ZERO_GRAIN, ZERO_GRAIN),
                ('w', HOLD_BACK + 2 * ZERO_GRAIN, ZERO_GRAIN)
            ]
        );
    }

    #[test]
    fn refuses_to_write_past_the_end() {
        let t = MemTarget::new(2 << 20);
        let mut w = DiskWriter::new(&t, "raw");
        let e = w.write_at((2 << 20) - 1, &[1, 2]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image provided has a size of 2097153 or more bytes which is larger than mem of 2097152 bytes"
        );
        assert!(w.zero_at(0, (2 << 20) + 1).is_err());
    }

    #[test]
    fn wipe_ends_zeroes_head_and_tail() {
        let t = MemTarget::new(3 << 20);
        wipe_ends(&t).unwrap();
        let d = t.data.lock().unwrap();
        assert!(d[..1 << 20].iter().all(|&b| b == 0));
        assert!(d[1 << 20..2 << 20].iter().all(|&b| b == 0xee));
        assert!(d[2 << 20..].iter().all(|&b| b == 0));
    }

    #[test]
    fn refuses_gpt_for_other_sector_size() {
        let mut t = MemTarget::new(2 << 20);
        t.sector = 4096;
        let mut w = DiskWriter::new(&t, "raw");
        w.write_at(512, GPT_SIGNATURE).unwrap();
        let e = w.commit().unwrap_err();
        assert!(e.to_string().contains("formatted for 512-byte sectors"), "{e}");
    }
}
