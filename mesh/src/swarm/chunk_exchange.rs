//! [`ChunkExchange`]: chunk sets served and fetched over `/novacron/chunks/1`, the libp2p
//! glue around the pure parts in [`crate::transfer`].
//!
//! Serving: one accept loop takes the protocol's inbound streams (at most
//! [`ExchangeConfig::max_streams`] at once, and [`RateConfig::max_streams_per_peer`] per
//! peer); each stream gets its own task that reads requests one by one, every frame bounded
//! by [`wire::MAX_REQUEST_BODY`] and decoded with every check, and answers from the local
//! [`ChunkStore`]. A malformed or oversized request closes the stream (nothing panics, the
//! rest keeps serving); a peer over its byte rate gets `Busy` with the time to wait. Only
//! manifests this node published or fetched, and only their chunks, are served: the store
//! may hold other chunks (a VM's memory) that nobody can probe for by id.
//!
//! Fetching: providers come from the DHT (`/novacron/chunkset/<id>`); the manifest from the
//! first provider whose bytes hash to the id; then the [`FetchScheduler`] spreads batches of
//! the missing chunks over every provider in parallel. Each request runs in its own task on
//! a stream reused request after request; its chunks are verified (decoded and hashed
//! against the id asked for, with the manifest's length) and put into the local store in
//! one batch commit, off the async threads. Once the set is complete this node serves it
//! and provides it in the DHT too.
//!
//! What this cannot do: a fetch does not look for new providers while it runs; sets cannot
//! be unpublished (chunks stay served until the exchange stops); the server's rate limits
//! are per peer, not a global bandwidth cap; chunks are verified once a request's answer is
//! complete, so a lying provider costs up to one batch before it is dropped.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::{MeshNode, SwarmError};
use crate::chunks::{ChunkId, ChunkStore, EncodedChunk, StoreError};
use crate::dht_keys::DhtKey;
use crate::transfer::fetch::{
    Action, Arrival, FetchConfig, FetchScheduler, Heard, PeerStats, Progress, RequestId,
    SchedulerReport,
};
use crate::transfer::manifest::{hex, ChunkSetManifest, ManifestError};
use crate::transfer::rate::{RateConfig, RateLimiter, Refusal};
use crate::transfer::wire::{
    self, Request, Response, WireError, MAX_CHUNK_BODY, MAX_REQUEST_BODY, MAX_RESPONSE_BODY,
    MAX_RETRY_AFTER_MS,
};

/// The chunk exchange protocol.
pub const CHUNKS_PROTOCOL: StreamProtocol = StreamProtocol::new(wire::PROTOCOL_NAME);

/// Events a fetch's request tasks may queue before the fetch loop reads them.
const EVENT_QUEUE: usize = 1024;

/// Streams a request tries before it counts as failed (see `RequestJob::exchange`).
const OPEN_TRIES: u32 = 3;

/// Longest wait for one new stream. libp2p-stream can leave an open waiting for good: a
/// request made while a connection to the peer is being established (its handler created,
/// the swarm's `ConnectionEstablished` not yet seen) is queued for a dial that the swarm
/// refuses (already connected) and nobody serves. The next open uses the connection.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How a node serves and fetches chunk sets.
#[derive(Clone, Debug)]
pub struct ExchangeConfig {
    /// Per-peer limits when serving.
    pub rate: RateConfig,
    /// How fetches are spread and when they give up.
    pub fetch: FetchConfig,
    /// Inbound streams served at once, all peers together; more are closed at once.
    pub max_streams: usize,
    /// A served stream without a complete request, or whose answer cannot be written, for
    /// this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed to get the manifest from one provider.
    pub manifest_timeout: Duration,
    /// Chunk sets served at most.
    pub max_sets: usize,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            rate: RateConfig::default(),
            fetch: FetchConfig::default(),
            max_streams: 256,
            idle_timeout: Duration::from_secs(30),
            manifest_timeout: Duration::from_secs(10),
            max_sets: 4096,
        }
    }
}

