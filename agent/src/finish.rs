//! The finishing steps, run on the written image before its first MiB is
//! committed: move the backup GPT to the end of the disk, add the
//! ConfigDrive, and (UEFI) point the firmware at the image's loader.
//!
//! Pure logic over `Read + Write + Seek` ([`Finishing::run_on`]); the
//! pipeline hands it the disk's [`Overlay`](crate::sink::Overlay). The boot
//! entry comes back as a [`BootPlan`], planned from the firmware's variables
//! as an [`EfiVars`] reads them; the pipeline's [`Finish`] step writes it
//! through the same trait before the commit.

use std::io::{Cursor, Read, Seek, Write};
use std::sync::Arc;

use crate::bootentry::{BootPlan, EfiVars};
use crate::configdrive::{self, ConfigDrive};
use crate::deploy::Finish;
use crate::efi::{self, HardDrive, Signature};
use crate::error::{DeployError, Result};
use crate::fatwalk;
use crate::partition::{self, Gpt, Guid, Mbr, TableError};
use crate::sink::DiskWriter;
use crate::slice::Slice;

/// The firmware the server boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// UEFI: needs an EFI system partition and a boot entry.
    Uefi,
    /// Legacy BIOS: nothing to tell the firmware.
    #[default]
    Legacy,
}

/// Where the default loader of a removable medium is (UEFI §3.5.1.1).
const FALLBACK_LOADER: &str = "\\EFI\\BOOT\\BOOTX64.EFI";
/// Vendor loaders, in order of preference.
const VENDOR_LOADERS: [&str; 2] = ["shimx64.efi", "grubx64.efi"];

/// What the finishing steps do.
#[derive(Debug, Clone, Default)]
pub struct Finishing {
    /// The ConfigDrive to add, if any.
    pub configdrive: Option<ConfigDrive>,
    /// The server's firmware.
    pub firmware: Firmware,
    /// The loader to boot (`efiBootloaderPath`); found on the ESP if absent.
    pub efi_loader: Option<String>,
    /// The firmware's variables, where the boot entry goes (efivarfs, a
    /// directory in its format, memory); `None` writes no EFI variable.
    pub efivars: Option<Arc<dyn EfiVars>>,
    /// The firmware's device path of the target disk, put before the
    /// entry's `HD()` node; empty: the short form `HD()/File()`.
    pub efi_disk: Vec<u8>,
    /// What the steps did, once they ran in a deployment.
    pub outcome: Option<Finished>,
}

/// What the finishing steps did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    /// The backup GPT was moved to the end of the disk.
    pub gpt_relocated: bool,
    /// Partition number of the ConfigDrive.
    pub configdrive_partition: Option<u32>,
    /// The EFI system partition, when the firmware is UEFI.
    pub esp: Option<HardDrive>,
    /// The loader the boot entry points at.
    pub loader: Option<String>,
    /// The boot entry to write, when the firmware is UEFI and
    /// [`Finishing::efivars`] is set.
    pub boot_plan: Option<BootPlan>,
    /// The `Boot####` written.
    pub boot_entry: Option<u16>,
}

fn gpt_err(e: TableError) -> DeployError {
    DeployError::GptRelocation(e.to_string())
}

/// The partition tables of a disk as read from it.
struct Tables {
    mbr: Option<Mbr>,
    gpt: Option<Gpt>,
}

fn read_tables<D: Read + Seek>(d: &mut D, sector: u64, size: u64) -> Result<Tables> {
    let mbr = Mbr::read(d).map_err(|e| gpt_err(e.into()))?;
    let gpt = Gpt::read(d, sector, size).map_err(gpt_err)?;
    Ok(Tables { mbr, gpt })
}

