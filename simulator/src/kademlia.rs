//! The DHT: each server's Kademlia routing table and iterative lookups, the node's way.
//!
//! - **Keys** are 64 random bits per node (libp2p hashes a `PeerId` to 256 bits; with at
//!   most 10^7 nodes the first 64 decide every comparison a run makes, and two nodes share
//!   a key with probability below 10^-5). A bucket is the length of the prefix a peer's key
//!   shares with the owner's.
//! - **Tables** hold up to `k` live servers per bucket, chosen at random among those the
//!   bucket's key range holds (what a node that bootstrapped and refreshed has heard of),
//!   each admitted by the node's subnet cap ([`novacron_mesh::subnet_cap::verdict`]). A
//!   table keeps its old live entries (Kademlia's preference for long-lived contacts) and
//!   fills vacancies at each refresh, on the node's jittered schedule
//!   ([`novacron_mesh::table_refresh::TableRefresh`]); between refreshes, entries of hosts
//!   that left stay, and lookups time out on them. NATed nodes are clients: they look up
//!   but are in no table. A node that comes back bootstraps a new table.
//! - **Lookups** follow libp2p's `ClosestPeersIter`: start from the `k` closest entries of
//!   the own table, keep `alpha` queries in flight, take each answer's `k` closest, stall
//!   to `k` in flight after `alpha` answers without progress, and finish when the `k`
//!   closest known peers have all answered. A query to a host that is down, or whose
//!   request or answer is lost, is unresponsive after the peer timeout.
//!
//! Hops: a peer from the own table is one hop away; one learned from a peer `h` hops away
//! is `h + 1`. A lookup's **hops** is the largest among the `k` peers it returns (how deep
//! the walk went to find them); its **walk hops** the largest among all peers that
//! answered (ProbeLab's measure of the IPFS DHT, mesh-models.toml `[kademlia]`).
//!
//! Limits: a lookup runs against the tables as they are when it starts (hosts do not come
//! or go during its few seconds); a refresh fills a table directly rather than through the
//! lookups that would find the same peers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use novacron_mesh::subnet_cap::{classify_ip, verdict, Admission, SubnetLimits};

use crate::network::Network;
use crate::rng::SimRng;
use crate::scenario::KademliaSection;
use crate::time::{SimDuration, SimTime};

/// Addresses of simulated subnets start at 11.0.0.0: global unicast for the subnet cap.
const SUBNET_BASE: u32 = 0x0B00_0000;

/// The first `len` bits of `key`, as a number.
fn prefix_of(key: u64, len: u32) -> u64 {
    if len == 0 {
        0
    } else {
        key >> (64 - len)
    }
}

/// The length of the prefix two keys share: the bucket one is in for the other.
fn cpl(a: u64, b: u64) -> u32 {
    (a ^ b).leading_zeros()
}

/// The node's verdict on a peer of simulated subnet `subnet` when the table holds `others`
/// other peers of it.
fn verdict_for(limits: &SubnetLimits, subnet: u32, others: usize) -> Admission {
    let ip = std::net::Ipv4Addr::from(SUBNET_BASE + (subnet << 8) + 1);
    verdict(classify_ip(ip.into(), limits), others, limits)
}

/// A node's index in the run.
pub type NodeId = u32;

/// The DHT of a run: every node's key and every live node's table.
pub struct Dht {
    k: usize,
    alpha: usize,
    peer_timeout: SimDuration,
    keys: Vec<u64>,
    /// Node ids, sorted by key.
    by_key: Vec<NodeId>,
    /// Keys in that order.
    sorted_keys: Vec<u64>,
    server: Vec<bool>,
    /// Each node's /24 (an index), when the scenario crowds subnets.
    subnet: Option<Vec<u32>>,
    /// Nodes per /24.
    subnet_population: Vec<u32>,
    limits: SubnetLimits,
    /// Each live node's entries (servers only), ordered by bucket (shortest shared prefix
    /// first).
    tables: Vec<Vec<NodeId>>,
}

/// What one lookup did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lookup {
    pub from: NodeId,
    pub target: u64,
    pub hops: u32,
    pub walk_hops: u32,
    pub latency: SimDuration,
    pub queries: u32,
    pub unresponsive: u32,
    /// Whether the `k` closest known peers all answered (not: ran out of peers).
    pub finished: bool,
    /// Whether the closest live server to the key is among the peers returned.
    pub found_closest: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum PeerState {
    NotContacted,
    Waiting,
    Succeeded,
    Unresponsive,
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    node: NodeId,
    distance: u64,
    depth: u32,
    state: PeerState,
}

