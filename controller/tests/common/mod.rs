//! What the suites that run the `byoi` binary share: `byoi serve` on a
//! free port, killed and reaped when dropped.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `byoi serve`; dropping it kills and reaps it.
pub struct Controller {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The API token it generated.
    pub token: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `byoi serve` on a free port with `extra` arguments; reads the address
/// it prints (`listening on SCHEME://ADDR`) and the token it generated.
pub fn start_with(data_dir: &Path, extra: &[&std::ffi::OsStr], scheme: &str) -> Controller {
    start_configured(data_dir, extra, scheme, |_| {})
}

/// [`start_with`], the command changed by `configure` first (its log
/// level, where its stderr goes).
pub fn start_configured(
    data_dir: &Path,
    extra: &[&std::ffi::OsStr],
    scheme: &str,
    configure: impl FnOnce(&mut Command),
) -> Controller {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_byoi"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let prefix = format!("listening on {scheme}://");
    let addr = line.trim().strip_prefix(&prefix).unwrap_or_else(|| panic!("{line:?}")).to_owned();
    let token = std::fs::read_to_string(data_dir.join("api-token")).unwrap().trim().to_owned();
    Controller { child, addr, token }
}
