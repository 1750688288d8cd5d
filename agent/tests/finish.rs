//! The finishing steps through `byoi-agent deploy`, checked with the real
//! tools: `sgdisk -v` for the GPT, `fsck.vfat` and cloud-init's own readers
//! for the ConfigDrive, efivarfs-format files for the boot entry.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use byoi_agent::bootentry::{EfiVars, ATTRS_NV_BS_RT, GLOBAL};
use byoi_agent::efi::{self, HardDrive, Signature};
use byoi_agent::efivars::VarDir;
use byoi_agent::partition::Guid;
use support::{ends_wiped, run, sh, Rng, Server};

const MIB: u64 = 1 << 20;

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_byoi-agent")).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_owned()
}

/// Writes `data` into `file` at `offset`.
fn put(file: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(file).unwrap().write_all_at(data, offset).unwrap();
}

/// A FAT image of `kib` KiB holding `files` (path on the filesystem, bytes).
fn fat(dir: &Path, name: &str, kib: u64, files: &[(&str, &[u8])]) -> PathBuf {
    let img = dir.join(name);
    let _ = std::fs::remove_file(&img);
    run(Command::new("mkfs.vfat").arg("-C").arg(&img).arg(kib.to_string()));
    for (path, data) in files {
        let mut parent = String::new();
        for part in path.trim_start_matches('/').split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            parent = format!("{parent}/{part}");
            let _ = Command::new("mmd").arg("-i").arg(&img).arg(format!("::{parent}")).output();
        }
        let src = dir.join("fat-src");
        std::fs::write(&src, data).unwrap();
        run(Command::new("mcopy").arg("-i").arg(&img).arg(&src).arg(format!("::{path}")));
    }
    img
}

/// A 16 MiB GPT disk: an 8 MiB ESP with `esp_files` (none: no ESP at all,
/// a plain data partition instead), then a Linux partition of random bytes.
fn gpt_disk(dir: &Path, esp_files: Option<&[(&str, &[u8])]>) -> PathBuf {
    let img = dir.join("gpt.raw");
    std::fs::write(&img, vec![0u8; 16 * MIB as usize]).unwrap();
    let kind = if esp_files.is_some() { "ef00" } else { "8300" };
    sh(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+8M", "-t", &format!("1:{kind}"), "-c", "1:EFI"])
        .args(["-n", "2:0:0", "-t", "2:8300", "-c", "2:root"])
        .arg(&img));
    if let Some(files) = esp_files {
        let esp = fat(dir, "esp.img", 8192, files);
        put(&img, MIB, &std::fs::read(esp).unwrap());
    }
    let mut data = vec![0u8; 4 * MIB as usize];
    Rng::new(9).fill(&mut data);
    put(&img, 10 * MIB, &data);
    img
}

/// A 16 MiB MBR disk with `n` primary partitions of 2 MiB from 1 MiB on,
/// the first of type `first_type`.
fn mbr_disk(dir: &Path, n: usize, first_type: &str) -> PathBuf {
    let img = dir.join("mbr.raw");
    std::fs::write(&img, vec![0u8; 16 * MIB as usize]).unwrap();
    let mut script = String::from("label: dos\nlabel-id: 0x1234abcd\n");
    for i in 0..n {
        let ty = if i == 0 { first_type } else { "83" };
        script.push_str(&format!("start={}, size=4096, type={ty}\n", 2048 + i * 4096));
    }
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    img
}

struct Setup {
    dir: tempfile::TempDir,
    server: Server,
    target: PathBuf,
}

fn setup(target_mib: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    std::fs::write(&target, vec![0xa5u8; (target_mib * MIB) as usize]).unwrap();
    Setup { dir, server: Server::start(), target }
}

impl Setup {
    fn serve(&self, path: &str, file: &Path) -> String {
        let b = support::Behaviour { ranges: true, etag: Some("\"1\"".into()), ..Default::default() };
        self.server.serve(path, std::fs::read(file).unwrap(), b)
    }

    fn deploy(&self, url: &str, extra: &[&str]) -> Output {
        let mut args = vec!["deploy", "--url", url, "--target", self.target.to_str().unwrap()];
        args.extend_from_slice(extra);
        agent(&args)
    }
}

