//! The mesh over hours of virtual time: hosts come and go ([`crate::churn`]), servers keep
//! their routing tables on the node's refresh schedule, and lookups run against the tables
//! as they are ([`crate::kademlia`]).
//!
//! Per node the run holds: up or not, its host cluster, a random stream, an epoch (so a
//! refresh scheduled before the node left is dropped), its refresh schedule and, for a
//! server, its table.

use std::time::Duration;

use novacron_mesh::table_refresh::TableRefresh;

use crate::churn::Churn;
use crate::kademlia::{Dht, Lookup, NodeId};
use crate::network::Network;
use crate::owner::{Next, OwnerState, OwnerTotals, Owners};
use crate::queue::EventQueue;
use crate::rng::SimRng;
use crate::scenario::Scenario;
use crate::time::{SimDuration, SimTime};

const NODE_STREAM: u64 = 0x6e6f_6465_0000_0001;
const LOOKUP_STREAM: u64 = 0x6c6f_6f6b_0000_0001;
const DHT_STREAM: u64 = 0x6468_7400_0000_0001;

/// Samples of the mesh's state per run.
const SAMPLES: u32 = 96;
/// Nodes whose tables a sample inspects (the first that are up, in node order).
const SAMPLED_TABLES: usize = 2_000;

/// The mesh's state at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at_h: f64,
    pub up: u64,
    pub servers_up: u64,
    /// Entries per table, over sampled live nodes.
    pub table_entries_mean: f64,
    /// Share of those entries whose host is down.
    pub stale_fraction: f64,
}

/// What a run of the overlay did.
#[derive(Clone, Debug, PartialEq)]
pub struct OverlayOutput {
    pub hours: f64,
    pub lookups: Vec<Lookup>,
    pub samples: Vec<Sample>,
    /// Hosts that went down, and came up, during the run.
    pub departures: u64,
    pub arrivals: u64,
    pub refreshes: u64,
    pub events: u64,
    /// Node-hours up over the run / (nodes * hours).
    pub availability: f64,
    /// Bytes of per-node state the run holds (tables, keys, schedules), per node.
    pub state_bytes_per_node: f64,
    /// The owners and the politeness decisions, when the scenario has owners.
    pub owners: Option<OwnerTotals>,
}

#[derive(Clone, Copy, Debug)]
enum Event {
    /// The node goes down, or comes up.
    Change(NodeId),
    /// A routing-table refresh of the node, in the epoch it was scheduled in.
    Refresh(NodeId, u32),
    /// The owner of the node comes or goes (in the node's epoch).
    OwnerToggle(NodeId, u32),
    /// A look at the node where its politeness decision may change (the look's generation).
    OwnerLook(NodeId, u32),
    Lookup,
    Sample,
}

struct NodeState {
    cluster: u8,
    epoch: u32,
    rng: SimRng,
    refresh: Option<TableRefresh>,
    owner: Option<Box<OwnerState>>,
    /// The generation of the node's pending owner look; older looks are dropped.
    look: u32,
}

fn as_duration(t: SimTime) -> Duration {
    Duration::from_micros(t.0)
}

