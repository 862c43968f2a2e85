//! The node's view of itself and the mesh: its cell's members and the cell summaries it holds.

use serde::{Deserialize, Serialize};

/// A node's view of itself and the mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NodeStatus {
    pub peer_id: String,
    pub version: String,
    pub uptime_s: f64,
    pub listen_addrs: Vec<String>,
    pub connected_peers: usize,
    pub routing_table_peers: usize,
    /// Bytes on the wire since start (all connections, after encryption and multiplexing).
    pub wire_sent: u64,
    pub wire_received: u64,
    /// The wire bytes' payload by protocol (the rest of the totals is framing: the
    /// multiplexer's headers, encryption, handshakes; QUIC connections are not split).
    #[serde(default)]
    pub wire_by_protocol: Vec<ProtocolBytesStatus>,
    /// How many nodes the mesh holds, as this node estimates it (its cell's live members
    /// pooled with the summaries it holds; what sets the cell prefix length).
    #[serde(default)]
    pub mesh_size_estimate: u64,
    /// The node's cell, once cell membership runs.
    pub cell: Option<CellStatus>,
    /// Verified cell summaries the node holds (its own cell's included), newest per signer.
    pub summaries: Vec<SummaryStatus>,
}

/// Payload bytes of one protocol's substreams since the node started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ProtocolBytesStatus {
    /// `cell_gossip`, `chunk_exchange`, `kademlia`, `identify`, `ping`, `gossipsub`,
    /// `autonat`, `relay`, `dcutr` or `other`.
    pub protocol: String,
    pub sent: u64,
    pub received: u64,
}

/// A signed cell summary as a representative published it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SummaryStatus {
    pub cell: String,
    pub signer: String,
    /// Unix seconds.
    pub issued_at: u64,
    pub members: u32,
    pub total_vcpus: u64,
    pub free_vcpus: u64,
    pub total_memory_mib: u64,
    pub free_slots: u64,
    pub mean_load_permille: u32,
}

/// The node's cell as its chitchat instance sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CellStatus {
    /// `<prefix bits>/<prefix hex>`.
    pub id: String,
    /// Every member known, this node included, live ones first.
    pub members: Vec<MemberStatus>,
    /// Bytes of cell gossip frames sent and received.
    pub gossip_sent: u64,
    pub gossip_received: u64,
    /// How often this node starts exchanges with live members now, in milliseconds (it
    /// follows the cell's live size to keep gossip within its byte budget).
    #[serde(default)]
    pub gossip_interval_ms: u64,
}

/// One member of a cell and what it reports about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MemberStatus {
    pub peer_id: String,
    pub live: bool,
    /// The member's signed node record verified (its key, its newest); the other fields are
    /// what it gossips (self-reported, relayed by others: hints).
    pub signed: bool,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub free_slots: u32,
    pub load_permille: u32,
    pub version: String,
    pub addrs: Vec<String>,
}

impl NodeStatus {
    /// The live members of the node's cell (itself included).
    pub fn live_members(&self) -> impl Iterator<Item = &MemberStatus> {
        self.cell.iter().flat_map(|c| c.live_members())
    }
}

impl CellStatus {
    /// The live members (the node itself included).
    pub fn live_members(&self) -> impl Iterator<Item = &MemberStatus> {
        self.members.iter().filter(|m| m.live)
    }

    /// The live members' peer ids.
    pub fn live_peers(&self) -> Vec<String> {
        self.live_members().map(|m| m.peer_id.clone()).collect()
    }
}
