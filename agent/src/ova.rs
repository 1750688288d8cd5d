//! OVA archives decoded in one forward pass: a tar walk ([`Tar`]), the OVF
//! descriptor ([`Ovf`], DMTF DSP0243) naming the disks, the manifest
//! ([`Manifest`]) whose digests are checked as the members stream by, and
//! the chosen disk's VMDK ([`crate::vmdk`]) decoded straight to the sink.
//!
//! DSP0243 puts the descriptor first and the manifest right after it or at
//! the end. Members the manifest could name are hashed while they stream:
//! with its algorithm when it came first, with SHA-1 and SHA-256 when it
//! has not come yet. The disk is written before a late manifest can be
//! checked; a mismatch then fails the deployment, and the disk, whose first
//! MiB is still held back, never boots.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};

use bytes::{Buf, Bytes, BytesMut};

use crate::checksum::{to_hex, Algorithm, HashThread, Hasher};
use crate::error::{DeployError, Result};
use crate::progress::Progress;
use crate::sink::ImageSink;
use crate::util::read_full;
use crate::vmdk::{self, Descriptor, ExtentKind, SECTOR};

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
/// Largest OVF descriptor.
pub const MAX_OVF: u64 = 4 << 20;
/// Largest manifest.
const MAX_MANIFEST: u64 = 1 << 20;
/// Most members hashed or listed: far above any real OVA.
const MAX_MEMBERS: usize = 4096;

fn corrupt(detail: impl Into<String>) -> DeployError {
    DeployError::Corrupt { format: "ova", detail: detail.into() }
}

fn unsupported(detail: impl Into<String>) -> DeployError {
    DeployError::Unsupported { format: "ova", detail: detail.into() }
}

fn read_err(e: io::Error) -> DeployError {
    DeployError::from_read(e, |e| corrupt(format!("reading the archive: {e}")))
}

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
    progress: Option<&'r Progress>,
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

fn clean_name(name: &str) -> String {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n.to_owned()
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
    fn hash_member(&mut self, algos: &[Algorithm]) -> Result<()> {
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

/// A file the OVF references (`References/File`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfFile {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: the member's name.
    pub href: String,
    /// `ovf:size`, when given.
    pub size: Option<u64>,
    /// `ovf:compression="gzip"`.
    pub gzip: bool,
}

/// A disk of the OVF (`DiskSection/Disk`) with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfDisk {
    /// `ovf:diskId`.
    pub id: String,
    /// The file holding it.
    pub file: OvfFile,
    /// `ovf:capacity` in bytes.
    pub capacity: u64,
    /// `ovf:format`, e.g. `…vmdk.html#streamOptimized`.
    pub format: Option<String>,
}

/// What the OVF descriptor says that deploying needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovf {
    /// Every referenced file.
    pub files: Vec<OvfFile>,
    /// Disks backed by a file, in `DiskSection` order.
    pub disks: Vec<OvfDisk>,
}

/// The child elements of `n` named `name` (any namespace).
fn children<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    n.children().filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// `byte * 2^30`, `byte * 10^9`, `byte * 1024`, `byte` or nothing.
fn allocation_units(units: &str) -> Option<u64> {
    let compact: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    let rest = compact.strip_prefix("byte")?;
    if rest.is_empty() {
        return Some(1);
    }
    let factor = rest.strip_prefix('*')?;
    match factor.split_once('^') {
        Some((base, exp)) => base.parse::<u64>().ok()?.checked_pow(exp.parse().ok()?),
        None => factor.parse().ok(),
    }
}

fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{bytes} bytes")
    }
}

