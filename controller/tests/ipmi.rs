//! The `ipmi` power driver against a real BMC peer: OpenIPMI's `ipmi_sim`
//! (a simulated BMC speaking IPMI 2.0 RMCP+ on 127.0.0.1), reached by the
//! real `ipmitool` that `byoi serve` runs, driven by the `byoi` command
//! line. The simulated chassis records what it is asked (`set power 0`,
//! `set boot pxe` …) in a file the test reads.
//!
//! `cargo xtask test` installs `openipmi` and `ipmitool`; without them CI
//! (`BYOI_E2E=1`) fails and a developer's `cargo test` says why it skips.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{byoi, http, start_with, stderr, stdout};

/// The BMC user's password: it must appear in no output.
const PASSWORD: &str = "s3cretBMCpw";

/// A running `ipmi_sim`; dropping it kills and reaps it.
struct Bmc {
    child: Child,
    port: u16,
    calls: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Bmc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bmc {
    /// What the chassis was asked since the last call, a line each.
    fn take_calls(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.calls).unwrap_or_default();
        std::fs::write(&self.calls, "").unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// The changes asked (`set …`), without the reads, once there are
    /// `want` of them: ipmi_sim cycles the power on a timer of its own, its
    /// `set power 1` a moment after ipmitool has its answer.
    fn take_sets(&self, want: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.calls).unwrap_or_default();
            if text.lines().filter(|c| c.starts_with("set ")).count() >= want {
                return self.take_calls().into_iter().filter(|c| c.starts_with("set ")).collect();
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the BMC was asked {text:?}, not {want} changes");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn found(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).stdout(Stdio::null()).status().unwrap().success()
}

/// Starts `ipmi_sim` on a free UDP port of 127.0.0.1 with one admin user;
/// `None` (and why, on stderr) when it or ipmitool is not installed and CI
/// is not asking.
fn bmc() -> Option<Bmc> {
    if !found("ipmi_sim") || !found("ipmitool") {
        if std::env::var("BYOI_E2E").is_ok_and(|v| v == "1") {
            panic!("ipmi_sim or ipmitool is missing: `cargo xtask setup` installs openipmi and ipmitool");
        }
        eprintln!("skipping: ipmi_sim or ipmitool is not installed (cargo xtask setup installs them)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let calls = d.join("calls.log");
    let state = d.join("power");
    // The chassis: `get power` → `power:1`, `set power 0` … as ipmi_sim's
    // chassis_control calls it.
    let chassis = d.join("chassis.sh");
    std::fs::write(
        &chassis,
        format!(
            "#!/bin/sh\necho \"$@\" >> {calls}\n[ -f {state} ] || echo 1 > {state}\ncase \"$1\" in\n\
             get) shift; for p in \"$@\"; do case $p in power) echo \"power:$(cat {state})\";; \
             boot) echo boot:default;; esac; done;;\n\
             set) shift; while [ $# -gt 1 ]; do [ \"$1\" != power ] || echo \"$2\" > {state}; shift 2; done;;\nesac\n",
            calls = calls.display(),
            state = state.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&chassis, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        d.join("lan.conf"),
        format!(
            "name \"byoi-test\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n\
             \x20   allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n\
             \x20   allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n\
             \x20   guid a123456789abcdefa123456789abcdef\n  endlan\n  chassis_control \"{}\"\n\
             \x20 user 2 true \"admin\" \"{PASSWORD}\" admin 10 none md2 md5 straight\n",
            chassis.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("sim.emu"),
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
    )
    .unwrap();
    std::fs::create_dir(d.join("state")).unwrap();
    let child = Command::new("ipmi_sim")
        .args(["-n", "-c"])
        .arg(d.join("lan.conf"))
        .arg("-f")
        .arg(d.join("sim.emu"))
        .arg("-s")
        .arg(d.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bmc = Bmc { child, port, calls, _dir: dir };
    wait_until_answering(&bmc);
    bmc.take_calls();
    Some(bmc)
}

/// Polls the BMC with ipmitool until it answers (it binds its port a
/// moment after it starts).
fn wait_until_answering(bmc: &Bmc) {
    let start = Instant::now();
    loop {
        let ok = Command::new("ipmitool")
            .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", &bmc.port.to_string(), "-U", "admin", "-E"])
            .args(["chassis", "power", "status"])
            .env("IPMI_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        if ok.status.success() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "ipmi_sim never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn add_server(c: &common::Controller, name: &str, mac: &str, port: u16, password: &str) {
    let port = format!("port={port}");
    let password = format!("password={password}");
    // Cipher suite 3: ipmi_sim does not list its suites, and ipmitool
    // would wait 10 s for that list at every call.
    let args =
        ["--power-arg", "host=127.0.0.1", "--power-arg", &port, "--power-arg", "cipher=3", "--power-arg", "user=admin"];
    let out = byoi(
        c,
        &[&["server", "add", name, "--mac", mac, "--power", "ipmi"][..], &args, &["--power-arg", &password]].concat(),
    );
    stdout(&out);
}

/// What `byoi power status NAME -o json` says.
fn power_state(c: &common::Controller, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&byoi(c, &["power", "status", name, "-o", "json"]))).unwrap();
    assert_eq!(v["kind"], "ipmi");
    v["state"].as_str().unwrap().to_owned()
}

#[test]
fn power_status_actions_and_a_one_time_pxe_boot_through_a_simulated_bmc() {
    let Some(bmc) = bmc() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = start_with(&dir.path().join("data"), &[], "http");
    add_server(&c, "web1", "52:54:00:12:34:01", bmc.port, PASSWORD);

    assert_eq!(power_state(&c, "web1"), "on");
    assert_eq!(bmc.take_calls(), ["get power"]);
    assert_eq!(stdout(&byoi(&c, &["power", "off", "web1"])), "web1 powered off\n");
    assert_eq!(bmc.take_sets(1), ["set power 0"]);
    assert_eq!(power_state(&c, "web1"), "off");
    assert_eq!(stdout(&byoi(&c, &["power", "on", "web1"])), "web1 powered on\n");
    assert_eq!(bmc.take_sets(1), ["set power 1"]);
    assert_eq!(stdout(&byoi(&c, &["power", "cycle", "web1"])), "web1 power-cycled\n");
    assert_eq!(bmc.take_sets(2), ["set power 0", "set power 1"]);

    // A deployment: the BMC is told to boot from the network once, then
    // the server is cycled into the agent; powering it off is refused
    // while the deployment runs, unless forced.
    let out = byoi(&c, &["deploy", "web1", "--url", "http://img.example/debian.qcow2"]);
    stderr(&out, 0, &c.token);
    assert_eq!(bmc.take_sets(3), ["set boot pxe", "set power 0", "set power 1"]);
    let out = byoi(&c, &["power", "off", "web1"]);
    let err = stderr(&out, 6, &c.token);
    assert!(err.contains("A deployment is running on web1") && err.contains("byoi power off web1 --force"), "{err}");
    assert!(bmc.take_sets(0).is_empty());
    assert_eq!(stdout(&byoi(&c, &["power", "off", "web1", "--force"])), "web1 powered off\n");
    assert_eq!(bmc.take_sets(1), ["set power 0"]);
    let err = stderr(&byoi(&c, &["power", "status", "web1", "--force"]), 2, &c.token);
    assert_eq!(err.trim(), "error: --force is for off and cycle");

    // A wrong password: the driver's failure, exit 3, and no password in
    // what the operator sees.
    add_server(&c, "web2", "52:54:00:12:34:02", bmc.port, "not-the-password");
    let out = byoi(&c, &["power", "status", "web2"]);
    let err = stderr(&out, 3, "not-the-password");
    assert!(err.starts_with("error: could not read the power of web2: ipmitool failed"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");

    // Counted by driver, action and outcome.
    let (_, metrics) = http(&c.addr, "GET", "/metrics", Some(&c.token), None);
    for line in [
        r#"byoi_power_actions_total{driver="ipmi",action="netboot",outcome="ok"} 1"#,
        r#"byoi_power_actions_total{driver="ipmi",action="cycle",outcome="ok"} 2"#,
        r#"byoi_power_actions_total{driver="ipmi",action="status",outcome="failed"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}
