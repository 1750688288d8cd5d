//! Partition tables, pure code over `Read + Write + Seek`: the MBR (and the
//! protective MBR of a GPT disk), and the GPT (UEFI spec §5.3): validation,
//! moving the backup structures to the end of a larger disk, adding an
//! entry, finding the EFI system partition.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::util::{le32, le64, GPT_SIGNATURE};

/// Smallest GPT header (revision 1.0).
const GPT_HEADER_MIN: usize = 92;
/// Largest partition-entry array we accept (the spec's usual is 16 KiB).
const MAX_ENTRY_ARRAY: u64 = 1 << 20;
/// MBR partition type of a GPT protective entry.
const MBR_PROTECTIVE: u8 = 0xee;
/// MBR partition type of an EFI system partition.
pub const MBR_ESP: u8 = 0xef;
/// MBR partition type of a FAT32 (LBA) filesystem, used for ConfigDrive.
pub const MBR_FAT32_LBA: u8 = 0x0c;
/// MBR partition types of extended partitions.
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];

/// A GUID in its on-disk byte order (first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses the usual text form, `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`.
    pub fn parse(s: &str) -> Option<Guid> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        // Text order is big-endian; the first three fields are stored
        // little-endian.
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Some(Guid(b))
    }

    /// A random (version 4) GUID.
    pub fn random() -> Guid {
        let u = uuid::Uuid::new_v4();
        Guid(u.to_bytes_le())
    }

    /// Whether all bytes are zero (an unused entry's type).
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// EFI system partition type.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Linux filesystem data, the type Ironic gives its ConfigDrive partition.
pub const LINUX_DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// What is wrong with a partition table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The structures are inconsistent.
    #[error("{0}")]
    Corrupt(String),
    /// Reading or writing the disk failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn corrupt(msg: impl Into<String>) -> TableError {
    TableError::Corrupt(msg.into())
}

fn read_at<D: Read + Seek>(d: &mut D, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    d.seek(SeekFrom::Start(offset))?;
    d.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_at<D: Write + Seek>(d: &mut D, offset: u64, data: &[u8]) -> io::Result<()> {
    d.seek(SeekFrom::Start(offset))?;
    d.write_all(data)
}

/// One primary MBR entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrEntry {
    /// Slot, 0 to 3 (partition number minus one).
    pub slot: usize,
    /// Partition type byte.
    pub kind: u8,
    /// First sector.
    pub first: u32,
    /// Number of sectors.
    pub sectors: u32,
}

/// The MBR in the first sector.
#[derive(Debug, Clone)]
pub struct Mbr {
    /// The whole first 512 bytes.
    pub raw: [u8; 512],
}

impl Mbr {
    /// Reads LBA 0; `None` without the 0x55AA signature.
    pub fn read<D: Read + Seek>(d: &mut D) -> io::Result<Option<Mbr>> {
        let b = read_at(d, 0, 512)?;
        if b[510..512] != [0x55, 0xaa] {
            return Ok(None);
        }
        let mut raw = [0u8; 512];
        raw.copy_from_slice(&b);
        Ok(Some(Mbr { raw }))
    }

    /// The disk signature at offset 440.
    pub fn signature(&self) -> u32 {
        le32(&self.raw, 440)
    }

    /// Used primary entries.
    pub fn entries(&self) -> Vec<MbrEntry> {
        (0..4)
            .map(|slot| {
                let e = &self.raw[446 + 16 * slot..446 + 16 * (slot + 1)];
                MbrEntry { slot, kind: e[4], first: le32(e, 8), sectors: le32(e, 12) }
            })
            .filter(|e| e.kind != 0 && e.sectors != 0)
            .collect()
    }

    /// Whether this is a GPT's protective MBR.
    pub fn is_protective(&self) -> bool {
        self.entries().iter().any(|e| e.kind == MBR_PROTECTIVE)
    }

    /// Sets slot `slot` (CHS fields say "use LBA").
    pub fn set_entry(&mut self, slot: usize, kind: u8, first: u32, sectors: u32) {
        let e = &mut self.raw[446 + 16 * slot..446 + 16 * (slot + 1)];
        e[0] = 0;
        e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[4] = kind;
        e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[8..12].copy_from_slice(&first.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
    }

    /// Writes LBA 0.
    pub fn write<D: Write + Seek>(&self, d: &mut D) -> io::Result<()> {
        write_at(d, 0, &self.raw)
    }
}

/// One used GPT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    /// Index in the entry array (partition number minus one).
    pub index: u32,
    /// Partition type.
    pub type_guid: Guid,
    /// Unique partition GUID (what `HD()` device paths and PARTUUID name).
    pub guid: Guid,
    /// First LBA.
    pub first: u64,
    /// Last LBA, inclusive.
    pub last: u64,
    /// Partition name (UTF-16LE on disk).
    pub name: String,
}

