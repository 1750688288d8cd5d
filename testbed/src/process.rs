//! A child run under `timeout --foreground` ([`timed`]), stopped and
//! reaped when dropped ([`TimedChild`]).
//!
//! `Child::kill` on a `timeout` wrapper SIGKILLs `timeout` alone: its child,
//! QEMU, lives on until its own limit, reparented to PID 1, which in a
//! container may leave it a zombie for a while. [`TimedChild`] instead sends
//! `timeout` SIGTERM, which `timeout` passes on to its child; it then waits
//! for the child, reaping it, and exits, and we reap `timeout`. A child that
//! ignores SIGTERM gets SIGKILL from `timeout` after [`GRACE`]
//! (`--kill-after`).
//!
//! `--foreground` keeps `timeout` and QEMU in the caller's process group
//! (without it `timeout` makes a group of its own). So Ctrl-C on `cargo test`
//! or on the demo reaches QEMU too, rather than leaving it to run until its
//! limit; and if the caller is killed without a chance to drop anything,
//! `timeout` still ends QEMU at the limit. The price: in this mode `timeout`
//! signals its child, not the child's own children. QEMU starts none (slirp
//! runs inside it).

use std::ffi::OsStr;
use std::io;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a child may ignore SIGTERM before `timeout` sends SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// How often [`TimedChild::stop`] looks whether `timeout` has exited.
const POLL: Duration = Duration::from_millis(10);

/// `timeout --foreground --kill-after=GRACE LIMIT PROGRAM`: add arguments
/// and stdio, then [`TimedChild::spawn`] it.
pub fn timed(limit: Duration, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("timeout");
    c.arg("--foreground")
        .arg(format!("--kill-after={}s", GRACE.as_secs()))
        .arg(format!("{}s", limit.as_secs().max(1)))
        .arg(program);
    c
}

/// A running [`timed`] command. Dropping it stops the command and reaps it
/// and `timeout` ([`TimedChild::stop`]).
#[derive(Debug)]
pub struct TimedChild {
    child: Child,
}

impl TimedChild {
    /// Spawns `cmd`, which must come from [`timed`].
    pub fn spawn(cmd: &mut Command) -> io::Result<TimedChild> {
        if cmd.get_program() != "timeout" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{:?} is not a `timeout` command from byoi_testbed::timed", cmd.get_program()),
            ));
        }
        Ok(TimedChild { child: cmd.spawn()? })
    }

    /// The process id of `timeout` (its command is [`children`] of it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command's standard output, if it was piped and not yet taken.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The command's standard error, if it was piped and not yet taken.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// `timeout`'s exit status if it has exited (the command's, or 124 when
    /// the limit ended it). Once it has, so has the command: `timeout` waits
    /// for it before exiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for `timeout` (and so the command) to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Stops the command unless it has exited: SIGTERM to `timeout`, which
    /// passes it on, waits for the command and exits. Returns once both are
    /// reaped. Should `timeout` itself not exit within twice [`GRACE`], it
    /// and its children are killed and this is an error.
    pub fn stop(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // Not reaped yet, so the pid is still ours to signal.
        let pid = Pid::from_raw(i32::try_from(self.child.id()).map_err(io::Error::other)?);
        let command = children(self.child.id())?;
        kill(pid, Signal::SIGTERM)?;
        let deadline = Instant::now() + 2 * GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                end_orphans(&command)?;
                return Ok(status);
            }
            std::thread::sleep(POLL);
        }
        let stuck = children(self.child.id())?;
        for &c in &stuck {
            match kill(Pid::from_raw(i32::try_from(c).map_err(io::Error::other)?), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.child.kill()?;
        self.child.wait()?;
        Err(io::Error::other(format!(
            "timeout (pid {pid}) did not exit within {:?} of SIGTERM; killed it and its children {stuck:?}",
            2 * GRACE
        )))
    }
}

impl Drop for TimedChild {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            // Nowhere to return it; a leftover process must not go unnoticed.
            eprintln!("byoi-testbed: stopping pid {}: {e}", self.child.id());
        }
    }
}

