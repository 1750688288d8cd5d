//! `cargo xtask bench`: byoi's agent side by side with what users run
//! instead, on one 4 GiB workload ([`crate::bench_workload`]) served by
//! nginx on loopback, as ratios of medians of interleaved runs; then
//! micro-benchmarks of the pipeline's stages (`agent/benches/stages.rs`).
//!
//! Every run starts from a zeroed target (a fresh sparse file, or a
//! device zeroed with `blkdiscard -z`), ends with its data on disk (the
//! agent fsyncs, the others `dd conv=fsync` / `sync -f`), and, the first
//! time each contender runs, is checked by hashing the target against the
//! raw image. Scratch space (`$S`, on tmpfs like a ramdisk's `/tmp`) is
//! measured after each run. Peak RSS is the largest process of the
//! contender's tree (`getrusage(RUSAGE_CHILDREN)` in a fresh wrapper).

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::bench_link::{Link, Netns};
use crate::bench_workload::{self, Served, Workload, SIZE};
use crate::deb::output;
use crate::{root, run, setup};

/// Which of the workload's files a contender reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Raw,
    Qcow2,
    Qcow2Compressed,
}

/// A contender as the table below lists it.
#[derive(Debug)]
struct Template {
    id: &'static str,
    name: &'static str,
    input: Input,
    /// Bash; gets `$URL`, `$ALGO` and `$SUM` (a digest of the served file:
    /// SHA-256, or each of `--checksums` in turn), `$T` (the target), `$S`
    /// (scratch directory) and `$AGENT`.
    script: &'static str,
    /// Whether it leaves the image on the target (all but N).
    writes: bool,
    /// Whether it checks the digest of what it downloaded (all but N, E).
    verifies: bool,
    /// Whether it runs once per `--checksums` algorithm (`$ALGO`), ids from
    /// [`per_checksum_id`].
    per_checksum: bool,
    /// Wall time after which a run is stopped and counted as unfinished.
    limit: Duration,
}

/// One contender as it runs.
#[derive(Debug)]
struct Contender {
    id: String,
    name: String,
    input: Input,
    script: &'static str,
    algo: &'static str,
    writes: bool,
    verifies: bool,
    limit: Duration,
}

/// Long enough for any contender on a slow disk, short enough that a hung
/// one does not hang the benchmark.
pub(crate) const LIMIT: Duration = Duration::from_secs(600);

/// The agent's raw deployment: contender A.
pub(crate) const AGENT_RAW: &str = r#""$AGENT" deploy --url "$URL" --target "$T" --type raw --checksum "$ALGO:$SUM""#;
/// The agent's qcow2 deployment: contenders C and F.
const AGENT_QCOW2: &str = r#""$AGENT" deploy --url "$URL" --target "$T" --type qcow2 --checksum "$ALGO:$SUM""#;

const TEMPLATES: &[Template] = &[
    Template {
        id: "N",
        name: "curl -o /dev/null (raw)",
        input: Input::Raw,
        script: r#"curl -sS --fail -o /dev/null "$URL""#,
        writes: false,
        verifies: false,
        per_checksum: false,
        limit: LIMIT,
    },
    Template {
        id: "A",
        name: "byoi-agent deploy raw",
        input: Input::Raw,
        script: AGENT_RAW,
        writes: true,
        verifies: true,
        per_checksum: true,
        limit: LIMIT,
    },
    // Not in the issue's list: A without the checksum, to show what
    // hashing costs (it runs on its own thread, but shares the cores).
    Template {
        id: "A0",
        name: "byoi-agent deploy raw, no checksum",
        input: Input::Raw,
        script: r#""$AGENT" deploy --url "$URL" --target "$T" --type raw"#,
        writes: true,
        verifies: false,
        per_checksum: false,
        limit: LIMIT,
    },
    Template {
        id: "B",
        name: "curl | tee >(sha256sum) | dd sparse",
        input: Input::Raw,
        // A named pipe instead of `>(…)`: the shell can wait for it.
        script: r#"set -o pipefail
mkfifo "$S/hash"
sha256sum < "$S/hash" > "$S/sum" & hasher=$!
curl -sS --fail "$URL" | tee "$S/hash" | dd of="$T" bs=4M iflag=fullblock conv=sparse,notrunc,fsync status=none
rc=$?
wait $hasher
[ $rc = 0 ] && [ "$(cut -d' ' -f1 "$S/sum")" = "$SUM" ]"#,
        writes: true,
        verifies: true,
        per_checksum: false,
        limit: LIMIT,
    },
    Template {
        id: "C",
        name: "byoi-agent deploy qcow2",
        input: Input::Qcow2,
        script: AGENT_QCOW2,
        writes: true,
        verifies: true,
        per_checksum: true,
        limit: LIMIT,
    },
    Template {
        id: "D",
        name: "curl -o tmpfs; sha256sum; qemu-img convert",
        input: Input::Qcow2,
        script: r#"curl -sS --fail -o "$S/img.qcow2" "$URL" &&
echo "$SUM  $S/img.qcow2" | sha256sum -c --quiet &&
qemu-img convert -n -f qcow2 -O raw "$S/img.qcow2" "$T" &&
sync -f "$T""#,
        writes: true,
        verifies: true,
        per_checksum: false,
        limit: LIMIT,
    },
    Template {
        id: "E",
        name: "qemu-img convert http:// (no checksum)",
        input: Input::Qcow2,
        script: r#"qemu-img convert -n -f qcow2 -O raw "$URL" "$T" && sync -f "$T""#,
        writes: true,
        verifies: false,
        per_checksum: false,
        // qemu-img 10.0.2's curl driver (Debian's bookworm-backports build)
        // stalls here partway: the socket is no longer polled and curl's
        // timer is unset, so it waits forever. Bounded, and reported as
        // unfinished.
        limit: Duration::from_secs(120),
    },
    Template {
        id: "F",
        name: "byoi-agent deploy qcow2 -c",
        input: Input::Qcow2Compressed,
        script: AGENT_QCOW2,
        writes: true,
        verifies: true,
        per_checksum: false,
        limit: LIMIT,
    },
    // C and F with the agent on one core (nginx and the kernel keep both):
    // how inflating scales with cores.
    Template {
        id: "C@1",
        name: "byoi-agent deploy qcow2, taskset 1 core",
        input: Input::Qcow2,
        script: r#"taskset -c 0 "$AGENT" deploy --url "$URL" --target "$T" --type qcow2 --checksum "$ALGO:$SUM""#,
        writes: true,
        verifies: true,
        per_checksum: false,
        limit: LIMIT,
    },
    Template {
        id: "F@1",
        name: "byoi-agent deploy qcow2 -c, taskset 1 core",
        input: Input::Qcow2Compressed,
        script: r#"taskset -c 0 "$AGENT" deploy --url "$URL" --target "$T" --type qcow2 --checksum "$ALGO:$SUM""#,
        writes: true,
        verifies: true,
        per_checksum: false,
        limit: LIMIT,
    },
];

