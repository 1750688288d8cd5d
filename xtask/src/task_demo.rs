//! `cargo xtask demo [--bios] [--image tiny|debian]`: the whole product on
//! one machine. Builds the agent's initramfs and the tiny test OS (or the
//! Debian image with cloud-init), starts `byoi serve` on
//! loopback, registers a QEMU server whose power is driven over QMP (the
//! `command` power driver runs `xtask qmp`, named `qemu` in the controller's
//! `--power-commands` file), posts a deployment with a
//! ConfigDrive, and shows the VM's console and the deployment's progress
//! until the deployed OS has printed its ConfigDrive data.
//!
//! The VM is the e2e tests' `byoi_testbed::Machine`: OVMF with a writable
//! copy of its variables (SeaBIOS with `--bios`), QEMU's iPXE ROM on a
//! virtio NIC whose slirp DHCP `bootfile` is the controller's `boot.ipxe`,
//! a 2 GiB (Debian: 4 GiB) virtio disk; the image comes from the tests'
//! `FileServer`. Everything lives in `target/demo` (controller log, console
//! log, disk, variables).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use byoi_testbed::{FileServer, Firmware, Machine, Qemu, TimedChild};
use sha2::{Digest, Sha256};

use crate::{root, run, setup, task_image, task_initramfs};

const MAC: &str = "52:54:00:de:00:01";
const NAME: &str = "demo1";
const TOKEN: &str = "demo-token";

/// Kills a child process when dropped (`byoi serve`, which starts none of
/// its own).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cargo xtask demo` options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// SeaBIOS instead of OVMF (tiny image only)
    #[arg(long)]
    pub bios: bool,
    /// The OS to deploy: the tiny test OS, or Debian 12 with cloud-init (UEFI only)
    #[arg(long, value_enum, default_value_t = DemoImage::Tiny)]
    pub image: DemoImage,
}

/// What `cargo xtask demo` deploys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoImage {
    Tiny,
    Debian,
}

