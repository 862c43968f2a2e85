//! The cell keeper: when the node refreshes what it tells its cell, announces itself and
//! looks for members of its cell in the DHT, publishes its cell's summary (if it is a
//! representative) and moves to a cell of another size. Pure: the daemon's `maintain` loop
//! sleeps until [`CellKeeper::next_deadline`], asks [`CellKeeper::round`] what this round
//! does, does it, and asks [`CellKeeper::decide_move`] with the mesh-size estimate it then
//! holds; the simulator drives the same keeper in virtual time.
//!
//! Time is a [`Duration`] since the driver's fixed epoch.
//!
//! The rhythm: a round every [`KeeperConfig::round_interval`] (the first at once). Rounds
//! come in cycles of [`KeeperConfig::summary_every_rounds`]; the second of each cycle
//! publishes the summary and is the one that may move the node to another cell. A move is
//! held down for [`KeeperConfig::move_hold_down`]: while the mesh moves, half-filled new
//! cells and the old cells' summaries would otherwise make the estimate swing and the node
//! move back and forth.
//!
//! The DHT: after a start or a move the node announces itself as a member of its cell (a
//! provider record) and looks the cell's members up, in the first two rounds (a young node's
//! routing table may be empty in the first). After that, chitchat spreads membership and the
//! DHT is only for what gossip cannot do:
//! - **Lookups find members a partition kept apart.** What matters is that *some* member of
//!   each part looks now and then, so each member looks once per
//!   [`KeeperConfig::cell_lookup_every_rounds`] times the members it holds (the cell as a
//!   whole then looks about once per that many rounds, whatever its size), never more often
//!   than [`KeeperConfig::min_lookup_every_rounds`] nor less than
//!   [`KeeperConfig::max_lookup_every_rounds`]. A lookup asks ~60 peers and each answer
//!   carries up to 20 providers: at 200 members, every member looking every 5 minutes cost
//!   ~12 KB/s per node in the minute they all did it.
//! - **Announcements keep the record on the peers closest to the cell's key** as those
//!   change: once per [`KeeperConfig::provide_every_rounds`].
//!
//! Each wait is drawn between half and one and a half times its period (from the keeper's
//! seed), so nodes that started together do not look together; a wait for a lookup is
//! measured against the period of the cell's size *now*, so a cell that shrinks (a
//! partition) looks sooner.

use std::time::Duration;

use novacron_mesh::jitter::Jitter;

/// How long a published cell summary lives (seconds): its signed expiry, and the hold-down
/// after a move.
pub const SUMMARY_TTL_S: u64 = 600;

/// The keeper's rhythm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeeperConfig {
    /// How often the node refreshes what it tells its cell and does the round's work.
    pub round_interval: Duration,
    /// A summary is republished once per this many rounds (well inside its lifetime).
    pub summary_every_rounds: u32,
    /// The cell as a whole looks itself up in the DHT about once per this many rounds: each
    /// member once per this many rounds times the members it holds.
    pub cell_lookup_every_rounds: u32,
    /// A member looks its cell up at most once per this many rounds (a small cell).
    pub min_lookup_every_rounds: u32,
    /// A member looks its cell up at least once per this many rounds (a big cell).
    pub max_lookup_every_rounds: u32,
    /// The node announces itself as a member of its cell in the DHT once per this many
    /// rounds.
    pub provide_every_rounds: u32,
    /// After moving to another cell the node stays at least this long.
    pub move_hold_down: Duration,
}

impl Default for KeeperConfig {
    fn default() -> Self {
        KeeperConfig {
            round_interval: Duration::from_secs(10),
            summary_every_rounds: 6,
            // With 10 s rounds: the cell looks every ~30 s; a member of a cell of up to 10
            // every ~5 minutes, of 200 every ~100 minutes, of more every ~2 hours.
            cell_lookup_every_rounds: 3,
            min_lookup_every_rounds: 30,
            max_lookup_every_rounds: 720,
            // Hourly; Kademlia keeps provider records 48 hours.
            provide_every_rounds: 360,
            move_hold_down: Duration::from_secs(SUMMARY_TTL_S),
        }
    }
}

