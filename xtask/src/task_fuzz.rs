//! `cargo xtask fuzz`: the agent's parsers under cargo-fuzz (libFuzzer with
//! AddressSanitizer) for a bounded time each: the targets of `agent/fuzz`
//! (qcow2, VMDK, OVA, over `byoi_agent::fuzzing`), seeded with small real
//! images that `qemu-img` and GNU `tar` make at run time.
//!
//! Everything lives under `target/fuzz`: the build (`target/`), the corpora
//! (`corpus/<target>/`, seeds plus what libFuzzer found, kept from run to
//! run), the artifacts (`artifacts/<target>/`) and each run's log
//! (`logs/<target>.log`). An artifact (crash, OOM, timeout, leak) is copied
//! to `agent/tests/fuzz-regressions/<target>/`, which `cargo test` replays
//! (`agent/tests/fuzz_regressions.rs`), and fails the task.
//!
//! Stable Rust: cargo-fuzz passes `-Zsanitizer=address` and friends, which
//! `RUSTC_BOOTSTRAP=1` allows; the ASan runtime ships in stable's rust-std
//! for x86_64-unknown-linux-gnu, so no nightly toolchain is needed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context};

use crate::task_image::ova_archive;
use crate::{root, run, setup};

/// The fuzz targets, each a `byoi_agent::fuzzing` entry point.
const TARGETS: &[&str] = &["qcow2", "vmdk", "ova"];

/// Where the fuzz crate is, from the workspace root.
const FUZZ_DIR: &str = "agent/fuzz";

/// Where crashes are kept as regression tests, from the workspace root.
const REGRESSIONS: &str = "agent/tests/fuzz-regressions";

/// libFuzzer caps inputs at the largest seed, or at 1 MiB (its `kMaxSaneLen`)
/// without `-max_len`: a larger seed would be cut short.
const MAX_SEED: usize = 1 << 20;

/// Virtual size of the raw image the seeds are made from.
const RAW_SIZE: usize = 1 << 20;

/// libFuzzer's artifact prefixes that mean the run failed. `slow-unit-`
/// files are only reported.
const FAILURES: &[&str] = &["crash-", "oom-", "timeout-", "leak-"];

/// `cargo xtask fuzz` options.
#[derive(Debug, PartialEq, Eq, clap::Args)]
pub struct Options {
    /// Seconds per target
    #[arg(long, value_name = "N", default_value_t = 60, value_parser = crate::at_least_one::<u64>)]
    pub seconds: u64,
    /// Only these targets (all of them by default)
    #[arg(long, value_name = "qcow2,vmdk,ova", value_delimiter = ',', value_parser = target)]
    pub only: Vec<&'static str>,
}

impl Options {
    /// The targets to run, each once, in the order given.
    fn targets(&self) -> Vec<&'static str> {
        if self.only.is_empty() {
            return TARGETS.to_vec();
        }
        let mut targets = Vec::new();
        for t in &self.only {
            if !targets.contains(t) {
                targets.push(*t);
            }
        }
        targets
    }
}

/// A fuzz target's name as `--only` takes it: any case, spaces around.
fn target(name: &str) -> Result<&'static str, String> {
    let name = name.trim().to_lowercase();
    TARGETS
        .iter()
        .find(|t| **t == name)
        .copied()
        .ok_or_else(|| format!("no fuzz target {name:?} (there are {})", TARGETS.join(", ")))
}

/// What libFuzzer says about a run: its last status line (`#382089 DONE
/// cov: 236 ft: 268 corp: 34/2928b lim: 3381 exec/s: 34735 rss: 287Mb`)
/// and, with `-print_final_stats=1`, the `stat::` lines it prints on exit,
/// crash included.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    executions: u64,
    exec_per_s: u64,
    /// Coverage: edges (`cov:`) and features (`ft:`).
    cov: u64,
    ft: u64,
    /// Inputs in the corpus.
    corpus: u64,
    peak_rss_mb: u64,
}

