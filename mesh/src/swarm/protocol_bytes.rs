//! Bytes by protocol: each substream of a connection counted under the protocol it
//! negotiated (Kademlia, identify, ping, gossipsub, cell gossip, chunk exchange, ...).
//!
//! libp2p's bandwidth counters see connections, not protocols. A substream's protocol is
//! chosen by multistream-select in its first bytes, in the clear inside the connection (noise
//! is below the multiplexer): the dialer writes the multistream header and its proposal, the
//! listener reads them. So [`CountingUpgrade`] wraps the multiplexer upgrade, and every
//! substream it yields reads the first protocol name proposed in either direction and counts
//! its payload bytes under it (bytes before the name is read are counted once it is). What
//! is not a substream's payload — the multiplexer's frame headers and window updates, noise's
//! tags, connection handshakes — is the rest of the connection's total, reported apart as
//! framing by the caller.
//!
//! What this cannot see: QUIC connections (their streams are not a libp2p multiplexer's),
//! and a substream whose first proposal was refused is counted under that first proposal
//! (every NovaCron node supports the same protocols, so none is refused between them).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// The protocols counted apart, by the prefix of their multistream names; what matches none
/// is `other`.
pub const PROTOCOLS: [(&str, &str); 9] = [
    ("cell_gossip", "/novacron/cell/"),
    ("chunk_exchange", "/novacron/chunks/"),
    ("kademlia", "/novacron/kad/"),
    ("identify", "/ipfs/id/"),
    ("ping", "/ipfs/ping/"),
    ("gossipsub", "/meshsub/"),
    ("autonat", "/libp2p/autonat/"),
    ("relay", "/libp2p/circuit/"),
    ("dcutr", "/libp2p/dcutr"),
];

/// The slot of names matching none of [`PROTOCOLS`].
const OTHER: usize = PROTOCOLS.len();
/// Bytes of a substream's start read for its protocol name before giving up on it.
const SNIFF_LIMIT: usize = 256;
/// multistream-select's header message.
const MULTISTREAM_HEADER: &[u8] = b"/multistream/1.0.0\n";

/// Payload bytes sent and received of one protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtocolTotals {
    pub protocol: &'static str,
    pub sent: u64,
    pub received: u64,
}

/// The counters, shared by every substream of every connection of a swarm.
#[derive(Default)]
pub struct ProtocolBytes {
    sent: [AtomicU64; OTHER + 1],
    received: [AtomicU64; OTHER + 1],
}

impl ProtocolBytes {
    /// The totals so far, one per protocol (`other` last).
    pub fn totals(&self) -> Vec<ProtocolTotals> {
        (0..=OTHER)
            .map(|i| ProtocolTotals {
                protocol: PROTOCOLS.get(i).map_or("other", |p| p.0),
                sent: self.sent[i].load(Ordering::Relaxed),
                received: self.received[i].load(Ordering::Relaxed),
            })
            .collect()
    }

    fn add(&self, slot: usize, sent: u64, received: u64) {
        self.sent[slot].fetch_add(sent, Ordering::Relaxed);
        self.received[slot].fetch_add(received, Ordering::Relaxed);
    }
}

/// The slot of a protocol name.
fn slot_of(name: &[u8]) -> usize {
    PROTOCOLS
        .iter()
        .position(|(_, prefix)| name.starts_with(prefix.as_bytes()))
        .unwrap_or(OTHER)
}

/// What the start of one direction of a substream says: the first protocol name proposed
/// (after the multistream header), `Some(None)` when it cannot be one, `None` while more
/// bytes are needed.
fn proposed_protocol(start: &[u8]) -> Option<Option<usize>> {
    let mut rest = start;
    loop {
        let (len, after) = match uvarint(rest) {
            Uvarint::Value(len, after) => (len, after),
            Uvarint::Insufficient => return None,
            Uvarint::Invalid => return Some(None),
        };
        if len == 0 || len > SNIFF_LIMIT {
            return Some(None);
        }
        let message = after.get(..len)?;
        rest = &after[len..];
        if message == MULTISTREAM_HEADER {
            continue;
        }
        if message.first() == Some(&b'/') && message.last() == Some(&b'\n') {
            return Some(Some(slot_of(message)));
        }
        return Some(None);
    }
}

enum Uvarint<'a> {
    Value(usize, &'a [u8]),
    Insufficient,
    Invalid,
}

