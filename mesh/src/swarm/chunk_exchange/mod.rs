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
//! first provider whose bytes hash to the id; then the [`FetchScheduler`](crate::transfer::fetch::FetchScheduler) spreads batches of
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
//!
//! Parts: `serve` (the accept loop and the answers), `fetch` (the driver of the
//! [`FetchScheduler`](crate::transfer::fetch::FetchScheduler) and its request tasks) and
//! `frame` (reading one frame, both sides).

mod fetch;
mod frame;
mod serve;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use libp2p::{PeerId, StreamProtocol};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::info;

pub use frame::{read_frame, FrameError};
use serve::accept_loop;

use super::clock::Epoch;
use super::{MeshNode, SwarmError};
use crate::chunks::{ChunkId, ChunkStore, StoreError};
use crate::dht_keys::DhtKey;
use crate::transfer::fetch::{FetchConfig, PeerStats, SchedulerReport};
use crate::transfer::manifest::{hex, ChunkSetManifest, ManifestError};
use crate::transfer::rate::{RateConfig, RateLimiter};
use crate::transfer::wire;

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
    #[error("chunk exchange: chunk set {id} holds {len} bytes, over the {max}-byte limit")]
    TooLarge { id: String, len: u64, max: u64 },
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

impl Counters {
    fn snapshot(&self) -> ServeStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServeStats {
            streams: get(&self.streams),
            requests: get(&self.requests),
            chunks: get(&self.chunks),
            bytes: get(&self.bytes),
            not_found: get(&self.not_found),
            busy: get(&self.busy),
            refused: get(&self.refused),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The sets served, and each chunk they name with how many sets name it (a chunk is served
/// while any set naming it is).
#[derive(Default)]
struct Sets {
    manifests: HashMap<[u8; 32], Arc<Vec<u8>>>,
    chunks: HashMap<ChunkId, u32>,
}

impl Sets {
    fn add(&mut self, id: [u8; 32], bytes: Arc<Vec<u8>>, chunks: &[ChunkId]) {
        if self.manifests.insert(id, bytes).is_some() {
            return;
        }
        for c in distinct(chunks) {
            *self.chunks.entry(c).or_default() += 1;
        }
    }

    fn remove(&mut self, id: &[u8; 32]) -> bool {
        let Some(bytes) = self.manifests.remove(id) else {
            return false;
        };
        // Served manifests were encoded here or checked on fetch: they decode.
        let Ok(m) = ChunkSetManifest::decode(&bytes) else {
            return true;
        };
        let ids: Vec<ChunkId> = m.chunks().iter().map(|c| c.chunk_id()).collect();
        for c in distinct(&ids) {
            if let std::collections::hash_map::Entry::Occupied(mut e) = self.chunks.entry(c) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        true
    }

    fn serves_chunk(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }
}

fn distinct(chunks: &[ChunkId]) -> HashSet<ChunkId> {
    chunks.iter().copied().collect()
}

struct Shared {
    local: PeerId,
    store: Arc<ChunkStore>,
    cfg: ExchangeConfig,
    sets: RwLock<Sets>,
    limiter: Mutex<RateLimiter<PeerId>>,
    streams: Arc<Semaphore>,
    epoch: Epoch,
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
        let shared = Arc::new(Shared::new(node.peer_id(), store, cfg));
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
        self.shared.counters.snapshot()
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
        let id = self.serve(manifest).await?;
        node.start_providing(DhtKey::ChunkSet(id)).await?;
        info!(set = %hex(&id), name = manifest.name(), chunks = manifest.chunks().len(), "chunk set published");
        Ok(id)
    }

    /// Serves `manifest` (whose chunks must all be in the local store) without announcing
    /// it in the DHT: for peers told where to fetch it ([`Self::fetch_from`]). Its id.
    pub async fn serve(&self, manifest: &ChunkSetManifest) -> Result<[u8; 32], ExchangeError> {
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
        let ids: Vec<ChunkId> = manifest.chunks().iter().map(|c| c.chunk_id()).collect();
        sets.add(id, Arc::new(bytes), &ids);
        Ok(())
    }

    /// Stops serving set `id` (its chunks stay in the store, and are still served for the
    /// other sets that name them); false if it was not served. Its DHT provider record
    /// expires by itself; a peer that still asks is answered "not found" and tries others.
    pub fn withdraw(&self, id: &[u8; 32]) -> bool {
        self.shared.sets().remove(id)
    }

    /// The manifest of a set this node serves.
    pub fn manifest(&self, id: &[u8; 32]) -> Option<ChunkSetManifest> {
        let bytes = self.shared.sets_read().manifests.get(id).cloned()?;
        ChunkSetManifest::decode(&bytes).ok()
    }
}

impl Shared {
    fn new(local: PeerId, store: Arc<ChunkStore>, cfg: ExchangeConfig) -> Shared {
        Shared {
            local,
            store,
            limiter: Mutex::new(RateLimiter::new(cfg.rate)),
            streams: Arc::new(Semaphore::new(cfg.max_streams.max(1))),
            cfg,
            sets: RwLock::new(Sets::default()),
            epoch: Epoch::start(),
            counters: Counters::default(),
        }
    }

    fn now(&self) -> Duration {
        self.epoch.now()
    }

    fn sets(&self) -> std::sync::RwLockWriteGuard<'_, Sets> {
        self.sets.write().unwrap_or_else(|e| e.into_inner())
    }

    fn sets_read(&self) -> std::sync::RwLockReadGuard<'_, Sets> {
        self.sets.read().unwrap_or_else(|e| e.into_inner())
    }

    fn limiter(&self) -> MutexGuard<'_, RateLimiter<PeerId>> {
        crate::util::lock(&self.limiter)
    }
}

