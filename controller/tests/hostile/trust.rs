//! Agent trust: who gets a token, who holds a boot, whose reports count.
//! The real agent calls from 127.0.0.1, the attacker from 127.0.0.2.

use serde_json::{json, Value};

use crate::common::{request, Controller, Response, ATTACKER, OPERATOR};

const MAC: &str = "52:54:00:00:00:01";
const BOOT: &str = "/boot/52-54-00-00-00-01";

/// A controller with s1 registered (manual power), its artifacts in
/// place, and a deployment posted: a boot is expected.
fn posted(extra: &[&str]) -> Controller {
    let c = Controller::start(extra);
    let artifacts = c.data_dir().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::write(artifacts.join(f), f).unwrap();
    }
    let r = c.api("POST", "/dedicated/server", Some(&json!({"serviceName": "s1", "macs": [MAC]})));
    assert_eq!(r.status, 201, "{}", r.text());
    post(&c, json!({"URL": "https://img.example/a.raw?sig=SECRET", "httpHeaders": {"X-Auth": "SECRET"}}));
    c
}

fn post(c: &Controller, body: Value) {
    let r = c.api("POST", "/dedicated/server/s1/bringYourOwnImage", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Fetches the boot script from `from`: its agent token, if it has one.
fn netboot(c: &Controller, from: std::net::IpAddr) -> (Response, Option<String>) {
    let r = request(from, c.addr, "GET", BOOT, &[], None);
    let token = r.text().split("byoi.token=").nth(1).map(|t| t.split_whitespace().next().unwrap().to_owned());
    (r, token)
}

/// An agent call from `from` with `token`.
fn agent(
    c: &Controller,
    from: std::net::IpAddr,
    token: &str,
    method: &str,
    what: &str,
    body: Option<Value>,
) -> Response {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string());
    let path = format!("/agent/v1/{what}");
    request(from, c.addr, method, &path, &[("Authorization", &auth)], body.as_deref().map(str::as_bytes))
}

/// A hello whose inventory has one disk with `serial`.
fn hello(serial: &str) -> Value {
    json!({"version": "test", "inventory": {"firmware": "uefi", "memoryBytes": 1u64 << 30,
        "disks": [{"name": "vda", "sizeBytes": 10u64 << 30, "model": "m", "serial": serial, "wwn": "",
                   "rotational": false, "transport": "virtio", "logicalSectorSize": 512}],
        "nics": [{"name": "eth0", "mac": MAC, "link": true}]}})
}

fn status(c: &Controller) -> Value {
    c.api("GET", "/dedicated/server/s1/bringYourOwnImage", None).json()
}

/// The real agent boots, says hello and takes the job: its token and the
/// deployment id.
fn real_agent_runs_the_job(c: &Controller) -> (String, i64) {
    let (_, token) = netboot(c, OPERATOR);
    let token = token.expect("a boot is expected: the script carries a token");
    assert_eq!(agent(c, OPERATOR, &token, "POST", "hello", Some(hello("REAL"))).json()["action"], "continue");
    let job = agent(c, OPERATOR, &token, "GET", "job", None).json();
    assert_eq!(job["job"]["disk"]["serial"], "REAL", "{job}");
    (token, job["job"]["deploymentId"].as_i64().unwrap())
}

/// Tokens exist only while a boot is expected, and only a few per boot.
#[test]
fn boot_scripts_mint_tokens_only_while_a_boot_is_expected() {
    let c = Controller::start(&[]);
    let artifacts = c.data_dir().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::write(artifacts.join(f), f).unwrap();
    }
    c.api("POST", "/dedicated/server", Some(&json!({"serviceName": "s1", "macs": [MAC]})));
    // Nothing asked for: the attacker gets the local-boot script.
    let (r, token) = netboot(&c, ATTACKER);
    assert!(token.is_none() && r.text().contains("boots from its local disk"), "{}", r.text());
    post(&c, json!({"URL": "http://img.example/a.raw"}));
    // A boot is expected: three tokens (iPXE may retry), then none.
    let tokens: Vec<_> = (0..4).map(|_| netboot(&c, ATTACKER).1).collect();
    assert!(tokens[..3].iter().all(Option::is_some) && tokens[3].is_none(), "{tokens:?}");
    let (r, _) = netboot(&c, ATTACKER);
    assert!(r.text().contains("nothing to do for s1 (deploy): no boot is expected"), "{}", r.text());
    // The table holds no more than that.
    let db = rusqlite::Connection::open(c.data_dir().join("byoi.sqlite")).unwrap();
    let n: i64 = db.query_row("SELECT count(*) FROM agent_tokens WHERE server = 's1'", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 3);
}

