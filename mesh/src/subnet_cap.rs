//! The routing table's subnet cap, the rule itself: at most N peers per IP subnet (a /24 for
//! IPv4, a /48 for IPv6 by default). Pure (std's IP types only), so the simulator's
//! Kademlia model applies the same classification, limits and verdict as the node; the
//! swarm's adapter ([`crate::swarm::sybil`]) reads the IP out of a multiaddr and counts the
//! routing table's peers.
//!
//! A peer is counted in a subnet when any of its routing-table addresses falls in it, so a
//! peer already counted there may always add more addresses in that subnet.
//!
//! What this cannot do: it limits addresses, not machines. An attacker with addresses in many
//! subnets (a cloud account, an IPv6 /32) passes it; and loopback/private addresses are
//! exempt by default (a LAN is trusted), which an attacker on the same LAN also gets.

use std::collections::HashSet;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How many routing-table peers one subnet may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetLimits {
    /// Peers per IPv4 /24.
    pub per_ipv4_24: usize,
    /// Peers per IPv6 /48.
    pub per_ipv6_48: usize,
    /// Loopback, private (RFC 1918, fc00::/7), link-local, CGNAT and unspecified addresses
    /// are not counted at all (true) or counted like any other (false; tests use this to
    /// exercise the cap on 127.0.0.1).
    pub exempt_non_global: bool,
}

impl Default for SubnetLimits {
    fn default() -> Self {
        SubnetLimits {
            per_ipv4_24: 2,
            per_ipv6_48: 2,
            exempt_non_global: true,
        }
    }
}

impl SubnetLimits {
    /// Peers `subnet` may hold.
    pub fn limit_of(&self, subnet: Subnet) -> usize {
        match subnet {
            Subnet::V4(_) => self.per_ipv4_24,
            Subnet::V6(_) => self.per_ipv6_48,
        }
    }
}

/// The subnet an address counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subnet {
    /// The first three octets of an IPv4 address.
    V4([u8; 3]),
    /// The first six bytes of an IPv6 address.
    V6([u8; 6]),
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subnet::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Subnet::V6(p) => {
                let ip = Ipv6Addr::from([
                    p[0], p[1], p[2], p[3], p[4], p[5], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ]);
                write!(f, "{ip}/48")
            }
        }
    }
}

/// How an address is treated by the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrClass {
    /// Not counted (non-global address with `exempt_non_global`).
    Exempt,
    /// Counted against this subnet.
    Capped(Subnet),
    /// No IP address in it (DNS name, memory transport…): refused, since it cannot be capped.
    NoIp,
}

/// The class of an IP address (an IPv4-mapped IPv6 address counts as IPv4).
pub fn classify_ip(ip: IpAddr, limits: &SubnetLimits) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4, limits),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4, limits);
            }
            if limits.exempt_non_global && !is_global_v6(&v6) {
                return AddrClass::Exempt;
            }
            let o = v6.octets();
            AddrClass::Capped(Subnet::V6([o[0], o[1], o[2], o[3], o[4], o[5]]))
        }
    }
}

fn classify_v4(ip: Ipv4Addr, limits: &SubnetLimits) -> AddrClass {
    if limits.exempt_non_global && !is_global_v4(&ip) {
        return AddrClass::Exempt;
    }
    let o = ip.octets();
    AddrClass::Capped(Subnet::V4([o[0], o[1], o[2]]))
}

fn is_global_v4(ip: &Ipv4Addr) -> bool {
    let o = ip.octets();
    let cgnat = o[0] == 100 && (o[1] & 0xc0) == 64;
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || cgnat)
}

fn is_global_v6(ip: &Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let unique_local = (first & 0xfe00) == 0xfc00;
    let link_local = (first & 0xffc0) == 0xfe80;
    !(ip.is_loopback() || ip.is_unspecified() || unique_local || link_local)
}

/// The verdict on adding one address of one peer to the routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// The subnet already holds `limit` other peers.
    SubnetFull {
        subnet: Subnet,
        limit: usize,
    },
    /// The address has no IP component.
    NoIp,
}

/// The verdict for a candidate address of class `class` when its subnet already holds
/// `others` peers other than the candidate. (A candidate already counted in the subnet
/// passes `others = 0`: more addresses there change nothing.)
pub fn verdict(class: AddrClass, others: usize, limits: &SubnetLimits) -> Admission {
    match class {
        AddrClass::Exempt => Admission::Admit,
        AddrClass::NoIp => Admission::NoIp,
        AddrClass::Capped(subnet) => {
            let limit = limits.limit_of(subnet);
            if others >= limit {
                Admission::SubnetFull { subnet, limit }
            } else {
                Admission::Admit
            }
        }
    }
}

/// May `candidate` be added with an address of class `class`, given the table's current
/// `(peer, class of one of its addresses)` pairs?
pub fn admit<'a, P: Eq + Hash + 'a>(
    candidate: &P,
    class: AddrClass,
    table: impl IntoIterator<Item = (&'a P, AddrClass)>,
    limits: &SubnetLimits,
) -> Admission {
    let AddrClass::Capped(_) = class else {
        return verdict(class, 0, limits);
    };
    let mut others: HashSet<&P> = HashSet::new();
    for (peer, existing) in table {
        if existing != class {
            continue;
        }
        if peer == candidate {
            return Admission::Admit;
        }
        others.insert(peer);
    }
    verdict(class, others.len(), limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_verdict_refuses_at_the_limit_and_exempts_what_is_not_counted() {
        let limits = SubnetLimits::default();
        let c = classify_ip(ip("8.8.8.8"), &limits);
        assert_eq!(verdict(c, 1, &limits), Admission::Admit);
        assert_eq!(
            verdict(c, 2, &limits),
            Admission::SubnetFull {
                subnet: Subnet::V4([8, 8, 8]),
                limit: 2
            }
        );
        assert_eq!(verdict(AddrClass::Exempt, 99, &limits), Admission::Admit);
        assert_eq!(verdict(AddrClass::NoIp, 0, &limits), Admission::NoIp);
    }

    #[test]
    fn admit_counts_distinct_other_peers_of_the_same_subnet() {
        let limits = SubnetLimits::default();
        let net = |s: &str| classify_ip(ip(s), &limits);
        let table = [
            (&1u32, net("8.8.8.1")),
            (&1, net("8.8.8.2")),
            (&2, net("9.9.9.9")),
        ];
        assert_eq!(admit(&3, net("8.8.8.3"), table, &limits), Admission::Admit);
        let full = [(&1u32, net("8.8.8.1")), (&2, net("8.8.8.2"))];
        assert!(matches!(
            admit(&3, net("8.8.8.3"), full, &limits),
            Admission::SubnetFull { .. }
        ));
        assert_eq!(admit(&1, net("8.8.8.3"), full, &limits), Admission::Admit);
    }
}
