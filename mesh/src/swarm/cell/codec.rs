//! Turning chitchat envelopes into bytes and back, through chitchat's own UDP socket on
//! loopback.
//!
//! Why: chitchat 0.13 keeps `ChitchatEnvelope::serialize`/`deserialize` crate-private, and
//! the digest inside Syn and SynAck messages has no public constructor or encoder either.
//! The only public codec is `chitchat::transport::UdpSocket`: its `send` encodes, its `recv`
//! decodes. So [`Encoder`] lets a chitchat socket send to a tap socket connected to it (only
//! that socket's datagrams reach the tap) and reads the bytes back; [`Decoder`] sends a body
//! from an injector socket and takes the envelope chitchat's socket decodes, keeping only
//! datagrams whose source is the injector. Both work on one message at a time and wait for
//! its echo, so bytes and envelopes cannot be paired wrongly; a decode that does not come back
//! in time (chitchat refused the bytes) reopens the decoder, so a late datagram is never
//! taken for the next one.
//!
//! Bodies reach [`Decoder::decode`] only after [`crate::cell_wire::decode_body`] accepted
//! them, a parser at least as strict as chitchat's, so chitchat never drops one in practice.
//!
//! What this cannot do: it needs loopback UDP (127.0.0.1) and costs two local datagrams per
//! message. Another process of the same host can send datagrams to these sockets; they are
//! ignored (wrong source), but a local process able to spoof loopback source addresses (root)
//! could inject messages. A chitchat that exported its codec would make this module a
//! function call.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use chitchat::transport::{Socket, UdpSocket as ChitchatUdp};
use chitchat::ChitchatEnvelope;
use tokio::net::UdpSocket;
use tokio::time::{timeout, timeout_at, Instant};

