//! End-to-end harness: [`TestVm`] runs QEMU (TCG, under `timeout`, stopped
//! and reaped when dropped) and waits for lines on its serial console;
//! [`controller`] starts `byoi serve` in-process, its log kept by
//! [`controller_log`]; [`http_json`] talks to it; [`controller_tls`]
//! starts one with the API over HTTPS (a private CA, baked into its
//! initramfs) and netboot on a plain-HTTP listener of its own, and
//! [`https_json`] talks to that; [`Machine`] builds the
//! QEMU command line of a netbooting server. [`Machine`], the process
//! handling and the file server come from `byoi-testbed`, which `cargo
//! xtask demo` shares. The suites are in `tests/`.
//!
//! QEMU suites are slow: they run when `BYOI_E2E=1` (CI sets it, after
//! `cargo xtask initramfs`); otherwise they say so and pass without
//! checking anything, so `cargo test` stays fast on a laptop.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use byoi_testbed::{private_ca, FileServer, Qemu, TimedChild};
pub use byoi_testbed::{Firmware, Machine, OVMF_CODE, OVMF_VARS};

/// Whether the QEMU suites should run.
pub fn e2e_enabled(suite: &str) -> bool {
    if std::env::var("BYOI_E2E").is_ok_and(|v| v == "1") {
        return true;
    }
    eprintln!("{suite}: skipped, set BYOI_E2E=1 (after `cargo xtask initramfs`) to run the QEMU tests");
    false
}

/// The workspace's `target/byoi` (kernel, initramfs).
pub fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/byoi")
}

/// A QEMU virtual machine with its serial console captured. Dropping it,
/// also while a failed test unwinds, stops QEMU and reaps it.
pub struct TestVm {
    child: TimedChild,
    console: Arc<Mutex<String>>,
}

impl TestVm {
    /// Starts `qemu-system-x86_64 -accel tcg -m 1024 ARGS` (console on
    /// stdout) under `timeout LIMIT`; a guest reboot ends QEMU
    /// (`-no-reboot`).
    pub fn start(args: &[String], limit: Duration) -> TestVm {
        TestVm::spawn(Qemu::new(1024).no_reboot().args(args.iter().cloned()), limit)
    }

    /// [`TestVm::start`] where a guest reboot restarts the firmware, as on a
    /// real server; a guest power-off ends QEMU.
    pub fn start_rebooting(args: &[String], limit: Duration) -> TestVm {
        TestVm::spawn(Qemu::new(1024).args(args.iter().cloned()), limit)
    }

