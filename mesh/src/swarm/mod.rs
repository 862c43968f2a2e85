//! The libp2p swarm of a mesh node: transports, discovery and the [`MeshNode`] handle.
//!
//! One `Swarm` on tokio, built from the node's [`NodeIdentity`]:
//! - transports: TCP + noise + yamux, QUIC, and relay v2 circuits (client);
//! - [`behaviour::MeshBehaviour`]: connection limits, identify (with signed peer records),
//!   ping, Kademlia (`/novacron/kad/1.0.0`; client until autonat confirms public
//!   reachability, or server from the start with [`SwarmConfig::force_kad_server`]),
//!   autonat, relay server (only when configured), dcutr, mDNS (when configured) and
//!   gossipsub with peer scoring on two topics (announcements, cell summaries);
//! - [`sybil`]: the per-subnet cap every routing-table insert passes.
//!
//! Size limits on what peers send: Kademlia messages [`KAD_MAX_PACKET_BYTES`], records
//! [`KAD_MAX_RECORD_BYTES`], gossipsub frames [`GOSSIP_MAX_TRANSMIT_BYTES`], announcements
//! [`MAX_ANNOUNCEMENT_BYTES`] (larger ones are rejected, which lowers the sender's score).
//! The other protocols bound their own messages.
//!
//! Cells ([`cell`]): chitchat membership and failure detection inside the node's cell, its
//! packets carried on [`cell_transport`] streams (`/novacron/cell/1`), so they are
//! authenticated and encrypted by the connection.
//!
//! Cell summaries ([`crate::summaries`]): put in the DHT under their cell's key and published
//! on [`CELLS_TOPIC`]; every one received either way is verified (size, archive, limits,
//! signer among the contacts, signature, lifetime against the wall clock) before it is stored,
//! kept or forwarded. A DHT record is stored for others only when its key is a cell, its value
//! a summary that verifies and names that same cell, and it beats the one held
//! ([`crate::summaries::dht_prefers`]); everything else is dropped. Gossiped summaries that do
//! not verify are rejected, which lowers the sender's score.
//!
//! Chunk sets travel over [`chunk_exchange`] (`/novacron/chunks/1`), their providers found
//! in the DHT.
//!
//! What this cannot do yet: signed node records are not put in the DHT; Kademlia values
//! other than cell summaries are not stored; there is no persistent peer store, so a
//! restarted node knows only its bootstrap peers.

mod behaviour;
pub mod cell;
pub mod cell_transport;
pub mod chunk_exchange;
pub mod clock;
mod config;
mod driver;
mod node;
pub mod protocol_bytes;
pub mod sybil;
mod wire_metrics;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use libp2p::{noise, tcp, yamux};
use tokio::sync::{broadcast, mpsc};

pub use chunk_exchange::{
    ChunkExchange, ExchangeConfig, ExchangeError, FetchReport, ServeStats, CHUNKS_PROTOCOL,
};
pub use config::{
    SwarmConfig, ANNOUNCE_TOPIC, CELLS_TOPIC, GOSSIP_MAX_TRANSMIT_BYTES, IDENTIFY_PROTOCOL_VERSION,
    KAD_MAX_PACKET_BYTES, KAD_MAX_RECORDS, KAD_MAX_RECORD_BYTES, KAD_PROTOCOL, MAX_ADDRS_PER_PEER,
};
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use node::{MeshEvent, MeshNode, WireBytes};

use crate::identity::{IdentityError, NodeIdentity};

/// Largest mesh-wide announcement published or accepted.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 4096;

/// How many commands may wait for the swarm task.
const COMMAND_QUEUE: usize = 64;

