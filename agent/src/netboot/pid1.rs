//! `byoi-agent` as `/init` in the initramfs: mount the kernel filesystems,
//! load the drivers the hardware asks for, configure the network from the
//! command line iPXE wrote, then serve the controller's jobs. PID 1 must
//! never exit: every failure is printed on the console and retried.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use byoi_initramfs::kmod::{module_name, Aliases, ModulesDep};

use byoi_wire::agent::{Action, Heartbeat};

use super::client::{ClientError, Controller, Trust};
use super::cmdline::{self, Cmdline, Mode};
use super::dhcp;
use super::jobs::{self, say, Env, Outcome};
use super::rescue;
use crate::ioctl;

/// Runs forever.
pub fn main() -> ! {
    super::logs::install();
    std::panic::set_hook(Box::new(|info| {
        say(&format!("BUG: {info}"));
    }));
    loop {
        let r = std::panic::catch_unwind(run);
        match r {
            Ok(Err(e)) => say(&format!("error: {e}; starting over in 10 s")),
            Ok(Ok(())) => say("the agent stopped; starting over in 10 s"),
            Err(_) => say("the agent panicked; starting over in 10 s"),
        }
        std::thread::sleep(Duration::from_secs(10));
    }
}

fn run() -> Result<(), String> {
    mount_kernel_filesystems();
    let cmd = cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    say(&format!("byoi-agent {} starting ({:?} mode)", env!("CARGO_PKG_VERSION"), cmd.mode));
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    coldplug(&PathBuf::from("/lib/modules").join(release));
    if Path::new("/sys/firmware/efi").exists() {
        mount("efivarfs", "/sys/firmware/efi/efivars", "efivarfs");
    }
    network(&cmd)?;
    let (false, Some(token)) = (cmd.controllers.is_empty(), &cmd.token) else {
        return Err("no byoi.controller= or byoi.token= on the kernel command line".into());
    };
    let ctl = Controller::with_trust(&cmd.controllers, token, Trust::of_initramfs(Path::new("/")))
        .map_err(|e| e.to_string())?;
    let env = Env {
        sys: "/sys".into(),
        proc: "/proc".into(),
        dev: "/dev".into(),
        efivars: Path::new("/sys/firmware/efi/efivars").is_dir().then(|| PathBuf::from("/sys/firmware/efi/efivars")),
        tick: Duration::from_secs(1),
        max_backoff: Duration::from_secs(30),
    };
    match cmd.mode {
        Mode::Rescue => rescue(&ctl, &env),
        // The controller tells an inspected server's agent and a discovered
        // machine's alike to power off once they said hello.
        Mode::Inspect | Mode::Discover => inspect(&ctl, &env),
        Mode::Deploy => match jobs::serve(&ctl, &env) {
            Outcome::Reboot => reboot("deployed: rebooting into the disk"),
            Outcome::Netboot => reboot(NETBOOT_AGAIN),
        },
    }
}

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    match nix::mount::mount(Some(source), target, Some(fstype), nix::mount::MsFlags::empty(), None::<&str>) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
        Err(e) => say(&format!("mounting {fstype} on {target}: {e}")),
    }
}

fn mount_kernel_filesystems() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/run", "tmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
}

/// Every `modalias` under `dir`, not following symlinks (sysfs has loops).
fn modaliases(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            modaliases(&e.path(), out);
        } else if ft.is_file() && e.file_name() == "modalias" {
            if let Ok(a) = std::fs::read_to_string(e.path()) {
                out.push(a.trim().to_owned());
            }
        }
    }
}