/// The contenders to run: the table's, each per-checksum one once per
/// algorithm of `checksums`, in the table's order.
fn contenders(checksums: &[String]) -> Vec<Contender> {
    let mut out = Vec::new();
    for t in TEMPLATES {
        let algos: Vec<&'static str> = if t.per_checksum {
            bench_workload::ALGOS.iter().copied().filter(|a| checksums.iter().any(|c| c == a)).collect()
        } else {
            vec!["sha256"]
        };
        for algo in algos {
            out.push(Contender {
                id: if t.per_checksum { per_checksum_id(t.id, algo) } else { t.id.to_owned() },
                name: if t.per_checksum { format!("{}, {algo}", t.name) } else { t.name.to_owned() },
                input: t.input,
                script: t.script,
                algo,
                writes: t.writes,
                verifies: t.verifies,
                limit: t.limit,
            });
        }
    }
    out
}

/// A per-checksum contender's id: SHA-256 keeps the plain id, the others
/// get `-ALGO` after it.
fn per_checksum_id(base: &str, algo: &str) -> String {
    if algo == "sha256" {
        base.to_owned()
    } else {
        format!("{base}-{algo}")
    }
}

/// `(name, numerator, denominator, target)`: the issue's targets.
const RATIOS: &[(&str, &str, &str, f64)] = &[
    ("A/N", "A", "N", 1.15),
    ("A/B", "A", "B", 1.0),
    ("C/D", "C", "D", 0.6),
    ("C/E", "C", "E", 1.0),
    ("F/C", "F", "C", 1.4),
    ("F@1/C@1", "F@1", "C@1", f64::NAN),
    ("F@1/F", "F@1", "F", f64::NAN),
];

/// A deployment's time over the time its bound allows: the link's (N) or
/// the hash's (bytes ÷ the digest's speed), whichever is slower.
const HASH_TARGET: f64 = 1.05;

/// Peak RSS limit for the agent's qcow2 runs.
const RSS_TARGET: u64 = 64 << 20;

/// `cargo xtask bench` options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Interleaved rounds: every contender runs once per round
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = crate::at_least_one::<usize>)]
    pub runs: usize,
    /// Only these contenders (N, A, A-md5, A-sha1, A-sha512, A0, B, C, C-md5, …, D, E, F, C@1, F@1)
    #[arg(long, value_name = "A,C,…", value_delimiter = ',', value_parser = contender_id)]
    pub only: Option<Vec<String>>,
    /// The digests A and C verify, each a contender of its own (SHA-256 is plain A and C)
    #[arg(long, value_name = "ALGO,…", value_delimiter = ',', default_value = "md5,sha1,sha256,sha512", value_parser = checksum_algo)]
    pub checksums: Vec<String>,
    /// Run everything in a network namespace whose loopback is shaped to this rate with `tc tbf` (8gbit ≈ 10 GbE,
    /// 25gbit), or `none` for the namespace unshaped; root only
    #[arg(long, value_name = "RATE|none", value_parser = Link::parse)]
    pub link: Option<Link>,
    /// Instead of the contenders: N agents at once, each to its own target, deploying the raw image from one nginx
    /// (SHA-256 verified), against curl alone on the same link
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub fleet: Option<u32>,
    /// Write to this block device (zeroed before every run; root only), or with `loop` to a loop device over a
    /// sparse file, instead of to a sparse file
    #[arg(long, value_name = "PATH|loop")]
    pub device: Option<String>,
    /// Skip the micro-benchmarks of the pipeline's stages
    #[arg(long = "no-micro", action = clap::ArgAction::SetFalse)]
    pub micro: bool,
}