/// (first, last) sector of partition `n` as sgdisk reports it.
fn sgdisk_range(disk: &Path, n: u32) -> (u64, u64, String) {
    let info = sh(Command::new("sgdisk").arg("-i").arg(n.to_string()).arg(disk));
    let field = |name: &str| -> String {
        info.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {info}"))
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .to_owned()
    };
    let num = |s: String| s.split_whitespace().next().unwrap().parse::<u64>().unwrap();
    (num(field("First sector")), num(field("Last sector")), field("Partition unique GUID"))
}

fn extract(disk: &Path, first: u64, last: u64, out: &Path) {
    let d = std::fs::read(disk).unwrap();
    std::fs::write(out, &d[(first * 512) as usize..((last + 1) * 512) as usize]).unwrap();
}

/// cloud-init 22.4's own reader (Debian's python3), on a tree copied out
/// of the FAT with mtools. Returns its JSON summary.
fn cloud_init_reads(part: &Path, dir: &Path, format: &str) -> serde_json::Value {
    let tree = dir.join(format!("tree-{format}"));
    std::fs::create_dir_all(&tree).unwrap();
    let script = if format == "openstack" {
        sh(Command::new("mcopy").arg("-s").arg("-i").arg(part).arg("::/openstack").arg(&tree));
        r#"
import json, sys
from cloudinit.sources.helpers.openstack import ConfigDriveReader
r = ConfigDriveReader(sys.argv[1]).read_v2()
md = r["metadata"]
print(json.dumps({"instance_id": md["instance-id"], "hostname": md.get("local-hostname"),
                  "keys": md.get("public_keys"), "meta": md.get("meta"), "userdata": r["userdata"].decode() if isinstance(r["userdata"], bytes) else r["userdata"],
                  "version": r["version"], "networkdata": r.get("networkdata")}))
"#
    } else {
        for f in ["meta-data", "user-data"] {
            sh(Command::new("mcopy").arg("-i").arg(part).arg(format!("::/{f}")).arg(&tree));
        }
        r#"
import json, sys
from cloudinit import util
md, ud, vd = util.read_seeded(base="file://" + sys.argv[1] + "/")
print(json.dumps({"instance_id": md["instance-id"], "hostname": md.get("local-hostname"),
                  "keys": md.get("public-keys"), "userdata": ud.decode() if isinstance(ud, bytes) else ud}))
"#
    };
    let out = sh(Command::new("/usr/bin/python3").arg("-c").arg(script).arg(&tree));
    serde_json::from_str(out.trim()).unwrap()
}

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q test@byoi";
const NETWORK_DATA: &str = r#"{"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56"}], "networks": [{"id": "n0", "link": "eth0", "type": "ipv4_dhcp"}], "services": []}"#;
const USER_DATA: &str = "#cloud-config\nruncmd:\n  - echo hello from byoi\n";

fn configdrive_args(s: &Setup) -> Vec<String> {
    let ud = s.dir.path().join("user-data");
    std::fs::write(&ud, USER_DATA).unwrap();
    let nd = s.dir.path().join("network_data.json");
    std::fs::write(&nd, NETWORK_DATA).unwrap();
    let (ud, nd) = (ud.to_str().unwrap(), nd.to_str().unwrap());
    let args = ["--hostname", "web-1", "--ssh-key", KEY, "--user-data", ud, "--meta", "role=db"];
    let more = ["--instance-id", "iid-42", "--network-data", nd];
    args.iter().chain(more.iter()).map(|s| s.to_string()).collect()
}

