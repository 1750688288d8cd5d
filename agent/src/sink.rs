//! The disk side of the pipeline: [`ImageSink`], what decoders write guest
//! bytes to, and [`DiskWriter`], the sink that turns those writes into large
//! writes and zeroing on a [`Target`], holding back the first MiB.
//!
//! Nothing here opens a device; [`crate::target`] does.

use std::io;

use crate::error::{DeployError, Result};

/// Bytes at the start of the disk that are kept in memory until the very
/// end, so that the partition table and boot code only land once everything
/// else is on disk and verified.
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

#[derive(Debug, Default)]
struct Run {
    start: u64,
    data: Vec<u8>,
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

/// Writes an image onto a [`Target`]: coalesces writes, zeroes zero blocks
/// instead of writing them, keeps the first [`HOLD_BACK`] bytes in memory
/// until [`DiskWriter::commit`], and refuses to write past the end.
pub struct DiskWriter<'t> {
    target: &'t dyn Target,
    /// `qcow2` or `raw`: how OVH names the failing write.
    format: &'static str,
    hold: Vec<u8>,
    run: Run,
    stats: WriteStats,
}

impl std::fmt::Debug for DiskWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWriter").field("target", &self.target.path()).field("stats", &self.stats).finish()
    }
}

impl<'t> DiskWriter<'t> {
    /// A writer for `target`; `format` names the image type in errors.
    pub fn new(target: &'t dyn Target, format: &'static str) -> Self {
        let hold_len = HOLD_BACK.min(target.size()) as usize;
        DiskWriter { target, format, hold: vec![0; hold_len], run: Run::default(), stats: WriteStats::default() }
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

    /// Flushes pending writes (not the held-back bytes).
    pub fn flush(&mut self) -> Result<()> {
        if !self.run.data.is_empty() {
            let r = self.target.write_all_at(&self.run.data, self.run.start);
            r.map_err(|e| self.write_err(e))?;
            self.stats.data_bytes += self.run.data.len() as u64;
            self.run.data.clear();
        }
        if self.run.zero_len > 0 {
            let r = self.target.zero_range(self.run.start, self.run.zero_len);
            r.map_err(|e| self.write_err(e))?;
            self.stats.zeroed_bytes += self.run.zero_len;
            self.run.zero_len = 0;
        }
        Ok(())
    }

    fn push_data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let contiguous = !self.run.data.is_empty() && self.run.start + self.run.data.len() as u64 == offset;
        if self.run.zero_len > 0 || !contiguous || self.run.data.len() + data.len() > MAX_RUN {
            self.flush()?;
            self.run.start = offset;
        }
        if self.run.data.capacity() == 0 {
            self.run.data.reserve_exact(MAX_RUN);
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

    /// Splits `[offset, offset + len)` at the hold-back boundary.
    fn split_hold(&self, offset: u64, len: u64) -> (u64, u64) {
        let hold = self.hold.len() as u64;
        if offset >= hold {
            (0, 0)
        } else {
            (offset, (hold - offset).min(len))
        }
    }

    /// Finishes the image: flushes, syncs, checks the partition table fits
    /// the target's sector size, writes the held-back first MiB last, syncs
    /// again and has the kernel re-read the partition table.
    pub fn commit(&mut self) -> Result<WriteStats> {
        self.flush()?;
        check_sector_size(&self.hold, self.target)?;
        self.target.sync().map_err(|e| self.write_err(e))?;
        self.target.write_all_at(&self.hold, 0).map_err(|e| self.write_err(e))?;
        self.target.sync().map_err(|e| self.write_err(e))?;
        if let Err(e) = self.target.reread_partitions() {
            // A busy disk keeps its old view until the next boot; the data
            // is on disk either way.
            tracing::warn!(target = self.target.path(), error = %e, "re-reading the partition table failed");
        }
        self.stats.data_bytes += self.hold.len() as u64;
        Ok(self.stats)
    }
}

impl ImageSink for DiskWriter<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_bounds(offset, data.len() as u64)?;
        let (h_off, h_len) = self.split_hold(offset, data.len() as u64);
        if h_len > 0 {
            let h_len = h_len as usize;
            self.hold[h_off as usize..h_off as usize + h_len].copy_from_slice(&data[..h_len]);
        }
        let mut off = offset + h_len;
        let mut rest = &data[h_len as usize..];
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

    fn zero_at(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_bounds(offset, len)?;
        let (h_off, h_len) = self.split_hold(offset, len);
        if h_len > 0 {
            self.hold[h_off as usize..(h_off + h_len) as usize].fill(0);
        }
        if len > h_len {
            self.push_zero(offset + h_len, len - h_len)?;
        }
        Ok(())
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

/// GPT header signature, UEFI spec §5.3.2.
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

/// Refuses an image whose GPT was made for another logical sector size than
/// the target's: the firmware would not find it (coreos-installer's
/// `detect_formatted_sector_size`).
fn check_sector_size(first: &[u8], target: &dyn Target) -> Result<()> {
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
    use std::sync::Mutex;

    /// A target in memory that records the operations it gets.
    struct MemTarget {
        data: Mutex<Vec<u8>>,
        ops: Mutex<Vec<(char, u64, u64)>>,
        sector: u32,
    }

    impl MemTarget {
        fn new(size: usize) -> Self {
            MemTarget { data: Mutex::new(vec![0xee; size]), ops: Mutex::new(Vec::new()), sector: 512 }
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
            self.ops.lock().unwrap().push(('w', offset, buf.len() as u64));
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
        assert_eq!(ops[ops.len() - 3..], [('s', 0, 0), ('w', 0, 1 << 20), ('s', 0, 0)]);
        assert!(t.data.lock().unwrap()[..1 << 20].iter().all(|&b| b == 7));
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
