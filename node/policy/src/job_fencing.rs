//! Generation fencing: recovering a replica whose node died, from a checkpoint its peers
//! hold, so that exactly one copy of it runs on afterwards.
//!
//! A replica carries a generation. Whoever restores it claims the next generation
//! ([`claim`]) and announces it; a node that holds an older generation, such as the node
//! declared dead coming back, or cut off and still running, discards its copy on learning of
//! the newer one and never resumes it ([`accept`]). Results are counted from the newest
//! generation only.
//!
//! Which holder restores, without the holders talking: every holder orders the holders of
//! the checkpoint by blake3(job id, replica index, the generation to claim, peer id)
//! ([`restore_order`]); the first one it believes alive restores at once, the others wait
//! their turn ([`RestoreWatch`]): a holder whose predecessors in the order are all down or
//! silent past a turn each (no "restored" announcement) tries next, so a chosen holder that
//! is itself dead does not lose the replica. Why this order:
//! - every holder has the same facts (the job id, the replica, the generation, the holder
//!   list in the checkpoint's manifest), so all compute the same order;
//! - hashing spreads restores: ordering by peer id would make the holder with the smallest
//!   id restore every replica it holds when a large node dies, a storm on one machine;
//! - the generation is in the hash, so a replica that fails again is not always restored by
//!   the same holder, and two claims of one generation settle by this same order
//!   ([`accept_claim`]: the holder earlier in it keeps its copy);
//! - it is a cryptographic hash: a peer cannot pick its id to come first.
//!
//! What this cannot do: holders that disagree on who is alive may both restore in the same
//! turn; [`accept_claim`] then keeps one and the other discards its copy, so the two run
//! side by side until the announcements cross (a turn should be well above the time a
//! restore and its announcement take). A holder that never hears of a newer generation
//! keeps its copy: announcements must reach it (the daemon re-announces with the replica's
//! state). A generation from the network at `u64::MAX` cannot be claimed past.

use std::collections::BTreeSet;
use std::time::Duration;

use novacron_mesh::submission::JobId;

/// Whether a node keeps its copy of a replica after hearing of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Its copy is (still) the one.
    Keep,
    /// Another copy supersedes it: stop it and drop it, never resume it.
    Discard,
}

/// A restore's claim: the generation restored, and the peer restoring it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub generation: u64,
    pub peer: String,
}

/// The generation a restore of `current` claims; None past `u64::MAX`.
pub fn claim(current: u64) -> Option<u64> {
    current.checked_add(1)
}

/// Whether a node holding generation `held` keeps it when generation `announced` is
/// announced: a newer generation supersedes it; an older or equal one does not.
pub fn accept(held: u64, announced: u64) -> Fence {
    if announced > held {
        Fence::Discard
    } else {
        Fence::Keep
    }
}

/// [`accept`], with two claims of one generation settled: the claimant earlier in that
/// generation's restore order keeps its copy, the other discards.
pub fn accept_claim(job: &JobId, replica: u32, held: &Claim, announced: &Claim) -> Fence {
    if held.generation != announced.generation || held.peer == announced.peer {
        return accept(held.generation, announced.generation);
    }
    let rank = |peer: &str| restore_rank(job, replica, held.generation, peer);
    if rank(&announced.peer) < rank(&held.peer) {
        Fence::Discard
    } else {
        Fence::Keep
    }
}

/// A holder's place in the order for restoring generation `next`: lower restores first.
fn restore_rank(job: &JobId, replica: u32, next: u64, peer: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"novacron-restore-order-v1");
    h.update(&job.0);
    h.update(&replica.to_le_bytes());
    h.update(&next.to_le_bytes());
    h.update(peer.as_bytes());
    *h.finalize().as_bytes()
}

/// The holders of a checkpoint of `replica` of `job` in the order they restore it after
/// generation `generation` died (see the module doc); a peer listed twice counts once.
/// Empty when the next generation cannot be claimed.
pub fn restore_order<'a>(
    job: &JobId,
    replica: u32,
    generation: u64,
    holders: &'a [String],
) -> Vec<&'a str> {
    let Some(next) = claim(generation) else {
        return Vec::new();
    };
    let mut ranked: Vec<([u8; 32], &str)> = holders
        .iter()
        .map(|p| (restore_rank(job, replica, next, p), p.as_str()))
        .collect();
    ranked.sort_unstable();
    ranked.dedup_by_key(|(_, p)| *p);
    ranked.into_iter().map(|(_, p)| p).collect()
}

/// How many peers hold a replica's checkpoint by default (the k).
pub const HOLDERS: usize = 2;

