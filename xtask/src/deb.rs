//! Debian packages without installing them: `apt-get download` into a
//! cache, `dpkg-deb -x`, and the kernel a metapackage points to, with
//! its modules indexed by depmod.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::run;

pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads (once, into `cache`) and unpacks a Debian package; returns
/// the unpack directory and the package's version.
pub fn fetch_deb(package: &str, cache: &Path) -> anyhow::Result<(PathBuf, String)> {
    let show = match output(Command::new("apt-cache").args(["show", "--no-all-versions", package])) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            output(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?
        }
    };
    let version = show.lines().find_map(|l| l.strip_prefix("Version: ")).context("no Version")?.trim().to_owned();
    let arch = show.lines().find_map(|l| l.strip_prefix("Architecture: ")).unwrap_or("amd64").trim();
    let deb_name = format!("{package}_{}_{arch}.deb", version.replace(':', "%3a"));
    let deb = cache.join(&deb_name);
    if !deb.exists() {
        output(Command::new("apt-get").args(["download", "-qq", &format!("{package}={version}")]).current_dir(cache))?;
    }
    let dir = cache.join(format!("{package}-{version}"));
    if !dir.exists() {
        let tmp = cache.join(format!(".{package}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        std::fs::rename(&tmp, &dir)?;
    }
    Ok((dir, version))
}

/// The kernel package a metapackage points to.
fn resolve_kernel(meta: &str) -> anyhow::Result<String> {
    let show = output(Command::new("apt-cache").args(["show", "--no-all-versions", meta])).or_else(|_| {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        output(Command::new("apt-cache").args(["show", "--no-all-versions", meta]))
    })?;
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends: ")).context("metapackage without Depends")?;
    let first = depends.split(',').next().unwrap_or_default().split('|').next().unwrap_or_default();
    let name = first.split_whitespace().next().context("empty Depends")?;
    Ok(name.to_owned())
}

/// An unpacked Debian kernel package.
pub struct Kernel {
    /// The package (`linux-image-6.1.0-…-amd64`) and its version.
    pub package: String,
    pub package_version: String,
    /// `uname -r`.
    pub version: String,
    /// `lib/modules/VERSION`, with modules.dep.
    pub moddir: PathBuf,
    /// `boot/vmlinuz-VERSION`.
    pub vmlinuz: PathBuf,
}

/// The kernel of `linux-image-amd64` (`generic`) or
/// `linux-image-cloud-amd64` (`cloud`), unpacked in `cache`.
pub fn kernel(flavour: &str, cache: &Path) -> anyhow::Result<Kernel> {
    let meta = if flavour == "cloud" { "linux-image-cloud-amd64" } else { "linux-image-amd64" };
    let package = resolve_kernel(meta)?;
    let (kdir, package_version) = fetch_deb(&package, cache)?;
    let version = std::fs::read_dir(kdir.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no lib/modules/VERSION in the kernel package")?;
    let moddir = kdir.join("lib/modules").join(&version);
    // The package leaves modules.dep and modules.alias to depmod at
    // install time: run it on the unpacked tree.
    if !moddir.join("modules.dep").exists() {
        let depmod =
            ["/sbin/depmod", "/usr/sbin/depmod"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("depmod");
        output(Command::new(depmod).arg("-b").arg(&kdir).arg(&version))?;
    }
    let vmlinuz = kdir.join(format!("boot/vmlinuz-{version}"));
    Ok(Kernel { package, package_version, version, moddir, vmlinuz })
}

const SUITE: &str = "bookworm";

/// The first Debian mirror of the machine's apt configuration that serves
/// `bookworm`: deb822 `.sources` files first, then `sources.list`.
pub fn apt_mirror() -> anyhow::Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "sources"));
    files.sort();
    for f in &files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        if let Some(uri) = deb822_mirror(&text) {
            return Ok(uri);
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    list_mirror(&list).context("no deb source for bookworm in /etc/apt/sources.list{,.d/*.sources}")
}

/// The `URIs:` of a deb822 stanza with `Types: deb` and `Suites:` holding `bookworm`.
fn deb822_mirror(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim).unwrap_or("")
        };
        let has = |value: &str, word: &str| value.split_whitespace().any(|w| w == word);
        (has(field("Types"), "deb") && has(field("Suites"), SUITE))
            .then(|| field("URIs").split_whitespace().next().map(str::to_owned))
            .flatten()
    })
}

/// The URI of a one-line `deb [options] URI bookworm ...` entry.
fn list_mirror(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(opts) => opts.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        (words.next()? == SUITE).then(|| uri.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_from_apt_configuration() {
        let deb822 = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://security.invalid/debian-security\n\
                      Suites: bookworm-security\n";
        assert_eq!(deb822_mirror(deb822).as_deref(), Some("http://mirror.invalid/debian"));
        assert_eq!(deb822_mirror("Types: deb-src\nURIs: http://x.invalid/\nSuites: bookworm\n"), None);
        let list = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://list.invalid/debian bookworm main\n";
        assert_eq!(list_mirror(list).as_deref(), Some("http://list.invalid/debian"));
        assert_eq!(list_mirror("deb http://list.invalid/debian bullseye main\n"), None);
    }
}