/// How long an encode or decode waits for its echo.
const ECHO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest datagram read back (chitchat never sends more than 65,507 bytes).
const DATAGRAM_BUF: usize = 65_536;

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cell codec: loopback socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("cell codec: chitchat socket: {0}")]
    Chitchat(String),
    #[error("cell codec: chitchat did not {0} the message in time")]
    Timeout(&'static str),
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Encodes envelopes with chitchat's encoder.
pub(crate) struct Encoder {
    chitchat: ChitchatUdp,
    tap: UdpSocket,
    tap_addr: SocketAddr,
    buf: Vec<u8>,
}

impl Encoder {
    pub(crate) async fn open() -> Result<Encoder, CodecError> {
        let (chitchat, tap, tap_addr) = connected_pair().await?;
        Ok(Encoder {
            chitchat,
            tap,
            tap_addr,
            buf: vec![0; DATAGRAM_BUF],
        })
    }

    /// The bytes chitchat puts on the wire for `envelope`.
    pub(crate) async fn encode(
        &mut self,
        envelope: ChitchatEnvelope,
    ) -> Result<Vec<u8>, CodecError> {
        // A datagram left over from an encode that was cancelled must not be taken for this one.
        while self.tap.try_recv(&mut self.buf).is_ok() {}
        self.chitchat
            .send(self.tap_addr, envelope)
            .await
            .map_err(|e| CodecError::Chitchat(e.to_string()))?;
        let n = timeout(ECHO_TIMEOUT, self.tap.recv(&mut self.buf))
            .await
            .map_err(|_| CodecError::Timeout("encode"))??;
        Ok(self.buf[..n].to_vec())
    }
}

/// A chitchat socket on loopback and a plain socket connected to it (with its address).
async fn connected_pair() -> Result<(ChitchatUdp, UdpSocket, SocketAddr), CodecError> {
    let chitchat = ChitchatUdp::open(loopback())
        .await
        .map_err(|e| CodecError::Chitchat(e.to_string()))?;
    let chitchat_addr = chitchat
        .local_addr()
        .map_err(|e| CodecError::Chitchat(e.to_string()))?;
    let plain = UdpSocket::bind(loopback()).await?;
    plain.connect(chitchat_addr).await?;
    let plain_addr = plain.local_addr()?;
    Ok((chitchat, plain, plain_addr))
}

/// Decodes bodies with chitchat's decoder.
pub(crate) struct Decoder {
    chitchat: ChitchatUdp,
    injector: UdpSocket,
    injector_addr: SocketAddr,
}

impl Decoder {
    pub(crate) async fn open() -> Result<Decoder, CodecError> {
        let (chitchat, injector, injector_addr) = connected_pair().await?;
        Ok(Decoder {
            chitchat,
            injector,
            injector_addr,
        })
    }

    /// The envelope chitchat reads from `body`. On a timeout the decoder is replaced by a
    /// fresh one (see the module doc).
    pub(crate) async fn decode(&mut self, body: &[u8]) -> Result<ChitchatEnvelope, CodecError> {
        self.injector.send(body).await?;
        let deadline = Instant::now() + ECHO_TIMEOUT;
        loop {
            match timeout_at(deadline, self.chitchat.recv()).await {
                Ok(Ok(out)) if out.from_addr == self.injector_addr => return Ok(out.envelope),
                Ok(Ok(out)) => {
                    tracing::warn!(from = %out.from_addr, "cell codec: ignoring a datagram from another local socket");
                }
                Ok(Err(e)) => return Err(CodecError::Chitchat(e.to_string())),
                Err(_) => {
                    *self = Decoder::open().await?;
                    return Err(CodecError::Timeout("decode"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell_wire::{
        decode_body, encode_body, DigestEncoding, Envelope, NodeDelta, NodeOp, ShortId,
        WireMessage, WireNodeId,
    };
    use crate::identity::NodeIdentity;

    fn node(i: u8) -> WireNodeId {
        let peer = NodeIdentity::from_seed(&[i; 32])
            .map(|id| id.peer_id())
            .unwrap_or_else(|e| panic!("{e}"));
        WireNodeId {
            id: ShortId::of(&peer),
            generation: 7,
        }
    }

    /// Our encoder's bytes decode in chitchat, and chitchat's re-encoding parses in ours to
    /// the same message: the two agree on the format, for both digest encodings. (A decoded
    /// delta cannot be re-encoded by chitchat: it asserts the length it was read with, so
    /// deltas are checked one way.)
    #[tokio::test]
    async fn chitchat_and_cell_wire_agree_on_the_format() {
        let mut enc = Encoder::open().await.unwrap();
        let mut dec = Decoder::open().await.unwrap();
        for encoding in [DigestEncoding::Plain, DigestEncoding::Blocks] {
            let mut digest: Vec<_> = (1..=20)
                .map(|i| crate::cell_wire::DigestEntry {
                    node: node(i),
                    heartbeat: u64::from(i) * 3,
                    last_gc_version: 0,
                    max_version: 5,
                })
                .collect();
            // chitchat keeps a digest ordered by node id.
            digest.sort_by_key(|e| e.node.id);
            let syn = Envelope {
                encoding,
                message: WireMessage::Syn {
                    digest: digest.clone(),
                    cluster_id: "novacron-cell/0/0".into(),
                },
            };
            let env = dec.decode(&encode_body(&syn)).await.unwrap();
            let theirs = enc.encode(env).await.unwrap();
            assert_eq!(decode_body(&theirs), Ok(syn));

            let delta = vec![NodeDelta {
                node: node(1),
                last_gc_version: 0,
                from_version_excluded: 0,
                ops: vec![
                    NodeOp::KeyValue {
                        key: "vcpus".into(),
                        value: "8".into(),
                        version: 1,
                        status: crate::cell_wire::KvStatus::Set,
                    },
                    NodeOp::SetMaxVersion(4),
                ],
            }];
            let syn_ack = Envelope {
                encoding,
                message: WireMessage::SynAck { digest, delta },
            };
            let env = dec.decode(&encode_body(&syn_ack)).await.unwrap();
            assert!(matches!(
                env.message,
                chitchat::ChitchatMessage::SynAck { .. }
            ));
        }
        assert_eq!(node(1).id.virtual_addr().port(), 1);
    }

    #[tokio::test]
    async fn bytes_chitchat_refuses_time_out_and_the_decoder_recovers() {
        let mut dec = Decoder::open().await.unwrap();
        let err = dec.decode(b"junk").await;
        assert!(matches!(err, Err(CodecError::Timeout("decode"))), "{err:?}");
        let ok = encode_body(&Envelope {
            encoding: DigestEncoding::Blocks,
            message: WireMessage::BadCluster,
        });
        let env = dec.decode(&ok).await.unwrap();
        assert_eq!(env.message, chitchat::ChitchatMessage::BadCluster);
    }
}
#[cfg(test)]
mod sizes {
    use super::*;
    use crate::cell_wire::{
        decode_body, encode_body, DigestEncoding, DigestEntry, Envelope, ShortId, WireMessage,
        WireNodeId,
    };
    use libp2p::PeerId;

    const MEMBERS: usize = 50;

    /// One digest entry in chitchat's format with any node id and IPv6 address.
    fn raw_entry(out: &mut Vec<u8>, id: &str, ip: [u8; 16], generation: u64, heartbeat: u64) {
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&generation.to_le_bytes());
        out.push(6);
        out.extend_from_slice(&ip);
        out.extend_from_slice(&1u16.to_le_bytes());
        for v in [heartbeat, 0, 7] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A version-1 Syn whose digest stream is `entries` in one plain block.
    fn raw_syn(entries: &[u8]) -> Vec<u8> {
        let mut b = vec![0x53, 0xb0, 1, 0, 2];
        b.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        b.extend_from_slice(entries);
        b.push(0);
        let cluster = b"novacron-cell/0/0";
        b.extend_from_slice(&(cluster.len() as u16).to_le_bytes());
        b.extend_from_slice(cluster);
        b
    }

    /// Generation (start times over 20 s) and heartbeat of member `i`, as in a running cell.
    fn counters(i: u64) -> (u64, u64) {
        (
            1_780_000_000_000 + (i * 7919) % 20_000,
            2_000 + (i * 13) % 40,
        )
    }

    /// What chitchat's own encoder makes of a body it decoded (its compressed digest).
    async fn chitchat_size(enc: &mut Encoder, dec: &mut Decoder, body: &[u8]) -> usize {
        let env = dec.decode(body).await.unwrap();
        enc.encode(env).await.unwrap().len()
    }

    /// Bytes per member of a 50-member digest through chitchat's real encoder, for the node
    /// id schemes considered (run with `--nocapture` to see the figures):
    /// - PeerId in base58 + 15 hash bytes in the address (the first version): ~61;
    /// - 16 base32 characters (80 bits) + the same 10 bytes raw in the address: ~31;
    /// - [`ShortId`]: 15 base32 characters (75 bits) + the same characters as the address
    ///   bytes, which zstd encodes as a repeat: ~22.
    #[tokio::test]
    async fn a_fifty_member_digest_costs_about_22_bytes_per_member_compressed() {
        let mut enc = Encoder::open().await.unwrap();
        let mut dec = Decoder::open().await.unwrap();
        let peers: Vec<PeerId> = (0..MEMBERS).map(|_| PeerId::random()).collect();

        let mut legacy: Vec<(String, [u8; 16])> = peers
            .iter()
            .map(|p| {
                let hash = blake3::hash(&p.to_bytes());
                let mut ip = [0u8; 16];
                ip[0] = 0xfd;
                ip[1..].copy_from_slice(&hash.as_bytes()[..15]);
                (p.to_base58(), ip)
            })
            .collect();
        legacy.sort();
        let mut eighty: Vec<(String, [u8; 16])> = peers
            .iter()
            .map(|p| {
                let hash = blake3::hash(&p.to_bytes());
                let mut ip = [0u8; 16];
                ip[0] = 0xfd;
                ip[1..11].copy_from_slice(&hash.as_bytes()[..10]);
                let id: String = ShortId::of(p).as_str().to_owned();
                // The 16th character: the last 5 of the 80 bits.
                let last = hash.as_bytes()[9] & 31;
                let c = b"abcdefghijklmnopqrstuvwxyz234567"[usize::from(last)] as char;
                (format!("{id}{c}"), ip)
            })
            .collect();
        eighty.sort();
        let mut sizes = Vec::new();
        for scheme in [legacy, eighty] {
            let mut entries = Vec::new();
            for (i, (id, ip)) in scheme.iter().enumerate() {
                let (generation, heartbeat) = counters(i as u64);
                raw_entry(&mut entries, id, *ip, generation, heartbeat);
            }
            sizes.push(chitchat_size(&mut enc, &mut dec, &raw_syn(&entries)).await);
        }

        let mut digest: Vec<_> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (generation, heartbeat) = counters(i as u64);
                DigestEntry {
                    node: WireNodeId {
                        id: ShortId::of(p),
                        generation,
                    },
                    heartbeat,
                    last_gc_version: 0,
                    max_version: 7,
                }
            })
            .collect();
        digest.sort_by_key(|e| e.node.id);
        let mut plain = 0;
        for encoding in [DigestEncoding::Plain, DigestEncoding::Blocks] {
            let syn = Envelope {
                encoding,
                message: WireMessage::Syn {
                    digest: digest.clone(),
                    cluster_id: "novacron-cell/0/0".into(),
                },
            };
            let env = dec.decode(&encode_body(&syn)).await.unwrap();
            let bytes = enc.encode(env).await.unwrap();
            assert_eq!(decode_body(&bytes), Ok(syn));
            match encoding {
                DigestEncoding::Plain => plain = bytes.len(),
                DigestEncoding::Blocks => sizes.push(bytes.len()),
            }
        }
        let per = |bytes: usize| bytes as f64 / MEMBERS as f64;
        eprintln!(
            "{MEMBERS}-member Syn, bytes per member: PeerId ids {:.1}, 80-bit ids with raw \
             address bytes {:.1}, short ids {:.1} (uncompressed {:.1})",
            per(sizes[0]),
            per(sizes[1]),
            per(sizes[2]),
            per(plain)
        );
        let (legacy, eighty, short) = (sizes[0], sizes[1], sizes[2]);
        assert!(
            (2500..3400).contains(&legacy),
            "PeerId digest {legacy} bytes"
        );
        assert!(short < eighty && eighty < legacy, "{sizes:?}");
        assert!(short <= 1250, "short-id digest {short} bytes");
        assert!((3300..3600).contains(&plain), "plain digest {plain} bytes");
    }
}
