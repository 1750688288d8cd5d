//! Telling image formats apart by their magic bytes, never by file name or
//! Content-Type.

use crate::qcow2::header::MAGIC as QCOW2_MAGIC;
use crate::util::GPT_SIGNATURE;

/// Image types an operator can declare (`--type`, OVH's `type`).
pub use byoi_wire::ImageType;

/// A stream compression wrapping the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapper {
    /// gzip (RFC 1952), possibly several members.
    Gzip,
    /// xz, possibly several streams.
    Xz,
    /// zstd, possibly several frames.
    Zstd,
}

impl Wrapper {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Wrapper::Gzip => "gzip",
            Wrapper::Xz => "xz",
            Wrapper::Zstd => "zstd",
        }
    }
}

/// What the first bytes of a stream say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A qcow2 image.
    Qcow2,
    /// A POSIX tar archive (an OVA).
    Tar,
    /// A compressed stream; sniff again inside.
    Compressed(Wrapper),
    /// A known format we do not deploy.
    Other(&'static str),
    /// Anything else: raw.
    Raw,
}

/// Bytes to look at before deciding (covers the btrfs superblock, the
/// furthest signature [`describe`] knows).
pub const SNIFF_LEN: usize = 68 << 10;

fn at(head: &[u8], offset: usize, magic: &[u8]) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

/// Identifies a stream by its first bytes.
pub fn sniff(head: &[u8]) -> Sniffed {
    if at(head, 0, &QCOW2_MAGIC) {
        return Sniffed::Qcow2;
    }
    if at(head, 257, b"ustar") {
        return Sniffed::Tar;
    }
    if at(head, 0, &[0x1f, 0x8b]) {
        return Sniffed::Compressed(Wrapper::Gzip);
    }
    if at(head, 0, &[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Sniffed::Compressed(Wrapper::Xz);
    }
    if at(head, 0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        return Sniffed::Compressed(Wrapper::Zstd);
    }
    const OTHERS: &[(usize, &[u8], &str)] = &[
        (0, b"KDMV", "vmdk"),
        (0, b"# Disk DescriptorFile", "vmdk descriptor"),
        (0, b"vhdxfile", "vhdx"),
        (0, b"conectix", "vhd"),
        (0x40, &[0x7f, 0x10, 0xda, 0xbe], "vdi"),
        (0, b"QED\0", "qed"),
        (0, b"BZh", "bzip2"),
        (0, b"PK\x03\x04", "zip"),
    ];
    for &(offset, magic, name) in OTHERS {
        if at(head, offset, magic) {
            return Sniffed::Other(name);
        }
    }
    Sniffed::Raw
}

/// Whether a raw image starts with a partition table: an MBR boot
/// signature, or a GPT header after a 512- or 4096-byte sector.
pub fn has_partition_table(head: &[u8]) -> bool {
    at(head, 510, &[0x55, 0xaa]) || at(head, 512, GPT_SIGNATURE) || at(head, 4096, GPT_SIGNATURE)
}

/// A guess at what a raw image without a partition table holds, for the
/// error message.
pub fn describe(head: &[u8]) -> String {
    const KNOWN: &[(usize, &[u8], &str)] = &[
        (1080, &[0x53, 0xef], "an ext2/3/4 filesystem"),
        (0, b"XFSB", "an XFS filesystem"),
        (0x10040, b"_BHRfS_M", "a btrfs filesystem"),
        (0x8001, b"CD001", "an ISO 9660 filesystem without a hybrid MBR"),
        (0, b"hsqs", "a squashfs filesystem"),
        (0, b"LUKS\xba\xbe", "a LUKS volume"),
        (4086, b"SWAPSPACE2", "swap space"),
        (0, b"\x7fELF", "an ELF executable"),
        (3, b"NTFS    ", "an NTFS filesystem"),
        (0, b"<", "text (HTML or XML?)"),
    ];
    if head.is_empty() {
        return "nothing (the image is empty)".into();
    }
    for &(offset, magic, name) in KNOWN {
        if at(head, offset, magic) {
            return name.into();
        }
    }
    if head.iter().all(|&b| b == 0) {
        return "only zeros".into();
    }
    let first: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("unknown data (starting {})", first.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic() {
        let mut q = vec![0u8; 512];
        q[..4].copy_from_slice(b"QFI\xfb");
        assert_eq!(sniff(&q), Sniffed::Qcow2);
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Sniffed::Compressed(Wrapper::Gzip));
        assert_eq!(sniff(b"\xfd7zXZ\0\0"), Sniffed::Compressed(Wrapper::Xz));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Sniffed::Compressed(Wrapper::Zstd));
        assert_eq!(sniff(b"KDMV\x01\0\0\0"), Sniffed::Other("vmdk"));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(sniff(&tar), Sniffed::Tar);
        assert_eq!(sniff(&[0u8; 512]), Sniffed::Raw);
    }

    #[test]
    fn types_by_name_are_the_formats_the_error_lists() {
        let names: Vec<&str> = ImageType::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.join(", "), crate::error::SUPPORTED_FORMATS);
        for t in ImageType::ALL {
            assert_eq!(ImageType::from_name(t.name()), Some(t));
        }
        assert_eq!(ImageType::from_name("vmdk"), None);
    }

    #[test]
    fn finds_partition_tables_and_describes_the_rest() {
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert!(has_partition_table(&mbr));
        let mut gpt4k = vec![0u8; 8192];
        gpt4k[4096..4104].copy_from_slice(b"EFI PART");
        assert!(has_partition_table(&gpt4k));
        let mut ext4 = vec![0u8; 4096];
        ext4[1080] = 0x53;
        ext4[1081] = 0xef;
        assert!(!has_partition_table(&ext4));
        assert_eq!(describe(&ext4), "an ext2/3/4 filesystem");
        assert_eq!(describe(&[0u8; 100]), "only zeros");
        assert_eq!(describe(b"hello world"), "unknown data (starting 68 65 6c 6c 6f 20 77 6f)");
    }
}
