//! `cargo xtask loadtest`: one controller against N simulated agents.
//!
//! Each agent is a task with its own source address (127.1.x.y, so the
//! controller's per-source limits see N hosts, as on a real provisioning
//! network), its own token from its own boot script, and one keep-alive
//! connection. It says hello, fetches its job, reports progress every
//! `--interval` and ends with its result, all over the real agent protocol
//! (the `byoi_wire::agent` types). Beside them operators read: a status
//! `GET` at `--status-rate` per second, the server list every second, and
//! one dashboard's fleet event stream. Latencies are per call kind; the
//! controller's CPU and RSS are read from `/proc`. Results go to
//! `target/loadtest/results.json`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use byoi_wire::agent::{Disk, Hello, Inventory, JobResponse, Nic, ProgressReport, ResultReport};
use byoi_wire::{BootMode, Stage, Status};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::root;

/// Options of `cargo xtask loadtest`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Simulated agents, each deploying its own server
    #[arg(long, default_value_t = 1000, value_parser = crate::at_least_one::<usize>)]
    agents: usize,
    /// How long the agents report, after they all said hello
    #[arg(long, default_value_t = 60, value_parser = crate::at_least_one::<u64>)]
    seconds: u64,
    /// Seconds between an agent's progress reports (the agent's own tick)
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Operator status reads per second (GET …/bringYourOwnImage)
    #[arg(long, default_value_t = 20)]
    status_rate: u32,
    /// The controller's database (`--database` of `byoi serve`); `postgres`: a PostgreSQL cluster
    /// started for the run; the embedded SQLite when not given
    #[arg(long)]
    database: Option<String>,
    /// The p99 goal of agent calls, in milliseconds (reported as met or missed)
    #[arg(long, default_value_t = 50.0)]
    goal_p99_ms: f64,
}

/// The calls measured, in the order printed.
const CALLS: [&str; 7] = ["boot", "hello", "job", "progress", "result", "status", "list"];

/// What one kind of call saw.
#[derive(Debug, Default)]
struct Samples {
    micros: Vec<u64>,
    errors: u64,
    first_errors: Vec<String>,
}

