//! Small helpers the parsers share: reading until a buffer is full, fixed-width
//! integer fields at an offset (little endian: MBR, GPT, FAT, VMDK; big
//! endian: qcow2), and the GPT header signature.

use std::io::{self, Read};

/// GPT header signature (UEFI §5.3.2), at the start of LBA 1.
pub const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

/// Reads until `buf` is full or the stream ends; returns the bytes read.
/// Retries reads interrupted by a signal.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The little-endian `u16` at `b[at..at + 2]`.
pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The little-endian `u32` at `b[at..at + 4]`.
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The little-endian `u64` at `b[at..at + 8]`.
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// The big-endian `u32` at `b[at..at + 4]`.
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The big-endian `u64` at `b[at..at + 8]`.
pub fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_both_byte_orders() {
        let b = [0xff, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(le16(&b, 1), 0x0201);
        assert_eq!(le32(&b, 1), 0x0403_0201);
        assert_eq!(le64(&b, 1), 0x0807_0605_0403_0201);
        assert_eq!(be32(&b, 1), 0x0102_0304);
        assert_eq!(be64(&b, 1), 0x0102_0304_0506_0708);
    }

    /// A reader that hands out one byte at a time and is interrupted
    /// before each.
    struct Trickle<'a>(&'a [u8], bool);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let Some((&first, rest)) = self.0.split_first() else { return Ok(0) };
            buf[0] = first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn read_full_fills_the_buffer_or_stops_at_the_end() {
        let mut buf = [0u8; 3];
        assert_eq!(read_full(&mut Trickle(b"abcde", false), &mut buf).unwrap(), 3);
        assert_eq!(&buf, b"abc");
        let mut buf = [0u8; 8];
        assert_eq!(read_full(&mut Trickle(b"ab", false), &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"ab");
    }
}