/// Why publishing or fetching a chunk set failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("chunk exchange: {0}")]
    Swarm(#[from] SwarmError),
    #[error("chunk exchange: {PROTOCOL} is already accepted on this node", PROTOCOL = wire::PROTOCOL_NAME)]
    AlreadyRegistered,
    #[error("chunk exchange: this exchange runs on node {started}, not on {given}")]
    WrongNode { started: String, given: String },
    #[error("chunk exchange: {0}")]
    Manifest(#[from] ManifestError),
    #[error("chunk exchange: cannot publish {name:?}: chunk {id} is not in the local store")]
    MissingChunk { name: String, id: ChunkId },
    #[error("chunk exchange: already serving the most chunk sets ({max})")]
    TooManySets { max: usize },
    #[error("chunk exchange: nobody provides chunk set {0}")]
    NoProviders(String),
    #[error("chunk exchange: no provider gave the manifest of chunk set {id} (last: {last})")]
    NoManifest { id: String, last: String },
    #[error("chunk exchange: chunk set {id}: {} chunks could not be had from any provider, first {}", missing.len(), missing.first().map_or_else(String::new, ToString::to_string))]
    Incomplete {
        id: String,
        missing: Vec<ChunkId>,
        report: Box<SchedulerReport<PeerId>>,
    },
    #[error("chunk exchange: local chunk store: {0}")]
    Store(Box<StoreError>),
    #[error("chunk exchange: a store task stopped: {0}")]
    Task(String),
}

impl From<StoreError> for ExchangeError {
    fn from(e: StoreError) -> Self {
        ExchangeError::Store(Box::new(e))
    }
}

/// How a fetch went.
#[derive(Clone, Debug)]
pub struct FetchReport {
    pub id: [u8; 32],
    pub name: String,
    pub total_len: u64,
    /// Non-zero chunks of the set, and how many of them were already in the local store.
    pub set_chunks: usize,
    pub already_held: usize,
    /// Chunks fetched, their raw bytes and the bytes of their frames as received.
    pub chunks: u64,
    pub bytes: u64,
    pub wire_bytes: u64,
    /// The whole fetch: provider lookup, manifest, chunks.
    pub seconds: f64,
    /// The chunk phase alone, and its rate in raw MiB/s.
    pub chunk_seconds: f64,
    pub mib_per_sec: f64,
    /// Each provider asked for chunks, with what it gave (most chunks first).
    pub providers: Vec<(PeerId, PeerStats)>,
    /// Who gave the manifest (None: it was known here already).
    pub manifest_from: Option<PeerId>,
    pub retries: u64,
    pub busy: u64,
    /// Providers dropped for sending chunks that did not verify.
    pub bad_providers: Vec<PeerId>,
    /// Providers dropped because their requests kept failing.
    pub gone_providers: Vec<PeerId>,
    /// Whether this node now provides the set in the DHT (false: the announcement failed,
    /// the set is still served to those who ask).
    pub providing: bool,
}

/// What the server side did since the exchange started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeStats {
    pub streams: u64,
    pub requests: u64,
    pub chunks: u64,
    /// Bytes of frames sent.
    pub bytes: u64,
    pub not_found: u64,
    pub busy: u64,
    /// Streams closed for a malformed or oversized request, or refused over a limit.
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    streams: AtomicU64,
    requests: AtomicU64,
    chunks: AtomicU64,
    bytes: AtomicU64,
    not_found: AtomicU64,
    busy: AtomicU64,
    refused: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

#[derive(Default)]
struct Sets {
    manifests: HashMap<[u8; 32], Arc<Vec<u8>>>,
    chunks: HashSet<ChunkId>,
}

struct Shared {
    local: PeerId,
    store: Arc<ChunkStore>,
    cfg: ExchangeConfig,
    sets: RwLock<Sets>,
    limiter: Mutex<RateLimiter<PeerId>>,
    streams: Arc<Semaphore>,
    epoch: Instant,
    counters: Counters,
}

/// Serves chunk sets on one node and fetches them from others. Dropping it stops serving
/// (the accept loop and every served stream).
pub struct ChunkExchange {
    shared: Arc<Shared>,
    control: libp2p_stream::Control,
    accept: JoinHandle<()>,
}

impl Drop for ChunkExchange {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ChunkExchange {
    /// Starts serving `/novacron/chunks/1` from `store` on `node` (call it inside a tokio
    /// runtime). Only one exchange per node.
    pub fn start(
        node: &MeshNode,
        store: Arc<ChunkStore>,
        cfg: ExchangeConfig,
    ) -> Result<ChunkExchange, ExchangeError> {
        let mut control = node.stream_control();
        let incoming = control
            .accept(CHUNKS_PROTOCOL)
            .map_err(|_| ExchangeError::AlreadyRegistered)?;
        let shared = Arc::new(Shared {
            local: node.peer_id(),
            store,
            limiter: Mutex::new(RateLimiter::new(cfg.rate)),
            streams: Arc::new(Semaphore::new(cfg.max_streams.max(1))),
            cfg,
            sets: RwLock::new(Sets::default()),
            epoch: Instant::now(),
            counters: Counters::default(),
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), incoming));
        Ok(ChunkExchange {
            shared,
            control,
            accept,
        })
    }

    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.shared.store
    }

    /// What the server side did so far.
    pub fn serve_stats(&self) -> ServeStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServeStats {
            streams: get(&c.streams),
            requests: get(&c.requests),
            chunks: get(&c.chunks),
            bytes: get(&c.bytes),
            not_found: get(&c.not_found),
            busy: get(&c.busy),
            refused: get(&c.refused),
        }
    }

    fn check_node(&self, node: &MeshNode) -> Result<(), ExchangeError> {
        if node.peer_id() == self.shared.local {
            Ok(())
        } else {
            Err(ExchangeError::WrongNode {
                started: self.shared.local.to_string(),
                given: node.peer_id().to_string(),
            })
        }
    }

    /// Serves `manifest` (whose chunks must all be in the local store) and announces in the
    /// DHT that this node provides it; returns the set's id once the provider record
    /// reached the closest peers.
    ///
    /// `node` must be the node the exchange was started on (the handle cannot be shared).
    pub async fn publish(
        &self,
        node: &MeshNode,
        manifest: &ChunkSetManifest,
    ) -> Result<[u8; 32], ExchangeError> {
        self.check_node(node)?;
        let bytes = manifest.encode()?;
        let id = crate::transfer::manifest_id(&bytes);
        let ids: Vec<ChunkId> = manifest.chunks().iter().map(|c| c.chunk_id()).collect();
        let store = self.shared.store.clone();
        let missing =
            tokio::task::spawn_blocking(move || ids.into_iter().find(|id| !store.contains(id)))
                .await
                .map_err(|e| ExchangeError::Task(e.to_string()))?;
        if let Some(id) = missing {
            return Err(ExchangeError::MissingChunk {
                name: manifest.name().to_string(),
                id,
            });
        }
        self.serve_set(id, bytes, manifest)?;
        node.start_providing(DhtKey::ChunkSet(id)).await?;
        info!(set = %hex(&id), name = manifest.name(), chunks = manifest.chunks().len(), "chunk set published");
        Ok(id)
    }

    fn serve_set(
        &self,
        id: [u8; 32],
        bytes: Vec<u8>,
        manifest: &ChunkSetManifest,
    ) -> Result<(), ExchangeError> {
        let mut sets = self.shared.sets();
        if !sets.manifests.contains_key(&id) && sets.manifests.len() >= self.shared.cfg.max_sets {
            return Err(ExchangeError::TooManySets {
                max: self.shared.cfg.max_sets,
            });
        }
        sets.manifests.insert(id, Arc::new(bytes));
        sets.chunks
            .extend(manifest.chunks().iter().map(|c| c.chunk_id()));
        Ok(())
    }

    /// The manifest of a set this node serves.
    pub fn manifest(&self, id: &[u8; 32]) -> Option<ChunkSetManifest> {
        let bytes = self.shared.sets_read().manifests.get(id).cloned()?;
        ChunkSetManifest::decode(&bytes).ok()
    }

    /// Fetches chunk set `id` from its providers in the DHT into the local store, then
    /// serves and provides it. `node` must be the node the exchange was started on.
    pub async fn fetch(&self, node: &MeshNode, id: [u8; 32]) -> Result<FetchReport, ExchangeError> {
        self.check_node(node)?;
        let started = Instant::now();
        let mut providers: Vec<PeerId> = node
            .providers(DhtKey::ChunkSet(id))
            .await?
            .into_iter()
            .filter(|p| *p != self.shared.local)
            .collect();
        providers.sort();
        if providers.is_empty() {
            return Err(ExchangeError::NoProviders(hex(&id)));
        }
        self.fetch_inner(node, id, providers, started).await
    }

    /// [`fetch`](Self::fetch) from the given providers, without a DHT lookup (benchmarks,
    /// and peers known from elsewhere: their addresses must be known to the swarm).
    pub async fn fetch_from(
        &self,
        node: &MeshNode,
        id: [u8; 32],
        providers: &[PeerId],
    ) -> Result<FetchReport, ExchangeError> {
        self.check_node(node)?;
        let providers: Vec<PeerId> = providers
            .iter()
            .copied()
            .filter(|p| *p != self.shared.local)
            .collect();
        if providers.is_empty() {
            return Err(ExchangeError::NoProviders(hex(&id)));
        }
        self.fetch_inner(node, id, providers, Instant::now()).await
    }

    async fn fetch_inner(
        &self,
        node: &MeshNode,
        id: [u8; 32],
        providers: Vec<PeerId>,
        started: Instant,
    ) -> Result<FetchReport, ExchangeError> {
        let (manifest, bytes, manifest_from) = match self.manifest(&id) {
            Some(m) => {
                let bytes = m.encode()?;
                (m, bytes, None)
            }
            None => {
                let (m, bytes, from) = self.get_manifest(id, &providers).await?;
                (m, bytes, Some(from))
            }
        };
        let all: Vec<(ChunkId, u32)> = manifest
            .chunks()
            .iter()
            .map(|c| (c.chunk_id(), c.len))
            .collect();
        let set_chunks = all.len();
        let store = self.shared.store.clone();
        let wanted = tokio::task::spawn_blocking(move || {
            all.into_iter()
                .filter(|(id, _)| !store.contains(id))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ExchangeError::Task(e.to_string()))?;
        let already_held = set_chunks - wanted.len();
        debug!(set = %hex(&id), wanted = wanted.len(), already_held, providers = providers.len(), "fetching chunk set");

        let chunk_start = Instant::now();
        let report = self.fetch_chunks(id, wanted, providers).await?;
        let chunk_seconds = chunk_start.elapsed().as_secs_f64();

        self.serve_set(id, bytes, &manifest)?;
        let providing = match node.start_providing(DhtKey::ChunkSet(id)).await {
            Ok(()) => true,
            Err(e) => {
                warn!(set = %hex(&id), error = %e, "fetched a chunk set but cannot provide it");
                false
            }
        };
        let mut per_peer: Vec<(PeerId, PeerStats)> = report.per_peer.into_iter().collect();
        per_peer.sort_by(|a, b| b.1.chunks.cmp(&a.1.chunks).then(a.0.cmp(&b.0)));
        let out = FetchReport {
            id,
            name: manifest.name().to_string(),
            total_len: manifest.total_len(),
            set_chunks,
            already_held,
            chunks: report.chunks,
            bytes: report.bytes,
            wire_bytes: report.wire_bytes,
            seconds: started.elapsed().as_secs_f64(),
            chunk_seconds,
            mib_per_sec: mib_per_sec(report.bytes, chunk_seconds),
            providers: per_peer,
            manifest_from,
            retries: report.retries,
            busy: report.busy,
            bad_providers: report.bad_peers,
            gone_providers: report.gone_peers,
            providing,
        };
        info!(set = %hex(&id), chunks = out.chunks, bytes = out.bytes, seconds = out.chunk_seconds, mib_per_sec = out.mib_per_sec, retries = out.retries, bad = out.bad_providers.len(), "chunk set fetched");
        Ok(out)
    }

    /// Asks providers in turn for the manifest until one sends bytes hashing to `id`.
    async fn get_manifest(
        &self,
        id: [u8; 32],
        providers: &[PeerId],
    ) -> Result<(ChunkSetManifest, Vec<u8>, PeerId), ExchangeError> {
        let mut last = String::from("no provider answered");
        for &peer in providers {
            let ask = ask_manifest(self.control.clone(), peer, id);
            let bytes = match tokio::time::timeout(self.shared.cfg.manifest_timeout, ask).await {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => {
                    last = format!("{peer} does not serve it");
                    continue;
                }
                Ok(Err(e)) => {
                    last = format!("{peer}: {e}");
                    continue;
                }
                Err(_) => {
                    last = format!("{peer} did not answer in time");
                    continue;
                }
            };
            match ChunkSetManifest::decode_for(&id, &bytes) {
                Ok(m) => return Ok((m, bytes, peer)),
                Err(e) => {
                    warn!(%peer, set = %hex(&id), error = %e, "provider sent a bad manifest");
                    last = format!("{peer}: {e}");
                }
            }
        }
        Err(ExchangeError::NoManifest { id: hex(&id), last })
    }

    /// Drives the scheduler: spawns one task per request, feeds their news back.
    async fn fetch_chunks(
        &self,
        id: [u8; 32],
        wanted: Vec<(ChunkId, u32)>,
        providers: Vec<PeerId>,
    ) -> Result<SchedulerReport<PeerId>, ExchangeError> {
        let shared = &self.shared;
        let mut sched = FetchScheduler::new(wanted, providers, shared.cfg.fetch);
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let mut tasks = Tasks::default();
        let mut idle: HashMap<PeerId, Vec<Stream>> = HashMap::new();
        let mut openers: HashMap<PeerId, Arc<tokio::sync::Mutex<()>>> = HashMap::new();
        loop {
            let now = shared.now();
            for action in sched.poll(now) {
                match action {
                    Action::Send {
                        request,
                        peer,
                        chunks,
                    } => {
                        let chunks = chunks
                            .into_iter()
                            .map(|c| (c, sched.expected_len(&c).unwrap_or(0)))
                            .collect();
                        let job = RequestJob {
                            request,
                            peer,
                            chunks,
                            stream: idle.get_mut(&peer).and_then(Vec::pop),
                            control: self.control.clone(),
                            open_lock: openers.entry(peer).or_default().clone(),
                            store: shared.store.clone(),
                            events: tx.clone(),
                        };
                        tasks
                            .0
                            .insert(request, tokio::spawn(job.run()).abort_handle());
                    }
                    Action::Cancel { request, peer } => {
                        if let Some(task) = tasks.0.remove(&request) {
                            task.abort();
                        }
                        idle.remove(&peer);
                    }
                }
            }
            match sched.progress(now) {
                Progress::Running => {}
                Progress::Done(report) => return Ok(report),
                Progress::Failed { missing, report } => {
                    return Err(ExchangeError::Incomplete {
                        id: hex(&id),
                        missing,
                        report: Box::new(report),
                    })
                }
            }
            let event = match sched.next_wakeup(now) {
                Some(at) => {
                    let at = tokio::time::Instant::from_std(shared.epoch + at);
                    tokio::select! {
                        event = rx.recv() => event,
                        () = tokio::time::sleep_until(at) => continue,
                    }
                }
                None => rx.recv().await,
            };
            // The loop holds a sender: the channel never closes while it runs.
            let Some(event) = event else { continue };
            match event {
                Event::Chunk {
                    request,
                    id,
                    arrival,
                } => {
                    if sched.chunk_arrived(request, &id, arrival) == Heard::Unasked {
                        warn!(chunk = %id, "provider sent a chunk it was not asked for");
                    }
                }
                Event::NotFound { request, id } => {
                    sched.not_found(request, &id);
                }
                Event::Done {
                    request,
                    peer,
                    stream,
                } => {
                    tasks.0.remove(&request);
                    if sched.request_done(request) == Heard::Taken {
                        idle.entry(peer).or_default().push(stream);
                    }
                }
                Event::Busy {
                    request,
                    peer,
                    retry_after,
                    stream,
                } => {
                    tasks.0.remove(&request);
                    let heard = sched.busy(request, retry_after, shared.now());
                    if let (Heard::Taken, Some(stream)) = (heard, stream) {
                        idle.entry(peer).or_default().push(stream);
                    }
                }
                Event::Failed { request, reason } => {
                    tasks.0.remove(&request);
                    debug!(request, %reason, "chunk request failed");
                    sched.request_failed(request);
                }
                Event::Store(e) => return Err(e.into()),
            }
        }
    }
}

