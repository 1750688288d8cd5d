//! `byoi serve` on an empty data dir, driven by the `byoi` command line,
//! with a simulated agent speaking HTTP to it, as the real one will.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

mod common;

use common::{agent_token, byoi, byoi_at, http, start_with, stderr, stdout, Controller};

fn start(data_dir: &Path) -> Controller {
    start_with(data_dir, &[], "http")
}

/// `byoi serve` on `data`, with stand-in artifacts so that boot scripts
/// mint tokens.
fn start_with_artifacts(data: &Path) -> Controller {
    let c = start(data);
    stand_in_artifacts(data);
    c
}

/// A stand-in kernel and initramfs in `data`'s artifacts directory.
fn stand_in_artifacts(data: &Path) {
    let artifacts = data.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("vmlinuz"), b"k").unwrap();
    std::fs::write(artifacts.join("initramfs.img"), b"i").unwrap();
}

/// The simulated agent holding `token` says hello (one 8 GiB disk) and
/// takes the job; returns its deployment id.
fn take_job(c: &Controller, token: &str) -> i64 {
    let disk = json!({"name": "vda", "sizeBytes": 8u64 << 30, "serial": "D1", "transport": "virtio"});
    let inv = json!({"inventory": {"firmware": "uefi", "memoryBytes": 1u64 << 30, "disks": [disk], "nics": []}});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/hello", Some(token), Some(&inv)).0, 200);
    let (_, job) = http(&c.addr, "GET", "/agent/v1/job", Some(token), None);
    serde_json::from_str::<Value>(&job).unwrap()["job"]["deploymentId"].as_i64().unwrap()
}

/// A table's rows, split on whitespace, the header first.
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

/// Every read command's `-o json` and `-o yaml` print the controller's
/// answer; the tables have headers.
#[test]
fn read_commands_print_tables_json_and_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_with_artifacts(&dir.path().join("data"));
    stdout(&byoi(&c, &["server", "add", "web1", "--mac", "52:54:00:00:00:01"]));
    stdout(&byoi(&c, &["server", "add", "web2", "--mac", "52:54:00:00:00:02"]));
    stdout(&byoi(&c, &["deploy", "web1", "--url", "http://img/x.raw"]));
    let both = |args: &[&str]| -> Value {
        let json: Value = serde_json::from_str(&stdout(&byoi(&c, &[args, &["-o", "json"]].concat()))).unwrap();
        let yaml: Value = serde_yaml_ng::from_str(&stdout(&byoi(&c, &[args, &["-o", "yaml"]].concat()))).unwrap();
        assert_eq!(json, yaml, "{args:?}");
        json
    };
    let servers = both(&["servers"]);
    let names: Vec<&str> = servers.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web1", "web2"]);
    assert_eq!(servers[0]["deployments"][0]["status"], "doing");
    let rows = table(&stdout(&byoi(&c, &["servers"])));
    assert_eq!(
        (rows.len(), &rows[1][4], &rows[1][5], &rows[2][4]),
        (3, &"doing".to_owned(), &"waiting-for-agent".to_owned(), &"-".to_owned())
    );
    let status = both(&["status", "web1"]);
    assert_eq!((&status["status"], &status["servername"]), (&json!("doing"), &json!("web1")));
    assert_eq!(both(&["power", "status", "web2"]), json!({"kind": "manual", "state": "unknown"}));
    let rows = table(&stdout(&byoi(&c, &["power", "status", "web2"])));
    assert_eq!(rows, [["NAME", "DRIVER", "STATE"], ["web2", "manual", "unknown"]]);
    stdout(&byoi(&c, &["credentials", "add", "tf"]));
    let creds = both(&["credentials", "list"]);
    assert_eq!(creds[0]["name"], "tf");
    assert_eq!(creds[0]["credentials"][0]["status"], "validated");
    assert!(creds[0].get("applicationSecret").is_none(), "{creds}");

    // A deployment followed as JSON: a line per change, the last one the end.
    let t = agent_token(&c, "52:54:00:00:00:01");
    let id = take_job(&c, &t);
    // On a terminal (script(1) gives it one), --follow draws indicatif's
    // bar on stderr.
    let p = json!({"deploymentId": id, "stage": "downloading", "bytesDone": 300u64 << 20, "bytesTotal": 1000u64 << 20});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/progress", Some(&t), Some(&p)).0, 200);
    let follow = format!(
        "{} status web1 --follow --controller http://{} --token {}",
        env!("CARGO_BIN_EXE_byoi"),
        c.addr,
        c.token
    );
    let pty = Command::new("script")
        .args(["-qfec", &follow, "/dev/null"])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let error = json!({"deploymentId": id, "status": "error", "code": "checksum-mismatch", "message": "bad sum"});
    http(&c.addr, "POST", "/agent/v1/result", Some(&t), Some(&error));
    let drawn = pty.wait_with_output().unwrap();
    let drawn = String::from_utf8_lossy(&drawn.stdout);
    assert!(drawn.contains("web1: downloading [") && drawn.contains("30% 300.00 MiB/1000.00 MiB"), "{drawn:?}");
    assert!(drawn.contains("error: bad sum [checksum-mismatch]"), "{drawn:?}");
    // It followed the controller's event stream, not a poll a second.
    let (_, metrics) = http(&c.addr, "GET", "/metrics", Some(&c.token), None);
    let streamed =
        r#"byoi_http_requests_total{route="/dedicated/server/{serviceName}/events",method="GET",status="200"}"#;
    assert!(metrics.contains(streamed), "{metrics}");
    let out = byoi(&c, &["status", "web1", "--follow", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "a failed deployment");
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.last().unwrap()["errorCode"], "checksum-mismatch");
    let rows = table(&stdout(&byoi(&c, &["servers"])));
    assert_eq!(rows[1][4..6], ["error", "(checksum-mismatch)"]);
}