#[test]
fn gpt_moved_to_the_end_and_openstack_configdrive_read_by_cloud_init() {
    let s = setup(96);
    let img = gpt_disk(s.dir.path(), Some(&[("/EFI/BOOT/BOOTX64.EFI", b"MZ fallback")]));
    let url = s.serve("/gpt.raw", &img);
    let extra = configdrive_args(&s);
    let extra: Vec<&str> = extra.iter().map(String::as_str).chain(["--firmware", "legacy"]).collect();
    let out = ok(&s.deploy(&url, &extra));
    assert!(out.contains("backup GPT moved to the end of the disk; ConfigDrive on partition 3"), "{out}");

    let verify = sh(Command::new("sgdisk").arg("-v").arg(&s.target));
    assert!(verify.contains("No problems found"), "{verify}");
    let (first, last, _) = sgdisk_range(&s.target, 3);
    assert_eq!(last - first + 1, 64 * MIB / 512);
    assert_eq!(first % 2048, 0, "ConfigDrive not MiB aligned");
    let names = sh(Command::new("sgdisk").arg("-p").arg(&s.target));
    assert!(names.contains("config-2"), "{names}");

    // The image's partitions are untouched.
    let (disk, image) = (std::fs::read(&s.target).unwrap(), std::fs::read(&img).unwrap());
    assert!(disk[MIB as usize..15 * MIB as usize] == image[MIB as usize..15 * MIB as usize]);

    let part = s.dir.path().join("cd.img");
    extract(&s.target, first, last, &part);
    sh(Command::new("fsck.vfat").arg("-n").arg(&part));
    let label = sh(Command::new("blkid").args(["-p", "-s", "LABEL", "-o", "value"]).arg(&part));
    assert_eq!(label.trim(), "config-2");
    let got = cloud_init_reads(&part, s.dir.path(), "openstack");
    assert_eq!(got["instance_id"], "iid-42");
    assert_eq!(got["hostname"], "web-1");
    assert_eq!(got["keys"]["default"], KEY);
    assert_eq!(got["meta"]["role"], "db");
    assert_eq!(got["userdata"], USER_DATA);
    assert_eq!(got["version"], 2);
    assert_eq!(got["networkdata"]["links"][0]["ethernet_mac_address"], "52:54:00:12:34:56", "{got}");
}

#[test]
fn nocloud_configdrive_read_by_cloud_init() {
    let s = setup(96);
    let img = gpt_disk(s.dir.path(), None);
    let url = s.serve("/gpt.raw", &img);
    let extra = configdrive_args(&s);
    let extra: Vec<&str> =
        extra.iter().map(String::as_str).chain(["--configdrive-format", "nocloud", "--firmware", "legacy"]).collect();
    ok(&s.deploy(&url, &extra));
    let (first, last, _) = sgdisk_range(&s.target, 3);
    let part = s.dir.path().join("cd.img");
    extract(&s.target, first, last, &part);
    sh(Command::new("fsck.vfat").arg("-n").arg(&part));
    let label = sh(Command::new("blkid").args(["-p", "-s", "LABEL", "-o", "value"]).arg(&part));
    assert_eq!(label.trim(), "cidata");
    let got = cloud_init_reads(&part, s.dir.path(), "nocloud");
    assert_eq!(got["instance_id"], "iid-42");
    assert_eq!(got["hostname"], "web-1");
    assert_eq!(got["keys"][0], KEY);
    assert_eq!(got["userdata"], USER_DATA);
}

#[test]
fn an_existing_config_2_partition_is_reused() {
    let s = setup(64);
    let img = gpt_disk(s.dir.path(), None);
    sh(Command::new("sgdisk").args(["-d", "2", "-n", "2:0:+2M", "-c", "2:config-2", "-n", "3:0:0"]).arg(&img));
    let url = s.serve("/gpt.raw", &img);
    let out = ok(&s.deploy(&url, &["--hostname", "again", "--firmware", "legacy"]));
    assert!(out.contains("ConfigDrive on partition 2"), "{out}");
    let table = sh(Command::new("sgdisk").arg("-p").arg(&s.target));
    assert!(!table.contains("\n   4 "), "a partition was added: {table}");
    let (first, last, _) = sgdisk_range(&s.target, 2);
    let part = s.dir.path().join("cd.img");
    extract(&s.target, first, last, &part);
    sh(Command::new("fsck.vfat").arg("-n").arg(&part));
    assert_eq!(cloud_init_reads(&part, s.dir.path(), "openstack")["hostname"], "again");
}

#[test]
fn mbr_disks_get_a_primary_partition_or_a_clear_refusal() {
    let s = setup(128);
    let img = mbr_disk(s.dir.path(), 2, "83");
    let out = ok(&s.deploy(&s.serve("/mbr2", &img), &["--hostname", "m", "--firmware", "legacy"]));
    assert!(out.contains("ConfigDrive on partition 3"), "{out}");
    let dump = sh(Command::new("sfdisk").arg("-d").arg(&s.target));
    let line = dump.lines().find(|l| l.contains("disk.img3")).unwrap_or_else(|| panic!("{dump}"));
    assert!(line.contains("size=      131072, type=c"), "{line}");
    let start: u64 = line.split("start=").nth(1).unwrap().split(',').next().unwrap().trim().parse().unwrap();
    assert_eq!(start + 131072, 128 * MIB / 512, "not at the end of the disk");
    let part = s.dir.path().join("cd.img");
    extract(&s.target, start, start + 131071, &part);
    sh(Command::new("fsck.vfat").arg("-n").arg(&part));

    let img = mbr_disk(s.dir.path(), 4, "83");
    let err = failed(&s.deploy(&s.serve("/mbr4", &img), &["--hostname", "m", "--firmware", "legacy"]));
    assert_eq!(err, "error: Could not create configdrive on disk. (all four primary MBR partitions are in use)");
    assert!(ends_wiped(&s.target));
}

