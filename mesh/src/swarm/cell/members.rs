//! What a cell member says about itself (its chitchat key-values), the member list the runner
//! builds from chitchat's state, and the events between two lists. Pure: no IO, no clock
//! (callers pass `now`, the time since their epoch).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::cell_wire::MAX_VALUE_BYTES;
use crate::records::{Reachability, MAX_VERSION_LEN};

/// Most listen addresses a member gossips.
pub const MAX_GOSSIPED_ADDRS: usize = 4;

const KEY_VCPUS: &str = "vcpus";
const KEY_MEM_MIB: &str = "mem_mib";
const KEY_FREE_SLOTS: &str = "free_slots";
const KEY_LOAD: &str = "load_permille";
const KEY_REACH: &str = "reach";
const KEY_VERSION: &str = "version";
const KEY_ADDRS: &str = "addrs";
const KEY_RECORD: &str = "record";

/// What a member tells its cell about itself. Self-reported and relayed unsigned: treat as a
/// hint (placement must verify by asking the node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub vcpus: u32,
    pub mem_mib: u64,
    pub free_slots: u32,
    pub load_permille: u16,
    pub reachability: Reachability,
    pub version: String,
    /// Listen addresses (at most [`MAX_GOSSIPED_ADDRS`] are gossiped).
    pub addrs: Vec<Multiaddr>,
    /// The member's signed node record (`records::SignedRecord`, encoded, as hex): the same
    /// facts, signed by the member itself, so a reader can tell them from what other members
    /// relay. Gossiped only when it fits one value ([`MAX_VALUE_BYTES`]); checked by readers.
    pub signed_record: Option<String>,
}

impl Default for MemberInfo {
    fn default() -> Self {
        MemberInfo {
            vcpus: 0,
            mem_mib: 0,
            free_slots: 0,
            load_permille: 0,
            reachability: Reachability::Unknown,
            version: String::new(),
            addrs: Vec::new(),
            signed_record: None,
        }
    }
}

fn reach_str(r: Reachability) -> &'static str {
    match r {
        Reachability::Public => "public",
        Reachability::Private => "private",
        Reachability::Unknown => "unknown",
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl MemberInfo {
    /// The chitchat key-values: every field, the version cut to 64 bytes, and as many of the
    /// first [`MAX_GOSSIPED_ADDRS`] addresses as fit in one value (space-separated).
    pub fn to_key_values(&self) -> Vec<(String, String)> {
        let mut addrs = String::new();
        for a in self.addrs.iter().take(MAX_GOSSIPED_ADDRS) {
            let a = a.to_string();
            let sep = usize::from(!addrs.is_empty());
            if addrs.len() + sep + a.len() > MAX_VALUE_BYTES {
                break;
            }
            if sep == 1 {
                addrs.push(' ');
            }
            addrs.push_str(&a);
        }
        let mut kvs = vec![
            (KEY_VCPUS.into(), self.vcpus.to_string()),
            (KEY_MEM_MIB.into(), self.mem_mib.to_string()),
            (KEY_FREE_SLOTS.into(), self.free_slots.to_string()),
            (KEY_LOAD.into(), self.load_permille.min(1000).to_string()),
            (KEY_REACH.into(), reach_str(self.reachability).into()),
            (KEY_VERSION.into(), truncate(&self.version, MAX_VERSION_LEN)),
            (KEY_ADDRS.into(), addrs),
        ];
        if let Some(r) = self
            .signed_record
            .as_ref()
            .filter(|r| r.len() <= MAX_VALUE_BYTES)
        {
            kvs.push((KEY_RECORD.into(), r.clone()));
        }
        kvs
    }

    /// Reads the key-values back; a missing or malformed field reads as its default, unknown
    /// keys are ignored, and so are addresses that do not parse.
    pub fn from_key_values<'a>(kvs: impl IntoIterator<Item = (&'a str, &'a str)>) -> MemberInfo {
        let mut info = MemberInfo::default();
        for (k, v) in kvs {
            match k {
                KEY_VCPUS => info.vcpus = v.parse().unwrap_or(0),
                KEY_MEM_MIB => info.mem_mib = v.parse().unwrap_or(0),
                KEY_FREE_SLOTS => info.free_slots = v.parse().unwrap_or(0),
                KEY_LOAD => info.load_permille = v.parse::<u16>().unwrap_or(0).min(1000),
                KEY_REACH => {
                    info.reachability = match v {
                        "public" => Reachability::Public,
                        "private" => Reachability::Private,
                        _ => Reachability::Unknown,
                    }
                }
                KEY_VERSION => info.version = truncate(v, MAX_VERSION_LEN),
                KEY_ADDRS => {
                    info.addrs = v
                        .split(' ')
                        .filter_map(|a| a.parse().ok())
                        .take(MAX_GOSSIPED_ADDRS)
                        .collect()
                }
                KEY_RECORD => info.signed_record = Some(v.to_owned()),
                _ => {}
            }
        }
        info
    }
}

