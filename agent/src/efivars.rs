//! EFI variables through efivarfs (or, in tests, any directory of files in
//! efivarfs format: 4-byte attributes, then the data), and installing our
//! boot entry: `Boot####`, `BootOrder`, `BootNext`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::efi::{self, DiskNode, HardDrive, LoadOption};
use crate::ioctl;

/// `EFI_GLOBAL_VARIABLE`.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
pub const ATTRS_NV_BS_RT: u32 = 0x7;
/// Where the kernel mounts efivarfs.
pub const EFIVARFS: &str = "/sys/firmware/efi/efivars";
/// statfs magic of efivarfs (the literal takes glibc's i64 or musl's u64).
const EFIVARFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xde5e_81e4);

/// A directory of EFI variables.
#[derive(Debug, Clone)]
pub struct EfiVars {
    dir: PathBuf,
    efivarfs: bool,
}

impl EfiVars {
    /// Opens `dir` (efivarfs, or a plain directory in tests).
    pub fn open(dir: &Path) -> io::Result<EfiVars> {
        if !dir.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} is not a directory", dir.display())));
        }
        let efivarfs = nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == EFIVARFS_MAGIC);
        Ok(EfiVars { dir: dir.to_owned(), efivarfs })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{GLOBAL}"))
    }

    /// Reads a global variable: (attributes, data).
    pub fn read(&self, name: &str) -> io::Result<Option<(u32, Vec<u8>)>> {
        let mut buf = Vec::new();
        match File::open(self.path(name)) {
            Ok(mut f) => f.read_to_end(&mut buf)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if buf.len() < 4 {
            return Ok(None);
        }
        let attrs = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        Ok(Some((attrs, buf.split_off(4))))
    }

    /// Writes a global variable in one `write()`, as efivarfs requires.
    pub fn write(&self, name: &str, attrs: u32, data: &[u8]) -> io::Result<()> {
        let path = self.path(name);
        if let Ok(f) = File::open(&path) {
            ioctl::clear_immutable(&f)?;
        }
        let mut opts = OpenOptions::new();
        // efivarfs replaces the variable on write and does not truncate.
        opts.write(true).create(true).truncate(!self.efivarfs);
        let mut f = opts.open(&path)?;
        let mut buf = attrs.to_le_bytes().to_vec();
        buf.extend_from_slice(data);
        let n = f.write(&buf)?;
        if n != buf.len() {
            return Err(io::Error::other(format!("short write of {name}: {n} of {} bytes", buf.len())));
        }
        Ok(())
    }

    /// All `Boot####` entries that decode.
    pub fn boot_entries(&self) -> io::Result<Vec<(u16, LoadOption)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(num) = name.strip_suffix(&format!("-{GLOBAL}")).and_then(|n| n.strip_prefix("Boot")) else {
                continue;
            };
            let Ok(n) = u16::from_str_radix(num, 16) else { continue };
            if num.len() != 4 {
                continue;
            }
            if let Some((_, data)) = self.read(&format!("Boot{n:04X}"))? {
                if let Some(opt) = efi::parse_load_option(&data) {
                    out.push((n, opt));
                }
            }
        }
        out.sort_by_key(|(n, _)| *n);
        Ok(out)
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

/// Writes our boot entry for `loader` on `hd` of `disk` (a
/// [`disk_prefix_of`], or empty for the short form): reuses the `Boot####` that
/// already says `byoi`, else the lowest free number; puts it in `BootOrder`
/// after the network entries; sets `BootNext`. Returns the number.
pub fn install_boot_entry(vars: &EfiVars, disk: &[u8], hd: &HardDrive, loader: &str) -> io::Result<u16> {
    let entries = vars.boot_entries()?;
    let number = entries
        .iter()
        .find(|(_, o)| o.description == efi::DESCRIPTION)
        .map(|(n, _)| *n)
        .or_else(|| (0..=0xffffu16).find(|n| !entries.iter().any(|(m, _)| m == n)))
        .ok_or_else(|| io::Error::other("no free Boot#### number"))?;
    let option = efi::load_option(efi::LOAD_OPTION_ACTIVE, efi::DESCRIPTION, &efi::device_path(disk, hd, loader));
    vars.write(&format!("Boot{number:04X}"), ATTRS_NV_BS_RT, &option)?;
    let order = vars.read("BootOrder")?.map(|(_, d)| efi::parse_boot_order(&d)).unwrap_or_default();
    let network = |n: u16| entries.iter().any(|(m, o)| *m == n && efi::is_network(o));
    let order = efi::boot_order_with(&order, number, network);
    vars.write("BootOrder", ATTRS_NV_BS_RT, &efi::encode_boot_order(&order))?;
    vars.write("BootNext", ATTRS_NV_BS_RT, &number.to_le_bytes())?;
    Ok(number)
}