    fn spawn(qemu: Qemu, limit: Duration) -> TestVm {
        let mut child = TimedChild::spawn(qemu.command(limit).stdout(Stdio::piped()).stderr(Stdio::piped()))
            .expect("qemu-system-x86_64 (bookworm-backports, installed by `cargo xtask test`)");
        let console = Arc::new(Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.take_stdout().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.take_stderr().expect("stderr")),
        ] {
            let console = console.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if std::env::var("BYOI_E2E_ECHO").is_ok() {
                        let _ = std::io::stderr().write_all(text.as_bytes());
                    }
                    console.lock().unwrap_or_else(|p| p.into_inner()).push_str(&text);
                }
            });
        }
        TestVm { child, console }
    }

    /// The process id of the `timeout` running QEMU (QEMU is its child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for `needle` on the console; panics with the console on timeout
    /// or when the VM exits first.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let start = Instant::now();
        loop {
            let exited = self.child.try_wait().ok().flatten().is_some();
            let c = self.console();
            // Complete lines only while QEMU runs: the console arrives in
            // chunks, and a line still being written would be read cut short.
            let complete = if exited { &c[..] } else { c.rfind('\n').map_or("", |end| &c[..end]) };
            if let Some(line) = complete.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if start.elapsed() > within || exited {
                panic!("{needle:?} did not appear within {within:?}; console:\n{c}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the VM to exit; panics saying `what` did not happen, with
    /// the console, otherwise.
    pub fn expect_exit(&mut self, within: Duration, what: &str) {
        if !self.wait_exit(within) {
            panic!("{what} within {within:?}; console:\n{}", self.console());
        }
    }

    /// Waits for the VM to exit (it powers off or reboots with `-no-reboot`).
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl std::fmt::Debug for TestVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestVm").field("pid", &self.child.id()).finish()
    }
}

/// A test OS image made by `cargo xtask image tiny`.
pub fn image(name: &str) -> PathBuf {
    artifacts().join("images").join(name)
}

/// The log of every controller this process started (`tracing` output,
/// no colours): tests read which boot script a server was given.
pub fn controller_log() -> String {
    log_buffer().lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn log_buffer() -> &'static Mutex<String> {
    static LOG: std::sync::OnceLock<Mutex<String>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| Mutex::new(String::new()))
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::env::var("BYOI_E2E_ECHO").is_ok() {
            let _ = std::io::stderr().write_all(buf);
        }
        log_buffer().lock().unwrap_or_else(|p| p.into_inner()).push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts `byoi serve` in-process on 127.0.0.1:0 with `token`; returns the
/// address. Its artifacts are the workspace's `target/byoi`.
pub fn controller(data: &Path, token: &str) -> String {
    controller_with(data, token, artifacts())
}

/// [`controller`] serving the kernel and initramfs found in `artifacts`.
pub fn controller_with(data: &Path, token: &str, artifacts: PathBuf) -> String {
    start(options(data, token, artifacts)).addr.to_string()
}

/// [`controller`] with `--enlist`: a MAC no server has netboots the agent
/// in discover mode, with `kernel_args`.
pub fn controller_enlisting(data: &Path, token: &str, kernel_args: &[&str]) -> String {
    let enlist = byoi_controller::routes::discovered::Enlistment {
        kernel_args: kernel_args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    start(byoi_controller::server::ServeOptions { enlist: Some(enlist), ..options(data, token, artifacts()) })
        .addr
        .to_string()
}

/// One plain-HTTP listener on 127.0.0.1:0 serving everything, with the
/// tests' timeouts and rates.
fn options(data: &Path, token: &str, artifacts: PathBuf) -> byoi_controller::server::ServeOptions {
    byoi_controller::server::ServeOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        netboot_listen: None,
        data_dir: data.to_owned(),
        // On PostgreSQL when the run has a cluster (`cargo xtask test`'s
        // second pass), else SQLite in `data`.
        database: byoi_testbed::postgres_database(data).map(byoi_controller::db::Database::Postgres),
        api_token: Some(token.into()),
        artifacts: Some(artifacts),
        public_url: None,
        netboot_public_url: None,
        agent_urls: Vec::new(),
        tls: None,
        agent_timeout: Duration::from_secs(120),
        boot_timeout: Duration::from_secs(900),
        stall_timeout: Duration::from_secs(900),
        power_lease: byoi_controller::db::POWER_LEASE,
        boot_rate: byoi_controller::routes::netboot::BootRate { per_mac: 12, per_source: 120 },
        limits: byoi_controller::edge::Limits::default(),
        power: Default::default(),
        metrics_token: None,
        enlist: None,
    }
}

/// Runs `byoi serve` with `opts` on a thread of its own; returns where it
/// listens.
fn start(opts: byoi_controller::server::ServeOptions) -> byoi_controller::server::Bound {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let (bound, fut) = byoi_controller::server::serve(opts).await.expect("serve");
            let _ = tx.send(bound);
            fut.await;
        });
    });
    rx.recv().expect("controller address")
}

/// A controller with split listeners, from [`controller_tls`].
#[derive(Debug, Clone)]
pub struct TlsController {
    /// The API and agent protocol, over HTTPS (`127.0.0.1:PORT`).
    pub api: String,
    /// The netboot routes, over HTTP (`127.0.0.1:PORT`).
    pub netboot: String,
    /// The private CA that signed the API's certificate.
    pub ca: PathBuf,
}

/// Starts `byoi serve` in-process with the API and agent protocol over
/// HTTPS on one listener, with a certificate for 10.0.2.2 (the host as a
/// QEMU guest sees it) and 127.0.0.1 from a private CA made here, and the
/// netboot routes on a plain-HTTP listener of their own. It serves the
/// workspace's kernel, and its initramfs with that CA where `cargo xtask
/// initramfs --ca-file` puts it, so the agent trusts the controller.
pub fn controller_tls(data: &Path, token: &str) -> TlsController {
    let pki = data.join("pki");
    let served = data.join("artifacts");
    std::fs::create_dir_all(&served).expect("data directory");
    let (ca, cert, key) = private_ca(&pki, "IP:10.0.2.2,IP:127.0.0.1").expect("openssl");
    std::fs::copy(artifacts().join("vmlinuz"), served.join("vmlinuz")).expect("run `cargo xtask initramfs` first");
    let initramfs = std::fs::read(artifacts().join("initramfs.img")).expect("run `cargo xtask initramfs` first");
    let pem = std::fs::read(&ca).expect("CA");
    std::fs::write(served.join("initramfs.img"), with_ca(&pem, &initramfs)).expect("initramfs");
    let opts = byoi_controller::server::ServeOptions {
        netboot_listen: Some("127.0.0.1:0".parse().expect("address")),
        tls: Some((cert, key)),
        ..options(data, token, served)
    };
    let bound = start(opts);
    let netboot = bound.netboot.expect("a netboot listener").to_string();
    TlsController { api: bound.addr.to_string(), netboot, ca }
}