/// A contender's id as `--only` takes it: any case, spaces around.
fn contender_id(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(s.trim().to_uppercase())
}

/// One of the agent's digests, as `--checksums` takes it.
fn checksum_algo(s: &str) -> Result<String, String> {
    let s = s.trim().to_lowercase();
    if bench_workload::ALGOS.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(format!("{s:?}: expected one of {}", bench_workload::ALGOS.join(", ")))
    }
}

/// nginx on a free loopback port, serving the workload directory.
#[derive(Debug)]
pub(crate) struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(www: &Path, dir: &Path) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // One worker, sendfile: how a file server is usually set up. As
        // root nginx would drop to nobody, who may not read target/.
        let user = if setup::is_root() { "user root;" } else { "" };
        let conf = format!(
            "{user}\ndaemon off;\nworker_processes 1;\nerror_log {dir}/error.log;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  default_type application/octet-stream;\n\
             \x20 client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};\n\
             \x20 uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
             \x20 server {{ listen 127.0.0.1:{port}; root {www}; }}\n}}\n",
            dir = dir.display(),
            www = www.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let n = Nginx { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not listen on port {port}; see {}/error.log", dir.display())
    }

    pub(crate) fn url(&self, s: &Served) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, s.name)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker too (SIGKILL would orphan it).
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Where contenders write.
#[derive(Debug)]
enum Target {
    /// A fresh sparse file per run.
    File(PathBuf),
    /// A block device, zeroed before each run.
    Device(PathBuf),
}

impl Target {
    fn path(&self) -> &Path {
        match self {
            Target::File(p) | Target::Device(p) => p,
        }
    }

    /// Makes the target read as zeros, untimed.
    fn reset(&self) -> anyhow::Result<()> {
        match self {
            Target::File(p) => {
                let _ = std::fs::remove_file(p);
                std::fs::File::create(p)?.set_len(SIZE)?;
            }
            Target::Device(p) => {
                run(Command::new("blkdiscard").arg("-z").arg("-l").arg(SIZE.to_string()).arg(p))?;
            }
        }
        Ok(())
    }
}

/// Lets the previous run's aftermath finish before the next one is timed:
/// writeback, and the discards ext4 issues for a deleted target (seen here
/// to slow even `curl -o /dev/null` by half).
pub(crate) fn settle() -> anyhow::Result<()> {
    run(&mut Command::new("sync"))?;
    // After a few runs free memory is fragmented, and the receive path's
    // page allocations slow curl to /dev/null by a fifth (4.55 s instead
    // of 3.8 s here); compacting makes runs comparable. Root only.
    if let Err(e) = std::fs::write("/proc/sys/vm/compact_memory", "1") {
        note_no_compaction(&e);
    }
    std::thread::sleep(SETTLE);
    Ok(())
}

/// Says once that memory compaction is unavailable.
fn note_no_compaction(e: &std::io::Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| println!("bench: not compacting memory between runs ({e}); expect noisier times"));
}

/// How long [`settle`] waits after `sync`.
const SETTLE: Duration = Duration::from_secs(3);

/// A loop device over a sparse file, detached on drop.
#[derive(Debug)]
struct Loop(PathBuf);

impl Loop {
    fn attach(backing: &Path) -> anyhow::Result<Loop> {
        std::fs::File::create(backing)?.set_len(SIZE)?;
        let dev = output(Command::new("losetup").args(["--find", "--show"]).arg(backing))?;
        Ok(Loop(PathBuf::from(dev.trim())))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// One timed run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds; infinite when the run was stopped at its limit.
    wall: f64,
    /// CPU seconds (user + system) of the contender's processes; nginx's
    /// are not counted. Steadier than wall time on a noisy machine.
    cpu: f64,
    rss: u64,
    scratch: u64,
}

/// `cargo xtask __measure` options.
#[derive(Debug, clap::Args)]
pub struct MeasureOptions {
    /// Where to write `STATUS PEAK_RSS_KIB CPU_SECONDS`
    pub out: PathBuf,
    /// The command, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// `cargo xtask __measure OUT -- CMD…`: runs CMD, writes its exit status,
/// the peak RSS of its process tree (KiB) and the CPU seconds (user +
/// system) it used to OUT. A fresh process, so
/// that `RUSAGE_CHILDREN` covers this command alone.
pub fn measure(opts: &MeasureOptions) -> anyhow::Result<()> {
    let (out, cmd) = (&opts.out, &opts.cmd);
    let status = Command::new(&cmd[0]).args(&cmd[1..]).status().with_context(|| format!("running {}", cmd[0]))?;
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu = secs(usage.user_time()) + secs(usage.system_time());
    std::fs::write(out, format!("{} {} {cpu}\n", status.code().unwrap_or(-1), usage.max_rss()))?;
    Ok(())
}

/// Allocated bytes under `dir`.
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += allocated(&e.path()),
            Ok(m) => total += m.blocks() * 512,
            Err(_) => {}
        }
    }
    total
}

