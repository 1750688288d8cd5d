//! The I/O edge for EFI variables: [`Efivarfs`] (the kernel's files, whose
//! immutable flag is cleared with `FS_IOC_SETFLAGS` before a write) and
//! [`VarDir`] (any directory of files in efivarfs format: 4-byte
//! attributes, then the data), both [`EfiVars`]; and the firmware's device
//! path of a disk, read from sysfs.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bootentry::EfiVars;
use crate::efi::{self, DiskNode};
use crate::ioctl;
use crate::util::le32;

/// Where the kernel mounts efivarfs.
pub const EFIVARFS: &str = "/sys/firmware/efi/efivars";
/// statfs magic of efivarfs (the literal takes glibc's i64 or musl's u64).
const EFIVARFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xde5e_81e4);

/// The EFI variables in `dir`: [`Efivarfs`] when efivarfs is mounted there,
/// else a [`VarDir`]. Nothing else is checked until the first read or
/// write.
pub fn open(dir: &Path) -> Arc<dyn EfiVars> {
    let efivarfs = nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == EFIVARFS_MAGIC);
    if efivarfs {
        Arc::new(Efivarfs::new(dir))
    } else {
        Arc::new(VarDir::new(dir))
    }
}

/// A directory of EFI variables in efivarfs format, one file per variable
/// named `Name-guid`: 4 bytes of attributes (little endian), then the data.
#[derive(Debug, Clone)]
pub struct VarDir {
    dir: PathBuf,
}

impl VarDir {
    /// The variables in `dir`, which must be a directory when they are read
    /// or written.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        VarDir { dir: dir.into() }
    }

    /// The file of variable `name`, once the directory is known to be one.
    fn path(&self, name: &str, guid: &str) -> io::Result<PathBuf> {
        if !self.dir.is_dir() {
            let e = format!("{} is not a directory", self.dir.display());
            return Err(io::Error::new(io::ErrorKind::NotFound, e));
        }
        Ok(self.dir.join(format!("{name}-{guid}")))
    }

    /// Writes `path` in one `write()`, as efivarfs requires.
    fn write_file(path: &Path, truncate: bool, name: &str, attrs: u32, data: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(truncate).open(path)?;
        let mut buf = attrs.to_le_bytes().to_vec();
        buf.extend_from_slice(data);
        let n = f.write(&buf)?;
        if n != buf.len() {
            return Err(io::Error::other(format!("short write of {name}: {n} of {} bytes", buf.len())));
        }
        Ok(())
    }
}

impl std::fmt::Display for VarDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.dir.display().fmt(f)
    }
}

impl EfiVars for VarDir {
    fn read(&self, name: &str, guid: &str) -> io::Result<Option<(u32, Vec<u8>)>> {
        let mut buf = Vec::new();
        match File::open(self.path(name, guid)?) {
            Ok(mut f) => f.read_to_end(&mut buf)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if buf.len() < 4 {
            return Ok(None);
        }
        Ok(Some((le32(&buf, 0), buf.split_off(4))))
    }

    fn write(&self, name: &str, guid: &str, attrs: u32, data: &[u8]) -> io::Result<()> {
        VarDir::write_file(&self.path(name, guid)?, true, name, attrs, data)
    }

    fn names(&self, guid: &str) -> io::Result<Vec<String>> {
        self.path("", guid)?;
        let suffix = format!("-{guid}");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(&suffix) {
                out.push(n.to_owned());
            }
        }
        Ok(out)
    }
}

/// efivarfs, the kernel's view of the firmware's variables: a [`VarDir`]
/// whose existing variables are immutable files until the flag is cleared,
/// and whose files are replaced by a write, never truncated.
#[derive(Debug, Clone)]
pub struct Efivarfs(VarDir);

impl Efivarfs {
    /// efivarfs mounted on `dir` (usually [`EFIVARFS`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Efivarfs(VarDir::new(dir))
    }
}