/// An unsigned LEB128 length (multistream-select's message prefix) of at most 2 bytes: no
/// message worth reading is longer than [`SNIFF_LIMIT`].
fn uvarint(bytes: &[u8]) -> Uvarint<'_> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().enumerate().take(2) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Uvarint::Value(value, &bytes[i + 1..]);
        }
    }
    if bytes.len() >= 2 {
        Uvarint::Invalid
    } else {
        Uvarint::Insufficient
    }
}

/// Wraps a multiplexer upgrade so its connections count bytes by protocol.
#[derive(Clone)]
pub struct CountingUpgrade<U> {
    inner: U,
    counters: Arc<ProtocolBytes>,
}

impl<U> CountingUpgrade<U> {
    pub fn new(inner: U, counters: Arc<ProtocolBytes>) -> CountingUpgrade<U> {
        CountingUpgrade { inner, counters }
    }
}

impl<U: UpgradeInfo> UpgradeInfo for CountingUpgrade<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.inner.protocol_info()
    }
}

/// The multiplexer an upgrade yields, its substreams counted.
fn counted<F, M, E>(
    upgrade: F,
    counters: Arc<ProtocolBytes>,
) -> BoxFuture<'static, Result<CountingMuxer, E>>
where
    F: std::future::Future<Output = Result<M, E>> + Send + 'static,
    M: StreamMuxer + Send + 'static,
    M::Substream: Send + 'static,
    M::Error: Send + Sync + 'static,
{
    upgrade
        .map(move |r| r.map(|m| CountingMuxer::new(StreamMuxerBox::new(m), counters)))
        .boxed()
}

impl<C, U, M, E> InboundConnectionUpgrade<C> for CountingUpgrade<U>
where
    U: InboundConnectionUpgrade<C, Output = M, Error = E>,
    U::Future: Send + 'static,
    M: StreamMuxer + Send + 'static,
    M::Substream: Send + 'static,
    M::Error: Send + Sync + 'static,
{
    type Output = CountingMuxer;
    type Error = E;
    type Future = BoxFuture<'static, Result<CountingMuxer, E>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        counted(self.inner.upgrade_inbound(socket, info), self.counters)
    }
}

impl<C, U, M, E> OutboundConnectionUpgrade<C> for CountingUpgrade<U>
where
    U: OutboundConnectionUpgrade<C, Output = M, Error = E>,
    U::Future: Send + 'static,
    M: StreamMuxer + Send + 'static,
    M::Substream: Send + 'static,
    M::Error: Send + Sync + 'static,
{
    type Output = CountingMuxer;
    type Error = E;
    type Future = BoxFuture<'static, Result<CountingMuxer, E>>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        counted(self.inner.upgrade_outbound(socket, info), self.counters)
    }
}

/// A connection's multiplexer whose substreams count their bytes by protocol.
pub struct CountingMuxer {
    inner: StreamMuxerBox,
    counters: Arc<ProtocolBytes>,
}

impl CountingMuxer {
    fn new(inner: StreamMuxerBox, counters: Arc<ProtocolBytes>) -> CountingMuxer {
        CountingMuxer { inner, counters }
    }

    fn wrap(&self, stream: SubstreamBox) -> CountingStream {
        CountingStream {
            inner: stream,
            counters: self.counters.clone(),
            slot: None,
            read_start: Vec::new(),
            write_start: Vec::new(),
            pending_sent: 0,
            pending_received: 0,
        }
    }
}

impl StreamMuxer for CountingMuxer {
    type Substream = CountingStream;
    type Error = io::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<CountingStream, io::Error>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_inbound(cx)
            .map_ok(|s| this.wrap(s))
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<CountingStream, io::Error>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_outbound(cx)
            .map_ok(|s| this.wrap(s))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, io::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

/// A substream counting its payload under its protocol.
pub struct CountingStream {
    inner: SubstreamBox,
    counters: Arc<ProtocolBytes>,
    /// The protocol's slot, once known.
    slot: Option<usize>,
    /// The first bytes of each direction, until the protocol is known.
    read_start: Vec<u8>,
    write_start: Vec<u8>,
    /// Bytes moved before the protocol was known.
    pending_sent: u64,
    pending_received: u64,
}

impl CountingStream {
    /// Counts `n` bytes (`sent` or received) whose start was `bytes`.
    fn count(&mut self, bytes: &[u8], sent: bool) {
        let n = bytes.len() as u64;
        if let Some(slot) = self.slot {
            let (s, r) = if sent { (n, 0) } else { (0, n) };
            self.counters.add(slot, s, r);
            return;
        }
        if sent {
            self.pending_sent += n;
        } else {
            self.pending_received += n;
        }
        let start = if sent {
            &mut self.write_start
        } else {
            &mut self.read_start
        };
        let room = SNIFF_LIMIT.saturating_sub(start.len());
        start.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let found = match proposed_protocol(start) {
            Some(found) => Some(found.unwrap_or(OTHER)),
            None if start.len() >= SNIFF_LIMIT => Some(OTHER),
            None => None,
        };
        if let Some(slot) = found {
            self.settle(slot);
        }
    }