impl Ovf {
    /// Parses a descriptor.
    pub fn parse(text: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(text).map_err(|_| corrupt("the OVF descriptor is not UTF-8"))?;
        let text = text.trim_start_matches('\u{feff}');
        let opts = roxmltree::ParsingOptions { allow_dtd: false, ..Default::default() };
        let doc = roxmltree::Document::parse_with_options(text, opts)
            .map_err(|e| corrupt(format!("the OVF descriptor is not valid XML: {e}")))?;
        let root = doc.root_element();
        if root.tag_name().name() != "Envelope" {
            return Err(corrupt(format!("the OVF descriptor's root is <{}>, not <Envelope>", root.tag_name().name())));
        }
        // Attributes are namespaced (ovf:href); match local names.
        let attr = |n: roxmltree::Node<'_, '_>, name: &str| {
            n.attributes().find(|a| a.name() == name).map(|a| a.value().trim().to_owned())
        };
        let mut files = Vec::new();
        for refs in children(root, "References") {
            for f in children(refs, "File") {
                let id = attr(f, "id").ok_or_else(|| corrupt("a <File> without ovf:id"))?;
                let href = attr(f, "href").ok_or_else(|| corrupt(format!("file {id} has no ovf:href")))?;
                if attr(f, "chunkSize").is_some() {
                    return Err(unsupported(format!("{href} is split into chunks (ovf:chunkSize)")));
                }
                let gzip = match attr(f, "compression").as_deref() {
                    None | Some("identity") => false,
                    Some("gzip") => true,
                    Some(other) => return Err(unsupported(format!("{href} is compressed with {other:?}"))),
                };
                let size = match attr(f, "size") {
                    None => None,
                    Some(s) => Some(s.parse().map_err(|_| corrupt(format!("file {id} has size {s:?}")))?),
                };
                if files.len() >= MAX_MEMBERS {
                    return Err(unsupported(format!("the OVF references more than {MAX_MEMBERS} files")));
                }
                files.push(OvfFile { id, href: clean_name(&href), size, gzip });
            }
        }
        let mut disks = Vec::new();
        for section in children(root, "DiskSection") {
            for d in children(section, "Disk") {
                let id = attr(d, "diskId").ok_or_else(|| corrupt("a <Disk> without ovf:diskId"))?;
                if disks.len() >= MAX_MEMBERS {
                    return Err(unsupported(format!("the OVF names more than {MAX_MEMBERS} disks")));
                }
                let Some(file_ref) = attr(d, "fileRef") else {
                    tracing::info!(disk = %id, "the OVF defines an empty disk; it is not deployed");
                    continue;
                };
                let file = files
                    .iter()
                    .find(|f| f.id == file_ref)
                    .ok_or_else(|| corrupt(format!("disk {id} refers to file {file_ref:?}, which <References> lacks")))?
                    .clone();
                let capacity = attr(d, "capacity").ok_or_else(|| corrupt(format!("disk {id} has no ovf:capacity")))?;
                let units = attr(d, "capacityAllocationUnits").unwrap_or_else(|| "byte".into());
                let capacity = capacity
                    .parse::<u64>()
                    .ok()
                    .zip(allocation_units(&units))
                    .and_then(|(c, u)| c.checked_mul(u))
                    .ok_or_else(|| corrupt(format!("disk {id} has capacity {capacity:?} in units {units:?}")))?;
                disks.push(OvfDisk { id, file, capacity, format: attr(d, "format") });
            }
        }
        if disks.is_empty() {
            return Err(corrupt("the OVF descriptor names no disk with a file"));
        }
        Ok(Ovf { files, disks })
    }

    fn list(&self) -> String {
        let items: Vec<String> = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{} {} ({}, {})", i + 1, d.id, d.file.href, gib(d.capacity)))
            .collect();
        items.join(", ")
    }