/// Why the swarm could not start or a request to it failed.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("swarm: {0}")]
    Identity(#[from] IdentityError),
    #[error("swarm: cannot set up the {what} transport: {reason}")]
    Transport { what: &'static str, reason: String },
    #[error("swarm: cannot set up the network behaviour: {0}")]
    Behaviour(String),
    #[error("swarm: cannot start mDNS: {0}")]
    Mdns(std::io::Error),
    #[error("swarm: cannot set up gossipsub: {0}")]
    Gossipsub(String),
    #[error("swarm: cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("swarm: bootstrap address {0} does not end in /p2p/PEERID")]
    BootstrapWithoutPeerId(Multiaddr),
    #[error("swarm: cannot dial {addr}: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    #[error("swarm: announcement of {len} bytes is over the {max}-byte limit")]
    AnnouncementTooLarge { len: usize, max: usize },
    #[error("swarm: cannot publish: {0}")]
    Publish(String),
    #[error("swarm: cannot announce a DHT provider record: {0}")]
    Provide(String),
    #[error("swarm: the Kademlia query timed out and found no peer")]
    QueryTimeout,
    #[error("swarm: refusing an invalid cell summary: {0}")]
    InvalidSummary(#[from] crate::records::RecordError),
    #[error("swarm: cannot store a record in the DHT: {0}")]
    PutRecord(String),
    #[error("swarm: the swarm task has stopped")]
    Stopped,
}

/// The peer id at the end of `addr` (`.../p2p/PEERID`).
pub fn peer_id_of_addr(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

impl MeshNode {
    /// Builds the swarm, starts listening and joining, and spawns its task on the current
    /// tokio runtime (call it from inside one).
    pub fn start(identity: &NodeIdentity, cfg: SwarmConfig) -> Result<MeshNode, SwarmError> {
        let mut bootstrap = Vec::new();
        for addr in &cfg.bootstrap {
            let peer = peer_id_of_addr(addr)
                .ok_or_else(|| SwarmError::BootstrapWithoutPeerId(addr.clone()))?;
            bootstrap.push((peer, addr.clone()));
        }
        let key = identity.to_libp2p_keypair()?;
        let behaviour_cfg = cfg.clone();
        let mut metrics = prometheus_client::registry::Registry::default();
        let protocol_bytes = Arc::new(protocol_bytes::ProtocolBytes::default());
        let (tcp_counters, relay_counters) = (protocol_bytes.clone(), protocol_bytes.clone());
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::new().nodelay(true),
                noise::Config::new,
                move || {
                    protocol_bytes::CountingUpgrade::new(yamux::Config::default(), tcp_counters)
                },
            )
            .map_err(|e| SwarmError::Transport {
                what: "TCP",
                reason: e.to_string(),
            })?
            .with_quic()
            .with_relay_client(noise::Config::new, move || {
                protocol_bytes::CountingUpgrade::new(yamux::Config::default(), relay_counters)
            })
            .map_err(|e| SwarmError::Transport {
                what: "relay",
                reason: e.to_string(),
            })?
            .with_bandwidth_metrics(&mut metrics)
            .with_behaviour(|key, relay_client| {
                behaviour::MeshBehaviour::new(key, relay_client, &behaviour_cfg)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .map_err(|e| SwarmError::Behaviour(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_connection_timeout))
            .build();

        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| SwarmError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let mut bootstrap_peers = HashSet::new();
        for (peer, addr) in bootstrap {
            if peer == *swarm.local_peer_id() {
                continue;
            }
            bootstrap_peers.insert(peer);
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        if !bootstrap_peers.is_empty() {
            // Fails only with an empty table, which the loop above just filled.
            if let Err(e) = swarm.behaviour_mut().kad.bootstrap() {
                tracing::warn!(error = %e, "kademlia bootstrap");
            }
        }

        let peer_id = *swarm.local_peer_id();
        let streams = swarm.behaviour().stream.new_control();
        let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, _) = broadcast::channel(cfg.event_capacity.max(1));
        let epoch = clock::Epoch::start();
        let refresh_every = cfg.kad_bootstrap_interval;
        let driver = driver::Driver {
            swarm,
            commands: command_rx,
            events: event_tx.clone(),
            cfg,
            bootstrap_peers,
            queries: HashMap::new(),
            table_size: 0,
            metrics,
            book: crate::summaries::SummaryBook::default(),
            small_table: crate::bootstrap_backoff::BootstrapBackoff::new(
                driver::SMALL_TABLE,
                epoch.now(),
            ),
            refresh: refresh_every.map(|every| {
                crate::table_refresh::TableRefresh::new(
                    every,
                    epoch.now(),
                    crate::jitter::seed_of(&peer_id.to_bytes()),
                )
            }),
            epoch,
        };
        let task = tokio::spawn(driver.run());
        Ok(MeshNode::new(
            peer_id,
            streams,
            command_tx,
            event_tx,
            task,
            protocol_bytes,
        ))
    }
}
