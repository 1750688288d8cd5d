//! Opening the disk to write: a block device (exclusively, after checking
//! it is not in use) or an existing regular file (never resized).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{fallocate, FallocateFlags};

use crate::error::{DeployError, Result};
use crate::ioctl;
use crate::sink::{Target, DIRECT_ALIGN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Block,
}

/// A block device or regular file opened for deployment.
///
/// Bulk writes that are [`DIRECT_ALIGN`]-aligned go through a second
/// descriptor opened with `O_DIRECT`: the data goes from the writer's
/// buffer to the device without a copy into the page cache, which costs
/// about as much CPU as receiving it (measured by `cargo xtask bench`),
/// and without the dirty-page throttling that makes buffered writes
/// unpredictable. Everything else (the held-back ends, ragged edges,
/// reads) uses the buffered descriptor; page-aligned direct writes never
/// share a page with buffered ones, and the kernel drops cached pages a
/// direct write covers, so both views stay coherent.
#[derive(Debug)]
pub struct DiskTarget {
    file: File,
    /// The `O_DIRECT` descriptor, when the filesystem or device allows it.
    direct: Option<File>,
    /// Cleared when a direct write is refused (`EINVAL`): from then on
    /// everything is buffered.
    direct_ok: AtomicBool,
    path: String,
    kind: Kind,
    size: u64,
    sector: u32,
}