impl Dht {
    /// Keys, server roles and subnets for `nodes` nodes; tables empty.
    pub fn new(section: &KademliaSection, nodes: u32, behind_nat: f64, rng: &mut SimRng) -> Dht {
        let keys: Vec<u64> = (0..nodes).map(|_| rng.next_u64()).collect();
        let mut by_key: Vec<NodeId> = (0..nodes).collect();
        by_key.sort_by_key(|&n| keys[n as usize]);
        let sorted_keys = by_key.iter().map(|&n| keys[n as usize]).collect();
        let server = (0..nodes).map(|_| !rng.chance(behind_nat)).collect();
        let (subnet, subnet_population) = match section.subnets {
            Some(count) => {
                let of: Vec<u32> = (0..nodes).map(|_| rng.below(count) as u32).collect();
                let mut population = vec![0u32; count as usize];
                for &s in &of {
                    population[s as usize] += 1;
                }
                (Some(of), population)
            }
            None => (None, Vec::new()),
        };
        let limits = SubnetLimits {
            per_ipv4_24: section.per_subnet_limit,
            ..SubnetLimits::default()
        };
        Dht {
            k: section.k as usize,
            alpha: section.alpha as usize,
            peer_timeout: SimDuration::from_millis_f64(section.peer_timeout_s * 1e3),
            keys,
            by_key,
            sorted_keys,
            server,
            subnet,
            subnet_population,
            limits,
            tables: vec![Vec::new(); nodes as usize],
        }
    }

    pub fn key(&self, node: NodeId) -> u64 {
        self.keys[node as usize]
    }

    pub fn is_server(&self, node: NodeId) -> bool {
        self.server[node as usize]
    }

    pub fn table(&self, node: NodeId) -> &[NodeId] {
        &self.tables[node as usize]
    }

    /// Forgets `node`'s table (it went down; its table lived in memory).
    pub fn clear(&mut self, node: NodeId) {
        self.tables[node as usize] = Vec::new();
    }

    /// Bytes of routing state the run holds, all nodes together.
    pub fn state_bytes(&self) -> u64 {
        let tables: usize = self
            .tables
            .iter()
            .map(|t| std::mem::size_of::<Vec<NodeId>>() + t.capacity() * 4)
            .sum();
        let per_node = 8 + 4 + 8 + 1 + self.subnet.as_ref().map_or(0, |_| 4);
        (tables + per_node * self.keys.len()) as u64
    }

    /// Positions in key order of the keys whose first `len` bits are `prefix`.
    fn prefix_range(&self, prefix: u64, len: u32) -> std::ops::Range<usize> {
        if len == 0 {
            return 0..self.sorted_keys.len();
        }
        let shift = 64 - len;
        let lo_key = prefix << shift;
        let hi_key = lo_key | u64::MAX.checked_shr(len).unwrap_or(0);
        let lo = self.sorted_keys.partition_point(|&k| k < lo_key);
        let hi = self.sorted_keys.partition_point(|&k| k <= hi_key);
        lo..hi
    }

    /// Whether the subnet cap admits `candidate` into a table that holds `entries`.
    fn admits(&self, candidate: NodeId, entries: &[NodeId]) -> bool {
        let Some(subnet_of) = &self.subnet else {
            // Every node in a /24 of its own: no subnet ever holds another peer.
            return verdict_for(&self.limits, 0, 0) == Admission::Admit;
        };
        let s = subnet_of[candidate as usize];
        let others = if self.subnet_population[s as usize] as usize <= self.limits.per_ipv4_24 {
            // Fewer nodes in the subnet than the cap: it cannot be full.
            0
        } else {
            entries
                .iter()
                .filter(|&&e| subnet_of[e as usize] == s)
                .count()
        };
        verdict_for(&self.limits, s, others) == Admission::Admit
    }

