//! cloud-init ConfigDrive: the metadata files (OpenStack `config-2` or
//! NoCloud `cidata` layout) and the FAT filesystem holding them, written
//! with `fatfs` into any `Read + Write + Seek` (a partition of the disk).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use byoi_wire::spec::ConfigDriveSpec;
use serde_json::json;

use crate::util::{le16, le32};

/// Size of the partition we add: the controller refuses at POST what would
/// not fit in it ([`ConfigDriveSpec::size`]).
pub use byoi_wire::spec::CONFIGDRIVE_PARTITION_SIZE as PARTITION_SIZE;
/// The OpenStack metadata versions written, every file in each.
use byoi_wire::spec::OPENSTACK_VERSIONS;

/// Which datasource layout to write.
pub use byoi_wire::spec::ConfigDriveFormat as Format;

/// What goes into the ConfigDrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDrive {
    /// Layout.
    pub format: Format,
    /// cloud-init's instance-id (OpenStack `uuid`).
    pub instance_id: String,
    /// Host name.
    pub hostname: Option<String>,
    /// SSH public keys.
    pub ssh_keys: Vec<String>,
    /// User data, verbatim (cloud-config, a script, a MIME multipart…).
    pub user_data: Option<Vec<u8>>,
    /// Extra metadata (OpenStack `meta`; OVH's `userMetadatas`).
    pub meta: BTreeMap<String, String>,
    /// OpenStack `network_data.json` (NoCloud: `network-config`), verbatim.
    pub network_data: Option<Vec<u8>>,
}

impl ConfigDrive {
    /// A drive with a fresh instance id and nothing else.
    pub fn new(format: Format) -> Self {
        ConfigDrive {
            format,
            instance_id: uuid::Uuid::new_v4().to_string(),
            hostname: None,
            ssh_keys: Vec::new(),
            user_data: None,
            meta: BTreeMap::new(),
            network_data: None,
        }
    }

    /// The drive a spec describes; a fresh instance id when it names none.
    pub fn from_spec(spec: &ConfigDriveSpec) -> Self {
        let mut d = ConfigDrive::new(spec.format);
        if let Some(id) = &spec.instance_id {
            d.instance_id = id.clone();
        }
        d.hostname = spec.hostname.clone();
        d.ssh_keys = spec.ssh_keys.clone();
        d.user_data = spec.user_data.as_ref().map(|b| b.0.clone());
        d.meta = spec.meta.clone();
        d.network_data = spec.network_data.as_ref().map(|b| b.0.clone());
        d
    }