    /// The disk to deploy: the only one, or the one `choice` names (a
    /// 1-based index, a disk id or a file name).
    pub fn choose(&self, choice: Option<&str>) -> Result<&OvfDisk> {
        match choice {
            None if self.disks.len() == 1 => Ok(&self.disks[0]),
            None => Err(DeployError::InvalidRequest(format!(
                "the OVA holds {} disks: {}; choose one with --ova-disk N (ovaDisk in the API)",
                self.disks.len(),
                self.list()
            ))),
            Some(c) => {
                let by_index = c.parse::<usize>().ok().and_then(|i| i.checked_sub(1)).and_then(|i| self.disks.get(i));
                by_index.or_else(|| self.disks.iter().find(|d| d.id == c || d.file.href == c)).ok_or_else(|| {
                    DeployError::InvalidRequest(format!(
                        "--ova-disk {c:?} names no disk of the OVA, which holds: {}",
                        self.list()
                    ))
                })
            }
        }
    }
}

/// A manifest: `SHA256(disk1.vmdk)= 0123…` per member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Member name → algorithm and lowercase hex digest.
    pub entries: BTreeMap<String, (Algorithm, String)>,
}

impl Manifest {
    /// Parses a manifest (SHA1, SHA256 or SHA512 lines).
    pub fn parse(text: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(text).map_err(|_| corrupt("the manifest is not UTF-8 text"))?;
        let mut entries = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            // `SHA256(file)= hex` (ovftool, OpenSSL) or `SHA256 (file) =
            // hex` (VirtualBox).
            let bad = || corrupt(format!("manifest line {} is not ALGO(file)= digest: {line:?}", n + 1));
            let (algo, rest) = line.split_once('(').ok_or_else(bad)?;
            let (name, tail) = rest.rsplit_once(')').ok_or_else(bad)?;
            let digest = tail.trim_start().strip_prefix('=').ok_or_else(bad)?;
            let algo = match algo.trim().to_ascii_uppercase().as_str() {
                "SHA1" => Algorithm::Sha1,
                "SHA256" => Algorithm::Sha256,
                "SHA512" => Algorithm::Sha512,
                other => {
                    return Err(unsupported(format!("the manifest uses {other} (SHA1, SHA256 and SHA512 are known)")))
                }
            };
            let digest = digest.trim().to_ascii_lowercase();
            if digest.len() != algo.digest_len() * 2 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(corrupt(format!("manifest line {}: {digest:?} is not a {} digest", n + 1, algo.name())));
            }
            if entries.insert(clean_name(name), (algo, digest)).is_some() {
                return Err(corrupt(format!("the manifest lists {name} twice")));
            }
            if entries.len() > MAX_MEMBERS {
                return Err(unsupported(format!("the manifest lists more than {MAX_MEMBERS} files")));
            }
        }
        Ok(Manifest { entries })
    }
}

/// What decoding an OVA found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaDecoded {
    /// Bytes of the disk image written.
    pub size: u64,
    /// What the disk is: `streamOptimized vmdk`, `monolithicFlat vmdk`,
    /// `qcow2`…
    pub disk_format: String,
    /// Members whose digests the manifest confirmed.
    pub verified: Vec<String>,
}

/// An OVA whose descriptor has been read: the disk is chosen, the rest of
/// the archive is still to come.
pub struct Ova<'r> {
    tar: Tar<'r>,
    ovf_name: String,
    ovf_bytes: Vec<u8>,
    /// The chosen disk.
    pub disk: OvfDisk,
    ovf: Ovf,
}

impl std::fmt::Debug for Ova<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ova").field("ovf", &self.ovf_name).field("disk", &self.disk).finish()
    }
}

/// Algorithms a member is hashed with before the manifest is known.
const UNKNOWN_MANIFEST: [Algorithm; 2] = [Algorithm::Sha1, Algorithm::Sha256];

