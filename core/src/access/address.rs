//! Client address allowlists: CIDR ranges as PostgreSQL prints `cidr`
//! values, and the address a client connected from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::PolicyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x:y::z/n` (a bare address is a single host).
    pub fn parse(text: &str) -> Result<Cidr, PolicyError> {
        let bad = || PolicyError::Invalid("invalid address range; write it as CIDR, e.g. 10.0.0.0/8 or fd00::/8".into());
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { network: mask(network, prefix), prefix })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        addr.is_ipv4() == self.network.is_ipv4() && mask(addr, self.prefix) == self.network
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is that
/// IPv4 client: lists written in IPv4 apply to it.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        v4 => v4,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix as u32) };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// Where a call comes from, as the allowlists see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A TCP connection from this address.
    Ip(IpAddr),
    /// A Unix-socket connection, or a process with no client (a background
    /// worker such as pg_cron's).
    Local,
    /// Not known (a parallel worker whose leader could not be found):
    /// matches no allowlist.
    Unknown,
}

/// How Unix-socket connections count against an allowlist
/// (`secret_vault.local_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalPolicy {
    /// As a connection from 127.0.0.1 and ::1.
    Loopback,
    /// Always allowed.
    Allow,
    /// Never allowed by a list.
    Deny,
}

/// Whether `client` may act as a role whose allowlist is `list`.
pub fn allowed(list: &[Cidr], client: Client, local: LocalPolicy) -> bool {
    match client {
        Client::Ip(ip) => list.iter().any(|c| c.contains(ip)),
        Client::Unknown => false,
        Client::Local => match local {
            LocalPolicy::Allow => true,
            LocalPolicy::Deny => false,
            LocalPolicy::Loopback => list
                .iter()
                .any(|c| c.contains(IpAddr::V4(Ipv4Addr::LOCALHOST)) || c.contains(IpAddr::V6(Ipv6Addr::LOCALHOST))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        let host = Cidr::parse("127.0.0.1/32").unwrap();
        assert!(host.contains(ip("127.0.0.1")));
        assert!(!host.contains(ip("127.0.0.2")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn mapped_ipv4_clients_match_ipv4_lists() {
        assert!(Cidr::parse("127.0.0.0/8").unwrap().contains(ip("::ffff:127.0.0.5")));
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "host/8", "10.0.0.0/-1"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_sockets_count_as_the_setting_says() {
        let lo = [Cidr::parse("127.0.0.1/32").unwrap()];
        let other = [Cidr::parse("10.0.0.0/8").unwrap()];
        assert!(allowed(&lo, Client::Local, LocalPolicy::Loopback));
        assert!(!allowed(&other, Client::Local, LocalPolicy::Loopback));
        assert!(allowed(&other, Client::Local, LocalPolicy::Allow));
        assert!(!allowed(&lo, Client::Local, LocalPolicy::Deny));
        assert!(!allowed(&[], Client::Ip(ip("127.0.0.1")), LocalPolicy::Allow));
        assert!(!allowed(&lo, Client::Unknown, LocalPolicy::Allow), "an unknown client fails closed");
    }
}