/// A member of the cell as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub peer: PeerId,
    /// Its chitchat generation (start time in ms); a restart makes a new one.
    pub generation: u64,
    /// Whether the failure detector holds it alive (this node always is).
    pub live: bool,
    pub is_self: bool,
    /// Shared with the runner's view cache: rounds re-read a member only when it changed.
    pub info: Arc<MemberInfo>,
    /// Time since this node last saw its heartbeat advance (None until seen once after the
    /// runner's start; tick granularity).
    pub heartbeat_age: Option<Duration>,
}

/// One chitchat node as read from its state: the raw input of [`build_members`].
#[derive(Clone, Debug)]
pub struct NodeView {
    pub peer: PeerId,
    pub generation: u64,
    pub live: bool,
    pub heartbeat: u64,
    /// What its key-values say.
    pub info: Arc<MemberInfo>,
}

/// When each member's heartbeat last advanced, across ticks.
#[derive(Debug, Default)]
pub struct HeartbeatClock {
    /// The heartbeat last seen and when it advanced (since the caller's epoch).
    seen: HashMap<(PeerId, u64), (u64, Duration)>,
}

impl HeartbeatClock {
    fn observe(
        &mut self,
        peer: PeerId,
        generation: u64,
        heartbeat: u64,
        now: Duration,
    ) -> Duration {
        let entry = self
            .seen
            .entry((peer, generation))
            .or_insert((heartbeat, now));
        if heartbeat > entry.0 {
            *entry = (heartbeat, now);
        }
        now.saturating_sub(entry.1)
    }

    fn forget_except(&mut self, keep: &BTreeMap<PeerId, Member>) {
        self.seen
            .retain(|(p, g), _| keep.get(p).is_some_and(|m| m.generation == *g));
    }
}

/// The member list: one entry per peer, its newest generation. Node ids that are not peer
/// ids never get here (the transport refuses them).
pub fn build_members(
    me: PeerId,
    nodes: Vec<NodeView>,
    clock: &mut HeartbeatClock,
    now: Duration,
) -> BTreeMap<PeerId, Member> {
    let mut newest: BTreeMap<PeerId, NodeView> = BTreeMap::new();
    for n in nodes {
        match newest.get(&n.peer) {
            Some(have) if have.generation >= n.generation => {}
            _ => {
                newest.insert(n.peer, n);
            }
        }
    }
    let members: BTreeMap<PeerId, Member> = newest
        .into_values()
        .map(|n| {
            let is_self = n.peer == me;
            let age = clock.observe(n.peer, n.generation, n.heartbeat, now);
            let member = Member {
                peer: n.peer,
                generation: n.generation,
                live: n.live || is_self,
                is_self,
                info: n.info,
                heartbeat_age: (!is_self).then_some(age),
            };
            (n.peer, member)
        })
        .collect();
    clock.forget_except(&members);
    members
}

/// A change in the cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CellEvent {
    /// A member became live (new, back from the dead, or restarted with a new generation).
    MemberJoined { peer: PeerId, generation: u64 },
    /// A live member stopped answering (the failure detector declared it dead).
    MemberDied { peer: PeerId },
    /// A member left chitchat's state (dead for the grace period, then collected).
    MemberLeft { peer: PeerId },
}