impl DiskTarget {
    /// Opens `path`. A block device is opened with `O_EXCL` and refused when
    /// it has mounted partitions or holders, unless `force`.
    pub fn open(path: &Path, force: bool) -> Result<Self> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path)
            .map_err(|e| DeployError::TargetUnusable(format!("cannot use {shown} as target: {e}")))?;
        let ft = meta.file_type();
        if ft.is_file() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| DeployError::TargetUnusable(format!("cannot open {shown}: {e}")))?;
            return Ok(DiskTarget::new(file, shown, Kind::File, meta.len(), 512));
        }
        if !ft.is_block_device() {
            return Err(DeployError::TargetUnusable(format!("{shown} is neither a block device nor a regular file")));
        }
        let dev = meta.rdev();
        if !force {
            if let Some(reason) = device_in_use(dev)? {
                return Err(DeployError::TargetUnusable(format!(
                    "refusing to overwrite {shown}: {reason}; pass --force to proceed"
                )));
            }
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if !force {
            opts.custom_flags(nix::libc::O_EXCL);
        }
        let file = opts.open(path).map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::EBUSY) {
                DeployError::TargetUnusable(format!(
                    "refusing to overwrite {shown}: it is in use (EBUSY on exclusive open); pass --force to proceed"
                ))
            } else {
                DeployError::TargetUnusable(format!("cannot open {shown}: {e}"))
            }
        })?;
        let size = ioctl::device_size(&file)
            .map_err(|e| DeployError::TargetUnusable(format!("cannot get the size of {shown}: {e}")))?;
        let sector = ioctl::logical_sector_size(&file)
            .map_err(|e| DeployError::TargetUnusable(format!("cannot get the sector size of {shown}: {e}")))?;
        Ok(DiskTarget::new(file, shown, Kind::Block, size, sector))
    }

    fn new(file: File, shown: String, kind: Kind, size: u64, sector: u32) -> Self {
        // The same open file, reopened: without O_EXCL, as the buffered
        // descriptor holds the exclusive claim and a second exclusive open
        // of a block device would be refused.
        let same = format!("/proc/self/fd/{}", file.as_raw_fd());
        let direct = match OpenOptions::new().write(true).custom_flags(nix::libc::O_DIRECT).open(same) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(target = %shown, error = %e, "no O_DIRECT; all writes go through the page cache");
                None
            }
        };
        let direct_ok = AtomicBool::new(direct.is_some());
        DiskTarget { file, direct, direct_ok, path: shown, kind, size, sector }
    }

    /// Whether the target is a block device (not a regular file).
    pub fn is_block_device(&self) -> bool {
        self.kind == Kind::Block
    }

    /// Writes the longest page-aligned prefix of `buf` through the
    /// `O_DIRECT` descriptor, if `buf` and `offset` are aligned; returns
    /// how many bytes it wrote (the rest goes through the page cache).
    fn write_direct(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let Some(direct) = &self.direct else { return Ok(0) };
        let len = buf.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        let aligned =
            (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) && offset.is_multiple_of(DIRECT_ALIGN as u64);
        if !aligned || len == 0 || !self.direct_ok.load(Ordering::Relaxed) {
            return Ok(0);
        }
        match direct.write_all_at(&buf[..len], offset) {
            Ok(()) => Ok(len),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                tracing::debug!(target = %self.path, error = %e, "O_DIRECT write refused; using the page cache");
                self.direct_ok.store(false, Ordering::Relaxed);
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes zeros the slow way, when the fast way is not available.
    fn write_zeros(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; (1 << 20).min(len) as usize];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

impl Target for DiskTarget {
    fn path(&self) -> &str {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn logical_sector_size(&self) -> u32 {
        self.sector
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let n = self.write_direct(buf, offset)?;
        if n == buf.len() {
            return Ok(());
        }
        self.file.write_all_at(&buf[n..], offset + n as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let fast = match self.kind {
            Kind::File => {
                let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                let (off, l) = (offset as i64, len as i64);
                fallocate(self.file.as_raw_fd(), flags, off, l).map_err(io::Error::from)
            }
            Kind::Block => {
                // BLKZEROOUT wants sector-aligned ranges; write the ragged
                // edges as zeros.
                let s = u64::from(self.sector);
                let start = offset.div_ceil(s) * s;
                let end = ((offset + len) / s * s).max(start);
                self.write_zeros(offset, start.min(offset + len) - offset)?;
                if end > start {
                    ioctl::zero_out(&self.file, start, end - start)?;
                }
                if offset + len > end.max(start) {
                    self.write_zeros(end.max(start), offset + len - end.max(start))?;
                }
                Ok(())
            }
        };
        match fast {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EOPNOTSUPP) | Some(nix::libc::EINVAL)) => {
                tracing::debug!(target = %self.path, error = %e, "fast zeroing unsupported; writing zeros");
                self.write_zeros(offset, len)
            }
            Err(e) => Err(e),
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn reread_partitions(&self) -> io::Result<()> {
        match self.kind {
            Kind::File => Ok(()),
            Kind::Block => ioctl::reread_partitions(&self.file),
        }
    }

    /// The same descriptors, duplicated: `O_EXCL` and `O_DIRECT` come along.
    fn write_behind(&self) -> Option<Box<dyn Target>> {
        let direct = match &self.direct {
            Some(d) => Some(d.try_clone().ok()?),
            None => None,
        };
        Some(Box::new(DiskTarget {
            file: self.file.try_clone().ok()?,
            direct,
            direct_ok: AtomicBool::new(self.direct_ok.load(Ordering::Relaxed)),
            path: self.path.clone(),
            kind: self.kind,
            size: self.size,
            sector: self.sector,
        }))
    }
}

/// Why the block device `dev` (a `dev_t`) is in use, if it is: a mounted
/// filesystem on it or on one of its partitions, or a holder (LVM, RAID,
/// dm-crypt) claiming it.
fn device_in_use(dev: u64) -> Result<Option<String>> {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = format!("/sys/dev/block/{major}:{minor}");
    let mut devices = vec![(format!("{major}:{minor}"), sys.clone())];
    // Partitions are subdirectories with a `partition` file.
    if let Ok(entries) = std::fs::read_dir(&sys) {
        for entry in entries.flatten() {
            let p = entry.path();
            if p.join("partition").exists() {
                if let Ok(d) = std::fs::read_to_string(p.join("dev")) {
                    devices.push((d.trim().to_owned(), p.display().to_string()));
                }
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (devno, dir) in &devices {
        // mountinfo: id parent major:minor root mountpoint …
        if let Some(line) = mountinfo.lines().find(|l| l.split(' ').nth(2) == Some(devno.as_str())) {
            let mountpoint = line.split(' ').nth(4).unwrap_or("?");
            return Ok(Some(format!("device {devno} is mounted on {mountpoint}")));
        }
        let holders: Vec<String> = std::fs::read_dir(format!("{dir}/holders"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if !holders.is_empty() {
            return Ok(Some(format!("device {devno} is held by {}", holders.join(", "))));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_file_punches_holes_without_resizing() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        f.as_file().write_all_at(&[9u8; 1 << 20], 0).unwrap();
        let t = DiskTarget::open(f.path(), false).unwrap();
        assert_eq!(t.size(), 1 << 20);
        t.zero_range(4096, 8192).unwrap();
        let mut buf = vec![1u8; 16384];
        t.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 9));
        assert!(buf[4096..12288].iter().all(|&b| b == 0));
        assert!(buf[12288..].iter().all(|&b| b == 9));
        assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 1 << 20);
    }

    #[test]
    fn direct_and_buffered_writes_land_where_asked() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 << 10).unwrap();
        let t = DiskTarget::open(f.path(), false).unwrap();
        // An aligned buffer with a ragged length: a direct prefix, a
        // buffered tail. Then an unaligned buffer, and a write in the
        // same page as the direct one's tail.
        let mut raw = vec![0u8; 4 * DIRECT_ALIGN];
        let at = raw.as_ptr().align_offset(DIRECT_ALIGN);
        let buf = &mut raw[at..at + 2 * DIRECT_ALIGN + 100];
        buf.fill(3);
        t.write_all_at(buf, 8192).unwrap();
        t.write_all_at(&[5u8; 777], 8192 + 2 * DIRECT_ALIGN as u64 + 100).unwrap();
        t.write_all_at(&[9u8; 10], 1).unwrap();
        t.sync().unwrap();
        let mut back = vec![0u8; 64 << 10];
        t.read_exact_at(&mut back, 0).unwrap();
        let direct_end = 8192 + 2 * DIRECT_ALIGN + 100;
        assert_eq!(back[0], 0);
        assert!(back[1..11].iter().all(|&b| b == 9));
        assert!(back[11..8192].iter().all(|&b| b == 0));
        assert!(back[8192..direct_end].iter().all(|&b| b == 3));
        assert!(back[direct_end..direct_end + 777].iter().all(|&b| b == 5));
        assert!(back[direct_end + 777..].iter().all(|&b| b == 0));
        // And through a fresh descriptor, past any cache of this one.
        assert_eq!(std::fs::read(f.path()).unwrap(), back);
    }

    #[test]
    fn refuses_directories_and_missing_paths() {
        let d = tempfile::tempdir().unwrap();
        let e = DiskTarget::open(d.path(), false).unwrap_err();
        assert!(e.to_string().contains("neither a block device nor a regular file"), "{e}");
        let e = DiskTarget::open(&d.path().join("nope"), false).unwrap_err();
        assert!(e.to_string().contains("cannot use"), "{e}");
    }
}
