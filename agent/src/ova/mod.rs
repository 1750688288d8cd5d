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
//!
//! [`Ova`] here drives the walk; each concern has its module: `tar` (the
//! archive's members), `ovf` (the descriptor), `manifest` (its parsing and
//! the digest check), `disk` (the chosen disk's member onto the sink).

mod disk;
mod manifest;
mod ovf;
mod tar;

use std::collections::BTreeMap;
use std::io::{self, Read};

use crate::checksum::Algorithm;
use crate::error::{DeployError, Result};
use crate::progress::Progress;
use crate::sink::ImageSink;
use disk::{decode_disk, Capped, Plan};
pub use manifest::Manifest;
pub use ovf::{Ovf, OvfDisk, OvfFile};
pub use tar::{Digests, Member, Tar};

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

/// A member's name without the leading `./` tar and manifests may give it.
fn clean_name(name: &str) -> String {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n.to_owned()
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
                    return Err(mf.unlisted(&m.name));
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
                        return Err(mf.unlisted(&m.name));
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
                    return Err(mf.unlisted(missing));
                }
                mf.check(&self.ovf_name, &self.ovf_bytes, &seen, &digests)?
            }
            None => {
                tracing::info!("the OVA has no manifest");
                Vec::new()
            }
        };
        Ok(OvaDecoded { size, disk_format, verified })
    }
}
