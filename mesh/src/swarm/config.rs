//! What a [`MeshNode`](super::MeshNode) is started with, and the fixed protocol names and
//! size limits of the mesh.

use std::time::Duration;

use libp2p::{Multiaddr, StreamProtocol};

use super::sybil::SubnetLimits;

/// Kademlia protocol of the NovaCron DHT (kept apart from the public IPFS DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/novacron/kad/1.0.0");

/// Identify's protocol version string; peers announcing another one are not NovaCron nodes.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/novacron/1.0.0";

/// The gossipsub topic of rare mesh-wide announcements.
pub const ANNOUNCE_TOPIC: &str = "/novacron/announce/1";

/// The gossipsub topic of signed cell summaries (each validated before it is accepted or
/// forwarded).
pub const CELLS_TOPIC: &str = "/novacron/cells/1";

/// Largest Kademlia message (request or response) accepted.
pub const KAD_MAX_PACKET_BYTES: usize = 16 * 1024;

/// Largest Kademlia record value stored (a signed node record or cell summary is ≤ 4 KiB).
pub const KAD_MAX_RECORD_BYTES: usize = 4096;

/// Most Kademlia records stored for others.
pub const KAD_MAX_RECORDS: usize = 4096;

/// Largest gossipsub RPC (all messages and control data of one frame) accepted or sent.
pub const GOSSIP_MAX_TRANSMIT_BYTES: usize = 64 * 1024;

/// Most listen addresses taken from one peer's identify info.
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// How a node joins and behaves in the mesh.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/0`, `/ip4/0.0.0.0/udp/0/quic-v1`, …).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; each must end in `/p2p/PEERID`.
    pub bootstrap: Vec<Multiaddr>,
    /// Serve the DHT from the start instead of waiting until autonat confirms the node is
    /// publicly reachable. For tests on loopback and for LANs, where autonat never confirms
    /// (it only trusts global addresses); on the Internet this would put unreachable nodes
    /// in others' routing tables.
    pub force_kad_server: bool,
    /// Run a relay v2 server for others. Only for nodes known to be publicly reachable.
    pub relay_server: bool,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Routing-table entries per subnet.
    pub subnet_limits: SubnetLimits,
    /// Close a connection after this long without use.
    pub idle_connection_timeout: Duration,
    /// Refresh the routing table (Kademlia's bootstrap) about this often, each wait drawn
    /// between half and one and a half times it ([`crate::table_refresh`]); None: only when
    /// the table is low.
    pub kad_bootstrap_interval: Option<Duration>,
    /// Give up a Kademlia query after this long.
    pub kad_query_timeout: Duration,
    /// Established connections accepted from others, all peers together.
    pub max_incoming_connections: u32,
    /// Established connections to or from one peer.
    pub max_connections_per_peer: u32,
    /// Capacity of the event channel (subscribers that fall further behind lose events).
    pub event_capacity: usize,
    /// Software version sent in identify's agent string.
    pub agent_version: String,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            force_kad_server: false,
            relay_server: false,
            mdns: false,
            subnet_limits: SubnetLimits::default(),
            idle_connection_timeout: Duration::from_secs(60),
            kad_bootstrap_interval: Some(crate::table_refresh::REFRESH_EVERY),
            kad_query_timeout: Duration::from_secs(30),
            max_incoming_connections: 512,
            max_connections_per_peer: 4,
            event_capacity: 1024,
            agent_version: format!("novacron/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}
