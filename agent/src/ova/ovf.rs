//! The OVF descriptor (DMTF DSP0243), read with `roxmltree`: the files it
//! references, the disks they hold and their capacity, and the choice of the
//! disk to deploy.

use super::{clean_name, corrupt, unsupported, MAX_MEMBERS};
use crate::error::{DeployError, Result};

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