/// The EFI system partition named by the tables.
fn find_esp(t: &Tables) -> Option<HardDrive> {
    if let Some(g) = &t.gpt {
        let esp = Guid::parse(partition::ESP_TYPE)?;
        return g.entries().into_iter().find(|e| e.type_guid == esp).map(|e| HardDrive {
            number: e.index + 1,
            start: e.first,
            size: e.last - e.first + 1,
            signature: Signature::Gpt(e.guid.0),
        });
    }
    let mbr = t.mbr.as_ref()?;
    mbr.entries().into_iter().find(|e| e.kind == partition::MBR_ESP).map(|e| HardDrive {
        number: e.slot as u32 + 1,
        start: u64::from(e.first),
        size: u64::from(e.sectors),
        signature: Signature::Mbr(mbr.signature()),
    })
}

impl Finishing {
    /// Checks, from the image's first bytes (enough to hold its partition
    /// tables), what can be checked before anything is written: a UEFI
    /// server needs an EFI system partition.
    pub fn check_image_start(&self, first: &[u8], sector: u32) -> Result<()> {
        if self.firmware != Firmware::Uefi {
            return Ok(());
        }
        let mut c = Cursor::new(first);
        // Tables that run past these bytes are checked after streaming.
        let Ok(tables) = read_tables(&mut c, u64::from(sector), u64::MAX / 2) else { return Ok(()) };
        if tables.mbr.is_none() && tables.gpt.is_none() {
            return Err(DeployError::NoEfiPartition);
        }
        match find_esp(&tables) {
            Some(_) => Ok(()),
            None => Err(DeployError::NoEfiPartition),
        }
    }

    /// Runs the steps on a disk of `size` bytes with `sector`-byte sectors,
    /// and plans the boot entry (reading, never writing, the EFI variables).
    pub fn run_on<D: Read + Write + Seek>(&self, d: &mut D, size: u64, sector: u32) -> Result<Finished> {
        let s = u64::from(sector);
        let lbas = size / s;
        let mut t = read_tables(d, s, size)?;
        if t.gpt.is_none() && t.mbr.as_ref().is_some_and(Mbr::is_protective) {
            return Err(DeployError::GptRelocation(format!(
                "the protective MBR announces a GPT, but there is none at LBA 1 for {sector}-byte sectors"
            )));
        }
        let mut done = Finished::default();
        if let Some(g) = &mut t.gpt {
            done.gpt_relocated = g.alternate_lba() != lbas - 1;
            g.relocate(lbas);
            if let Some(m) = &mut t.mbr {
                partition::grow_protective_mbr(m, lbas);
            }
        }
        if let Some(drive) = &self.configdrive {
            let (number, first, count) = place_configdrive(d, &mut t, drive, s, lbas)?;
            let part = Slice::new(&mut *d, first * s, count * s);
            drive
                .write_fat(part, sector)
                .map_err(|e| DeployError::ConfigDrive(format!("writing the filesystem: {e}")))?;
            done.configdrive_partition = Some(number);
        }
        if let Some(g) = &t.gpt {
            g.write(d).map_err(|e| gpt_err(e.into()))?;
        }
        if let Some(m) = &t.mbr {
            m.write(d).map_err(|e| DeployError::ConfigDrive(format!("writing the MBR: {e}")))?;
        }
        if self.firmware == Firmware::Uefi {
            let esp = find_esp(&t).ok_or(DeployError::NoEfiPartition)?;
            let loader = self.choose_loader(d, &esp, s)?;
            if let Some(vars) = &self.efivars {
                let path = efi::device_path(&self.efi_disk, &esp, &loader);
                let option = efi::load_option(efi::LOAD_OPTION_ACTIVE, efi::DESCRIPTION, &path);
                let plan = BootPlan::read(vars.as_ref(), option)
                    .map_err(|e| DeployError::BootEntry(format!("cannot use {vars}: {e}")))?;
                done.boot_plan = Some(plan);
            }
            done.esp = Some(esp);
            done.loader = Some(loader);
        }
        Ok(done)
    }

