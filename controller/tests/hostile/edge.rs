//! The connection edge: slow, idle, numerous and oversized clients from the
//! attacker's address, against a controller with short timeouts and small
//! caps; and the data directory's permissions.
//!
//! A timeout is asserted as "the connection was closed within ten times the
//! configured timeout", never as a duration.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{self, connect, request, Controller, Response, ATTACKER, OPERATOR};

/// Slack over a configured timeout before a test calls it missed.
const SLACK: u32 = 10;

/// A third host on the provisioning network.
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// Reads until the peer closes the connection, within `within`; returns
/// what came before. A reset counts as closed: the controller resets a
/// connection whose unread bytes it drops.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| panic!("still open after {within:?}; got {:?}", String::from_utf8_lossy(&got)));
        s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("still open after {within:?}; got {:?}", String::from_utf8_lossy(&got))
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// Reads one answer with a `Content-Length` from a connection left open.
fn read_one(s: &mut TcpStream) -> Response {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut raw = Vec::new();
    let mut b = [0u8];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed in the head: {:?}", String::from_utf8_lossy(&raw));
        raw.push(b[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    raw.extend_from_slice(&body);
    parse(&raw)
}

/// An answer from its bytes.
fn parse(raw: &[u8]) -> Response {
    let mut s: &[u8] = raw;
    common::read_response(&mut s).unwrap_or_else(|e| panic!("{e}"))
}

/// A connection from `from` that has been served a request and is kept
/// open (keep-alive): the controller has admitted it.
fn held(c: &Controller, from: IpAddr) -> TcpStream {
    let mut s = connect(from, c.addr).unwrap();
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: byoi\r\n\r\n").unwrap();
    let r = read_one(&mut s);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.header("connection"), Some("close"));
    s
}

/// Whether the controller closes a connection from `from` at once,
/// without an answer.
fn refused(c: &Controller, from: IpAddr) -> bool {
    let Ok(mut s) = connect(from, c.addr) else { return true };
    // Written into the kernel's buffer even if the controller has closed.
    let _ = s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: byoi\r\nConnection: close\r\n\r\n");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => got.is_empty(),
        Err(e) => panic!("neither served nor refused: {e}"),
    }
}