/// Aborts the request tasks of a fetch when it ends or is dropped.
#[derive(Default)]
struct Tasks(HashMap<RequestId, AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

fn mib_per_sec(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / (1024.0 * 1024.0) / seconds
    } else {
        0.0
    }
}

impl Shared {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn sets(&self) -> std::sync::RwLockWriteGuard<'_, Sets> {
        self.sets.write().unwrap_or_else(|e| e.into_inner())
    }

    fn sets_read(&self) -> std::sync::RwLockReadGuard<'_, Sets> {
        self.sets.read().unwrap_or_else(|e| e.into_inner())
    }

    fn limiter(&self) -> MutexGuard<'_, RateLimiter<PeerId>> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---- serving ----

async fn accept_loop(shared: Arc<Shared>, mut incoming: libp2p_stream::IncomingStreams) {
    // Owning the served streams' tasks here means aborting this loop ends them too.
    let mut served = JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                let Ok(permit) = shared.streams.clone().try_acquire_owned() else {
                    bump(&shared.counters.refused, 1);
                    debug!(%peer, "chunk stream refused: too many streams");
                    continue;
                };
                bump(&shared.counters.streams, 1);
                let shared = shared.clone();
                served.spawn(async move {
                    serve_stream(&shared, peer, stream).await;
                    drop(permit);
                });
            }
            Some(_) = served.join_next(), if !served.is_empty() => {}
        }
    }
}

