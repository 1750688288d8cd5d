//! The few block-device ioctls the sink needs. The only module allowed
//! `unsafe`: each call passes a pointer to a correctly sized local.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

// <linux/fs.h>: BLKRRPART _IO(0x12,95), BLKSSZGET _IO(0x12,104),
// BLKGETSIZE64 _IOR(0x12,114,size_t), BLKZEROOUT _IO(0x12,127).
nix::ioctl_none_bad!(blkrrpart, nix::request_code_none!(0x12, 95));
nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), nix::libc::c_int);
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

/// Size of a block device in bytes.
pub fn device_size(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    unsafe { blkgetsize64(fd.as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// Logical sector size of a block device.
pub fn logical_sector_size(fd: &impl AsRawFd) -> io::Result<u32> {
    let mut size: nix::libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer.
    unsafe { blksszget(fd.as_raw_fd(), &mut size) }?;
    u32::try_from(size).map_err(|_| io::Error::other(format!("device reports a sector size of {size}")))
}

/// Zeroes `[offset, offset + len)`; both must be multiples of the logical
/// sector size. The kernel offloads it (WRITE ZEROES, discard) when it can.
pub fn zero_out(fd: &impl AsRawFd, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64s (start, length) through the pointer.
    unsafe { blkzeroout(fd.as_raw_fd(), &range) }?;
    Ok(())
}

/// Asks the kernel to re-read the partition table.
pub fn reread_partitions(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument.
    unsafe { blkrrpart(fd.as_raw_fd()) }?;
    Ok(())
}

// <linux/fs.h>: FS_IOC_GETFLAGS _IOR('f', 1, long), FS_IOC_SETFLAGS
// _IOW('f', 2, long); FS_IMMUTABLE_FL 0x10.
nix::ioctl_read!(fs_getflags, b'f', 1, nix::libc::c_long);
nix::ioctl_write_ptr!(fs_setflags, b'f', 2, nix::libc::c_long);
const FS_IMMUTABLE_FL: nix::libc::c_long = 0x10;

/// Clears the immutable flag (efivarfs sets it on existing variables).
/// Filesystems without flags (tmpfs in tests) are fine as they are.
pub fn clear_immutable(fd: &impl AsRawFd) -> io::Result<()> {
    let mut flags: nix::libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer.
    match unsafe { fs_getflags(fd.as_raw_fd(), &mut flags) } {
        Ok(_) => {}
        Err(nix::errno::Errno::ENOTTY | nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    let cleared = flags & !FS_IMMUTABLE_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one long through the pointer.
    unsafe { fs_setflags(fd.as_raw_fd(), &cleared) }?;
    Ok(())
}
