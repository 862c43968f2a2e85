//! Cell membership: chitchat (scuttlebutt gossip, phi-accrual failure detection, node
//! key-values) among the members of this node's cell, over the libp2p streams of
//! [`CellTransport`](super::cell_transport::CellTransport).
//!
//! [`CellMembership::start`] spawns chitchat with
//! - cluster id [`cluster_id`] of the node's cell (`cells::cell_id` at
//!   [`CellConfig::prefix_bits`]): chitchat answers a Syn of another cell with BadCluster;
//! - chitchat id: node id = the peer's [`ShortId`] (15 base32 characters of blake3 of the
//!   PeerId: every digest carries every member's id, and a PeerId costs ~3 times more),
//!   generation = start time in ms, gossip address = the short id's [`virtual_addr`];
//! - the key-values of a [`MemberInfo`] (capacity, load, reachability, version, up to 4
//!   listen addresses so members can dial each other) and [`PEER_KEY`] = the PeerId in
//!   base58, sent once per member in deltas, never in digests;
//! - the compressed digest (`ProtocolVersion::V1`).
//!
//! Every gossip interval a runner task reads chitchat's state into [`Member`]s (a node whose
//! `peer` key has not arrived yet, or does not hash to its short id, is not listed: it is
//! known from digests only and cannot be dialed until its delta arrives), registers
//! every member's virtual address with the transport and hands its gossiped addresses to the
//! swarm, emits [`CellEvent`]s, and finds cell peers chitchat does not know yet: connected
//! peers and routing-table peers of the same cell (every fifth round), plus
//! [`CellMembership::add_candidates`] (the round after they are handed in);
//! it asks chitchat to gossip with a few of those it does not know yet (each at most every
//! [`CellConfig::candidate_retry`]). A node that knows only its bootstrap peer so
//! reaches its whole cell: the bootstrap peer's digest names every member.
//!
//! What is authenticated: the sender of every frame (the libp2p connection), so a peer
//! cannot speak as another; node ids must be short ids inside the cell with their own virtual
//! address, and a `peer` key must name a PeerId with that short id (checked by the transport
//! on every frame and again here). What is not: what members say, about themselves or (relayed) about others —
//! chitchat state is unsigned hearsay, so any member can forge another's key-values or keep a
//! dead member's heartbeat going. Capacity figures are hints for placement, which must ask the
//! node. State is bounded by the transport's admission (members, generations, keys per
//! member, value sizes; see [`crate::cell_wire`]).
//!
//! How often it gossips: chitchat runs a fixed round tick ([`CellConfig::round_interval`]);
//! the transport's [`GossipPace`] admits the exchanges with members, at an interval that
//! follows the cell's size (the members chitchat holds, whose digest entries are what an
//! exchange costs; the runner reports them every tick), so a cell that grows or shrinks in
//! place stays within [`CellConfig::gossip_budget_bytes_per_s`].
//!
//! What this cannot do: the prefix length is fixed at start (the node moves to another
//! cell by starting another membership); a member that restarts within the dead-node grace
//! period is listed once, by its newest generation, while chitchat still holds the old one.

pub(crate) mod codec;
mod members;
mod probe;
mod view_cache;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatId, FailureDetectorConfig, ProtocolVersion,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use members::{
    build_members, diff_members, CellEvent, HeartbeatClock, Member, MemberInfo, NodeView,
    MAX_GOSSIPED_ADDRS,
};

use probe::Suspect;
use view_cache::ViewCache;

use super::cell_transport::{CellBytes, CellTransport, CellTransportConfig};
use super::clock::{unix_now, Epoch};
use super::{MeshNode, SwarmError};
use crate::cell_wire::{virtual_addr, ShortId, PEER_KEY};
use crate::cells::{cell_id, CellId, MAX_PREFIX_BITS};
use crate::gossip_pace::{GossipPace, DEFAULT_BUDGET_BYTES_PER_S};
use crate::suspicion::{ProbeOutcome, Suspicion, SuspicionConfig};
use crate::util::lock;