pub fn run_task(opts: &Options) -> anyhow::Result<()> {
    let (bios, debian) = (opts.bios, opts.image == DemoImage::Debian);
    if bios && debian {
        bail!("the Debian image boots with UEFI only");
    }
    let started = Instant::now();
    setup::host(&[], &[])?;
    task_initramfs::run_task(&task_initramfs::Options::default())?;
    let tiny = task_image::tiny()?;
    let (image, kind) = match (bios, debian) {
        (_, true) => (crate::image_debian::debian()?, "qcow2"),
        (true, false) => (tiny.bios_raw, "raw"),
        (false, false) => (tiny.uefi_qcow2, "qcow2"),
    };
    run(Command::new("cargo").args(["build", "-q", "-p", "byoi-controller"]))?;
    let byoi = root().join("target/debug/byoi");

    let dir = root().join("target/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let image_port = FileServer::file(&image).start().context("serving the image")?;
    let image_name = image.file_name().context("image name")?.to_string_lossy().into_owned();

    // The controller; its one power command drives the QEMU server over QMP.
    let qmp = dir.join("qmp.sock");
    let xtask = std::env::current_exe()?.display().to_string();
    let power_commands = dir.join("power-commands.json");
    let qmp_argv = [xtask.as_str(), "qmp", &qmp.display().to_string(), "{action}"];
    std::fs::write(&power_commands, serde_json::json!({ "qemu": qmp_argv }).to_string())?;
    std::fs::set_permissions(&power_commands, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::fs::File::create(dir.join("controller.log"))?;
    let _controller = Guard(
        Command::new(&byoi)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--api-token", TOKEN])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--artifacts")
            .arg(root().join("target/byoi"))
            .arg("--power-commands")
            .arg(&power_commands)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting byoi serve")?,
    );
    let controller = format!("http://127.0.0.1:{port}");
    let ready = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if ready.elapsed() > Duration::from_secs(20) {
            bail!("byoi serve did not start; see {}", dir.join("controller.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("demo: controller on {controller} (log: {})", dir.join("controller.log").display());
    let byoi_cmd = |args: &[&str]| {
        let mut c = Command::new(&byoi);
        c.args(args).env("BYOI_CONTROLLER", &controller).args(["--token", TOKEN]);
        c
    };

    // The server, powered off (QEMU paused) until the deployment's power
    // cycle starts it.
    let firmware = if bios { Firmware::Bios } else { Firmware::Uefi };
    let machine = Machine::new(&dir, firmware, "virtio-blk-pci", if debian { 4096 } else { 2048 }, MAC)
        .context("creating the server's disk")?;
    let qemu = Qemu::new(2048).paused().qmp(&qmp).args(machine.args(&format!("127.0.0.1:{port}")));
    let mut vm = TimedChild::spawn(qemu.command(Duration::from_secs(1800)).stdout(Stdio::piped()))
        .context("starting qemu-system-x86_64")?;
    let lines = console_lines(vm.take_stdout().context("QEMU stdout")?, &dir.join("console.log"))?;
    let ready = Instant::now();
    while std::os::unix::net::UnixStream::connect(&qmp).is_err() {
        if ready.elapsed() > Duration::from_secs(20) || vm.try_wait()?.is_some() {
            bail!("QEMU did not open its QMP socket {}", qmp.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run(&mut byoi_cmd(&[
        "server",
        "add",
        NAME,
        "--mac",
        MAC,
        "--power",
        "command",
        "--power-arg",
        "name=qemu",
        "--kernel-arg",
        "console=ttyS0",
    ]))?;

    // The deployment: its POST power-cycles the server.
    let user_data = dir.join("user-data");
    std::fs::write(&user_data, "#cloud-config\nruncmd:\n  - echo deployed by byoi\n")?;
    let sha = Sha256::digest(std::fs::read(&image)?).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let posted = Instant::now();
    run(&mut byoi_cmd(&[
        "deploy",
        NAME,
        "--url",
        &format!("http://10.0.2.2:{image_port}/{image_name}"),
        "--type",
        kind,
        "--checksum",
        &format!("sha256:{sha}"),
        "--hostname",
        "byoi-demo",
        "--ssh-key",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBy0iBy0iBy0iBy0iBy0iBy0iBy0iBy0iBy0iBy0iBy0 demo@byoi",
        "--user-data",
        &user_data.display().to_string(),
    ]))?;

    // 1. The console until the agent has its job.
    let mut hello = None;
    show_until(&lines, |l| {
        if l.contains(" firmware, ") && l.contains("MiB memory") {
            hello = Some(posted.elapsed());
        }
        l.contains("byoi: target ")
    })?;
    // 2. The deployment's progress.
    println!("demo: byoi status {NAME} --follow");
    let status = byoi_cmd(&["status", NAME, "--follow"]).status()?;
    if !status.success() {
        bail!("the deployment failed; console: {}", dir.join("console.log").display());
    }
    let deployed = posted.elapsed();
    // 3. The console until the deployed OS is done.
    for line in lines.try_iter() {
        if line.contains("byoi: done:") || line.contains("byoi: deployed") {
            println!("vm │ {line}");
        }
    }
    // The deployed OS prints its ConfigDrive data and powers off.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(900)) {
        println!("vm │ {line}");
    }
    vm.wait().context("waiting for QEMU to exit")?;
    println!(
        "demo: QEMU start → agent's first heartbeat {:.1} s; deployment done {:.1} s after the POST; \
         deployed OS reported at {:.1} s; whole demo {:.1} s",
        hello.unwrap_or_default().as_secs_f64(),
        deployed.as_secs_f64(),
        posted.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints console lines until `stop` says so; fails if QEMU ends first.
fn show_until(lines: &mpsc::Receiver<String>, mut stop: impl FnMut(&str) -> bool) -> anyhow::Result<()> {
    loop {
        let line = lines.recv_timeout(Duration::from_secs(600)).context("the VM went silent or ended")?;
        println!("vm │ {line}");
        if stop(&line) {
            return Ok(());
        }
    }
}

/// The VM's serial console as lines (escape sequences removed), also
/// written to `log`.
fn console_lines(out: impl Read + Send + 'static, log: &Path) -> anyhow::Result<mpsc::Receiver<String>> {
    let mut file = std::fs::File::create(log)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut raw = Vec::new();
        while reader.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            let _ = file.write_all(&raw);
            let text = strip_escapes(&String::from_utf8_lossy(&raw));
            raw.clear();
            let text = text.trim_end();
            if !text.is_empty() && tx.send(text.to_owned()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Removes ANSI escape sequences and carriage returns.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// `cargo xtask qmp` options.
#[derive(Debug, clap::Args)]
pub struct QmpOptions {
    /// QEMU's QMP socket
    pub socket: PathBuf,
    /// What the controller's `command` power driver substitutes for `{action}`
    #[arg(value_enum)]
    pub action: PowerAction,
}

/// A power action, as the controller names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PowerAction {
    /// Resume the VM (QMP `cont`)
    On,
    /// Pause the VM (QMP `stop`)
    Off,
    /// Reset and resume the VM (QMP `system_reset`, `cont`)
    Cycle,
    /// Print `on` when the VM runs, else `off` (QMP `query-status`)
    Status,
}

/// `cargo xtask qmp SOCKET on|off|cycle|status`: the demo's power driver.
/// "Off" pauses the VM, "on" resumes it, "cycle" resets and resumes it,
/// "status" prints `on` or `off`, as the controller reads a command
/// driver's answer.
pub fn qmp(opts: &QmpOptions) -> anyhow::Result<()> {
    if let Some(state) = qmp_run(&opts.socket, opts.action)? {
        println!("{state}");
    }
    Ok(())
}

/// Runs `action` over the QMP socket; for `status`, `on` or `off`.
fn qmp_run(socket: &Path, action: PowerAction) -> anyhow::Result<Option<&'static str>> {
    let commands: &[&str] = match action {
        PowerAction::On => &["cont"],
        PowerAction::Off => &["stop"],
        PowerAction::Cycle => &["system_reset", "cont"],
        PowerAction::Status => &["query-status"],
    };
    let mut state = None;
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    for cmd in std::iter::once("qmp_capabilities").chain(commands.iter().copied()) {
        writeln!(writer, "{{\"execute\": \"{cmd}\"}}")?;
        // Skip asynchronous events until the command's answer.
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("QMP closed the connection");
            }
            if line.contains("\"error\"") {
                bail!("QMP {cmd}: {}", line.trim());
            }
            if line.contains("\"return\"") {
                if cmd == "query-status" {
                    let v: serde_json::Value = serde_json::from_str(&line).context("QMP query-status")?;
                    state = Some(if v["return"]["running"] == true { "on" } else { "off" });
                }
                break;
            }
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QMP peer on a Unix socket answering `query-status` with `running`;
    /// returns the commands it was sent.
    fn fake_qmp(socket: &Path, running: bool) -> std::thread::JoinHandle<Vec<String>> {
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(stream).lines() {
                let line = line.unwrap();
                seen.push(line.clone());
                if line.contains("query-status") {
                    let status = if running { "running" } else { "paused" };
                    writeln!(w, r#"{{"event": "RESUME"}}"#).unwrap();
                    writeln!(w, r#"{{"return": {{"status": "{status}", "running": {running}}}}}"#).unwrap();
                } else {
                    writeln!(w, r#"{{"return": {{}}}}"#).unwrap();
                }
            }
            seen
        })
    }

    #[test]
    fn qmp_status_says_on_or_off_and_cycle_resets_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        for (running, want) in [(true, "on"), (false, "off")] {
            let socket = dir.path().join(format!("{want}.sock"));
            let peer = fake_qmp(&socket, running);
            assert_eq!(qmp_run(&socket, PowerAction::Status).unwrap(), Some(want));
            let seen = peer.join().unwrap();
            assert_eq!(seen, [r#"{"execute": "qmp_capabilities"}"#, r#"{"execute": "query-status"}"#]);
        }
        let socket = dir.path().join("cycle.sock");
        let peer = fake_qmp(&socket, true);
        assert_eq!(qmp_run(&socket, PowerAction::Cycle).unwrap(), None);
        assert_eq!(peer.join().unwrap()[1..], [r#"{"execute": "system_reset"}"#, r#"{"execute": "cont"}"#]);
    }
}
