//! The whole placement decision for one replica, in one call, from the node's view: the
//! summaries it holds and its own cell's members, with each member's gossiped capacity
//! standing in for the offer it would send. It is what [`super::PlacementSearch`] asks
//! first to confirm when every member offers what it gossips, and what `novacron bench jobs`
//! measures (placements per second over a 50,000-node view).
//!
//! What it cannot do: it sends nothing, so it cannot know that a member's gossip is stale
//! or that another cell's members have room; for another cell it names the cell to look up.

use std::time::Duration;

use super::offer::{best_fit, Room};
use super::rank::rank_cells;
use super::Need;
use novacron_mesh::cells::{CellId, SummaryRecord};
use novacron_model::MemberStatus;

/// What the node knows when it places a replica.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The signed cell summaries it holds (several per cell, some expired).
    pub summaries: &'a [SummaryRecord],
    pub own_cell: CellId,
    /// Its own cell's members, as their gossip reports them.
    pub own_members: &'a [MemberStatus],
}

/// Where a replica goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// This member of the own cell.
    Peer(&'a str),
    /// No own member fits: the best other cell by its summary, whose members are to be
    /// looked up.
    LookUp(CellId),
    /// No cell has room.
    Nowhere,
}

/// Decides where one replica of `need` goes: the own cell's best fit by gossip among its
/// live members not in `exclude`, else the best-ranked other cell. `now` is since the unix
/// epoch (the summaries' expiry).
pub fn placement_decision<'a>(
    view: &View<'a>,
    need: Need,
    exclude: &[String],
    now: Duration,
    seed: u64,
) -> Decision<'a> {
    let ranked = rank_cells(view.summaries, view.own_cell, need, now, seed);
    let live = || view.own_members.iter().filter(|m| m.live);
    if let Some(i) = best_fit(live().map(Room::of_member), need, exclude, seed) {
        if let Some(m) = live().nth(i) {
            return Decision::Peer(&m.peer_id);
        }
    }
    match ranked.iter().find(|c| !c.own) {
        Some(c) => Decision::LookUp(c.cell),
        None => Decision::Nowhere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job_placement::{PlacementSearch, SearchAction, SearchLimits, SearchPlan};

    const NOW: Duration = Duration::from_secs(1_700_000_000);
    const NEED: Need = Need {
        vcpus: 2,
        memory_mib: 2048,
    };

    fn view_of_50k(seed: u64) -> (Vec<SummaryRecord>, Vec<MemberStatus>) {
        super::super::synthetic::view_of_50k(seed, NOW)
    }

    fn own() -> CellId {
        CellId::new(8, 0x2a).unwrap()
    }

    #[test]
    fn over_a_50k_view_it_picks_the_best_fitting_live_own_member() {
        for seed in 0..8 {
            let (summaries, members) = view_of_50k(seed);
            let view = View {
                summaries: &summaries,
                own_cell: own(),
                own_members: &members,
            };
            let Decision::Peer(peer) = placement_decision(&view, NEED, &[], NOW, seed) else {
                panic!("no own member fits in a cell of 195");
            };
            let chosen = members.iter().find(|m| m.peer_id == peer).unwrap();
            assert!(chosen.live && chosen.free_slots > 0 && chosen.vcpus >= 2);
            let left = chosen.mem_mib - NEED.memory_mib;
            assert!(members
                .iter()
                .filter(|m| m.live && m.free_slots > 0 && m.vcpus >= 2 && m.mem_mib >= 2048)
                .all(|m| m.mem_mib - NEED.memory_mib >= left));
            // Excluding it (it holds another replica) picks someone else.
            let again = placement_decision(&view, NEED, &[peer.to_string()], NOW, seed);
            assert!(matches!(again, Decision::Peer(p) if p != peer));
        }
    }

    #[test]
    fn with_no_own_member_fitting_it_names_the_best_other_cell() {
        let (summaries, mut members) = view_of_50k(3);
        for m in &mut members {
            m.free_slots = 0;
        }
        let view = View {
            summaries: &summaries,
            own_cell: own(),
            own_members: &members,
        };
        let ranked = rank_cells(&summaries, own(), NEED, NOW, 5);
        let best_other = ranked.iter().find(|c| !c.own).unwrap().cell;
        assert_eq!(
            placement_decision(&view, NEED, &[], NOW, 5),
            Decision::LookUp(best_other)
        );
        // Long after every summary expired: nowhere.
        let later = NOW + Duration::from_secs(3600);
        assert_eq!(
            placement_decision(&view, NEED, &[], later, 5),
            Decision::Nowhere
        );
    }

    #[test]
    fn it_is_what_the_search_confirms_first_when_members_offer_their_gossip() {
        for seed in 0..16 {
            let (summaries, members) = view_of_50k(seed + 100);
            let view = View {
                summaries: &summaries,
                own_cell: own(),
                own_members: &members,
            };
            let Decision::Peer(decided) = placement_decision(&view, NEED, &[], NOW, seed) else {
                panic!("no own member fits");
            };
            let plan = SearchPlan {
                cells: rank_cells(&summaries, own(), NEED, NOW, seed)
                    .iter()
                    .map(|c| c.cell)
                    .collect(),
                own_cell: own(),
                need: NEED,
                exclude: vec![],
                seed,
            };
            let (mut search, out) =
                PlacementSearch::start(plan, &members, SearchLimits::default(), NOW);
            let [SearchAction::AskOffers { peers }] = &out[..] else {
                panic!("{out:?}");
            };
            let mut last = Vec::new();
            for p in peers {
                let m = members.iter().find(|m| &m.peer_id == p).unwrap();
                let room = Room::of_member(m);
                let offer = crate::job_placement::Offer {
                    peer: p.clone(),
                    free_vcpus: room.free_vcpus,
                    free_memory_mib: room.free_memory_mib,
                    free_slots: room.free_slots,
                    load_permille: room.load_permille,
                };
                last = search.offer_received(p, offer, NOW);
            }
            assert_eq!(
                last,
                [SearchAction::Confirm {
                    peer: decided.to_string()
                }]
            );
        }
    }
}
