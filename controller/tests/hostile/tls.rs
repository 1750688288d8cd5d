//! Split listeners and a private CA: netboot over plain HTTP on a listener
//! of its own (what iPXE can fetch), the API and the agent protocol over
//! HTTPS with a certificate from the operator's CA. Neither listener
//! answers the other's routes, and the boot script fetched over HTTP sends
//! the agent to the HTTPS URL.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byoi_testbed::private_ca;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

use super::common::{read_response, request, Controller, Response, ATTACKER, OPERATOR};

/// One request over TLS to `to` from `from`, trusting only the CA `ca`;
/// an `Err` when the handshake or the exchange fails.
fn https(
    ca: &Path,
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> std::io::Result<Response> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::IpAddress(to.ip().into())).unwrap();
    let mut s = rustls::StreamOwned::new(conn, super::common::connect(from, to)?);
    let body = body.map(Value::to_string);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head += &format!("{n}: {v}\r\n");
    }
    if let Some(b) = &body {
        head += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len());
    }
    head += "\r\n";
    head += body.as_deref().unwrap_or("");
    s.write_all(head.as_bytes())?;
    read_response(&mut s)
}

/// A controller with the API and agent protocol over HTTPS (a certificate
/// for 127.0.0.1 from a CA made in `dir`) and netboot on its own HTTP listener, with artifacts;
/// `extra` arguments added. Returns it, its netboot address and the CA.
fn split(dir: &Path, extra: &[&str]) -> (Controller, SocketAddr, PathBuf) {
    let (ca, cert, key) = private_ca(&dir.join("ours"), "IP:127.0.0.1").unwrap();
    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("vmlinuz"), b"KERNEL").unwrap();
    std::fs::write(artifacts.join("initramfs.img"), b"INITRAMFS").unwrap();
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--netboot-listen",
        "127.0.0.1:0",
        "--artifacts",
        artifacts.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut c = Controller::start(&args);
    let line = c.stdout_line();
    let netboot = line.strip_prefix("netboot listening on http://").unwrap_or_else(|| panic!("{line:?}"));
    let netboot = netboot.trim().parse().unwrap();
    (c, netboot, ca)
}

/// An operator's API call over HTTPS.
fn api(c: &Controller, ca: &Path, method: &str, path: &str, body: Option<&Value>) -> Response {
    let auth = format!("Bearer {}", c.token);
    https(ca, OPERATOR, c.addr, method, path, &[("Authorization", &auth)], body).unwrap()
}

/// Registers `srv` (manual power), posts a deployment and returns the boot
/// script the netboot listener serves it now.
fn deploy_script(c: &Controller, ca: &Path, netboot: SocketAddr) -> String {
    let r =
        api(c, ca, "POST", "/dedicated/server", Some(&json!({"serviceName": "srv", "macs": ["52:54:00:00:15:01"]})));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = api(c, ca, "POST", "/dedicated/server/srv/bringYourOwnImage", Some(&json!({"URL": "https://img/x.qcow2"})));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(OPERATOR, netboot, "GET", "/boot/52-54-00-00-15-01", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[test]
fn netboot_listener_serves_scripts_and_artifacts_over_http_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (c, netboot, _) = split(dir.path(), &[]);
    let r = request(ATTACKER, netboot, "GET", "/boot.ipxe", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&format!("chain http://{netboot}/boot/")), "{}", r.text());
    for (path, body) in [("/artifacts/vmlinuz", "KERNEL"), ("/artifacts/initramfs.img", "INITRAMFS")] {
        let r = request(ATTACKER, netboot, "GET", path, &[], None);
        assert_eq!((r.status, r.text().as_str()), (200, body), "{path}");
    }
    // The API, the agent protocol and the document are not served here,
    // with or without credentials.
    let auth = format!("Bearer {}", c.token);
    for (method, path) in
        [("GET", "/dedicated/server"), ("POST", "/agent/v1/hello"), ("GET", "/agent/v1/job"), ("GET", "/openapi.json")]
    {
        let r = request(ATTACKER, netboot, method, path, &[("Authorization", &auth)], None);
        assert_eq!(r.status, 404, "{method} {path} on the netboot listener: {}", r.text());
        assert_eq!(r.json()["message"], format!("No route for {method} {path}"), "{}", r.text());
    }
}

