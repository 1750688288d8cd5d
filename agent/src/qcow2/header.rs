//! qcow2 header and table entries, parsed and validated from bytes
//! (QEMU `docs/interop/qcow2.txt`). Pure functions: no I/O.

use crate::error::{DeployError, Result};
use crate::util::{be32, be64};

/// `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Bytes of a version 2 header.
const V2_HEADER_LEN: usize = 72;
/// Bytes of a version 3 header without the optional compression type.
const V3_HEADER_LEN: usize = 104;
/// QEMU's own limit on the L1 table (`QCOW_MAX_L1_SIZE`).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Host offsets fit in bits 9–55 of table entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63 of L1 and L2 entries: refcount is exactly one ("copied").
const COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: compressed cluster.
const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry (v3): the cluster reads as zeros.
const ZERO: u64 = 1;

/// Incompatible feature bits (header offset 72).
mod incompat {
    pub const DIRTY: u64 = 1 << 0;
    pub const CORRUPT: u64 = 1 << 1;
    pub const EXTERNAL_DATA: u64 = 1 << 2;
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    pub const EXTENDED_L2: u64 = 1 << 4;
    pub const KNOWN: u64 = DIRTY | CORRUPT | EXTERNAL_DATA | COMPRESSION_TYPE | EXTENDED_L2;
}

/// How compressed clusters are compressed (header byte 104).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (RFC 1951), window 4 KiB.
    Deflate,
    /// One zstd frame per cluster.
    Zstd,
}

/// The fields of a qcow2 header that reading an image needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size, 9 to 21.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u64,
    /// Host offset of the active L1 table.
    pub l1_offset: u64,
    /// Internal snapshots (their tables are ignored: the active state is
    /// what gets deployed).
    pub snapshots: u32,
    /// L2 entries are 128 bits with a subcluster bitmap.
    pub extended_l2: bool,
    /// Compression of compressed clusters.
    pub compression: Compression,
    /// The image was not closed cleanly (refcounts may be stale; reading
    /// is unaffected).
    pub dirty: bool,
}

fn unsupported(detail: impl Into<String>) -> DeployError {
    DeployError::Unsupported { format: "qcow2", detail: detail.into() }
}

impl Header {
    /// Parses and validates the header at the start of `buf` (which holds
    /// at least the header; more is fine). `file_len` is the image's size
    /// when known, for bounds checks.
    pub fn parse(buf: &[u8], file_len: Option<u64>) -> Result<Header> {
        if buf.len() < V2_HEADER_LEN || buf[..4] != MAGIC {
            return Err(DeployError::corrupt_qcow2("truncated header"));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(format!("version {version} (2 and 3 are supported)")));
        }
        let backing_offset = be64(buf, 8);
        let backing_len = be32(buf, 16) as usize;
        if backing_offset != 0 {
            let name = usize::try_from(backing_offset)
                .ok()
                .and_then(|o| buf.get(o..o.checked_add(backing_len)?))
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_else(|| "?".into());
            return Err(unsupported(format!(
                "it has a backing file ({name}); flatten it first with qemu-img convert -O qcow2"
            )));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(DeployError::corrupt_qcow2(format!("cluster_bits {cluster_bits} is outside 9..=21")));
        }
        let cluster_size = 1u64 << cluster_bits;
        let size = be64(buf, 24);
        let crypt = be32(buf, 32);
        if crypt != 0 {
            let method = match crypt {
                1 => "AES",
                2 => "LUKS",
                _ => "unknown",
            };
            return Err(unsupported(format!("it is encrypted ({method}); decrypt it first with qemu-img convert")));
        }
        let l1_size = u64::from(be32(buf, 36));
        let l1_offset = be64(buf, 40);
        let snapshots = be32(buf, 60);