/// Default round tick of chitchat: how often it beats this node's heartbeat, re-checks every
/// member's phi and asks for [`FANOUT`](crate::gossip_pace::FANOUT) exchanges. How many of
/// those exchanges with members really start is the cell's
/// [`GossipPace`](crate::gossip_pace::GossipPace), whose interval follows the number of
/// members held (1 s up to ~60 members, ~3.4 s at 200). Measured with `novacron bench mesh --nodes 50`
/// (50 release-build processes, one cell, noisy 2-core machine): at 1.0 s, 14.3 KB/s per node
/// on the wire and failure detection p50 5.9 s (max 7.7); at 1.5 s, 9.8 KB/s and p50 8.6 s.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(1000);
/// Default phi threshold: a member is declared dead after 6 mean heartbeat arrival intervals
/// of silence (chitchat's phi = silence / mean interval). With a 1 s interval: failure
/// detection p50 5.9 s, max 7.7 s in the 50-process benchmark.
pub const PHI_THRESHOLD: f64 = 6.0;
/// A peer that may be in the cell, with addresses to dial it.
pub type Candidate = (PeerId, Vec<Multiaddr>);

/// Connected and routing-table peers are searched for cell members once per this many
/// rounds (and on every round with candidates handed in).
const DISCOVER_EVERY_TICKS: u64 = 5;
/// Most candidates kept waiting between ticks.
const MAX_PENDING_CANDIDATES: usize = 1024;
/// Forget the addresses handed to the swarm when this many peers are remembered.
const MAX_FED_PEERS: usize = 4096;

/// How a node runs its cell membership.
#[derive(Clone, Debug)]
pub struct CellConfig {
    /// Cell prefix length: 0 = one cell (meshes under ~300 nodes); see
    /// [`crate::cells::prefix_bits_for`].
    pub prefix_bits: u8,
    /// chitchat's round tick: its heartbeat, liveness checks and requests for exchanges (with
    /// 3 live members, maybe a dead one and a seed), of which the pace admits those with
    /// members.
    pub round_interval: Duration,
    /// Cell gossip bytes per second (sent + received) the pace keeps to.
    pub gossip_budget_bytes_per_s: u64,
    /// The cell's size as expected at start (the pace's first guess, until members are seen).
    pub expected_members: u64,
    /// Phi above which a member is declared dead.
    pub phi_threshold: f64,
    /// How long a dead member stays in chitchat's state before it is collected.
    pub dead_node_grace_period: Duration,
    /// How a member the detector holds dead is probed before it is reported dead.
    pub suspicion: SuspicionConfig,
    /// Peers to start from (chitchat seeds) with addresses to dial them.
    pub initial_candidates: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Candidates chitchat is asked to gossip with per tick.
    pub candidates_per_tick: usize,
    /// A candidate is asked again at most this often.
    pub candidate_retry: Duration,
    /// Events a slow subscriber may fall behind before it loses some.
    pub event_capacity: usize,
    pub transport: CellTransportConfig,
}

impl Default for CellConfig {
    fn default() -> Self {
        CellConfig {
            prefix_bits: 0,
            round_interval: GOSSIP_INTERVAL,
            gossip_budget_bytes_per_s: DEFAULT_BUDGET_BYTES_PER_S,
            expected_members: 1,
            phi_threshold: PHI_THRESHOLD,
            dead_node_grace_period: Duration::from_secs(10 * 60),
            suspicion: SuspicionConfig::default(),
            initial_candidates: Vec::new(),
            candidates_per_tick: 3,
            candidate_retry: Duration::from_secs(10),
            event_capacity: 256,
            transport: CellTransportConfig::default(),
        }
    }
}

/// Why cell membership could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("cell: prefix of {0} bits is over the maximum of {MAX_PREFIX_BITS}")]
    PrefixBits(u8),
    #[error("cell: gossip interval must be positive")]
    ZeroInterval,
    #[error("cell: cannot start chitchat: {0}")]
    Chitchat(String),
    #[error("cell: {0}")]
    Swarm(#[from] SwarmError),
}

/// The chitchat cluster id of a cell: `novacron-cell/<bits>/<prefix hex>`.
pub fn cluster_id(cell: CellId) -> String {
    format!("novacron-cell/{}/{:x}", cell.prefix_bits(), cell.prefix())
}

