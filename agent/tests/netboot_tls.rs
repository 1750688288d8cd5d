//! The netbooted agent's controller client over HTTPS with a private CA:
//! it talks to a controller whose certificate the CA file's CA signed, and
//! refuses, by name, one that another CA signed or that only the web PKI
//! would have to vouch for.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use byoi_agent::netboot::client::{ClientError, Controller, Trust};
use byoi_testbed::private_ca;
use byoi_wire::agent::Action;
use support::{Behaviour, Server};

/// A controller stand-in over HTTPS with a certificate for localhost from
/// a CA made in `dir`, answering `GET /agent/v1/job` with "wait"; returns
/// it, its base URL and the CA.
fn controller(dir: &Path) -> (Server, String, PathBuf) {
    let (ca, cert, key) = private_ca(dir, "DNS:localhost").unwrap();
    let server = Server::start_tls(&cert, &key);
    let job = br#"{"action":"wait","job":null}"#.to_vec();
    let url = server.serve("/agent/v1/job", job, Behaviour::default());
    let base = url.strip_suffix("/agent/v1/job").unwrap().to_owned();
    (server, base, ca)
}

#[test]
fn the_client_trusts_a_controller_signed_by_the_ca_file_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let (_ours, base, ca) = controller(&dir.path().join("ours"));

    let ctl = Controller::with_trust(std::slice::from_ref(&base), "t", Trust::CaFile(ca.clone())).unwrap();
    assert_eq!(ctl.job().unwrap().action, Action::Wait);
    assert_eq!(ctl.ca_file(), Some(ca.as_path()));

    // Another CA's file: refused, naming what was trusted.
    let (theirs, _, _) = private_ca(&dir.path().join("theirs"), "DNS:localhost").unwrap();
    let ctl = Controller::with_trust(std::slice::from_ref(&base), "t", Trust::CaFile(theirs.clone())).unwrap();
    let e = ctl.job().unwrap_err();
    assert!(matches!(&e, ClientError::Untrusted { trust: Trust::CaFile(p), .. } if *p == theirs), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{base}/agent/v1/job: the controller's certificate is not signed by a trusted CA (trusting the CAs of {})",
            theirs.display()
        )
    );

    // The web PKI does not vouch for a private CA's certificate either.
    let e = Controller::new(&base, "t").unwrap().job().unwrap_err();
    assert!(matches!(&e, ClientError::Untrusted { trust: Trust::WebPki, .. }), "{e:?}");
    assert!(e.to_string().ends_with("(trusting the web PKI)"), "{e}");
}

#[test]
fn a_ca_file_without_certificates_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e =
        Controller::with_trust(&["https://localhost:1".to_owned()], "t", Trust::CaFile(missing.clone())).unwrap_err();
    assert!(matches!(&e, ClientError::CaFile { path, .. } if *path == missing), "{e:?}");
    assert!(e.to_string().starts_with(&format!("cannot use the CA file {}: ", missing.display())), "{e}");

    let key_only = dir.path().join("key.pem");
    std::fs::write(&key_only, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let e =
        Controller::with_trust(&["https://localhost:1".to_owned()], "t", Trust::CaFile(key_only.clone())).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cannot use the CA file {}: no PEM `BEGIN CERTIFICATE` section", key_only.display())
    );
}

#[test]
fn the_initramfs_ca_is_used_when_it_is_there() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(Trust::of_initramfs(root.path()), Trust::WebPki);
    let baked = root.path().join(byoi_initramfs::CA_FILE);
    std::fs::create_dir_all(baked.parent().unwrap()).unwrap();
    std::fs::write(&baked, "PEM").unwrap();
    assert_eq!(Trust::of_initramfs(root.path()), Trust::CaFile(baked));
}
