//! QEMU smoke tests of the netbooted agent: the Debian kernel and our
//! initramfs booted directly (TCG), virtio disk and NIC, slirp to a
//! controller on the host (10.0.2.2). The agent loads its modules, brings
//! up the network (from `ip=`, or DHCP), says hello (the disk shows in
//! `specifications/hardware`), runs a deployment and reboots; in rescue
//! mode it takes SSH logins with the last deployment's key.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::time::Duration;

use byoi_e2e::{artifacts, controller, direct_boot, e2e_enabled, http_json, register_and_post, serve_file, TestVm};
use serde_json::json;

const TOKEN: &str = "e2e-token";

fn disk_args(disk: &std::path::Path, serial: &str, mac: &str, nic_extra: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},if=none,id=d0,format=raw", disk.display()),
        "-device".into(),
        format!("virtio-blk-pci,drive=d0,serial={serial}"),
        "-nic".into(),
        format!("user,model=virtio-net-pci,mac={mac}{nic_extra}"),
    ]
}

#[test]
fn agent_boots_says_hello_and_deploys() {
    if !e2e_enabled("smoke") {
        return;
    }
    assert!(artifacts().join("initramfs.img").exists(), "run `cargo xtask initramfs` first");
    let dir = tempfile::tempdir().unwrap();
    let addr = controller(&dir.path().join("data"), TOKEN);
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let mac = "52:54:00:12:34:56";
    // A small MBR disk image.
    let mut image = vec![0u8; 4 << 20];
    for (i, b) in image.iter_mut().enumerate().skip(1 << 20) {
        *b = (i % 251) as u8;
    }
    image[510] = 0x55;
    image[511] = 0xaa;
    let sum: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&image).iter().map(|b| format!("{b:02x}")).collect()
    };
    let img_port = serve_file(image.clone());
    let post =
        json!({"URL": format!("http://10.0.2.2:{img_port}/disk.raw"), "checkSum": sum, "checkSumType": "sha256"});
    let token = register_and_post(&addr, TOKEN, "vm1", mac, Some(&post));
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(256 << 20).unwrap();
    let cmdline = format!(
        "console=ttyS0 byoi.controller=http://10.0.2.2:{port} byoi.token={token} ip=10.0.2.15::10.0.2.2:255.255.255.0 nameserver=10.0.2.3 BOOTIF=01-{}",
        mac.replace(':', "-")
    );
    let mut args = direct_boot(&cmdline);
    args.extend(disk_args(&disk, "disk-A", mac, ""));
    let mut vm = TestVm::start(&args, Duration::from_secs(300));
    vm.wait_for("byoi: loaded virtio_blk", Duration::from_secs(120));
    vm.wait_for("byoi: network: eth0 (52:54:00:12:34:56) 10.0.2.15", Duration::from_secs(60));
    vm.wait_for("byoi: target /dev/vda", Duration::from_secs(60));
    let hw = http_json(&addr, "GET", "/dedicated/server/vm1/specifications/hardware", Some(TOKEN), None).1;
    assert_eq!(hw["diskGroups"][0]["disks"][0]["serial"], "disk-A", "{hw}");
    assert_eq!(hw["nics"][0]["mac"], mac);
    vm.wait_for("byoi: deployed: rebooting into the disk", Duration::from_secs(120));
    vm.expect_exit(Duration::from_secs(30), "the VM did not reboot");
    let st = http_json(&addr, "GET", "/dedicated/server/vm1/bringYourOwnImage", Some(TOKEN), None).1;
    assert_eq!(st["status"], "done", "{st}\n{}", vm.console());
    let written = std::fs::read(&disk).unwrap();
    assert!(written[..image.len()] == image[..], "the disk does not hold the image");
}