/// A validated GUID partition table.
#[derive(Debug, Clone)]
pub struct Gpt {
    /// Logical sector size the table was read with.
    pub sector: u64,
    /// The primary header, `header_size` bytes.
    header: Vec<u8>,
    /// The partition-entry array.
    entries: Vec<u8>,
    /// Where the backup header was before `relocate`, to erase it.
    old_backup: Option<(u64, u64)>,
}

impl Gpt {
    /// Reads and validates the primary GPT of a disk of `disk_bytes` bytes
    /// with `sector`-byte sectors. `None` when LBA 1 holds no GPT header.
    pub fn read<D: Read + Seek>(d: &mut D, sector: u64, disk_bytes: u64) -> Result<Option<Gpt>, TableError> {
        let lba1 = read_at(d, sector, sector as usize)?;
        if &lba1[..8] != GPT_SIGNATURE {
            return Ok(None);
        }
        let header_size = le32(&lba1, 12) as usize;
        if !(GPT_HEADER_MIN..=sector as usize).contains(&header_size) {
            return Err(corrupt(format!("GPT header size {header_size} is invalid")));
        }
        let mut header = lba1[..header_size].to_vec();
        let crc = le32(&header, 16);
        header[16..20].fill(0);
        if crc32fast::hash(&header) != crc {
            return Err(corrupt("the primary GPT header checksum is wrong"));
        }
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        let disk_lbas = disk_bytes / sector;
        let g = Gpt { sector, header, entries: Vec::new(), old_backup: None };
        if g.my_lba() != 1 {
            return Err(corrupt(format!("the primary GPT header says it is at LBA {}", g.my_lba())));
        }
        let (count, size) = (u64::from(g.entry_count()), u64::from(g.entry_size()));
        if size < 128 || !size.is_power_of_two() || count * size > MAX_ENTRY_ARRAY || count == 0 {
            return Err(corrupt(format!("GPT partition-entry array of {count} entries of {size} bytes")));
        }
        let array_sectors = (count * size).div_ceil(sector);
        if g.entries_lba() < 2 || g.entries_lba() + array_sectors > g.first_usable() {
            return Err(corrupt("the GPT partition-entry array overlaps the usable space"));
        }
        if g.first_usable() > g.last_usable() || g.alternate_lba() <= g.last_usable() {
            return Err(corrupt("the GPT usable space is inconsistent"));
        }
        if g.alternate_lba() >= disk_lbas {
            return Err(corrupt(format!(
                "the backup GPT header is at LBA {}, past the end of the disk ({disk_lbas} sectors)",
                g.alternate_lba()
            )));
        }
        let entries = read_at(d, g.entries_lba() * sector, (count * size) as usize)?;
        if crc32fast::hash(&entries) != le32(&g.header, 88) {
            return Err(corrupt("the GPT partition-entry array checksum is wrong"));
        }
        let g = Gpt { entries, ..g };
        for e in g.entries() {
            if e.first > e.last || e.first < g.first_usable() || e.last > g.last_usable() {
                return Err(corrupt(format!(
                    "partition {} spans LBAs {}..={}, outside the usable space {}..={}",
                    e.index + 1,
                    e.first,
                    e.last,
                    g.first_usable(),
                    g.last_usable()
                )));
            }
        }
        Ok(Some(g))
    }

    fn field64(&self, at: usize) -> u64 {
        le64(&self.header, at)
    }

    fn set64(&mut self, at: usize, v: u64) {
        self.header[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// LBA of this header.
    pub fn my_lba(&self) -> u64 {
        self.field64(24)
    }
    /// LBA of the other header.
    pub fn alternate_lba(&self) -> u64 {
        self.field64(32)
    }
    /// First LBA partitions may use.
    pub fn first_usable(&self) -> u64 {
        self.field64(40)
    }
    /// Last LBA partitions may use.
    pub fn last_usable(&self) -> u64 {
        self.field64(48)
    }
    /// The disk GUID.
    pub fn disk_guid(&self) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&self.header[56..72]);
        Guid(g)
    }
    /// LBA of the primary partition-entry array.
    pub fn entries_lba(&self) -> u64 {
        self.field64(72)
    }
    /// Number of entries in the array.
    pub fn entry_count(&self) -> u32 {
        le32(&self.header, 80)
    }
    /// Size of one entry.
    pub fn entry_size(&self) -> u32 {
        le32(&self.header, 84)
    }

