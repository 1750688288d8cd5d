//! Replicas: two `byoi serve` on one PostgreSQL database, an agent that
//! knows both (`byoi.controller=B,A`). The operator deploys through one,
//! the agent reports to the other, which is killed mid-deployment: the
//! agent fails over and the deployment completes. And a power cycle asked
//! of a controller that dies before running it happens once, run by the
//! other. Runs when the test run names a PostgreSQL cluster (`cargo xtask
//! test` does).
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

/// `byoi serve` on `dir` and `database`, with the API token of `token`
/// when given, and `extra` arguments.
fn replica(dir: &std::path::Path, database: &str, token: Option<&str>, extra: &[&str]) -> common::Controller {
    if let Some(token) = token {
        let file = dir.join("api-token");
        std::fs::write(&file, token).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut args: Vec<&std::ffi::OsStr> = vec!["--database".as_ref(), database.as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    start_with(dir, &args, "http")
}

#[test]
fn a_power_cycle_asked_of_a_controller_that_died_happens_once() {
    let (dir_a, dir_b, work) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let Some(database) = byoi_testbed::postgres_database(dir_a.path()) else {
        eprintln!("skipped: {} names no PostgreSQL cluster (cargo xtask test runs it)", byoi_testbed::POSTGRES_ENV);
        return;
    };
    // The power command notes that it started, waits while the gate file
    // exists, then logs the action: held at the gate, it has not acted.
    let (gate, started, log) = (work.path().join("gate"), work.path().join("started"), work.path().join("power.log"));
    let script = format!(
        "touch {started}; while [ -e {gate} ]; do sleep 0.05; done; echo {{action}} >> {log}",
        started = started.display(),
        gate = gate.display(),
        log = log.display()
    );
    let commands = work.path().join("power.json");
    std::fs::write(&commands, json!({"gated": ["sh", "-c", script]}).to_string()).unwrap();
    std::fs::set_permissions(&commands, std::fs::Permissions::from_mode(0o600)).unwrap();
    let commands = commands.to_str().unwrap();
    let extra = ["--power-commands", commands, "--power-lease", "2"];
    let mut a = replica(dir_a.path(), &database, None, &extra);

    let server = json!({"serviceName": "vm1", "macs": [MAC], "power": {"kind": "command", "name": "gated"}});
    let (code, body) = http(&a.addr, "POST", "/dedicated/server", Some(&a.token), Some(&server));
    assert_eq!(code, 201, "{body}");
    std::fs::write(&gate, "").unwrap();
    let deploy = json!({"URL": "http://img.lab/debian.qcow2"});
    let asked = {
        let (addr, token) = (a.addr.clone(), a.token.clone());
        std::thread::spawn(move || {
            std::panic::catch_unwind(|| {
                http(&addr, "POST", "/dedicated/server/vm1/bringYourOwnImage", Some(&token), Some(&deploy))
            })
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !started.exists() {
        assert!(std::time::Instant::now() < deadline, "A never ran the power command");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A dies with its power command, which never got past the gate.
    for pid in byoi_testbed::children(a.child.id()).unwrap() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(!matches!(asked.join().unwrap(), Ok((200, _))), "A answered the POST it died serving");
    std::fs::remove_file(&gate).unwrap();
    std::fs::remove_file(&started).unwrap();

    // B comes up, and once A's lease ran out, cycles the server.
    let b = replica(dir_b.path(), &database, Some(&a.token), &extra);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !log.exists() {
        assert!(std::time::Instant::now() < deadline, "no controller took over the power cycle");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A comes back: it does not cycle again, nor does B (the job is done).
    let a = replica(dir_a.path(), &database, None, &extra);
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "cycle\n");
    let st = status(&a.addr, &a.token);
    assert_eq!((st["status"].as_str(), st["stage"].as_str()), (Some("doing"), Some("waiting-for-agent")), "{st}");
    drop(b);
}
