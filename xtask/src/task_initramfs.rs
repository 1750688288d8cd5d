//! `cargo xtask initramfs [--flavour generic|cloud] [--firmware-dir DIR]
//! [--ca-file PEM]`: the static agent, a Debian kernel fetched with
//! `apt-get download` (the host's kernel is never touched), the modules a
//! real server needs with their dependencies, busybox for rescue, the
//! operator's private CA if given, all in a deterministic cpio.
//! Writes `target/byoi/{vmlinuz,initramfs.img,manifest.json}`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use byoi_initramfs::cpio::{Archive, Entry};
use byoi_initramfs::kmod::{module_name, Aliases, ModulesDep};
use byoi_initramfs::CA_FILE;
use sha2::{Digest, Sha256};

use crate::deb::{self, fetch_deb, output};
use crate::{root, run};

/// The agent's target: static, no libc on the initramfs.
/// The agent's target: static, for the initramfs.
pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// Largest initramfs we ship (Tinkerbell's Hook is ~180 MB).
const MAX_INITRAMFS: u64 = 20 << 20;

/// Drivers a real server needs: virtual machines, NVMe, SATA, SAS/RAID
/// HBAs, the common NICs, EFI variables, FAT for the ESP and ConfigDrive.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "nvme",
    "ahci",
    "sd_mod",
    "sr_mod",
    "megaraid_sas",
    "mpt3sas",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "mlx5_core",
    "r8169",
    "efivarfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "af_packet",
];

/// Drivers that need firmware from Debian's non-free-firmware component,
/// which the build machines cannot reach (`--firmware-dir` adds it).
pub const NEED_FIRMWARE: &[(&str, &str)] = &[
    ("bnxt_en", "bnx2x/ (only for some older NetXtreme II cards)"),
    ("ice", "intel/ice/ddp/ice.pkg (without it: safe mode, no RSS)"),
    ("r8169", "rtl_nic/ (most Realtek chips work without it)"),
    ("tg3", "tigon/ (a few old BCM57xx revisions)"),
];

/// Busybox applets linked in `/bin` for the rescue shell.
const APPLETS: &[&str] = &[
    "sh", "ash", "ls", "cat", "cp", "mv", "rm", "mkdir", "mount", "umount", "dmesg", "ip", "ping", "ps", "kill", "dd",
    "sync", "reboot", "poweroff", "vi", "less", "grep", "sed", "awk", "lsmod", "modprobe", "insmod", "df", "free",
    "hexdump", "wget", "udhcpc", "findfs", "fdisk", "sleep", "uname", "echo", "head", "tail", "find", "chmod", "ln",
];

/// `cargo xtask initramfs` options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Options {
    /// The Debian kernel: linux-image-amd64 (generic) or linux-image-cloud-amd64 (cloud, no AHCI, no e1000)
    #[arg(long, alias = "flavor", value_name = "FLAVOUR", default_value = DEFAULT_FLAVOUR, value_parser = ["generic", "cloud"])]
    pub flavour: String,
    /// Firmware files to add under /lib/firmware (Debian's non-free-firmware, which the build machines cannot reach)
    #[arg(long, value_name = "DIR")]
    pub firmware_dir: Option<PathBuf>,
    /// The CA (PEM) that signed the controller's HTTPS certificate: the agent trusts it, and only it, for the controller (baked in at /etc/byoi/ca.pem)
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// The kernel flavour when `--flavour` is not given.
const DEFAULT_FLAVOUR: &str = "generic";

impl Default for Options {
    /// What `cargo xtask initramfs` without options builds (the demo and
    /// `cargo xtask test` build that).
    fn default() -> Options {
        Options { flavour: DEFAULT_FLAVOUR.to_owned(), firmware_dir: None, ca_file: None }
    }
}