impl KeeperConfig {
    /// Rounds between a member's lookups of a cell of which it holds `members`.
    pub fn lookup_every_rounds(&self, members: u64) -> u32 {
        let every = u64::from(self.cell_lookup_every_rounds).saturating_mul(members);
        let max = self.max_lookup_every_rounds.max(1);
        let min = self.min_lookup_every_rounds.clamp(1, max);
        u32::try_from(every).unwrap_or(u32::MAX).clamp(min, max)
    }
}

/// What one maintenance round does besides refreshing the node's own entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// Announce this node as a member of its cell in the DHT.
    pub provide: bool,
    /// Look the cell's members up in the DHT.
    pub look_up_members: bool,
    /// Publish the cell's summary if this node is one of its representatives, then see
    /// whether the node should move ([`CellKeeper::decide_move`]).
    pub publish_summary: bool,
}

/// Rounds that announce and look the cell up after a start or a move (the node is finding
/// its cell).
const JOIN_ROUNDS: u32 = 2;

/// A move to the cell of `prefix_bits` bits, for a mesh of about `estimate` nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellMove {
    pub prefix_bits: u8,
    pub estimate: u64,
}

/// A recurring DHT task's state: when it last ran and the share of its period to wait.
#[derive(Clone, Copy, Debug)]
struct Recurring {
    last: u32,
    /// Percent of the period to wait this time, in [50, 150).
    wait_pct: u32,
}

impl Recurring {
    fn due(&self, index: u32, every_rounds: u32) -> bool {
        let wait = u64::from(every_rounds) * u64::from(self.wait_pct) / 100;
        u64::from(index.wrapping_sub(self.last)) >= wait.max(1)
    }
}

/// The keeper's state: where it is in its cycle, when the next round is due, when the node
/// last moved, and when it last announced itself and looked its cell up.
#[derive(Clone, Debug)]
pub struct CellKeeper {
    cfg: KeeperConfig,
    round: u32,
    next_round: Duration,
    moved_at: Option<Duration>,
    /// Rounds left that announce and look the cell up whatever the schedule (after a start
    /// or a move).
    join_rounds: u32,
    lookup: Recurring,
    provide: Recurring,
    jitter: Jitter,
}

impl CellKeeper {
    /// A keeper whose first round is due at `now`; `seed` draws its jitter (the daemon uses
    /// its PeerId, so nodes differ).
    pub fn new(cfg: KeeperConfig, now: Duration, seed: u64) -> CellKeeper {
        let start = Recurring {
            last: 0,
            wait_pct: 100,
        };
        CellKeeper {
            cfg,
            round: 0,
            next_round: now,
            moved_at: None,
            join_rounds: JOIN_ROUNDS,
            lookup: start,
            provide: start,
            jitter: Jitter::new(seed),
        }
    }

    /// When the next round is due.
    pub fn next_deadline(&self) -> Duration {
        self.next_round
    }

    /// The round due at `now`, if one is, for a cell of which the node holds `members` (the
    /// next is then due a round interval later: rounds late because the driver was busy are
    /// not made up for).
    pub fn round(&mut self, now: Duration, members: u64) -> Option<Round> {
        if now < self.next_round {
            return None;
        }
        let every = self.cfg.summary_every_rounds.max(1);
        let index = self.round;
        self.round = self.round.wrapping_add(1);
        self.next_round = now + self.cfg.round_interval;
        let joining = self.join_rounds > 0;
        self.join_rounds = self.join_rounds.saturating_sub(1);
        let look_up_members = joining
            || self
                .lookup
                .due(index, self.cfg.lookup_every_rounds(members));
        if look_up_members {
            self.lookup = self.restart(index);
        }
        let provide = joining || self.provide.due(index, self.cfg.provide_every_rounds);
        if provide {
            self.provide = self.restart(index);
        }
        Some(Round {
            provide,
            look_up_members,
            publish_summary: index % every == 1,
        })
    }

    /// A recurring task that ran at round `index`, with a fresh wait in [50%, 150%).
    fn restart(&mut self, index: u32) -> Recurring {
        Recurring {
            last: index,
            wait_pct: self.jitter.next_pct(),
        }
    }