/// Every call's samples, by kind.
#[derive(Debug, Default, Clone)]
struct Recorder(Arc<Mutex<BTreeMap<&'static str, Samples>>>);

impl Recorder {
    fn ok(&self, call: &'static str, took: Duration) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(call).or_default().micros.push(took.as_micros() as u64);
    }

    fn err(&self, call: &'static str, e: impl std::fmt::Display) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let s = m.entry(call).or_default();
        s.errors += 1;
        if s.first_errors.len() < 3 {
            s.first_errors.push(e.to_string());
        }
    }

    fn summary(&self) -> serde_json::Value {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = serde_json::Map::new();
        for call in CALLS {
            let Some(s) = m.get(call) else { continue };
            let mut v = s.micros.clone();
            v.sort_unstable();
            let ms = |q: f64| percentile(&v, q) as f64 / 1000.0;
            out.insert(
                call.to_owned(),
                serde_json::json!({
                    "count": v.len(), "errors": s.errors, "firstErrors": s.first_errors,
                    "p50Ms": ms(0.50), "p99Ms": ms(0.99), "maxMs": ms(1.0),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// The `q` quantile of sorted samples (nearest rank); 0 when there are none.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A running `byoi serve`, stopped (SIGTERM, then reaped) when dropped.
struct Controller {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl Controller {
    fn start(opts: &Options, dir: &Path) -> anyhow::Result<Controller> {
        let bin = root().join("target/release/byoi");
        let data = dir.join("data");
        let _ = std::fs::remove_dir_all(&data);
        // The agent's files only need to exist: no agent boots them.
        let artifacts = dir.join("artifacts");
        std::fs::create_dir_all(&artifacts)?;
        for f in ["vmlinuz", "initramfs.img"] {
            std::fs::write(artifacts.join(f), b"")?;
        }
        let log = std::fs::File::create(dir.join("controller.log"))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--artifacts")
            .arg(&artifacts)
            .args(["--max-connections", &(opts.agents + 512).to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(db) = &opts.database {
            cmd.args(["--database", db]);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            bail!("the controller did not start ({line:?}); see {}", dir.join("controller.log").display());
        };
        let addr = addr.parse()?;
        let token = std::fs::read_to_string(data.join("api-token"))?.trim().to_owned();
        Ok(Controller { child, addr, token })
    }

    /// CPU seconds (user + system) the controller has used.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // After the command's `)` come the state (field 3), …, utime (14) and stime (15).
        let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        (field(11) + field(12)) as f64 / ticks
    }

    /// (`VmRSS`, `VmHWM`) in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection from a chosen source address.
struct Conn {
    from: Ipv4Addr,
    to: SocketAddr,
    host: String,
    send: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(from: Ipv4Addr, to: SocketAddr) -> Conn {
        Conn { from, to, host: to.to_string(), send: None }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.send.as_ref().is_some_and(|s| s.is_closed()) {
            self.send = None;
        }
        if self.send.is_none() {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(self.from.into(), 0))?;
            let stream = socket.connect(self.to).await?;
            stream.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            self.send = Some(send);
        }
        self.send.as_mut().context("connected")
    }

    /// One call; `Ok((status, body))`. The connection is dropped on error.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let done = async {
            let send = self.connect().await?;
            send.ready().await?;
            let resp = send.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        }
        .await;
        if done.is_err() {
            self.send = None;
        }
        done
    }

    /// A timed call that must answer `want`; recorded as `kind`.
    async fn timed(
        &mut self,
        rec: &Recorder,
        kind: &'static str,
        (method, path, token): (Method, &str, &str),
        body: Option<Vec<u8>>,
        want: u16,
    ) -> Option<Bytes> {
        let start = Instant::now();
        match self.call(method, path, token, body).await {
            Ok((status, body)) if status == want => {
                rec.ok(kind, start.elapsed());
                Some(body)
            }
            Ok((status, body)) => {
                rec.err(kind, format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
                None
            }
            Err(e) => {
                rec.err(kind, format!("{e:#}"));
                None
            }
        }
    }
}

/// Agent `i`'s source address: 127.1.0.1 onwards (never .0 or .255).
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1 + (i / 64516) as u8, ((i / 254) % 254) as u8 + 1, (i % 254) as u8 + 1)
}

fn name(i: usize) -> String {
    format!("lt{i:05}")
}

fn mac(i: usize) -> String {
    let b = (i as u32).to_be_bytes();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

const IMAGE_SIZE: u64 = 2 << 30;

/// Registers every server and posts its deployment, 16 at a time.
async fn register(to: SocketAddr, token: &str, agents: usize, rec: &Recorder) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..16u8 {
        let (next, token, rec) = (next.clone(), token.to_owned(), rec.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(Ipv4Addr::new(127, 0, 0, 10 + w), to);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= agents {
                    return anyhow::Ok(());
                }
                let server = serde_json::json!({"serviceName": name(i), "macs": [mac(i)], "power": {"kind": "manual"}});
                let (status, body) =
                    c.call(Method::POST, "/dedicated/server", &token, Some(server.to_string().into())).await?;
                if status != 201 {
                    bail!("registering {}: {status} {}", name(i), String::from_utf8_lossy(&body));
                }
                let deploy = serde_json::json!({
                    "URL": format!("http://127.0.0.1:9/{}.qcow2", name(i)),
                    "checkSumType": "sha256", "checkSum": "ab".repeat(32),
                });
                let path = format!("/dedicated/server/{}/bringYourOwnImage", name(i));
                let start = Instant::now();
                let (status, body) = c.call(Method::POST, &path, &token, Some(deploy.to_string().into())).await?;
                if status != 200 {
                    bail!("deploying {}: {status} {}", name(i), String::from_utf8_lossy(&body));
                }
                rec.ok("deploy", start.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One agent's life: boot script, hello, job, progress until `until`,
/// result. Errors are recorded; a failed step ends the agent.
async fn agent(i: usize, to: SocketAddr, rec: Recorder, start: Instant, interval: Duration, until: Instant) {
    let mut c = Conn::new(source(i), to);
    // Spread the agents' first calls over one interval, as real boots are.
    tokio::time::sleep_until((start + interval.mul_f64(i as f64 % 997.0 / 997.0)).into()).await;
    let Some(script) = c.timed(&rec, "boot", (Method::GET, &format!("/boot/{}", mac(i)), ""), None, 200).await else {
        return;
    };
    let script = String::from_utf8_lossy(&script);
    let Some(token) = script.split("byoi.token=").nth(1).and_then(|t| t.split_whitespace().next()) else {
        rec.err("boot", "no token in the boot script");
        return;
    };
    let token = token.to_owned();
    let disk = Disk {
        name: "nvme0n1".into(),
        size_bytes: 1 << 40,
        model: "Load".into(),
        serial: format!("S{i}"),
        wwn: format!("wwn-{i}"),
        rotational: false,
        transport: "nvme".into(),
        logical_sector_size: 512,
    };
    let inventory = Inventory {
        firmware: BootMode::Uefi,
        memory_bytes: 64 << 30,
        disks: vec![disk],
        nics: vec![Nic { name: "eth0".into(), mac: mac(i), link: true, speed_mbps: Some(25000) }],
    };
    let hello = serde_json::to_vec(&Hello { inventory, version: env!("CARGO_PKG_VERSION").into() }).ok();
    if c.timed(&rec, "hello", (Method::POST, "/agent/v1/hello", &token), hello, 200).await.is_none() {
        return;
    }
    let Some(job) = c.timed(&rec, "job", (Method::GET, "/agent/v1/job", &token), None, 200).await else { return };
    let Some(id) = serde_json::from_slice::<JobResponse>(&job).ok().and_then(|j| j.job).map(|j| j.deployment_id) else {
        rec.err("job", "no job in the answer");
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut done = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        done = (done + (64 << 20)).min(IMAGE_SIZE);
        let report = ProgressReport {
            deployment_id: id,
            stage: Stage::Downloading,
            bytes_done: done,
            bytes_total: Some(IMAGE_SIZE),
            logs: Vec::new(),
        };
        let body = serde_json::to_vec(&report).ok();
        c.timed(&rec, "progress", (Method::POST, "/agent/v1/progress", &token), body, 200).await;
    }
    let report = ResultReport {
        deployment_id: id,
        status: Status::Done,
        code: None,
        message: "deployed (loadtest)".into(),
        logs: Vec::new(),
    };
    c.timed(&rec, "result", (Method::POST, "/agent/v1/result", &token), serde_json::to_vec(&report).ok(), 200).await;
}

/// Operators: status reads at `rate` per second, the list every second,
/// until `until`; one fleet event stream, counted.
async fn operators(to: SocketAddr, token: String, agents: usize, rate: u32, rec: Recorder, until: Instant) -> u64 {
    let events = tokio::spawn({
        let token = token.clone();
        async move { fleet_events(to, &token, until).await.unwrap_or(0) }
    });
    let status = tokio::spawn({
        let (token, rec) = (token.clone(), rec.clone());
        async move {
            let mut c = Conn::new(Ipv4Addr::new(127, 0, 0, 2), to);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            let mut i = 0usize;
            while rate > 0 && Instant::now() < until {
                tick.tick().await;
                i = (i + 7919) % agents;
                let path = format!("/dedicated/server/{}/bringYourOwnImage", name(i));
                c.timed(&rec, "status", (Method::GET, &path, &token), None, 200).await;
            }
        }
    });
    let mut c = Conn::new(Ipv4Addr::new(127, 0, 0, 3), to);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < until {
        tick.tick().await;
        c.timed(&rec, "list", (Method::GET, "/dedicated/server", &token), None, 200).await;
    }
    let _ = status.await;
    events.await.unwrap_or(0)
}

/// Reads the fleet event stream until `until`: how many events came.
async fn fleet_events(to: SocketAddr, token: &str, until: Instant) -> anyhow::Result<u64> {
    let mut c = Conn::new(Ipv4Addr::new(127, 0, 0, 4), to);
    let send = c.connect().await?;
    let req = Request::builder()
        .uri("/dedicated/events")
        .header("host", to.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))?;
    let mut body = send.send_request(req).await?.into_body();
    let mut events = 0u64;
    while let Ok(Some(frame)) = tokio::time::timeout_at(until.into(), body.frame()).await {
        if let Some(data) = frame?.data_ref() {
            events += data.windows(7).filter(|w| w == b"event: ").count() as u64;
        }
    }
    Ok(events)
}

pub fn run_task(opts: &Options) -> anyhow::Result<()> {
    if !(0.05..=60.0).contains(&opts.interval) {
        bail!("--interval must be between 0.05 and 60 seconds");
    }
    println!("loadtest: building the controller (release)");
    crate::run(Command::new("cargo").args(["build", "--release", "-p", "byoi-controller", "--bin", "byoi"]))?;
    let dir = root().join("target/loadtest");
    std::fs::create_dir_all(&dir)?;
    raise_open_files(opts.agents as u64 * 2 + 1024)?;
    // Declared first, so dropped last: the controller stops before it.
    let cluster = match opts.database.as_deref() {
        Some("postgres") => Some(crate::postgres::Cluster::start()?),
        _ => None,
    };
    let opts = &Options {
        database: cluster.as_ref().map(|c| format!("{}/postgres", c.url)).or_else(|| opts.database.clone()),
        ..opts.clone()
    };
    let controller = Controller::start(opts, &dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let results = rt.block_on(drive(opts, &controller))?;
    drop(controller);
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
    print_results(&results);
    println!("loadtest: results in {}", path.display());
    Ok(())
}

async fn drive(opts: &Options, controller: &Controller) -> anyhow::Result<serde_json::Value> {
    let rec = Recorder::default();
    let to = controller.addr;
    let setup = Instant::now();
    println!("loadtest: registering {} servers, each with a deployment", opts.agents);
    register(to, &controller.token, opts.agents, &rec).await?;
    let setup = setup.elapsed();
    let interval = Duration::from_secs_f64(opts.interval);
    let start = Instant::now();
    let until = start + interval + Duration::from_secs(opts.seconds);
    println!("loadtest: {} agents report every {:.2} s for {} s", opts.agents, opts.interval, opts.seconds);
    let (cpu0, wall0) = (controller.cpu_seconds(), Instant::now());
    let agents: Vec<_> =
        (0..opts.agents).map(|i| tokio::spawn(agent(i, to, rec.clone(), start, interval, until))).collect();
    let ops = tokio::spawn(operators(to, controller.token.clone(), opts.agents, opts.status_rate, rec.clone(), until));
    let mut rss_peak = 0f64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_peak = rss_peak.max(controller.rss_mib().0);
    }
    let (cpu1, wall1) = (controller.cpu_seconds(), Instant::now());
    for a in agents {
        a.await?;
    }
    let events = ops.await?;
    let (rss_end, hwm) = controller.rss_mib();
    let calls = rec.summary();
    let progress = calls["progress"]["count"].as_u64().unwrap_or(0);
    let expected = opts.agents as f64 / opts.interval;
    let agent_p99 = ["hello", "job", "progress", "result"]
        .iter()
        .map(|c| calls[c]["p99Ms"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    let errors: u64 =
        calls.as_object().map(|m| m.values().map(|c| c["errors"].as_u64().unwrap_or(0)).sum()).unwrap_or(0);
    Ok(serde_json::json!({
        "agents": opts.agents,
        "seconds": opts.seconds,
        "interval": opts.interval,
        "database": opts.database.as_deref().map(redact).unwrap_or_else(|| "sqlite".into()),
        "setupSeconds": setup.as_secs_f64(),
        "calls": calls,
        "reportsPerSecond": progress as f64 / (until - start).as_secs_f64(),
        "expectedReportsPerSecond": expected,
        "fleetEvents": events,
        "controller": {
            "cpuCores": (cpu1 - cpu0) / (wall1 - wall0).as_secs_f64(),
            "rssPeakMiB": rss_peak.max(hwm),
            "rssEndMiB": rss_end,
        },
        "goals": {
            "agentP99Ms": agent_p99,
            "p99Met": progress > 0 && agent_p99 < opts.goal_p99_ms,
            "goalP99Ms": opts.goal_p99_ms,
            "errors": errors,
        },
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) },
    }))
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.rsplit_once('@') {
        Some((creds, host)) => format!("{scheme}://{}@{host}", creds.split(':').next().unwrap_or_default()),
        None => url.to_owned(),
    }
}

fn raise_open_files(want: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < want {
        let new = want.min(hard);
        setrlimit(Resource::RLIMIT_NOFILE, new, hard)?;
        if new < want {
            eprintln!("loadtest: only {new} open files allowed (hard limit); some connections may fail");
        }
    }
    Ok(())
}

fn print_results(r: &serde_json::Value) {
    println!();
    println!("{:<10} {:>8} {:>7} {:>9} {:>9} {:>9}", "call", "count", "errors", "p50 ms", "p99 ms", "max ms");
    for call in CALLS {
        let c = &r["calls"][call];
        if c.is_null() {
            continue;
        }
        println!(
            "{call:<10} {:>8} {:>7} {:>9.1} {:>9.1} {:>9.1}",
            c["count"].as_u64().unwrap_or(0),
            c["errors"].as_u64().unwrap_or(0),
            c["p50Ms"].as_f64().unwrap_or(0.0),
            c["p99Ms"].as_f64().unwrap_or(0.0),
            c["maxMs"].as_f64().unwrap_or(0.0)
        );
        for e in c["firstErrors"].as_array().into_iter().flatten() {
            println!("    error: {}", e.as_str().unwrap_or_default());
        }
    }
    let ctl = &r["controller"];
    println!(
        "reports/s {:.0} of {:.0}; controller CPU {:.2} cores, RSS peak {:.0} MiB; fleet events {}",
        r["reportsPerSecond"].as_f64().unwrap_or(0.0),
        r["expectedReportsPerSecond"].as_f64().unwrap_or(0.0),
        ctl["cpuCores"].as_f64().unwrap_or(0.0),
        ctl["rssPeakMiB"].as_f64().unwrap_or(0.0),
        r["fleetEvents"]
    );
    let g = &r["goals"];
    println!(
        "goal: agent calls p99 {:.1} ms < {} ms: {}; errors: {}",
        g["agentP99Ms"].as_f64().unwrap_or(0.0),
        g["goalP99Ms"],
        if g["p99Met"].as_bool() == Some(true) { "met" } else { "MISSED" },
        g["errors"]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.99), percentile(&v, 1.0)), (50, 99, 100));
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.99), 0);
    }

    #[test]
    fn sources_and_macs_are_distinct() {
        let n = 70_000;
        let sources: std::collections::HashSet<_> = (0..n).map(source).collect();
        let macs: std::collections::HashSet<_> = (0..n).map(mac).collect();
        assert_eq!((sources.len(), macs.len()), (n, n));
        assert!((0..n).map(source).all(|s| s.octets()[3] != 0 && s.octets()[3] != 255 && s.octets()[1] >= 1));
    }

    #[test]
    fn database_passwords_are_not_kept() {
        assert_eq!(redact("postgres://byoi:s3cret@127.0.0.1:5432/byoi"), "postgres://byoi@127.0.0.1:5432/byoi");
        assert_eq!(redact("postgres:///byoi?host=/run/pg"), "postgres:///byoi?host=/run/pg");
    }
}