#[test]
fn mbr_only_images_stay_as_they_are() {
    let s = setup(64);
    let img = mbr_disk(s.dir.path(), 1, "83");
    ok(&s.deploy(&s.serve("/mbr1", &img), &["--firmware", "legacy"]));
    let (disk, image) = (std::fs::read(&s.target).unwrap(), std::fs::read(&img).unwrap());
    assert!(disk[..image.len()] == image[..]);
}

#[test]
fn corrupt_gpt_is_refused_in_ovh_words() {
    let s = setup(64);
    let img = gpt_disk(s.dir.path(), None);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[512 + 40] ^= 1; // first usable LBA, under the header CRC
    std::fs::write(&img, bytes).unwrap();
    let err = failed(&s.deploy(&s.serve("/bad", &img), &["--firmware", "legacy"]));
    assert_eq!(
        err,
        "error: Can not move backup GPT data structures to the end of disk. (the primary GPT header checksum is wrong)"
    );
    assert!(ends_wiped(&s.target));
}

/// An efivars directory as OVMF leaves it in a netbooted VM: a PXE entry
/// first, then the disk.
fn ovmf_vars(dir: &Path) -> PathBuf {
    let vars_dir = dir.join("efivars");
    std::fs::create_dir(&vars_dir).unwrap();
    let vars = VarDir::new(&vars_dir);
    let mut pxe = vec![0x02, 0x01, 0x0c, 0x00, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0];
    pxe.extend([0x03, 0x0b, 0x25, 0x00, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    pxe.extend([0u8; 26]);
    pxe.push(1);
    pxe.extend([0x7f, 0xff, 0x04, 0x00]);
    vars.write("Boot0001", GLOBAL, ATTRS_NV_BS_RT, &efi::load_option(1, "UEFI PXEv4", &pxe)).unwrap();
    let disk = [0x01, 0x01, 0x06, 0x00, 0x00, 0x04, 0x7f, 0xff, 0x04, 0x00];
    vars.write("Boot0002", GLOBAL, ATTRS_NV_BS_RT, &efi::load_option(1, "UEFI Misc Device", &disk)).unwrap();
    vars.write("BootOrder", GLOBAL, ATTRS_NV_BS_RT, &efi::encode_boot_order(&[1, 2])).unwrap();
    vars_dir
}

#[test]
fn uefi_boot_entry_goes_after_netboot_and_is_reused() {
    let s = setup(64);
    let img = gpt_disk(
        s.dir.path(),
        Some(&[("/EFI/debian/shimx64.efi", b"MZ shim"), ("/EFI/debian/grubx64.efi", b"MZ grub")]),
    );
    let url = s.serve("/uefi", &img);
    let vars_dir = ovmf_vars(s.dir.path());
    let args = ["--firmware", "uefi", "--efivars", vars_dir.to_str().unwrap()];
    let out = ok(&s.deploy(&url, &args));
    assert!(out.contains("UEFI loader \\EFI\\debian\\shimx64.efi (Boot0000, BootNext)"), "{out}");

    let vars = VarDir::new(&vars_dir);
    let (attrs, data) = vars.read("Boot0000", GLOBAL).unwrap().unwrap();
    assert_eq!(attrs, ATTRS_NV_BS_RT);
    let (first, last, guid) = sgdisk_range(&s.target, 1);
    let hd = HardDrive {
        number: 1,
        start: first,
        size: last - first + 1,
        signature: Signature::Gpt(Guid::parse(&guid).unwrap().0),
    };
    assert_eq!(data, efi::load_option(1, "byoi", &efi::device_path(&[], &hd, "\\EFI\\debian\\shimx64.efi")));
    assert_eq!(efi::parse_boot_order(&vars.read("BootOrder", GLOBAL).unwrap().unwrap().1), [1, 0, 2]);
    assert_eq!(vars.read("BootNext", GLOBAL).unwrap().unwrap().1, [0, 0]);

    // Deploying again reuses the entry.
    ok(&s.deploy(&url, &args));
    assert!(vars.read("Boot0003", GLOBAL).unwrap().is_none());
    assert_eq!(efi::parse_boot_order(&vars.read("BootOrder", GLOBAL).unwrap().unwrap().1), [1, 0, 2]);
}

#[test]
fn uefi_loader_choice() {
    let s = setup(64);
    let vars_dir = ovmf_vars(s.dir.path());
    let vars = vars_dir.to_str().unwrap();
    let two = gpt_disk(s.dir.path(), Some(&[("/EFI/debian/shimx64.efi", b"a"), ("/EFI/ubuntu/shimx64.efi", b"b")]));
    let url = s.serve("/two", &two);
    let err = failed(&s.deploy(&url, &["--firmware", "uefi", "--efivars", vars]));
    assert!(err.contains("several loaders") && err.contains("--efi-loader"), "{err}");
    assert!(ends_wiped(&s.target));
    let out =
        ok(&s.deploy(&url, &["--firmware", "uefi", "--efivars", vars, "--efi-loader", "\\EFI\\ubuntu\\shimx64.efi"]));
    assert!(out.contains("UEFI loader \\EFI\\ubuntu\\shimx64.efi"), "{out}");
    let err = failed(&s.deploy(&url, &["--firmware", "uefi", "--efivars", vars, "--efi-loader", "\\EFI\\nope.efi"]));
    assert!(err.contains("--efi-loader \\EFI\\nope.efi is not on the EFI system partition"), "{err}");
}

#[test]
fn uefi_without_esp_is_refused_before_writing() {
    let s = setup(64);
    let img = gpt_disk(s.dir.path(), None);
    let raw_url = s.serve("/noesp.raw", &img);
    let q = s.dir.path().join("noesp.qcow2");
    support::to_qcow2(&img, &q, &[]);
    let q_url = s.serve("/noesp.qcow2", &q);
    for url in [raw_url, q_url] {
        let err = failed(&s.deploy(&url, &["--firmware", "uefi"]));
        assert!(err.starts_with("error: the image has no EFI system partition"), "{err}");
        assert!(std::fs::read(&s.target).unwrap().iter().all(|&b| b == 0xa5), "{url}: the disk was written");
    }
}

/// On a disk over 2 TiB, an MBR can only address its first 2 TiB: the
/// ConfigDrive goes just below that limit. A GPT goes to the very end.
#[test]
fn configdrive_on_disks_beyond_two_tib() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("big.img");
    let size = 3u64 << 40;
    std::fs::File::create(&target).unwrap().set_len(size).unwrap();
    let server = Server::start();
    let b = support::Behaviour { ranges: true, etag: Some("\"1\"".into()), ..Default::default() };
    let t = target.to_str().unwrap();

    let mbr = mbr_disk(dir.path(), 1, "83");
    let url = server.serve("/mbr", std::fs::read(&mbr).unwrap(), b.clone());
    ok(&agent(&["deploy", "--url", &url, "--target", t, "--hostname", "big", "--firmware", "legacy"]));
    let dump = sh(Command::new("sfdisk").arg("-d").arg(&target));
    let line = dump.lines().find(|l| l.contains("big.img2")).unwrap_or_else(|| panic!("{dump}"));
    let start: u64 = line.split("start=").nth(1).unwrap().split(',').next().unwrap().trim().parse().unwrap();
    assert_eq!(start + 131072, 1 << 32, "{line}");

    let gpt = gpt_disk(dir.path(), None);
    let url = server.serve("/gpt", std::fs::read(&gpt).unwrap(), b);
    ok(&agent(&["deploy", "--url", &url, "--target", t, "--hostname", "big", "--firmware", "legacy"]));
    let verify = sh(Command::new("sgdisk").arg("-v").arg(&target));
    assert!(verify.contains("No problems found"), "{verify}");
    let (_, last, _) = sgdisk_range(&target, 3);
    assert!(last > (size / 512) - 2048 - 34, "ConfigDrive not at the end: {last}");
}
