//! Sybil resistance for the Kademlia routing table: at most N peers per IP subnet (a /24 for
//! IPv4, a /48 for IPv6 by default). A pure function over the candidate and the table's
//! current contents; the swarm calls it before every `kad::Behaviour::add_address`.
//!
//! A peer is counted in a subnet when any of its routing-table addresses falls in it, so a
//! peer already counted there may always add more addresses in that subnet.
//!
//! What this cannot do: it limits addresses, not machines. An attacker with addresses in many
//! subnets (a cloud account, an IPv6 /32) passes it; a relayed address (`/p2p-circuit`)
//! counts against the relay's subnet, so many honest NATed peers behind one relay crowd each
//! other out; and loopback/private addresses are exempt by default (a LAN is trusted), which
//! an attacker on the same LAN also gets.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

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

/// The class of `addr`: its first IP component decides.
pub fn classify(addr: &Multiaddr, limits: &SubnetLimits) -> AddrClass {
    for proto in addr.iter() {
        match proto {
            Protocol::Ip4(ip) => return classify_v4(ip, limits),
            Protocol::Ip6(ip) => {
                if let Some(v4) = ip.to_ipv4_mapped() {
                    return classify_v4(v4, limits);
                }
                if limits.exempt_non_global && !is_global_v6(&ip) {
                    return AddrClass::Exempt;
                }
                let o = ip.octets();
                return AddrClass::Capped(Subnet::V6([o[0], o[1], o[2], o[3], o[4], o[5]]));
            }
            _ => {}
        }
    }
    AddrClass::NoIp
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

/// May `candidate` be added to the routing table with `addr`, given the table's current
/// `(peer, address)` pairs?
pub fn admit<'a>(
    candidate: &PeerId,
    addr: &Multiaddr,
    table: impl IntoIterator<Item = (&'a PeerId, &'a Multiaddr)>,
    limits: &SubnetLimits,
) -> Admission {
    let subnet = match classify(addr, limits) {
        AddrClass::Exempt => return Admission::Admit,
        AddrClass::NoIp => return Admission::NoIp,
        AddrClass::Capped(subnet) => subnet,
    };
    let limit = match subnet {
        Subnet::V4(_) => limits.per_ipv4_24,
        Subnet::V6(_) => limits.per_ipv6_48,
    };
    let mut others: HashSet<&PeerId> = HashSet::new();
    for (peer, existing) in table {
        if classify(existing, limits) != AddrClass::Capped(subnet) {
            continue;
        }
        if peer == candidate {
            // Already counted in this subnet: more addresses there change nothing.
            return Admission::Admit;
        }
        others.insert(peer);
    }
    if others.len() >= limit {
        Admission::SubnetFull { subnet, limit }
    } else {
        Admission::Admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn strict() -> SubnetLimits {
        SubnetLimits {
            exempt_non_global: false,
            ..SubnetLimits::default()
        }
    }

    #[test]
    fn the_third_peer_of_a_slash_24_is_refused_and_another_slash_24_is_not() {
        let limits = SubnetLimits::default();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (aa, ba) = (ma("/ip4/8.8.8.1/tcp/1"), ma("/ip4/8.8.8.200/udp/2/quic-v1"));
        let table = [(&a, &aa), (&b, &ba)];
        assert_eq!(
            admit(&c, &ma("/ip4/8.8.8.9/tcp/3"), table, &limits),
            Admission::SubnetFull {
                subnet: Subnet::V4([8, 8, 8]),
                limit: 2
            }
        );
        assert_eq!(
            admit(&c, &ma("/ip4/8.8.9.9/tcp/3"), table, &limits),
            Admission::Admit
        );
        let one = [(&a, &aa)];
        assert_eq!(
            admit(&c, &ma("/ip4/8.8.8.9/tcp/3"), one, &limits),
            Admission::Admit
        );
    }

    #[test]
    fn a_peer_already_counted_in_the_subnet_may_add_addresses_there() {
        let limits = SubnetLimits::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let (aa, ba) = (ma("/ip4/8.8.8.1/tcp/1"), ma("/ip4/8.8.8.2/tcp/1"));
        let table = [(&a, &aa), (&b, &ba)];
        assert_eq!(
            admit(&a, &ma("/ip4/8.8.8.1/udp/1/quic-v1"), table, &limits),
            Admission::Admit
        );
    }

    #[test]
    fn one_peer_with_many_addresses_in_a_subnet_counts_once() {
        let limits = SubnetLimits::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let (a1, a2) = (ma("/ip4/8.8.8.1/tcp/1"), ma("/ip4/8.8.8.1/tcp/2"));
        let table = [(&a, &a1), (&a, &a2)];
        assert_eq!(
            admit(&b, &ma("/ip4/8.8.8.3/tcp/1"), table, &limits),
            Admission::Admit
        );
    }

    #[test]
    fn non_global_addresses_are_exempt_unless_configured_otherwise() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (aa, ba) = (ma("/ip4/127.0.0.1/tcp/1"), ma("/ip4/127.0.0.1/tcp/2"));
        let table = [(&a, &aa), (&b, &ba)];
        let cand = ma("/ip4/127.0.0.1/tcp/3");
        assert_eq!(
            admit(&c, &cand, table, &SubnetLimits::default()),
            Admission::Admit
        );
        assert!(matches!(
            admit(&c, &cand, table, &strict()),
            Admission::SubnetFull { .. }
        ));
        for s in [
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.0.1/tcp/1",
            "/ip4/172.16.5.5/tcp/1",
            "/ip4/169.254.1.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip4/0.0.0.0/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
        ] {
            assert_eq!(
                classify(&ma(s), &SubnetLimits::default()),
                AddrClass::Exempt,
                "{s}"
            );
        }
        assert_eq!(
            classify(&ma("/ip4/100.128.0.1/tcp/1"), &SubnetLimits::default()),
            AddrClass::Capped(Subnet::V4([100, 128, 0]))
        );
    }

    #[test]
    fn ipv6_counts_per_slash_48_and_mapped_ipv4_counts_as_ipv4() {
        let limits = SubnetLimits::default();
        assert_eq!(
            classify(&ma("/ip6/2001:db8:1:2::5/tcp/1"), &limits),
            AddrClass::Capped(Subnet::V6([0x20, 0x01, 0x0d, 0xb8, 0, 1]))
        );
        assert_eq!(
            classify(&ma("/ip6/::ffff:8.8.4.4/tcp/1"), &limits),
            AddrClass::Capped(Subnet::V4([8, 8, 4]))
        );
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (aa, ba) = (
            ma("/ip6/2001:db8:1:2::5/tcp/1"),
            ma("/ip6/2001:db8:1:ffff::9/tcp/1"),
        );
        let table = [(&a, &aa), (&b, &ba)];
        assert!(matches!(
            admit(&c, &ma("/ip6/2001:db8:1:7::1/tcp/1"), table, &limits),
            Admission::SubnetFull { .. }
        ));
        assert_eq!(
            admit(&c, &ma("/ip6/2001:db8:2::1/tcp/1"), table, &limits),
            Admission::Admit
        );
    }

    #[test]
    fn addresses_without_an_ip_are_refused_and_relayed_ones_count_for_the_relay() {
        let limits = SubnetLimits::default();
        let p = PeerId::random();
        assert_eq!(
            admit(&p, &ma("/dns4/example.org/tcp/1"), [], &limits),
            Admission::NoIp
        );
        assert_eq!(admit(&p, &ma("/memory/1234"), [], &limits), Admission::NoIp);
        let relay = PeerId::random();
        let circuit = ma(&format!("/ip4/8.8.8.8/tcp/1/p2p/{relay}/p2p-circuit"));
        assert_eq!(
            classify(&circuit, &limits),
            AddrClass::Capped(Subnet::V4([8, 8, 8]))
        );
    }

    #[test]
    fn a_zero_limit_refuses_every_counted_address() {
        let limits = SubnetLimits {
            per_ipv4_24: 0,
            ..SubnetLimits::default()
        };
        let p = PeerId::random();
        assert!(matches!(
            admit(&p, &ma("/ip4/8.8.8.8/tcp/1"), [], &limits),
            Admission::SubnetFull { limit: 0, .. }
        ));
    }

    #[test]
    fn subnets_display_as_cidr() {
        assert_eq!(Subnet::V4([1, 2, 3]).to_string(), "1.2.3.0/24");
        assert_eq!(
            Subnet::V6([0x20, 0x01, 0x0d, 0xb8, 0, 1]).to_string(),
            "2001:db8:1::/48"
        );
    }
}