fn stats(log: &str) -> Option<Stats> {
    let mut s = Stats::default();
    let mut seen = false;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("stat::") {
            let Some((key, value)) = rest.split_once(':') else { continue };
            let Ok(v) = value.trim().parse::<u64>() else { continue };
            match key {
                "number_of_executed_units" => s.executions = v,
                "average_exec_per_sec" => s.exec_per_s = v,
                "peak_rss_mb" => s.peak_rss_mb = v,
                _ => {}
            }
            seen = true;
        } else if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            let Some(Ok(n)) = words.next().map(str::parse::<u64>) else { continue };
            let words: Vec<&str> = words.collect();
            if !words.contains(&"cov:") {
                continue;
            }
            let field = |key: &str| {
                let v = words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1))?;
                v.split(['/', 'b', 'M']).next()?.parse::<u64>().ok()
            };
            s.executions = s.executions.max(n);
            s.cov = field("cov:").unwrap_or(s.cov);
            s.ft = field("ft:").unwrap_or(s.ft);
            s.corpus = field("corp:").unwrap_or(s.corpus);
            s.exec_per_s = field("exec/s:").unwrap_or(s.exec_per_s);
            s.peak_rss_mb = s.peak_rss_mb.max(field("rss:").unwrap_or(0));
            seen = true;
        }
    }
    seen.then_some(s)
}

/// The lines of a log that say what went wrong: a panic and its message,
/// sanitizer and libFuzzer errors, their summary.
fn crash_summary(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("panicked at") {
            out.push(*l);
            out.extend(lines.get(i + 1));
        } else if l.contains("ERROR: AddressSanitizer")
            || l.contains("ERROR: libFuzzer")
            || l.starts_with("SUMMARY: ")
            || l.contains("out-of-memory")
            || l.starts_with("==") && l.contains("ALARM")
        {
            out.push(*l);
        }
    }
    out
}

