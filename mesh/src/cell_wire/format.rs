//! Chitchat 0.13's message format: a validating parser ([`decode_body`]) and an encoder
//! ([`encode_body`]) of one envelope (see the module doc of [`super`] for what is refused).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::{
    check_peer_key, CellWireError, DigestEncoding, DigestEntry, Envelope, KvStatus, NodeDelta,
    NodeOp, ShortId, WireMessage, WireNodeId, MAX_BODY_BYTES, MAX_CLUSTER_ID_BYTES, MAX_KEY_BYTES,
    MAX_MEMBERS, MAX_OPS_PER_NODE, MAX_VALUE_BYTES, PEER_KEY,
};

/// Largest inflated size of one zstd block stream (a digest or a delta).
pub const MAX_STREAM_BYTES: usize = 1 << 20;
/// Largest inflated block (chitchat decompresses into a `u16::MAX` buffer).
const MAX_BLOCK_BYTES: usize = u16::MAX as usize;
const MAGIC: u16 = 45_139;

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
    loop {
        match r.u8(what)? {
            0 => return Ok(out),
            1 => {
                let len = usize::from(r.u16(what)?);
                let block = r.take(len, what)?;
                INFLATER.with_borrow_mut(|inflater| {
                    let plain = inflater.inflate(block)?;
                    push_capped(&mut out, plain, what)
                })?;
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

thread_local! {
    /// One zstd context per thread: creating one per block showed in `perf` profiles of an
    /// idle cell (`ZSTD_createDCtx` among the top symbols).
    static INFLATER: RefCell<Inflater> = RefCell::new(Inflater::default());
}

/// A reusable zstd context and a block-sized buffer.
#[derive(Default)]
struct Inflater {
    context: Option<zstd::bulk::Decompressor<'static>>,
    block: Vec<u8>,
}

impl Inflater {
    /// One zstd block, inflated; at most [`MAX_BLOCK_BYTES`], as chitchat reads it.
    fn inflate(&mut self, packed: &[u8]) -> Result<&[u8], CellWireError> {
        let fail = |e: std::io::Error| CellWireError::Decompress(e.to_string());
        let context = match &mut self.context {
            Some(context) => context,
            None => self
                .context
                .insert(zstd::bulk::Decompressor::new().map_err(fail)?),
        };
        self.block.clear();
        self.block.reserve_exact(MAX_BLOCK_BYTES);
        let n = match context.decompress_to_buffer(packed, &mut self.block) {
            Ok(n) => n,
            Err(e) => {
                // Whatever state bad bytes left it in is not carried to the next block.
                self.context = None;
                return Err(fail(e));
            }
        };
        if n > MAX_BLOCK_BYTES {
            return Err(CellWireError::Decompress(format!(
                "a block inflates to {n} bytes, over {MAX_BLOCK_BYTES}"
            )));
        }
        Ok(&self.block[..n])
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    use crate::cell_wire::fixtures::*;
    use crate::cell_wire::{SHORT_ID_CHARS, VIRTUAL_PORT};

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
        assert_eq!(decode_body(&zbody), Ok(env.clone()));

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
        // The thread's zstd context, reused, still reads a good block after all of these.
        assert_eq!(decode_body(&zbody), Ok(env));
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
}