fn from_duration(d: Duration) -> SimTime {
    SimTime(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What a run drives: the nodes and, when the scenario has one, the DHT.
struct Mesh<'a> {
    nodes: Vec<NodeState>,
    up: Vec<bool>,
    churn: Option<Churn>,
    dht: Option<Dht>,
    owners: Option<Owners>,
    owner_totals: OwnerTotals,
    refresh_every: Duration,
    net: &'a Network,
}

impl Mesh<'_> {
    /// The node came up (or is up at the start): it bootstraps its table (a NATed client
    /// too: it looks up through servers, it is only never in a table itself).
    fn arrive(&mut self, n: NodeId, now: SimTime, queue: &mut EventQueue<Event>) {
        let node = &mut self.nodes[n as usize];
        node.epoch = node.epoch.wrapping_add(1);
        if let Some(owners) = &self.owners {
            let (st, next) = owners.arrive(now, &mut node.rng, &mut self.owner_totals);
            node.owner = Some(Box::new(st));
            schedule_owner(queue, n, node, next);
        }
        let Some(dht) = &mut self.dht else { return };
        dht.refresh(n, self.up.as_slice(), &mut node.rng);
        let seed = node.rng.next_u64();
        let schedule = TableRefresh::new(self.refresh_every, as_duration(now), seed);
        queue.schedule(
            from_duration(schedule.next_at()),
            Event::Refresh(n, node.epoch),
        );
        node.refresh = Some(schedule);
    }

    fn leave(&mut self, n: NodeId, now: SimTime) {
        let node = &mut self.nodes[n as usize];
        node.epoch = node.epoch.wrapping_add(1);
        node.refresh = None;
        if let (Some(owners), Some(mut st)) = (&self.owners, node.owner.take()) {
            owners.leave(&mut st, now, &mut self.owner_totals);
        }
        if let Some(dht) = &mut self.dht {
            dht.clear(n);
        }
    }

    fn sample(&self, now: SimTime) -> Sample {
        let up = self.up.iter().filter(|&&u| u).count() as u64;
        let (mut servers_up, mut entries, mut stale, mut tables) = (0u64, 0u64, 0u64, 0usize);
        if let Some(dht) = &self.dht {
            for n in 0..self.up.len() as NodeId {
                if !self.up[n as usize] {
                    continue;
                }
                servers_up += u64::from(dht.is_server(n));
                if tables < SAMPLED_TABLES {
                    tables += 1;
                    let t = dht.table(n);
                    entries += t.len() as u64;
                    stale += t.iter().filter(|&&e| !self.up[e as usize]).count() as u64;
                }
            }
        }
        Sample {
            at_h: now.0 as f64 / 3_600e6,
            up,
            servers_up,
            table_entries_mean: entries as f64 / tables.max(1) as f64,
            stale_fraction: stale as f64 / entries.max(1) as f64,
        }
    }

    /// A lookup of a random key from a random live node (none if nobody is up).
    fn lookup(&self, rng: &mut SimRng) -> Option<Lookup> {
        let dht = self.dht.as_ref()?;
        let n = self.up.len() as u64;
        let from = (0..1_000)
            .map(|_| rng.below(n) as NodeId)
            .find(|&f| self.up[f as usize])?;
        let target = rng.next_u64();
        Some(dht.lookup(from, target, self.up.as_slice(), self.net, rng))
    }
}

fn schedule_owner(queue: &mut EventQueue<Event>, n: NodeId, node: &mut NodeState, next: Next) {
    queue.schedule(next.toggle_at, Event::OwnerToggle(n, node.epoch));
    schedule_look(queue, n, node, next.observe_at);
}

fn schedule_look(
    queue: &mut EventQueue<Event>,
    n: NodeId,
    node: &mut NodeState,
    at: Option<SimTime>,
) {
    node.look = node.look.wrapping_add(1);
    if let Some(at) = at {
        queue.schedule(at, Event::OwnerLook(n, node.look));
    }
}