/// The first hello claims the boot; a second agent fails the deployment,
/// naming both addresses, whichever came first.
#[test]
fn a_second_agent_fails_the_deployment_and_names_both_addresses() {
    for attacker_first in [false, true] {
        let c = posted(&[]);
        let (_, real) = netboot(&c, OPERATOR);
        let (_, stolen) = netboot(&c, ATTACKER);
        let (real, stolen) = (real.unwrap(), stolen.unwrap());
        let calls = [(OPERATOR, real.as_str(), "REAL"), (ATTACKER, stolen.as_str(), "FAKE")];
        let (first, second) = if attacker_first { (calls[1], calls[0]) } else { (calls[0], calls[1]) };
        let r = agent(&c, first.0, first.1, "POST", "hello", Some(hello(first.2)));
        assert_eq!(r.json()["action"], "continue", "{}", r.text());
        let r = agent(&c, second.0, second.1, "POST", "hello", Some(hello(second.2)));
        assert_eq!((r.status, &r.json()["action"]), (403, &json!("reboot")), "{}", r.text());
        let expected = format!("two agents claimed this server: {} (first) and {}; refusing both", first.0, second.0);
        assert_eq!(r.json()["message"], expected);
        let st = status(&c);
        assert_eq!(
            (&st["status"], &st["errorCode"], &st["message"]),
            (&json!("error"), &json!("agent-conflict"), &json!(expected))
        );
        // Neither gets the job, with its secrets.
        for (from, token, _) in calls {
            let r = agent(&c, from, token, "GET", "job", None);
            assert_eq!(r.status, 401, "{}", r.text());
            assert!(!r.text().contains("SECRET"));
        }
    }
}