    /// Fills `node`'s table: its live entries stay, each bucket's vacancies are filled
    /// with live servers from the bucket's key range.
    pub fn refresh(&mut self, node: NodeId, up: &[bool], rng: &mut SimRng) {
        let me = self.keys[node as usize];
        let old = std::mem::take(&mut self.tables[node as usize]);
        let mut table: Vec<NodeId> = Vec::with_capacity(old.len().max(self.k * 4));
        let mut old_at = 0;
        let Some(deepest) = self.deepest_bucket(me) else {
            // The only node.
            self.tables[node as usize] = table;
            return;
        };
        for bucket in 0..=deepest {
            let start = table.len();
            while old_at < old.len() && cpl(me, self.keys[old[old_at] as usize]) == bucket {
                let e = old[old_at];
                if up[e as usize] && self.server[e as usize] {
                    table.push(e);
                }
                old_at += 1;
            }
            if table.len() - start < self.k {
                let range = self.prefix_range(prefix_of(me, bucket + 1) ^ 1, bucket + 1);
                self.fill_bucket(&mut table, start, range, up, rng);
            }
        }
        self.tables[node as usize] = table;
    }

    /// The deepest bucket any other node falls in for `me`: the longest prefix `me` shares
    /// with a key next to it in key order (`None` when no other node exists).
    fn deepest_bucket(&self, me: u64) -> Option<u32> {
        let pos = self.sorted_keys.partition_point(|&k| k < me);
        let before = pos.checked_sub(1).map(|i| self.sorted_keys[i]);
        // Skip our own key (and, with 64-bit keys, the vanishing chance of a twin).
        let after = self.sorted_keys[pos..].iter().find(|&&k| k != me).copied();
        before
            .into_iter()
            .chain(after)
            .map(|k| cpl(me, k).min(63))
            .max()
    }

    /// Adds live servers from `range` to the bucket that starts at `table[start]` until it
    /// holds `k`.
    fn fill_bucket(
        &self,
        table: &mut Vec<NodeId>,
        start: usize,
        range: std::ops::Range<usize>,
        up: &[bool],
        rng: &mut SimRng,
    ) {
        let size = range.len();
        if size == 0 {
            return;
        }
        let consider = |table: &mut Vec<NodeId>, pos: usize| {
            let n = self.by_key[pos];
            if up[n as usize]
                && self.server[n as usize]
                && !table[start..].contains(&n)
                && self.admits(n, table)
            {
                table.push(n);
            }
        };
        if size > 4 * self.k {
            // A wide range: random picks, most of them new.
            for _ in 0..8 * self.k {
                if table.len() - start >= self.k {
                    return;
                }
                let pos = range.start + rng.below(size as u64) as usize;
                consider(table, pos);
            }
        }
        // A narrow range, or a wide one with few live servers: walk it from a random place.
        let offset = rng.below(size as u64) as usize;
        for i in 0..size {
            if table.len() - start >= self.k {
                return;
            }
            consider(table, range.start + (offset + i) % size);
        }
    }

    /// The `k` entries of `node`'s table closest to `target`, closest first, into `out`.
    ///
    /// The table is in bucket order, and buckets order by distance to the target: with `b`
    /// the prefix the target shares with the owner, bucket `b`'s entries share `b + 1` bits
    /// with the target (closest); all deeper buckets' entries share exactly `b` (next); a
    /// shallower bucket `j` shares `j` bits (then `b - 1`, `b - 2`, ...). So only the
    /// buckets that supply the `k` are sorted.
    fn closest_entries(&self, node: NodeId, target: u64, out: &mut Vec<(u64, NodeId)>) {
        out.clear();
        let me = self.keys[node as usize];
        let table = &self.tables[node as usize];
        let bucket_of = |e: &NodeId| cpl(me, self.keys[*e as usize]);
        let b = cpl(me, target);
        let lo = table.partition_point(|e| bucket_of(e) < b);
        let hi = table.partition_point(|e| bucket_of(e) <= b);
        let k = self.k;
        let take = |out: &mut Vec<(u64, NodeId)>, segment: &[NodeId]| {
            let start = out.len();
            out.extend(segment.iter().map(|&e| (self.keys[e as usize] ^ target, e)));
            out[start..].sort_unstable();
            out.truncate(k);
        };
        take(out, &table[lo..hi]);
        if out.len() < k {
            take(out, &table[hi..]);
        }
        let mut end = lo;
        while out.len() < k && end > 0 {
            let j = bucket_of(&table[end - 1]);
            let start = table[..end].partition_point(|e| bucket_of(e) < j);
            take(out, &table[start..end]);
            end = start;
        }
    }

