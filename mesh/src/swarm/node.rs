//! [`MeshNode`]: the async handle of a running swarm. The swarm lives in one spawned tokio
//! task that owns it outright; the handle talks to it over a command channel (each request
//! carries a oneshot for its answer) and hears from it over a broadcast channel of
//! [`MeshEvent`]s. No lock is shared between them.
//!
//! What this cannot do: events sent before [`MeshNode::subscribe`] are not replayed (ask
//! [`MeshNode::listen_addrs`] and friends for the current state), and a subscriber that falls
//! more than `event_capacity` events behind loses the oldest (its receiver says how many).

use std::collections::HashSet;
use std::sync::Arc;

use super::protocol_bytes::{ProtocolBytes, ProtocolTotals};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::sybil::Admission;
use super::SwarmError;
use crate::cells::{CellId, SummaryRecord};
use crate::dht_keys::DhtKey;

/// Something that happened in the swarm.
#[derive(Clone, Debug)]
pub enum MeshEvent {
    /// A listener got an address (`/p2p/` not included).
    Listening(Multiaddr),
    /// A listen address went away.
    ListenAddrExpired(Multiaddr),
    /// The first connection to a peer opened.
    Connected { peer: PeerId, addr: Multiaddr },
    /// The last connection to a peer closed.
    Disconnected { peer: PeerId },
    /// A peer told us who it is (identify).
    Identified {
        peer: PeerId,
        agent: String,
        listen_addrs: Vec<Multiaddr>,
        /// It serves the NovaCron DHT.
        kad_server: bool,
    },
    /// The number of peers in the Kademlia routing table changed.
    RoutingTable { peers: usize },
    /// A peer address was kept out of the routing table.
    RoutingRefused {
        peer: PeerId,
        addr: Multiaddr,
        reason: Admission,
    },
    /// Autonat's view of our reachability changed.
    Reachability { public: bool },
    /// We now serve the DHT (true) or only query it (false).
    KadServer(bool),
    /// A valid mesh-wide announcement arrived (gossipsub).
    Announcement { from: Option<PeerId>, data: Vec<u8> },
    /// A valid cell summary newer than what the book held arrived (gossipsub) and is now in
    /// [`MeshNode::cell_summaries`].
    CellSummary { cell: CellId, signer: PeerId },
}

/// Bytes on the wire since the node started, all connections and protocols together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireBytes {
    pub sent: u64,
    pub received: u64,
}

type Reply<T> = oneshot::Sender<T>;

/// A request to the swarm task.
pub(super) enum Command {
    ListenAddrs(Reply<Vec<Multiaddr>>),
    ConnectedPeers(Reply<Vec<PeerId>>),
    RoutingTable(Reply<Vec<(PeerId, Vec<Multiaddr>)>>),
    FindClosest(PeerId, Reply<Result<Vec<PeerId>, SwarmError>>),
    StartProviding(DhtKey, Reply<Result<(), SwarmError>>),
    GetProviders(DhtKey, Reply<Result<HashSet<PeerId>, SwarmError>>),
    Dial(Multiaddr, Reply<Result<(), SwarmError>>),
    Announce(Vec<u8>, Reply<Result<(), SwarmError>>),
    AddPeerAddresses(PeerId, Vec<Multiaddr>),
    WireBytes(Reply<WireBytes>),
    PutCellSummary(Vec<u8>, Reply<Result<CellId, SwarmError>>),
    PublishCellSummary(Vec<u8>, Reply<Result<CellId, SwarmError>>),
    GetCellSummaries(CellId, Reply<Result<Vec<SummaryRecord>, SwarmError>>),
    CellSummaries(Reply<Vec<SummaryRecord>>),
    GossipPeerScore(PeerId, Reply<Option<f64>>),
    Stop,
}

/// A running mesh node. Dropping it stops the swarm task (the command channel closes).
pub struct MeshNode {
    peer_id: PeerId,
    streams: libp2p_stream::Control,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<MeshEvent>,
    task: JoinHandle<()>,
    protocol_bytes: Arc<ProtocolBytes>,
}

impl MeshNode {
    pub(super) fn new(
        peer_id: PeerId,
        streams: libp2p_stream::Control,
        commands: mpsc::Sender<Command>,
        events: broadcast::Sender<MeshEvent>,
        task: JoinHandle<()>,
        protocol_bytes: Arc<ProtocolBytes>,
    ) -> MeshNode {
        MeshNode {
            peer_id,
            streams,
            commands,
            events,
            task,
            protocol_bytes,
        }
    }

    /// Payload bytes of each protocol's substreams since start (TCP and relayed
    /// connections; see [`super::protocol_bytes`]).
    pub fn protocol_bytes(&self) -> Vec<ProtocolTotals> {
        self.protocol_bytes.totals()
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Opens and accepts streams of NovaCron's own protocols. Opening a stream to a peer
    /// without a connection dials it with the addresses the swarm knows (routing table,
    /// [`MeshNode::add_peer_addresses`]).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SwarmError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| SwarmError::Stopped)?;
        rx.await.map_err(|_| SwarmError::Stopped)
    }