/// Runs the overlay of `scenario` for its `run.hours`.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    net: &Network,
    progress: &mut dyn FnMut(SimTime, SimTime, u64),
) -> OverlayOutput {
    let nodes = scenario.run.nodes as u32;
    let hours = scenario.run.hours.unwrap_or(1.0);
    let end = SimTime((hours * 3_600e6) as u64);
    let churn = scenario.churn.as_ref().map(Churn::from_section);
    let dht = scenario.kademlia.as_ref().map(|k| {
        let mut rng = SimRng::for_stream(seed, DHT_STREAM);
        Dht::new(k, nodes, scenario.network.behind_nat_fraction, &mut rng)
    });
    let refresh_every = scenario
        .kademlia
        .as_ref()
        .map_or(Duration::from_secs(600), |k| {
            Duration::from_secs_f64(k.refresh_minutes * 60.0)
        });
    let mut queue: EventQueue<Event> = EventQueue::new();
    let mut mesh = Mesh {
        nodes: Vec::with_capacity(nodes as usize),
        up: Vec::with_capacity(nodes as usize),
        churn,
        dht,
        owners: scenario.owner.as_ref().map(Owners::from_section),
        owner_totals: OwnerTotals::default(),
        refresh_every,
        net,
    };
    for n in 0..nodes {
        let mut rng = SimRng::for_stream(seed ^ NODE_STREAM, u64::from(n));
        let (up, cluster) = match &mesh.churn {
            Some(churn) => {
                let cluster = churn.draw_cluster(&mut rng);
                let start = churn.start(cluster, &mut rng);
                queue.schedule(SimTime::ZERO + start.remaining, Event::Change(n));
                (start.up, cluster)
            }
            None => (true, 0),
        };
        mesh.nodes.push(NodeState {
            cluster,
            epoch: 0,
            rng,
            refresh: None,
            owner: None,
            look: 0,
        });
        mesh.up.push(up);
    }
    for n in 0..nodes {
        if mesh.up[n as usize] {
            mesh.arrive(n, SimTime::ZERO, &mut queue);
        }
    }
    let mut lookup_rng = SimRng::for_stream(seed, LOOKUP_STREAM);
    let lookups = scenario.kademlia.as_ref().map_or(0, |k| k.lookups);
    for _ in 0..lookups {
        let at = SimTime(lookup_rng.below(end.0.max(1)));
        queue.schedule(at, Event::Lookup);
    }
    for i in 0..=SAMPLES {
        queue.schedule(
            SimTime(end.0 / u64::from(SAMPLES) * u64::from(i)),
            Event::Sample,
        );
    }
    let mut out = OverlayOutput {
        hours,
        lookups: Vec::with_capacity(lookups as usize),
        samples: Vec::with_capacity(SAMPLES as usize + 1),
        departures: 0,
        arrivals: 0,
        refreshes: 0,
        events: 0,
        availability: 0.0,
        state_bytes_per_node: 0.0,
        owners: None,
    };
    let mut up_count = mesh.up.iter().filter(|&&u| u).count() as u64;
    let mut up_us: u128 = 0;
    let mut last = SimTime::ZERO;
    let report_every = SimDuration((end.0 / 200).max(1));
    let mut next_report = SimTime::ZERO + report_every;
    while let Some((now, event)) = queue.pop() {
        if now > end {
            break;
        }
        up_us += u128::from(up_count) * u128::from(now.since(last).0);
        last = now;
        out.events += 1;
        match event {
            Event::Change(n) => {
                let Some(churn) = &mesh.churn else { continue };
                let node = &mut mesh.nodes[n as usize];
                let up = !mesh.up[n as usize];
                mesh.up[n as usize] = up;
                let next = if up {
                    churn.up_time(node.cluster, &mut node.rng)
                } else {
                    churn.down_time(node.cluster, &mut node.rng)
                };
                queue.schedule(now + next, Event::Change(n));
                if up {
                    up_count += 1;
                    out.arrivals += 1;
                    mesh.arrive(n, now, &mut queue);
                } else {
                    up_count -= 1;
                    out.departures += 1;
                    mesh.leave(n, now);
                }
            }
            Event::Refresh(n, epoch) => {
                let node = &mut mesh.nodes[n as usize];
                if node.epoch != epoch || !mesh.up[n as usize] {
                    continue;
                }
                let Some(schedule) = node.refresh.as_mut() else {
                    continue;
                };
                if schedule.due(as_duration(now)) {
                    if let Some(dht) = &mut mesh.dht {
                        dht.refresh(n, mesh.up.as_slice(), &mut node.rng);
                        out.refreshes += 1;
                    }
                }
                queue.schedule(from_duration(schedule.next_at()), Event::Refresh(n, epoch));
            }
            Event::OwnerToggle(n, epoch) => {
                let node = &mut mesh.nodes[n as usize];
                let (Some(owners), Some(st)) = (&mesh.owners, node.owner.as_mut()) else {
                    continue;
                };
                if node.epoch != epoch {
                    continue;
                }
                let next = owners.toggle(st, now, &mut node.rng, &mut mesh.owner_totals);
                schedule_owner(&mut queue, n, node, next);
            }
            Event::OwnerLook(n, look) => {
                let node = &mut mesh.nodes[n as usize];
                let (Some(owners), Some(st)) = (&mesh.owners, node.owner.as_mut()) else {
                    continue;
                };
                if node.look != look {
                    continue;
                }
                let next = owners.tick(st, now, &mut mesh.owner_totals);
                schedule_look(&mut queue, n, node, next);
            }
            Event::Lookup => {
                if let Some(l) = mesh.lookup(&mut lookup_rng) {
                    out.events += u64::from(l.queries) * 2;
                    out.lookups.push(l);
                }
            }
            Event::Sample => out.samples.push(mesh.sample(now)),
        }
        if now >= next_report {
            next_report = now + report_every;
            progress(now, end, out.events);
        }
    }
    up_us += u128::from(up_count) * u128::from(end.since(last).0);
    if let Some(owners) = &mesh.owners {
        for node in &mut mesh.nodes {
            if let Some(st) = node.owner.as_mut() {
                owners.leave(st, end, &mut mesh.owner_totals);
            }
        }
        out.owners = Some(mesh.owner_totals);
    }
    out.availability = up_us as f64 / (f64::from(nodes) * end.0.max(1) as f64);
    let per_node_fixed = std::mem::size_of::<NodeState>() + 1;
    let owner_bytes =
        mesh.nodes.iter().filter(|n| n.owner.is_some()).count() * std::mem::size_of::<OwnerState>();
    let dht_bytes = mesh.dht.as_ref().map_or(0, Dht::state_bytes);
    out.state_bytes_per_node = (dht_bytes as f64
        + (per_node_fixed * nodes as usize + owner_bytes) as f64)
        / f64::from(nodes);
    progress(end, end, out.events);
    out
}
