//! The run's random numbers: xoshiro256++ seeded through splitmix64, and the distributions
//! the models draw from (log-normal latency, Gamma and Weibull up-times, hyperexponential
//! down-times).
//!
//! Why our own generator: a run must give the same results for the same seed on every
//! machine and with every version of the dependencies; xoshiro256++ (Blackman and Vigna) is
//! a few lines, fast, and its output is fixed by its definition. The distributions are
//! written from their textbook definitions for the same reason.

use novacron_mesh::jitter::splitmix64;

/// A seeded stream of random numbers.
#[derive(Clone, Debug)]
pub struct SimRng {
    s: [u64; 4],
}

impl SimRng {
    /// A stream for `seed`; different seeds give unrelated streams.
    pub fn new(seed: u64) -> SimRng {
        let mut x = seed;
        let mut s = [0u64; 4];
        for word in &mut s {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            *word = splitmix64(x);
        }
        // The all-zero state is the one xoshiro cannot leave; splitmix64 never gives four
        // zeros in a row, but be certain.
        if s == [0; 4] {
            s[0] = 1;
        }
        SimRng { s }
    }

    /// An independent stream for `stream` (a node, a broadcast, a model) derived from this
    /// run's `seed`: the same `(seed, stream)` always gives the same numbers, whatever else
    /// the run drew before.
    pub fn for_stream(seed: u64, stream: u64) -> SimRng {
        SimRng::new(splitmix64(seed ^ splitmix64(stream)))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: for logarithms.
    fn unit_open_low(&mut self) -> f64 {
        1.0 - self.unit()
    }

    /// Uniform in `0..n` without modulo bias (Lemire's method); `n` must not be zero.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// True with probability `p` (clamped to [0, 1]).
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (Box-Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let r = (-2.0 * self.unit_open_low().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.unit();
        r * theta.cos()
    }

    /// Log-normal: `exp(mu + sigma * N(0, 1))`.
    pub fn lognormal(&mut self, mu: f64, sigma: f64) -> f64 {
        (mu + sigma * self.normal()).exp()
    }

    /// Exponential with `rate` (mean `1 / rate`).
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -self.unit_open_low().ln() / rate
    }

    /// Gamma with `shape` and `scale` (mean `shape * scale`): Marsaglia and Tsang (2000),
    /// with the `U^(1/shape)` boost for shapes below 1.
    pub fn gamma(&mut self, shape: f64, scale: f64) -> f64 {
        if shape < 1.0 {
            let boost = self.unit_open_low().powf(1.0 / shape);
            return self.gamma(shape + 1.0, scale) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.unit_open_low();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v * scale;
            }
        }
    }

    /// Weibull with `shape` and `scale` (inverse transform).
    pub fn weibull(&mut self, shape: f64, scale: f64) -> f64 {
        scale * (-self.unit_open_low().ln()).powf(1.0 / shape)
    }

    /// An index drawn with the given `weights` (not all zero; negative counts as zero).
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().map(|w| w.max(0.0)).sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            let w = w.max(0.0);
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }
}

/// A number fixed by `seed` and the unordered pair `(a, b)`: per-pair properties (a link's
/// latency, whether two NATed nodes can punch a hole) without storing N² of them.
pub fn pair_hash(seed: u64, a: u64, b: u64) -> u64 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    splitmix64(splitmix64(seed ^ splitmix64(lo)) ^ hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_and_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    fn draws(n: usize, mut f: impl FnMut() -> f64) -> Vec<f64> {
        (0..n).map(|_| f()).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_stream_and_others_differ() {
        let first8 = |seed| {
            let mut r = SimRng::new(seed);
            (0..8).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(first8(7), first8(7));
        assert_ne!(first8(7), first8(8));
        assert_ne!(
            SimRng::for_stream(7, 1).next_u64(),
            SimRng::for_stream(7, 2).next_u64()
        );
    }

    #[test]
    fn uniform_draws_cover_their_range_evenly() {
        let mut r = SimRng::new(1);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[r.below(10) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
        let (mean, var) = mean_and_var(&draws(100_000, || r.unit()));
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.002, "{var}");
    }

    #[test]
    fn distributions_have_their_textbook_moments() {
        let mut r = SimRng::new(2);
        let n = 200_000;
        let (m, v) = mean_and_var(&draws(n, || r.normal()));
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.02, "normal {m} {v}");
        let (m, _) = mean_and_var(&draws(n, || r.exponential(4.0)));
        assert!((m - 0.25).abs() < 0.005, "exponential {m}");
        for (shape, scale) in [(0.289, 311.7), (2.5, 3.0), (1.0, 1.0)] {
            let (m, v) = mean_and_var(&draws(n, || r.gamma(shape, scale)));
            let (want_m, want_v) = (shape * scale, shape * scale * scale);
            assert!(
                (m / want_m - 1.0).abs() < 0.03,
                "gamma({shape}) mean {m} vs {want_m}"
            );
            assert!(
                (v / want_v - 1.0).abs() < 0.1,
                "gamma({shape}) var {v} vs {want_v}"
            );
        }
        // Weibull(k, l): mean l * Gamma(1 + 1/k); for k = 0.5, Gamma(3) = 2.
        let (m, _) = mean_and_var(&draws(n, || r.weibull(0.5, 1.7)));
        assert!((m / 3.4 - 1.0).abs() < 0.03, "weibull {m}");
        // Log-normal median exp(mu).
        let mut xs = draws(n, || r.lognormal(4.942, 0.824));
        xs.sort_by(f64::total_cmp);
        let median = xs[n / 2];
        assert!(
            (median / 4.942f64.exp() - 1.0).abs() < 0.02,
            "lognormal median {median}"
        );
    }

    #[test]
    fn weighted_choices_follow_their_weights() {
        let mut r = SimRng::new(3);
        let mut counts = [0u32; 3];
        for _ in 0..60_000 {
            counts[r.weighted(&[1.0, 0.0, 2.0])] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((19_000..21_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn pair_values_do_not_depend_on_the_order_of_the_pair() {
        assert_eq!(pair_hash(9, 3, 5), pair_hash(9, 5, 3));
        assert_ne!(pair_hash(9, 3, 5), pair_hash(9, 3, 6));
        assert_ne!(pair_hash(9, 3, 5), pair_hash(10, 3, 5));
    }
}
