//! UEFI boot entries, pure: `EFI_LOAD_OPTION` encoding and decoding (UEFI
//! spec §3.1.3), device paths (§10.3), and where our entry goes in
//! `BootOrder`. The entry's plan is [`crate::bootentry`]'s; the variables'
//! files, [`crate::efivars`]'s.

/// `LOAD_OPTION_ACTIVE`.
pub const LOAD_OPTION_ACTIVE: u32 = 0x0000_0001;
/// Description of the entries we write, and how we find them again.
pub const DESCRIPTION: &str = "byoi";

// Device path node types and subtypes (UEFI §10.3.1).
const MEDIA: u8 = 0x04;
const MEDIA_HARD_DRIVE: u8 = 0x01;
const MEDIA_FILE_PATH: u8 = 0x04;
const HARDWARE: u8 = 0x01;
const HW_PCI: u8 = 0x01;
const ACPI: u8 = 0x02;
const ACPI_DP: u8 = 0x01;
/// `EISA_PNP_ID(0x0A03)`: a PCI root bridge, as firmware names it in
/// `PciRoot()` (edk2 uses it for PCIe roots too).
const PNP0A03: u32 = 0x0a03_41d0;
const MESSAGING: u8 = 0x03;
const MSG_SATA: u8 = 18;
const MSG_NVME: u8 = 23;
const MSG_MAC: u8 = 11;
const MSG_IPV4: u8 = 12;
const MSG_IPV6: u8 = 13;
const MSG_URI: u8 = 24;
const END: u8 = 0x7f;
const END_ENTIRE: u8 = 0xff;

/// A partition as a `HD()` device path node names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardDrive {
    /// 1-based partition number.
    pub number: u32,
    /// First LBA.
    pub start: u64,
    /// Size in LBAs.
    pub size: u64,
    /// GPT partition GUID (on-disk byte order) or MBR disk signature.
    pub signature: Signature,
}

/// How a `HD()` node identifies the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// GPT: the unique partition GUID, as stored on disk.
    Gpt([u8; 16]),
    /// MBR: the 32-bit disk signature at offset 440.
    Mbr(u32),
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16().chain(std::iter::once(0)).flat_map(u16::to_le_bytes).collect()
}

/// How the disk hangs off its PCI function, for the node after the
/// `Pci()` nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskNode {
    /// Nothing more: virtio-blk is the PCI function itself.
    None,
    /// `NVMe(nsid, eui64)`, the EUI-64 in the controller's byte order.
    Nvme { namespace: u32, eui64: [u8; 8] },
    /// `Sata(port, 0xFFFF, lun)`: an AHCI port, no port multiplier.
    Sata { port: u16, lun: u16 },
}

/// The device path of a whole disk, `PciRoot(uid)/Pci(d,f)/…/[node]`
/// without an end node, from its sysfs device path (e.g.
/// `/sys/devices/pci0000:00/0000:00:03.0/virtio1/block/vda`). `None` when
/// the path does not start at a PCI root.
///
/// Firmware matches boot options against its own paths: OVMF keeps only
/// options whose path starts like a device QEMU gave a `bootindex`, so the
/// short form `HD()/File()` alone may be dropped before `BootNext` is read.
pub fn disk_prefix(sysfs: &str, root_uid: u32, leaf: DiskNode) -> Option<Vec<u8>> {
    let mut parts = sysfs.strip_prefix("/sys/devices/")?.split('/');
    parts.next()?.strip_prefix("pci")?;
    let mut p = vec![ACPI, ACPI_DP, 12, 0];
    p.extend_from_slice(&PNP0A03.to_le_bytes());
    p.extend_from_slice(&root_uid.to_le_bytes());
    let mut functions = 0;
    for part in parts {
        // DDDD:BB:DD.F
        let Some((dev, func)) = part.rsplit_once('.') else { break };
        let Some(dev) = dev.rsplit(':').next() else { break };
        let (Ok(dev), Ok(func)) = (u8::from_str_radix(dev, 16), u8::from_str_radix(func, 16)) else { break };
        if part.len() != 12 {
            break;
        }
        p.extend_from_slice(&[HARDWARE, HW_PCI, 6, 0, func, dev]);
        functions += 1;
    }
    if functions == 0 {
        return None;
    }
    match leaf {
        DiskNode::None => {}
        DiskNode::Nvme { namespace, eui64 } => {
            p.extend_from_slice(&[MESSAGING, MSG_NVME, 16, 0]);
            p.extend_from_slice(&namespace.to_le_bytes());
            p.extend_from_slice(&eui64);
        }
        DiskNode::Sata { port, lun } => {
            p.extend_from_slice(&[MESSAGING, MSG_SATA, 10, 0]);
            p.extend_from_slice(&port.to_le_bytes());
            p.extend_from_slice(&0xffffu16.to_le_bytes());
            p.extend_from_slice(&lun.to_le_bytes());
        }
    }
    Some(p)
}