    /// Writes the boot entry `done` plans (see [`Finishing::run_on`]) to
    /// [`Finishing::efivars`]; records its number in `done`.
    pub fn write_boot_entry(&self, done: &mut Finished) -> Result<()> {
        let (Some(vars), Some(plan)) = (&self.efivars, &done.boot_plan) else { return Ok(()) };
        plan.write(vars.as_ref())
            .map_err(|e| DeployError::BootEntry(format!("writing EFI variables in {vars}: {e}")))?;
        done.boot_entry = Some(plan.number);
        Ok(())
    }

    /// The loader to boot: the one asked for (which must exist), else the
    /// removable-media fallback, else the single vendor's shim or GRUB.
    fn choose_loader<D: Read + Write + Seek>(&self, d: &mut D, esp: &HardDrive, sector: u64) -> Result<String> {
        let mut part = Slice::new(&mut *d, esp.start * sector, esp.size * sector);
        // fatfs follows cluster chains without end: make sure they end.
        fatwalk::check_directories(&mut part)
            .map_err(|e| DeployError::BootEntry(format!("the EFI system partition is damaged: {e}")))?;
        part.seek(std::io::SeekFrom::Start(0))
            .map_err(|e| DeployError::BootEntry(format!("cannot read the EFI system partition: {e}")))?;
        let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new())
            .map_err(|e| DeployError::BootEntry(format!("cannot read the EFI system partition: {e}")))?;
        let root = fs.root_dir();
        let exists = |path: &str| {
            let p = path.trim_start_matches('\\').replace('\\', "/");
            root.open_file(&p).is_ok()
        };
        if let Some(l) = &self.efi_loader {
            let l = byoi_wire::spec::efi_loader_path(l).map_err(|e| DeployError::BootEntry(e.0))?;
            return if exists(&l) {
                Ok(l)
            } else {
                Err(DeployError::BootEntry(format!("--efi-loader {l} is not on the EFI system partition")))
            };
        }
        if exists(FALLBACK_LOADER) {
            return Ok(FALLBACK_LOADER.to_owned());
        }
        let vendors: Vec<String> = root
            .open_dir("EFI")
            .map(|efi| {
                efi.iter()
                    .filter_map(|e| e.ok())
                    .filter(|e| e.is_dir() && e.file_name() != "." && e.file_name() != "..")
                    .map(|e| e.file_name())
                    .filter(|n| !n.eq_ignore_ascii_case("BOOT"))
                    .collect()
            })
            .unwrap_or_default();
        for loader in VENDOR_LOADERS {
            let found: Vec<String> =
                vendors.iter().map(|v| format!("\\EFI\\{v}\\{loader}")).filter(|p| exists(p)).collect();
            match found.len() {
                0 => continue,
                1 => return Ok(found[0].clone()),
                _ => {
                    return Err(DeployError::BootEntry(format!(
                        "several loaders on the EFI system partition ({}); choose one with --efi-loader",
                        found.join(", ")
                    )))
                }
            }
        }
        Err(DeployError::BootEntry(format!(
            "no loader found on the EFI system partition (looked for {FALLBACK_LOADER} and \\EFI\\*\\{{{}}}); name it with --efi-loader",
            VENDOR_LOADERS.join(",")
        )))
    }
}

