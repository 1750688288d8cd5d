//! The benchmark's workload: a 4 GiB GPT disk image shaped like a fresh OS
//! install, as raw, qcow2 and compressed qcow2, generated once and cached
//! in `target/bench/workload`.
//!
//! Shape: an ESP and a root partition; between the partition tables, data
//! extents of 16 KiB to 16 MiB (log-uniform, 4 KiB aligned) separated by
//! zero gaps drawn from the same distribution scaled by 1.5, so that ~40 %
//! of the disk is data and ~60 % zeros. A third of the extents are random
//! bytes (compressed files: packages, images), two thirds low-entropy text
//! (binaries, configuration), which deflate shrinks ~3:1, so that the
//! compressed qcow2 compresses like a real one. Everything comes from a
//! fixed seed: the same bytes on every machine.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{root, run};

/// The image's virtual size.
pub const SIZE: u64 = 4 << 30;

/// Bumped whenever the generator changes, to invalidate the cache.
const VERSION: u32 = 1;

const SEED: u64 = 0x6279_6f69_6265_6e63;

/// Partition tables live in the first and last MiB; data stays clear of them.
const RESERVED: u64 = 1 << 20;

const ALIGN: u64 = 4096;
const MIN_EXTENT: u64 = 16 << 10;
const MAX_EXTENT: u64 = 16 << 20;
/// Mean gap / mean extent: 1.5 gives 40 % data.
const GAP_RATIO: f64 = 1.5;

/// The served files: raw, qcow2, compressed qcow2.
const FILES: [&str; 3] = ["disk.raw", "disk.qcow2", "disk-c.qcow2"];

/// The digests the agent verifies, as `--checksum` names them.
pub const ALGOS: [&str; 4] = ["md5", "sha1", "sha256", "sha512"];

/// One served file of the workload.
#[derive(Debug, Clone)]
pub struct Served {
    /// File name, under the workload directory.
    pub name: &'static str,
    pub path: PathBuf,
    pub len: u64,
    /// Hex digest by algorithm, for every one of [`ALGOS`].
    pub sums: std::collections::BTreeMap<String, String>,
}

impl Served {
    /// The hex digest of `algo`, one of [`ALGOS`].
    pub fn sum(&self, algo: &str) -> &str {
        self.sums.get(algo).map_or("", String::as_str)
    }
}

/// The cached workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub raw: Served,
    pub qcow2: Served,
    pub qcow2c: Served,
    /// Fraction of the disk that is data (not zeros).
    pub data_fraction: f64,
    /// SHA-256 of the raw image: what every target must read back as.
    pub disk_sha256: String,
}

/// wyrand: fast, good enough for benchmark data, identical everywhere.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in [lo, hi), aligned down to [`ALIGN`].
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
        let v = (l + (h - l) * self.unit()).exp() as u64;
        (v / ALIGN * ALIGN).max(ALIGN)
    }

    fn fill_random(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    /// Words from a fixed 256-word vocabulary, a byte of randomness each.
    fn fill_text(&mut self, vocab: &[Vec<u8>], buf: &mut [u8]) {
        let mut i = 0;
        let mut bits = 0u64;
        let mut left = 0;
        while i < buf.len() {
            if left == 0 {
                bits = self.next();
                left = 8;
            }
            let w = &vocab[(bits & 0xff) as usize];
            bits >>= 8;
            left -= 1;
            let n = w.len().min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
    }
}

fn vocabulary(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..256u32)
        .map(|i| {
            let len = 2 + (rng.next() % 9) as usize;
            let mut w: Vec<u8> = (0..len).map(|_| b'a' + (rng.next() % 26) as u8).collect();
            w.push(if i.is_multiple_of(16) { b'\n' } else { b' ' });
            w
        })
        .collect()
}

/// The workload's data extents, `(offset, len, random)`, in disk order.
fn extents(rng: &mut Rng) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let mut at = RESERVED;
    let end = SIZE - RESERVED;
    loop {
        let len = rng.log_uniform(MIN_EXTENT, MAX_EXTENT);
        if at + len > end {
            break;
        }
        out.push((at, len, rng.next().is_multiple_of(3)));
        let gap = (rng.log_uniform(MIN_EXTENT, MAX_EXTENT) as f64 * GAP_RATIO) as u64 / ALIGN * ALIGN;
        at += len + gap;
    }
    out
}

/// The workload directory.
pub fn dir() -> PathBuf {
    root().join("target/bench/workload")
}

/// SHA-256 of the first `limit` bytes of `path` (a file, or a device).
fn sha256_of(path: &Path, limit: u64) -> anyhow::Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?.take(limit);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Hashes the first [`SIZE`] bytes of `path` (a target file or device).
pub fn disk_sha256(path: &Path) -> anyhow::Result<String> {
    sha256_of(path, SIZE)
}