/// Without `ip=` (iPXE without DHCP data, a lab's own PXE), the agent asks
/// DHCP itself (slirp's server answers 10.0.2.15).
#[test]
fn agent_without_ip_uses_dhcp() {
    if !e2e_enabled("smoke-dhcp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = controller(&dir.path().join("data"), TOKEN);
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let mac = "52:54:00:12:34:57";
    let token = register_and_post(&addr, TOKEN, "vm2", mac, Some(&json!({"URL": "http://10.0.2.2:9/none.raw"})));
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let mut args = direct_boot(&format!("console=ttyS0 byoi.controller=http://10.0.2.2:{port} byoi.token={token}"));
    args.extend(disk_args(&disk, "disk-B", mac, ""));
    let mut vm = TestVm::start(&args, Duration::from_secs(240));
    vm.wait_for("byoi: no ip= on the command line: DHCP on eth0", Duration::from_secs(120));
    vm.wait_for(
        "byoi: network: eth0 (52:54:00:12:34:57) 10.0.2.15/255.255.255.0 via Some(10.0.2.2)",
        Duration::from_secs(60),
    );
    vm.wait_for("byoi: deployment", Duration::from_secs(60));
    let hw = http_json(&addr, "GET", "/dedicated/server/vm2/specifications/hardware", Some(TOKEN), None).1;
    assert_eq!(hw["diskGroups"][0]["disks"][0]["serial"], "disk-B", "{hw}");
}

/// Rescue: after a DELETE the server boots the agent with
/// `byoi.mode=rescue`; the last deployment's SSH key logs in (dropbear),
/// to a host key whose fingerprint the controller shows.
#[test]
fn rescue_mode_accepts_the_last_deployments_ssh_key() {
    if !e2e_enabled("smoke-rescue") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let addr = controller(&dir.path().join("data"), TOKEN);
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let mac = "52:54:00:12:34:58";
    let post = json!({"URL": "http://10.0.2.2:9/x.raw", "configdrive": {"enable": true, "sshKey": public.trim()}});
    register_and_post(&addr, TOKEN, "vm3", mac, Some(&post));
    let (s, _) = http_json(&addr, "DELETE", "/dedicated/server/vm3/bringYourOwnImage", Some(TOKEN), None);
    assert_eq!(s, 200);
    let token = byoi_e2e::agent_token(&addr, mac);
    let ssh_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cmdline = format!(
        "console=ttyS0 byoi.controller=http://10.0.2.2:{port} byoi.token={token} byoi.mode=rescue ip=10.0.2.15::10.0.2.2:255.255.255.0"
    );
    let mut args = direct_boot(&cmdline);
    args.extend([
        "-nic".to_owned(),
        format!("user,model=virtio-net-pci,mac={mac},hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
    ]);
    let mut vm = TestVm::start(&args, Duration::from_secs(240));
    vm.wait_for("byoi: rescue mode: SSH on port 22 for 1 key(s)", Duration::from_secs(120));
    // The host key the rescue system presents is the one whose fingerprint
    // the controller shows; ssh then checks it strictly.
    let view = http_json(&addr, "GET", "/dedicated/server/vm3", Some(TOKEN), None).1;
    let fingerprint = view["sshHostKey"].as_str().unwrap_or_else(|| panic!("no sshHostKey: {view}")).to_owned();
    let known_hosts = dir.path().join("known_hosts");
    let mut scanned = String::new();
    for _ in 0..30 {
        let out = std::process::Command::new("ssh-keyscan")
            .args(["-T", "10", "-t", "ed25519", "-p", &ssh_port.to_string(), "127.0.0.1"])
            .output()
            .unwrap();
        scanned = String::from_utf8_lossy(&out.stdout).into_owned();
        if scanned.lines().any(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    std::fs::write(&known_hosts, &scanned).unwrap();
    let listed = std::process::Command::new("ssh-keygen").arg("-lf").arg(&known_hosts).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&fingerprint), "scanned {listed:?}, the controller says {fingerprint}");
    let known = format!("UserKnownHostsFile={}", known_hosts.display());
    let mut last = String::new();
    for _ in 0..30 {
        let out = std::process::Command::new("ssh")
            .args(["-i", key.to_str().unwrap(), "-o", "StrictHostKeyChecking=yes", "-o", &known])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", &ssh_port.to_string()])
            .args(["root@127.0.0.1", "echo rescue-ok; cat /proc/cmdline"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if stdout.contains("rescue-ok") {
            assert!(stdout.contains("byoi.mode=rescue"), "{stdout}");
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("no SSH login into the rescue agent: {last}\n{}", vm.console());
}
