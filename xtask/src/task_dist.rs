//! `cargo xtask dist`: the Debian package, `target/dist/byoi_VERSION_amd64.deb`.
//!
//! It holds the release controller (`/usr/bin/byoi`), the agent's kernel,
//! initramfs and manifest (`/usr/lib/byoi/agent`, what `artifacts` in the
//! shipped `/etc/byoi/byoi.toml` names), the hardened unit and maintainer
//! scripts of `controller/dist/`, shell completions and manual pages made
//! by the binary itself. The version is the workspace's plus the number of
//! commits and the commit (`0.1.0+git412.a5a1682`), so every build of `main`
//! upgrades the one before. `Depends` comes from the binary's `NEEDED`
//! libraries and the newest glibc symbol version it uses.
//!
//! `--check` (root; what `cargo xtask test` runs) installs the package on
//! this machine with apt, verifies the unit with `systemd-analyze verify`,
//! starts the controller from the unit's own command line as its user, as
//! systemd would (state directory, umask, no new privileges), reinstalls it
//! as an upgrade and starts it again on the same data, then purges it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, ensure, Context};

use crate::deb::output;
use crate::{root, run};

/// `cargo xtask dist` options.
#[derive(Debug, Default, clap::Args)]
pub struct Options {
    /// Then install the package on this machine, run the controller from its unit, upgrade, purge (root)
    #[arg(long)]
    pub check: bool,
}

/// The package's name, its user's and its unit's.
const NAME: &str = "byoi";
/// Where the agent's artifacts go.
const AGENT_DIR: &str = "usr/lib/byoi/agent";
/// The agent's files the controller serves (`task_initramfs`'s output).
const AGENT_FILES: &[&str] = &["vmlinuz", "initramfs.img", "manifest.json"];
/// Shared libraries the binary may need, and the package that has each.
const LIBRARIES: &[(&str, &str)] = &[
    ("libc.so.6", "libc6"),
    ("libm.so.6", "libc6"),
    ("libdl.so.2", "libc6"),
    ("libpthread.so.0", "libc6"),
    ("librt.so.1", "libc6"),
    ("ld-linux-x86-64.so.2", "libc6"),
    ("libgcc_s.so.1", "libgcc-s1"),
];

pub fn run_task(opts: &Options) -> anyhow::Result<()> {
    let deb = build()?;
    println!("dist: {}", deb.display());
    if opts.check {
        check(&deb)?;
        println!("dist: {} installs, runs from its unit, upgrades and purges", deb.display());
    }
    Ok(())
}