/// A running cell membership. Dropping it stops the runner (as [`CellMembership::stop`]
/// does, without waiting).
pub struct CellMembership {
    me: PeerId,
    cell: CellId,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    transport: CellTransport,
    candidates: Arc<Mutex<Vec<Candidate>>>,
    clock: Arc<Mutex<HeartbeatClock>>,
    /// The last read of chitchat's nodes (the runner's too).
    views: Arc<Mutex<ViewCache>>,
    /// Members the detector holds dead, probed before they are reported dead (the runner's
    /// too).
    suspicion: Arc<Mutex<Suspicion<Suspect>>>,
    /// What `clock` counts time from (the runner's too).
    epoch: Epoch,
    events: broadcast::Sender<CellEvent>,
    stop_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// Unix milliseconds of the wall clock: this start's chitchat generation.
fn now_ms() -> u64 {
    u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX)
}

impl CellMembership {
    /// Starts chitchat for `node`'s cell and the runner that feeds it peers. `node` is shared
    /// with the runner until [`CellMembership::stop`] returns.
    pub async fn start(
        node: Arc<MeshNode>,
        cfg: CellConfig,
        me_info: MemberInfo,
    ) -> Result<CellMembership, CellError> {
        if cfg.prefix_bits > MAX_PREFIX_BITS {
            return Err(CellError::PrefixBits(cfg.prefix_bits));
        }
        if cfg.round_interval.is_zero() {
            return Err(CellError::ZeroInterval);
        }
        let me = node.peer_id();
        let cell = cell_id(&me, cfg.prefix_bits);
        let epoch = Epoch::start();
        let pace = GossipPace::new(
            cfg.expected_members.max(1),
            cfg.gossip_budget_bytes_per_s,
            cfg.round_interval,
            epoch.now(),
        );
        let transport =
            CellTransport::new(me, node.stream_control(), cell, cfg.transport.clone(), pace);
        let my_addr = virtual_addr(&me);
        transport.register(me);

        let mut seeds = Vec::new();
        for (peer, addrs) in &cfg.initial_candidates {
            if *peer == me || !cell.contains(peer) {
                continue;
            }
            if let Some(addr) = transport.register(*peer) {
                seeds.push(addr.to_string());
            }
            if !addrs.is_empty() {
                node.add_peer_addresses(*peer, addrs.clone()).await?;
            }
        }
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: cfg.phi_threshold,
            initial_interval: cfg.round_interval,
            dead_node_grace_period: cfg.dead_node_grace_period,
            ..FailureDetectorConfig::default()
        };
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(ShortId::of(&me).as_str(), now_ms(), my_addr),
            cluster_id: cluster_id(cell),
            gossip_interval: cfg.round_interval,
            listen_addr: my_addr,
            seed_nodes: seeds,
            failure_detector_config,
            marked_for_deletion_grace_period: cfg.dead_node_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let mut key_values = me_info.to_key_values();
        key_values.push((PEER_KEY.to_owned(), me.to_base58()));
        let handle = spawn_chitchat(config, key_values, &transport)
            .await
            .map_err(|e| CellError::Chitchat(e.to_string()))?;
        let (events, _) = broadcast::channel(cfg.event_capacity.max(1));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut membership = CellMembership {
            me,
            cell,
            chitchat: handle.chitchat(),
            transport: transport.clone(),
            candidates: Arc::new(Mutex::new(Vec::new())),
            clock: Arc::new(Mutex::new(HeartbeatClock::default())),
            views: Arc::new(Mutex::new(ViewCache::default())),
            suspicion: Arc::new(Mutex::new(Suspicion::new(cfg.suspicion))),
            epoch,
            events: events.clone(),
            stop_tx,
            task: None,
        };
        let runner = Runner {
            me,
            cell,
            node,
            handle,
            transport,
            candidates: membership.candidates.clone(),
            clock: membership.clock.clone(),
            views: membership.views.clone(),
            suspicion: membership.suspicion.clone(),
            probes: JoinSet::new(),
            epoch: membership.epoch,
            events,
            cfg,
            prev: BTreeMap::new(),
            fed: HashMap::new(),
            tried: HashMap::new(),
            ticks: 0,
        };
        membership.task = Some(tokio::spawn(runner.run(stop_rx)));
        Ok(membership)
    }

    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// This node's cell.
    pub fn cell(&self) -> CellId {
        self.cell
    }

    /// Every member chitchat holds (this node included), one per peer (newest generation).
    pub async fn members(&self) -> Vec<Member> {
        let (views, _) = {
            let cc = self.chitchat.lock().await;
            lock(&self.views).read(&cc)
        };
        let mut members = {
            let mut clock = lock(&self.clock);
            build_members(self.me, views, &mut clock, self.epoch.now())
        };
        probe::apply(&lock(&self.suspicion), &mut members);
        members.into_values().collect()
    }

    /// Members the failure detector gave up on that answered a probe, so were not reported
    /// dead, since the start.
    pub fn refuted_suspicions(&self) -> u64 {
        lock(&self.suspicion).refuted()
    }

    /// Publishes new key-values for this node.
    pub async fn update_self(&self, info: MemberInfo) {
        let mut cc = self.chitchat.lock().await;
        let state = cc.self_node_state();
        for (k, v) in info.to_key_values() {
            if state.get(&k) != Some(v.as_str()) {
                state.set(k, v);
            }
        }
    }

    /// More peers that may be in the cell (e.g. from DHT provider records); the runner
    /// considers them on its next tick.
    pub fn add_candidates(&self, peers: Vec<(PeerId, Vec<Multiaddr>)>) {
        let mut pending = lock(&self.candidates);
        let room = MAX_PENDING_CANDIDATES.saturating_sub(pending.len());
        pending.extend(peers.into_iter().take(room));
    }

    /// Membership changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CellEvent> {
        self.events.subscribe()
    }

    /// Bytes of the cell protocol on the wire (frames with their length prefix).
    pub fn cell_bytes(&self) -> CellBytes {
        self.transport.bytes()
    }

    /// How many members chitchat holds (this node included), live or not, as of the
    /// runner's last round.
    pub fn members_held(&self) -> u64 {
        self.transport.members_held()
    }

    /// The interval of this node's exchanges with live members now (it follows the cell's
    /// live size).
    pub fn gossip_interval(&self) -> Duration {
        self.transport.gossip_interval()
    }

    /// Stops gossiping (no goodbye: others will declare this node dead) and waits for the
    /// runner, which drops its share of the [`MeshNode`].
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for CellMembership {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
    }
}

