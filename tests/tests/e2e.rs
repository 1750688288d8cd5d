//! The whole product on real firmware: a server netboots (OVMF or SeaBIOS
//! with QEMU's iPXE ROM), the agent deploys the test OS of `cargo xtask
//! image tiny` with a ConfigDrive, reboots, and the deployed OS prints
//! what it read from the ConfigDrive. Also: a wrong checksum, and a
//! cancellation during the download. The BIOS scenario runs with split
//! listeners: netboot over HTTP, the API and agent protocol over HTTPS with
//! a private CA baked into the initramfs.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use byoi_e2e::{
    controller, controller_log, controller_tls, e2e_enabled, http_json, https_json, image, serve_file,
    serve_file_throttled, sgdisk_verify, Firmware, Machine, TestVm,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TOKEN: &str = "e2e-token";
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2 e2e@byoi";
const USER_DATA: &str = "#cloud-config\nruncmd:\n  - echo deployed by byoi\n";

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Registers `name` (console on ttyS0) with `mac`.
fn register(addr: &str, name: &str, mac: &str) {
    let (s, body) = http_json(
        addr,
        "POST",
        "/dedicated/server",
        Some(TOKEN),
        Some(&json!({"serviceName": name, "macs": [mac], "kernelArgs": ["console=ttyS0"]})),
    );
    assert_eq!(s, 201, "{body}");
}

fn post(addr: &str, name: &str, body: &Value) {
    let (s, resp) =
        http_json(addr, "POST", &format!("/dedicated/server/{name}/bringYourOwnImage"), Some(TOKEN), Some(body));
    assert_eq!(s, 200, "{resp}");
}

fn status(addr: &str, name: &str) -> (u16, Value) {
    http_json(addr, "GET", &format!("/dedicated/server/{name}/bringYourOwnImage"), Some(TOKEN), None)
}

/// A deployment of the image served on `port` as `file`, with the
/// ConfigDrive the test OS reports.
fn deployment(port: u16, file: &str, kind: &str, checksum: &str, hostname: &str) -> Value {
    json!({
        "URL": format!("http://10.0.2.2:{port}/{file}"),
        "type": kind,
        "checkSum": checksum,
        "checkSumType": "sha256",
        "configdrive": {"enable": true, "hostname": hostname, "sshKey": SSH_KEY, "userData": USER_DATA},
    })
}

/// Waits for the test OS's report of the ConfigDrive and checks it.
fn expect_configdrive(vm: &mut TestVm, hostname: &str) {
    let t = Duration::from_secs(120);
    vm.wait_for("testos: configdrive config-2", t);
    assert_eq!(vm.wait_for("testos: hostname=", t).trim_end(), format!("testos: hostname={hostname}"));
    assert_eq!(vm.wait_for("testos: ssh-key=", t).trim_end(), format!("testos: ssh-key={SSH_KEY}"));
    let ud = vm.wait_for("testos: user-data-sha256=", t);
    assert_eq!(ud.trim_end(), format!("testos: user-data-sha256={}", sha256_hex(USER_DATA.as_bytes())));
}

/// How the disk came to boot after the deployment, from the controller's
/// log: after `deployment ended` for `server`, a `local` boot script
/// served means netboot → `local` → the firmware's next entry; none means
/// the firmware went straight to the disk (UEFI `BootNext`).
fn boot_path(server: &str) -> &'static str {
    let log = controller_log();
    let ended = log.find(&format!("deployment ended server={server} ")).expect("the deployment ended in the log");
    if log[ended..].contains(&format!("served the local boot script server={server} ")) {
        "netboot → local script"
    } else {
        "BootNext"
    }
}

/// The first and last MiB of a disk file are zero: no partition table, no
/// boot code, nothing a firmware would boot.
fn assert_not_bootable(disk: &Path) {
    let data = std::fs::read(disk).unwrap();
    let mib = 1 << 20;
    assert!(data[..mib].iter().all(|&b| b == 0), "the first MiB of the disk is not blank");
    assert!(data[data.len() - mib..].iter().all(|&b| b == 0), "the last MiB of the disk is not blank");
}