/// The device path `[disk]/HD(…)/File(path)/End`; `disk` is the
/// [`disk_prefix`], empty for the short form.
pub fn device_path(disk: &[u8], hd: &HardDrive, path: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(128);
    p.extend_from_slice(disk);
    // Hard Drive Media Device Path: 42 bytes.
    p.extend_from_slice(&[MEDIA, MEDIA_HARD_DRIVE, 42, 0]);
    p.extend_from_slice(&hd.number.to_le_bytes());
    p.extend_from_slice(&hd.start.to_le_bytes());
    p.extend_from_slice(&hd.size.to_le_bytes());
    let (sig, mbr_type, sig_type) = match hd.signature {
        Signature::Gpt(g) => (g, 0x02, 0x02),
        Signature::Mbr(s) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&s.to_le_bytes());
            (b, 0x01, 0x01)
        }
    };
    p.extend_from_slice(&sig);
    p.push(mbr_type);
    p.push(sig_type);
    // File Path Media Device Path.
    let name = utf16z(path);
    let len = u16::try_from(4 + name.len()).unwrap_or(u16::MAX);
    p.extend_from_slice(&[MEDIA, MEDIA_FILE_PATH]);
    p.extend_from_slice(&len.to_le_bytes());
    p.extend_from_slice(&name);
    p.extend_from_slice(&[END, END_ENTIRE, 4, 0]);
    p
}

/// An `EFI_LOAD_OPTION`: attributes, file path list length, description,
/// device path, no optional data.
pub fn load_option(attributes: u32, description: &str, device_path: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(6 + 2 * description.len() + 2 + device_path.len());
    v.extend_from_slice(&attributes.to_le_bytes());
    v.extend_from_slice(&u16::try_from(device_path.len()).unwrap_or(u16::MAX).to_le_bytes());
    v.extend_from_slice(&utf16z(description));
    v.extend_from_slice(device_path);
    v
}

/// A decoded load option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    /// Attributes.
    pub attributes: u32,
    /// Description.
    pub description: String,
    /// The device path list.
    pub device_path: Vec<u8>,
}

/// Decodes a load option; `None` if malformed.
pub fn parse_load_option(b: &[u8]) -> Option<LoadOption> {
    let attributes = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
    let fp_len = usize::from(u16::from_le_bytes(b.get(4..6)?.try_into().ok()?));
    let mut units = Vec::new();
    let mut i = 6;
    loop {
        let u = u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?);
        i += 2;
        if u == 0 {
            break;
        }
        units.push(u);
    }
    let device_path = b.get(i..i + fp_len)?.to_vec();
    Some(LoadOption { attributes, description: String::from_utf16_lossy(&units), device_path })
}

/// The (type, subtype) of each node of a device path, stopping at the end
/// node or at the first malformed length.
pub fn nodes(path: &[u8]) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(h) = path.get(i..i + 4) {
        let len = usize::from(u16::from_le_bytes([h[2], h[3]]));
        if h[0] == END || len < 4 {
            break;
        }
        out.push((h[0], h[1]));
        i += len;
    }
    out
}

/// Whether a boot option boots from the network (PXE, HTTP boot, iPXE):
/// its device path has a MAC, IPv4, IPv6 or URI node.
pub fn is_network(option: &LoadOption) -> bool {
    nodes(&option.device_path)
        .iter()
        .any(|&(t, s)| t == MESSAGING && matches!(s, MSG_MAC | MSG_IPV4 | MSG_IPV6 | MSG_URI))
}

/// `BootOrder` with `ours` placed right after the last network entry (or
/// first when there is none), so netboot stays ahead of the disk and the
/// controller keeps control of the server.
pub fn boot_order_with(order: &[u16], ours: u16, is_network: impl Fn(u16) -> bool) -> Vec<u16> {
    let mut rest: Vec<u16> = order.iter().copied().filter(|&n| n != ours).collect();
    let at = rest.iter().rposition(|&n| is_network(n)).map_or(0, |i| i + 1);
    rest.insert(at, ours);
    rest
}

/// Decodes a `BootOrder` value (little-endian u16s).
pub fn parse_boot_order(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}

