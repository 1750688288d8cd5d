//! A forward-only tar reader (POSIX ustar with pax extended headers, GNU long
//! names and base-256 sizes) whose members' bytes are handed, as
//! reference-counted chunks, to their hashing threads as they are read.

use std::io::{self, Read};

use bytes::{Buf, Bytes, BytesMut};

use super::{clean_name, corrupt, read_err};
use crate::checksum::{Algorithm, HashThread};
use crate::error::{DeployError, Result};
use crate::progress::Progress;
use crate::util::read_full;

/// Bytes of a tar block.
const BLOCK: u64 = 512;
/// Fields of a tar header (POSIX.1-2001 `ustar`, pax `Header Block`).
mod field {
    use std::ops::Range;
    pub const NAME: Range<usize> = 0..100;
    pub const SIZE: Range<usize> = 124..136;
    pub const CHECKSUM: Range<usize> = 148..156;
    pub const TYPEFLAG: usize = 156;
    /// `ustar\0` (POSIX) or `ustar ` (GNU, whose 155 bytes from 345 are
    /// not a prefix).
    pub const MAGIC: Range<usize> = 257..263;
    pub const PREFIX: Range<usize> = 345..500;
}
/// Bytes read from the stream at a time (and handed to hashers at once).
const CHUNK: usize = 256 << 10;
/// Largest pax extended header or GNU long name.
const MAX_EXTENDED_HEADER: u64 = 64 << 10;

/// A regular file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Path inside the archive, without a leading `./`.
    pub name: String,
    /// Bytes of data.
    pub size: u64,
}

/// Digests of one member's bytes.
pub type Digests = Vec<(Algorithm, Vec<u8>)>;

/// Digests being computed over one member's bytes.
enum Hashing {
    None,
    Threads(Vec<(Algorithm, HashThread)>),
}

/// A forward-only tar reader (POSIX ustar with pax extended headers, GNU
/// long names and base-256 sizes). Reading it yields the current member's
/// bytes; [`Tar::next`] moves to the next member.
pub struct Tar<'r> {
    inner: Box<dyn Read + 'r>,
    /// Read from the stream, not yet consumed.
    buf: Bytes,
    /// Offset in the archive of `buf`'s first byte.
    pos: u64,
    /// Unread bytes of the current member's data, then its padding.
    remaining: u64,
    padding: u64,
    /// The current member's bytes not yet handed to the reader.
    piece: Bytes,
    hashing: Hashing,
    ended: bool,
    /// Checked at every chunk read, so that skipping a large member stops
    /// when the deployment is aborted.
    pub(super) progress: Option<&'r Progress>,
}

impl std::fmt::Debug for Tar<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tar").field("pos", &self.pos).field("remaining", &self.remaining).finish()
    }
}

fn octal(field: &[u8], what: &str) -> Result<u64> {
    // Base-256 (GNU): high bit of the first byte set, big-endian value.
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| corrupt(format!("{what} overflows")))?;
        }
        return Ok(v);
    }
    let text: Vec<u8> = field.iter().copied().take_while(|&b| b != 0).collect();
    let text = std::str::from_utf8(&text).map_err(|_| corrupt(format!("{what} is not a number")))?.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| corrupt(format!("{what} {text:?} is not an octal number")))
}