    /// The files, as (path with `/` separators, contents).
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        match self.format {
            Format::OpenStack => self.openstack_files(),
            Format::NoCloud => self.nocloud_files(),
        }
    }

    fn openstack_files(&self) -> Vec<(String, Vec<u8>)> {
        let keys: serde_json::Map<String, serde_json::Value> = self
            .ssh_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (if i == 0 { "default".to_owned() } else { format!("key-{i}") }, json!(k)))
            .collect();
        let mut meta = json!({
            "uuid": self.instance_id,
            "launch_index": 0,
            "meta": self.meta,
        });
        if let Some(h) = &self.hostname {
            meta["hostname"] = json!(h);
            meta["name"] = json!(h);
        }
        if !keys.is_empty() {
            meta["public_keys"] = serde_json::Value::Object(keys);
        }
        let mut per_version = vec![
            ("meta_data.json", serde_json::to_vec_pretty(&meta).unwrap_or_default()),
            ("vendor_data.json", b"{}".to_vec()),
        ];
        if let Some(u) = &self.user_data {
            per_version.push(("user_data", u.clone()));
        }
        if let Some(n) = &self.network_data {
            per_version.push(("network_data.json", n.clone()));
        }
        OPENSTACK_VERSIONS
            .iter()
            .flat_map(|v| per_version.iter().map(move |(name, data)| (format!("openstack/{v}/{name}"), data.clone())))
            .collect()
    }

    fn nocloud_files(&self) -> Vec<(String, Vec<u8>)> {
        // JSON is YAML: no hand-rolled quoting.
        let mut meta = json!({ "instance-id": self.instance_id });
        if let Some(h) = &self.hostname {
            meta["local-hostname"] = json!(h);
        }
        if !self.ssh_keys.is_empty() {
            meta["public-keys"] = json!(self.ssh_keys);
        }
        for (k, v) in &self.meta {
            if meta.get(k).is_none() {
                meta[k] = json!(v);
            }
        }
        let mut files = vec![
            ("meta-data".to_owned(), serde_json::to_vec_pretty(&meta).unwrap_or_default()),
            // NoCloud wants user-data to exist, even empty.
            ("user-data".to_owned(), self.user_data.clone().unwrap_or_default()),
        ];
        if let Some(n) = &self.network_data {
            files.push(("network-config".to_owned(), n.clone()));
        }
        files
    }

    /// Formats `part` (a whole partition) as FAT labelled for the format,
    /// with `sector`-byte logical sectors, and writes the files.
    pub fn write_fat<D: Read + Write + Seek>(&self, mut part: D, sector: u32) -> io::Result<()> {
        let label = fat_label(self.format.label());
        part.seek(SeekFrom::Start(0))?;
        fatfs::format_volume(
            &mut part,
            fatfs::FormatVolumeOptions::new().volume_label(label).bytes_per_sector(sector as u16),
        )?;
        write_root_label(&mut part, label)?;
        part.seek(SeekFrom::Start(0))?;
        let fs = fatfs::FileSystem::new(&mut part, fatfs::FsOptions::new())?;
        let root = fs.root_dir();
        for (path, data) in self.files() {
            let mut dir = root.clone();
            let mut parts: Vec<&str> = path.split('/').collect();
            let name = parts.pop().unwrap_or_default();
            for p in parts {
                dir = match dir.open_dir(p) {
                    Ok(d) => d,
                    Err(_) => dir.create_dir(p)?,
                };
            }
            let mut f = dir.create_file(name)?;
            f.truncate()?;
            f.write_all(&data)?;
        }
        drop(root);
        fs.unmount()?;
        fix_dot_entries(&mut part)
    }
}

/// A FAT label: 11 bytes, space padded. FAT labels are conventionally
/// upper case, but cloud-init and blkid match `config-2` as written, and
/// OpenStack writes it lower case.
fn fat_label(label: &str) -> [u8; 11] {
    let mut l = [b' '; 11];
    for (d, s) in l.iter_mut().zip(label.bytes()) {
        *d = s;
    }
    l
}

/// Adds the volume-label entry to the root directory of a freshly
/// formatted FAT12/16 volume (`fatfs` only sets the boot-sector copy; blkid
/// prefers the directory entry, `fsck.fat` wants both to agree).
fn write_root_label<D: Read + Write + Seek>(part: &mut D, label: [u8; 11]) -> io::Result<()> {
    let mut bpb = [0u8; 512];
    part.seek(SeekFrom::Start(0))?;
    part.read_exact(&mut bpb)?;
    let bytes_per_sector = u64::from(le16(&bpb, 11));
    let reserved = u64::from(le16(&bpb, 14));
    let fats = u64::from(bpb[16]);
    let root_entries = le16(&bpb, 17);
    let fat16_size = u64::from(le16(&bpb, 22));
    if root_entries == 0 || fat16_size == 0 {
        // FAT32: the root directory is a cluster chain; the boot-sector
        // label is what blkid falls back to.
        return Ok(());
    }
    let root = (reserved + fats * fat16_size) * bytes_per_sector;
    let mut entry = [0u8; 32];
    entry[..11].copy_from_slice(&label);
    entry[11] = 0x08; // ATTR_VOLUME_ID
    part.seek(SeekFrom::Start(root))?;
    part.write_all(&entry)
}

/// FAT directory entry attributes.
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LFN: u8 = 0x0f;
const DELETED: u8 = 0xe5;