fn load_module(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let params = CString::default();
    match nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Loads the modules the devices ask for, until a pass finds nothing new
/// (a bus driver such as `virtio_pci` reveals more devices).
fn coldplug(moddir: &Path) {
    let deps = ModulesDep::parse(&std::fs::read_to_string(moddir.join("modules.dep")).unwrap_or_default());
    let aliases = Aliases::parse(&std::fs::read_to_string(moddir.join("modules.alias")).unwrap_or_default());
    let mut loaded: BTreeSet<String> = std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let mut wanted: Vec<String> = vec!["af_packet".into()];
    if Path::new("/sys/firmware/efi").exists() {
        wanted.push("efivarfs".into());
    }
    for pass in 0..10 {
        let mut aliases_now = Vec::new();
        modaliases(Path::new("/sys/devices"), &mut aliases_now);
        for a in &aliases_now {
            wanted.extend(aliases.matching(a));
        }
        let mut new = 0;
        let (paths, _) = deps.closure(wanted.iter().map(String::as_str));
        for p in paths {
            let name = module_name(&p);
            if loaded.contains(&name) {
                continue;
            }
            match load_module(&moddir.join(&p)) {
                Ok(()) => {
                    say(&format!("loaded {name}"));
                    new += 1;
                }
                Err(e) => say(&format!("loading {name}: {e}")),
            }
            loaded.insert(name);
        }
        if new == 0 && pass > 0 {
            break;
        }
        // Let the new drivers probe and register their devices.
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The NICs (name, MAC) with a device behind them.
fn nics() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("device").exists())
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let mac = std::fs::read_to_string(e.path().join("address"))
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase();
                    (name, mac)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Configures the boot interface from `ip=` / `BOOTIF=` / `nameserver=`;
/// without `ip=`, asks DHCP on the boot interface, then on every other one.
fn network(cmd: &Cmdline) -> Result<(), String> {
    let _ = ioctl::link_up("lo").and_then(|()| ioctl::set_ipv4("lo", [127, 0, 0, 1].into(), [255, 0, 0, 0].into()));
    let mut nics = nics();
    if nics.is_empty() {
        return Err("no network interface: no driver for the NICs? (see the modules loaded above)".into());
    }
    // The interface the server booted from first.
    if let Some(mac) = &cmd.bootif {
        nics.sort_by_key(|(_, m)| m != mac);
    }
    if let Some(ip) = cmd.ip {
        let (name, mac) = &nics[0];
        return configure(name, mac, ip.address, ip.netmask, ip.gateway, &cmd.nameservers);
    }
    for (name, mac) in &nics {
        if let Err(e) = ioctl::link_up(name) {
            say(&format!("bringing {name} up: {e}"));
            continue;
        }
        let Some(hw) = parse_mac(mac) else { continue };
        say(&format!("no ip= on the command line: DHCP on {name} ({mac})"));
        match dhcp::acquire(name, hw, Duration::from_secs(15)) {
            Ok(l) => {
                let dns = if cmd.nameservers.is_empty() { l.dns.clone() } else { cmd.nameservers.clone() };
                return configure(name, mac, l.address, l.netmask, l.router, &dns);
            }
            Err(e) => say(&format!("DHCP on {name}: {e}")),
        }
    }
    Err("no address: no ip= on the command line and no DHCP answer on any interface".into())
}

fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = mac.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
    v.try_into().ok()
}

fn configure(
    name: &str,
    mac: &str,
    address: std::net::Ipv4Addr,
    netmask: std::net::Ipv4Addr,
    gateway: Option<std::net::Ipv4Addr>,
    dns: &[std::net::Ipv4Addr],
) -> Result<(), String> {
    ioctl::link_up(name).map_err(|e| format!("bringing {name} up: {e}"))?;
    ioctl::set_ipv4(name, address, netmask).map_err(|e| format!("addressing {name}: {e}"))?;
    if let Some(gw) = gateway {
        ioctl::add_default_route(gw).map_err(|e| format!("default route via {gw}: {e}"))?;
    }
    let resolv: String = dns.iter().map(|n| format!("nameserver {n}\n")).collect();
    let _ = std::fs::create_dir_all("/etc");
    let _ = std::fs::write("/etc/resolv.conf", resolv);
    say(&format!("network: {name} ({mac}) {address}/{netmask} via {gateway:?}"));
    Ok(())
}

/// Rescue: SSH (dropbear) with the last deployment's keys and the
/// server's own host key, a shell on the console, heartbeats to the
/// controller.
fn rescue(ctl: &Controller, env: &Env) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    mount("devpts", "/dev/pts", "devpts");
    // The first hello claims the rescue boot; the keys are the claimant's.
    match jobs::hello(ctl, env) {
        Err(ClientError::Unauthorized { .. }) | Ok(Action::Reboot) => reboot(NETBOOT_AGAIN),
        Err(e) => say(&format!("hello: {e}")),
        Ok(_) => {}
    }
    let (keys, host_key) = match ctl.rescue() {
        Ok(r) => (r.ssh_keys, r.host_key),
        Err(e) => {
            say(&format!("asking for SSH keys: {e}"));
            (Vec::new(), None)
        }
    };
    let (authorized, refused) = rescue::authorized_keys(&keys);
    for r in &refused {
        say(&r.to_string());
    }
    let ssh = Path::new("/root/.ssh");
    let _ = std::fs::create_dir_all(ssh);
    let _ = std::fs::set_permissions(ssh, std::fs::Permissions::from_mode(0o700));
    if let Err(e) = write_private(&ssh.join("authorized_keys"), authorized.as_bytes()) {
        say(&format!("writing authorized_keys: {e}"));
    }
    let host_key_path = match &host_key {
        Some(k) => match write_private(Path::new(rescue::HOST_KEY_PATH), &rescue::dropbear_host_key(k)) {
            Ok(()) => {
                say(&format!("SSH host key {}", k.fingerprint()));
                Some(rescue::HOST_KEY_PATH)
            }
            Err(e) => {
                say(&format!("writing the SSH host key: {e}; dropbear makes one of its own"));
                None
            }
        },
        None => {
            say("the controller sent no SSH host key: dropbear makes one of its own");
            None
        }
    };
    let accepted = keys.len() - refused.len();
    match std::process::Command::new("/usr/sbin/dropbear").args(rescue::dropbear_args(host_key_path)).spawn() {
        Ok(_) => say(&format!("rescue mode: SSH on port 22 for {accepted} key(s); a shell on the console")),
        Err(e) => say(&format!("rescue mode: no SSH ({e}); a shell on the console")),
    }
    let _ = std::process::Command::new("/bin/sh").spawn();
    loop {
        match ctl.heartbeat(&Heartbeat::default()) {
            // A deployment was posted for this server: go and run it.
            Ok(Action::Reboot) => reboot(NETBOOT_AGAIN),
            // The boot is over (a deployment was posted, or another agent
            // claimed it): netboot into whatever comes next.
            Err(ClientError::Unauthorized { .. }) => reboot(NETBOOT_AGAIN),
            Ok(_) => {}
            Err(e) => say(&format!("heartbeat: {e}")),
        }
        std::thread::sleep(env.tick * 10);
    }
}

/// Inspection: the hello carries the inventory; the controller answers
/// `poweroff`. Anything else means it wants another boot.
fn inspect(ctl: &Controller, env: &Env) -> ! {
    match jobs::hello(ctl, env) {
        Ok(Action::PowerOff) => power_off("hardware reported: powering off"),
        Ok(other) => say(&format!("the controller answered {other} to the inspection")),
        Err(e) => say(&format!("hello: {e}")),
    }
    reboot(NETBOOT_AGAIN)
}

/// Writes a file only root may read (created 0600, never world-readable
/// for a moment).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

/// Why the agent reboots when the controller wants another boot (a new
/// token, or the other mode).
const NETBOOT_AGAIN: &str = "the controller wants another boot: rebooting to netboot again";

fn power_off(why: &str) -> ! {
    say(why);
    nix::unistd::sync();
    loop {
        // reboot(2) only returns on failure.
        let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        say(&format!("power off failed: {e}"));
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn reboot(why: &str) -> ! {
    say(why);
    nix::unistd::sync();
    loop {
        // reboot(2) only returns on failure.
        let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        say(&format!("reboot failed: {e}"));
        std::thread::sleep(Duration::from_secs(5));
    }
}