        let (mut extended_l2, mut compression, mut dirty) = (false, Compression::Deflate, false);
        if version == 3 {
            if buf.len() < V3_HEADER_LEN {
                return Err(DeployError::corrupt_qcow2("truncated version 3 header"));
            }
            let features = be64(buf, 72);
            let unknown = features & !incompat::KNOWN;
            if unknown != 0 {
                return Err(unsupported(format!("unknown incompatible feature bits {unknown:#x}")));
            }
            if features & incompat::CORRUPT != 0 {
                return Err(DeployError::corrupt_qcow2(
                    "QEMU marked the image corrupt; repair it with qemu-img check -r all",
                ));
            }
            if features & incompat::EXTERNAL_DATA != 0 {
                return Err(unsupported(
                    "its data is in an external data file; convert it to a self-contained image first",
                ));
            }
            dirty = features & incompat::DIRTY != 0;
            extended_l2 = features & incompat::EXTENDED_L2 != 0;
            let header_len = be32(buf, 100) as usize;
            if header_len < V3_HEADER_LEN || !header_len.is_multiple_of(8) {
                return Err(DeployError::corrupt_qcow2(format!("header_length {header_len}")));
            }
            if features & incompat::COMPRESSION_TYPE != 0 {
                let Some(&ct) = buf.get(104).filter(|_| header_len > 104) else {
                    return Err(DeployError::corrupt_qcow2("compression type bit set but no compression type field"));
                };
                compression = match ct {
                    0 => Compression::Deflate,
                    1 => Compression::Zstd,
                    other => return Err(unsupported(format!("compression type {other}"))),
                };
            } else if header_len > 104 && buf.get(104).is_some_and(|&ct| ct != 0) {
                return Err(DeployError::corrupt_qcow2("compression type set without its feature bit"));
            }
            if extended_l2 && cluster_bits < 14 {
                return Err(DeployError::corrupt_qcow2("extended L2 entries need clusters of 16 KiB or more"));
            }
        }
        let h = Header { version, cluster_bits, size, l1_size, l1_offset, snapshots, extended_l2, compression, dirty };

        let needed = size.div_ceil(h.bytes_per_l2());
        if l1_size < needed {
            return Err(DeployError::corrupt_qcow2(format!(
                "L1 table of {l1_size} entries cannot map {size} bytes (needs {needed})"
            )));
        }
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(DeployError::corrupt_qcow2(format!("L1 table of {l1_size} entries is larger than 32 MiB")));
        }
        if l1_size > 0 {
            if l1_offset == 0 || !l1_offset.is_multiple_of(cluster_size) {
                return Err(DeployError::corrupt_qcow2(format!(
                    "L1 table offset {l1_offset:#x} is not cluster aligned"
                )));
            }
            let end = l1_offset.checked_add(l1_size * 8);
            if end.is_none() || file_len.is_some_and(|len| end > Some(len)) {
                return Err(DeployError::corrupt_qcow2(format!(
                    "L1 table at {l1_offset:#x} lies outside the file ({} bytes)",
                    file_len.unwrap_or(0)
                )));
            }
        }
        Ok(h)
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes of an L2 entry.
    pub fn l2_entry_len(&self) -> u64 {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }

    /// Entries in an L2 table (one cluster).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_len()
    }

    /// Guest bytes one L2 table maps.
    pub fn bytes_per_l2(&self) -> u64 {
        self.l2_entries() * self.cluster_size()
    }

    /// Size of the active L1 table in bytes.
    pub fn l1_bytes(&self) -> u64 {
        self.l1_size * 8
    }

    /// Decodes L1 entry number `index`: the L2 table's host offset, or
    /// `None` when the whole range is unallocated.
    pub fn l1_entry(&self, raw: u64, index: u64) -> Result<Option<u64>> {
        if raw & !(OFFSET_MASK | COPIED) != 0 {
            return Err(DeployError::corrupt_qcow2(format!("L1 entry {index} has reserved bits set ({raw:#x})")));
        }
        let off = raw & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if !off.is_multiple_of(self.cluster_size()) {
            return Err(DeployError::corrupt_qcow2(format!("L1 entry {index} points to unaligned L2 table {off:#x}")));
        }
        Ok(Some(off))
    }

    /// Decodes an L2 entry (`bitmap` is the second word of an extended
    /// entry, 0 otherwise) for the cluster at guest offset `guest`.
    pub fn l2_entry(&self, raw: u64, bitmap: u64, guest: u64) -> Result<Cluster> {
        let bad =
            |what: &str| DeployError::corrupt_qcow2(format!("L2 entry for guest offset {guest:#x} {what} ({raw:#x})"));
        if raw & COMPRESSED != 0 {
            // Compressed cluster descriptor: x = 62 - (cluster_bits - 8)
            // offset bits, then the count of additional 512-byte sectors.
            let shift = 62 - (self.cluster_bits - 8);
            let host = raw & ((1u64 << shift) - 1);
            let sectors = ((raw >> shift) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (host & 511);
            if host == 0 {
                return Err(bad("is compressed at offset 0"));
            }
            return Ok(Cluster::Compressed { host, len });
        }
        if raw & !(OFFSET_MASK | COPIED | ZERO) != 0 {
            return Err(bad("has reserved bits set"));
        }
        let host = raw & OFFSET_MASK;
        if !host.is_multiple_of(self.cluster_size()) {
            return Err(bad("points to an unaligned cluster"));
        }
        if self.extended_l2 {
            let (alloc, zero) = (bitmap & 0xffff_ffff, bitmap >> 32);
            if alloc & zero != 0 {
                return Err(bad("marks subclusters both allocated and zero"));
            }
            if alloc != 0 && host == 0 {
                return Err(bad("has allocated subclusters but no cluster"));
            }
            return Ok(if alloc == 0 { Cluster::Zero } else { Cluster::Subclusters { host, alloc: alloc as u32 } });
        }
        if self.version >= 3 && raw & ZERO != 0 {
            return Ok(Cluster::Zero);
        }
        if raw & ZERO != 0 {
            return Err(bad("has the zero flag in a version 2 image"));
        }
        Ok(if host == 0 { Cluster::Zero } else { Cluster::Data { host } })
    }
}