    /// Whether the node should move from its cell of `prefix_bits` bits, given the prefix
    /// length its mesh-size estimate calls for (`wanted`, from
    /// [`super::cell_size::next_cell_bits`]): a move when they differ and the last move is
    /// older than the hold-down. A move returned is taken to happen at `now`.
    pub fn decide_move(
        &mut self,
        now: Duration,
        prefix_bits: u8,
        wanted: Option<(u8, u64)>,
    ) -> Option<CellMove> {
        if self.held_down(now) {
            return None;
        }
        let (bits, estimate) = wanted.filter(|&(bits, _)| bits != prefix_bits)?;
        self.moved_at = Some(now);
        self.join_rounds = JOIN_ROUNDS;
        Some(CellMove {
            prefix_bits: bits,
            estimate,
        })
    }

    /// Whether a move now would come too soon after the last.
    pub fn held_down(&self, now: Duration) -> bool {
        self.moved_at
            .is_some_and(|t| now.saturating_sub(t) < self.cfg.move_hold_down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn keeper() -> CellKeeper {
        CellKeeper::new(KeeperConfig::default(), Duration::ZERO, 7)
    }

    /// The rounds (by index) of `rounds` rounds of a cell held at `members(index)` that do
    /// what `pick` picks.
    fn rounds_that(
        k: &mut CellKeeper,
        rounds: u64,
        members: impl Fn(u64) -> u64,
        pick: impl Fn(&Round) -> bool,
    ) -> Vec<u64> {
        (0..rounds)
            .filter(|&i| pick(&k.round(Duration::from_secs(i * 10), members(i)).unwrap()))
            .collect()
    }

    fn gaps(at: &[u64]) -> Vec<u64> {
        at.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[test]
    fn the_first_round_is_at_once_and_the_next_a_round_interval_later() {
        let mut k = keeper();
        assert_eq!(k.next_deadline(), Duration::ZERO);
        assert!(k.round(Duration::ZERO, 1).is_some());
        assert_eq!(k.next_deadline(), 10 * S);
        assert_eq!(k.round(10 * S - Duration::from_millis(1), 1), None);
        assert!(k.round(10 * S, 1).is_some());
        // A late round: the next counts from when it ran, none is made up for.
        assert!(k.round(35 * S, 1).is_some());
        assert_eq!(k.next_deadline(), 45 * S);
        assert_eq!(k.round(40 * S, 1), None);
    }

    #[test]
    fn announces_and_looks_up_while_joining_and_publishes_once_a_cycle() {
        let mut k = keeper();
        let rounds: Vec<Round> = (0..12).map(|i| k.round(i * 10 * S, 200).unwrap()).collect();
        let joining: Vec<(bool, bool)> = rounds
            .iter()
            .map(|r| (r.provide, r.look_up_members))
            .collect();
        assert_eq!(joining[..2], [(true, true), (true, true)]);
        assert!(joining[2..].iter().all(|&j| j == (false, false)));
        let publishes: Vec<bool> = rounds.iter().map(|r| r.publish_summary).collect();
        let cycle_publishes = [false, true, false, false, false, false];
        assert_eq!(publishes, [cycle_publishes, cycle_publishes].concat());
        // A move: the new cell is announced and looked up in the next two rounds.
        assert!(k.decide_move(120 * S, 0, Some((8, 50_000))).is_some());
        let after: Vec<(bool, bool)> = (12..16)
            .map(|i| k.round(i * 10 * S, 200).unwrap())
            .map(|r| (r.provide, r.look_up_members))
            .collect();
        assert_eq!(
            after,
            [(true, true), (true, true), (false, false), (false, false)]
        );
    }

    #[test]
    fn a_member_looks_up_less_often_the_bigger_its_cell_so_the_cell_looks_at_one_pace() {
        let cfg = KeeperConfig::default();
        let every: Vec<u32> = [0, 1, 10, 100, 200, 240, 1000, u64::MAX]
            .map(|n| cfg.lookup_every_rounds(n))
            .to_vec();
        assert_eq!(every, [30, 30, 30, 300, 600, 720, 720, 720]);
        // A floor above the ceiling: the ceiling wins, and a zero ceiling is one round.
        let odd = KeeperConfig {
            min_lookup_every_rounds: 900,
            ..cfg
        };
        assert_eq!(odd.lookup_every_rounds(5), 720);
        let zero = KeeperConfig {
            max_lookup_every_rounds: 0,
            ..cfg
        };
        assert_eq!(zero.lookup_every_rounds(5), 1);
    }

    #[test]
    fn lookups_and_announcements_come_once_a_jittered_period_on_average() {
        for (members, period) in [(5, 30), (100, 300), (200, 600)] {
            let mut k = keeper();
            let at = rounds_that(&mut k, 300_000, |_| members, |r| r.look_up_members);
            let gaps = gaps(&at[1..]);
            let mean = gaps.iter().sum::<u64>() as f64 / gaps.len() as f64;
            assert!(
                (mean / period as f64 - 1.0).abs() < 0.05,
                "{members}: {mean}"
            );
            assert!(gaps.iter().all(|&g| g >= period / 2 && g < period * 3 / 2));
            assert!(
                gaps.iter().min() < Some(&(period * 6 / 10)),
                "{members}: jitter"
            );
            assert!(
                gaps.iter().max() > Some(&(period * 14 / 10)),
                "{members}: jitter"
            );
        }
        let mut k = keeper();
        let at = rounds_that(&mut k, 300_000, |_| 200, |r| r.provide);
        let gaps = gaps(&at[1..]);
        let mean = gaps.iter().sum::<u64>() as f64 / gaps.len() as f64;
        assert!((mean / 360.0 - 1.0).abs() < 0.05, "{mean}");
        assert!(gaps.iter().all(|&g| (180..540).contains(&g)));
    }

    #[test]
    fn nodes_that_start_together_do_not_look_together() {
        // 200 members of one cell, all started at once: their first lookups after the join
        // spread over the jitter's whole range, so no minute holds many of them.
        let mut first: Vec<u64> = (0..200u64)
            .map(|seed| {
                let mut k = CellKeeper::new(KeeperConfig::default(), Duration::ZERO, seed);
                rounds_that(&mut k, 1000, |_| 200, |r| r.look_up_members)[2]
            })
            .collect();
        first.sort();
        assert!(first[0] > 300 && first[199] <= 900, "{first:?}");
        // Uniform over 600 rounds: 2 per 6 rounds on average.
        let busiest_minute = novacron_mesh::jitter::most_within(&first, 6);
        assert!(
            busiest_minute <= 8,
            "{busiest_minute} lookups in one minute"
        );
    }

    #[test]
    fn a_cell_that_shrinks_looks_itself_up_sooner() {
        // A member of 200 (next lookup 300-900 rounds away) whose cell splits to 3 members at
        // round 100 (a partition): it looks within the small cell's period.
        let mut k = keeper();
        let at = rounds_that(
            &mut k,
            200,
            |i| if i < 100 { 200 } else { 3 },
            |r| r.look_up_members,
        );
        assert_eq!(at[..2], [0, 1]);
        assert!(at.len() > 2 && at[2] <= 100 + 45, "{at:?}");
    }

    #[test]
    fn a_move_happens_only_when_the_size_differs_and_is_held_down_after() {
        let mut k = keeper();
        // The estimate agrees with the cell: no move.
        assert_eq!(k.decide_move(10 * S, 8, None), None);
        assert_eq!(k.decide_move(10 * S, 8, Some((8, 50_000))), None);
        let moved = k.decide_move(10 * S, 0, Some((8, 50_000)));
        assert_eq!(
            moved,
            Some(CellMove {
                prefix_bits: 8,
                estimate: 50_000
            })
        );
        // Within the hold-down the estimate may swing: the node stays.
        assert!(k.held_down(10 * S + 599 * S));
        assert_eq!(k.decide_move(10 * S + 599 * S, 8, Some((0, 40))), None);
        // After it, a real change moves the node again.
        assert!(!k.held_down(10 * S + 600 * S));
        assert_eq!(
            k.decide_move(10 * S + 600 * S, 8, Some((0, 40))),
            Some(CellMove {
                prefix_bits: 0,
                estimate: 40
            })
        );
    }

    #[test]
    fn no_hold_down_before_the_first_move() {
        let k = keeper();
        assert!(!k.held_down(Duration::ZERO));
    }
}
