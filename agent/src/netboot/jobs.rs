//! The agent's main loop with the controller: hello, then wait for a job,
//! run it with progress every second, report the result, obey `action`.
//! Independent of PID 1 duties (mounts, modules, network), so it runs in
//! tests against a real controller with a fake sysfs and file-backed disks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use byoi_wire::agent::{
    Action, Disk, Heartbeat, Hello, Inventory, Job, LogLevel, LogRecord, ProgressReport, ResultReport,
};
use byoi_wire::spec::redact_url;
use byoi_wire::{BootMode, Status};

use super::backoff::Backoff;
use super::client::{ClientError, Controller};
use super::{inventory, logs};
use crate::deploy::deploy;
use crate::efivars;
use crate::error::DeployError;
use crate::plan::{plan, Host};
use crate::progress::Progress;
use crate::source::SourceOptions;
use crate::target::DiskTarget;

/// Where the agent finds the machine, and how often it talks.
#[derive(Debug, Clone)]
pub struct Env {
    /// `/sys`.
    pub sys: PathBuf,
    /// `/proc`.
    pub proc: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
    /// EFI variables to write the boot entry to (UEFI boots only).
    pub efivars: Option<PathBuf>,
    /// Seconds between heartbeats while idle, and between progress reports.
    pub tick: Duration,
    /// Longest wait between retries when the controller is unreachable
    /// or busy, and between periodic calls to a slow one.
    pub max_backoff: Duration,
}

impl Env {
    /// The waits between calls this environment allows.
    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_secs(1), self.max_backoff)
    }
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Deployed: reboot into the disk.
    Reboot,
    /// Netboot again: the controller no longer knows this boot's token, or
    /// wants the server in another mode (rescue after a cancellation).
    Netboot,
}

/// Writes a line on the console (stderr: the serial console under PID 1)
/// and queues it for the controller, which keeps it with the deployment
/// (`byoi logs`).
pub fn say(line: &str) {
    eprintln!("byoi: {line}");
    logs::FORWARD.push(LogRecord { level: LogLevel::Info, target: CONSOLE.into(), message: line.to_owned() }.bounded());
}

/// The target of forwarded console lines.
pub const CONSOLE: &str = "console";

/// Writes a progress line on the console only: the controller has the
/// numbers from the report itself.
fn say_progress(line: &str) {
    eprintln!("byoi: {line}");
}

/// Retries `f` while the controller is unreachable, busy, or presents a
/// certificate we do not trust (fixed on the controller, not here),
/// backing off with jitter ([`Backoff`]).
fn retrying<T>(env: &Env, what: &str, mut f: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let mut backoff = env.backoff();
    loop {
        match f() {
            Err(e) if e.is_transient() => {
                let wait = backoff.failed(e.retry_after());
                say(&format!("{what}: {e}; retrying in {:.1}s", wait.as_secs_f32()));
                std::thread::sleep(wait);
            }
            other => return other,
        }
    }
}

/// Says hello with the machine's inventory, retrying while the controller
/// is unreachable: the first hello of a boot claims it, in either mode.
pub fn hello(ctl: &Controller, env: &Env) -> Result<Action, ClientError> {
    let inv = inventory::gather(&env.sys, &env.proc);
    say(&format!(
        "{} firmware, {} MiB memory, {} disk(s), {} NIC(s)",
        inv.firmware,
        inv.memory_bytes >> 20,
        inv.disks.len(),
        inv.nics.len()
    ));
    let hello = Hello { inventory: inv, version: env!("CARGO_PKG_VERSION").into() };
    retrying(env, "hello", || ctl.hello(&hello))
}

/// Talks to the controller until a deployment succeeds (→ reboot) or the
/// token is refused.
pub fn serve(ctl: &Controller, env: &Env) -> Outcome {
    if let Err(ClientError::Unauthorized { .. }) | Ok(Action::Reboot) = hello(ctl, env) {
        return Outcome::Netboot;
    }
    let mut waiting_said = false;
    let mut pace = env.backoff();
    loop {
        // When the call that answered was made: the waits of `retrying`
        // before it are no slowness of the controller's.
        let mut asked = Instant::now();
        let job = match retrying(env, "fetching the job", || {
            asked = Instant::now();
            ctl.job()
        }) {
            Err(ClientError::Unauthorized { .. }) => return Outcome::Netboot,
            Ok(r) if r.action == Action::Reboot => return Outcome::Netboot,
            Err(e) => {
                say(&format!("fetching the job: {e}"));
                std::thread::sleep(pace.failed(None));
                continue;
            }
            Ok(r) => {
                pace.reset();
                r
            }
        };
        let Some(job) = job.job else {
            if !waiting_said {
                say("waiting for a deployment");
                waiting_said = true;
            }
            std::thread::sleep(pace.pace(env.tick, asked.elapsed()));
            if let Err(ClientError::Unauthorized { .. }) | Ok(Action::Reboot) =
                retrying(env, "heartbeat", || ctl.heartbeat(&Heartbeat::default()))
            {
                return Outcome::Netboot;
            }
            continue;
        };
        waiting_said = false;
        let (status, code, message) = match run_job(ctl, env, &job) {
            Ok(msg) => (Status::Done, None, msg),
            Err(e) => (Status::Error, Some(e.code()), e.to_string()),
        };
        say(&format!("{}: {message}", if status == Status::Done { "done" } else { "error" }));
        let report = ResultReport { deployment_id: job.deployment_id, status, code, message, logs: logs::take() };
        match retrying(env, "reporting the result", || ctl.result(&report)) {
            Ok(Action::Reboot) if status == Status::Done => return Outcome::Reboot,
            // A disk the controller did not confirm must not boot.
            Err(ClientError::Unauthorized { .. }) if status == Status::Done => {
                unboot(env, &job, "the controller refused the result");
                return Outcome::Netboot;
            }
            Ok(Action::Reboot) | Err(ClientError::Unauthorized { .. }) => return Outcome::Netboot,
            Ok(Action::Abort) if status == Status::Done => {
                // Cancelled while it finished: the disk must not boot.
                unboot(env, &job, "the deployment was cancelled as it finished");
            }
            _ => {}
        }
    }
}