impl<'r> Ova<'r> {
    /// Reads the archive up to and including its OVF descriptor, which must
    /// be the first member, and picks the disk: the only one, or the one
    /// `choice` names (a 1-based index, an OVF disk id or a file name).
    pub fn open(r: Box<dyn Read + 'r>, choice: Option<&str>) -> Result<Self> {
        let mut tar = Tar::new(r);
        let (_, first) = tar.next_member()?;
        let first = first.ok_or_else(|| corrupt("the archive holds no file"))?;
        if !first.name.to_ascii_lowercase().ends_with(".ovf") {
            return Err(corrupt(format!(
                "the archive starts with {}; an OVA starts with its .ovf descriptor",
                first.name
            )));
        }
        if first.size > MAX_OVF {
            return Err(unsupported(format!("the OVF descriptor has {} bytes (at most {MAX_OVF})", first.size)));
        }
        let mut ovf_bytes = Vec::new();
        (&mut tar).take(first.size).read_to_end(&mut ovf_bytes).map_err(read_err)?;
        let ovf = Ovf::parse(&ovf_bytes)?;
        let disk = ovf.choose(choice)?.clone();
        tracing::info!(disk = %disk.id, file = %disk.file.href, capacity = disk.capacity, "OVA disk chosen");
        Ok(Ova { tar, ovf_name: first.name, ovf_bytes, disk, ovf })
    }

    /// How many disks with a file the OVF names.
    pub fn ovf_disks(&self) -> usize {
        self.ovf.disks.len()
    }

    /// Streams the rest of the archive: decodes the chosen disk into
    /// `sink` (never past the capacity the OVF declares), checks sizes and
    /// the manifest, reads to the end.
    pub fn decode(mut self, sink: &mut dyn ImageSink, progress: Option<&'r Progress>) -> Result<OvaDecoded> {
        self.tar.progress = progress;
        let capacity = self.disk.capacity;
        let mut capped = Capped { inner: sink, capacity };
        let sink: &mut dyn ImageSink = &mut capped;
        let mut manifest: Option<Manifest> = None;
        // Digests of members seen before the manifest.
        let mut digests: BTreeMap<String, Digests> = BTreeMap::new();
        let mut seen: Vec<String> = vec![self.ovf_name.clone()];
        let mut plan: Option<Plan> = None;
        let mut decoded: Option<(u64, String)> = None;
        let mut previous: Option<String> = None;
        loop {
            let (d, member) = self.tar.next_member()?;
            if let Some(prev) = previous.take() {
                if !d.is_empty() {
                    digests.insert(prev, d);
                }
            }
            let Some(m) = member else { break };
            if progress.is_some_and(|p| p.abort_requested()) {
                return Err(DeployError::Aborted);
            }
            if seen.contains(&m.name) {
                return Err(corrupt(format!("the archive holds {} twice", m.name)));
            }
            if seen.len() >= MAX_MEMBERS {
                return Err(unsupported(format!("the archive holds more than {MAX_MEMBERS} files")));
            }
            seen.push(m.name.clone());
            if let Some(f) = self.ovf.files.iter().find(|f| f.href == m.name) {
                if f.size.is_some_and(|s| s != m.size) {
                    return Err(corrupt(format!(
                        "{} has {} bytes; the OVF descriptor says {}",
                        m.name,
                        m.size,
                        f.size.unwrap_or_default()
                    )));
                }
            }
            let lower = m.name.to_ascii_lowercase();
            if lower.ends_with(".mf") {
                if manifest.is_some() {
                    return Err(corrupt(format!("the archive holds a second manifest, {}", m.name)));
                }
                if m.size > MAX_MANIFEST {
                    return Err(unsupported(format!("the manifest has {} bytes", m.size)));
                }
                let mut text = Vec::new();
                (&mut self.tar).take(m.size).read_to_end(&mut text).map_err(read_err)?;
                manifest = Some(Manifest::parse(&text)?);
                continue;
            }
            // Hash what the manifest lists, or might list.
            let algos: Vec<Algorithm> = match &manifest {
                Some(mf) => mf.entries.get(&m.name).map(|(a, _)| vec![*a]).unwrap_or_default(),
                None => UNKNOWN_MANIFEST.to_vec(),
            };
            self.tar.hash_member(&algos)?;
            previous = Some(m.name.clone());

            if m.name == self.disk.file.href {
                // DSP0243: the manifest lists every file. One that leaves
                // out the disk would let it pass unverified.
                if let Some(mf) = manifest.as_ref().filter(|mf| !mf.entries.contains_key(&m.name)) {
                    return Err(unlisted(mf, &m.name));
                }
                if self.disk.file.gzip {
                    let mut gz = flate2::read::MultiGzDecoder::new(&mut self.tar);
                    plan = Some(decode_disk(&mut gz, &m.name, None, capacity, sink, progress, &mut decoded)?);
                } else {
                    plan = Some(decode_disk(
                        &mut self.tar,
                        &m.name,
                        Some(m.size),
                        capacity,
                        sink,
                        progress,
                        &mut decoded,
                    )?);
                }
            } else if let Some(p) = plan.as_mut() {
                if p.wants(&m.name) {
                    if let Some(mf) = manifest.as_ref().filter(|mf| !mf.entries.contains_key(&m.name)) {
                        return Err(unlisted(mf, &m.name));
                    }
                    p.extent(&mut self.tar, &m.name, sink, progress)?;
                }
            }
        }
        if let Some(p) = plan.as_mut() {
            p.zero_leading(sink)?;
            if let Some(missing) = p.pending.front() {
                return Err(corrupt(format!(
                    "the archive ends without {}, which the disk's descriptor names",
                    missing.file_name()
                )));
            }
        }
        let Some((size, disk_format)) = decoded else {
            return Err(corrupt(format!(
                "the archive ends without {}, the disk the OVF descriptor names",
                self.disk.file.href
            )));
        };
        let extent_files = plan.as_ref().map(|p| p.files.clone()).unwrap_or_default();
        let size = plan.map_or(size, |p| p.size);
        if size > self.disk.capacity {
            return Err(corrupt(format!("the disk has {size} bytes; the OVF descriptor says {}", self.disk.capacity)));
        }
        let verified = match manifest {
            Some(mf) => {
                let required = [&self.ovf_name, &self.disk.file.href].into_iter().chain(extent_files.iter());
                if let Some(missing) = required.into_iter().find(|f| !mf.entries.contains_key(*f)) {
                    return Err(unlisted(&mf, missing));
                }
                self.check_manifest(&mf, &seen, &digests)?
            }
            None => {
                tracing::info!("the OVA has no manifest");
                Vec::new()
            }
        };
        Ok(OvaDecoded { size, disk_format, verified })
    }

