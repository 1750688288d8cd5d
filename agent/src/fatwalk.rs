//! A bounded walk of a FAT volume's directory tree, run on an image's EFI
//! system partition before `fatfs` looks for loaders in it. `fatfs` follows
//! cluster chains as the FAT says, without end: a chain that loops (a
//! damaged or hostile image) would keep the agent reading forever and the
//! deployment `doing`. This walk visits every cluster of every directory at
//! most once, so it ends after at most as many steps as the volume has
//! clusters, and names the damage it finds.
//!
//! Layout per Microsoft's "FAT32 File System Specification" (fatgen103):
//! the BPB fields (§3), the FAT type from the cluster count (§3.5), FAT
//! entries (§4) and directory entries (§6).

use crate::util::{le16, le32};
use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom};

/// A FAT volume the walk refuses, and why.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    /// The boot sector is not a FAT BPB we can follow.
    #[error("not a FAT volume: {0}")]
    NotFat(&'static str),
    /// Reading the volume failed.
    #[error("reading the volume: {0}")]
    Io(#[from] io::Error),
    /// A chain reaches a cluster already seen: it loops, or two
    /// directories share clusters.
    #[error("the cluster chain of the directory starting at cluster {start} comes back to cluster {again}")]
    ChainLoop {
        /// The directory's first cluster.
        start: u32,
        /// The cluster reached twice.
        again: u32,
    },
    /// A directory entry names a directory already walked: a directory that
    /// contains itself or one of its parents.
    #[error("the directory starting at cluster {0} contains itself or one of its parents")]
    DirectoryLoop(u32),
    /// A chain names a cluster that does not exist, a free one or a bad one.
    #[error("the cluster chain of the directory starting at cluster {start} goes to {next:#x}, which is not a cluster in use")]
    BadLink {
        /// The directory's first cluster.
        start: u32,
        /// The FAT entry's value.
        next: u32,
    },
}

/// Directory entry attributes (fatgen103 §6).
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0f;
/// First byte of a free entry; of the last, free, entry.
const ENTRY_FREE: u8 = 0xe5;
const ENTRY_END: u8 = 0x00;
const ENTRY_LEN: usize = 32;
/// The first data cluster's number.
const FIRST_CLUSTER: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// What the BPB says, in bytes where it matters.
#[derive(Debug)]
struct Volume {
    kind: FatType,
    /// Offset of the first FAT.
    fat: u64,
    /// Offset and length of the FAT12/16 root directory (0 on FAT32).
    root: (u64, u64),
    /// Offset of cluster 2.
    data: u64,
    cluster_bytes: u64,
    /// Highest valid cluster number.
    last_cluster: u32,
    /// First cluster of the FAT32 root directory.
    root_cluster: u32,
}

impl Volume {
    fn read<D: Read + Seek>(d: &mut D) -> Result<Volume, FatError> {
        let mut bs = [0u8; 512];
        d.seek(SeekFrom::Start(0))?;
        d.read_exact(&mut bs)?;
        let bps = u64::from(le16(&bs, 11));
        let spc = u64::from(bs[13]);
        let reserved = u64::from(le16(&bs, 14));
        let fats = u64::from(bs[16]);
        let root_entries = u64::from(le16(&bs, 17));
        let total = match le16(&bs, 19) {
            0 => u64::from(le32(&bs, 32)),
            n => u64::from(n),
        };
        let fat_sectors = match le16(&bs, 22) {
            0 => u64::from(le32(&bs, 36)),
            n => u64::from(n),
        };
        if !bps.is_power_of_two() || !(512..=4096).contains(&bps) {
            return Err(FatError::NotFat("bytes per sector is not 512, 1024, 2048 or 4096"));
        }
        if !spc.is_power_of_two() {
            return Err(FatError::NotFat("sectors per cluster is not a power of two"));
        }
        if reserved == 0 || fats == 0 || fat_sectors == 0 {
            return Err(FatError::NotFat("no reserved sectors, no FAT, or an empty FAT"));
        }
        let root_sectors = (root_entries * ENTRY_LEN as u64).div_ceil(bps);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        let clusters = total.checked_sub(data_sector).ok_or(FatError::NotFat("the FATs overrun the volume"))? / spc;
        // fatgen103 §3.5: the type follows from the cluster count alone.
        let kind = match clusters {
            0..4085 => FatType::Fat12,
            4085..65525 => FatType::Fat16,
            _ => FatType::Fat32,
        };
        let entry_bits = match kind {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        if (clusters + 2) * entry_bits > fat_sectors * bps * 8 {
            return Err(FatError::NotFat("the FAT is too small for the clusters"));
        }
        let last_cluster =
            u32::try_from(clusters + 1).map_err(|_| FatError::NotFat("more clusters than FAT32 can count"))?;
        let root_cluster = if kind == FatType::Fat32 { le32(&bs, 44) } else { 0 };
        Ok(Volume {
            kind,
            fat: reserved * bps,
            root: ((reserved + fats * fat_sectors) * bps, root_entries * ENTRY_LEN as u64),
            data: data_sector * bps,
            cluster_bytes: spc * bps,
            last_cluster,
            root_cluster,
        })
    }

    /// The FAT entry of `cluster`: `None` at the end of the chain,
    /// `Some(next)` otherwise (checked by the caller).
    fn next<D: Read + Seek>(&self, d: &mut D, cluster: u32) -> io::Result<Option<u32>> {
        let c = u64::from(cluster);
        let (at, len) = match self.kind {
            FatType::Fat12 => (c + c / 2, 2),
            FatType::Fat16 => (c * 2, 2),
            FatType::Fat32 => (c * 4, 4),
        };
        let mut b = [0u8; 4];
        d.seek(SeekFrom::Start(self.fat + at))?;
        d.read_exact(&mut b[..len])?;
        let (value, end) = match self.kind {
            FatType::Fat12 => {
                let v = u32::from(le16(&b, 0));
                (if cluster % 2 == 1 { v >> 4 } else { v & 0xfff }, 0xff8)
            }
            FatType::Fat16 => (u32::from(le16(&b, 0)), 0xfff8),
            FatType::Fat32 => (le32(&b, 0) & 0x0fff_ffff, 0x0fff_fff8),
        };
        Ok((value < end).then_some(value))
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data + u64::from(cluster - FIRST_CLUSTER) * self.cluster_bytes
    }
}

/// Walks every directory of the FAT volume at the start of `d`, each
/// cluster at most once; `Ok` when the tree is finite and its chains are
/// sound, so that a reader following them ends.
pub fn check_directories<D: Read + Seek>(d: &mut D) -> Result<(), FatError> {
    let vol = Volume::read(d)?;
    let mut seen: HashSet<u32> = HashSet::new();
    let mut walked: HashSet<u32> = HashSet::new();
    let mut todo: Vec<u32> = Vec::new();
    if vol.kind == FatType::Fat32 {
        todo.push(vol.root_cluster);
    } else {
        let mut root = vec![0u8; vol.root.1 as usize];
        d.seek(SeekFrom::Start(vol.root.0))?;
        d.read_exact(&mut root)?;
        subdirectories(&root, &mut todo);
    }
    let mut buf = vec![0u8; vol.cluster_bytes as usize];
    while let Some(start) = todo.pop() {
        if !walked.insert(start) {
            return Err(FatError::DirectoryLoop(start));
        }
        let mut cluster = start;
        let mut ended = false;
        loop {
            if !(FIRST_CLUSTER..=vol.last_cluster).contains(&cluster) {
                return Err(FatError::BadLink { start, next: cluster });
            }
            if !seen.insert(cluster) {
                return Err(FatError::ChainLoop { start, again: cluster });
            }
            if !ended {
                d.seek(SeekFrom::Start(vol.cluster_offset(cluster)))?;
                d.read_exact(&mut buf)?;
                ended = subdirectories(&buf, &mut todo);
            }
            match vol.next(d, cluster)? {
                Some(next) => cluster = next,
                None => break,
            }
        }
    }
    Ok(())
}

/// Adds the first clusters of the subdirectories listed in `entries` to
/// `todo` (not `.` and `..`); true when the end-of-directory entry is among
/// them.
fn subdirectories(entries: &[u8], todo: &mut Vec<u32>) -> bool {
    for e in entries.chunks_exact(ENTRY_LEN) {
        match e[0] {
            ENTRY_END => return true,
            ENTRY_FREE | b'.' => continue,
            _ => {}
        }
        let attr = e[11];
        if attr & ATTR_LONG_NAME == ATTR_LONG_NAME || attr & ATTR_VOLUME_ID != 0 || attr & ATTR_DIRECTORY == 0 {
            continue;
        }
        // The high half is 0 on FAT12/16 (fatgen103 §6).
        let first = (u32::from(le16(e, 20)) << 16) | u32::from(le16(e, 26));
        todo.push(first);
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    const MIB: usize = 1 << 20;

    /// A FAT volume of `size` bytes holding `\EFI\BOOT\BOOTX64.EFI` and
    /// `\EFI\debian\grubx64.efi`.
    fn volume(size: usize, fat: fatfs::FatType) -> Vec<u8> {
        let mut disk = Cursor::new(vec![0u8; size]);
        fatfs::format_volume(&mut disk, fatfs::FormatVolumeOptions::new().fat_type(fat)).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
            {
                let efi = fs.root_dir().create_dir("EFI").unwrap();
                efi.create_dir("BOOT").unwrap().create_file("BOOTX64.EFI").unwrap().write_all(b"MZ").unwrap();
                efi.create_dir("debian").unwrap().create_file("grubx64.efi").unwrap().write_all(b"MZ").unwrap();
            }
            fs.unmount().unwrap();
        }
        disk.into_inner()
    }

    /// The first cluster of the directory at `path` and the byte offset of
    /// its entry in its parent (found by its short name).
    pub(crate) fn first_cluster(img: &[u8], path: &str) -> (u32, usize) {
        let vol = Volume::read(&mut Cursor::new(img)).unwrap();
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let (base, len) = match parent {
            "" if vol.kind != FatType::Fat32 => (vol.root.0, vol.root.1),
            "" => (vol.cluster_offset(vol.root_cluster), vol.cluster_bytes),
            p => (vol.cluster_offset(first_cluster(img, p).0), vol.cluster_bytes),
        };
        let dir = &img[base as usize..(base + len) as usize];
        let short = format!("{:<11}", name.to_ascii_uppercase());
        let i = dir
            .chunks_exact(ENTRY_LEN)
            .position(|e| &e[..11] == short.as_bytes())
            .unwrap_or_else(|| panic!("{name} not in {parent:?}"));
        let e = &dir[i * ENTRY_LEN..];
        ((u32::from(le16(e, 20)) << 16) | u32::from(le16(e, 26)), base as usize + i * ENTRY_LEN)
    }

    pub(crate) fn set_fat(img: &mut [u8], cluster: u32, value: u32) {
        let vol = Volume::read(&mut Cursor::new(&*img)).unwrap();
        let fat = vol.fat as usize;
        let c = cluster as usize;
        match vol.kind {
            FatType::Fat12 => {
                let at = fat + c + c / 2;
                let mut v = le16(img, at);
                v = if c % 2 == 1 { (v & 0x000f) | ((value as u16) << 4) } else { (v & 0xf000) | value as u16 };
                img[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
            FatType::Fat16 => img[fat + 2 * c..fat + 2 * c + 2].copy_from_slice(&(value as u16).to_le_bytes()),
            FatType::Fat32 => img[fat + 4 * c..fat + 4 * c + 4].copy_from_slice(&value.to_le_bytes()),
        }
    }

    const TYPES: [(usize, fatfs::FatType); 3] =
        [(2 * MIB, fatfs::FatType::Fat12), (16 * MIB, fatfs::FatType::Fat16), (40 * MIB, fatfs::FatType::Fat32)];

    #[test]
    fn sound_volumes_pass_and_read_as_their_type() {
        for (size, fat) in TYPES {
            let img = volume(size, fat);
            let want = match fat {
                fatfs::FatType::Fat12 => FatType::Fat12,
                fatfs::FatType::Fat16 => FatType::Fat16,
                fatfs::FatType::Fat32 => FatType::Fat32,
            };
            assert_eq!(Volume::read(&mut Cursor::new(&img)).unwrap().kind, want);
            check_directories(&mut Cursor::new(&img)).unwrap();
        }
    }

    #[test]
    fn a_directory_chain_that_loops_is_named() {
        for (size, fat) in TYPES {
            let mut img = volume(size, fat);
            let (efi, _) = first_cluster(&img, "EFI");
            // EFI's one cluster points back to itself.
            set_fat(&mut img, efi, efi);
            let e = check_directories(&mut Cursor::new(&img)).unwrap_err();
            assert!(matches!(e, FatError::ChainLoop { start, again } if start == efi && again == efi), "{fat:?}: {e}");
            assert_eq!(
                e.to_string(),
                format!("the cluster chain of the directory starting at cluster {efi} comes back to cluster {efi}")
            );
        }
    }

    #[test]
    fn a_fat32_root_that_loops_is_named() {
        let mut img = volume(40 * MIB, fatfs::FatType::Fat32);
        let root = Volume::read(&mut Cursor::new(&img)).unwrap().root_cluster;
        set_fat(&mut img, root, root);
        let e = check_directories(&mut Cursor::new(&img)).unwrap_err();
        assert!(matches!(e, FatError::ChainLoop { start, .. } if start == root), "{e}");
    }

    #[test]
    fn a_directory_that_contains_itself_is_named() {
        for (size, fat) in TYPES {
            let mut img = volume(size, fat);
            let (efi, _) = first_cluster(&img, "EFI");
            // EFI\BOOT's entry now points at EFI itself.
            let (_, boot_entry) = first_cluster(&img, "EFI/BOOT");
            img[boot_entry + 20..boot_entry + 22].copy_from_slice(&((efi >> 16) as u16).to_le_bytes());
            img[boot_entry + 26..boot_entry + 28].copy_from_slice(&(efi as u16).to_le_bytes());
            let e = check_directories(&mut Cursor::new(&img)).unwrap_err();
            assert!(matches!(e, FatError::DirectoryLoop(c) if c == efi), "{fat:?}: {e}");
        }
    }

    #[test]
    fn chains_to_free_or_missing_clusters_are_named() {
        let mut img = volume(16 * MIB, fatfs::FatType::Fat16);
        let (debian, _) = first_cluster(&img, "EFI/debian");
        set_fat(&mut img, debian, 0xfff0);
        let e = check_directories(&mut Cursor::new(&img)).unwrap_err();
        assert!(matches!(e, FatError::BadLink { next: 0xfff0, .. }), "{e}");
        set_fat(&mut img, debian, 0);
        let e = check_directories(&mut Cursor::new(&img)).unwrap_err();
        assert!(matches!(e, FatError::BadLink { next: 0, .. }), "{e}");
    }

    #[test]
    fn a_longer_loop_is_caught_too() {
        let mut img = volume(16 * MIB, fatfs::FatType::Fat16);
        let (efi, _) = first_cluster(&img, "EFI");
        let (boot, _) = first_cluster(&img, "EFI/BOOT");
        // EFI's chain runs on into BOOT's cluster, and BOOT's back to EFI's.
        set_fat(&mut img, efi, boot);
        set_fat(&mut img, boot, efi);
        let e = check_directories(&mut Cursor::new(&img)).unwrap_err();
        assert!(matches!(e, FatError::ChainLoop { .. }), "{e}");
    }

    #[test]
    fn garbage_is_not_fat() {
        let e = check_directories(&mut Cursor::new(vec![0u8; 4096])).unwrap_err();
        assert!(matches!(e, FatError::NotFat(_)), "{e}");
        let e = check_directories(&mut Cursor::new(vec![0u8; 100])).unwrap_err();
        assert!(matches!(e, FatError::Io(_)), "{e}");
    }
}