/// A deterministic raw disk: an MBR, then random (incompressible) and
/// repetitive (compressible) extents, a cluster of zeros with stray bytes,
/// zeros elsewhere and data in the last cluster, so every kind of cluster
/// and grain shows up in the images made from it.
fn raw_image() -> Vec<u8> {
    let mut img = vec![0u8; RAW_SIZE];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = |buf: &mut [u8]| {
        for b in buf {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    };
    // One Linux partition covering the disk (MBR at 446, signature at 510).
    img[446 + 4] = 0x83;
    img[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    img[446 + 12..446 + 16].copy_from_slice(&(RAW_SIZE as u32 / 512 - 1).to_le_bytes());
    img[510..512].copy_from_slice(&[0x55, 0xaa]);
    random(&mut img[64 << 10..128 << 10]);
    for (i, b) in img[192 << 10..256 << 10].iter_mut().enumerate() {
        *b = b"byoi fuzz seed: a compressible line of text\n"[i % 44];
    }
    img[(320 << 10) + 100] = 1;
    img[(320 << 10) + 4000] = 2;
    random(&mut img[512 << 10..544 << 10]);
    random(&mut img[RAW_SIZE - 4096..]);
    img
}

/// Runs a command in `dir` (not the workspace root, as [`run`]), failing if it fails.
fn run_in(dir: &Path, cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.current_dir(dir).status().with_context(|| format!("running {cmd:?} in {}", dir.display()))?;
    if !status.success() {
        bail!("{cmd:?} in {} failed with {status}", dir.display());
    }
    Ok(())
}

/// Makes the seeds in `work` and copies them to `corpus/<target>/seed-*`.
fn seeds(work: &Path, corpus: &Path) -> anyhow::Result<()> {
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    std::fs::write(work.join("src.raw"), raw_image())?;
    let qemu_img = |args: &[&str]| run_in(work, Command::new("qemu-img").args(args));
    let convert = |format: &str, opts: &str, compress: bool, out: &str| {
        let mut args = vec!["convert", "-f", "raw", "-O", format, "-o", opts];
        if compress {
            args.push("-c");
        }
        args.extend(["src.raw", out]);
        qemu_img(&args)
    };
    convert("qcow2", "cluster_size=4096", false, "plain.qcow2")?;
    convert("qcow2", "cluster_size=4096", true, "compressed.qcow2")?;
    convert("qcow2", "cluster_size=4096,compression_type=zstd", true, "zstd.qcow2")?;
    convert("qcow2", "cluster_size=4096,compat=0.10", false, "v2.qcow2")?;
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "empty.qcow2", "1M"])?;
    convert("vmdk", "subformat=streamOptimized", false, "stream.vmdk")?;
    convert("vmdk", "subformat=monolithicSparse", false, "sparse.vmdk")?;
    // The descriptor alone (its flat extent is just the raw image).
    convert("vmdk", "subformat=monolithicFlat", false, "flat.vmdk")?;

    let ova = |disk: &str, out: &str, manifest_first: bool| -> anyhow::Result<()> {
        let text = ova_archive(&work.join(disk), RAW_SIZE as u64, &work.join(out), manifest_first)?;
        std::fs::write(work.join("vm.ovf"), text.descriptor)?;
        std::fs::write(work.join("vm.mf"), text.manifest)?;
        Ok(())
    };
    ova("stream.vmdk", "stream.ova", true)?;
    ova("sparse.vmdk", "sparse.ova", false)?;

    let per_target: &[(&str, &[&str])] = &[
        ("qcow2", &["plain.qcow2", "compressed.qcow2", "zstd.qcow2", "v2.qcow2", "empty.qcow2"]),
        ("vmdk", &["stream.vmdk", "sparse.vmdk", "flat.vmdk"]),
        ("ova", &["stream.ova", "sparse.ova", "vm.ovf", "vm.mf"]),
    ];
    for (target, files) in per_target {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for f in *files {
            let data = std::fs::read(work.join(f))?;
            if data.len() > MAX_SEED {
                bail!("the seed {f} is {} bytes, more than libFuzzer's 1 MiB input cap", data.len());
            }
            std::fs::write(dir.join(format!("seed-{f}")), data)?;
        }
    }
    Ok(())
}

/// Installs cargo-fuzz when `cargo fuzz` is missing.
fn cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        println!("fuzz: cargo fuzz is missing; installing it: cargo install cargo-fuzz --locked");
        let t = Instant::now();
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
        println!("fuzz: cargo-fuzz installed in {:.0} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}

/// `cargo fuzz <sub> --fuzz-dir agent/fuzz --target-dir target/fuzz/target`
/// on stable (cargo-fuzz's default sanitizer, address, needs `-Z` flags).
fn cargo_fuzz_cmd(sub: &str, target_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["fuzz", sub, "--fuzz-dir", FUZZ_DIR, "--target-dir"])
        .arg(target_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root());
    cmd
}

/// How one target's run went.
#[derive(Debug)]
struct Outcome {
    target: &'static str,
    stats: Option<Stats>,
    seconds: f64,
    /// Failure artifacts, copied to the regressions directory.
    kept: Vec<PathBuf>,
    slow: Vec<PathBuf>,
    log: PathBuf,
    summary: Vec<String>,
}

/// Files in `dir` whose name starts with one of `prefixes`, modified since `since`.
fn artifacts_since(dir: &Path, prefixes: &[&str], since: SystemTime) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p)) && e.metadata()?.modified()? >= since {
            found.push(e.path());
        }
    }
    found.sort();
    Ok(found)
}