/// Encodes a `BootOrder` value.
pub fn encode_boot_order(order: &[u16]) -> Vec<u8> {
    order.iter().flat_map(|n| n.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The start of a real Boot variable as dumped by an EFI shell
    /// (openSUSE, `neuerkern`, HD(1,GPT,f890c477-ded1-4b69-bc85-0c1f307940f6,
    /// 0x800,0x4e000)/File(…)): attributes, path-list length 0x66, the
    /// description, the 42-byte HD node, the File node header.
    #[test]
    fn matches_a_firmware_dump() {
        let want = hex("01000000 6600 6e00 6500 7500 6500 7200 6b00 6500 7200 6e00 0000
             04012a00 01000000 0008000000000000 00e0040000000000
             77c490f8d1de694bbc850c1f307940f6 02 02
             04043800 5c00450046004900");
        let guid = crate::partition::Guid::parse("F890C477-DED1-4B69-BC85-0C1F307940F6").unwrap();
        let hd = HardDrive { number: 1, start: 0x800, size: 0x4e000, signature: Signature::Gpt(guid.0) };
        // A 25-character path gives the File node length 0x38 of the dump.
        let path = "\\EFI\\opensuse\\bzImage-3.1";
        assert_eq!(path.encode_utf16().count(), 25);
        let opt = load_option(LOAD_OPTION_ACTIVE, "neuerkern", &device_path(&[], &hd, path));
        assert_eq!(&opt[..want.len()], &want[..]);
        assert_eq!(opt.len(), 6 + 20 + 0x66);
    }

    /// A full entry as `efibootmgr -c -d /dev/sda -p 1 -L debian -l
    /// '\EFI\debian\shimx64.efi'` writes it on an MBR disk with signature
    /// 0x1234abcd and an ESP at 2048 of 1048576 sectors.
    #[test]
    fn mbr_entry_bytes() {
        let hd = HardDrive { number: 1, start: 2048, size: 1_048_576, signature: Signature::Mbr(0x1234_abcd) };
        let opt = load_option(LOAD_OPTION_ACTIVE, "debian", &device_path(&[], &hd, "\\EFI\\debian\\shimx64.efi"));
        let mut want = hex("01000000 6200 640065006200690061006e000000");
        want.extend(hex("04012a00 01000000 0008000000000000 0000100000000000 cdab3412000000000000000000000000 01 01"));
        want.extend(hex("04043400"));
        want.extend(utf16z("\\EFI\\debian\\shimx64.efi"));
        want.extend(hex("7fff0400"));
        assert_eq!(opt, want);
        let back = parse_load_option(&opt).unwrap();
        assert_eq!(back.description, "debian");
        assert_eq!(nodes(&back.device_path), [(4, 1), (4, 4)]);
        assert!(!is_network(&back));
    }

    #[test]
    fn network_entries_stay_first() {
        // OVMF's iPXE entry: PciRoot(0)/Pci(3,0)/MAC(525400123456,1)/IPv4(…).
        let mut pxe_path = hex("02010c00 d041030a 00000000 01010600 0003 030b2500 525400123456");
        pxe_path.extend([0u8; 26]);
        pxe_path.push(1);
        pxe_path.extend(hex("030c1b00"));
        pxe_path.extend([0u8; 23]);
        pxe_path.extend(hex("7fff0400"));
        let pxe = LoadOption { attributes: 1, description: "UEFI PXEv4".into(), device_path: pxe_path };
        assert_eq!(nodes(&pxe.device_path), [(2, 1), (1, 1), (3, 11), (3, 12)]);
        assert!(is_network(&pxe));
        let net = |n: u16| n == 3;
        assert_eq!(boot_order_with(&[3, 2, 8], 9, net), [3, 9, 2, 8]);
        assert_eq!(boot_order_with(&[2, 3, 8, 9], 9, net), [2, 3, 9, 8]);
        assert_eq!(boot_order_with(&[2, 8], 9, net), [9, 2, 8]);
        assert_eq!(parse_boot_order(&encode_boot_order(&[3, 0x1234])), [3, 0x1234]);
    }

    /// The paths OVMF gives a virtio-blk disk at 00:03.0 and an NVMe
    /// namespace at 00:04.0 (`PciRoot(0x0)/Pci(0x3,0x0)`,
    /// `PciRoot(0x0)/Pci(0x4,0x0)/NVMe(0x1,…)`), and a SATA disk behind a
    /// bridge.
    #[test]
    fn disk_prefixes_from_sysfs() {
        let virtio = disk_prefix("/sys/devices/pci0000:00/0000:00:03.0/virtio1/block/vda", 0, DiskNode::None).unwrap();
        assert_eq!(virtio, hex("02010c00 d041030a 00000000 01010600 0003"));
        let eui64 = [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x78, 0x9a];
        let nvme = disk_prefix(
            "/sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
            0,
            DiskNode::Nvme { namespace: 1, eui64 },
        )
        .unwrap();
        assert_eq!(nvme, hex("02010c00 d041030a 00000000 01010600 0004 03171000 01000000 52540012 3456789a"));
        let sata = disk_prefix(
            "/sys/devices/pci0000:40/0000:40:01.1/0000:41:00.0/ata3/host2/target2:0:0/2:0:0:0/block/sda",
            1,
            DiskNode::Sata { port: 2, lun: 0 },
        )
        .unwrap();
        assert_eq!(sata, hex("02010c00 d041030a 01000000 01010600 0101 01010600 0000 03120a00 0200 ffff 0000"));
        assert_eq!(nodes(&[sata.clone(), hex("7fff0400")].concat()), [(2, 1), (1, 1), (1, 1), (3, 18)]);
        let hd = HardDrive { number: 1, start: 2048, size: 4096, signature: Signature::Mbr(1) };
        let full = device_path(&virtio, &hd, "\\EFI\\BOOT\\BOOTX64.EFI");
        assert_eq!(nodes(&full), [(2, 1), (1, 1), (4, 1), (4, 4)]);
        assert!(disk_prefix("/sys/devices/virtual/block/loop0", 0, DiskNode::None).is_none());
        assert!(disk_prefix("/sys/devices/platform/host0/block/sda", 0, DiskNode::None).is_none());
    }
}
