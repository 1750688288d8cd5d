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