/// The peers the runner `me` asks, in this order, to hold the checkpoints of `replica` of
/// `job` until `k` of them agree: the current holders still among `live` first (they have
/// most of the chunks already: only the new layers travel), then the other live peers in
/// a hash order of (job, replica, peer), which spreads a node's replicas over the cell as
/// [`restore_order`] spreads restores. Never `me`; a peer listed twice counts once.
pub fn holder_candidates(
    job: &JobId,
    replica: u32,
    me: &str,
    live: &[String],
    current: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = current
        .iter()
        .filter(|p| p.as_str() != me && live.contains(p))
        .cloned()
        .collect();
    out.dedup();
    let mut rest: Vec<([u8; 32], &String)> = live
        .iter()
        .filter(|p| p.as_str() != me && !out.contains(p))
        .map(|p| (restore_rank(job, replica, 0, p), p))
        .collect();
    rest.sort_unstable();
    rest.dedup_by_key(|(_, p)| *p);
    out.extend(rest.into_iter().map(|(_, p)| p.clone()));
    out
}

/// The holder that restores at once: the first live one in [`restore_order`].
pub fn chosen_restorer<'a>(
    job: &JobId,
    replica: u32,
    generation: u64,
    live_holders: &'a [String],
) -> Option<&'a str> {
    restore_order(job, replica, generation, live_holders)
        .first()
        .copied()
}

/// What a holder does about a replica whose node died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreStep {
    /// Restore the replica from the checkpoint as `generation`, and announce the claim.
    Restore { generation: u64 },
    /// Another holder restored it: nothing to do (drop the checkpoint when its job ends).
    StandDown,
    /// This holder restored it, and a claim that supersedes its own came in: stop and drop
    /// its copy.
    Discard { generation: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    Waiting,
    Restoring,
    Over,
}

/// One holder's watch over one replica whose node died (generation `generation`): it
/// restores when its turn comes with no announcement heard. Pure: the daemon creates it
/// when it learns the replica's node is dead, reports holders going down or coming back
/// and the claims announced, calls [`RestoreWatch::tick`] at
/// [`RestoreWatch::next_deadline`], and does the [`RestoreStep`]s. Time is a [`Duration`]
/// since the driver's fixed epoch.
///
/// The turn of the holder at place k among the holders it believes alive is at
/// `noticed + k × turn`; its view of who is down may change while it waits.
#[derive(Clone, Debug)]
pub struct RestoreWatch {
    job: JobId,
    replica: u32,
    generation: u64,
    me: String,
    order: Vec<String>,
    down: BTreeSet<String>,
    noticed: Duration,
    turn: Duration,
    state: Watch,
}

impl RestoreWatch {
    /// The watch of holder `me` over `replica` of `job`, whose generation `generation` died
    /// at `noticed` (as far as this holder knows), among `holders` (the checkpoint's,
    /// `me` among them for `me` to ever restore). `turn` is how long each holder in the
    /// order has before the next tries.
    pub fn new(
        job: JobId,
        replica: u32,
        generation: u64,
        holders: &[String],
        me: &str,
        noticed: Duration,
        turn: Duration,
    ) -> RestoreWatch {
        let order: Vec<String> = restore_order(&job, replica, generation, holders)
            .into_iter()
            .map(str::to_string)
            .collect();
        let state = if order.iter().any(|p| p == me) {
            Watch::Waiting
        } else {
            Watch::Over
        };
        RestoreWatch {
            job,
            replica,
            generation,
            me: me.to_string(),
            order,
            down: BTreeSet::new(),
            noticed,
            turn,
            state,
        }
    }

    /// `peer` is believed dead (its turn is skipped).
    pub fn holder_down(&mut self, peer: &str) {
        if peer != self.me {
            self.down.insert(peer.to_string());
        }
    }

    /// `peer` is believed alive again.
    pub fn holder_up(&mut self, peer: &str) {
        self.down.remove(peer);
    }

    /// A claim on the replica was announced.
    pub fn restored(&mut self, claim: &Claim) -> Option<RestoreStep> {
        match self.state {
            Watch::Waiting if claim.generation > self.generation => {
                self.state = Watch::Over;
                Some(RestoreStep::StandDown)
            }
            Watch::Restoring => {
                let mine = Claim {
                    generation: self.generation + 1,
                    peer: self.me.clone(),
                };
                match accept_claim(&self.job, self.replica, &mine, claim) {
                    Fence::Keep => None,
                    Fence::Discard => {
                        self.state = Watch::Over;
                        Some(RestoreStep::Discard {
                            generation: mine.generation,
                        })
                    }
                }
            }
            _ => None,
        }
    }

    /// What is due at `now`: this holder's turn to restore, if it has come.
    pub fn tick(&mut self, now: Duration) -> Option<RestoreStep> {
        let at = self.next_deadline()?;
        if now < at {
            return None;
        }
        let generation = claim(self.generation)?;
        self.state = Watch::Restoring;
        Some(RestoreStep::Restore { generation })
    }