/// Netboot, deploy, reboot into the deployed OS under OVMF; returns the
/// console line `byoi: done: …` and the VM.
fn uefi_deploy(dir: &Path, name: &str, mac: &str, disk_device: &'static str, file: &str, kind: &str) {
    let addr = controller(&dir.join("data"), TOKEN);
    register(&addr, name, mac);
    let data = std::fs::read(image(file)).expect("run `cargo xtask image tiny` first");
    let port = serve_file(data.clone());
    post(&addr, name, &deployment(port, file, kind, &sha256_hex(&data), name));
    let m = Machine::new(dir, Firmware::Uefi, disk_device, 512, mac).unwrap();
    let mut vm = TestVm::start_rebooting(&m.args(&addr), Duration::from_secs(900));
    vm.wait_for(&format!("byoi: booting the agent for {name} (deploy)"), Duration::from_secs(300));
    let done = vm.wait_for("byoi: done: ", Duration::from_secs(300));
    let entry =
        done.split("; Boot").nth(1).map(|s| s[..4].to_owned()).unwrap_or_else(|| panic!("no boot entry: {done}"));
    let booted = vm.wait_for("testos: booted uefi", Duration::from_secs(300));
    expect_configdrive(&mut vm, name);
    vm.expect_exit(Duration::from_secs(60), "the test OS did not power off");
    assert_eq!(status(&addr, name).1["status"], "done");
    let path = boot_path(name);
    eprintln!("{name}: the deployed disk booted through {path} ({})", booted.trim());
    // OVMF drops boot options whose device path does not start like a
    // device with a QEMU bootindex; ours names the disk's PCI path, so it
    // survives and BootNext starts it directly.
    assert_eq!(path, "BootNext", "{name}: {booted}");
    assert!(booted.trim_end().ends_with(&format!("Boot{entry}")), "booted {booted:?}, our entry is Boot{entry}");
    sgdisk_verify(&m.disk);
    // The entry stays in the firmware's variables for later boots.
    let vars = std::fs::read(&m.vars).unwrap();
    let label: Vec<u8> = "byoi\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert!(vars.windows(label.len()).any(|w| w == label), "no byoi entry in {}", m.vars.display());
}

/// Scenario 1: UEFI + GPT + qcow2 onto virtio-blk.
#[test]
fn uefi_qcow2_boots_the_deployed_os() {
    if !e2e_enabled("e2e-uefi-qcow2") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    uefi_deploy(dir.path(), "uefi-qcow2", "52:54:00:e2:e0:01", "virtio-blk-pci", "tiny-uefi.qcow2", "qcow2");
}

/// Scenario 2: UEFI + GPT + raw onto an NVMe disk larger than the image: the GPT
/// moves to the end of the disk.
#[test]
fn uefi_raw_on_nvme_relocates_the_gpt() {
    if !e2e_enabled("e2e-uefi-nvme") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    uefi_deploy(dir.path(), "uefi-nvme", "52:54:00:e2:e0:02", "nvme", "tiny-uefi.raw", "raw");
}

