//! The wire model of a chitchat message, independent of chitchat's own types.

use libp2p_identity::PeerId;

use super::{check_peer_key, ShortId, PEER_KEY};

/// A chitchat node id: the member's short id and its generation (start time in ms). Its
/// gossip address is always the short id's [`ShortId::virtual_addr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireNodeId {
    pub id: ShortId,
    pub generation: u64,
}

/// One digest entry: what the sender knows of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestEntry {
    pub node: WireNodeId,
    pub heartbeat: u64,
    pub last_gc_version: u64,
    pub max_version: u64,
}

/// How a key-value operation changes a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvStatus {
    Set = 0,
    Delete = 1,
    DeleteAfterTtl = 2,
}

/// One operation of a node delta after its node header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeOp {
    KeyValue {
        key: String,
        value: String,
        version: u64,
        status: KvStatus,
    },
    SetMaxVersion(u64),
}

/// The changes to one node's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDelta {
    pub node: WireNodeId,
    pub last_gc_version: u64,
    pub from_version_excluded: u64,
    pub ops: Vec<NodeOp>,
}

/// A chitchat message (the wire model, independent of chitchat's own types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireMessage {
    Syn {
        digest: Vec<DigestEntry>,
        cluster_id: String,
    },
    SynAck {
        digest: Vec<DigestEntry>,
        delta: Vec<NodeDelta>,
    },
    Ack {
        delta: Vec<NodeDelta>,
    },
    BadCluster,
}

/// Which chitchat digest encoding a message uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestEncoding {
    /// Protocol version 0: entries one after the other.
    Plain = 0,
    /// Protocol version 1: entries in a zstd block stream.
    Blocks = 1,
}

/// A decoded chitchat envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub encoding: DigestEncoding,
    pub message: WireMessage,
}

impl Envelope {
    fn parts(&self) -> (&[DigestEntry], &[NodeDelta]) {
        match &self.message {
            WireMessage::Syn { digest, .. } => (digest, &[]),
            WireMessage::SynAck { digest, delta } => (digest, delta),
            WireMessage::Ack { delta } => (&[], delta),
            WireMessage::BadCluster => (&[], &[]),
        }
    }

    /// Every node the message mentions (digest entries and node deltas; repeats possible).
    pub fn nodes(&self) -> impl Iterator<Item = &WireNodeId> {
        let (digest, delta) = self.parts();
        digest
            .iter()
            .map(|e| &e.node)
            .chain(delta.iter().map(|d| &d.node))
    }

    /// Every key the message sets or deletes, with the node it belongs to.
    pub fn keys(&self) -> impl Iterator<Item = (&ShortId, &str)> {
        let (_, delta) = self.parts();
        delta.iter().flat_map(|d| {
            d.ops.iter().filter_map(move |op| match op {
                NodeOp::KeyValue { key, .. } => Some((&d.node.id, key.as_str())),
                NodeOp::SetMaxVersion(_) => None,
            })
        })
    }

    /// Every [`PEER_KEY`] the message carries: the node and the PeerId (already checked by
    /// [`decode_body`](super::decode_body) to have that short id).
    pub fn peers(&self) -> impl Iterator<Item = (ShortId, PeerId)> + '_ {
        let (_, delta) = self.parts();
        delta.iter().flat_map(|d| {
            d.ops.iter().filter_map(move |op| match op {
                NodeOp::KeyValue { key, value, .. } if key == PEER_KEY => {
                    check_peer_key(&d.node.id, value)
                        .ok()
                        .map(|peer| (d.node.id, peer))
                }
                _ => None,
            })
        })
    }
}