    fn array_sectors(&self) -> u64 {
        (u64::from(self.entry_count()) * u64::from(self.entry_size())).div_ceil(self.sector)
    }

    /// The used entries.
    pub fn entries(&self) -> Vec<GptEntry> {
        let size = self.entry_size() as usize;
        self.entries
            .chunks_exact(size)
            .enumerate()
            .filter_map(|(i, e)| {
                let mut t = [0u8; 16];
                t.copy_from_slice(&e[..16]);
                let type_guid = Guid(t);
                if type_guid.is_nil() {
                    return None;
                }
                let mut u = [0u8; 16];
                u.copy_from_slice(&e[16..32]);
                let units: Vec<u16> = e[56..128]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&c| c != 0)
                    .collect();
                Some(GptEntry {
                    index: i as u32,
                    type_guid,
                    guid: Guid(u),
                    first: le64(e, 32),
                    last: le64(e, 40),
                    name: String::from_utf16_lossy(&units),
                })
            })
            .collect()
    }

    /// Moves the backup header and entry array to the last LBAs of a disk
    /// of `disk_lbas` sectors and grows the usable space to match.
    pub fn relocate(&mut self, disk_lbas: u64) {
        let backup = disk_lbas - 1;
        if backup == self.alternate_lba() {
            return;
        }
        self.old_backup = Some((self.alternate_lba(), self.alternate_lba() - self.array_sectors()));
        self.set64(32, backup);
        self.set64(48, backup - self.array_sectors() - 1);
    }

    /// The largest LBA any partition ends at (0 without partitions).
    pub fn last_used_lba(&self) -> u64 {
        self.entries().iter().map(|e| e.last).max().unwrap_or(0)
    }

    /// Adds an entry in the first free slot; returns its index.
    pub fn add(&mut self, type_guid: Guid, guid: Guid, first: u64, last: u64, name: &str) -> Option<u32> {
        let size = self.entry_size() as usize;
        let index = self.entries.chunks_exact(size).position(|e| e[..16] == [0u8; 16])?;
        let e = &mut self.entries[index * size..(index + 1) * size];
        e.fill(0);
        e[..16].copy_from_slice(&type_guid.0);
        e[16..32].copy_from_slice(&guid.0);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (i, unit) in name.encode_utf16().take(35).enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        Some(index as u32)
    }

    fn header_with_crc(&self, my: u64, alternate: u64, entries_lba: u64) -> Vec<u8> {
        let mut h = self.header.clone();
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&self.entries).to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Writes both headers and both entry arrays (and erases the backup
    /// header's old copy after a move), with fresh checksums.
    pub fn write<D: Write + Seek>(&self, d: &mut D) -> io::Result<()> {
        let s = self.sector;
        let backup = self.alternate_lba();
        let backup_entries = backup - self.array_sectors();
        if let Some((old_header, old_entries)) = self.old_backup {
            let zeros = vec![0u8; ((old_header - old_entries + 1) * s) as usize];
            write_at(d, old_entries * s, &zeros)?;
        }
        let sector_of = |h: Vec<u8>| {
            let mut v = h;
            v.resize(s as usize, 0);
            v
        };
        write_at(d, s, &sector_of(self.header_with_crc(1, backup, self.entries_lba())))?;
        write_at(d, self.entries_lba() * s, &self.entries)?;
        write_at(d, backup_entries * s, &self.entries)?;
        write_at(d, backup * s, &sector_of(self.header_with_crc(backup, 1, backup_entries)))
    }
}