/// Scenario 3: Legacy BIOS + MBR + raw: after `done`, the controller's script boots
/// the local disk (syslinux). Netboot has a plain-HTTP listener of its own;
/// the agent talks to the controller over HTTPS, trusting the private CA
/// baked into its initramfs.
#[test]
fn bios_raw_boots_through_the_local_script() {
    if !e2e_enabled("e2e-bios") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (name, mac) = ("bios-raw", "52:54:00:e2:e0:03");
    let c = controller_tls(&dir.path().join("data"), TOKEN);
    let api =
        |method: &str, path: &str, body: Option<&Value>| https_json(&c.api, &c.ca, method, path, Some(TOKEN), body);
    let server = json!({"serviceName": name, "macs": [mac], "kernelArgs": ["console=ttyS0"]});
    let (s, body) = api("POST", "/dedicated/server", Some(&server));
    assert_eq!(s, 201, "{body}");
    let data = std::fs::read(image("tiny-bios.raw")).expect("run `cargo xtask image tiny` first");
    let port = serve_file(data.clone());
    let d = deployment(port, "tiny-bios.raw", "raw", &sha256_hex(&data), name);
    let (s, body) = api("POST", &format!("/dedicated/server/{name}/bringYourOwnImage"), Some(&d));
    assert_eq!(s, 200, "{body}");
    let m = Machine::new(dir.path(), Firmware::Bios, "virtio-blk-pci", 256, mac).unwrap();
    let mut vm = TestVm::start_rebooting(&m.args(&c.netboot), Duration::from_secs(600));
    // The kernel prints its command line: the agent is sent to HTTPS.
    let api_port = c.api.rsplit(':').next().unwrap();
    vm.wait_for(&format!("byoi.controller=https://10.0.2.2:{api_port} "), Duration::from_secs(300));
    vm.wait_for("byoi: deployed: rebooting into the disk", Duration::from_secs(300));
    vm.wait_for(&format!("byoi: {name} boots from its local disk"), Duration::from_secs(120));
    vm.wait_for("testos: booted bios", Duration::from_secs(120));
    expect_configdrive(&mut vm, name);
    vm.expect_exit(Duration::from_secs(60), "the test OS did not power off");
    assert_eq!(boot_path(name), "netboot → local script");
    let (_, st) = api("GET", &format!("/dedicated/server/{name}/bringYourOwnImage"), None);
    assert_eq!(st["status"], "done", "{st}");
}

/// Scenario 4: A wrong checksum: status `error` with the message, the disk is left
/// unbootable, the boot ends (the server netboots into the idle script, which
/// mints no token), and a corrected POST starts a new boot that succeeds.
#[test]
fn wrong_checksum_then_corrected_post() {
    if !e2e_enabled("e2e-checksum") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (name, mac) = ("bad-sum", "52:54:00:e2:e0:04");
    let addr = controller(&dir.path().join("data"), TOKEN);
    register(&addr, name, mac);
    let data = std::fs::read(image("tiny-bios.raw")).expect("run `cargo xtask image tiny` first");
    let port = serve_file(data.clone());
    let wrong = sha256_hex(b"not the image");
    post(&addr, name, &deployment(port, "tiny-bios.raw", "raw", &wrong, name));
    let m = Machine::new(dir.path(), Firmware::Bios, "virtio-blk-pci", 256, mac).unwrap();
    let mut vm = TestVm::start_rebooting(&m.args(&addr), Duration::from_secs(600));
    let err = vm.wait_for("byoi: error: ", Duration::from_secs(300));
    vm.wait_for(&format!("byoi: nothing to do for {name} (deploy): no boot is expected"), Duration::from_secs(200));
    let (_, st) = status(&addr, name);
    assert_eq!(st["status"], "error", "{st}");
    let message = st["message"].as_str().unwrap();
    // OVH's wording.
    assert!(message.starts_with("Bad sha256 for downloaded file, got: ") && message.contains(&wrong), "{message}");
    assert!(err.contains(message), "console {err:?} vs status {message:?}");
    assert_not_bootable(&m.disk);

    post(&addr, name, &deployment(port, "tiny-bios.raw", "raw", &sha256_hex(&data), name));
    vm.wait_for("byoi: deployed: rebooting into the disk", Duration::from_secs(300));
    vm.wait_for("testos: booted bios", Duration::from_secs(200));
    expect_configdrive(&mut vm, name);
    vm.expect_exit(Duration::from_secs(60), "the VM did not exit");
    let c = vm.console();
    assert_eq!(c.matches("byoi: booting the agent for").count(), 2, "one agent boot per deployment:\n{c}");
    assert_eq!(status(&addr, name).1["status"], "done");
}