/// Builds the package; returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    let root = root();
    crate::task_initramfs::run_task(&crate::task_initramfs::Options::default())?;
    run(Command::new("cargo").args(["build", "--release", "--locked", "-p", "byoi-controller", "--bin", NAME]))?;
    let binary = root.join("target/release").join(NAME);
    let version = version()?;
    let out = root.join("target/dist");
    let stage = out.join("root");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let dist = root.join("controller/dist");
    let put = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().context("a path in the package")?)?;
        std::fs::copy(from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    };
    put(&binary, "usr/bin/byoi", 0o755)?;
    for f in AGENT_FILES {
        put(&root.join("target/byoi").join(f), &format!("{AGENT_DIR}/{f}"), 0o644)?;
    }
    put(&dist.join("byoi.service"), "lib/systemd/system/byoi.service", 0o644)?;
    put(&dist.join("byoi.toml"), "etc/byoi/byoi.toml", 0o640)?;
    put(&dist.join("copyright"), "usr/share/doc/byoi/copyright", 0o644)?;
    for doc in ["README.md", "ARCHITECTURE.md", "docs/security.md", "docs/lifecycle.md"] {
        let name = Path::new(doc).file_name().context("a file name")?.to_string_lossy().into_owned();
        put(&root.join(doc), &format!("usr/share/doc/byoi/{name}"), 0o644)?;
    }
    for script in ["postinst", "prerm", "postrm"] {
        put(&dist.join(script), &format!("DEBIAN/{script}"), 0o755)?;
    }
    std::fs::write(stage.join("DEBIAN/conffiles"), "/etc/byoi/byoi.toml\n")?;

    // What the binary says of itself: completions and manual pages.
    for (shell, to) in [
        ("bash", "usr/share/bash-completion/completions/byoi"),
        ("zsh", "usr/share/zsh/vendor-completions/_byoi"),
        ("fish", "usr/share/fish/vendor_completions.d/byoi.fish"),
    ] {
        let text = output(Command::new(&binary).args(["completions", shell]))?;
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().context("a path in the package")?)?;
        std::fs::write(&to, text)?;
    }
    let man = stage.join("usr/share/man/man1");
    output(Command::new(&binary).arg("manpages").arg(&man))?;
    run(Command::new("gzip").args(["-9n", "--"]).args(files(&man)?))?;

    let depends = depends(&binary)?;
    let size_kib = du_kib(&stage)?;
    std::fs::write(
        stage.join("DEBIAN/control"),
        format!(
            "Package: {NAME}\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: byoi developers <byoi@localhost>\n\
             Installed-Size: {size_kib}\n\
             Depends: adduser, {depends}\n\
             Recommends: ipmitool\n\
             Section: admin\n\
             Priority: optional\n\
             Description: Bring Your Own Image onto bare-metal servers\n \
             byoi netboots a server into a small in-memory agent that streams a disk\n \
             image (raw, qcow2, VMDK, OVA) onto its disk, verified and resumable, writes\n \
             a cloud-init ConfigDrive and a UEFI boot entry, and reboots it into the new\n \
             system. This package is the controller (API, agent protocol, iPXE, power)\n \
             with the agent's kernel and initramfs, run as the byoi service.\n"
        ),
    )?;
    let deb = out.join(format!("{NAME}_{version}_amd64.deb"));
    for old in files(&out)? {
        if old.extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(old)?;
        }
    }
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    Ok(deb)
}

/// The workspace's version, the number of commits and the commit.
fn version() -> anyhow::Result<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let base = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .context("no version in the workspace's Cargo.toml")?;
    let count = output(Command::new("git").args(["rev-list", "--count", "HEAD"]).current_dir(root()))?;
    let commit = output(Command::new("git").args(["rev-parse", "--short=7", "HEAD"]).current_dir(root()))?;
    Ok(format!("{base}+git{}.{}", count.trim(), commit.trim()))
}

/// `Depends` for the binary's shared libraries: each `NEEDED` library's
/// package, libc6 at the newest `GLIBC_` symbol version used.
fn depends(binary: &Path) -> anyhow::Result<String> {
    let dynamic = output(Command::new("readelf").arg("--dynamic").arg(binary))?;
    let mut packages = std::collections::BTreeSet::new();
    for line in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
        let lib = line.rsplit('[').next().and_then(|l| l.strip_suffix(']')).context("a NEEDED line")?;
        let Some((_, package)) = LIBRARIES.iter().find(|(name, _)| *name == lib) else {
            bail!("the controller needs {lib}, which no package of dist's LIBRARIES provides");
        };
        packages.insert(*package);
    }
    let symbols = output(Command::new("objdump").arg("-T").arg(binary))?;
    let glibc = symbols
        .split_whitespace()
        .filter_map(|w| w.trim_start_matches('(').trim_end_matches(')').strip_prefix("GLIBC_"))
        .filter_map(|v| v.split('.').map(str::parse::<u32>).collect::<Result<Vec<u32>, _>>().ok())
        .max()
        .context("no GLIBC_ symbol versions in the controller")?;
    let glibc = glibc.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
    Ok(packages
        .into_iter()
        .map(|p| if p == "libc6" { format!("libc6 (>= {glibc})") } else { p.to_owned() })
        .collect::<Vec<_>>()
        .join(", "))
}

