//! The bytes of cell membership (chitchat) on a `/novacron/cell/1` stream: framing, a full
//! validating parser of chitchat 0.13's message format, the virtual address of a peer, and
//! admission of what a frame mentions. Pure: no IO, no clock (callers pass `now_ms`), so it
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
//! - a [`PEER_KEY`] key-value that is not a Set of a canonical base58 [`PeerId`] whose short
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

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use libp2p_identity::PeerId;

use crate::cells::CellId;

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Largest body: chitchat's datagram cap (`MAX_UDP_DATAGRAM_PAYLOAD_SIZE`), which it never
/// exceeds when it encodes.
pub const MAX_BODY_BYTES: usize = 65_507;
/// Largest inflated size of one zstd block stream (a digest or a delta).
pub const MAX_STREAM_BYTES: usize = 1 << 20;
/// Largest inflated block (chitchat decompresses into a `u16::MAX` buffer).
const MAX_BLOCK_BYTES: usize = u16::MAX as usize;
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

const MAGIC: u16 = 45_139;
/// Port of every virtual address.
pub const VIRTUAL_PORT: u16 = 1;

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

/// Characters of a [`ShortId`].
pub const SHORT_ID_CHARS: usize = 15;
/// Bits of blake3(peer id bytes) a [`ShortId`] carries (5 per character).
pub const SHORT_ID_BITS: u32 = 75;
/// The key-value under which a member gossips its full PeerId (base58).
pub const PEER_KEY: &str = "peer";

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_value(c: u8) -> Option<u8> {
    match c {
        b'a'..=b'z' => Some(c - b'a'),
        b'2'..=b'7' => Some(c - b'2' + 26),
        _ => None,
    }
}

/// A member's chitchat node id: the first [`SHORT_ID_BITS`] bits of blake3(peer id bytes) as
/// [`SHORT_ID_CHARS`] characters of lower-case RFC 4648 base32 (no padding; every such
/// string is canonical). Ordered like the string, as chitchat orders node ids.
///
/// Strength: an accidental collision in a cell of [`MAX_MEMBERS`] members has probability
/// about 1024² / 2^76 ≈ 2^-56. Taking a given member's short id (to be gossiped to in its
/// place) needs a second preimage: ~2^75 key generations and hashes (millions of GPU-years;
/// 64 bits would be ~2^64, thousands of GPU-years, which a well-funded attacker could buy,
/// and saves only 2 characters). What it cannot do: a birthday search (~2^37.5) finds two
/// keys of the attacker's own with the same short id; those two then share one chitchat
/// identity, which harms only the attacker's own nodes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortId([u8; SHORT_ID_CHARS]);

impl ShortId {
    /// The short id of `peer`.
    pub fn of(peer: &PeerId) -> ShortId {
        let hash = blake3::hash(&peer.to_bytes());
        let mut first = [0u8; 16];
        first[..10].copy_from_slice(&hash.as_bytes()[..10]);
        let bits = u128::from_be_bytes(first);
        let mut out = [0u8; SHORT_ID_CHARS];
        for (i, c) in out.iter_mut().enumerate() {
            let index = (bits >> (128 - 5 * (i + 1))) & 31;
            *c = BASE32[index as usize];
        }
        ShortId(out)
    }

    /// Reads a short id: exactly [`SHORT_ID_CHARS`] characters of `a-z2-7`.
    pub fn parse(s: &str) -> Result<ShortId, CellWireError> {
        let bytes = s.as_bytes();
        if bytes.len() != SHORT_ID_CHARS || !bytes.iter().all(|c| base32_value(*c).is_some()) {
            return Err(CellWireError::NotAShortId(s.to_owned()));
        }
        let mut out = [0u8; SHORT_ID_CHARS];
        out.copy_from_slice(bytes);
        Ok(ShortId(out))
    }

    pub fn as_str(&self) -> &str {
        // Only base32 characters are ever stored: always ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether `peer` has this short id.
    pub fn is_of(&self, peer: &PeerId) -> bool {
        ShortId::of(peer) == *self
    }

    /// The first 32 bits of blake3(peer id bytes): what cell assignment reads.
    fn hash_prefix(&self) -> u32 {
        // 7 characters hold 35 bits; keep the first 32.
        let bits = self.0[..7].iter().fold(0u64, |acc, c| {
            (acc << 5) | u64::from(base32_value(*c).unwrap_or(0))
        });
        (bits >> 3) as u32
    }

    /// Whether the member with this short id belongs to `cell` (the same answer as
    /// [`CellId::contains`] on its PeerId: cells take at most 32 bits of the same hash).
    pub fn in_cell(&self, cell: CellId) -> bool {
        let prefix = match cell.prefix_bits() {
            0 => 0,
            bits => self.hash_prefix() >> (32 - u32::from(bits.min(32))),
        };
        prefix == cell.prefix()
    }

    /// The chitchat gossip address: `[fd ‖ the 15 characters as bytes]:1`. Never routed
    /// (unique local range); the cell transport maps it back to the peer. Made of the id's
    /// own characters so zstd finds the repeat in a digest entry: the address costs ~3 bytes
    /// instead of 15 random ones.
    pub fn virtual_addr(&self) -> SocketAddr {
        let mut octets = [0u8; 16];
        octets[0] = 0xfd;
        octets[1..].copy_from_slice(&self.0);
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), VIRTUAL_PORT)
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortId({})", self.as_str())
    }
}