/// A token that did not claim the boot, or the claimant's token used from
/// another address, changes nothing.
#[test]
fn reports_from_anyone_but_the_claimant_change_nothing() {
    let c = posted(&[]);
    let (_, spare) = netboot(&c, ATTACKER);
    let spare = spare.unwrap();
    let (real, id) = real_agent_runs_the_job(&c);
    let done = json!({"deploymentId": id, "status": "done", "message": "forged"});
    let progress = json!({"deploymentId": id, "stage": "finishing", "bytesDone": 99, "bytesTotal": 99});
    for (token, why) in [(&spare, "another agent claimed this boot"), (&real, "another agent claimed this boot")] {
        for (what, body) in [("result", &done), ("progress", &progress)] {
            let r = agent(&c, ATTACKER, token, "POST", what, Some(body.clone()));
            assert_eq!((r.status, &r.json()["message"]), (403, &json!(why)), "{what}: {}", r.text());
        }
        let r = agent(&c, ATTACKER, token, "GET", "job", None);
        assert_eq!(r.status, 403);
        assert!(!r.text().contains("SECRET"), "{}", r.text());
    }
    let st = status(&c);
    assert_eq!(
        (&st["status"], &st["stage"], &st["message"]),
        (&json!("doing"), &json!("downloading"), &json!("downloading"))
    );
    // The job is handed out once, even to its agent.
    let r = agent(&c, OPERATOR, &real, "GET", "job", None);
    assert_eq!(
        (r.status, &r.json()["message"]),
        (403, &json!(format!("the job of deployment {id} was already handed out")))
    );
    // A deploy boot's agent gets no rescue keys (the server's SSH host key).
    let r = agent(&c, OPERATOR, &real, "GET", "rescue", None);
    assert_eq!((r.status, &r.json()["message"]), (403, &json!("this is not a rescue boot")));
    assert!(r.json().get("hostKey").is_none());
    // The real agent's reports still count.
    let r = agent(&c, OPERATOR, &real, "POST", "progress", Some(progress));
    assert_eq!(r.json()["action"], "continue", "{}", r.text());
    assert_eq!(status(&c)["stage"], "finishing");
    let r = agent(
        &c,
        OPERATOR,
        &real,
        "POST",
        "result",
        Some(json!({"deploymentId": id, "status": "done", "message": "ok"})),
    );
    assert_eq!(r.json()["action"], "reboot");
    // The boot is over: every token of it is retired.
    let db = rusqlite::Connection::open(c.data_dir().join("byoi.sqlite")).unwrap();
    let n: i64 = db.query_row("SELECT count(*) FROM agent_tokens", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
    assert_eq!(agent(&c, OPERATOR, &real, "POST", "heartbeat", None).status, 401);
}

/// An operator pins the disk at POST: the job names it, and a missing one
/// fails the deployment instead of writing another.
#[test]
fn a_pinned_disk_is_the_one_the_job_names() {
    let c = posted(&[]);
    c.api("DELETE", "/dedicated/server/s1/bringYourOwnImage", None);
    post(&c, json!({"URL": "http://img.example/a.raw", "diskSerial": "OTHER"}));
    let (_, token) = netboot(&c, OPERATOR);
    let token = token.unwrap();
    agent(&c, OPERATOR, &token, "POST", "hello", Some(hello("REAL")));
    let r = agent(&c, OPERATOR, &token, "GET", "job", None);
    assert_eq!(r.json()["action"], "reboot", "{}", r.text());
    let st = status(&c);
    assert_eq!(st["message"], "no disk with serial \"OTHER\" and WWN \"\" on s1 (1 disks reported)", "{st}");
    let r = c.api(
        "POST",
        "/dedicated/server/s1/bringYourOwnImage",
        Some(&json!({"URL": "http://x/a", "diskSerial": "A\nB"})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    post(&c, json!({"URL": "http://img.example/a.raw", "diskSerial": "REAL"}));
    let (_, token) = netboot(&c, OPERATOR);
    let token = token.unwrap();
    agent(&c, OPERATOR, &token, "POST", "hello", Some(hello("REAL")));
    let job = agent(&c, OPERATOR, &token, "GET", "job", None).json();
    assert_eq!(job["job"]["disk"], json!({"serial": "REAL", "wwn": "", "sizeBytes": 10u64 << 30}));
}

/// `/boot/{mac}` is rate-limited per MAC and per source address.
#[test]
fn boot_scripts_are_rate_limited_per_mac_and_per_source() {
    let c = posted(&["--boot-rate-per-mac", "3", "--boot-rate-per-source", "5"]);
    for _ in 0..3 {
        assert_eq!(netboot(&c, ATTACKER).0.status, 200);
    }
    let (r, _) = netboot(&c, ATTACKER);
    assert_eq!((r.status, r.header("retry-after")), (429, Some("60")));
    assert_eq!(r.json()["message"], format!("too many boot requests for {MAC}; try again in a minute"));
    // The MAC is spent for everyone; other MACs are not.
    assert_eq!(netboot(&c, OPERATOR).0.status, 429);
    let other = |from| request(from, c.addr, "GET", "/boot/52-54-00-00-00-99", &[], None).status;
    assert_eq!(other(OPERATOR), 200);
    // The attacker's address is spent after five requests, whatever the
    // MACs (the refused one counts).
    assert_eq!(other(ATTACKER), 200);
    let r = request(ATTACKER, c.addr, "GET", "/boot/52-54-00-00-00-98", &[], None);
    assert_eq!(r.json()["message"], format!("too many boot requests from {ATTACKER}; try again in a minute"));
}

/// A deployment whose bytes stop moving fails, even while its agent keeps
/// reporting.
#[test]
fn a_stalled_deployment_fails() {
    let c = posted(&["--stall-timeout", "1"]);
    let (token, id) = real_agent_runs_the_job(&c);
    let progress = json!({"deploymentId": id, "stage": "downloading", "bytesDone": 512, "bytesTotal": 1024});
    for _ in 0..200 {
        agent(&c, OPERATOR, &token, "POST", "progress", Some(progress.clone()));
        if status(&c)["status"] != "doing" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let st = status(&c);
    assert_eq!(
        (&st["status"], &st["errorCode"], &st["message"]),
        (
            &json!("error"),
            &json!("stalled"),
            &json!("the deployment made no progress for 1 s (downloading, 512 of 1024 bytes)")
        ),
        "{st}"
    );
}
