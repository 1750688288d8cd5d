//! Enlistment on a hostile network: unknown machines may enlist only when
//! the operator said so (`--enlist`), in bounded numbers, through the boot
//! script's rate limits; a discovery token says hello once and does
//! nothing else; a reported machine's inventory cannot be replaced.

use serde_json::{json, Value};

use crate::common::{request, Controller, Response, ATTACKER, OPERATOR};

/// `from` fetches the boot script of `mac`: the answer, and its token.
fn netboot(c: &Controller, from: std::net::IpAddr, mac: &str) -> (Response, Option<String>) {
    let r = request(from, c.addr, "GET", &format!("/boot/{mac}"), &[], None);
    let token = r.text().split("byoi.token=").nth(1).map(|t| t.split_whitespace().next().unwrap().to_owned());
    (r, token)
}

/// An agent call from `from` with `token`.
fn agent(c: &Controller, from: std::net::IpAddr, token: &str, method: &str, what: &str, body: Option<&Value>) -> u16 {
    let auth = format!("Bearer {token}");
    let body = body.map(Value::to_string);
    let path = format!("/agent/v1/{what}");
    request(from, c.addr, method, &path, &[("Authorization", &auth)], body.as_deref().map(str::as_bytes)).status
}

/// A hello with one disk whose serial is `serial`, and one NIC.
fn hello(serial: &str, nic: &str) -> Value {
    json!({"version": "test", "inventory": {"firmware": "uefi", "memoryBytes": 1u64 << 30,
        "disks": [{"name": "vda", "sizeBytes": 10u64 << 30, "model": "m", "serial": serial, "wwn": "",
                   "rotational": false, "transport": "virtio", "logicalSectorSize": 512}],
        "nics": [{"name": "eth0", "mac": nic, "link": true}]}})
}

/// A controller started with `extra`, serving stand-in artifacts.
fn started(extra: &[&str]) -> Controller {
    let c = Controller::start(extra);
    let artifacts = c.data_dir().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::write(artifacts.join(f), f).unwrap();
    }
    c
}

/// Without `--enlist`, an unknown MAC gets no token and nothing is kept.
#[test]
fn unknown_machines_enlist_only_when_the_operator_says_so() {
    let c = started(&[]);
    let (r, token) = netboot(&c, ATTACKER, "52:54:00:dd:00:01");
    assert!(token.is_none() && r.text().contains("unknown MAC"), "{}", r.text());
    assert_eq!(agent(&c, ATTACKER, "made-up", "POST", "hello", Some(&hello("X", "52:54:00:dd:00:01"))), 401);
    assert_eq!(c.api("GET", "/dedicated/discovered", None).json(), json!([]));
    assert_eq!(request(ATTACKER, c.addr, "GET", "/dedicated/discovered", &[], None).status, 401);
}

/// A flood of made-up MACs from one address: the table stops at
/// `--enlist-max-machines`, the source's rate stops the flood.
#[test]
fn a_flood_of_made_up_macs_is_bounded() {
    let c = started(&["--enlist", "--enlist-max-machines", "50", "--boot-rate-per-source", "80"]);
    let mut statuses = std::collections::BTreeMap::<&str, u32>::new();
    for i in 0..90u32 {
        let (r, token) = netboot(&c, ATTACKER, &format!("52:54:00:ee:{:02x}:{:02x}", i / 256, i % 256));
        let kind = match (r.status, token) {
            (200, Some(_)) => "token",
            (200, None) if r.text().contains("unknown MAC") => "unknown",
            (429, _) => "limited",
            (s, _) => panic!("{s}: {}", r.text()),
        };
        *statuses.entry(kind).or_default() += 1;
    }
    assert_eq!(statuses, [("limited", 10), ("token", 50), ("unknown", 30)].into());
    assert_eq!(c.api("GET", "/dedicated/discovered", None).json().as_array().unwrap().len(), 50);
    // Others still reach the controller.
    assert_eq!(netboot(&c, OPERATOR, "52:54:00:ee:ff:ff").0.status, 200);
}

/// A discovery token says hello once, for its machine only, and opens no
/// other call; once a machine reported, nobody replaces its inventory, and
/// the operator sees where the report came from.
#[test]
fn a_discovery_token_reports_once_and_does_nothing_else() {
    let c = started(&["--enlist"]);
    let mac = "52:54:00:dd:00:02";
    let (_, token) = netboot(&c, OPERATOR, mac);
    let token = token.unwrap();
    for (method, what) in [("GET", "job"), ("POST", "heartbeat"), ("GET", "rescue")] {
        assert_eq!(agent(&c, ATTACKER, &token, method, what, None), 401, "{what}");
    }
    let progress = json!({"deploymentId": 1, "stage": "downloading", "bytesDone": 1});
    assert_eq!(agent(&c, ATTACKER, &token, "POST", "progress", Some(&progress)), 401);
    assert_eq!(agent(&c, OPERATOR, &token, "POST", "hello", Some(&hello("REAL", mac))), 200);
    assert_eq!(agent(&c, ATTACKER, &token, "POST", "hello", Some(&hello("FAKE", mac))), 401);
    let (r, stolen) = netboot(&c, ATTACKER, mac);
    assert!(stolen.is_none() && r.text().contains("waits to be adopted"), "{}", r.text());
    let m = c.api("GET", &format!("/dedicated/discovered/{mac}"), None).json();
    assert_eq!(m["hardware"]["diskGroups"][0]["disks"][0]["serial"], "REAL", "{m}");
    assert_eq!(m["address"], ATTACKER.to_string(), "the last call came from the attacker: {m}");
}