    /// The live server closest to `target`, other than `exclude`.
    pub fn closest_live(&self, target: u64, up: &[bool], exclude: NodeId) -> Option<NodeId> {
        // The keys sharing `len` bits with the target are one range; the closest live
        // server is in the narrowest such range that holds one.
        for len in (0..=64u32).rev() {
            let range = self.prefix_range(prefix_of(target, len), len);
            let best = range
                .map(|pos| self.by_key[pos])
                .filter(|&n| n != exclude && up[n as usize] && self.server[n as usize])
                .min_by_key(|&n| self.keys[n as usize] ^ target);
            if best.is_some() {
                return best;
            }
        }
        None
    }

    /// A lookup of `target` by `from` against the tables as they are (its latency counts
    /// from its start). `up`: whether each node is up.
    pub fn lookup(
        &self,
        from: NodeId,
        target: u64,
        up: &[bool],
        net: &Network,
        rng: &mut SimRng,
    ) -> Lookup {
        let mut scratch = Vec::with_capacity(self.k * 8);
        self.closest_entries(from, target, &mut scratch);
        let mut peers: Vec<Candidate> = scratch
            .iter()
            .map(|&(distance, node)| Candidate {
                node,
                distance,
                depth: 1,
                state: PeerState::NotContacted,
            })
            .collect();
        let mut in_flight: BinaryHeap<Reverse<(SimTime, u64, bool)>> = BinaryHeap::new();
        let mut now = SimTime::ZERO;
        let mut waiting = 0usize;
        let mut no_progress = 0usize;
        let mut stalled = false;
        let (mut queries, mut unresponsive) = (0u32, 0u32);
        let mut finished = false;
        loop {
            // libp2p's `next`: walk the peers closest first; start queries while below the
            // parallelism; finish when the k closest all answered.
            let parallelism = if stalled { self.k } else { self.alpha };
            let mut succeeded_run = Some(0usize);
            let mut i = 0;
            while i < peers.len() {
                match peers[i].state {
                    PeerState::Waiting => succeeded_run = None,
                    PeerState::Succeeded => {
                        if let Some(c) = succeeded_run.as_mut() {
                            *c += 1;
                            if *c >= self.k {
                                finished = true;
                                break;
                            }
                        }
                    }
                    PeerState::NotContacted if waiting < parallelism => {
                        let p = &mut peers[i];
                        p.state = PeerState::Waiting;
                        waiting += 1;
                        queries += 1;
                        let answers = up[p.node as usize]
                            && self.server[p.node as usize]
                            && !net.lost(rng)
                            && !net.lost(rng);
                        let rtt = net.rtt(u64::from(from), u64::from(p.node));
                        let answers = answers && rtt < self.peer_timeout;
                        let after = if answers { rtt } else { self.peer_timeout };
                        in_flight.push(Reverse((now + after, p.distance, answers)));
                        succeeded_run = None;
                    }
                    PeerState::NotContacted => break,
                    PeerState::Unresponsive => {}
                }
                i += 1;
            }
            if finished {
                break;
            }
            let Some(Reverse((at, distance, answers))) = in_flight.pop() else {
                break;
            };
            now = at;
            waiting -= 1;
            let Ok(idx) = peers.binary_search_by_key(&distance, |p| p.distance) else {
                continue;
            };
            let node = peers[idx].node;
            if !answers {
                peers[idx].state = PeerState::Unresponsive;
                unresponsive += 1;
                continue;
            }
            peers[idx].state = PeerState::Succeeded;
            let depth = peers[idx].depth + 1;
            self.closest_entries(node, target, &mut scratch);
            let known_before = peers.len();
            let mut progress = false;
            for &(d, n) in &scratch {
                if n == from {
                    continue;
                }
                if let Err(at) = peers.binary_search_by_key(&d, |p| p.distance) {
                    peers.insert(
                        at,
                        Candidate {
                            node: n,
                            distance: d,
                            depth,
                            state: PeerState::NotContacted,
                        },
                    );
                    progress |= at == 0 || known_before < self.k;
                }
            }
            if progress {
                no_progress = 0;
                stalled = false;
            } else if !stalled {
                no_progress += 1;
                stalled = no_progress >= self.alpha;
            }
        }
        let result: Vec<&Candidate> = peers
            .iter()
            .filter(|p| p.state == PeerState::Succeeded)
            .take(self.k)
            .collect();
        let closest = self.closest_live(target, up, from);
        Lookup {
            from,
            target,
            hops: result.iter().map(|p| p.depth).max().unwrap_or(0),
            walk_hops: peers
                .iter()
                .filter(|p| p.state == PeerState::Succeeded)
                .map(|p| p.depth)
                .max()
                .unwrap_or(0),
            latency: now.since(SimTime::ZERO),
            queries,
            unresponsive,
            finished,
            found_closest: closest.is_some_and(|c| result.iter().any(|p| p.node == c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::NetworkSection;

    fn section() -> KademliaSection {
        KademliaSection {
            k: 20,
            alpha: 3,
            lookups: 0,
            peer_timeout_s: 10.0,
            refresh_minutes: 10.0,
            subnets: None,
            per_subnet_limit: 2,
        }
    }

    fn built(section: &KademliaSection, nodes: u32, nat: f64, up: &[bool]) -> Dht {
        let mut rng = SimRng::new(7);
        let mut dht = Dht::new(section, nodes, nat, &mut rng);
        for n in 0..nodes {
            if up[n as usize] {
                dht.refresh(n, up, &mut rng);
            }
        }
        dht
    }

    #[test]
    fn tables_hold_k_live_servers_per_bucket_in_bucket_order() {
        let nodes = 3_000;
        let mut rng = SimRng::new(1);
        let up: Vec<bool> = (0..nodes).map(|_| rng.chance(0.9)).collect();
        let dht = built(&section(), nodes, 0.3, &up);
        // Clients too: they are in no table but look up through one of their own.
        for n in (0..nodes).filter(|&n| up[n as usize]) {
            let me = dht.key(n);
            let t = dht.table(n);
            let buckets: Vec<u32> = t.iter().map(|&e| cpl(me, dht.key(e))).collect();
            assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
            for &e in t {
                assert!(e != n && up[e as usize] && dht.is_server(e));
            }
            let mut sorted = t.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), t.len(), "duplicates in {n}'s table");
            for b in 0..64u32 {
                let held = buckets.iter().filter(|&&x| x == b).count();
                let live = dht
                    .prefix_range(prefix_of(me, b + 1) ^ 1, b + 1)
                    .map(|pos| dht.by_key[pos])
                    .filter(|&m| up[m as usize] && dht.is_server(m))
                    .count();
                assert_eq!(held, live.min(20), "node {n} bucket {b}");
            }
        }
    }

    #[test]
    fn nat_clients_are_in_no_table_and_down_hosts_leave_at_the_refresh() {
        let nodes = 2_000;
        let mut up = vec![true; nodes as usize];
        let mut dht = built(&section(), nodes, 0.5, &up);
        let clients = (0..nodes).filter(|&n| !dht.is_server(n)).count();
        assert!((800..1200).contains(&clients), "{clients}");
        let server = (0..nodes).find(|&n| dht.is_server(n)).unwrap();
        for &e in dht.table(server) {
            assert!(dht.is_server(e));
        }
        let gone: Vec<NodeId> = dht.table(server)[..5].to_vec();
        for &g in &gone {
            up[g as usize] = false;
        }
        assert!(gone.iter().all(|g| dht.table(server).contains(g)));
        let mut rng = SimRng::new(2);
        dht.refresh(server, up.as_slice(), &mut rng);
        assert!(!gone.iter().any(|g| dht.table(server).contains(g)));
    }

    #[test]
    fn the_subnet_cap_limits_each_tables_peers_per_subnet() {
        let nodes = 4_000;
        let crowded = KademliaSection {
            subnets: Some(200),
            ..section()
        };
        let up = vec![true; nodes as usize];
        let dht = built(&crowded, nodes, 0.0, &up);
        let subnet = dht.subnet.as_ref().unwrap();
        for n in 0..nodes {
            let mut per: std::collections::HashMap<u32, usize> = Default::default();
            for &e in dht.table(n) {
                *per.entry(subnet[e as usize]).or_default() += 1;
            }
            assert!(per.values().all(|&c| c <= 2), "node {n}: {per:?}");
        }
        // Without the cap the same tables would hold more than two of a /24.
        let uncapped = built(
            &KademliaSection {
                per_subnet_limit: 1_000,
                ..crowded
            },
            nodes,
            0.0,
            &up,
        );
        let over = (0..nodes).any(|n| {
            let mut per: std::collections::HashMap<u32, usize> = Default::default();
            uncapped.table(n).iter().any(|&e| {
                let c = per.entry(subnet[e as usize]).or_default();
                *c += 1;
                *c > 2
            })
        });
        assert!(over);
    }

    #[test]
    fn a_tables_closest_entries_are_the_brute_force_k_closest() {
        let nodes = 5_000;
        let up = vec![true; nodes as usize];
        let dht = built(&section(), nodes, 0.0, &up);
        let mut rng = SimRng::new(8);
        let mut out = Vec::new();
        for _ in 0..500 {
            let n = rng.below(u64::from(nodes)) as NodeId;
            // Random keys, and keys next to the owner's and to its entries' (deep buckets).
            let target = match rng.below(3) {
                0 => rng.next_u64(),
                1 => dht.key(n) ^ (1 << rng.below(12)),
                _ => dht.key(dht.table(n)[rng.below(dht.table(n).len() as u64) as usize]) ^ 1,
            };
            dht.closest_entries(n, target, &mut out);
            let mut brute: Vec<(u64, NodeId)> = dht
                .table(n)
                .iter()
                .map(|&e| (dht.key(e) ^ target, e))
                .collect();
            brute.sort_unstable();
            brute.truncate(20);
            assert_eq!(out, brute);
        }
        dht.closest_entries(0, dht.key(0), &mut out);
        assert_eq!(out.len(), 20);
    }

    #[test]
    fn closest_live_is_the_brute_force_minimum() {
        let nodes = 5_000;
        let mut rng = SimRng::new(3);
        let up: Vec<bool> = (0..nodes).map(|_| rng.chance(0.5)).collect();
        let dht = Dht::new(&section(), nodes, 0.2, &mut rng);
        for _ in 0..300 {
            let target = rng.next_u64();
            let brute = (0..nodes)
                .filter(|&n| n != 0 && up[n as usize] && dht.is_server(n))
                .min_by_key(|&n| dht.key(n) ^ target);
            assert_eq!(dht.closest_live(target, up.as_slice(), 0), brute);
        }
    }

    #[test]
    fn lookups_in_a_stable_mesh_find_the_closest_server() {
        let nodes = 3_000;
        let up = vec![true; nodes as usize];
        let dht = built(&section(), nodes, 0.0, &up);
        let net = Network::new(&NetworkSection::default(), 1);
        let mut rng = SimRng::new(5);
        for _ in 0..300 {
            let from = rng.below(u64::from(nodes)) as NodeId;
            let l = dht.lookup(from, rng.next_u64(), up.as_slice(), &net, &mut rng);
            assert!(l.finished && l.found_closest, "{l:?}");
            assert_eq!(l.unresponsive, 0);
            assert!(l.queries >= 20 && (1..=8).contains(&l.hops), "{l:?}");
            assert!(l.walk_hops >= l.hops);
            assert!(l.latency > SimDuration::ZERO);
        }
    }

    #[test]
    fn lookups_route_around_hosts_that_left() {
        let nodes = 3_000;
        let mut up = vec![true; nodes as usize];
        let dht = built(&section(), nodes, 0.0, &up);
        let mut rng = SimRng::new(6);
        for u in up.iter_mut() {
            if rng.chance(0.3) {
                *u = false;
            }
        }
        let net = Network::new(&NetworkSection::default(), 1);
        let mut found = 0;
        let mut timeouts = 0;
        let runs = 300;
        for _ in 0..runs {
            let from = loop {
                let n = rng.below(u64::from(nodes)) as NodeId;
                if up[n as usize] {
                    break n;
                }
            };
            let l = dht.lookup(from, rng.next_u64(), up.as_slice(), &net, &mut rng);
            found += u32::from(l.found_closest);
            timeouts += l.unresponsive;
            if l.unresponsive > 0 {
                assert!(l.latency >= SimDuration::from_millis(10_000), "{l:?}");
            }
        }
        assert!(timeouts > runs, "{timeouts}");
        assert!(found as f64 / runs as f64 > 0.95, "{found} of {runs}");
    }
}
