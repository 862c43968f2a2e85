//! A chitchat [`Transport`] over libp2p streams of protocol [`CELL_PROTOCOL`], so gossip
//! between cell members is authenticated and encrypted by the libp2p connection (noise).
//!
//! Addressing: chitchat names peers by socket address; each peer's is its
//! [`virtual_addr`](crate::cell_wire::virtual_addr), made of its
//! [`ShortId`](crate::cell_wire::ShortId) (75 bits of blake3 of the PeerId), so the address
//! alone does not give the PeerId. The transport maps virtual addresses back to peers:
//! [`CellTransport::register`] (the runner registers every member whose PeerId it has read
//! from the member's checked `peer` key-value, and every candidate) and every authenticated
//! inbound stream fill the map. A send to an address it does not know (a member known only
//! from a digest so far) is dropped, like a datagram: chitchat retries next round, and the
//! member's `peer` key arrives in the delta of the same exchange. Answers always find their
//! way: a received frame's `from_addr` is the virtual address of the connection's
//! authenticated PeerId, registered before chitchat sees the frame.
//!
//! Sending: each envelope is encoded (by chitchat's encoder, see `cell::codec`) and queued as
//! one frame (`u32 LE length || body`) for a writer task per peer, which keeps one outbound
//! stream open (opened lazily, reopened after an error) and exits after
//! [`CellTransportConfig::idle_timeout`] without frames. `send` never waits for a peer: a full
//! queue drops the frame.
//!
//! Receiving: inbound streams are accepted up to per-peer and total caps; a task per stream
//! reads frames, validates each with [`cell_wire::decode_body`] and [`Admission`] (member,
//! generation, key caps, members outside the cell) and hands it to one decoder task, whose
//! envelopes `recv` returns with `from_addr` = the sender's virtual address (the sender's
//! PeerId comes from the connection, so it cannot be forged; its short id is computed from
//! it). A frame whose `peer` key-value for the sender's own short id names another PeerId
//! (two keys with one short id: a birthday search of ~2^37.5) is refused. A malformed frame
//! closes its stream; a frame refused by admission is dropped and the stream stays open.
//!
//! Pacing: chitchat starts [`FANOUT`](crate::gossip_pace::FANOUT) exchanges every round of
//! its fixed tick (with live members, or with any it holds when none looks live, plus
//! maybe a dead one and a seed); the transport lets through only the Syns to members that
//! the cell's [`GossipPace`] admits (its interval follows the number of members chitchat
//! holds, whose digests are what an exchange costs; the runner reports them with
//! [`CellTransport::observe_members`]). Syns to peers not yet members (candidates the runner
//! asks chitchat to reach) and every answer always pass.
//!
//! What this cannot do: it authenticates the sender of a frame, not what the frame says about
//! other members (see [`crate::cell_wire`]); the map of virtual addresses is capped
//! ([`CellTransportConfig::max_peers`]) and never shrinks below what the runner re-registers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use super::cell::codec::{Decoder, Encoder};
use super::clock::Epoch;
use crate::cell_wire::{self, virtual_addr, Admission, ShortId, WireNodeId, FRAME_HEADER_BYTES};
use crate::cells::CellId;
use crate::gossip_pace::GossipPace;
use crate::util::lock;

/// The protocol of cell membership streams.
pub const CELL_PROTOCOL: StreamProtocol = StreamProtocol::new("/novacron/cell/1");

/// How long an admitted member that chitchat does not hold yet is remembered.
const ADMISSION_MIN_AGE: Duration = Duration::from_secs(30);
/// Validated frames waiting for the decoder.
const DECODE_QUEUE: usize = 64;

/// Limits and timeouts of the cell transport.
#[derive(Clone, Debug)]
pub struct CellTransportConfig {
    /// Inbound streams open at once, all peers together.
    pub max_inbound_streams: usize,
    /// Inbound streams open at once from one peer.
    pub max_inbound_streams_per_peer: usize,
    /// Peers whose virtual address the transport remembers.
    pub max_peers: usize,
    /// Members admission lets chitchat hold.
    pub max_members: usize,
    /// Frames queued for one peer before new ones are dropped.
    pub queue_per_peer: usize,
    /// Longest wait to open an outbound stream (dialing included).
    pub open_timeout: Duration,
    /// Longest wait to write a frame, or to read the rest of one once its header arrived.
    pub io_timeout: Duration,
    /// A writer with nothing to send, or a stream with nothing to read, closes after this.
    /// Longer than the usual wait between two frames to one member: in a cell of 200, a
    /// member writes to each other member about every 2 minutes (each exchange is with a
    /// random one), so a 2-minute timeout closed most streams between uses, and every
    /// exchange paid a stream's opening and closing on both sides (multiplexer frames,
    /// protocol negotiation, a negotiation timer each, extra wakeups).
    pub idle_timeout: Duration,
}