/// `byoi logs`: the agent's lines as a table (escape sequences made
/// harmless), as JSON, of an older deployment, and followed to the end.
#[test]
fn logs_shows_and_follows_the_agents_lines() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_with_artifacts(&dir.path().join("data"));
    stdout(&byoi(&c, &["server", "add", "web1", "--mac", "52:54:00:00:00:01"]));
    stdout(&byoi(&c, &["deploy", "web1", "--url", "http://img/x.raw"]));
    let t = agent_token(&c, "52:54:00:00:00:01");
    let id = take_job(&c, &t);
    let line = |m: &str| json!({"level": "info", "target": "console", "message": m});
    let report = |logs: Value| {
        let p = json!({"deploymentId": id, "stage": "writing", "bytesDone": 1, "bytesTotal": 2, "logs": logs});
        assert_eq!(http(&c.addr, "POST", "/agent/v1/progress", Some(&t), Some(&p)).0, 200);
    };
    report(json!([line("target /dev/vda (8 GiB, serial D1)"), line("evil \u{1b}[2J clear")]));
    let rows = table(&stdout(&byoi(&c, &["logs", "web1"])));
    assert_eq!(rows[0], ["AT", "LEVEL", "SOURCE", "MESSAGE"]);
    assert_eq!(rows[1][1..], ["info", "console", "target", "/dev/vda", "(8", "GiB,", "serial", "D1)"]);
    let text = stdout(&byoi(&c, &["logs", "web1"]));
    assert!(!text.contains('\u{1b}') && text.contains("evil \u{fffd}[2J clear"), "{text:?}");
    let v: Value = serde_json::from_str(&stdout(&byoi(&c, &["logs", "web1", "-o", "json"]))).unwrap();
    assert_eq!((v["deploymentId"].as_i64(), v["lines"].as_array().unwrap().len()), (Some(id), 2));
    assert_eq!(
        stderr(&byoi(&c, &["logs", "web1", "--deployment", "999"]), 5, &c.token).trim(),
        "error: No deployment on web1 (HTTP 404 Not Found)"
    );

    // Followed: what is kept, then each new line once, until the end.
    let follower = Command::new(env!("CARGO_BIN_EXE_byoi"))
        .args(["logs", "web1", "--follow", "--controller", &format!("http://{}", c.addr), "--token", &c.token])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    report(json!([line("wrote 1 of 2 bytes")]));
    let done = json!({"deploymentId": id, "status": "done", "message": "deployed", "logs": [line("done: deployed")]});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/result", Some(&t), Some(&done)).0, 200);
    let out = follower.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let messages: Vec<&str> = text.lines().skip(1).map(|l| l.split("  console  ").nth(1).unwrap()).collect();
    assert_eq!(
        messages,
        ["target /dev/vda (8 GiB, serial D1)", "evil \u{fffd}[2J clear", "wrote 1 of 2 bytes", "done: deployed"],
        "{text}"
    );
}