/// Ends those of `pids` that outlived `timeout`: seen rarely on a loaded
/// machine, a command that `timeout` left running, reparented to init. They
/// are killed, and awaited until init has reaped them.
fn end_orphans(pids: &[u32]) -> io::Result<()> {
    let alive = |p: u32| std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| parent(&s) == Some(1));
    for &p in pids.iter().filter(|p| alive(**p)) {
        match kill(Pid::from_raw(i32::try_from(p).map_err(io::Error::other)?), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deadline = Instant::now() + GRACE;
    while pids.iter().any(|p| alive(*p)) {
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!("{pids:?} outlived timeout and were not reaped within {GRACE:?}")));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// The processes whose parent is `pid`, from `/proc/*/stat`.
pub fn children(pid: u32) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A process that exited since `read_dir` has no `stat` any more:
        // it is no child of anyone now.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if parent(&stat) == Some(pid) {
            found.push(child);
        }
    }
    Ok(found)
}

/// The parent pid in a `/proc/PID/stat` line: `PID (COMM) STATE PPID …`,
/// where COMM may hold spaces and parentheses (proc(5)).
fn parent(stat: &str) -> Option<u32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    /// Waits for `timeout` to have started its command; returns its pid.
    fn command_of(t: &TimedChild) -> u32 {
        let start = Instant::now();
        loop {
            if let [c] = children(t.id()).unwrap()[..] {
                return c;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "timeout started nothing");
            std::thread::sleep(POLL);
        }
    }

    #[test]
    fn parent_from_stat() {
        for (stat, want) in [
            ("42 (sleep) S 7 42 7 0 -1", Some(7)),
            ("42 (a) b (c) R 1 42", Some(1)),
            ("42 (qemu-system-x86) S 13186 13186", Some(13186)),
            ("garbage", None),
        ] {
            assert_eq!(parent(stat), want, "{stat}");
        }
    }

    /// The bug this module fixes: `Child::kill` on the wrapper left its
    /// child running. Dropping must leave neither process, not even a
    /// zombie.
    #[test]
    fn drop_stops_and_reaps_the_command() {
        let mut t = TimedChild::spawn(timed(Duration::from_secs(60), "sleep").arg("300")).unwrap();
        let sleep = command_of(&t);
        let timeout = t.id();
        assert!(t.try_wait().unwrap().is_none());
        let start = Instant::now();
        drop(t);
        assert!(start.elapsed() < GRACE, "SIGTERM alone should do, took {:?}", start.elapsed());
        assert!(!alive(sleep), "the command outlived the drop");
        assert!(!alive(timeout), "timeout was not reaped");
    }

    #[test]
    fn drop_during_a_panic_stops_the_command() {
        let mut pids = None;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let t = TimedChild::spawn(timed(Duration::from_secs(60), "sleep").arg("300")).unwrap();
            pids = Some((t.id(), command_of(&t)));
            panic!("a failing test");
        }));
        assert!(caught.is_err());
        let (timeout, sleep) = pids.unwrap();
        assert!(!alive(sleep) && !alive(timeout));
    }

    #[test]
    fn a_command_ignoring_sigterm_is_killed_after_the_grace() {
        // Short sleeps: with `--foreground`, `timeout` kills its child, not
        // the child's children, and a `sleep 300` would be left behind.
        let dir = tempfile::tempdir().unwrap();
        let trapped = dir.path().join("trapped");
        let mut cmd = timed(Duration::from_secs(60), "sh");
        let script = format!("trap '' TERM; : > {}; while :; do sleep 0.1; done", trapped.display());
        cmd.args(["-c", &script]);
        let t = TimedChild::spawn(&mut cmd).unwrap();
        let sh = command_of(&t);
        // The shell must ignore SIGTERM before the drop sends it, or it
        // dies at once (a race CI lost once).
        let waited = Instant::now();
        while !trapped.exists() {
            assert!(waited.elapsed() < Duration::from_secs(10), "sh never set its trap");
            std::thread::sleep(POLL);
        }
        let start = Instant::now();
        drop(t);
        assert!(start.elapsed() >= GRACE && start.elapsed() < 2 * GRACE, "{:?}", start.elapsed());
        assert!(!alive(sh));
    }

    #[test]
    fn the_limit_ends_the_command() {
        let mut t = TimedChild::spawn(timed(Duration::from_secs(1), "sleep").arg("300")).unwrap();
        let status = t.wait().unwrap();
        assert_eq!(status.code(), Some(124), "timeout's status when the limit ran out");
    }

    #[test]
    fn only_timed_commands_are_accepted() {
        let err = TimedChild::spawn(&mut Command::new("sleep")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
