//! Test support: an HTTP server on 127.0.0.1:0 that misbehaves on request,
//! deterministic disk-image fixtures, and `qemu-img` as the oracle.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub mod ova;

/// How a served file behaves.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Honour Range requests and advertise `Accept-Ranges: bytes`.
    pub ranges: bool,
    /// Strong ETag to send (and check in If-Range / If-Match).
    pub etag: Option<String>,
    /// Close the connection after this many body bytes, for the first
    /// `cuts` responses.
    pub cut_after: Option<u64>,
    pub cuts: usize,
    /// At the cut, go silent this long before closing (a stalled server).
    pub stall: Option<std::time::Duration>,
    /// Statuses answered to the first requests, in order.
    pub fail_first: Vec<u16>,
    /// Answer with a redirect to this path.
    pub redirect_to: Option<String>,
    /// Require this header (name lowercase, value) or answer 401.
    pub require: Option<(String, String)>,
    /// Send no Content-Length (close-delimited body).
    pub no_length: bool,
    /// After the first response, serve this content (with `etag2`).
    pub then_serve: Option<(Arc<Vec<u8>>, String)>,
    /// Send the body this many bytes at a time, pausing this long between
    /// pieces (a server that trickles to keep a download alive).
    pub trickle: Option<(usize, std::time::Duration)>,
}

struct Entry {
    data: Arc<Vec<u8>>,
    behaviour: Behaviour,
    hits: AtomicUsize,
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub status: u16,
}