/// `byoi inspect`: the agent reports the hardware before any deployment.
#[test]
fn inspect_reports_the_hardware_before_a_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_with_artifacts(&dir.path().join("data"));
    stdout(&byoi(&c, &["server", "add", "web1", "--mac", "52:54:00:00:00:01"]));
    let err = stderr(&byoi(&c, &["inspect", "web1"]), 0, &c.token);
    assert_eq!(err.trim(), "web1 has manual power: reboot it by hand now; it must netboot (PXE) to be inspected");
    let (_, script) = http(&c.addr, "GET", "/boot/52:54:00:00:00:01", None, None);
    assert!(script.contains("byoi.mode=inspect"), "{script}");
    let t = agent_token(&c, "52:54:00:00:00:01");
    let disk = json!({"name": "sda", "sizeBytes": 480_103_981_056u64, "serial": "S1", "transport": "sata"});
    let inv = json!({"inventory": {"firmware": "uefi", "memoryBytes": 64u64 << 30, "disks": [disk], "nics": []}});
    let (status, answer) = http(&c.addr, "POST", "/agent/v1/hello", Some(&t), Some(&inv));
    assert_eq!((status, answer.as_str()), (200, r#"{"action":"poweroff"}"#));
    let shown: Value = serde_json::from_str(&stdout(&byoi(&c, &["server", "show", "web1", "-o", "json"]))).unwrap();
    assert_eq!((&shown["firmware"], &shown["bootTarget"]), (&json!("uefi"), &json!("local")));
    stderr(&byoi(&c, &["inspect", "nope"]), 5, &c.token);
}

/// `serve --enlist`: a machine no server has reports its hardware; `servers
/// --discovered` lists it, `server adopt` makes it a server with its MACs,
/// `server forget` drops one.
#[test]
fn discovered_machines_are_listed_adopted_and_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = start_with(&data, &["--enlist".as_ref()], "http");
    stand_in_artifacts(&data);
    let t = agent_token(&c, "52:54:00:cc:00:01");
    agent_token(&c, "52-54-00-CC-00-02");
    let disk = json!({"name": "sda", "sizeBytes": 480_103_981_056u64, "serial": "S1", "transport": "sata"});
    let nics =
        [json!({"name": "eth0", "mac": "52:54:00:cc:00:01"}), json!({"name": "eth1", "mac": "52:54:00:cc:00:11"})];
    let inv = json!({"inventory": {"firmware": "uefi", "memoryBytes": 64u64 << 30, "disks": [disk], "nics": nics}});
    let (status, answer) = http(&c.addr, "POST", "/agent/v1/hello", Some(&t), Some(&inv));
    assert_eq!((status, answer.as_str()), (200, r#"{"action":"poweroff"}"#));

    let text = stdout(&byoi(&c, &["servers", "--discovered"]));
    let rows = table(&text);
    assert_eq!(rows[0], ["MAC", "STATE", "ADDRESS", "FIRMWARE", "MEMORY", "DISKS", "NICS", "LAST", "SEEN"]);
    assert_eq!(rows[1][..4], ["52:54:00:cc:00:01", "reported", "127.0.0.1", "uefi"]);
    let line = text.lines().nth(1).unwrap();
    assert!(
        line.contains(" 64 GiB ")
            && line.contains(" 1 x 480 GB SSD ")
            && line.contains(" 52:54:00:cc:00:01, 52:54:00:cc:00:11 "),
        "{text}"
    );
    assert_eq!(rows[2][..7], ["52:54:00:cc:00:02", "booting", "127.0.0.1", "-", "-", "-", "-"]);
    let listed: Value = serde_json::from_str(&stdout(&byoi(&c, &["servers", "--discovered", "-o", "json"]))).unwrap();
    assert_eq!((&listed[0]["hardware"]["bootMode"], &listed[1]["state"]), (&json!("uefi"), &json!("booting")));

    let err = stderr(&byoi(&c, &["server", "adopt", "52:54:00:cc:00:02", "web2"]), 6, &c.token);
    assert!(err.contains("52:54:00:cc:00:02 has not reported its hardware yet"), "{err}");
    let said = stdout(&byoi(&c, &["server", "adopt", "52:54:00:cc:00:01", "web1", "--kernel-arg", "console=ttyS1"]));
    assert_eq!(said.trim(), r#"adopted 52:54:00:cc:00:01 as web1 (["52:54:00:cc:00:01","52:54:00:cc:00:11"])"#);
    let shown: Value = serde_json::from_str(&stdout(&byoi(&c, &["server", "show", "web1", "-o", "json"]))).unwrap();
    assert_eq!((&shown["firmware"], &shown["kernelArgs"]), (&json!("uefi"), &json!(["console=ttyS1"])));
    stderr(&byoi(&c, &["server", "adopt", "52:54:00:cc:00:01", "web1"]), 5, &c.token);
    let said = stdout(&byoi(&c, &["server", "forget", "52:54:00:cc:00:02"]));
    assert_eq!(said.trim(), "52:54:00:cc:00:02 forgotten: its next netboot discovers it again");
    stderr(&byoi(&c, &["server", "forget", "52:54:00:cc:00:02"]), 5, &c.token);
    assert_eq!(stdout(&byoi(&c, &["servers", "--discovered", "-o", "json"])).trim(), "[]");
}

/// The profile file gives the controller, the token and the CA, so that
/// none is on the command line; a named profile replaces the top level; a
/// token in a file others can read is refused.
#[test]
fn a_profile_keeps_the_token_off_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&dir.path().join("data"));
    stdout(&byoi(&c, &["server", "add", "web1", "--mac", "52:54:00:00:00:01"]));
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".config/byoi")).unwrap();
    let profile = home.join(".config/byoi/config.toml");
    let text = format!(
        "controller = \"http://127.0.0.1:1\"\ntoken = \"wrong\"\n[profiles.lab]\ncontroller = \"http://{}\"\ntoken = \"{}\"\n",
        c.addr, c.token
    );
    std::fs::write(&profile, text).unwrap();
    let run = |mode: u32, args: &[&str]| {
        std::fs::set_permissions(&profile, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_byoi"))
            .args(args)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    };
    let out = run(0o600, &["servers", "--profile", "lab"]);
    assert_eq!(table(&stdout(&out))[1][0], "web1");
    // The top level points at a closed port: unreachable, exit 7.
    let err = stderr(&run(0o600, &["servers"]), 7, &c.token);
    assert!(err.contains("cannot reach the controller at http://127.0.0.1:1/"), "{err}");
    // A flag beats the profile.
    let out = run(0o600, &["servers", "--profile", "lab", "--controller", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(7));
    let err = stderr(&run(0o644, &["servers", "--profile", "lab"]), 2, &c.token);
    assert!(err.contains("holds token and its group and other users can read it (chmod go-r it)"), "{err}");
    let err = stderr(&run(0o600, &["servers", "--profile", "prod"]), 2, &c.token);
    assert!(err.contains("no profile \"prod\" (it has: lab)"), "{err}");
}

/// A stand-in controller on 127.0.0.1 answering each request, in order,
/// with the next of `answers` (status, JSON body); records each request as
/// `METHOD PATH BODY`. For the parts of the API contract `byoi serve` does
/// not speak yet.
fn fake_controller(answers: Vec<(u16, Value)>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    // The thread ends with the test process: it holds nothing but a socket.
    std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        for conn in listener.incoming() {
            let mut conn = BufReader::new(conn.unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                conn.read_line(&mut line).unwrap();
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap();
                    }
                }
                if line.trim().is_empty() {
                    break;
                }
                if head.is_empty() {
                    head = line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                }
            }
            let mut body = vec![0; len];
            conn.read_exact(&mut body).unwrap();
            log.lock().unwrap().push(format!("{head} {}", String::from_utf8_lossy(&body)).trim_end().to_owned());
            let (status, answer) =
                answers.next().unwrap_or((500, json!({"message": format!("unexpected request {head}")})));
            let answer = answer.to_string();
            let _ = write!(
                conn.get_mut(),
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn serve_on_an_empty_data_dir_and_drive_a_deployment_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = start(&data);
    let artifacts = data.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("vmlinuz"), b"k").unwrap();
    std::fs::write(artifacts.join("initramfs.img"), b"i").unwrap();

    let out = stdout(&byoi(
        &c,
        &["server", "add", "web1", "--mac", "52:54:00:aa:bb:01", "--kernel-arg", "console=ttyS1,115200"],
    ));
    assert_eq!(out.trim(), "added web1 ([\"52:54:00:aa:bb:01\"])");
    let ud = dir.path().join("ud");
    std::fs::write(&ud, "#cloud-config\n").unwrap();
    let nd = dir.path().join("network_data.json");
    let network = r#"{"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:aa:bb:01"}],
        "networks": [{"id": "n0", "link": "eth0", "type": "ipv4", "ip_address": "192.0.2.10", "netmask": "255.255.255.0"}]}"#;
    std::fs::write(&nd, network).unwrap();
    let out = stdout(&byoi(
        &c,
        &[
            "deploy",
            "web1",
            "--url",
            "http://img/x.qcow2",
            "--checksum",
            &format!("sha256:{}", "0".repeat(64)),
            "--hostname",
            "web1",
            "--user-data",
            ud.to_str().unwrap(),
            "--meta",
            "a=b",
            "--ssh-key",
            "ssh-ed25519 AAAA1 one",
            "--ssh-key",
            "ssh-ed25519 AAAA2 two",
            "--network-data",
            nd.to_str().unwrap(),
        ],
    ));
    assert!(out.starts_with("deployment 1 on web1: \"doing\""), "{out}");
    let dup = byoi(&c, &["deploy", "web1", "--url", "http://img/x.qcow2"]);
    assert_eq!(dup.status.code(), Some(6), "a conflict");
    assert!(String::from_utf8_lossy(&dup.stderr).contains("A deployment is already in progress on web1"));

    // The simulated agent.
    let t = agent_token(&c, "52-54-00-AA-BB-01");
    let inv = json!({"inventory": {"firmware": "legacy", "memoryBytes": 1u64 << 30, "disks": [{"name": "vda", "sizeBytes": 8u64 << 30, "serial": "D1", "transport": "virtio"}], "nics": []}});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/hello", Some(&t), Some(&inv)).0, 200);
    let (_, job) = http(&c.addr, "GET", "/agent/v1/job", Some(&t), None);
    let job: Value = serde_json::from_str(&job).unwrap();
    let cd = &job["job"]["spec"]["configdrive"];
    assert_eq!(cd["hostname"], "web1");
    assert_eq!(cd["sshKeys"], json!(["ssh-ed25519 AAAA1 one", "ssh-ed25519 AAAA2 two"]));
    let sent = base64::engine::general_purpose::STANDARD.decode(cd["networkData"].as_str().unwrap()).unwrap();
    assert_eq!(sent, network.as_bytes(), "network_data.json goes to the agent verbatim");
    let id = job["job"]["deploymentId"].as_i64().unwrap();
    let p = json!({"deploymentId": id, "stage": "downloading", "bytesDone": 300u64 << 20, "bytesTotal": 1000u64 << 20});
    http(&c.addr, "POST", "/agent/v1/progress", Some(&t), Some(&p));
    let out = stdout(&byoi(&c, &["status", "web1"]));
    assert!(out.starts_with("doing downloading [#########") && out.contains(" 30.0% 300/1000 MiB"), "{out}");

    // `status --follow` until the agent finishes.
    let follower = Command::new(env!("CARGO_BIN_EXE_byoi"))
        .args(["status", "web1", "--follow", "--controller", &format!("http://{}", c.addr), "--token", &c.token])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let done = json!({"deploymentId": id, "status": "done", "message": "deployed in 12 s"});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/result", Some(&t), Some(&done)).1, r#"{"action":"reboot"}"#);
    let out = follower.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (last, key_line) = out.trim_end().rsplit_once('\n').unwrap();
    assert!(last.ends_with("done: deployed in 12 s"), "{out}");
    // The rescue host key's fingerprint, as the server view has it.
    let (_, view) = http(&c.addr, "GET", "/dedicated/server/web1", Some(&c.token), None);
    let fp = serde_json::from_str::<Value>(&view).unwrap()["sshHostKey"].as_str().unwrap().to_owned();
    assert!(fp.starts_with("SHA256:") && fp.len() == 50, "{fp}");
    assert_eq!(key_line, format!("rescue SSH host key: {fp}"));
    let rows = table(&stdout(&byoi(&c, &["servers"])));
    assert_eq!(rows[0], ["NAME", "MACS", "POWER", "BOOT", "DEPLOYMENT", "LAST", "SEEN"]);
    assert_eq!(rows[1][..5], ["web1", "52:54:00:aa:bb:01", "manual", "local", "done"]);

    // An error: `status` exits 1; `cancel` sends the server to rescue.
    stdout(&byoi(&c, &["deploy", "web1", "--url", "http://img/y.raw"]));
    let t = agent_token(&c, "52:54:00:aa:bb:01");
    http(&c.addr, "POST", "/agent/v1/hello", Some(&t), Some(&inv));
    let (_, job) = http(&c.addr, "GET", "/agent/v1/job", Some(&t), None);
    let id = serde_json::from_str::<Value>(&job).unwrap()["job"]["deploymentId"].as_i64().unwrap();
    let err = json!({"deploymentId": id, "status": "error", "code": "download-failed", "message": "Could not download image located: http://img/y.raw (HTTP 404 Not Found)"});
    http(&c.addr, "POST", "/agent/v1/result", Some(&t), Some(&err));
    let st = byoi(&c, &["status", "web1"]);
    assert_eq!(st.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&st.stdout).trim(),
        format!(
            "error: Could not download image located: http://img/y.raw (HTTP 404 Not Found) [download-failed]\n\
             rescue SSH host key: {fp}"
        ),
        "the same key as before"
    );
    assert_eq!(stdout(&byoi(&c, &["cancel", "web1"])).trim(), "deployment erased; the server boots into rescue");

    // Restart on the same data dir: same token, same state.
    drop(c);
    let c = start(&data);
    assert_eq!(table(&stdout(&byoi(&c, &["servers"])))[1][..4], ["web1", "52:54:00:aa:bb:01", "manual", "rescue"]);
    let (status, body) = http(&c.addr, "GET", "/dedicated/server", Some("wrong"), None);
    assert_eq!(
        (status, body.as_str()),
        (
            401,
            r#"{"class":"Client::Unauthorized","message":"Invalid API token (Authorization: Bearer …)","errorCode":"NOT_CREDENTIAL","httpCode":"401 Unauthorized"}"#
        )
    );
    // Oversized and malformed bodies over a real socket.
    let (status, _) = http(&c.addr, "POST", "/dedicated/server", Some(&c.token), Some(&json!("x".repeat(25 << 20))));
    assert_eq!(status, 413);
    let (status, body) = http(&c.addr, "POST", "/dedicated/server", Some(&c.token), Some(&json!([1, 2])));
    assert_eq!(status, 400, "{body}");
}