/// A script running under `__measure`, in a process group of its own.
#[derive(Debug)]
pub(crate) struct Measured {
    child: Child,
    status_file: PathBuf,
    pub started: Instant,
}

/// How a [`Measured`] run ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ended {
    pub wall: f64,
    /// The script's exit code (-1: killed, or no status written).
    pub code: i32,
    /// Peak RSS of its largest process, bytes.
    pub rss: u64,
    /// CPU seconds of its processes.
    pub cpu: f64,
}

impl Measured {
    /// Starts bash on `script` with `env`; its output goes to `log`.
    pub(crate) fn spawn(
        script: &str,
        env: &[(&str, &std::ffi::OsStr)],
        status_file: &Path,
        log: &Path,
    ) -> anyhow::Result<Measured> {
        let _ = std::fs::remove_file(status_file);
        let started = Instant::now();
        let child = Command::new(std::env::current_exe()?)
            .arg("__measure")
            .arg(status_file)
            .args(["--", "bash", "-c", script])
            .envs(env.iter().map(|&(k, v)| (k, v)))
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::options().append(true).open(log)?)
            .process_group(0)
            .spawn()?;
        Ok(Measured { child, status_file: status_file.to_owned(), started })
    }

    /// `None` while it runs.
    pub(crate) fn poll(&mut self) -> anyhow::Result<Option<Ended>> {
        let Some(status) = self.child.try_wait()? else { return Ok(None) };
        let wall = self.started.elapsed().as_secs_f64();
        let measured = std::fs::read_to_string(&self.status_file).unwrap_or_default();
        let _ = std::fs::remove_file(&self.status_file);
        let mut parts = measured.split_whitespace();
        let code: i32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
        let rss_kib: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let cpu: f64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
        let code = if status.success() { code } else { -1 };
        Ok(Some(Ended { wall, code, rss: rss_kib * 1024, cpu }))
    }

    /// Waits for the end; `None` if it ran past `limit` and was killed.
    pub(crate) fn wait(mut self, limit: Duration) -> anyhow::Result<Option<Ended>> {
        loop {
            if let Some(e) = self.poll()? {
                return Ok(Some(e));
            }
            if self.started.elapsed() > limit {
                self.kill();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the whole group: the wrapper, bash and what bash runs.
    pub(crate) fn kill(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

struct Runner<'a> {
    agent: PathBuf,
    nginx: &'a Nginx,
    work: &'a Workload,
    target: &'a Target,
    scratch_root: PathBuf,
    logs: PathBuf,
}

impl Input {
    fn served(self, work: &Workload) -> &Served {
        match self {
            Input::Raw => &work.raw,
            Input::Qcow2 => &work.qcow2,
            Input::Qcow2Compressed => &work.qcow2c,
        }
    }
}

impl Runner<'_> {
    fn run(&self, c: &Contender, round: usize, check: bool) -> anyhow::Result<Sample> {
        if c.writes {
            self.target.reset()?;
        }
        settle()?;
        let scratch = self.scratch_root.join(&c.id);
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        let served = c.input.served(self.work);
        let status_file = scratch.join(".status");
        let log = self.logs.join(format!("{}-{round}.log", c.id));
        let url = self.nginx.url(served);
        let env: [(&str, &std::ffi::OsStr); 6] = [
            ("URL", url.as_ref()),
            ("ALGO", c.algo.as_ref()),
            ("SUM", served.sum(c.algo).as_ref()),
            ("T", self.target.path().as_os_str()),
            ("S", scratch.as_os_str()),
            ("AGENT", self.agent.as_os_str()),
        ];
        let ended = Measured::spawn(c.script, &env, &status_file, &log)?.wait(c.limit)?;
        let Some(Ended { wall, code, rss, cpu }) = ended else {
            println!("bench: {} did not finish within {} s; stopped", c.id, c.limit.as_secs());
            std::fs::remove_dir_all(&scratch)?;
            return Ok(Sample { wall: f64::INFINITY, cpu: f64::NAN, rss: 0, scratch: 0 });
        };
        if code != 0 {
            bail!("{} ({}) failed with exit code {code}; see {}", c.id, c.name, log.display());
        }
        let scratch_bytes = allocated(&scratch);
        std::fs::remove_dir_all(&scratch)?;
        if check && c.writes {
            let got = bench_workload::disk_sha256(self.target.path())?;
            if got != self.work.disk_sha256 {
                bail!(
                    "{} ({}) left a target that differs from the raw image (sha256 {got}, expected {})",
                    c.id,
                    c.name,
                    self.work.disk_sha256
                );
            }
        }
        Ok(Sample { wall, cpu, rss, scratch: scratch_bytes })
    }
}

/// The median; infinite runs (stopped at their limit) sort last, so a
/// contender that finished most of its runs still has one.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn first_line(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_owned()
        }
        Err(_) => String::new(),
    }
}

