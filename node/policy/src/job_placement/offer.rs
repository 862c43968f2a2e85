//! Which peer's offer a replica takes: the best fit, the offer that leaves the least memory
//! free once the replica is placed, then the fewest vCPUs, then the lowest load; equals in
//! an order drawn from a seed (as [`crate::placement`] does, so nodes that look
//! alike take turns).
//!
//! Best fit, not the emptiest node: a mesh of volunteers has a few large machines and many
//! small ones; filling the snuggest node first keeps the large ones free for the jobs only
//! they can take. An offer that does not fit, or whose peer is excluded (it already holds a
//! replica of the job, or was tried), is never chosen.
//!
//! What this cannot do: an offer is what a peer said when asked; it may have given the same
//! room to someone else since. Only its confirmation places the replica.

use super::Need;
use crate::placement::tie_break;
use novacron_mesh::records::MAX_LOAD_PERMILLE;
use novacron_model::MemberStatus;

/// A peer's answer to "could you take this replica": what it has free now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub peer: String,
    pub free_vcpus: u32,
    pub free_memory_mib: u64,
    pub free_slots: u32,
    pub load_permille: u16,
}

/// What a node has free, borrowed: an offer's figures, or a member's gossiped hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room<'a> {
    pub peer: &'a str,
    pub free_vcpus: u32,
    pub free_memory_mib: u64,
    pub free_slots: u32,
    pub load_permille: u16,
}

impl Offer {
    pub fn room(&self) -> Room<'_> {
        Room {
            peer: &self.peer,
            free_vcpus: self.free_vcpus,
            free_memory_mib: self.free_memory_mib,
            free_slots: self.free_slots,
            load_permille: self.load_permille,
        }
    }

    /// Whether a replica of `need` fits in it.
    pub fn fits(&self, need: Need) -> bool {
        self.room().fits(need)
    }
}

impl<'a> Room<'a> {
    /// A member's gossip as room. Members gossip their machine's vCPUs, not the free ones,
    /// so the vCPU figure is an upper bound; their free memory and slots are what their
    /// admission accounting last said.
    pub fn of_member(m: &'a MemberStatus) -> Room<'a> {
        Room {
            peer: &m.peer_id,
            free_vcpus: m.vcpus,
            free_memory_mib: m.mem_mib,
            free_slots: m.free_slots,
            load_permille: u16::try_from(m.load_permille)
                .unwrap_or(MAX_LOAD_PERMILLE)
                .min(MAX_LOAD_PERMILLE),
        }
    }

    /// Whether a replica of `need` fits: a free slot, enough vCPUs and memory.
    pub fn fits(&self, need: Need) -> bool {
        self.free_slots > 0
            && self.free_vcpus >= need.vcpus
            && self.free_memory_mib >= need.memory_mib
    }

    /// What is left once the replica is placed, smaller is a better fit; None when it does
    /// not fit.
    fn leftover(&self, need: Need) -> Option<(u64, u32, u16)> {
        self.fits(need).then(|| {
            (
                self.free_memory_mib - need.memory_mib,
                self.free_vcpus - need.vcpus,
                self.load_permille,
            )
        })
    }
}

/// The index of the best fit among `rooms` for `need`, skipping peers in `exclude` and
/// rooms that do not fit; None when none is left. One pass; the seed's tie-break is hashed
/// only between equals.
pub fn best_fit<'a>(
    rooms: impl IntoIterator<Item = Room<'a>>,
    need: Need,
    exclude: &[String],
    seed: u64,
) -> Option<usize> {
    let mut best: Option<(usize, (u64, u32, u16), &str)> = None;
    for (i, room) in rooms.into_iter().enumerate() {
        let Some(key) = room.leftover(need) else {
            continue;
        };
        if exclude.iter().any(|e| e == room.peer) {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, best_key, best_peer)) => {
                key < best_key
                    || (key == best_key && tie_break(seed, room.peer) < tie_break(seed, best_peer))
            }
        };
        if better {
            best = Some((i, key, room.peer));
        }
    }
    best.map(|(i, _, _)| i)
}

/// `rooms` that fit `need` and whose peer is not in `exclude`, the best fit first (the
/// order [`best_fit`] picks the first of); a peer listed twice is kept once, at its best.
pub fn by_fit<'a>(
    rooms: impl IntoIterator<Item = Room<'a>>,
    need: Need,
    exclude: &[String],
    seed: u64,
) -> Vec<Room<'a>> {
    let mut fit: Vec<(Room<'a>, (u64, u32, u16))> = rooms
        .into_iter()
        .filter(|r| !exclude.iter().any(|e| e == r.peer))
        .filter_map(|r| Some((r, r.leftover(need)?)))
        .collect();
    fit.sort_by(|(a, ka), (b, kb)| {
        ka.cmp(kb)
            .then_with(|| tie_break(seed, a.peer).cmp(&tie_break(seed, b.peer)))
            .then_with(|| a.peer.cmp(b.peer))
    });
    let mut seen = std::collections::BTreeSet::new();
    fit.into_iter()
        .map(|(r, _)| r)
        .filter(|r| seen.insert(r.peer))
        .collect()
}

