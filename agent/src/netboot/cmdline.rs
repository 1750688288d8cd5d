//! The kernel command line as iPXE writes it for the agent:
//! `byoi.controller=URL[,URL…] byoi.token=T byoi.mode=deploy|rescue|inspect|discover
//! ip=CLIENT::GATEWAY:NETMASK nameserver=DNS BOOTIF=01-aa-bb-cc-dd-ee-ff`.
//! The Debian kernel ignores `ip=` (no IP_PNP): the agent applies it.

use std::net::Ipv4Addr;

/// What the agent is booted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run deployments.
    Deploy,
    /// No deployment: a shell and SSH for the operator.
    Rescue,
    /// Report the hardware with `hello`, then power off.
    Inspect,
    /// As inspect, for a machine no server has (the controller's
    /// `--enlist`): the token is a discovery token.
    Discover,
}

/// A static IPv4 configuration from `ip=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticIp {
    /// Our address.
    pub address: Ipv4Addr,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Netmask.
    pub netmask: Ipv4Addr,
}

/// The parameters the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// The controllers' base URLs (replicas sharing one database), in
    /// order; empty when none was given.
    pub controllers: Vec<String>,
    /// Per-boot agent token.
    pub token: Option<String>,
    /// Deploy, rescue, inspect or discover.
    pub mode: Mode,
    /// Static address for the boot interface.
    pub ip: Option<StaticIp>,
    /// DNS servers.
    pub nameservers: Vec<Ipv4Addr>,
    /// MAC of the interface the server booted from.
    pub bootif: Option<String>,
}

/// Parses `/proc/cmdline`. Unknown words are ignored; malformed values of
/// known keys are ignored too (the agent falls back to DHCP), never fatal.
pub fn parse(text: &str) -> Cmdline {
    let mut c = Cmdline {
        controllers: Vec::new(),
        token: None,
        mode: Mode::Deploy,
        ip: None,
        nameservers: Vec::new(),
        bootif: None,
    };
    for word in text.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else { continue };
        match key {
            "byoi.controller" => c.controllers = parse_controllers(value),
            "byoi.token" => c.token = Some(value.to_owned()),
            "byoi.mode" => {
                c.mode = match value {
                    "rescue" => Mode::Rescue,
                    "inspect" => Mode::Inspect,
                    "discover" => Mode::Discover,
                    _ => Mode::Deploy,
                }
            }
            "ip" => c.ip = parse_ip(value),
            "nameserver" => c.nameservers.extend(value.parse::<Ipv4Addr>().ok()),
            "BOOTIF" => c.bootif = parse_bootif(value),
            _ => {}
        }
    }
    c
}

/// `URL,URL…`: each `http://` or `https://` URL, without its trailing
/// `/`; anything else is dropped.
fn parse_controllers(v: &str) -> Vec<String> {
    v.split(',')
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect()
}

/// `ip=CLIENT:SERVER:GATEWAY:NETMASK[:…]` (kernel `nfsroot.txt` format).
fn parse_ip(v: &str) -> Option<StaticIp> {
    let f: Vec<&str> = v.split(':').collect();
    let address = f.first()?.parse().ok()?;
    let gateway = f.get(2).and_then(|g| g.parse().ok()).filter(|g: &Ipv4Addr| !g.is_unspecified());
    let netmask = f.get(3).and_then(|m| m.parse().ok()).unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    Some(StaticIp { address, gateway, netmask })
}

/// `BOOTIF=01-aa-bb-cc-dd-ee-ff` (type 01: Ethernet) → `aa:bb:cc:dd:ee:ff`.
fn parse_bootif(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.split('-').collect();
    let mac = match parts.len() {
        7 => &parts[1..],
        6 => &parts[..],
        _ => return None,
    };
    mac.iter()
        .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| mac.join(":").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_ipxe_writes() {
        let c = parse(
            "BOOT_IMAGE=vmlinuz initrd=initramfs.img byoi.controller=http://10.0.2.2:8080/ byoi.token=abc byoi.mode=deploy \
             ip=10.0.2.15::10.0.2.2:255.255.255.0 nameserver=10.0.2.3 BOOTIF=01-52-54-00-12-34-56 console=ttyS0",
        );
        assert_eq!(c.controllers, ["http://10.0.2.2:8080"]);
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert_eq!(c.mode, Mode::Deploy);
        let ip = c.ip.unwrap();
        assert_eq!(ip.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(ip.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(ip.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.nameservers, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(c.bootif.as_deref(), Some("52:54:00:12:34:56"));
    }

    #[test]
    fn missing_or_broken_values_mean_dhcp() {
        // iPXE without DHCP leaves the variables empty.
        let c = parse("byoi.mode=rescue ip=::: nameserver= BOOTIF=01-zz");
        assert_eq!(c.mode, Mode::Rescue);
        assert_eq!(parse("byoi.mode=inspect").mode, Mode::Inspect);
        assert_eq!(parse("byoi.mode=discover").mode, Mode::Discover);
        assert_eq!(parse("byoi.mode=defragment").mode, Mode::Deploy);
        assert!(c.ip.is_none() && c.nameservers.is_empty() && c.bootif.is_none() && c.controllers.is_empty());
    }

    #[test]
    fn several_controllers_in_order() {
        let c = parse("byoi.controller=https://a.lab:8443/,http://10.0.0.2:8080,,ftp://x,file:///etc byoi.token=t");
        assert_eq!(c.controllers, ["https://a.lab:8443", "http://10.0.0.2:8080"]);
    }
}
