//! Real netboot in QEMU (SeaBIOS + QEMU's iPXE ROM, TCG): slirp's DHCP
//! points iPXE at the controller's `boot.ipxe`, which chains the per-MAC
//! deploy script; the agent comes up with the `ip=` iPXE wrote, deploys,
//! and reboots; afterwards the controller serves the local-disk script.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use byoi_e2e::{controller, e2e_enabled, http_json, serve_file, TestVm};
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
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let mut image = vec![0u8; 2 << 20];
    image[1 << 20..].fill(0x5a);
    image[510] = 0x55;
    image[511] = 0xaa;
    let img_port = serve_file(image.clone());
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

    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(128 << 20).unwrap();
    let args: Vec<String> = [
        "-boot",
        "n",
        "-drive",
        &format!("file={},if=virtio,format=raw", disk.display()),
        "-nic",
        &format!("user,model=virtio-net-pci,mac={MAC},bootfile=http://10.0.2.2:{port}/boot.ipxe"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut vm = TestVm::start(&args, Duration::from_secs(300));
    vm.wait_for("byoi: booting the agent for pxe1 (deploy)", Duration::from_secs(120));
    let line = vm.wait_for("byoi: network: eth0", Duration::from_secs(120));
    assert!(line.contains("52:54:00:65:43:21) 10.0.2.15/255.255.255.0 via Some(10.0.2.2)"), "{line}");
    vm.wait_for("byoi: deployed: rebooting into the disk", Duration::from_secs(120));
    assert!(vm.wait_exit(Duration::from_secs(30)));
    let st = http_json(&addr, "GET", "/dedicated/server/pxe1/bringYourOwnImage", Some(TOKEN), None).1;
    assert_eq!(st["status"], "done", "{st}");
    assert!(std::fs::read(&disk).unwrap()[..image.len()] == image[..]);
    let (_, script) = http_json(&addr, "GET", &format!("/boot/{MAC}"), None, None);
    assert!(script.as_str().unwrap().contains("sanboot --no-describe --drive 0x80"), "{script}");
}

/// A 32 MiB GPT disk with a 16 MiB EFI system partition holding
/// `\EFI\BOOT\BOOTX64.EFI` (not a real loader: the test checks the boot
/// entry, the real OS is the next suite's).
fn esp_image(dir: &std::path::Path) -> Vec<u8> {
    let run = |c: &mut std::process::Command| assert!(c.output().unwrap().status.success(), "{c:?}");
    let img = dir.join("esp-disk.raw");
    std::fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
    run(std::process::Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+16M", "-t", "1:ef00", "-n", "2:0:0"])
        .arg(&img));
    let esp = dir.join("esp.fat");
    run(std::process::Command::new("mkfs.vfat").arg("-C").arg(&esp).arg("16384"));
    run(std::process::Command::new("mmd").arg("-i").arg(&esp).args(["::/EFI", "::/EFI/BOOT"]));
    std::fs::write(dir.join("BOOTX64.EFI"), b"MZ not really a loader").unwrap();
    run(std::process::Command::new("mcopy")
        .arg("-i")
        .arg(&esp)
        .arg(dir.join("BOOTX64.EFI"))
        .arg("::/EFI/BOOT/BOOTX64.EFI"));
    let mut disk = std::fs::read(&img).unwrap();
    let fat = std::fs::read(&esp).unwrap();
    disk[1 << 20..(1 << 20) + fat.len()].copy_from_slice(&fat);
    disk
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
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let mac = "52:54:00:65:43:22";
    let img_port = serve_file(esp_image(dir.path()));
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
    let vars = dir.path().join("vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(256 << 20).unwrap();
    let args = || -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-drive".into(),
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
            "-drive".into(),
            format!("file={},if=none,id=d0,format=raw", disk.display()),
            "-device".into(),
            "virtio-blk-pci,drive=d0,bootindex=1".into(),
            "-netdev".into(),
            format!("user,id=n0,bootfile=http://10.0.2.2:{port}/boot.ipxe"),
        ];
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=0"));
        a
    };
    let mut vm = TestVm::start(&args(), Duration::from_secs(400));
    vm.wait_for("byoi: booting the agent for efi1 (deploy)", Duration::from_secs(200));
    vm.wait_for("byoi: loaded efivarfs", Duration::from_secs(120));
    let done = vm.wait_for("byoi: done: ", Duration::from_secs(120));
    assert!(done.contains("Boot") && done.contains("\\EFI\\BOOT\\BOOTX64.EFI"), "{done}");
    assert!(vm.wait_exit(Duration::from_secs(60)));
    let st = http_json(&addr, "GET", "/dedicated/server/efi1/bringYourOwnImage", Some(TOKEN), None).1;
    assert_eq!(st["status"], "done", "{st}");
    let fd = std::fs::read(&vars).unwrap();
    assert!(
        fd.windows(10).any(|w| w == utf16("byoi").as_slice().iter().chain(&[0, 0]).copied().collect::<Vec<u8>>()),
        "no byoi boot entry in the OVMF variables"
    );
    // That OVMF then boots the disk through BootNext is checked by the e2e
    // suite, with a real loader on the ESP.
}