struct Runner {
    me: PeerId,
    cell: CellId,
    node: Arc<MeshNode>,
    handle: chitchat::ChitchatHandle,
    transport: CellTransport,
    candidates: Arc<Mutex<Vec<Candidate>>>,
    clock: Arc<Mutex<HeartbeatClock>>,
    views: Arc<Mutex<ViewCache>>,
    suspicion: Arc<Mutex<Suspicion<Suspect>>>,
    /// Probes running (aborted when the runner ends).
    probes: JoinSet<()>,
    epoch: Epoch,
    events: broadcast::Sender<CellEvent>,
    cfg: CellConfig,
    prev: BTreeMap<PeerId, Member>,
    /// Addresses already handed to the swarm, per peer.
    fed: HashMap<PeerId, Vec<Multiaddr>>,
    /// When chitchat was last asked to gossip with a candidate.
    tried: HashMap<PeerId, Instant>,
    /// Rounds so far.
    ticks: u64,
}

impl Runner {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.cfg.round_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if let Err(e) = self.tick().await {
                tracing::debug!(error = %e, "cell: the swarm has stopped");
                break;
            }
        }
        if let Err(e) = self.handle.shutdown().await {
            tracing::debug!(error = %e, "cell: chitchat ended with an error");
        }
        self.transport.close();
    }

    async fn feed(&mut self, peer: PeerId, addrs: &[Multiaddr]) -> Result<(), SwarmError> {
        if addrs.is_empty() || self.fed.get(&peer).is_some_and(|a| a == addrs) {
            return Ok(());
        }
        if self.fed.len() >= MAX_FED_PEERS {
            self.fed.clear();
        }
        self.fed.insert(peer, addrs.to_vec());
        self.node.add_peer_addresses(peer, addrs.to_vec()).await
    }

    /// Runs the suspicion's round over the detector's view, starts its probes and reports
    /// each member's liveness as the suspicion has it.
    fn suspect(&mut self, members: &mut BTreeMap<PeerId, Member>) {
        while self.probes.try_join_next().is_some() {}
        let views = members.values().filter(|m| !m.is_self).map(|m| {
            let was_live = self
                .prev
                .get(&m.peer)
                .is_some_and(|p| p.live && p.generation == m.generation);
            ((m.peer, m.generation), m.live, was_live)
        });
        let mut suspicion = lock(&self.suspicion);
        let probes = suspicion.round(views, self.epoch.now());
        probe::apply(&suspicion, members);
        drop(suspicion);
        for (peer, generation) in probes {
            tracing::debug!(%peer, "cell: the failure detector gave up on a member; probing it");
            let mut control = self.node.stream_control();
            let suspicion = self.suspicion.clone();
            let epoch = self.epoch;
            let limit = self.cfg.suspicion.probe_timeout;
            self.probes.spawn(async move {
                let outcome = probe::probe(&mut control, peer, limit).await;
                if outcome == ProbeOutcome::Answered {
                    tracing::info!(
                        %peer,
                        "cell: a member the failure detector gave up on answered a probe; \
                         still live"
                    );
                }
                lock(&suspicion).probed((peer, generation), outcome, epoch.now());
            });
        }
    }

    async fn tick(&mut self) -> Result<(), SwarmError> {
        let (views, held) = {
            let chitchat = self.handle.chitchat();
            let cc = chitchat.lock().await;
            lock(&self.views).read(&cc)
        };
        let mut members = {
            let mut clock = lock(&self.clock);
            build_members(self.me, views, &mut clock, self.epoch.now())
        };
        self.suspect(&mut members);
        self.transport.retain_admitted(&held);
        let same_members = members.len() == self.prev.len()
            && members.keys().zip(self.prev.keys()).all(|(a, b)| a == b);
        if !same_members {
            if let Some(interval) = self.transport.observe_members(members.keys().copied()) {
                tracing::info!(
                    ?interval,
                    members = members.len(),
                    "cell: gossip interval follows the cell's size"
                );
            }
        }
        // Only members new since the last round, or whose key-values changed (the view cache
        // made a new `info`): the transport's map keeps what it was given.
        for m in members.values().filter(|m| !m.is_self) {
            let unchanged = self
                .prev
                .get(&m.peer)
                .is_some_and(|p| Arc::ptr_eq(&p.info, &m.info));
            if unchanged {
                continue;
            }
            self.transport.register(m.peer);
            self.feed(m.peer, &m.info.addrs).await?;
        }
        for event in diff_members(&self.prev, &members) {
            tracing::debug!(?event, "cell");
            let _ = self.events.send(event);
        }
        self.prev = members;

        let mut found: Vec<Candidate> = std::mem::take(&mut *lock(&self.candidates));
        self.ticks = self.ticks.wrapping_add(1);
        // Connected and routing-table peers change slowly: asking the swarm for them every
        // round costs a full cell's worth of work per second for nothing.
        if found.is_empty() && self.ticks % DISCOVER_EVERY_TICKS != 1 {
            return Ok(());
        }
        found.extend(
            self.node
                .connected_peers()
                .await?
                .into_iter()
                .map(|p| (p, Vec::new())),
        );
        found.extend(self.node.routing_table().await?);
        let mut waiting = BTreeSet::new();
        for (peer, addrs) in found {
            if peer == self.me || !self.cell.contains(&peer) {
                continue;
            }
            if self.transport.register(peer).is_none() {
                continue;
            }
            self.feed(peer, &addrs).await?;
            // Only peers chitchat does not know: it gossips with its dead members itself, and
            // asking it again for them would add load exactly when a loaded cell flaps.
            if !self.prev.contains_key(&peer) {
                waiting.insert(peer);
            }
        }
        let now = Instant::now();
        let retry = self.cfg.candidate_retry;
        self.tried
            .retain(|_, at| now.saturating_duration_since(*at) < retry);
        let picked: Vec<PeerId> = waiting
            .into_iter()
            .filter(|p| !self.tried.contains_key(p))
            .take(self.cfg.candidates_per_tick)
            .collect();
        for peer in picked {
            self.tried.insert(peer, now);
            if self.handle.gossip(virtual_addr(&peer)).is_err() {
                break;
            }
        }
        Ok(())
    }
}
