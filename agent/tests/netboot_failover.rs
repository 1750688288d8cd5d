//! An agent that knows several controllers (`byoi.controller=URL1,URL2`):
//! it fails over from a dead one or a busy one to a live one, and reads a
//! busy controller's `Retry-After`.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;

use byoi_agent::netboot::client::{ClientError, Controller, Trust};
use byoi_e2e::{controller, register_and_post};
use byoi_wire::agent::{Action, Heartbeat, Hello, Inventory};
use byoi_wire::BootMode;
use serde_json::json;

const TOKEN: &str = "op-token";

/// A URL nothing listens on.
fn dead() -> String {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}")
}

/// A controller that answers every request with `503` and `Retry-After:
/// 7`, counting them.
fn busy() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = seen.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = r#"{"message":"the controller is starting"}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn a_busy_controller_says_when_to_come_back() {
    let (url, _) = busy();
    let ctl = Controller::with_trust(&[url], "t", Trust::WebPki).unwrap();
    let e = ctl.job().unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)), "{e}");
    assert_eq!(e.to_string(), "controller busy (503): the controller is starting; asks to retry in 7s");
}

#[test]
fn the_agent_fails_over_to_a_live_controller_and_stays_there() {
    let dir = tempfile::tempdir().unwrap();
    let live = format!("http://{}", controller(&dir.path().join("data"), TOKEN));
    let deployment = json!({"URL": "http://127.0.0.1:9/img.raw", "checkSum": "0".repeat(64), "checkSumType": "sha256"});
    let token =
        register_and_post(live.trim_start_matches("http://"), TOKEN, "vm1", "52:54:00:12:34:56", Some(&deployment));
    let (busy, seen) = busy();
    let dead = dead();

    let ctl = Controller::with_trust(&[dead.clone(), busy.clone(), live.clone()], &token, Trust::WebPki).unwrap();
    assert_eq!(ctl.current(), dead);
    // The first call goes through the dead and the busy one to the live one.
    let inventory = Inventory { firmware: BootMode::Uefi, memory_bytes: 1 << 30, disks: Vec::new(), nics: Vec::new() };
    assert_eq!(ctl.hello(&Hello { inventory, version: "test".into() }).unwrap(), Action::Continue);
    assert_eq!(ctl.current(), live);
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The next calls go straight to the one that answered.
    ctl.heartbeat(&Heartbeat::default()).unwrap();
    ctl.job().unwrap();
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1, "the busy controller was called again");

    // No controller answers: the error is the last one's, and the next
    // call starts with the next controller in the list.
    let ctl = Controller::with_trust(&[busy.clone(), dead.clone()], &token, Trust::WebPki).unwrap();
    let e = ctl.job().unwrap_err();
    assert!(matches!(e, ClientError::Unreachable(_)), "{e}");
    assert_eq!(ctl.current(), dead);

    // A refusal is an answer: the agent does not shop around for a
    // controller that says yes.
    let ctl = Controller::with_trust(&[live.clone(), busy], "not-a-token", Trust::WebPki).unwrap();
    let e = ctl.job().unwrap_err();
    assert!(matches!(e, ClientError::Unauthorized { status: 401, .. }), "{e}");
    assert_eq!(ctl.current(), live);
}
