//! A PostgreSQL cluster of the run's own (Debian's `postgresql` 15): made
//! with `initdb` in a temporary directory, listening on loopback only, on
//! a free port, trusting local connections; stopped and removed when
//! dropped. As root, its programs run as the `postgres` user (PostgreSQL
//! refuses root), which owns the directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where Debian puts PostgreSQL 15's programs.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster.
pub struct Cluster {
    dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:PORT` (no database).
    pub url: String,
}

/// `program args…`, as `postgres` when we are root.
fn command(program: &str, args: &[&str]) -> Command {
    let path = Path::new(BIN).join(program);
    if crate::setup::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path).args(args);
        c
    } else {
        let mut c = Command::new(path);
        c.args(args);
        c
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = command(program, args).output().with_context(|| format!("running {program} (package postgresql)"))?;
    if !out.status.success() {
        bail!("{program} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Cluster {
    /// Makes and starts a cluster.
    pub fn start() -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("byoi-postgres-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if crate::setup::is_root() {
            crate::run(Command::new("chown").args(["postgres:postgres"]).arg(&dir))?;
        }
        // From here on, dropping it stops and removes what was made.
        let mut cluster = Cluster { dir: dir.clone(), url: String::new() };
        let data = dir.join("data");
        let data = data.to_str().context("a UTF-8 temporary directory")?;
        run("initdb", &["-D", data, "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--locale=C"])?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let socket = dir.to_str().context("a UTF-8 temporary directory")?;
        // A test cluster: nothing it holds must survive a crash of the
        // machine, so no fsync; enough connections for the suites running
        // side by side (each controller opens four).
        let settings = format!(
            "-p {port} -k {socket} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=400"
        );
        let log = dir.join("postgres.log");
        let log = log.to_str().context("a UTF-8 temporary directory")?;
        run("pg_ctl", &["-D", data, "-o", &settings, "-l", log, "-w", "start"])?;
        cluster.url = format!("postgres://postgres@127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !command("pg_isready", &["-h", "127.0.0.1", "-p", &port.to_string()]).output()?.status.success() {
            if Instant::now() > deadline {
                bail!("PostgreSQL did not accept connections on port {port}; see {log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("xtask: PostgreSQL 15 at {} ({})", cluster.url, dir.display());
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            if let Some(data) = data.to_str() {
                if let Err(e) = run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]) {
                    eprintln!("xtask: stopping PostgreSQL: {e:#}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_answers_and_is_gone_once_dropped() {
        let cluster = Cluster::start().unwrap();
        let port = cluster.url.rsplit(':').next().unwrap().to_owned();
        let ready = || command("pg_isready", &["-h", "127.0.0.1", "-p", &port]).output().unwrap().status.success();
        assert!(ready());
        let dir = cluster.dir.clone();
        drop(cluster);
        assert!(!ready(), "the cluster still runs");
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}