/// `fatfs` 0.3 writes a long-name entry before the `.` and `..` entries of
/// each new directory, so they are not the first two slots; `fsck.fat`
/// flags that. Moves them to slots 0 and 1 and marks the long-name entries
/// deleted, in every directory (all ours fit in their first cluster).
fn fix_dot_entries<D: Read + Write + Seek>(part: &mut D) -> io::Result<()> {
    let mut bpb = [0u8; 512];
    part.seek(SeekFrom::Start(0))?;
    part.read_exact(&mut bpb)?;
    let u16_at = |at: usize| u64::from(le16(&bpb, at));
    let bps = u16_at(11);
    let cluster = u64::from(bpb[13]) * bps;
    let reserved = u16_at(14);
    let fats = u64::from(bpb[16]);
    let root_entries = u16_at(17);
    let fat_size = match u16_at(22) {
        0 => u64::from(le32(&bpb, 36)),
        n => n,
    };
    let root_start = (reserved + fats * fat_size) * bps;
    let data_start = root_start + (root_entries * 32).div_ceil(bps) * bps;
    let cluster_offset = |c: u64| data_start + (c - 2) * cluster;
    // (offset, number of slots) of the directories left to visit.
    let mut todo = vec![if root_entries > 0 {
        (root_start, root_entries)
    } else {
        let root_cluster = u64::from(le32(&bpb, 44));
        (cluster_offset(root_cluster), cluster / 32)
    }];
    while let Some((offset, slots)) = todo.pop() {
        let mut dir = vec![0u8; (slots * 32) as usize];
        part.seek(SeekFrom::Start(offset))?;
        part.read_exact(&mut dir)?;
        let slot = |d: &[u8], i: usize| d[i * 32..i * 32 + 32].to_vec();
        if slots >= 4
            && dir[11] == ATTR_LFN
            && &dir[32..43] == b".          "
            && dir[64 + 11] == ATTR_LFN
            && &dir[96..107] == b"..         "
        {
            let mut fixed = [slot(&dir, 1), slot(&dir, 3), slot(&dir, 0), slot(&dir, 2)].concat();
            fixed[64] = DELETED;
            fixed[96] = DELETED;
            dir[..128].copy_from_slice(&fixed);
            part.seek(SeekFrom::Start(offset))?;
            part.write_all(&dir[..128])?;
        }
        for i in 0..slots as usize {
            let entry = &dir[i * 32..i * 32 + 32];
            if entry[0] == 0 {
                break;
            }
            if entry[0] == DELETED || entry[11] == ATTR_LFN || entry[11] & ATTR_DIRECTORY == 0 || entry[0] == b'.' {
                continue;
            }
            let c = (u64::from(le16(entry, 20)) << 16) | u64::from(le16(entry, 26));
            if c >= 2 {
                todo.push((cluster_offset(c), cluster / 32));
            }
        }
    }
    Ok(())
}