#[test]
fn deploy_an_ova_disk_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = start(&data);
    std::fs::create_dir_all(data.join("artifacts")).unwrap();
    std::fs::write(data.join("artifacts/vmlinuz"), b"k").unwrap();
    std::fs::write(data.join("artifacts/initramfs.img"), b"i").unwrap();
    stdout(&byoi(&c, &["server", "add", "app1", "--mac", "52:54:00:aa:bb:02"]));
    let raw = byoi(&c, &["deploy", "app1", "--url", "http://img/a.ova", "--type", "raw", "--ova-disk", "2"]);
    assert_eq!(raw.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&raw.stderr).contains("ovaDisk is only for images of type ova."));
    let out =
        stdout(&byoi(&c, &["deploy", "app1", "--url", "http://img/a.ova", "--type", "ova", "--ova-disk", "vmdisk2"]));
    assert!(out.starts_with("deployment 1 on app1: \"doing\""), "{out}");

    let t = agent_token(&c, "52:54:00:aa:bb:02");
    let inv = json!({"inventory": {"firmware": "legacy", "memoryBytes": 1u64 << 30, "disks": [{"name": "vda", "sizeBytes": 8u64 << 30, "serial": "D1", "transport": "virtio"}], "nics": []}});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/hello", Some(&t), Some(&inv)).0, 200);
    let (_, job) = http(&c.addr, "GET", "/agent/v1/job", Some(&t), None);
    let job: Value = serde_json::from_str(&job).unwrap();
    assert_eq!(
        (job["job"]["spec"]["imageType"].as_str(), job["job"]["spec"]["ovaDisk"].as_str()),
        (Some("ova"), Some("vmdisk2"))
    );
}

#[test]
fn serve_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, cert, key) = byoi_testbed::private_ca(d, "DNS:localhost,IP:127.0.0.1").unwrap();
    let tls =
        [std::ffi::OsStr::new("--tls-cert"), cert.as_os_str(), std::ffi::OsStr::new("--tls-key"), key.as_os_str()];
    let c = start_with(&d.join("data"), &tls, "https");
    let port = c.addr.rsplit(':').next().unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {}", c.token),
            &format!("https://localhost:{port}/dedicated/server"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]", "{}", String::from_utf8_lossy(&out.stderr));

    // The CLI trusts the private CA given with --ca-file, on top of the web PKI.
    let url = format!("https://127.0.0.1:{port}");
    let ca = ca.to_str().unwrap();
    stdout(&byoi_at(&url, &c.token, &["server", "add", "tls1", "--mac", "52:54:00:aa:bb:10", "--ca-file", ca]));
    let rows = table(&stdout(&byoi_at(&url, &c.token, &["servers", "--ca-file", ca])));
    assert_eq!(rows[1][..4], ["tls1", "52:54:00:aa:bb:10", "manual", "local"]);
    let err = stderr(&byoi_at(&url, &c.token, &["servers"]), 7, &c.token);
    assert!(err.contains(&format!("the controller at {url}/dedicated/server")), "{err}");
    assert!(err.contains("pass --ca-file") && err.contains("UnknownIssuer"), "{err}");

    // A CA file that is missing, holds no certificate, or a broken one.
    let missing = d.join("nowhere.pem");
    let err = stderr(&byoi_at(&url, &c.token, &["servers", "--ca-file", missing.to_str().unwrap()]), 2, &c.token);
    assert!(err.contains(&format!("reading the CA file {}", missing.display())), "{err}");
    let no_cert = key.as_path();
    let err = stderr(&byoi_at(&url, &c.token, &["servers", "--ca-file", no_cert.to_str().unwrap()]), 2, &c.token);
    assert!(err.contains(&format!("the CA file {} holds no certificate", no_cert.display())), "{err}");
    let broken = d.join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let err = stderr(&byoi_at(&url, &c.token, &["servers", "--ca-file", broken.to_str().unwrap()]), 2, &c.token);
    assert!(err.contains(&format!("the CA file {}", broken.display())), "{err}");
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let err = stderr(&byoi_at(&url, &c.token, &["servers", "--ca-file", garbage.to_str().unwrap()]), 2, &c.token);
    assert!(err.contains(&format!("the CA file {}", garbage.display())), "{err}");
}

