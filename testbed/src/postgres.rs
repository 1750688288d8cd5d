//! A fresh PostgreSQL database for a test, when the run has a cluster.
//!
//! `cargo xtask test` starts a PostgreSQL cluster of its own and names it
//! in `BYOI_TEST_POSTGRES` (`postgres://postgres@127.0.0.1:PORT`), then
//! runs the controller's suites a second time against it: each test that
//! asks gets a database of its own, made with `psql` (std only here).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The variable that names the cluster.
pub const ENV: &str = "BYOI_TEST_POSTGRES";

/// The URL of the database of the test whose files are in `dir`, made
/// empty on first use (a test that restarts its controller finds it
/// again); `None` when the run has no cluster (the suite then uses
/// SQLite).
pub fn postgres_database(dir: &Path) -> Option<String> {
    let kept = dir.join("postgres-url");
    if let Ok(url) = std::fs::read_to_string(&kept) {
        return Some(url);
    }
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var(ENV).ok().filter(|u| !u.is_empty())?;
    let base = base.trim_end_matches('/');
    let name = format!("byoi_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let out = Command::new("psql")
        .args([&format!("{base}/postgres"), "-v", "ON_ERROR_STOP=1", "-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql (cargo xtask setup installs postgresql)");
    assert!(out.status.success(), "CREATE DATABASE {name}: {}", String::from_utf8_lossy(&out.stderr));
    let url = format!("{base}/{name}");
    std::fs::create_dir_all(dir).expect("the test's directory");
    std::fs::write(&kept, &url).expect("the test's directory");
    Some(url)
}
