//! How often a node starts gossip exchanges with its cell: the pace that keeps cell gossip
//! within a byte budget at every cell size, following the cell's size as it grows and
//! shrinks in place.
//!
//! Why a pace and not chitchat's interval: chitchat reads its gossip interval once, when it
//! starts, and its round also beats the node's heartbeat and re-checks every member's phi.
//! So chitchat keeps a fixed round tick (its heartbeat), and the cell transport lets through
//! only as many of the round's exchanges with members as this pace admits: a token
//! bucket of [`FANOUT`] exchanges per interval. What the interval costs is one digest per
//! member each way per exchange; a node starts `FANOUT` exchanges per interval and answers
//! as many, so a cell of `n` members costs `~4 · FANOUT · DIGEST_BYTES_PER_MEMBER · n` bytes
//! per interval (Syn and SynAck digests, sent and received).
//!
//! The size is the number of members the node holds, live or not: every one is an entry of
//! every digest until it is forgotten, so that is what an exchange costs. The interval
//! follows it continuously with hysteresis: it is recomputed only
//! when the count moved by more than an eighth (at least 2 members) from the count it
//! was last set for, so a member coming and going does not move it back and forth.
//!
//! Pure: callers pass `now` (since their epoch) and the member counts they see.

use std::time::Duration;

/// Exchanges with members a node starts per interval: all 3 that chitchat asks for each
/// round (its `GOSSIP_COUNT`) while the budget allows. Above ~60 members the interval grows
/// past the round and the bucket, drained at every round, lets about one exchange through
/// per round at the budget's rate, so this changes only what small cells do. With 2 (the
/// second stop of issue 16, for ~10% less CPU at 30 members) small cells ran at 2 exchanges a
/// second and detection at 50 nodes slowed from ~6 s to 8.5–8.9 s p50, against the issue's
/// rule that the 50-node figures get no worse.
pub const FANOUT: u32 = 3;

/// Bytes one member's entry costs in a digest, compressed, as measured (15-character short
/// ids, generation, heartbeat, versions).
pub const DIGEST_BYTES_PER_MEMBER: u64 = 21;

/// Digests that pass through a node per interval: it starts [`FANOUT`] exchanges and answers
/// as many on average, and each exchange carries two (the Syn's and the SynAck's).
const DIGESTS_PER_INTERVAL: u64 = 2 * FANOUT as u64 * 2;

/// Cell gossip bytes per node per second the pace aims at (sent + received; the goal is
/// 20 KB/s for everything, the rest of the node's traffic included).
pub const DEFAULT_BUDGET_BYTES_PER_S: u64 = 15_000;

/// The shortest interval with the default round tick: one exchange per member of the
/// fanout per round. (A pace never admits more than its round tick asks for: its floor is
/// that tick, [`GossipPace::new`].)
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest interval: beyond it failure detection would take too long.
pub const MAX_INTERVAL: Duration = Duration::from_secs(6);

/// The interval that keeps a cell of `members` members within `budget` bytes per second:
/// [`MIN_INTERVAL`] up to ~60 members at the default budget, growing linearly after (200
/// members: ~3.4 s, for 3 exchanges: 0.89 a second), at most [`MAX_INTERVAL`].
pub fn interval_for(members: u64, budget_bytes_per_s: u64) -> Duration {
    interval_above(MIN_INTERVAL, members, budget_bytes_per_s)
}

/// [`interval_for`] with `floor` as the shortest interval.
fn interval_above(floor: Duration, members: u64, budget_bytes_per_s: u64) -> Duration {
    let per_interval = members
        .saturating_mul(DIGEST_BYTES_PER_MEMBER)
        .saturating_mul(DIGESTS_PER_INTERVAL);
    let ms = per_interval.saturating_mul(1000) / budget_bytes_per_s.max(1);
    Duration::from_millis(ms).clamp(floor, MAX_INTERVAL.max(floor))
}

/// Whether `live` is far enough from `set_for` to change the interval.
fn moved_enough(set_for: u64, live: u64) -> bool {
    let band = (set_for / 8).max(2);
    live.abs_diff(set_for) > band
}

/// The pace of one node's exchanges with its live cell members.
#[derive(Clone, Debug)]
pub struct GossipPace {
    budget_bytes_per_s: u64,
    /// The round tick: the interval is never shorter.
    floor: Duration,
    /// The member count the interval was computed for.
    set_for: u64,
    interval: Duration,
    /// Exchanges that may start now (at most [`FANOUT`]).
    tokens: f64,
    refilled_at: Duration,
}

impl GossipPace {
    /// A pace for a cell of `members` members (the caller's best guess at start: its
    /// own count, or the mesh-size estimate's cell size) under a round tick of `round`,
    /// starting with a full bucket.
    pub fn new(
        members: u64,
        budget_bytes_per_s: u64,
        round: Duration,
        now: Duration,
    ) -> GossipPace {
        GossipPace {
            budget_bytes_per_s,
            floor: round,
            set_for: members,
            interval: interval_above(round, members, budget_bytes_per_s),
            tokens: f64::from(FANOUT),
            refilled_at: now,
        }
    }

    /// The current interval: `FANOUT` exchanges are admitted per interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The member count the interval was computed for.
    pub fn members(&self) -> u64 {
        self.set_for
    }