/// Whether an ELF file asks for a program interpreter (is dynamic).
fn is_dynamic(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return true;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4).is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 3)
        // PT_INTERP
    })
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the agent as shipped (release, static musl: what the initramfs
/// and the benchmark run); returns the binary's path.
pub fn static_agent() -> anyhow::Result<PathBuf> {
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !targets.lines().any(|t| t.trim() == MUSL) {
        run(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    run(Command::new("cargo").args(["build", "--release", "--locked", "--target", MUSL, "-p", "byoi-agent"]))?;
    let path = root().join(format!("target/{MUSL}/release/byoi-agent"));
    if is_dynamic(&std::fs::read(&path)?) {
        bail!("byoi-agent for {MUSL} is not statically linked");
    }
    Ok(path)
}

pub fn run_task(opts: &Options) -> anyhow::Result<()> {
    let root = root();
    let out_dir = root.join("target/byoi");
    let cache = out_dir.join("cache");
    std::fs::create_dir_all(&cache)?;

    // The CA first: a bad file fails before minutes of building.
    let ca = match &opts.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading the CA file {}", path.display()))?;
            Some(ca_certificates(&pem).with_context(|| format!("the CA file {}", path.display()))?)
        }
        None => None,
    };

    // 1. The agent, static.
    let agent = std::fs::read(static_agent()?)?;

    // 2. The kernel and its modules.
    let kernel = deb::kernel(&opts.flavour, &cache)?;
    let (kpkg, kpkg_version, kver, moddir) =
        (&kernel.package, &kernel.package_version, &kernel.version, &kernel.moddir);
    let vmlinuz = std::fs::read(&kernel.vmlinuz)?;
    let deps = ModulesDep::parse(&std::fs::read_to_string(moddir.join("modules.dep"))?);
    let builtin: BTreeSet<String> =
        std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default().lines().map(module_name).collect();
    let (paths, unknown) = deps.closure(MODULES.iter().copied());
    let (builtin_wanted, absent): (Vec<String>, Vec<String>) = unknown.into_iter().partition(|m| builtin.contains(m));

    // 3. The archive.
    let mut a = Archive::new();
    a.file("init", 0o755, agent.clone());
    for d in ["proc", "sys", "dev", "run", "tmp", "etc", "root", "mnt", "var/log"] {
        a.dir(d);
    }
    a.add("dev/console", Entry::CharDevice { perm: 0o600, major: 5, minor: 1 });
    a.add("dev/null", Entry::CharDevice { perm: 0o666, major: 1, minor: 3 });
    let mut included = Vec::new();
    for p in &paths {
        a.file(&format!("lib/modules/{kver}/{p}"), 0o644, std::fs::read(moddir.join(p))?);
        included.push(module_name(p));
    }
    let set: BTreeSet<String> = paths.iter().cloned().collect();
    a.file(&format!("lib/modules/{kver}/modules.dep"), 0o644, deps.render_subset(&set).into_bytes());
    let names: BTreeSet<String> = included.iter().cloned().collect();
    let aliases = Aliases::parse(&std::fs::read_to_string(moddir.join("modules.alias"))?).subset(&names);
    a.file(&format!("lib/modules/{kver}/modules.alias"), 0o644, aliases.render().into_bytes());
    a.file(
        &format!("lib/modules/{kver}/modules.builtin"),
        0o644,
        std::fs::read(moddir.join("modules.builtin")).unwrap_or_default(),
    );
    let (bbdir, bbversion) = fetch_deb("busybox-static", &cache)?;
    a.file("bin/busybox", 0o755, std::fs::read(bbdir.join("bin/busybox"))?);
    for applet in APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox");
    }
    let dropbear = add_dropbear(&mut a, &cache)?;
    let mut firmware_files = 0;
    if let Some(fw) = &opts.firmware_dir {
        for entry in walk(fw)? {
            let rel = entry.strip_prefix(fw)?.to_string_lossy().into_owned();
            a.file(&format!("lib/firmware/{rel}"), 0o644, std::fs::read(&entry)?);
            firmware_files += 1;
        }
    }

    if let Some((pem, _)) = &ca {
        a.file(CA_FILE, 0o644, pem.clone());
    }

    let mut cpio = Vec::new();
    a.write(&mut cpio)?;
    if let Some((pem, _)) = &ca {
        if cpio_file(&cpio, CA_FILE) != Some(pem.as_slice()) {
            bail!("the archive written has no {CA_FILE} with the CA's certificates");
        }
    }
    let img = zstd::bulk::compress(&cpio, 19)?;
    std::fs::write(out_dir.join("vmlinuz"), &vmlinuz)?;
    std::fs::write(out_dir.join("initramfs.img"), &img)?;
    let manifest = serde_json::json!({
        "flavour": opts.flavour,
        "kernelPackage": kpkg,
        "kernelPackageVersion": kpkg_version,
        "kernelVersion": kver,
        "modules": included,
        "builtinModules": builtin_wanted,
        "missingModules": absent,
        "needFirmware": NEED_FIRMWARE.iter().map(|(m, f)| serde_json::json!({"module": m, "firmware": f})).collect::<Vec<_>>(),
        "firmwareFiles": firmware_files,
        "busybox": bbversion,
        "dropbear": dropbear,
        "caFile": ca.as_ref().map(|(pem, n)| serde_json::json!({"path": format!("/{CA_FILE}"), "certificates": n, "sha256": sha256_hex(pem)})),
        "agent": { "bytes": agent.len(), "sha256": sha256_hex(&agent), "static": true },
        "vmlinuz": { "bytes": vmlinuz.len(), "sha256": sha256_hex(&vmlinuz) },
        "initramfs": { "bytes": img.len(), "uncompressedBytes": cpio.len(), "compression": "zstd", "sha256": sha256_hex(&img), "entries": a.len() },
    });
    std::fs::write(out_dir.join("manifest.json"), serde_json::to_string_pretty(&manifest)? + "\n")?;
    println!(
        "initramfs: {:.1} MB zstd ({:.1} MB unpacked, {} modules, kernel {kver}); vmlinuz {:.1} MB; in {}",
        img.len() as f64 / 1e6,
        cpio.len() as f64 / 1e6,
        included.len(),
        vmlinuz.len() as f64 / 1e6,
        out_dir.display()
    );
    if !absent.is_empty() {
        println!("not in this kernel: {}", absent.join(", "));
    }
    if img.len() as u64 >= MAX_INITRAMFS {
        bail!("the initramfs is {} bytes, over the 20 MB budget", img.len());
    }
    Ok(())
}

