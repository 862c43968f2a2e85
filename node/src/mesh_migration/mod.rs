//! Live migration between node daemons over the mesh: protocol `/novacron/migrate/1` on
//! libp2p streams (authenticated and encrypted by noise), bridged to the VMMs' Unix sockets.
//!
//! A migration is one control stream and 1 to [`MAX_DATA_STREAMS`] data streams:
//!
//! ```text
//! control:  source -> offer (len-prefixed JSON)   destination -> answer (Accept | Refuse)
//!           source -> 24-byte links preamble (index 0), then the VMMs' frames both ways
//! data i:   source -> 24-byte links preamble (index i)   destination -> 1 byte: 1 joined, 0 not
//!           then the VMMs' frames
//! ```
//!
//! After the handshake every stream carries exactly what a TCP connection of the direct
//! protocol carries after its preamble ([`novacron_vm::migration::links`]), so the VMMs do
//! not know the mesh is there. Streams are opened one at a time and each waits for its
//! answer: libp2p-stream's accept queue holds one stream and drops the next if two arrive
//! before the accept loop runs; a stream dropped that way (end of stream before any answer)
//! is opened again, up to [`OPEN_TRIES`] times.
//!
//! A source whose streams broke after the VM's state left is *in doubt* (did the destination
//! start the VM?). It asks on a new control stream ([`MeshMigrations::resolve`]):
//!
//! ```text
//! control:  source -> resolve request (len-prefixed JSON: the session)
//!           destination -> answer (Accept once its daemon knows the outcome | Refuse)
//!           source -> links preamble (index 0, count 2), then the VMMs' Query -> <- Status
//! ```
//!
//! The destination's daemon answers from its own record of the session (`resolve` given to
//! [`MeshMigrations::start`]), so the answer holds even after the destination VMM is gone.
//!
//! What this cannot do: pick a peer (the caller names it); rate-limit a peer's offers beyond
//! the bounds on handshakes and sessions in [`MeshMigrationConfig`].

mod bridge;
mod offer;
mod sessions;

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use novacron_mesh::swarm::{MeshNode, PeerId, Stream, StreamProtocol};
use novacron_vm::migration::links::{Preamble, MAX_DATA_STREAMS, PREAMBLE_LEN};
use novacron_vm::migration::messages::{decode_frame, encode_frame, Message};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

pub use bridge::Bridges;
use novacron_mesh::util::hex;
pub use offer::{Answer, MigrationOffer, OfferError, ResolveRequest};
use sessions::{Refusal, Sessions};

/// The protocol name on the mesh.
pub const MIGRATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/novacron/migrate/1");

/// Times a stream is opened before a drop by the peer's accept queue counts as a failure.
pub const OPEN_TRIES: u32 = 3;

/// How often the destination asks its daemon again about a session still starting.
const RESOLVE_POLL: Duration = Duration::from_millis(100);
/// How long a data stream waits for its session to be registered, and how often it looks.
/// The source opens data stream 1 as soon as its control preamble is written, so on a busy
/// node the data stream's task can run before the control stream's task registered it.
const SESSION_WAIT: Duration = Duration::from_secs(2);
const SESSION_POLL: Duration = Duration::from_millis(10);
/// Largest VMM frame read while answering a source in doubt (a `Query` is a few bytes).
const MAX_QUERY_FRAME: usize = 4096;

/// Data-stream answers.
const JOINED: u8 = 1;
const NOT_JOINED: u8 = 0;

/// Limits and timeouts of both sides.
#[derive(Clone, Debug)]
pub struct MeshMigrationConfig {
    /// Opening one stream (dialling the peer if needed).
    pub open_timeout: Duration,
    /// Source: from the offer sent to the answer (the destination's `admit` included).
    pub answer_timeout: Duration,
    /// Destination: a new stream's offer or preamble must arrive within this.
    pub handshake_timeout: Duration,
    /// Destination: every stream of an accepted session must arrive within this.
    pub assemble_timeout: Duration,
    /// Destination: streams in their handshake at once, all peers together (more wait).
    pub max_handshakes: usize,
    /// Destination: sessions being assembled at once (more are refused).
    pub max_sessions: usize,
    /// Destination: complete migrations queued for the daemon.
    pub queue: usize,
}