impl Default for CellTransportConfig {
    fn default() -> Self {
        CellTransportConfig {
            max_inbound_streams: cell_wire::MAX_MEMBERS,
            max_inbound_streams_per_peer: 2,
            max_peers: 2 * cell_wire::MAX_MEMBERS,
            max_members: cell_wire::MAX_MEMBERS,
            queue_per_peer: 8,
            open_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Bytes of cell frames (length prefixes included) since the transport started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellBytes {
    pub sent: u64,
    pub received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Inbound frames refused (malformed, or over an admission cap).
    pub refused_frames: u64,
    /// Exchanges with members chitchat asked for and the pace held back.
    pub paced_exchanges: u64,
}

struct WriterSlot {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

struct Shared {
    local: PeerId,
    control: libp2p_stream::Control,
    cfg: CellTransportConfig,
    peers: Mutex<HashMap<SocketAddr, PeerId>>,
    writers: Mutex<HashMap<PeerId, WriterSlot>>,
    inbound: Mutex<HashMap<PeerId, usize>>,
    admission: Mutex<Admission>,
    sent: AtomicU64,
    received: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    refused: AtomicU64,
    paced: AtomicU64,
    /// The virtual addresses of the members chitchat holds (the runner's view, refreshed
    /// every tick).
    members: Mutex<HashSet<SocketAddr>>,
    pace: Mutex<GossipPace>,
    next_writer: AtomicU64,
    opened: AtomicBool,
    epoch: Epoch,
    stop_tx: watch::Sender<bool>,
}

impl Shared {
    fn register(&self, peer: PeerId) -> Option<SocketAddr> {
        let addr = virtual_addr(&peer);
        let mut peers = lock(&self.peers);
        if !peers.contains_key(&addr) && peers.len() >= self.cfg.max_peers {
            return None;
        }
        peers.insert(addr, peer);
        Some(addr)
    }

    /// Whether a Syn to `to` may go: always to a peer not yet a member, to a member when the
    /// pace admits one more exchange.
    fn admit_syn(&self, to: &SocketAddr) -> bool {
        if !lock(&self.members).contains(to) {
            return true;
        }
        lock(&self.pace).admit(self.epoch.now())
    }

    fn enqueue(self: &Arc<Self>, peer: PeerId, frame: Vec<u8>) {
        let mut writers = lock(&self.writers);
        let frame = match writers.get(&peer) {
            Some(slot) => match slot.tx.try_send(frame) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(%peer, "cell: queue to peer full, frame dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(frame)) => frame,
            },
            None => frame,
        };
        let (tx, rx) = mpsc::channel(self.cfg.queue_per_peer.max(1));
        // The queue is new and empty: this cannot fail.
        let _ = tx.try_send(frame);
        let id = self.next_writer.fetch_add(1, Ordering::Relaxed);
        writers.insert(peer, WriterSlot { id, tx });
        tokio::spawn(write_frames(self.clone(), peer, id, rx));
    }
}

/// The cell transport; give it to `chitchat::spawn_chitchat`. Cloning shares it.
#[derive(Clone)]
pub struct CellTransport {
    shared: Arc<Shared>,
}

impl CellTransport {
    /// A transport for the node `local` in `cell`, opening and accepting streams through
    /// `control`.
    /// `pace` says how many exchanges with live members may start.
    pub fn new(
        local: PeerId,
        control: libp2p_stream::Control,
        cell: CellId,
        cfg: CellTransportConfig,
        pace: GossipPace,
    ) -> CellTransport {
        let (stop_tx, _) = watch::channel(false);
        let admission = Admission::new(cell, cfg.max_members);
        let epoch = Epoch::start();
        CellTransport {
            shared: Arc::new(Shared {
                local,
                control,
                cfg,
                peers: Mutex::new(HashMap::new()),
                writers: Mutex::new(HashMap::new()),
                inbound: Mutex::new(HashMap::new()),
                admission: Mutex::new(admission),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
                frames_sent: AtomicU64::new(0),
                frames_received: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                paced: AtomicU64::new(0),
                members: Mutex::new(HashSet::new()),
                pace: Mutex::new(pace),
                next_writer: AtomicU64::new(0),
                opened: AtomicBool::new(false),
                epoch,
                stop_tx,
            }),
        }
    }

    /// Remembers `peer`'s virtual address; None when the map is full.
    pub fn register(&self, peer: PeerId) -> Option<SocketAddr> {
        self.shared.register(peer)
    }

    /// The peer behind a virtual address, if registered.
    pub fn peer_of(&self, addr: &SocketAddr) -> Option<PeerId> {
        lock(&self.shared.peers).get(addr).copied()
    }

    /// Cell bytes and refused frames so far.
    pub fn bytes(&self) -> CellBytes {
        CellBytes {
            sent: self.shared.sent.load(Ordering::Relaxed),
            received: self.shared.received.load(Ordering::Relaxed),
            frames_sent: self.shared.frames_sent.load(Ordering::Relaxed),
            frames_received: self.shared.frames_received.load(Ordering::Relaxed),
            refused_frames: self.shared.refused.load(Ordering::Relaxed),
            paced_exchanges: self.shared.paced.load(Ordering::Relaxed),
        }
    }

    /// The members chitchat holds now, live or not (their peers; this node's own is
    /// ignored): the pace follows their count. Returns the new gossip interval when it
    /// changed.
    pub fn observe_members(&self, members: impl IntoIterator<Item = PeerId>) -> Option<Duration> {
        let addrs: HashSet<SocketAddr> = members
            .into_iter()
            .filter(|p| *p != self.shared.local)
            .map(|p| virtual_addr(&p))
            .collect();
        let count = addrs.len() as u64 + 1;
        *lock(&self.shared.members) = addrs;
        lock(&self.shared.pace).observe_members(count)
    }

    /// How many members chitchat held at the last [`CellTransport::observe_members`], this
    /// node included.
    pub fn members_held(&self) -> u64 {
        lock(&self.shared.members).len() as u64 + 1
    }

    /// The interval of the exchanges with members.
    pub fn gossip_interval(&self) -> Duration {
        lock(&self.shared.pace).interval()
    }

    /// Lets admission forget members and generations chitchat no longer holds.
    pub fn retain_admitted(&self, held: &BTreeSet<WireNodeId>) {
        let now = self.shared.epoch.now();
        lock(&self.shared.admission).retain(held, now, ADMISSION_MIN_AGE);
    }

    /// Stops every task of the transport (streams close; the protocol stays unregistered
    /// once the accept task has dropped its listener).
    pub fn close(&self) {
        let _ = self.shared.stop_tx.send(true);
    }
}

#[async_trait]
impl Transport for CellTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        if self.shared.opened.swap(true, Ordering::SeqCst) {
            anyhow::bail!("cell transport: already open");
        }
        let mut control = self.shared.control.clone();
        let incoming = control
            .accept(CELL_PROTOCOL)
            .map_err(|_| anyhow::anyhow!("cell transport: {CELL_PROTOCOL} already accepted"))?;
        let encoder = Encoder::open().await?;
        let decoder = Decoder::open().await?;
        let (frames_tx, frames_rx) = mpsc::channel(DECODE_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(DECODE_QUEUE);
        tokio::spawn(accept_streams(self.shared.clone(), incoming, frames_tx));
        tokio::spawn(decode_frames(
            self.shared.clone(),
            decoder,
            frames_rx,
            out_tx,
        ));
        Ok(Box::new(CellSocket {
            shared: self.shared.clone(),
            local_addr: virtual_addr(&self.shared.local),
            encoder,
            received: out_rx,
        }))
    }
}

struct CellSocket {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    encoder: Encoder,
    received: mpsc::Receiver<RecvOutcome>,
}

#[async_trait]
impl Socket for CellSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if matches!(envelope.message, ChitchatMessage::Syn { .. }) && !self.shared.admit_syn(&to) {
            self.shared.paced.fetch_add(1, Ordering::Relaxed);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let body = self.encoder.encode(envelope).await?;
        let num_bytes_sent = body.len();
        let Some(peer) = lock(&self.shared.peers).get(&to).copied() else {
            tracing::debug!(%to, "cell: no peer for this virtual address, message dropped");
            return Ok(SendOutcome { num_bytes_sent });
        };
        let frame = cell_wire::encode_frame(&body)?;
        self.shared.enqueue(peer, frame);
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancel-safe: decoding happens in its own task; this only takes from a queue.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.received
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("cell transport: closed"))
    }
}

/// Writes the frames queued for `peer` on one outbound stream.
async fn write_frames(shared: Arc<Shared>, peer: PeerId, id: u64, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut stop = shared.stop_tx.subscribe();
    let mut control = shared.control.clone();
    let mut stream: Option<Stream> = None;
    loop {
        let frame = tokio::select! {
            f = timeout(shared.cfg.idle_timeout, rx.recv()) => match f {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        if stream.is_none() {
            match timeout(
                shared.cfg.open_timeout,
                control.open_stream(peer, CELL_PROTOCOL),
            )
            .await
            {
                Ok(Ok(s)) => stream = Some(s),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "cell: cannot open a stream, frame dropped");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%peer, "cell: opening a stream timed out, frame dropped");
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let written = timeout(shared.cfg.io_timeout, async {
            s.write_all(&frame).await?;
            s.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                shared.sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
                shared.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "cell: write failed, stream dropped");
                stream = None;
            }
            Err(_) => {
                tracing::debug!(%peer, "cell: write timed out, stream dropped");
                stream = None;
            }
        }
    }
    let mut writers = lock(&shared.writers);
    if writers.get(&peer).is_some_and(|slot| slot.id == id) {
        writers.remove(&peer);
    }
}

/// Accepts inbound cell streams within the caps and starts a reader for each.
async fn accept_streams(
    shared: Arc<Shared>,
    mut incoming: libp2p_stream::IncomingStreams,
    frames: mpsc::Sender<(PeerId, Vec<u8>)>,
) {
    let mut stop = shared.stop_tx.subscribe();
    loop {
        let (peer, stream) = tokio::select! {
            next = incoming.next() => match next {
                Some(s) => s,
                None => break,
            },
            _ = stop.changed() => break,
        };
        let Some(slot) = InboundSlot::take(&shared, peer) else {
            tracing::debug!(%peer, "cell: inbound stream over the cap, refused");
            continue;
        };
        tokio::spawn(read_frames(shared.clone(), slot, stream, frames.clone()));
    }
}

/// One inbound stream counted against the caps until dropped.
struct InboundSlot {
    shared: Arc<Shared>,
    peer: PeerId,
}

impl InboundSlot {
    fn take(shared: &Arc<Shared>, peer: PeerId) -> Option<InboundSlot> {
        let mut inbound = lock(&shared.inbound);
        let total: usize = inbound.values().sum();
        let mine = inbound.get(&peer).copied().unwrap_or(0);
        if total >= shared.cfg.max_inbound_streams
            || mine >= shared.cfg.max_inbound_streams_per_peer
        {
            return None;
        }
        inbound.insert(peer, mine + 1);
        Some(InboundSlot {
            shared: shared.clone(),
            peer,
        })
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        let mut inbound = lock(&self.shared.inbound);
        if let Some(n) = inbound.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inbound.remove(&self.peer);
            }
        }
    }
}