/// PEM `BEGIN`/`END` lines of a certificate (RFC 7468 §5.1).
const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// The certificates of a CA file, re-emitted alone (comments and other
/// sections dropped), and how many there are. A private key is refused:
/// the initramfs is served to anyone on the provisioning network.
fn ca_certificates(pem: &[u8]) -> anyhow::Result<(Vec<u8>, usize)> {
    let text = std::str::from_utf8(pem).context("not text: a CA file is PEM")?;
    if text.contains("PRIVATE KEY-----") {
        bail!(
            "it holds a private key: refusing to put it into the initramfs, which anyone on the provisioning \
             network can download; give only the CA's certificate"
        );
    }
    let mut out = String::new();
    let mut count = 0;
    let mut rest = text;
    while let Some(start) = rest.find(PEM_BEGIN) {
        let Some(len) = rest[start..].find(PEM_END) else { bail!("a certificate has no {PEM_END} line") };
        let block = &rest[start..start + len + PEM_END.len()];
        out.push_str(block);
        out.push('\n');
        count += 1;
        rest = &rest[start + len + PEM_END.len()..];
    }
    if count == 0 {
        bail!("no certificate in it (no {PEM_BEGIN} line)");
    }
    Ok((out.into_bytes(), count))
}

/// The content of the regular file `path` in a `newc` cpio archive, read
/// back to check what was written.
fn cpio_file<'a>(mut archive: &'a [u8], path: &str) -> Option<&'a [u8]> {
    const HEADER: usize = 110;
    let field =
        |h: &[u8], i: usize| usize::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).ok()?, 16).ok();
    let align = |n: usize| n.div_ceil(4) * 4;
    loop {
        let h = archive.get(..HEADER).filter(|h| h.starts_with(b"070701"))?;
        let (size, namesize) = (field(h, 6)?, field(h, 11)?);
        let name = archive.get(HEADER..HEADER + namesize - 1)?;
        let data_at = align(HEADER + namesize);
        if name == b"TRAILER!!!" {
            return None;
        }
        if name == path.as_bytes() {
            return archive.get(data_at..data_at + size);
        }
        archive = archive.get(align(data_at + size)..)?;
    }
}