fn fuzz_one(target: &'static str, seconds: u64, fuzz: &Path) -> anyhow::Result<Outcome> {
    let corpus = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let logs = fuzz.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = logs.join(format!("{target}.log"));

    let mut cmd = cargo_fuzz_cmd("run", &fuzz.join("target"));
    cmd.arg(target).arg(&corpus).arg("--");
    // The trailing slash matters: libFuzzer concatenates the prefix and the name.
    cmd.arg(format!("-artifact_prefix={}/", artifacts.display()));
    cmd.args([
        format!("-max_total_time={seconds}"),
        "-rss_limit_mb=1024".into(),
        "-malloc_limit_mb=256".into(),
        "-timeout=20".into(),
        "-print_final_stats=1".into(),
    ]);
    let dict = root().join(FUZZ_DIR).join(format!("{target}.dict"));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    println!("fuzz: {target}: {seconds} s (log: {})", log.display());
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdout(out.try_clone()?).stderr(out);
    let start = SystemTime::now();
    let t = Instant::now();
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    let seconds = t.elapsed().as_secs_f64();

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let failures = artifacts_since(&artifacts, FAILURES, start)?;
    let slow = artifacts_since(&artifacts, &["slow-unit-"], start)?;
    let keep_dir = root().join(REGRESSIONS).join(target);
    std::fs::create_dir_all(&keep_dir)?;
    let mut kept = Vec::new();
    for a in &failures {
        let name = a.file_name().context("an artifact without a name")?;
        let dest = keep_dir.join(name);
        std::fs::copy(a, &dest).with_context(|| format!("copying {} to {}", a.display(), dest.display()))?;
        kept.push(dest);
    }
    if !status.success() && kept.is_empty() {
        bail!("{cmd:?} failed with {status} and left no artifact; see {}", log.display());
    }
    Ok(Outcome {
        target,
        stats: stats(&text),
        seconds,
        kept,
        slow,
        log,
        summary: crash_summary(&text).into_iter().map(str::to_owned).collect(),
    })
}

fn report(o: &Outcome) {
    let verdict = match o.kept.len() {
        0 => "no crash".to_owned(),
        n => format!("{n} failing input(s)"),
    };
    let t = o.target;
    match &o.stats {
        Some(s) => println!(
            "fuzz: {t:<6} {:>10} execs ({:>6}/s), cov {:>5}, ft {:>5}, corpus {:>5}, rss {:>4} MiB, {:>4.0} s: {verdict}",
            s.executions, s.exec_per_s, s.cov, s.ft, s.corpus, s.peak_rss_mb, o.seconds
        ),
        None => println!("fuzz: {t:<6} no libFuzzer statistics in {}, {:.0} s: {verdict}", o.log.display(), o.seconds),
    }
    for s in &o.slow {
        println!("fuzz: {}: slow input (not a failure): {}", o.target, s.display());
    }
    for l in &o.summary {
        println!("fuzz: {}:   {l}", o.target);
    }
}

