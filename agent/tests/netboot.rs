//! The netbooted agent's job loop against a real controller (`byoi serve`,
//! in-process on 127.0.0.1), with a fake sysfs naming a file-backed disk:
//! hello with inventory, job, progress, result; an error (the agent netboots
//! again), then a corrected deployment on a new boot.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use byoi_agent::netboot::client::Controller;
use byoi_agent::netboot::jobs::{self, Outcome};
use byoi_e2e::{controller_with, http_json};
use serde_json::json;
use support::{assert_prefix_eq, disk_image, Behaviour, Server};

const TOKEN: &str = "op-token";
const DISK: u64 = 128 << 20;

/// Starts the controller (its artifacts are placeholders: the agent runs
/// in-process, but the boot script needs them to hand out a token).
fn controller(data: &Path) -> String {
    let artifacts = data.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::write(artifacts.join(f), b"unused: the agent runs in-process").unwrap();
    }
    controller_with(data, TOKEN, artifacts)
}

#[test]
fn agent_deploys_jobs_from_the_controller_and_recovers_from_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let addr = controller(&dir.path().join("data"));
    let env = support::netboot_machine(dir.path(), DISK, "disk-A");
    let image = disk_image(8 << 20, 5);
    let images = Server::start();
    let url = images.serve(
        "/img.raw",
        image.clone(),
        Behaviour { ranges: true, etag: Some("\"1\"".into()), ..Default::default() },
    );

    let (status, _) = http_json(
        &addr,
        "POST",
        "/dedicated/server",
        Some(TOKEN),
        Some(&json!({"serviceName": "vm1", "macs": ["52:54:00:12:34:56"]})),
    );
    assert_eq!(status, 201);
    let wrong = json!({"URL": url, "checkSum": "0".repeat(64), "checkSumType": "sha256", "configdrive": {"enable": true, "hostname": "vm1"}});
    let (status, _) = http_json(&addr, "POST", "/dedicated/server/vm1/bringYourOwnImage", Some(TOKEN), Some(&wrong));
    assert_eq!(status, 200);
    let boot = |env: jobs::Env| {
        let (_, script) = http_json(&addr, "GET", "/boot/52-54-00-12-34-56", None, None);
        let script = script.as_str().unwrap().to_owned();
        let token = script.split("byoi.token=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
        let ctl = Controller::new(&format!("http://{addr}"), &token).unwrap();
        std::thread::spawn(move || jobs::serve(&ctl, &env))
    };
    let agent = boot(env.clone());

    // The wrong checksum fails; the agent reports it and netboots again.
    let st = wait_for(&addr, |st| st["status"] != "doing");
    assert_eq!(st["status"], "error", "{st}");
    assert!(st["message"].as_str().unwrap().starts_with("Bad sha256 for downloaded file, got: "), "{st}");
    assert_eq!(st["errorCode"], "checksum-mismatch");
    assert!(support::ends_wiped(&dir.path().join("dev/vda")), "a failed deployment left something bootable");
    let hw = http_json(&addr, "GET", "/dedicated/server/vm1/specifications/hardware", Some(TOKEN), None).1;
    assert_eq!(hw["diskGroups"][0]["disks"][0]["serial"], "disk-A");

    assert_eq!(agent.join().unwrap(), Outcome::Netboot);
    // With no boot expected, the server gets the idle script: no token.
    let (_, script) = http_json(&addr, "GET", "/boot/52-54-00-12-34-56", None, None);
    assert!(!script.as_str().unwrap().contains("byoi.token="), "{script}");

    // A corrected POST: a new boot, a new agent.
    let sum = {
        use sha2::Digest;
        sha2::Sha256::digest(&image).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let right = json!({"URL": url, "checkSum": sum, "checkSumType": "sha256", "configdrive": {"enable": true, "hostname": "vm1"}});
    let (status, body) = http_json(&addr, "POST", "/dedicated/server/vm1/bringYourOwnImage", Some(TOKEN), Some(&right));
    assert_eq!(status, 200, "{body}");
    let agent = boot(env);
    let st = wait_for(&addr, |st| st["status"] != "doing");
    assert_eq!(st["status"], "done", "{st}");
    assert!(st["message"].as_str().unwrap().contains("ConfigDrive on partition"), "{st}");
    assert_eq!(agent.join().unwrap(), Outcome::Reboot);
    // The image is on the disk (its MBR now has the ConfigDrive entry too).
    let disk = std::fs::read(dir.path().join("dev/vda")).unwrap();
    assert_eq!(disk[1 << 20..image.len()], image[1 << 20..]);
    assert_prefix_eq(&dir.path().join("dev/vda"), &image[..446], "boot code");
    let s = http_json(&addr, "GET", "/dedicated/server/vm1", Some(TOKEN), None).1;
    assert_eq!(s["bootTarget"], "local");
}

fn wait_for(addr: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    for _ in 0..300 {
        let (_, st) = http_json(addr, "GET", "/dedicated/server/vm1/bringYourOwnImage", Some(TOKEN), None);
        if done(&st) {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the deployment did not end");
}
