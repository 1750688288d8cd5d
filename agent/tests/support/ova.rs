//! OVA building blocks: an OVF 1.0 descriptor for a virtual machine with
//! given disks, and GNU `tar` archiving members in order with a manifest
//! where the test wants it.

use std::path::Path;
use std::process::Command;

use sha2::Digest;

use super::run;

/// A disk of the OVF: id, file name, capacity in bytes.
pub struct Disk<'a> {
    pub id: &'a str,
    pub file: &'a str,
    pub capacity: u64,
}

/// An OVF 1.0 descriptor with a virtual machine using `disks`; `sizes`
/// gives `ovf:size` for the files that have one.
pub fn ovf(disks: &[Disk<'_>], sizes: &[(&str, u64)]) -> String {
    let mut refs = String::new();
    let mut section = String::new();
    let mut items = String::new();
    for (i, d) in disks.iter().enumerate() {
        let size = sizes.iter().find(|(f, _)| *f == d.file).map(|(_, s)| format!(r#" ovf:size="{s}""#));
        refs += &format!(r#"    <File ovf:id="file{i}" ovf:href="{}"{}/>"#, d.file, size.unwrap_or_default());
        refs += "\n";
        let (capacity, units) = if d.capacity % (1 << 20) == 0 {
            (d.capacity >> 20, r#" ovf:capacityAllocationUnits="byte * 2^20""#)
        } else {
            (d.capacity, "")
        };
        section += &format!(
            r#"    <Disk ovf:capacity="{capacity}"{units} ovf:diskId="{}" ovf:fileRef="file{i}" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>"#,
            d.id
        );
        section += "\n";
        items += &format!(
            "      <Item><rasd:AddressOnParent>{i}</rasd:AddressOnParent><rasd:ElementName>disk{i}</rasd:ElementName>\
             <rasd:HostResource>ovf:/disk/{}</rasd:HostResource><rasd:InstanceID>{}</rasd:InstanceID>\
             <rasd:ResourceType>17</rasd:ResourceType></Item>\n",
            d.id,
            10 + i
        );
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
{refs}  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{section}  </DiskSection>
  <NetworkSection><Info>Networks</Info><Network ovf:name="VM Network"><Description>net</Description></Network></NetworkSection>
  <VirtualSystem ovf:id="byoi-test">
    <Info>A virtual machine</Info>
    <Name>byoi-test</Name>
    <OperatingSystemSection ovf:id="96"><Info>OS</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
{items}    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// Where the manifest goes, with which algorithm.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mf {
    None,
    AfterOvf(&'static str),
    AtEnd(&'static str),
    /// At the end, SHA256, in VirtualBox's spelling: `SHA256 (file) = hex`.
    VirtualBox,
    /// After the descriptor, SHA256, listing only the descriptor.
    OvfOnly,
}

pub fn digest(algo: &str, data: &[u8]) -> String {
    let bytes = match algo {
        "SHA1" => sha1::Sha1::digest(data).to_vec(),
        "SHA256" => sha2::Sha256::digest(data).to_vec(),
        "SHA512" => sha2::Sha512::digest(data).to_vec(),
        _ => unreachable!(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Archives `members` (name, bytes) in order with GNU tar in `format`
/// (`ustar`, `pax`, `gnu`), with a manifest where `mf` says.
pub fn tar(dir: &Path, members: &[(&str, Vec<u8>)], mf: Mf, format: &str) -> Vec<u8> {
    let stage = dir.join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    let mut names: Vec<String> = Vec::new();
    for (name, data) in members {
        std::fs::write(stage.join(name), data).unwrap();
        names.push(name.to_string());
    }
    let line = |algo: &str, name: &str, data: &[u8]| match mf {
        Mf::VirtualBox => format!("{algo} ({name}) = {}\n", digest(algo, data)),
        _ => format!("{algo}({name})= {}\n", digest(algo, data)),
    };
    let listed = match mf {
        Mf::None => None,
        Mf::AfterOvf(algo) | Mf::AtEnd(algo) => Some((algo, members.len(), 1)),
        Mf::VirtualBox => Some(("SHA256", members.len(), names.len())),
        Mf::OvfOnly => Some(("SHA256", 1, 1)),
    };
    if let Some((algo, count, _)) = listed {
        let text: String = members[..count].iter().map(|(name, data)| line(algo, name, data)).collect();
        std::fs::write(stage.join("vm.mf"), text).unwrap();
        let at = if matches!(mf, Mf::AtEnd(_) | Mf::VirtualBox) { names.len() } else { 1 };
        names.insert(at, "vm.mf".into());
    }
    let out = dir.join("vm.ova");
    run(Command::new("tar")
        .arg(format!("--format={format}"))
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(&out)
        .arg("-C")
        .arg(&stage)
        .args(&names));
    std::fs::remove_dir_all(&stage).unwrap();
    std::fs::read(out).unwrap()
}