/// A store of chunks and the streams to serve or fetch them in memory, for the tests of both
/// sides.
#[cfg(test)]
mod fixtures {
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    use super::*;
    use crate::chunks::Level;

    /// Bytes of each test chunk (all the same length, so one can pose as another).
    pub(super) const CHUNK_LEN: u32 = 4096;

    /// One end of an in-memory stream.
    pub(super) type Pipe = Compat<tokio::io::DuplexStream>;

    pub(super) fn pipe() -> (Pipe, Pipe) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (a.compat(), b.compat())
    }

    pub(super) struct Fixture {
        pub(super) _dir: tempfile::TempDir,
        pub(super) store: Arc<ChunkStore>,
        /// Chunks in the store (chunk `i` is `CHUNK_LEN` bytes of `i + 1`).
        pub(super) chunks: Vec<ChunkId>,
    }

    impl Fixture {
        /// A store holding `n` chunks.
        pub(super) fn new(n: u8) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(ChunkStore::open(dir.path(), Level::default()).unwrap());
            let chunks = (0..n).map(|i| store.put(&raw(i)).unwrap().id).collect();
            Fixture {
                _dir: dir,
                store,
                chunks,
            }
        }

        /// A server side on this store serving `chunks` and a manifest `id` -> `bytes`.
        pub(super) fn serving(
            &self,
            cfg: ExchangeConfig,
            chunks: &[ChunkId],
            manifest: ([u8; 32], &[u8]),
        ) -> Arc<Shared> {
            let shared = Shared::new(PeerId::random(), self.store.clone(), cfg);
            {
                let mut sets = shared.sets();
                sets.add(manifest.0, Arc::new(manifest.1.to_vec()), chunks);
            }
            Arc::new(shared)
        }
    }

    /// The raw bytes of test chunk `i`.
    pub(super) fn raw(i: u8) -> Vec<u8> {
        vec![i.wrapping_add(1).max(1); CHUNK_LEN as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::Level;

    #[test]
    fn a_withdrawn_set_stops_serving_only_the_chunks_no_other_set_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), Level::default()).unwrap();
        let data = |seed: u8| -> Vec<u8> { (0..300_000u32).map(|i| (i as u8) ^ seed).collect() };
        let a = ChunkSetManifest::from_store_data("a", &data(1), &store).unwrap();
        // b shares all of a's chunks and adds its own (a's data twice over, then more).
        let mut both = data(1);
        both.extend(data(2));
        let b = ChunkSetManifest::from_store_data("b", &both, &store).unwrap();
        let ids = |m: &ChunkSetManifest| -> Vec<ChunkId> {
            m.chunks().iter().map(|c| c.chunk_id()).collect()
        };
        let (a_bytes, b_bytes) = (a.encode().unwrap(), b.encode().unwrap());
        let (a_id, b_id) = (
            crate::transfer::manifest_id(&a_bytes),
            crate::transfer::manifest_id(&b_bytes),
        );
        let mut sets = Sets::default();
        sets.add(a_id, Arc::new(a_bytes.clone()), &ids(&a));
        sets.add(a_id, Arc::new(a_bytes), &ids(&a));
        sets.add(b_id, Arc::new(b_bytes), &ids(&b));
        let only_b: Vec<ChunkId> = ids(&b)
            .into_iter()
            .filter(|c| !ids(&a).contains(c))
            .collect();
        assert!(!only_b.is_empty());
        assert!(sets.remove(&b_id));
        assert!(!sets.remove(&b_id), "gone already");
        assert!(
            ids(&a).iter().all(|c| sets.serves_chunk(c)),
            "a's chunks stay"
        );
        assert!(only_b.iter().all(|c| !sets.serves_chunk(c)), "b's own go");
        assert!(sets.remove(&a_id));
        assert!(sets.chunks.is_empty() && sets.manifests.is_empty());
    }
}
