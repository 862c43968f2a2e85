//! The composed libp2p behaviour of a mesh node and how each part is configured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, ping, relay, PeerId,
};

use super::config::{
    SwarmConfig, ANNOUNCE_TOPIC, CELLS_TOPIC, GOSSIP_MAX_TRANSMIT_BYTES, IDENTIFY_PROTOCOL_VERSION,
    KAD_MAX_PACKET_BYTES, KAD_MAX_RECORDS, KAD_MAX_RECORD_BYTES, KAD_PROTOCOL,
};
use super::SwarmError;

/// Every protocol a mesh node speaks.
#[derive(NetworkBehaviour)]
pub struct MeshBehaviour {
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub autonat: autonat::Behaviour,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub gossipsub: gossipsub::Behaviour,
    /// Plain streams for NovaCron's own protocols (cell gossip, chunk transfer): each
    /// protocol opens and accepts them through a [`libp2p_stream::Control`].
    pub stream: libp2p_stream::Behaviour,
}

impl MeshBehaviour {
    pub fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        cfg: &SwarmConfig,
    ) -> Result<MeshBehaviour, SwarmError> {
        let me = key.public().to_peer_id();
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established_incoming(Some(cfg.max_incoming_connections))
            .with_max_pending_incoming(Some(cfg.max_incoming_connections.div_ceil(4)))
            .with_max_established_per_peer(Some(cfg.max_connections_per_peer));
        let identify = identify::Behaviour::new(
            identify::Config::new_with_signed_peer_record(
                IDENTIFY_PROTOCOL_VERSION.to_string(),
                key,
            )
            .with_agent_version(cfg.agent_version.clone())
            .with_push_listen_addr_updates(true)
            .with_interval(IDENTIFY_INTERVAL),
        );
        let mdns = if cfg.mdns {
            let m = mdns::tokio::Behaviour::new(mdns::Config::default(), me)
                .map_err(SwarmError::Mdns)?;
            Some(m)
        } else {
            None
        };
        let relay_server = cfg
            .relay_server
            .then(|| relay::Behaviour::new(me, relay::Config::default()));
        Ok(MeshBehaviour {
            limits: connection_limits::Behaviour::new(limits),
            identify,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            kad: kademlia(me, cfg),
            autonat: autonat::Behaviour::new(me, autonat::Config::default()),
            relay_client,
            relay_server: relay_server.into(),
            dcutr: dcutr::Behaviour::new(me),
            mdns: mdns.into(),
            gossipsub: gossip(key)?,
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}

/// How often a connection is pinged. A node of a full cell holds a connection to most of
/// its ~200 members; libp2p's default (15 s) would cost each node ~13 pings a second, which
/// nothing here reads: a dead peer is found by the cell's failure detector and by write
/// timeouts.
const PING_INTERVAL: Duration = Duration::from_secs(120);

/// How often identify asks a connected peer again. Changes of a node's own addresses are
/// pushed to its peers when they happen, so the periodic round (libp2p's default: 5 minutes)
/// only repairs what a push missed; over ~200 connections it cost ~2.6 KB/s per node.
const IDENTIFY_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Kademlia with k = 20, α = 3, manual routing-table inserts (every insert passes the
/// subnet cap) and records only stored after the node validated them (the driver stores
/// provider records under NovaCron keys and verified cell summaries under their cell's key).
fn kademlia(me: PeerId, cfg: &SwarmConfig) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut kc = kad::Config::new(KAD_PROTOCOL);
    kc.set_kbucket_inserts(kad::BucketInserts::Manual)
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_max_packet_size(KAD_MAX_PACKET_BYTES)
        .set_query_timeout(cfg.kad_query_timeout)
        // The driver refreshes on its own jittered schedule (`table_refresh`); libp2p's
        // bootstrap when a peer joins a small table stays.
        .set_periodic_bootstrap_interval(None);
    if let Some(k) = NonZeroUsize::new(20) {
        kc.set_replication_factor(k);
    }
    if let Some(alpha) = NonZeroUsize::new(3) {
        kc.set_parallelism(alpha);
    }
    let store_cfg = kad::store::MemoryStoreConfig {
        max_records: KAD_MAX_RECORDS,
        max_value_bytes: KAD_MAX_RECORD_BYTES,
        ..kad::store::MemoryStoreConfig::default()
    };
    let store = kad::store::MemoryStore::with_config(me, store_cfg);
    let mut kad = kad::Behaviour::with_config(me, store, kc);
    let mode = if cfg.force_kad_server {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    };
    kad.set_mode(Some(mode));
    kad
}

/// Gossipsub for rare announcements and cell summaries: signed messages only, the
/// application validates each (announcements: size; summaries: signature, limits, lifetime),
/// peer scoring on both topics, where an invalid message costs its sender. Mesh-delivery
/// penalties are off: with messages this rare every peer would look like it under-delivers.
fn gossip(key: &Keypair) -> Result<gossipsub::Behaviour, SwarmError> {
    let config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(GOSSIP_MAX_TRANSMIT_BYTES)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .heartbeat_interval(Duration::from_secs(1))
        .build()
        .map_err(|e| SwarmError::Gossipsub(e.to_string()))?;
    let mut g =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
            .map_err(|e| SwarmError::Gossipsub(e.to_string()))?;
    let topics = [ANNOUNCE_TOPIC, CELLS_TOPIC].map(gossipsub::IdentTopic::new);
    let mut params = gossipsub::PeerScoreParams::default();
    // Many peers behind one address cost score (a Sybil signal on the Internet), but a mesh
    // on one host (tests, demos) shares loopback: left counted, every peer there would be
    // greylisted and gossipsub would carry nothing. Like the routing table's subnet cap,
    // loopback is exempt.
    params.ip_colocation_factor_whitelist.extend([
        IpAddr::from(Ipv4Addr::LOCALHOST),
        IpAddr::from(Ipv6Addr::LOCALHOST),
    ]);
    for topic in &topics {
        params.topics.insert(topic.hash(), rare_topic_score());
    }
    g.with_peer_score(params, gossipsub::PeerScoreThresholds::default())
        .map_err(SwarmError::Gossipsub)?;
    for topic in &topics {
        g.subscribe(topic)
            .map_err(|e| SwarmError::Gossipsub(e.to_string()))?;
    }
    Ok(g)
}

/// Score parameters of a topic with rare messages: time in mesh and first deliveries count a
/// little, each invalid message costs 50 points (weight −100 × topic weight 0.5, squared
/// per count), decaying by 0.3 per decay interval.
fn rare_topic_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 0.5,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 3600.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 100.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.3,
        ..gossipsub::TopicScoreParams::default()
    }
}