/// Why a served stream was closed.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("cannot write: {0}")]
    Write(io::Error),
    #[error("no request or no progress for {0:?}")]
    Idle(Duration),
}

async fn serve_stream(shared: &Shared, peer: PeerId, mut stream: Stream) {
    let admitted = shared.limiter().open_stream(&peer, shared.now());
    if let Err(refusal) = admitted {
        bump(&shared.counters.refused, 1);
        debug!(%peer, %refusal, "chunk stream refused");
        let busy = Response::Busy {
            retry_after_ms: retry_ms(&refusal),
        };
        let _ = tokio::time::timeout(shared.cfg.idle_timeout, async {
            stream.write_all(&busy.encode()).await?;
            stream.close().await
        })
        .await;
        return;
    }
    let result = serve_requests(shared, peer, &mut stream).await;
    shared.limiter().close_stream(&peer);
    match result {
        Ok(()) => {}
        Err(e @ (ServeError::Frame(FrameError::Wire(_)) | ServeError::Wire(_))) => {
            bump(&shared.counters.refused, 1);
            debug!(%peer, error = %e, "malformed chunk request: stream closed");
        }
        Err(e) => debug!(%peer, error = %e, "chunk stream closed"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
}

fn retry_ms(refusal: &Refusal) -> u32 {
    let ms = refusal.retry_after().as_millis().max(1);
    u32::try_from(ms)
        .unwrap_or(MAX_RETRY_AFTER_MS)
        .min(MAX_RETRY_AFTER_MS)
}

async fn serve_requests(
    shared: &Shared,
    peer: PeerId,
    stream: &mut Stream,
) -> Result<(), ServeError> {
    let idle = shared.cfg.idle_timeout;
    loop {
        let body = match tokio::time::timeout(idle, read_frame(stream, MAX_REQUEST_BODY)).await {
            Err(_) => return Err(ServeError::Idle(idle)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(body))) => body,
            Ok(Err(e)) => return Err(e.into()),
        };
        let request = Request::decode(&body)?;
        bump(&shared.counters.requests, 1);
        tokio::time::timeout(idle, answer(shared, peer, stream, request))
            .await
            .map_err(|_| ServeError::Idle(idle))??;
    }
}

async fn answer(
    shared: &Shared,
    peer: PeerId,
    stream: &mut Stream,
    request: Request,
) -> Result<(), ServeError> {
    // Manifests (up to 4 MiB) count against the byte rate like chunks.
    let admitted = shared.limiter().admit(&peer, shared.now());
    if let Err(refusal) = admitted {
        bump(&shared.counters.busy, 1);
        let busy = Response::Busy {
            retry_after_ms: retry_ms(&refusal),
        };
        send(shared, stream, &busy.encode()).await?;
        return stream.flush().await.map_err(ServeError::Write);
    }
    let charge = |frame: &[u8]| {
        shared
            .limiter()
            .take(&peer, frame.len() as u64, shared.now());
    };
    match request {
        Request::Manifest(id) => {
            let found = shared.sets_read().manifests.get(&id).cloned();
            let response = match found {
                Some(bytes) => Response::Manifest(bytes.to_vec()),
                None => {
                    bump(&shared.counters.not_found, 1);
                    Response::NotFound(id)
                }
            };
            let frame = response.encode();
            charge(&frame);
            send(shared, stream, &frame).await?;
        }
        Request::Chunks(ids) => {
            for id in ids {
                let frame = chunk_response(shared, id).await.encode();
                charge(&frame);
                send(shared, stream, &frame).await?;
            }
            send(shared, stream, &Response::End.encode()).await?;
        }
    }
    stream.flush().await.map_err(ServeError::Write)
}

async fn send(shared: &Shared, stream: &mut Stream, frame: &[u8]) -> Result<(), ServeError> {
    stream.write_all(frame).await.map_err(ServeError::Write)?;
    bump(&shared.counters.bytes, frame.len() as u64);
    Ok(())
}

/// The stored chunk, or `NotFound` when it is not part of a served set or not readable.
async fn chunk_response(shared: &Shared, id: ChunkId) -> Response {
    let not_found = || {
        bump(&shared.counters.not_found, 1);
        Response::NotFound(*id.as_bytes())
    };
    if !shared.sets_read().chunks.contains(&id) {
        return not_found();
    }
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.get_encoded(&id)).await {
        Ok(Ok((encoded, len))) => {
            bump(&shared.counters.chunks, 1);
            Response::Chunk {
                id,
                encoded,
                // A stored chunk is at most 64 KiB (the file header is checked).
                raw_len: len as u32,
            }
        }
        Ok(Err(StoreError::NotFound { .. })) => not_found(),
        Ok(Err(e)) => {
            warn!(chunk = %id, error = %e, "cannot serve a stored chunk");
            not_found()
        }
        Err(e) => {
            warn!(chunk = %id, error = %e, "chunk read task failed");
            not_found()
        }
    }
}