/// Finds or makes the ConfigDrive partition: (number, first LBA, LBAs).
fn place_configdrive<D: Read + Write + Seek>(
    d: &mut D,
    t: &mut Tables,
    drive: &ConfigDrive,
    sector: u64,
    lbas: u64,
) -> Result<(u32, u64, u64)> {
    let fail = |m: &str| DeployError::ConfigDrive(m.to_owned());
    let label = drive.format.label();
    let fat_label = |d: &mut D, first: u64, count: u64| {
        configdrive::fat_volume_label(&mut Slice::new(&mut *d, first * sector, count * sector)).ok().flatten()
    };
    let count = configdrive::PARTITION_SIZE / sector;
    let align = ((1 << 20) / sector).max(1);
    if let Some(g) = &mut t.gpt {
        for e in g.entries() {
            let n = e.last - e.first + 1;
            if e.name.eq_ignore_ascii_case(label)
                || fat_label(d, e.first, n).is_some_and(|l| l.eq_ignore_ascii_case(label))
            {
                return Ok((e.index + 1, e.first, n));
            }
        }
        let first = (g.last_usable() + 1).saturating_sub(count) / align * align;
        if first <= g.last_used_lba() || first < g.first_usable() {
            return Err(fail("no 64 MiB of free space after the last partition"));
        }
        let ty = Guid::parse(partition::LINUX_DATA_TYPE).ok_or_else(|| fail("bad type GUID"))?;
        let index =
            g.add(ty, Guid::random(), first, first + count - 1, label).ok_or_else(|| fail("no free GPT entry"))?;
        return Ok((index + 1, first, count));
    }
    let Some(m) = &mut t.mbr else {
        return Err(fail("the image has no partition table"));
    };
    for e in m.entries() {
        if !partition::is_extended(e.kind)
            && fat_label(d, u64::from(e.first), u64::from(e.sectors)).is_some_and(|l| l.eq_ignore_ascii_case(label))
        {
            return Ok((e.slot as u32 + 1, u64::from(e.first), u64::from(e.sectors)));
        }
    }
    let used: Vec<usize> = m.entries().iter().map(|e| e.slot).collect();
    let slot = (0..4).find(|s| !used.contains(s)).ok_or_else(|| fail("all four primary MBR partitions are in use"))?;
    // An MBR addresses 2^32 sectors: stay below 2 TiB (512-byte sectors).
    let end = lbas.min(1 << 32);
    let first = end.saturating_sub(count) / align * align;
    if first < partition::mbr_used_end(m).max(1) {
        return Err(fail("no 64 MiB of free space after the last partition"));
    }
    m.set_entry(slot, partition::MBR_FAT32_LBA, first as u32, count as u32);
    Ok((slot as u32 + 1, first, count))
}

impl Finish for Finishing {
    fn check_image_start(&mut self, first: &[u8], sector: u32) -> Result<()> {
        Finishing::check_image_start(self, first, sector)
    }

    fn finish(&mut self, w: &mut DiskWriter<'_>) -> Result<()> {
        let mut o = w.overlay()?;
        let (size, sector) = (o.size(), o.sector_size());
        let mut done = self.run_on(&mut o, size, sector)?;
        // Before the commit (docs/lifecycle.md): should the commit fail,
        // `BootNext` names a disk without partition tables, and the firmware
        // falls through to netboot.
        self.write_boot_entry(&mut done)?;
        tracing::info!(?done, "finishing steps done");
        self.outcome = Some(done);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};
    use std::sync::Arc;

    use super::*;
    use crate::bootentry::{MemVars, ATTRS_NV_BS_RT, GLOBAL};
    use crate::sink::ImageSink;
    use crate::target::DiskTarget;

    const MIB: u64 = 1 << 20;

    /// A 16 MiB MBR disk (signature 0x1234abcd) whose one partition, at
    /// 1 MiB, is an 8 MiB EFI system partition holding the fallback loader.
    fn uefi_image() -> Vec<u8> {
        let mut disk = Cursor::new(vec![0u8; 16 * MIB as usize]);
        let mut esp = Slice::new(&mut disk, MIB, 8 * MIB);
        fatfs::format_volume(&mut esp, fatfs::FormatVolumeOptions::new()).unwrap();
        let fs = fatfs::FileSystem::new(esp, fatfs::FsOptions::new()).unwrap();
        {
            let boot = fs.root_dir().create_dir("EFI").unwrap().create_dir("BOOT").unwrap();
            boot.create_file("BOOTX64.EFI").unwrap().write_all(b"MZ").unwrap();
        }
        fs.unmount().unwrap();
        let mut mbr = Mbr { raw: [0u8; 512] };
        mbr.raw[440..444].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
        mbr.raw[510..].copy_from_slice(&[0x55, 0xaa]);
        mbr.set_entry(0, partition::MBR_ESP, 2048, 16384);
        mbr.write(&mut disk).unwrap();
        disk.into_inner()
    }

