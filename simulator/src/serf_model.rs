//! Serf's closed-form convergence model (the formula behind its convergence simulator, as
//! given in `shared/data/mesh-models.toml`):
//!
//! `infected(r) = N / (1 + (N + 1) * exp(-contact * N * r))`, with
//! `contact = fanout / N * (1 - loss) * (1 - fail)`.
//!
//! It is the logistic curve of an epidemic in which each holder reaches `fanout` members a
//! round: the mean-field limit of memberlist's gossip. The simulator's epidemic model is
//! checked against it (`epidemic` tests and `flat-serf.toml`).

/// Rounds until `fraction` of the `nodes` hold the message, by the closed form.
pub fn rounds_to(fraction: f64, nodes: u64, fanout: u32, loss: f64, failed: f64) -> f64 {
    // infected / N = f  <=>  (N + 1) * exp(-rate * r) = 1/f - 1
    ((nodes as f64 + 1.0) * fraction / (1.0 - fraction)).ln() / rate(fanout, loss, failed)
}

/// The share of the `nodes` holding the message after `rounds`, by the closed form.
pub fn reached_fraction(rounds: f64, nodes: u64, fanout: u32, loss: f64, failed: f64) -> f64 {
    let rate = rate(fanout, loss, failed);
    1.0 / (1.0 + (nodes as f64 + 1.0) * (-rate * rounds).exp())
}

/// `contact * N`: the members a holder reaches per round.
fn rate(fanout: u32, loss: f64, failed: f64) -> f64 {
    f64::from(fanout) * (1.0 - loss) * (1.0 - failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_gives_the_published_rounds_at_fifty_thousand() {
        // mesh-models.toml: N = 50,000, fanout 3 reaches 99.99% in 7 rounds (8 with 5% loss).
        let clean = rounds_to(0.9999, 50_000, 3, 0.0, 0.0);
        let lossy = rounds_to(0.9999, 50_000, 3, 0.05, 0.0);
        assert_eq!(clean.ceil(), 7.0, "{clean}");
        assert_eq!(lossy.ceil(), 8.0, "{lossy}");
        assert!(rounds_to(0.9999, 50_000, 3, 0.0, 0.1) > clean);
        let back = reached_fraction(clean, 50_000, 3, 0.0, 0.0);
        assert!((back - 0.9999).abs() < 1e-9, "{back}");
    }
}
