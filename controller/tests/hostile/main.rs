//! The adversarial suite: `byoi serve` as a real process on 127.0.0.1,
//! attacked as `docs/security.md` says an attacker on the provisioning
//! network, a tenant, or a holder of the API token would. "Another host"
//! is 127.0.0.2: the attacker's connections are bound to it, so the
//! controller sees a different source address than the operator's and the
//! real agent's (127.0.0.1).
#![allow(clippy::unwrap_used)]

mod common;
mod edge;
mod enlist;
mod signed;
mod tls;
mod trust;
mod validation;

use common::{request, Controller, ATTACKER};

/// The harness itself: the attacker's connections really come from
/// 127.0.0.2, and the controller answers them.
#[test]
fn the_attacker_reaches_the_controller_from_another_address() {
    let c = Controller::start(&[]);
    let s = common::connect(ATTACKER, c.addr).unwrap();
    assert_eq!(s.local_addr().unwrap().ip(), ATTACKER);
    let r = request(ATTACKER, c.addr, "GET", "/boot.ipxe", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("#!ipxe"), "{}", r.text());
    let r = request(ATTACKER, c.addr, "GET", "/dedicated/server", &[], None);
    assert_eq!(r.status, 401, "{}", r.text());
}
