//! What the suites that run the `byoi` binary share: `byoi serve` on a
//! free port, killed and reaped when dropped, and the `byoi` command line
//! against it.
#![allow(clippy::unwrap_used)]
// Each suite uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running `byoi serve`; dropping it kills and reaps it.
pub struct Controller {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The API token it generated.
    pub token: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `byoi serve` on a free port with `extra` arguments; reads the address
/// it prints (`listening on SCHEME://ADDR`) and the token it generated.
pub fn start_with(data_dir: &Path, extra: &[&std::ffi::OsStr], scheme: &str) -> Controller {
    start_configured(data_dir, extra, scheme, |_| {})
}

/// [`start_with`], the command changed by `configure` first (its log
/// level, where its stderr goes).
pub fn start_configured(
    data_dir: &Path,
    extra: &[&std::ffi::OsStr],
    scheme: &str,
    configure: impl FnOnce(&mut Command),
) -> Controller {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_byoi"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let prefix = format!("listening on {scheme}://");
    let addr = line.trim().strip_prefix(&prefix).unwrap_or_else(|| panic!("{line:?}")).to_owned();
    let token = std::fs::read_to_string(data_dir.join("api-token")).unwrap().trim().to_owned();
    Controller { child, addr, token }
}

/// The `byoi` command line against `c`.
pub fn byoi(c: &Controller, args: &[&str]) -> Output {
    byoi_at(&format!("http://{}", c.addr), &c.token, args)
}

/// The `byoi` command line against the controller at `url`.
pub fn byoi_at(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_byoi"))
        .args(args)
        .args(["--controller", url, "--token", token])
        .env_remove("BYOI_API_TOKEN")
        .env_remove("BYOI_CONTROLLER")
        .env_remove("BYOI_PROFILE")
        .env_remove("BYOI_PROFILE_FILE")
        // No profile of the person running the tests.
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .unwrap()
}

/// Stdout of a command that succeeded.
pub fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr of a command that ended with `code`, checked not to reveal `token`.
pub fn stderr(o: &Output, code: i32, token: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "stdout {:?}, stderr {err:?}", String::from_utf8_lossy(&o.stdout));
    assert!(!err.contains(token) && !String::from_utf8_lossy(&o.stdout).contains(token), "the token leaked: {err}");
    err
}

/// The agent token in a boot script (`byoi.token=…`).
pub fn token_in(script: &str) -> String {
    script
        .split("byoi.token=")
        .nth(1)
        .unwrap_or_else(|| panic!("no token in {script}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Netboots `mac`: the agent token its boot script carries.
pub fn agent_token(c: &Controller, mac: &str) -> String {
    token_in(&http(&c.addr, "GET", &format!("/boot/{mac}"), None, None).1)
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
pub fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    // The server may answer (413) and close before the body is all sent.
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let resp = String::from_utf8_lossy(&raw).into_owned();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}