#[test]
fn server_add_power_drivers_and_their_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&dir.path().join("data"));
    let macs = std::cell::Cell::new(0);
    let add = |name: &str, power: &[&str]| {
        macs.set(macs.get() + 1);
        let mac = format!("52:54:00:aa:cc:{:02x}", macs.get());
        byoi(&c, &[&["server", "add", name, "--mac", &mac], power].concat())
    };
    let redfish = [
        "--power",
        "redfish",
        "--power-arg",
        "url=https://bmc.example",
        "--power-arg",
        "user=admin",
        "--power-arg",
        "password=s3cret",
        "--power-arg",
        "system=System.Embedded.1",
        "--power-arg",
        "insecure=true",
    ];
    assert_eq!(stdout(&add("rf1", &redfish)).trim(), r#"added rf1 (["52:54:00:aa:cc:01"])"#);
    let (_, s) = http(&c.addr, "GET", "/dedicated/server/rf1", Some(&c.token), None);
    assert_eq!(serde_json::from_str::<Value>(&s).unwrap()["power"]["kind"], "redfish");
    stdout(&add("rf2", &redfish[..8]));
    stdout(&add(
        "ipmi1",
        &[
            "--power",
            "ipmi",
            "--power-arg",
            "host=10.0.0.9",
            "--power-arg",
            "user=admin",
            "--power-arg",
            "password=s3cret",
        ],
    ));

    // Refusals name the key and never the password; nothing reaches the controller.
    for (power, message) in [
        (&redfish[..6], "--power redfish needs --power-arg password=…"),
        (
            &["--power", "ipmi", "--power-arg", "user=admin", "--power-arg", "password=s3cret"][..],
            "--power ipmi needs --power-arg host=…",
        ),
        (
            &[
                "--power",
                "redfish",
                "--power-arg",
                "url=https://bmc",
                "--power-arg",
                "user=a",
                "--power-arg",
                "pasword=s3cret",
            ][..],
            "--power redfish takes no --power-arg pasword (it takes url, user, password, [system], [insecure])",
        ),
        (&["--power", "ipmi", "--power-arg", "s3cret"][..], "--power-arg 1 is not KEY=VALUE"),
        (&[&redfish[..], &["--power-arg", "insecure=yes"]].concat()[..], "--power-arg insecure is given twice"),
        (&["--power", "redfish", "--power-arg", "insecure=s3cret"][..], "--power-arg insecure is true or false"),
        (&["--power", "manual", "--power-arg", "password=s3cret"][..], "--power manual takes no --power-arg"),
        (&["--power", "command"][..], "--power command needs --power-arg name=…"),
    ] {
        let err = stderr(&add("bad", power), 2, &c.token);
        assert!(err.contains(message), "{power:?}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
    let (_, names) = http(&c.addr, "GET", "/dedicated/server", Some(&c.token), None);
    assert_eq!(names, r#"["ipmi1","rf1","rf2"]"#);
}

#[test]
fn cancel_and_deploy_report_a_failed_power_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let commands = dir.path().join("power-commands.json");
    std::fs::write(&commands, r#"{"broken": ["false"]}"#).unwrap();
    std::fs::set_permissions(&commands, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let c = start_with(&dir.path().join("data"), &["--power-commands".as_ref(), commands.as_os_str()], "http");
    stdout(&byoi(
        &c,
        &["server", "add", "b1", "--mac", "52:54:00:aa:dd:01", "--power", "command", "--power-arg", "name=broken"],
    ));
    let err = stderr(&byoi(&c, &["deploy", "b1", "--url", "http://img/x.raw"]), 3, &c.token);
    assert!(err.starts_with("error: could not power-cycle b1: false failed"), "{err}");
    // The deployment exists, ended in error (power-failed), so it can be cancelled.
    let out = byoi(&c, &["cancel", "b1"]);
    let err = stderr(&out, 3, &c.token);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deployment erased; the server boots into rescue");
    assert!(
        err.starts_with("could not power-cycle b1: false failed") && err.trim_end().ends_with("; reboot it by hand"),
        "{err}"
    );
    for cmd in ["deploy", "cancel", "status"] {
        let help = stdout(&Command::new(env!("CARGO_BIN_EXE_byoi")).args([cmd, "--help"]).output().unwrap());
        assert!(help.contains("Exit status:") && help.contains("3  "), "{cmd}: {help}");
    }
}

#[test]
fn deploy_on_a_server_with_manual_power_says_to_reboot_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&dir.path().join("data"));
    stdout(&byoi(&c, &["server", "add", "m1", "--mac", "52:54:00:aa:ee:01"]));
    let out = byoi(&c, &["deploy", "m1", "--url", "http://img/x.raw"]);
    let err = stderr(&out, 0, &c.token);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("deployment 1 on m1: \"doing\""));
    assert_eq!(err.trim(), "m1 has manual power: reboot it by hand now; it must netboot (PXE) to start the deployment");
    let out = byoi(&c, &["cancel", "m1"]);
    assert_eq!(
        stderr(&out, 0, &c.token).trim(),
        "m1 has manual power: reboot it by hand now; it must netboot (PXE) to boot into rescue"
    );

    // Errors never show the token: a refused one, an unreachable controller;
    // each has its exit status (2 refused, 5 not found, 7 unreachable).
    let err = stderr(&byoi_at(&format!("http://{}", c.addr), "wrong-token-123", &["servers"]), 2, "wrong-token-123");
    assert!(err.contains("(HTTP 401 Unauthorized)"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = stderr(&byoi_at(&format!("http://{closed}"), &c.token, &["status", "m1"]), 7, &c.token);
    assert!(err.contains(&format!("cannot reach the controller at http://{closed}/")), "{err}");
    let err = stderr(&byoi(&c, &["status", "nope"]), 5, &c.token);
    assert!(err.contains("nope"), "{err}");
}

/// `powerCycle` in the answers to POST and DELETE, which `byoi serve` does
/// not send yet: the CLI believes it and asks nothing more.
#[test]
fn the_controller_says_what_it_did_about_the_power() {
    const TOKEN: &str = "fake-token-42";
    let deploy = |answer: Value| {
        let (url, seen) = fake_controller(vec![(200, answer)]);
        let out = byoi_at(&url, TOKEN, &["deploy", "f1", "--url", "http://img/x.raw"]);
        let seen = seen.lock().unwrap().clone();
        (out, seen)
    };
    let started = json!({"deploymentId": 7, "status": "doing", "message": "starting"});
    for (cycle, hint) in [("done", false), ("skipped", false), ("manual", true)] {
        let mut answer = started.clone();
        answer["powerCycle"] = json!(cycle);
        let (out, seen) = deploy(answer);
        assert_eq!(seen, [r#"POST /dedicated/server/f1/bringYourOwnImage {"URL":"http://img/x.raw"}"#]);
        let err = stderr(&out, 0, TOKEN);
        assert_eq!(err.contains("f1 has manual power: reboot it by hand now"), hint, "{cycle}: {err}");
    }
    let (url, _) = fake_controller(vec![(
        502,
        json!({"message": "could not power-cycle f1: the BMC said no", "powerCycle": "failed", "powerError": "the BMC said no"}),
    )]);
    let err = stderr(&byoi_at(&url, TOKEN, &["deploy", "f1", "--url", "http://img/x.raw"]), 3, TOKEN);
    assert_eq!(err.trim(), "error: could not power-cycle f1: the BMC said no");

    let erased = json!({"message": "deployment erased; the server boots into rescue", "deploymentId": 7});
    for (cycle, code, said) in [
        (json!({"powerCycle": "done"}), 0, ""),
        (
            json!({"powerCycle": "manual"}),
            0,
            "f1 has manual power: reboot it by hand now; it must netboot (PXE) to boot into rescue",
        ),
        (
            json!({"powerCycle": "failed", "powerError": "the BMC said no"}),
            3,
            "could not power-cycle f1: the BMC said no; reboot it by hand",
        ),
    ] {
        let mut answer = erased.clone();
        answer.as_object_mut().unwrap().extend(cycle.as_object().unwrap().clone());
        let (url, seen) = fake_controller(vec![(200, answer)]);
        let out = byoi_at(&url, TOKEN, &["cancel", "f1"]);
        assert_eq!(stderr(&out, code, TOKEN).trim(), said);
        assert_eq!(seen.lock().unwrap().clone(), ["DELETE /dedicated/server/f1/bringYourOwnImage"]);
    }
}

/// SIGTERM: no new connections, the download in flight completes, the
/// write-ahead log is checkpointed into the database, exit status 0.
#[test]
fn sigterm_finishes_in_flight_requests_checkpoints_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let kernel: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(artifacts.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(artifacts.join("initramfs.img"), b"i").unwrap();
    let mut c = start(dir.path());
    let body = json!({"serviceName": "s1", "macs": ["52:54:00:00:00:09"]});
    assert_eq!(http(&c.addr, "POST", "/dedicated/server", Some(&c.token), Some(&body)).0, 201);
    let wal = dir.path().join("byoi.sqlite-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "the server is in the write-ahead log");

    let mut s = TcpStream::connect(&c.addr).unwrap();
    s.write_all(b"GET /artifacts/vmlinuz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut first = vec![0; 64 << 10];
    s.read_exact(&mut first).unwrap();
    let kill = Command::new("kill").args(["-TERM", &c.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(TcpStream::connect(&c.addr).is_err(), "no new connections after SIGTERM");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    first.extend_from_slice(&rest);
    let at = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..at]));
    assert!(first[at..] == kernel[..], "the whole kernel, {} of {} bytes", first.len() - at, kernel.len());

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = c.child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "still running 30 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0, "checkpointed");
    let db = rusqlite::Connection::open(dir.path().join("byoi.sqlite")).unwrap();
    let n: i64 = db.query_row("SELECT count(*) FROM servers", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

/// `byoi credentials`: lines for an `ovh.conf`, a table without secrets,
/// validation by URL, revocation.
#[test]
fn credentials_for_ovhcloud_sdks() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&dir.path().join("data"));
    let out = stdout(&byoi(&c, &["credentials", "add", "tf", "--rule", "GET:/dedicated/server/*"]));
    let lines: Vec<&str> = out.lines().collect();
    let keys: Vec<&str> = lines.iter().map(|l| l.split_once('=').unwrap().0).collect();
    assert_eq!(keys, ["application_key", "application_secret", "consumer_key"], "{out}");
    let secret = lines[1].split_once('=').unwrap().1;
    let consumer = lines[2].split_once('=').unwrap().1;
    let only = stdout(&byoi(&c, &["credentials", "add", "app", "--application-only"]));
    assert_eq!(only.lines().count(), 2, "{only}");
    let app_key = only.lines().next().unwrap().split_once('=').unwrap().1;
    let bad = byoi(&c, &["credentials", "add", "x", "--rule", "PATCH:/x"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("GET, POST, PUT, DELETE"));
    let taken = byoi(&c, &["credentials", "add", "tf"]);
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already exists"), "{taken:?}");

    // An application's own request, validated by its URL.
    let ask = json!({"accessRules": [{"method": "GET", "path": "/*"}]}).to_string();
    let mut s = TcpStream::connect(&c.addr).unwrap();
    write!(
        s,
        "POST /1.0/auth/credential HTTP/1.1\r\nHost: {}\r\nX-Ovh-Application: {app_key}\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ask}",
        c.addr,
        ask.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let url = body["validationUrl"].as_str().unwrap();
    assert_eq!(stdout(&byoi(&c, &["credentials", "validate", url])).trim(), "credential 2: validated");
    assert_eq!(byoi(&c, &["credentials", "validate", url]).status.code(), Some(5), "used once: not found");

    let table = stdout(&byoi(&c, &["credentials", "list"]));
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["APPLICATION", "KEY", "CREDENTIAL", "STATUS", "RULES", "LAST", "USE"], "{table}");
    assert_eq!((rows[1][0], rows[1][2], rows[1][3], rows[1][4]), ("tf", "1", "validated", "GET:/dedicated/server/*"));
    assert_eq!((rows[2][0], rows[2][2], rows[2][3]), ("app", "2", "validated"), "{table}");
    for secret in [secret, consumer] {
        assert!(!table.contains(secret), "no secret in the list");
    }
    assert_eq!(stdout(&byoi(&c, &["credentials", "revoke", "--credential", "2"])).trim(), "revoked credential 2");
    assert_eq!(
        stdout(&byoi(&c, &["credentials", "revoke", "tf"])).trim(),
        "revoked application tf and its consumer keys"
    );
    let table = stdout(&byoi(&c, &["credentials", "list"]));
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("app "), "{table}");
    assert_eq!(byoi(&c, &["credentials", "revoke", "tf"]).status.code(), Some(2));
}

/// `byoi --version` names the release and the commit it was built from.
#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_byoi")).arg("--version").output().unwrap();
    let version = stdout(&out);
    assert!(version.starts_with(&format!("byoi {} (", env!("CARGO_PKG_VERSION"))), "{version}");
    let head =
        Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    match head {
        Ok(h) if h.status.success() => {
            let head = String::from_utf8_lossy(&h.stdout).trim().to_owned();
            assert_eq!(version.trim(), format!("byoi {} ({head})", env!("CARGO_PKG_VERSION")));
        }
        // A source tarball: no commit to name.
        _ => assert!(version.contains("(unknown)"), "{version}"),
    }
}

/// `--log-format json`: every line an object; a request's lines carry its
/// id, a deployment's its server and id.
#[test]
fn json_log_lines_carry_the_request_and_the_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).unwrap();
    let json = [std::ffi::OsStr::new("--log-format"), std::ffi::OsStr::new("json")];
    let c = common::start_configured(&dir.path().join("data"), &json, "http", |cmd| {
        cmd.env("RUST_LOG", "info").stderr(file);
    });
    stdout(&byoi(&c, &["server", "add", "web1", "--mac", "52:54:00:00:00:01"]));
    let mut s = TcpStream::connect(&c.addr).unwrap();
    let body = json!({"URL": "http://img/x.raw"}).to_string();
    write!(
        s,
        "POST /dedicated/server/web1/bringYourOwnImage HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         X-Request-Id: req-42\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        c.addr,
        c.token,
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(c);
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requested =
        lines.iter().find(|l| l["fields"]["message"] == "deployment requested").unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(requested["span"]["id"], "req-42", "{requested}");
    assert_eq!((&requested["fields"]["server"], &requested["fields"]["deployment"]), (&json!("web1"), &json!(1)));
    assert_eq!(requested["level"], "INFO");
}

/// `byoi db backup` while the controller runs, and the restore the README
/// describes: the copy is private, checked, never overwrites, and a
/// controller started on it has the servers and credentials.
#[test]
fn back_up_while_serving_and_restore() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = start(&data);
    stdout(&byoi(&c, &["server", "add", "web1", "--mac", "52:54:00:00:00:01"]));
    let keys = stdout(&byoi(&c, &["credentials", "add", "tf"]));
    let copy = dir.path().join("backup.sqlite");
    let backup = |to: &Path| {
        Command::new(env!("CARGO_BIN_EXE_byoi"))
            .args(["db", "backup"])
            .arg(to)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    let said = stdout(&backup(&copy));
    assert!(said.contains(": schema ") && said.contains(", 1 servers, 0 deployments"), "{said}");
    assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
    let again = backup(&copy);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"), "{again:?}");
    let nowhere = Command::new(env!("CARGO_BIN_EXE_byoi"))
        .args(["db", "backup"])
        .arg(dir.path().join("x.sqlite"))
        .arg("--data-dir")
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("no database at"), "{nowhere:?}");
    assert!(!dir.path().join("nope").exists(), "nothing made where there was nothing");
    let token = c.token.clone();
    drop(c);

    // Restore: the file as the data directory's database, no WAL beside it.
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::copy(&copy, restored.join("byoi.sqlite")).unwrap();
    std::fs::write(restored.join("api-token"), &token).unwrap();
    let c = start(&restored);
    assert_eq!(table(&stdout(&byoi(&c, &["servers"])))[1][0], "web1");
    let listed = stdout(&byoi(&c, &["credentials", "list"]));
    assert!(listed.lines().nth(1).is_some_and(|l| l.starts_with("tf ")), "{listed}");
    let app_key = keys.lines().next().unwrap().split_once('=').unwrap().1;
    assert!(listed.contains(app_key), "the same keys work after a restore: {listed}");
}

/// `serve`'s configuration file: its settings become the flags' defaults,
/// a BYOI_* variable beats it and a flag beats both; `--check-config`
/// says where each came from; a typo is an error naming it; the controller
/// runs with what the file says.
#[test]
fn a_configuration_file_under_variables_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("byoi.toml");
    std::fs::write(
        &file,
        format!(
            "data-dir = {:?}\nagent_timeout = 60\nboot_timeout = 600\nmetrics_token = \"from-the-file\"\n",
            data.display()
        ),
    )
    .unwrap();
    let mode = |m: u32| std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
    let check = |env: &[(&str, &str)], flags: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_byoi"))
            .args(["serve", "--config"])
            .arg(&file)
            .arg("--check-config")
            .args(flags)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    // It holds a token: others may not read it, nobody but its owner write it.
    mode(0o644);
    let err = stderr(&check(&[], &[]), 2, "from-the-file");
    assert!(err.contains("it holds metrics_token and other users can read it (chmod o-r it)"), "{err}");
    mode(0o660);
    let err = stderr(&check(&[], &[]), 2, "from-the-file");
    assert!(err.contains("writable by other users than its owner (chmod go-w it)"), "{err}");
    mode(0o640);
    let out = stdout(&check(&[("BYOI_BOOT_TIMEOUT", "700")], &["--stall-timeout", "30", "--agent-timeout", "90"]));
    let line = |key: &str| out.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_default().to_owned();
    let shown = file.display().to_string();
    assert_eq!(line("agent_timeout"), r#"agent_timeout = "90"  # flag"#, "{out}");
    assert_eq!(line("boot_timeout"), r#"boot_timeout = "700"  # $BYOI_BOOT_TIMEOUT"#, "{out}");
    assert_eq!(line("stall_timeout"), r#"stall_timeout = "30"  # flag"#, "{out}");
    assert_eq!(line("metrics_token"), format!(r#"metrics_token = "(set)"  # {shown}"#), "{out}");
    assert_eq!(line("idle_timeout"), r#"idle_timeout = "30"  # default"#, "{out}");
    assert!(!out.contains("from-the-file"), "no secret printed");
    assert!(out.ends_with("configuration ok\n"), "{out}");

    std::fs::write(dir.path().join("typo.toml"), "agent_timout = 60\n").unwrap();
    let typo = Command::new(env!("CARGO_BIN_EXE_byoi"))
        .args(["serve", "--check-config", "--config"])
        .arg(dir.path().join("typo.toml"))
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&typo.stderr).contains(r#"unknown setting "agent_timout""#), "{typo:?}");
    std::fs::write(dir.path().join("half.toml"), "tls_cert = \"/etc/ssl/x.pem\"\n").unwrap();
    let half = Command::new(env!("CARGO_BIN_EXE_byoi"))
        .args(["serve", "--check-config", "--config"])
        .arg(dir.path().join("half.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&half.stderr).contains("tls_cert and tls_key go together"), "{half:?}");

    // The controller runs with the file's settings: its data directory, its
    // metrics token.
    let c = common::start_configured(&data, &[], "http", |cmd| {
        cmd.env("BYOI_CONFIG", &file);
    });
    let mut s = TcpStream::connect(&c.addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer from-the-file\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(data.join("byoi.sqlite").exists());
}

/// `byoi server show|set|delete`.
#[test]
fn server_show_set_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&dir.path().join("data"));
    stdout(&byoi(&c, &["server", "add", "web1", "--mac", "52:54:00:00:00:01"]));
    let shown: Value = serde_json::from_str(&stdout(&byoi(&c, &["server", "show", "web1", "-o", "json"]))).unwrap();
    assert_eq!((&shown["name"], &shown["macs"]), (&json!("web1"), &json!(["52:54:00:00:00:01"])));
    let yaml: Value = serde_yaml_ng::from_str(&stdout(&byoi(&c, &["server", "show", "web1", "-o", "yaml"]))).unwrap();
    assert_eq!(yaml, shown, "YAML says what JSON says");
    let rows = table(&stdout(&byoi(&c, &["server", "show", "web1"])));
    assert_eq!(rows[0], ["FIELD", "VALUE"]);
    assert!(rows.contains(&vec!["name".to_owned(), "web1".to_owned()]), "{rows:?}");
    assert!(rows.contains(&vec!["power".to_owned(), "manual".to_owned()]), "{rows:?}");
    let said = stdout(&byoi(
        &c,
        &[
            "server",
            "set",
            "web1",
            "--mac",
            "52:54:00:00:00:02",
            "--mac",
            "52:54:00:00:00:03",
            "--kernel-arg",
            "console=ttyS1",
        ],
    ));
    assert_eq!(said.trim(), r#"changed web1: ["52:54:00:00:00:02","52:54:00:00:00:03"] "manual" ["console=ttyS1"]"#);
    let said = stdout(&byoi(&c, &["server", "set", "web1", "--no-kernel-args"]));
    assert!(said.trim().ends_with("[]"), "{said}");
    let nothing = byoi(&c, &["server", "set", "web1"]);
    assert_eq!(nothing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to change"));
    stdout(&byoi(&c, &["deploy", "web1", "--url", "http://img/x.raw"]));
    let refused = byoi(&c, &["server", "delete", "web1"]);
    assert_eq!(refused.status.code(), Some(6), "a conflict");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"), "{refused:?}");
    assert_eq!(stdout(&byoi(&c, &["server", "delete", "web1", "--force"])).trim(), "server web1 deleted");
    assert_eq!(table(&stdout(&byoi(&c, &["servers"]))).len(), 1, "the header alone");
    assert_eq!(stdout(&byoi(&c, &["servers", "-o", "json"])), "[]\n");
}

/// Shell completions (bash's parsed by bash) and manual pages (one per
/// command, rendered by man when it is installed).
#[test]
fn completions_and_manual_pages() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_byoi")).args(args).output().unwrap();
    let bash = stdout(&run(&["completions", "bash"]));
    assert!(bash.contains("_byoi()") && bash.contains("credentials") && bash.contains("--check-config"));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("byoi.bash");
    std::fs::write(&script, &bash).unwrap();
    let parsed = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(parsed.status.success(), "bash cannot parse it: {}", String::from_utf8_lossy(&parsed.stderr));
    assert!(stdout(&run(&["completions", "zsh"])).starts_with("#compdef byoi"));
    assert!(stdout(&run(&["completions", "fish"])).contains("complete -c byoi"));
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));

    let man = dir.path().join("man");
    stdout(&run(&["manpages", man.to_str().unwrap()]));
    for page in ["byoi.1", "byoi-serve.1", "byoi-credentials-add.1", "byoi-db-backup.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        assert!(text.contains(".TH "), "{page}");
    }
    assert!(std::fs::read_to_string(man.join("byoi-serve.1")).unwrap().contains("check\\-config"));
    if let Ok(rendered) = Command::new("man").arg("-l").arg(man.join("byoi-serve.1")).env("MANWIDTH", "100").output() {
        if rendered.status.success() {
            assert!(String::from_utf8_lossy(&rendered.stdout).contains("--check-config"));
        }
    }
}

/// `deploy --wait` follows the deployment to its end (0 done, 1 failed);
/// with `--timeout` it gives up with 4 and the deployment goes on.
#[test]
fn deploy_waits_for_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(&dir.path().join("data"));
    let artifacts = dir.path().join("data/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::write(artifacts.join(f), f).unwrap();
    }
    stdout(&byoi(&c, &["server", "add", "web1", "--mac", "52:54:00:aa:bb:01"]));
    let gave_up = byoi(&c, &["deploy", "web1", "--url", "http://img/x.raw", "--wait", "--timeout", "2"]);
    assert_eq!(gave_up.status.code(), Some(4), "{gave_up:?}");
    assert!(String::from_utf8_lossy(&gave_up.stderr).contains("gave up waiting after 2 s"), "{gave_up:?}");
    assert!(stdout(&byoi(&c, &["status", "web1"])).contains("doing"), "it goes on");
    let usage = byoi(&c, &["deploy", "web1", "--url", "http://img/x.raw", "--timeout", "2"]);
    assert_eq!(usage.status.code(), Some(2), "--timeout needs --wait");
    stdout(&byoi(&c, &["cancel", "web1"]));

    // Waiting while the agent works: exit 0 once it is done.
    let waiting = Command::new(env!("CARGO_BIN_EXE_byoi"))
        .args(["deploy", "web1", "--url", "http://img/y.raw", "--wait", "--timeout", "120"])
        .args(["--controller", &format!("http://{}", c.addr), "--token", &c.token])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the second deployment is posted, the server netboots it.
    let posted = (0..100).any(|_| {
        let (_, v) = http(&c.addr, "GET", "/dedicated/server/web1/bringYourOwnImage", Some(&c.token), None);
        let v: Value = serde_json::from_str(&v).unwrap_or_default();
        (v["deploymentId"] == 2 && v["status"] == "doing") || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(posted, "the second deployment was posted");
    let t = agent_token(&c, "52-54-00-aa-bb-01");
    let inv = json!({"inventory": {"firmware": "legacy", "memoryBytes": 1u64 << 30, "disks": [{"name": "vda", "sizeBytes": 8u64 << 30, "serial": "D1", "transport": "virtio"}], "nics": []}});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/hello", Some(&t), Some(&inv)).0, 200);
    let (_, job) = http(&c.addr, "GET", "/agent/v1/job", Some(&t), None);
    let id = serde_json::from_str::<Value>(&job).unwrap()["job"]["deploymentId"].as_i64().unwrap();
    let done = json!({"deploymentId": id, "status": "done", "message": "deployed"});
    assert_eq!(http(&c.addr, "POST", "/agent/v1/result", Some(&t), Some(&done)).0, 200);
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"), "{out:?}");
}
