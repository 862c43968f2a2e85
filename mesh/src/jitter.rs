//! Jitter that keeps nodes out of step: waits drawn between half and one and a half times a
//! period, deterministic from a seed (a node uses one derived from its PeerId, the simulator
//! its own), so nodes that started together do not do their periodic work together. Built on
//! splitmix64, a cheap, well-spread mix for decisions that need a spread, not a secret.

use std::time::Duration;

/// One splitmix64 finalisation of `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for `bytes` (a PeerId's): the first 8 bytes of their blake3 hash.
pub fn seed_of(bytes: &[u8]) -> u64 {
    let hash = blake3::hash(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// A sequence of jittered waits.
#[derive(Clone, Debug)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter { state: seed }
    }

    /// The next share of a period to wait, in percent: uniform in [50, 150).
    pub fn next_pct(&mut self) -> u32 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        50 + (splitmix64(self.state) % 100) as u32
    }

    /// The next wait for `period`: between half and one and a half times it.
    pub fn wait(&mut self, period: Duration) -> Duration {
        period * self.next_pct() / 100
    }
}

/// The most of `times` that fall within any window `[t, t + width)`: how bunched periodic
/// work is (tests and the simulator check that jitter spreads it).
pub fn most_within(times: &[u64], width: u64) -> usize {
    if width == 0 {
        return 0;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= width {
            start += 1;
        }
        most = most.max(end + 1 - start);
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs of the reference generator (state += golden gamma, then mix)
        // from state 0, as published with splitmix64.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn waits_cover_half_to_one_and_a_half_periods_evenly_and_repeat_per_seed() {
        let mut j = Jitter::new(42);
        let pcts: Vec<u32> = (0..100_000).map(|_| j.next_pct()).collect();
        assert!(pcts.iter().all(|p| (50..150).contains(p)));
        for decile in 0..10 {
            let lo = 50 + decile * 10;
            let n = pcts.iter().filter(|&&p| p >= lo && p < lo + 10).count();
            assert!((9_000..11_000).contains(&n), "decile {decile}: {n}");
        }
        let again: Vec<u32> = {
            let mut j = Jitter::new(42);
            (0..100).map(|_| j.next_pct()).collect()
        };
        assert_eq!(again, pcts[..100]);
        let other: Vec<u32> = {
            let mut j = Jitter::new(43);
            (0..100).map(|_| j.next_pct()).collect()
        };
        assert_ne!(other, pcts[..100]);
        let mut j = Jitter::new(7);
        let w = j.wait(Duration::from_secs(600));
        assert!(w >= Duration::from_secs(300) && w < Duration::from_secs(900));
    }

    #[test]
    fn most_within_counts_the_busiest_window() {
        assert_eq!(most_within(&[], 10), 0);
        assert_eq!(most_within(&[5], 0), 0);
        assert_eq!(most_within(&[30, 1, 9, 10, 2], 10), 4);
        assert_eq!(most_within(&[0, 10, 20], 10), 1);
        assert_eq!(most_within(&[0, 10, 20], 11), 2);
    }

    #[test]
    fn seeds_of_different_ids_differ() {
        assert_ne!(seed_of(b"peer a"), seed_of(b"peer b"));
        assert_eq!(seed_of(b"peer a"), seed_of(b"peer a"));
    }
}
