//! What the server has, read from sysfs and procfs (roots are parameters,
//! so tests use a fake tree): disks, NICs, memory, firmware.

use std::path::Path;

use byoi_wire::agent::{Disk, DiskSelector, Inventory, Nic};
use byoi_wire::BootMode;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Block devices that are not disks.
fn skip_block(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"].iter().any(|p| name.starts_with(p))
}

/// The transport of a block device, from where it sits in the device tree.
fn transport(name: &str, devpath: &str) -> &'static str {
    if name.starts_with("nvme") {
        "nvme"
    } else if devpath.contains("/virtio") {
        "virtio"
    } else if devpath.contains("/usb") {
        "usb"
    } else if devpath.contains("/ata") {
        "sata"
    } else if devpath.contains("/end_device-") || devpath.contains("/port-") {
        "sas"
    } else if name.starts_with("sd") {
        "scsi"
    } else {
        "unknown"
    }
}

/// Gathers the inventory. `sys` is `/sys`, `proc` is `/proc`.
pub fn gather(sys: &Path, proc: &Path) -> Inventory {
    let mut disks = Vec::new();
    if let Ok(entries) = std::fs::read_dir(sys.join("block")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if skip_block(&name) {
                continue;
            }
            let dir = e.path();
            // NVMe multipath's per-path nodes (nvme0c0n1) are hidden: the
            // disk is the namespace head (nvme0n1).
            if read(&dir.join("hidden")) == "1" {
                continue;
            }
            let sectors: u64 = read(&dir.join("size")).parse().unwrap_or(0);
            if sectors == 0 {
                continue;
            }
            let devpath = std::fs::canonicalize(&dir).map(|p| p.display().to_string()).unwrap_or_default();
            let first =
                |names: &[&str]| names.iter().map(|n| read(&dir.join(n))).find(|v| !v.is_empty()).unwrap_or_default();
            disks.push(Disk {
                name: name.clone(),
                size_bytes: sectors * 512,
                model: first(&["device/model"]),
                serial: first(&["device/serial", "serial", "device/vpd_pg80"]),
                wwn: first(&["wwid", "device/wwid"]),
                rotational: read(&dir.join("queue/rotational")) == "1",
                transport: transport(&name, &devpath).to_owned(),
                logical_sector_size: read(&dir.join("queue/logical_block_size")).parse().unwrap_or(512),
            });
        }
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    let mut nics = Vec::new();
    if let Ok(entries) = std::fs::read_dir(sys.join("class/net")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            // Only physical devices: virtual ones (lo, bridges) have no `device`.
            if name == "lo" || !dir.join("device").exists() {
                continue;
            }
            nics.push(Nic {
                name,
                mac: read(&dir.join("address")).to_ascii_lowercase(),
                link: read(&dir.join("carrier")) == "1",
                speed_mbps: read(&dir.join("speed")).parse::<i64>().ok().filter(|s| *s > 0).map(|s| s as u32),
            });
        }
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    let memory_bytes = read(&proc.join("meminfo"))
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024);
    let firmware = if sys.join("firmware/efi").exists() { BootMode::Uefi } else { BootMode::Legacy };
    Inventory { firmware, memory_bytes, disks, nics }
}

