//! The member holding the chosen disk, decoded onto the sink as it streams:
//! a sparse or stream-optimized VMDK, a qcow2, or a VMDK descriptor whose
//! extents follow as members ([`Plan`]); never past the capacity the OVF
//! declares ([`Capped`]).

use std::collections::VecDeque;
use std::io::{self, Read};

use super::{corrupt, read_err, unsupported};
use crate::error::Result;
use crate::progress::Progress;
use crate::sink::ImageSink;
use crate::util::read_full;
use crate::vmdk::{self, Descriptor, ExtentKind, SECTOR};

/// A sink refusing writes past the capacity the OVF declares, which the
/// target was checked against before writing.
pub(super) struct Capped<'s> {
    pub(super) inner: &'s mut dyn ImageSink,
    pub(super) capacity: u64,
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
pub(super) struct Plan {
    pub(super) pending: VecDeque<PendingExtent>,
    /// Every extent file, for the manifest check.
    pub(super) files: Vec<String>,
    /// Byte offset of the next extent.
    base: u64,
    /// Total bytes of the disk.
    pub(super) size: u64,
}

#[derive(Debug)]
pub(super) struct PendingExtent {
    sectors: u64,
    kind: ExtentKind,
}

impl PendingExtent {
    pub(super) fn file_name(&self) -> &str {
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
    pub(super) fn zero_leading(&mut self, sink: &mut dyn ImageSink) -> Result<()> {
        while self.pending.front().is_some_and(|e| e.kind == ExtentKind::Zero) {
            let e = self.pending.pop_front().expect("front exists");
            sink.zero_at(self.base, e.sectors * SECTOR)?;
            self.base += e.sectors * SECTOR;
        }
        Ok(())
    }

    /// Whether `name` is an extent file still to come.
    pub(super) fn wants(&self, name: &str) -> bool {
        self.pending.iter().any(|e| e.file_name() == name)
    }

    /// Decodes member `name`, which must be the next extent.
    pub(super) fn extent(
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
pub(super) fn decode_disk(
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
