//! Sybil resistance for the Kademlia routing table: the subnet cap of [`crate::subnet_cap`]
//! applied to multiaddrs; the swarm calls [`admit`] before every
//! `kad::Behaviour::add_address`.
//!
//! A relayed address (`/p2p-circuit`) counts against the relay's subnet, so many honest
//! NATed peers behind one relay crowd each other out.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::subnet_cap::classify_ip;
pub use crate::subnet_cap::{AddrClass, Admission, Subnet, SubnetLimits};

/// The class of `addr`: its first IP component decides.
pub fn classify(addr: &Multiaddr, limits: &SubnetLimits) -> AddrClass {
    for proto in addr.iter() {
        match proto {
            Protocol::Ip4(ip) => return classify_ip(ip.into(), limits),
            Protocol::Ip6(ip) => return classify_ip(ip.into(), limits),
            _ => {}
        }
    }
    AddrClass::NoIp
}

/// May `candidate` be added to the routing table with `addr`, given the table's current
/// `(peer, address)` pairs?
pub fn admit<'a>(
    candidate: &PeerId,
    addr: &Multiaddr,
    table: impl IntoIterator<Item = (&'a PeerId, &'a Multiaddr)>,
    limits: &SubnetLimits,
) -> Admission {
    let class = classify(addr, limits);
    let table = table
        .into_iter()
        .map(|(peer, existing)| (peer, classify(existing, limits)));
    crate::subnet_cap::admit(candidate, class, table, limits)
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
