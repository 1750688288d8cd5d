//! A minimal DHCPv4 client (RFC 2131/2132): DISCOVER → OFFER → REQUEST →
//! ACK, for when iPXE did not pass `ip=`. Packets are built and parsed by
//! pure functions; [`acquire`] does the I/O on a UDP socket bound to the
//! interface (broadcast flag set, so no address is needed to hear replies).

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

/// DHCP message types (option 53).
pub mod kind {
    /// Client looks for servers.
    pub const DISCOVER: u8 = 1;
    /// Server offers an address.
    pub const OFFER: u8 = 2;
    /// Client asks for the offered address.
    pub const REQUEST: u8 = 3;
    /// Server confirms.
    pub const ACK: u8 = 5;
    /// Server refuses.
    pub const NAK: u8 = 6;
}

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const FLAG_BROADCAST: u16 = 0x8000;

/// What the server gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Netmask (option 1).
    pub netmask: Ipv4Addr,
    /// Default gateway (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// The server (option 54).
    pub server: Ipv4Addr,
}

/// Builds a DISCOVER, or a REQUEST for `(server, address)`.
pub fn build(msg: u8, xid: u32, mac: [u8; 6], request: Option<(Ipv4Addr, Ipv4Addr)>) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = BOOTREQUEST;
    p[1] = 1; // Ethernet
    p[2] = 6; // hardware address length
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC_COOKIE);
    p.extend_from_slice(&[53, 1, msg]);
    if let Some((server, address)) = request {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&address.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&server.octets());
    }
    // Parameter request list: mask, router, DNS.
    p.extend_from_slice(&[55, 3, 1, 3, 6]);
    p.extend_from_slice(b"\x0c\x09byoi-agnt");
    p.push(255);
    p
}

/// Parses a reply to our `xid`: (message type, lease).
pub fn parse(p: &[u8], xid: u32) -> Option<(u8, Lease)> {
    if p.len() < 240 || p[0] != BOOTREPLY || p[4..8] != xid.to_be_bytes() || p[236..240] != MAGIC_COOKIE {
        return None;
    }
    let address = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let (mut msg, mut netmask, mut router, mut dns, mut server) = (0, None, None, Vec::new(), None);
    let mut i = 240;
    while i < p.len() {
        let code = p[i];
        if code == 0 {
            i += 1;
            continue;
        }
        if code == 255 {
            break;
        }
        let len = usize::from(*p.get(i + 1)?);
        let v = p.get(i + 2..i + 2 + len)?;
        let ip = |o: usize| v.get(o..o + 4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        match code {
            53 => msg = *v.first()?,
            1 => netmask = ip(0),
            3 => router = ip(0),
            6 => dns = (0..len / 4).filter_map(|k| ip(4 * k)).collect(),
            54 => server = ip(0),
            _ => {}
        }
        i += 2 + len;
    }
    let lease = Lease {
        address,
        netmask: netmask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0)),
        router,
        dns,
        server: server.unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    Some((msg, lease))
}

/// Asks for a lease on `ifname` (which must be up).
pub fn acquire(ifname: &str, mac: [u8; 6], within: Duration) -> io::Result<Lease> {
    let sock = UdpSocket::bind("0.0.0.0:68")?;
    sock.set_broadcast(true)?;
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::BindToDevice, &std::ffi::OsString::from(ifname))
        .map_err(io::Error::from)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let xid = uuid::Uuid::new_v4().as_u128() as u32;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1500];
    let send = |p: &[u8]| sock.send_to(p, (Ipv4Addr::BROADCAST, 67)).map(|_| ());
    // DISCOVER until an OFFER, then REQUEST until an ACK.
    let mut offer: Option<Lease> = None;
    let mut last_sent = Instant::now() - Duration::from_secs(10);
    while Instant::now() < deadline {
        if last_sent.elapsed() >= Duration::from_secs(2) {
            match &offer {
                None => send(&build(kind::DISCOVER, xid, mac, None))?,
                Some(o) => send(&build(kind::REQUEST, xid, mac, Some((o.server, o.address))))?,
            }
            last_sent = Instant::now();
        }
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e),
        };
        match (parse(&buf[..n], xid), &offer) {
            (Some((kind::OFFER, l)), None) => {
                offer = Some(l);
                last_sent = Instant::now() - Duration::from_secs(10);
            }
            (Some((kind::ACK, l)), Some(_)) => return Ok(l),
            (Some((kind::NAK, _)), Some(_)) => offer = None,
            _ => {}
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, format!("no DHCP lease on {ifname} within {within:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ACK as a server would send it.
    fn reply(xid: u32, msg: u8) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = BOOTREPLY;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[53, 1, msg, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1]);
        p.extend_from_slice(&[54, 4, 10, 0, 2, 2, 0, 255]);
        p
    }

    #[test]
    fn builds_and_parses() {
        let d = build(kind::DISCOVER, 0x1234_5678, [0x52, 0x54, 0, 0x12, 0x34, 0x56], None);
        assert_eq!(d[0], BOOTREQUEST);
        assert_eq!(&d[236..240], &MAGIC_COOKIE);
        assert_eq!(&d[240..243], &[53, 1, kind::DISCOVER]);
        assert_eq!(&d[28..34], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let r = build(kind::REQUEST, 1, [0; 6], Some((Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 15))));
        assert!(r.windows(6).any(|w| w == [50, 4, 10, 0, 2, 15]));
        let (msg, lease) = parse(&reply(7, kind::ACK), 7).unwrap();
        assert_eq!(msg, kind::ACK);
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]);
        assert_eq!(lease.server, Ipv4Addr::new(10, 0, 2, 2));
        assert!(parse(&reply(7, kind::ACK), 8).is_none(), "another transaction");
        let mut truncated = reply(7, kind::ACK);
        truncated.truncate(245);
        let _ = parse(&truncated, 7);
    }
}