    /// This holder's turn, while it waits for it; None once it restored, stood down, or
    /// when it is not a holder.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.state != Watch::Waiting {
            return None;
        }
        let ahead = self
            .order
            .iter()
            .take_while(|p| **p != self.me)
            .filter(|p| !self.down.contains(*p))
            .count();
        let wait = self
            .turn
            .checked_mul(u32::try_from(ahead).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX);
        Some(self.noticed.saturating_add(wait))
    }

    /// The order of holders this watch follows.
    pub fn order(&self) -> &[String] {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_candidates_keep_live_holders_first_and_never_the_runner() {
        let job = JobId([7; 32]);
        let live: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
        let current = vec!["p4".to_string(), "gone".to_string(), "p0".to_string()];
        let c = holder_candidates(&job, 0, "p0", &live, &current);
        assert_eq!(
            c[0], "p4",
            "a live holder first; a dead one and the runner dropped"
        );
        assert_eq!(c.len(), 5);
        assert!(!c.contains(&"p0".to_string()) && !c.contains(&"gone".to_string()));
        // The same facts give the same order; another replica spreads elsewhere.
        assert_eq!(c, holder_candidates(&job, 0, "p0", &live, &current));
        let firsts: BTreeSet<String> = (0..32)
            .map(|r| holder_candidates(&job, r, "p0", &live, &[])[0].clone())
            .collect();
        assert!(firsts.len() > 2, "replicas spread over holders: {firsts:?}");
    }
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);
    const TURN: Duration = Duration::from_secs(30);

    fn job(n: u8) -> JobId {
        JobId([n; 32])
    }

    fn peers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("12D3KooWpeer{i}")).collect()
    }

    #[test]
    fn a_newer_generation_fences_an_older_copy_never_the_reverse() {
        assert_eq!(claim(4), Some(5));
        assert_eq!(claim(u64::MAX), None);
        assert_eq!(accept(4, 5), Fence::Discard);
        assert_eq!(accept(5, 5), Fence::Keep);
        assert_eq!(accept(6, 5), Fence::Keep);
    }

    #[test]
    fn every_holder_computes_the_same_order_whatever_its_list_order() {
        let holders = peers(6);
        let mut shuffled = holders.clone();
        shuffled.reverse();
        shuffled.swap(1, 4);
        shuffled.push(holders[2].clone());
        let a = restore_order(&job(1), 0, 3, &holders);
        assert_eq!(a, restore_order(&job(1), 0, 3, &shuffled));
        assert_eq!(a.len(), 6);
        // The first live one is chosen: drop the first, the second is.
        let live: Vec<String> = holders.iter().filter(|p| *p != a[0]).cloned().collect();
        assert_eq!(chosen_restorer(&job(1), 0, 3, &live), Some(a[1]));
        assert_eq!(chosen_restorer(&job(1), 0, 3, &[]), None);
    }

    #[test]
    fn restores_spread_over_holders_across_jobs_and_generations() {
        let holders = peers(4);
        let firsts: BTreeSet<&str> = (0..32)
            .map(|j| chosen_restorer(&job(j), 0, 0, &holders).unwrap())
            .collect();
        assert_eq!(
            firsts.len(),
            4,
            "over 32 jobs some holder never restores first"
        );
        let by_generation: BTreeSet<&str> = (0..32)
            .map(|g| chosen_restorer(&job(1), 0, g, &holders).unwrap())
            .collect();
        assert!(by_generation.len() > 1);
    }

    #[test]
    fn two_claims_of_one_generation_keep_the_earlier_in_the_order() {
        let holders = peers(3);
        let order = restore_order(&job(2), 1, 6, &holders);
        let first = Claim {
            generation: 7,
            peer: order[0].to_string(),
        };
        let second = Claim {
            generation: 7,
            peer: order[1].to_string(),
        };
        assert_eq!(accept_claim(&job(2), 1, &second, &first), Fence::Discard);
        assert_eq!(accept_claim(&job(2), 1, &first, &second), Fence::Keep);
        assert_eq!(accept_claim(&job(2), 1, &first, &first), Fence::Keep);
        let newer = Claim {
            generation: 8,
            peer: order[2].to_string(),
        };
        assert_eq!(accept_claim(&job(2), 1, &first, &newer), Fence::Discard);
    }

    #[test]
    fn the_first_holder_restores_at_once_and_the_next_waits_its_turn() {
        let holders = peers(3);
        let order: Vec<String> = restore_order(&job(3), 0, 0, &holders)
            .into_iter()
            .map(str::to_string)
            .collect();
        let watch = |me: &str| RestoreWatch::new(job(3), 0, 0, &holders, me, 10 * S, TURN);
        let mut first = watch(&order[0]);
        let mut second = watch(&order[1]);
        let mut third = watch(&order[2]);
        assert_eq!(first.next_deadline(), Some(10 * S));
        assert_eq!(second.next_deadline(), Some(10 * S + TURN));
        assert_eq!(third.next_deadline(), Some(10 * S + 2 * TURN));
        assert_eq!(
            first.tick(10 * S),
            Some(RestoreStep::Restore { generation: 1 })
        );
        assert_eq!(first.next_deadline(), None);
        // The announcement reaches the others: they stand down.
        let c = Claim {
            generation: 1,
            peer: order[0].clone(),
        };
        assert_eq!(second.restored(&c), Some(RestoreStep::StandDown));
        assert_eq!(second.tick(10 * S + TURN), None);
        assert_eq!(third.restored(&c), Some(RestoreStep::StandDown));
        // A stale announcement (of the generation that died) changes nothing.
        let mut fresh = watch(&order[1]);
        let stale = Claim {
            generation: 0,
            peer: order[0].clone(),
        };
        assert_eq!(fresh.restored(&stale), None);
        assert_eq!(fresh.next_deadline(), Some(10 * S + TURN));
    }

    #[test]
    fn a_chosen_holder_that_is_dead_or_silent_does_not_lose_the_replica() {
        let holders = peers(3);
        let order: Vec<String> = restore_order(&job(4), 2, 5, &holders)
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut third = RestoreWatch::new(job(4), 2, 5, &holders, &order[2], S, TURN);
        // Silent: the third waits two turns, then restores.
        assert_eq!(third.tick(S + 2 * TURN - S), None);
        // Known dead, the first's turn is skipped: the third is next after the second.
        third.holder_down(&order[0]);
        assert_eq!(third.next_deadline(), Some(S + TURN));
        third.holder_down(&order[1]);
        assert_eq!(third.next_deadline(), Some(S));
        // ...unless one comes back before the turn came.
        third.holder_up(&order[1]);
        assert_eq!(third.next_deadline(), Some(S + TURN));
        assert_eq!(
            third.tick(S + TURN),
            Some(RestoreStep::Restore { generation: 6 })
        );
        // The second restored as well (it thought itself first): the earlier keeps it.
        let other = Claim {
            generation: 6,
            peer: order[1].clone(),
        };
        assert_eq!(
            third.restored(&other),
            Some(RestoreStep::Discard { generation: 6 })
        );
        // A node that is not a holder never restores.
        let outsider = RestoreWatch::new(job(4), 2, 5, &holders, "someone-else", S, TURN);
        assert_eq!(outsider.next_deadline(), None);
    }

    proptest! {
        /// Holders with one view of who is dead, announcements delivered at once: exactly
        /// one live holder restores (the first live in the order), whatever the order of
        /// events, and nobody discards.
        #[test]
        fn with_one_view_exactly_the_first_live_holder_restores(
            n in 1usize..7,
            dead_mask in any::<u8>(),
            job_byte: u8,
            generation in 0u64..1000,
        ) {
            let holders = peers(n);
            let dead: BTreeSet<&String> =
                holders.iter().enumerate().filter(|(i, _)| dead_mask >> i & 1 == 1).map(|(_, p)| p).collect();
            let mut watches: Vec<RestoreWatch> = holders
                .iter()
                .filter(|p| !dead.contains(p))
                .map(|me| {
                    let mut w = RestoreWatch::new(job(job_byte), 0, generation, &holders, me, S, TURN);
                    for d in &dead {
                        w.holder_down(d);
                    }
                    w
                })
                .collect();
            let mut restorers = Vec::new();
            while let Some((i, at)) = watches
                .iter()
                .enumerate()
                .filter_map(|(i, w)| Some((i, w.next_deadline()?)))
                .min_by_key(|(_, at)| *at)
            {
                let step = watches[i].tick(at);
                prop_assert_eq!(step.clone(), Some(RestoreStep::Restore { generation: generation + 1 }));
                let c = Claim { generation: generation + 1, peer: holders.iter().find(|p| watches[i].me == **p).unwrap().clone() };
                restorers.push(c.peer.clone());
                for (j, w) in watches.iter_mut().enumerate() {
                    if j != i {
                        let step = w.restored(&c);
                        prop_assert!(step.is_none() || step == Some(RestoreStep::StandDown));
                    }
                }
            }
            let live: Vec<String> = holders.iter().filter(|p| !dead.contains(p)).cloned().collect();
            let expected: Vec<String> = chosen_restorer(&job(job_byte), 0, generation, &live)
                .map(str::to_string)
                .into_iter()
                .collect();
            prop_assert_eq!(restorers, expected);
        }
    }
}
