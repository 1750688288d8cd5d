//! The netbooted agent's warnings reach the operator: with PID 1's
//! subscriber installed, a download that breaks and resumes is logged on the
//! console and its WARN line travels with the next report to the
//! controller, which shows it in `GET …/bringYourOwnImage`. (Its own test
//! binary: the subscriber is global.)
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use byoi_agent::netboot::client::Controller;
use byoi_agent::netboot::{jobs, logs};
use byoi_e2e::{controller_with, http_json};
use serde_json::json;
use support::{disk_image, Behaviour, Server};

const TOKEN: &str = "op-token";

#[test]
fn a_resumed_download_is_reported_to_the_controller() {
    logs::install();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let artifacts = data.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::write(artifacts.join(f), b"unused").unwrap();
    }
    let addr = controller_with(&data, TOKEN, artifacts);
    let env = support::netboot_machine(dir.path(), 64 << 20, "disk-L");
    let image = disk_image(8 << 20, 9);
    let images = Server::start();
    let behaviour =
        Behaviour { ranges: true, etag: Some("\"1\"".into()), cut_after: Some(3 << 20), cuts: 1, ..Default::default() };
    let url = images.serve("/img.raw", image, behaviour) + "?X-Amz-Signature=s3cr3t";

    let server = json!({"serviceName": "vm1", "macs": ["52:54:00:12:34:57"]});
    assert_eq!(http_json(&addr, "POST", "/dedicated/server", Some(TOKEN), Some(&server)).0, 201);
    let deploy = json!({"URL": url});
    assert_eq!(http_json(&addr, "POST", "/dedicated/server/vm1/bringYourOwnImage", Some(TOKEN), Some(&deploy)).0, 200);
    let (_, script) = http_json(&addr, "GET", "/boot/52-54-00-12-34-57", None, None);
    let script = script.as_str().unwrap().to_owned();
    let token = script.split("byoi.token=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let ctl = Controller::new(&format!("http://{addr}"), &token).unwrap();
    let agent = std::thread::spawn(move || jobs::serve(&ctl, &env));

    let mut st = serde_json::Value::Null;
    for _ in 0..300 {
        st = http_json(&addr, "GET", "/dedicated/server/vm1/bringYourOwnImage", Some(TOKEN), None).1;
        if st["status"] != "doing" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(st["status"], "done", "{st}");
    assert_eq!(agent.join().unwrap(), jobs::Outcome::Reboot);
    let logs = st["agentLogs"].as_array().unwrap();
    let resumed = logs.iter().find(|l| l["message"].as_str().unwrap().starts_with("download broke; resuming"));
    let resumed = resumed.unwrap_or_else(|| panic!("no resume warning in {st}"));
    assert_eq!(
        (resumed["level"].as_str(), resumed["target"].as_str()),
        (Some("warn"), Some("byoi_agent::source::http"))
    );
    assert!(!st.to_string().contains("s3cr3t"), "the URL's signature leaked: {st}");
}