/// A directory's files, sorted.
fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// The size of what a tree installs, in KiB (`Installed-Size`).
fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let out = output(Command::new("du").args(["-sk", "--exclude=DEBIAN"]).arg(dir))?;
    out.split_whitespace().next().context("du's output")?.parse().context("du's size")
}

/// The unit's settings that `check` plays as systemd would.
#[derive(Debug, Default)]
struct Unit {
    exec_start: Vec<String>,
    user: String,
    state_directory: String,
    umask: String,
}

impl Unit {
    fn parse(text: &str) -> anyhow::Result<Unit> {
        let mut u = Unit::default();
        for line in text.lines().map(str::trim) {
            let Some((key, value)) = line.split_once('=') else { continue };
            match key {
                "ExecStart" => u.exec_start = value.split_whitespace().map(str::to_owned).collect(),
                "User" => u.user = value.to_owned(),
                "StateDirectory" => u.state_directory = value.to_owned(),
                "UMask" => u.umask = value.to_owned(),
                _ => {}
            }
        }
        ensure!(!u.exec_start.is_empty() && !u.user.is_empty(), "the unit has no ExecStart or no User");
        ensure!(!u.state_directory.is_empty() && !u.umask.is_empty(), "the unit has no StateDirectory or no UMask");
        Ok(u)
    }
}

/// A controller started from the unit; killed when dropped.
struct Service(Child, String);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Installs `deb`, runs it from its unit, upgrades it and purges it.
fn check(deb: &Path) -> anyhow::Result<()> {
    ensure!(crate::setup::is_root(), "dist --check installs the package: run it as root");
    if output(Command::new("dpkg-query").args(["-W", "-f=${Status}", NAME])).is_ok_and(|s| s.contains(" installed")) {
        bail!("{NAME} is already installed on this machine; dist --check would replace it (apt purge {NAME} first)");
    }
    let state = Path::new("/var/lib").join(NAME);
    ensure!(!state.exists(), "{} exists: dist --check would run on another installation's data", state.display());
    let result = install_run_upgrade(deb, &state);
    let purge =
        run(Command::new("apt-get").args(["purge", "-y", "-qq", NAME]).env("DEBIAN_FRONTEND", "noninteractive"));
    let _ = std::fs::remove_dir_all(&state);
    result?;
    purge?;
    ensure!(!Path::new("/usr/bin/byoi").exists(), "purging left /usr/bin/byoi");
    ensure!(!Path::new("/etc/byoi/byoi.toml").exists(), "purging left /etc/byoi/byoi.toml");
    Ok(())
}

