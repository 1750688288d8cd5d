//! OVHcloud's own Python SDK (`ovh` from PyPI) against a real `byoi serve`:
//! the proof that byoi is a drop-in endpoint for OVHcloud's tooling. The
//! calls, the signed requests and every error class are checked in
//! `ovh/test_ovh_sdk.py`, run here with the interpreter of the virtual
//! environment `cargo xtask test` makes (`BYOI_PYTHON`, else `target/py`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use byoi_testbed::{timed, TimedChild};

/// The interpreter `cargo xtask test` passes on.
const PYTHON_VAR: &str = "BYOI_PYTHON";

/// Longest the Python suite may run: it takes seconds; a hang must not
/// hold `cargo test` for the SDK's own 180 s per request.
const LIMIT: Duration = Duration::from_secs(300);

/// The variables through which the SDK would find another configuration
/// than the test's `ovh.conf`, and the proxies `requests` would send
/// loopback traffic to.
const FOREIGN_ENV: &[&str] = &[
    "OVH_ENDPOINT",
    "OVH_APPLICATION_KEY",
    "OVH_APPLICATION_SECRET",
    "OVH_CONSUMER_KEY",
    "OVH_CLIENT_ID",
    "OVH_CLIENT_SECRET",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "BYOI_API_TOKEN",
    "BYOI_CONTROLLER",
];

/// The virtual environment's interpreter: `BYOI_PYTHON`, else the
/// workspace's `target/py` if `cargo xtask` made it. Without either, CI
/// (`BYOI_E2E=1`) fails; a developer's `cargo test` says why it skips.
fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(PYTHON_VAR) {
        return Some(PathBuf::from(p));
    }
    let made = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python");
    if made.is_file() {
        return Some(made);
    }
    if std::env::var("BYOI_E2E").is_ok_and(|v| v == "1") {
        panic!("{PYTHON_VAR} is not set and target/py does not exist: `cargo xtask test` makes the SDK's environment");
    }
    eprintln!(
        "ovh_sdk: skipped, no Python environment with OVHcloud's SDK: run `cargo xtask python-env` (or set \
         {PYTHON_VAR})"
    );
    None
}

#[test]
fn ovhcloud_python_sdk_drives_byoi() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = common::start_with(&data, &[], "http");
    // The boot script sends the agent only with a kernel and initramfs to
    // serve; their bytes do not matter, no machine boots them.
    let artifacts = data.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("vmlinuz"), b"k").unwrap();
    std::fs::write(artifacts.join("initramfs.img"), b"i").unwrap();
    // The suite's working directory and home: the SDK also reads
    // ./ovh.conf and ~/.ovh.conf, and must find only the test's own.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let log_path = dir.path().join("python.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ovh/test_ovh_sdk.py");
    let mut cmd = timed(LIMIT, &python);
    cmd.arg(&suite)
        .current_dir(&home)
        .env("HOME", &home)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("BYOI_URL", format!("http://{}", c.addr))
        .env("BYOI_BIN", env!("CARGO_BIN_EXE_byoi"))
        .env("BYOI_DATA_DIR", &data)
        .env("BYOI_TOKEN", &c.token)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for var in FOREIGN_ENV {
        cmd.env_remove(var);
    }
    let mut child = TimedChild::spawn(&mut cmd).unwrap();
    let status = child.wait().unwrap();
    let out = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "the SDK suite failed ({status}; 124 is the {LIMIT:?} limit):\n{out}");
    eprintln!("{out}");
}

/// The environment is made from exact pins: what the suite proves holds
/// for one known SDK release, the one the README names.
#[test]
fn the_sdk_requirements_are_pinned() {
    let pins =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ovh/requirements.txt")).unwrap();
    let reqs: Vec<&str> = pins.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    assert!(reqs.contains(&"ovh==1.2.0"), "{pins}");
    assert!(reqs.iter().all(|l| l.contains("==")), "{pins}");
}