/// Returns the workload, generating it on first use (~1–2 minutes, most
/// of it `qemu-img convert -c`).
pub fn workload() -> anyhow::Result<Workload> {
    let dir = dir();
    let stamp = dir.join("stamp.json");
    if let Ok(s) = std::fs::read_to_string(&stamp) {
        if let Ok(w) = from_stamp(&dir, &s).and_then(|v| with_all_sums(&dir, &stamp, v)) {
            return Ok(w);
        }
    }
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(&stamp);
    let [raw, qcow2, qcow2c] = FILES.map(|f| dir.join(f));
    println!("bench: generating the 4 GiB workload in {}", dir.display());
    let data = generate(&raw)?;
    run(Command::new("sgdisk")
        .args(["--clear", "--new=1:2048:+512M", "--typecode=1:ef00", "--change-name=1:EFI"])
        .args(["--new=2:0:0", "--typecode=2:8304", "--change-name=2:root", "--disk-guid=R"])
        .arg(&raw)
        .stdout(std::process::Stdio::null()))?;
    println!("bench: qemu-img convert -O qcow2, then -c");
    run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2))?;
    run(Command::new("qemu-img").args(["convert", "-c", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2c))?;
    let mut files = serde_json::Map::new();
    for name in FILES {
        let len = std::fs::metadata(dir.join(name))?.len();
        files.insert(name.into(), json!({ "len": len, "sums": {} }));
    }
    let s = json!({ "version": VERSION, "data_fraction": data as f64 / SIZE as f64, "files": files });
    with_all_sums(&dir, &stamp, s)
}

/// Completes the stamp's digests of each file (stamps of older versions of
/// this code have SHA-256 only; `{algo}sum` from coreutils computes the
/// rest, once), saves it, and returns the workload.
fn with_all_sums(dir: &Path, stamp: &Path, mut v: serde_json::Value) -> anyhow::Result<Workload> {
    let mut changed = false;
    for name in FILES {
        let f = &mut v["files"][name];
        if let Some(old) = f.get("sha256").cloned() {
            f["sums"]["sha256"] = old;
            f.as_object_mut().map(|o| o.remove("sha256"));
            changed = true;
        }
        for algo in ALGOS {
            if f["sums"][algo].is_string() {
                continue;
            }
            println!("bench: {algo} of {name}");
            let out = crate::deb::output(Command::new(format!("{algo}sum")).arg(dir.join(name)))?;
            let hex = out.split_whitespace().next().context("no digest")?.to_owned();
            f["sums"][algo] = json!(hex);
            changed = true;
        }
    }
    if changed {
        std::fs::write(stamp, serde_json::to_string_pretty(&v)?)?;
    }
    workload_of(dir, &v)
}

/// The stamp's JSON, if it describes the files there now.
fn from_stamp(dir: &Path, s: &str) -> anyhow::Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(s)?;
    anyhow::ensure!(v["version"] == VERSION, "stale workload");
    for name in FILES {
        let len = v["files"][name]["len"].as_u64().context("len")?;
        anyhow::ensure!(std::fs::metadata(dir.join(name))?.len() == len, "{name} changed");
    }
    Ok(v)
}

fn workload_of(dir: &Path, v: &serde_json::Value) -> anyhow::Result<Workload> {
    let served = |name: &'static str| -> anyhow::Result<Served> {
        let f = &v["files"][name];
        let sums = ALGOS
            .iter()
            .map(|&a| Ok((a.to_owned(), f["sums"][a].as_str().with_context(|| format!("{a} of {name}"))?.to_owned())))
            .collect::<anyhow::Result<_>>()?;
        Ok(Served { name, path: dir.join(name), len: f["len"].as_u64().context("len")?, sums })
    };
    let [raw, qcow2, qcow2c] = FILES.map(served);
    let raw = raw?;
    Ok(Workload {
        disk_sha256: raw.sum("sha256").to_owned(),
        raw,
        qcow2: qcow2?,
        qcow2c: qcow2c?,
        data_fraction: v["data_fraction"].as_f64().context("data_fraction")?,
    })
}

/// Writes the sparse raw image's data extents; returns the data bytes.
fn generate(path: &Path) -> anyhow::Result<u64> {
    let f = File::create(path)?;
    f.set_len(SIZE)?;
    // The layout has its own generator, so that the unit test sees it.
    let layout = extents(&mut Rng(SEED));
    let mut rng = Rng(!SEED);
    let vocab = vocabulary(&mut rng);
    let mut buf = vec![0u8; MAX_EXTENT as usize];
    let mut data = 0;
    for (offset, len, random) in layout {
        let b = &mut buf[..len as usize];
        if random {
            rng.fill_random(b);
        } else {
            rng.fill_text(&vocab, b);
        }
        f.write_all_at(b, offset)?;
        data += len;
    }
    f.sync_all()?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_aligned_disjoint_and_about_forty_percent() {
        let e = extents(&mut Rng(SEED));
        let mut end = RESERVED;
        for &(off, len, _) in &e {
            assert!(off >= end && off % ALIGN == 0 && len % ALIGN == 0 && len >= ALIGN);
            end = off + len;
        }
        assert!(end <= SIZE - RESERVED);
        let data: u64 = e.iter().map(|x| x.1).sum();
        let frac = data as f64 / SIZE as f64;
        assert!((0.38..0.42).contains(&frac), "{frac}");
        let random = e.iter().filter(|x| x.2).count() as f64 / e.len() as f64;
        assert!((0.2..0.45).contains(&random), "{random}");
    }

    #[test]
    fn text_fill_is_words() {
        let mut rng = Rng(1);
        let vocab = vocabulary(&mut rng);
        let mut b = vec![0u8; 4096];
        rng.fill_text(&vocab, &mut b);
        assert!(b.iter().all(|&c| c.is_ascii_lowercase() || c == b' ' || c == b'\n'));
    }
}