/// Reads, validates and admits the frames of one inbound stream.
async fn read_frames(
    shared: Arc<Shared>,
    slot: InboundSlot,
    mut stream: Stream,
    frames: mpsc::Sender<(PeerId, Vec<u8>)>,
) {
    let peer = slot.peer;
    let mut stop = shared.stop_tx.subscribe();
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        let got = tokio::select! {
            r = timeout(shared.cfg.idle_timeout, stream.read_exact(&mut header)) => r,
            _ = stop.changed() => return,
        };
        match got {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        let len = match cell_wire::body_len(header) {
            Ok(len) => len,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cell: closing a stream with a bad frame");
                shared.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut body = vec![0u8; len];
        match timeout(shared.cfg.io_timeout, stream.read_exact(&mut body)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        shared
            .received
            .fetch_add((FRAME_HEADER_BYTES + len) as u64, Ordering::Relaxed);
        shared.frames_received.fetch_add(1, Ordering::Relaxed);
        let envelope = match cell_wire::decode_body(&body) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cell: closing a stream with a bad frame");
                shared.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if let Some(claimed) = impersonated(&envelope, peer) {
            tracing::debug!(%peer, %claimed, "cell: frame gives the sender's short id to another peer, refused");
            shared.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = shared.epoch.now();
        if let Err(e) = lock(&shared.admission).admit(&envelope, now) {
            tracing::debug!(%peer, error = %e, "cell: frame refused");
            shared.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        shared.register(peer);
        if frames.send((peer, body)).await.is_err() {
            return;
        }
    }
}

/// A PeerId other than `sender` that the frame's `peer` key-values give the sender's own
/// short id, if any.
fn impersonated(envelope: &cell_wire::Envelope, sender: PeerId) -> Option<PeerId> {
    let mine = ShortId::of(&sender);
    envelope
        .peers()
        .find(|(id, peer)| *id == mine && *peer != sender)
        .map(|(_, peer)| peer)
}

/// Turns validated frames into chitchat envelopes, one at a time.
async fn decode_frames(
    shared: Arc<Shared>,
    mut decoder: Decoder,
    mut frames: mpsc::Receiver<(PeerId, Vec<u8>)>,
    out: mpsc::Sender<RecvOutcome>,
) {
    let mut stop = shared.stop_tx.subscribe();
    loop {
        let (peer, body) = tokio::select! {
            next = frames.recv() => match next {
                Some(f) => f,
                None => return,
            },
            _ = stop.changed() => return,
        };
        match decoder.decode(&body).await {
            Ok(envelope) => {
                let outcome = RecvOutcome {
                    from_addr: virtual_addr(&peer),
                    envelope,
                    num_bytes_received: body.len(),
                };
                if out.send(outcome).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cell: chitchat could not decode a frame");
                shared.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