    fn check_manifest(
        &self,
        mf: &Manifest,
        seen: &[String],
        digests: &BTreeMap<String, Digests>,
    ) -> Result<Vec<String>> {
        let mut verified = Vec::new();
        for (name, (algo, expected)) in &mf.entries {
            let actual = if *name == self.ovf_name {
                let mut h = Hasher::new(*algo);
                h.update(&self.ovf_bytes);
                to_hex(&h.finish())
            } else if !seen.contains(name) {
                return Err(corrupt(format!("the manifest lists {name}, which the archive lacks")));
            } else {
                let found = digests.get(name).and_then(|d| d.iter().find(|(a, _)| a == algo));
                match found {
                    Some((_, d)) => to_hex(d),
                    None => {
                        return Err(unsupported(format!(
                            "the manifest comes after {name} and uses {}, which was not computed while it streamed (SHA1 and SHA256 are); put the manifest right after the .ovf",
                            algo.name().to_ascii_uppercase()
                        )))
                    }
                }
            };
            if actual != *expected {
                return Err(DeployError::ManifestMismatch {
                    member: name.clone(),
                    algo: algo.name(),
                    actual,
                    expected: expected.clone(),
                });
            }
            verified.push(name.clone());
        }
        for name in seen {
            // The manifest does not list itself, nor the certificate that
            // signs it.
            let lower = name.to_ascii_lowercase();
            if !mf.entries.contains_key(name) && !lower.ends_with(".mf") && !lower.ends_with(".cert") {
                tracing::warn!(member = %name, "the manifest does not list this member; it is not verified");
            }
        }
        Ok(verified)
    }
}