/// The chitchat gossip address of a peer: [`ShortId::virtual_addr`] of its short id.
pub fn virtual_addr(peer: &PeerId) -> SocketAddr {
    ShortId::of(peer).virtual_addr()
}

/// Reads a [`PEER_KEY`] value: the PeerId it names if it is canonical base58 and has short
/// id `node`.
pub fn check_peer_key(node: &ShortId, value: &str) -> Result<PeerId, CellWireError> {
    let mismatch = || CellWireError::PeerKeyMismatch {
        node: *node,
        value: value.to_owned(),
    };
    let peer = PeerId::from_str(value).map_err(|_| mismatch())?;
    if peer.to_base58() != value || !node.is_of(&peer) {
        return Err(mismatch());
    }
    Ok(peer)
}

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
    /// [`decode_body`] to have that short id).
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

/// The body length a frame header announces, refused when over [`MAX_BODY_BYTES`] or zero.
pub fn body_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, CellWireError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_BODY_BYTES {
        return Err(CellWireError::BodyTooLarge {
            len,
            max: MAX_BODY_BYTES,
        });
    }
    if len == 0 {
        return Err(CellWireError::Truncated { what: "header" });
    }
    Ok(len)
}

/// Frames a body: `u32 LE length || body`.
pub fn encode_frame(body: &[u8]) -> Result<Vec<u8>, CellWireError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(CellWireError::BodyTooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Decodes one whole frame (header and body, nothing after it).
pub fn decode_frame(frame: &[u8]) -> Result<Envelope, CellWireError> {
    let header: [u8; FRAME_HEADER_BYTES] = frame
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(CellWireError::ShortHeader { len: frame.len() })?;
    let declared = body_len(header)?;
    let body = &frame[FRAME_HEADER_BYTES..];
    if body.len() != declared {
        return Err(CellWireError::LengthMismatch {
            len: body.len(),
            declared,
        });
    }
    decode_body(body)
}

/// Decodes and validates one chitchat envelope (see the module doc for what is refused).
pub fn decode_body(body: &[u8]) -> Result<Envelope, CellWireError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(CellWireError::BodyTooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let mut r = Reader { buf: body };
    let magic = r.u16("magic number")?;
    if magic != MAGIC {
        return Err(CellWireError::BadMagic(magic));
    }
    let encoding = match r.u8("protocol version")? {
        0 => DigestEncoding::Plain,
        1 => DigestEncoding::Blocks,
        v => return Err(CellWireError::BadVersion(v)),
    };
    let message = match r.u8("message type")? {
        0 => {
            let digest = read_digest(&mut r, encoding)?;
            let cluster_id = r.string("cluster id", MAX_CLUSTER_ID_BYTES)?;
            WireMessage::Syn { digest, cluster_id }
        }
        1 => {
            let digest = read_digest(&mut r, encoding)?;
            let delta = read_delta(&mut r)?;
            WireMessage::SynAck { digest, delta }
        }
        2 => WireMessage::Ack {
            delta: read_delta(&mut r)?,
        },
        3 => WireMessage::BadCluster,
        t => return Err(CellWireError::BadMessageType(t)),
    };
    if !r.buf.is_empty() {
        return Err(CellWireError::TrailingBytes { count: r.buf.len() });
    }
    Ok(Envelope { encoding, message })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CellWireError> {
        if self.buf.len() < n {
            return Err(CellWireError::Truncated { what });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CellWireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, CellWireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, CellWireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, what: &'static str, max: usize) -> Result<String, CellWireError> {
        let len = usize::from(self.u16(what)?);
        let bytes = self.take(len, what)?;
        let s = std::str::from_utf8(bytes).map_err(|_| CellWireError::NotUtf8 { what })?;
        if len > max {
            return Err(CellWireError::TooLong { what, len, max });
        }
        Ok(s.to_owned())
    }

    fn node_id(&mut self) -> Result<WireNodeId, CellWireError> {
        let id = self.string("node id", MAX_KEY_BYTES)?;
        let generation = self.u64("generation")?;
        let addr = match self.u8("address")? {
            4 => {
                let b = self.take(4, "address")?;
                IpAddr::from([b[0], b[1], b[2], b[3]])
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16, "address")?);
                IpAddr::from(a)
            }
            v => return Err(CellWireError::BadIpVersion(v)),
        };
        let addr = SocketAddr::new(addr, self.u16("port")?);
        let id = ShortId::parse(&id)?;
        if addr != id.virtual_addr() {
            return Err(CellWireError::WrongAddress { node: id, addr });
        }
        Ok(WireNodeId { id, generation })
    }
}