// ---- framing ----

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("cannot read: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Reads one frame's body (at most `max` bytes, refused before allocation when the header
/// says more); `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; wire::FRAME_HEADER_LEN];
    let mut got = 0;
    while got < header.len() {
        let n = reader.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    let len = wire::body_len(header, max)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(body))
}

// ---- fetching ----

/// Asks `peer` for manifest `id`, waiting out up to three `Busy` answers (the caller
/// bounds the whole with a timeout). `None`: the peer does not serve it.
async fn ask_manifest(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    id: [u8; 32],
) -> Result<Option<Vec<u8>>, String> {
    let mut stream = control
        .open_stream(peer, CHUNKS_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let mut busy = 0;
    loop {
        stream
            .write_all(&Request::Manifest(id).encode())
            .await
            .map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let body = read_frame(&mut stream, MAX_RESPONSE_BODY)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stream closed without an answer")?;
        match Response::decode(&body).map_err(|e| e.to_string())? {
            Response::Manifest(bytes) => {
                let _ = stream.close().await;
                return Ok(Some(bytes));
            }
            Response::NotFound(_) => return Ok(None),
            Response::Busy { retry_after_ms } if busy < 3 => {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms))).await;
            }
            other => return Err(format!("unexpected answer {}", kind(&other))),
        }
    }
}

