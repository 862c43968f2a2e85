//! The bytes of cell membership (chitchat) on a `/novacron/cell/1` stream: framing, a full
//! validating parser of chitchat 0.13's message format, the virtual address of a peer, and
//! admission of what a frame mentions. Pure: no IO, no clock (callers pass `now`), so it
//! is fuzzed without libp2p (`fuzz/fuzz_targets/cell_frame.rs`).
//!
//! A frame is `u32 LE length || body`, the body one chitchat envelope: magic `45139` (u16
//! LE), protocol version (0: plain digest, 1: zstd-block digest), message type (Syn, SynAck,
//! Ack, BadCluster) and the message. [`decode_body`] parses every field into [`Envelope`]
//! and refuses, with a [`CellWireError`] naming the problem:
//! - anything chitchat itself would refuse (so a body accepted here always decodes there);
//! - more than [`MAX_BODY_BYTES`] (chitchat's datagram cap), trailing bytes, a zstd block
//!   stream that inflates past [`MAX_STREAM_BYTES`] (chitchat has no total cap: one 64 KiB
//!   datagram could inflate to ~180 MB), more than [`MAX_MEMBERS`] digest entries or node
//!   deltas, keys over [`MAX_KEY_BYTES`], values over [`MAX_VALUE_BYTES`], more than
//!   [`MAX_OPS_PER_NODE`] key-value operations for one node;
//! - a node id that is not a [`ShortId`], and an advertised gossip address other than that
//!   short id's [`ShortId::virtual_addr`] (so chitchat only ever gossips to addresses the
//!   transport can map back to an authenticated peer);
//! - a [`PEER_KEY`] key-value that is not a Set of a canonical base58 [`PeerId`](libp2p_identity::PeerId) whose short
//!   id is the node's (so the PeerId behind a short id cannot be forged without a second
//!   preimage of blake3, see [`ShortId`]).
//!
//! Node ids are short, cell-local ids ([`ShortId`]: 15 base32 characters, 75 bits of
//! blake3(peer id bytes)), not PeerIds (52 base58 characters): every digest carries every
//! member's id, and the short one with an address made of the same characters costs ~22
//! bytes per member in a compressed 50-member digest instead of ~61. The full PeerId travels
//! once per member, as its [`PEER_KEY`] key-value in deltas.
//!
//! [`Admission`] then bounds what the frames of a whole cell may make chitchat hold: members
//! outside the cell, more than [`MAX_MEMBERS`] members, more than
//! [`MAX_GENERATIONS_PER_MEMBER`] live generations of one member and more than
//! [`MAX_KEYS_PER_MEMBER`] distinct keys of one member are refused (whole frame).
//!
//! What this cannot do: chitchat state is hearsay. Members relay each other's heartbeats and
//! key-values unsigned, so any member of the cell can forge another member's key-values or
//! keep a dead member's heartbeat going; only the sender of a frame is authenticated (by the
//! libp2p connection, not here). Admission is first come, first served: a member that floods
//! the cell with fake in-cell peer ids fills the member cap and keeps real newcomers out until
//! the fakes are declared dead and collected.
//!
//! Parts: `frame` (the length prefix), `message` (the wire model), `format` (chitchat's bytes:
//! parser and encoder), `short_id` (short ids, virtual addresses, the peer key) and
//! `admission`; everything is re-exported here.

mod admission;
mod format;
mod frame;
mod message;
mod short_id;

use std::net::SocketAddr;

pub use admission::Admission;
pub use format::{decode_body, encode_body, MAX_STREAM_BYTES};
pub use frame::{body_len, decode_frame, encode_frame, FRAME_HEADER_BYTES};
pub use message::{
    DigestEncoding, DigestEntry, Envelope, KvStatus, NodeDelta, NodeOp, WireMessage, WireNodeId,
};
pub use short_id::{
    check_peer_key, virtual_addr, ShortId, PEER_KEY, SHORT_ID_BITS, SHORT_ID_CHARS, VIRTUAL_PORT,
};

