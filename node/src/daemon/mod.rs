//! The running node: the mesh swarm, the chunk exchange, its cell, its VMs (supervised,
//! checkpointed, recovered after a crash, moved over the mesh), the owner's politeness
//! policy, and the state database and event stream the API reports from.

mod accounting;
pub mod capacity;
mod cell;
mod chunk_sets;
pub mod jobs;
pub mod lines;
mod moves;
mod polite;
mod service;

use novacron_mesh::util::lock;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use novacron_mesh::chunks::{ChunkStore, Level};
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::records::RecordBook;
use novacron_mesh::swarm::cell::{CellConfig, CellEvent, CellMembership, MemberInfo};
use novacron_mesh::swarm::clock::{unix_now, Epoch};
use novacron_mesh::swarm::{ChunkExchange, ExchangeConfig, MeshNode, Multiaddr};
use tokio::sync::{broadcast, RwLock};
use tokio::task::JoinHandle;

use crate::api::socket::Handler;
use crate::api::types::NodeEvent;
use crate::api::{
    CellStatus, MemberStatus, NodeStatus, ProtocolBytesStatus, Request, Response, SummaryStatus,
};
use crate::mesh_migration::MeshMigrations;
use crate::metrics::Metrics;
use crate::policy::admission;
use crate::policy::cell_keeper::{CellKeeper, KeeperConfig};
use crate::policy::cell_size;
use crate::policy::politeness::observation::OwnerSignal;
use crate::policy::politeness::{Policy, Politeness};
use crate::politeness::Sampler;
use crate::state::StateDb;
use crate::vms::events::EventBus;
use crate::vms::registry::Registry;
use crate::vms::{RecoveryReport, VmManager, VmOptions};

/// The chunk store's directory inside the data directory.
pub const CHUNKS_DIR: &str = "chunks";

/// What a running node owns and reports on.
pub struct Daemon {
    pub mesh: Arc<MeshNode>,
    pub exchange: ChunkExchange,
    /// The cell membership; replaced when the mesh grows or shrinks past a cell size bound.
    cell: RwLock<Option<CellMembership>>,
    /// Tests only: the cell's prefix length, never changed by the mesh-size estimate.
    fixed_cell_bits: Option<u8>,
    /// Events of whichever membership runs (a forwarder task copies them here).
    cell_events: broadcast::Sender<CellEvent>,
    forwarder: std::sync::Mutex<Option<JoinHandle<()>>>,
    identity: NodeIdentity,
    /// The newest verified signed record of each member heard of.
    records: std::sync::Mutex<RecordBook>,
    /// When the daemon started: its uptime, and the epoch of the time its policy cores are
    /// given (`now` is `started.elapsed()`).
    pub started: Instant,
    pub vms: Arc<VmManager>,
    pub bus: Arc<EventBus>,
    pub metrics: Arc<Metrics>,
    state_db: Arc<StateDb>,
    politeness: std::sync::Mutex<Politeness>,
    /// The API's word about the owner (kept in the data directory across restarts).
    owner_override: std::sync::Mutex<Option<OwnerSignal>>,
    /// Held while the override is changed (file and memory agree).
    owner_writes: tokio::sync::Mutex<()>,
    /// Bumped by each change of the override; the politeness loop says which one it has
    /// decided with (in `owner_observed`), and samples at once when `resample` is notified.
    owner_generation: std::sync::atomic::AtomicU64,
    owner_observed: tokio::sync::watch::Sender<u64>,
    resample: tokio::sync::Notify,
    data_dir: PathBuf,
    /// VMs the policy paused in place (resumed when it allows again).
    paused_by_policy: std::sync::Mutex<HashSet<String>>,
    draining: AtomicBool,
    /// Held while one VM is admitted and recorded (or an offer admitted and reserved).
    admitting: std::sync::Mutex<()>,
    /// Incoming migrations accepted whose VMs are not recorded yet.
    reservations: std::sync::Mutex<admission::Reservations>,
    migrations: Option<MeshMigrations>,
    vm_opts_sandbox: bool,
    /// Jobs submitted here and replicas run here.
    jobs: jobs::JobsHere,
    /// The daemon itself, for work it starts from `&self` (drain from the API).
    myself: Arc<OnceLock<Weak<Daemon>>>,
}