impl std::fmt::Display for Efivarfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl EfiVars for Efivarfs {
    fn read(&self, name: &str, guid: &str) -> io::Result<Option<(u32, Vec<u8>)>> {
        self.0.read(name, guid)
    }

    fn write(&self, name: &str, guid: &str, attrs: u32, data: &[u8]) -> io::Result<()> {
        let path = self.0.path(name, guid)?;
        if let Ok(f) = File::open(&path) {
            ioctl::clear_immutable(&f)?;
        }
        VarDir::write_file(&path, false, name, attrs, data)
    }

    fn names(&self, guid: &str) -> io::Result<Vec<String>> {
        self.0.names(guid)
    }
}

/// The firmware's device path of block device `dev` (see
/// [`efi::disk_prefix`]), read from sysfs; `None` for a regular file or a
/// bus we do not name (the entry then uses the short form).
pub fn disk_prefix_of(dev: &Path) -> Option<Vec<u8>> {
    let name = std::fs::canonicalize(dev).ok()?.file_name()?.to_string_lossy().into_owned();
    let class = Path::new("/sys/class/block").join(&name);
    let sys = std::fs::canonicalize(&class).ok()?.to_string_lossy().into_owned();
    let read = |p: PathBuf| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let root = sys.split('/').take(4).collect::<Vec<_>>().join("/");
    let root_uid = read(Path::new(&root).join("firmware_node/uid")).and_then(|u| u.parse().ok()).unwrap_or(0);
    let leaf = if sys.contains("/nvme/") {
        let namespace = read(class.join("nsid"))
            .and_then(|n| n.parse().ok())
            .or_else(|| name.rsplit_once('n').and_then(|(_, n)| n.parse().ok()))?;
        let mut eui64 = [0u8; 8];
        if let Some(text) = read(class.join("eui")) {
            for (b, h) in eui64.iter_mut().zip(text.split_whitespace()) {
                *b = u8::from_str_radix(h, 16).ok()?;
            }
        }
        DiskNode::Nvme { namespace, eui64 }
    } else if let Some(ata) = sys.split('/').find(|c| c.strip_prefix("ata").is_some_and(|n| n.parse::<u32>().is_ok())) {
        let port = read(Path::new("/sys/class/ata_port").join(ata).join("port_no"))?.parse().ok()?;
        DiskNode::Sata { port, lun: 0 }
    } else if sys.contains("/virtio") && !sys.contains("/host") {
        DiskNode::None
    } else {
        return None;
    };
    efi::disk_prefix(&sys, root_uid, leaf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootentry::{ATTRS_NV_BS_RT, GLOBAL};

    #[test]
    fn a_directory_holds_variables_in_efivarfs_format() {
        let d = tempfile::tempdir().unwrap();
        let vars = open(d.path());
        assert_eq!(vars.to_string(), d.path().display().to_string());
        vars.write("BootNext", GLOBAL, ATTRS_NV_BS_RT, &[3, 0]).unwrap();
        vars.write("BootNext", GLOBAL, ATTRS_NV_BS_RT, &[4]).unwrap();
        vars.write("Other", "12345678-0000-0000-0000-000000000000", 1, b"x").unwrap();
        let file = d.path().join(format!("BootNext-{GLOBAL}"));
        assert_eq!(std::fs::read(file).unwrap(), [7, 0, 0, 0, 4], "rewritten, and truncated");
        assert_eq!(vars.read("BootNext", GLOBAL).unwrap(), Some((ATTRS_NV_BS_RT, vec![4])));
        assert_eq!(vars.read("BootOrder", GLOBAL).unwrap(), None);
        assert_eq!(vars.names(GLOBAL).unwrap(), ["BootNext"]);

        let gone = VarDir::new(d.path().join("nope"));
        let e = gone.names(GLOBAL).unwrap_err();
        assert!(e.to_string().ends_with("nope is not a directory"), "{e}");
        assert!(gone.read("BootOrder", GLOBAL).is_err());
    }
}