/// Largest body: chitchat's datagram cap (`MAX_UDP_DATAGRAM_PAYLOAD_SIZE`), which it never
/// exceeds when it encodes.
pub const MAX_BODY_BYTES: usize = 65_507;
/// Most members of a cell, and most digest entries or node deltas in one message.
pub const MAX_MEMBERS: usize = 1024;
/// Longest key of a key-value.
pub const MAX_KEY_BYTES: usize = 64;
/// Longest value of a key-value.
pub const MAX_VALUE_BYTES: usize = 1024;
/// Most key-value operations for one node in one delta.
pub const MAX_OPS_PER_NODE: usize = 32;
/// Most distinct keys one member may ever set (tracked by [`Admission`]).
pub const MAX_KEYS_PER_MEMBER: usize = 32;
/// Most generations (restarts) of one member held at once.
pub const MAX_GENERATIONS_PER_MEMBER: usize = 8;
/// Longest cluster id.
pub const MAX_CLUSTER_ID_BYTES: usize = 128;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CellWireError {
    #[error("cell frame: {len} bytes, shorter than the 4-byte length prefix")]
    ShortHeader { len: usize },
    #[error("cell frame: body of {len} bytes is over the {max}-byte limit")]
    BodyTooLarge { len: usize, max: usize },
    #[error("cell frame: body of {len} bytes is empty or its prefix says {declared}")]
    LengthMismatch { len: usize, declared: usize },
    #[error("cell frame: {what} is cut short")]
    Truncated { what: &'static str },
    #[error("cell frame: {count} bytes after the message")]
    TrailingBytes { count: usize },
    #[error("cell frame: bad magic number {0:#06x}")]
    BadMagic(u16),
    #[error("cell frame: unknown protocol version {0}")]
    BadVersion(u8),
    #[error("cell frame: unknown message type {0}")]
    BadMessageType(u8),
    #[error("cell frame: {what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("cell frame: {what} of {len} bytes is over the {max}-byte limit")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("cell frame: {what}: {count} is over the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("cell frame: unknown IP version byte {0}")]
    BadIpVersion(u8),
    #[error("cell frame: unknown block type {0}")]
    BadBlockType(u8),
    #[error("cell frame: a zstd block does not inflate within 65535 bytes: {0}")]
    Decompress(String),
    #[error("cell frame: {what} inflates past {max} bytes")]
    StreamTooLarge { what: &'static str, max: usize },
    #[error("cell frame: unknown delta operation {0}")]
    BadDeltaOp(u8),
    #[error("cell frame: unknown key-value status {0}")]
    BadKvStatus(u8),
    #[error("cell frame: a delta operation comes before any node")]
    OpWithoutNode,
    #[error("cell frame: key-value versions of {node} do not increase ({version} after {max})")]
    VersionNotIncreasing {
        node: ShortId,
        version: u64,
        max: u64,
    },
    #[error("cell frame: the delta names {node} generation {generation} twice")]
    DuplicateNode { node: ShortId, generation: u64 },
    #[error("cell frame: node id {0:?} is not a short id (15 characters of a-z, 2-7)")]
    NotAShortId(String),
    #[error("cell frame: {node} advertises {addr}, not its virtual address")]
    WrongAddress { node: ShortId, addr: SocketAddr },
    #[error("cell frame: the peer key of {0} is deleted (only a set is valid)")]
    PeerKeyNotSet(ShortId),
    #[error("cell frame: the peer key of {node} ({value:?}) is not a canonical peer id with that short id")]
    PeerKeyMismatch { node: ShortId, value: String },
    #[error("cell frame: member {0} is outside this cell")]
    OutsideCell(ShortId),
    #[error("cell frame: the cell already holds {1} members; {0} refused")]
    MemberCap(ShortId, usize),
    #[error("cell frame: {0} already has {1} generations")]
    GenerationCap(ShortId, usize),
    #[error("cell frame: {0} would have more than {1} keys")]
    KeyCap(ShortId, usize),
}

/// Values the tests of every part of the format share.
#[cfg(test)]
mod fixtures {
    use libp2p_identity::PeerId;

    use super::*;

    pub(super) fn peer(i: u8) -> PeerId {
        crate::identity::NodeIdentity::from_seed(&[i; 32])
            .map(|id| id.peer_id())
            .unwrap_or_else(|e| panic!("seed identity: {e}"))
    }

    pub(super) fn sid(i: u8) -> ShortId {
        ShortId::of(&peer(i))
    }

    pub(super) fn node(i: u8, generation: u64) -> WireNodeId {
        WireNodeId {
            id: sid(i),
            generation,
        }
    }

    pub(super) fn entry(i: u8) -> DigestEntry {
        DigestEntry {
            node: node(i, 1000 + u64::from(i)),
            heartbeat: 7,
            last_gc_version: 1,
            max_version: 9,
        }
    }

    pub(super) fn delta(i: u8, keys: &[&str]) -> NodeDelta {
        let mut ops: Vec<NodeOp> = keys
            .iter()
            .enumerate()
            .map(|(v, k)| NodeOp::KeyValue {
                key: (*k).to_owned(),
                value: format!("value of {k}"),
                version: v as u64 + 1,
                status: KvStatus::Set,
            })
            .collect();
        ops.push(NodeOp::SetMaxVersion(40));
        NodeDelta {
            node: node(i, 1000 + u64::from(i)),
            last_gc_version: 0,
            from_version_excluded: 0,
            ops,
        }
    }

    pub(super) fn samples() -> Vec<Envelope> {
        let mut out = Vec::new();
        for encoding in [DigestEncoding::Plain, DigestEncoding::Blocks] {
            out.push(Envelope {
                encoding,
                message: WireMessage::Syn {
                    digest: (1..=5).map(entry).collect(),
                    cluster_id: "novacron-cell/0/0".into(),
                },
            });
            out.push(Envelope {
                encoding,
                message: WireMessage::SynAck {
                    digest: vec![entry(1)],
                    delta: vec![delta(2, &["vcpus", "addrs"]), delta(3, &[])],
                },
            });
            out.push(Envelope {
                encoding,
                message: WireMessage::Ack {
                    delta: vec![delta(4, &["load_permille"])],
                },
            });
            out.push(Envelope {
                encoding,
                message: WireMessage::BadCluster,
            });
        }
        out
    }

    pub(super) fn ack_body() -> Vec<u8> {
        encode_body(&Envelope {
            encoding: DigestEncoding::Plain,
            message: WireMessage::Ack {
                delta: vec![delta(1, &["k"])],
            },
        })
    }

    pub(super) fn ack_of(deltas: Vec<NodeDelta>) -> Envelope {
        Envelope {
            encoding: DigestEncoding::Blocks,
            message: WireMessage::Ack { delta: deltas },
        }
    }
}
