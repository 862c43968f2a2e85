//! In-process mesh nodes on real loopback TCP (ephemeral ports): joining through a
//! bootstrap node, identify, Kademlia tables, lookups, the subnet cap and announcements.

#![cfg(feature = "swarm")]

mod common;

use common::{dial_addr, eventually, loopback_config, WAIT};
use std::collections::HashSet;
use std::time::Duration;

use novacron_mesh::dht_keys::DhtKey;
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::swarm::sybil::{Admission, Subnet, SubnetLimits};
use novacron_mesh::swarm::{MeshEvent, MeshNode, PeerId, SwarmConfig, SwarmError};
use tokio::sync::broadcast;
use tokio::time::{sleep, timeout};

fn start(cfg: SwarmConfig) -> MeshNode {
    let identity = NodeIdentity::generate().unwrap();
    MeshNode::start(&identity, cfg).unwrap()
}

async fn table(node: &MeshNode) -> HashSet<PeerId> {
    node.routing_table_peers()
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn wait_table_holds(node: &MeshNode, want: &[PeerId]) {
    let want: HashSet<PeerId> = want.iter().copied().collect();
    eventually("the routing table to hold every peer", || async {
        table(node).await.is_superset(&want).then_some(())
    })
    .await;
}

/// Waits for an event `pick` accepts.
async fn next_event<T>(
    rx: &mut broadcast::Receiver<MeshEvent>,
    what: &str,
    mut pick: impl FnMut(&MeshEvent) -> Option<T>,
) -> T {
    let found = timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if let Some(v) = pick(&e) {
                        return v;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_through_one_bootstrap_and_know_each_other() {
    let a = start(loopback_config(vec![]));
    let mut a_events = a.subscribe();
    let boot = dial_addr(&a).await;
    let b = start(loopback_config(vec![boot.clone()]));
    let c = start(loopback_config(vec![boot]));
    let (ia, ib, ic) = (a.peer_id(), b.peer_id(), c.peer_id());

    // Identify reached the bootstrap node from both joiners, naming them DHT servers.
    let mut identified = HashSet::new();
    while identified.len() < 2 {
        let peer = next_event(&mut a_events, "identify from b and c", |e| match e {
            MeshEvent::Identified {
                peer,
                kad_server: true,
                listen_addrs,
                agent,
            } if !listen_addrs.is_empty() && agent.starts_with("novacron/") => Some(*peer),
            _ => None,
        })
        .await;
        identified.insert(peer);
    }
    assert_eq!(identified, HashSet::from([ib, ic]));

    wait_table_holds(&a, &[ib, ic]).await;
    wait_table_holds(&b, &[ia, ic]).await;
    wait_table_holds(&c, &[ia, ib]).await;
    for (node, me) in [(&a, ia), (&b, ib), (&c, ic)] {
        assert!(!table(node).await.contains(&me), "no node lists itself");
    }
    let connected: HashSet<PeerId> = a.connected_peers().await.unwrap().into_iter().collect();
    assert!(
        connected.contains(&ib) && connected.contains(&ic),
        "{connected:?}"
    );

    // A lookup from c for b's id finds b.
    let closest = c.find_closest_peers(ib).await.unwrap();
    assert!(closest.contains(&ib), "{closest:?}");

    // The bandwidth counters saw the join: the bootstrap node answered two peers.
    let bytes = a.wire_bytes().await.unwrap();
    assert!(bytes.sent > 1000 && bytes.received > 1000, "{bytes:?}");

    for n in [a, b, c] {
        n.stop().await;
    }
}

/// A free loopback TCP port (bound, read, released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_bootstrap_peer_was_down_at_start_joins_when_it_comes_up() {
    let a_identity = NodeIdentity::generate().unwrap();
    let port = free_port();
    let a_listen: novacron_mesh::swarm::Multiaddr =
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let boot = format!("{a_listen}/p2p/{}", a_identity.peer_id())
        .parse()
        .unwrap();
    let b = start(loopback_config(vec![boot]));
    // b's first dial and bootstrap fail; a stays in b's table, unreachable.
    sleep(Duration::from_secs(2)).await;
    assert!(b.connected_peers().await.unwrap().is_empty());
    assert_eq!(table(&b).await, HashSet::from([a_identity.peer_id()]));

    let a = MeshNode::start(
        &a_identity,
        SwarmConfig {
            listen: vec![a_listen],
            ..loopback_config(vec![])
        },
    )
    .unwrap();
    // b's table is small, so b runs its bootstrap query again, reaches a and joins.
    wait_table_holds(&b, &[a.peer_id()]).await;
    wait_table_holds(&a, &[b.peer_id()]).await;
    for n in [a, b] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subnet_cap_refuses_the_third_peer_of_a_slash_24() {
    let strict = SubnetLimits {
        per_ipv4_24: 2,
        exempt_non_global: false,
        ..SubnetLimits::default()
    };
    let a = start(SwarmConfig {
        subnet_limits: strict,
        ..loopback_config(vec![])
    });
    let mut a_events = a.subscribe();
    let boot = dial_addr(&a).await;
    let joiners: Vec<MeshNode> = (0..3)
        .map(|_| start(loopback_config(vec![boot.clone()])))
        .collect();
    let ids: HashSet<PeerId> = joiners.iter().map(|n| n.peer_id()).collect();

    let refused = next_event(&mut a_events, "a refusal", |e| match e {
        MeshEvent::RoutingRefused { peer, reason, .. } => Some((*peer, *reason)),
        _ => None,
    })
    .await;
    assert!(ids.contains(&refused.0));
    assert_eq!(
        refused.1,
        Admission::SubnetFull {
            subnet: Subnet::V4([127, 0, 0]),
            limit: 2
        }
    );

    // Every joiner reached a; a's table holds two of them and keeps the third out.
    eventually("all joiners connected to a", || async {
        let connected: HashSet<PeerId> = a.connected_peers().await.unwrap().into_iter().collect();
        connected.is_superset(&ids).then_some(())
    })
    .await;
    let held = eventually("two peers in a's table", || async {
        let t = table(&a).await;
        (t.len() == 2).then_some(t)
    })
    .await;
    assert!(held.is_subset(&ids));
    assert!(!held.contains(&refused.0));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(table(&a).await, held, "the third peer stays out");

    // The joiners, with the default limits (loopback exempt), know all their peers.
    for j in &joiners {
        let others: Vec<PeerId> = ids.iter().copied().filter(|p| *p != j.peer_id()).collect();
        wait_table_holds(j, &others).await;
    }

    a.stop().await;
    for j in joiners {
        j.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_reach_other_nodes_and_oversized_ones_are_refused() {
    let a = start(loopback_config(vec![]));
    let boot = dial_addr(&a).await;
    let b = start(loopback_config(vec![boot.clone()]));
    let c = start(loopback_config(vec![boot]));
    let mut c_events = c.subscribe();

    let too_big = vec![0u8; novacron_mesh::swarm::MAX_ANNOUNCEMENT_BYTES + 1];
    assert!(matches!(
        b.announce(too_big).await,
        Err(SwarmError::AnnouncementTooLarge { .. })
    ));

    // Gossipsub learns subscriptions and forms its mesh on heartbeats; announcements are
    // best effort, so b repeats one until c has heard it.
    let heard = timeout(WAIT, async {
        loop {
            let _ = b.announce(b"hello mesh".to_vec()).await;
            let got = timeout(Duration::from_millis(500), async {
                loop {
                    match c_events.recv().await {
                        Ok(MeshEvent::Announcement { from, data }) if data == b"hello mesh" => {
                            return from;
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
                    }
                }
            })
            .await;
            if let Ok(from) = got {
                return from;
            }
        }
    })
    .await;
    let from = heard.expect("c heard b's announcement within the wait");
    assert_eq!(from, Some(b.peer_id()));

    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_bootstrap_address_without_a_peer_id_is_refused() {
    let identity = NodeIdentity::generate().unwrap();
    let err = MeshNode::start(
        &identity,
        loopback_config(vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()]),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, SwarmError::BootstrapWithoutPeerId(_)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_record_published_on_one_node_is_found_from_another() {
    let a = start(loopback_config(vec![]));
    let boot = dial_addr(&a).await;
    let b = start(loopback_config(vec![boot.clone()]));
    let c = start(loopback_config(vec![boot]));
    wait_table_holds(&b, &[a.peer_id()]).await;
    wait_table_holds(&c, &[a.peer_id()]).await;

    let set = DhtKey::ChunkSet([7; 32]);
    b.start_providing(set).await.unwrap();
    let found = eventually("c finds b as the provider", || async {
        let found = c.providers(set).await.ok()?;
        found.contains(&b.peer_id()).then_some(found)
    })
    .await;
    assert!(!found.contains(&c.peer_id()), "{found:?}");

    // Nobody provides another key.
    let other = DhtKey::ChunkSet([8; 32]);
    assert!(c
        .providers(other)
        .await
        .map(|p| p.is_empty())
        .unwrap_or(true));

    for n in [a, b, c] {
        n.stop().await;
    }
}
