//! Replicas: two `byoi serve` on one PostgreSQL database, an agent that
//! knows both (`byoi.controller=B,A`). The operator deploys through one,
//! the agent reports to the other, which is killed mid-deployment: the
//! agent fails over and the deployment completes. Runs when the test run
//! names a PostgreSQL cluster (`cargo xtask test` does).
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use byoi_agent::netboot::client::{Controller, Trust};
use byoi_wire::agent::{Action, Disk, Hello, Inventory, ProgressReport, ResultReport};
use byoi_wire::{BootMode, Stage, Status};
use common::{agent_token, http, start_with};
use serde_json::{json, Value};

const MAC: &str = "52:54:00:00:00:01";

fn status(addr: &str, token: &str) -> Value {
    let (code, body) = http(addr, "GET", "/dedicated/server/vm1/bringYourOwnImage", Some(token), None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_deployment_survives_the_controller_its_agent_talked_to() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let Some(database) = byoi_testbed::postgres_database(dir_a.path()) else {
        eprintln!("skipped: {} names no PostgreSQL cluster (cargo xtask test runs it)", byoi_testbed::POSTGRES_ENV);
        return;
    };
    let args = [std::ffi::OsStr::new("--database"), database.as_ref()];
    let a = start_with(dir_a.path(), &args, "http");
    // Replicas share their API token as they share their database.
    let token_file = dir_b.path().join("api-token");
    std::fs::write(&token_file, &a.token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // B serves the boot script, so it needs something to boot.
    let artifacts = dir_b.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::write(artifacts.join(f), "unused: the agent runs in this test").unwrap();
    }
    let mut b = start_with(dir_b.path(), &args, "http");
    assert_eq!(a.token, b.token);

    // The operator registers and deploys through A; the server netboots
    // from B.
    let server = json!({"serviceName": "vm1", "macs": [MAC], "power": {"kind": "manual"}});
    let (code, body) = http(&a.addr, "POST", "/dedicated/server", Some(&a.token), Some(&server));
    assert_eq!(code, 201, "{body}");
    let deploy = json!({"URL": "http://img.lab/debian.qcow2", "checkSum": "ab".repeat(32), "checkSumType": "sha256"});
    let (code, body) = http(&a.addr, "POST", "/dedicated/server/vm1/bringYourOwnImage", Some(&a.token), Some(&deploy));
    assert_eq!(code, 200, "{body}");
    let agent = agent_token(&b, MAC);

    let (url_a, url_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let ctl = Controller::with_trust(&[url_b.clone(), url_a.clone()], &agent, Trust::WebPki).unwrap();
    let disk = Disk {
        name: "vda".into(),
        size_bytes: 8 << 30,
        model: "QEMU HARDDISK".into(),
        serial: "disk-A".into(),
        wwn: String::new(),
        rotational: false,
        transport: "virtio".into(),
        logical_sector_size: 512,
    };
    let inventory = Inventory { firmware: BootMode::Uefi, memory_bytes: 1 << 30, disks: vec![disk], nics: Vec::new() };
    assert_eq!(ctl.hello(&Hello { inventory, version: "test".into() }).unwrap(), Action::Continue);
    let job = ctl.job().unwrap().job.expect("the job of the deployment posted through A");
    let report = |bytes_done| ProgressReport {
        deployment_id: job.deployment_id,
        stage: Stage::Downloading,
        bytes_done,
        bytes_total: Some(4 << 20),
        logs: Vec::new(),
    };
    assert_eq!(ctl.progress(&report(1 << 20)).unwrap(), Action::Continue);
    assert_eq!(ctl.current(), url_b);
    // A sees what the agent told B.
    let st = status(&a.addr, &a.token);
    assert_eq!((st["status"].as_str(), st["stage"].as_str()), (Some("doing"), Some("downloading")), "{st}");

    // B dies; the agent's next report goes to A.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    assert_eq!(ctl.progress(&report(3 << 20)).unwrap(), Action::Continue);
    assert_eq!(ctl.current(), url_a);
    let done = ResultReport {
        deployment_id: job.deployment_id,
        status: Status::Done,
        code: None,
        message: "deployed through a replica".into(),
        logs: Vec::new(),
    };
    assert_eq!(ctl.result(&done).unwrap(), Action::Reboot);
    let st = status(&a.addr, &a.token);
    assert_eq!((st["status"].as_str(), st["message"].as_str()), (Some("done"), Some("deployed through a replica")));
}
