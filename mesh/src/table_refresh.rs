//! When a node refreshes its Kademlia routing table (Kademlia's bootstrap: a lookup of its
//! own id, then one per bucket farther out).
//!
//! libp2p runs it on a fixed period counted from the last run, so nodes that started
//! together stay in step: in a 200-node mesh started within a minute, all 200 refreshed
//! within that same minute every 5 minutes, each asking ~50 peers. Here each wait is drawn
//! between half and one and a half times the period ([`Jitter`]), and the period is
//! 10 minutes (go-libp2p-kad-dht's): the table is also kept fresh by every lookup the node
//! makes and every peer it meets, and a small table has its own faster retries
//! ([`crate::bootstrap_backoff`]).
//!
//! Pure: the driver passes `now` (since its epoch).

use std::time::Duration;

use crate::jitter::Jitter;

/// The mean wait between refreshes.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10 * 60);

/// The refresh schedule.
#[derive(Clone, Debug)]
pub struct TableRefresh {
    every: Duration,
    next_at: Duration,
    jitter: Jitter,
}

impl TableRefresh {
    /// A schedule of mean period `every` whose first refresh is a jittered period after
    /// `now` (the node bootstraps at start on its own).
    pub fn new(every: Duration, now: Duration, seed: u64) -> TableRefresh {
        let mut jitter = Jitter::new(seed);
        let next_at = now + jitter.wait(every);
        TableRefresh {
            every,
            next_at,
            jitter,
        }
    }

    /// When the next refresh is due (a driver that sleeps until a deadline waits for this).
    pub fn next_at(&self) -> Duration {
        self.next_at
    }

    /// Whether to refresh now; if so, the next one is scheduled.
    pub fn due(&mut self, now: Duration) -> bool {
        if now < self.next_at {
            return false;
        }
        self.next_at = now + self.jitter.wait(self.every);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn runs(seed: u64, secs: u64) -> Vec<u64> {
        let mut r = TableRefresh::new(REFRESH_EVERY, Duration::ZERO, seed);
        (0..secs)
            .filter(|&t| r.due(Duration::from_secs(t)))
            .collect()
    }

    #[test]
    fn refreshes_once_a_jittered_period_on_average() {
        let at = runs(1, 600 * 2000);
        let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(at[0] >= 300 && at[0] < 900);
        assert!(gaps.iter().all(|&g| (300..900).contains(&g)), "{gaps:?}");
        let mean = gaps.iter().sum::<u64>() as f64 / gaps.len() as f64;
        assert!((mean / 600.0 - 1.0).abs() < 0.05, "{mean}");
    }

    #[test]
    fn nodes_started_together_refresh_apart() {
        // 200 nodes started in the same second: their first refreshes spread over 10
        // minutes, not one.
        let first: Vec<u64> = (0..200).map(|seed| runs(seed, 1000)[0]).collect();
        // Uniform over 600 s: 20 a minute on average.
        let busiest_minute = crate::jitter::most_within(&first, 60);
        assert!(
            busiest_minute <= 35,
            "{busiest_minute} refreshes in one minute"
        );
    }

    #[test]
    fn a_late_check_refreshes_once_and_counts_from_then() {
        let mut r = TableRefresh::new(REFRESH_EVERY, Duration::ZERO, 3);
        assert!(r.due(3600 * S));
        assert!(!r.due(3600 * S));
        assert!(!r.due(3600 * S + 299 * S));
    }
}