pub(crate) fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": model.unwrap_or("?"),
        "memory_bytes": mem_kib * 1024,
        "kernel": first_line(Command::new("uname").args(["-sr"])),
        "nginx": first_line(Command::new("nginx").arg("-v")),
        "curl": first_line(Command::new("curl").arg("--version")),
        "qemu_img": first_line(Command::new("qemu-img").arg("--version")),
    })
}

pub(crate) fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / f64::from(1 << 20))
}

pub fn run_task(opts: &Options) -> anyhow::Result<()> {
    setup::host(&["nginx", "curl", "qemu-utils", "iproute2", "util-linux"], &["qemu-block-extra"])?;
    println!("bench: building the agent as shipped (release, static)");
    let agent = crate::task_initramfs::static_agent()?;
    let work = bench_workload::workload()?;
    let bench_dir = root().join("target/bench");
    if opts.micro && opts.fleet.is_none() {
        // Built now: in the namespace cargo could not reach a registry.
        run(Command::new("cargo").args(["bench", "--quiet", "--no-run", "-p", "byoi-agent", "--bench", "stages"]))?;
    }
    // Everything from here on talks over the link; nginx stops first.
    let _netns = opts.link.as_ref().map(Netns::enter).transpose()?;
    let nginx = Nginx::start(&bench_workload::dir(), &bench_dir.join("nginx"))?;
    if let Some(n) = opts.fleet {
        return crate::bench_fleet::fleet(opts, n as usize, &agent, &work, &nginx, &bench_dir);
    }

    if opts.device.is_some() && !setup::is_root() {
        bail!("--device needs root (losetup, blkdiscard, O_EXCL on the device)");
    }
    let _loop_dev;
    let target = match opts.device.as_deref() {
        None => Target::File(bench_dir.join("target.img")),
        Some("loop") => {
            let l = Loop::attach(&bench_dir.join("loop.img"))?;
            let p = l.0.clone();
            _loop_dev = l;
            Target::Device(p)
        }
        Some(dev) => {
            // Every run zeroes it: refuse anything in use.
            let mounts = output(Command::new("lsblk").args(["-nro", "MOUNTPOINT"]).arg(dev))?;
            if let Some(m) = mounts.lines().find(|l| !l.trim().is_empty()) {
                bail!("refusing to benchmark on {dev}: it (or a partition of it) is mounted on {m}");
            }
            println!("bench: {dev} will be overwritten, its first 4 GiB zeroed before every run");
            Target::Device(PathBuf::from(dev))
        }
    };
    let all = contenders(&opts.checksums);
    let contenders: Vec<&Contender> = all
        .iter()
        .filter(|c| opts.only.as_ref().is_none_or(|o| o.iter().any(|x| x.eq_ignore_ascii_case(&c.id))))
        .collect();
    if contenders.is_empty() {
        let ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
        bail!("--only matches no contender ({})", ids.join(", "));
    }
    let logs = bench_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let runner = Runner {
        agent,
        nginx: &nginx,
        work: &work,
        target: &target,
        scratch_root: PathBuf::from("/dev/shm/byoi-bench"),
        logs,
    };
    // Warm the page cache: every contender reads the served files from
    // memory, so the network path is what gets compared.
    for s in [&work.raw, &work.qcow2, &work.qcow2c] {
        run(Command::new("curl").args(["-sS", "--fail", "-o", "/dev/null"]).arg(nginx.url(s)))?;
    }

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
    let mut checked = vec![false; contenders.len()];
    for round in 0..opts.runs {
        for (i, c) in contenders.iter().enumerate() {
            let s = runner.run(c, round, !checked[i])?;
            checked[i] |= s.wall.is_finite();
            println!(
                "bench: round {}/{} {} {:<42} {:7.2} s {:>9} RSS",
                round + 1,
                opts.runs,
                c.id,
                c.name,
                s.wall,
                mib(s.rss)
            );
            samples[i].push(s);
        }
    }
    let _ = std::fs::remove_dir_all(&runner.scratch_root);
    if let Target::File(p) = &target {
        let _ = std::fs::remove_file(p);
    }

    let micro = if opts.micro { micro_benchmarks(&work, &nginx.url(&work.raw))? } else { serde_json::Value::Null };
    report(opts, &work, &target, &contenders, &samples, micro)
}