    /// Addresses the node listens on now (without `/p2p/`).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, SwarmError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Peers with at least one open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, SwarmError> {
        self.ask(Command::ConnectedPeers).await
    }

    /// The Kademlia routing table: each peer and its known addresses.
    pub async fn routing_table(&self) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, SwarmError> {
        self.ask(Command::RoutingTable).await
    }

    /// The peers of the routing table.
    pub async fn routing_table_peers(&self) -> Result<Vec<PeerId>, SwarmError> {
        Ok(self
            .routing_table()
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// Runs a Kademlia lookup for the peers closest to `target` (up to k = 20).
    pub async fn find_closest_peers(&self, target: PeerId) -> Result<Vec<PeerId>, SwarmError> {
        self.ask(|r| Command::FindClosest(target, r)).await?
    }

    /// Announces in the DHT that this node provides `key` (a cell it belongs to, a chunk set
    /// it holds); returns once the record reached the closest peers. Kademlia republishes it
    /// while the node runs.
    pub async fn start_providing(&self, key: DhtKey) -> Result<(), SwarmError> {
        self.ask(|r| Command::StartProviding(key, r)).await?
    }

    /// Looks up the peers providing `key` (this node included if it does).
    pub async fn providers(&self, key: DhtKey) -> Result<HashSet<PeerId>, SwarmError> {
        self.ask(|r| Command::GetProviders(key, r)).await?
    }

    /// Dials an address (with or without `/p2p/`).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), SwarmError> {
        self.ask(|r| Command::Dial(addr, r)).await?
    }

    /// Publishes a mesh-wide announcement (at most
    /// [`MAX_ANNOUNCEMENT_BYTES`](super::MAX_ANNOUNCEMENT_BYTES)).
    pub async fn announce(&self, data: Vec<u8>) -> Result<(), SwarmError> {
        self.ask(|r| Command::Announce(data, r)).await?
    }

    /// Tells the swarm where `peer` can be reached (learned outside libp2p, e.g. from a
    /// cell member's gossiped addresses), so streams to it can dial.
    pub async fn add_peer_addresses(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), SwarmError> {
        self.commands
            .send(Command::AddPeerAddresses(peer, addrs))
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    /// Bytes this node has sent and received on all its connections (after encryption
    /// and multiplexing: what the network carried).
    pub async fn wire_bytes(&self) -> Result<WireBytes, SwarmError> {
        self.ask(Command::WireBytes).await
    }

    /// Stores a signed cell summary ([`crate::cells::sign_summary`], encoded) in the DHT under
    /// its cell's key ([`DhtKey::Cell`]) with the summary's own expiry, and in this node's
    /// summary book; returns the cell once at least one other peer acknowledged the record.
    /// Bytes that do not verify now are refused before anything is sent. The DHT keeps one
    /// summary per cell key; which one wins is [`crate::summaries::dht_prefers`].
    pub async fn put_cell_summary(&self, signed: Vec<u8>) -> Result<CellId, SwarmError> {
        self.ask(|r| Command::PutCellSummary(signed, r)).await?
    }

    /// Publishes a signed cell summary on the cells topic
    /// ([`CELLS_TOPIC`](super::CELLS_TOPIC)) and keeps it in this node's summary book.
    /// Refused when the bytes do not verify now, or when no peer subscribes to the topic
    /// yet (gossipsub's "insufficient peers").
    pub async fn publish_cell_summary(&self, signed: Vec<u8>) -> Result<CellId, SwarmError> {
        self.ask(|r| Command::PublishCellSummary(signed, r)).await?
    }

    /// Reads `cell`'s summaries from the DHT: every distinct value the closest peers (and
    /// this node's store) return that verifies now and names `cell`, newest per signer,
    /// best-ranked signer first. Values that fail are dropped (logged at debug). An empty
    /// list means nobody stored one. Not added to the book: readers decide what to keep.
    pub async fn get_cell_summaries(&self, cell: CellId) -> Result<Vec<SummaryRecord>, SwarmError> {
        self.ask(|r| Command::GetCellSummaries(cell, r)).await?
    }

    /// The summary book: every unexpired summary heard on gossipsub or put by this node.
    pub async fn cell_summaries(&self) -> Result<Vec<SummaryRecord>, SwarmError> {
        self.ask(Command::CellSummaries).await
    }

    /// This node's gossipsub score of `peer` (None when the node does not track it): invalid
    /// messages from it lower it.
    pub async fn gossip_peer_score(&self, peer: PeerId) -> Result<Option<f64>, SwarmError> {
        self.ask(|r| Command::GossipPeerScore(peer, r)).await
    }

    /// Stops the swarm task and waits for it to end (its connections close with it).
    pub async fn stop(self) {
        let _ = self.commands.send(Command::Stop).await;
        let _ = self.task.await;
    }
}