/// Inflates a chitchat block stream (blocks of: type 0 end, 1 zstd, 2 plain; u16 length).
fn read_stream(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u8>, CellWireError> {
    let mut out = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
    loop {
        match r.u8(what)? {
            0 => return Ok(out),
            1 => {
                let len = usize::from(r.u16(what)?);
                let block = r.take(len, what)?;
                scratch.resize(MAX_BLOCK_BYTES, 0);
                let n = zstd::bulk::decompress_to_buffer(block, &mut scratch[..])
                    .map_err(|e| CellWireError::Decompress(e.to_string()))?;
                push_capped(&mut out, &scratch[..n], what)?;
            }
            2 => {
                let len = usize::from(r.u16(what)?);
                let block = r.take(len, what)?;
                push_capped(&mut out, block, what)?;
            }
            t => return Err(CellWireError::BadBlockType(t)),
        }
    }
}

fn push_capped(out: &mut Vec<u8>, more: &[u8], what: &'static str) -> Result<(), CellWireError> {
    if out.len() + more.len() > MAX_STREAM_BYTES {
        return Err(CellWireError::StreamTooLarge {
            what,
            max: MAX_STREAM_BYTES,
        });
    }
    out.extend_from_slice(more);
    Ok(())
}

fn read_digest_entry(r: &mut Reader<'_>) -> Result<DigestEntry, CellWireError> {
    Ok(DigestEntry {
        node: r.node_id()?,
        heartbeat: r.u64("heartbeat")?,
        last_gc_version: r.u64("digest")?,
        max_version: r.u64("digest")?,
    })
}

fn check_count(what: &'static str, count: usize) -> Result<(), CellWireError> {
    if count > MAX_MEMBERS {
        return Err(CellWireError::TooMany {
            what,
            count,
            max: MAX_MEMBERS,
        });
    }
    Ok(())
}

fn read_digest(
    r: &mut Reader<'_>,
    encoding: DigestEncoding,
) -> Result<Vec<DigestEntry>, CellWireError> {
    let mut entries = Vec::new();
    match encoding {
        DigestEncoding::Plain => {
            let count = usize::from(r.u16("digest")?);
            check_count("digest entries", count)?;
            for _ in 0..count {
                entries.push(read_digest_entry(r)?);
            }
        }
        DigestEncoding::Blocks => {
            let bytes = read_stream(r, "digest")?;
            let mut inner = Reader { buf: &bytes };
            while !inner.buf.is_empty() {
                check_count("digest entries", entries.len() + 1)?;
                entries.push(read_digest_entry(&mut inner)?);
            }
        }
    }
    Ok(entries)
}

fn read_delta(r: &mut Reader<'_>) -> Result<Vec<NodeDelta>, CellWireError> {
    let bytes = read_stream(r, "delta")?;
    let mut inner = Reader { buf: &bytes };
    let mut nodes: Vec<NodeDelta> = Vec::new();
    let mut seen = BTreeSet::new();
    // chitchat's rule: key-value versions strictly increase within a node delta, starting
    // from 0 or from the last SetMaxVersion.
    let mut max_version = 0u64;
    while !inner.buf.is_empty() {
        match inner.u8("delta operation")? {
            0 => {
                let node = inner.node_id()?;
                let last_gc_version = inner.u64("delta node")?;
                let from_version_excluded = inner.u64("delta node")?;
                if !seen.insert(node) {
                    return Err(CellWireError::DuplicateNode {
                        node: node.id,
                        generation: node.generation,
                    });
                }
                check_count("node deltas", nodes.len() + 1)?;
                max_version = 0;
                nodes.push(NodeDelta {
                    node,
                    last_gc_version,
                    from_version_excluded,
                    ops: Vec::new(),
                });
            }
            1 => {
                let key = inner.string("key", MAX_KEY_BYTES)?;
                let value = inner.string("value", MAX_VALUE_BYTES)?;
                let version = inner.u64("key-value version")?;
                let status = match inner.u8("key-value status")? {
                    0 => KvStatus::Set,
                    1 => KvStatus::Delete,
                    2 => KvStatus::DeleteAfterTtl,
                    s => return Err(CellWireError::BadKvStatus(s)),
                };
                let node = nodes.last_mut().ok_or(CellWireError::OpWithoutNode)?;
                if version <= max_version {
                    return Err(CellWireError::VersionNotIncreasing {
                        node: node.node.id,
                        version,
                        max: max_version,
                    });
                }
                if key == PEER_KEY {
                    if status != KvStatus::Set {
                        return Err(CellWireError::PeerKeyNotSet(node.node.id));
                    }
                    check_peer_key(&node.node.id, &value)?;
                }
                max_version = version;
                push_op(
                    node,
                    NodeOp::KeyValue {
                        key,
                        value,
                        version,
                        status,
                    },
                )?;
            }
            2 => {
                let version = inner.u64("max version")?;
                let node = nodes.last_mut().ok_or(CellWireError::OpWithoutNode)?;
                max_version = version;
                push_op(node, NodeOp::SetMaxVersion(version))?;
            }
            t => return Err(CellWireError::BadDeltaOp(t)),
        }
    }
    Ok(nodes)
}

fn push_op(node: &mut NodeDelta, op: NodeOp) -> Result<(), CellWireError> {
    if node.ops.len() >= MAX_OPS_PER_NODE {
        return Err(CellWireError::TooMany {
            what: "operations for one node",
            count: node.ops.len() + 1,
            max: MAX_OPS_PER_NODE,
        });
    }
    node.ops.push(op);
    Ok(())
}

/// Encodes an envelope in chitchat's format (plain, uncompressed blocks). For tests, seeds
/// and tools: the node itself sends what chitchat encodes.
pub fn encode_body(env: &Envelope) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend_from_slice(&MAGIC.to_le_bytes());
    w.push(env.encoding as u8);
    match &env.message {
        WireMessage::Syn { digest, cluster_id } => {
            w.push(0);
            write_digest(&mut w, env.encoding, digest);
            write_str(&mut w, cluster_id);
        }
        WireMessage::SynAck { digest, delta } => {
            w.push(1);
            write_digest(&mut w, env.encoding, digest);
            write_delta(&mut w, delta);
        }
        WireMessage::Ack { delta } => {
            w.push(2);
            write_delta(&mut w, delta);
        }
        WireMessage::BadCluster => w.push(3),
    }
    w
}