fn kind(r: &Response) -> &'static str {
    match r {
        Response::Manifest(_) => "manifest",
        Response::NotFound(_) => "not-found",
        Response::Chunk { .. } => "chunk",
        Response::End => "end",
        Response::Busy { .. } => "busy",
    }
}

/// News from a request task to its fetch.
enum Event {
    Chunk {
        request: RequestId,
        id: ChunkId,
        arrival: Arrival,
    },
    NotFound {
        request: RequestId,
        id: ChunkId,
    },
    /// Answered to its end; the stream can carry the next request.
    Done {
        request: RequestId,
        peer: PeerId,
        stream: Stream,
    },
    Busy {
        request: RequestId,
        peer: PeerId,
        retry_after: Duration,
        stream: Option<Stream>,
    },
    Failed {
        request: RequestId,
        reason: String,
    },
    Store(StoreError),
}

/// A chunk as received, before verification.
struct Received {
    id: ChunkId,
    encoded: EncodedChunk,
    raw_len: u32,
}

/// What a request's answer was (rarely `Busy`: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
enum Answer {
    /// Wait this long; the stream can carry the next request.
    Busy(Duration, Option<Stream>),
    Chunks {
        received: Vec<Received>,
        not_found: Vec<ChunkId>,
        /// A chunk that cannot be right whatever its bytes (not asked, wrong length).
        violation: Option<ChunkId>,
        stream: Option<Stream>,
    },
}