fn unlisted(mf: &Manifest, name: &str) -> DeployError {
    let listed: Vec<&str> = mf.entries.keys().map(String::as_str).collect();
    corrupt(format!("the manifest does not list {name}, which would go unverified (it lists: {})", listed.join(", ")))
}

/// A sink refusing writes past the capacity the OVF declares, which the
/// target was checked against before writing.
struct Capped<'s> {
    inner: &'s mut dyn ImageSink,
    capacity: u64,
}

impl Capped<'_> {
    fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(corrupt(format!("the disk goes on past the {} bytes the OVF descriptor declares", self.capacity))),
        }
    }
}

impl ImageSink for Capped<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        self.inner.write_at(offset, data)
    }

    fn zero_at(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        self.inner.zero_at(offset, len)
    }
}

/// The extents of a descriptor-based disk still to come, in order.
#[derive(Debug)]
struct Plan {
    pending: VecDeque<PendingExtent>,
    /// Every extent file, for the manifest check.
    files: Vec<String>,
    /// Byte offset of the next extent.
    base: u64,
    /// Total bytes of the disk.
    size: u64,
}

#[derive(Debug)]
struct PendingExtent {
    sectors: u64,
    kind: ExtentKind,
}

impl PendingExtent {
    fn file_name(&self) -> &str {
        match &self.kind {
            ExtentKind::Flat { file, .. } | ExtentKind::Sparse { file } => file,
            ExtentKind::Zero => "a zero extent",
        }
    }
}

impl Plan {
    fn from_descriptor(d: Descriptor) -> Result<Self> {
        let mut size = 0u64;
        for e in &d.extents {
            size = size
                .checked_add(e.sectors * SECTOR)
                .ok_or_else(|| corrupt("the descriptor's extents add up past 2^64 bytes"))?;
        }
        if d.extents.is_empty() {
            return Err(corrupt("the disk's descriptor names no extent"));
        }
        let pending: VecDeque<PendingExtent> =
            d.extents.into_iter().map(|e| PendingExtent { sectors: e.sectors, kind: e.kind }).collect();
        let files = pending.iter().filter(|e| e.kind != ExtentKind::Zero).map(|e| e.file_name().to_owned()).collect();
        Ok(Plan { pending, files, base: 0, size })
    }

    /// Zeroes the zero extents at the front of what is still to come (at
    /// the end: the trailing ones).
    fn zero_leading(&mut self, sink: &mut dyn ImageSink) -> Result<()> {
        while self.pending.front().is_some_and(|e| e.kind == ExtentKind::Zero) {
            let e = self.pending.pop_front().expect("front exists");
            sink.zero_at(self.base, e.sectors * SECTOR)?;
            self.base += e.sectors * SECTOR;
        }
        Ok(())
    }

    /// Whether `name` is an extent file still to come.
    fn wants(&self, name: &str) -> bool {
        self.pending.iter().any(|e| e.file_name() == name)
    }

    /// Decodes member `name`, which must be the next extent.
    fn extent(
        &mut self,
        r: &mut dyn Read,
        name: &str,
        sink: &mut dyn ImageSink,
        progress: Option<&Progress>,
    ) -> Result<()> {
        self.zero_leading(sink)?;
        let next = self.pending.front().map(|e| e.file_name().to_owned()).unwrap_or_default();
        if next != name {
            return Err(unsupported(format!(
                "the extent {name} comes before {next} in the archive; they must come in disk order to be streamed"
            )));
        }
        let e = self.pending.pop_front().expect("front exists");
        let len = e.sectors * SECTOR;
        match e.kind {
            ExtentKind::Flat { offset, .. } => {
                let skip = offset.checked_mul(SECTOR).ok_or_else(|| corrupt(format!("{name}: offset {offset}")))?;
                let skipped = io::copy(&mut r.take(skip), &mut io::sink()).map_err(read_err)?;
                let copied = crate::sink::copy_at(r, sink, self.base, len, progress, read_err)?;
                if skipped < skip || copied < len {
                    return Err(corrupt(format!(
                        "the flat extent {name} ends after {} of {} bytes",
                        skipped + copied,
                        skip + len
                    )));
                }
            }
            ExtentKind::Sparse { .. } => {
                let h = vmdk::decode_sparse(r, sink, self.base, self.base + len, progress)?;
                if h.capacity != e.sectors {
                    return Err(corrupt(format!(
                        "the sparse extent {name} holds {} sectors; the descriptor says {}",
                        h.capacity, e.sectors
                    )));
                }
            }
            ExtentKind::Zero => unreachable!("zero extents are handled by zero_leading"),
        }
        self.base += len;
        self.zero_leading(sink)
    }
}