#[test]
fn half_a_header_is_closed_after_the_header_timeout_even_when_it_trickles() {
    let c = Controller::start(&["--header-timeout", "1", "--idle-timeout", "600"]);
    let limit = Duration::from_secs(1) * SLACK;

    let mut s = connect(ATTACKER, c.addr).unwrap();
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: byoi\r\nX-Slow").unwrap();
    assert_eq!(read_until_closed(&mut s, limit), b"", "nothing is owed to half a request");

    // A byte every 200 ms: every gap is short, the head is never done.
    let mut s = connect(ATTACKER, c.addr).unwrap();
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < limit, "a trickled head kept the connection for {limit:?}");
        if s.write_all(b"a").is_err() {
            break;
        }
        match s.read(&mut [0u8; 64]) {
            Ok(0) => break,
            Ok(n) => panic!("answered {n} bytes to half a request"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
}

#[test]
fn a_trickled_body_is_cut_off_after_the_body_timeout() {
    let c = Controller::start(&["--body-timeout", "1", "--idle-timeout", "600", "--header-timeout", "600"]);
    let limit = Duration::from_secs(1) * SLACK;
    // Bodies are read only after the token is checked: this client holds
    // the operator's token (stolen, or an operator on a very slow link).
    let mut s = connect(ATTACKER, c.addr).unwrap();
    let head = format!(
        "POST /dedicated/server HTTP/1.1\r\nHost: byoi\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        c.token
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    // A byte every 200 ms: a per-read timeout of 1 s would never fire.
    while got.is_empty() {
        assert!(start.elapsed() < limit, "a trickled body was still being read after {limit:?}");
        let _ = s.write_all(b" ");
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => panic!("closed without an answer"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
    got.extend(read_until_closed(&mut s, limit));
    let r = parse(&got);
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.json()["message"], "Request body not received within 1s (--body-timeout)");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let c = Controller::start(&["--idle-timeout", "1", "--header-timeout", "600"]);
    let limit = Duration::from_secs(1) * SLACK;
    let mut s = held(&c, ATTACKER);
    assert_eq!(read_until_closed(&mut s, limit), b"");
    // A connection that never sends a byte is idle from the start.
    let mut s = connect(ATTACKER, c.addr).unwrap();
    assert_eq!(read_until_closed(&mut s, limit), b"");
}

#[test]
fn connections_over_the_per_source_cap_are_closed_and_their_places_given_back() {
    let c = Controller::start(&["--max-connections-per-source", "3", "--idle-timeout", "600"]);
    let attacker: Vec<TcpStream> = (0..3).map(|_| held(&c, ATTACKER)).collect();
    assert!(refused(&c, ATTACKER), "a 4th connection from the attacker was served");
    assert!(refused(&c, ATTACKER), "a 5th connection from the attacker was served");
    // Another host is unaffected.
    let r = request(OPERATOR, c.addr, "GET", "/boot.ipxe", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.api("GET", "/dedicated/server", None).status, 200);

    // Once the attacker's connections end, their places are free again.
    drop(attacker);
    let start = Instant::now();
    while refused(&c, ATTACKER) {
        assert!(start.elapsed() < Duration::from_secs(10), "the closed connections still count");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _again: Vec<TcpStream> = (0..3).map(|_| held(&c, ATTACKER)).collect();
    assert!(refused(&c, ATTACKER));
}

#[test]
fn connections_over_the_total_cap_are_closed() {
    let c =
        Controller::start(&["--max-connections", "4", "--max-connections-per-source", "2", "--idle-timeout", "600"]);
    let _held: Vec<TcpStream> = [ATTACKER, ATTACKER, OTHER, OTHER].into_iter().map(|from| held(&c, from)).collect();
    assert!(refused(&c, OPERATOR), "a 5th connection was served");
}

/// Sends the head of a request announcing a 20 MiB body and 4 KiB of it;
/// returns the answer, which must come without the rest, on a connection
/// the controller then closes.
fn announce_20_mib(c: &Controller, path: &str, headers: &str) -> Response {
    let mut s = connect(ATTACKER, c.addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: byoi\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        20 << 20
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&[b' '; 4096]).unwrap();
    parse(&read_until_closed(&mut s, Duration::from_secs(30)))
}

#[test]
fn an_unauthenticated_20_mib_body_is_refused_without_being_read() {
    let c = Controller::start(&[]);
    c.api("POST", "/dedicated/server", Some(&json!({"serviceName": "web1", "macs": ["52:54:00:00:00:01"]})));

    for (path, auth) in [
        ("/dedicated/server/web1/bringYourOwnImage", "Authorization: Bearer wrong\r\n"),
        ("/dedicated/server/web1/bringYourOwnImage", ""),
        ("/dedicated/server", "Authorization: Bearer wrong\r\n"),
        ("/agent/v1/hello", "Authorization: Bearer wrong\r\n"),
        ("/agent/v1/result", ""),
    ] {
        let r = announce_20_mib(&c, path, auth);
        assert_eq!(r.status, 401, "{path} {auth:?}: {}", r.text());
    }
    // Routes without credentials take no body: 413 from the headers alone,
    // with the limit.
    for path in ["/boot.ipxe", "/boot/52:54:00:00:00:01", "/artifacts/vmlinuz", "/openapi.json", "/no/such/route"] {
        let r = announce_20_mib(&c, path, "");
        assert_eq!(r.status, 413, "{path}: {}", r.text());
        assert_eq!(r.json()["message"], "Request body larger than 4 KiB", "{path}");
    }
    // Nor one of unknown length.
    let mut s = connect(ATTACKER, c.addr).unwrap();
    s.write_all(b"POST /boot.ipxe HTTP/1.1\r\nHost: byoi\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n").unwrap();
    let r = parse(&read_until_closed(&mut s, Duration::from_secs(30)));
    assert_eq!(r.status, 413, "{}", r.text());
    // A small body there is no reason to refuse.
    let r = request(ATTACKER, c.addr, "POST", "/boot.ipxe", &[], Some(b"{}"));
    assert_eq!(r.status, 405, "{}", r.text());
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

/// The data directory and the files the controller writes in it.
fn private_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![dir.to_owned()];
    files.extend(["api-token", "byoi.sqlite", "byoi.sqlite-wal", "byoi.sqlite-shm"].map(|f| dir.join(f)));
    files
}

fn assert_private(dir: &Path) {
    for p in private_files(dir) {
        let expected = if p == dir { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), expected, "{} is {:o}", p.display(), mode(&p));
    }
}

#[test]
fn the_data_directory_is_private_from_the_first_start_and_repaired_at_the_next() {
    let dir = tempfile::tempdir().unwrap();
    // As an operator's `mkdir` under umask 022 leaves it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Controller::start_in(dir, &[]);
    let r = c.api("POST", "/dedicated/server", Some(&json!({"serviceName": "web1", "macs": ["52:54:00:00:00:01"]})));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_private(c.data_dir());

    let dir = c.stop();
    for p in private_files(dir.path()) {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(if p == dir.path() { 0o755 } else { 0o644 }))
            .unwrap();
    }
    let c = Controller::start_in(dir, &[]);
    assert_private(c.data_dir());
    assert_eq!(c.api("GET", "/dedicated/server/web1", None).status, 200);
}

#[test]
fn a_tls_handshake_that_never_comes_is_closed_after_its_timeout() {
    let certs = tempfile::tempdir().unwrap();
    let (_, cert, key) = byoi_testbed::private_ca(certs.path(), "DNS:localhost").unwrap();
    let c = Controller::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-handshake-timeout",
        "1",
        "--idle-timeout",
        "600",
        "--header-timeout",
        "600",
    ]);
    let mut s = connect(ATTACKER, c.addr).unwrap();
    // The first bytes of a ClientHello's record header, and no more.
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    assert_eq!(read_until_closed(&mut s, Duration::from_secs(1) * SLACK), b"");
}