pub fn run_task(opts: &Options) -> anyhow::Result<()> {
    let targets = opts.targets();
    // qemu-img and tar make the seeds; libfuzzer-sys compiles libFuzzer (C++).
    setup::host(&["tar", "g++"], &[])?;
    cargo_fuzz()?;
    let fuzz = root().join("target/fuzz");
    println!("fuzz: seeds from qemu-img and tar into {}", fuzz.join("corpus").display());
    seeds(&fuzz.join("seeds"), &fuzz.join("corpus"))?;
    for t in &targets {
        println!("fuzz: building {t} (release, AddressSanitizer, RUSTC_BOOTSTRAP=1)");
        run(cargo_fuzz_cmd("build", &fuzz.join("target")).arg(t))?;
    }
    let t = Instant::now();
    let mut outcomes = Vec::new();
    for target in &targets {
        let o = fuzz_one(target, opts.seconds, &fuzz)?;
        report(&o);
        outcomes.push(o);
    }
    println!("\nfuzz: {} target(s) in {:.0} s", outcomes.len(), t.elapsed().as_secs_f64());
    for o in &outcomes {
        report(o);
    }
    let kept: Vec<String> = outcomes.iter().flat_map(|o| &o.kept).map(|p| p.display().to_string()).collect();
    if !kept.is_empty() {
        bail!(
            "a crash became a regression test: {} — fix it and commit the file (replayed by \
             `cargo test -p byoi-agent --test fuzz_regressions`; logs in {})",
            kept.join(", "),
            fuzz.join("logs").display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        use clap::Parser;
        match crate::Cli::try_parse_from(["xtask", "fuzz"].iter().chain(args))?.task {
            crate::Task::Fuzz(o) => Ok(o),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_parse_and_refuse_nonsense() {
        let o = parse(&[]).unwrap();
        assert_eq!((o.seconds, o.targets()), (60, vec!["qcow2", "vmdk", "ova"]));
        let o = parse(&["--seconds", "5", "--only", "OVA, qcow2,ova"]).unwrap();
        assert_eq!((o.seconds, o.targets()), (5, vec!["ova", "qcow2"]));
        for bad in [&["--seconds", "0"][..], &["--seconds"], &["--seconds", "x"], &["--only", "iso"], &["--fast"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stats_from_a_finished_run() {
        let log = "INFO: Seed: 2626769944\n\
                   #2\tINITED cov: 32 ft: 32 corp: 1/1b exec/s: 0 rss: 55Mb\n\
                   #160329\tREDUCE cov: 56 ft: 56 corp: 4/225b lim: 1580 exec/s: 160329 rss: 73Mb L: 80/80 MS: 3\n\
                   \tNEW_FUNC[1/2]: 0x55e733fda5c0 in byoi_agent::qcow2::header::be64\n\
                   #382089\tDONE   cov: 236 ft: 268 corp: 34/2928b lim: 3381 exec/s: 34735 rss: 287Mb\n\
                   ###### Recommended dictionary. ######\n\
                   \"QFI\\373\" # Uses: 15194\n\
                   Done 382089 runs in 11 second(s)\n\
                   stat::number_of_executed_units: 382090\n\
                   stat::average_exec_per_sec:     34735\n\
                   stat::new_units_added:          40\n\
                   stat::peak_rss_mb:              290\n";
        let want = Stats { executions: 382090, exec_per_s: 34735, cov: 236, ft: 268, corpus: 34, peak_rss_mb: 290 };
        assert_eq!(stats(log), Some(want));
    }

    #[test]
    fn stats_of_a_crash_and_of_no_run() {
        // A crash: no DONE line; the stat:: lines come after the report.
        let log = "#1024\tpulse  cov: 120 ft: 130 corp: 9/1Mb exec/s: 512 rss: 400Mb\n\
                   thread '<unnamed>' panicked at agent/src/fuzzing.rs:32:9:\n\
                   write of 512 bytes at 0x100000, past the declared size 0x100000\n\
                   ==123== ERROR: libFuzzer: deadly signal\n\
                   SUMMARY: libFuzzer: deadly signal\n\
                   stat::number_of_executed_units: 1100\n";
        let s = stats(log).unwrap();
        assert_eq!((s.executions, s.cov, s.ft, s.corpus, s.peak_rss_mb), (1100, 120, 130, 9, 400));
        assert_eq!(
            crash_summary(log),
            [
                "thread '<unnamed>' panicked at agent/src/fuzzing.rs:32:9:",
                "write of 512 bytes at 0x100000, past the declared size 0x100000",
                "==123== ERROR: libFuzzer: deadly signal",
                "SUMMARY: libFuzzer: deadly signal",
            ]
        );
        assert_eq!(stats("error: could not compile `byoi-agent`\n#include <x>\n"), None);
    }

    #[test]
    fn seed_raw_image() {
        let img = raw_image();
        assert_eq!(img.len(), RAW_SIZE);
        assert_eq!(img, raw_image(), "the seeds are deterministic");
        assert_eq!(&img[510..512], &[0x55, 0xaa]);
        assert!(img[256 << 10..320 << 10].iter().all(|&b| b == 0));
        assert!(img[RAW_SIZE - 4096..].iter().any(|&b| b != 0));
    }
}