struct RequestJob {
    request: RequestId,
    peer: PeerId,
    /// Ids asked and their raw lengths from the manifest.
    chunks: Vec<(ChunkId, u32)>,
    stream: Option<Stream>,
    control: libp2p_stream::Control,
    /// Held while opening a stream to `peer` (shared by the fetch's requests to it).
    open_lock: Arc<tokio::sync::Mutex<()>>,
    store: Arc<ChunkStore>,
    events: mpsc::Sender<Event>,
}

impl RequestJob {
    async fn run(mut self) {
        let request = self.request;
        let event = match self.exchange().await {
            Err(reason) => Event::Failed { request, reason },
            Ok(Answer::Busy(retry_after, stream)) => Event::Busy {
                request,
                peer: self.peer,
                retry_after,
                stream,
            },
            Ok(Answer::Chunks {
                received,
                not_found,
                violation,
                stream,
            }) => match self.store_verified(received).await {
                Err(e) => Event::Store(e),
                Ok(invalid) => {
                    for id in not_found {
                        let _ = self.events.send(Event::NotFound { request, id }).await;
                    }
                    match (invalid.or(violation), stream) {
                        (Some(id), _) => Event::Chunk {
                            request,
                            id,
                            arrival: Arrival::Invalid,
                        },
                        (None, Some(stream)) => Event::Done {
                            request,
                            peer: self.peer,
                            stream,
                        },
                        (None, None) => Event::Failed {
                            request,
                            reason: "answer ended early".into(),
                        },
                    }
                }
            },
        };
        let _ = self.events.send(event).await;
    }

