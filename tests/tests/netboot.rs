//! Real netboot in QEMU (SeaBIOS + QEMU's iPXE ROM, TCG): slirp's DHCP
//! points iPXE at the controller's `boot.ipxe`, which chains the per-MAC
//! deploy script; the agent comes up with the `ip=` iPXE wrote, deploys,
//! and reboots; afterwards the controller serves the local-disk script.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use byoi_e2e::{
    controller, controller_enlisting, e2e_enabled, http_json, image, serve_file, Firmware, Machine, TestVm,
};
use serde_json::json;

const TOKEN: &str = "e2e-token";
const MAC: &str = "52:54:00:65:43:21";

#[test]
fn bios_ipxe_netboot_deploys_and_then_boots_local() {
    if !e2e_enabled("netboot-bios") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = controller(&dir.path().join("data"), TOKEN);
    let mut data = vec![0u8; 2 << 20];
    data[1 << 20..].fill(0x5a);
    data[510] = 0x55;
    data[511] = 0xaa;
    let img_port = serve_file(data.clone());
    http_json(
        &addr,
        "POST",
        "/dedicated/server",
        Some(TOKEN),
        Some(&json!({"serviceName": "pxe1", "macs": [MAC], "kernelArgs": ["console=ttyS0"]})),
    );
    let (s, body) = http_json(
        &addr,
        "POST",
        "/dedicated/server/pxe1/bringYourOwnImage",
        Some(TOKEN),
        Some(&json!({"URL": format!("http://10.0.2.2:{img_port}/d.raw"), "type": "raw"})),
    );
    assert_eq!(s, 200, "{body}");

    let m = Machine::new(dir.path(), Firmware::Bios, "virtio-blk-pci", 128, MAC).unwrap();
    let mut vm = TestVm::start(&m.args(&addr), Duration::from_secs(300));
    vm.wait_for("byoi: booting the agent for pxe1 (deploy)", Duration::from_secs(120));
    let line = vm.wait_for("byoi: network: eth0", Duration::from_secs(120));
    assert!(line.contains("52:54:00:65:43:21) 10.0.2.15/255.255.255.0 via Some(10.0.2.2)"), "{line}");
    vm.wait_for("byoi: deployed: rebooting into the disk", Duration::from_secs(120));
    vm.expect_exit(Duration::from_secs(30), "the agent did not reboot");
    let st = http_json(&addr, "GET", "/dedicated/server/pxe1/bringYourOwnImage", Some(TOKEN), None).1;
    assert_eq!(st["status"], "done", "{st}");
    assert!(std::fs::read(&m.disk).unwrap()[..data.len()] == data[..]);
    let (_, script) = http_json(&addr, "GET", &format!("/boot/{MAC}"), None, None);
    assert!(script.as_str().unwrap().contains("sanboot --no-describe --drive 0x80"), "{script}");
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// UEFI: OVMF netboots iPXE (EFI), the agent loads efivarfs, deploys an
/// image with an ESP and writes its boot entry (`byoi`, after the network
/// entries) and `BootNext` into the firmware's variables, which persist in
/// the vars file.
#[test]
fn uefi_ipxe_netboot_writes_the_boot_entry() {
    if !e2e_enabled("netboot-uefi") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = controller(&dir.path().join("data"), TOKEN);
    let mac = "52:54:00:65:43:22";
    let img_port = serve_file(std::fs::read(image("tiny-uefi.raw")).expect("run `cargo xtask image tiny` first"));
    http_json(
        &addr,
        "POST",
        "/dedicated/server",
        Some(TOKEN),
        Some(&json!({"serviceName": "efi1", "macs": [mac], "kernelArgs": ["console=ttyS0"]})),
    );
    let post = json!({"URL": format!("http://10.0.2.2:{img_port}/esp.raw"), "configdrive": {"enable": true, "hostname": "efi1"}});
    let (s, body) = http_json(&addr, "POST", "/dedicated/server/efi1/bringYourOwnImage", Some(TOKEN), Some(&post));
    assert_eq!(s, 200, "{body}");
    let m = Machine::new(dir.path(), Firmware::Uefi, "virtio-blk-pci", 256, mac).unwrap();
    let mut vm = TestVm::start(&m.args(&addr), Duration::from_secs(400));
    vm.wait_for("byoi: booting the agent for efi1 (deploy)", Duration::from_secs(200));
    vm.wait_for("byoi: loaded efivarfs", Duration::from_secs(120));
    let done = vm.wait_for("byoi: done: ", Duration::from_secs(120));
    assert!(done.contains("Boot") && done.contains("\\EFI\\BOOT\\BOOTX64.EFI"), "{done}");
    vm.expect_exit(Duration::from_secs(60), "the agent did not reboot");
    let st = http_json(&addr, "GET", "/dedicated/server/efi1/bringYourOwnImage", Some(TOKEN), None).1;
    assert_eq!(st["status"], "done", "{st}");
    let fd = std::fs::read(&m.vars).unwrap();
    assert!(
        fd.windows(10).any(|w| w == utf16("byoi").as_slice().iter().chain(&[0, 0]).copied().collect::<Vec<u8>>()),
        "no byoi boot entry in the OVMF variables"
    );
    // That OVMF then boots the disk through BootNext is checked by the e2e
    // suite, with a real loader on the ESP.
}

/// `POST …/inspect`: the real agent netboots in inspect mode, reports the
/// VM's hardware, and powers the VM off; the hardware view then has its
/// disk, and the server boots its disk next time.
#[test]
fn bios_ipxe_netboot_inspects_and_powers_off() {
    if !e2e_enabled("netboot-inspect") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = controller(&dir.path().join("data"), TOKEN);
    let mac = "52:54:00:65:43:22";
    http_json(
        &addr,
        "POST",
        "/dedicated/server",
        Some(TOKEN),
        Some(&json!({"serviceName": "insp1", "macs": [mac], "kernelArgs": ["console=ttyS0"]})),
    );
    let (s, body) = http_json(&addr, "POST", "/dedicated/server/insp1/inspect", Some(TOKEN), None);
    assert_eq!((s, &body["powerCycle"]), (200, &json!("manual")), "{body}");
    let m = Machine::new(dir.path(), Firmware::Bios, "virtio-blk-pci", 128, mac).unwrap();
    let mut vm = TestVm::start(&m.args(&addr), Duration::from_secs(300));
    vm.wait_for("byoi: booting the agent for insp1 (inspect)", Duration::from_secs(120));
    vm.wait_for("byoi: hardware reported: powering off", Duration::from_secs(120));
    vm.expect_exit(Duration::from_secs(30), "the agent did not power the VM off");
    let (s, hw) = http_json(&addr, "GET", "/dedicated/server/insp1/specifications/hardware", Some(TOKEN), None);
    assert_eq!(s, 200, "{hw}");
    assert_eq!(hw["bootMode"], "legacy", "{hw}");
    assert_eq!(hw["diskGroups"][0]["numberOfDisks"], 1, "{hw}");
    let (_, server) = http_json(&addr, "GET", "/dedicated/server/insp1", Some(TOKEN), None);
    assert_eq!(server["bootTarget"], "local", "{server}");
}

/// `--enlist`: a machine no server has netboots the real agent in discover
/// mode, which reports the VM's hardware and powers it off; adopted, it is
/// a server with that hardware, and boots its disk.
#[test]
fn bios_ipxe_netboot_discovers_an_unknown_machine() {
    if !e2e_enabled("netboot-discover") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = controller_enlisting(&dir.path().join("data"), TOKEN, &["console=ttyS0"]);
    let mac = "52:54:00:65:43:23";
    let m = Machine::new(dir.path(), Firmware::Bios, "virtio-blk-pci", 128, mac).unwrap();
    let mut vm = TestVm::start(&m.args(&addr), Duration::from_secs(300));
    vm.wait_for("byoi: booting the agent for 52:54:00:65:43:23 (discover)", Duration::from_secs(120));
    vm.wait_for("byoi: hardware reported: powering off", Duration::from_secs(120));
    vm.expect_exit(Duration::from_secs(30), "the agent did not power the VM off");
    let (s, found) = http_json(&addr, "GET", &format!("/dedicated/discovered/{mac}"), Some(TOKEN), None);
    assert_eq!((s, &found["state"]), (200, &json!("reported")), "{found}");
    assert_eq!(found["hardware"]["bootMode"], "legacy", "{found}");
    assert_eq!(found["hardware"]["diskGroups"][0]["numberOfDisks"], 1, "{found}");
    assert!(found["hardware"]["nics"].as_array().unwrap().iter().any(|n| n["mac"] == mac), "{found}");
    let (_, script) = http_json(&addr, "GET", &format!("/boot/{mac}"), None, None);
    assert!(script.as_str().unwrap().contains("waits to be adopted"), "{script}");
    let adopt = format!("/dedicated/discovered/{mac}/adopt");
    let (s, server) = http_json(&addr, "POST", &adopt, Some(TOKEN), Some(&json!({"serviceName": "found1"})));
    assert_eq!((s, &server["macs"]), (201, &json!([mac])), "{server}");
    let (_, hw) = http_json(&addr, "GET", "/dedicated/server/found1/specifications/hardware", Some(TOKEN), None);
    assert_eq!(hw["diskGroups"][0]["numberOfDisks"], 1, "{hw}");
    let (_, script) = http_json(&addr, "GET", &format!("/boot/{mac}"), None, None);
    assert!(script.as_str().unwrap().contains("found1 boots from its local disk"), "{script}");
}