/// How the daemon runs its VMs and keeps its state.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    pub db_path: PathBuf,
    pub vms: VmOptions,
    pub policy: Policy,
    /// Who may submit jobs to this node.
    pub trust: jobs::TrustSource,
    /// How much each submitter may submit.
    pub submitter_limits: crate::policy::submitters::SubmitterLimits,
    /// Whether the node runs job replicas (false: it only places the jobs submitted to it).
    pub run_job_replicas: bool,
    /// Tests only: report a wrong result hash for every replica run here.
    pub corrupt_job_results: bool,
    /// Tests only: the cell's prefix length, kept whatever the mesh size.
    pub fixed_cell_bits: Option<u8>,
}

/// Members whose signed records are remembered.
const RECORD_BOOK_PEERS: usize = 4096;

/// Capacity of the daemon's cell event channel.
const CELL_EVENT_CAPACITY: usize = 1024;

impl Daemon {
    /// Opens the state database and the chunk store, accounts for every VM a previous run
    /// left (adopting, restoring or recording them), starts serving chunk sets and mesh
    /// migrations, and joins the node's cell.
    pub async fn start(
        mesh: MeshNode,
        identity: NodeIdentity,
        opts: DaemonOptions,
    ) -> anyhow::Result<(Arc<Daemon>, RecoveryReport)> {
        let dir = opts.data_dir.join(CHUNKS_DIR);
        let store = ChunkStore::open(&dir, Level::default())
            .with_context(|| format!("chunk store {}", dir.display()))?;
        let exchange = ChunkExchange::start(&mesh, Arc::new(store), ExchangeConfig::default())?;
        let state_db = Arc::new(StateDb::open(&opts.db_path)?);
        let bus = Arc::new(EventBus::new(Some(state_db.clone())));
        let registry = Arc::new(Registry::load(state_db.clone(), bus.clone())?);
        let vm_opts_sandbox = opts.vms.sandbox;
        // Migrations count as they settle, the ones the recovery settles included.
        let metrics = Arc::new(Metrics::new());
        let counter = metrics.clone();
        registry.on_settled(move |m| counter.observe_migration(m));
        let vms = VmManager::new(opts.vms.clone(), registry);
        // Job replicas are never restored on the node's own say (see `jobs::runner`).
        let replica_vms = jobs::replica_vms(&state_db);
        let recovered = {
            let vms = vms.clone();
            tokio::task::spawn_blocking(move || vms.recover(&replica_vms))
                .await
                .context("VM recovery task")?
        };
        let slot: Arc<OnceLock<Weak<Daemon>>> = Arc::new(OnceLock::new());
        let admit_slot = slot.clone();
        let registry = vms.registry().clone();
        let (migrations, incoming) = MeshMigrations::start(
            &mesh,
            move |peer, offer| match admit_slot.get().and_then(Weak::upgrade) {
                Some(daemon) => daemon.admit_offer(peer, offer),
                None => Err("the node is starting".into()),
            },
            move |peer, session| moves::started_incoming(&registry, peer, session),
        )?;
        let mesh = Arc::new(mesh);
        let (cell_events, _) = broadcast::channel(CELL_EVENT_CAPACITY);
        let daemon = Arc::new(Daemon {
            mesh,
            exchange,
            forwarder: std::sync::Mutex::new(None),
            cell: RwLock::new(None),
            fixed_cell_bits: opts.fixed_cell_bits,
            cell_events,
            identity,
            records: std::sync::Mutex::new(RecordBook::new(RECORD_BOOK_PEERS)),
            started: Instant::now(),
            vms,
            bus,
            metrics,
            state_db,
            politeness: std::sync::Mutex::new(Politeness::new(opts.policy.clone())),
            owner_override: std::sync::Mutex::new(polite::kept_owner_override(&opts.data_dir)),
            owner_writes: tokio::sync::Mutex::new(()),
            owner_generation: std::sync::atomic::AtomicU64::new(0),
            owner_observed: tokio::sync::watch::Sender::new(0),
            resample: tokio::sync::Notify::new(),
            data_dir: opts.data_dir.clone(),
            paused_by_policy: std::sync::Mutex::new(HashSet::new()),
            draining: AtomicBool::new(false),
            admitting: std::sync::Mutex::new(()),
            reservations: std::sync::Mutex::new(admission::Reservations::default()),
            migrations: Some(migrations),
            vm_opts_sandbox,
            jobs: jobs::JobsHere::new(
                opts.trust.clone(),
                opts.submitter_limits,
                opts.run_job_replicas,
                opts.corrupt_job_results,
            ),
            myself: slot.clone(),
        });
        let _ = slot.set(Arc::downgrade(&daemon));
        daemon
            .vms
            .set_payload_source(Arc::new(chunk_sets::MeshPayloads(Arc::downgrade(&daemon))));
        // The first word to the cell: the node's capacity by its accounting (nothing free
        // until the politeness policy has observed the machine once).
        let me = cell::member_info(&daemon.own_capacity(0), Vec::new());
        let first = CellConfig {
            prefix_bits: opts
                .fixed_cell_bits
                .unwrap_or(CellConfig::default().prefix_bits),
            ..CellConfig::default()
        };
        let cell = CellMembership::start(daemon.mesh.clone(), first, me).await?;
        *lock(&daemon.forwarder) = Some(forward(&cell, daemon.cell_events.clone()));
        *daemon.cell.write().await = Some(cell);
        daemon.serve_jobs(&recovered.not_restored)?;
        tokio::spawn(daemon.clone().take_incoming(incoming));
        tokio::spawn(daemon.clone().settle_in_doubt_loop());
        tokio::spawn(daemon.clone().announce_members());
        let sampler = Sampler::new(crate::politeness::HostPaths::host(&opts.data_dir));
        tokio::spawn(daemon.clone().politeness_loop(sampler));
        Ok((daemon, recovered))
    }

