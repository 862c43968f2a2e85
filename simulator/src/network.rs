//! The links between nodes: each pair's round-trip time is drawn once from the scenario's
//! log-normal model, fixed by the run's seed and the pair (so it costs no memory per pair),
//! and each message may be lost.

use crate::rng::{pair_hash, SimRng};
use crate::scenario::NetworkSection;
use crate::time::SimDuration;

/// Keeps the round-trip draws apart from every other per-pair draw.
const RTT_STREAM: u64 = 0x5254_545f_0000_0001;

/// A run's network.
#[derive(Clone, Debug)]
pub struct Network {
    seed: u64,
    mu: f64,
    sigma: f64,
    loss: f64,
}

impl Network {
    pub fn new(section: &NetworkSection, seed: u64) -> Network {
        Network {
            seed,
            mu: section.rtt_lognormal_mu_ln_ms,
            sigma: section.rtt_lognormal_sigma,
            loss: section.loss,
        }
    }

    /// The round-trip time between `a` and `b` (the same both ways, every time).
    pub fn rtt(&self, a: u64, b: u64) -> SimDuration {
        let mut pair = SimRng::new(pair_hash(self.seed ^ RTT_STREAM, a, b));
        SimDuration::from_millis_f64(pair.lognormal(self.mu, self.sigma))
    }

    /// The one-way delay from `a` to `b`: half the round trip.
    pub fn one_way(&self, a: u64, b: u64) -> SimDuration {
        SimDuration(self.rtt(a, b).0 / 2)
    }

    /// Whether a message is lost, drawn from `rng`.
    pub fn lost(&self, rng: &mut SimRng) -> bool {
        self.loss > 0.0 && rng.chance(self.loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_follow_the_published_model_and_are_symmetric() {
        let net = Network::new(&NetworkSection::default(), 11);
        let mut rtts: Vec<f64> = (0..20_000u64)
            .map(|i| net.rtt(i, i + 1_000_003).as_millis_f64())
            .collect();
        rtts.sort_by(f64::total_cmp);
        let at = |q: f64| rtts[(q * rtts.len() as f64) as usize];
        // Saroiu et al.: median 140 ms, p20 70 ms, p80 280 ms.
        assert!((at(0.5) / 140.0 - 1.0).abs() < 0.05, "median {}", at(0.5));
        assert!((at(0.2) / 70.0 - 1.0).abs() < 0.08, "p20 {}", at(0.2));
        assert!((at(0.8) / 280.0 - 1.0).abs() < 0.08, "p80 {}", at(0.8));
        assert_eq!(net.rtt(3, 9), net.rtt(9, 3));
        assert_eq!(net.one_way(3, 9).0, net.rtt(3, 9).0 / 2);
    }

    #[test]
    fn losses_follow_the_loss_rate() {
        let section = NetworkSection {
            loss: 0.05,
            ..NetworkSection::default()
        };
        let net = Network::new(&section, 1);
        let mut rng = SimRng::new(5);
        let lost = (0..100_000).filter(|_| net.lost(&mut rng)).count();
        assert!((4_700..5_300).contains(&lost), "{lost}");
        let lossless = Network::new(&NetworkSection::default(), 1);
        assert!(!(0..1000).any(|_| lossless.lost(&mut rng)));
    }
}