/// Reads the FAT volume label of the filesystem at the start of `part`,
/// if it is FAT.
pub fn fat_volume_label<D: Read + Seek>(part: &mut D) -> io::Result<Option<String>> {
    let mut bs = [0u8; 512];
    part.seek(SeekFrom::Start(0))?;
    part.read_exact(&mut bs)?;
    if bs[510..512] != [0x55, 0xaa] {
        return Ok(None);
    }
    // FAT12/16 keep the extended boot signature at 38, FAT32 at 66.
    let at = if bs[38] == 0x29 && &bs[54..57] == b"FAT" {
        43
    } else if bs[66] == 0x29 && &bs[82..87] == b"FAT32" {
        71
    } else {
        return Ok(None);
    };
    Ok(Some(String::from_utf8_lossy(&bs[at..at + 11]).trim_end().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sample(format: Format) -> ConfigDrive {
        let mut d = ConfigDrive::new(format);
        d.instance_id = "iid-1".into();
        d.hostname = Some("web1".into());
        d.ssh_keys = vec!["ssh-ed25519 AAAA test@byoi".into()];
        d.user_data = Some(b"#cloud-config\nruncmd: [true]\n".to_vec());
        d.meta.insert("role".into(), "db".into());
        d
    }

    #[test]
    fn openstack_files_in_every_version() {
        let files = sample(Format::OpenStack).files();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        for v in OPENSTACK_VERSIONS {
            for f in ["meta_data.json", "vendor_data.json", "user_data"] {
                assert!(names.contains(&format!("openstack/{v}/{f}").as_str()), "{v}/{f} missing: {names:?}");
            }
        }
        let meta: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        assert_eq!(meta["uuid"], "iid-1");
        assert_eq!(meta["hostname"], "web1");
        assert_eq!(meta["public_keys"]["default"], "ssh-ed25519 AAAA test@byoi");
        assert_eq!(meta["meta"]["role"], "db");
        assert_eq!(meta["launch_index"], 0);
    }

    /// The rule the controller applies at POST holds: a drive as large as
    /// it accepts, with the most metadata, fits the partition with either
    /// sector size, and its metadata file is no larger than the bound.
    #[test]
    fn the_largest_accepted_drive_fits() {
        use byoi_wire::spec::{Blob, ConfigDriveSize, Urls, CONFIGDRIVE_CAPACITY, MAX_META, MAX_SSH_KEYS};
        use byoi_wire::DeploySpec;
        for format in [Format::OpenStack, Format::NoCloud] {
            let mut spec = ConfigDriveSpec {
                format,
                hostname: Some("h".repeat(253)),
                ssh_keys: (0..MAX_SSH_KEYS).map(|i| format!("ssh-ed25519 {i:01000}")).collect(),
                meta: (0..MAX_META).map(|i| (format!("k\"{i}"), "\"\\".repeat(500))).collect(),
                network_data: Some(Blob(vec![b'n'; byoi_wire::spec::MAX_NETWORK_DATA])),
                ..Default::default()
            };
            let ConfigDriveSize { network_data, metadata, copies, .. } = spec.size();
            let room = CONFIGDRIVE_CAPACITY / copies - network_data - metadata;
            let user_data = room.min(byoi_wire::spec::MAX_USER_DATA as u64);
            spec.user_data = Some(Blob(vec![b'u'; user_data as usize]));
            if format == Format::OpenStack {
                assert_eq!(spec.size().total(), CONFIGDRIVE_CAPACITY);
            }
            let deploy = DeploySpec { configdrive: Some(spec.clone()), ..DeploySpec::new("http://x/i") };
            deploy.validate(Urls::Remote).unwrap();
            let drive = ConfigDrive::from_spec(&spec);
            let meta_file = if format == Format::OpenStack { "openstack/latest/meta_data.json" } else { "meta-data" };
            let written = drive.files().into_iter().find(|(n, _)| n == meta_file).unwrap().1.len() as u64;
            assert!(written <= metadata, "{format:?}: {written} > {metadata}");
            for sector in [512, 4096] {
                let mut part = Cursor::new(vec![0u8; PARTITION_SIZE as usize]);
                drive.write_fat(&mut part, sector).unwrap_or_else(|e| panic!("{format:?}, {sector}: {e}"));
            }
        }
    }

    #[test]
    fn fat_round_trip_with_labels() {
        let mut part = Cursor::new(vec![0u8; PARTITION_SIZE as usize]);
        let drive = sample(Format::OpenStack);
        drive.write_fat(&mut part, 512).unwrap();
        assert_eq!(fat_volume_label(&mut part).unwrap().as_deref(), Some("config-2"));
        part.seek(SeekFrom::Start(0)).unwrap();
        let fs = fatfs::FileSystem::new(&mut part, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.read_volume_label_from_root_dir().unwrap().as_deref(), Some("config-2"));
        let mut s = String::new();
        fs.root_dir().open_file("openstack/latest/user_data").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "#cloud-config\nruncmd: [true]\n");
    }
}
