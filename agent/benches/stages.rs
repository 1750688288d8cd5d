//! Micro-benchmarks of the pipeline's stages alone, to show which one
//! limits a deployment: hashing, zero detection, qcow2 decoding (to a sink
//! that drops everything, and through the disk writer to a target that
//! drops everything), and, given a URL, receiving over HTTP. Each digest is
//! measured alternately with `openssl speed` on the same machine, and the
//! ratio printed: the goal is ≥ 0.95 of OpenSSL for all four.
//!
//! `cargo bench -p byoi-agent --bench stages -- QCOW2 [QCOW2_COMPRESSED] [--url URL]`;
//! `cargo xtask bench` runs it on its workload. Prints a line per stage and
//! then one JSON object: `stages` (MB/s by stage name) and `hashes` (each
//! algorithm's MB/s, OpenSSL's, and their ratio).

use std::io::{self, Cursor, Read};
use std::sync::Arc;
use std::time::Instant;

use byoi_agent::checksum::{Algorithm, Hasher};
use byoi_agent::progress::Progress;
use byoi_agent::qcow2::{Decoder, Header};
use byoi_agent::sink::{is_zero, DiskWriter, ImageSink, Target};
use byoi_agent::source::{self, SourceOptions};

/// Bytes hashed / scanned per sample.
const BUF: usize = 1 << 30;
/// Samples per stage; the median is reported.
const SAMPLES: usize = 3;

/// Drops every write: decoding alone.
struct NullSink;

impl ImageSink for NullSink {
    fn write_at(&mut self, _offset: u64, data: &[u8]) -> byoi_agent::Result<()> {
        std::hint::black_box(data);
        Ok(())
    }

    fn zero_at(&mut self, _offset: u64, _len: u64) -> byoi_agent::Result<()> {
        Ok(())
    }
}

/// A target of any size that drops every write: the writer's own cost.
struct NullTarget(u64);

impl Target for NullTarget {
    fn path(&self) -> &str {
        "null"
    }
    fn size(&self) -> u64 {
        self.0
    }
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn write_all_at(&self, buf: &[u8], _offset: u64) -> io::Result<()> {
        std::hint::black_box(buf);
        Ok(())
    }
    fn read_exact_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn zero_range(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn reread_partitions(&self) -> io::Result<()> {
        Ok(())
    }
}

/// One algorithm's rate here and `openssl speed`'s, measured alternately.
struct HashRate {
    algo: Algorithm,
    ours: f64,
    openssl: Option<f64>,
}

/// `SAMPLES` alternating runs of our digest over `data` in 1 MiB updates
/// and of `openssl speed -evp ALGO -bytes 1048576` (the same update size),
/// so that both see the same machine; medians in MB/s. `openssl` missing or
/// failing leaves its rate out.
fn hash_vs_openssl(algo: Algorithm, data: &[u8]) -> HashRate {
    let mut hash = || {
        let mut h = Hasher::new(algo);
        for c in data.chunks(1 << 20) {
            h.update(c);
        }
        std::hint::black_box(h.finish());
    };
    hash();
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        mine.push(mb_s(data.len() as u64, &mut hash));
        theirs.extend(openssl_speed(algo));
    }
    HashRate { algo, ours: median(mine).unwrap_or(0.0), openssl: median(theirs) }
}

/// MB/s of `openssl speed` for `algo` with 1 MiB blocks over 2 seconds.
fn openssl_speed(algo: Algorithm) -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-evp", algo.name(), "-bytes", "1048576", "-seconds", "2"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    // The last line: `sha512   838860.80k` (thousands of bytes per second).
    let text = String::from_utf8_lossy(&out.stdout);
    let kbytes = text.lines().last()?.split_whitespace().nth(1)?.strip_suffix('k')?.parse::<f64>().ok()?;
    Some(kbytes / 1e3)
}

/// Median MB/s of `SAMPLES` runs of `f`, which processes `bytes` bytes,
/// after one untimed run to warm caches and the allocator.
fn rate(bytes: u64, mut f: impl FnMut()) -> f64 {
    f();
    median((0..SAMPLES).map(|_| mb_s(bytes, &mut f)).collect()).unwrap_or(0.0)
}

/// MB/s of one run of `f`, which processes `bytes` bytes.
fn mb_s(bytes: u64, f: &mut impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// The middle value; `None` for none.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn decode(image: &[u8], sink: &mut dyn ImageSink) {
    let h = Header::parse(&image[..image.len().min(64 << 10)], Some(image.len() as u64)).expect("qcow2 header");
    let dec = Decoder::new(h, sink, None, Some(image.len() as u64), None);
    dec.run(&mut Cursor::new(image)).expect("decoding");
}

fn qcow2_stages(name: &str, path: &str, out: &mut Vec<(String, f64)>) {
    let image = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let h = Header::parse(&image[..image.len().min(64 << 10)], Some(image.len() as u64)).expect("qcow2 header");
    let size = h.size;
    out.push((format!("{name} decode"), rate(size, || decode(&image, &mut NullSink))));
    let target = NullTarget(size);
    out.push((
        format!("{name} decode+writer"),
        rate(size, || {
            let mut w = DiskWriter::new(&target, "qcow2");
            decode(&image, &mut w);
            w.commit().expect("commit");
        }),
    ));
}

fn http_receive(url: &str, out: &mut Vec<(String, f64)>) {
    let mut bytes = 0;
    let r = rate(1, || {
        let opened = source::open(url, &SourceOptions::default(), None, Arc::new(Progress::default())).expect("open");
        let mut reader = opened.reader;
        let mut buf = vec![0u8; 1 << 20];
        bytes = 0;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(e) => panic!("receiving {url}: {e}"),
            }
        }
    });
    // `rate` was given 1 byte: scale by what was received.
    out.push(("http receive".into(), r * bytes as f64));
}

fn main() {
    // `cargo bench` adds `--bench`.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut url = None;
    let mut files = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => url = it.next(),
            _ => files.push(a),
        }
    }
    let mut out: Vec<(String, f64)> = Vec::new();

    let mut data = vec![0u8; BUF];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let mut hashes = Vec::new();
    for algo in [Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512] {
        let h = hash_vs_openssl(algo, &data);
        out.push((algo.name().to_owned(), h.ours));
        hashes.push(h);
    }
    let zeros = vec![0u8; BUF];
    out.push((
        "zero detection".into(),
        rate(BUF as u64, || {
            std::hint::black_box(zeros.chunks(64 << 10).all(is_zero));
        }),
    ));
    drop((data, zeros));
    for (i, f) in files.iter().enumerate() {
        qcow2_stages(if i == 0 { "qcow2" } else { "qcow2 -c" }, f, &mut out);
    }
    if let Some(u) = &url {
        http_receive(u, &mut out);
    }
    for (k, v) in &out {
        println!("{k:<24} {v:8.0} MB/s");
    }
    for h in &hashes {
        if let Some(o) = h.openssl {
            println!(
                "{:<24} {o:8.0} MB/s  ours / openssl {:.2}",
                format!("{} openssl speed", h.algo.name()),
                h.ours / o
            );
        }
    }
    let stages: serde_json::Map<String, serde_json::Value> = out.into_iter().map(|(k, v)| (k, v.into())).collect();
    let hashes: Vec<serde_json::Value> = hashes
        .iter()
        .map(|h| {
            serde_json::json!({
                "algo": h.algo.name(),
                "mb_s": h.ours,
                "openssl_mb_s": h.openssl,
                "ratio": h.openssl.map(|o| h.ours / o),
            })
        })
        .collect();
    println!("{}", serde_json::json!({ "stages": stages, "hashes": hashes }));
}