    /// Sends the request and reads its whole answer (chunks are not verified yet).
    ///
    /// A stream that ends before any answer is replaced by a fresh one, up to
    /// [`OPEN_TRIES`] times: an idle stream the server closed, or a new stream dropped by
    /// the server's libp2p-stream accept queue, which holds one stream and drops the next
    /// if two arrive before the accept loop runs. New streams to one peer are opened one at
    /// a time (`open_lock`) so that a fetch does not cause such bursts itself.
    async fn exchange(&mut self) -> Result<Answer, String> {
        for attempt in 0..OPEN_TRIES {
            let mut stream = match self.stream.take() {
                Some(s) => s,
                None => {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    }
                    let _one_at_a_time = self.open_lock.lock().await;
                    let open = self.control.open_stream(self.peer, CHUNKS_PROTOCOL);
                    match tokio::time::timeout(OPEN_TIMEOUT, open).await {
                        Ok(opened) => opened.map_err(|e| e.to_string())?,
                        // Retried like a stream that ended early (see OPEN_TIMEOUT).
                        Err(_) => continue,
                    }
                }
            };
            match Self::attempt(&self.chunks, &mut stream).await? {
                Some(Answer::Chunks {
                    received,
                    not_found,
                    violation: None,
                    ..
                }) => {
                    return Ok(Answer::Chunks {
                        received,
                        not_found,
                        violation: None,
                        stream: Some(stream),
                    })
                }
                Some(Answer::Busy(retry_after, _)) => {
                    return Ok(Answer::Busy(retry_after, Some(stream)))
                }
                Some(answer) => return Ok(answer),
                None => {}
            }
        }
        Err("no stream to the provider answered (each closed early or did not open in time)".into())
    }

    /// One try on `stream`: `None` when it ended before the first answer frame.
    async fn attempt(
        chunks: &[(ChunkId, u32)],
        stream: &mut Stream,
    ) -> Result<Option<Answer>, String> {
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();
        let sent = stream.write_all(&Request::Chunks(ids).encode()).await;
        if sent.is_err() || stream.flush().await.is_err() {
            return Ok(None);
        }
        let first = match read_frame(stream, MAX_CHUNK_BODY).await {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(None),
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut next = Some(first);
        let mut open: HashMap<ChunkId, u32> = chunks.iter().copied().collect();
        let mut received = Vec::with_capacity(open.len());
        let mut not_found = Vec::new();
        loop {
            let body = match next.take() {
                Some(body) => body,
                None => read_frame(stream, MAX_CHUNK_BODY)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the stream closed mid-answer")?,
            };
            match Response::decode(&body).map_err(|e| e.to_string())? {
                Response::Busy { retry_after_ms }
                    if received.is_empty() && not_found.is_empty() =>
                {
                    let wait = Duration::from_millis(u64::from(retry_after_ms));
                    return Ok(Some(Answer::Busy(wait, None)));
                }
                Response::Chunk {
                    id,
                    encoded,
                    raw_len,
                } => match open.remove(&id) {
                    Some(expected) if expected == raw_len => received.push(Received {
                        id,
                        encoded,
                        raw_len,
                    }),
                    _ => {
                        return Ok(Some(Answer::Chunks {
                            received,
                            not_found,
                            violation: Some(id),
                            stream: None,
                        }))
                    }
                },
                Response::NotFound(raw) => {
                    let id = ChunkId::from_bytes(raw);
                    if open.remove(&id).is_none() {
                        return Ok(Some(Answer::Chunks {
                            received,
                            not_found,
                            violation: Some(id),
                            stream: None,
                        }));
                    }
                    not_found.push(id);
                }
                Response::End => {
                    return Ok(Some(Answer::Chunks {
                        received,
                        not_found,
                        violation: None,
                        stream: None,
                    }))
                }
                other => return Err(format!("unexpected {} in a chunk answer", kind(&other))),
            }
        }
    }

    /// Verifies the received chunks and puts them in the store in one batch, off the
    /// async threads; reports each verified one. Returns the first that did not verify
    /// (the ones after it are dropped unverified).
    async fn store_verified(
        &mut self,
        received: Vec<Received>,
    ) -> Result<Option<ChunkId>, StoreError> {
        if received.is_empty() {
            return Ok(None);
        }
        let store = self.store.clone();
        let outcome = tokio::task::spawn_blocking(move || verify_and_store(&store, received))
            .await
            .map_err(|e| StoreError::Io {
                op: "run the store task for",
                path: std::path::PathBuf::from("chunk batch"),
                source: io::Error::other(e.to_string()),
            })??;
        for &(id, wire_bytes) in &outcome.verified {
            let _ = self
                .events
                .send(Event::Chunk {
                    request: self.request,
                    id,
                    arrival: Arrival::Verified { wire_bytes },
                })
                .await;
        }
        Ok(outcome.invalid)
    }
}

struct Verified {
    verified: Vec<(ChunkId, u64)>,
    invalid: Option<ChunkId>,
}

/// Blocking: decodes and checks each chunk against its id and length, then commits the
/// good ones before the first bad one.
fn verify_and_store(store: &ChunkStore, received: Vec<Received>) -> Result<Verified, StoreError> {
    let mut batch = store.batch();
    let mut out = Verified {
        verified: Vec::with_capacity(received.len()),
        invalid: None,
    };
    for r in received {
        let wire_bytes = r.encoded.bytes.len() as u64;
        match batch.put_encoded(&r.id, r.encoded, r.raw_len as usize) {
            Ok(()) => out.verified.push((r.id, wire_bytes)),
            Err(
                StoreError::InvalidChunk { .. }
                | StoreError::ZeroChunk { .. }
                | StoreError::Codec(_),
            ) => {
                out.invalid = Some(r.id);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    batch.commit()?;
    Ok(out)
}
