//! `cargo xtask test`: everything CI checks, in order: the host's packages
//! (installed when missing), the Python environment of the OVHcloud SDK
//! tests (made when missing, see [`crate::python`]; its interpreter is
//! passed on as `BYOI_PYTHON`), formatting and clippy, the agent's kernel
//! and initramfs, the test OS images, then every test with the QEMU suites
//! enabled (`BYOI_E2E=1`), then the Debian package, which it installs,
//! runs from its unit, upgrades and purges ([`crate::task_dist`], as
//! root). Between the two, the controller's suites that take a database
//! run again on a PostgreSQL cluster of the run's own
//! ([`crate::postgres`]). `--slow` adds the real Debian image and the
//! suite that boots it (`BYOI_E2E_SLOW=1`).
//!
//! Tests leave nothing behind: a QEMU that the tests started and that still
//! runs when they are done fails the task (and is killed). The tests'
//! processes are told from anyone else's QEMU by a variable in their
//! environment, [`RUN_VAR`], that every process of this run inherits.

use std::process::Command;
use std::time::SystemTime;

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Set for `cargo test` to an id of this run; QEMU inherits it.
const RUN_VAR: &str = "BYOI_XTASK_TEST_RUN";

/// The name (`/proc/PID/comm`, 15 bytes at most) of a leftover QEMU starts so.
const QEMU_COMM: &str = "qemu-system";

/// `cargo xtask test` options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Also build the Debian image and run the suite that boots it (BYOI_E2E_SLOW=1)
    #[arg(long)]
    pub slow: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let slow = opts.slow;
    crate::setup::host(&[], &[])?;
    let python = crate::python::venv()?;
    crate::task_lint::run()?;
    crate::task_initramfs::run_task(&crate::task_initramfs::Options::default())?;
    crate::task_image::tiny()?;
    let mut test = Command::new("cargo");
    test.args(["test", "--workspace"]).env("BYOI_E2E", "1").env(crate::python::PYTHON_VAR, &python);
    if slow {
        crate::image_debian::debian()?;
        test.env("BYOI_E2E_SLOW", "1");
    }
    let run_id =
        format!("{}-{}", std::process::id(), SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_nanos());
    test.env(RUN_VAR, &run_id);
    let tests = crate::run(&mut test).and_then(|()| on_postgres(&run_id));
    let left = marked(QEMU_COMM, RUN_VAR, &run_id)?;
    if left.is_empty() {
        tests?;
        return dist();
    }
    for (pid, _) in &left {
        match kill(Pid::from_raw(i32::try_from(*pid)?), Signal::SIGKILL) {
            // Gone meanwhile: listed all the same.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => eprintln!("xtask test: killing QEMU {pid}: {e}"),
        }
    }
    let list: Vec<String> = left.iter().map(|(pid, cmdline)| format!("  {pid} {cmdline}")).collect();
    let msg = format!(
        "{} QEMU process(es) started by the tests outlived them, now killed (a TestVm never dropped, or QEMU \
         run without byoi_testbed::TimedChild):\n{}",
        left.len(),
        list.join("\n")
    );
    eprintln!("xtask test: {msg}");
    match tests {
        Ok(()) => anyhow::bail!(msg),
        Err(e) => Err(e.context(msg)),
    }
}

/// The controller's suites that take a database, and the agent's against
/// an in-process controller, again on PostgreSQL.
fn on_postgres(run_id: &str) -> anyhow::Result<()> {
    let cluster = crate::postgres::Cluster::start()?;
    let mut test = Command::new("cargo");
    test.args(["test", "-p", "byoi-controller", "--test", "api", "--test", "replicas"])
        .args(["-p", "byoi-agent", "--test", "netboot", "--test", "netboot_logs", "--test", "netboot_failover"])
        .env("BYOI_TEST_POSTGRES", &cluster.url)
        .env(RUN_VAR, run_id);
    crate::run(&mut test)
}

/// The Debian package, installed on this machine, run from its unit,
/// upgraded and purged (`dist --check`); as root only, as it installs.
fn dist() -> anyhow::Result<()> {
    if !crate::setup::is_root() {
        println!("xtask test: not root, so the package is built but not installed (cargo xtask dist --check)");
        return crate::task_dist::run_task(&crate::task_dist::Options { check: false });
    }
    crate::task_dist::run_task(&crate::task_dist::Options { check: true })
}

/// The processes whose name starts with `name` and whose environment
/// holds `var=value`: `(pid, command line)`.
fn marked(name: &str, var: &str, value: &str) -> anyhow::Result<Vec<(u32, String)>> {
    let want = format!("{var}={value}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A process that exits meanwhile has no files left, and another
        // user's environment is not ours to read: neither is ours.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else { continue };
        if !comm.starts_with(name) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|&b| b == 0).any(|e| e == want.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end().to_owned()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_marked_processes_only() {
        let id = format!("test-{}", std::process::id());
        let mut marked_child = Command::new("sleep").arg("30").env(RUN_VAR, &id).spawn().unwrap();
        let mut other = Command::new("sleep").arg("30").env(RUN_VAR, "another-run").spawn().unwrap();
        // Until the children have exec'd, they are still called after us.
        let mut found = Vec::new();
        for _ in 0..200 {
            found = marked("sleep", RUN_VAR, &id).unwrap();
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(found, [(marked_child.id(), "sleep 30".to_owned())]);
        assert!(marked("qemu-system", RUN_VAR, &id).unwrap().is_empty());
        for c in [&mut marked_child, &mut other] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(marked("sleep", RUN_VAR, &id).unwrap().is_empty());
    }
}