/// The disk a job names, or why none fits: serial or WWN must match (when
/// the job has them), and the size always; never the kernel name.
pub fn find_disk<'a>(inv: &'a Inventory, sel: &DiskSelector) -> Result<&'a Disk, String> {
    let matches: Vec<&Disk> = inv
        .disks
        .iter()
        .filter(|d| d.size_bytes == sel.size_bytes)
        .filter(|d| sel.serial.is_empty() || d.serial == sel.serial)
        .filter(|d| sel.wwn.is_empty() || d.wwn == sel.wwn)
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no disk with serial {:?}, WWN {:?} and {} bytes on this server; refusing to guess",
            sel.serial, sel.wwn, sel.size_bytes
        )),
        many => Err(format!(
            "{} disks match serial {:?}, WWN {:?} and {} bytes; refusing to guess",
            many.len(),
            sel.serial,
            sel.wwn,
            sel.size_bytes
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn put(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// A fake /sys and /proc: an NVMe disk (and its hidden multipath
    /// node), a virtio disk, a SATA disk, a
    /// loop device, a NIC with link and one without, lo.
    fn fake() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let dev = |rel: &str, files: &[(&str, &str)]| {
            for (f, c) in files {
                put(r, &format!("sys/devices/{rel}/{f}"), c);
            }
        };
        dev(
            "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
            &[
                ("size", "2000409264\n"),
                ("device/model", "Samsung SSD 980 \n"),
                ("device/serial", "S64DNF0R123\n"),
                ("wwid", "eui.0025385b11223344\n"),
                ("queue/rotational", "0\n"),
                ("queue/logical_block_size", "512\n"),
            ],
        );
        dev(
            "pci0000:00/0000:00:05.0/virtio2/block/vda",
            &[
                ("size", "16777216\n"),
                ("serial", "disk-A\n"),
                ("queue/rotational", "1\n"),
                ("queue/logical_block_size", "512\n"),
            ],
        );
        dev(
            "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
            &[
                ("size", "7814037168\n"),
                ("device/model", "ST4000NM0035\n"),
                ("device/wwid", "naa.5000c500a1b2c3d4\n"),
                ("queue/rotational", "1\n"),
                ("queue/logical_block_size", "4096\n"),
            ],
        );
        dev(
            "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0c0n1",
            &[("size", "2000409264\n"), ("hidden", "1\n"), ("device/serial", "S64DNF0R123\n")],
        );
        dev("virtual/block/loop0", &[("size", "100\n")]);
        std::fs::create_dir_all(r.join("sys/block")).unwrap();
        for (name, rel) in [
            ("nvme0n1", "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1"),
            ("nvme0c0n1", "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0c0n1"),
            ("vda", "pci0000:00/0000:00:05.0/virtio2/block/vda"),
            ("sda", "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda"),
            ("loop0", "virtual/block/loop0"),
        ] {
            symlink(r.join("sys/devices").join(rel), r.join("sys/block").join(name)).unwrap();
        }
        for (name, mac, carrier, device) in [
            ("eth0", "52:54:00:AA:BB:01", "1", true),
            ("eth1", "52:54:00:aa:bb:02", "0", true),
            ("lo", "00:00:00:00:00:00", "1", false),
        ] {
            put(r, &format!("sys/class/net/{name}/address"), &format!("{mac}\n"));
            put(r, &format!("sys/class/net/{name}/carrier"), carrier);
            if device {
                std::fs::create_dir_all(r.join(format!("sys/class/net/{name}/device"))).unwrap();
            }
        }
        put(r, "sys/class/net/eth0/speed", "10000\n");
        put(r, "proc/meminfo", "MemTotal:        8148324 kB\nMemFree:  1 kB\n");
        std::fs::create_dir_all(r.join("sys/firmware/efi")).unwrap();
        t
    }

    #[test]
    fn inventory_from_a_fake_sysfs() {
        let t = fake();
        let inv = gather(&t.path().join("sys"), &t.path().join("proc"));
        assert_eq!(inv.firmware, BootMode::Uefi);
        assert_eq!(inv.memory_bytes, 8_148_324 * 1024);
        let names: Vec<&str> = inv.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "vda"]);
        let nvme = &inv.disks[0];
        assert_eq!(
            (nvme.model.as_str(), nvme.serial.as_str(), nvme.wwn.as_str()),
            ("Samsung SSD 980", "S64DNF0R123", "eui.0025385b11223344")
        );
        assert_eq!((nvme.transport.as_str(), nvme.rotational, nvme.size_bytes), ("nvme", false, 2_000_409_264 * 512));
        assert_eq!((inv.disks[1].transport.as_str(), inv.disks[1].logical_sector_size), ("sata", 4096));
        assert_eq!((inv.disks[2].transport.as_str(), inv.disks[2].serial.as_str()), ("virtio", "disk-A"));
        assert_eq!(inv.nics.len(), 2);
        assert_eq!(
            (inv.nics[0].mac.as_str(), inv.nics[0].link, inv.nics[0].speed_mbps),
            ("52:54:00:aa:bb:01", true, Some(10000))
        );
        assert!(!inv.nics[1].link);
    }

    #[test]
    fn disks_are_found_by_serial_wwn_and_size_only() {
        let t = fake();
        let inv = gather(&t.path().join("sys"), &t.path().join("proc"));
        let sel = |serial: &str, wwn: &str, size: u64| DiskSelector {
            serial: serial.into(),
            wwn: wwn.into(),
            size_bytes: size,
        };
        assert_eq!(find_disk(&inv, &sel("disk-A", "", 8 << 30)).unwrap().name, "vda");
        assert_eq!(find_disk(&inv, &sel("", "naa.5000c500a1b2c3d4", 7_814_037_168 * 512)).unwrap().name, "sda");
        let e = find_disk(&inv, &sel("disk-A", "", 9 << 30)).unwrap_err();
        assert!(e.contains("refusing to guess"), "{e}");
        assert!(find_disk(&inv, &sel("other", "", 8 << 30)).is_err());
    }
}