    fn uefi_with(vars: &Arc<MemVars>) -> Finishing {
        let efivars: Arc<dyn EfiVars> = vars.clone();
        Finishing { firmware: Firmware::Uefi, efivars: Some(efivars), ..Finishing::default() }
    }

    #[test]
    fn run_on_plans_the_boot_entry_and_writes_no_variable() {
        let vars = Arc::new(MemVars::new());
        vars.write("BootOrder", GLOBAL, ATTRS_NV_BS_RT, &efi::encode_boot_order(&[5])).unwrap();
        let mut disk = Cursor::new(uefi_image());
        let done = uefi_with(&vars).run_on(&mut disk, 16 * MIB, 512).unwrap();

        assert_eq!(done.loader.as_deref(), Some(FALLBACK_LOADER));
        let esp = done.esp.unwrap();
        assert_eq!(esp, HardDrive { number: 1, start: 2048, size: 16384, signature: Signature::Mbr(0x1234_abcd) });
        let plan = done.boot_plan.unwrap();
        let path = efi::device_path(&[], &esp, FALLBACK_LOADER);
        assert_eq!(plan.load_option, efi::load_option(efi::LOAD_OPTION_ACTIVE, efi::DESCRIPTION, &path));
        assert_eq!((plan.number, plan.boot_order), (0, vec![0, 5]));
        assert_eq!(vars.written(), ["BootOrder"], "run_on wrote EFI variables");
        assert_eq!(done.boot_entry, None);
    }

    /// ARCHITECTURE.md: EFI variables are written during finishing, before
    /// the commit of the held-back ends.
    #[test]
    fn the_finish_step_writes_the_variables_before_the_commit() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(32 * MIB).unwrap();
        let target = DiskTarget::open(file.path(), false).unwrap();
        let vars = Arc::new(MemVars::new());
        let mut finishing = uefi_with(&vars);
        let mut w = DiskWriter::new(&target, "raw");
        w.wipe_ends().unwrap();
        w.write_at(0, &uefi_image()).unwrap();
        w.flush().unwrap();

        Finish::finish(&mut finishing, &mut w).unwrap();
        assert_eq!(vars.written(), ["Boot0000", "BootOrder", "BootNext"]);
        let first_sector = || std::fs::read(file.path()).unwrap()[..512].to_vec();
        assert!(first_sector().iter().all(|&b| b == 0), "the MBR was on the disk before the variables");
        assert_eq!(finishing.outcome.as_ref().and_then(|o| o.boot_entry), Some(0));

        w.commit().unwrap();
        assert_eq!(first_sector()[510..], [0x55, 0xaa]);
    }

    #[test]
    fn a_looping_esp_is_refused_not_walked_forever() {
        let mut img = uefi_image();
        let esp = &mut img[MIB as usize..9 * MIB as usize];
        let (efi, _) = fatwalk::tests::first_cluster(esp, "EFI");
        fatwalk::tests::set_fat(esp, efi, efi);
        let vars = Arc::new(MemVars::new());
        let e = uefi_with(&vars).run_on(&mut Cursor::new(img), 16 * MIB, 512).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "could not set the UEFI boot entry: the EFI system partition is damaged: the cluster chain of the \
                 directory starting at cluster {efi} comes back to cluster {efi}"
            )
        );
        assert!(vars.written().is_empty());
    }

    #[test]
    fn legacy_firmware_plans_no_boot_entry() {
        let vars = Arc::new(MemVars::new());
        let finishing = Finishing { firmware: Firmware::Legacy, ..uefi_with(&vars) };
        let done = finishing.run_on(&mut Cursor::new(uefi_image()), 16 * MIB, 512).unwrap();
        assert_eq!((done.esp, done.boot_plan), (None, None));
        assert!(vars.written().is_empty());
    }
}
