//! The harness: a controller process, and a raw HTTP/1.1 client whose
//! connections come from a chosen loopback address.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The operator's and the real agent's address.
pub const OPERATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// The attacker's: "another host" on the provisioning network.
pub const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// `byoi serve` on 127.0.0.1, killed on drop.
pub struct Controller {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The API token it generated.
    pub token: String,
    /// Its data directory (dropped with it).
    pub dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    /// Starts `byoi serve --listen 127.0.0.1:0` on a fresh data directory
    /// with `extra` arguments.
    pub fn start(extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        Controller::start_in(dir, extra)
    }

    /// Starts it on `dir`.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Controller {
        Controller::start_with_env(dir, extra, &[])
    }

    /// Starts it on `dir` with `env` added to its environment.
    pub fn start_with_env(dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Controller {
        let mut child = Command::new(env!("CARGO_BIN_EXE_byoi"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = read_line(child.stdout.as_mut().unwrap());
        let addr = line.rsplit("://").next().unwrap_or_else(|| panic!("{line:?}")).trim().parse().unwrap();
        let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap().trim().to_owned();
        Controller { child, addr, token, dir }
    }

    /// Kills it (SIGKILL: its files stay as a crash leaves them) and
    /// hands back its data directory, to start another on.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// The next line the controller printed on stdout (`start` read the
    /// first).
    pub fn stdout_line(&mut self) -> String {
        read_line(self.child.stdout.as_mut().unwrap())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// An API call from the operator's address with the API token.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let auth = format!("Bearer {}", self.token);
        let body = body.map(|b| b.to_string());
        request(OPERATOR, self.addr, method, path, &[("Authorization", &auth)], body.as_deref().map(str::as_bytes))
    }
}

/// One line of the child's stdout, unbuffered (the rest stays readable).
fn read_line(r: &mut impl Read) -> String {
    let mut line = Vec::new();
    let mut b = [0u8];
    while r.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// A TCP connection to `to` from the loopback address `from`.
pub fn connect(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    /// Its status code.
    pub status: u16,
    /// Its headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection from `from`, `Connection: close`.
pub fn request(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut s = connect(from, to).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head += &format!("{n}: {v}\r\n");
    }
    if let Some(b) = body {
        head += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len());
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b).unwrap();
    }
    read_response(&mut s).unwrap()
}

/// Reads one `Connection: close` answer to its end.
pub fn read_response(s: &mut impl Read) -> std::io::Result<Response> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {:?}", String::from_utf8_lossy(&raw))))
}

fn parse(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body)?;
    }
    Some(Response { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).ok()?.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(eol + 2..eol + 2 + n)?);
        b = b.get(eol + 4 + n..)?;
    }
}