/// Dropbear for SSH in rescue mode. Debian's is dynamically linked: the
/// libraries it needs (and the dynamic loader) come from their packages.
fn add_dropbear(a: &mut Archive, cache: &Path) -> anyhow::Result<String> {
    let (dir, version) = fetch_deb("dropbear-bin", cache)?;
    a.file("usr/sbin/dropbear", 0o755, std::fs::read(dir.join("usr/sbin/dropbear"))?);
    a.file("usr/bin/dropbearkey", 0o755, std::fs::read(dir.join("usr/bin/dropbearkey"))?);
    let libs: &[(&str, &[&str])] = &[
        ("libc6", &["libc.so.6", "ld-linux-x86-64.so.2"]),
        ("libcrypt1", &["libcrypt.so.1"]),
        ("libtomcrypt1", &["libtomcrypt.so.1"]),
        ("libtommath1", &["libtommath.so.1"]),
        ("zlib1g", &["libz.so.1"]),
        ("libgmp10", &["libgmp.so.10"]),
    ];
    for (package, sonames) in libs {
        let (pdir, _) = fetch_deb(package, cache)?;
        for soname in *sonames {
            let found = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
                .iter()
                .map(|d| pdir.join(d).join(soname))
                .find(|p| p.exists())
                .with_context(|| format!("{soname} not in {package}"))?;
            // fs::read follows the soname symlink to the real file.
            a.file(&format!("lib/x86_64-linux-gnu/{soname}"), 0o755, std::fs::read(found)?);
        }
    }
    a.symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
    a.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec());
    a.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
    a.file("etc/shells", 0o644, b"/bin/sh\n".to_vec());
    a.dir("etc/dropbear");
    Ok(version)
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

    #[test]
    fn a_ca_file_keeps_its_certificates_only() {
        let pem = format!("Bag Attributes: x\n{CERT}\n\nsubject=CN=b\n{CERT}\n");
        let (out, n) = ca_certificates(pem.as_bytes()).unwrap();
        assert_eq!((String::from_utf8(out).unwrap(), n), (format!("{CERT}\n{CERT}\n"), 2));
    }

    #[test]
    fn a_ca_file_with_a_key_or_without_a_certificate_is_refused() {
        let key = format!("{CERT}\n-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n");
        let e = ca_certificates(key.as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("it holds a private key: refusing to put it into the initramfs"), "{e}");
        let e = ca_certificates(b"hello\n").unwrap_err().to_string();
        assert_eq!(e, "no certificate in it (no -----BEGIN CERTIFICATE----- line)");
        let e = ca_certificates(b"-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap_err().to_string();
        assert_eq!(e, "a certificate has no -----END CERTIFICATE----- line");
        assert!(ca_certificates(&[0xff, 0xfe]).is_err());
    }

    /// The CA lands at the path the agent reads; `cpio` (GNU) is the
    /// oracle for the reader the task checks the archive with.
    #[test]
    fn the_ca_is_in_the_archive_where_the_agent_looks() {
        let mut a = Archive::new();
        a.file("init", 0o755, b"agent".to_vec());
        a.file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n".to_vec());
        a.file(CA_FILE, 0o644, format!("{CERT}\n").into_bytes());
        let mut cpio = Vec::new();
        a.write(&mut cpio).unwrap();
        assert_eq!(cpio_file(&cpio, CA_FILE), Some(format!("{CERT}\n").as_bytes()));
        assert_eq!(cpio_file(&cpio, "init"), Some(&b"agent"[..]));
        assert_eq!(cpio_file(&cpio, "etc/missing"), None);

        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "--quiet", "--make-directories", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &cpio).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(dir.path().join(CA_FILE)).unwrap(), format!("{CERT}\n"));
    }
}