    /// The protocol is known: counts what was pending under it.
    fn settle(&mut self, slot: usize) {
        self.slot = Some(slot);
        self.counters
            .add(slot, self.pending_sent, self.pending_received);
        self.pending_sent = 0;
        self.pending_received = 0;
        self.read_start = Vec::new();
        self.write_start = Vec::new();
    }
}

impl Drop for CountingStream {
    fn drop(&mut self) {
        if self.slot.is_none() {
            self.settle(OTHER);
        }
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.count(&buf[..n], false);
        }
        polled
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.count(&buf[..n], true);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &[u8]) -> Vec<u8> {
        assert!(text.len() < 128);
        let mut out = vec![text.len() as u8];
        out.extend_from_slice(text);
        out
    }

    fn stream(counters: &Arc<ProtocolBytes>) -> CountingStream {
        CountingStream {
            inner: SubstreamBox::new(futures::io::Cursor::new(Vec::new())),
            counters: counters.clone(),
            slot: None,
            read_start: Vec::new(),
            write_start: Vec::new(),
            pending_sent: 0,
            pending_received: 0,
        }
    }

    #[test]
    fn reads_two_byte_lengths() {
        assert!(matches!(uvarint(&[0x05, 1]), Uvarint::Value(5, [1])));
        assert!(matches!(
            uvarint(&[0x80 | 0x10, 0x01]),
            Uvarint::Value(144, [])
        ));
        assert!(matches!(uvarint(&[0x80]), Uvarint::Insufficient));
        assert!(matches!(uvarint(&[]), Uvarint::Insufficient));
        assert!(matches!(uvarint(&[0x80, 0x80, 0x01]), Uvarint::Invalid));
    }

    #[test]
    fn reads_the_first_proposal_after_the_header() {
        let mut start = message(MULTISTREAM_HEADER);
        start.extend(message(b"/novacron/kad/1.0.0\n"));
        start.extend(b"payload");
        assert_eq!(proposed_protocol(&start), Some(Some(2)));
        // Split anywhere: more bytes are needed, never a wrong answer.
        for cut in 0..start.len() - 7 {
            assert_eq!(proposed_protocol(&start[..cut]), None, "{cut}");
        }
        assert_eq!(
            proposed_protocol(&message(b"/meshsub/1.1.0\n")),
            Some(Some(5))
        );
        assert_eq!(
            proposed_protocol(&message(b"/something/else\n")),
            Some(Some(OTHER))
        );
        assert_eq!(proposed_protocol(&message(b"na\n")), Some(None));
        assert_eq!(proposed_protocol(&[0xff; 12]), Some(None));
    }

    #[test]
    fn pending_bytes_settle_under_the_protocol_found() {
        let counters = Arc::new(ProtocolBytes::default());
        let mut s = stream(&counters);
        let mut hello = message(MULTISTREAM_HEADER);
        hello.extend(message(b"/ipfs/ping/1.0.0\n"));
        let (first, second) = hello.split_at(5);
        s.count(first, true);
        s.count(b"xyz", false);
        assert!(counters.totals().iter().all(|t| t.sent == 0));
        s.count(second, true);
        s.count(&[0; 32], true);
        let ping = &counters.totals()[4];
        assert_eq!(ping.protocol, "ping");
        assert_eq!(ping.sent, hello.len() as u64 + 32);
        assert_eq!(ping.received, 3);
        drop(s);
        // An unreadable start is `other`, counted when dropped at the latest.
        let mut s = stream(&counters);
        s.count(&[5], false);
        drop(s);
        assert_eq!(counters.totals()[OTHER].received, 1);
    }
}