    /// The cell now has `live` members (this node included). Returns the new interval
    /// when it changed.
    pub fn observe_members(&mut self, live: u64) -> Option<Duration> {
        if !moved_enough(self.set_for, live) {
            return None;
        }
        self.set_for = live;
        let next = interval_above(self.floor, live, self.budget_bytes_per_s);
        (next != self.interval).then(|| {
            self.interval = next;
            next
        })
    }

    /// Whether an exchange with a member may start at `now`; takes its token if so.
    pub fn admit(&mut self, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.refilled_at).as_secs_f64();
        self.refilled_at = self.refilled_at.max(now);
        let rate = f64::from(FANOUT) / self.interval.as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(FANOUT));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = DEFAULT_BUDGET_BYTES_PER_S;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn interval_grows_with_the_cell_within_bounds() {
        assert_eq!(interval_for(0, BUDGET), MIN_INTERVAL);
        assert_eq!(interval_for(50, BUDGET), MIN_INTERVAL);
        let i100 = interval_for(100, BUDGET);
        let i200 = interval_for(200, BUDGET);
        assert!(i100 > MIN_INTERVAL && i100 < i200, "{i100:?} {i200:?}");
        assert!(i200 >= ms(3000) && i200 <= ms(3600), "{i200:?}");
        // The rate the budget allows at 200 members: ~0.89 exchanges a second.
        let rate = f64::from(FANOUT) / i200.as_secs_f64();
        assert!((0.85..0.93).contains(&rate), "{rate}");
        assert_eq!(interval_for(10_000, BUDGET), MAX_INTERVAL);
        assert_eq!(interval_for(200, 0), MAX_INTERVAL);
    }

    #[test]
    fn the_interval_keeps_digest_bytes_within_the_budget() {
        for n in [50u64, 60, 100, 150, 200, 250] {
            let secs = interval_for(n, BUDGET).as_secs_f64();
            let bytes_per_s = (n * DIGEST_BYTES_PER_MEMBER * DIGESTS_PER_INTERVAL) as f64 / secs;
            assert!(bytes_per_s <= BUDGET as f64 * 1.01, "{n}: {bytes_per_s}");
        }
    }

    #[test]
    fn follows_a_cell_that_grows_and_shrinks_with_hysteresis() {
        let mut pace = GossipPace::new(2, BUDGET, MIN_INTERVAL, Duration::ZERO);
        assert_eq!(pace.interval(), MIN_INTERVAL);
        // Growing in place, one member at a time.
        let mut changes = Vec::new();
        for n in 3..=200 {
            if let Some(i) = pace.observe_members(n) {
                changes.push((n, i));
            }
        }
        assert!(changes.len() >= 5, "{changes:?}");
        assert!(changes.windows(2).all(|w| w[0].1 < w[1].1), "{changes:?}");
        let big = pace.interval();
        assert!(big >= ms(2000), "{big:?}");
        // One member coming and going does not move it.
        let at = pace.members();
        for n in [at - 1, at + 1, at - 2, at + 2, at] {
            assert_eq!(pace.observe_members(n), None, "{n}");
        }
        // Shrinking back.
        for n in (2..=at).rev() {
            pace.observe_members(n);
        }
        assert!(pace.interval() <= ms(1100), "{:?}", pace.interval());
    }

    #[test]
    fn admits_fanout_exchanges_per_interval() {
        let mut pace = GossipPace::new(200, BUDGET, MIN_INTERVAL, Duration::ZERO);
        let interval = pace.interval();
        // chitchat's rounds: every second, FANOUT exchanges asked for.
        let mut admitted = 0;
        let rounds = 600u64;
        for r in 0..rounds {
            for _ in 0..FANOUT {
                if pace.admit(Duration::from_secs(r)) {
                    admitted += 1;
                }
            }
        }
        let expected = rounds as f64 / interval.as_secs_f64() * f64::from(FANOUT);
        assert!(
            (admitted as f64 - expected).abs() <= expected * 0.02 + 3.0,
            "{admitted} vs {expected}"
        );
        // A small cell: every exchange passes.
        let mut small = GossipPace::new(10, BUDGET, MIN_INTERVAL, Duration::ZERO);
        assert!((0..30).all(|r| (0..FANOUT).all(|_| small.admit(Duration::from_secs(r)))));
    }

    #[test]
    fn a_faster_round_tick_lowers_the_floor() {
        let fast = Duration::from_millis(300);
        let mut pace = GossipPace::new(3, BUDGET, fast, Duration::ZERO);
        assert_eq!(pace.interval(), fast);
        pace.observe_members(200);
        assert_eq!(pace.interval(), interval_for(200, BUDGET));
        let slow = Duration::from_secs(10);
        assert_eq!(
            GossipPace::new(200, BUDGET, slow, Duration::ZERO).interval(),
            slow
        );
    }

    #[test]
    fn a_clock_going_backwards_admits_nothing_extra() {
        let mut pace = GossipPace::new(200, BUDGET, MIN_INTERVAL, Duration::from_secs(100));
        for _ in 0..FANOUT {
            assert!(pace.admit(Duration::from_secs(100)));
        }
        assert!(!pace.admit(Duration::from_secs(50)));
        assert!(!pace.admit(Duration::from_secs(100)));
    }
}