/// Makes the disk of `job` unbootable again (its first and last MiB,
/// which hold the partition tables, zeroed), saying why on the console
/// and whether it failed.
fn unboot(env: &Env, job: &Job, why: &str) {
    say(&format!("{why}: wiping the disk's ends"));
    let wiped = job_disk(env, job).and_then(|(_, path, _)| {
        let target = DiskTarget::open(&path, false)?;
        crate::sink::wipe_ends(&target).map_err(|e| DeployError::TargetUnusable(format!("wiping: {e}")))
    });
    if let Err(e) = wiped {
        say(&format!("wiping the disk: {e}"));
    }
}

/// The inventory, and the disk `job` names (by serial, WWN and size) with
/// its device path.
fn job_disk(env: &Env, job: &Job) -> Result<(Inventory, PathBuf, Disk), DeployError> {
    let inv = inventory::gather(&env.sys, &env.proc);
    let disk = inventory::find_disk(&inv, &job.disk).map_err(DeployError::TargetUnusable)?.clone();
    Ok((inv, env.dev.join(&disk.name), disk))
}

/// How often the progress loop looks whether the deployment ended while it
/// waits for the next report.
const POLL: Duration = Duration::from_millis(100);

/// Runs one job; `Ok` carries the summary for the controller.
fn run_job(ctl: &Controller, env: &Env, job: &Job) -> Result<String, DeployError> {
    say(&format!("deployment {}: {}", job.deployment_id, redact_url(&job.spec.url)));
    let (inv, path, disk) = job_disk(env, job)?;
    say(&format!("target {} ({} bytes, serial {:?})", path.display(), disk.size_bytes, disk.serial));
    let target = DiskTarget::open(&path, false)?;
    let uefi = inv.firmware == BootMode::Uefi;
    let host = Host {
        firmware: Some(inv.firmware),
        efivars: if uefi { env.efivars.as_deref().map(efivars::open) } else { None },
        efi_disk: if uefi { efivars::disk_prefix_of(&path).unwrap_or_default() } else { Vec::new() },
    };
    let source = SourceOptions { ca_file: ctl.ca_file().map(Path::to_owned), ..SourceOptions::default() };
    let (req, mut finishing) = plan(&job.spec, &host, source);

    let progress = Arc::new(Progress::default());
    let id = job.deployment_id;
    let mut backoff = env.backoff();
    let mut wait = env.tick;
    let done = std::thread::scope(|scope| {
        let worker = {
            let progress = progress.clone();
            let target = &target;
            let req = &req;
            let finishing = &mut finishing;
            scope.spawn(move || deploy(req, target, &progress, Some(finishing)))
        };
        loop {
            let until = Instant::now() + wait;
            while !worker.is_finished() && Instant::now() < until {
                std::thread::sleep((until - Instant::now()).min(POLL));
            }
            if worker.is_finished() {
                break;
            }
            let (bytes_done, bytes_total) = progress.bytes();
            let stage = progress.stage();
            let pct = bytes_total
                .map(|t| format!(" {:.1}%", bytes_done as f64 * 100.0 / t.max(1) as f64))
                .unwrap_or_default();
            say_progress(&format!("{} {} MiB{pct}", stage.as_str(), bytes_done >> 20));
            let report = ProgressReport { deployment_id: id, stage, bytes_done, bytes_total, logs: logs::take() };
            let asked = Instant::now();
            let answer = ctl.progress(&report);
            wait = match &answer {
                Err(e) if e.is_transient() => backoff.failed(e.retry_after()),
                _ => {
                    backoff.reset();
                    backoff.pace(env.tick, asked.elapsed())
                }
            };
            match answer {
                Ok(Action::Abort) => {
                    say("the controller asked to abort");
                    progress.request_abort();
                }
                Err(ClientError::Unauthorized { .. }) => {
                    say("the controller no longer knows this agent (deployment erased or taken over): aborting");
                    progress.request_abort();
                }
                Ok(_) => {}
                Err(e) => say(&format!("progress report: {e}")),
            }
        }
        worker.join().unwrap_or_else(|_| Err(DeployError::Internal("the deployment thread panicked".into())))
    })?;
    let mut summary =
        format!("deployed {} bytes ({}) in {:.1} s", done.image_size, done.format, done.elapsed.as_secs_f64());
    if let Some(o) = &finishing.outcome {
        if let Some(n) = o.configdrive_partition {
            summary.push_str(&format!("; ConfigDrive on partition {n}"));
        }
        if let (Some(l), Some(b)) = (&o.loader, o.boot_entry) {
            summary.push_str(&format!("; Boot{b:04X} → {l}"));
        }
    }
    Ok(summary)
}