/// Runs `agent/benches/stages.rs` on the workload; returns its JSON.
fn micro_benchmarks(work: &Workload, raw_url: &str) -> anyhow::Result<serde_json::Value> {
    println!("bench: micro-benchmarks of the pipeline's stages");
    let out = output(
        Command::new("cargo")
            .args(["bench", "--quiet", "-p", "byoi-agent", "--bench", "stages", "--"])
            .arg(&work.qcow2.path)
            .arg(&work.qcow2c.path)
            .args(["--url", raw_url])
            .current_dir(root()),
    )?;
    let line = out.lines().rev().find(|l| l.starts_with('{')).context("no JSON from the stages bench")?;
    Ok(serde_json::from_str(line)?)
}

fn report(
    opts: &Options,
    work: &Workload,
    target: &Target,
    contenders: &[&Contender],
    samples: &[Vec<Sample>],
    micro: serde_json::Value,
) -> anyhow::Result<()> {
    let machine = machine();
    let mut rows = Vec::new();
    // Median wall time, and the limit that bounds it when it is infinite.
    let mut medians = std::collections::BTreeMap::new();
    for (c, s) in contenders.iter().zip(samples) {
        let wall = median(s.iter().map(|x| x.wall).collect());
        let finished: Vec<&Sample> = s.iter().filter(|x| x.wall.is_finite()).collect();
        let rss = median(finished.iter().map(|x| x.rss as f64).collect()) as u64;
        let scratch = finished.iter().map(|x| x.scratch).max().unwrap_or(0);
        let cpu = median(finished.iter().map(|x| x.cpu).collect());
        medians.insert(c.id.as_str(), (wall, c.limit.as_secs_f64()));
        let finite = |v: f64| if v.is_finite() { json!(v) } else { serde_json::Value::Null };
        rows.push(json!({
            "id": c.id,
            "name": c.name,
            "input": c.input.served(work).name,
            "script": c.script,
            "checksum": if c.verifies { json!(c.algo) } else { serde_json::Value::Null },
            "wall_s": s.iter().map(|x| finite(x.wall)).collect::<Vec<_>>(),
            "unfinished_runs": s.len() - finished.len(),
            "limit_s": c.limit.as_secs(),
            "median_wall_s": finite(wall),
            "median_cpu_s": finite(cpu),
            "virtual_mb_s": SIZE as f64 / wall / 1e6,
            "peak_rss_bytes": if finished.is_empty() { serde_json::Value::Null } else { json!(rss) },
            "scratch_bytes": scratch,
        }));
    }
    let mut ratios = Vec::new();
    for &(name, a, b, goal) in RATIOS {
        let (Some(&(x, _)), Some(&(y, y_limit))) = (medians.get(a), medians.get(b)) else { continue };
        if !x.is_finite() {
            continue;
        }
        // A denominator that never finished bounds the ratio from above.
        let (v, bound) = if y.is_finite() { (x / y, "exact") } else { (x / y_limit, "upper") };
        ratios.push(json!({
            "ratio": name,
            "value": v,
            "bound": bound,
            "target": if goal.is_nan() { serde_json::Value::Null } else { json!(goal) },
            "met": if goal.is_nan() { serde_json::Value::Null } else { json!(v <= goal) },
        }));
    }
    let rss_checks: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| r["id"] == "C" || r["id"] == "F")
        .map(|r| json!({ "id": r["id"], "peak_rss_bytes": r["peak_rss_bytes"], "target": RSS_TARGET, "met": r["peak_rss_bytes"].as_u64().unwrap_or(u64::MAX) <= RSS_TARGET }))
        .collect();
    let checksums = checksum_bounds(opts, work, &medians, &micro);
    let results = json!({
        "machine": machine,
        "link": opts.link.as_ref().map(Link::describe),
        "target": { "path": target.path(), "kind": match target { Target::File(_) => "file", Target::Device(_) => "device" } },
        "workload": {
            "virtual_size": SIZE,
            "data_fraction": work.data_fraction,
            "raw_bytes": work.raw.len,
            "qcow2_bytes": work.qcow2.len,
            "qcow2_compressed_bytes": work.qcow2c.len,
        },
        "runs": opts.runs,
        "contenders": rows,
        "ratios": ratios,
        "rss": rss_checks,
        "checksums": checksums,
        "micro": micro,
    });
    let path = root().join("target/bench/results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    print_table(&results);
    println!("\nresults: {}", path.display());
    Ok(())
}