fn install_run_upgrade(deb: &Path, state: &Path) -> anyhow::Result<()> {
    let apt = |args: &[&str]| {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(args)
            .arg(deb)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&[])?;
    for f in AGENT_FILES {
        ensure!(Path::new("/").join(AGENT_DIR).join(f).is_file(), "the package did not install {AGENT_DIR}/{f}");
    }
    for f in [
        "/usr/share/bash-completion/completions/byoi",
        "/usr/share/man/man1/byoi.1.gz",
        "/usr/share/man/man1/byoi-serve.1.gz",
    ] {
        ensure!(Path::new(f).is_file(), "the package did not install {f}");
    }
    let passwd = output(Command::new("getent").args(["passwd", NAME]))?;
    ensure!(passwd.trim_end().ends_with("/usr/sbin/nologin"), "the {NAME} user can log in: {passwd}");
    let toml = std::fs::metadata("/etc/byoi/byoi.toml")?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&toml.permissions()) & 0o777;
    ensure!(mode == 0o640, "/etc/byoi/byoi.toml has mode {mode:o}, not 640");

    let unit_path = "/lib/systemd/system/byoi.service";
    let verify = Command::new("systemd-analyze").args(["verify", unit_path]).output()?;
    let said = String::from_utf8_lossy(&verify.stderr).into_owned() + &String::from_utf8_lossy(&verify.stdout);
    ensure!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify {unit_path}: {said}");
    let unit = Unit::parse(&std::fs::read_to_string(unit_path)?)?;
    ensure!(Path::new("/var/lib").join(&unit.state_directory) == state, "StateDirectory is not {}", state.display());

    // systemd makes the state directory for the service's user.
    std::fs::create_dir_all(state)?;
    run(Command::new("chown").arg(format!("{0}:{0}", unit.user)).arg(state))?;
    run(Command::new("chmod").arg("0700").arg(state))?;

    let check = output(&mut as_service(&unit, &["--check-config"]))?;
    ensure!(check.contains("/usr/lib/byoi/agent"), "--check-config does not show the package's artifacts:\n{check}");

    let first = start(&unit)?;
    let token = std::fs::read_to_string(state.join("api-token")).context("the API token the service generated")?;
    let token = token.trim();
    ready(&first.1)?;
    let cli = |args: &[&str]| {
        output(Command::new("/usr/bin/byoi").args(args).args(["--controller", &first.1, "--token", token]))
    };
    cli(&["server", "add", "dist-check", "--mac", "52:54:00:d1:57:01"])?;
    drop(first);

    // An upgrade: the maintainer scripts run as for a new version.
    run(Command::new("dpkg").arg("--install").arg(deb).env("DEBIAN_FRONTEND", "noninteractive"))?;
    let second = start(&unit)?;
    ready(&second.1)?;
    let listed = output(Command::new("/usr/bin/byoi").args(["servers", "--controller", &second.1, "--token", token]))?;
    ensure!(listed.contains("dist-check"), "the server added before the upgrade is gone:\n{listed}");
    Ok(())
}

/// The unit's command plus `extra`, run as its user with its umask and no
/// new privileges, in an empty environment but for the listening address:
/// a free loopback port, so the check never meets another service.
fn as_service(unit: &Unit, extra: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &unit.user, "--regid", &unit.user, "--init-groups", "--no-new-privs", "--"])
        .arg("sh")
        .arg("-c")
        .arg(format!("umask {} && exec \"$@\"", unit.umask))
        .arg("sh")
        .args(&unit.exec_start)
        .args(extra)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("BYOI_LISTEN", "127.0.0.1:0")
        .current_dir("/");
    cmd
}

/// Starts the controller from its unit; returns it with the URL it printed.
fn start(unit: &Unit) -> anyhow::Result<Service> {
    let mut child = as_service(unit, &[]).stdout(Stdio::piped()).spawn().context("starting the controller")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("its stdout")?).read_line(&mut line)?;
    let url = line.trim().strip_prefix("listening on ").map(str::to_owned);
    let service = Service(child, url.clone().unwrap_or_default());
    match url {
        Some(_) => Ok(service),
        None => bail!("the controller started from the unit printed {line:?}, not its address"),
    }
}

/// `/healthz` and `/readyz` (the database writable, the artifacts there).
fn ready(url: &str) -> anyhow::Result<()> {
    for path in ["/healthz", "/readyz"] {
        output(Command::new("curl").args(["-fsS", "--max-time", "10", &format!("{url}{path}")]))
            .with_context(|| format!("the installed controller's {path}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_unit_parses_and_is_hardened() {
        let text = std::fs::read_to_string(root().join("controller/dist/byoi.service")).unwrap();
        let unit = Unit::parse(&text).unwrap();
        assert_eq!(unit.exec_start, ["/usr/bin/byoi", "serve"]);
        assert_eq!((unit.user.as_str(), unit.state_directory.as_str(), unit.umask.as_str()), ("byoi", "byoi", "0077"));
        for line in ["NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"] {
            assert!(text.lines().any(|l| l == line), "{line}");
        }
    }

    #[test]
    fn a_unit_without_a_user_is_refused() {
        assert!(Unit::parse("[Service]\nExecStart=/usr/bin/byoi serve\nStateDirectory=byoi\nUMask=0077\n").is_err());
    }
}