    /// Member arrivals and deaths as node events (and failure detections as a metric).
    async fn announce_members(self: Arc<Self>) {
        let mut events = self.cell_events();
        loop {
            let (peer, live) = match events.recv().await {
                Ok(CellEvent::MemberJoined { peer, .. }) => (peer, true),
                Ok(CellEvent::MemberDied { peer }) => {
                    self.metrics.failure_detected();
                    self.jobs_node_died(&peer);
                    (peer, false)
                }
                Ok(CellEvent::MemberLeft { .. }) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            self.bus.publish(NodeEvent::Member {
                peer_id: peer.to_string(),
                live,
            });
        }
    }

    /// Brings the gauges the daemon does not update as things happen up to date.
    pub async fn refresh_metrics(&self) {
        self.metrics.set_vms(&self.vms.list());
        let connected = self.mesh.connected_peers().await.map_or(0, |p| p.len());
        let routing = self.mesh.routing_table_peers().await.map_or(0, |p| p.len());
        let (live, dead, estimate) = self.cell_counts().await;
        self.metrics
            .set_mesh(connected, routing, live, dead, estimate);
        self.metrics.set_politeness(&self.politeness_info());
    }

    /// The node's cell's live and dead members, and the mesh size estimate they and the
    /// summaries the node holds give.
    async fn cell_counts(&self) -> (usize, usize, u64) {
        match &*self.cell.read().await {
            Some(c) => {
                let members = c.members().await;
                let live = members.iter().filter(|m| m.live).count();
                let summaries = self.mesh.cell_summaries().await.unwrap_or_default();
                let estimate = cell_size::mesh_size_estimate(
                    c.cell().prefix_bits(),
                    live as u64,
                    summaries,
                    unix_now(),
                );
                (live, members.len() - live, estimate)
            }
            None => (0, 0, 0),
        }
    }

    /// Member events of the node's cell, whichever cell that is.
    pub fn cell_events(&self) -> broadcast::Receiver<CellEvent> {
        self.cell_events.subscribe()
    }

    /// Live members of the node's cell (itself included).
    pub async fn live_members(&self) -> usize {
        match &*self.cell.read().await {
            Some(c) => c.members().await.iter().filter(|m| m.live).count(),
            None => 0,
        }
    }

    /// Every member of the node's cell, live or not (None before the node has a cell):
    /// their peers only, with none of [`Daemon::cell_status`]'s record checks.
    pub(crate) async fn cell_member_peers(&self) -> Option<Vec<novacron_mesh::swarm::PeerId>> {
        let guard = self.cell.read().await;
        let cell = guard.as_ref()?;
        Some(cell.members().await.into_iter().map(|m| m.peer).collect())
    }

    /// Moves to the cell of `bits` prefix bits: stops the current membership (its protocol
    /// must be free before the next one registers), starts the new one with what the node
    /// last told its cell, and forwards the new one's events. The node has no cell in between.
    async fn move_cell(&self, bits: u8, estimate: u64, me: MemberInfo) -> anyhow::Result<()> {
        let mut cell = self.cell.write().await;
        if let Some(f) = lock(&self.forwarder).take() {
            f.abort();
        }
        if let Some(old) = cell.take() {
            old.stop().await;
        }
        let cfg = CellConfig {
            prefix_bits: bits,
            expected_members: estimate >> bits,
            ..CellConfig::default()
        };
        let new = CellMembership::start(self.mesh.clone(), cfg, me).await?;
        *lock(&self.forwarder) = Some(forward(&new, self.cell_events.clone()));
        *cell = Some(new);
        Ok(())
    }

    /// What the node offers its cell now, by its admission accounting, with `load_permille`.
    fn own_capacity(&self, load_permille: u16) -> novacron_mesh::records::Capacity {
        capacity::offer(&self.accounting(), load_permille)
    }

    /// Keeps the node's cell entry current, finds members through the DHT, publishes the
    /// cell's summary when this node is a representative and moves to a cell of another
    /// size, as the cell keeper ([`CellKeeper`]) says; runs until the task is dropped.
    /// The entry is refreshed every round, and at once when a VM or the politeness decision
    /// changes or the node starts draining (its free capacity then changes).
    pub async fn maintain(self: Arc<Daemon>) {
        let epoch = Epoch::start();
        let seed = novacron_mesh::jitter::seed_of(&self.mesh.peer_id().to_bytes());
        let mut keeper = CellKeeper::new(KeeperConfig::default(), Duration::ZERO, seed);
        let mut told: Option<MemberInfo> = None;
        let mut told_available: Option<u64> = None;
        let mut signer = cell::RecordSigner::new(self.identity.clone());
        let mut events = Some(self.bus.subscribe());
        loop {
            let due = epoch.instant(keeper.next_deadline());
            let round = tokio::select! {
                _ = tokio::time::sleep_until(due) => {
                    let members = match self.cell.read().await.as_ref() {
                        Some(cell) => cell.members_held(),
                        None => 1,
                    };
                    keeper.round(epoch.now(), members)
                }
                event = async { Some(events.as_mut()?.recv().await) }, if events.is_some() => {
                    match event {
                        Some(Ok(e)) if !capacity_may_change(&e.event) => continue,
                        // Lagged: something changed.
                        Some(Ok(_)) | Some(Err(broadcast::error::RecvError::Lagged(_))) => None,
                        // No events any more: rounds only.
                        Some(Err(broadcast::error::RecvError::Closed)) | None => {
                            events = None;
                            continue;
                        }
                    }
                }
            };
            // Between rounds only the free capacity is refreshed; the load and addresses
            // the cell was told last stay, so VM events do not make the gossip chatty.
            let (addrs, load) = match (&told, round) {
                (Some(t), None) => (t.addrs.clone(), t.load_permille),
                _ => (
                    self.advertised_addrs().await,
                    capacity::figure_to_tell(
                        told.as_ref().map(|t| u64::from(t.load_permille)),
                        u64::from(capacity::host_load_permille()),
                        capacity::LOAD_STEP,
                    ) as u16,
                ),
            };
            let cap = {
                let mut acc = self.accounting();
                acc.mem_available_bytes = acc.mem_available_bytes.map(|measured| {
                    let told = capacity::figure_to_tell(
                        told_available,
                        measured,
                        capacity::AVAILABLE_MEMORY_STEP,
                    );
                    told_available = Some(told);
                    told
                });
                capacity::offer(&acc, load)
            };
            let mut info = cell::member_info(&cap, addrs);
            info.signed_record = signer.current(&cap, &info.addrs, unix_now());
            let Some(round) = round else {
                if let Some(cell) = self.cell.read().await.as_ref() {
                    if told.as_ref() != Some(&info) {
                        cell.update_self(info.clone()).await;
                        told = Some(info);
                    }
                }
                continue;
            };
            let (bits, wanted) = {
                let guard = self.cell.read().await;
                let Some(cell) = guard.as_ref() else { continue };
                if told.as_ref() != Some(&info) {
                    cell.update_self(info.clone()).await;
                    told = Some(info.clone());
                }
                // The DHT needs a routing table; the first rounds may find none yet.
                if round.provide {
                    if let Err(e) = cell::announce_in_dht(&self.mesh, cell).await {
                        tracing::debug!(error = %e, "cell announcement in the DHT");
                    }
                }
                if round.look_up_members {
                    match cell::find_members_in_dht(&self.mesh, cell).await {
                        Ok(n) => tracing::debug!(n, "cell members found in the DHT"),
                        Err(e) => tracing::debug!(error = %e, "cell lookup in the DHT"),
                    }
                }
                if !round.publish_summary {
                    continue;
                }
                match cell::publish_summary_if_representative(&self.mesh, &self.identity, cell)
                    .await
                {
                    Ok(true) => tracing::info!(cell = %cell.cell(), "cell summary published"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot publish the cell summary"),
                }
                if keeper.held_down(epoch.now()) || self.fixed_cell_bits.is_some() {
                    continue;
                }
                let bits = cell.cell().prefix_bits();
                (bits, self.cell_bits_for_mesh_size(cell).await)
            };
            if let Some(to) = keeper.decide_move(epoch.now(), bits, wanted) {
                let (bits, estimate) = (to.prefix_bits, to.estimate);
                match self.move_cell(bits, estimate, info).await {
                    Ok(()) => eprintln!(
                        "novacron: moved to a cell of {bits} prefix bits (mesh of ~{estimate} nodes)"
                    ),
                    Err(e) => tracing::error!(error = %e, "cannot move to the new cell"),
                }
                told = None;
            }
        }
    }

    /// The prefix length the mesh-size estimate calls for, when it differs from the current
    /// cell's (with the estimate); the estimate pools this cell's live members and the
    /// summaries of other cells the node holds.
    async fn cell_bits_for_mesh_size(&self, cell: &CellMembership) -> Option<(u8, u64)> {
        let live = cell.members().await.iter().filter(|m| m.live).count() as u64;
        let bits = cell.cell().prefix_bits();
        let summaries = self.mesh.cell_summaries().await.ok()?;
        cell_size::next_cell_bits(bits, live, summaries, unix_now())
    }

    /// Listen addresses worth telling the cell (no unspecified ones).
    async fn advertised_addrs(&self) -> Vec<Multiaddr> {
        let mut addrs = self.mesh.listen_addrs().await.unwrap_or_default();
        addrs.retain(|a| {
            !a.iter().any(|p| {
                matches!(p, novacron_mesh::swarm::Protocol::Ip4(ip) if ip.is_unspecified())
                    || matches!(p, novacron_mesh::swarm::Protocol::Ip6(ip) if ip.is_unspecified())
            })
        });
        addrs
    }

    /// Stops serving and the swarm (once the API no longer holds the daemon). VMs still
    /// running keep running, to be adopted by the next start.
    pub async fn stop(self: Arc<Daemon>) {
        self.vms.release_all();
        match Arc::try_unwrap(self) {
            Ok(d) => {
                drop(d.exchange);
                if let Some(f) = lock(&d.forwarder).take() {
                    f.abort();
                }
                if let Some(cell) = d.cell.into_inner() {
                    cell.stop().await;
                }
                match Arc::try_unwrap(d.mesh) {
                    Ok(mesh) => mesh.stop().await,
                    Err(_) => tracing::warn!("the mesh is still shared; it stops with the process"),
                }
            }
            Err(_) => tracing::warn!("the API still holds the node; it stops with the process"),
        }
    }

    pub async fn status(&self) -> anyhow::Result<NodeStatus> {
        let wire = self.mesh.wire_bytes().await?;
        Ok(NodeStatus {
            peer_id: self.mesh.peer_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            listen_addrs: self
                .mesh
                .listen_addrs()
                .await?
                .iter()
                .map(|a| a.to_string())
                .collect(),
            connected_peers: self.mesh.connected_peers().await?.len(),
            routing_table_peers: self.mesh.routing_table_peers().await?.len(),
            wire_sent: wire.sent,
            wire_received: wire.received,
            wire_by_protocol: self
                .mesh
                .protocol_bytes()
                .into_iter()
                .map(|t| ProtocolBytesStatus {
                    protocol: t.protocol.to_string(),
                    sent: t.sent,
                    received: t.received,
                })
                .collect(),
            mesh_size_estimate: self.cell_counts().await.2,
            cell: self.cell_status().await,
            summaries: self.summaries().await?,
        })
    }

    pub(super) async fn cell_status(&self) -> Option<CellStatus> {
        let guard = self.cell.read().await;
        let cell = guard.as_ref()?;
        let mut members: Vec<MemberStatus> = cell
            .members()
            .await
            .into_iter()
            .map(|m| {
                let signed = cell::member_record_verified(
                    &m.peer,
                    m.info.signed_record.as_deref(),
                    &mut lock(&self.records),
                    unix_now(),
                );
                cell::member_status(&m.peer, m.live, signed, &m.info)
            })
            .collect();
        members.sort_by(|a, b| b.live.cmp(&a.live).then(a.peer_id.cmp(&b.peer_id)));
        let bytes = cell.cell_bytes();
        Some(CellStatus {
            id: cell.cell().to_string(),
            members,
            gossip_sent: bytes.sent,
            gossip_received: bytes.received,
            gossip_interval_ms: u64::try_from(cell.gossip_interval().as_millis())
                .unwrap_or(u64::MAX),
        })
    }

    async fn summaries(&self) -> anyhow::Result<Vec<SummaryStatus>> {
        Ok(self
            .mesh
            .cell_summaries()
            .await?
            .into_iter()
            .map(|r| {
                let s = &r.summary;
                SummaryStatus {
                    cell: format!("{}/{:x}", s.prefix_bits, s.prefix),
                    signer: novacron_mesh::swarm::PeerId::from_bytes(&r.signer)
                        .map_or_else(|_| "?".into(), |p| p.to_string()),
                    issued_at: r.issued_at,
                    members: s.members,
                    total_vcpus: s.total_vcpus,
                    free_vcpus: s.free_vcpus,
                    total_memory_mib: s.total_memory_bytes / (1024 * 1024),
                    free_slots: s.free_slots,
                    mean_load_permille: s.mean_load_permille.into(),
                }
            })
            .collect())
    }
}

/// Whether an event can change what the node has free (a VM started, stopped or moved, the
/// politeness decision, draining); progress reports of a running VM cannot, but cost
/// nothing to look at again.
fn capacity_may_change(event: &NodeEvent) -> bool {
    matches!(
        event,
        NodeEvent::Vm { .. } | NodeEvent::Politeness { .. } | NodeEvent::Draining { .. }
    )
}

/// Copies a membership's events into the daemon's channel until the task is aborted.
fn forward(cell: &CellMembership, to: broadcast::Sender<CellEvent>) -> JoinHandle<()> {
    let mut from = cell.subscribe();
    tokio::spawn(async move {
        loop {
            match from.recv().await {
                Ok(e) => {
                    let _ = to.send(e);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(n, "missed cell events");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

fn answer<T>(result: anyhow::Result<T>, wrap: impl FnOnce(T) -> Response) -> Response {
    match result {
        Ok(v) => wrap(v),
        Err(e) => Response::Error(format!("{e:#}")),
    }
}

impl Handler for Daemon {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => answer(self.status().await, |s| Response::Status(Box::new(s))),
            Request::PublishFile { path, name } => answer(
                chunk_sets::publish(&self.mesh, &self.exchange, &path, name).await,
                Response::Published,
            ),
            Request::Fetch { id, out } => answer(
                chunk_sets::fetch(&self.mesh, &self.exchange, &id, &out).await,
                |f| Response::Fetched(Box::new(f)),
            ),
        }
    }
}