/// The index of the offer to take for a replica of `need`: the best fit (see the module
/// doc) among those that fit and whose peer is not in `exclude`.
pub fn choose_offer(offers: &[Offer], need: Need, exclude: &[String], seed: u64) -> Option<usize> {
    best_fit(offers.iter().map(Offer::room), need, exclude, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NEED: Need = Need {
        vcpus: 2,
        memory_mib: 512,
    };

    fn offer(peer: &str, vcpus: u32, mem: u64, slots: u32, load: u16) -> Offer {
        Offer {
            peer: peer.into(),
            free_vcpus: vcpus,
            free_memory_mib: mem,
            free_slots: slots,
            load_permille: load,
        }
    }

    fn chosen<'a>(offers: &'a [Offer], exclude: &[&str], seed: u64) -> Option<&'a str> {
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        choose_offer(offers, NEED, &exclude, seed).map(|i| offers[i].peer.as_str())
    }

    #[test]
    fn the_snuggest_fit_wins_memory_first_then_vcpus_then_load() {
        let offers = [
            offer("roomy", 16, 8192, 4, 0),
            offer("snug", 8, 600, 1, 900),
            offer("snugger-cpu", 2, 600, 1, 950),
            offer("too-small", 8, 511, 4, 0),
            offer("no-cpu", 1, 4096, 4, 0),
            offer("no-slot", 8, 512, 0, 0),
        ];
        for seed in 0..16 {
            assert_eq!(chosen(&offers, &[], seed), Some("snugger-cpu"));
        }
        // Equal memory and vCPUs: the lower load.
        let offers = [
            offer("busy", 4, 1024, 1, 800),
            offer("idle", 4, 1024, 1, 100),
        ];
        assert_eq!(chosen(&offers, &[], 0), Some("idle"));
        // An exact fit is taken.
        let offers = [offer("big", 4, 1024, 1, 0), offer("exact", 2, 512, 1, 999)];
        assert_eq!(chosen(&offers, &[], 0), Some("exact"));
    }

    #[test]
    fn nothing_that_does_not_fit_or_is_excluded_is_chosen() {
        let offers = [
            offer("holds-a-replica", 2, 512, 1, 0),
            offer("small", 2, 100, 1, 0),
            offer("ok", 64, 1 << 20, 9, 1000),
        ];
        assert_eq!(chosen(&offers, &["holds-a-replica"], 0), Some("ok"));
        assert_eq!(chosen(&offers, &["holds-a-replica", "ok"], 0), None);
        assert_eq!(chosen(&[], &[], 0), None);
    }

    #[test]
    fn equals_take_turns_by_seed() {
        let offers: Vec<Offer> = ["a", "b", "c", "d"]
            .iter()
            .map(|p| offer(p, 4, 1024, 1, 500))
            .collect();
        let firsts: std::collections::BTreeSet<&str> =
            (0..64).filter_map(|s| chosen(&offers, &[], s)).collect();
        assert_eq!(firsts.len(), 4, "some equal offer never won over 64 seeds");
        assert_eq!(chosen(&offers, &[], 9), chosen(&offers, &[], 9));
        // Order of arrival does not matter.
        let mut reversed = offers.clone();
        reversed.reverse();
        for s in 0..16 {
            assert_eq!(chosen(&offers, &[], s), chosen(&reversed, &[], s));
        }
    }

    #[test]
    fn a_members_gossip_reads_as_room() {
        let m = MemberStatus {
            peer_id: "p".into(),
            live: true,
            signed: true,
            vcpus: 8,
            mem_mib: 2048,
            free_slots: 3,
            load_permille: 70_000,
            version: "0".into(),
            addrs: vec![],
        };
        let r = Room::of_member(&m);
        assert_eq!(
            (r.peer, r.free_vcpus, r.free_memory_mib, r.free_slots),
            ("p", 8, 2048, 3)
        );
        assert_eq!(
            r.load_permille, MAX_LOAD_PERMILLE,
            "an absurd load is capped"
        );
    }

    #[test]
    fn by_fit_orders_like_best_fit_and_keeps_a_peer_once() {
        let offers = [
            offer("b", 4, 2048, 1, 0),
            offer("a", 4, 1024, 1, 0),
            offer("a", 4, 4096, 1, 0),
            offer("x", 1, 4096, 1, 0),
        ];
        let ordered: Vec<&str> = by_fit(offers.iter().map(Offer::room), NEED, &[], 3)
            .iter()
            .map(|r| r.peer)
            .collect();
        assert_eq!(ordered, ["a", "b"]);
        assert_eq!(chosen(&offers, &[], 3), Some("a"));
    }

    fn arb_offer() -> impl Strategy<Value = Offer> {
        (0u8..12, 0u32..6, 0u64..2048, 0u32..3, 0u16..=1000)
            .prop_map(|(p, v, m, s, l)| offer(&format!("p{p}"), v, m, s, l))
    }

    proptest! {
        #[test]
        fn the_choice_fits_is_not_excluded_and_no_other_fits_better(
            offers in prop::collection::vec(arb_offer(), 0..12),
            exclude in prop::collection::vec((0u8..12).prop_map(|p| format!("p{p}")), 0..4),
            seed: u64,
        ) {
            let leftover = |o: &Offer| {
                (o.free_memory_mib - NEED.memory_mib, o.free_vcpus - NEED.vcpus, o.load_permille)
            };
            let eligible: Vec<&Offer> = offers
                .iter()
                .filter(|o| o.fits(NEED) && !exclude.contains(&o.peer))
                .collect();
            let ordered = by_fit(offers.iter().map(Offer::room), NEED, &exclude, seed);
            prop_assert_eq!(
                ordered.first().map(|r| r.peer),
                choose_offer(&offers, NEED, &exclude, seed).map(|i| offers[i].peer.as_str())
            );
            match choose_offer(&offers, NEED, &exclude, seed) {
                None => prop_assert!(eligible.is_empty()),
                Some(i) => {
                    let c = &offers[i];
                    prop_assert!(c.fits(NEED));
                    prop_assert!(!exclude.contains(&c.peer));
                    prop_assert!(eligible.iter().all(|o| leftover(o) >= leftover(c)));
                }
            }
        }
    }
}