/// Per digest: A (raw) against the link (N) and against the hash alone
/// (the raw image's bytes ÷ the digest's speed in the stage benchmark),
/// with the target that applies — A/N when the link is the slower of the
/// two, A/hash when the hash is — and C/N.
fn checksum_bounds(
    opts: &Options,
    work: &Workload,
    medians: &std::collections::BTreeMap<&str, (f64, f64)>,
    micro: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let Some(&(n, _)) = medians.get("N").filter(|(n, _)| n.is_finite()) else { return Vec::new() };
    let mut out = Vec::new();
    for algo in bench_workload::ALGOS.iter().filter(|a| opts.checksums.iter().any(|c| c == *a)) {
        let finite =
            |base: &str| medians.get(per_checksum_id(base, algo).as_str()).map(|m| m.0).filter(|v| v.is_finite());
        let Some(a) = finite("A") else { continue };
        let rate = micro["hashes"]
            .as_array()
            .and_then(|h| h.iter().find(|x| x["algo"] == *algo))
            .and_then(|x| x["mb_s"].as_f64());
        let hash_s = rate.map(|r| work.raw.len as f64 / (r * 1e6));
        // The slower of the two bounds, and A against it.
        let (bound, against) = match hash_s {
            Some(h) if h > n => ("hash", Some(a / h)),
            Some(_) => ("link", Some(a / n)),
            None => ("unknown", None),
        };
        out.push(json!({
            "algo": algo,
            "a_s": a,
            "n_s": n,
            "hash_s": hash_s,
            "a_over_n": a / n,
            "a_over_hash": hash_s.map(|h| a / h),
            "c_over_n": finite("C").map(|c| c / n),
            "bound": bound,
            "target": HASH_TARGET,
            "met": against.map(|v| v <= HASH_TARGET),
        }));
    }
    out
}

