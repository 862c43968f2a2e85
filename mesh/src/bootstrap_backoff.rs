//! When a node with a small routing table runs Kademlia's bootstrap query again.
//!
//! While a node's table holds fewer than k peers it has not found its neighbourhood, and
//! Kademlia by itself bootstraps again only when a new entry arrives or its periodic interval
//! (minutes) passes: two nodes joining through the same peer at once can each finish before
//! that peer admitted the other, and a bootstrap peer that was down at start stays in the
//! table undialed. So a small table bootstraps again after [`FIRST_RETRY`]. But a small
//! table is also simply a small mesh (20 nodes: 19 peers, forever), where every bootstrap is
//! a lookup sent to every peer, and each answered by every peer: repeated every 10 s it cost
//! ~39 KB/s per node at 20 nodes, twice the whole budget. So the retry backs off, doubling
//! while the table stops growing, up to [`MAX_RETRY`], and starts again from
//! [`FIRST_RETRY`] when the table grew or shrank since the last run.
//!
//! Pure: the driver passes `now` (since its epoch) and the table's size.

use std::time::Duration;

/// The first retry after a run, and the retry while the table keeps changing.
pub const FIRST_RETRY: Duration = Duration::from_secs(10);
/// The longest wait between retries (the table refresh comes every ~10 minutes).
pub const MAX_RETRY: Duration = Duration::from_secs(5 * 60);

/// The retry schedule of a small table's bootstrap.
#[derive(Clone, Debug)]
pub struct BootstrapBackoff {
    /// A table of this many entries or more is not small.
    small_below: usize,
    retry: Duration,
    next_at: Duration,
    /// The table's size at the last run.
    size_then: usize,
}

impl BootstrapBackoff {
    /// A schedule for tables smaller than `small_below` (Kademlia's k), the first retry
    /// [`FIRST_RETRY`] after `now` (the node bootstraps at start on its own).
    pub fn new(small_below: usize, now: Duration) -> BootstrapBackoff {
        BootstrapBackoff {
            small_below,
            retry: FIRST_RETRY,
            next_at: now + FIRST_RETRY,
            size_then: 0,
        }
    }

    /// Whether to bootstrap now, with the table at `size` entries.
    pub fn due(&mut self, now: Duration, size: usize) -> bool {
        if size != self.size_then && self.retry > FIRST_RETRY {
            // The table changed since the last run: its neighbourhood is moving, look soon.
            self.retry = FIRST_RETRY;
            self.next_at = self.next_at.min(now + FIRST_RETRY);
        }
        if size == 0 || size >= self.small_below || now < self.next_at {
            return false;
        }
        if size == self.size_then {
            self.retry = (self.retry * 2).min(MAX_RETRY);
        } else {
            self.retry = FIRST_RETRY;
        }
        self.size_then = size;
        self.next_at = now + self.retry;
        true
    }

    /// The wait after the last run.
    pub fn retry(&self) -> Duration {
        self.retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(b: &mut BootstrapBackoff, sizes: impl Fn(u64) -> usize, secs: u64) -> Vec<u64> {
        (0..secs)
            .filter(|&s| b.due(Duration::from_secs(s), sizes(s)))
            .collect()
    }

    #[test]
    fn a_small_mesh_that_stopped_growing_backs_off_to_the_maximum() {
        let mut b = BootstrapBackoff::new(20, Duration::ZERO);
        // 20 nodes: the table reaches 19 at once and stays there.
        let at = runs(&mut b, |_| 19, 3600);
        assert_eq!(&at[..6], &[10, 20, 40, 80, 160, 320], "{at:?}");
        assert_eq!(b.retry(), MAX_RETRY);
        // About one run per 5 minutes in steady state, not 360 an hour.
        assert!(at.len() <= 16, "{}", at.len());
    }

    #[test]
    fn a_growing_or_shrinking_table_looks_again_soon() {
        let mut b = BootstrapBackoff::new(20, Duration::ZERO);
        let size = |s: u64| {
            if s < 500 {
                10
            } else if s < 1000 {
                12
            } else {
                11
            }
        };
        let at = runs(&mut b, size, 1100);
        // Backing off at 10 peers, then a change brings the retry back to 10 s.
        assert!(
            at.contains(&500) || at.iter().any(|&s| (500..=510).contains(&s)),
            "{at:?}"
        );
        assert!(at.iter().any(|&s| (1000..=1010).contains(&s)), "{at:?}");
    }

    #[test]
    fn an_empty_or_full_table_never_bootstraps_here() {
        let mut b = BootstrapBackoff::new(20, Duration::ZERO);
        assert!(runs(&mut b, |_| 0, 100).is_empty());
        assert!(runs(&mut b, |_| 20, 100).is_empty());
        assert!(runs(&mut b, |_| 250, 100).is_empty());
    }
}
