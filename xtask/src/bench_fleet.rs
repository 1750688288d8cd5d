//! `cargo xtask bench --fleet N`: many servers, one image. N agents
//! (processes) deploy the raw image at once, SHA-256 verified, each to a
//! target of its own, from one nginx; in every round curl alone measures
//! the link first (N), so the fleet's aggregate throughput — N × the
//! image's bytes over the time until the slowest agent is done — is
//! compared with what the same link carries for one reader. With `--link`
//! the link is shaped; the goal is ≥ 0.9 of it.
//!
//! The targets are sparse files next to the single run's target, written
//! with `O_DIRECT` as a server's disk would be: they share this machine's
//! one disk, which writes faster than the links measured here carry (the
//! image is 40 % data). On tmpfs, where `O_DIRECT` is refused, the page
//! cache's copies held 4 agents to 0.84 of an 8gbit link on 2 cores
//! (1.00 on disk).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use crate::bench_workload::{self, Workload, SIZE};
use crate::root;
use crate::task_bench::{machine, median, mib, settle, Ended, Measured, Nginx, Options, AGENT_RAW, LIMIT};

/// The aggregate over the link's rate that the fleet should reach.
const GOAL: f64 = 0.9;

/// One round: the link alone, then the fleet.
#[derive(Debug, Clone)]
struct Round {
    link_s: f64,
    /// Each agent's wall time, in start order.
    agents: Vec<f64>,
}

pub fn fleet(
    opts: &Options,
    n: usize,
    agent: &Path,
    work: &Workload,
    nginx: &Nginx,
    bench_dir: &Path,
) -> anyhow::Result<()> {
    let dir = &bench_dir.join("fleet");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    // Each target holds the image's data.
    let need = n as u64 * (work.data_fraction * SIZE as f64) as u64 + (1 << 30);
    let free = nix::sys::statvfs::statvfs(dir.as_path()).map(|s| s.blocks_available() * s.fragment_size())?;
    if free < need {
        bail!("--fleet {n} needs about {} free in {} for its targets; {} is", mib(need), dir.display(), mib(free));
    }
    let logs = bench_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let url = nginx.url(&work.raw);
    crate::run(std::process::Command::new("curl").args(["-sS", "--fail", "-o", "/dev/null"]).arg(&url))?;

    let mut rounds = Vec::new();
    for round in 0..opts.runs {
        let link_s = curl_alone(&url, &logs, round)?;
        let agents = fleet_round(n, agent, work, &url, dir, &logs, round)?;
        let slowest = agents.iter().copied().fold(0.0, f64::max);
        println!(
            "bench: round {}/{} link alone {link_s:6.2} s; {n} agents: slowest {slowest:6.2} s, aggregate {:.0} MB/s",
            round + 1,
            opts.runs,
            n as f64 * work.raw.len as f64 / slowest / 1e6
        );
        rounds.push(Round { link_s, agents });
    }
    let _ = std::fs::remove_dir_all(dir);
    report(opts, n, work, &rounds)
}

