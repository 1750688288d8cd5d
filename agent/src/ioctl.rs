//! The few block-device ioctls the sink needs. The only module allowed
//! `unsafe`: each call passes a pointer to a correctly sized local.
#![allow(unsafe_code)]
// The ioctl request type is c_ulong on glibc and c_int on musl: `as _`.
#![allow(clippy::unnecessary_cast)]

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

// Network configuration through the classic socket ioctls (<linux/sockios.h>):
// enough for one static IPv4 address and a default route, without netlink.

fn inet_socket() -> io::Result<std::os::fd::OwnedFd> {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

fn ifreq(name: &str) -> io::Result<nix::libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= nix::libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as nix::libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: std::net::Ipv4Addr) -> nix::libc::sockaddr {
    let sin = nix::libc::sockaddr_in {
        sin_family: nix::libc::AF_INET as nix::libc::sa_family_t,
        sin_port: 0,
        sin_addr: nix::libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // sockaddr is the type the kernel reads through.
    unsafe { std::mem::transmute::<nix::libc::sockaddr_in, nix::libc::sockaddr>(sin) }
}

/// Brings an interface up.
pub fn link_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= nix::libc::IFF_UP as nix::libc::c_short;
        if nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets an interface's IPv4 address and netmask.
pub fn set_ipv4(name: &str, addr: std::net::Ipv4Addr, mask: std::net::Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: SIOCSIFADDR reads the ifreq we own.
    if unsafe { nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCSIFADDR as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    // SAFETY: SIOCSIFNETMASK reads the ifreq we own.
    if unsafe { nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCSIFNETMASK as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Adds a default route via `gateway`.
pub fn add_default_route(gateway: std::net::Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    // SAFETY: rtentry is plain old data; all-zero is a valid value.
    let mut rt: nix::libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = (nix::libc::RTF_UP | nix::libc::RTF_GATEWAY) as nix::libc::c_ushort;
    // SAFETY: SIOCADDRT reads the rtentry we own.
    if unsafe { nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCADDRT as _, &rt) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(nix::libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}