/// The server; stops when dropped (the listener thread is detached).
pub struct Server {
    pub port: u16,
    scheme: &'static str,
    files: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
    pub log: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(None)
    }

    /// An HTTPS server with the certificate chain and key in these PEM files.
    pub fn start_tls(cert: &Path, key: &Path) -> Server {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<_> = CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Server::start_with(Some(Arc::new(config)))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Arc<Mutex<HashMap<String, Arc<Entry>>>> = Arc::default();
        let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (f, l) = (files.clone(), log.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (f, l, tls) = (f.clone(), l.clone(), tls.clone());
                thread::spawn(move || {
                    let _ = match tls {
                        None => handle(conn, &f, &l),
                        Some(config) => {
                            let Ok(session) = rustls::ServerConnection::new(config) else { return };
                            let mut stream = rustls::StreamOwned::new(session, conn);
                            let r = handle(&mut stream, &f, &l);
                            stream.conn.send_close_notify();
                            let _ = stream.flush();
                            r
                        }
                    };
                });
            }
        });
        Server { port, scheme, files, log }
    }

    pub fn serve(&self, path: &str, data: Vec<u8>, behaviour: Behaviour) -> String {
        self.serve_shared(path, Arc::new(data), behaviour)
    }

    pub fn serve_shared(&self, path: &str, data: Arc<Vec<u8>>, behaviour: Behaviour) -> String {
        let entry = Entry { data, behaviour, hits: AtomicUsize::new(0) };
        self.files.lock().unwrap().insert(path.to_owned(), Arc::new(entry));
        self.url(path)
    }

    pub fn url(&self, path: &str) -> String {
        let host = if self.scheme == "https" { "localhost" } else { "127.0.0.1" };
        format!("{}://{host}:{}{path}", self.scheme, self.port)
    }

    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.log.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        412 => "Precondition Failed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn handle(
    mut out: impl Read + Write,
    files: &Mutex<HashMap<String, Arc<Entry>>>,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    // Read the request head a byte at a time: nothing of the (empty) body
    // may be consumed, and the stream may be TLS.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if out.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    // Served by path; the query (a presigned URL's signature) is ignored.
    let target = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut headers = HashMap::new();
    for h in lines {
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let entry = files.lock().unwrap().get(&path).cloned();
    let record = |status: u16| log.lock().unwrap().push(Seen { path: path.clone(), headers: headers.clone(), status });
    let Some(entry) = entry else {
        record(404);
        return write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let b = &entry.behaviour;
    let hit = entry.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(&status) = b.fail_first.get(hit) {
        record(status);
        return write!(out, "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", reason(status));
    }
    if let Some(to) = &b.redirect_to {
        record(302);
        return write!(out, "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    if let Some((k, v)) = &b.require {
        if headers.get(k) != Some(v) {
            record(401);
            return write!(out, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
    let (data, etag) = match (&b.then_serve, hit) {
        (Some((d, e)), h) if h > 0 => (d.clone(), Some(e.clone())),
        _ => (entry.data.clone(), b.etag.clone()),
    };
    let len = data.len() as u64;
    let mut start = 0u64;
    let mut end = len;
    let mut status = 200;
    if let (Some(want), Some(have)) = (headers.get("if-match"), &etag) {
        if want != have {
            record(412);
            return write!(out, "HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
    if b.ranges {
        if let Some(range) = headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
            let if_range_ok = match headers.get("if-range") {
                None => true,
                Some(v) => Some(v) == etag.as_ref(),
            };
            if if_range_ok {
                let (s, e) = range.split_once('-').unwrap();
                start = s.parse().unwrap();
                if start >= len {
                    record(416);
                    return write!(
                        out,
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
                end = if e.is_empty() { len } else { (e.parse::<u64>().unwrap() + 1).min(len) };
                status = 206;
            }
        }
    }
    record(status);
    let mut head = format!("HTTP/1.1 {status} {}\r\nConnection: close\r\n", reason(status));
    if b.ranges {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    if let Some(e) = &etag {
        head.push_str(&format!("ETag: {e}\r\n"));
    }
    if status == 206 {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{len}\r\n", end - 1));
    }
    if !b.no_length {
        head.push_str(&format!("Content-Length: {}\r\n", end - start));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    let body = &data[start as usize..end as usize];
    let cut = b.cut_after.filter(|_| hit < b.cuts + b.fail_first.len());
    match cut {
        Some(n) if (n as usize) < body.len() => {
            out.write_all(&body[..n as usize])?;
            out.flush()?;
            if let Some(d) = b.stall {
                thread::sleep(d);
            }
            // An abrupt close, as a dropped connection would look.
            return Ok(());
        }
        _ => match b.trickle {
            Some((piece, pause)) => {
                for p in body.chunks(piece) {
                    out.write_all(p)?;
                    out.flush()?;
                    thread::sleep(pause);
                }
            }
            None => out.write_all(body)?,
        },
    }
    out.flush()
}

/// xorshift64*: deterministic bytes without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Source options for a test server that behaves: short back-off and
/// timeouts, so that a failure shows in seconds.
pub fn quick_retries() -> byoi_agent::source::SourceOptions {
    byoi_agent::source::SourceOptions {
        initial_backoff: std::time::Duration::from_millis(20),
        read_timeout: std::time::Duration::from_secs(10),
        attempts: 4,
        ..Default::default()
    }
}

/// A raw disk image of `size` bytes: an MBR, then extents of random data
/// and zeros of uneven lengths (some not sector aligned), like a fresh OS
/// install.
pub fn disk_image(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut img = vec![0u8; size];
    // MBR with one Linux partition covering the disk.
    img[446 + 4] = 0x83;
    img[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    img[446 + 12..446 + 16].copy_from_slice(&((size / 512) as u32 - 2048).to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    let mut pos = 4096;
    while pos < size {
        let len = (rng.below(768 << 10) as usize + 1).min(size - pos);
        if rng.below(10) < 4 {
            rng.fill(&mut img[pos..pos + len]);
        } else if rng.below(4) == 0 && len > 8 {
            // A zero extent with a few stray bytes (not a whole zero grain).
            let at = pos + rng.below(len as u64 - 8) as usize;
            img[at..at + 8].copy_from_slice(&rng.next().to_le_bytes());
        }
        pos += len;
    }
    img
}

/// Runs a command that must succeed; returns its stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `qemu-img convert -f raw -O qcow2 OPTS raw out`.
pub fn to_qcow2(raw: &Path, out: &Path, extra: &[&str]) {
    run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).args(extra).arg(raw).arg(out));
}

/// What the oracle says the image's disk contents are.
pub fn qemu_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("oracle.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(&out));
    std::fs::read(out).unwrap()
}

/// A target file of `size` bytes full of junk, so every byte the deploy
/// leaves alone shows.
pub fn junk_target(dir: &Path, size: usize) -> PathBuf {
    let p = dir.join("target.img");
    std::fs::write(&p, vec![0xa5u8; size]).unwrap();
    p
}

/// Asserts the first `len` bytes of the target equal `want`, reporting the
/// first difference rather than dumping megabytes.
pub fn assert_prefix_eq(target: &Path, want: &[u8], what: &str) {
    let got = std::fs::read(target).unwrap();
    assert!(got.len() >= want.len(), "{what}: target shorter than image");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i:#x}: got {:#04x}, want {:#04x}", got[i], want[i]);
    }
}

/// Whether the first and last MiB of the file are all zero (nothing bootable).
pub fn ends_wiped(target: &Path) -> bool {
    let got = std::fs::read(target).unwrap();
    let mib = 1 << 20;
    got[..mib].iter().all(|&b| b == 0) && got[got.len() - mib..].iter().all(|&b| b == 0)
}

/// A fake /sys, /proc and /dev with one virtio disk of `disk` bytes, serial
/// `serial`, backed by a file: the machine of the job-loop tests.
pub fn netboot_machine(root: &Path, disk: u64, serial: &str) -> byoi_agent::netboot::jobs::Env {
    let blk = root.join("sys/devices/pci0000:00/0000:00:05.0/virtio2/block/vda");
    std::fs::create_dir_all(blk.join("queue")).unwrap();
    std::fs::write(blk.join("size"), format!("{}\n", disk / 512)).unwrap();
    std::fs::write(blk.join("serial"), format!("{serial}\n")).unwrap();
    std::fs::write(blk.join("queue/logical_block_size"), "512\n").unwrap();
    std::fs::create_dir_all(root.join("sys/block")).unwrap();
    std::os::unix::fs::symlink(&blk, root.join("sys/block/vda")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(root.join("proc/meminfo"), "MemTotal: 2097152 kB\n").unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("dev/vda"), vec![0xa5u8; disk as usize]).unwrap();
    byoi_agent::netboot::jobs::Env {
        sys: root.join("sys"),
        proc: root.join("proc"),
        dev: root.join("dev"),
        efivars: None,
        tick: std::time::Duration::from_millis(200),
        max_backoff: std::time::Duration::from_secs(1),
    }
}