fn print_table(r: &serde_json::Value) {
    let m = &r["machine"];
    let w = &r["workload"];
    println!(
        "\nbyoi bench: {} cores ({}), {} GiB RAM, {}; target {} ({}); link {}",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory_bytes"].as_u64().unwrap_or(0) >> 30,
        m["kernel"].as_str().unwrap_or("?"),
        r["target"]["path"].as_str().unwrap_or("?"),
        r["target"]["kind"].as_str().unwrap_or("?"),
        r["link"].as_str().unwrap_or("host loopback"),
    );
    println!(
        "workload: 4 GiB GPT disk, {:.0} % data; raw {}, qcow2 {}, qcow2 -c {}; median of {} interleaved runs",
        w["data_fraction"].as_f64().unwrap_or(0.0) * 100.0,
        mib(w["raw_bytes"].as_u64().unwrap_or(0)),
        mib(w["qcow2_bytes"].as_u64().unwrap_or(0)),
        mib(w["qcow2_compressed_bytes"].as_u64().unwrap_or(0)),
        r["runs"],
    );
    println!(
        "\n{:<9} {:<50} {:>8} {:>8} {:>8} {:>10} {:>10}  verifies",
        "", "contender", "wall s", "MB/s", "CPU s", "peak RSS", "scratch"
    );
    for c in r["contenders"].as_array().into_iter().flatten() {
        let (wall, rate) = match c["median_wall_s"].as_f64() {
            Some(w) => (format!("{w:.2}"), format!("{:.0}", c["virtual_mb_s"].as_f64().unwrap_or(0.0))),
            None => (format!("> {}", c["limit_s"]), "-".to_owned()),
        };
        println!(
            "{:<9} {:<50} {:>8} {:>8} {:>8} {:>10} {:>10}  {}",
            c["id"].as_str().unwrap_or("?"),
            c["name"].as_str().unwrap_or("?"),
            wall,
            rate,
            c["median_cpu_s"].as_f64().map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            c["peak_rss_bytes"].as_u64().map(mib).unwrap_or_else(|| "-".into()),
            mib(c["scratch_bytes"].as_u64().unwrap_or(0)),
            c["checksum"].as_str().unwrap_or("no"),
        );
    }
    println!();
    for x in r["ratios"].as_array().into_iter().flatten() {
        let goal = match x["target"].as_f64() {
            Some(t) => format!("target ≤ {t:.2}  {}", if x["met"] == true { "met" } else { "MISSED" }),
            None => String::new(),
        };
        let at_most = if x["bound"] == "upper" { "≤" } else { " " };
        println!(
            "{:<8} {at_most}{:6.2}  {goal}",
            x["ratio"].as_str().unwrap_or("?"),
            x["value"].as_f64().unwrap_or(0.0)
        );
    }
    let checksums = r["checksums"].as_array().into_iter().flatten().collect::<Vec<_>>();
    if !checksums.is_empty() {
        println!(
            "\nper digest (raw image; hash = its bytes ÷ the digest's speed below; target ≤ {HASH_TARGET} of the slower):"
        );
        println!(
            "  {:<7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7}  bound",
            "digest", "A s", "N s", "hash s", "A/N", "A/hash", "C/N"
        );
        for x in checksums {
            let f = |k: &str, p: usize| x[k].as_f64().map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into());
            let verdict = match x["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            println!(
                "  {:<7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7}  {} {verdict}",
                x["algo"].as_str().unwrap_or("?"),
                f("a_s", 2),
                f("n_s", 2),
                f("hash_s", 2),
                f("a_over_n", 2),
                f("a_over_hash", 2),
                f("c_over_n", 2),
                x["bound"].as_str().unwrap_or("?"),
            );
        }
    }
    for x in r["rss"].as_array().into_iter().flatten() {
        println!(
            "RSS {} {}  target ≤ 64 MiB  {}",
            x["id"].as_str().unwrap_or("?"),
            mib(x["peak_rss_bytes"].as_u64().unwrap_or(0)),
            if x["met"] == true { "met" } else { "MISSED" }
        );
    }
    if let Some(m) = r["micro"]["stages"].as_object() {
        println!("\nstages alone (MB/s of input; qcow2 decode: MB/s of virtual size, to a null sink):");
        for (k, v) in m {
            println!("  {k:<28} {:8.0}", v.as_f64().unwrap_or(0.0));
        }
    }
    if let Some(h) = r["micro"]["hashes"].as_array() {
        println!("\ndigests against `openssl speed` on this machine (1 MiB updates; target ≥ 0.95):");
        for x in h {
            let (ours, theirs) = (x["mb_s"].as_f64().unwrap_or(0.0), x["openssl_mb_s"].as_f64());
            match (theirs, x["ratio"].as_f64()) {
                (Some(o), Some(ratio)) => println!(
                    "  {:<7} {ours:6.0} MB/s  openssl {o:6.0} MB/s  ratio {ratio:.2}  {}",
                    x["algo"].as_str().unwrap_or("?"),
                    if ratio >= 0.95 { "met" } else { "MISSED" }
                ),
                _ => println!("  {:<7} {ours:6.0} MB/s  (no openssl to compare)", x["algo"].as_str().unwrap_or("?")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_unfinished_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![f64::INFINITY, 1.0, 2.0]), 2.0);
        assert!(median(vec![f64::INFINITY, f64::INFINITY, 2.0]).is_infinite());
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn every_ratio_names_contenders_that_exist() {
        let all = contenders(&["sha256".to_owned()]);
        let ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
        for (name, a, b, _) in RATIOS {
            assert!(ids.contains(a) && ids.contains(b), "{name}");
        }
        // Only N and E skip the checksum, as the issue has it (and A0,
        // which exists to show what it costs).
        let unverified: Vec<&str> = all.iter().filter(|c| !c.verifies).map(|c| c.id.as_str()).collect();
        assert_eq!(unverified, ["N", "A0", "E"]);
    }

    #[test]
    fn per_checksum_contenders_come_once_per_digest() {
        let all = contenders(&["sha512".to_owned(), "md5".to_owned(), "sha256".to_owned()]);
        let ids: Vec<(&str, &str)> = all.iter().map(|c| (c.id.as_str(), c.algo)).collect();
        assert_eq!(
            ids,
            [
                ("N", "sha256"),
                ("A-md5", "md5"),
                ("A", "sha256"),
                ("A-sha512", "sha512"),
                ("A0", "sha256"),
                ("B", "sha256"),
                ("C-md5", "md5"),
                ("C", "sha256"),
                ("C-sha512", "sha512"),
                ("D", "sha256"),
                ("E", "sha256"),
                ("F", "sha256"),
                ("C@1", "sha256"),
                ("F@1", "sha256"),
            ]
        );
        // Without SHA-256 there is no plain A, and the ratios skip it.
        assert!(contenders(&["md5".to_owned()]).iter().all(|c| c.id != "A"));
    }

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        use clap::Parser;
        match crate::Cli::try_parse_from(["xtask", "bench"].iter().chain(args))?.task {
            crate::Task::Bench(o) => Ok(o),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_parse_and_refuse_nonsense() {
        let o = parse(&["--runs", "5", "--only", "a,c", "--no-micro"]).unwrap();
        assert_eq!((o.runs, o.only, o.micro), (5, Some(vec!["A".to_owned(), "C".to_owned()]), false));
        let o = parse(&[]).unwrap();
        assert_eq!((o.runs, o.only, o.device, o.micro, o.link, o.fleet), (3, None, None, true, None, None));
        assert_eq!(o.checksums, ["md5", "sha1", "sha256", "sha512"]);
        let o = parse(&["--link", "8gbit", "--fleet", "4", "--checksums", "SHA512, md5"]).unwrap();
        assert_eq!(o.link, Some(Link::Shaped { bits_per_s: 8_000_000_000, text: "8gbit".into() }));
        assert_eq!((o.fleet, o.checksums), (Some(4), vec!["sha512".to_owned(), "md5".to_owned()]));
        for bad in [&["--checksums", "crc32"][..], &["--link", "fast"], &["--fleet", "0"], &["--fleet", "65"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--runs", "0"]).is_err());
        assert!(parse(&["--runs"]).is_err());
        assert!(parse(&["--fast"]).is_err());
    }
}