/// Where the data of one guest cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Unallocated or explicitly zero: reads as zeros (we never have a
    /// backing file).
    Zero,
    /// A whole cluster at this host offset.
    Data {
        /// Host offset, cluster aligned.
        host: u64,
    },
    /// Extended L2: the subclusters whose bit is set in `alloc` are at the
    /// same position in the host cluster; the others read as zeros.
    Subclusters {
        /// Host offset, cluster aligned.
        host: u64,
        /// Allocation bitmap, bit n = subcluster n.
        alloc: u32,
    },
    /// Compressed data of at most `len` bytes at a byte offset.
    Compressed {
        /// Host byte offset.
        host: u64,
        /// Upper bound of the compressed length (it may run past the end
        /// of the file, which then cuts it).
        len: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;

    pub(crate) fn v3_header(cluster_bits: u32, size: u64, l1_size: u32, l1_offset: u64) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[36..40].copy_from_slice(&l1_size.to_be_bytes());
        h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    #[test]
    fn parses_a_minimal_v3_header() {
        let h = Header::parse(&v3_header(16, 1 << 30, 2, 0x30000), Some(1 << 20)).unwrap();
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.l2_entries(), 8192);
        assert_eq!(h.bytes_per_l2(), 512 << 20);
        assert_eq!(h.compression, Compression::Deflate);
    }

    #[test]
    fn rejects_what_we_cannot_deploy() {
        let base = v3_header(16, 1 << 30, 2, 0x30000);
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|h| h[4..8].copy_from_slice(&4u32.to_be_bytes())), "version 4"),
            (Box::new(|h| h[8..16].copy_from_slice(&200u64.to_be_bytes())), "backing file"),
            (Box::new(|h| h[32..36].copy_from_slice(&2u32.to_be_bytes())), "LUKS"),
            (Box::new(|h| h[20..24].copy_from_slice(&22u32.to_be_bytes())), "cluster_bits"),
            (Box::new(|h| h[72..80].copy_from_slice(&(1u64 << 9).to_be_bytes())), "unknown incompatible"),
            (Box::new(|h| h[72..80].copy_from_slice(&4u64.to_be_bytes())), "external data file"),
            (Box::new(|h| h[72..80].copy_from_slice(&2u64.to_be_bytes())), "marked the image corrupt"),
            (Box::new(|h| h[36..40].copy_from_slice(&1u32.to_be_bytes())), "cannot map"),
            (Box::new(|h| h[40..48].copy_from_slice(&0x30001u64.to_be_bytes())), "not cluster aligned"),
            (Box::new(|h| h[40..48].copy_from_slice(&(2u64 << 20).to_be_bytes())), "outside the file"),
            (Box::new(|h| h[36..40].copy_from_slice(&u32::MAX.to_be_bytes())), "larger than 32 MiB"),
        ];
        for (mutate, want) in cases {
            let mut h = base.clone();
            mutate(&mut h);
            let e = Header::parse(&h, Some(1 << 20)).unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
        assert!(Header::parse(&base[..50], None).is_err());
    }

    #[test]
    fn decodes_l2_entries() {
        let h = Header::parse(&v3_header(16, 1 << 30, 2, 0x30000), None).unwrap();
        assert_eq!(h.l2_entry(0, 0, 0).unwrap(), Cluster::Zero);
        assert_eq!(h.l2_entry(COPIED | 0x50000, 0, 0).unwrap(), Cluster::Data { host: 0x50000 });
        assert_eq!(h.l2_entry(COPIED | 0x50000 | ZERO, 0, 0).unwrap(), Cluster::Zero);
        assert!(h.l2_entry(0x50200, 0, 0).is_err(), "unaligned");
        assert!(h.l2_entry(0x50000 | 2, 0, 0).is_err(), "reserved bit");
        // Compressed, 64 KiB clusters: 54 offset bits, then sector count.
        let raw = COMPRESSED | (3u64 << 54) | 0x12345;
        assert_eq!(h.l2_entry(raw, 0, 0).unwrap(), Cluster::Compressed { host: 0x12345, len: 4 * 512 - 0x145 });
        assert_eq!(h.l1_entry(COPIED | 0x40000, 0).unwrap(), Some(0x40000));
        assert!(h.l1_entry(1 << 60, 0).is_err());
    }
}