impl Default for MeshMigrationConfig {
    fn default() -> Self {
        Self {
            open_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            assemble_timeout: Duration::from_secs(30),
            max_handshakes: 64,
            max_sessions: 8,
            queue: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshMigrationError {
    #[error("mesh migration: {protocol} is already accepted on this node (start it once)", protocol = MIGRATE_PROTOCOL)]
    AlreadyStarted,
    #[error("mesh migration: {0} data streams asked; give 1 to {MAX_DATA_STREAMS}")]
    Streams(u8),
    #[error("mesh migration: the offer is invalid: {0}")]
    Offer(#[from] OfferError),
    #[error("mesh migration: cannot open a stream to {peer}: {reason}")]
    Open { peer: PeerId, reason: String },
    #[error("mesh migration: {peer} refused the VM: {reason}")]
    Refused { peer: PeerId, reason: String },
    #[error("mesh migration: {peer} did not {what} within {after:?}")]
    Timeout {
        peer: PeerId,
        what: &'static str,
        after: Duration,
    },
    #[error("mesh migration: {peer}: {reason}")]
    Protocol { peer: PeerId, reason: String },
    #[error("mesh migration: {peer}: {source}")]
    Io {
        peer: PeerId,
        source: std::io::Error,
    },
}

/// The source's streams, ready for `VmmProcess::send_with_streams` with
/// `Command::MigrateOut { session, .. }`.
#[derive(Debug)]
pub struct OpenedMigration {
    pub session: [u8; 16],
    /// The VMM's ends, control first (blocking Unix stream sockets).
    pub streams: Vec<StdUnixStream>,
    /// Bytes bridged, and a way to cut the streams.
    pub bridges: Bridges,
}

/// A migration the destination accepted and assembled: launch
/// `LaunchSource::Incoming { session: offer.session, .. }` sized from the offer with
/// `VmmProcess::spawn_with_streams(.., &streams)`. Dropping it closes the streams (the
/// source rolls back).
#[derive(Debug)]
pub struct IncomingMigration {
    pub peer: PeerId,
    pub offer: MigrationOffer,
    /// The VMM's ends, control first (blocking Unix stream sockets).
    pub streams: Vec<StdUnixStream>,
    pub bridges: Bridges,
}

/// A source's streams for asking about a migration in doubt, ready for
/// `VmmProcess::send_with_streams` with `Command::MigrationReconnect { session }`.
#[derive(Debug)]
pub struct Resolution {
    /// The VMM's ends: the control stream (bridged to the peer), then a data stream that
    /// stays silent (the VMM needs one; resolving only talks on the control stream).
    pub streams: Vec<StdUnixStream>,
    /// Hold until the migration ended: its end of stream would be a link down to the VMM.
    _quiet_data_end: StdUnixStream,
    pub bridges: Bridges,
}

type Table = Sessions<PeerId, MigrationOffer, Stream>;
type Admit = dyn Fn(&PeerId, &MigrationOffer) -> Result<(), String> + Send + Sync;
/// Whether this node started the VM of session (`peer`, `session`): None while unknown
/// (still starting, or never heard of).
type Resolve = dyn Fn(&PeerId, &[u8; 16]) -> Option<bool> + Send + Sync;

struct Shared {
    cfg: MeshMigrationConfig,
    sessions: Mutex<Table>,
    admit: Box<Admit>,
    resolve: Box<Resolve>,
    incoming: mpsc::Sender<IncomingMigration>,
    handshakes: Arc<Semaphore>,
}

impl Shared {
    fn sessions(&self) -> MutexGuard<'_, Table> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Opens a migration stream to a peer (the mesh's stream control, captured).
type Opener =
    dyn Fn(PeerId) -> futures::future::BoxFuture<'static, Result<Stream, String>> + Send + Sync;

/// Both sides of mesh migrations on one node. Dropping it stops accepting; bridges of
/// migrations already handed out keep running until their streams end.
pub struct MeshMigrations {
    opener: Arc<Opener>,
    cfg: MeshMigrationConfig,
    accept: JoinHandle<()>,
}

impl Drop for MeshMigrations {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl MeshMigrations {
    /// Accepts `/novacron/migrate/1` on `mesh` with the default limits. `admit` decides on
    /// each valid offer (an `Err` is the refusal's reason, sent to the source); `resolve`
    /// says whether this node started the VM of a session a source is in doubt about (None:
    /// not known, yet or at all). Both run on the async threads and must not block.
    /// Complete migrations come out of the receiver. Must run inside a tokio runtime.
    pub fn start(
        mesh: &MeshNode,
        admit: impl Fn(&PeerId, &MigrationOffer) -> Result<(), String> + Send + Sync + 'static,
        resolve: impl Fn(&PeerId, &[u8; 16]) -> Option<bool> + Send + Sync + 'static,
    ) -> Result<(MeshMigrations, mpsc::Receiver<IncomingMigration>), MeshMigrationError> {
        Self::start_with(mesh, admit, resolve, MeshMigrationConfig::default())
    }

    pub fn start_with(
        mesh: &MeshNode,
        admit: impl Fn(&PeerId, &MigrationOffer) -> Result<(), String> + Send + Sync + 'static,
        resolve: impl Fn(&PeerId, &[u8; 16]) -> Option<bool> + Send + Sync + 'static,
        cfg: MeshMigrationConfig,
    ) -> Result<(MeshMigrations, mpsc::Receiver<IncomingMigration>), MeshMigrationError> {
        let mut control = mesh.stream_control();
        let incoming_streams = control
            .accept(MIGRATE_PROTOCOL)
            .map_err(|_| MeshMigrationError::AlreadyStarted)?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let shared = Arc::new(Shared {
            sessions: Mutex::new(Sessions::new(cfg.max_sessions)),
            admit: Box::new(admit),
            resolve: Box::new(resolve),
            incoming: tx,
            handshakes: Arc::new(Semaphore::new(cfg.max_handshakes.max(1))),
            cfg: cfg.clone(),
        });
        let accept = tokio::spawn(accept_loop(shared, incoming_streams));
        let opener: Arc<Opener> = Arc::new(move |peer| {
            let mut control = control.clone();
            Box::pin(async move {
                control
                    .open_stream(peer, MIGRATE_PROTOCOL)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        Ok((
            MeshMigrations {
                opener,
                cfg,
                accept,
            },
            rx,
        ))
    }

    /// Source: offers the VM to `peer` and, once accepted, opens `streams` data streams;
    /// returns the VMM's ends (control first) bridged to them. A refusal is
    /// [`MeshMigrationError::Refused`] with the peer's reason.
    pub async fn open(
        &self,
        peer: PeerId,
        offer: MigrationOffer,
        streams: u8,
    ) -> Result<OpenedMigration, MeshMigrationError> {
        if !(1..=MAX_DATA_STREAMS).contains(&streams) {
            return Err(MeshMigrationError::Streams(streams));
        }
        let frame = offer.encode()?;
        let session = offer.session;
        let count = streams + 1;
        let mut opened = Vec::with_capacity(usize::from(count));
        opened.push(self.open_control(peer, &frame, session, count).await?);
        for index in 1..count {
            opened.push(self.open_data(peer, session, index, count).await?);
        }
        let mut bridges = Bridges::new();
        let mut ends = Vec::with_capacity(opened.len());
        for s in opened {
            ends.push(
                bridges
                    .add(s)
                    .map_err(|source| MeshMigrationError::Io { peer, source })?,
            );
        }
        Ok(OpenedMigration {
            session,
            streams: ends,
            bridges,
        })
    }

    /// Source, in doubt about `session` after its streams to `peer` broke: a new control
    /// stream on which the VMM asks whether the peer started the VM. The peer accepts once
    /// it knows; a [`MeshMigrationError::Refused`] means it does not (yet): ask again later.
    pub async fn resolve(
        &self,
        peer: PeerId,
        session: [u8; 16],
    ) -> Result<Resolution, MeshMigrationError> {
        let frame = ResolveRequest { resolve: session }.encode()?;
        let control = self.open_control(peer, &frame, session, 2).await?;
        let io = |source| MeshMigrationError::Io { peer, source };
        let mut bridges = Bridges::new();
        let control = bridges.add(control).map_err(io)?;
        let (data, quiet_data_end) = StdUnixStream::pair().map_err(io)?;
        Ok(Resolution {
            streams: vec![control, data],
            _quiet_data_end: quiet_data_end,
            bridges,
        })
    }

    /// Source, in doubt about `session` after its VMM gave up waiting (or after a restart):
    /// asks `peer` itself, on a resolve stream, whether it started the VM (true) or never
    /// will (false). The answer comes from the peer's durable record of the migration; a
    /// [`MeshMigrationError::Refused`] means it does not know, and any error leaves the
    /// question open. The peer knows the migration by its record id, the session's first 8
    /// bytes: a source that kept only the id asks with the rest zero.
    pub async fn ask(&self, peer: PeerId, session: [u8; 16]) -> Result<bool, MeshMigrationError> {
        let frame = ResolveRequest { resolve: session }.encode()?;
        let mut control = self.open_control(peer, &frame, session, 2).await?;
        let query = encode_frame(&Message::Query { vm_id: session }).map_err(|e| {
            MeshMigrationError::Protocol {
                peer,
                reason: e.to_string(),
            }
        })?;
        self.write(peer, &mut control, &query, "take the query")
            .await?;
        let after = self.cfg.answer_timeout;
        match tokio::time::timeout(after, read_vm_message(&mut control)).await {
            Err(_) => Err(MeshMigrationError::Timeout {
                peer,
                what: "answer the query",
                after,
            }),
            Ok(Err(source)) => Err(MeshMigrationError::Io { peer, source }),
            Ok(Ok(Message::Status { started })) => Ok(started),
            Ok(Ok(other)) => Err(MeshMigrationError::Protocol {
                peer,
                reason: format!("answered the query with {}", other.kind()),
            }),
        }
    }

    async fn open_stream(&self, peer: PeerId) -> Result<Stream, MeshMigrationError> {
        let after = self.cfg.open_timeout;
        match tokio::time::timeout(after, (self.opener)(peer)).await {
            Err(_) => Err(MeshMigrationError::Timeout {
                peer,
                what: "accept a migration stream",
                after,
            }),
            Ok(Err(reason)) => Err(MeshMigrationError::Open { peer, reason }),
            Ok(Ok(s)) => Ok(s),
        }
    }

    async fn write(
        &self,
        peer: PeerId,
        s: &mut Stream,
        bytes: &[u8],
        what: &'static str,
    ) -> Result<(), MeshMigrationError> {
        let after = self.cfg.open_timeout;
        let sent = async {
            s.write_all(bytes).await?;
            s.flush().await
        };
        match tokio::time::timeout(after, sent).await {
            Err(_) => Err(MeshMigrationError::Timeout { peer, what, after }),
            Ok(Err(source)) => Err(MeshMigrationError::Io { peer, source }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The control stream of `session` (of `count` streams): its first frame answered with
    /// Accept, then its preamble sent.
    async fn open_control(
        &self,
        peer: PeerId,
        frame: &[u8],
        session: [u8; 16],
        count: u8,
    ) -> Result<Stream, MeshMigrationError> {
        let mut control = self.accepted_control(peer, frame).await?;
        let preamble = Preamble {
            session,
            index: 0,
            count,
        };
        self.write(
            peer,
            &mut control,
            &preamble.encode(),
            "take the control preamble",
        )
        .await?;
        Ok(control)
    }

    /// A control stream whose first frame the peer answered with Accept.
    async fn accepted_control(
        &self,
        peer: PeerId,
        frame: &[u8],
    ) -> Result<Stream, MeshMigrationError> {
        let after = self.cfg.answer_timeout;
        for _ in 0..OPEN_TRIES {
            let mut s = self.open_stream(peer).await?;
            self.write(peer, &mut s, frame, "take the offer").await?;
            let answer = match tokio::time::timeout(after, read_frame(&mut s)).await {
                Err(_) => {
                    return Err(MeshMigrationError::Timeout {
                        peer,
                        what: "answer the offer",
                        after,
                    })
                }
                // Dropped before anything was read (see the module doc): open again.
                Ok(Ok(None)) => continue,
                Ok(Err(FrameReadError::Io(e)))
                    if e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    continue
                }
                Ok(Err(e)) => {
                    return Err(MeshMigrationError::Protocol {
                        peer,
                        reason: format!("unreadable answer to the offer: {e}"),
                    })
                }
                Ok(Ok(Some(body))) => {
                    Answer::decode(&body).map_err(|e| MeshMigrationError::Protocol {
                        peer,
                        reason: format!("unreadable answer to the offer: {e}"),
                    })?
                }
            };
            return match answer {
                Answer::Accept => Ok(s),
                Answer::Refuse { reason } => Err(MeshMigrationError::Refused { peer, reason }),
            };
        }
        Err(MeshMigrationError::Protocol {
            peer,
            reason: format!("closed the control stream {OPEN_TRIES} times without answering"),
        })
    }

    /// Data stream `index`, joined to the session on the peer.
    async fn open_data(
        &self,
        peer: PeerId,
        session: [u8; 16],
        index: u8,
        count: u8,
    ) -> Result<Stream, MeshMigrationError> {
        let preamble = Preamble {
            session,
            index,
            count,
        }
        .encode();
        let after = self.cfg.answer_timeout;
        for _ in 0..OPEN_TRIES {
            let mut s = self.open_stream(peer).await?;
            self.write(peer, &mut s, &preamble, "take a data stream preamble")
                .await?;
            let mut answer = [0u8; 1];
            match tokio::time::timeout(after, s.read(&mut answer)).await {
                Err(_) => {
                    return Err(MeshMigrationError::Timeout {
                        peer,
                        what: "answer a data stream",
                        after,
                    })
                }
                Ok(Ok(0)) => continue,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
                Ok(Err(source)) => return Err(MeshMigrationError::Io { peer, source }),
                Ok(Ok(_)) if answer[0] == JOINED => return Ok(s),
                Ok(Ok(_)) => {
                    return Err(MeshMigrationError::Protocol {
                        peer,
                        reason: format!(
                            "data stream {index} of session {} was not taken (the session \
                             expired or was dropped)",
                            hex::encode(&session)
                        ),
                    })
                }
            }
        }
        Err(MeshMigrationError::Protocol {
            peer,
            reason: format!("closed data stream {index} {OPEN_TRIES} times without answering"),
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum FrameReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] OfferError),
}

/// One length-prefixed frame, bounded by [`MAX_FRAME`]; None at end of stream before it.
async fn read_frame(s: &mut Stream) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut prefix = [0u8; offer::LEN_PREFIX];
    let mut got = 0;
    while got < prefix.len() {
        let n = s.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    read_body(s, prefix).await.map(Some)
}

async fn read_body(s: &mut Stream, prefix: [u8; 4]) -> Result<Vec<u8>, FrameReadError> {
    let len = offer::body_len(prefix)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

// ---- destination ----

async fn accept_loop<I>(shared: Arc<Shared>, mut incoming: I)
where
    I: futures::Stream<Item = (PeerId, Stream)> + Unpin,
{
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                // Take the stream off libp2p-stream's one-place queue at once; the task waits
                // for a handshake slot.
                let shared = shared.clone();
                tasks.spawn(async move {
                    let Ok(_permit) = shared.handshakes.clone().acquire_owned().await else {
                        return;
                    };
                    handshake(&shared, peer, stream).await;
                });
            }
            _ = tick.tick() => {
                for (session, peer) in shared.sessions().expire(Instant::now()) {
                    tracing::warn!(%peer, session = %hex::encode(&session),
                        "dropping an incoming migration whose streams did not all arrive in time");
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// What a new stream turned out to be, or why it is dropped.
async fn handshake(shared: &Shared, peer: PeerId, mut stream: Stream) {
    let after = shared.cfg.handshake_timeout;
    let mut head = [0u8; 4];
    match tokio::time::timeout(after, stream.read_exact(&mut head)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "migration stream closed before its first bytes");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "migration stream sent nothing in {after:?}");
            return;
        }
    }
    // A data stream starts with the preamble's magic, which as an offer's length would be
    // far over MAX_FRAME.
    if head == *b"NCMG" {
        data_stream(shared, peer, stream, head).await;
    } else {
        control_stream(shared, peer, stream, head).await;
    }
}

async fn refuse(peer: PeerId, stream: &mut Stream, reason: &str) {
    tracing::info!(%peer, %reason, "refusing an incoming migration");
    if let Ok(frame) = Answer::refuse(reason).encode() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(&frame).await?;
            stream.close().await
        })
        .await;
    }
}

async fn control_stream(shared: &Shared, peer: PeerId, mut stream: Stream, prefix: [u8; 4]) {
    let after = shared.cfg.handshake_timeout;
    let offer = match tokio::time::timeout(after, read_body(&mut stream, prefix)).await {
        Err(_) => return refuse(peer, &mut stream, "the offer did not arrive in time").await,
        Ok(Err(e)) => {
            let reason = format!("unreadable offer: {e}");
            return refuse(peer, &mut stream, &reason).await;
        }
        Ok(Ok(body)) => match ResolveRequest::decode(&body) {
            Ok(request) => return answer_resolve(shared, peer, stream, request.resolve).await,
            Err(_) => body,
        },
    };
    let offer = match MigrationOffer::decode(&offer) {
        Ok(o) => o,
        Err(e) => {
            let reason = format!("invalid offer: {e}");
            return refuse(peer, &mut stream, &reason).await;
        }
    };
    let session = offer.session;
    let room = shared.sessions().can_open(&session);
    if let Err(r) = room {
        return refuse(peer, &mut stream, &r.to_string()).await;
    }
    if let Err(reason) = (shared.admit)(&peer, &offer) {
        return refuse(peer, &mut stream, &reason).await;
    }
    let raw = match tokio::time::timeout(shared.cfg.answer_timeout, accept(&mut stream)).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "accepted migration: control stream lost");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "accepted migration: no control preamble in time");
            return;
        }
    };
    let count = match Preamble::decode(&raw) {
        Ok(p) if p.session == session && p.index == 0 => p.count,
        Ok(p) => {
            tracing::warn!(%peer, ?p, "control preamble does not match the offer");
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "bad control preamble");
            return;
        }
    };
    let deadline = Instant::now() + shared.cfg.assemble_timeout;
    let opened = shared
        .sessions()
        .open(session, peer, offer, count, stream, deadline);
    if let Err(r) = opened {
        tracing::warn!(%peer, refusal = %r, "accepted migration could not be assembled");
    }
}

/// Answers a source in doubt about `session`: once this node's daemon knows whether it
/// started the VM, accepts, reads the links preamble and the VMM's `Query`, and sends
/// `Status`.
async fn answer_resolve(shared: &Shared, peer: PeerId, mut stream: Stream, session: [u8; 16]) {
    let deadline = Instant::now() + shared.cfg.answer_timeout;
    let started = loop {
        match (shared.resolve)(&peer, &session) {
            Some(started) => break started,
            None if Instant::now() < deadline => tokio::time::sleep(RESOLVE_POLL).await,
            None => {
                let reason = format!(
                    "the outcome of migration session {} is not known here",
                    hex::encode(&session)
                );
                return refuse(peer, &mut stream, &reason).await;
            }
        }
    };
    let answered = async {
        let raw = accept(&mut stream).await?;
        match Preamble::decode(&raw) {
            Ok(p) if p.session == session && p.index == 0 => {}
            Ok(p) => return Err(invalid(format!("preamble {p:?} is not this session's"))),
            Err(e) => return Err(invalid(format!("bad preamble: {e}"))),
        }
        match read_vm_message(&mut stream).await? {
            Message::Query { vm_id } if vm_id == session => {}
            other => return Err(invalid(format!("expected a Query, got {}", other.kind()))),
        }
        let status = encode_frame(&Message::Status { started }).map_err(std::io::Error::other)?;
        stream.write_all(&status).await?;
        stream.flush().await?;
        stream.close().await
    };
    match tokio::time::timeout(shared.cfg.answer_timeout, answered).await {
        Ok(Ok(())) => {
            tracing::info!(%peer, session = %hex::encode(&session), started, "answered a source in doubt")
        }
        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "a source in doubt: exchange failed"),
        Err(_) => tracing::warn!(%peer, "a source in doubt did not ask in time"),
    }
}

/// Sends Accept on a control stream and reads the links preamble that follows it.
async fn accept(stream: &mut Stream) -> std::io::Result<[u8; PREAMBLE_LEN]> {
    let frame = Answer::Accept.encode().map_err(std::io::Error::other)?;
    stream.write_all(&frame).await?;
    stream.flush().await?;
    let mut raw = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut raw).await?;
    Ok(raw)
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// One VMM migration frame, at most [`MAX_QUERY_FRAME`] bytes.
async fn read_vm_message(s: &mut Stream) -> std::io::Result<Message> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match decode_frame(&buf) {
            Ok(Some((msg, _))) => return Ok(msg),
            Ok(None) if buf.len() < MAX_QUERY_FRAME => {}
            Ok(None) => return Err(invalid(format!("a frame over {MAX_QUERY_FRAME} bytes"))),
            Err(e) => return Err(invalid(e.to_string())),
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether data stream `pre` may join its session, looking again for up to
/// [`SESSION_WAIT`] while the session is not registered yet.
async fn joinable(shared: &Shared, pre: &Preamble, peer: &PeerId) -> Result<(), Refusal> {
    let deadline = Instant::now() + SESSION_WAIT;
    loop {
        let verdict = shared.sessions().check(&pre.session, peer, pre.index);
        match verdict {
            Err(Refusal::Unknown(_)) if Instant::now() < deadline => {
                tokio::time::sleep(SESSION_POLL).await
            }
            v => return v,
        }
    }
}

async fn data_stream(shared: &Shared, peer: PeerId, mut stream: Stream, magic: [u8; 4]) {
    let mut raw = [0u8; PREAMBLE_LEN];
    raw[..4].copy_from_slice(&magic);
    let after = shared.cfg.handshake_timeout;
    match tokio::time::timeout(after, stream.read_exact(&mut raw[4..])).await {
        Ok(Ok(())) => {}
        _ => {
            tracing::debug!(%peer, "data stream preamble incomplete");
            return;
        }
    }
    let pre = match Preamble::decode(&raw) {
        Ok(p) if p.index > 0 => p,
        Ok(p) => {
            tracing::debug!(%peer, ?p, "a data stream claiming to be a control stream");
            return;
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "bad data stream preamble");
            return;
        }
    };
    let verdict = joinable(shared, &pre, &peer).await;
    let answer = if verdict.is_ok() { JOINED } else { NOT_JOINED };
    let answered = async {
        stream.write_all(&[answer]).await?;
        stream.flush().await
    };
    if !matches!(tokio::time::timeout(after, answered).await, Ok(Ok(()))) {
        return;
    }
    if let Err(r) = verdict {
        tracing::warn!(%peer, refusal = %r, "dropping a migration data stream");
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
        return;
    }
    let added = shared.sessions().add(pre.session, &peer, pre.index, stream);
    let complete = match added {
        Ok(None) => return,
        Ok(Some(c)) => c,
        Err((r, _)) => {
            tracing::warn!(%peer, refusal = %r, "dropping a migration data stream");
            return;
        }
    };
    tracing::info!(%peer, session = %hex::encode(&complete.session), "migration streams complete");
    let mut bridges = Bridges::new();
    let mut ends = Vec::with_capacity(complete.streams.len());
    for s in complete.streams {
        match bridges.add(s) {
            Ok(end) => ends.push(end),
            Err(e) => {
                tracing::error!(%peer, error = %e, "cannot bridge an incoming migration");
                bridges.abort();
                return;
            }
        }
    }
    let incoming = IncomingMigration {
        peer: complete.peer,
        offer: complete.meta,
        streams: ends,
        bridges,
    };
    if shared.incoming.send(incoming).await.is_err() {
        tracing::warn!(%peer, "nobody takes incoming migrations: dropped");
    }
}