fn field_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}
/// The `path` and `size` records of a pax extended header.
fn parse_pax(data: &[u8]) -> Result<(Option<String>, Option<u64>)> {
    let (mut path, mut size) = (None, None);
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(|| corrupt("a pax record without a length"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > space + 1 && l <= rest.len())
            .ok_or_else(|| corrupt("a pax record with a bad length"))?;
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").ok_or_else(|| corrupt("a pax record without its newline"))?;
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            match key {
                b"path" => path = Some(String::from_utf8_lossy(value).into_owned()),
                b"size" => {
                    let v = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                    size = Some(v.ok_or_else(|| corrupt("a pax size that is not a number"))?);
                }
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    Ok((path, size))
}

impl<'r> Tar<'r> {
    /// A reader over the archive `inner`, from its first byte.
    pub fn new(inner: Box<dyn Read + 'r>) -> Self {
        Tar {
            inner,
            buf: Bytes::new(),
            pos: 0,
            remaining: 0,
            padding: 0,
            piece: Bytes::new(),
            hashing: Hashing::None,
            ended: false,
            progress: None,
        }
    }

    /// Makes `buf` non-empty; false at the end of the stream.
    fn refill(&mut self) -> Result<bool> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        let mut chunk = BytesMut::zeroed(CHUNK);
        let n = read_full(&mut self.inner, &mut chunk).map_err(read_err)?;
        chunk.truncate(n);
        self.buf = chunk.freeze();
        Ok(n > 0)
    }

    /// Takes up to `max` bytes from the stream (fewer at a chunk's end);
    /// empty only at the end of the stream.
    fn take_stream(&mut self, max: u64) -> Result<Bytes> {
        if self.buf.is_empty() && self.progress.is_some_and(|p| p.abort_requested()) {
            return Err(DeployError::Aborted);
        }
        if !self.refill()? {
            return Ok(Bytes::new());
        }
        let n = (self.buf.len() as u64).min(max) as usize;
        self.pos += n as u64;
        Ok(self.buf.split_to(n))
    }

    /// Takes exactly `len` bytes, or fails with `cut`.
    fn take_exact(&mut self, len: u64, cut: impl Fn(u64) -> DeployError) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while (out.len() as u64) < len {
            let b = self.take_stream(len - out.len() as u64)?;
            if b.is_empty() {
                return Err(cut(self.pos));
            }
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    /// Hashes the current member's bytes with `algos` (on threads).
    pub(super) fn hash_member(&mut self, algos: &[Algorithm]) -> Result<()> {
        let threads = algos.iter().map(|&a| Ok((a, HashThread::spawn(a)?))).collect::<Result<Vec<_>>>()?;
        self.hashing = if threads.is_empty() { Hashing::None } else { Hashing::Threads(threads) };
        Ok(())
    }

    /// Reads what is left of the current member and its padding; returns
    /// the digests of its bytes.
    fn finish_member(&mut self) -> Result<Digests> {
        self.piece = Bytes::new();
        while self.remaining > 0 {
            let b = self.next_piece()?;
            if b.is_empty() {
                return Err(corrupt(format!("the archive ends inside a member, at byte {}", self.pos)));
            }
        }
        self.piece = Bytes::new();
        while self.padding > 0 {
            let b = self.take_stream(self.padding)?;
            if b.is_empty() {
                return Err(corrupt(format!("the archive ends inside a member's padding, at byte {}", self.pos)));
            }
            self.padding -= b.len() as u64;
        }
        match std::mem::replace(&mut self.hashing, Hashing::None) {
            Hashing::None => Ok(Vec::new()),
            Hashing::Threads(threads) => threads.into_iter().map(|(a, t)| Ok((a, t.finish()?))).collect(),
        }
    }

    /// The next bytes of the current member, fed to its hashers.
    fn next_piece(&mut self) -> Result<Bytes> {
        let b = self.take_stream(self.remaining)?;
        self.remaining -= b.len() as u64;
        if let Hashing::Threads(threads) = &self.hashing {
            for (_, t) in threads {
                t.feeder().feed_blocking(b.clone());
            }
        }
        Ok(b)
    }

    /// Moves to the next regular file, skipping the rest of the current one
    /// (its digests are returned with the new member). `None` at the end of
    /// the archive.
    pub fn next_member(&mut self) -> Result<(Digests, Option<Member>)> {
        let digests = self.finish_member()?;
        if self.ended {
            return Ok((digests, None));
        }
        let (mut long_name, mut pax_path, mut pax_size) = (None, None, None);
        loop {
            let at = self.pos;
            let first = self.take_stream(BLOCK)?;
            if first.is_empty() {
                // The stream ended cleanly at a header boundary, without
                // the end-of-archive blocks: the end all the same.
                tracing::warn!(offset = at, "the archive has no end-of-archive blocks");
                self.ended = true;
                return Ok((digests, None));
            }
            let mut header = first.to_vec();
            let rest = BLOCK - header.len() as u64;
            let cut = |_| corrupt(format!("the archive ends inside the header at byte {at}"));
            header.extend(self.take_exact(rest, cut)?);
            if header.iter().all(|&b| b == 0) {
                self.ended = true;
                // Whatever follows (the second zero block, padding to a
                // record) is read to the end: the hasher sees every byte.
                loop {
                    let b = self.take_stream(CHUNK as u64)?;
                    if b.is_empty() {
                        break;
                    }
                }
                return Ok((digests, None));
            }
            // The checksum counts its own field as spaces; old tars summed
            // signed bytes.
            let stored = octal(&header[field::CHECKSUM], "a header checksum")?;
            let in_sum = |i: usize| !field::CHECKSUM.contains(&i);
            let unsigned: u64 =
                header.iter().enumerate().map(|(i, &b)| if in_sum(i) { u64::from(b) } else { 32 }).sum();
            let signed: i64 =
                header.iter().enumerate().map(|(i, &b)| if in_sum(i) { i64::from(b as i8) } else { 32 }).sum();
            if stored != unsigned && Some(stored) != u64::try_from(signed).ok() {
                return Err(corrupt(format!("the tar header at byte {at} has a bad checksum (not a tar archive?)")));
            }
            let kind = header[field::TYPEFLAG];
            let own_size = octal(&header[field::SIZE], "a member size")?;
            // A size may be near 2^64 (base-256 or pax): no rounding up.
            let padding_of = |size: u64| (BLOCK - size % BLOCK) % BLOCK;
            if kind == b'x' || kind == b'L' {
                // An extended header describes the next entry; its own
                // size is its own.
                if own_size > MAX_EXTENDED_HEADER {
                    return Err(corrupt(format!("an extended header of {own_size} bytes at byte {at}")));
                }
                let data = self.take_exact(own_size + padding_of(own_size), |p| {
                    corrupt(format!("the archive ends at byte {p}, inside an extended header"))
                })?;
                let data = &data[..own_size as usize];
                if kind == b'L' {
                    long_name = Some(field_str(data));
                } else {
                    let (p, s) = parse_pax(data)?;
                    pax_path = p.or(pax_path);
                    pax_size = s.or(pax_size);
                }
                continue;
            }
            let size = pax_size.take().unwrap_or(own_size);
            let padding = padding_of(size);
            let mut name = field_str(&header[field::NAME]);
            if header[field::MAGIC] == *b"ustar\0" && header[field::PREFIX.start] != 0 {
                name = format!("{}/{name}", field_str(&header[field::PREFIX]));
            }
            let name = clean_name(&pax_path.take().or(long_name.take()).unwrap_or(name));
            match kind {
                b'0' | 0 | b'7' => {
                    self.remaining = size;
                    self.padding = padding;
                    return Ok((digests, Some(Member { name, size })));
                }
                _ => {
                    // Directories, links, global headers: their data (if
                    // any) is skipped.
                    tracing::debug!(name, kind = %char::from(kind), "skipping a tar entry that is not a file");
                    self.remaining = size;
                    self.padding = padding;
                    self.finish_member()?;
                }
            }
        }
    }
}

impl Read for Tar<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.piece.is_empty() {
            if self.remaining == 0 {
                return Ok(0);
            }
            self.piece = self.next_piece().map_err(DeployError::into_io)?;
            if self.piece.is_empty() {
                let e = corrupt(format!("the archive ends inside a member, at byte {}", self.pos));
                return Err(e.into_io());
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece[..n]);
        self.piece.advance(n);
        Ok(n)
    }
}