/// The events that turn `prev` into `next`.
pub fn diff_members(
    prev: &BTreeMap<PeerId, Member>,
    next: &BTreeMap<PeerId, Member>,
) -> Vec<CellEvent> {
    let mut out = Vec::new();
    for (peer, m) in next {
        if m.is_self {
            continue;
        }
        let before = prev.get(peer);
        let was_live = before.is_some_and(|b| b.live && b.generation == m.generation);
        if m.live && !was_live {
            out.push(CellEvent::MemberJoined {
                peer: *peer,
                generation: m.generation,
            });
        } else if !m.live && before.is_some_and(|b| b.live) {
            out.push(CellEvent::MemberDied { peer: *peer });
        }
    }
    for peer in prev.keys() {
        if !next.contains_key(peer) {
            out.push(CellEvent::MemberLeft { peer: *peer });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8) -> PeerId {
        crate::identity::NodeIdentity::from_seed(&[i; 32])
            .map(|id| id.peer_id())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn info() -> MemberInfo {
        MemberInfo {
            vcpus: 8,
            mem_mib: 16_384,
            free_slots: 3,
            load_permille: 250,
            reachability: Reachability::Private,
            version: "novacron/0.1.0".into(),
            addrs: vec![
                "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
                "/ip4/10.0.0.1/udp/4001/quic-v1".parse().unwrap(),
            ],
            signed_record: Some("00ff".repeat(100)),
        }
    }

    #[test]
    fn member_info_round_trips_through_key_values() {
        let kvs = info().to_key_values();
        let back = MemberInfo::from_key_values(kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back, info());
        for (k, v) in &kvs {
            assert!(k.len() <= crate::cell_wire::MAX_KEY_BYTES);
            assert!(v.len() <= MAX_VALUE_BYTES);
        }
    }

    #[test]
    fn member_info_caps_addresses_and_reads_garbage_as_defaults() {
        let mut many = info();
        many.addrs = (0..10)
            .map(|i| format!("/ip4/127.0.0.1/tcp/{}", 4000 + i).parse().unwrap())
            .collect();
        many.version = "v".repeat(300);
        let kvs = many.to_key_values();
        let back = MemberInfo::from_key_values(kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(back.addrs.len(), MAX_GOSSIPED_ADDRS);
        assert_eq!(back.version.len(), MAX_VERSION_LEN);

        let junk = MemberInfo::from_key_values([
            ("vcpus", "lots"),
            ("load_permille", "5000"),
            ("reach", "moon"),
            ("addrs", "not-an-addr /ip4/1.2.3.4/tcp/1"),
            ("other", "x"),
        ]);
        assert_eq!(junk.vcpus, 0);
        assert_eq!(junk.load_permille, 1000);
        assert_eq!(junk.reachability, Reachability::Unknown);
        assert_eq!(junk.addrs.len(), 1);
    }

    fn view(i: u8, generation: u64, live: bool, heartbeat: u64) -> NodeView {
        NodeView {
            peer: peer(i),
            generation,
            live,
            heartbeat,
            info: Arc::new(info()),
        }
    }

    #[test]
    fn members_keep_the_newest_generation_and_events_follow_changes() {
        let mut clock = HeartbeatClock::default();
        let t0 = Duration::ZERO;
        let a = build_members(
            peer(1),
            vec![
                view(1, 10, true, 5),
                view(2, 10, true, 5),
                view(3, 10, true, 5),
            ],
            &mut clock,
            t0,
        );
        assert_eq!(a.len(), 3);
        assert!(a[&peer(1)].is_self && a[&peer(1)].heartbeat_age.is_none());
        assert_eq!(*a[&peer(2)].info, info());
        let joined = diff_members(&BTreeMap::new(), &a);
        assert_eq!(joined.len(), 2, "{joined:?}");

        // 2 dies, 3 restarts (old generation dead, new one live).
        let t1 = t0 + Duration::from_secs(3);
        let b = build_members(
            peer(1),
            vec![
                view(1, 10, true, 9),
                view(2, 10, false, 5),
                view(3, 10, false, 5),
                view(3, 20, true, 1),
            ],
            &mut clock,
            t1,
        );
        assert_eq!(b[&peer(3)].generation, 20);
        assert_eq!(b[&peer(2)].heartbeat_age, Some(Duration::from_secs(3)));
        let mut events = diff_members(&a, &b);
        events.sort_by_key(|e| format!("{e:?}"));
        let mut want = vec![
            CellEvent::MemberDied { peer: peer(2) },
            CellEvent::MemberJoined {
                peer: peer(3),
                generation: 20,
            },
        ];
        want.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(events, want);

        // 2 is collected.
        let c = build_members(
            peer(1),
            vec![view(1, 10, true, 9), view(3, 20, true, 2)],
            &mut clock,
            t1,
        );
        assert_eq!(
            diff_members(&b, &c),
            vec![CellEvent::MemberLeft { peer: peer(2) }]
        );
    }
}
