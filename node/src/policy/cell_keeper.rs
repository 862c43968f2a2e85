//! The cell keeper: when the node refreshes what it tells its cell, looks for members of its
//! cell in the DHT, publishes its cell's summary (if it is a representative) and moves to a
//! cell of another size. Pure: the daemon's `maintain` loop sleeps until
//! [`CellKeeper::next_deadline`], asks [`CellKeeper::round`] what this round does, does it,
//! and asks [`CellKeeper::decide_move`] with the mesh-size estimate it then holds; the
//! simulator drives the same keeper in virtual time.
//!
//! Time is a [`Duration`] since the driver's fixed epoch.
//!
//! The rhythm: a round every [`KeeperConfig::round_interval`] (the first at once). Rounds
//! come in cycles of [`KeeperConfig::summary_every_rounds`]: the first two of each cycle look
//! the cell up in the DHT (a young node's routing table may be empty in the first), the
//! second publishes the summary and is the one that may move the node to another cell. A
//! move is held down for [`KeeperConfig::move_hold_down`]: while the mesh moves, half-filled
//! new cells and the old cells' summaries would otherwise make the estimate swing and the
//! node move back and forth.

use std::time::Duration;

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
    /// Once the node has joined its cell, it looks the cell up in the DHT once per this many
    /// rounds (chitchat spreads membership; the DHT finds members a partition kept apart).
    /// A lookup with its provider record is a query to every peer of a small mesh: every
    /// minute, it cost ~23 KB/s per node at 20 nodes.
    pub lookup_every_rounds: u32,
    /// After moving to another cell the node stays at least this long.
    pub move_hold_down: Duration,
}

impl Default for KeeperConfig {
    fn default() -> Self {
        KeeperConfig {
            round_interval: Duration::from_secs(10),
            summary_every_rounds: 6,
            lookup_every_rounds: 30,
            move_hold_down: Duration::from_secs(SUMMARY_TTL_S),
        }
    }
}

/// What one maintenance round does besides refreshing the node's own entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// Look the cell's members up in the DHT.
    pub look_up_members: bool,
    /// Publish the cell's summary if this node is one of its representatives, then see
    /// whether the node should move ([`CellKeeper::decide_move`]).
    pub publish_summary: bool,
}

/// Rounds that look the cell up after a start or a move (the node is finding its cell).
const JOIN_LOOKUPS: u32 = 2;

/// A move to the cell of `prefix_bits` bits, for a mesh of about `estimate` nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellMove {
    pub prefix_bits: u8,
    pub estimate: u64,
}

/// The keeper's state: where it is in its cycle, when the next round is due, and when the
/// node last moved.
#[derive(Clone, Debug)]
pub struct CellKeeper {
    cfg: KeeperConfig,
    round: u32,
    next_round: Duration,
    moved_at: Option<Duration>,
    /// Rounds left that look the cell up whatever the cycle (after a start or a move).
    join_lookups: u32,
}

impl CellKeeper {
    /// A keeper whose first round is due at `now`.
    pub fn new(cfg: KeeperConfig, now: Duration) -> CellKeeper {
        CellKeeper {
            cfg,
            round: 0,
            next_round: now,
            moved_at: None,
            join_lookups: JOIN_LOOKUPS,
        }
    }

    /// When the next round is due.
    pub fn next_deadline(&self) -> Duration {
        self.next_round
    }

    /// The round due at `now`, if one is (the next is then due a round interval later:
    /// rounds late because the driver was busy are not made up for).
    pub fn round(&mut self, now: Duration) -> Option<Round> {
        if now < self.next_round {
            return None;
        }
        let every = self.cfg.summary_every_rounds.max(1);
        let index = self.round;
        let phase = index % every;
        self.round = self.round.wrapping_add(1);
        self.next_round = now + self.cfg.round_interval;
        let joining = self.join_lookups > 0;
        self.join_lookups = self.join_lookups.saturating_sub(1);
        let periodic = index.is_multiple_of(self.cfg.lookup_every_rounds.max(1));
        Some(Round {
            look_up_members: joining || periodic,
            publish_summary: phase == 1,
        })
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
        self.join_lookups = JOIN_LOOKUPS;
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
        CellKeeper::new(KeeperConfig::default(), Duration::ZERO)
    }

    #[test]
    fn the_first_round_is_at_once_and_the_next_a_round_interval_later() {
        let mut k = keeper();
        assert_eq!(k.next_deadline(), Duration::ZERO);
        assert!(k.round(Duration::ZERO).is_some());
        assert_eq!(k.next_deadline(), 10 * S);
        assert_eq!(k.round(10 * S - Duration::from_millis(1)), None);
        assert!(k.round(10 * S).is_some());
        // A late round: the next counts from when it ran, none is made up for.
        assert!(k.round(35 * S).is_some());
        assert_eq!(k.next_deadline(), 45 * S);
        assert_eq!(k.round(40 * S), None);
    }

    #[test]
    fn looks_up_while_joining_then_every_lookup_cycle_and_publishes_once_a_cycle() {
        let mut k = keeper();
        let rounds: Vec<Round> = (0..62).map(|i| k.round(i * 10 * S).unwrap()).collect();
        let lookups: Vec<u64> = (0..62)
            .filter(|&i| rounds[i as usize].look_up_members)
            .collect();
        assert_eq!(lookups, [0, 1, 30, 60]);
        let publishes: Vec<bool> = rounds[..12].iter().map(|r| r.publish_summary).collect();
        let cycle_publishes = [false, true, false, false, false, false];
        assert_eq!(publishes, [cycle_publishes, cycle_publishes].concat());
        // A move: the new cell is looked up in the next two rounds.
        assert!(k.decide_move(620 * S, 0, Some((8, 50_000))).is_some());
        let after: Vec<bool> = (62..66)
            .map(|i| k.round(i * 10 * S).unwrap().look_up_members)
            .collect();
        assert_eq!(after, [true, true, false, false]);
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