fn write_str(w: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    w.extend_from_slice(&len.to_le_bytes());
    w.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn write_node_id(w: &mut Vec<u8>, node: &WireNodeId) {
    write_str(w, node.id.as_str());
    w.extend_from_slice(&node.generation.to_le_bytes());
    let addr = node.id.virtual_addr();
    match addr.ip() {
        IpAddr::V4(ip) => {
            w.push(4);
            w.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            w.push(6);
            w.extend_from_slice(&ip.octets());
        }
    }
    w.extend_from_slice(&addr.port().to_le_bytes());
}

fn write_digest_entry(w: &mut Vec<u8>, e: &DigestEntry) {
    write_node_id(w, &e.node);
    for v in [e.heartbeat, e.last_gc_version, e.max_version] {
        w.extend_from_slice(&v.to_le_bytes());
    }
}

fn write_digest(w: &mut Vec<u8>, encoding: DigestEncoding, digest: &[DigestEntry]) {
    match encoding {
        DigestEncoding::Plain => {
            let count = u16::try_from(digest.len()).unwrap_or(u16::MAX);
            w.extend_from_slice(&count.to_le_bytes());
            for e in digest.iter().take(usize::from(count)) {
                write_digest_entry(w, e);
            }
        }
        DigestEncoding::Blocks => {
            let mut plain = Vec::new();
            for e in digest {
                write_digest_entry(&mut plain, e);
            }
            write_stream(w, &plain);
        }
    }
}

fn write_delta(w: &mut Vec<u8>, delta: &[NodeDelta]) {
    let mut plain = Vec::new();
    for d in delta {
        plain.push(0);
        write_node_id(&mut plain, &d.node);
        plain.extend_from_slice(&d.last_gc_version.to_le_bytes());
        plain.extend_from_slice(&d.from_version_excluded.to_le_bytes());
        for op in &d.ops {
            match op {
                NodeOp::KeyValue {
                    key,
                    value,
                    version,
                    status,
                } => {
                    plain.push(1);
                    write_str(&mut plain, key);
                    write_str(&mut plain, value);
                    plain.extend_from_slice(&version.to_le_bytes());
                    plain.push(*status as u8);
                }
                NodeOp::SetMaxVersion(v) => {
                    plain.push(2);
                    plain.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    write_stream(w, &plain);
}

/// Plain (type 2) blocks of at most 16 KiB, then the end marker.
fn write_stream(w: &mut Vec<u8>, plain: &[u8]) {
    for chunk in plain.chunks(16 * 1024) {
        w.push(2);
        w.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
        w.extend_from_slice(chunk);
    }
    w.push(0);
}

#[derive(Debug, Default)]
struct Admitted {
    generations: BTreeSet<u64>,
    keys: BTreeSet<String>,
    since_ms: u64,
}

/// What the frames of one cell may make chitchat hold (see the module doc). Sans-IO: the
/// caller passes the time in milliseconds.
#[derive(Debug)]
pub struct Admission {
    cell: CellId,
    max_members: usize,
    members: HashMap<ShortId, Admitted>,
}

impl Admission {
    pub fn new(cell: CellId, max_members: usize) -> Admission {
        Admission {
            cell,
            max_members,
            members: HashMap::new(),
        }
    }

    /// Admits everything `env` mentions or refuses the whole frame (nothing is recorded then).
    pub fn admit(&mut self, env: &Envelope, now_ms: u64) -> Result<(), CellWireError> {
        let mut new_members: BTreeSet<ShortId> = BTreeSet::new();
        let mut new_gens: HashMap<ShortId, BTreeSet<u64>> = HashMap::new();
        let mut new_keys: HashMap<ShortId, BTreeSet<&str>> = HashMap::new();
        for node in env.nodes() {
            if !node.id.in_cell(self.cell) {
                return Err(CellWireError::OutsideCell(node.id));
            }
            let known = self.members.get(&node.id);
            if known.is_none() && new_members.insert(node.id) {
                let total = self.members.len() + new_members.len();
                if total > self.max_members {
                    return Err(CellWireError::MemberCap(node.id, self.max_members));
                }
            }
            let have = known.map_or(0, |a| a.generations.len());
            let known_gen = known.is_some_and(|a| a.generations.contains(&node.generation));
            if !known_gen {
                let gens = new_gens.entry(node.id).or_default();
                gens.insert(node.generation);
                if have + gens.len() > MAX_GENERATIONS_PER_MEMBER {
                    return Err(CellWireError::GenerationCap(
                        node.id,
                        MAX_GENERATIONS_PER_MEMBER,
                    ));
                }
            }
        }
        for (id, key) in env.keys() {
            let known = self.members.get(id);
            if known.is_some_and(|a| a.keys.contains(key)) {
                continue;
            }
            let have = known.map_or(0, |a| a.keys.len());
            let keys = new_keys.entry(*id).or_default();
            keys.insert(key);
            if have + keys.len() > MAX_KEYS_PER_MEMBER {
                return Err(CellWireError::KeyCap(*id, MAX_KEYS_PER_MEMBER));
            }
        }
        for id in new_members {
            self.members.insert(
                id,
                Admitted {
                    since_ms: now_ms,
                    ..Admitted::default()
                },
            );
        }
        for (id, gens) in new_gens {
            if let Some(a) = self.members.get_mut(&id) {
                a.generations.extend(gens);
            }
        }
        for (id, keys) in new_keys {
            if let Some(a) = self.members.get_mut(&id) {
                a.keys.extend(keys.into_iter().map(str::to_owned));
            }
        }
        Ok(())
    }

    /// Forgets what chitchat no longer holds: generations not in `held`, and members with
    /// none left that were admitted more than `min_age_ms` ago (younger ones may still be on
    /// their way to chitchat).
    pub fn retain(&mut self, held: &BTreeSet<WireNodeId>, now_ms: u64, min_age_ms: u64) {
        self.members.retain(|id, a| {
            a.generations.retain(|g| {
                held.contains(&WireNodeId {
                    id: *id,
                    generation: *g,
                })
            });
            !a.generations.is_empty() || now_ms.saturating_sub(a.since_ms) < min_age_ms
        });
    }

    /// Members admitted now.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cells::cell_id;

    fn peer(i: u8) -> PeerId {
        crate::identity::NodeIdentity::from_seed(&[i; 32])
            .map(|id| id.peer_id())
            .unwrap_or_else(|e| panic!("seed identity: {e}"))
    }

    fn sid(i: u8) -> ShortId {
        ShortId::of(&peer(i))
    }

    fn node(i: u8, generation: u64) -> WireNodeId {
        WireNodeId {
            id: sid(i),
            generation,
        }
    }

    fn entry(i: u8) -> DigestEntry {
        DigestEntry {
            node: node(i, 1000 + u64::from(i)),
            heartbeat: 7,
            last_gc_version: 1,
            max_version: 9,
        }
    }

    fn delta(i: u8, keys: &[&str]) -> NodeDelta {
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

    fn samples() -> Vec<Envelope> {
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

    #[test]
    fn envelopes_round_trip_through_frames() {
        for env in samples() {
            let frame = encode_frame(&encode_body(&env)).unwrap();
            assert_eq!(decode_frame(&frame), Ok(env.clone()));
        }
    }

    #[test]
    fn a_large_digest_spans_several_blocks() {
        let digest: Vec<DigestEntry> = (0..=255u8).map(entry).collect();
        let env = Envelope {
            encoding: DigestEncoding::Blocks,
            message: WireMessage::Syn {
                digest,
                cluster_id: "c".into(),
            },
        };
        let body = encode_body(&env);
        assert!(body.len() > 16 * 1024);
        assert_eq!(decode_body(&body), Ok(env));
    }

    #[test]
    fn zstd_blocks_are_inflated_and_capped() {
        // A delta stream of one zstd block holding one node op.
        let env = Envelope {
            encoding: DigestEncoding::Plain,
            message: WireMessage::Ack {
                delta: vec![delta(1, &["k"])],
            },
        };
        let body = encode_body(&env);
        // Header (4 bytes) then the plain stream: type 2, u16 len, bytes, 0.
        let len = usize::from(u16::from_le_bytes([body[5], body[6]]));
        let plain = &body[7..7 + len];
        let packed = zstd::bulk::compress(plain, 3).unwrap();
        let mut zbody = body[..4].to_vec();
        zbody.push(1);
        zbody.extend_from_slice(&(packed.len() as u16).to_le_bytes());
        zbody.extend_from_slice(&packed);
        zbody.push(0);
        assert_eq!(decode_body(&zbody), Ok(env));

        // A bomb: blocks of 60,000 zeros each, 20 of them, is over 1 MiB.
        let zeros = zstd::bulk::compress(&[0u8; 60_000], 3).unwrap();
        let mut bomb = body[..4].to_vec();
        for _ in 0..20 {
            bomb.push(1);
            bomb.extend_from_slice(&(zeros.len() as u16).to_le_bytes());
            bomb.extend_from_slice(&zeros);
        }
        bomb.push(0);
        assert_eq!(
            decode_body(&bomb),
            Err(CellWireError::StreamTooLarge {
                what: "delta",
                max: MAX_STREAM_BYTES
            })
        );
        // A block that inflates past 65535 bytes.
        let big = zstd::bulk::compress(&[0u8; 70_000], 3).unwrap();
        let mut over = body[..4].to_vec();
        over.push(1);
        over.extend_from_slice(&(big.len() as u16).to_le_bytes());
        over.extend_from_slice(&big);
        over.push(0);
        assert!(matches!(
            decode_body(&over),
            Err(CellWireError::Decompress(_))
        ));
        // Garbage in a zstd block.
        let mut junk = body[..4].to_vec();
        junk.extend_from_slice(&[1, 3, 0, 1, 2, 3, 0]);
        assert!(matches!(
            decode_body(&junk),
            Err(CellWireError::Decompress(_))
        ));
    }

    fn ack_body() -> Vec<u8> {
        encode_body(&Envelope {
            encoding: DigestEncoding::Plain,
            message: WireMessage::Ack {
                delta: vec![delta(1, &["k"])],
            },
        })
    }

    /// An Ack whose delta stream is `plain` (one plain block).
    fn ack_with(plain: &[u8]) -> Vec<u8> {
        let mut b = vec![0x53, 0xb0, 0, 2];
        write_stream(&mut b, plain);
        b
    }

    fn raw_node(id: &str, addr: SocketAddr) -> Vec<u8> {
        let mut p = vec![0u8];
        write_str(&mut p, id);
        p.extend_from_slice(&5u64.to_le_bytes());
        match addr.ip() {
            IpAddr::V4(ip) => {
                p.push(4);
                p.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                p.push(6);
                p.extend_from_slice(&ip.octets());
            }
        }
        p.extend_from_slice(&addr.port().to_le_bytes());
        p.extend_from_slice(&[0u8; 16]);
        p
    }

    #[test]
    fn every_framing_error_is_named() {
        assert_eq!(
            decode_frame(&[1, 0]),
            Err(CellWireError::ShortHeader { len: 2 })
        );
        assert_eq!(
            body_len(70_000u32.to_le_bytes()),
            Err(CellWireError::BodyTooLarge {
                len: 70_000,
                max: MAX_BODY_BYTES
            })
        );
        assert_eq!(
            body_len(u32::MAX.to_le_bytes()),
            Err(CellWireError::BodyTooLarge {
                len: u32::MAX as usize,
                max: MAX_BODY_BYTES
            })
        );
        assert_eq!(
            body_len([0; 4]),
            Err(CellWireError::Truncated { what: "header" })
        );
        let mut frame = encode_frame(&ack_body()).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_frame(&frame),
            Err(CellWireError::LengthMismatch { .. })
        ));
        assert!(encode_frame(&vec![0; MAX_BODY_BYTES + 1]).is_err());
        assert!(matches!(
            decode_body(&vec![0; MAX_BODY_BYTES + 1]),
            Err(CellWireError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn every_header_error_is_named() {
        assert_eq!(
            decode_body(&[0x53]),
            Err(CellWireError::Truncated {
                what: "magic number"
            })
        );
        assert_eq!(
            decode_body(&[1, 2, 0, 2, 0]),
            Err(CellWireError::BadMagic(0x0201))
        );
        assert_eq!(
            decode_body(&[0x53, 0xb0, 7, 2, 0]),
            Err(CellWireError::BadVersion(7))
        );
        assert_eq!(
            decode_body(&[0x53, 0xb0, 0, 9]),
            Err(CellWireError::BadMessageType(9))
        );
        let mut body = ack_body();
        body.push(0);
        assert_eq!(
            decode_body(&body),
            Err(CellWireError::TrailingBytes { count: 1 })
        );
        let body = ack_body();
        assert!(matches!(
            decode_body(&body[..body.len() - 3]),
            Err(CellWireError::Truncated { .. })
        ));
        assert_eq!(
            decode_body(&[0x53, 0xb0, 0, 2, 9]),
            Err(CellWireError::BadBlockType(9))
        );
        // A Syn whose cluster id is not UTF-8, and one too long.
        let mut syn = vec![0x53, 0xb0, 0, 0, 0, 0, 2, 0, 0xff, 0xfe];
        assert_eq!(
            decode_body(&syn),
            Err(CellWireError::NotUtf8 { what: "cluster id" })
        );
        syn.truncate(6);
        write_str(&mut syn, &"x".repeat(200));
        assert!(matches!(
            decode_body(&syn),
            Err(CellWireError::TooLong {
                what: "cluster id",
                ..
            })
        ));
    }

    #[test]
    fn every_node_id_error_is_named() {
        let good = sid(1);
        let addr = good.virtual_addr();
        let ok = ack_with(&raw_node(good.as_str(), addr));
        assert!(decode_body(&ok).is_ok());
        // A PeerId (today's ids elsewhere), the right length with a bad character, upper
        // case, one character short or long: all refused.
        let upper = good.as_str().to_uppercase();
        let short = &good.as_str()[..14];
        let long = format!("{good}a");
        let bad_char = format!("{}1", &good.as_str()[..14]);
        for id in [
            peer(1).to_base58().as_str(),
            "not-a-peer",
            upper.as_str(),
            short,
            long.as_str(),
            bad_char.as_str(),
            "",
        ] {
            assert_eq!(
                decode_body(&ack_with(&raw_node(id, addr))),
                Err(CellWireError::NotAShortId(id.into())),
                "{id}"
            );
        }
        let wrong: SocketAddr = "127.0.0.1:7280".parse().unwrap();
        let others = [
            wrong,
            sid(2).virtual_addr(),
            SocketAddr::new(addr.ip(), 2),
            // The old address scheme: 15 hash bytes after fd.
            {
                let hash = blake3::hash(&peer(1).to_bytes());
                let mut o = [0u8; 16];
                o[0] = 0xfd;
                o[1..].copy_from_slice(&hash.as_bytes()[..15]);
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), VIRTUAL_PORT)
            },
        ];
        for other in others {
            assert_eq!(
                decode_body(&ack_with(&raw_node(good.as_str(), other))),
                Err(CellWireError::WrongAddress {
                    node: good,
                    addr: other
                })
            );
        }
        let mut bad_ip = raw_node(good.as_str(), addr);
        let ip_at = 1 + 2 + SHORT_ID_CHARS + 8;
        bad_ip[ip_at] = 5;
        assert_eq!(
            decode_body(&ack_with(&bad_ip)),
            Err(CellWireError::BadIpVersion(5))
        );
    }

    #[test]
    fn every_delta_error_is_named() {
        let p = sid(1);
        let head = raw_node(p.as_str(), p.virtual_addr());
        let kv = |version: u64, status: u8, key: &str, value: &str| {
            let mut o = vec![1u8];
            write_str(&mut o, key);
            write_str(&mut o, value);
            o.extend_from_slice(&version.to_le_bytes());
            o.push(status);
            o
        };
        assert_eq!(
            decode_body(&ack_with(&kv(1, 0, "k", "v"))),
            Err(CellWireError::OpWithoutNode)
        );
        assert_eq!(
            decode_body(&ack_with(&[2, 1, 0, 0, 0, 0, 0, 0, 0])),
            Err(CellWireError::OpWithoutNode)
        );
        assert_eq!(
            decode_body(&ack_with(&[7])),
            Err(CellWireError::BadDeltaOp(7))
        );
        let bad_status = [head.clone(), kv(1, 3, "k", "v")].concat();
        assert_eq!(
            decode_body(&ack_with(&bad_status)),
            Err(CellWireError::BadKvStatus(3))
        );
        let not_increasing = [head.clone(), kv(2, 0, "a", "v"), kv(2, 0, "b", "v")].concat();
        assert_eq!(
            decode_body(&ack_with(&not_increasing)),
            Err(CellWireError::VersionNotIncreasing {
                node: p,
                version: 2,
                max: 2
            })
        );
        let twice = [head.clone(), head.clone()].concat();
        assert_eq!(
            decode_body(&ack_with(&twice)),
            Err(CellWireError::DuplicateNode {
                node: p,
                generation: 5
            })
        );
        let long_key = [head.clone(), kv(1, 0, &"k".repeat(65), "v")].concat();
        assert!(matches!(
            decode_body(&ack_with(&long_key)),
            Err(CellWireError::TooLong { what: "key", .. })
        ));
        let long_value = [head.clone(), kv(1, 0, "k", &"v".repeat(1025))].concat();
        assert!(matches!(
            decode_body(&ack_with(&long_value)),
            Err(CellWireError::TooLong { what: "value", .. })
        ));
        let mut many = head.clone();
        for v in 1..=33 {
            many.extend(kv(v, 0, "k", "v"));
        }
        assert!(matches!(
            decode_body(&ack_with(&many)),
            Err(CellWireError::TooMany {
                what: "operations for one node",
                ..
            })
        ));
    }

    #[test]
    fn a_digest_over_the_member_cap_is_refused() {
        let mut body = vec![0x53, 0xb0, 0, 0];
        body.extend_from_slice(&1025u16.to_le_bytes());
        assert_eq!(
            decode_body(&body),
            Err(CellWireError::TooMany {
                what: "digest entries",
                count: 1025,
                max: MAX_MEMBERS
            })
        );
    }

    #[test]
    fn virtual_addresses_are_ula_port_1_and_distinct() {
        let a = virtual_addr(&peer(1));
        let b = virtual_addr(&peer(2));
        assert_ne!(a, b);
        assert_eq!(a, virtual_addr(&peer(1)));
        for addr in [a, b] {
            assert_eq!(addr.port(), VIRTUAL_PORT);
            match addr.ip() {
                IpAddr::V6(ip) => assert_eq!(ip.octets()[0], 0xfd),
                IpAddr::V4(_) => panic!("not IPv6"),
            }
        }
        match a.ip() {
            IpAddr::V6(ip) => assert_eq!(&ip.octets()[1..], sid(1).as_str().as_bytes()),
            IpAddr::V4(_) => unreachable!(),
        }
    }

    /// Reference: the first 75 bits of the hash, 5 at a time, most significant first.
    fn base32_of_hash(peer: &PeerId) -> String {
        let hash = blake3::hash(&peer.to_bytes());
        let bits: String = hash.as_bytes()[..10]
            .iter()
            .map(|b| format!("{b:08b}"))
            .collect();
        (0..SHORT_ID_CHARS)
            .map(|i| {
                let v = u8::from_str_radix(&bits[5 * i..5 * i + 5], 2).unwrap();
                BASE32[usize::from(v)] as char
            })
            .collect()
    }

    #[test]
    fn short_ids_are_base32_of_the_hash_and_know_their_cell() {
        for i in 0..64u8 {
            let p = peer(i);
            let id = ShortId::of(&p);
            assert_eq!(id.as_str(), base32_of_hash(&p));
            assert_eq!(id.as_str().len(), SHORT_ID_CHARS);
            assert_eq!(ShortId::parse(id.as_str()), Ok(id));
            assert!(id.is_of(&p));
            assert!(!id.is_of(&peer(i.wrapping_add(1))));
            assert_eq!(id.to_string(), id.as_str());
            for bits in [0u8, 1, 3, 8, 13, 31, 32] {
                let cell = cell_id(&p, bits);
                assert!(id.in_cell(cell), "{i} at {bits} bits");
                let other = cell_id(&peer(i.wrapping_add(1)), bits);
                assert_eq!(id.in_cell(other), other == cell);
            }
        }
        // Random peers too (not only seed identities).
        for _ in 0..200 {
            let p = PeerId::random();
            let id = ShortId::of(&p);
            assert_eq!(id.as_str(), base32_of_hash(&p));
            assert!(id.in_cell(cell_id(&p, 32)));
            assert!(id.in_cell(cell_id(&p, 17)));
        }
        // Ordered like the strings, as chitchat orders node ids.
        let mut ids: Vec<ShortId> = (0..20).map(sid).collect();
        ids.sort();
        let strs: Vec<&str> = ids.iter().map(ShortId::as_str).collect();
        let mut sorted = strs.clone();
        sorted.sort();
        assert_eq!(strs, sorted);
    }

    #[test]
    fn the_peer_key_must_be_a_set_of_the_nodes_own_peer_id() {
        let kv = |key: &str, value: String, status: KvStatus| NodeDelta {
            node: node(1, 5),
            last_gc_version: 0,
            from_version_excluded: 0,
            ops: vec![NodeOp::KeyValue {
                key: key.into(),
                value,
                version: 1,
                status,
            }],
        };
        let good = ack_of(vec![kv(PEER_KEY, peer(1).to_base58(), KvStatus::Set)]);
        let decoded = decode_body(&encode_body(&good)).unwrap();
        assert_eq!(decoded.peers().collect::<Vec<_>>(), vec![(sid(1), peer(1))]);
        // Another member's PeerId, garbage, a non-canonical spelling, a deletion.
        for value in [
            peer(2).to_base58(),
            "garbage".into(),
            String::new(),
            format!("{} ", peer(1).to_base58()),
        ] {
            let env = ack_of(vec![kv(PEER_KEY, value.clone(), KvStatus::Set)]);
            assert_eq!(
                decode_body(&encode_body(&env)),
                Err(CellWireError::PeerKeyMismatch {
                    node: sid(1),
                    value
                })
            );
        }
        for status in [KvStatus::Delete, KvStatus::DeleteAfterTtl] {
            let env = ack_of(vec![kv(PEER_KEY, peer(1).to_base58(), status)]);
            assert_eq!(
                decode_body(&encode_body(&env)),
                Err(CellWireError::PeerKeyNotSet(sid(1)))
            );
        }
        // Other keys may hold anything.
        let other = ack_of(vec![kv("peerish", peer(2).to_base58(), KvStatus::Delete)]);
        assert!(decode_body(&encode_body(&other)).is_ok());
        assert_eq!(check_peer_key(&sid(1), &peer(1).to_base58()), Ok(peer(1)));
    }

    fn ack_of(deltas: Vec<NodeDelta>) -> Envelope {
        Envelope {
            encoding: DigestEncoding::Blocks,
            message: WireMessage::Ack { delta: deltas },
        }
    }

    #[test]
    fn admission_caps_members_generations_keys_and_the_cell() {
        let everyone = CellId::new(0, 0).unwrap();
        let mut adm = Admission::new(everyone, 3);
        let three = ack_of(vec![delta(1, &["a"]), delta(2, &[]), delta(3, &[])]);
        adm.admit(&three, 0).unwrap();
        assert_eq!(adm.len(), 3);
        assert_eq!(
            adm.admit(&ack_of(vec![delta(4, &[])]), 0),
            Err(CellWireError::MemberCap(sid(4), 3))
        );
        // A refused frame records nothing.
        assert_eq!(adm.len(), 3);

        // Generations of one member.
        for g in 0..(MAX_GENERATIONS_PER_MEMBER as u64 - 1) {
            let mut d = delta(1, &[]);
            d.node.generation = g;
            adm.admit(&ack_of(vec![d]), 0).unwrap();
        }
        let mut d = delta(1, &[]);
        d.node.generation = 99;
        assert_eq!(
            adm.admit(&ack_of(vec![d]), 0),
            Err(CellWireError::GenerationCap(
                sid(1),
                MAX_GENERATIONS_PER_MEMBER
            ))
        );

        // Keys of one member: 31 fit, two more distinct ones would make 33.
        let keys: Vec<String> = (0..31).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        adm.admit(&ack_of(vec![delta(2, &refs[..16])]), 0).unwrap();
        adm.admit(&ack_of(vec![delta(2, &refs[16..])]), 0).unwrap();
        adm.admit(&ack_of(vec![delta(2, &["k0", "k1"])]), 0)
            .unwrap();
        assert_eq!(
            adm.admit(&ack_of(vec![delta(2, &["one-more", "and-another"])]), 0),
            Err(CellWireError::KeyCap(sid(2), MAX_KEYS_PER_MEMBER))
        );

        // Retain: members chitchat no longer holds go once old enough.
        let held: BTreeSet<WireNodeId> = [node(2, 1002), node(3, 1003)].into();
        adm.retain(&held, 1_000, 5_000);
        assert_eq!(adm.len(), 3, "too young to forget");
        adm.retain(&held, 10_000, 5_000);
        assert_eq!(adm.len(), 2);
        adm.admit(&ack_of(vec![delta(4, &[])]), 10_000).unwrap();

        // A one-bit cell refuses members of the other half.
        let mine = cell_id(&peer(1), 1);
        let mut half = Admission::new(mine, 100);
        let other = (2..=40u8)
            .find(|i| !mine.contains(&peer(*i)))
            .expect("some peer in the other half");
        assert_eq!(
            half.admit(&ack_of(vec![delta(other, &[])]), 0),
            Err(CellWireError::OutsideCell(sid(other)))
        );
        assert!(half.admit(&ack_of(vec![delta(1, &[])]), 0).is_ok());
    }
}
