//! `cargo xtask bench --link RATE|none`: the benchmark on a link of a known
//! speed. A network namespace of our own whose loopback is shaped with
//! `tc tbf` (`none`: left as is); xtask's main thread enters it before
//! nginx starts, so that nginx, curl and every agent — all spawned from
//! that thread — talk over it. Needs root; the namespace is deleted on
//! drop, after the thread went back to the network namespace it came from
//! (and one that an interrupted run left behind, by the next run).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::run;

/// What `--link` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// `tc tbf` at this many bits per second; `text` as given (`8gbit`).
    Shaped { bits_per_s: u64, text: String },
    /// A namespace of its own, its loopback not shaped.
    Unshaped,
}

impl Link {
    /// Parses `none`, or a rate as `tc` takes it: a number and `kbit`,
    /// `mbit` or `gbit` (decimal multiples, as `tc` reads them).
    pub fn parse(s: &str) -> Result<Link, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "none" {
            return Ok(Link::Unshaped);
        }
        let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let scale: u64 = match unit {
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            _ => return Err(format!("{s:?}: expected none, or a rate such as 8gbit, 25gbit or 500mbit")),
        };
        let n: u64 = digits.parse().map_err(|_| format!("{s:?}: the rate needs a whole number before {unit}"))?;
        let bits_per_s = n.checked_mul(scale).filter(|&b| (1_000_000..=400_000_000_000).contains(&b));
        match bits_per_s {
            Some(bits_per_s) => Ok(Link::Shaped { bits_per_s, text: s }),
            None => Err(format!("{s:?}: a rate from 1mbit to 400gbit")),
        }
    }

    /// For reports: `8gbit`, or `unshaped`.
    pub fn describe(&self) -> &str {
        match self {
            Link::Shaped { text, .. } => text,
            Link::Unshaped => "unshaped",
        }
    }

    /// The shaper's bucket: at least what flows in 4 ms (a 250 Hz tick, the
    /// kernel's default, must not starve it), and never under 4 MiB (what
    /// measured 0.98 GB/s at 8gbit here).
    fn burst_bytes(bits_per_s: u64) -> u64 {
        (bits_per_s / 8 / 250).max(4 << 20)
    }
}

/// The namespace, entered by the calling thread.
#[derive(Debug)]
pub struct Netns {
    name: String,
    home: File,
}

impl Netns {
    /// Makes the namespace, shapes its loopback and moves the calling
    /// thread into it.
    pub fn enter(link: &Link) -> anyhow::Result<Netns> {
        if !crate::setup::is_root() {
            bail!("--link needs root (ip netns, tc)");
        }
        remove_stale();
        let name = format!("byoi-bench-{}", std::process::id());
        let home = File::open("/proc/thread-self/ns/net").context("opening this thread's network namespace")?;
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, drop deletes it.
        let ns = Netns { name, home };
        let handle = File::open(format!("/run/netns/{}", ns.name)).context("opening the new namespace")?;
        nix::sched::setns(handle.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
        run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
        if let Link::Shaped { bits_per_s, text } = link {
            let burst = Link::burst_bytes(*bits_per_s).to_string();
            run(Command::new("tc")
                .args(["qdisc", "add", "dev", "lo", "root", "tbf", "rate", text, "burst", &burst])
                .args(["latency", "100ms"]))?;
        }
        Ok(ns)
    }
}

/// Deletes the namespaces of earlier runs that were killed before their
/// `Drop` (their name carries their process id, no longer alive).
fn remove_stale() {
    for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("byoi-bench-") else { continue };
        if !Path::new("/proc").join(pid).exists() {
            println!("bench: deleting the namespace {name} left by an interrupted run");
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("bench: leaving the namespace {}: {e}", self.name);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_refuses_nonsense() {
        assert_eq!(Link::parse("none"), Ok(Link::Unshaped));
        assert_eq!(Link::parse("8gbit"), Ok(Link::Shaped { bits_per_s: 8_000_000_000, text: "8gbit".into() }));
        assert_eq!(Link::parse(" 25GBIT "), Ok(Link::Shaped { bits_per_s: 25_000_000_000, text: "25gbit".into() }));
        assert_eq!(Link::parse("500mbit").map(|l| l.describe().to_owned()), Ok("500mbit".into()));
        for bad in ["", "8", "8gb", "gbit", "8.5gbit", "0gbit", "999gbit", "10kbit", "-1gbit"] {
            assert!(Link::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_bucket_holds_a_tick_of_traffic() {
        assert_eq!(Link::burst_bytes(8_000_000_000), 4 << 20);
        assert_eq!(Link::burst_bytes(25_000_000_000), 12_500_000);
    }
}
