//! The node's local API: what `novacron nodes` (and later the dashboard and the job
//! commands) ask a running `novacron node`, and the answers.
//!
//! Carried as JSON lines over a Unix socket in the data directory ([`socket`]): one request
//! per line, one answer per line. Only the node's owner can reach it (the socket is 0600 in
//! a directory the node owns); it is not a network API.

pub mod client;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod rest;
pub mod service;
pub mod socket;
pub mod types;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request to a running node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Who the node is, its cell's members and the cell summaries it knows.
    Status,
    /// Put a file's chunks in the node's store and provide it to the mesh as a chunk set.
    PublishFile { path: PathBuf, name: Option<String> },
    /// Fetch a chunk set (64 hex digits) from its providers, verify it and write it to `out`.
    Fetch { id: String, out: PathBuf },
}

/// The answer to a request: exactly one of the fields is set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(Box<NodeStatus>),
    Published(Published),
    Fetched(Box<Fetched>),
    Error(String),
}

/// A chunk set the node now provides.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Published {
    pub id: String,
    pub name: String,
    pub bytes: u64,
    /// Non-zero chunks (zero chunks are not stored).
    pub chunks: usize,
}

/// How a fetch went.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Fetched {
    pub id: String,
    pub name: String,
    /// The set's length, as written to `out`.
    pub bytes: u64,
    /// Chunks fetched (those already in the store are not), their raw and wire bytes.
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub wire_bytes: u64,
    pub seconds: f64,
    pub mib_per_sec: f64,
    /// Each provider that gave chunks: peer id and chunk count.
    pub providers: Vec<(String, u64)>,
    pub retries: u64,
    pub bad_providers: Vec<String>,
}

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
    /// The node's cell, once cell membership runs.
    pub cell: Option<CellStatus>,
    /// Verified cell summaries the node holds (its own cell's included), newest per signer.
    pub summaries: Vec<SummaryStatus>,
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
        self.cell
            .iter()
            .flat_map(|c| c.members.iter().filter(|m| m.live))
    }
}