/// Scenario 5: `DELETE` during a (throttled) download: aborted, GET 404, the disk is
/// left unbootable, and the server reboots into rescue mode with a shell.
#[test]
fn delete_during_download_goes_to_rescue() {
    if !e2e_enabled("e2e-cancel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (name, mac) = ("cancel", "52:54:00:e2:e0:05");
    let addr = controller(&dir.path().join("data"), TOKEN);
    register(&addr, name, mac);
    let data = std::fs::read(image("tiny-bios.raw")).expect("run `cargo xtask image tiny` first");
    // 512 kB/s: the 42 MB image would take over a minute.
    let port = serve_file_throttled(data.clone(), 512 << 10);
    post(&addr, name, &deployment(port, "tiny-bios.raw", "raw", &sha256_hex(&data), name));
    let m = Machine::new(dir.path(), Firmware::Bios, "virtio-blk-pci", 256, mac).unwrap();
    let mut vm = TestVm::start_rebooting(&m.args(&addr), Duration::from_secs(600));
    vm.wait_for("byoi: target /dev/vda", Duration::from_secs(300));
    // Wait for bytes to arrive, then cancel.
    let start = std::time::Instant::now();
    loop {
        let (_, st) = status(&addr, name);
        if st["message"].as_str().is_some_and(|m| m != "starting") || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (s, body) =
        http_json(&addr, "DELETE", &format!("/dedicated/server/{name}/bringYourOwnImage"), Some(TOKEN), None);
    assert_eq!(s, 200, "{body}");
    assert_eq!(status(&addr, name).0, 404);
    vm.wait_for("byoi: the controller no longer knows this agent", Duration::from_secs(60));
    vm.wait_for(&format!("byoi: booting the agent for {name} (rescue)"), Duration::from_secs(200));
    vm.wait_for("byoi: rescue mode:", Duration::from_secs(120));
    vm.wait_for("/ # ", Duration::from_secs(30));
    assert_not_bootable(&m.disk);
}

/// Scenario 6: the real Debian image (`cargo xtask image debian`): cloud-init
/// on its first boot applies the ConfigDrive's hostname, SSH key and
/// user data. Minutes under TCG: runs with `cargo xtask test --slow`.
#[test]
fn debian_cloud_init_applies_the_configdrive() {
    if !e2e_enabled("e2e-debian") {
        return;
    }
    if std::env::var("BYOI_E2E_SLOW").ok().as_deref() != Some("1") {
        eprintln!("e2e-debian: skipped, run `cargo xtask test --slow`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (name, mac) = ("deb-e2e", "52:54:00:e2:e0:06");
    let addr = controller(&dir.path().join("data"), TOKEN);
    register(&addr, name, mac);
    let file = image("debian.qcow2");
    let data = std::fs::read(&file).expect("run `cargo xtask image debian` first");
    let port = serve_file(data.clone());
    let user_data = "#cloud-config\nruncmd:\n  - echo applied-by-cloud-init > /run/byoi-userdata\n";
    let body = json!({
        "URL": format!("http://10.0.2.2:{port}/debian.qcow2"),
        "type": "qcow2",
        "checkSum": sha256_hex(&data),
        "checkSumType": "sha256",
        "configdrive": {"enable": true, "hostname": name, "sshKey": SSH_KEY, "userData": user_data},
    });
    post(&addr, name, &body);
    let m = Machine::new(dir.path(), Firmware::Uefi, "virtio-blk-pci", 4096, mac).unwrap();
    let mut vm = TestVm::start_rebooting(&m.args(&addr), Duration::from_secs(1500));
    vm.wait_for("byoi: deployed: rebooting into the disk", Duration::from_secs(600));
    let t = Duration::from_secs(900);
    assert_eq!(vm.wait_for("debian: hostname=", t).trim_end(), format!("debian: hostname={name}"));
    assert!(vm.wait_for("debian: authorized_keys=", t).contains(SSH_KEY));
    assert!(vm.wait_for("debian: runcmd=", t).contains("applied-by-cloud-init"));
    vm.expect_exit(Duration::from_secs(120), "Debian did not power off");
    assert_eq!(boot_path(name), "BootNext");
}

/// Scenario 7: UEFI + GPT + an OVA (OVF descriptor, SHA-256 manifest,
/// stream-optimized VMDK) declared as `type: ova`.
#[test]
fn uefi_ova_boots_the_deployed_os() {
    if !e2e_enabled("e2e-uefi-ova") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    uefi_deploy(dir.path(), "uefi-ova", "52:54:00:e2:e0:07", "virtio-blk-pci", "tiny-uefi.ova", "ova");
}