/// Grows the protective MBR's 0xEE entry to cover a disk of `disk_lbas`.
/// Leaves it untouched when it already does; otherwise only the size and
/// the ending CHS change (UEFI spec §5.2.3: 0xFFFFFF when the last LBA has
/// no CHS address), the rest as the image's tool wrote it.
pub fn grow_protective_mbr(mbr: &mut Mbr, disk_lbas: u64) {
    if let Some(e) = mbr.entries().into_iter().find(|e| e.kind == MBR_PROTECTIVE) {
        let sectors = (disk_lbas - 1).min(u64::from(u32::MAX)) as u32;
        if e.sectors == sectors {
            return;
        }
        let raw = &mut mbr.raw[446 + 16 * e.slot..446 + 16 * (e.slot + 1)];
        raw[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        raw[12..16].copy_from_slice(&sectors.to_le_bytes());
    }
}

/// Where the end of the last MBR partition is (extended partitions count
/// whole), in sectors.
pub fn mbr_used_end(mbr: &Mbr) -> u64 {
    mbr.entries().iter().map(|e| u64::from(e.first) + u64::from(e.sectors)).max().unwrap_or(0)
}

/// Whether an MBR entry is an extended partition.
pub fn is_extended(kind: u8) -> bool {
    MBR_EXTENDED.contains(&kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn protective_mbr_grows_only_when_needed_and_keeps_its_chs() {
        let mut mbr = Mbr { raw: [0; 512] };
        let e = &mut mbr.raw[446..462];
        // As sgdisk writes it: start CHS 0/0/2, end CHS of the last LBA.
        e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        e[4] = MBR_PROTECTIVE;
        e[5..8].copy_from_slice(&[0x2a, 0xa0, 0x0a]);
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        e[12..16].copy_from_slice(&2047u32.to_le_bytes());
        let before = mbr.raw;
        grow_protective_mbr(&mut mbr, 2048);
        assert_eq!(mbr.raw, before, "an MBR that covers the disk is left byte for byte");
        grow_protective_mbr(&mut mbr, 4096);
        let e = &mbr.raw[446..462];
        assert_eq!(e[1..5], [0x00, 0x02, 0x00, MBR_PROTECTIVE]);
        assert_eq!(e[5..8], [0xff, 0xff, 0xff]);
        assert_eq!(le32(e, 8), 1);
        assert_eq!(le32(e, 12), 4095);
        assert_eq!(mbr.raw[..446], before[..446]);
    }

    #[test]
    fn guid_round_trips_in_mixed_endian() {
        let g = Guid::parse(ESP_TYPE).unwrap();
        assert_eq!(g.0[..4], [0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(g.to_string(), ESP_TYPE);
        assert!(Guid::parse("nope").is_none());
    }

    /// A minimal valid GPT on a disk of `lbas` 512-byte sectors whose
    /// backup is at `backup`.
    pub(crate) fn tiny_gpt(lbas: u64, backup: u64) -> Vec<u8> {
        let mut d = vec![0u8; (lbas * 512) as usize];
        let mut mbr = Mbr { raw: [0; 512] };
        mbr.raw[510] = 0x55;
        mbr.raw[511] = 0xaa;
        mbr.set_entry(0, MBR_PROTECTIVE, 1, (backup) as u32);
        d[..512].copy_from_slice(&mbr.raw);
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(GPT_SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(backup - 33).to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        let mut g = Gpt { sector: 512, header: h, entries: vec![0; 128 * 128], old_backup: None };
        g.add(Guid::parse(ESP_TYPE).unwrap(), Guid::random(), 2048, 4095, "EFI").unwrap();
        g.write(&mut Cursor::new(&mut d)).unwrap();
        d
    }

    #[test]
    fn relocates_and_reads_back() {
        let mut d = tiny_gpt(8192, 8191);
        d.resize(16384 * 512, 0);
        let mut c = Cursor::new(&mut d);
        let mut g = Gpt::read(&mut c, 512, 16384 * 512).unwrap().unwrap();
        assert_eq!(g.alternate_lba(), 8191);
        g.relocate(16384);
        g.write(&mut c).unwrap();
        let g2 = Gpt::read(&mut c, 512, 16384 * 512).unwrap().unwrap();
        assert_eq!(g2.alternate_lba(), 16383);
        assert_eq!(g2.last_usable(), 16383 - 32 - 1);
        assert_eq!(g2.entries()[0].name, "EFI");
        assert_eq!(&d[8191 * 512..8191 * 512 + 8], &[0u8; 8], "old backup header left behind");
        assert_eq!(&d[16383 * 512..16383 * 512 + 8], GPT_SIGNATURE);
    }

    #[test]
    fn corrupt_tables_are_named() {
        let good = tiny_gpt(8192, 8191);
        let cases: [(usize, &str); 3] =
            [(512 + 16, "header checksum"), (1024 + 40, "entry array checksum"), (512 + 2, "no GPT")];
        for (at, want) in cases {
            let mut d = good.clone();
            d[at] ^= 0xff;
            let r = Gpt::read(&mut Cursor::new(&mut d), 512, 8192 * 512);
            match (r, want) {
                (Ok(None), "no GPT") => {}
                (Err(e), w) => assert!(e.to_string().contains(w.split(' ').next_back().unwrap()), "{e} vs {w}"),
                (other, w) => panic!("{w}: {other:?}"),
            }
        }
        // Backup header past the end of a smaller disk.
        let mut d = good.clone();
        let e = Gpt::read(&mut Cursor::new(&mut d), 512, 4096 * 512).unwrap_err();
        assert!(e.to_string().contains("past the end of the disk"), "{e}");
    }
}