/// Decodes the member holding the chosen disk: a sparse VMDK extent, a
/// qcow2 image (some tools export those), or a VMDK descriptor whose
/// extents follow as members (then returned as a plan).
fn decode_disk(
    r: &mut dyn Read,
    name: &str,
    size: Option<u64>,
    capacity: u64,
    sink: &mut dyn ImageSink,
    progress: Option<&Progress>,
    decoded: &mut Option<(u64, String)>,
) -> Result<Plan> {
    let mut head = vec![0u8; crate::format::SNIFF_LEN];
    let n = read_full(r, &mut head).map_err(read_err)?;
    head.truncate(n);
    let done = |size: u64| Plan { pending: VecDeque::new(), files: Vec::new(), base: size, size };
    if head.starts_with(&vmdk::MAGIC) {
        let h = vmdk::decode_sparse(&mut Read::chain(io::Cursor::new(head), r), sink, 0, capacity, progress)?;
        let kind = if h.version == 3 { "streamOptimized vmdk" } else { "monolithicSparse vmdk" };
        *decoded = Some((h.size(), kind.to_owned()));
        return Ok(done(h.size()));
    }
    if head.starts_with(&crate::qcow2::header::MAGIC) {
        // No Range requests inside an archive: the forward pass and its
        // look-back buffer must do.
        let h = crate::qcow2::Header::parse(&head, size)?;
        let virtual_size = h.size;
        crate::qcow2::Decoder::new(h, sink, None, size, progress).run(&mut Read::chain(io::Cursor::new(head), r))?;
        *decoded = Some((virtual_size, "qcow2".to_owned()));
        return Ok(done(virtual_size));
    }
    if !head.starts_with(vmdk::DESCRIPTOR_MAGIC) {
        let what = match crate::format::sniff(&head) {
            crate::format::Sniffed::Other(format) => format!("a {format} image"),
            _ => crate::format::describe(&head),
        };
        return Err(unsupported(format!(
            "the disk {name} is {what}; an OVA's disk must be a VMDK (sparse, stream-optimized or a descriptor) or a qcow2"
        )));
    }
    let mut text = head;
    r.take(vmdk::MAX_DESCRIPTOR + 1 - text.len().min(vmdk::MAX_DESCRIPTOR as usize) as u64)
        .read_to_end(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > vmdk::MAX_DESCRIPTOR {
        return Err(unsupported(format!("the descriptor {name} is larger than {} bytes", vmdk::MAX_DESCRIPTOR)));
    }
    let d = Descriptor::parse(&text)?;
    let kind = format!("{} vmdk", d.create_type);
    let mut plan = Plan::from_descriptor(d)?;
    *decoded = Some((plan.size, kind));
    plan.zero_leading(sink)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_units_as_dsp0004_writes_them() {
        for (units, want) in [
            ("byte", Some(1)),
            ("", None),
            ("byte * 2^30", Some(1 << 30)),
            ("byte*2^20", Some(1 << 20)),
            ("byte * 10^9", Some(1_000_000_000)),
            ("byte * 1024", Some(1024)),
            ("byte * 2^99", None),
            ("kilobyte", None),
        ] {
            assert_eq!(allocation_units(units), want, "{units:?}");
        }
    }

    #[test]
    fn manifests_parse_and_refuse_clearly() {
        let sha1 = "a".repeat(40);
        let sha256 = "B".repeat(64);
        let text = format!("SHA1(vm.ovf)= {sha1}\n\nSHA256(./disk 1.vmdk)={sha256}\r\n");
        let m = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(m.entries["vm.ovf"], (Algorithm::Sha1, sha1.clone()));
        assert_eq!(m.entries["disk 1.vmdk"], (Algorithm::Sha256, sha256.to_lowercase()));
        for (text, want) in [
            (format!("MD5(a)= {}", "0".repeat(32)), "unsupported ova image: the manifest uses MD5"),
            ("SHA1(a)= 1234".to_owned(), "corrupt ova image: manifest line 1: \"1234\" is not a sha1 digest"),
            ("hello".to_owned(), "corrupt ova image: manifest line 1 is not ALGO(file)= digest"),
            (format!("SHA1(a)= {sha1}\nSHA1(a)= {sha1}"), "corrupt ova image: the manifest lists a twice"),
        ] {
            let e = Manifest::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn descriptors_name_files_disks_and_refuse_what_cannot_stream() {
        let ovf = |files: &str, disks: &str| {
            format!(
                "\u{feff}<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/2\" xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/2\">\
                 <References>{files}</References><DiskSection><Info>d</Info>{disks}</DiskSection></Envelope>"
            )
        };
        let files = r#"<File ovf:id="f1" ovf:href="./a.vmdk" ovf:size="10"/><File ovf:id="f2" ovf:href="b.vmdk.gz" ovf:compression="gzip"/>"#;
        let disks = r#"<Disk ovf:diskId="a" ovf:fileRef="f1" ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^30"/>
                       <Disk ovf:diskId="blank" ovf:capacity="5"/>
                       <Disk ovf:diskId="b" ovf:fileRef="f2" ovf:capacity="4096"/>"#;
        let o = Ovf::parse(ovf(files, disks).as_bytes()).unwrap();
        assert_eq!(o.disks.len(), 2, "the blank disk has no file to deploy");
        assert_eq!(
            (o.disks[0].file.href.as_str(), o.disks[0].capacity, o.disks[0].file.size),
            ("a.vmdk", 2 << 30, Some(10))
        );
        assert!(o.disks[1].file.gzip);
        assert_eq!(o.choose(Some("2")).unwrap().id, "b");
        assert_eq!(o.choose(Some("a.vmdk")).unwrap().id, "a");
        assert!(o.choose(Some("0")).is_err());
        assert!(o
            .choose(None)
            .unwrap_err()
            .to_string()
            .starts_with("the OVA holds 2 disks: 1 a (a.vmdk, 2 GiB), 2 b (b.vmdk.gz, 4096 bytes)"));

        for (text, want) in [
            (
                ovf(r#"<File ovf:id="f1" ovf:href="a" ovf:chunkSize="1000"/>"#, ""),
                "unsupported ova image: a is split into chunks",
            ),
            (
                ovf(r#"<File ovf:id="f1" ovf:href="a" ovf:compression="bzip2"/>"#, ""),
                "unsupported ova image: a is compressed with \"bzip2\"",
            ),
            (
                ovf("", r#"<Disk ovf:diskId="a" ovf:fileRef="nope" ovf:capacity="1"/>"#),
                "corrupt ova image: disk a refers to file \"nope\"",
            ),
            (
                ovf(files, r#"<Disk ovf:diskId="a" ovf:fileRef="f1" ovf:capacity="${size}"/>"#),
                "corrupt ova image: disk a has capacity \"${size}\"",
            ),
            (
                "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaa\">]><Envelope/>".to_owned(),
                "corrupt ova image: the OVF descriptor is not valid XML",
            ),
            ("<Project/>".to_owned(), "corrupt ova image: the OVF descriptor's root is <Project>"),
        ] {
            let e = Ovf::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