/// Times `curl -o /dev/null` of the image: what the link carries for one.
fn curl_alone(url: &str, logs: &Path, round: usize) -> anyhow::Result<f64> {
    settle()?;
    let status = logs.join("fleet-N.status");
    let log = logs.join(format!("fleet-N-{round}.log"));
    let m = Measured::spawn(r#"curl -sS --fail -o /dev/null "$URL""#, &[("URL", url.as_ref())], &status, &log)?;
    let e = m.wait(LIMIT)?.context("curl did not finish")?;
    if e.code != 0 {
        bail!("curl failed with exit code {}; see {}", e.code, log.display());
    }
    Ok(e.wall)
}

/// Starts `n` agents together; returns their wall times once all are done.
/// The first round checks every target against the raw image.
fn fleet_round(
    n: usize,
    agent: &Path,
    work: &Workload,
    url: &str,
    dir: &Path,
    logs: &Path,
    round: usize,
) -> anyhow::Result<Vec<f64>> {
    let targets: Vec<_> = (0..n).map(|i| dir.join(format!("target-{i}.img"))).collect();
    for t in &targets {
        let _ = std::fs::remove_file(t);
        std::fs::File::create(t)?.set_len(SIZE)?;
    }
    settle()?;
    let mut running = Vec::with_capacity(n);
    for (i, t) in targets.iter().enumerate() {
        let env: [(&str, &std::ffi::OsStr); 5] = [
            ("URL", url.as_ref()),
            ("ALGO", "sha256".as_ref()),
            ("SUM", work.raw.sum("sha256").as_ref()),
            ("T", t.as_os_str()),
            ("AGENT", agent.as_os_str()),
        ];
        let status = logs.join(format!("fleet-{i}.status"));
        let log = logs.join(format!("fleet-{i}-{round}.log"));
        running.push((Measured::spawn(AGENT_RAW, &env, &status, &log)?, log, None::<Ended>));
    }
    if let Err(e) = wait_all(&mut running) {
        // Nothing left behind: the others are stopped too.
        for (m, _, _) in running.iter_mut().filter(|r| r.2.is_none()) {
            m.kill();
        }
        return Err(e);
    }
    if round == 0 {
        for t in &targets {
            let got = bench_workload::disk_sha256(t)?;
            if got != work.disk_sha256 {
                bail!("{} differs from the raw image (sha256 {got}, expected {})", t.display(), work.disk_sha256);
            }
        }
    }
    for t in &targets {
        let _ = std::fs::remove_file(t);
    }
    Ok(running.iter().filter_map(|r| r.2.map(|e| e.wall)).collect())
}

/// Waits for every agent; the first that fails or overruns is an error.
fn wait_all(running: &mut [(Measured, std::path::PathBuf, Option<Ended>)]) -> anyhow::Result<()> {
    while running.iter().any(|r| r.2.is_none()) {
        for (m, log, ended) in running.iter_mut().filter(|r| r.2.is_none()) {
            if let Some(e) = m.poll()? {
                if e.code != 0 {
                    bail!("an agent of the fleet failed with exit code {}; see {}", e.code, log.display());
                }
                *ended = Some(e);
            } else if m.started.elapsed() > LIMIT {
                bail!("an agent of the fleet did not finish within {} s; see {}", LIMIT.as_secs(), log.display());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn report(opts: &Options, n: usize, work: &Workload, rounds: &[Round]) -> anyhow::Result<()> {
    let bytes = work.raw.len as f64;
    let link_s = median(rounds.iter().map(|r| r.link_s).collect());
    let slowest = median(rounds.iter().map(|r| r.agents.iter().copied().fold(0.0, f64::max)).collect());
    let fastest = median(rounds.iter().map(|r| r.agents.iter().copied().fold(f64::INFINITY, f64::min)).collect());
    let link_mb_s = bytes / link_s / 1e6;
    let aggregate_mb_s = n as f64 * bytes / slowest / 1e6;
    let ratio = aggregate_mb_s / link_mb_s;
    let results = json!({
        "machine": machine(),
        "link": opts.link.as_ref().map(|l| l.describe()),
        "agents": n,
        "image_bytes": work.raw.len,
        "checksum": "sha256",
        "runs": opts.runs,
        "rounds": rounds.iter().map(|r| json!({ "link_alone_s": r.link_s, "agents_s": r.agents })).collect::<Vec<_>>(),
        "link_alone_s": link_s,
        "link_mb_s": link_mb_s,
        "slowest_agent_s": slowest,
        "fastest_agent_s": fastest,
        "aggregate_mb_s": aggregate_mb_s,
        "aggregate_over_link": ratio,
        "target": GOAL,
        "met": ratio >= GOAL,
    });
    let path = root().join("target/bench/fleet.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!(
        "\nbyoi bench --fleet {n}: {} GiB raw image, SHA-256 verified, link {}; median of {} rounds",
        work.raw.len >> 30,
        opts.link.as_ref().map_or("host loopback", |l| l.describe()),
        opts.runs
    );
    println!("  link alone (curl -o /dev/null)   {link_s:7.2} s  {link_mb_s:6.0} MB/s");
    println!("  {n} agents, slowest / fastest     {slowest:7.2} s / {fastest:.2} s");
    println!(
        "  aggregate                        {aggregate_mb_s:13.0} MB/s  = {ratio:.2} of the link  target ≥ {GOAL}  {}",
        if ratio >= GOAL { "met" } else { "MISSED" }
    );
    println!("\nresults: {}", path.display());
    Ok(())
}