/// `initramfs` with `pem` at [`byoi_initramfs::CA_FILE`]: an uncompressed
/// cpio holding it, then the (compressed) initramfs. The kernel unpacks
/// concatenated archives in turn (`buffer-format.rst`), as it does an
/// early microcode cpio.
fn with_ca(pem: &[u8], initramfs: &[u8]) -> Vec<u8> {
    let mut a = byoi_initramfs::cpio::Archive::new();
    a.file(byoi_initramfs::CA_FILE, 0o644, pem.to_vec());
    let mut out = Vec::new();
    a.write(&mut out).expect("writing to memory");
    out.extend_from_slice(initramfs);
    out
}

/// [`http_json`] over HTTPS to `addr` (`127.0.0.1:PORT`), trusting only
/// the CA `ca`.
pub fn https_json(
    addr: &str,
    ca: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    json_exchange(rustls::StreamOwned::new(conn, tcp), addr, method, path, token, body)
}

/// One HTTP/1.1 JSON request; returns (status, JSON body or a string).
pub fn http_json(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let s = std::net::TcpStream::connect(addr).expect("connect");
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    json_exchange(s, addr, method, path, token, body)
}

/// One HTTP/1.1 JSON request to `addr` on `s`, which is closed after it;
/// returns (status, JSON body or a string), status 0 when no answer came.
fn json_exchange(
    mut s: impl Read + Write,
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("sending the request");
    let mut raw = Vec::new();
    // A peer that closes without close_notify (TLS) ends the read with an
    // error; the answer read so far is still whole.
    let _ = s.read_to_end(&mut raw);
    let resp = String::from_utf8_lossy(&raw).into_owned();
    let status = resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let text = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// Serves one file over HTTP/1.0 on 127.0.0.1 (the guest sees 10.0.2.2);
/// returns the port.
pub fn serve_file(data: Vec<u8>) -> u16 {
    FileServer::bytes(data).start().expect("file server")
}

/// Serves one file like [`serve_file`], at most `rate` bytes a second, so
/// a download lasts long enough to be interrupted.
pub fn serve_file_throttled(data: Vec<u8>, rate: usize) -> u16 {
    FileServer::bytes(data).throttled(rate).start().expect("file server")
}

/// Registers `name` with `mac`, posts `deployment` (None: no POST), and
/// returns the agent token of the script the controller serves now.
pub fn register_and_post(
    addr: &str,
    token: &str,
    name: &str,
    mac: &str,
    deployment: Option<&serde_json::Value>,
) -> String {
    let (s, body) = http_json(
        addr,
        "POST",
        "/dedicated/server",
        Some(token),
        Some(&serde_json::json!({"serviceName": name, "macs": [mac]})),
    );
    assert_eq!(s, 201, "{body}");
    if let Some(d) = deployment {
        let (s, body) =
            http_json(addr, "POST", &format!("/dedicated/server/{name}/bringYourOwnImage"), Some(token), Some(d));
        assert_eq!(s, 200, "{body}");
    }
    agent_token(addr, mac)
}

/// The agent token in the script the controller serves for `mac` now.
pub fn agent_token(addr: &str, mac: &str) -> String {
    let (_, script) = http_json(addr, "GET", &format!("/boot/{mac}"), None, None);
    let script = script.as_str().unwrap_or_default().to_owned();
    script.split("byoi.token=").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or_default().to_owned()
}

/// QEMU arguments to boot our kernel and initramfs directly.
pub fn direct_boot(cmdline: &str) -> Vec<String> {
    let a = artifacts();
    vec![
        "-kernel".into(),
        a.join("vmlinuz").display().to_string(),
        "-initrd".into(),
        a.join("initramfs.img").display().to_string(),
        "-append".into(),
        cmdline.into(),
    ]
}

/// `sgdisk -v` on a disk file: its output when it finds no problem, else
/// a panic with the output.
pub fn sgdisk_verify(disk: &Path) -> String {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().expect("sgdisk (package gdisk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains("No problems found"), "sgdisk -v {}:\n{text}", disk.display());
    text
}
