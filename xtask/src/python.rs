//! The Python virtual environment of the tests that drive `byoi serve` with
//! OVHcloud's own Python SDK (`controller/tests/ovh_sdk.rs`):
//! `target/py`, made with the system's `python3 -m venv` and filled by its
//! `pip` from the pinned [`REQUIREMENTS`], with the index pip is configured
//! to use on this machine. A stamp (a copy of the requirements it was made
//! from) makes a second run a no-op; changed requirements make it anew.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::{root, run};

/// The pinned requirements, relative to the workspace root.
pub const REQUIREMENTS: &str = "controller/tests/ovh/requirements.txt";

/// The variable through which `cargo test` learns the environment's
/// interpreter.
pub const PYTHON_VAR: &str = "BYOI_PYTHON";

/// The environment's directory, relative to the workspace root.
const VENV: &str = "target/py";

/// Inside the environment: the requirements it was made from.
const STAMP: &str = "requirements.stamp";

/// Makes `target/py` from [`REQUIREMENTS`] unless it already holds them;
/// returns its interpreter.
pub fn venv() -> anyhow::Result<PathBuf> {
    let root = root();
    let venv = root.join(VENV);
    let python = venv.join("bin/python");
    let wanted = std::fs::read(root.join(REQUIREMENTS)).with_context(|| format!("reading {REQUIREMENTS}"))?;
    let stamp = venv.join(STAMP);
    if python.is_file() && std::fs::read(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    if !has_venv() {
        // Debian's python3 keeps venv (and the ensurepip it needs) apart.
        crate::setup::host(&["python3-venv"], &[])?;
    }
    println!("setup: making the Python environment {VENV} from {REQUIREMENTS}");
    // A stale or half-made environment is started over, never patched.
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    let pip = venv.join("bin/pip");
    run(Command::new(&pip).args(["install", "--quiet", "--require-virtualenv", "-r"]).arg(root.join(REQUIREMENTS)))?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

/// Whether `python3` can make a virtual environment with pip in it.
fn has_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