#[test]
fn api_listener_speaks_https_with_the_private_ca_and_serves_no_netboot_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _, ca) = split(dir.path(), &[]);
    let r = api(&c, &ca, "GET", "/dedicated/server", None);
    assert_eq!((r.status, r.json()), (200, json!([])), "{}", r.text());
    let r = https(&ca, ATTACKER, c.addr, "GET", "/dedicated/server", &[], None).unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let r = https(&ca, ATTACKER, c.addr, "GET", "/openapi.json", &[], None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    for path in ["/boot.ipxe", "/boot/52-54-00-00-15-01", "/artifacts/vmlinuz", "/artifacts/initramfs.img"] {
        let r = https(&ca, ATTACKER, c.addr, "GET", path, &[], None).unwrap();
        assert_eq!(r.status, 404, "{path} on the API listener: {}", r.text());
    }
}

#[test]
fn a_client_trusting_another_ca_cannot_talk_to_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _, _) = split(dir.path(), &[]);
    let (theirs, _, _) = private_ca(&dir.path().join("theirs"), "IP:127.0.0.1").unwrap();
    let e = https(&theirs, ATTACKER, c.addr, "GET", "/dedicated/server", &[], None).unwrap_err();
    let tls = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    assert!(matches!(tls, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))), "{e:?}");
    // Nor plain HTTP: the listener only speaks TLS.
    assert!(super::common::connect(ATTACKER, c.addr)
        .and_then(|mut s| {
            s.write_all(b"GET /dedicated/server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            read_response(&mut s)
        })
        .is_err());
}

#[test]
fn the_boot_script_fetched_over_http_sends_the_agent_to_the_https_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (c, netboot, ca) = split(dir.path(), &[]);
    let script = deploy_script(&c, &ca, netboot);
    assert!(script.contains(&format!("\nkernel http://{netboot}/artifacts/vmlinuz ")), "{script}");
    assert!(script.contains(&format!("\ninitrd http://{netboot}/artifacts/initramfs.img\n")), "{script}");
    let controller = format!(" byoi.controller=https://127.0.0.1:{} ", c.addr.port());
    assert!(script.contains(&controller), "{script}");

    // The agent's token works over HTTPS, and the agent protocol is not on
    // the netboot listener.
    let token = script.split("byoi.token=").nth(1).unwrap().split_whitespace().next().unwrap();
    let auth = format!("Bearer {token}");
    let hello = json!({"inventory": {"firmware": "legacy", "memoryBytes": 1u64 << 30,
        "disks": [{"name": "vda", "sizeBytes": 8u64 << 30, "serial": "D1", "transport": "virtio"}], "nics": []}});
    let r = request(OPERATOR, netboot, "POST", "/agent/v1/hello", &[("Authorization", &auth)], None);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = https(&ca, OPERATOR, c.addr, "POST", "/agent/v1/hello", &[("Authorization", &auth)], Some(&hello)).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_public_urls_given_are_the_ones_the_script_names() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--public-url", "https://byoi.lab:8443/", "--netboot-public-url", "http://boot.lab:8081"];
    let (c, netboot, ca) = split(dir.path(), &extra);
    let script = deploy_script(&c, &ca, netboot);
    assert!(script.contains("\nkernel http://boot.lab:8081/artifacts/vmlinuz "), "{script}");
    assert!(script.contains("\ninitrd http://boot.lab:8081/artifacts/initramfs.img\n"), "{script}");
    assert!(script.contains(" byoi.controller=https://byoi.lab:8443 "), "{script}");
    let r = request(OPERATOR, netboot, "GET", "/boot.ipxe", &[], None);
    assert!(r.text().contains("chain http://boot.lab:8081/boot/"), "{}", r.text());
}
